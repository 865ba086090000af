/* Image operators on NHWC f32 activations (batch 1), as TFLite models lay them out.
 *
 * The channel dimension is innermost, so a convolution is one matrix product: every output pixel
 * is a row of an im2col matrix [pixels, KH*KW*C] times the weights [O, KH*KW*C]ᵀ (TFLite's OHWI
 * layout is already that matrix). The convolutions run on mp_gemm; the depthwise ones are plain
 * loops vectorised over channels. Reference twins (mp_ref_nhwc_*) are in nhwc_ops_ref.c. */
#ifndef MP_CORE_NHWC_OPS_H
#define MP_CORE_NHWC_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threads.h"

/* Fused activations (the values are TFLite's ActivationFunctionType). */
typedef enum { MP_ACT_NONE = 0, MP_ACT_RELU = 1, MP_ACT_RELU_N1_TO_1 = 2, MP_ACT_RELU6 = 3, MP_ACT_TANH = 4 } mp_act;

typedef struct {
  int in_h, in_w, in_c;
  int out_h, out_w, out_c;
  int k_h, k_w;
  int stride_h, stride_w;
  int dil_h, dil_w;
  int pad_top, pad_left; /* zero padding before the first row/column */
  int depth_multiplier;  /* depthwise only: out_c = in_c * depth_multiplier */
  mp_act act;
} mp_conv_params;

/* TFLite output size and leading pad for one spatial dimension. same_padding: SAME, else VALID. */
void mp_conv_out_size(int in, int k, int stride, int dil, bool same_padding, int *out, int *pad_before);

void mp_activate(float *x, int64_t n, mp_act act);

/* out [OH,OW,O] = conv(in [H,W,C], w [O,KH,KW,C]) + bias [O] (bias may be NULL), then act. */
void mp_nhwc_conv2d(mp_pool *pool, float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p);
/* Depthwise: w [1,KH,KW,C*M]; output channel c*M+m reads input channel c. */
void mp_nhwc_depthwise_conv2d(mp_pool *pool, float *out, const float *in, const float *w, const float *bias,
                              const mp_conv_params *p);
/* Transposed convolution (MediaPipe's Convolution2DTransposeBias): w [O,KH,KW,C]; input pixel
 * (iy,ix) adds into output (iy*sh - pad_top + ky, ix*sw - pad_left + kx). */
void mp_nhwc_transpose_conv2d(float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p);
/* Max or average pooling (average counts only the taps inside the image, as TFLite does). */
void mp_nhwc_pool2d(mp_pool *pool, float *out, const float *in, const mp_conv_params *p, bool max);
/* Bilinear resize with TFLite's coordinate rules (align_corners / half_pixel_centers). */
void mp_nhwc_resize_bilinear(float *out, const float *in, int in_h, int in_w, int c, int out_h, int out_w,
                             bool align_corners, bool half_pixel_centers);
/* out [H*b, W*b, C] from in [H, W, C*b*b] (TFLite DEPTH_TO_SPACE, DCR order). */
void mp_nhwc_depth_to_space(float *out, const float *in, int h, int w, int c_out, int block);

/* Elementwise binary op with numpy broadcasting over shapes of up to MP_BCAST_DIMS dims
 * (right-aligned; a size-1 dimension repeats). out has the broadcast shape. */
#define MP_BCAST_DIMS 6
typedef enum { MP_BIN_ADD, MP_BIN_MUL, MP_BIN_PRELU } mp_binop;
void mp_broadcast_binary(float *out, const float *a, int a_ndim, const int32_t *a_shape, const float *b, int b_ndim,
                         const int32_t *b_shape, int out_ndim, const int32_t *out_shape, mp_binop op);

/* ---- Reference twins: straightforward loops, used by tests only ---- */
void mp_ref_nhwc_conv2d(float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p);
void mp_ref_nhwc_depthwise_conv2d(float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p);

#endif
