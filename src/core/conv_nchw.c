/* Convolution as banded im2col + GEMM (see conv_nchw.h). */
#include "core/conv_nchw.h"

#include <stdint.h>
#include <string.h>

#include "core/ops.h"
#include "core/tensor.h"

void mp_conv2d_out_size(const mp_conv2d_desc *d, int h, int w, int *oh, int *ow) {
  int64_t ekh = (int64_t)d->dil_h * (d->kh - 1) + 1, ekw = (int64_t)d->dil_w * (d->kw - 1) + 1;
  int64_t nh = (int64_t)h + d->pad_top + d->pad_bottom - ekh, nw = (int64_t)w + d->pad_left + d->pad_right - ekw;
  *oh = nh < 0 || d->stride_h < 1 ? 0 : (int)(nh / d->stride_h + 1);
  *ow = nw < 0 || d->stride_w < 1 ? 0 : (int)(nw / d->stride_w + 1);
}

typedef struct {
  const mp_conv2d_desc *d;
  const float *in;
  int h, w, ow;
  int oy0, rows; /* the band */
  float *col;    /* [c_in*kh*kw, rows*ow] */
} im2col_job;

/* Rows [begin, end) of the unfolded matrix, one (ci, ky, kx) each. */
static void im2col_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const im2col_job *j = ctx;
  const mp_conv2d_desc *d = j->d;
  const int ncols = j->rows * j->ow;
  for (int64_t r = begin; r < end; r++) {
    int kx = (int)(r % d->kw), ky = (int)(r / d->kw % d->kh), ci = (int)(r / ((int64_t)d->kw * d->kh));
    const float *plane = j->in + (size_t)ci * j->h * j->w;
    float *dst = j->col + (size_t)r * ncols;
    /* output columns whose input column is inside the image: ox in [x_lo, x_hi) */
    int off = kx * d->dil_w - d->pad_left;
    int x_lo = off >= 0 ? 0 : (-off + d->stride_w - 1) / d->stride_w;
    int x_hi = j->w - off <= 0 ? 0 : (j->w - off - 1) / d->stride_w + 1;
    if (x_hi > j->ow) x_hi = j->ow;
    if (x_lo > x_hi) x_lo = x_hi;
    for (int t = 0; t < j->rows; t++, dst += j->ow) {
      int iy = (j->oy0 + t) * d->stride_h - d->pad_top + ky * d->dil_h;
      if (iy < 0 || iy >= j->h) {
        memset(dst, 0, (size_t)j->ow * sizeof *dst);
        continue;
      }
      const float *src = plane + (size_t)iy * j->w;
      memset(dst, 0, (size_t)x_lo * sizeof *dst);
      if (d->stride_w == 1) memcpy(dst + x_lo, src + x_lo + off, (size_t)(x_hi - x_lo) * sizeof *dst);
      else
        for (int ox = x_lo; ox < x_hi; ox++) dst[ox] = src[ox * d->stride_w + off];
      memset(dst + x_hi, 0, (size_t)(j->ow - x_hi) * sizeof *dst);
    }
  }
}

mp_error *mp_conv2d_nchw(mp_pool *pool, const mp_conv2d_desc *d, const float *in, int h, int w, const float *weight,
                         const float *bias, float *out) {
  if (d->c_in < 1 || d->c_out < 1 || d->kh < 1 || d->kw < 1 || d->stride_h < 1 || d->stride_w < 1 || d->dil_h < 1 ||
      d->dil_w < 1 || d->pad_top < 0 || d->pad_left < 0 || d->pad_bottom < 0 || d->pad_right < 0 || h < 1 || w < 1)
    return mp_errorf("convolution: invalid description (c_in %d c_out %d kernel %dx%d stride %dx%d dilation %dx%d)", d->c_in,
                     d->c_out, d->kh, d->kw, d->stride_h, d->stride_w, d->dil_h, d->dil_w);
  int oh, ow;
  mp_conv2d_out_size(d, h, w, &oh, &ow);
  if (oh < 1 || ow < 1)
    return mp_errorf("convolution: a %dx%d kernel does not fit a %dx%d input with this padding", d->kh, d->kw, h, w);
  const int64_t K = (int64_t)d->c_in * d->kh * d->kw;
  const int64_t plane = (int64_t)oh * ow;
  const bool pointwise = d->kh == 1 && d->kw == 1 && d->stride_h == 1 && d->stride_w == 1 && !d->pad_top &&
                         !d->pad_left && !d->pad_bottom && !d->pad_right;
  if (pointwise) {
    /* a 1x1 convolution is one GEMM on the input as it is */
    mp_gemm(false, false, d->c_out, plane, K, 1.0f, weight, K, in, (int64_t)h * w, 0.0f, out, plane);
  } else {
    int64_t rows = (int64_t)MP_CONV_BAND_BYTES / ((int64_t)sizeof(float) * K * ow);
    if (rows < 1) rows = 1;
    if (rows > oh) rows = oh;
    float *col = mp_alloc((size_t)(K * rows * ow) * sizeof(float));
    if (!col) return mp_errorf("convolution: out of memory for a %lld x %lld unfold buffer", (long long)K, (long long)(rows * ow));
    for (int oy0 = 0; oy0 < oh; oy0 += (int)rows) {
      int r = oh - oy0 < rows ? oh - oy0 : (int)rows;
      im2col_job job = {d, in, h, w, ow, oy0, r, col};
      mp_pool_for(pool, K, K / 16 > 0 ? (K + 15) / 16 : 1, im2col_rows, &job);
      mp_gemm(false, false, d->c_out, (int64_t)r * ow, K, 1.0f, weight, K, col, (int64_t)r * ow, 0.0f,
              out + (int64_t)oy0 * ow, plane);
    }
    mp_free(col);
  }
  if (bias)
    for (int co = 0; co < d->c_out; co++) {
      float *o = out + co * plane, b = bias[co];
      for (int64_t i = 0; i < plane; i++) o[i] += b;
    }
  return NULL;
}
