/* Shared by the model tests: the tiny golden model's hyper-parameters (../shared/golden/tiny/tiny.json,
 * written out by hand so these tests do not depend on the config reader) and tensor comparisons. */
#ifndef MP_TEST_TINY_MODEL_H
#define MP_TEST_TINY_MODEL_H

#include <math.h>

#include "models/sd.h"

static inline mp_unet_config tiny_unet_config(void) {
  mp_unet_config c = {0};
  c.in_channels = 4, c.out_channels = 4, c.model_channels = 32, c.n_levels = 3;
  c.channel_mult[0] = 1, c.channel_mult[1] = 2, c.channel_mult[2] = 2;
  c.attention_at_level[0] = true, c.attention_at_level[1] = true; /* attention_resolutions [2, 1] */
  c.num_res_blocks = 2, c.num_heads = 2, c.num_head_channels = -1, c.context_dim = 32, c.transformer_depth = 1;
  return c;
}

static inline mp_vae_config tiny_vae_config(void) {
  mp_vae_config c = {0};
  c.in_channels = 3, c.out_channels = 3, c.ch = 32, c.n_levels = 4;
  c.ch_mult[0] = 1, c.ch_mult[1] = 1, c.ch_mult[2] = 2, c.ch_mult[3] = 2;
  c.num_res_blocks = 2, c.z_channels = 4, c.embed_dim = 4;
  return c;
}

/* The golden fp32 bound: rel L2 <= 1e-4 and max abs <= 1e-3 * max(1, max|ref|). */
static inline int within_fp32(const float *got, const float *ref, int64_t n, double *rel_out) {
  double d2 = 0, r2 = 0, mx = 0, gmax = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)got[i] - ref[i];
    d2 += d * d, r2 += (double)ref[i] * ref[i];
    mx = fabs(d) > mx ? fabs(d) : mx;
    gmax = fabs(ref[i]) > gmax ? fabs(ref[i]) : gmax;
  }
  double rel = sqrt(d2 / (r2 > 0 ? r2 : 1));
  if (rel_out) *rel_out = rel;
  return isfinite(rel) && rel <= 1e-4 && mx <= 1e-3 * (gmax > 1 ? gmax : 1);
}

#endif
