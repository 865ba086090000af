#include "tiny_text.h"

#include <stdlib.h>
#include <string.h>

#include "testutil.h"

mp_error *tiny_text_load(tiny_text *t) {
  memset(t, 0, sizeof *t);
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *voc = test_shared_path("data/clip/" MP_CLIP_VOCAB_FILE);
  mp_error *e = mp_weights_open(ck, &t->w);
  if (!e) e = mp_sd_config_detect(t->w, NULL, &t->cfg);
  if (!e) e = mp_clip_load(t->w, MP_PREFIX_CLIP, &t->cfg.clip, &t->clip);
  if (!e) e = mp_tokenizer_load(voc, &t->tok);
  free(ck);
  free(voc);
  t->D = t->cfg.clip.hidden;
  return e;
}

void tiny_text_free(tiny_text *t) {
  mp_tokenizer_free(t->tok);
  mp_clip_free(t->clip);
  mp_weights_close(t->w);
  memset(t, 0, sizeof *t);
}
