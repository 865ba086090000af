/* Convolution (im2col bands + mp_gemm), dense layers with converted weights, group norm, nearest
 * upsampling and GEGLU: the f32 implementation of the image ops declared in conv.h. */
#include "core/conv.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/conv_dnnl.h"
#include "core/conv_wino_bf16.h"
#include "core/matmul.h"
#include "core/nhwc_bf16.h"
#include "core/ops.h"
#include "core/pack_cache.h"
#include "core/profile.h"
#include "core/vmath.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

mp_error *mp_workspace_reserve(mp_workspace *ws, size_t bytes) {
  if (bytes <= ws->cap) return NULL;
  mp_free(ws->p);
  ws->p = mp_alloc(bytes);
  ws->cap = ws->p ? bytes : 0;
  if (!ws->p) return mp_errorf("out of memory reserving a %zu MB workspace", bytes >> 20);
  return NULL;
}

void mp_workspace_free(mp_workspace *ws) {
  mp_free(ws->p);
  ws->p = NULL;
  ws->cap = 0;
  for (size_t i = 0; i < ws->n_packs; i++) mp_packed_weight_clear(&ws->packs[i]);
  free(ws->packs);
  ws->packs = NULL;
  ws->n_packs = ws->cap_packs = 0;
}

void mp_workspace_trim(mp_workspace *ws) {
  mp_free(ws->p);
  ws->p = NULL;
  ws->cap = 0;
}

/* Hand the pages of a weight that is now packed back to the kernel: memory-mapped f16 pages are
 * re-read from the file if ever touched again (they are not), so the process does not hold both
 * the stored and the packed copy. PAGEOUT (not DONTNEED) because a weight may also live in
 * anonymous memory (a LoRA-merged overlay), whose contents must survive. */
static void release_weight_pages(struct mp_packed_weight *pw, const mp_tensor *W) {
  if (pw->stored_released) return; /* once: a madvise per call was ~57 system calls a step */
  pw->stored_released = true;
#ifdef MADV_PAGEOUT
  const size_t page = 4096, bytes = (size_t)mp_tensor_numel(W) * mp_dtype_size(W->dtype);
  if (bytes < 16 * page) return;
  uintptr_t lo = ((uintptr_t)W->data + page - 1) & ~(uintptr_t)(page - 1);
  uintptr_t hi = ((uintptr_t)W->data + bytes) & ~(uintptr_t)(page - 1);
  if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_PAGEOUT);
#else
  (void)W;
#endif
}

/* The cache entry of a weight (a new, empty one on first use): in the backend's shared cache when the
 * weight's memory is pinned there (a base checkpoint: its packs survive rebinding the model to a LoRA
 * overlay), else in the workspace's own list, which dies with the model. */
static mp_error *pack_entry(mp_workspace *ws, mp_backend *be, const mp_tensor *W, const mp_tensor *bias,
                            struct mp_packed_weight **out) {
  const void *bk = bias ? bias->data : NULL;
  mp_pack_cache *shared = mp_backend_pack_cache(be);
  if (shared) {
    MP_TRY(mp_pack_cache_entry(shared, W->data, bk, out));
    if (*out) return NULL;
  }
  for (size_t i = 0; i < ws->n_packs; i++)
    if (ws->packs[i].w == W->data && ws->packs[i].b == bk) {
      *out = &ws->packs[i];
      return NULL;
    }
  if (ws->n_packs == ws->cap_packs) {
    size_t cap = ws->cap_packs ? 2 * ws->cap_packs : 64;
    struct mp_packed_weight *np = realloc(ws->packs, cap * sizeof *np);
    if (!np) return mp_errorf("out of memory");
    ws->packs = np, ws->cap_packs = cap;
  }
  ws->packs[ws->n_packs] = (struct mp_packed_weight){.w = W->data, .b = bk};
  *out = &ws->packs[ws->n_packs++];
  return NULL;
}

/* The weight packed as a matmul for backend `b`, packing it on first use. */
static mp_error *packed_weight(mp_workspace *ws, mp_backend *b, const mp_tensor *W, const mp_tensor *bias, mp_matmul **out) {
  struct mp_packed_weight *pw;
  MP_TRY(pack_entry(ws, b, W, bias, &pw));
  if (!pw->mm) {
    MP_TRY(mp_matmul_create(b, W, bias, &pw->mm));
    pw->stored_released = false;
    release_weight_pages(pw, W);
  }
  *out = pw->mm;
  return NULL;
}

/* Rounds as mp_bf16_row does (and vcvtneps2bf16, and oneDNN's reorders): nearest even, denormals to
 * zero of their sign, NaN quiet. One value at a time, for the gathers of im2col. */
static inline uint16_t bf16_round(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  if (!(u & 0x7f800000u)) return (uint16_t)((u >> 16) & 0x8000u);           /* denormal or zero */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}


typedef struct {
  float *dst;
  const char *src;
  mp_dtype dt;
  size_t n, es;
} conv_args;

enum { CONVERT_GRAIN = 1 << 16 };

static void convert_chunks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const conv_args *a = ctx;
  size_t b = (size_t)begin * CONVERT_GRAIN, e = (size_t)end * CONVERT_GRAIN;
  if (e > a->n) e = a->n;
  mp_convert_to_f32(a->dst + b, a->src + b * a->es, a->dt, e - b);
}

void mp_convert_to_f32_par(mp_pool *pool, float *dst, const void *src, mp_dtype dt, size_t n) {
  if (n < 2 * CONVERT_GRAIN) {
    mp_convert_to_f32(dst, src, dt, n);
    return;
  }
  conv_args a = {dst, src, dt, n, mp_dtype_size(dt)};
  mp_pool_for(pool, (int64_t)((n + CONVERT_GRAIN - 1) / CONVERT_GRAIN), 1, convert_chunks, &a);
}

static bool is_float_dtype(mp_dtype dt) { return dt == MP_F32 || dt == MP_F16 || dt == MP_BF16; }

mp_error *mp_vector_f32(const mp_tensor *t, float *dst, int64_t n) {
  if (!is_float_dtype(t->dtype)) return mp_errorf("expected a float vector, found %s", mp_dtype_name(t->dtype));
  if (mp_tensor_numel(t) != n) return mp_errorf("expected %lld values, found %lld", (long long)n, (long long)mp_tensor_numel(t));
  mp_convert_to_f32(dst, t->data, t->dtype, (size_t)n);
  return NULL;
}

/* The weight as f32: a view if already f32, else converted into `buf`. */
static const float *weight_f32(mp_pool *pool, const mp_tensor *w, float *buf) {
  if (w->dtype == MP_F32) return w->data;
  mp_convert_to_f32_par(pool, buf, w->data, w->dtype, (size_t)mp_tensor_numel(w));
  return buf;
}


/* ---- GEMM split over the pool ----
 * OpenBLAS's own threads busy-wait (sched_yield) between calls, which costs dearly on a shared
 * machine and fights our pool during the elementwise ops. So the heavy products here run as
 * single-threaded OpenBLAS calls on independent blocks, scheduled by the pool; OpenBLAS is set to one
 * thread for the duration and restored afterwards (other callers, e.g. mp_linear, keep its threads). */
typedef struct {
  bool trans_b;
  int64_t m, n, k;
  const float *A, *B;
  int64_t lda, ldb, ldc;
  float beta;
  float *C;
  bool split_n;
  int64_t chunk;
} pgemm_args;

static void pgemm_chunks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const pgemm_args *a = ctx;
  for (int64_t c = begin; c < end; c++) {
    int64_t lo = c * a->chunk;
    if (a->split_n) {
      int64_t cnt = a->n - lo < a->chunk ? a->n - lo : a->chunk;
      const float *B = a->trans_b ? a->B + lo * a->ldb : a->B + lo;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, a->trans_b ? CblasTrans : CblasNoTrans, (blasint)a->m, (blasint)cnt,
                  (blasint)a->k, 1.0f, a->A, (blasint)a->lda, B, (blasint)a->ldb, a->beta, a->C + lo, (blasint)a->ldc);
    } else {
      int64_t cnt = a->m - lo < a->chunk ? a->m - lo : a->chunk;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, a->trans_b ? CblasTrans : CblasNoTrans, (blasint)cnt, (blasint)a->n,
                  (blasint)a->k, 1.0f, a->A + lo * a->lda, (blasint)a->lda, a->B, (blasint)a->ldb, a->beta, a->C + lo * a->ldc,
                  (blasint)a->ldc);
    }
  }
}

/* Where oneDNN's f32 matmul (brgemm) beats OpenBLAS split over the pool: the dense layers
 * (x · Wᵀ) from 256 rows on. Measured on a UNet step at 512x512 (docs/speed.md): the transformer
 * linears took 2.6 s instead of 2.9 s. The convolutions' W · col products (m = output channels)
 * were slower on oneDNN (no B-operand packing for that layout), so they stay on OpenBLAS. */
static bool use_dnnl_sgemm(bool trans_b, int64_t m) { return trans_b && m >= 256; }

/* C[m, n] = A[m, k] · op(B) + beta C, row-major; op(B) = B [k, n] or Bᵀ with B [n, k]. */
void mp_gemm_pool(mp_pool *pool, bool trans_b, int64_t m, int64_t n, int64_t k, const float *A, int64_t lda, const float *B,
                  int64_t ldb, float beta, float *C, int64_t ldc) {
  mp_backend *be = mp_pool_backend(pool);
  if (be && beta == 0.0f && use_dnnl_sgemm(trans_b, m)) {
    mp_error *e = mp_backend_sgemm(be, trans_b, m, n, k, A, lda, B, ldb, C, ldc);
    if (!e) return;
    mp_error_free(e); /* oneDNN declined the shape: OpenBLAS below */
  }
  const int nt = mp_pool_size(pool);
  pgemm_args a = {trans_b, m, n, k, A, B, lda, ldb, ldc, beta, C, true, n};
  /* One block per thread along the wider side: every block repacks the other operand (for a
   * convolution, the whole weight), which costs about as much as the block's arithmetic when blocks
   * are a few hundred columns wide. */
  if (n >= m || n >= 512) {
    a.split_n = true;
    a.chunk = (n + nt - 1) / nt;
    a.chunk = a.chunk < 128 ? 128 : (a.chunk + 15) / 16 * 16;
  } else {
    a.split_n = false;
    a.chunk = (m + nt - 1) / nt;
    a.chunk = a.chunk < 32 ? 32 : (a.chunk + 15) / 16 * 16;
  }
  int64_t n_chunks = ((a.split_n ? n : m) + a.chunk - 1) / a.chunk;
  int prev = openblas_get_num_threads();
  if (nt > 1 && n_chunks > 1) {
    if (prev != 1) openblas_set_num_threads(1);
    mp_pool_for(pool, n_chunks, 1, pgemm_chunks, &a);
    if (prev != 1) openblas_set_num_threads(prev);
  } else {
    pgemm_chunks(&a, 0, n_chunks, 0);
  }
}

/* ---- bias ---- */
typedef struct {
  float *y;
  const float *b;
  int64_t plane;
  int channels; /* rows are (image, channel) pairs */
} bias_args;

static void add_bias_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const bias_args *a = ctx;
  for (int64_t r = begin; r < end; r++) {
    float *y = a->y + r * a->plane, b = a->b[r % a->channels];
    for (int64_t i = 0; i < a->plane; i++) y[i] += b;
  }
}

/* ---- convolution ---- */
/* im2col over the output positions of all images side by side (column g = image g / P, position
 * g % P), so that small images (the UNet's 8x8 and 16x16 levels) make one GEMM for the whole batch
 * and the weight is packed once instead of once per image. */
typedef struct {
  float *col;
  const float *x;
  int64_t img_stride, P;
  int h, w, kh, kw, stride, wo, pad_t, pad_l;
  int64_t g0, ng; /* columns [g0, g0+ng) of this band */
} im2col_args;

static void im2col_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const im2col_args *a = ctx;
  const int kk = a->kh * a->kw;
  for (int64_t r = begin; r < end; r++) {
    int c = (int)(r / kk), ky = (int)(r % kk) / a->kw, kx = (int)(r % kk) % a->kw;
    float *dst = a->col + r * a->ng;
    int64_t g = a->g0, gend = a->g0 + a->ng;
    while (g < gend) {
      const int64_t img = g / a->P, p = g % a->P;
      const float *xc = a->x + img * a->img_stride + (int64_t)c * a->h * a->w;
      int oy = (int)(p / a->wo), ox0 = (int)(p % a->wo);
      int64_t run = a->wo - ox0 < gend - g ? a->wo - ox0 : gend - g; /* rest of this output row */
      int iy = oy * a->stride - a->pad_t + ky;
      if (iy < 0 || iy >= a->h) {
        memset(dst, 0, sizeof(float) * (size_t)run);
      } else {
        const float *xr = xc + (int64_t)iy * a->w;
        if (a->stride == 1) {
          int ix0 = ox0 - a->pad_l + kx;
          for (int64_t j = 0; j < run; j++) {
            int ix = ix0 + (int)j;
            dst[j] = ix >= 0 && ix < a->w ? xr[ix] : 0.0f;
          }
        } else {
          for (int64_t j = 0; j < run; j++) {
            int ix = (ox0 + (int)j) * a->stride - a->pad_l + kx;
            dst[j] = ix >= 0 && ix < a->w ? xr[ix] : 0.0f;
          }
        }
      }
      dst += run;
      g += run;
    }
  }
}

/* ---- 3x3 stride-1 convolution by Winograd F(m x m, 3x3) ----
 * Each m x m block of outputs comes from an (m+2)^2 input patch d: V = Bᵀ d B, U = G g Gᵀ,
 * Y = Aᵀ (U ⊙ V) A. Summed over input channels, the (m+2)^2 elementwise products become as many GEMMs
 * M[ξ][O][tiles] = U[ξ][O][C] · V[ξ][C][tiles]: F(2,3) does 16/4 = 4 multiply-adds per output and
 * channel pair, F(4,3) 36/16 = 2.25, against 9 for direct convolution. F(4,3) uses the points
 * 0, ±1, ±2, ∞ (Lavin & Gray), whose f32 error stays around 1e-6 relative for these layers. */
/* From 16x16 outputs on: with the transforms vectorised over tiles, F(2,3) at 16x16 with 1280
 * channels takes 55-60 ms against 85-95 for im2col + GEMM (bench_conv_f32); at 8x8 they tie. */
enum { WINO_BUDGET_FLOATS = 16 << 20, WINO_MIN_PIXELS = 256, WINO_MAX_A = 6 };

typedef struct {
  int m, a; /* output tile, input tile = m + 2 */
  const float *BT, *G, *AT; /* [a][a], [a][3], [m][a] */
} wino_kind;

static const float F2_BT[16] = {1, 0, -1, 0, 0, 1, 1, 0, 0, -1, 1, 0, 0, 1, 0, -1};
static const float F2_G[12] = {1, 0, 0, 0.5f, 0.5f, 0.5f, 0.5f, -0.5f, 0.5f, 0, 0, 1};
static const float F2_AT[8] = {1, 1, 1, 0, 0, 1, -1, -1};
static const float F4_BT[36] = {4, 0, -5, 0,  1, 0, 0, -4, -4, 1, 1, 0, 0, 4, -4, -1, 1, 0,
                                0, -2, -1, 2, 1, 0, 0, 2, -1, -2, 1, 0, 0, 4, 0, -5, 0, 1};
static const float F4_G[18] = {1.0f / 4,  0,         0,        -1.0f / 6, -1.0f / 6, -1.0f / 6,
                               -1.0f / 6, 1.0f / 6,  -1.0f / 6, 1.0f / 24, 1.0f / 12, 1.0f / 6,
                               1.0f / 24, -1.0f / 12, 1.0f / 6,  0,         0,         1};
static const float F4_AT[24] = {1, 1, 1, 1, 1, 0, 0, 1, -1, 2, -2, 0, 0, 1, 1, 4, 4, 0, 0, 1, -1, 8, -8, 1};
static const wino_kind WINO_F2 = {2, 4, F2_BT, F2_G, F2_AT}, WINO_F4 = {4, 6, F4_BT, F4_G, F4_AT};

typedef struct {
  const wino_kind *k;
  float *U;
  const char *w;
  mp_dtype dt;
  size_t es;
  int O, C;
} wino_w_args;

enum { WINO_WCHUNK = 64 };

/* U = G g Gᵀ for 64 input channels at a time, laid out so that the inner loops run over channels
 * (vectorised) and every store is a contiguous row of one of the a² planes. */
static void wino_weights(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const wino_w_args *p = ctx;
  const int A = p->k->a;
  const float *G = p->k->G;
  float graw[WINO_WCHUNK * 9], gt[9][WINO_WCHUNK], t[WINO_MAX_A][3][WINO_WCHUNK];
  for (int64_t o = begin; o < end; o++)
    for (int c0 = 0; c0 < p->C; c0 += WINO_WCHUNK) {
      const int n = p->C - c0 < WINO_WCHUNK ? p->C - c0 : WINO_WCHUNK;
      mp_convert_to_f32(graw, p->w + ((size_t)o * p->C + c0) * 9 * p->es, p->dt, (size_t)n * 9);
      for (int k = 0; k < 9; k++)
        for (int cc = 0; cc < n; cc++) gt[k][cc] = graw[cc * 9 + k];
      for (int i = 0; i < A; i++) /* t = G g */
        for (int j = 0; j < 3; j++) {
          const float g0 = G[i * 3], g1 = G[i * 3 + 1], g2 = G[i * 3 + 2];
          for (int cc = 0; cc < n; cc++) t[i][j][cc] = g0 * gt[j][cc] + g1 * gt[3 + j][cc] + g2 * gt[6 + j][cc];
        }
      for (int i = 0; i < A; i++) /* U = t Gᵀ */
        for (int j = 0; j < A; j++) {
          const float g0 = G[j * 3], g1 = G[j * 3 + 1], g2 = G[j * 3 + 2];
          float *dst = p->U + ((size_t)(i * A + j) * p->O + o) * p->C + c0;
          for (int cc = 0; cc < n; cc++) dst[cc] = t[i][0][cc] * g0 + t[i][1][cc] * g1 + t[i][2][cc] * g2;
        }
    }
}

/* Bᵀ v and Aᵀ v for one line of a tile (stride `is` in, `os` out), written out for the two kinds
 * (the generic 6x6 product costs four times the arithmetic). The same formulas serve one tile
 * (float) and 16 tiles at once, one per lane (wino_v16: consecutive tiles of a tile row). */
typedef float wino_v16 __attribute__((vector_size(64)));
enum { WINO_LANES = 16 };

#define WINO_TRANSFORMS(T, SUFFIX)                                                                     \
  static inline void wino_bt##SUFFIX(int m, const T *v, int is, T *r, int os) {                        \
    if (m == 4) {                                                                                      \
      const T v0 = v[0], v1 = v[is], v2 = v[2 * is], v3 = v[3 * is], v4 = v[4 * is], v5 = v[5 * is]; \
      r[0] = 4 * v0 - 5 * v2 + v4;                                                                     \
      r[os] = -4 * v1 - 4 * v2 + v3 + v4;                                                              \
      r[2 * os] = 4 * v1 - 4 * v2 - v3 + v4;                                                           \
      r[3 * os] = -2 * v1 - v2 + 2 * v3 + v4;                                                          \
      r[4 * os] = 2 * v1 - v2 - 2 * v3 + v4;                                                           \
      r[5 * os] = 4 * v1 - 5 * v3 + v5;                                                                \
    } else {                                                                                           \
      const T v0 = v[0], v1 = v[is], v2 = v[2 * is], v3 = v[3 * is];                                  \
      r[0] = v0 - v2;                                                                                  \
      r[os] = v1 + v2;                                                                                 \
      r[2 * os] = v2 - v1;                                                                             \
      r[3 * os] = v1 - v3;                                                                             \
    }                                                                                                  \
  }                                                                                                    \
  static inline void wino_at##SUFFIX(int m, const T *v, int is, T *r, int os) {                        \
    if (m == 4) {                                                                                      \
      const T v0 = v[0], v1 = v[is], v2 = v[2 * is], v3 = v[3 * is], v4 = v[4 * is], v5 = v[5 * is]; \
      r[0] = v0 + v1 + v2 + v3 + v4;                                                                   \
      r[os] = v1 - v2 + 2 * v3 - 2 * v4;                                                               \
      r[2 * os] = v1 + v2 + 4 * v3 + 4 * v4;                                                           \
      r[3 * os] = v1 - v2 + 8 * v3 - 8 * v4 + v5;                                                      \
    } else {                                                                                           \
      const T v0 = v[0], v1 = v[is], v2 = v[2 * is], v3 = v[3 * is];                                  \
      r[0] = v0 + v1 + v2;                                                                             \
      r[os] = v1 - v2 - v3;                                                                            \
    }                                                                                                  \
  }
WINO_TRANSFORMS(float, )
WINO_TRANSFORMS(wino_v16, 16)
#undef WINO_TRANSFORMS

#if defined(__AVX512F__)
/* F(4,3) moves 16 tiles of a tile row at a time, lane l being tile l, whose pixels start 4l further
 * along the row. Gathering a tile column (pixel 4l + j of every lane) from a row, and scattering 16
 * lanes of 4 output pixels back into 64 consecutive ones, by register permutes instead of a scalar
 * load or store per element (those were a third of an F(4,3) convolution with 128 channels). The
 * values are the same; only their way into and out of the lanes changes. */
#include <immintrin.h>

/* d[j][l] = line[4l + j] for j < 6, line holding 68 floats (66 used) */
static inline void wino_gather_f4(const float *line, wino_v16 d[WINO_MAX_A]) {
  const __m512 a = _mm512_loadu_ps(line), b = _mm512_loadu_ps(line + 16), c = _mm512_loadu_ps(line + 32),
               e = _mm512_loadu_ps(line + 48);
  for (int j = 0; j < WINO_MAX_A; j++) {
    /* lanes 0-7 from a:b, 8-15 from c:e (or, past j = 3, the same shifted one tile: b:c, e:f) */
    const int s = j & 3;
    const __m512i lo = _mm512_setr_epi32(s, s + 4, s + 8, s + 12, s + 16, s + 20, s + 24, s + 28, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i hi = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, s, s + 4, s + 8, s + 12, s + 16, s + 20, s + 24, s + 28);
    __m512 first, second;
    if (j < 4) {
      first = _mm512_permutex2var_ps(a, lo, b);
      second = _mm512_permutex2var_ps(c, hi, e);
    } else { /* pixel 4l + 4 + s: the next tile's column s */
      const __m512 a1 = _mm512_loadu_ps(line + 4), b1 = _mm512_loadu_ps(line + 20), c1 = _mm512_loadu_ps(line + 36),
                   e1 = _mm512_loadu_ps(line + 52);
      first = _mm512_permutex2var_ps(a1, lo, b1);
      second = _mm512_permutex2var_ps(c1, hi, e1);
    }
    const __m512 g = _mm512_mask_blend_ps(0xFF00, first, second);
    memcpy(&d[j], &g, sizeof g);
  }
}

/* out[4l + j] = y[j][l] + bias for j < 4, l < 16 */
static inline void wino_scatter_f4(const wino_v16 y[4], float bias, float *out) {
  __m512 y0, y1, y2, y3;
  memcpy(&y0, &y[0], 64), memcpy(&y1, &y[1], 64), memcpy(&y2, &y[2], 64), memcpy(&y3, &y[3], 64);
  const __m512 bv = _mm512_set1_ps(bias);
  y0 = _mm512_add_ps(y0, bv), y1 = _mm512_add_ps(y1, bv), y2 = _mm512_add_ps(y2, bv), y3 = _mm512_add_ps(y3, bv);
  /* in each 128-bit block k: t0 = y0[4k], y1[4k], y0[4k+1], y1[4k+1]; t1 the same for 4k+2, 4k+3 */
  const __m512 t0 = _mm512_unpacklo_ps(y0, y1), t1 = _mm512_unpackhi_ps(y0, y1), t2 = _mm512_unpacklo_ps(y2, y3),
               t3 = _mm512_unpackhi_ps(y2, y3);
  /* u_r block k: the four pixels of tile 4k + r */
  const __m512 u0 = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), u1 = _mm512_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
               u2 = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), u3 = _mm512_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  /* output q: tiles 4q .. 4q+3 = block q of u0, u1, u2, u3 */
  const __m512 a02 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)), a13 = _mm512_shuffle_f32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1)),
               b02 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(2, 0, 2, 0)), b13 = _mm512_shuffle_f32x4(u2, u3, _MM_SHUFFLE(3, 1, 3, 1));
  _mm512_storeu_ps(out, _mm512_shuffle_f32x4(a02, b02, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(a13, b13, _MM_SHUFFLE(2, 0, 2, 0)));
  _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(a02, b02, _MM_SHUFFLE(3, 1, 3, 1)));
  _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(a13, b13, _MM_SHUFFLE(3, 1, 3, 1)));
}
#endif

typedef struct {
  const wino_kind *k;
  float *V;
  const float *x;
  int C, h, w, tw;
  int64_t t0, tb, T; /* band [t0, t0+tb) of the tiles of all images, T per image */
} wino_in_args;

MP_VECTOR_CLONES static void wino_input(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const wino_in_args *p = ctx;
  const int A = p->k->a, m = p->k->m;
  const size_t plane = (size_t)p->C * (size_t)p->tb;
  for (int64_t c = begin; c < end; c++) {
    float *vc = p->V + (size_t)c * p->tb;
    for (int64_t tt = 0; tt < p->tb; tt++) {
      int64_t t = (p->t0 + tt) % p->T, img = (p->t0 + tt) / p->T;
      const float *xc = p->x + ((size_t)img * p->C + (size_t)c) * p->h * p->w;
      int y0 = (int)(t / p->tw) * m - 1, x0 = (int)(t % p->tw) * m - 1;
      if (tt + WINO_LANES <= p->tb && (int)(t % p->tw) + WINO_LANES <= p->tw) {
        /* 16 tiles of one tile row: each input row is copied once, zero-padded, and the lanes
         * pick their A columns from it; the stores are contiguous runs of 16 tiles. */
        float line[WINO_LANES * 4 + 4]; /* F(4,3): 66 used, 68 read by the gather */
        const int span = (WINO_LANES - 1) * m + A;
        wino_v16 d[WINO_MAX_A][WINO_MAX_A], r[WINO_MAX_A][WINO_MAX_A] = {{{0}}}, v[WINO_MAX_A][WINO_MAX_A];
        for (int i = 0; i < A; i++) {
          const int iy = y0 + i;
          if (iy >= 0 && iy < p->h && x0 >= 0 && x0 + span <= p->w) {
            memcpy(line, xc + (size_t)iy * p->w + x0, sizeof(float) * (size_t)span);
          } else {
            for (int q = 0; q < span; q++) {
              const int ix = x0 + q;
              line[q] = iy >= 0 && iy < p->h && ix >= 0 && ix < p->w ? xc[(size_t)iy * p->w + ix] : 0.0f;
            }
          }
#if defined(__AVX512F__)
          if (m == 4) {
            for (int q = span; q < (int)(sizeof line / sizeof *line); q++) line[q] = 0.0f;
            wino_gather_f4(line, d[i]);
            continue;
          }
#endif
          for (int j = 0; j < A; j++)
            for (int l = 0; l < WINO_LANES; l++) d[i][j][l] = line[l * m + j];
        }
        for (int j = 0; j < A; j++) wino_bt16(m, &d[0][j], WINO_MAX_A, &r[0][j], WINO_MAX_A);
        for (int i = 0; i < A; i++) wino_bt16(m, &r[i][0], 1, &v[i][0], 1);
        for (int i = 0; i < A; i++)
          for (int j = 0; j < A; j++) memcpy(vc + (size_t)(i * A + j) * plane + tt, &v[i][j], sizeof v[i][j]);
        tt += WINO_LANES - 1;
        continue;
      }
      float d[WINO_MAX_A][WINO_MAX_A], r[WINO_MAX_A][WINO_MAX_A];
      bool inside = y0 >= 0 && x0 >= 0 && y0 + A <= p->h && x0 + A <= p->w;
      for (int i = 0; i < A; i++)
        for (int j = 0; j < A; j++) {
          int iy = y0 + i, ix = x0 + j;
          d[i][j] = inside || (iy >= 0 && iy < p->h && ix >= 0 && ix < p->w) ? xc[(size_t)iy * p->w + ix] : 0.0f;
        }
      float v[WINO_MAX_A][WINO_MAX_A];
      for (int j = 0; j < A; j++) wino_bt(m, &d[0][j], WINO_MAX_A, &r[0][j], WINO_MAX_A); /* r = Bᵀ d */
      for (int i = 0; i < A; i++) wino_bt(m, &r[i][0], 1, &v[i][0], 1);                 /* V = r B */
      for (int i = 0; i < A; i++)
        for (int j = 0; j < A; j++) vc[(size_t)(i * A + j) * plane + tt] = v[i][j];
    }
  }
}

typedef struct {
  const float *U, *V;
  float *M;
  int O, C;
  int64_t tb;
} wino_gemm_args;

static void wino_gemms(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const wino_gemm_args *a = ctx;
  for (int64_t xi = begin; xi < end; xi++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, a->O, (blasint)a->tb, a->C, 1.0f, a->U + (size_t)xi * a->O * a->C,
                a->C, a->V + (size_t)xi * a->C * a->tb, (blasint)a->tb, 0.0f, a->M + (size_t)xi * a->O * a->tb, (blasint)a->tb);
}

typedef struct {
  const wino_kind *k;
  float *y;
  const float *M, *bias;
  int O, h, w, tw;
  int64_t t0, tb, T;
} wino_out_args;

MP_VECTOR_CLONES static void wino_output(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const wino_out_args *p = ctx;
  const int A = p->k->a, m = p->k->m;
  const size_t plane = (size_t)p->O * (size_t)p->tb;
  for (int64_t o = begin; o < end; o++) {
    const float *mo = p->M + (size_t)o * p->tb;
    const float b = p->bias ? p->bias[o] : 0.0f;
    for (int64_t tt = 0; tt < p->tb; tt++) {
      float *yo = p->y + ((size_t)((p->t0 + tt) / p->T) * p->O + (size_t)o) * p->h * p->w;
      const int64_t t16 = (p->t0 + tt) % p->T;
      if (tt + WINO_LANES <= p->tb && (int)(t16 % p->tw) + WINO_LANES <= p->tw && ((int)(t16 % p->tw) + WINO_LANES) * m <= p->w) {
        wino_v16 mm[WINO_MAX_A][WINO_MAX_A], s[4][WINO_MAX_A] = {{{0}}}, yy[4][4];
        for (int i = 0; i < A; i++)
          for (int j = 0; j < A; j++) memcpy(&mm[i][j], mo + (size_t)(i * A + j) * plane + tt, sizeof mm[i][j]);
        for (int j = 0; j < A; j++) wino_at16(m, &mm[0][j], WINO_MAX_A, &s[0][j], WINO_MAX_A);
        for (int i = 0; i < m; i++) wino_at16(m, &s[i][0], 1, &yy[i][0], 1);
        const int oy = (int)(t16 / p->tw) * m, ox = (int)(t16 % p->tw) * m;
        for (int i = 0; i < m && oy + i < p->h; i++) {
          float *row = yo + (size_t)(oy + i) * p->w + ox;
#if defined(__AVX512F__)
          if (m == 4) {
            wino_scatter_f4(yy[i], b, row);
            continue;
          }
#endif
          for (int l = 0; l < WINO_LANES; l++)
            for (int j = 0; j < m; j++) row[l * m + j] = yy[i][j][l] + b;
        }
        tt += WINO_LANES - 1;
        continue;
      }
      float mm[WINO_MAX_A][WINO_MAX_A], s[4][WINO_MAX_A];
      for (int i = 0; i < A; i++)
        for (int j = 0; j < A; j++) mm[i][j] = mo[(size_t)(i * A + j) * plane + tt];
      for (int j = 0; j < A; j++) wino_at(m, &mm[0][j], WINO_MAX_A, &s[0][j], WINO_MAX_A); /* s = Aᵀ M */
      float yy[4][4];
      for (int i = 0; i < m; i++) wino_at(m, &s[i][0], 1, &yy[i][0], 1); /* Y = s A */
      int64_t t = (p->t0 + tt) % p->T;
      int oy = (int)(t / p->tw) * m, ox = (int)(t % p->tw) * m;
      for (int i = 0; i < m && oy + i < p->h; i++) {
        float *row = yo + (size_t)(oy + i) * p->w + ox;
        for (int j = 0; j < m && ox + j < p->w; j++) row[j] = yy[i][j] + b;
      }
    }
  }
}

static mp_error *conv3x3_winograd(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int C, int h, int w,
                                  const mp_tensor *weight, const float *bias, int64_t max_tiles, const wino_kind *k) {
  const int O = (int)weight->shape[0], A = k->a, th = (h + k->m - 1) / k->m, tw = (w + k->m - 1) / k->m;
  const int64_t T = (int64_t)th * tw, AA = (int64_t)A * A;
  int64_t tb = WINO_BUDGET_FLOATS / (AA * (int64_t)(C + O));
  tb = tb < 64 ? 64 : tb;
  if (max_tiles > 0 && tb > max_tiles) tb = max_tiles;
  tb = tb > T * batch ? T * batch : tb;
  const size_t nU = (size_t)AA * O * C, nV = (size_t)AA * C * tb, nM = (size_t)AA * O * tb;
  MP_TRY(mp_workspace_reserve(ws, sizeof(float) * (nU + nV + nM)));
  float *U = ws->p, *V = U + nU, *M = V + nV;
  wino_w_args wa = {k, U, weight->data, weight->dtype, mp_dtype_size(weight->dtype), O, C};
  mp_pool_for(pool, O, O >= 16 ? 4 : 1, wino_weights, &wa);
  const int nt = mp_pool_size(pool), prev = openblas_get_num_threads();
  if (nt > 1 && prev != 1) openblas_set_num_threads(1);
  const int64_t total = T * batch; /* the images' tiles side by side: wider GEMMs on small images */
  for (int64_t t0 = 0; t0 < total; t0 += tb) {
    int64_t n = total - t0 < tb ? total - t0 : tb;
    wino_in_args ia = {k, V, x, C, h, w, tw, t0, n, T};
    mp_pool_for(pool, C, C >= 16 ? 4 : 1, wino_input, &ia);
    wino_gemm_args ga = {U, V, M, O, C, n};
    mp_pool_for(pool, AA, 1, wino_gemms, &ga);
    wino_out_args oa = {k, y, M, bias, O, h, w, tw, t0, n, T};
    mp_pool_for(pool, O, O >= 16 ? 4 : 1, wino_output, &oa);
  }
  if (nt > 1 && prev != 1) openblas_set_num_threads(prev);
  return NULL;
}

mp_error *mp_conv3x3_winograd(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int c_in, int h, int w,
                              const mp_tensor *weight, const mp_tensor *bias, int tile, int64_t max_tiles) {
  if (tile != 2 && tile != 4) return mp_errorf("Winograd output tile %d (2 or 4)", tile);
  if (weight->ndim != 4 || weight->shape[1] != c_in || weight->shape[2] != 3 || weight->shape[3] != 3 || !is_float_dtype(weight->dtype))
    return mp_errorf("Winograd convolution needs a float [out, %d, 3, 3] weight", c_in);
  float bw[8192];
  if (bias && weight->shape[0] > 8192) return mp_errorf("too many output channels");
  if (bias) MP_TRY(mp_vector_f32(bias, bw, weight->shape[0]));
  return conv3x3_winograd(pool, ws, y, x, batch, c_in, h, w, weight, bias ? bw : NULL, max_tiles, tile == 4 ? &WINO_F4 : &WINO_F2);
}

/* ---- 3x3, stride 1, padding 1, with few output channels: direct ----
 * The models' last convolutions (128 -> 3 in the VAE decoder at full resolution, 320 -> 4 in the UNet)
 * are a poor fit for the paths above: Winograd transforms all 128 input planes to produce 3 outputs
 * (65 ms at 512x512), and a GEMM with 3 rows runs at a few % of its rate. Direct accumulation keeps
 * SMALL_OB outputs x SMALL_NV x 16 pixels of one output row in registers over the whole reduction
 * (c_in x 9 taps), reading each input row at three shifts: 32 ms at 512x512 (bench/RESULTS.md). The
 * first convolutions (3 -> 128) gain less (40 -> 22 ms) and stay on Winograd: ControlNet's hint
 * convolutions are among them, and its bf16 outputs sit so close to their golden bound (tiny
 * controlnet.a.mid 0.00995 of 0.01) that moving the f32 hint by 1e-7 tips them over. */
enum { SMALL_OB = 4, SMALL_NV = 4, SMALL_PX = SMALL_NV * WINO_LANES, SMALL_MAX_CHANNELS = 4 };

/* through a pointer: a function returning a 64-byte vector by value breaks -Wpsabi where AVX-512 is
 * not enabled at compile time (MPASS_NATIVE=OFF) */
static inline void load_v16(wino_v16 *v, const float *p) { memcpy(v, p, sizeof *v); }

typedef struct {
  float *y;
  const float *x, *w, *bias; /* w: [c_out][c_in][3][3] f32 */
  int c_in, c_out, h, w_px, oblocks;
} small_conv_args;

/* One block of SMALL_PX output pixels starting at x0, for outputs o0..o0+OB-1 of output row oy (OB a
 * constant at each call, so the accumulators stay in registers). Input rows are read at x0-1, x0, x0+1;
 * where those leave the row (the image's left and right edges, a last partial block) the block reads a
 * zero-padded copy of its span instead. */
static inline __attribute__((always_inline)) void small_conv_block(const small_conv_args *a, const float *xb, float *yb,
                                                                   int oy, int o0, const int OB, int x0) {
  const int W = a->w_px, H = a->h;
  const bool interior = x0 >= 1 && x0 + SMALL_PX + 1 <= W;
  wino_v16 acc[SMALL_OB][SMALL_NV];
  for (int o = 0; o < OB; o++)
    for (int v = 0; v < SMALL_NV; v++) acc[o][v] = (wino_v16){0} + (a->bias ? a->bias[o0 + o] : 0.0f);
  float line[SMALL_PX + 2];
  const size_t wstride = (size_t)a->c_in * 9; /* from one output's taps to the next's */
  for (int c = 0; c < a->c_in; c++)
    for (int ky = 0; ky < 3; ky++) {
      const int iy = oy + ky - 1;
      if (iy < 0 || iy >= H) continue;
      const float *row = xb + ((size_t)c * H + (size_t)iy) * W;
      const float *base = row + x0 - 1; /* base[q] is input pixel x0 - 1 + q */
      if (!interior) {
        for (int q = 0; q < SMALL_PX + 2; q++) {
          const int ix = x0 - 1 + q;
          line[q] = ix >= 0 && ix < W ? row[ix] : 0.0f;
        }
        base = line;
      }
      const float *wk = a->w + (size_t)o0 * wstride + (size_t)c * 9 + ky * 3;
      float tap[SMALL_OB][3];
      for (int o = 0; o < OB; o++)
        for (int k = 0; k < 3; k++) tap[o][k] = wk[o * wstride + k];
      for (int v = 0; v < SMALL_NV; v++) {
        wino_v16 l, m, r;
        load_v16(&l, base + v * WINO_LANES), load_v16(&m, base + v * WINO_LANES + 1), load_v16(&r, base + v * WINO_LANES + 2);
        for (int o = 0; o < OB; o++) acc[o][v] += tap[o][0] * l + tap[o][1] * m + tap[o][2] * r;
      }
    }
  for (int o = 0; o < OB; o++) {
    float *out = yb + ((size_t)(o0 + o) * H + (size_t)oy) * W + x0;
    if (x0 + SMALL_PX <= W) {
      memcpy(out, acc[o], sizeof acc[o]);
    } else {
      float vals[SMALL_PX];
      memcpy(vals, acc[o], sizeof vals);
      for (int q = 0; q < W - x0; q++) out[q] = vals[q];
    }
  }
}

/* tasks: (image, output row, block of SMALL_OB outputs) */
MP_VECTOR_CLONES static void small_conv_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const small_conv_args *a = ctx;
  for (int64_t t = begin; t < end; t++) {
    const int ob_i = (int)(t % a->oblocks), oy = (int)(t / a->oblocks % a->h);
    const int64_t b = t / a->oblocks / a->h;
    const int o0 = ob_i * SMALL_OB, ob = a->c_out - o0 < SMALL_OB ? a->c_out - o0 : SMALL_OB;
    const float *xb = a->x + (size_t)b * a->c_in * a->h * a->w_px;
    float *yb = a->y + (size_t)b * a->c_out * a->h * a->w_px;
    for (int x0 = 0; x0 < a->w_px; x0 += SMALL_PX) switch (ob) {
      case 4: small_conv_block(a, xb, yb, oy, o0, 4, x0); break;
      case 3: small_conv_block(a, xb, yb, oy, o0, 3, x0); break;
      case 2: small_conv_block(a, xb, yb, oy, o0, 2, x0); break;
      default: small_conv_block(a, xb, yb, oy, o0, 1, x0); break;
      }
  }
}

static mp_error *conv3x3_small(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int c_in, int h, int w,
                               const mp_tensor *weight, const mp_tensor *bias) {
  const int c_out = (int)weight->shape[0];
  const size_t nw = (size_t)c_out * c_in * 9;
  MP_TRY(mp_workspace_reserve(ws, sizeof(float) * (nw + (size_t)c_out)));
  float *wbuf = ws->p, *bv = wbuf + nw;
  const float *W = weight_f32(pool, weight, wbuf);
  if (bias) MP_TRY(mp_error_wrap(mp_vector_f32(bias, bv, c_out), "conv2d bias"));
  small_conv_args a = {y, x, W, bias ? bv : NULL, c_in, c_out, h, w, (c_out + SMALL_OB - 1) / SMALL_OB};
  mp_pool_for(pool, (int64_t)batch * h * a.oblocks, 4, small_conv_rows, &a);
  return NULL;
}

enum { COL_BUDGET_FLOATS = 16 << 20 }; /* 64 MB of im2col per band */

/* ---- bf16 backend: pixel-major im2col in bf16 + the packed matmul ----
 * The packed matmul computes out[pixels, c_out] = col[pixels, K] · Wᵀ (+ bias) with K = c_in*kh*kw
 * in the weight's own (c, ky, kx) order; bands of output pixels bound the scratch; each band is
 * transposed back into the NCHW output. */
typedef struct {
  uint16_t *col;
  const float *x;
  int c_in, h, w, kh, kw, stride, wo;
  mp_pad pad;
  int64_t p0, K;
} im2col_bf16_args;

static void im2col_bf16_rows(void *ctx, int64_t begin, int64_t end, int ti) {
  (void)ti;
  const im2col_bf16_args *a = ctx;
  const int64_t hw = (int64_t)a->h * a->w;
  for (int64_t i = begin; i < end; i++) {
    const int64_t p = a->p0 + i;
    const int oy = (int)(p / a->wo), ox = (int)(p % a->wo);
    const int iy0 = oy * a->stride - a->pad.top, ix0 = ox * a->stride - a->pad.left;
    uint16_t *dst = a->col + i * a->K;
    const bool inside = iy0 >= 0 && ix0 >= 0 && iy0 + a->kh <= a->h && ix0 + a->kw <= a->w;
    for (int c = 0; c < a->c_in; c++) {
      const float *plane = a->x + c * hw;
      if (inside && a->kh == 3 && a->kw == 3) {
        const float *r0 = plane + (int64_t)iy0 * a->w + ix0, *r1 = r0 + a->w, *r2 = r1 + a->w;
        dst[0] = bf16_round(r0[0]), dst[1] = bf16_round(r0[1]), dst[2] = bf16_round(r0[2]);
        dst[3] = bf16_round(r1[0]), dst[4] = bf16_round(r1[1]), dst[5] = bf16_round(r1[2]);
        dst[6] = bf16_round(r2[0]), dst[7] = bf16_round(r2[1]), dst[8] = bf16_round(r2[2]);
        dst += 9;
        continue;
      }
      for (int ky = 0; ky < a->kh; ky++) {
        const int iy = iy0 + ky;
        for (int kx = 0; kx < a->kw; kx++) {
          const int ix = ix0 + kx;
          *dst++ = (iy >= 0 && iy < a->h && ix >= 0 && ix < a->w) ? bf16_round(plane[(int64_t)iy * a->w + ix]) : 0;
        }
      }
    }
  }
}

typedef struct {
  float *y;         /* image base, [c_out, P] */
  const float *out; /* band, [m, c_out] */
  int64_t P, p0, m, c_out;
} untranspose_args;

static void untranspose_band(void *ctx, int64_t begin, int64_t end, int ti) {
  (void)ti;
  const untranspose_args *a = ctx;
  for (int64_t n0 = begin * 16; n0 < end * 16 && n0 < a->c_out; n0 += 16) {
    const int64_t n1 = n0 + 16 < a->c_out ? n0 + 16 : a->c_out;
    for (int64_t i = 0; i < a->m; i++) {
      const float *src = a->out + i * a->c_out;
      for (int64_t n = n0; n < n1; n++) a->y[n * a->P + a->p0 + i] = src[n];
    }
  }
}

#define BF16_BAND_BYTES ((size_t)24 << 20)

static bool kh_is_3x3_same(const mp_tensor *weight, int stride, mp_pad pad) {
  return weight->shape[2] == 3 && weight->shape[3] == 3 && stride == 1 && pad.top == 1 && pad.bottom == 1 && pad.left == 1 &&
         pad.right == 1;
}

static mp_error *conv2d_packed(mp_pool *pool, mp_workspace *ws, mp_backend *be, float *y, const float *x, int batch, int c_in,
                               int h, int w, const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad, int ho,
                               int wo) {
  /* oneDNN's convolution primitive first (faster, see conv_dnnl.h); im2col + matmul where it declines.
   * 3x3 layers go by Winograd instead on the CPUs and shapes where it measured faster (conv_wino_bf16.h). */
  struct mp_packed_weight *pw;
  MP_TRY(pack_entry(ws, be, weight, bias, &pw));
  if (kh_is_3x3_same(weight, stride, pad) && mp_wino_bf16_pays(c_in, (int)weight->shape[0], h, w, batch)) {
    if (!pw->wino) { /* declined: direct below */
      mp_error_free(mp_wino_bf16_create(be, weight, bias, &pw->wino));
      pw->stored_released = false; /* packing read the stored weight again */
    }
    if (pw->wino) {
      mp_error *re = mp_wino_bf16_run(pw->wino, pool, ws, x, batch, h, w, y, 0);
      if (!re) {
        release_weight_pages(pw, weight);
        return NULL;
      }
      mp_error_free(re);
    }
  }
  if (!pw->conv && !pw->mm) {
    mp_error_free(mp_dnnl_conv_create(be, weight, bias, stride, pad, batch, h, w, &pw->conv));
    pw->stored_released = false;
  }
  if (pw->conv) {
    mp_error *re = mp_dnnl_conv_run(pw->conv, ws, x, batch, h, w, y);
    if (!re) {
      release_weight_pages(pw, weight);
      return NULL;
    }
    mp_error_free(re); /* this shape declined: fall back below */
  }
  mp_matmul *mm;
  MP_TRY(packed_weight(ws, be, weight, bias, &mm));
  const int kh = (int)weight->shape[2], kw = (int)weight->shape[3];
  const int64_t K = (int64_t)c_in * kh * kw, c_out = weight->shape[0], P = (int64_t)ho * wo;
  int64_t band = (int64_t)(BF16_BAND_BYTES / (size_t)(2 * K + 4 * c_out));
  if (band < 1) band = 1;
  if (band > P) band = P;
  const size_t col_bytes = ((size_t)(band * K) * 2 + 63) & ~(size_t)63;
  MP_TRY(mp_workspace_reserve(ws, col_bytes + (size_t)(band * c_out) * 4));
  uint16_t *col = ws->p;
  float *out = (float *)((char *)ws->p + col_bytes);
  for (int b = 0; b < batch; b++) {
    const float *xb = x + (int64_t)b * c_in * h * w;
    float *yb = y + (int64_t)b * c_out * P;
    for (int64_t p0 = 0; p0 < P; p0 += band) {
      const int64_t m = P - p0 < band ? P - p0 : band;
      im2col_bf16_args ia = {col, xb, c_in, h, w, kh, kw, stride, wo, pad, p0, K};
      mp_pool_for(pool, m, 16, im2col_bf16_rows, &ia);
      MP_TRY(mp_matmul_run_bf16(mm, col, m, out, false));
      untranspose_args ua = {yb, out, P, p0, m, c_out};
      mp_pool_for(pool, (c_out + 15) / 16, 1, untranspose_band, &ua);
    }
  }
  return NULL;
}

static mp_error *dense_packed(mp_pool *pool, mp_workspace *ws, mp_backend *be, float *y, const float *x, int64_t n,
                              const mp_tensor *W, const mp_tensor *bias, bool accumulate) {
  mp_matmul *mm;
  MP_TRY(packed_weight(ws, be, W, bias, &mm));
  const int64_t K = mp_matmul_k(mm);
  MP_TRY(mp_workspace_reserve(ws, (size_t)(n * K) * 2));
  mp_bf16_copy(pool, ws->p, x, n * K);
  return mp_matmul_run_bf16(mm, ws->p, n, y, accumulate);
}

static mp_error *conv2d(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int c_in, int h, int w,
                        const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad) {
  if (weight->ndim != 4 || weight->shape[1] != c_in)
    return mp_errorf("conv2d weight must be [out, %d, kh, kw], found %d-D with %lld input channels", c_in, weight->ndim,
                     weight->ndim > 1 ? (long long)weight->shape[1] : -1LL);
  if (!is_float_dtype(weight->dtype)) return mp_errorf("conv2d weight has dtype %s", mp_dtype_name(weight->dtype));
  const int c_out = (int)weight->shape[0], kh = (int)weight->shape[2], kw = (int)weight->shape[3];
  if (stride < 1) return mp_errorf("conv2d stride %d", stride);
  const int ho = mp_conv_out_size(h, kh, stride, pad.top, pad.bottom), wo = mp_conv_out_size(w, kw, stride, pad.left, pad.right);
  if (ho <= 0 || wo <= 0) return mp_errorf("conv2d output would be empty (%dx%d input, %dx%d kernel)", h, w, kh, kw);
  mp_backend *be = mp_pool_backend(pool);
  /* Convolutions with few input or output channels (the models' first and last) stay f32: they are
   * cheap, and rounding the image/latent itself to bf16 costs accuracy out of proportion. */
  if (be && !ws->f32_only && mp_backend_precision(be) == MP_PRECISION_BF16 && c_in >= 32 && c_out >= 32)
    return conv2d_packed(pool, ws, be, y, x, batch, c_in, h, w, weight, bias, stride, pad, ho, wo);
  const int64_t K = (int64_t)c_in * kh * kw, P = (int64_t)ho * wo;
  const bool direct = kh == 1 && kw == 1 && stride == 1 && !pad.top && !pad.bottom && !pad.left && !pad.right;
  const bool same3x3 = kh == 3 && kw == 3 && stride == 1 && pad.top == 1 && pad.bottom == 1 && pad.left == 1 && pad.right == 1;
  if (same3x3 && c_out <= SMALL_MAX_CHANNELS)
    return conv3x3_small(pool, ws, y, x, batch, c_in, h, w, weight, bias);
  if (same3x3 && P >= WINO_MIN_PIXELS) {
    float bw[8192];
    if (bias && c_out > 8192) return mp_errorf("conv2d with %d output channels is beyond this implementation", c_out);
    if (bias) MP_TRY(mp_error_wrap(mp_vector_f32(bias, bw, c_out), "conv2d bias"));
    /* F(4,3) halves the arithmetic again but transforms (and BLAS repacks) a 2.25x larger weight per
     * call, which only pays once there are enough tiles: from 64x64 pixels on. */
    return conv3x3_winograd(pool, ws, y, x, batch, c_in, h, w, weight, bias ? bw : NULL, 0, P >= 4096 ? &WINO_F4 : &WINO_F2);
  }
  /* One GEMM per image for 1x1 convolutions of large images; everything else through im2col bands
   * over the columns of all images (a 1x1 im2col is a copy, cheap next to packing a big weight per image). */
  const bool per_image = direct && (batch == 1 || P >= 1024);
  const int64_t G = (int64_t)batch * P;
  int64_t band = per_image ? 0 : (COL_BUDGET_FLOATS / K > 0 ? COL_BUDGET_FLOATS / K : 1);
  if (!per_image && band > COL_BUDGET_FLOATS / c_out) band = COL_BUDGET_FLOATS / c_out > 0 ? COL_BUDGET_FLOATS / c_out : 1;
  if (band > G) band = G;
  if (band > 0 && band < G && band >= wo) band -= band % wo; /* whole output rows where possible */
  size_t wfloats = weight->dtype == MP_F32 ? 0 : (size_t)(c_out * K);
  wfloats = (wfloats + 15) & ~(size_t)15;
  const size_t colf = ((size_t)(band * K) + 15) & ~(size_t)15;
  MP_TRY(mp_workspace_reserve(ws, sizeof(float) * (wfloats + colf + (size_t)band * (size_t)c_out)));
  float *wbuf = ws->p, *col = wbuf + wfloats, *tmp = col + colf;
  const float *W = weight_f32(pool, weight, wbuf);
  float bvec[8192], *bv = NULL;
  if (bias) {
    if (c_out > 8192) return mp_errorf("conv2d with %d output channels is beyond this implementation", c_out);
    MP_TRY(mp_error_wrap(mp_vector_f32(bias, bvec, c_out), "conv2d bias"));
    bv = bvec;
  }
  if (per_image) {
    for (int b = 0; b < batch; b++)
      mp_gemm_pool(pool, false, c_out, P, K, W, K, x + (int64_t)b * c_in * h * w, P, 0.0f, y + (int64_t)b * c_out * P, P);
  } else {
    for (int64_t g0 = 0; g0 < G; g0 += band) {
      const int64_t ng = G - g0 < band ? G - g0 : band, b0 = g0 / P, b1 = (g0 + ng - 1) / P;
      im2col_args a = {col, x, (int64_t)c_in * h * w, P, h, w, kh, kw, stride, wo, pad.top, pad.left, g0, ng};
      mp_pool_for(pool, K, K >= 64 ? 16 : K, im2col_rows, &a);
      if (b0 == b1) { /* within one image: straight into its output */
        mp_gemm_pool(pool, false, c_out, ng, K, W, K, col, ng, 0.0f, y + b0 * c_out * P + (g0 - b0 * P), P);
        continue;
      }
      mp_gemm_pool(pool, false, c_out, ng, K, W, K, col, ng, 0.0f, tmp, ng);
      for (int64_t b = b0; b <= b1; b++) { /* scatter the images' segments */
        const int64_t s0 = g0 > b * P ? g0 : b * P, s1 = g0 + ng < (b + 1) * P ? g0 + ng : (b + 1) * P;
        for (int o = 0; o < c_out; o++)
          memcpy(y + (b * c_out + o) * P + (s0 - b * P), tmp + (int64_t)o * ng + (s0 - g0), sizeof(float) * (size_t)(s1 - s0));
      }
    }
  }
  if (bv) {
    bias_args ba = {y, bv, P, c_out};
    mp_pool_for(pool, (int64_t)batch * c_out, c_out >= 32 ? 8 : 1, add_bias_rows, &ba);
  }
  return NULL;
}

mp_error *mp_conv2d(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int batch, int c_in, int h, int w,
                    const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad) {
  mp_profile *prof = mp_pool_profile(pool);
  mp_profile_begin(prof);
  mp_error *e = conv2d(pool, ws, y, x, batch, c_in, h, w, weight, bias, stride, pad);
  mp_profile_end(prof, weight->ndim == 4 && weight->shape[2] == 1 && weight->shape[3] == 1 ? MP_OP_DENSE : MP_OP_CONV3X3);
  return e;
}

/* im2col of one item's bf16 NHWC input [h, w, c_in] for the packed matmul: rows of K = c_in * kh * kw
 * in the weight's (c_in, ky, kx) order, for the output pixels p0 .. p0 + rows. */
typedef struct {
  uint16_t *col;
  const uint16_t *x;
  int c_in, h, w, kh, kw, stride, wo;
  mp_pad pad;
  int64_t p0, K;
} im2col_nhwc_args;

static void im2col_nhwc_rows(void *ctx, int64_t begin, int64_t end, int ti) {
  (void)ti;
  const im2col_nhwc_args *a = ctx;
  for (int64_t i = begin; i < end; i++) {
    const int64_t p = a->p0 + i;
    const int oy = (int)(p / a->wo), ox = (int)(p % a->wo);
    uint16_t *dst = a->col + i * a->K;
    for (int ky = 0; ky < a->kh; ky++)
      for (int kx = 0; kx < a->kw; kx++) {
        const int iy = oy * a->stride - a->pad.top + ky, ix = ox * a->stride - a->pad.left + kx, tap = ky * a->kw + kx;
        const bool in = iy >= 0 && iy < a->h && ix >= 0 && ix < a->w;
        const uint16_t *src = in ? a->x + ((int64_t)iy * a->w + ix) * a->c_in : NULL;
        for (int c = 0; c < a->c_in; c++) dst[(int64_t)c * a->kh * a->kw + tap] = in ? src[c] : 0;
      }
  }
}

/* The NHWC convolution as im2col + the packed matmul, whose rows are NHWC output pixels: for the shapes
 * where oneDNN offers only its reference convolution (small images on AVX512-BF16 without AMX, e.g. the
 * tiny test UNets' 2x3 levels on an AMD Zen 5). */
static mp_error *conv_nhwc_by_matmul(mp_pool *pool, mp_workspace *ws, mp_backend *be, float *y, const uint16_t *x, int batch,
                                     int c_in, int h, int w, const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad,
                                     bool accumulate) {
  mp_matmul *mm;
  MP_TRY(packed_weight(ws, be, weight, bias, &mm));
  const int kh = (int)weight->shape[2], kw = (int)weight->shape[3];
  const int ho = mp_conv_out_size(h, kh, stride, pad.top, pad.bottom), wo = mp_conv_out_size(w, kw, stride, pad.left, pad.right);
  const int64_t K = (int64_t)c_in * kh * kw, c_out = weight->shape[0], P = (int64_t)ho * wo;
  int64_t band = (int64_t)(BF16_BAND_BYTES / (size_t)(2 * K));
  if (band < 1) band = 1;
  if (band > P) band = P;
  MP_TRY(mp_workspace_reserve(ws, (size_t)(band * K) * 2));
  uint16_t *col = ws->p;
  for (int b = 0; b < batch; b++)
    for (int64_t p0 = 0; p0 < P; p0 += band) {
      const int64_t m = P - p0 < band ? P - p0 : band;
      im2col_nhwc_args ia = {col, x + (int64_t)b * h * w * c_in, c_in, h, w, kh, kw, stride, wo, pad, p0, K};
      mp_pool_for(pool, m, 16, im2col_nhwc_rows, &ia);
      MP_TRY(mp_matmul_run_bf16(mm, col, m, y + ((int64_t)b * P + p0) * c_out, accumulate));
    }
  return NULL;
}

bool mp_conv2d_nhwc_usable(mp_pool *pool, int c_in, int c_out, int h, int w, int batch) {
  mp_backend *be = mp_pool_backend(pool);
  return be && mp_backend_precision(be) == MP_PRECISION_BF16 && c_in >= 32 && c_out >= 32 &&
         !mp_wino_bf16_pays(c_in, c_out, h, w, batch);
}

mp_error *mp_conv2d_nhwc_bf16(mp_pool *pool, mp_workspace *ws, float *y, const uint16_t *x, int batch, int c_in, int h, int w,
                              const mp_tensor *weight, const mp_tensor *bias, int stride, mp_pad pad, bool accumulate) {
  if (weight->ndim != 4 || weight->shape[1] != c_in)
    return mp_errorf("conv2d weight must be [out, %d, kh, kw], found %d-D with %lld input channels", c_in, weight->ndim,
                     weight->ndim > 1 ? (long long)weight->shape[1] : -1LL);
  if (ws->f32_only || !mp_conv2d_nhwc_usable(pool, c_in, (int)weight->shape[0], h, w, batch))
    return mp_errorf("NHWC convolution needs the bf16 backend's direct convolution");
  mp_backend *be = mp_pool_backend(pool);
  mp_profile *prof = mp_pool_profile(pool);
  mp_profile_begin(prof);
  struct mp_packed_weight *pw;
  mp_error *e = pack_entry(ws, be, weight, bias, &pw);
  /* oneDNN's primitive where it has a kernel for the shape; where it declines (only its reference one,
   * which mp_dnnl_conv_* refuse), im2col + the matmul, as mp_conv2d does */
  if (!e && !pw->conv && !pw->mm) {
    mp_error_free(mp_dnnl_conv_create(be, weight, bias, stride, pad, batch, h, w, &pw->conv));
    pw->stored_released = false;
  }
  mp_error *declined = !e && pw->conv ? mp_dnnl_conv_run_nhwc(pw->conv, ws, x, batch, h, w, y, accumulate) : NULL;
  if (!e && (!pw->conv || declined)) e = conv_nhwc_by_matmul(pool, ws, be, y, x, batch, c_in, h, w, weight, bias, stride, pad, accumulate);
  mp_error_free(declined);
  if (!e) release_weight_pages(pw, weight);
  mp_profile_end(prof, MP_OP_CONV3X3);
  return e;
}

/* ---- dense ---- */
typedef struct {
  float *y;
  const float *b;
  int64_t out;
} rowbias_args;

static void add_row_bias(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const rowbias_args *a = ctx;
  for (int64_t r = begin; r < end; r++) {
    float *y = a->y + r * a->out;
    for (int64_t j = 0; j < a->out; j++) y[j] += a->b[j];
  }
}

static mp_error *check_dense_weight(const mp_tensor *W) {
  bool conv1x1 = W->ndim == 4 && W->shape[2] == 1 && W->shape[3] == 1;
  if (W->ndim != 2 && !conv1x1) return mp_errorf("dense weight must be [out, in] (or [out, in, 1, 1]), found %d-D", W->ndim);
  if (!is_float_dtype(W->dtype)) return mp_errorf("dense weight has dtype %s", mp_dtype_name(W->dtype));
  return NULL;
}

static mp_error *dense(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int64_t n, const mp_tensor *W,
                       const mp_tensor *bias, bool accumulate) {
  MP_TRY(check_dense_weight(W));
  mp_backend *be = mp_pool_backend(pool);
  if (be && !ws->f32_only && mp_backend_precision(be) == MP_PRECISION_BF16)
    return dense_packed(pool, ws, be, y, x, n, W, bias, accumulate);
  const int64_t out = W->shape[0], in = W->shape[1];
  size_t wfloats = W->dtype == MP_F32 ? 0 : (size_t)(out * in);
  size_t bfloats = bias ? (size_t)out : 0;
  MP_TRY(mp_workspace_reserve(ws, sizeof(float) * (((wfloats + 15) & ~(size_t)15) + bfloats + 1)));
  float *wbuf = ws->p, *bbuf = wbuf + ((wfloats + 15) & ~(size_t)15);
  const float *w = weight_f32(pool, W, wbuf);
  mp_gemm_pool(pool, true, n, out, in, x, in, w, in, accumulate ? 1.0f : 0.0f, y, out);
  if (bias) {
    MP_TRY(mp_error_wrap(mp_vector_f32(bias, bbuf, out), "dense bias"));
    rowbias_args a = {y, bbuf, out};
    mp_pool_for(pool, n, n >= 64 ? 32 : n, add_row_bias, &a);
  }
  return NULL;
}

static mp_error *dense_timed(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int64_t n, const mp_tensor *W,
                             const mp_tensor *bias, bool accumulate) {
  mp_profile *prof = mp_pool_profile(pool);
  mp_profile_begin(prof);
  mp_error *e = dense(pool, ws, y, x, n, W, bias, accumulate);
  mp_profile_end(prof, MP_OP_DENSE);
  return e;
}

mp_error *mp_dense(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int64_t n, const mp_tensor *W,
                   const mp_tensor *bias) {
  return dense_timed(pool, ws, y, x, n, W, bias, false);
}

mp_error *mp_dense_add(mp_pool *pool, mp_workspace *ws, float *y, const float *x, int64_t n, const mp_tensor *W,
                       const mp_tensor *bias) {
  return dense_timed(pool, ws, y, x, n, W, bias, true);
}

mp_error *mp_dense_shared(mp_pool *pool, mp_workspace *ws, const float *x, int64_t n, const mp_dense_out *outs, int count) {
  mp_backend *be = mp_pool_backend(pool);
  if (!(be && !ws->f32_only && mp_backend_precision(be) == MP_PRECISION_BF16)) {
    for (int i = 0; i < count; i++) MP_TRY(mp_dense(pool, ws, outs[i].y, x, n, outs[i].W, outs[i].bias));
    return NULL;
  }
  enum { MAX_SHARED = 4 };
  if (count < 1 || count > MAX_SHARED) return mp_errorf("mp_dense_shared: %d layers (1 to %d)", count, MAX_SHARED);
  mp_matmul *mm[MAX_SHARED];
  for (int i = 0; i < count; i++) { /* all packed before ws holds the converted input */
    MP_TRY(check_dense_weight(outs[i].W));
    MP_TRY(packed_weight(ws, be, outs[i].W, outs[i].bias, &mm[i]));
    if (mp_matmul_k(mm[i]) != mp_matmul_k(mm[0]))
      return mp_errorf("dense layers sharing an input take %lld and %lld inputs", (long long)mp_matmul_k(mm[0]),
                       (long long)mp_matmul_k(mm[i]));
  }
  mp_profile *prof = mp_pool_profile(pool);
  mp_profile_begin(prof);
  const int64_t K = mp_matmul_k(mm[0]);
  mp_error *e = mp_workspace_reserve(ws, (size_t)(n * K) * 2);
  if (!e) mp_bf16_copy(pool, ws->p, x, n * K);
  for (int i = 0; i < count && !e; i++) e = mp_matmul_run_bf16(mm[i], ws->p, n, outs[i].y, false);
  mp_profile_end(prof, MP_OP_DENSE);
  return e;
}

/* ---- group norm ---- */
typedef struct {
  float *y;
  const float *x, *gamma, *beta;
  int C, groups;
  int64_t hw;
  float eps;
  bool silu;
} gn_args;

/* Sums over n floats in 16 independent lanes (the compiler keeps IEEE order, so a single float
 * accumulator would be one serial chain of adds). */
static float lane_sum(const float *x, int64_t n) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) acc[l] += x[i + l];
  for (; i < n; i++) acc[i & 15] += x[i];
  float s = 0;
  for (int l = 0; l < 16; l++) s += acc[l];
  return s;
}

static float lane_sq_dev(const float *x, int64_t n, float m) {
  float acc[16] = {0};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) {
      const float d = x[i + l] - m;
      acc[l] += d * d;
    }
  for (; i < n; i++) acc[i & 15] += (x[i] - m) * (x[i] - m);
  float s = 0;
  for (int l = 0; l < 16; l++) s += acc[l];
  return s;
}

static void group_norm_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const gn_args *a = ctx;
  const int cg = a->C / a->groups;
  for (int64_t task = begin; task < end; task++) {
    int b = (int)(task / a->groups), g = (int)(task % a->groups);
    const int64_t off = ((int64_t)b * a->C + (int64_t)g * cg) * a->hw, n = (int64_t)cg * a->hw;
    const float *x = a->x + off;
    float *y = a->y + off;
    /* One pass over memory for the statistics: each 4096-value chunk (in L1) gives its mean and
     * centred sum of squares (16 float lanes, so it vectorises), and the chunks merge in double
     * (Chan et al.'s pairwise update). As accurate as mean-then-variance over the whole group, which
     * read it twice with one serial float sum per pass (the statistics took half the op's time). */
    double mean = 0, var = 0, seen = 0;
    for (int64_t i0 = 0; i0 < n; i0 += 4096) {
      const int64_t i1 = i0 + 4096 < n ? i0 + 4096 : n;
      const double len = (double)(i1 - i0);
      const float cm = (float)((double)lane_sum(x + i0, i1 - i0) / len);
      const float q = lane_sq_dev(x + i0, i1 - i0, cm);
      const double delta = (double)cm - mean, total = seen + len;
      mean += delta * len / total;
      var += (double)q + delta * delta * seen * len / total;
      seen = total;
    }
    const float mf = (float)mean;
    var /= (double)n;
    const float inv = (float)(1.0 / sqrt(var + a->eps));
    for (int c = 0; c < cg; c++) {
      const int ch = g * cg + c;
      const float scale = inv * a->gamma[ch], shift = a->beta[ch] - mf * scale;
      const float *xc = x + (int64_t)c * a->hw;
      float *yc = y + (int64_t)c * a->hw;
      if (a->silu) {
        mp_vaffine_silu(yc, xc, scale, shift, a->hw);
      } else {
        for (int64_t i = 0; i < a->hw; i++) yc[i] = xc[i] * scale + shift;
      }
    }
  }
}

void mp_group_norm(mp_pool *pool, float *y, const float *x, int batch, int C, int64_t hw, int groups, const float *gamma,
                   const float *beta, float eps, bool silu) {
  gn_args a = {y, x, gamma, beta, C, groups, hw, eps, silu};
  mp_profile_begin(mp_pool_profile(pool));
  mp_pool_for(pool, (int64_t)batch * groups, 1, group_norm_tasks, &a);
  mp_profile_end(mp_pool_profile(pool), MP_OP_NORM);
}

/* ---- upsample ---- */
typedef struct {
  float *y;
  const float *x;
  int h, w;
} up_args;

static void upsample_planes(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const up_args *a = ctx;
  const int w2 = 2 * a->w;
  for (int64_t p = begin; p < end; p++) {
    const float *x = a->x + p * a->h * a->w;
    float *y = a->y + p * 4 * a->h * a->w;
    for (int i = 0; i < a->h; i++) {
      float *r0 = y + (int64_t)(2 * i) * w2;
      for (int j = 0; j < a->w; j++) r0[2 * j] = r0[2 * j + 1] = x[(int64_t)i * a->w + j];
      memcpy(r0 + w2, r0, sizeof(float) * (size_t)w2);
    }
  }
}

void mp_upsample_nearest2x(mp_pool *pool, float *y, const float *x, int64_t planes, int h, int w) {
  up_args a = {y, x, h, w};
  mp_pool_for(pool, planes, planes >= 16 ? 4 : 1, upsample_planes, &a);
}

/* ---- GEGLU ---- */
typedef struct {
  float *y;
  const float *x;
  int64_t d;
} geglu_args;

static void geglu_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const geglu_args *a = ctx;
  for (int64_t r = begin; r < end; r++) {
    const float *hid = a->x + r * 2 * a->d, *gate = hid + a->d;
    float *y = a->y + r * a->d;
    mp_vgeglu_row(y, hid, gate, a->d);
  }
}

void mp_geglu(mp_pool *pool, float *y, const float *x, int64_t n, int64_t d) {
  geglu_args a = {y, x, d};
  if (y == x) { /* in place: rows must go in order (row r's output overlaps inputs of rows < r only) */
    geglu_rows(&a, 0, n, 0);
    return;
  }
  mp_pool_for(pool, n, n >= 64 ? 16 : n, geglu_rows, &a);
}

/* GEGLU rows straight to bf16, a chunk at a time through a buffer that stays in L1. */
enum { GEGLU_CHUNK = 1024 };
typedef struct {
  uint16_t *y;
  const float *x;
  int64_t d;
  bool cpu_bf16;
} geglu_bf16_args;

static void geglu_bf16_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const geglu_bf16_args *a = ctx;
  float chunk[GEGLU_CHUNK];
  for (int64_t r = begin; r < end; r++) {
    const float *hid = a->x + r * 2 * a->d, *gate = hid + a->d;
    for (int64_t c = 0; c < a->d; c += GEGLU_CHUNK) {
      const int64_t len = a->d - c < GEGLU_CHUNK ? a->d - c : GEGLU_CHUNK;
      mp_vgeglu_row(chunk, hid + c, gate + c, len);
      mp_bf16_row(a->y + r * a->d + c, chunk, len, a->cpu_bf16);
    }
  }
}

mp_error *mp_dense_geglu(mp_pool *pool, mp_workspace *ws, float *y, float *gated, const float *x, int64_t n, int64_t d,
                         const mp_tensor *W, const mp_tensor *bias, bool accumulate) {
  /* checked on both paths: mp_dense reads as many inputs per row as the weight has */
  if (W->ndim != 2 || W->shape[1] != d)
    return mp_errorf("feed-forward output weight must be [out, %lld], found %d-D with %lld inputs", (long long)d, W->ndim,
                     W->ndim > 1 ? (long long)W->shape[1] : -1LL);
  mp_backend *be = mp_pool_backend(pool);
  if (!(be && !ws->f32_only && mp_backend_precision(be) == MP_PRECISION_BF16)) {
    mp_geglu(pool, gated, x, n, d);
    return accumulate ? mp_dense_add(pool, ws, y, gated, n, W, bias) : mp_dense(pool, ws, y, gated, n, W, bias);
  }
  mp_matmul *mm;
  MP_TRY(packed_weight(ws, be, W, bias, &mm));
  MP_TRY(mp_workspace_reserve(ws, (size_t)(n * d) * 2));
  geglu_bf16_args a = {ws->p, x, d, mp_backend_cpu_avx512_bf16(be)};
  mp_pool_for(pool, n, n >= 64 ? 16 : n, geglu_bf16_rows, &a);
  mp_profile *prof = mp_pool_profile(pool);
  mp_profile_begin(prof);
  mp_error *e = mp_matmul_run_bf16(mm, ws->p, n, y, accumulate);
  mp_profile_end(prof, MP_OP_DENSE);
  return e;
}

/* ---- transposes (blocked so both sides stream through cache) ---- */
enum { TB = 32 };
typedef struct {
  float *dst;
  const float *src;
  int64_t rows, cols;
  bool add;
} tr_args;

static void transpose_blocks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const tr_args *a = ctx;
  for (int64_t rb = begin; rb < end; rb++) {
    int64_t r0 = rb * TB, r1 = r0 + TB < a->rows ? r0 + TB : a->rows;
    for (int64_t c0 = 0; c0 < a->cols; c0 += TB) {
      int64_t c1 = c0 + TB < a->cols ? c0 + TB : a->cols;
      if (a->add) { /* dst [rows, cols] += src [cols, rows]ᵀ */
        for (int64_t r = r0; r < r1; r++)
          for (int64_t c = c0; c < c1; c++) a->dst[r * a->cols + c] += a->src[c * a->rows + r];
      } else { /* dst [cols, rows] = src [rows, cols]ᵀ */
        for (int64_t c = c0; c < c1; c++)
          for (int64_t r = r0; r < r1; r++) a->dst[c * a->rows + r] = a->src[r * a->cols + c];
      }
    }
  }
}

void mp_transpose(mp_pool *pool, float *dst, const float *src, int64_t rows, int64_t cols) {
  tr_args a = {dst, src, rows, cols, false};
  mp_pool_for(pool, (rows + TB - 1) / TB, 1, transpose_blocks, &a);
}

void mp_transpose_add(mp_pool *pool, float *dst, const float *src, int64_t rows, int64_t cols) {
  tr_args a = {dst, src, rows, cols, true};
  mp_pool_for(pool, (rows + TB - 1) / TB, 1, transpose_blocks, &a);
}
