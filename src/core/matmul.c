#include "core/matmul.h"

#include <cblas.h>
#include <cpuid.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>

#include "core/cpu_kernels.h"
#include "core/pack_cache.h"
#include "core/pack_dnnl.h"

#define SGEMM_CACHE 48

struct mp_backend {
  mp_precision precision;
  /* what the CPU offers the hand-written bf16 kernels (core/cpu_kernels.h), asked once here: cpuid
   * traps to the hypervisor in a VM, too slow to ask on every attention call */
  bool cpu_avx512_bf16, cpu_amx;
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  /* f32 matmul primitives by shape for mp_backend_sgemm (weights are plain and change per call,
   * so a primitive depends only on the shape; a UNet has a few dozen) */
  struct sgemm_prim {
    bool trans_b;
    int64_t m, n, k, lda, ldb, ldc;
    dnnl_primitive_t prim;
  } sgemm[SGEMM_CACHE];
  int n_sgemm, next_sgemm;
  /* grow-only scratch shared by all matmuls of this backend: converted weights (f32) or rounded
   * activations (bf16) */
  void *scratch;
  size_t scratch_bytes;
  mp_pack_cache *packs; /* packed weights of pinned (long-lived) tensors, shared by all models */
  mp_spare_pages *spares; /* pages of freed private packs, for the next ones (mp_backend_spare_pages) */
};

/* What the spares keep at most: a LoRA's packs at SD 1.5 size (rank 4 on every attention projection:
 * ~190 MB), with room for SDXL's larger layers. */
#define SPARE_PACK_BYTES ((size_t)768 << 20)

#define MM_CACHE 8

struct mp_matmul {
  mp_backend *b;
  int64_t N, K;
  const mp_tensor *W; /* f32 path: the stored weight */
  float *bias;        /* owned f32 copy, or NULL */
  /* bf16 path */
  dnnl_memory_t weights; /* packed bf16 */
  mp_packed_mem weights_mem; /* what holds it: a pack-store mapping or our own buffer */
  dnnl_memory_t bias_mem;
  dnnl_memory_desc_t w_packed_md;
  /* Primitives for the row counts seen so far. oneDNN 2.6 picks its fast brgemm kernels only for
   * a known M (with a runtime M it falls back to gemm:jit at about half the speed), so a primitive
   * is made per (M, accumulate) on first use; a model sees a handful of M per layer. */
  struct {
    int64_t M;
    bool acc;
    dnnl_primitive_t prim;
  } cache[MM_CACHE];
  int n_cache, next_evict;
};

const char *mp_precision_name(mp_precision p) {
  return p == MP_PRECISION_BF16 ? "bf16" : p == MP_PRECISION_F32 ? "f32" : "auto";
}

const char *mp_cpu_bf16_support(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return "";
  if (d & (1u << 22)) return "amx_bf16"; /* AMX-BF16 */
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5))) return "avx512_bf16";
  return "";
}

static mp_error *dnnl_err(dnnl_status_t s, const char *what) {
  return s == dnnl_success ? NULL : mp_errorf("oneDNN %s failed (status %d)", what, (int)s);
}

mp_error *mp_backend_create(mp_precision precision, int n_threads, mp_backend **out) {
  *out = NULL;
  mp_backend *b = calloc(1, sizeof *b);
  if (!b) return mp_errorf("out of memory");
  if (precision == MP_PRECISION_AUTO) precision = *mp_cpu_bf16_support() ? MP_PRECISION_BF16 : MP_PRECISION_F32;
  b->precision = precision;
  b->cpu_avx512_bf16 = mp_cpu_avx512_bf16();
  /* Our own AMX kernels (attention) follow oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA): capped to
   * AVX512_CORE_BF16, a run takes the path of a CPU without AMX (AMD Zen 4/5) throughout, which is
   * how that path is tested and timed on a CPU with AMX. */
  const dnnl_cpu_isa_t amx = dnnl_cpu_isa_avx512_core_amx;
  b->cpu_amx = b->cpu_avx512_bf16 && mp_cpu_amx_usable() && (dnnl_get_effective_cpu_isa() & amx) == amx;
  if (n_threads > 0) {
    omp_set_num_threads(n_threads); /* oneDNN's threads */
    openblas_set_num_threads(n_threads);
  }
  {
    mp_error *e = dnnl_err(dnnl_engine_create(&b->engine, dnnl_cpu, 0), "engine creation");
    if (!e) e = dnnl_err(dnnl_stream_create(&b->stream, b->engine, dnnl_stream_default_flags), "stream creation");
    if (!e) e = mp_pack_cache_create(&b->packs);
    if (!e && !(b->spares = mp_spare_pages_create(SPARE_PACK_BYTES))) e = mp_errorf("out of memory");
    if (e) {
      mp_backend_destroy(b);
      return e;
    }
  }
  *out = b;
  return NULL;
}

void mp_backend_destroy(mp_backend *b) {
  if (!b) return;
  mp_pack_cache_free(b->packs); /* before the engine its packs live on, and the spares they give back to */
  mp_spare_pages_free(b->spares);
  for (int i = 0; i < b->n_sgemm; i++) dnnl_primitive_destroy(b->sgemm[i].prim);
  if (b->stream) dnnl_stream_destroy(b->stream);
  if (b->engine) dnnl_engine_destroy(b->engine);
  mp_free(b->scratch);
  free(b);
}

mp_precision mp_backend_precision(const mp_backend *b) { return b->precision; }
bool mp_backend_cpu_avx512_bf16(const mp_backend *b) { return b->cpu_avx512_bf16; }
bool mp_backend_cpu_amx(const mp_backend *b) { return b->cpu_amx; }

void mp_backend_trim(mp_backend *b) {
  if (!b) return;
  mp_free(b->scratch);
  b->scratch = NULL;
  b->scratch_bytes = 0;
  /* Packs mapped from the pack store leave the resident set (clean file pages: they stay in the page
   * cache and come back on the next step), and freed heap returns to the kernel, so that the next phase
   * (the VAE decode) does not stack its peak on top of the UNet's weights. */
  mp_pack_cache_drop_resident(b->packs);
  mp_spare_pages_release(b->spares);
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}
struct dnnl_engine *mp_backend_dnnl_engine(const mp_backend *b) { return b->engine; }
struct dnnl_stream *mp_backend_dnnl_stream(const mp_backend *b) { return b->stream; }
mp_pack_cache *mp_backend_pack_cache(const mp_backend *b) { return b ? b->packs : NULL; }
mp_spare_pages *mp_backend_spare_pages(const mp_backend *b) { return b ? b->spares : NULL; }

static void *scratch(mp_backend *b, size_t bytes) {
  if (bytes > b->scratch_bytes) {
    mp_free(b->scratch);
    b->scratch = mp_alloc(bytes);
    b->scratch_bytes = b->scratch ? bytes : 0;
  }
  return b->scratch;
}

void *mp_backend_scratch(mp_backend *b, size_t bytes) { return b ? scratch(b, bytes) : NULL; }

/* ---- bf16 via oneDNN ---- */

static inline uint16_t bf16_round(float f) { /* round to nearest even, NaN stays NaN */
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static void to_bf16(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = 0; i < n; i++) dst[i] = bf16_round(src[i]);
}

static mp_error *make_primitive(mp_matmul *mm, int64_t M, const dnnl_memory_desc_t *w_any, bool accumulate, dnnl_primitive_t *prim,
                                dnnl_memory_desc_t *w_chosen) {
  dnnl_memory_desc_t src_md, dst_md;
  dnnl_dims_t sd = {M, mm->K}, dd = {M, mm->N};
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_tag(&src_md, 2, sd, dnnl_bf16, dnnl_ab), "src desc"));
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_tag(&dst_md, 2, dd, dnnl_f32, dnnl_ab), "dst desc"));
  dnnl_memory_desc_t bias_md;
  dnnl_dims_t bd = {1, mm->N};
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_tag(&bias_md, 2, bd, dnnl_f32, dnnl_ab), "bias desc"));
  dnnl_matmul_desc_t desc;
  MP_TRY(dnnl_err(dnnl_matmul_desc_init(&desc, &src_md, w_any, mm->bias ? &bias_md : NULL, &dst_md), "matmul desc"));
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t ops = NULL;
  if (accumulate) {
    dnnl_primitive_attr_create(&attr);
    dnnl_post_ops_create(&ops);
    dnnl_post_ops_append_sum(ops, 1.0f);
    dnnl_primitive_attr_set_post_ops(attr, ops);
  }
  dnnl_primitive_desc_t pd;
  mp_error *e = dnnl_err(dnnl_primitive_desc_create(&pd, &desc, attr, mm->b->engine, NULL), "matmul primitive desc");
  if (ops) dnnl_post_ops_destroy(ops);
  if (attr) dnnl_primitive_attr_destroy(attr);
  MP_TRY(e);
  if (w_chosen) *w_chosen = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  e = prim ? dnnl_err(dnnl_primitive_create(prim, pd), "matmul primitive") : NULL;
  dnnl_primitive_desc_destroy(pd);
  return e;
}

/* Round the weights to bf16 (from whatever they are stored as), then reorder into the packed layout `dst`. */
static mp_error *fill_packed(void *ctx, dnnl_memory_t dst) {
  mp_matmul *mm = ctx;
  mp_backend *b = mm->b;
  const int64_t N = mm->N, K = mm->K;
  dnnl_dims_t wd = {K, N};
  dnnl_memory_desc_t w_user;
  /* The stored [N, K] row-major weight is the [K, N] matrix in "ba" order. */
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_tag(&w_user, 2, wd, dnnl_bf16, dnnl_ba), "weights desc"));
  const dnnl_memory_desc_t *w_packed;
  MP_TRY(dnnl_err(dnnl_memory_get_memory_desc(dst, &w_packed), "packed weights desc"));
  /* the rounded copy goes through the backend's scratch: already faulted in (a LoRA switch packs a few
   * hundred layers, and a fresh buffer for each was as many page faults again as the packs themselves),
   * and no caller holds data in it across the packing of a weight */
  uint16_t *wb = scratch(b, (size_t)(N * K) * 2);
  if (!wb) return mp_errorf("out of memory packing a %lldx%lld weight", (long long)N, (long long)K);
  const size_t es = mp_dtype_size(mm->W->dtype);
  const char *w = mm->W->data;
  /* rows on the backend's OpenMP team, as mp_pool_for runs with a backend attached */
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < N; r++) {
    float row[512];
    for (int64_t k0 = 0; k0 < K; k0 += 512) {
      const size_t len = (size_t)(K - k0 < 512 ? K - k0 : 512);
      mp_convert_to_f32(row, w + (size_t)(r * K + k0) * es, mm->W->dtype, len);
      to_bf16(wb + r * K + k0, row, len);
    }
  }
  dnnl_memory_t user = NULL;
  dnnl_primitive_desc_t rpd = NULL;
  dnnl_primitive_t reorder = NULL;
  mp_error *e = dnnl_err(dnnl_memory_create(&user, &w_user, b->engine, wb), "weights memory");
  if (!e) e = dnnl_err(dnnl_reorder_primitive_desc_create(&rpd, &w_user, b->engine, w_packed, b->engine, NULL), "reorder desc");
  if (!e) e = dnnl_err(dnnl_primitive_create(&reorder, rpd), "reorder");
  if (!e) {
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, dst}};
    e = dnnl_err(dnnl_primitive_execute(reorder, b->stream, 2, args), "weight reorder");
    if (!e) e = dnnl_err(dnnl_stream_wait(b->stream), "stream wait");
  }
  if (reorder) dnnl_primitive_destroy(reorder);
  if (rpd) dnnl_primitive_desc_destroy(rpd);
  if (user) dnnl_memory_destroy(user);
  return e;
}

static mp_error *create_bf16(mp_matmul *mm) {
  mp_backend *b = mm->b;
  const int64_t N = mm->N, K = mm->K;
  dnnl_dims_t wd = {K, N};
  dnnl_memory_desc_t w_any, w_packed;
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_tag(&w_any, 2, wd, dnnl_bf16, dnnl_format_tag_any), "weights desc"));
  /* The packed layout the kernels want for a large M (the layout depends on N and K). */
  MP_TRY(make_primitive(mm, 4096, &w_any, false, NULL, &w_packed));
  mm->w_packed_md = w_packed;

  MP_TRY(mp_pack_dnnl_weight(b, mm->W->data, "dnnl-matmul-bf16", &w_packed, fill_packed, mm, &mm->weights, &mm->weights_mem));
  mp_error *e = NULL;
  if (mm->bias) {
    dnnl_memory_desc_t bias_md;
    dnnl_dims_t bd = {1, N};
    dnnl_memory_desc_init_by_tag(&bias_md, 2, bd, dnnl_f32, dnnl_ab);
    e = dnnl_err(dnnl_memory_create(&mm->bias_mem, &bias_md, b->engine, mm->bias), "bias memory");
  }
  return e;
}

static mp_error *run_bf16_input(mp_matmul *mm, const uint16_t *xb, int64_t M, float *y, bool accumulate);

static mp_error *run_bf16(mp_matmul *mm, const float *x, int64_t M, float *y, bool accumulate) {
  uint16_t *xb = scratch(mm->b, (size_t)(M * mm->K) * 2);
  if (!xb) return mp_errorf("out of memory");
  to_bf16(xb, x, (size_t)(M * mm->K));
  return run_bf16_input(mm, xb, M, y, accumulate);
}

static mp_error *run_bf16_input(mp_matmul *mm, const uint16_t *xb, int64_t M, float *y, bool accumulate) {
  mp_backend *b = mm->b;
  dnnl_memory_desc_t smd, dmd;
  dnnl_dims_t sd = {M, mm->K}, dd = {M, mm->N};
  dnnl_memory_desc_init_by_tag(&smd, 2, sd, dnnl_bf16, dnnl_ab);
  dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab);
  dnnl_primitive_t prim = NULL;
  for (int i = 0; i < mm->n_cache; i++)
    if (mm->cache[i].M == M && mm->cache[i].acc == accumulate) prim = mm->cache[i].prim;
  if (!prim) {
    MP_TRY(make_primitive(mm, M, &mm->w_packed_md, accumulate, &prim, NULL));
    int slot = mm->n_cache < MM_CACHE ? mm->n_cache++ : mm->next_evict++ % MM_CACHE;
    if (mm->cache[slot].prim) dnnl_primitive_destroy(mm->cache[slot].prim);
    mm->cache[slot].M = M, mm->cache[slot].acc = accumulate, mm->cache[slot].prim = prim;
  }
  dnnl_memory_t src = NULL, dst = NULL;
  mp_error *e = dnnl_err(dnnl_memory_create(&src, &smd, b->engine, (void *)xb), "src memory");
  if (!e) e = dnnl_err(dnnl_memory_create(&dst, &dmd, b->engine, y), "dst memory");
  if (!e) {
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, mm->weights}, {DNNL_ARG_DST, dst}, {DNNL_ARG_BIAS, mm->bias_mem}};
    e = dnnl_err(dnnl_primitive_execute(prim, b->stream, mm->bias_mem ? 4 : 3, args), "matmul");
    if (!e) e = dnnl_err(dnnl_stream_wait(b->stream), "stream wait");
  }
  if (src) dnnl_memory_destroy(src);
  if (dst) dnnl_memory_destroy(dst);
  return e;
}

/* ---- f32 via oneDNN: plain operands, primitive per shape ---- */

static mp_error *sgemm_primitive(mp_backend *b, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                                 int64_t ldc, dnnl_primitive_t *out) {
  for (int i = 0; i < b->n_sgemm; i++) {
    const struct sgemm_prim *c = &b->sgemm[i];
    if (c->trans_b == trans_b && c->m == m && c->n == n && c->k == k && c->lda == lda && c->ldb == ldb && c->ldc == ldc) {
      *out = c->prim;
      return NULL;
    }
  }
  dnnl_memory_desc_t a_md, b_md, c_md;
  dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n}, as = {lda, 1}, cs = {ldc, 1};
  dnnl_dims_t bs = {1, ldb}; /* Bᵀ with B [n, k]: element (kk, nn) at nn * ldb + kk */
  if (!trans_b) bs[0] = ldb, bs[1] = 1;
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_strides(&a_md, 2, ad, dnnl_f32, as), "sgemm A desc"));
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_strides(&b_md, 2, bd, dnnl_f32, bs), "sgemm B desc"));
  MP_TRY(dnnl_err(dnnl_memory_desc_init_by_strides(&c_md, 2, cd, dnnl_f32, cs), "sgemm C desc"));
  dnnl_matmul_desc_t desc;
  MP_TRY(dnnl_err(dnnl_matmul_desc_init(&desc, &a_md, &b_md, NULL, &c_md), "sgemm desc"));
  dnnl_primitive_desc_t pd;
  MP_TRY(dnnl_err(dnnl_primitive_desc_create(&pd, &desc, NULL, b->engine, NULL), "sgemm primitive desc"));
  dnnl_primitive_t prim;
  mp_error *e = dnnl_err(dnnl_primitive_create(&prim, pd), "sgemm primitive");
  dnnl_primitive_desc_destroy(pd);
  MP_TRY(e);
  int slot = b->n_sgemm < SGEMM_CACHE ? b->n_sgemm++ : b->next_sgemm++ % SGEMM_CACHE;
  if (b->sgemm[slot].prim) dnnl_primitive_destroy(b->sgemm[slot].prim);
  b->sgemm[slot].trans_b = trans_b, b->sgemm[slot].m = m, b->sgemm[slot].n = n, b->sgemm[slot].k = k;
  b->sgemm[slot].lda = lda, b->sgemm[slot].ldb = ldb, b->sgemm[slot].ldc = ldc, b->sgemm[slot].prim = prim;
  *out = prim;
  return NULL;
}

mp_error *mp_backend_sgemm(mp_backend *b, bool trans_b, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda,
                           const float *B, int64_t ldb, float *C, int64_t ldc) {
  if (!b || !b->engine) return mp_errorf("oneDNN sgemm needs a backend");
  dnnl_primitive_t prim;
  MP_TRY(sgemm_primitive(b, trans_b, m, n, k, lda, ldb, ldc, &prim));
  dnnl_memory_desc_t a_md, b_md, c_md;
  dnnl_dims_t ad = {m, k}, bd = {k, n}, cd = {m, n}, as = {lda, 1}, cs = {ldc, 1};
  dnnl_dims_t bs = {1, ldb};
  if (!trans_b) bs[0] = ldb, bs[1] = 1;
  dnnl_memory_desc_init_by_strides(&a_md, 2, ad, dnnl_f32, as);
  dnnl_memory_desc_init_by_strides(&b_md, 2, bd, dnnl_f32, bs);
  dnnl_memory_desc_init_by_strides(&c_md, 2, cd, dnnl_f32, cs);
  dnnl_memory_t ma = NULL, mb = NULL, mc = NULL;
  mp_error *e = dnnl_err(dnnl_memory_create(&ma, &a_md, b->engine, (void *)A), "sgemm memory");
  if (!e) e = dnnl_err(dnnl_memory_create(&mb, &b_md, b->engine, (void *)B), "sgemm memory");
  if (!e) e = dnnl_err(dnnl_memory_create(&mc, &c_md, b->engine, C), "sgemm memory");
  if (!e) {
    dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, ma}, {DNNL_ARG_WEIGHTS, mb}, {DNNL_ARG_DST, mc}};
    e = dnnl_err(dnnl_primitive_execute(prim, b->stream, 3, args), "sgemm");
    if (!e) e = dnnl_err(dnnl_stream_wait(b->stream), "stream wait");
  }
  if (ma) dnnl_memory_destroy(ma);
  if (mb) dnnl_memory_destroy(mb);
  if (mc) dnnl_memory_destroy(mc);
  return e;
}

/* ---- f32 via OpenBLAS ---- */

static mp_error *run_f32(mp_matmul *mm, const float *x, int64_t M, float *y, bool accumulate) {
  const float *w = mm->W->data;
  if (mm->W->dtype != MP_F32) {
    float *conv = scratch(mm->b, (size_t)(mm->N * mm->K) * 4);
    if (!conv) return mp_errorf("out of memory converting a %lldx%lld weight", (long long)mm->N, (long long)mm->K);
    mp_convert_to_f32(conv, mm->W->data, mm->W->dtype, (size_t)(mm->N * mm->K));
    w = conv;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)M, (blasint)mm->N, (blasint)mm->K, 1.0f, x, (blasint)mm->K, w,
              (blasint)mm->K, accumulate ? 1.0f : 0.0f, y, (blasint)mm->N);
  if (mm->bias)
    for (int64_t i = 0; i < M; i++)
      for (int64_t j = 0; j < mm->N; j++) y[i * mm->N + j] += mm->bias[j];
  return NULL;
}

mp_error *mp_matmul_create(mp_backend *b, const mp_tensor *W, const mp_tensor *bias, mp_matmul **out) {
  *out = NULL;
  if (W->ndim < 2 || !mp_tensor_is_contiguous(W) || (W->dtype != MP_F32 && W->dtype != MP_F16 && W->dtype != MP_BF16))
    return mp_errorf("matmul weight must be a contiguous float tensor of rank >= 2");
  mp_matmul *mm = calloc(1, sizeof *mm);
  if (!mm) return mp_errorf("out of memory");
  mm->b = b;
  mm->W = W;
  mm->N = W->shape[0];
  mm->K = mp_tensor_numel(W) / (mm->N ? mm->N : 1);
  mp_error *e = NULL;
  if (bias) {
    if (mp_tensor_numel(bias) != mm->N) e = mp_errorf("bias has %lld values for %lld outputs", (long long)mp_tensor_numel(bias), (long long)mm->N);
    else if (!(mm->bias = mp_alloc((size_t)mm->N * 4))) e = mp_errorf("out of memory");
    else mp_convert_to_f32(mm->bias, bias->data, bias->dtype, (size_t)mm->N);
  }
  if (!e && b->precision == MP_PRECISION_BF16) e = create_bf16(mm);
  if (e) {
    mp_matmul_free(mm);
    return e;
  }
  *out = mm;
  return NULL;
}

void mp_matmul_free(mp_matmul *mm) {
  if (!mm) return;
  for (int i = 0; i < mm->n_cache; i++) dnnl_primitive_destroy(mm->cache[i].prim);
  if (mm->weights) dnnl_memory_destroy(mm->weights);
  mp_packed_mem_free(&mm->weights_mem);
  if (mm->bias_mem) dnnl_memory_destroy(mm->bias_mem);
  mp_free(mm->bias);
  free(mm);
}

void mp_matmul_drop_resident(mp_matmul *mm) {
  if (mm) mp_packed_mem_drop_resident(&mm->weights_mem);
}

int64_t mp_matmul_n(const mp_matmul *mm) { return mm->N; }
int64_t mp_matmul_k(const mp_matmul *mm) { return mm->K; }

mp_error *mp_matmul_run(mp_matmul *mm, const float *x, int64_t M, float *y, bool accumulate) {
  if (M <= 0) return NULL;
  return mm->b->precision == MP_PRECISION_BF16 ? run_bf16(mm, x, M, y, accumulate) : run_f32(mm, x, M, y, accumulate);
}

mp_error *mp_matmul_run_bf16(mp_matmul *mm, const uint16_t *x, int64_t M, float *y, bool accumulate) {
  if (mm->b->precision != MP_PRECISION_BF16) return mp_errorf("bf16 activations need the bf16 backend");
  if (M <= 0) return NULL;
  return run_bf16_input(mm, x, M, y, accumulate);
}
