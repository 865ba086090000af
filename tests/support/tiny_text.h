/* The text side of the tiny golden model (../shared/golden/tiny): checkpoint, config, CLIP text
 * encoder and the real CLIP vocabulary, as the conditioning and embedding tests use them. */
#ifndef MP_TEST_TINY_TEXT_H
#define MP_TEST_TINY_TEXT_H

#include "io/weights.h"
#include "models/clip.h"
#include "models/sd.h"
#include "prompt/tokenizer.h"

typedef struct {
  mp_weights *w;
  mp_sd_config cfg;
  mp_clip *clip;
  mp_tokenizer *tok;
  int D; /* the text encoder's width */
} tiny_text;

/* Fails the test (never skips) when the golden files are missing. */
mp_error *tiny_text_load(tiny_text *t);
void tiny_text_free(tiny_text *t);

#endif
