/* bf16 attention: the choice of kernel (see attention_bf16.h for the contract) and the AMX kernel.
 * The kernel for AVX-512 BF16 without AMX, with its vector lanes over queries, is in
 * attention_avx512_bf16.c.
 *
 * AMX layouts (all bf16, zero-padded), read as tiles by tdpbf16ps:
 *   Q  per task   [row][hd2 pairs][2]            rows of the task, pre-scaled by log2(e)/sqrt(hd): A tiles of 16 rows
 *   K  per head   [key/16][hd2 pairs][16 keys][2] B tiles as they stand ([16 pairs][16 keys][2] is the VNNI layout)
 *   V  per head   [key pairs][dpad][2]            B tiles of 16 dims with a row stride of dpad pairs
 *   P  per strip  [row][keys]                     softmax numerators of one key block: A tiles of 16 rows
 * hd2 = ceil(hd/2) pairs, so head dim 40 costs 20 pair-steps, 80 costs 40, 160 costs 80: nothing is
 * padded in the score product. dpad = hd rounded up to 16 lanes (40 -> 48, the only waste). Where
 * there is such a padding lane, V's column hd holds ones, so P·V also gives each row's sum of the
 * numerators (as rounded to bf16, the weights actually used) and the softmax adds nothing up.
 *
 * Scores are in log2 units (the scale folds in log2(e)), so the softmax needs exp2 only: a
 * range-reduced quadratic, relative error 1.7e-3, the size of the bf16 rounding of P (2^-9 to 2^-8).
 *
 * Each row's maximum m is taken from its first key block and then stays: numerators of later
 * blocks may exceed 1, which f32 sums and bf16 (same relative precision at any magnitude) take up
 * to 2^127; a task whose numerators overflow runs again with a maximum that moves per block (see
 * attention_task). That maximum moves only when a key block's maximum exceeds it by more than
 * MAX_SLACK (log2 units), so the accumulator rows are rescaled once or twice per row, not at nearly
 * every block. Keeping O out of the vector stores between the tile products matters (a tile load
 * right after a vector store to the same lines stalls until the stores drain); for the same reason
 * the strips are pipelined: the scores of strip s+1 and the softmax of strip s sit between writing
 * P and loading it as a tile. */
#include "core/attention_bf16.h"

#include <immintrin.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "core/attention_avx512_bf16.h"
#include "core/cpu_kernels.h"
#include "core/matmul.h"
#include "core/ops.h"
#include "core/tensor.h"

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define BF16_INLINE BF16_TARGET __attribute__((always_inline)) static inline
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16")))
/* gcc's tile intrinsics are asm statements without memory operands: keep the compiler from moving
 * plain loads and stores across them. */
#define TILE_FENCE() __asm__ volatile("" ::: "memory")

/* KB keys per block, so that at head dim 40 a key block and its value block (22 KB in bf16) and the
 * two score and two numerator buffers (24 KB) fit a 48 KB L1 together (256 keys: 6 % slower at 16k
 * tokens, the same at 4k), while the task's QB rows pass over them. */
enum { KB = 128, QB = 96 };
/* Past 8192 queries a task takes 3 x QB rows: K and V of a head (2.9 MB at 16384 keys and head dim 40)
 * no longer stay in a 2 MB L2, and each task reads them once (16384² x 8 x 40 on AMX: 266-298 ms with
 * 96 rows, 257-265 ms with 288); below, more tasks balance the threads better (1024² x 8 x 80: 2.45-2.64
 * ms with 96 rows, 2.54-2.76 with 192 or more). */
enum { QB_LONG = 3 * QB, QB_LONG_FROM = 8192 };
/* AMX: strips of 16 rows (a tile's height); keys padded to 32 so P·V runs on whole tiles. */
enum { AMX_MR = 16, STRIP_MAX = 16 };
/* how far (log2 units) a block's maximum may exceed the running one before the rows are rescaled */
#define MAX_SLACK 8.0f

mp_attention_kernel mp_attention_choose(bool bf16_backend, bool cpu_avx512_bf16, bool cpu_amx_bf16, bool causal) {
  if (!bf16_backend || causal) return MP_ATTENTION_F32;
  if (cpu_amx_bf16 && cpu_avx512_bf16) return MP_ATTENTION_AMX_BF16;
  return cpu_avx512_bf16 ? MP_ATTENTION_AVX512_BF16 : MP_ATTENTION_F32;
}

const char *mp_attention_kernel_name(mp_attention_kernel k) {
  return k == MP_ATTENTION_AMX_BF16 ? "amx_bf16" : k == MP_ATTENTION_AVX512_BF16 ? "avx512_bf16" : "f32";
}

mp_attention_kernel mp_attention_kernel_for(const mp_pool *pool, bool causal) {
  const struct mp_backend *b = mp_pool_backend(pool);
  bool bf16 = b && mp_backend_precision(b) == MP_PRECISION_BF16;
  if (!bf16 || causal) return MP_ATTENTION_F32;
  return mp_attention_choose(true, mp_backend_cpu_avx512_bf16(b), mp_backend_cpu_amx(b), false);
}

/* ---- packing ---- */
typedef struct {
  const float *q, *k, *v;
  float *out;
  int64_t nq, nk, ld, nk32; /* nk32: keys rounded up to 32 (the packed key count) */
  int heads, hd, hd2, dpad;
  int qb; /* query rows per task: QB, or QB_LONG for long sequences */
  bool ones_col; /* V's column hd is all ones (hd < dpad): P·V yields each row's sum in O[., hd] */
  float qscale;
  uint16_t *kp, *vp; /* packed K and V, all heads */
  void *scratch;
  size_t scratch_per_thread;
} bf16_att;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

static int64_t kp_head_elems(const bf16_att *a) { return a->nk32 * a->hd2 * 2; }
static int64_t vp_head_elems(const bf16_att *a) { return a->nk32 * a->dpad; }

BF16_INLINE __mmask16 first_lanes(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* One group of 16 keys of one head: K into [pair][16][2], V (8 key pairs) into [pair][dpad][2]. */
BF16_TARGET static void pack_kv_group(const bf16_att *a, int h, int64_t g) {
  uint16_t *kd = a->kp + (int64_t)h * kp_head_elems(a) + g * a->hd2 * 32;
  uint32_t *kd32 = (uint32_t *)(void *)kd;
  for (int i = 0; i < 16; i++) {
    int64_t key = g * 16 + i;
    if (key >= a->nk) {
      for (int p = 0; p < a->hd2; p++) kd32[p * 16 + i] = 0;
      continue;
    }
    const float *src = a->k + key * a->ld + (int64_t)h * a->hd;
    for (int d0 = 0; d0 < a->hd; d0 += 32) { /* 32 dims = 16 pairs per step */
      __m512 lo = _mm512_maskz_loadu_ps(first_lanes(a->hd - d0), src + d0);
      __m512 hi = d0 + 16 < a->hd ? _mm512_maskz_loadu_ps(first_lanes(a->hd - d0 - 16), src + d0 + 16) : _mm512_setzero_ps();
      uint32_t pairs[16];
      _mm512_storeu_si512(pairs, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      for (int p = 0; p < 16 && d0 / 2 + p < a->hd2; p++) kd32[(d0 / 2 + p) * 16 + i] = pairs[p];
    }
  }
  uint16_t *vd = a->vp + (int64_t)h * vp_head_elems(a);
  for (int64_t jp = g * 8; jp < g * 8 + 8; jp++) {
    int64_t k0 = 2 * jp, k1 = k0 + 1;
    const float *s0 = a->v + k0 * a->ld + (int64_t)h * a->hd, *s1 = a->v + k1 * a->ld + (int64_t)h * a->hd;
    for (int d = 0; d < a->dpad; d += 16) {
      __mmask16 m = first_lanes(a->hd - d < 0 ? 0 : a->hd - d);
      __m512 x0 = k0 < a->nk ? _mm512_maskz_loadu_ps(m, s0 + d) : _mm512_setzero_ps();
      __m512 x1 = k1 < a->nk ? _mm512_maskz_loadu_ps(m, s1 + d) : _mm512_setzero_ps();
      if (a->ones_col && a->hd >= d && a->hd < d + 16) {
        const __mmask16 one = (__mmask16)(1u << (a->hd - d));
        if (k0 < a->nk) x0 = _mm512_mask_mov_ps(x0, one, _mm512_set1_ps(1.0f));
        if (k1 < a->nk) x1 = _mm512_mask_mov_ps(x1, one, _mm512_set1_ps(1.0f));
      }
      __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x0));
      __m512i hi = _mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x1)), 16);
      _mm512_storeu_si512(vd + jp * a->dpad * 2 + d * 2, _mm512_or_si512(lo, hi)); /* [d][key pair] */
    }
  }
}

static void pack_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const bf16_att *a = ctx;
  const int64_t groups = a->nk32 / 16;
  for (int64_t t = begin; t < end; t++) pack_kv_group(a, (int)(t / groups), t % groups);
}

/* ---- AMX tiles: 16-row strips ----
 * tmm0-3: accumulators (16 x 16 f32); tmm4: A (16 rows x 16 pairs); tmm5: B (16 pairs x 16 lanes);
 * tmm6/tmm7: A and B for the last hd2 % 16 pairs of the score product (hd 40: 4 pairs). */
typedef struct {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} amx_config;

AMX_TARGET static void amx_configure(int hd2) {
  amx_config c;
  memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 6; t++) c.colsb[t] = 64, c.rows[t] = 16;
  const int tail = hd2 % 16;
  if (tail) c.colsb[6] = (uint16_t)(tail * 4), c.rows[6] = 16, c.colsb[7] = 64, c.rows[7] = (uint8_t)tail;
  /* gcc's ldtilecfg asm names only the first 8 bytes of its operand: without this the compiler may
   * drop the stores to the rest of `c` (it did in the portable build: SIGILL at the first tile op) */
  __asm__ volatile("" : : "r"(&c) : "memory");
  _tile_loadconfig(&c);
}

AMX_TARGET static void amx_release(void) { _tile_release(); }

/* One pair of key groups (g, g+1; g+1 only when `two`) into accumulators T0, T1, then the stores of
 * the previous pair (groups g-2, g-1) from PREV0, PREV1. gcc names tiles by literal numbers in its
 * tile intrinsics, hence a macro. */
#define AMX_SCORE_PAIR(T0, T1, PREV0, PREV1)                   \
  do {                                                         \
    _tile_zero(T0);                                            \
    if (two) _tile_zero(T1);                                   \
    for (int64_t c = 0; c < full; c++) {                       \
      if (full > 1) _tile_loadd(4, Q + c * 32, ldq);           \
      _tile_loadd(5, Kg + c * 16 * 32, 64);                    \
      _tile_dpbf16ps(T0, 4, 5);                                \
      if (two) {                                               \
        _tile_loadd(5, Kg + gstride + c * 16 * 32, 64);        \
        _tile_dpbf16ps(T1, 4, 5);                              \
      }                                                        \
    }                                                          \
    if (tail) {                                                \
      _tile_loadd(7, Kg + full * 16 * 32, 64);                 \
      _tile_dpbf16ps(T0, 6, 7);                                \
      if (two) {                                               \
        _tile_loadd(7, Kg + gstride + full * 16 * 32, 64);     \
        _tile_dpbf16ps(T1, 6, 7);                              \
      }                                                        \
    }                                                          \
    if (g > 0) {                                               \
      _tile_stored(PREV0, S + (g - 2) * 16, KB * 4);           \
      _tile_stored(PREV1, S + (g - 1) * 16, KB * 4);           \
    }                                                          \
  } while (0)

/* S [16][16 groups) = Q strip · K groups. Q's tiles stay loaded where they are one chunk of 16 pairs and
 * a tail (head dims up to 62); longer heads reload theirs per chunk and pair. The accumulators are
 * two pairs taking turns, tmm0/1 and tmm2/3: a tile store waits for the products that feed its tile
 * and the next product into that tile waits for the store, so a pair is stored only once the other
 * pair's products are queued (head dim 40, one core, L1-resident: 0.75 vs 1.0 ns per 16 scores with
 * four accumulators stored together; 16k tokens: 8 % less time for the whole kernel). */
AMX_TARGET static void amx_scores(const uint16_t *Q, int hd2, const uint16_t *K, int64_t groups, float *S) {
  const int64_t ldq = (int64_t)hd2 * 4, gstride = (int64_t)hd2 * 32, full = hd2 / 16, tail = hd2 % 16;
  TILE_FENCE();
  if (full == 1) _tile_loadd(4, Q, ldq);
  if (tail) _tile_loadd(6, Q + full * 32, ldq);
  for (int64_t g = 0; g < groups; g += 2) {
    const bool two = groups - g > 1;
    const uint16_t *Kg = K + g * gstride;
    if ((g / 2) & 1)
      AMX_SCORE_PAIR(2, 3, 0, 1);
    else
      AMX_SCORE_PAIR(0, 1, 2, 3);
  }
  if (groups > 0) { /* the last pair */
    const int64_t g = (groups - 1) / 2 * 2;
    const bool two = groups - g > 1;
    if ((g / 2) & 1) {
      _tile_stored(2, S + g * 16, KB * 4);
      if (two) _tile_stored(3, S + (g + 1) * 16, KB * 4);
    } else {
      _tile_stored(0, S + g * 16, KB * 4);
      if (two) _tile_stored(1, S + (g + 1) * 16, KB * 4);
    }
  }
  TILE_FENCE();
}
#undef AMX_SCORE_PAIR

/* O [16][dpad] += P [16][32 chunks keys] · V, up to four 16-lane column tiles per pass over the keys. */
AMX_TARGET static void amx_values(const uint16_t *P, const uint16_t *V, int dpad, int64_t chunks, float *O) {
  const int64_t ldv = (int64_t)dpad * 4, ldo = (int64_t)dpad * 4;
  const int nt = dpad / 16;
  TILE_FENCE();
  for (int t0 = 0; t0 < nt; t0 += 4) {
    const int n = nt - t0 < 4 ? nt - t0 : 4;
    float *Ot = O + t0 * 16;
    _tile_loadd(0, Ot, ldo);
    if (n > 1) _tile_loadd(1, Ot + 16, ldo);
    if (n > 2) _tile_loadd(2, Ot + 32, ldo);
    if (n > 3) _tile_loadd(3, Ot + 48, ldo);
    for (int64_t c = 0; c < chunks; c++) {
      _tile_loadd(4, P + c * 32, KB * 2);
      const uint16_t *Vc = V + c * 16 * dpad * 2 + t0 * 32; /* 16 key pairs down, 16 dims (x2) across */
      _tile_loadd(5, Vc, ldv);
      _tile_dpbf16ps(0, 4, 5);
      if (n > 1) {
        _tile_loadd(5, Vc + 32, ldv);
        _tile_dpbf16ps(1, 4, 5);
      }
      if (n > 2) {
        _tile_loadd(5, Vc + 64, ldv);
        _tile_dpbf16ps(2, 4, 5);
      }
      if (n > 3) {
        _tile_loadd(5, Vc + 96, ldv);
        _tile_dpbf16ps(3, 4, 5);
      }
    }
    _tile_stored(0, Ot, ldo);
    if (n > 1) _tile_stored(1, Ot + 16, ldo);
    if (n > 2) _tile_stored(2, Ot + 32, ldo);
    if (n > 3) _tile_stored(3, Ot + 48, ldo);
  }
  TILE_FENCE();
}

/* The softmax numerators 2^(s - m) of one row, 16 scores at a time. vreduceps gives the fraction
 * r = s - floor(s) in [0, 1) and vscalefps multiplies by 2^floor(s) itself; the quadratic for 2^r
 * is near-minimax in relative error (1.73e-3): P is rounded to bf16 next, which costs as much, and
 * a cubic's extra FMA took 6 % of the kernel's time at 16k tokens for errors 10-15 % smaller in the
 * attention tests and none visible in the sd15-size UNet's. m is kept an integer, so 2^-m is exact
 * and folds into the quadratic's coefficients: no subtraction per score (where |m| > 100, never
 * seen in a UNet, 2^-m would leave the normal range and the row subtracts m instead). Scores more
 * than 126 below m give denormals, which would cost microcode assists: the kernel's threads run
 * with denormals flushed to zero (attention_tasks), which no sum with a term >= 1/2 in it (the
 * first block's maximum) can see (2.5 % faster at 16k tokens than clamping each score). */
typedef struct {
  __m512 c0, c1, c2, m;
  bool subtract; /* |m| > 100 */
} exp2_row;

/* A row's coefficients for its maximum m: c[0..2] the quadratic's (times 2^-m), c[3] 1 where the
 * row subtracts m instead. Kept per row while m stays, so that a row's softmax per key block only
 * broadcasts them from memory (load ports) instead of building them (~12 vector ALU operations
 * beside the ~40 of a 128-key row). */
static void row_coefs(float m, float c[4]) {
  const bool subtract = !(fabsf(m) <= 100.0f);
  float scale = 1.0f; /* 2^-m from its exponent bits (ldexpf is a libm call: 4M rows per call at 1024²) */
  if (!subtract) {
    const uint32_t bits = (uint32_t)(127 - (int)m) << 23;
    memcpy(&scale, &bits, sizeof scale);
  }
  c[0] = 1.001724424f * scale, c[1] = 0.657641351f * scale, c[2] = 0.337181223f * scale, c[3] = subtract ? 1.0f : 0.0f;
}

BF16_INLINE exp2_row exp2_row_for(const float c[4], const float *m) {
  return (exp2_row){_mm512_set1_ps(c[0]), _mm512_set1_ps(c[1]), _mm512_set1_ps(c[2]), _mm512_set1_ps(*m), c[3] != 0.0f};
}

BF16_INLINE __m512 exp2_minus_m(const exp2_row *e, bool subtract, __m512 s) {
  if (subtract) s = _mm512_sub_ps(s, e->m);
  const __m512 r = _mm512_reduce_ps(s, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(e->c2, r, e->c1);
  p = _mm512_fmadd_ps(p, r, e->c0);
  return _mm512_scalef_ps(p, s);
}

/* P row [0, kpad) = 2^(s - m) as bf16 (zero past kn); returns their sum when `sum_them` (else 0). */
BF16_INLINE float numerators_row(const exp2_row *e, bool subtract, bool sum_them, const float *s, int64_t kn, int64_t kpad,
                                 uint16_t *pr) {
  const int64_t full = kn & ~(int64_t)31;
  __m512 sum = _mm512_setzero_ps(), sum1 = sum;
  int64_t j = 0;
  for (; j < full; j += 32) {
    __m512 e0 = exp2_minus_m(e, subtract, _mm512_loadu_ps(s + j));
    __m512 e1 = exp2_minus_m(e, subtract, _mm512_loadu_ps(s + j + 16));
    if (sum_them) sum = _mm512_add_ps(sum, e0), sum1 = _mm512_add_ps(sum1, e1);
    _mm512_storeu_si512(pr + j, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
  }
  for (; j < kpad; j += 16) {
    __mmask16 valid = first_lanes(kn - j > 0 ? kn - j : 0);
    __m512 v = _mm512_maskz_mov_ps(valid, exp2_minus_m(e, subtract, _mm512_maskz_loadu_ps(valid, s + j)));
    if (sum_them) sum = _mm512_add_ps(sum, v);
    _mm256_mask_storeu_epi16(pr + j, first_lanes(kpad - j), (__m256i)_mm512_cvtneps_pbh(v));
  }
  return sum_them ? _mm512_reduce_add_ps(_mm512_add_ps(sum, sum1)) : 0.0f;
}

/* Moves one row's running maximum *m (an integer) to the key block's maximum when that exceeds it by
 * more than MAX_SLACK (always when *m = -inf: the first block), rescaling the row's sum *l and
 * accumulator row o to the new maximum. */
BF16_INLINE void update_max(const float *s, int64_t kn, float *m, float *l, float *o, int dpad) {
  const int64_t full = kn & ~(int64_t)31; /* 32-key steps without masks, two chains each */
  __m512 m0 = _mm512_set1_ps(-INFINITY), m1 = m0;
  int64_t j = 0;
  for (; j < full; j += 32) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(s + j)), m1 = _mm512_max_ps(m1, _mm512_loadu_ps(s + j + 16));
  for (; j < kn; j += 16) m1 = _mm512_mask_max_ps(m1, first_lanes(kn - j), m1, _mm512_maskz_loadu_ps(first_lanes(kn - j), s + j));
  const __m512 bmax = _mm512_max_ps(m0, m1);
  /* the horizontal maximum only when some lane passes the slack */
  if (!_mm512_cmp_ps_mask(bmax, _mm512_set1_ps(*m + MAX_SLACK), _CMP_GT_OQ)) return;
  const float mnew = ceilf(_mm512_reduce_max_ps(bmax));
  const float corr = *m == -INFINITY ? 0.0f : exp2f(*m - mnew);
  if (l) *l *= corr;
  *m = mnew;
  const __m512 c = _mm512_set1_ps(corr);
  for (int d = 0; d < dpad; d += 16) _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), c));
}

/* Online softmax for one strip of `rows` rows and one key block: S [rows][KB] (kn valid keys) ->
 * P [rows][KB] bf16 numerators (zero up to kpad), sums l updated (l is NULL where P·V sums the rows
 * itself: bf16_att.ones_col). With `moving_max` the running maxima m follow the blocks (update_max);
 * without, each row's m is its first block's maximum and stays (see attention_task). coef: the rows'
 * row_coefs, 4 floats each, kept in step with m. */
BF16_TARGET static void softmax_strip(bool moving_max, int rows, const float *S, int64_t kn, int64_t kpad, uint16_t *P, float *m,
                                      float *l, float *coef, float *O, int dpad) {
  for (int r = 0; r < rows; r++) {
    const float *s = S + r * KB;
    if (moving_max || m[r] == -INFINITY) {
      update_max(s, kn, m + r, l ? l + r : NULL, O + (int64_t)r * dpad, dpad);
      row_coefs(m[r], coef + 4 * r);
    }
    const exp2_row e = exp2_row_for(coef + 4 * r, m + r);
    uint16_t *pr = P + r * KB;
    if (!l) /* the sums come out of P·V (bf16_att.ones_col) */
      (void)(e.subtract ? numerators_row(&e, true, false, s, kn, kpad, pr) : numerators_row(&e, false, false, s, kn, kpad, pr));
    else
      l[r] += e.subtract ? numerators_row(&e, true, true, s, kn, kpad, pr) : numerators_row(&e, false, true, s, kn, kpad, pr);
  }
}

/* One key block on AMX for all strips of a task, pipelined so that no tile load follows the vector
 * stores it reads: scores(s+1) are issued before softmax(s), and P·V of strip s runs one softmax
 * later, from the other of two P buffers. P·V(s-1) comes before softmax(s), not after: its O tiles
 * are stored only once its last products are done, and what waits for that is then the softmax's
 * vector work, not the next strip's score products (3 % at 16k tokens). */
AMX_TARGET static void amx_key_block(const bf16_att *a, bool moving_max, const uint16_t *Qp, int64_t rows, const uint16_t *Kb,
                                     const uint16_t *Vb, int64_t kn, float *S[2], uint16_t *P[2], float *O, float *m, float *l,
                                     float *coef) {
  const int hd2 = a->hd2, dpad = a->dpad;
  const int64_t groups32 = (kn + 31) / 32 * 2; /* whole 32-key tiles: P·V needs pairs of 16 */
  const int64_t strips = rows / AMX_MR;
  amx_scores(Qp, hd2, Kb, groups32, S[0]);
  for (int64_t s = 0; s < strips; s++) {
    if (s + 1 < strips) amx_scores(Qp + (s + 1) * AMX_MR * hd2 * 2, hd2, Kb, groups32, S[(s + 1) & 1]);
    if (s > 0) amx_values(P[(s - 1) & 1], Vb, dpad, groups32 / 2, O + (s - 1) * AMX_MR * dpad);
    softmax_strip(moving_max, AMX_MR, S[s & 1], kn, groups32 * 16, P[s & 1], m + s * AMX_MR, l ? l + s * AMX_MR : NULL,
                  coef + s * AMX_MR * 4, O + s * AMX_MR * dpad, dpad);
  }
  amx_values(P[(strips - 1) & 1], Vb, dpad, groups32 / 2, O + (strips - 1) * AMX_MR * dpad);
}

/* ---- tasks: one head, qb query rows ----
 * Without `moving_max` each row's maximum m comes from its first key block only and never moves:
 * no maximum per block, no rescaling. Later scores above m give numerators above 1, exact in f32
 * and in bf16 up to 2^127 (the same relative precision at any magnitude); a row whose scores pass
 * m + 127 overflows to inf, which reaches its sum and its output, so the task checks that every
 * sum and output is finite and returns false when one is not; the caller then runs the task again
 * with the moving maximum. (Scores that far apart, 88 in natural units, do not occur in a UNet;
 * the maximum per block cost 14 % of the softmax at 16k tokens.) Returns true with `moving_max`. */
BF16_TARGET static bool attention_task(const bf16_att *a, bool moving_max, int64_t task, void *scratch) {
  const int64_t qb = a->qb, nqb = (a->nq + qb - 1) / qb;
  const int h = (int)(task / nqb);
  const int64_t q0 = (task % nqb) * qb, qn = a->nq - q0 < qb ? a->nq - q0 : qb, rows = (qn + AMX_MR - 1) / AMX_MR * AMX_MR;
  const int hd2 = a->hd2, dpad = a->dpad;
  char *base = scratch;
  uint16_t *Qp = (uint16_t *)(void *)base;
  float *S[2], *O, *m, *l, *coef;
  uint16_t *P[2];
  S[0] = (float *)(void *)(base += align64(sizeof(uint16_t) * qb * hd2 * 2));
  S[1] = (float *)(void *)(base += align64(sizeof(float) * STRIP_MAX * KB));
  P[0] = (uint16_t *)(void *)(base += align64(sizeof(float) * STRIP_MAX * KB));
  P[1] = (uint16_t *)(void *)(base += align64(sizeof(uint16_t) * STRIP_MAX * KB));
  O = (float *)(void *)(base += align64(sizeof(uint16_t) * STRIP_MAX * KB));
  m = (float *)(void *)(base += align64(sizeof(float) * qb * dpad));
  l = a->ones_col ? NULL : m + qb;
  coef = m + 2 * qb;

  memset(Qp, 0, sizeof(uint16_t) * (size_t)(rows * hd2 * 2));
  const __m512 qs = _mm512_set1_ps(a->qscale);
  for (int64_t r = 0; r < qn; r++) {
    const float *src = a->q + (q0 + r) * a->ld + (int64_t)h * a->hd;
    for (int d = 0; d < a->hd; d += 16) {
      __mmask16 mk = first_lanes(a->hd - d);
      __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, src + d), qs);
      _mm256_mask_storeu_epi16(Qp + r * hd2 * 2 + d, mk, (__m256i)_mm512_cvtneps_pbh(x));
    }
  }
  for (int64_t r = 0; r < rows; r++) m[r] = -INFINITY;
  if (l) memset(l, 0, sizeof(float) * (size_t)rows);
  memset(O, 0, sizeof(float) * (size_t)(rows * dpad));

  const uint16_t *Kh = a->kp + (int64_t)h * kp_head_elems(a), *Vh = a->vp + (int64_t)h * vp_head_elems(a);
  for (int64_t k0 = 0; k0 < a->nk; k0 += KB) {
    const int64_t kn = a->nk - k0 < KB ? a->nk - k0 : KB;
    amx_key_block(a, moving_max, Qp, rows, Kh + (k0 / 16) * hd2 * 32, Vh + (k0 / 2) * dpad * 2, kn, S, P, O, m, l, coef);
  }
  bool finite = true;
  for (int64_t r = 0; r < qn; r++) {
    float *dst = a->out + (q0 + r) * a->ld + (int64_t)h * a->hd;
    const float sum = l ? l[r] : O[r * dpad + a->hd];
    finite &= sum <= FLT_MAX; /* false for inf and NaN */
    const __m512 inv = _mm512_set1_ps(sum > 0 ? 1.0f / sum : 0.0f);
    for (int d = 0; d < a->hd; d += 16) {
      const __mmask16 lanes = first_lanes(a->hd - d);
      const __m512 x = _mm512_mul_ps(_mm512_loadu_ps(O + r * dpad + d), inv);
      finite &= !_mm512_mask_fpclass_ps_mask(lanes, x, 0x99); /* QNaN, SNaN, +inf, -inf */
      _mm512_mask_storeu_ps(dst + d, lanes, x);
    }
  }
  return moving_max || finite;
}

static void attention_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  const bf16_att *a = ctx;
  void *scratch = (char *)a->scratch + (size_t)thread * a->scratch_per_thread;
  /* flush denormals to zero while the kernel runs (see exp2_minus_m), then put the thread's mode back */
  const unsigned int mxcsr = _mm_getcsr();
  _mm_setcsr(mxcsr | 0x8040u); /* FTZ | DAZ */
  amx_configure(a->hd2);
  for (int64_t t = begin; t < end; t++)
    if (!attention_task(a, false, t, scratch)) attention_task(a, true, t, scratch);
  amx_release();
  _mm_setcsr(mxcsr);
}

/* false when the buffers cannot be allocated (the caller runs the f32 kernel) */
static bool attention_amx_bf16(mp_pool *pool, float *out, const float *q, const float *k, const float *v, int64_t nq,
                               int64_t nk, int heads, int hd) {
  if (nq <= 0 || heads <= 0 || hd <= 0) return true;
  bf16_att a = {.q = q, .k = k, .v = v, .out = out, .nq = nq, .nk = nk, .ld = (int64_t)heads * hd, .heads = heads, .hd = hd};
  a.nk32 = (nk + 31) / 32 * 32;
  a.hd2 = (hd + 1) / 2;
  a.dpad = (hd + 15) / 16 * 16;
  a.ones_col = hd < a.dpad;
  a.qscale = (float)(1.4426950408889634 / sqrt((double)hd)); /* log2(e) / sqrt(hd): scores in log2 units */
  if (nk <= 0) { /* softmax over nothing: the f32 kernel's convention, zeros */
    memset(out, 0, sizeof(float) * (size_t)(nq * a.ld));
    return true;
  }
  size_t kv_bytes = align64(sizeof(uint16_t) * (size_t)(heads * kp_head_elems(&a))) +
                    align64(sizeof(uint16_t) * (size_t)(heads * vp_head_elems(&a)));
  a.qb = nq >= QB_LONG_FROM ? QB_LONG : QB;
  const size_t qb = (size_t)a.qb;
  a.scratch_per_thread = align64(sizeof(uint16_t) * qb * (size_t)a.hd2 * 2) + 2 * align64(sizeof(float) * STRIP_MAX * KB) +
                         2 * align64(sizeof(uint16_t) * STRIP_MAX * KB) + align64(sizeof(float) * qb * (size_t)a.dpad) +
                         align64(sizeof(float) * 6 * qb); /* m, l, coef */
  const size_t bytes = kv_bytes + a.scratch_per_thread * (size_t)mp_pool_size(pool);
  /* the backend's scratch when the pool has one: ~23 MB of packs at 1024x1024 would otherwise be
   * mapped, faulted in and unmapped on every call */
  struct mp_backend *backend = mp_pool_backend(pool);
  char *own = backend ? NULL : mp_alloc(bytes), *buf = backend ? mp_backend_scratch(backend, bytes) : own;
  if (!buf) return false;
  a.kp = (uint16_t *)(void *)buf;
  a.vp = (uint16_t *)(void *)(buf + align64(sizeof(uint16_t) * (size_t)(heads * kp_head_elems(&a))));
  a.scratch = buf + kv_bytes;
  mp_pool_for(pool, (int64_t)heads * (a.nk32 / 16), 8, pack_tasks, &a);
  mp_pool_for(pool, (int64_t)heads * ((nq + a.qb - 1) / a.qb), 1, attention_tasks, &a);
  mp_free(own);
  return true;
}

/* Runs `kernel`, which the CPU is known to have; a bf16 kernel that cannot allocate falls back to f32. */
static void run_kernel(mp_attention_kernel kernel, mp_pool *pool, float *out, const float *q, const float *k, const float *v,
                       int64_t nq, int64_t nk, int heads, int head_dim, bool causal) {
  if (!causal && kernel == MP_ATTENTION_AMX_BF16 && attention_amx_bf16(pool, out, q, k, v, nq, nk, heads, head_dim)) return;
  if (!causal && kernel == MP_ATTENTION_AVX512_BF16 && mp_attention_avx512_bf16(pool, out, q, k, v, nq, nk, heads, head_dim))
    return;
  mp_attention(pool, out, q, k, v, nq, nk, heads, head_dim, causal);
}

void mp_attention_with(mp_attention_kernel kernel, mp_pool *pool, float *out, const float *q, const float *k, const float *v,
                       int64_t nq, int64_t nk, int heads, int head_dim, bool causal) {
  const bool avx512_bf16 = mp_cpu_avx512_bf16(), amx = avx512_bf16 && mp_cpu_amx_usable();
  if (kernel == MP_ATTENTION_AMX_BF16 && !amx) kernel = MP_ATTENTION_AVX512_BF16;
  if (kernel == MP_ATTENTION_AVX512_BF16 && !avx512_bf16) kernel = MP_ATTENTION_F32;
  run_kernel(kernel, pool, out, q, k, v, nq, nk, heads, head_dim, causal);
}

void mp_attention_auto(mp_pool *pool, float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                       int heads, int head_dim, bool causal) {
  /* the kernel the backend found the CPU to have: no cpuid per call */
  run_kernel(mp_attention_kernel_for(pool, causal), pool, out, q, k, v, nq, nk, heads, head_dim, causal);
}
