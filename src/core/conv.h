/* Image operators for the diffusion models: 2-D convolution, group normalisation, nearest
 * upsampling, GEGLU, and the weight-conversion workspace they share.
 *
 * Activations are f32 NCHW ([batch, C, H, W], contiguous). Weights are mp_tensors in their stored
 * dtype (f32, f16 or bf16; convolution weights [out, in, kh, kw] as PyTorch stores them) and are
 * converted per call into an mp_workspace the caller owns and reuses, so a model keeps its weights
 * memory-mapped in f16 and never holds an f32 copy of all of them.
 *
 * The backend seam: mp_conv2d and mp_dense are the only entry points the models use for their
 * heavy arithmetic. Today they lower to im2col + mp_gemm (f32); a bf16/AMX backend replaces their
 * bodies (or dispatches inside them) without touching model code. Each has a reference twin
 * (mp_ref_* in conv_ref.c) that the tests compare against. */
#ifndef MP_CORE_CONV_H
#define MP_CORE_CONV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tensor.h"
#include "core/threads.h"

/* A growable scratch buffer (64-byte aligned), and the weights prepacked for the pool's backend
 * (bf16: each weight is rounded and reordered into oneDNN's blocked layout the first time a
 * forward uses it, then reused; the workspace owns the packed copies, so it must not outlive
 * the weights it saw, and one workspace serves one model). Not thread-safe: one per model. */
struct mp_packed_weight;
typedef struct {
  void *p;
  size_t cap;
  struct mp_packed_weight *packs;
  size_t n_packs, cap_packs;
  bool f32_only; /* the model's ops stay f32 whatever the pool's backend (accuracy, see docs/speed.md) */
} mp_workspace;

/* Ensure at least `bytes` bytes; contents are not preserved. */
mp_error *mp_workspace_reserve(mp_workspace *ws, size_t bytes);
void mp_workspace_free(mp_workspace *ws);
/* Free the scratch buffer but keep the packed weights (between phases of a job: e.g. the UNet's
 * scratch is not needed while the VAE decodes, and holding it raises the peak RSS). */
void mp_workspace_trim(mp_workspace *ws);

/* Convert n elements of src (f32/f16/bf16) to f32, split over the pool. */
void mp_convert_to_f32_par(mp_pool *pool, float *dst, const void *src, mp_dtype dt, size_t n);

/* Padding of a convolution: rows added above/below, columns left/right (zeros). */
typedef struct {
  int top, bottom, left, right;
} mp_pad;

/* y[b] = conv2d(x[b], weight, stride, pad) + bias for b < batch.
 * x [batch, c_in, h, w]; weight [c_out, c_in, kh, kw]; bias [c_out] or NULL;
 * y [batch, c_out, ho, wo] with ho = (h + top + bottom - kh) / stride + 1 (likewise wo).
 * `ws` holds the converted weight and im2col bands (bounded, a few MB beyond the weight).
 * y must not alias x. */
mp_error *mp_conv2d(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int c_in, int h, int w,
                    const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad);
/* NHWC activations between bf16 convolutions (the VAE's bf16 levels): y [batch, ho, wo, c_out] f32 =
 * conv2d(x [batch, h, w, c_in] bf16) + bias (y += that with `accumulate`: a residual add in the
 * convolution's epilogue), on the bf16 backend's direct convolution (the weight
 * packed as mp_conv2d packs it), with none of the per-call reorders mp_conv2d's NCHW f32 needs.
 * Usable (mp_conv2d_nhwc_usable) where mp_conv2d on a workspace that is not f32_only would take
 * that convolution: a bf16 backend, 32+ channels each way, and not the shapes it runs by
 * Winograd. Fails elsewhere and where oneDNN declines; the caller then keeps to mp_conv2d. */
bool mp_conv2d_nhwc_usable(mp_pool *pool, int c_in, int c_out, int h, int w, int batch);
mp_error *mp_conv2d_nhwc_bf16(mp_pool *pool, mp_workspace *ws, float *y, const uint16_t *x, int batch, int c_in, int h, int w,
                              const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad, bool accumulate);
/* The 3x3, stride 1, padding 1 case by Winograd F(tile x tile, 3x3), tile 2 or 4; mp_conv2d uses
 * tile 2 from 1024 pixels and tile 4 from 4096 (below, transforming and repacking the weight costs
 * what the saved arithmetic gains). max_tiles > 0 caps the tiles per band (tests; 0 = by memory budget). */
mp_error *mp_conv3x3_winograd(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int c_in, int h, int w,
                              const mp_tensor *weight, const mp_tensor *bias, int tile, int64_t max_tiles);
/* Output size of a convolution along one axis. */
static inline int mp_conv_out_size(int in, int k, int stride, int pad_lo, int pad_hi) {
  return (in + pad_lo + pad_hi - k) / stride + 1;
}

/* y[n, out] = x[n, in] · Wᵀ + b (Linear; W [out, in] any float dtype; bias may be NULL), the weight
 * converted through `ws`. Also accepts W [out, in, 1, 1] (a 1x1 convolution used on tokens). */
mp_error *mp_dense(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int64_t n, const mp_tensor *W,
                   const mp_tensor *bias);
/* y[n, out] += x[n, in] · Wᵀ + b: a residual added in the product's epilogue instead of a pass of its
 * own over y (under a bf16 backend the same bits as mp_dense into a scratch, then the add). */
mp_error *mp_dense_add(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int64_t n, const mp_tensor *W,
                       const mp_tensor *bias);

/* Several dense layers on one input: outs[i].y = x · outs[i].Wᵀ + outs[i].bias for i < count, as
 * mp_dense gives each. Under a bf16 backend x is converted to bf16 once for all of them (a
 * self-attention's q, k and v). */
typedef struct {
  float *y;
  const mp_tensor *W, *bias;
} mp_dense_out;
mp_error *mp_dense_shared(mp_pool *pool, mp_workspace *ws, const float *x, int64_t n, const mp_dense_out *outs, int count);

/* A small float vector (bias, norm scale) as f32 into `dst` (n elements; fails on a size mismatch). */
mp_error *mp_vector_f32(const mp_tensor *t, float *dst, int64_t n);

/* C[m, n] = A[m, k] · op(B) + beta C (row-major f32; op(B) = B [k, n], or Bᵀ for B [n, k] when
 * trans_b), computed as single-threaded BLAS blocks spread over the pool. */
void mp_gemm_pool(mp_pool *pool, bool trans_b, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float beta, float *C, int64_t ldc);

/* GroupNorm over x [batch, C, HW] with `groups` groups (C % groups == 0), affine gamma/beta [C]
 * (f32), then SiLU when `silu`. y may equal x. Statistics in double. */
void mp_group_norm(mp_pool *pool, float *y, const float *x, int batch, int C, int64_t hw, int groups, const float *gamma,
                   const float *beta, float eps, bool silu);

/* Nearest-neighbour 2x upsampling: x [planes, h, w] -> y [planes, 2h, 2w]. */
void mp_upsample_nearest2x(mp_pool *pool, float *y, const float *x, int64_t planes, int h, int w);

/* GEGLU's gating: x [n, 2*d] (hidden then gate, as the projection produces them) ->
 * y [n, d] = hidden * gelu(gate) (exact erf GELU). y may equal x (rows are compacted in place). */
void mp_geglu(mp_pool *pool, float *y, const float *x, int64_t n, int64_t d);

/* y [n, out] = dense(GEGLU(x)) with W [out, d] (a transformer's feed-forward output), x [n, 2*d] as
 * mp_geglu takes it; y += that with `accumulate` (the residual, as mp_dense_add). Under a bf16
 * backend the gated rows go straight to the bf16 the GEMM reads (the same values, rounded the same
 * way, as mp_geglu then mp_dense), without the [n, d] f32 tensor's round trip through memory;
 * otherwise `gated` [n, d] holds them (it may equal x). */
mp_error *mp_dense_geglu(mp_pool *pool, mp_workspace *ws, float *y, float *gated, const float *x, int64_t n, int64_t d,
                         const mp_tensor *W, const mp_tensor *bias, bool accumulate);

/* dst[cols, rows] = src[rows, cols]ᵀ (e.g. a [C, HW] image to [HW, C] tokens). dst must not alias src. */
void mp_transpose(mp_pool *pool, float *dst, const float *src, int64_t rows, int64_t cols);
/* dst[rows, cols] += src[cols, rows]ᵀ (tokens back onto an image, with a residual add). */
void mp_transpose_add(mp_pool *pool, float *dst, const float *src, int64_t rows, int64_t cols);

/* ---- Reference twins (tests only) ---- */
void mp_ref_conv2d(float *y, const float *x, int c_in, int h, int w, const float *weight, const float *bias, int c_out, int kh,
                   int kw, int stride, mp_pad pad);
void mp_ref_group_norm(float *y, const float *x, int C, int64_t hw, int groups, const float *gamma, const float *beta,
                       float eps, bool silu);
void mp_ref_upsample_nearest2x(float *y, const float *x, int64_t planes, int h, int w);
void mp_ref_geglu(float *y, const float *x, int64_t n, int64_t d);

#endif
