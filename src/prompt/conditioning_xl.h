/* Text conditioning for SDXL: prompt + negative -> the 2048-wide cross-attention context, the
 * pooled text vector, and the label vector y the UNet's label_emb takes.
 *
 *   text ─▶ A1111 attention spans and 75-token chunks (weighting.h), as for SD 1.x
 *        ─▶ per chunk: encoder 1 (CLIP ViT-L) ids padded with EOS, encoder 2 (OpenCLIP bigG) the same
 *           ids with everything after the first EOS set to 0 (open_clip.tokenize's padding);
 *           each encoder's penultimate hidden state (no final LayerNorm), each weighted on its own
 *           (A1111 "Original" emphasis), concatenated along the width: [77, d1 + d2]
 *        ─▶ chunks concatenated: [1, 77*k, d1 + d2]; the pooled vector is encoder 2's EOS row of its
 *           final-LayerNormed last layer @ text_projection, of the FIRST chunk (as A1111).
 *   An empty negative prompt gives zeros (context and pooled), as diffusers' force_zeros_for_empty_prompt
 *   and A1111 do; prompt and negative are padded to the same k with the encoding of "".
 *
 * y = cat(pooled, emb(orig_h), emb(orig_w), emb(crop_top), emb(crop_left), emb(target_h), emb(target_w))
 * with emb the UNet's sinusoidal embedding of width time_id_dim. */
#ifndef MP_PROMPT_CONDITIONING_XL_H
#define MP_PROMPT_CONDITIONING_XL_H

#include "models/clip.h"
#include "models/openclip.h"
#include "prompt/conditioning.h"

typedef struct {
  mp_tensor cond, uncond;               /* f32 [1, 77*n_chunks, d1 + d2] */
  mp_tensor pooled_cond, pooled_uncond; /* f32 [1, projection_dim] */
  int n_chunks;
  size_t prompt_tokens, negative_tokens;
  char *warning; /* NULL, or what the caller should show; freed with the result */
} mp_xl_conditioning;

/* opt: use_lpw and comma_backtrack as for SD 1.x; clip_skip is ignored (SDXL always takes the
 * penultimate layers). Textual inversions are not applied yet (a warning says so). */
mp_error *mp_xl_conditioning_encode(const mp_clip *clip, const mp_openclip *clip2, mp_pool *pool, const mp_tokenizer *tok,
                                    const char *prompt, const char *negative, const mp_ti_set *ti, const mp_cond_options *opt,
                                    mp_xl_conditioning *out);
void mp_xl_conditioning_free(mp_xl_conditioning *c);

/* One 77-token row through both encoders: ids1 for encoder 1, ids2 for encoder 2 (its EOS found by
 * the first `eos_id`), weights per position (NULL = all 1). context [77, d1 + d2]; pooled
 * [projection_dim] (may be NULL). */
mp_error *mp_xl_encode_chunk(const mp_clip *clip, const mp_openclip *clip2, mp_pool *pool, const int32_t *ids1, const int32_t *ids2,
                             int32_t eos_id, const float *weights, float *context, float *pooled);

/* y [adm] = cat(pooled [proj], sinusoidal(time_ids[k]) for k < 6, each time_id_dim wide). */
void mp_xl_label_vector(const float *pooled, int proj, const float time_ids[6], int time_id_dim, float *y);

#endif
