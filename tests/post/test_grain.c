/* Film grain (SPEC.md §4.5): statistics of each layer, the size rule for the half-resolution layer,
 * determinism per (seed, image index), and how it is applied to pixels. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "post/grain.h"
#include "testutil.h"

static void stats(const float *x, size_t n, double *mean, double *sd) {
  double s = 0, s2 = 0;
  for (size_t i = 0; i < n; i++) s += x[i];
  *mean = s / n;
  for (size_t i = 0; i < n; i++) s2 += (x[i] - *mean) * (x[i] - *mean);
  *sd = sqrt(s2 / n);
}

static void test_generator_is_documented_xoshiro(void **state) {
  (void)state;
  /* xoshiro256** from a known state (the reference generator's published first output for s = 1,2,3,4
   * is 11520 = rotl(2*5, 7)*9). */
  mp_grain_rng r = {.s = {1, 2, 3, 4}};
  assert_int_equal(mp_grain_rng_next(&r), 11520);
  assert_int_equal(mp_grain_rng_next(&r), 0);
  /* Standard normals: mean 0, sd 1. */
  mp_grain_rng_seed(&r, 33504, 0);
  double s = 0, s2 = 0;
  for (int i = 0; i < 200000; i++) {
    double z = mp_grain_rng_gauss(&r);
    s += z, s2 += z * z;
  }
  assert_float_equal(s / 200000, 0.0, 0.01);
  assert_float_equal(sqrt(s2 / 200000), 1.0, 0.01);
}

static void test_small_image_full_res_only(void **state) {
  (void)state;
  int w = 512, h = 400, half; /* half height 200 <= 256: no half-resolution layer */
  float *n = malloc((size_t)w * h * sizeof(float));
  assert_ok(mp_grain_noise(w, h, 33504, 0, n, &half));
  assert_false(half);
  double mean, sd;
  stats(n, (size_t)w * h, &mean, &sd);
  assert_float_equal(mean, 0.0, 0.0002);
  assert_float_equal(sd, 0.010, 0.0002);
  /* Neighbouring pixels are uncorrelated at full resolution. */
  double c = 0;
  for (int i = 0; i + 1 < w * h; i++) c += n[i] * n[i + 1];
  assert_float_equal(c / (w * h) / (sd * sd), 0.0, 0.02);
  free(n);
}

static void test_large_image_adds_half_res(void **state) {
  (void)state;
  int w = 1026, h = 1030, half; /* half dims 513 x 515 > 256 */
  size_t N = (size_t)w * h;
  float *n = malloc(N * sizeof(float)), *full = malloc(N * sizeof(float));
  assert_ok(mp_grain_noise(w, h, 7, 3, n, &half));
  assert_true(half);
  double mean, sd;
  stats(n, N, &mean, &sd);
  assert_float_equal(mean, 0.0, 0.0005);
  /* σ_full² + σ_half² · (0.75² + 0.25²)² for a 2× bilinear upsample (≈ 0.0160; borders differ slightly). */
  double want = sqrt(0.010 * 0.010 + 0.020 * 0.020 * 0.390625);
  assert_float_equal(sd, want, 0.0004);
  /* The half-resolution layer is the difference from the full-resolution one alone: recompute the first
   * layer with the same generator and check the remainder's spread and smoothness. */
  mp_grain_rng r;
  mp_grain_rng_seed(&r, 7, 3);
  for (size_t i = 0; i < N; i++) full[i] = (float)(0.010 * mp_grain_rng_gauss(&r));
  for (size_t i = 0; i < N; i++) full[i] = n[i] - full[i];
  stats(full, N, &mean, &sd);
  assert_float_equal(sd, 0.0125, 0.0004);
  double c = 0; /* strongly correlated with the right neighbour, unlike white noise */
  for (size_t i = 0; i + 1 < N; i++) c += full[i] * full[i + 1];
  assert_true(c / N / (sd * sd) > 0.5);
  free(n), free(full);
}

static void test_half_rule_needs_both_dims(void **state) {
  (void)state;
  int half;
  float *n = malloc(2000 * 514 * sizeof(float));
  assert_ok(mp_grain_noise(2000, 512, 1, 0, n, &half)); /* 1000 x 256: 256 is not > 256 */
  assert_false(half);
  assert_ok(mp_grain_noise(2000, 514, 1, 0, n, &half)); /* 1000 x 257 */
  assert_true(half);
  free(n);
}

static void test_deterministic_per_seed_and_index(void **state) {
  (void)state;
  size_t N = 300 * 200;
  float *a = malloc(N * 4), *b = malloc(N * 4), *c = malloc(N * 4), *d = malloc(N * 4);
  assert_ok(mp_grain_noise(300, 200, 42, 0, a, NULL));
  assert_ok(mp_grain_noise(300, 200, 42, 0, b, NULL));
  assert_ok(mp_grain_noise(300, 200, 42, 1, c, NULL));
  assert_ok(mp_grain_noise(300, 200, 43, 0, d, NULL));
  assert_memory_equal(a, b, N * 4);
  assert_memory_not_equal(a, c, N * 4);
  assert_memory_not_equal(a, d, N * 4);
  free(a), free(b), free(c), free(d);
}

static void test_apply_same_noise_on_rgb(void **state) {
  (void)state;
  mp_image img;
  int W = 400, H = 300;
  assert_ok(mp_image_alloc(&img, W, H, 3));
  for (int i = 0; i < W * H; i++) img.pixels[3 * i] = 128, img.pixels[3 * i + 1] = 60, img.pixels[3 * i + 2] = 0;
  float *n = malloc((size_t)W * H * 4);
  assert_ok(mp_grain_noise(W, H, 9, 2, n, NULL));
  assert_ok(mp_grain_apply(&img, 9, 2));
  double s = 0, s2 = 0;
  for (int i = 0; i < W * H; i++) {
    int d = img.pixels[3 * i] - 128;
    s += d, s2 += d * d;
    /* The same noise moves R and G by the same amount; B at 0 clips the negative half. */
    assert_int_equal(img.pixels[3 * i + 1] - 60, d);
    int want = (int)lrintf(n[i] * 255.0f);
    assert_int_equal(img.pixels[3 * i + 2], want < 0 ? 0 : want);
  }
  assert_float_equal(s / (W * H), 0.0, 0.05);
  /* σ 2.55 levels plus rounding (1/12 level²). */
  assert_float_equal(sqrt(s2 / (W * H)), sqrt(2.55 * 2.55 + 1.0 / 12), 0.05);
  free(n);
  mp_image_free(&img);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_generator_is_documented_xoshiro), cmocka_unit_test(test_small_image_full_res_only),
      cmocka_unit_test(test_large_image_adds_half_res),       cmocka_unit_test(test_half_rule_needs_both_dims),
      cmocka_unit_test(test_deterministic_per_seed_and_index), cmocka_unit_test(test_apply_same_noise_on_rgb),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
