/* The op-class profile (core/profile.h): counts only while attached, the outermost operator only,
 * and the operators' own hooks attribute convolutions by kernel size. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv.h"
#include "core/ops.h"
#include "core/profile.h"

static void nesting_counts_once(void **state) {
  (void)state;
  mp_profile p = {0};
  mp_profile_begin(&p);
  mp_profile_begin(&p); /* an operator inside another: not counted on its own */
  mp_profile_end(&p, MP_OP_DENSE);
  mp_profile_end(&p, MP_OP_CONV3X3);
  assert_int_equal(p.calls[MP_OP_CONV3X3], 1);
  assert_int_equal(p.calls[MP_OP_DENSE], 0);
  assert_true(p.seconds[MP_OP_CONV3X3] >= 0);
  assert_int_equal(p.depth, 0);
  mp_profile_begin(NULL); /* no profile: nothing to do, no crash */
  mp_profile_end(NULL, MP_OP_NORM);
  mp_profile_reset(&p);
  assert_int_equal(p.calls[MP_OP_CONV3X3], 0);
  assert_string_equal(mp_op_class_name(MP_OP_ATTENTION), "attention");
}

static mp_tensor f32_tensor(float *data, int ndim, const int64_t *shape) {
  mp_tensor t;
  memset(&t, 0, sizeof t);
  t.dtype = MP_F32;
  t.ndim = ndim;
  for (int i = 0; i < ndim; i++) t.shape[i] = shape[i];
  t.data = data;
  return t;
}

static void operators_time_themselves_when_attached(void **state) {
  (void)state;
  mp_pool *pool = NULL;
  assert_null(mp_pool_create(2, &pool));
  mp_workspace ws = {0};
  enum { C = 32, H = 8, W = 8 };
  float *x = calloc(C * H * W, sizeof(float)), *y = calloc(C * H * W, sizeof(float));
  float *w3 = calloc(C * C * 9, sizeof(float)), *w1 = calloc(C * C, sizeof(float)), *g = calloc(C, sizeof(float)),
        *b = calloc(C, sizeof(float));
  assert_true(x && y && w3 && w1 && g && b);
  for (int i = 0; i < C; i++) g[i] = 1;
  const mp_tensor k3 = f32_tensor(w3, 4, (int64_t[]){C, C, 3, 3}), k1 = f32_tensor(w1, 4, (int64_t[]){C, C, 1, 1}),
                  lin = f32_tensor(w1, 2, (int64_t[]){C, C});
  const mp_pad same = {1, 1, 1, 1}, none = {0, 0, 0, 0};

  /* not attached: nothing counted */
  mp_profile p = {0};
  assert_null(mp_pool_profile(pool));
  assert_null(mp_conv2d(pool, &ws, y, x, 1, C, H, W, &k3, NULL, 1, same));
  assert_int_equal(p.calls[MP_OP_CONV3X3], 0);

  mp_pool_set_profile(pool, &p);
  assert_ptr_equal(mp_pool_profile(pool), &p);
  assert_null(mp_conv2d(pool, &ws, y, x, 1, C, H, W, &k3, NULL, 1, same));
  assert_null(mp_conv2d(pool, &ws, y, x, 1, C, H, W, &k1, NULL, 1, none));
  assert_null(mp_dense(pool, &ws, y, x, H * W, &lin, NULL));
  mp_group_norm(pool, y, x, 1, C, H * W, 32, g, b, 1e-5f, true);
  mp_layer_norm(pool, y, x, H * W, C, g, b, 1e-5f);
  mp_pool_set_profile(pool, NULL);
  assert_null(mp_dense(pool, &ws, y, x, H * W, &lin, NULL)); /* detached again */

  assert_int_equal(p.calls[MP_OP_CONV3X3], 1);
  assert_int_equal(p.calls[MP_OP_DENSE], 2); /* the 1x1 convolution and the dense layer */
  assert_int_equal(p.calls[MP_OP_NORM], 2);
  assert_int_equal(p.calls[MP_OP_ATTENTION], 0);
  assert_int_equal(p.depth, 0);
  for (int c = 0; c < MP_OP_CLASSES; c++) assert_true(p.seconds[c] >= 0);
  assert_true(p.seconds[MP_OP_CONV3X3] > 0);
  mp_pool_set_profile(NULL, &p); /* a NULL pool takes none */
  assert_null(mp_pool_profile(NULL));

  mp_workspace_free(&ws);
  free(x), free(y), free(w3), free(w1), free(g), free(b);
  mp_pool_destroy(pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(nesting_counts_once),
      cmocka_unit_test(operators_time_themselves_when_attached),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
