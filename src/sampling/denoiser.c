#include "sampling/denoiser.h"

#include <math.h>
#include <string.h>

#include "core/tensor.h"

mp_error *mp_cfg_denoiser_init(mp_cfg_denoiser *d, mp_eps_fn eps, void *eps_ctx, const mp_schedule *schedule, int batch,
                               int64_t per_image, double cfg_scale) {
  memset(d, 0, sizeof *d);
  if (batch < 1 || per_image < 1) return mp_errorf("denoiser: batch %d of %lld values", batch, (long long)per_image);
  if (!(cfg_scale >= 0 && cfg_scale <= 100)) return mp_errorf("cfg scale %g (expected 0..100)", cfg_scale);
  d->eps = eps;
  d->eps_ctx = eps_ctx;
  d->schedule = schedule;
  d->batch = batch;
  d->per_image = per_image;
  d->cfg_scale = cfg_scale;
  int rows = mp_cfg_denoiser_rows(d);
  d->x_in = mp_alloc((size_t)rows * (size_t)per_image * sizeof(float));
  d->eps_out = mp_alloc((size_t)rows * (size_t)per_image * sizeof(float));
  d->t = mp_alloc((size_t)rows * sizeof(float));
  if (!d->x_in || !d->eps_out || !d->t) {
    mp_cfg_denoiser_free(d);
    return mp_errorf("out of memory (denoiser buffers)");
  }
  return NULL;
}

void mp_cfg_denoiser_free(mp_cfg_denoiser *d) {
  mp_free(d->x_in);
  mp_free(d->eps_out);
  mp_free(d->t);
  d->x_in = d->eps_out = d->t = NULL;
}

int mp_cfg_denoiser_rows(const mp_cfg_denoiser *d) { return d->cfg_scale == 1.0 ? d->batch : 2 * d->batch; }

mp_error *mp_cfg_denoise(void *ctx, const float *x, double sigma, float *denoised, int64_t n) {
  mp_cfg_denoiser *d = ctx;
  int64_t total = (int64_t)d->batch * d->per_image;
  if (n != total) return mp_errorf("denoiser: %lld values, expected %d x %lld", (long long)n, d->batch, (long long)d->per_image);
  bool guided = d->cfg_scale != 1.0;
  int rows = mp_cfg_denoiser_rows(d);
  float c_in = (float)(1.0 / sqrt(sigma * sigma + 1.0));
  double t_exact = d->lcm ? mp_schedule_sigma_to_t_lcm(d->schedule, sigma) : mp_schedule_sigma_to_t(d->schedule, sigma);
  float t = (float)t_exact;
  for (int r = 0; r < rows; r++) {
    const float *src = x + (int64_t)(r % d->batch) * d->per_image;
    float *dst = d->x_in + (int64_t)r * d->per_image;
    for (int64_t k = 0; k < d->per_image; k++) dst[k] = src[k] * c_in;
    d->t[r] = t;
  }
  MP_TRY(d->eps(d->eps_ctx, rows, d->x_in, d->t, d->eps_out));
  const float *eu = d->eps_out, *ec = guided ? d->eps_out + total : d->eps_out;
  float g = (float)d->cfg_scale;
  for (int64_t k = 0; k < total; k++) {
    float e = guided ? eu[k] + g * (ec[k] - eu[k]) : ec[k];
    denoised[k] = (float)(x[k] - sigma * e);
  }
  if (d->lcm) {
    double st = t_exact * 10.0, c_skip = 0.25 / (st * st + 0.25), c_out = st / sqrt(st * st + 0.25);
    for (int64_t k = 0; k < total; k++) denoised[k] = (float)(c_out * denoised[k] + c_skip * x[k]);
  }
  return NULL;
}
