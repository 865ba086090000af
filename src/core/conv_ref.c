/* Reference twins of the image ops in conv.h: direct loops in double. Tests only. */
#include <math.h>

#include "core/conv.h"

void mp_ref_conv2d(float *y, const float *x, int c_in, int h, int w, const float *weight, const float *bias, int c_out, int kh,
                   int kw, int stride, mp_pad pad) {
  int ho = mp_conv_out_size(h, kh, stride, pad.top, pad.bottom), wo = mp_conv_out_size(w, kw, stride, pad.left, pad.right);
  for (int o = 0; o < c_out; o++)
    for (int oy = 0; oy < ho; oy++)
      for (int ox = 0; ox < wo; ox++) {
        double s = bias ? bias[o] : 0.0;
        for (int c = 0; c < c_in; c++)
          for (int ky = 0; ky < kh; ky++)
            for (int kx = 0; kx < kw; kx++) {
              int iy = oy * stride - pad.top + ky, ix = ox * stride - pad.left + kx;
              if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
              s += (double)weight[((o * c_in + c) * kh + ky) * kw + kx] * x[((int64_t)c * h + iy) * w + ix];
            }
        y[((int64_t)o * ho + oy) * wo + ox] = (float)s;
      }
}

void mp_ref_group_norm(float *y, const float *x, int C, int64_t hw, int groups, const float *gamma, const float *beta,
                       float eps, bool silu) {
  int cg = C / groups;
  for (int g = 0; g < groups; g++) {
    const float *xg = x + (int64_t)g * cg * hw;
    int64_t n = (int64_t)cg * hw;
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++) mean += xg[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) var += (xg[i] - mean) * (xg[i] - mean);
    var /= (double)n;
    for (int c = 0; c < cg; c++) {
      int ch = g * cg + c;
      for (int64_t i = 0; i < hw; i++) {
        double v = (xg[c * hw + i] - mean) / sqrt(var + eps) * gamma[ch] + beta[ch];
        if (silu) v = v / (1.0 + exp(-v));
        y[(int64_t)ch * hw + i] = (float)v;
      }
    }
  }
}

void mp_ref_upsample_nearest2x(float *y, const float *x, int64_t planes, int h, int w) {
  for (int64_t p = 0; p < planes; p++)
    for (int i = 0; i < 2 * h; i++)
      for (int j = 0; j < 2 * w; j++) y[(p * 2 * h + i) * 2 * w + j] = x[(p * h + i / 2) * w + j / 2];
}

void mp_ref_geglu(float *y, const float *x, int64_t n, int64_t d) {
  for (int64_t r = 0; r < n; r++)
    for (int64_t j = 0; j < d; j++) {
      double g = x[r * 2 * d + d + j];
      y[r * d + j] = (float)(x[r * 2 * d + j] * 0.5 * g * (1.0 + erf(g / sqrt(2.0))));
    }
}
