/* Text conditioning for SD 1.x: prompt + negative prompt -> the UNet's cross-attention contexts.
 *
 * use_lpw (AUTOMATIC1111 semantics, the default):
 *   text ─▶ attention spans ─▶ 75-token chunks (weighting.h)
 *        ─▶ per chunk: token embeddings, textual-inversion vectors written over their placeholders,
 *           CLIP transformer (clip_skip), z *= weight per token, z *= mean(z_before) / mean(z_after)
 *        ─▶ chunks concatenated: [1, 77*k, hidden]
 *   prompt and negative are padded to the same k with the encoding of the empty prompt.
 * !use_lpw (plain CLIP, as diffusers): one chunk, the text truncated to 75 tokens (a warning says
 *   so), no bracket parsing; textual-inversion names are still replaced by their vectors.
 *
 * LoRA is applied to the CLIP weights before this and is not seen here. */
#ifndef MP_PROMPT_CONDITIONING_H
#define MP_PROMPT_CONDITIONING_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"
#include "core/threads.h"
#include "models/clip.h"
#include "prompt/tokenizer.h"
#include "prompt/weighting.h"

/* A textual-inversion embedding in memory (reading embedding files is elsewhere). */
typedef struct {
  char *name;       /* the word that triggers it in a prompt, e.g. "easynegative" */
  int n_vectors;    /* 1..75 */
  int hidden;       /* must equal the CLIP hidden size */
  float *vectors;   /* [n_vectors, hidden] */
  /* SDXL embeddings (clip_l + clip_g) also carry the second encoder's vectors; 0 / NULL for SD 1.x. */
  int hidden2;      /* the second (OpenCLIP) encoder's width */
  float *vectors2;  /* [n_vectors, hidden2] */
} mp_ti_embedding;

typedef struct {
  mp_ti_embedding *items;
  size_t n, cap;
} mp_ti_set;

/* Copy an embedding into the set; a name already present is replaced. */
mp_error *mp_ti_set_add(mp_ti_set *set, const char *name, const float *vectors, int n_vectors, int hidden);
/* An SDXL embedding: vectors [n_vectors, hidden] for the first encoder, vectors2 [n_vectors, hidden2]
 * for the second. */
mp_error *mp_ti_set_add_xl(mp_ti_set *set, const char *name, const float *vectors, int hidden, const float *vectors2, int hidden2,
                           int n_vectors);
void mp_ti_set_free(mp_ti_set *set);

typedef struct {
  int clip_skip;       /* 1 = last layer, 2 = penultimate (+ final LayerNorm); 0 means 1 */
  bool use_lpw;        /* A1111 weighting and chunking (true) or plain truncated CLIP (false) */
  int comma_backtrack; /* A1111 comma_padding_backtrack; mp_cond_options_default() sets 20 */
} mp_cond_options;

mp_cond_options mp_cond_options_default(void);

typedef struct {
  mp_tensor cond, uncond;  /* f32 [1, n_tokens, hidden], n_tokens = 77 * n_chunks, the same for both */
  int n_chunks;
  size_t prompt_tokens;    /* A1111's token count of each text ("N/75" in its UI) */
  size_t negative_tokens;
  char *warning;           /* NULL, or what the caller should show (e.g. truncation); freed with the result */
} mp_conditioning;

/* ti may be NULL. tok and clip are only read; pool may be NULL. */
mp_error *mp_conditioning_encode(const mp_clip *clip, mp_pool *pool, const mp_tokenizer *tok, const char *prompt,
                                 const char *negative, const mp_ti_set *ti, const mp_cond_options *opt, mp_conditioning *out);
void mp_conditioning_free(mp_conditioning *c);

/* A1111's "Original" emphasis on one encoded chunk z [T, D]: z *= weights per token, then z is
 * rescaled so its mean is what it was (nothing happens when every weight is 1). */
void mp_emphasis_original(float *z, const float *weights, int T, int D);

/* One prompt alone, as chunks (the building block; exposed for tests and for prompt editing):
 * out is [n_chunks*77, hidden], allocated with mp_alloc. With use_lpw false exactly one chunk. */
mp_error *mp_conditioning_encode_one(const mp_clip *clip, mp_pool *pool, const mp_tokenizer *tok, const char *text,
                                     const mp_ti_set *ti, const mp_cond_options *opt, float **out, int *n_chunks,
                                     size_t *token_count, char **warning);

/* The text as chunks with its embedding names replaced by placeholder slots (mp_prompt_chunks.fixes):
 * A1111 weighting and chunking when o->use_lpw, else one plain chunk of at most 75 tokens. hidden2 is
 * the model's second encoder width (SDXL) or 0 (SD 1.x): an embedding of the other family is an error
 * naming both. Shared by the SD 1.x and SDXL conditioning. */
mp_error *mp_ti_chunk_text(const mp_tokenizer *tok, const char *text, const mp_ti_set *ti, int hidden, int hidden2,
                           const mp_cond_options *o, mp_prompt_chunks *out, char **warning);

#endif
