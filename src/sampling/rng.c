#include "sampling/rng.h"

#include <math.h>
#include <string.h>

/* ---- mt19937 as torch seeds and draws it (identical to std::mt19937) ---- */
enum { MT_N = 624, MT_M = 397 };

void mp_torch_cpu_seed(mp_torch_cpu_rng *g, uint64_t seed) {
  g->state[0] = (uint32_t)seed;
  for (uint32_t j = 1; j < MT_N; j++) g->state[j] = 1812433253u * (g->state[j - 1] ^ (g->state[j - 1] >> 30)) + j;
  g->next = MT_N;
  g->has_cached_normal = false;
  g->cached_normal = 0;
}

static void mt_regenerate(mp_torch_cpu_rng *g) {
  uint32_t *s = g->state;
  for (int k = 0; k < MT_N; k++) {
    uint32_t y = (s[k] & 0x80000000u) | (s[(k + 1) % MT_N] & 0x7fffffffu);
    s[k] = s[(k + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
  }
  g->next = 0;
}

uint32_t mp_torch_cpu_u32(mp_torch_cpu_rng *g) {
  if (g->next >= MT_N) mt_regenerate(g);
  uint32_t y = g->state[g->next++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

/* uniform_real_distribution<float>(0,1): the low 24 bits of one draw, scaled. */
static float uniform_f32(mp_torch_cpu_rng *g) { return (float)(mp_torch_cpu_u32(g) & 0xffffffu) * (1.0f / 16777216.0f); }

/* uniform_real_distribution<double>(0,1): two draws make a 64-bit word (first draw high), low 53 bits. */
static double uniform_f64(mp_torch_cpu_rng *g) {
  uint64_t hi = mp_torch_cpu_u32(g), lo = mp_torch_cpu_u32(g);
  uint64_t v = (hi << 32) | lo;
  return (double)(v & ((UINT64_C(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
}

/* normal_distribution<double>: Box-Muller with the sine half cached on the generator. */
static double normal_f64(mp_torch_cpu_rng *g) {
  if (g->has_cached_normal) {
    g->has_cached_normal = false;
    return g->cached_normal;
  }
  double u1 = uniform_f64(g), u2 = uniform_f64(g);
  double r = sqrt(-2.0 * log(1.0 - u2));
  double theta = 2.0 * M_PI * u1;
  g->cached_normal = r * sin(theta);
  g->has_cached_normal = true;
  return r * cos(theta);
}

/* torch builds with AVX2 on x86 and then turns uniforms into normals with avx_mathfun's log and
 * sincos: Cephes single-precision polynomials, evaluated as separate float multiplies and adds.
 * torch's build lets GCC contract multiply-adds into FMAs (-ffp-contract=fast with -mfma); the
 * scalar versions below do the same float operations, fused where that build fuses them (found by
 * matching the golden values bit for bit; libm's logf/cosf differ by a few ulp, ~1e-6 on the normals). */
static uint32_t f2u(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
static float u2f(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

static float cephes_logf(float x) { /* x > 0 */
  if (x < u2f(0x00800000u)) x = u2f(0x00800000u);
  int32_t expo = (int32_t)(f2u(x) >> 23) - 0x7f;
  x = u2f((f2u(x) & ~0x7f800000u) | f2u(0.5f)); /* mantissa in [0.5, 1) */
  float e = (float)expo + 1.0f;
  bool small = x < 0.707106781186547524f;
  float tmp = small ? x : 0.0f;
  x = x - 1.0f;
  e = e - (small ? 1.0f : 0.0f);
  x = x + tmp;
  float z = x * x;
  float y = 7.0376836292E-2f;
  static const float p[8] = {-1.1514610310E-1f, 1.1676998740E-1f, -1.2420140846E-1f, 1.4249322787E-1f,
                             -1.6668057665E-1f, 2.0000714765E-1f, -2.4999993993E-1f, 3.3333331174E-1f};
  for (int i = 0; i < 8; i++) {
    y = fmaf(y, x, p[i]);
  }
  y = y * x;
  y = fmaf(y, z, e * -2.12194440e-4f);
  y = fmaf(-z, 0.5f, y);
  x = x + y;
  x = fmaf(e, 0.693359375f, x);
  return x;
}

static void cephes_sincosf(float x, float *s, float *c) { /* x >= 0 */
  float y = x * 1.27323954473516f; /* 4 / pi */
  int32_t j = (int32_t)y;          /* truncation, as cvttps */
  j = (j + 1) & ~1;
  y = (float)j;
  bool swap_sin = (j & 4) != 0;
  bool sin_poly_first = (j & 2) == 0;
  bool neg_cos = ((~(j - 2)) & 4) != 0;
  x = fmaf(y, -0.78515625f, x); /* x - y * pi/4 in three parts */
  x = fmaf(y, -2.4187564849853515625e-4f, x);
  x = fmaf(y, -3.77489497744594108e-8f, x);
  float z = x * x;
  float yc = 2.443315711809948E-005f;
  yc = fmaf(yc, z, -1.388731625493765E-003f);
  yc = fmaf(yc, z, 4.166664568298827E-002f);
  yc = yc * z;
  yc = fmaf(yc, z, -(z * 0.5f));
  yc = yc + 1.0f;
  float ys = -1.9515295891E-4f;
  ys = fmaf(ys, z, 8.3321608736E-3f);
  ys = fmaf(ys, z, -1.6666654611E-1f);
  ys = ys * z;
  ys = fmaf(ys, x, x);
  float sv = sin_poly_first ? ys : yc, cv = sin_poly_first ? yc : ys;
  *s = swap_sin ? -sv : sv;
  *c = neg_cos ? -cv : cv;
}

/* Box-Muller over 16 uniforms in place (torch's normal_fill_16_AVX2): u1 = 1 - d[j], u2 = d[j+8]. */
static void normal_fill_16(float *d) {
  const float two_pi = (float)(2.0 * M_PI);
  for (int j = 0; j < 8; j++) {
    float u1 = 1.0f - d[j];
    float u2 = d[j + 8];
    float radius = sqrtf(-2.0f * cephes_logf(u1));
    float theta = two_pi * u2;
    float st, ct;
    cephes_sincosf(theta, &st, &ct);
    d[j] = radius * ct;
    d[j + 8] = radius * st;
  }
}

void mp_torch_cpu_randn(mp_torch_cpu_rng *g, float *out, int64_t n) {
  if (n <= 0) return;
  if (n < 16) {
    for (int64_t i = 0; i < n; i++) out[i] = (float)normal_f64(g);
    return;
  }
  for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(g);
  for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i);
  if (n % 16 != 0) {
    float *tail = out + n - 16;
    for (int i = 0; i < 16; i++) tail[i] = uniform_f32(g);
    normal_fill_16(tail);
  }
}

void mp_torch_cpu_rand(mp_torch_cpu_rng *g, float *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(g);
}

/* ---- Philox4x32-10 ---- */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void mp_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; round++) {
    if (round > 0) { /* the key is bumped between rounds */
      k0 += PHILOX_W0;
      k1 += PHILOX_W1;
    }
    uint64_t p0 = (uint64_t)PHILOX_M0 * c0, p1 = (uint64_t)PHILOX_M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/* curand's constants: 2^-32 and 2^-32 * 2pi as float literals; the half-step offset keeps u > 0. */
#define CURAND_2POW32_INV 2.3283064e-10f
#define CURAND_2POW32_INV_2PI (2.3283064e-10f * 6.2831855f)

float mp_curand_box_muller_sin(uint32_t x, uint32_t y) {
  float u = (float)x * CURAND_2POW32_INV + CURAND_2POW32_INV / 2.0f;
  float v = (float)y * CURAND_2POW32_INV_2PI + CURAND_2POW32_INV_2PI / 2.0f;
  float s = sqrtf(-2.0f * logf(u));
  return s * sinf(v);
}

void mp_philox_seed(mp_philox_rng *g, uint64_t seed) {
  g->seed = seed;
  g->offset = 0;
}

void mp_philox_randn(mp_philox_rng *g, float *out, int64_t n) {
  uint32_t key[2] = {(uint32_t)g->seed, (uint32_t)(g->seed >> 32)};
  for (int64_t i = 0; i < n; i++) {
    uint32_t ctr[4] = {(uint32_t)g->offset, (uint32_t)(g->offset >> 32), (uint32_t)i, (uint32_t)((uint64_t)i >> 32)};
    uint32_t r[4];
    mp_philox4x32_10(ctr, key, r);
    out[i] = mp_curand_box_muller_sin(r[0], r[1]);
  }
  g->offset++;
}
