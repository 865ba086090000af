/* Noise generators: torch's CPU randn/rand against the golden values, Philox4x32-10 against the
 * Random123 known answers, the CUDA randn emulation against published torch output, and the
 * Brownian, tape and batch sources' contracts. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/weights.h"
#include "sampling/noise.h"
#include "sampling/rng.h"
#include "testutil.h"

static mp_weights *open_rng_golden(void) {
  char *path = test_shared_path("golden/tiny/rng.safetensors");
  mp_weights *w = NULL;
  assert_ok(mp_weights_open(path, &w));
  free(path);
  return w;
}

/* Every rng.randn.* / rng.rand.* tensor: exact below 16 values, |d| <= 5e-7 otherwise. */
static void test_torch_cpu_matches_golden(void **state) {
  (void)state;
  mp_weights *w = open_rng_golden();
  int checked = 0;
  for (size_t i = 0; i < mp_weights_count(w); i++) {
    const mp_weight *g = mp_weights_at(w, i);
    unsigned seed;
    char kind[8];
    if (sscanf(g->name, "rng.%7[a-z].seed%u.", kind, &seed) != 2) continue;
    int64_t n = mp_tensor_numel(&g->t);
    float *got = malloc((size_t)n * sizeof *got);
    mp_torch_cpu_rng rng;
    mp_torch_cpu_seed(&rng, seed);
    if (strcmp(kind, "randn") == 0) mp_torch_cpu_randn(&rng, got, n);
    else mp_torch_cpu_rand(&rng, got, n);
    const float *ref = g->t.data;
    double worst = 0;
    for (int64_t k = 0; k < n; k++) worst = fmax(worst, fabs((double)got[k] - ref[k]));
    if (n < 16 && worst != 0) fail_msg("%s: not exact (max |d| %g)", g->name, worst);
    if (worst > 5e-7) fail_msg("%s: max |d| %g > 5e-7", g->name, worst);
    free(got);
    checked++;
  }
  assert_true(checked >= 10);
  mp_weights_close(w);
}

/* The stream continues across calls: two randn(8) calls use the cached sine half. */
static void test_torch_cpu_stream(void **state) {
  (void)state;
  mp_torch_cpu_rng a, b;
  mp_torch_cpu_seed(&a, 42);
  mp_torch_cpu_seed(&b, 42);
  float x[3], y[1];
  mp_torch_cpu_randn(&a, x, 3);
  mp_torch_cpu_randn(&b, y, 1);
  assert_true(x[0] == y[0]);
  mp_torch_cpu_randn(&b, y, 1);
  assert_true(x[1] == y[0]); /* the cached half, not a fresh pair */
}

/* Random123 tests/kat_vectors, the three philox4x32 10 lines (counter, key -> output). */
static void test_philox_known_answers(void **state) {
  (void)state;
  static const uint32_t kat[3][10] = {
      {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
      {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
      {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1},
  };
  for (int i = 0; i < 3; i++) {
    uint32_t out[4];
    mp_philox4x32_10(kat[i], kat[i] + 4, out);
    for (int k = 0; k < 4; k++) assert_int_equal(out[k], kat[i][6 + k]);
  }
}

/* torch.manual_seed(0); torch.randn(8, 8, device="cuda") as printed (4 decimals) in public
 * PyTorch output; only 4 decimals are known, so this checks the algorithm, not the last bits. */
static void test_philox_cuda_randn_seed0(void **state) {
  (void)state;
  static const float printed[16] = {-0.9247f, -0.4253f, -2.6438f, 0.1452f, -0.1209f, -0.5797f, -0.6229f, -0.3284f,
                                    -1.0745f, -0.3631f, -1.6711f, 2.2655f,  0.3117f,  -0.1842f, 1.2866f,  1.1820f};
  mp_philox_rng g;
  mp_philox_seed(&g, 0);
  float x[64];
  mp_philox_randn(&g, x, 64);
  for (int i = 0; i < 16; i++)
    if (fabsf(x[i] - printed[i]) > 0.5e-4f + 1e-6f) fail_msg("cuda randn seed 0 [%d]: %.6f, torch printed %.4f", i, x[i], printed[i]);
  /* a second call moves to the next Philox offset: different values */
  float y[64];
  mp_philox_randn(&g, y, 64);
  assert_true(y[0] != x[0]);
}

static void test_brownian_contract(void **state) {
  (void)state;
  mp_noise *a = NULL, *b = NULL;
  assert_ok(mp_noise_brownian(7, 0.03, 14.6, &a));
  assert_ok(mp_noise_brownian(7, 0.03, 14.6, &b));
  enum { N = 4096 };
  static float x[N], y[N], z[N], w[N];
  /* deterministic, independent of call history */
  assert_ok(mp_noise_interval(a, 2.0, 1.0, x, N));
  assert_ok(mp_noise_interval(b, 14.0, 3.0, y, N));
  assert_ok(mp_noise_interval(b, 2.0, 1.0, y, N));
  assert_memory_equal(x, y, sizeof x);
  /* unit variance and zero mean per interval */
  double m = 0, v = 0;
  for (int i = 0; i < N; i++) m += x[i], v += (double)x[i] * x[i];
  m /= N;
  v = v / N - m * m;
  assert_true(fabs(m) < 0.1 && fabs(v - 1) < 0.1);
  /* additivity: increments over [1,2] and [2,3] sum to the increment over [1,3] */
  assert_ok(mp_noise_interval(a, 3.0, 2.0, z, N));
  assert_ok(mp_noise_interval(a, 3.0, 1.0, w, N));
  for (int i = 0; i < N; i++) {
    double sum = x[i] * sqrt(1.0) + z[i] * sqrt(1.0), whole = w[i] * sqrt(2.0);
    assert_true(fabs(sum - whole) < 1e-4);
  }
  /* disjoint intervals are uncorrelated */
  double c = 0;
  for (int i = 0; i < N; i++) c += (double)x[i] * z[i];
  assert_true(fabs(c / N) < 0.1);
  mp_noise_free(a);
  mp_noise_free(b);
}

static void test_tape_and_batch(void **state) {
  (void)state;
  mp_weights *w = open_rng_golden();
  mp_noise *tape = NULL;
  assert_ok(mp_noise_tape(w, "rng.randn.seed42.", &tape)); /* no "...seed42.00" exists */
  float x[16];
  assert_err_contains(mp_noise_fill(tape, x, 16), "draw 0");
  mp_noise_free(tape);
  mp_weights_close(w);

  mp_noise *kids[2] = {NULL, NULL}, *batch = NULL;
  assert_ok(mp_noise_torch_cpu(42, &kids[0]));
  assert_ok(mp_noise_torch_cpu(43, &kids[1]));
  assert_ok(mp_noise_batch(kids, 2, &batch));
  float both[32], one[16];
  assert_ok(mp_noise_fill(batch, both, 32));
  mp_torch_cpu_rng r;
  mp_torch_cpu_seed(&r, 43);
  mp_torch_cpu_randn(&r, one, 16);
  assert_memory_equal(both + 16, one, sizeof one);
  assert_err_contains(mp_noise_fill(batch, both, 31), "split");
  mp_noise_free(batch);

  uint64_t seeds[2] = {42, 43};
  assert_ok(mp_noise_for_seeds(MP_RNG_CPU, seeds, 2, &batch));
  float again[32];
  assert_ok(mp_noise_fill(batch, again, 32));
  assert_memory_equal(again, both, sizeof both);
  mp_noise_free(batch);

  mp_rng_kind k;
  assert_ok(mp_rng_parse("cuda", &k));
  assert_int_equal(k, MP_RNG_CUDA);
  assert_err_contains(mp_rng_parse("tpu", &k), "cpu or cuda");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_torch_cpu_matches_golden), cmocka_unit_test(test_torch_cpu_stream),
      cmocka_unit_test(test_philox_known_answers),     cmocka_unit_test(test_philox_cuda_randn_seed0),
      cmocka_unit_test(test_brownian_contract),        cmocka_unit_test(test_tape_and_batch),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
