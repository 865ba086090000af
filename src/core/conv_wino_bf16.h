/* 3x3, stride 1, padding 1 convolutions by Winograd F(2x2, 3x3) with bf16 products: the bf16
 * backend's alternative to oneDNN's direct convolution (conv_dnnl.h).
 *
 * Each 2x2 block of outputs comes from a 4x4 input patch d: V = Bᵀ d B, U = G g Gᵀ,
 * Y = Aᵀ (U ⊙ V) A. Summed over input channels, the 16 elementwise products become 16 GEMMs
 * M[ξ][tiles, O] = V[ξ][tiles, C] · U[ξ][C, O], which run as one batched oneDNN bf16 matmul
 * (f32 accumulation; AMX or AVX512-BF16 as oneDNN picks): 16/4 = 4 multiply-adds per output and
 * channel pair against 9 for the direct convolution. The transforms are f32: U is computed once at
 * pack time and rounded to bf16; V is rounded to bf16 per call; the output transform reads f32.
 * F(4x4, 3x3) is not offered: its transforms (coefficients up to 8) amplify bf16 rounding beyond
 * the reduced-precision bounds. Whether this beats the direct convolution depends on the CPU and
 * the shape: mp_wino_bf16_pays holds the measured choice (bench/conv_wino_bf16.c, bench/RESULTS.md). */
#ifndef MP_CORE_CONV_WINO_BF16_H
#define MP_CORE_CONV_WINO_BF16_H

#include <stdbool.h>

#include "core/conv.h"
#include "core/matmul.h"

typedef struct mp_wino_bf16 mp_wino_bf16;

/* The pack store's kind for these packs (core/pack_store.h): a pinned checkpoint weight's U is saved
 * on its first packing and mapped by the next process, as the matmul and direct convolution packs are. */
#define MP_WINO_BF16_PACK_KIND "wino-f2x3-bf16"

/* Pack W [c_out, c_in, 3, 3] (any float dtype) and bias [c_out] (or NULL) on the bf16 backend b. */
mp_error *mp_wino_bf16_create(mp_backend *b, const mp_tensor *W, const mp_tensor *bias, mp_wino_bf16 **out);
void mp_wino_bf16_free(mp_wino_bf16 *c);
/* Take the packed weight out of the resident set when it is mapped from the pack store (it comes
 * back from the page cache on the next run; heap packs stay). */
void mp_wino_bf16_drop_resident(mp_wino_bf16 *c);
/* The packed weight as the matmul reads it, and its size (for tests: a mapped pack against a fresh one). */
const void *mp_wino_bf16_packed(const mp_wino_bf16 *c, size_t *bytes);
/* y [batch, c_out, h, w] = conv3x3(x [batch, c_in, h, w], padding 1) + bias; any h, w >= 1. The
 * transformed input and the products live in ws (bounded, about 64 MB); y must not alias x.
 * band_rows > 0 caps the tile rows per band (tests; 0 = by the memory budget). */
mp_error *mp_wino_bf16_run(mp_wino_bf16 *c, mp_pool *pool, mp_workspace *ws, const float *x, int batch, int h, int w,
                           float *y, int band_rows);
/* Whether mp_conv2d takes this path over the direct convolution for this shape on this CPU. */
bool mp_wino_bf16_pays(int c_in, int c_out, int h, int w, int batch);

#endif
