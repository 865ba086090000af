#include "pipeline/generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "sampling/denoiser.h"

typedef struct {
  const mp_generate_params *p;
  int64_t per_image; /* 4*h*w */
  float *x9;         /* 9-channel UNet input */
  const float *noise0;  /* the starting unit noise (legacy inpainting blend) */
} gen_ctx;

/* The UNet as an epsilon model for the CFG denoiser: rows [uncond..., cond...] or just [cond...]. */
static mp_error *unet_eps(void *ctx, int rows, const float *x, const float *t, float *eps) {
  gen_ctx *g = ctx;
  const mp_generate_params *p = g->p;
  const float *in = x;
  int64_t hw = (int64_t)p->lat_h * p->lat_w;
  if (p->unet_in_channels == 9) {
    for (int r = 0; r < rows; r++) {
      float *dst = g->x9 + (int64_t)r * 9 * hw;
      memcpy(dst, x + (int64_t)r * g->per_image, (size_t)g->per_image * sizeof(float));
      memcpy(dst + g->per_image, p->inpaint_cond + (int64_t)(r % p->batch) * 5 * hw, (size_t)(5 * hw) * sizeof(float));
    }
    in = g->x9;
  }
  /* guided: all 2*batch context rows; unguided: the conditional half */
  const float *context = p->context + (rows == p->batch ? (int64_t)p->batch * p->n_ctx * p->ctx_dim : 0);
  return p->model(p->model_ctx, rows, p->lat_h, p->lat_w, in, t, context, p->n_ctx, eps);
}

/* After each step: legacy inpainting blend, then the caller's callback. */
static mp_error *gen_step(void *ctx, int step, int n_steps, float *x, int64_t n, double sigma, double sigma_next) {
  gen_ctx *g = ctx;
  const mp_generate_params *p = g->p;
  if (p->mask && p->unet_in_channels != 9) {
    bool last = step == n_steps - 1;
    /* Known region = init latent noised to sigma_next with the starting noise; after the last step
     * the clean init latent (in the DDPM variable, hence the sqrt(1 + sigma^2) in k-diffusion's). */
    double keep_scale = last ? sqrt(1.0 + sigma_next * sigma_next) : 1.0, noise_scale = last ? 0.0 : sigma_next;
    int64_t hw = (int64_t)p->lat_h * p->lat_w;
    for (int64_t i = 0; i < n; i++) {
      float m = p->mask[i % hw];
      double known = p->init_latent[i] * keep_scale + noise_scale * g->noise0[i];
      x[i] = (float)((1.0 - m) * known + m * x[i]);
    }
  }
  if (p->on_step) return p->on_step(p->step_ctx, step, n_steps, x, n, sigma, sigma_next);
  return NULL;
}

mp_error *mp_generate_sigmas(const mp_generate_params *p, float *sigmas, int *n) {
  if (p->init_latent) return mp_sampler_img2img_sigmas(&p->sampler, p->schedule, p->steps, p->strength, sigmas, n);
  MP_TRY(mp_sampler_sigmas(&p->sampler, p->schedule, p->steps, sigmas, NULL));
  *n = p->steps + 1;
  return NULL;
}

static mp_error *check_params(const mp_generate_params *p) {
  if (!p->model || !p->schedule || !p->context) return mp_errorf("generate: missing model, schedule or conditioning");
  if (p->batch < 1 || p->lat_h < 1 || p->lat_w < 1) return mp_errorf("generate: batch %d of %dx%d latents", p->batch, p->lat_w, p->lat_h);
  if (p->unet_in_channels != 4 && p->unet_in_channels != 9)
    return mp_errorf("generate: UNet with %d input channels (expected 4, or 9 for inpainting)", p->unet_in_channels);
  if (p->unet_in_channels == 9 && !p->inpaint_cond)
    return mp_errorf("this is an inpainting checkpoint (9-channel UNet): it needs an input image and a mask");
  if (p->mask && !p->init_latent) return mp_errorf("generate: a mask needs an init image");
  if (!p->noise && !p->init_noise) return mp_errorf("generate: no noise source");
  return NULL;
}

mp_error *mp_generate_latents(const mp_generate_params *p, float *latent) {
  MP_TRY(check_params(p));
  int64_t per_image = (int64_t)MP_LATENT_CHANNELS * p->lat_h * p->lat_w, n = per_image * p->batch;
  float *sigmas = malloc((size_t)(p->steps + 1) * sizeof *sigmas);
  float *x = mp_alloc((size_t)n * sizeof(float)), *noise0 = mp_alloc((size_t)n * sizeof(float));
  gen_ctx g = {.p = p, .per_image = per_image, .noise0 = noise0};
  if (p->unet_in_channels == 9) g.x9 = mp_alloc((size_t)(2 * p->batch) * 9 * p->lat_h * p->lat_w * sizeof(float));
  mp_cfg_denoiser den = {0};
  mp_noise *sde = NULL;
  mp_error *e = NULL;
  int n_sig = 0;
  if (!sigmas || !x || !noise0 || (p->unet_in_channels == 9 && !g.x9)) e = mp_errorf("out of memory (generate buffers)");
  if (!e) e = mp_generate_sigmas(p, sigmas, &n_sig);
  /* the starting noise: the first draw of each image's generator */
  if (!e) {
    if (p->init_noise) memcpy(noise0, p->init_noise, (size_t)n * sizeof(float));
    else e = mp_noise_fill(p->noise, noise0, n);
  }
  if (!e) {
    double s0 = sigmas[0];
    if (p->init_latent)
      for (int64_t i = 0; i < n; i++) x[i] = (float)(p->init_latent[i] + s0 * noise0[i]);
    else {
      double scale = mp_sampler_init_noise_scale(&p->sampler, s0);
      for (int64_t i = 0; i < n; i++) x[i] = (float)(noise0[i] * scale);
    }
  }
  if (!e && p->sampler.kind == MP_SAMPLER_DPMPP_SDE && !p->sde_noise && p->seeds) {
    mp_noise **kids = calloc((size_t)p->batch, sizeof *kids);
    if (!kids) e = mp_errorf("out of memory");
    for (int b = 0; !e && b < p->batch; b++)
      e = mp_noise_brownian(p->seeds[b], mp_schedule_sigma_min(p->schedule), mp_schedule_sigma_max(p->schedule), &kids[b]);
    if (!e) e = mp_noise_batch(kids, p->batch, &sde);
    else
      for (int b = 0; b < p->batch; b++) mp_noise_free(kids[b]);
    free(kids);
  }
  if (!e) e = mp_cfg_denoiser_init(&den, unet_eps, &g, p->schedule, p->batch, per_image, p->cfg_scale);
  if (!e) den.lcm = p->sampler.kind == MP_SAMPLER_LCM;
  if (!e) {
    mp_noise *step_noise = p->noise;
    if (p->sampler.kind == MP_SAMPLER_DPMPP_SDE) step_noise = p->sde_noise ? p->sde_noise : sde ? sde : p->noise;
    mp_sampler_io io = {.denoise = mp_cfg_denoise, .denoise_ctx = &den, .noise = step_noise, .on_step = gen_step, .step_ctx = &g};
    e = mp_sample(&p->sampler, sigmas, n_sig, x, n, &io);
  }
  if (!e) {
    /* k-diffusion's x -> the DDPM latent (the identity when the schedule ends at sigma 0) */
    double last = sigmas[n_sig - 1], f = 1.0 / sqrt(1.0 + last * last);
    for (int64_t i = 0; i < n; i++) latent[i] = (float)(x[i] * f);
  }
  mp_cfg_denoiser_free(&den);
  mp_noise_free(sde);
  free(sigmas);
  mp_free(x);
  mp_free(noise0);
  mp_free(g.x9);
  return e;
}

/* ---- pixels and masks ---- */

void mp_image_to_u8_torch(const float *image, int64_t n, uint8_t *out) {
  for (int64_t i = 0; i < n; i++) {
    float v = image[i] / 2.0f + 0.5f;
    v = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
    out[i] = (uint8_t)nearbyintf(v * 255.0f); /* default rounding mode: half to even */
  }
}

mp_error *mp_inpaint_binarize(const mp_image *mask, float *out) {
  if (mask->channels != 1) return mp_errorf("mask: %d channels (read masks as one channel)", mask->channels);
  int64_t n = (int64_t)mask->width * mask->height;
  for (int64_t i = 0; i < n; i++) out[i] = mask->pixels[i] / 255.0f >= 0.5f ? 1.0f : 0.0f;
  return NULL;
}

void mp_inpaint_latent_mask(const float *mask, int H, int W, int h, int w, float *out) {
  for (int y = 0; y < h; y++) {
    int sy = (int)((int64_t)y * H / h);
    for (int x = 0; x < w; x++) out[(int64_t)y * w + x] = mask[(int64_t)sy * W + (int)((int64_t)x * W / w)];
  }
}
