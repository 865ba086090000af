/* CLIP text encoder (the transformer of SD 1.x's FrozenCLIPEmbedder).
 *
 *   ids ─▶ token embedding + position embedding
 *       ─▶ N × [ x += attn(ln1(x)) (causal, multi-head) ; x += mlp(ln2(x)) (fc1, quick-GELU, fc2) ]
 *       ─▶ final LayerNorm
 *
 * "clip skip" (AUTOMATIC1111) = stop after layers-(skip-1) layers, then apply the final LayerNorm. */
#ifndef MP_MODELS_CLIP_H
#define MP_MODELS_CLIP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct mp_clip mp_clip;

/* Bind the weights under `prefix` (e.g. MP_PREFIX_CLIP) and check every shape against `cfg`.
 * The mp_clip views w's tensors: w must outlive it. */
mp_error *mp_clip_load(const mp_weights *w, const char *prefix, const mp_clip_config *cfg, mp_clip **out);
void mp_clip_free(mp_clip *clip);
const mp_clip_config *mp_clip_get_config(const mp_clip *clip);

/* Token embeddings (without positions) for ids: out [n, hidden]. Textual inversion replaces rows
 * of this before encoding. */
mp_error *mp_clip_embed_tokens(const mp_clip *clip, const int32_t *ids, int n, float *out);

/* Run the transformer on token embeddings `embeds` [n, hidden] (n <= max_positions).
 * n_layers: how many layers to run (cfg.layers for the last hidden state, layers-1 for the
 * penultimate); final_ln: apply the final LayerNorm to the result. out [n, hidden]. */
mp_error *mp_clip_encode_embeds(const mp_clip *clip, mp_pool *pool, const float *embeds, int n, int n_layers, bool final_ln,
                                float *out);

/* Convenience: embed ids and encode. clip_skip = 1 (last layer) or 2 (penultimate), each with the
 * final LayerNorm, as AUTOMATIC1111 and diffusers condition SD 1.x. */
mp_error *mp_clip_encode(const mp_clip *clip, mp_pool *pool, const int32_t *ids, int n, int clip_skip, float *out);

#endif
