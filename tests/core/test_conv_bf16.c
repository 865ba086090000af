/* mp_conv2d and mp_dense on a pool with the bf16 backend attached (weights packed on first use, im2col
 * in bf16, f32 accumulation) against the f32 reference twins: within bf16's precision (8 mantissa
 * bits on both operands: rel L2 about 3e-3), over 3x3 / 1x1 / strided / asymmetric padding, bias or
 * not, batch > 1, bands smaller than the image, a workspace reused across calls (the packed-weight
 * cache), and the f32_only switch. On a CPU without native bf16, AUTO must resolve to f32. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv.h"
#include "core/matmul.h"
#include "core/ops.h"
#include "testutil.h"

typedef struct {
  int c_in, c_out, h, w, k, stride;
  mp_pad pad;
  bool bias;
  int batch;
} conv_case;

/* Returns the rel L2 error of mp_conv2d (run twice: packing, then the cached pack) vs the reference. */
static double conv_error(mp_pool *pool, mp_workspace *ws, conv_case cc) {
  int ho = mp_conv_out_size(cc.h, cc.k, cc.stride, cc.pad.top, cc.pad.bottom);
  int wo = mp_conv_out_size(cc.w, cc.k, cc.stride, cc.pad.left, cc.pad.right);
  int64_t nx = (int64_t)cc.batch * cc.c_in * cc.h * cc.w, nw = (int64_t)cc.c_out * cc.c_in * cc.k * cc.k;
  int64_t ny = (int64_t)cc.batch * cc.c_out * ho * wo;
  float *x = malloc(sizeof(float) * nx), *b = malloc(sizeof(float) * cc.c_out);
  float *y = malloc(sizeof(float) * ny), *r = malloc(sizeof(float) * ny), *W = malloc(sizeof(float) * nw);
  uint16_t *W16 = malloc(2 * nw);
  test_fill(x, nx, 21), test_fill(W, nw, 22), test_fill(b, cc.c_out, 23);
  for (int64_t i = 0; i < nw; i++) W16[i] = mp_f32_to_f16(W[i]), W[i] = mp_f16_to_f32(W16[i]);
  mp_tensor tw, tb;
  mp_tensor_view(&tw, MP_F16, 4, (int64_t[]){cc.c_out, cc.c_in, cc.k, cc.k}, W16);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){cc.c_out}, b);
  for (int rep = 0; rep < 2; rep++)
    assert_ok(mp_conv2d(pool, ws, y, x, cc.batch, cc.c_in, cc.h, cc.w, &tw, cc.bias ? &tb : NULL, cc.stride, cc.pad));
  for (int bi = 0; bi < cc.batch; bi++)
    mp_ref_conv2d(r + (int64_t)bi * cc.c_out * ho * wo, x + (int64_t)bi * cc.c_in * cc.h * cc.w, cc.c_in, cc.h, cc.w, W,
                  cc.bias ? b : NULL, cc.c_out, cc.k, cc.k, cc.stride, cc.pad);
  double e = test_rel_l2(y, r, ny);
  free(x), free(W), free(b), free(y), free(r), free(W16);
  return e;
}

static void test_conv2d_bf16(void **state) {
  (void)state;
  if (!*mp_cpu_bf16_support()) return; /* covered by test_auto_resolution */
  mp_pool *pool;
  mp_backend *be;
  assert_ok(mp_pool_create(2, &pool));
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
  mp_pool_set_backend(pool, be);
  mp_workspace ws = {0};
  const conv_case cases[] = {
      {32, 48, 9, 11, 3, 1, {1, 1, 1, 1}, true, 1},   {64, 32, 16, 16, 3, 1, {1, 1, 1, 1}, false, 2},
      {32, 64, 12, 10, 3, 2, {1, 1, 1, 1}, true, 1},  {32, 40, 13, 9, 3, 2, {0, 1, 0, 1}, true, 2},
      {48, 32, 8, 8, 1, 1, {0, 0, 0, 0}, true, 2},    {32, 32, 70, 70, 3, 1, {1, 1, 1, 1}, true, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    double e = conv_error(pool, &ws, cases[i]);
    if (!(e < 8e-3)) fail_msg("bf16 conv case %zu: rel L2 %g", i, e);
    if (e < 1e-5) fail_msg("bf16 conv case %zu: rel L2 %g, the bf16 path did not run", i, e);
  }
  /* f32_only keeps the f32 operators (rounding-level error) */
  mp_workspace ws32 = {0};
  ws32.f32_only = true;
  double e = conv_error(pool, &ws32, cases[0]);
  if (e > 1e-5) fail_msg("f32_only conv: rel L2 %g", e);
  /* few channels (first/last layers) stay f32 */
  e = conv_error(pool, &ws, (conv_case){4, 32, 8, 8, 3, 1, {1, 1, 1, 1}, true, 1});
  if (e > 1e-5) fail_msg("4-channel conv: rel L2 %g (should stay f32)", e);
  mp_workspace_free(&ws32);
  mp_workspace_free(&ws);
  mp_pool_destroy(pool);
  mp_backend_destroy(be);
}

static void test_dense_bf16(void **state) {
  (void)state;
  if (!*mp_cpu_bf16_support()) return;
  mp_pool *pool;
  mp_backend *be;
  assert_ok(mp_pool_create(2, &pool));
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
  mp_pool_set_backend(pool, be);
  mp_workspace ws = {0};
  const int64_t n = 37, in = 96, out = 80;
  float *x = malloc(sizeof(float) * n * in), *W = malloc(sizeof(float) * out * in), *b = malloc(sizeof(float) * out);
  float *y = malloc(sizeof(float) * n * out), *r = malloc(sizeof(float) * n * out);
  test_fill(x, n * in, 31), test_fill(W, out * in, 32), test_fill(b, out, 33);
  mp_tensor tw, tb;
  mp_tensor_view(&tw, MP_F32, 2, (int64_t[]){out, in}, W);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){out}, b);
  for (int rep = 0; rep < 2; rep++) assert_ok(mp_dense(pool, &ws, y, x, n, &tw, &tb));
  mp_ref_linear(r, x, n, W, b, in, out);
  double e = test_rel_l2(y, r, n * out);
  if (!(e < 8e-3) || e < 1e-5) fail_msg("bf16 dense: rel L2 %g", e);
  assert_int_equal(ws.n_packs, 1);
  free(x), free(W), free(b), free(y), free(r);
  mp_workspace_free(&ws);
  mp_pool_destroy(pool);
  mp_backend_destroy(be);
}

static void test_auto_resolution(void **state) {
  (void)state;
  mp_backend *be;
  assert_ok(mp_backend_create(MP_PRECISION_AUTO, 1, &be));
  assert_int_equal(mp_backend_precision(be), *mp_cpu_bf16_support() ? MP_PRECISION_BF16 : MP_PRECISION_F32);
  mp_backend_destroy(be);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_conv2d_bf16), cmocka_unit_test(test_dense_bf16),
                                     cmocka_unit_test(test_auto_resolution)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
