/* Reference twins of the NHWC convolutions: the textbook sums, one output value at a time. */
#include <math.h>

#include "core/nhwc_ops.h"

static float ref_act(float v, mp_act act) {
  switch (act) {
    case MP_ACT_RELU: return fmaxf(v, 0);
    case MP_ACT_RELU6: return fminf(fmaxf(v, 0), 6);
    case MP_ACT_RELU_N1_TO_1: return fminf(fmaxf(v, -1), 1);
    case MP_ACT_TANH: return tanhf(v);
    default: return v;
  }
}

void mp_ref_nhwc_conv2d(float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p) {
  for (int oy = 0; oy < p->out_h; oy++)
    for (int ox = 0; ox < p->out_w; ox++)
      for (int o = 0; o < p->out_c; o++) {
        double s = bias ? bias[o] : 0;
        for (int ky = 0; ky < p->k_h; ky++)
          for (int kx = 0; kx < p->k_w; kx++) {
            int iy = oy * p->stride_h - p->pad_top + ky * p->dil_h, ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue;
            for (int c = 0; c < p->in_c; c++)
              s += (double)in[((long)iy * p->in_w + ix) * p->in_c + c] *
                   w[(((long)o * p->k_h + ky) * p->k_w + kx) * p->in_c + c];
          }
        out[((long)oy * p->out_w + ox) * p->out_c + o] = ref_act((float)s, p->act);
      }
}

void mp_ref_nhwc_depthwise_conv2d(float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p) {
  for (int oy = 0; oy < p->out_h; oy++)
    for (int ox = 0; ox < p->out_w; ox++)
      for (int o = 0; o < p->out_c; o++) {
        double s = bias ? bias[o] : 0;
        int c = o / p->depth_multiplier;
        for (int ky = 0; ky < p->k_h; ky++)
          for (int kx = 0; kx < p->k_w; kx++) {
            int iy = oy * p->stride_h - p->pad_top + ky * p->dil_h, ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
            if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w) continue;
            s += (double)in[((long)iy * p->in_w + ix) * p->in_c + c] * w[((long)ky * p->k_w + kx) * p->out_c + o];
          }
        out[((long)oy * p->out_w + ox) * p->out_c + o] = ref_act((float)s, p->act);
      }
}
