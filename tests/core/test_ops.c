/* Fast ops against their reference twins, and the half-precision conversions. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "testutil.h"

static double max_diff(const float *a, const float *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

static void test_half_conversions(void **state) {
  (void)state;
  /* every f16 value survives f16 -> f32 -> f16 */
  for (uint32_t h = 0; h < 0x10000; h++) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN payloads */
    assert_int_equal(mp_f32_to_f16(mp_f16_to_f32((uint16_t)h)), h);
  }
  assert_true(mp_f16_to_f32(0x3c00) == 1.0f);
  assert_true(mp_f16_to_f32(0xc000) == -2.0f);
  assert_true(mp_f16_to_f32(0x0001) == ldexpf(1.0f, -24));
  assert_int_equal(mp_f32_to_f16(65520.0f), 0x7c00); /* rounds to inf */
  assert_int_equal(mp_f32_to_bf16(1.0f), 0x3f80);
  assert_true(mp_bf16_to_f32(mp_f32_to_bf16(3.140625f)) == 3.140625f);
  /* ties to even: 1 + 2^-8 is halfway between two bf16 values; rounds down to 1.0 */
  assert_int_equal(mp_f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);
}

static void test_linear_matches_reference(void **state) {
  (void)state;
  enum { N = 7, IN = 33, OUT = 19 };
  float x[N * IN], W[OUT * IN], b[OUT], y[N * OUT], r[N * OUT];
  test_fill(x, N * IN, 1), test_fill(W, OUT * IN, 2), test_fill(b, OUT, 3);
  mp_tensor tw, tb;
  mp_tensor_view(&tw, MP_F32, 2, (int64_t[]){OUT, IN}, W);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){OUT}, b);
  assert_ok(mp_linear(NULL, y, x, N, &tw, &tb));
  mp_ref_linear(r, x, N, W, b, IN, OUT);
  assert_true(max_diff(y, r, N * OUT) < 1e-5);

  /* the same weights stored as f16 give the f16-rounded result */
  uint16_t W16[OUT * IN];
  float Wr[OUT * IN];
  for (int i = 0; i < OUT * IN; i++) W16[i] = mp_f32_to_f16(W[i]), Wr[i] = mp_f16_to_f32(W16[i]);
  mp_tensor_view(&tw, MP_F16, 2, (int64_t[]){OUT, IN}, W16);
  assert_ok(mp_linear(NULL, y, x, N, &tw, &tb));
  mp_ref_linear(r, x, N, Wr, b, IN, OUT);
  assert_true(max_diff(y, r, N * OUT) < 1e-5);

  mp_tensor_view(&tw, MP_F32, 1, (int64_t[]){OUT}, W);
  assert_err_contains(mp_linear(NULL, y, x, N, &tw, NULL), "2-D");
}

static void test_layer_norm(void **state) {
  (void)state;
  enum { N = 5, D = 48 };
  float x[N * D], g[D], b[D], y[N * D], r[N * D];
  test_fill(x, N * D, 4), test_fill(g, D, 5), test_fill(b, D, 6);
  mp_layer_norm(NULL, y, x, N, D, g, b, 1e-5f);
  mp_ref_layer_norm(r, x, N, D, g, b, 1e-5f);
  assert_true(max_diff(y, r, N * D) < 1e-5);
}

/* Rows whose length is not a multiple of the op's 8 summation lanes, with an offset mean. */
static void test_layer_norm_ragged_rows(void **state) {
  (void)state;
  enum { N = 3, D = 333 };
  float x[N * D], g[D], b[D], y[N * D], r[N * D];
  test_fill(x, N * D, 7), test_fill(g, D, 8), test_fill(b, D, 9);
  for (int i = 0; i < N * D; i++) x[i] = 4.0f * x[i] + 50.0f;
  mp_layer_norm(NULL, y, x, N, D, g, b, 1e-5f);
  mp_ref_layer_norm(r, x, N, D, g, b, 1e-5f);
  assert_true(max_diff(y, r, N * D) < 1e-5);
  mp_layer_norm(NULL, y, x, N, 13, g, b, 1e-5f); /* shorter than one lane group */
  mp_ref_layer_norm(r, x, N, 13, g, b, 1e-5f);
  assert_true(max_diff(y, r, N * 13) < 1e-5);
}

static void check_attention(mp_pool *pool, int64_t nq, int64_t nk, int heads, int hd, bool causal) {
  int64_t ld = (int64_t)heads * hd;
  float *q = malloc(sizeof(float) * nq * ld), *k = malloc(sizeof(float) * nk * ld), *v = malloc(sizeof(float) * nk * ld);
  float *o = malloc(sizeof(float) * nq * ld), *r = malloc(sizeof(float) * nq * ld);
  test_fill(q, nq * ld, 7), test_fill(k, nk * ld, 8), test_fill(v, nk * ld, 9);
  mp_attention(pool, o, q, k, v, nq, nk, heads, hd, causal);
  mp_ref_attention(r, q, k, v, nq, nk, heads, hd, causal);
  assert_true(max_diff(o, r, nq * ld) < 1e-5);
  free(q), free(k), free(v), free(o), free(r);
}

static void test_attention_blocked_matches_reference(void **state) {
  (void)state;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  check_attention(pool, 77, 77, 4, 8, true);    /* CLIP: causal, one block */
  check_attention(pool, 300, 77, 2, 16, false); /* cross-attention, several query blocks */
  check_attention(pool, 130, 600, 3, 8, false); /* several key blocks: exercises the online softmax */
  check_attention(pool, 600, 600, 1, 4, true);  /* causal across blocks */
  mp_pool_destroy(pool);
}

static void test_embedding_rejects_bad_ids(void **state) {
  (void)state;
  float table[6] = {1, 2, 3, 4, 5, 6}, out[4];
  mp_tensor t;
  mp_tensor_view(&t, MP_F32, 2, (int64_t[]){3, 2}, table);
  assert_ok(mp_embedding(out, (int32_t[]){2, 0}, 2, &t));
  assert_true(out[0] == 5 && out[1] == 6 && out[2] == 1);
  assert_err_contains(mp_embedding(out, (int32_t[]){3}, 1, &t), "outside the embedding table");
  assert_err_contains(mp_embedding(out, (int32_t[]){-1}, 1, &t), "outside");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_half_conversions),
      cmocka_unit_test(test_linear_matches_reference),
      cmocka_unit_test(test_layer_norm), cmocka_unit_test(test_layer_norm_ragged_rows),
      cmocka_unit_test(test_attention_blocked_matches_reference),
      cmocka_unit_test(test_embedding_rejects_bad_ids),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
