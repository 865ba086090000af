/* The NHWC operators that feed bf16 convolutions (core/nhwc_bf16.h) against their NCHW twins:
 * group norm (+ SiLU) to f32 and to bf16, nearest upsampling to bf16, the bf16 rounding itself, and
 * the NHWC convolution against mp_conv2d on the same bf16 backend. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv.h"
#include "core/cpu_kernels.h"
#include "core/matmul.h"
#include "core/nhwc_bf16.h"
#include "testutil.h"

static float from_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* [rows, cols] -> [cols, rows] */
static void transpose(float *dst, const float *src, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

static void test_bf16_row(void **state) {
  (void)state;
  /* ties go to even; NaN stays NaN (quiet); inf and -0 stay; denormals become zero of their sign,
   * as vcvtneps2bf16 makes them; the largest finite float rounds up to inf */
  const uint32_t bits[] = {0x3f808000u, 0x3f818000u, 0x3f808001u, 0x7fc00000u, 0x7f800001u, 0x7f800000u,
                           0xff800000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x7f7fffffu, 0xbf7fffffu};
  const uint16_t want[] = {0x3f80, 0x3f82, 0x3f81, 0x7fc0, 0x7fc0, 0x7f80, 0xff80, 0x8000, 0x0000, 0x8000, 0x7f80, 0xbf80};
  enum { N = sizeof bits / sizeof *bits, M = 1000 };
  float x[N + M];
  for (int i = 0; i < N; i++) x[i] = from_bits(bits[i]);
  test_fill(x + N, M, 5);
  for (int i = N; i < N + M; i++) x[i] *= ldexpf(1.0f, (i % 60) - 30);
  uint16_t c[N + M], v[N + M];
  for (int len = 0; len <= N + M; len += len < 40 ? 1 : 97) { /* every tail length of the vector loop */
    memset(c, 0xee, sizeof c), memset(v, 0xee, sizeof v);
    mp_bf16_row(c, x, len, false);
    for (int i = 0; i < N && i < len; i++)
      if (c[i] != want[i]) fail_msg("C rounding of 0x%08x: 0x%04x, expected 0x%04x", bits[i], c[i], want[i]);
    for (int i = len; i < N + M; i++) assert_int_equal(c[i], 0xeeee); /* nothing past n */
    if (!mp_cpu_avx512_bf16()) continue;
    mp_bf16_row(v, x, len, true);
    assert_memory_equal(c, v, sizeof c);
  }
}

/* mp_group_norm_nhwc against mp_group_norm on the transposed activations; with `biased`,
 * mp_group_norm_nhwc_biased against mp_group_norm of x plus a vector per channel. */
static void check_group_norm(mp_pool *pool, int C, int groups, int64_t hw, bool silu, bool biased) {
  const int64_t n = (int64_t)C * hw;
  float *x = malloc(sizeof(float) * n), *xt = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
  float *reft = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *g = malloc(sizeof(float) * C), *b = malloc(sizeof(float) * C);
  float *bias = malloc(sizeof(float) * C);
  uint16_t *y16 = malloc(2 * n), *ref16 = malloc(2 * n);
  test_fill(x, n, 31), test_fill(g, C, 32), test_fill(b, C, 33), test_fill(bias, C, 34);
  for (int64_t i = 0; i < n; i++) x[i] = 3.0f * x[i] + 0.5f; /* an offset the statistics must take out */
  transpose(xt, x, C, hw);
  if (biased)
    for (int64_t i = 0; i < n; i++) x[i] += 2.0f * bias[i / hw]; /* the reference's input: x + bias, in NCHW */
  mp_group_norm(pool, ref, x, 1, C, hw, groups, g, b, 1e-6f, silu);
  transpose(reft, ref, C, hw);
  for (int c = 0; c < C; c++) bias[c] *= 2.0f;
  mp_workspace ws = {0};
#define GN_NHWC(out, out_bf16)                                                                                 \
  (biased ? mp_group_norm_nhwc_biased(pool, &ws, out, out_bf16, xt, bias, hw, C, groups, g, b, 1e-6f, silu) \
          : mp_group_norm_nhwc(pool, &ws, out, out_bf16, xt, hw, C, groups, g, b, 1e-6f, silu))
  assert_ok(GN_NHWC(y, false));
  double mx = 0;
  for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)y[i] - reft[i]));
  print_message("group norm NHWC C=%d groups=%d hw=%lld silu=%d biased=%d: max |diff| %.3g\n", C, groups, (long long)hw, silu,
                biased, mx);
  if (!(mx <= 2e-5)) fail_msg("f32 output: max |diff| %g", mx);
  /* bf16 output: the f32 output just checked, rounded (the same arithmetic, then the rounding) */
  assert_ok(GN_NHWC(y16, true));
#undef GN_NHWC
  mp_bf16_row(ref16, y, n, false);
  assert_memory_equal(y16, ref16, sizeof(uint16_t) * (size_t)n);
  mp_workspace_free(&ws);
  free(x), free(xt), free(ref), free(reft), free(y), free(g), free(b), free(bias), free(y16), free(ref16);
}

static void test_group_norm_nhwc(void **state) {
  (void)state;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  for (int biased = 0; biased < 2; biased++) {
    check_group_norm(pool, 96, 32, 1000, true, biased);  /* 3 channels per group; chunks of 341 pixels, the last short */
    check_group_norm(pool, 512, 32, 130, false, biased); /* chunks of 64 pixels */
    check_group_norm(pool, 32, 32, 7, true, biased);     /* one channel per group, one chunk */
    check_group_norm(NULL, 128, 32, 300, true, biased);  /* no pool */
    check_group_norm(pool, 2560, 32, 40, true, biased);  /* the UNets' widest concatenation */
  }
  mp_workspace ws = {0};
  float x[64] = {0}, g[64] = {0};
  assert_err_contains(mp_group_norm_nhwc(pool, &ws, x, false, x, 1, 48, 32, g, g, 1e-6f, false), "48 channels in 32 groups");
  assert_err_contains(mp_group_norm_nhwc(pool, &ws, x, false, x, 1, 8192, 32, g, g, 1e-6f, false), "at most 4096");
  mp_workspace_free(&ws);
  mp_pool_destroy(pool);
}

static void test_upsample_nhwc_bf16(void **state) {
  (void)state;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  const int h = 5, w = 7, C = 40;
  float x[5 * 7 * 40];
  uint16_t y[4 * 5 * 7 * 40], want[40];
  test_fill(x, h * w * C, 41);
  mp_upsample_nearest2x_nhwc_bf16(pool, y, x, h, w, C);
  for (int oy = 0; oy < 2 * h; oy++)
    for (int ox = 0; ox < 2 * w; ox++) {
      mp_bf16_row(want, x + ((oy / 2) * w + ox / 2) * C, C, false);
      assert_memory_equal(y + ((int64_t)oy * 2 * w + ox) * C, want, sizeof want);
    }
  mp_pool_destroy(pool);
}

/* The NHWC convolution gives mp_conv2d's result on the same bf16 backend (the same packed weight and
 * bf16 input; f32 accumulation either way). */
static void test_conv2d_nhwc_bf16(void **state) {
  (void)state;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  assert_false(mp_conv2d_nhwc_usable(pool, 64, 48, 13, 9, 1)); /* no backend: f32 */
  if (!*mp_cpu_bf16_support()) {
    mp_pool_destroy(pool);
    return;
  }
  mp_backend *be;
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
  mp_pool_set_backend(pool, be);
  enum { CI = 64, CO = 48, H = 13, W = 9 };
  assert_true(mp_conv2d_nhwc_usable(pool, CI, CO, H, W, 1));
  assert_false(mp_conv2d_nhwc_usable(pool, 16, CO, H, W, 1)); /* few channels stay f32 */
  float *x = malloc(sizeof(float) * CI * H * W), *xt = malloc(sizeof(float) * CI * H * W), *wt = malloc(sizeof(float) * CO * CI * 9);
  float b[CO], *ref = malloc(sizeof(float) * CO * H * W), *y = malloc(sizeof(float) * CO * H * W), *yt = malloc(sizeof(float) * CO * H * W);
  uint16_t *x16 = malloc(2 * CI * H * W);
  test_fill(x, CI * H * W, 51), test_fill(wt, CO * CI * 9, 52), test_fill(b, CO, 53);
  mp_tensor tw, tb;
  mp_tensor_view(&tw, MP_F32, 4, (int64_t[]){CO, CI, 3, 3}, wt);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){CO}, b);
  const mp_pad pad = {1, 1, 1, 1};
  mp_workspace ws = {0};
  assert_ok(mp_conv2d(pool, &ws, ref, x, 1, CI, H, W, &tw, &tb, 1, pad));
  transpose(xt, x, CI, H * W);
  mp_bf16_row(x16, xt, CI * H * W, false);
  assert_ok(mp_conv2d_nhwc_bf16(pool, &ws, y, x16, 1, CI, H, W, &tw, &tb, 1, pad, false));
  transpose(yt, y, H * W, CO);
  const double e = test_rel_l2(yt, ref, CO * H * W);
  print_message("NHWC bf16 convolution vs mp_conv2d: rel L2 %.3g\n", e);
  if (!(e <= 1e-5)) fail_msg("rel L2 %g", e);
  /* accumulating (the fused sum post-op, or an add after): y = r + conv(x), twice over the same shape */
  for (int rep = 0; rep < 2; rep++) {
    float *r = malloc(sizeof(float) * CO * H * W);
    test_fill(r, CO * H * W, 54 + rep);
    memcpy(y, r, sizeof(float) * CO * H * W);
    assert_ok(mp_conv2d_nhwc_bf16(pool, &ws, y, x16, 1, CI, H, W, &tw, &tb, 1, pad, true));
    transpose(yt, y, H * W, CO);
    transpose(xt, r, H * W, CO); /* the residual in NCHW, into xt's first CO*H*W floats */
    for (int64_t i = 0; i < CO * H * W; i++) yt[i] -= xt[i];
    const double ea = test_rel_l2(yt, ref, CO * H * W);
    if (!(ea <= 1e-5)) fail_msg("accumulating, pass %d: rel L2 %g", rep, ea);
    free(r);
  }
  ws.f32_only = true; /* the model asked for f32 here: the NHWC path declines */
  assert_err_contains(mp_conv2d_nhwc_bf16(pool, &ws, y, x16, 1, CI, H, W, &tw, &tb, 1, pad, false), "bf16 backend");
  mp_workspace_free(&ws);
  free(x), free(xt), free(wt), free(ref), free(y), free(yt), free(x16);
  mp_pool_set_backend(pool, NULL);
  mp_pool_destroy(pool);
  mp_backend_destroy(be);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bf16_row),
      cmocka_unit_test(test_group_norm_nhwc),
      cmocka_unit_test(test_upsample_nhwc_bf16),
      cmocka_unit_test(test_conv2d_nhwc_bf16),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
