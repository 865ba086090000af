/* 2-D convolution on oneDNN's own bf16 convolution primitive (brgconv on AVX-512 BF16): weights
 * rounded to bf16 and reordered into the primitive's blocked layout once; per call the f32 NCHW
 * input is reordered to blocked bf16, convolved with fused bias (f32 accumulation and output) and
 * reordered back to f32 NCHW. Measured 1.4-2.1x faster than bf16 im2col + matmul on the UNet's
 * 3x3 shapes (bench/conv_bf16.c, bench/RESULTS.md). Used by mp_conv2d under a bf16 backend. */
#ifndef MP_CORE_CONV_DNNL_H
#define MP_CORE_CONV_DNNL_H

#include "core/conv.h"
#include "core/matmul.h"

typedef struct mp_dnnl_conv mp_dnnl_conv;

/* Pack W [c_out, c_in, kh, kw] (+ bias [c_out] or NULL) for this stride and padding, in the layout
 * oneDNN picks for input shape [batch, c_in, h, w]. Fails where oneDNN has only its reference kernel. */
mp_error *mp_dnnl_conv_create(mp_backend *b, const mp_tensor *W, const mp_tensor *bias, int stride, mp_pad pad, int batch,
                              int h, int w, mp_dnnl_conv **out);
void mp_dnnl_conv_free(mp_dnnl_conv *c);
/* Take the packed weight's pages out of the resident set when mapped from the pack store; NULL: no-op. */
void mp_dnnl_conv_drop_resident(mp_dnnl_conv *c);
/* y [batch, c_out, ho, wo] = conv(x [batch, c_in, h, w]); scratch for the blocked copies comes from ws.
 * Fails (and the caller falls back) where the packed layout leaves only the reference kernel. */
mp_error *mp_dnnl_conv_run(mp_dnnl_conv *c, mp_workspace *ws, const float *x, int batch, int h, int w, float *y);
/* The same on NHWC activations: x [batch, h, w, c_in] bf16 -> y [batch, ho, wo, c_out] f32, with no
 * reorder where the primitive's own layouts are NHWC (brgconv's are); with `accumulate`, y += the
 * convolution, by oneDNN's sum post-op where it has one for the shape (a residual add in the
 * convolution's epilogue: no pass of its own), else added after. */
mp_error *mp_dnnl_conv_run_nhwc(mp_dnnl_conv *c, mp_workspace *ws, const uint16_t *x, int batch, int h, int w, float *y,
                                bool accumulate);

#endif
