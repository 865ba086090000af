/* bf16 attention on AVX-512 BF16 without AMX, with the vector lanes over queries (see
 * attention_avx512_bf16.h for the contract).
 *
 * Why lanes over queries. `vdpbf16ps` adds, in each of 16 f32 lanes, the products of one pair of
 * bf16. With lanes over keys (the AMX kernel's layout) the score product is efficient, but P·V then
 * needs lanes over head dims, and head dim 40 fills 48 lanes (17 % of its products wasted), while
 * each row's softmax maximum and sum are horizontal reductions. With lanes over queries both
 * products broadcast one 32-bit pair of the other operand from memory (K's pair of head dims, V's
 * pair of keys) and any head dim costs exactly hd/2 (score) and hd (P·V) products per 16 queries
 * and key pair; the softmax's maxima and sums are plain vertical max/add across key rows, and the
 * scores go from the score product's registers straight to their numerators, never to memory,
 * once a row's maximum is known.
 *
 * Layouts (bf16; QV vectors of 16 queries = one strip of TQ queries):
 *   Qt per strip  [hd2 pairs][QV][16 queries][2]   pre-scaled by log2(e)/sqrt(hd)
 *   K  per head   [key/TR][hd2 pairs][TR keys][2] one key's pair of dims is one 32-bit broadcast
 *   V  per head   [key pair][hd][2]                one dim's pair of keys is one 32-bit broadcast
 *   P  per strip  [key pair][QV][16 queries][2]    softmax numerators of one key block
 *   Ot per strip  [hd][TQ] f32                     the output, transposed, summed over key blocks
 * Keys are padded with zeros to a multiple of TR (10); the padded keys' numerators are set to zero.
 *
 * Softmax: scores in log2 units, numerators 2^(s - m) from a range-reduced quadratic (relative
 * error 1.7e-3, the size of P's bf16 rounding). Each query's maximum m is taken from the first key
 * block and then stays (numerators of later blocks may exceed 1: f32 and bf16 hold them up to
 * 2^127); a task whose sums or outputs overflow runs again with maxima that move per block, as the
 * AMX kernel does (attention_bf16.c). */
#include "core/attention_avx512_bf16.h"

#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "core/matmul.h"
#include "core/tensor.h"

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define BF16_INLINE BF16_TARGET __attribute__((always_inline)) static inline

/* QV vectors of 16 queries per strip and TR keys per score tile: 20 accumulators, with 2 query loads
 * and 10 key broadcasts per 20 products, and registers left for the softmax that follows (3 x 8
 * spilled its accumulators: 4 % slower at 4096 tokens). TD head dims per P·V tile: 16 accumulators,
 * 2 numerator loads and 8 value broadcasts per 16 products; every head dim of SD 1.x and SDXL (40,
 * 64, 80, 160) is a multiple of 8 (10 and 12 were no faster). KB keys per block: the block's K and V
 * (19 KB at head dim 40), its numerators (7.5 KB) and the strip's Ot (5 KB) stay in L1. */
enum { QV = 2, TQ = 16 * QV, TR = 10, TD = 8, KB = 120 };
/* query rows per task: two strips; past 8192 queries six (K and V of a head no longer stay in a
 * 1 MB L2, and each task reads them once) */
enum { QB = 2 * TQ, QB_LONG = 6 * TQ, QB_LONG_FROM = 8192 };
/* S: a block's scores (moving maxima), and before the first block 16 rows of Q pairs (head dims to 512) */
enum { S_FLOATS = KB * TQ > 16 * 256 ? KB * TQ : 16 * 256 };
/* how far (log2 units) a block's maximum may exceed the running one before the rows are rescaled */
#define MAX_SLACK 8.0f

typedef struct {
  const float *q, *k, *v;
  float *out;
  int64_t nq, nk, ld, nkp; /* nkp: keys rounded up to TR */
  int heads, hd, hd2, qb;
  float qscale;
  uint16_t *kp, *vp; /* packed K and V, all heads */
  void *scratch;
  size_t scratch_per_thread;
} att;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
static int64_t kp_head_elems(const att *a) { return a->nkp * a->hd2 * 2; }
static int64_t vp_head_elems(const att *a) { return a->nkp * a->hd; }

BF16_INLINE __mmask16 first_lanes(int64_t n) { return n >= 16 ? (__mmask16)0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* dst[0, hd2) = the pairs of src[0, hd) * scale as bf16, the last pair's second half zero when hd is odd */
BF16_INLINE void row_pairs(const float *src, int hd, float scale, uint32_t *dst) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int d = 0; d < hd; d += 32) {
    const __m512 lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(first_lanes(hd - d), src + d), s);
    const __m512 hi = _mm512_mul_ps(_mm512_maskz_loadu_ps(first_lanes(hd - d - 16), src + d + 16), s);
    _mm512_mask_storeu_epi32(dst + d / 2, first_lanes((hd - d + 1) / 2), (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

/* r[i][j] -> r[j][i] for 16 vectors of 16 32-bit lanes: pairs of rows interleaved by 32 and 64 bits
 * (within each 128-bit lane), then the 128-bit lanes gathered in two rounds. */
BF16_INLINE void transpose16(__m512i r[16]) {
  __m512i a[16], b[16];
  for (int k = 0; k < 8; k++)
    a[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]), a[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
  /* b[4m + c]: 128-bit lane L holds column 4L + c of rows 4m .. 4m + 3 */
  for (int m = 0; m < 4; m++) {
    b[4 * m] = _mm512_unpacklo_epi64(a[4 * m], a[4 * m + 2]), b[4 * m + 1] = _mm512_unpackhi_epi64(a[4 * m], a[4 * m + 2]);
    b[4 * m + 2] = _mm512_unpacklo_epi64(a[4 * m + 1], a[4 * m + 3]), b[4 * m + 3] = _mm512_unpackhi_epi64(a[4 * m + 1], a[4 * m + 3]);
  }
  for (int c = 0; c < 4; c++) {
    const __m512i lo01 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), hi01 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xee);
    const __m512i lo23 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44), hi23 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xee);
    r[c] = _mm512_shuffle_i32x4(lo01, lo23, 0x88), r[4 + c] = _mm512_shuffle_i32x4(lo01, lo23, 0xdd);
    r[8 + c] = _mm512_shuffle_i32x4(hi01, hi23, 0x88), r[12 + c] = _mm512_shuffle_i32x4(hi01, hi23, 0xdd);
  }
}

/* ---- packing: one group of TR keys, all heads ----
 * Whole rows of K and V at a time: each head's slice of a row is only 160 bytes at head dim 40, and
 * reading them head by head, with the row stride between, ran at memory latency (8 % of the kernel
 * at 4096 tokens). */
BF16_TARGET static void pack_kv_group(const att *a, int64_t g) {
  uint32_t pairs[256]; /* head dims up to 512 (attention_avx512_bf16.h) */
  for (int i = 0; i < TR; i++) {
    const int64_t key = g * TR + i;
    for (int h = 0; h < a->heads; h++) {
      uint32_t *kd = (uint32_t *)(void *)(a->kp + (int64_t)h * kp_head_elems(a)) + g * a->hd2 * TR;
      if (key < a->nk)
        row_pairs(a->k + key * a->ld + (int64_t)h * a->hd, a->hd, 1.0f, pairs);
      else
        memset(pairs, 0, sizeof(uint32_t) * (size_t)a->hd2);
      for (int p = 0; p < a->hd2; p++) kd[p * TR + i] = pairs[p];
    }
  }
  for (int64_t jp = g * TR / 2; jp < (g + 1) * TR / 2; jp++) {
    const int64_t k0 = 2 * jp, k1 = k0 + 1;
    for (int h = 0; h < a->heads; h++) {
      uint16_t *vd = a->vp + (int64_t)h * vp_head_elems(a);
      const float *s0 = a->v + k0 * a->ld + (int64_t)h * a->hd, *s1 = a->v + k1 * a->ld + (int64_t)h * a->hd;
      for (int d = 0; d < a->hd; d += 16) {
        const __mmask16 m = first_lanes(a->hd - d);
        const __m512 x0 = k0 < a->nk ? _mm512_maskz_loadu_ps(m, s0 + d) : _mm512_setzero_ps();
        const __m512 x1 = k1 < a->nk ? _mm512_maskz_loadu_ps(m, s1 + d) : _mm512_setzero_ps();
        const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x0));
        const __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x1)), 16);
        _mm512_mask_storeu_epi32(vd + (jp * a->hd + d) * 2, m, _mm512_or_si512(lo, hi)); /* [d][key pair] */
      }
    }
  }
}

static void pack_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  for (int64_t g = begin; g < end; g++) pack_kv_group(ctx, g);
}

/* ---- the score tile: TR keys x TQ queries ---- */
BF16_INLINE __m512bh bcast_pair(const uint16_t *p) {
  int32_t x;
  memcpy(&x, p, sizeof x);
  return (__m512bh)_mm512_set1_epi32(x);
}

/* acc[r][v] = scores of key r (of the TR keys at Kt) for the strip's query vector v */
BF16_INLINE void score_tile(const uint16_t *Qt, int hd2, const uint16_t *Kt, __m512 acc[TR][QV]) {
  for (int r = 0; r < TR; r++)
    for (int v = 0; v < QV; v++) acc[r][v] = _mm512_setzero_ps();
  for (int p = 0; p < hd2; p++) {
    __m512bh q[QV];
    for (int v = 0; v < QV; v++) q[v] = (__m512bh)_mm512_loadu_si512(Qt + (p * QV + v) * 32);
    for (int r = 0; r < TR; r++) {
      const __m512bh kr = bcast_pair(Kt + (p * TR + r) * 2);
      for (int v = 0; v < QV; v++) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], kr, q[v]);
    }
  }
}

/* 2^(s - m), lane by lane. vreduceps gives the fraction r = t - floor(t), vscalefps multiplies by
 * 2^floor(t) itself; the quadratic for 2^r on [0, 1) is near-minimax in relative error (1.73e-3).
 * Far below m the result is a denormal or zero: the kernel runs with denormals flushed to zero. */
BF16_INLINE __m512 exp2_minus(__m512 s, __m512 m) {
  const __m512 t = _mm512_sub_ps(s, m);
  const __m512 r = _mm512_reduce_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.337181223f), r, _mm512_set1_ps(0.657641351f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.001724424f));
  return _mm512_scalef_ps(p, t);
}

/* The numerators of keys r, r+1 (vectors e0, e1 of 16 queries) as one vector of bf16 pairs. */
BF16_INLINE __m512i key_pair(__m512 e0, __m512 e1) {
  /* cvtne2ps gives [e0's 16 | e1's 16] in 16-bit lanes; the pairs want e0[i], e1[i] side by side */
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21,
                                              5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
}

/* Numerators of one score tile into P (pairs of keys j0 + r, j0 + r + 1 at P's pair (j0 + r) / 2),
 * added to the sums l; keys from `valid` on (padding) get zero. */
BF16_INLINE void numerators_tile(__m512 acc[TR][QV], int valid, const __m512 m[QV], __m512 l[QV], uint16_t *P) {
  for (int r = 0; r < TR; r += 2)
    for (int v = 0; v < QV; v++) {
      __m512 e0 = exp2_minus(acc[r][v], m[v]), e1 = exp2_minus(acc[r + 1][v], m[v]);
      if (r >= valid) e0 = _mm512_setzero_ps();
      if (r + 1 >= valid) e1 = _mm512_setzero_ps();
      l[v] = _mm512_add_ps(l[v], _mm512_add_ps(e0, e1));
      _mm512_storeu_si512(P + ((r / 2) * QV + v) * 32, key_pair(e0, e1));
    }
}

/* One strip, one key block, maxima fixed: scores straight from registers to numerators. */
BF16_TARGET static void strip_block_fixed(const uint16_t *Qt, int hd2, const uint16_t *Kb, int64_t kn, const float *m,
                                          float *l, uint16_t *P) {
  __m512 mv[QV], lv[QV];
  for (int v = 0; v < QV; v++) mv[v] = _mm512_loadu_ps(m + 16 * v), lv[v] = _mm512_loadu_ps(l + 16 * v);
  for (int64_t j = 0; j < kn; j += TR) {
    __m512 acc[TR][QV];
    score_tile(Qt, hd2, Kb + j * hd2 * 2, acc);
    if (kn - j >= TR)
      numerators_tile(acc, TR, mv, lv, P + j * TQ);
    else
      numerators_tile(acc, (int)(kn - j), mv, lv, P + j * TQ);
  }
  for (int v = 0; v < QV; v++) _mm512_storeu_ps(l + 16 * v, lv[v]);
}

/* One strip, one key block, maxima moving: the scores go through S [keys][TQ] first; where a query's
 * block maximum passes its running maximum by more than MAX_SLACK (always in the first block, where
 * m = -inf), m moves to it (rounded up to an integer, so that the rescale 2^(m_old - m) is exact)
 * and the query's sum and output column are rescaled. */
BF16_TARGET static void strip_block_moving(const uint16_t *Qt, int hd2, const uint16_t *Kb, int64_t kn, int hd, float *m,
                                           float *l, float *S, uint16_t *P, float *Ot) {
  __m512 bmax[QV];
  for (int v = 0; v < QV; v++) bmax[v] = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < kn; j += TR) {
    __m512 acc[TR][QV];
    score_tile(Qt, hd2, Kb + j * hd2 * 2, acc);
    for (int r = 0; r < TR; r++)
      for (int v = 0; v < QV; v++) {
        _mm512_storeu_ps(S + (j + r) * TQ + 16 * v, acc[r][v]);
        if (j + r < kn) bmax[v] = _mm512_max_ps(bmax[v], acc[r][v]);
      }
  }
  __m512 mv[QV], lv[QV];
  for (int v = 0; v < QV; v++) {
    const __m512 old = _mm512_loadu_ps(m + 16 * v);
    const __mmask16 move = _mm512_cmp_ps_mask(bmax[v], _mm512_add_ps(old, _mm512_set1_ps(MAX_SLACK)), _CMP_GT_OQ);
    mv[v] = _mm512_mask_roundscale_ps(old, move, bmax[v], _MM_FROUND_TO_POS_INF | _MM_FROUND_NO_EXC);
    /* 2^(old - new): 0 where old = -inf (nothing summed yet), 1 where m stays */
    const __m512 corr = _mm512_maskz_scalef_ps(_mm512_cmp_ps_mask(old, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ),
                                               _mm512_set1_ps(1.0f), _mm512_sub_ps(old, mv[v]));
    _mm512_storeu_ps(m + 16 * v, mv[v]);
    lv[v] = _mm512_mul_ps(_mm512_loadu_ps(l + 16 * v), corr);
    if (move)
      for (int d = 0; d < hd; d++) _mm512_storeu_ps(Ot + d * TQ + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(Ot + d * TQ + 16 * v), corr));
  }
  for (int64_t j = 0; j < kn; j += TR) {
    __m512 acc[TR][QV];
    for (int r = 0; r < TR; r++)
      for (int v = 0; v < QV; v++) acc[r][v] = _mm512_loadu_ps(S + (j + r) * TQ + 16 * v);
    numerators_tile(acc, kn - j >= TR ? TR : (int)(kn - j), mv, lv, P + j * TQ);
  }
  for (int v = 0; v < QV; v++) _mm512_storeu_ps(l + 16 * v, lv[v]);
}

/* ---- P·V: Ot[d0, d0 + nd) += V[., d0 + .]ᵀ · P over `pairs` key pairs ---- */
BF16_INLINE void value_tile(int nd, const uint16_t *P, const uint16_t *V, int hd, int64_t pairs, float *Ot) {
  __m512 acc[TD][QV];
  for (int i = 0; i < nd; i++)
    for (int v = 0; v < QV; v++) acc[i][v] = _mm512_loadu_ps(Ot + i * TQ + 16 * v);
  for (int64_t jp = 0; jp < pairs; jp++) {
    __m512bh p[QV];
    for (int v = 0; v < QV; v++) p[v] = (__m512bh)_mm512_loadu_si512(P + (jp * QV + v) * 32);
    for (int i = 0; i < nd; i++) {
      const __m512bh vi = bcast_pair(V + (jp * hd + i) * 2);
      for (int v = 0; v < QV; v++) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], vi, p[v]);
    }
  }
  for (int i = 0; i < nd; i++)
    for (int v = 0; v < QV; v++) _mm512_storeu_ps(Ot + i * TQ + 16 * v, acc[i][v]);
}

BF16_TARGET static void strip_values(const uint16_t *P, const uint16_t *Vb, int hd, int64_t pairs, float *Ot) {
  int d = 0;
  for (; d + TD <= hd; d += TD) value_tile(TD, P, Vb + d * 2, hd, pairs, Ot + d * TQ);
  switch (hd - d) { /* the compiler unrolls each case for its constant */
  case 7: value_tile(7, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  case 6: value_tile(6, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  case 5: value_tile(5, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  case 4: value_tile(4, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  case 3: value_tile(3, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  case 2: value_tile(2, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  case 1: value_tile(1, P, Vb + d * 2, hd, pairs, Ot + d * TQ); break;
  default: break;
  }
}

/* ---- tasks: one head, qb query rows ----
 * Returns false when a sum or an output is not finite (numerators past 2^127 with the maxima of the
 * first block); the caller then runs the task again with `moving_max`. */
BF16_TARGET static bool attention_task(const att *a, bool moving_max, int64_t task, void *scratch) {
  const int64_t qb = a->qb, nqb = (a->nq + qb - 1) / qb;
  const int h = (int)(task / nqb), hd = a->hd, hd2 = a->hd2;
  const int64_t q0 = (task % nqb) * qb, qn = a->nq - q0 < qb ? a->nq - q0 : qb, strips = (qn + TQ - 1) / TQ;
  char *base = scratch;
  uint16_t *Qt = (uint16_t *)(void *)base;
  uint16_t *P = (uint16_t *)(void *)(base += align64(sizeof(uint16_t) * (size_t)(qb * hd2 * 2)));
  float *S = (float *)(void *)(base += align64(sizeof(uint16_t) * KB * TQ));
  float *Ot = (float *)(void *)(base += align64(sizeof(float) * S_FLOATS));
  float *m = (float *)(void *)(base += align64(sizeof(float) * (size_t)(qb * hd)));
  float *l = m + qb;

  /* Q of the task's rows, scaled and transposed into strips 16 rows and 16 pairs at a time (rows past
   * qn: zeros) */
  const int64_t rstride = (hd2 + 15) & ~15;
  uint32_t *rows = (uint32_t *)(void *)S; /* [16][rstride] pairs: S is free until the first key block */
  for (int64_t r0 = 0; r0 < strips * TQ; r0 += 16) {
    for (int i = 0; i < 16; i++)
      if (r0 + i < qn)
        row_pairs(a->q + (q0 + r0 + i) * a->ld + (int64_t)h * hd, hd, a->qscale, rows + i * rstride);
      else
        memset(rows + i * rstride, 0, sizeof(uint32_t) * (size_t)hd2);
    const int64_t v = (r0 % TQ) / 16;
    uint16_t *Qs = Qt + (r0 / TQ) * TQ * hd2 * 2;
    for (int p0 = 0; p0 < hd2; p0 += 16) {
      __m512i t[16];
      for (int i = 0; i < 16; i++) t[i] = _mm512_maskz_loadu_epi32(first_lanes(hd2 - p0), rows + i * rstride + p0);
      transpose16(t);
      for (int j = 0; j < 16 && p0 + j < hd2; j++) _mm512_storeu_si512(Qs + ((p0 + j) * QV + v) * 32, t[j]);
    }
  }
  /* the next task's rows of Q (the same thread's, most often) and this task's output rows: their
   * strided lines would otherwise arrive at memory latency, between the products */
  if (task + 1 < a->heads * nqb) {
    const int64_t nt = task + 1, nq0 = (nt % nqb) * qb, nqn = a->nq - nq0 < qb ? a->nq - nq0 : qb;
    for (int64_t r = 0; r < nqn; r++)
      for (int d = 0; d < hd; d += 16) _mm_prefetch((const char *)(a->q + (nq0 + r) * a->ld + (nt / nqb) * hd + d), _MM_HINT_T1);
  }
  for (int64_t r = 0; r < qn; r++)
    for (int d = 0; d < hd; d += 16) __builtin_prefetch(a->out + (q0 + r) * a->ld + (int64_t)h * hd + d, 1, 2);
  for (int64_t i = 0; i < strips * TQ; i++) m[i] = -INFINITY, l[i] = 0.0f;
  memset(Ot, 0, sizeof(float) * (size_t)(strips * TQ * hd));

  const uint16_t *Kh = a->kp + (int64_t)h * kp_head_elems(a), *Vh = a->vp + (int64_t)h * vp_head_elems(a);
  for (int64_t k0 = 0; k0 < a->nk; k0 += KB) {
    const int64_t kn = a->nk - k0 < KB ? a->nk - k0 : KB, pairs_in_block = (kn + TR - 1) / TR * TR / 2;
    const uint16_t *Kb = Kh + k0 * hd2 * 2, *Vb = Vh + k0 * hd;
    for (int64_t s = 0; s < strips; s++) {
      const uint16_t *Qs = Qt + s * TQ * hd2 * 2;
      float *ms = m + s * TQ, *ls = l + s * TQ, *Os = Ot + s * TQ * hd;
      if (moving_max || k0 == 0)
        strip_block_moving(Qs, hd2, Kb, kn, hd, ms, ls, S, P, Os);
      else
        strip_block_fixed(Qs, hd2, Kb, kn, ms, ls, P);
      strip_values(P, Vb, hd, pairs_in_block, Os);
    }
  }
  /* out = Ot / l, transposed back to rows 16 queries and 16 head dims at a time */
  bool finite = true;
  __mmask16 bad = 0;
  for (int64_t r = 0; r < qn; r++) finite &= l[r] <= FLT_MAX; /* false for inf and NaN */
  for (int64_t r0 = 0; r0 < qn; r0 += 16) {
    const float *Os = Ot + (r0 / TQ) * TQ * hd + r0 % TQ;
    for (int d0 = 0; d0 < hd; d0 += 16) {
      __m512i t[16];
      for (int i = 0; i < 16; i++) t[i] = d0 + i < hd ? _mm512_loadu_si512(Os + (d0 + i) * TQ) : _mm512_setzero_si512();
      transpose16(t);
      const __mmask16 lanes = first_lanes(hd - d0);
      for (int j = 0; j < 16 && r0 + j < qn; j++) {
        const float sum = l[r0 + j];
        const __m512 x = _mm512_mul_ps((__m512)t[j], _mm512_set1_ps(sum > 0 ? 1.0f / sum : 0.0f));
        bad |= _mm512_mask_fpclass_ps_mask(lanes, x, 0x99); /* QNaN, SNaN, +inf, -inf */
        _mm512_mask_storeu_ps(a->out + (q0 + r0 + j) * a->ld + (int64_t)h * hd + d0, lanes, x);
      }
    }
  }
  return moving_max || (finite && !bad);
}

static void attention_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  const att *a = ctx;
  void *scratch = (char *)a->scratch + (size_t)thread * a->scratch_per_thread;
  /* flush denormals to zero while the kernel runs (see exp2_minus), then put the thread's mode back */
  const unsigned int mxcsr = _mm_getcsr();
  _mm_setcsr(mxcsr | 0x8040u); /* FTZ | DAZ */
  for (int64_t t = begin; t < end; t++)
    if (!attention_task(a, false, t, scratch)) attention_task(a, true, t, scratch);
  _mm_setcsr(mxcsr);
}

bool mp_attention_avx512_bf16(mp_pool *pool, float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                              int heads, int hd) {
  if (nq <= 0 || heads <= 0 || hd <= 0) return true;
  if (hd > 512) return false;
  att a = {.q = q, .k = k, .v = v, .out = out, .nq = nq, .nk = nk, .ld = (int64_t)heads * hd, .heads = heads, .hd = hd};
  if (nk <= 0) { /* softmax over nothing: the f32 kernel's convention, zeros */
    memset(out, 0, sizeof(float) * (size_t)(nq * a.ld));
    return true;
  }
  a.nkp = (nk + TR - 1) / TR * TR;
  a.hd2 = (hd + 1) / 2;
  a.qscale = (float)(1.4426950408889634 / sqrt((double)hd)); /* log2(e) / sqrt(hd): scores in log2 units */
  a.qb = nq >= QB_LONG_FROM ? QB_LONG : QB;
  const size_t qb = (size_t)a.qb;
  const size_t kp_bytes = align64(sizeof(uint16_t) * (size_t)(heads * kp_head_elems(&a)));
  const size_t kv_bytes = kp_bytes + align64(sizeof(uint16_t) * (size_t)(heads * vp_head_elems(&a)));
  a.scratch_per_thread = align64(sizeof(uint16_t) * qb * (size_t)a.hd2 * 2) + align64(sizeof(uint16_t) * KB * TQ) +
                         align64(sizeof(float) * S_FLOATS) + align64(sizeof(float) * qb * (size_t)hd) + align64(sizeof(float) * 2 * qb);
  const size_t bytes = kv_bytes + a.scratch_per_thread * (size_t)mp_pool_size(pool);
  /* the backend's scratch when the pool has one: ~23 MB of packs at 1024x1024 would otherwise be
   * mapped, faulted in and unmapped on every call */
  struct mp_backend *backend = mp_pool_backend(pool);
  char *own = backend ? NULL : mp_alloc(bytes), *buf = backend ? mp_backend_scratch(backend, bytes) : own;
  if (!buf) return false;
  a.kp = (uint16_t *)(void *)buf;
  a.vp = (uint16_t *)(void *)(buf + kp_bytes);
  a.scratch = buf + kv_bytes;
  mp_pool_for(pool, a.nkp / TR, 4, pack_tasks, &a);
  mp_pool_for(pool, (int64_t)heads * ((nq + a.qb - 1) / a.qb), 1, attention_tasks, &a);
  mp_free(own);
  return true;
}
