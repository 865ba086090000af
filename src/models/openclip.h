/* OpenCLIP text encoder (ViT-bigG/14 in SDXL: conditioner.embedders.1.model.*), in OpenCLIP's own
 * layout.
 *
 *   ids ─▶ token_embedding + positional_embedding
 *       ─▶ N × [ x += out_proj(attn(ln_1(x))) (causal; q, k, v are the three row blocks of the fused
 *                in_proj [3d, d]) ; x += c_proj(GELU(c_fc(ln_2(x)))) (exact erf GELU) ]
 *       ─▶ ln_final ─▶ the EOS token's row @ text_projection [d, proj] = the pooled text vector
 *
 * SDXL conditions on the penultimate hidden state (N-1 layers, no final LayerNorm) and on the
 * pooled vector of the last layer. */
#ifndef MP_MODELS_OPENCLIP_H
#define MP_MODELS_OPENCLIP_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct mp_openclip mp_openclip;

/* Bind the weights under `prefix` (MP_PREFIX_XL_OPENCLIP), checking shapes against cfg (hidden,
 * layers, heads, intermediate, max_positions, vocab_size, projection_dim). w must outlive it. */
mp_error *mp_openclip_load(const mp_weights *w, const char *prefix, const mp_clip_config *cfg, mp_openclip **out);
void mp_openclip_free(mp_openclip *m);
const mp_clip_config *mp_openclip_get_config(const mp_openclip *m);

/* Token embeddings (without positions) for ids: out [n, hidden]. */
mp_error *mp_openclip_embed_tokens(const mp_openclip *m, const int32_t *ids, int n, float *out);

/* Run the transformer on embeds [n, hidden]. penultimate (may be NULL) receives the hidden state
 * after layers-1 layers [n, hidden]; last (may be NULL) the final-LayerNormed last layer [n,
 * hidden]; pooled (may be NULL) receives last[eos] @ text_projection [projection_dim]. */
mp_error *mp_openclip_encode_embeds(const mp_openclip *m, mp_pool *pool, const float *embeds, int n, int eos, float *penultimate,
                                    float *last, float *pooled);

/* The EOS position of a token row: the first id equal to `eos_id` (OpenCLIP's argmax of ids), else n-1. */
int mp_openclip_eos_index(const int32_t *ids, int n, int32_t eos_id);

#endif
