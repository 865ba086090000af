/* bf16 attention (core/attention_bf16.c) against the double-precision reference, and its dispatch.
 *
 * Bound: the kernel rounds q·scale, k, v and the softmax numerators p to bf16 (relative error
 * 2^-9 each, round to nearest) and accumulates in f32. An output is a p-weighted mean of v, so the
 * rounding of v and p moves it by about 2^-9 of max|v|; the rounding of q and k moves a score s by
 * about |s| 2^-8, and p by that fraction. With q, k in [-1, 1] the scores stay within a few units:
 * measured worst case 8e-4 (v in [-1, 1]); the bound is 2^-7 (7.8e-3), ten times that, and still far
 * below what a wrong key block or a lost rescale does (tenths). For q, k in [-3, 3] the scores reach
 * ±15 and their rounding alone moves p by a few per cent (torch's bf16 attention does the same):
 * measured 8.8e-3, bound 2^-5. The mean error must stay below 2^-9 (2^-7 for the peaked case). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/attention_bf16.h"
#include "core/cpu_kernels.h"
#include "core/matmul.h"
#include "core/ops.h"
#include "testutil.h"

static void fill(float *x, int64_t n, unsigned seed, float amp) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    x[i] = ((float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f) * 2.0f * amp;
  }
}

typedef struct {
  double max_abs, mean_abs;
} diff;

static diff compare(const float *a, const float *b, int64_t n) {
  diff d = {0, 0};
  for (int64_t i = 0; i < n; i++) {
    double e = fabs((double)a[i] - b[i]);
    d.max_abs = fmax(d.max_abs, e);
    d.mean_abs += e;
  }
  d.mean_abs /= (double)(n > 0 ? n : 1);
  return d;
}

/* Runs `kernel` and the reference on one shape; v in [-1, 1], q and k in [-qk_amp, qk_amp]. A nonzero
 * `shift` sets each head's first query dimension to it and the first key dimension to 1 (to 0 for
 * keys below `rise_from`): every score of a row from key rise_from on moves by the same amount
 * (shift / sqrt(hd)), which the softmax must not see when rise_from is 0. */
static diff run_rising(mp_pool *pool, mp_attention_kernel kernel, int64_t nq, int64_t nk, int heads, int hd, float qk_amp,
                       float shift, int64_t rise_from) {
  int64_t ld = (int64_t)heads * hd;
  float *q = malloc(sizeof(float) * nq * ld), *k = malloc(sizeof(float) * nk * ld), *v = malloc(sizeof(float) * nk * ld);
  float *o = malloc(sizeof(float) * nq * ld), *r = malloc(sizeof(float) * nq * ld);
  assert_non_null(q), assert_non_null(k), assert_non_null(v), assert_non_null(o), assert_non_null(r);
  fill(q, nq * ld, 11, qk_amp), fill(k, nk * ld, 12, qk_amp), fill(v, nk * ld, 13, 1.0f);
  if (shift != 0)
    for (int h = 0; h < heads; h++) {
      for (int64_t i = 0; i < nq; i++) q[i * ld + h * hd] = shift;
      for (int64_t i = 0; i < nk; i++) k[i * ld + h * hd] = i < rise_from ? 0.0f : 1.0f;
    }
  for (int64_t i = 0; i < nq * ld; i++) o[i] = NAN; /* every output must be written */
  mp_attention_with(kernel, pool, o, q, k, v, nq, nk, heads, hd, false);
  mp_ref_attention(r, q, k, v, nq, nk, heads, hd, false);
  diff d = compare(o, r, nq * ld);
  free(q), free(k), free(v), free(o), free(r);
  return d;
}

static diff run_case(mp_pool *pool, mp_attention_kernel kernel, int64_t nq, int64_t nk, int heads, int hd, float qk_amp) {
  return run_rising(pool, kernel, nq, nk, heads, hd, qk_amp, 0.0f, 0);
}

static void check_rising(mp_pool *pool, mp_attention_kernel kernel, int64_t nq, int64_t nk, int heads, int hd, float qk_amp,
                         float shift, int64_t rise_from) {
  const double max_bound = ldexp(1.0, qk_amp > 1 ? -5 : -7), mean_bound = ldexp(1.0, qk_amp > 1 ? -7 : -9);
  diff d = run_rising(pool, kernel, nq, nk, heads, hd, qk_amp, shift, rise_from);
  print_message("%s attention nq=%lld nk=%lld heads=%d hd=%d amp=%g shift=%g from key %lld: max_abs %.3g mean_abs %.3g\n",
                mp_attention_kernel_name(kernel), (long long)nq, (long long)nk, heads, hd, (double)qk_amp, (double)shift,
                (long long)rise_from, d.max_abs, d.mean_abs);
  if (!(d.max_abs <= max_bound && d.mean_abs <= mean_bound))
    fail_msg("%s nq=%lld nk=%lld heads=%d hd=%d: max_abs %g (bound %g), mean_abs %g (bound %g)", mp_attention_kernel_name(kernel), (long long)nq, (long long)nk,
             heads, hd, d.max_abs, max_bound, d.mean_abs, mean_bound);
}

static void check_shifted(mp_pool *pool, mp_attention_kernel kernel, int64_t nq, int64_t nk, int heads, int hd, float qk_amp,
                          float shift) {
  check_rising(pool, kernel, nq, nk, heads, hd, qk_amp, shift, 0);
}

static void check_bf16(mp_pool *pool, mp_attention_kernel kernel, int64_t nq, int64_t nk, int heads, int hd, float qk_amp) {
  check_shifted(pool, kernel, nq, nk, heads, hd, qk_amp, 0.0f);
}

/* Every shape through one kernel: head dims 40/64/80/160 (SD 1.5 and SDXL) and odd ones, 77 keys
 * (cross-attention), key and query counts off the block sizes of both kernels (AMX: 16-row strips,
 * 32-key tiles, 128-key blocks; AVX-512: 32-query strips, 10-key tiles, 120-key blocks, head dims
 * in tiles of 8), 4097 x 4097, and past 8192 queries (tasks of more rows). */
static void check_kernel(mp_attention_kernel kernel) {
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  check_bf16(pool, kernel, 300, 77, 2, 40, 1.0f);   /* cross-attention: 77 keys = 2 x 32 + 13 */
  check_bf16(pool, kernel, 97, 77, 2, 64, 1.0f);    /* SDXL head dim; one query row past a task block */
  check_bf16(pool, kernel, 130, 515, 3, 80, 1.0f);  /* three key blocks, the last of 3 keys (odd: a half pair) */
  check_bf16(pool, kernel, 61, 300, 2, 160, 1.0f);  /* head dim 160: 10 lanes of 16 */
  check_bf16(pool, kernel, 40, 33, 2, 8, 1.0f);     /* head dim under one vector */
  check_bf16(pool, kernel, 25, 40, 1, 23, 1.0f);    /* odd head dim: a zero-padded last pair */
  check_bf16(pool, kernel, 17, 50, 1, 72, 1.0f);    /* 36 pairs: two full tiles and a 4-pair tail */
  check_bf16(pool, kernel, 33, 121, 2, 12, 1.0f);   /* one key past a block of 120; head dim 8 + 4 */
  check_bf16(pool, kernel, 65, 31, 1, 5, 1.0f);     /* odd head dim under 8: one short P·V tile */
  check_bf16(pool, kernel, 70, 90, 1, 512, 1.0f);   /* the VAE's mid attention: one head of 512 */
  check_bf16(pool, kernel, 200, 600, 2, 40, 3.0f);  /* peaked softmax: the running max changes across blocks */
  check_bf16(NULL, kernel, 13, 29, 1, 40, 1.0f);    /* no pool: runs on the calling thread */
  check_bf16(pool, kernel, 4097, 4097, 1, 40, 1.0f); /* SD 1.5 level 0 self-attention size, plus one */
  check_bf16(pool, kernel, 8197, 300, 2, 40, 1.0f);  /* long: 288-row tasks, the last of 133 rows */
  check_bf16(pool, kernel, 8192, 77, 1, 64, 1.0f);   /* the first long count, no ones column */
  /* rows whose scores share a large offset (log2 units: shift x 0.228 at hd 40): the running max is
   * ~46 (2^-m folded into the exp's coefficients), ~114 and ~-114 (past +-100: m subtracted instead) */
  check_shifted(pool, kernel, 70, 300, 2, 40, 1.0f, 200.0f);
  check_shifted(pool, kernel, 70, 300, 2, 40, 1.0f, 500.0f);
  check_shifted(pool, kernel, 70, 300, 2, 40, 1.0f, -500.0f);
  /* scores rising after the first key block (which sets the maximum of the fast path): by ~46 log2
   * units (numerators up to 2^46, kept), by ~137 (they overflow: the task runs again with the
   * maximum moving per block), and falling by ~137 (numerators flush to zero, as they should) */
  check_rising(pool, kernel, 70, 600, 2, 40, 1.0f, 200.0f, 128);
  check_rising(pool, kernel, 70, 600, 2, 40, 1.0f, 600.0f, 128);
  check_rising(pool, kernel, 70, 600, 2, 40, 1.0f, 600.0f, 300);
  check_rising(pool, kernel, 70, 600, 2, 64, 1.0f, 900.0f, 200); /* no ones column at hd 64: the sums l */
  check_rising(pool, kernel, 70, 600, 2, 40, 1.0f, -600.0f, 128);
  mp_pool_destroy(pool);
}

static void test_avx512_bf16_matches_reference(void **state) {
  (void)state;
  if (!mp_cpu_avx512_bf16()) {
    /* the fallback is what runs here: it must be the f32 kernel, to f32 accuracy */
    diff d = run_case(NULL, MP_ATTENTION_AVX512_BF16, 300, 77, 2, 40, 1.0f);
    assert_true(d.max_abs < 1e-5);
    print_message("no AVX512_BF16 on this CPU: checked the f32 fallback only\n");
    return;
  }
  check_kernel(MP_ATTENTION_AVX512_BF16);
}

static void test_amx_bf16_matches_reference(void **state) {
  (void)state;
  if (!(mp_cpu_avx512_bf16() && mp_cpu_amx_usable())) {
    /* steps down to the AVX-512 kernel (or f32): still within the bf16 bound */
    diff d = run_case(NULL, MP_ATTENTION_AMX_BF16, 300, 77, 2, 40, 1.0f);
    assert_true(d.max_abs < ldexp(1.0, -7));
    print_message("no AMX on this CPU: checked its fallback only\n");
    return;
  }
  check_kernel(MP_ATTENTION_AMX_BF16);
}

static void test_choice(void **state) {
  (void)state;
  for (int b = 0; b < 2; b++)
    for (int c = 0; c < 2; c++)
      for (int amx = 0; amx < 2; amx++)
        for (int causal = 0; causal < 2; causal++) {
          mp_attention_kernel want = !b || causal || !c ? MP_ATTENTION_F32 : amx ? MP_ATTENTION_AMX_BF16 : MP_ATTENTION_AVX512_BF16;
          assert_int_equal(mp_attention_choose(b, c, amx, causal), want);
        }
  assert_string_equal(mp_attention_kernel_name(MP_ATTENTION_AMX_BF16), "amx_bf16");
  assert_string_equal(mp_attention_kernel_name(MP_ATTENTION_AVX512_BF16), "avx512_bf16");
  assert_string_equal(mp_attention_kernel_name(MP_ATTENTION_F32), "f32");
  /* every CPU with AVX512_BF16 also shows up in the backend's own bf16 detection, AMX as amx_bf16 */
  if (mp_cpu_avx512_bf16()) assert_true(*mp_cpu_bf16_support() != '\0');
  if ((mp_cpu_avx512_bf16() && mp_cpu_amx_usable())) assert_string_equal(mp_cpu_bf16_support(), "amx_bf16");
}

/* The kernel follows the pool's backend: none or f32 -> f32, bf16 -> AMX or AVX512_BF16 where the
 * CPU has them, causal -> f32. And the two kernels really are different code: the bf16 one is not bit-identical
 * to f32, the f32 one is (to 1e-5) the reference. */
static void test_dispatch_follows_backend(void **state) {
  (void)state;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  assert_int_equal(mp_attention_kernel_for(pool, false), MP_ATTENTION_F32);
  assert_int_equal(mp_attention_kernel_for(NULL, false), MP_ATTENTION_F32);

  mp_backend *f32, *bf16;
  assert_ok(mp_backend_create(MP_PRECISION_F32, 2, &f32));
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &bf16));
  mp_pool_set_backend(pool, f32);
  assert_int_equal(mp_attention_kernel_for(pool, false), MP_ATTENTION_F32);
  mp_pool_set_backend(pool, bf16);
  const bool has = mp_cpu_avx512_bf16();
  assert_int_equal(mp_attention_kernel_for(pool, false), !has ? MP_ATTENTION_F32
                                                         : (mp_cpu_avx512_bf16() && mp_cpu_amx_usable()) ? MP_ATTENTION_AMX_BF16
                                                                                 : MP_ATTENTION_AVX512_BF16);
  assert_int_equal(mp_attention_kernel_for(pool, true), MP_ATTENTION_F32);

  enum { NQ = 50, NK = 45, H = 2, HD = 40 };
  const int64_t n = (int64_t)NQ * H * HD, nkv = (int64_t)NK * H * HD;
  float *q = malloc(sizeof(float) * n), *k = malloc(sizeof(float) * nkv), *v = malloc(sizeof(float) * nkv);
  float *auto_out = malloc(sizeof(float) * n), *f32_out = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
  assert_non_null(q), assert_non_null(k), assert_non_null(v);
  assert_non_null(auto_out), assert_non_null(f32_out), assert_non_null(ref);
  fill(q, n, 21, 1.0f), fill(k, nkv, 22, 1.0f), fill(v, nkv, 23, 1.0f);
  mp_attention_auto(pool, auto_out, q, k, v, NQ, NK, H, HD, false);
  mp_attention_with(MP_ATTENTION_F32, pool, f32_out, q, k, v, NQ, NK, H, HD, false);
  mp_ref_attention(ref, q, k, v, NQ, NK, H, HD, false);
  assert_true(compare(f32_out, ref, n).max_abs < 1e-5);
  diff d = compare(auto_out, f32_out, n);
  if (has)
    assert_true(d.max_abs > 1e-6 && d.max_abs < ldexp(1.0, -7)); /* the bf16 kernel ran */
  else
    assert_true(d.max_abs == 0); /* the f32 kernel ran */
  /* causal under a bf16 backend: the f32 kernel, exactly */
  mp_attention_auto(pool, auto_out, q, k, v, NQ, NK, H, HD, true);
  mp_attention(pool, f32_out, q, k, v, NQ, NK, H, HD, true);
  assert_true(compare(auto_out, f32_out, n).max_abs == 0);

  free(q), free(k), free(v), free(auto_out), free(f32_out), free(ref);
  mp_pool_set_backend(pool, NULL);
  mp_backend_destroy(f32), mp_backend_destroy(bf16);
  mp_pool_destroy(pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_choice),
      cmocka_unit_test(test_dispatch_follows_backend),
      cmocka_unit_test(test_avx512_bf16_matches_reference),
      cmocka_unit_test(test_amx_bf16_matches_reference),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
