/* The SD 1.x/2.x denoising UNet (LDM openaimodel.UNetModel, CompVis key layout).
 *
 *   t ─▶ sinusoidal embedding ─▶ time MLP ─┐
 *   x ─▶ conv_in ─▶ down levels [ResBlock (+ SpatialTransformer)]×n, Downsample ─▶ middle
 *     [ResBlock, SpatialTransformer, ResBlock] ─▶ up levels [concat skip, ResBlock (+ ST)]×(n+1),
 *     Upsample ─▶ GroupNorm, SiLU, conv_out ─▶ eps
 * SpatialTransformer: GroupNorm, proj_in, [self-attn, cross-attn on context, GEGLU FF]×depth, proj_out, +x. */
#ifndef MP_MODELS_UNET_H
#define MP_MODELS_UNET_H

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct mp_unet mp_unet;

/* Bind weights under `prefix` (MP_PREFIX_UNET), checking every shape against cfg. w must outlive it. */
mp_error *mp_unet_load(const mp_weights *w, const char *prefix, const mp_unet_config *cfg, mp_unet **out);
void mp_unet_free(mp_unet *unet);

/* eps[b] = UNet(x[b], t[b], context[b]) for b < batch.
 * x [batch, in_channels, h, w] (latent size; h, w multiples of 8 for SD's 3 downsamplings),
 * t [batch] timesteps (fractional allowed), context [batch, n_ctx, context_dim],
 * eps [batch, out_channels, h, w]. */
mp_error *mp_unet_forward(mp_unet *unet, mp_pool *pool, int batch, int h, int w, const float *x, const float *t,
                          const float *context, int n_ctx, float *eps);

#endif
