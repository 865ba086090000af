/* The classifier-free-guidance denoiser: turns an epsilon-predicting model (the UNet) into the
 * (x, sigma) -> denoised callback samplers call.
 *
 * For a batch of B images it runs the model once on 2B inputs, [uncond_0..uncond_B-1,
 * cond_0..cond_B-1], each x scaled by c_in = 1 / sqrt(sigma^2 + 1) at the fractional timestep
 * t(sigma), combines eps = eps_u + cfg * (eps_c - eps_u) and returns x - sigma * eps. With cfg 1
 * the unconditional half is skipped (the model runs on B inputs, cond only). */
#ifndef MP_SAMPLING_DENOISER_H
#define MP_SAMPLING_DENOISER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "sampling/schedule.h"

/* eps[b] = model(x[b], t[b]) for b < batch; x and eps are [batch, per_image]. The callee knows
 * which conditioning goes with which batch row (uncond rows first when guided). */
typedef mp_error *(*mp_eps_fn)(void *ctx, int batch, const float *x, const float *t, float *eps);

typedef struct {
  mp_eps_fn eps;
  void *eps_ctx;
  const mp_schedule *schedule;
  int batch;          /* images */
  int64_t per_image;  /* latent values per image */
  double cfg_scale;
  /* LCM mode (AUTOMATIC1111's LCMCompVisDenoiser): the model runs at the nearest of the 50 original
   * timesteps, and the result is c_out * denoised + c_skip * x with s = 10 t, c_skip = 0.25 / (s^2 +
   * 0.25), c_out = s / sqrt(s^2 + 0.25). Set after init. */
  bool lcm;
  /* work buffers */
  float *x_in, *eps_out, *t;
} mp_cfg_denoiser;

mp_error *mp_cfg_denoiser_init(mp_cfg_denoiser *d, mp_eps_fn eps, void *eps_ctx, const mp_schedule *schedule, int batch,
                               int64_t per_image, double cfg_scale);
void mp_cfg_denoiser_free(mp_cfg_denoiser *d);
/* Rows the model is run on per call: 2*batch when guided, batch when cfg_scale == 1. */
int mp_cfg_denoiser_rows(const mp_cfg_denoiser *d);
/* mp_denoise_fn: ctx is the mp_cfg_denoiser; n must be batch * per_image. */
mp_error *mp_cfg_denoise(void *ctx, const float *x, double sigma, float *denoised, int64_t n);

#endif
