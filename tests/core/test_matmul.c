/* The prepacked matmul backends against the reference linear: f32 to float rounding, bf16 within
 * its documented precision (8 mantissa bits: rel L2 well under 1e-2). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/matmul.h"
#include "core/ops.h"
#include "testutil.h"

static void check(mp_precision prec, mp_dtype wdtype, double tol) {
  enum { M = 37, K = 200, N = 48 };
  float *x = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K), b[N];
  float *y = malloc(sizeof(float) * M * N), *ref = malloc(sizeof(float) * M * N);
  test_fill(x, M * K, 1), test_fill(W, N * K, 2), test_fill(b, N, 3);
  uint16_t *W16 = malloc(2 * N * K);
  for (int i = 0; i < N * K; i++) {
    if (wdtype == MP_F16) W16[i] = mp_f32_to_f16(W[i]), W[i] = mp_f16_to_f32(W16[i]);
  }
  mp_tensor tw, tb;
  if (wdtype == MP_F16)
    mp_tensor_view(&tw, MP_F16, 4, (int64_t[]){N, 8, 5, 5}, W16); /* a conv-shaped weight: K = 8*5*5 */
  else
    mp_tensor_view(&tw, MP_F32, 2, (int64_t[]){N, K}, W);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){N}, b);
  mp_backend *be;
  assert_ok(mp_backend_create(prec, 2, &be));
  mp_matmul *mm;
  assert_ok(mp_matmul_create(be, &tw, &tb, &mm));
  assert_int_equal(mp_matmul_k(mm), K);
  assert_ok(mp_matmul_run(mm, x, M, y, false));
  mp_ref_linear(ref, x, M, W, b, K, N);
  double r = test_rel_l2(y, ref, M * N);
  if (r > tol) fail_msg("%s: rel L2 %.3g > %.3g", mp_precision_name(prec), r, tol);
  /* accumulate: y += x·Wᵀ + b */
  assert_ok(mp_matmul_run(mm, x, M, y, true));
  for (int i = 0; i < M * N; i++) ref[i] *= 2;
  r = test_rel_l2(y, ref, M * N);
  if (r > tol) fail_msg("%s accumulate: rel L2 %.3g > %.3g", mp_precision_name(prec), r, tol);
  /* a different M with the same prepacked weights */
  assert_ok(mp_matmul_run(mm, x, 5, y, false));
  mp_ref_linear(ref, x, 5, W, b, K, N);
  assert_true(test_rel_l2(y, ref, 5 * N) <= tol);
  mp_matmul_free(mm);
  mp_backend_destroy(be);
  free(x), free(W), free(y), free(ref), free(W16);
}

static void test_f32(void **state) {
  (void)state;
  check(MP_PRECISION_F32, MP_F32, 1e-6);
  check(MP_PRECISION_F32, MP_F16, 1e-6);
}

static void test_bf16(void **state) {
  (void)state;
  if (!*mp_cpu_bf16_support()) skip(); /* the CPU has no bf16 instructions: the f32 path is used */
  check(MP_PRECISION_BF16, MP_F32, 5e-3);
  check(MP_PRECISION_BF16, MP_F16, 5e-3);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_f32), cmocka_unit_test(test_bf16)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
