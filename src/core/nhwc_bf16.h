/* Operators on NHWC f32 activations ([pixels, C], one image) that feed bf16 convolutions
 * (mp_conv2d_nhwc_bf16): group norm (+ SiLU) and nearest 2x upsampling, each writing the
 * convolution's bf16 input directly, rounded to nearest even as oneDNN's reorder rounds.
 *
 * Why: on NCHW f32 activations every bf16 convolution is wrapped in two oneDNN reorders (NCHW f32
 * to NHWC bf16 before, NHWC f32 to NCHW after), whole passes over memory that took 23 % of a
 * 512x512 bf16 VAE decode and grew faster than the pixels. Kept NHWC, the activations go from
 * convolution to convolution with only the norm in between. */
#ifndef MP_CORE_NHWC_BF16_H
#define MP_CORE_NHWC_BF16_H

#include <stdbool.h>
#include <stdint.h>

#include "core/conv.h"
#include "core/threads.h"

/* GroupNorm over x [hw, C] with `groups` groups (C % groups == 0), affine gamma/beta [C], then SiLU
 * when `silu`; y [hw, C] as bf16 when y_bf16, else f32 (y may equal x only then). Statistics as
 * mp_group_norm's: chunk means and centred sums merged in double. Scratch from ws. */
mp_error *mp_group_norm_nhwc(mp_pool *pool, mp_workspace *ws, void *y, bool y_bf16, const float *x, int64_t hw, int C, int groups,
                             const float *gamma, const float *beta, float eps, bool silu);
/* The same of x + bias, bias [C] added to every pixel (a ResBlock's time embedding), without a pass
 * that writes x + bias: the bias moves each channel's mean and folds into the affine map. */
mp_error *mp_group_norm_nhwc_biased(mp_pool *pool, mp_workspace *ws, void *y, bool y_bf16, const float *x, const float *bias,
                                    int64_t hw, int C, int groups, const float *gamma, const float *beta, float eps, bool silu);

/* y [2h, 2w, C] bf16 = x [h, w, C] f32 repeated 2x2, rounded to bf16. */
void mp_upsample_nearest2x_nhwc_bf16(mp_pool *pool, uint16_t *y, const float *x, int h, int w, int C);

/* dst[i] = src[i] rounded to bf16 for i < n, split over the pool (a stride-2 convolution's input). */
void mp_bf16_copy(mp_pool *pool, uint16_t *dst, const float *src, int64_t n);

/* dst[i] = src[i] rounded to bf16 (nearest even; denormals to zero), by vcvtneps2bf16 when cpu_bf16
 * (the CPU must have AVX512_BF16), else in C; both give the same bits (tested). */
void mp_bf16_row(uint16_t *dst, const float *src, int64_t n, bool cpu_bf16);

#endif
