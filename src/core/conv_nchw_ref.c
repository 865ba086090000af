/* Plain-loop twin of mp_conv2d_nchw (used by tests only). Accumulates in double. */
#include "core/conv_nchw.h"

#include <stddef.h>

void mp_ref_conv2d_nchw(const mp_conv2d_desc *d, const float *in, int h, int w, const float *weight, const float *bias,
                        float *out) {
  int oh, ow;
  mp_conv2d_out_size(d, h, w, &oh, &ow);
  for (int co = 0; co < d->c_out; co++)
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++) {
        double acc = bias ? bias[co] : 0.0;
        for (int ci = 0; ci < d->c_in; ci++)
          for (int ky = 0; ky < d->kh; ky++) {
            int iy = oy * d->stride_h - d->pad_top + ky * d->dil_h;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < d->kw; kx++) {
              int ix = ox * d->stride_w - d->pad_left + kx * d->dil_w;
              if (ix < 0 || ix >= w) continue;
              acc += (double)weight[((co * d->c_in + ci) * d->kh + ky) * d->kw + kx] * in[((size_t)ci * h + iy) * w + ix];
            }
          }
        out[((size_t)co * oh + oy) * ow + ox] = (float)acc;
      }
}
