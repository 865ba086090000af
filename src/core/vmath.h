/* Branch-free float math the compiler can vectorise (glibc's expf/erff are scalar calls without
 * -ffast-math). Accuracy: exp within ~2 ulp on [-87, 88] (clamped outside), GELU within 1e-7
 * absolute of the erf form. Used by the hot loops of softmax, SiLU and GEGLU. */
#ifndef MP_CORE_VMATH_H
#define MP_CORE_VMATH_H

#include <immintrin.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* The 16-lane rows below are compiled for AVX-512 whatever the build's -march, and chosen at run time
 * (mp_vmath_avx512): a portable build (MPASS_NATIVE=OFF) took the scalar rows everywhere, and GEGLU
 * alone was 18 % of its 512x512 step. */
#define MP_VMATH_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma")))

/* For the loops written with generic vectors (`float __attribute__((vector_size(64)))`, e.g. the f32
 * Winograd transforms): in a build without AVX-512 at compile time they also get an AVX-512 clone,
 * which the dynamic linker picks at load time where the CPU has it (gcc's and clang's target_clones);
 * a native build compiles them once. */
#if defined(__AVX512F__)
#define MP_VECTOR_CLONES
#else
#define MP_VECTOR_CLONES __attribute__((target_clones("avx512f", "default")))
#endif

/* Whether the AVX-512 rows may run: known at compile time in a build for such a CPU, else asked of
 * the CPU through __builtin_cpu_supports, which reads what the runtime found once at start-up. */
static inline bool mp_vmath_avx512(void) {
#if defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__)
  return true;
#else
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
#endif
}

static inline float mp_vexpf(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  /* x = n ln2 + r, |r| <= ln2/2; the magic constant rounds x/ln2 to the nearest integer. */
  const float magic = 12582912.0f; /* 1.5 * 2^23 */
  float t = x * 1.44269504088896341f + magic;
  float n = t - magic;
  float r = x - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  uint32_t ni; /* unsigned: a NaN input makes any bits here, and a signed shift of them is undefined */
  memcpy(&ni, &t, 4);
  ni -= 0x4b400000u; /* bits of magic: the integer n */
  const uint32_t sb = (ni + 127u) << 23;
  float s;
  memcpy(&s, &sb, 4);
  return p * s;
}

/* x * Φ(x) (exact-erf GELU) via Abramowitz & Stegun 7.1.26 for erf, written so that the negative
 * tail is computed without cancellation. */
static inline float mp_vgeluf(float x) {
  float z = (x < 0 ? -x : x) * 0.70710678118654752f;
  float t = 1.0f / (1.0f + 0.3275911f * z);
  float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  float q = poly * mp_vexpf(-z * z); /* 1 - erf(z) */
  return 0.5f * x * (x < 0 ? q : 2.0f - q);
}

static inline float mp_vsiluf(float x) { return x / (1.0f + mp_vexpf(-x)); }

/* mp_vexpf on 16 lanes: the same range reduction and polynomial, with fused multiply-adds and the
 * 2^n scaling by vscalefps. (gcc vectorised the portable loops below with masked blends and, for
 * the max, scalar loads: the two softmax passes took a fifth of the attention's time.) */
MP_VMATH_AVX512 static inline __m512 mp_vexpf16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 magic = _mm512_set1_ps(12582912.0f);
  __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), magic), magic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

/* 1 / d: rcp14 and one Newton step (relative error ~2^-28), a fraction of vdivps's cost */
MP_VMATH_AVX512 static inline __m512 mp_vrcp16(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

/* SiLU v / (1 + e^-v) on 16 lanes: the divisions gcc emitted for the portable loop (ymm, masked,
 * from mp_vexpf's clamps) made SiLU cost as much as the rest of a group-norm pass (40 of 77 ms at
 * 128 channels x 1024x576; 9 ms this way). */
MP_VMATH_AVX512 static inline __m512 mp_vsilu16(__m512 v) {
  const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), mp_vexpf16(_mm512_sub_ps(_mm512_setzero_ps(), v)));
  return _mm512_mul_ps(v, mp_vrcp16(d));
}

/* mp_vgeluf on 16 lanes, the same formula */
MP_VMATH_AVX512 static inline __m512 mp_vgelu16(__m512 x) {
  const __m512 z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
  const __m512 t = mp_vrcp16(_mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f)));
  __m512 poly = _mm512_fmadd_ps(t, _mm512_set1_ps(1.061405429f), _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 q = _mm512_mul_ps(poly, mp_vexpf16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z))); /* 1 - erf(z) */
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 phi2 = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(2.0f), q), q); /* 2 Φ(x) */
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), phi2);
}

MP_VMATH_AVX512 static inline __mmask16 mp_vlanes(int64_t n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1); }

/* y[i] = silu(x[i] * scale[i] + shift[i]), i < n (a row of [pixels, C] activations) */
MP_VMATH_AVX512 static inline void mp_vaffine_silu_row_avx512(float *y, const float *x, const float *scale, const float *shift, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mp_vlanes(n - i);
    const __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, scale + i), _mm512_maskz_loadu_ps(m, shift + i));
    _mm512_mask_storeu_ps(y + i, m, mp_vsilu16(v));
  }
}

/* y[i] = silu(x[i] * scale + shift), i < n (a channel of [C, pixels] activations) */
MP_VMATH_AVX512 static inline void mp_vaffine_silu_avx512(float *y, const float *x, float scale, float shift, int64_t n) {
  const __m512 sc = _mm512_set1_ps(scale), sh = _mm512_set1_ps(shift);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = mp_vlanes(n - i);
    _mm512_mask_storeu_ps(y + i, m, mp_vsilu16(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), sc, sh)));
  }
}

/* y[j] = hid[j] * gelu(gate[j]), j < n (a row of GEGLU) */
MP_VMATH_AVX512 static inline void mp_vgeglu_row_avx512(float *y, const float *hid, const float *gate, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mp_vlanes(n - j);
    _mm512_mask_storeu_ps(y + j, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, hid + j), mp_vgelu16(_mm512_maskz_loadu_ps(m, gate + j))));
  }
}

MP_VMATH_AVX512 static inline float mp_vmax_row_avx512(const float *x, int64_t n, float init) {
  __m512 m0 = _mm512_set1_ps(init), m1 = m0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32)
    m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j)), m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + j + 16));
  if (j + 16 <= n) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + j)), j += 16;
  if (j < n) m1 = _mm512_mask_max_ps(m1, (__mmask16)((1u << (n - j)) - 1), m1, _mm512_maskz_loadu_ps((__mmask16)((1u << (n - j)) - 1), x + j));
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

MP_VMATH_AVX512 static inline float mp_vexp_sum_row_avx512(float *x, int64_t n, float sub) {
  const __m512 s = _mm512_set1_ps(sub);
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    __m512 e0 = mp_vexpf16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s));
    __m512 e1 = mp_vexpf16(_mm512_sub_ps(_mm512_loadu_ps(x + j + 16), s));
    _mm512_storeu_ps(x + j, e0), _mm512_storeu_ps(x + j + 16, e1);
    a0 = _mm512_add_ps(a0, e0), a1 = _mm512_add_ps(a1, e1);
  }
  for (; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
    __m512 e = mp_vexpf16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), s));
    _mm512_mask_storeu_ps(x + j, k, e);
    a0 = _mm512_add_ps(a0, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* ---- the same rows for any x86-64 CPU ---- */
static inline void mp_vgeglu_row_generic(float *y, const float *hid, const float *gate, int64_t n) {
  for (int64_t j = 0; j < n; j++) y[j] = hid[j] * mp_vgeluf(gate[j]);
}

static inline void mp_vaffine_silu_row_generic(float *y, const float *x, const float *scale, const float *shift, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = mp_vsiluf(x[i] * scale[i] + shift[i]);
}

static inline void mp_vaffine_silu_generic(float *y, const float *x, float scale, float shift, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = mp_vsiluf(x[i] * scale + shift);
}

/* max(init, x[0..n)): 16 independent lanes, so the compiler vectorises it without reassociating. */
static inline float mp_vmax_row_generic(const float *x, int64_t n, float init) {
  float m[16];
  for (int l = 0; l < 16; l++) m[l] = init;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; l++) m[l] = x[j + l] > m[l] ? x[j + l] : m[l];
  float r = init;
  for (int l = 0; l < 16; l++) r = m[l] > r ? m[l] : r;
  for (; j < n; j++) r = x[j] > r ? x[j] : r;
  return r;
}

/* x[i] = exp(x[i] - sub) for i < n; returns the sum (16 lanes, then combined). */
static inline float mp_vexp_sum_row_generic(float *x, int64_t n, float sub) {
  float acc[16] = {0};
  int64_t j = 0;
  for (; j + 16 <= n; j += 16)
    for (int l = 0; l < 16; l++) {
      float e = mp_vexpf(x[j + l] - sub);
      x[j + l] = e;
      acc[l] += e;
    }
  float sum = 0;
  for (int l = 0; l < 16; l++) sum += acc[l];
  for (; j < n; j++) sum += (x[j] = mp_vexpf(x[j] - sub));
  return sum;
}

/* ---- the rows, chosen at run time ---- */
/* y[j] = hid[j] * gelu(gate[j]), j < n (a row of GEGLU) */
static inline void mp_vgeglu_row(float *y, const float *hid, const float *gate, int64_t n) {
  if (mp_vmath_avx512()) mp_vgeglu_row_avx512(y, hid, gate, n);
  else mp_vgeglu_row_generic(y, hid, gate, n);
}

/* y[i] = silu(x[i] * scale[i] + shift[i]), i < n (a row of [pixels, C] activations) */
static inline void mp_vaffine_silu_row(float *y, const float *x, const float *scale, const float *shift, int64_t n) {
  if (mp_vmath_avx512()) mp_vaffine_silu_row_avx512(y, x, scale, shift, n);
  else mp_vaffine_silu_row_generic(y, x, scale, shift, n);
}

/* y[i] = silu(x[i] * scale + shift), i < n (a channel of [C, pixels] activations) */
static inline void mp_vaffine_silu(float *y, const float *x, float scale, float shift, int64_t n) {
  if (mp_vmath_avx512()) mp_vaffine_silu_avx512(y, x, scale, shift, n);
  else mp_vaffine_silu_generic(y, x, scale, shift, n);
}

/* max(init, x[0..n)) */
static inline float mp_vmax_row(const float *x, int64_t n, float init) {
  return mp_vmath_avx512() ? mp_vmax_row_avx512(x, n, init) : mp_vmax_row_generic(x, n, init);
}

/* x[i] = exp(x[i] - sub) for i < n; returns the sum */
static inline float mp_vexp_sum_row(float *x, int64_t n, float sub) {
  return mp_vmath_avx512() ? mp_vexp_sum_row_avx512(x, n, sub) : mp_vexp_sum_row_generic(x, n, sub);
}

#endif
