#include "core/nhwc_bf16.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "core/cpu_kernels.h"
#include "core/matmul.h"
#include "core/profile.h"
#include "core/threads.h"
#include "core/vmath.h"

/* Whether the CPU converts to bf16 itself (vcvtneps2bf16): the backend's answer, found when it was
 * made. Asking cpuid on every call cost ~60 us in a virtual machine (each cpuid leaf exits to the
 * hypervisor, ~14 us here), about 1 % of a 512x512 step. */
static bool cpu_bf16(const mp_pool *pool) {
  const struct mp_backend *b = mp_pool_backend(pool);
  return b ? mp_backend_cpu_avx512_bf16(b) : mp_cpu_avx512_bf16();
}

/* Round to nearest even as vcvtneps2bf16 does, the instruction oneDNN's f32 -> bf16 reorder runs
 * on AVX512_BF16 CPUs: denormals become zero of their sign, NaN stays a quiet NaN. In C it takes as
 * long as the rest of a norm + SiLU pass, so CPUs that have the instruction use it (with 256-bit
 * vectors: 512-bit ones measured 20 % slower over the whole pass). */
static void bf16_row_c(uint16_t *dst, const float *src, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &src[i], 4);
    const uint32_t rounded = (u & 0x7f800000u) ? (u + 0x7fffu + ((u >> 16) & 1u)) >> 16 : (u >> 16) & 0x8000u;
    dst[i] = (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void bf16_row_avx512(uint16_t *dst, const float *src,
                                                                                          int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i *)(void *)(dst + i), (__m128i)_mm256_cvtneps_pbh(_mm256_loadu_ps(src + i)));
  if (i < n) {
    const __mmask8 m = (__mmask8)((1u << (n - i)) - 1);
    _mm_mask_storeu_epi16(dst + i, m, (__m128i)_mm256_cvtneps_pbh(_mm256_maskz_loadu_ps(m, src + i)));
  }
}

void mp_bf16_row(uint16_t *dst, const float *src, int64_t n, bool cpu_bf16) {
  if (cpu_bf16) bf16_row_avx512(dst, src, n);
  else bf16_row_c(dst, src, n);
}

/* ---- group norm ---- */
enum { GN_MAX_C = 4096 }; /* the UNets' widest concatenation is 2560 */

typedef struct {
  const float *x;
  const float *bias; /* [C] added to every pixel before the norm, or NULL */
  void *y;
  bool y_bf16, silu, cpu_bf16;
  int64_t hw, chunk; /* pixels per task: a chunk of [chunk, C] stays in L2 for the second look */
  int C, groups;
  double *stats; /* [chunks][groups]: mean, centred sum of squares */
  float *scale, *shift; /* [C]: the affine map per channel, once the statistics are known */
} gn_nhwc;

/* Per chunk and group: the mean and centred sum of squares over the chunk's pixels and the group's
 * channels. Per channel first (sums over pixels vectorise across the contiguous channels), then the
 * group's channels merge exactly: equal counts, so M2 = sum of M2_c + n sum of (mean_c - mean)^2. */
MP_VECTOR_CLONES static void gn_stats(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const gn_nhwc *a = ctx;
  const int C = a->C, cg = C / a->groups;
  float sum[GN_MAX_C], m2[GN_MAX_C];
  for (int64_t k = begin; k < end; k++) {
    const int64_t p0 = k * a->chunk, p1 = p0 + a->chunk < a->hw ? p0 + a->chunk : a->hw;
    const float n = (float)(p1 - p0);
    for (int c = 0; c < C; c++) sum[c] = 0, m2[c] = 0;
    for (int64_t p = p0; p < p1; p++) {
      const float *row = a->x + p * C;
      for (int c = 0; c < C; c++) sum[c] += row[c];
    }
    for (int c = 0; c < C; c++) sum[c] /= n; /* now the channel means */
    for (int64_t p = p0; p < p1; p++) {
      const float *row = a->x + p * C;
      for (int c = 0; c < C; c++) {
        const float d = row[c] - sum[c];
        m2[c] += d * d;
      }
    }
    if (a->bias) /* a constant per channel moves its mean and leaves its centred sum as it is */
      for (int c = 0; c < C; c++) sum[c] += a->bias[c];
    for (int g = 0; g < a->groups; g++) {
      double mean = 0, q = 0;
      for (int c = g * cg; c < (g + 1) * cg; c++) mean += sum[c];
      mean /= cg;
      for (int c = g * cg; c < (g + 1) * cg; c++) q += (double)m2[c] + (double)n * ((double)sum[c] - mean) * ((double)sum[c] - mean);
      a->stats[(k * a->groups + g) * 2] = mean, a->stats[(k * a->groups + g) * 2 + 1] = q;
    }
  }
}

MP_VECTOR_CLONES static void gn_apply(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const gn_nhwc *a = ctx;
  const int C = a->C;
  const int64_t p0 = begin * a->chunk, p1 = end * a->chunk < a->hw ? end * a->chunk : a->hw;
  const float *scale = a->scale, *shift = a->shift;
  float f[GN_MAX_C]; /* one bf16 row in f32 first: the loop above vectorises, the rounding below is one instruction */
  for (int64_t p = p0; p < p1; p++) {
    const float *row = a->x + p * C;
    if (a->y_bf16) {
      if (a->silu)
        mp_vaffine_silu_row(f, row, scale, shift, C);
      else
        for (int c = 0; c < C; c++) f[c] = row[c] * scale[c] + shift[c];
      mp_bf16_row((uint16_t *)a->y + p * C, f, C, a->cpu_bf16);
    } else {
      float *out = (float *)a->y + p * C;
      if (a->silu)
        mp_vaffine_silu_row(out, row, scale, shift, C);
      else
        for (int c = 0; c < C; c++) out[c] = row[c] * scale[c] + shift[c];
    }
  }
}

static mp_error *group_norm_nhwc(mp_pool *pool, mp_workspace *ws, void *y, bool y_bf16, const float *x, const float *bias, int64_t hw,
                                 int C, int groups, const float *gamma, const float *beta, float eps, bool silu) {
  if (groups < 1 || C % groups || C > GN_MAX_C)
    return mp_errorf("NHWC group norm: %d channels in %d groups (at most %d channels)", C, groups, GN_MAX_C);
  if (hw <= 0) return NULL;
  int64_t chunk = 32768 / C;
  if (chunk < 1) chunk = 1;
  const int64_t chunks = (hw + chunk - 1) / chunk;
  MP_TRY(mp_workspace_reserve(ws, sizeof(double) * (size_t)(chunks * groups * 2) + sizeof(float) * 2 * (size_t)C));
  gn_nhwc a = {x, bias, y, y_bf16, silu, cpu_bf16(pool), hw, chunk, C, groups, ws->p, NULL, NULL};
  a.scale = (float *)(void *)(a.stats + chunks * groups * 2), a.shift = a.scale + C;
  mp_profile_begin(mp_pool_profile(pool));
  mp_pool_for(pool, chunks, 1, gn_stats, &a);
  const int cg = C / groups;
  for (int g = 0; g < groups; g++) { /* the chunks merge in order (Chan et al.'s pairwise update) */
    double mean = 0, m2 = 0, seen = 0;
    for (int64_t k = 0; k < chunks; k++) {
      const double len = (double)((k + 1) * chunk < hw ? chunk : hw - k * chunk) * cg, total = seen + len;
      const double delta = a.stats[(k * groups + g) * 2] - mean;
      mean += delta * len / total;
      m2 += a.stats[(k * groups + g) * 2 + 1] + delta * delta * seen * len / total;
      seen = total;
    }
    const float mf = (float)mean, inv = (float)(1.0 / sqrt(m2 / seen + eps));
    for (int c = g * cg; c < (g + 1) * cg; c++) {
      a.scale[c] = inv * gamma[c], a.shift[c] = beta[c] - mf * a.scale[c];
      if (bias) a.shift[c] += bias[c] * a.scale[c]; /* (x + bias) * scale + shift */
    }
  }
  mp_pool_for(pool, chunks, 1, gn_apply, &a);
  mp_profile_end(mp_pool_profile(pool), MP_OP_NORM);
  return NULL;
}

mp_error *mp_group_norm_nhwc(mp_pool *pool, mp_workspace *ws, void *y, bool y_bf16, const float *x, int64_t hw, int C, int groups,
                             const float *gamma, const float *beta, float eps, bool silu) {
  return group_norm_nhwc(pool, ws, y, y_bf16, x, NULL, hw, C, groups, gamma, beta, eps, silu);
}

mp_error *mp_group_norm_nhwc_biased(mp_pool *pool, mp_workspace *ws, void *y, bool y_bf16, const float *x, const float *bias,
                                    int64_t hw, int C, int groups, const float *gamma, const float *beta, float eps, bool silu) {
  return group_norm_nhwc(pool, ws, y, y_bf16, x, bias, hw, C, groups, gamma, beta, eps, silu);
}

/* ---- upsample ---- */
typedef struct {
  uint16_t *y;
  const float *x;
  int h, w, C;
  bool cpu_bf16;
} up_nhwc;

static void upsample_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const up_nhwc *a = ctx;
  const int64_t C = a->C, out_row = 2 * (int64_t)a->w * C;
  for (int64_t r = begin; r < end; r++) {
    uint16_t *dst = a->y + 2 * r * out_row;
    for (int64_t i = 0; i < a->w; i++) {
      const float *src = a->x + (r * a->w + i) * C;
      uint16_t *d = dst + 2 * i * C;
      mp_bf16_row(d, src, C, a->cpu_bf16);
      memcpy(d + C, d, sizeof(uint16_t) * (size_t)C);
    }
    memcpy(dst + out_row, dst, sizeof(uint16_t) * (size_t)out_row);
  }
}

void mp_upsample_nearest2x_nhwc_bf16(mp_pool *pool, uint16_t *y, const float *x, int h, int w, int C) {
  up_nhwc a = {y, x, h, w, C, cpu_bf16(pool)};
  mp_pool_for(pool, h, 4, upsample_rows, &a);
}

/* ---- f32 -> bf16 over a whole buffer ---- */
typedef struct {
  uint16_t *dst;
  const float *src;
  int64_t n;
  bool cpu_bf16;
} to_bf16;

static void to_bf16_chunks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const to_bf16 *a = ctx;
  const int64_t i0 = begin << 14, i1 = end << 14 < a->n ? end << 14 : a->n;
  mp_bf16_row(a->dst + i0, a->src + i0, i1 - i0, a->cpu_bf16);
}

void mp_bf16_copy(mp_pool *pool, uint16_t *dst, const float *src, int64_t n) {
  to_bf16 a = {dst, src, n, cpu_bf16(pool)};
  mp_pool_for(pool, (n + (1 << 14) - 1) >> 14, 1, to_bf16_chunks, &a);
}
