/* Neural-network operators on contiguous f32 activations.
 *
 * Activations are row-major f32 buffers with their sizes passed explicitly, the way the model
 * files read best (llama2.c style). Weights are mp_tensors that keep their stored dtype (f32, f16
 * or bf16); an op converts them where it consumes them. Every op has a plain reference twin in
 * ops_ref.c (mp_ref_*) that the tests use to check the fast version.
 *
 * Layout conventions: a sequence of tokens is [n_tokens, dim]; images are NCHW [C, H, W] per
 * batch item (the layout checkpoints store convolution weights for). */
#ifndef MP_CORE_OPS_H
#define MP_CORE_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tensor.h"
#include "core/threads.h"

/* y[n, out] = x[n, in] · Wᵀ + b, with W [out, in] (PyTorch Linear layout) in any float dtype.
 * `bias` may be NULL. `scratch` must hold mp_linear_scratch_floats(W) floats or be NULL (then
 * the op allocates). */
mp_error *mp_linear(mp_pool *pool, float *y, const float *x, int64_t n, const mp_tensor *W, const mp_tensor *bias);

/* General f32 matrix product C[m,n] = alpha * op(A)[m,k] · op(B)[k,n] + beta * C (row-major,
 * BLAS semantics; lda/ldb/ldc are row strides). The GEMM backend everything else stands on. */
void mp_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
             const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* out[i, :] = table[ids[i], :]. Fails on an id outside the table. */
mp_error *mp_embedding(float *out, const int32_t *ids, int64_t n, const mp_tensor *table);

/* LayerNorm over the last dimension of x [n, dim], in place allowed (y may equal x). */
void mp_layer_norm(mp_pool *pool, float *y, const float *x, int64_t n, int64_t dim, const float *gamma, const float *beta,
                   float eps);

/* Numerically stable softmax over rows of length `len`, in place. */
void mp_softmax_rows(float *x, int64_t rows, int64_t len);

/* Multi-head scaled dot-product attention.
 * q [nq, heads*hd], k/v [nk, heads*hd] (token-major, heads interleaved as PyTorch projections
 * produce them), out [nq, heads*hd]. `causal` masks key j > query i. Computed in blocks with an
 * online softmax: memory is O(block), never O(nq*nk). */
void mp_attention(mp_pool *pool, float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                  int heads, int head_dim, bool causal);

/* Elementwise. */
void mp_quick_gelu(float *x, int64_t n); /* x * sigmoid(1.702 x), CLIP's activation */
void mp_gelu(float *x, int64_t n);       /* exact erf GELU */
void mp_silu(float *x, int64_t n);
void mp_add(float *y, const float *a, const float *b, int64_t n); /* y = a + b; y may alias */

/* Weights as f32: a view when already f32, else a converted copy the caller frees with mp_free. */
mp_error *mp_weight_f32(const mp_tensor *w, const float **out, float **to_free);

/* ---- Reference twins: straightforward loops, used by tests only ---- */
void mp_ref_linear(float *y, const float *x, int64_t n, const float *W, const float *b, int64_t in, int64_t out);
void mp_ref_layer_norm(float *y, const float *x, int64_t n, int64_t dim, const float *gamma, const float *beta, float eps);
void mp_ref_attention(float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk, int heads,
                      int head_dim, bool causal);

#endif
