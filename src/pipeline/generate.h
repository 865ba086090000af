/* One diffusion pass: txt2img, img2img or inpainting, from conditioning and noise to a latent.
 *
 * This is the glue between the models (UNet, VAE) and the samplers: it builds the UNet epsilon
 * callback (with the 9-channel inpainting input when the model has one), the CFG denoiser, the
 * starting latent (A1111's strength -> start step), and the legacy-inpainting blend that
 * re-imposes the noised original outside the mask after every step. */
#ifndef MP_PIPELINE_GENERATE_H
#define MP_PIPELINE_GENERATE_H

#include <stdint.h>

#include "core/threads.h"
#include "io/image.h"
#include "models/unet.h"
#include "models/vae.h"
#include "sampling/noise.h"
#include "sampling/sampler.h"
#include "sampling/schedule.h"

/* Latent channels of SD 1.x/2.x. */
#define MP_LATENT_CHANNELS 4

/* The noise predictor: eps [rows, 4, h, w] for x [rows, in_channels, h, w] at timesteps t [rows]
 * with text context [rows, n_ctx, ctx_dim]. mp_unet_model adapts the UNet to it. */
typedef mp_error *(*mp_model_fn)(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context,
                                 int n_ctx, float *eps);

/* mp_model_fn for the UNet: ctx is an mp_unet_model. */
typedef struct {
  mp_unet *unet;
  mp_pool *pool;
  /* SDXL: the label vectors [y_rows, y_dim] in the order of the context rows (uncond first); when
   * the denoiser runs only the conditional half, the second half is used. NULL for SD 1.x. */
  const float *y;
  int y_rows, y_dim;
} mp_unet_model;
mp_error *mp_unet_model_eps(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context, int n_ctx,
                            float *eps);

typedef struct {
  mp_model_fn model;
  void *model_ctx;
  int unet_in_channels; /* 4, or 9 for inpainting checkpoints */
  const mp_schedule *schedule;

  /* conditioning: [2*batch, n_ctx, ctx_dim], the unconditional rows first, then the conditional */
  const float *context;
  int n_ctx, ctx_dim;

  int batch, lat_h, lat_w;
  double cfg_scale;
  mp_sampler_spec sampler;
  int steps;

  /* Noise: `noise` gives the starting noise (first draw) and the ancestral noise (later draws),
   * one source per image (mp_noise_batch). For DPM++ SDE, `sde_noise` gives the interval noise;
   * when it is NULL and `seeds` is set, a Brownian tree per image is keyed by seeds[b]; when both
   * are NULL, the SDE draws from `noise`. `init_noise` (optional, [batch,4,h,w] unit normals)
   * replaces the first draw. */
  mp_noise *noise;
  mp_noise *sde_noise;
  const uint64_t *seeds;
  const float *init_noise;

  /* img2img / inpainting: init_latent [batch,4,h,w] (already scaled by the VAE factor) and the
   * denoising strength. NULL for txt2img. */
  const float *init_latent;
  double strength;
  /* Legacy inpainting (4-channel UNet): latent mask [h,w], 1 = repaint. After every step the
   * region outside the mask is reset to init_latent noised to the new sigma with the starting
   * noise (and to init_latent itself after the last step). */
  const float *mask;
  /* 9-channel inpainting UNet: [batch, 5, h, w] = latent mask then masked-image latent. */
  const float *inpaint_cond;

  /* Called after each step (after the blend) with x in k-diffusion's variable; may be NULL. */
  mp_step_fn on_step;
  void *step_ctx;
} mp_generate_params;

/* Run the pass. latent [batch,4,h,w] receives the result in the DDPM variable (what the VAE
 * decodes after dividing by the scale factor). */
mp_error *mp_generate_latents(const mp_generate_params *p, float *latent);

/* The sigmas the pass will walk (capacity steps + 1); *n gets their count. */
mp_error *mp_generate_sigmas(const mp_generate_params *p, float *sigmas, int *n);

/* ---- latents (VAE side in src/pipeline/latent.c) and masks ---- */

/* VAE encode an image [3,H,W] in [-1,1] to a latent [4,H/8,W/8] times `scale`: the posterior mean,
 * or a sample mean + std * noise when sample_noise is given (what diffusers and A1111 do). */
mp_error *mp_encode_latent(mp_vae *vae, mp_pool *pool, const float *image, int H, int W, mp_noise *sample_noise, float scale,
                           float *latent);
/* VAE decode latent [4,h,w] / scale to an image [3,8h,8w]. */
mp_error *mp_decode_latent(mp_vae *vae, mp_pool *pool, const float *latent, int h, int w, float scale, float *image);
/* round(clamp(x/2 + 0.5, 0, 1) * 255), rounding half to even as torch/numpy do. */
void mp_image_to_u8_torch(const float *image, int64_t n, uint8_t *out);

/* A single-channel mask image (white = repaint) at full size -> binarised (>= 0.5) [H,W] floats. */
mp_error *mp_inpaint_binarize(const mp_image *mask, float *out);
/* Nearest-neighbour downsampling of a [H,W] mask to [h,w] (torch's interpolate "nearest"). */
void mp_inpaint_latent_mask(const float *mask, int H, int W, int h, int w, float *out);
/* 9-channel conditioning [5,h,w]: the latent mask, then the latent of the image with the masked
 * region zeroed (mean of the posterior, times scale). image [3,H,W] in [-1,1], mask [H,W] binarised. */
mp_error *mp_inpaint_condition(mp_vae *vae, mp_pool *pool, const float *image, const float *mask, int H, int W, float scale,
                               float *cond);

#endif
