/* The model side of a diffusion pass: the UNet as a noise predictor, VAE encode/decode with the
 * latent scale, and the 9-channel inpainting condition. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "pipeline/generate.h"

mp_error *mp_unet_model_eps(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context, int n_ctx,
                            float *eps) {
  mp_unet_model *m = ctx;
  mp_unet_inputs in = {.batch = rows, .h = h, .w = w, .x = x, .t = t, .context = context, .n_ctx = n_ctx};
  if (m->y) { /* SDXL: the label rows that go with these context rows (all, or the conditional half) */
    if (rows != m->y_rows && 2 * rows != m->y_rows)
      return mp_errorf("UNet: %d rows to denoise, the label vector has %d", rows, m->y_rows);
    in.y = m->y + (rows == m->y_rows ? 0 : (int64_t)rows * m->y_dim);
  }
  return mp_unet_run(m->unet, m->pool, &in, eps);
}

mp_error *mp_encode_latent(mp_vae *vae, mp_pool *pool, const float *image, int H, int W, mp_noise *sample_noise, float scale,
                           float *latent) {
  if (H % 8 || W % 8 || H < 8 || W < 8) return mp_errorf("VAE encode: image %dx%d (sides must be positive multiples of 8)", W, H);
  int64_t hw = (int64_t)(H / 8) * (W / 8), n = MP_LATENT_CHANNELS * hw;
  float *moments = mp_alloc((size_t)(2 * n) * sizeof(float));
  float *eps = sample_noise ? mp_alloc((size_t)n * sizeof(float)) : NULL;
  mp_error *e = (!moments || (sample_noise && !eps)) ? mp_errorf("out of memory (VAE encode)") : NULL;
  if (!e) e = mp_vae_encode(vae, pool, H, W, image, moments);
  if (!e && sample_noise) e = mp_noise_fill(sample_noise, eps, n);
  if (!e)
    for (int64_t i = 0; i < n; i++) {
      double mean = moments[i];
      if (sample_noise) {
        /* DiagonalGaussianDistribution: logvar clamped to [-30, 20], std = exp(logvar / 2) */
        float logvar = moments[n + i];
        logvar = logvar < -30.0f ? -30.0f : logvar > 20.0f ? 20.0f : logvar;
        float std = expf(0.5f * logvar);
        mean = (float)(moments[i] + std * eps[i]);
      }
      latent[i] = (float)(mean * scale);
    }
  mp_free(moments);
  mp_free(eps);
  return e;
}

mp_error *mp_decode_latent(mp_vae *vae, mp_pool *pool, const float *latent, int h, int w, float scale, float *image) {
  int64_t n = (int64_t)MP_LATENT_CHANNELS * h * w;
  float *z = mp_alloc((size_t)n * sizeof(float));
  if (!z) return mp_errorf("out of memory (VAE decode)");
  for (int64_t i = 0; i < n; i++) z[i] = latent[i] / scale;
  mp_error *e = mp_vae_decode(vae, pool, h, w, z, image);
  mp_free(z);
  return e;
}

mp_error *mp_inpaint_condition(mp_vae *vae, mp_pool *pool, const float *image, const float *mask, int H, int W, float scale,
                               float *cond) {
  int h = H / 8, w = W / 8;
  int64_t HW = (int64_t)H * W;
  float *masked = mp_alloc((size_t)(3 * HW) * sizeof(float));
  if (!masked) return mp_errorf("out of memory (inpainting condition)");
  for (int c = 0; c < 3; c++)
    for (int64_t i = 0; i < HW; i++) masked[c * HW + i] = mask[i] < 0.5f ? image[c * HW + i] : 0.0f;
  mp_inpaint_latent_mask(mask, H, W, h, w, cond);
  mp_error *e = mp_encode_latent(vae, pool, masked, H, W, NULL, scale, cond + (int64_t)h * w);
  mp_free(masked);
  return e;
}
