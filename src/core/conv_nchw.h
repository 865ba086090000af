/* 2-D convolution on one NCHW image ([C, H, W] f32), on the GEMM backend.
 *
 * The input is unfolded (im2col) one band of output rows at a time and each band is one GEMM with
 * the weights, so the scratch memory is bounded (about MP_CONV_BAND_BYTES) whatever the image size.
 * The weight layout is [c_out, c_in, kh, kw], as PyTorch and ncnn store it. mp_ref_conv2d_nchw (in
 * conv_nchw_ref.c) is the plain-loop twin the tests compare against. */
#ifndef MP_CORE_CONV_NCHW_H
#define MP_CORE_CONV_NCHW_H

#include "core/error.h"
#include "core/threads.h"

#define MP_CONV_BAND_BYTES (4u << 20)

typedef struct {
  int c_in, c_out;
  int kh, kw;
  int stride_h, stride_w;
  int dil_h, dil_w;
  int pad_top, pad_left, pad_bottom, pad_right; /* zeros */
} mp_conv2d_desc;

/* Output height and width for an h x w input; < 1 when the kernel does not fit. */
void mp_conv2d_out_size(const mp_conv2d_desc *d, int h, int w, int *oh, int *ow);

/* out [c_out, oh, ow] = conv(in [c_in, h, w]) + bias (bias may be NULL). Fails (without touching
 * out) on an invalid description or when scratch memory cannot be had. */
mp_error *mp_conv2d_nchw(mp_pool *pool, const mp_conv2d_desc *d, const float *in, int h, int w, const float *weight,
                         const float *bias, float *out);

/* Reference twin: straightforward loops, used by tests only. */
void mp_ref_conv2d_nchw(const mp_conv2d_desc *d, const float *in, int h, int w, const float *weight, const float *bias,
                        float *out);

#endif
