/* The SD 1.x/2.x/SDXL denoising UNet (LDM/sgm openaimodel.UNetModel, CompVis key layout).
 *
 *   t ─▶ sinusoidal embedding ─▶ time MLP ─┐
 *   x ─▶ conv_in ─▶ down levels [ResBlock (+ SpatialTransformer)]×n, Downsample ─▶ middle
 *     [ResBlock, SpatialTransformer, ResBlock] ─▶ up levels [concat skip, ResBlock (+ ST)]×(n+1),
 *     Upsample ─▶ GroupNorm, SiLU, conv_out ─▶ eps
 * SpatialTransformer: GroupNorm, proj_in, [self-attn, cross-attn on context, GEGLU FF]×depth, proj_out, +x.
 * SDXL: the depth varies per level, and label_emb(y) (Linear, SiLU, Linear) is added to the time MLP's output. */
#ifndef MP_MODELS_UNET_H
#define MP_MODELS_UNET_H

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct mp_unet mp_unet;

/* Bind weights under `prefix` (MP_PREFIX_UNET), checking every shape against cfg. w must outlive it. */
mp_error *mp_unet_load(const mp_weights *w, const char *prefix, const mp_unet_config *cfg, mp_unet **out);
void mp_unet_free(mp_unet *unet);
/* Free the forward's activation and scratch buffers, keeping the bound and packed weights: the next
 * forward allocates them again. Call when the UNet is idle for a while (during the VAE decode). */
void mp_unet_trim(mp_unet *unet);
/* Move from's activation and scratch buffers to `to` (a UNet just bound to other weights, e.g. a LoRA
 * overlay, taking over from the one it replaces): its first forward then runs in memory already faulted
 * in (fresh pages cost ~0.2 s of a 256x256 evaluation at SD 1.5 size on a VM). from keeps its packs. */
void mp_unet_adopt_buffers(mp_unet *to, mp_unet *from);

/* eps[b] = UNet(x[b], t[b], context[b]) for b < batch.
 * x [batch, in_channels, h, w] (latent size; h, w multiples of 8 for SD's 3 downsamplings),
 * t [batch] timesteps (fractional allowed), context [batch, n_ctx, context_dim],
 * eps [batch, out_channels, h, w]. */
mp_error *mp_unet_forward(mp_unet *unet, mp_pool *pool, int batch, int h, int w, const float *x, const float *t,
                          const float *context, int n_ctx, float *eps);

/* ControlNet residuals (models/controlnet.c makes them): down[i] is added to the skip connection of
 * input block i (its output, before the decoder concatenates it), mid to the middle block's output,
 * each multiplied by `scale`. Shapes follow the UNet's own blocks for the same batch and size. */
#define MP_UNET_MAX_SKIPS 32
typedef struct {
  const float *down[MP_UNET_MAX_SKIPS];
  int n_down;
  const float *mid;
  float scale;
} mp_unet_control;

/* Everything one UNet evaluation reads. x, t, context as for mp_unet_forward. */
typedef struct {
  int batch, h, w;
  const float *x, *t, *context;
  int n_ctx;
  const float *y; /* SDXL: [batch, adm_in_channels], the pooled text + size vector into label_emb; NULL for SD 1.x/2.x */
  const mp_unet_control *control; /* ControlNet residuals, or NULL */
} mp_unet_inputs;

/* LDM's sinusoidal embedding (cos half first, max period 10000) of n numbers t into emb [n, dim]:
 * the timestep embedding, and SDXL's embedding of each size/crop number. */
void mp_unet_timestep_embedding(float *emb, const float *t, int n, int dim);

/* The general entry point; mp_unet_forward is this with y = control = NULL. */
mp_error *mp_unet_run(mp_unet *unet, mp_pool *pool, const mp_unet_inputs *in, float *eps);

/* ControlNet's trainable copy of the encoder (models/controlnet.c): the same blocks under `prefix`
 * (time_embed, input_blocks, middle_block), no decoder and no out.*. Only mp_unet_encode runs it. */
mp_error *mp_unet_load_encoder(const mp_weights *w, const char *prefix, const mp_unet_config *cfg, mp_unet **out);

/* The encoder's activations: block[i] is the output of input block i [batch, channels[i], h[i], w[i]],
 * mid the middle block's. Views into the UNet's own buffers, valid until its next call. */
typedef struct {
  int n_blocks;
  const float *block[MP_UNET_MAX_SKIPS];
  int channels[MP_UNET_MAX_SKIPS], h[MP_UNET_MAX_SKIPS], w[MP_UNET_MAX_SKIPS];
  const float *mid;
  int mid_channels, mid_h, mid_w;
} mp_unet_encoded;

/* Time embedding, conv_in, the input blocks and the middle block of `unet` (a full UNet or an
 * encoder-only copy) on `in` (y and control must be NULL). `hint` ([batch, model_channels, h, w], or
 * NULL) is added to conv_in's output before input block 1 sees it: ControlNet's hint embedding. */
mp_error *mp_unet_encode(mp_unet *unet, mp_pool *pool, const mp_unet_inputs *in, const float *hint, mp_unet_encoded *out);

#endif
