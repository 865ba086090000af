/* Matrix products with weights prepacked once: the GEMM backend the models' linear layers and
 * convolutions (as im2col GEMMs) stand on.
 *
 *   y[M, N] = x[M, K] · Wᵀ (+ bias)      W: [N, K...] in any float dtype (PyTorch Linear / Conv layout)
 *
 * Two implementations behind one interface, chosen per context (`--precision`):
 *   f32  — OpenBLAS sgemm; f16/bf16 weights are converted to f32 per call into a shared scratch, so
 *          memory holds only the stored (half-precision) weights.
 *   bf16 — oneDNN matmul on bf16 weights reordered once into its blocked layout; activations are
 *          rounded to bf16 per call, accumulation is f32. Used where the CPU has AVX-512 BF16 or AMX.
 * The reference twin is mp_ref_linear (core/ops.h). */
#ifndef MP_CORE_MATMUL_H
#define MP_CORE_MATMUL_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tensor.h"

typedef enum { MP_PRECISION_AUTO, MP_PRECISION_F32, MP_PRECISION_BF16 } mp_precision;

typedef struct mp_backend mp_backend;
typedef struct mp_matmul mp_matmul;

/* The oneDNN engine and stream of the backend (both precisions), for other oneDNN primitives
 * (core/conv_dnnl.c) that share its threads. */
struct dnnl_engine;
struct dnnl_stream;
struct dnnl_engine *mp_backend_dnnl_engine(const mp_backend *b);
struct dnnl_stream *mp_backend_dnnl_stream(const mp_backend *b);
struct mp_pack_cache;
/* The backend's cache of packed weights that outlive one model (core/pack_cache.h); NULL for b NULL. */
struct mp_pack_cache *mp_backend_pack_cache(const mp_backend *b);
/* Pages that packed weights private to a model give back when freed, for the next packs of the same
 * sizes (core/tensor.h); mp_backend_trim unmaps them. NULL for b NULL. */
mp_spare_pages *mp_backend_spare_pages(const mp_backend *b);

/* C[m, n] = A[m, k] · op(B), row-major with leading dimensions; op(B) = B [k, n] or, with trans_b,
 * Bᵀ for B [n, k]. oneDNN's f32 matmul (brgemm) on the backend's OpenMP threads, one primitive per
 * shape kept by the backend. Faster than OpenBLAS split over the pool for large row counts
 * (bench/dense_f32.c). Not reentrant per backend. */
mp_error *mp_backend_sgemm(mp_backend *b, bool trans_b, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda,
                           const float *B, int64_t ldb, float *C, int64_t ldc);

/* `precision` AUTO picks bf16 when the CPU supports it natively, else f32. */
mp_error *mp_backend_create(mp_precision precision, int n_threads, mp_backend **out);
void mp_backend_destroy(mp_backend *b);
mp_precision mp_backend_precision(const mp_backend *b);
/* mp_cpu_avx512_bf16() and (with it) mp_cpu_amx_usable(), asked when the backend was made. */
bool mp_backend_cpu_avx512_bf16(const mp_backend *b);
bool mp_backend_cpu_amx(const mp_backend *b);
/* Free the backend's shared scratch (it grows to the largest activation a matmul has rounded; the next
 * matmul allocates it again), take the packs mapped from the pack store out of the resident set and
 * return freed heap to the kernel. For between the phases of a job, to lower the peak RSS. b may be NULL. */
void mp_backend_trim(mp_backend *b);
/* That scratch, at least `bytes` long (NULL when it cannot grow, or b is NULL), for an operator that runs
 * between matmuls (the bf16 attention's packs): valid until the next matmul or trim of b. */
void *mp_backend_scratch(mp_backend *b, size_t bytes);
const char *mp_precision_name(mp_precision p);
/* "avx512_bf16", "amx_bf16" or "" — what the CPU offers for bf16. */
const char *mp_cpu_bf16_support(void);

/* Prepack W ([N, K] or [N, C, kh, kw] -> K = C*kh*kw) and an optional bias [N]. W must outlive the
 * matmul in the f32 path when it is already f32 (it is used in place). */
mp_error *mp_matmul_create(mp_backend *b, const mp_tensor *W, const mp_tensor *bias, mp_matmul **out);
void mp_matmul_free(mp_matmul *mm);
/* Take the packed weight's pages out of the resident set when they are mapped from the pack store (they
 * come back from the page cache on the next use); no-op otherwise or for NULL. */
void mp_matmul_drop_resident(mp_matmul *mm);
int64_t mp_matmul_n(const mp_matmul *mm);
int64_t mp_matmul_k(const mp_matmul *mm);

/* y[M, N] = x[M, K] · Wᵀ + bias; with `accumulate`, y += instead of =. Not reentrant per backend
 * (scratch is shared): models run one matmul at a time and parallelise inside it. */
mp_error *mp_matmul_run(mp_matmul *mm, const float *x, int64_t M, float *y, bool accumulate);
/* The same with x already rounded to bf16 (bf16 backend only): callers that build their input
 * (im2col) write bf16 directly and save a pass over it. */
mp_error *mp_matmul_run_bf16(mp_matmul *mm, const uint16_t *x, int64_t M, float *y, bool accumulate);

#endif
