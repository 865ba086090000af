/* The text encoders' linear layer over matrices kept in their stored dtype: converted to f32 a block
 * of rows at a time, it must give what the reference gives with the f32 matrix, for a matrix spanning
 * several blocks (the last one partial) in f16, bf16 and f32, and for a row block of a fused matrix. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/matmul.h"
#include "core/ops.h"
#include "models/text_layer.h"
#include "testutil.h"

enum { N_TOK = 5, IN = 1000, OUT = 1100 }; /* 1.1 M values: more than one conversion block */

static float frand(unsigned *s) {
  *s = *s * 1664525u + 1013904223u;
  return (float)(*s >> 9) / 8388608.0f - 0.5f;
}

static void check_dtype(mp_dtype dt) {
  unsigned seed = 7;
  float *wf = malloc(sizeof(float) * OUT * IN), *x = malloc(sizeof(float) * N_TOK * IN), bias[OUT];
  uint16_t *wh = malloc(2 * (size_t)OUT * IN);
  for (size_t i = 0; i < (size_t)OUT * IN; i++) {
    float v = 0.1f * frand(&seed);
    if (dt == MP_F16) wh[i] = mp_f32_to_f16(v), wf[i] = mp_f16_to_f32(wh[i]);
    else if (dt == MP_BF16) wh[i] = mp_f32_to_bf16(v), wf[i] = mp_bf16_to_f32(wh[i]);
    else wf[i] = v;
  }
  for (int i = 0; i < OUT; i++) bias[i] = frand(&seed);
  for (int i = 0; i < N_TOK * IN; i++) x[i] = frand(&seed);
  mp_tensor W;
  mp_tensor_view(&W, dt, 2, (int64_t[]){OUT, IN}, dt == MP_F32 ? (void *)wf : (void *)wh);

  const mp_clip_config cfg = {.hidden = IN, .intermediate = OUT, .heads = 1, .layers = 1};
  mp_text_activations a;
  assert_true(mp_text_activations_alloc(&cfg, N_TOK, &a));
  assert_true(a.weights_floats < (int64_t)OUT * IN); /* the test spans several blocks */

  float *got = malloc(sizeof(float) * N_TOK * OUT), *want = malloc(sizeof(float) * N_TOK * OUT);
  mp_linear_weights lin;
  mp_linear_rows(&lin, &W, 0, OUT, bias);
  mp_ref_linear(want, x, N_TOK, wf, bias, IN, OUT);
  assert_ok(mp_text_linear(NULL, &lin, x, N_TOK, got, &a)); /* no pool: OpenBLAS */
  assert_true(test_rel_l2(got, want, (size_t)N_TOK * OUT) < 1e-6);
  /* a pool with an f32 backend, as the pipeline's: oneDNN's matmul */
  mp_pool *pool;
  mp_backend *be;
  assert_ok(mp_pool_create(2, &pool));
  assert_ok(mp_backend_create(MP_PRECISION_F32, 2, &be));
  mp_pool_set_backend(pool, be);
  memset(got, 0, sizeof(float) * N_TOK * OUT);
  assert_ok(mp_text_linear(pool, &lin, x, N_TOK, got, &a));
  assert_true(test_rel_l2(got, want, (size_t)N_TOK * OUT) < 1e-6);
  mp_pool_destroy(pool);
  mp_backend_destroy(be);

  /* rows [300, 300 + 500) as their own layer, as OpenCLIP's q/k/v are blocks of in_proj_weight */
  mp_linear_rows(&lin, &W, 300, 500, bias + 300);
  assert_int_equal(lin.weight.shape[0], 500);
  assert_ok(mp_text_linear(NULL, &lin, x, N_TOK, got, &a));
  mp_ref_linear(want, x, N_TOK, wf + 300 * IN, bias + 300, IN, 500);
  assert_true(test_rel_l2(got, want, (size_t)N_TOK * 500) < 1e-6);

  mp_free(a.block);
  free(wf), free(wh), free(x), free(got), free(want);
}

static void test_f16_blocks(void **state) {
  (void)state;
  check_dtype(MP_F16);
}
static void test_bf16_blocks(void **state) {
  (void)state;
  check_dtype(MP_BF16);
}
static void test_f32_in_place(void **state) {
  (void)state;
  check_dtype(MP_F32);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f16_blocks),
      cmocka_unit_test(test_bf16_blocks),
      cmocka_unit_test(test_f32_in_place),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
