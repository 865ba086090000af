/* Image ops (conv2d, dense, group norm, upsample, GEGLU, vector exp) against their reference twins. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv.h"
#include "core/matmul.h"
#include "core/ops.h"
#include "core/vmath.h"
#include "testutil.h"

static double max_diff(const float *a, const float *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

typedef struct {
  int c_in, c_out, h, w, k, stride;
  mp_pad pad;
  bool f16, bias;
  int batch;
} conv_case;

static void run_conv_case(mp_pool *pool, mp_workspace *ws, conv_case cc) {
  int ho = mp_conv_out_size(cc.h, cc.k, cc.stride, cc.pad.top, cc.pad.bottom);
  int wo = mp_conv_out_size(cc.w, cc.k, cc.stride, cc.pad.left, cc.pad.right);
  int64_t nx = (int64_t)cc.batch * cc.c_in * cc.h * cc.w, nw = (int64_t)cc.c_out * cc.c_in * cc.k * cc.k;
  int64_t ny = (int64_t)cc.batch * cc.c_out * ho * wo;
  float *x = malloc(sizeof(float) * nx), *W = malloc(sizeof(float) * nw), *b = malloc(sizeof(float) * cc.c_out);
  float *y = malloc(sizeof(float) * ny), *r = malloc(sizeof(float) * ny);
  uint16_t *W16 = malloc(2 * nw);
  test_fill(x, nx, 11), test_fill(W, nw, 12), test_fill(b, cc.c_out, 13);
  if (cc.f16)
    for (int64_t i = 0; i < nw; i++) W16[i] = mp_f32_to_f16(W[i]), W[i] = mp_f16_to_f32(W16[i]);
  mp_tensor tw, tb;
  mp_tensor_view(&tw, cc.f16 ? MP_F16 : MP_F32, 4, (int64_t[]){cc.c_out, cc.c_in, cc.k, cc.k}, cc.f16 ? (void *)W16 : (void *)W);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){cc.c_out}, b);
  assert_ok(mp_conv2d(pool, ws, y, x, cc.batch, cc.c_in, cc.h, cc.w, &tw, cc.bias ? &tb : NULL, cc.stride, cc.pad));
  for (int bi = 0; bi < cc.batch; bi++)
    mp_ref_conv2d(r + (int64_t)bi * cc.c_out * ho * wo, x + (int64_t)bi * cc.c_in * cc.h * cc.w, cc.c_in, cc.h, cc.w, W,
                  cc.bias ? b : NULL, cc.c_out, cc.k, cc.k, cc.stride, cc.pad);
  double e = test_rel_l2(y, r, ny);
  /* direct/im2col: rounding only; Winograd F(4,3) (>= 1024 pixels, more than 4 outputs) multiplies
   * rounding by its transforms */
  const bool f4 = ho * wo >= 1024 && cc.k == 3 && cc.stride == 1 && cc.c_out > 4;
  if (e > (f4 ? 1e-5 : 1e-6)) fail_msg("conv %dx%d c%d->%d k%d s%d: rel l2 %g", cc.h, cc.w, cc.c_in, cc.c_out, cc.k, cc.stride, e);
  free(x), free(W), free(b), free(y), free(r), free(W16);
}

static void test_conv2d_matches_reference(void **state) {
  (void)state;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  mp_workspace ws = {0};
  const mp_pad p1 = {1, 1, 1, 1}, p0 = {0, 0, 0, 0}, asym = {0, 1, 0, 1};
  conv_case cases[] = {
      {5, 7, 9, 11, 3, 1, p1, false, true, 1},  /* 3x3 same padding, non-square */
      {5, 7, 9, 11, 3, 1, p1, true, true, 2},   /* f16 weights, batch 2 */
      {5, 7, 32, 33, 3, 1, p1, true, true, 3},  /* Winograd: tiles of 3 images side by side */
      {6, 4, 10, 8, 3, 2, p1, false, true, 1},  /* UNet downsample: stride 2 pad 1 */
      {6, 4, 10, 8, 3, 2, asym, true, true, 2}, /* VAE downsample: pad (0,1,0,1) */
      {6, 5, 7, 9, 1, 1, p0, true, true, 2},    /* 1x1 (direct GEMM) */
      {6, 5, 7, 9, 1, 1, p0, false, false, 1},  /* no bias */
      {600, 5, 15, 15, 3, 1, p1, false, true, 1}, /* K large, under 256 pixels: im2col */
      {600, 4, 90, 90, 3, 2, p1, false, true, 2}, /* bands over both images' columns, one crossing between them */
      {5, 7, 33, 37, 3, 1, p1, false, true, 2},   /* >= 1024 pixels: Winograd F(2x2,3x3), odd sizes */
      {6, 9, 32, 48, 3, 1, p1, true, false, 1},   /* Winograd, f16 weights, no bias */
      {300, 40, 40, 40, 3, 1, p1, false, true, 1}, /* Winograd, wider */
      {8, 6, 70, 66, 3, 1, p1, true, true, 2},    /* Winograd F(4x4,3x3), 16-tile vector path + partial tiles */
      {8, 6, 64, 62, 3, 1, p1, false, true, 1},   /* F(4x4): a 16-tile row wider than the image (scalar output) */
      /* at most 4 output channels: direct (the models' last layers) */
      {9, 3, 20, 150, 3, 1, p1, true, true, 2},   /* interior 64-pixel blocks, both edges, a partial last block */
      {70, 3, 5, 64, 3, 1, p1, false, true, 1},   /* one block as wide as the image */
      {4, 4, 1, 17, 3, 1, p1, false, false, 1},   /* one row, no bias */
      {130, 1, 3, 200, 3, 1, p1, true, false, 3}, /* one output channel, three images */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) run_conv_case(pool, &ws, cases[i]);

  /* Winograd in bands of a few tiles (bands cross tile rows) equals the reference */
  {
    enum { C = 5, O = 6, H = 13, W = 17 };
    float x[2 * C * H * W], Wt[O * C * 9], bb[O], y[2 * O * H * W], r[O * H * W];
    test_fill(x, 2 * C * H * W, 21), test_fill(Wt, O * C * 9, 22), test_fill(bb, O, 23);
    mp_tensor tw, tb;
    mp_tensor_view(&tw, MP_F32, 4, (int64_t[]){O, C, 3, 3}, Wt);
    mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){O}, bb);
    for (int tile = 2; tile <= 4; tile += 2)
      for (int64_t band = 1; band <= 80; band += 13) {
        assert_ok(mp_conv3x3_winograd(pool, &ws, y, x, 2, C, H, W, &tw, &tb, tile, band));
        for (int b = 0; b < 2; b++) {
          mp_ref_conv2d(r, x + b * C * H * W, C, H, W, Wt, bb, O, 3, 3, 1, p1);
          double e = test_rel_l2(y + b * O * H * W, r, O * H * W);
          if (e > (tile == 4 ? 5e-6 : 1e-6)) fail_msg("Winograd F(%d,3), bands of %d tiles: rel l2 %g", tile, (int)band, e);
        }
      }
  }

  /* shape errors name what was expected */
  float x[16] = {0}, y[16];
  float Wd[2 * 3 * 9] = {0};
  mp_tensor tw;
  mp_tensor_view(&tw, MP_F32, 4, (int64_t[]){2, 3, 3, 3}, Wd);
  assert_err_contains(mp_conv2d(pool, &ws, y, x, 1, 4, 2, 2, &tw, NULL, 1, p1), "input channels");
  mp_workspace_free(&ws);
  mp_pool_destroy(pool);
}

static void test_dense_matches_reference(void **state) {
  (void)state;
  enum { N = 13, IN = 37, OUT = 21 };
  float x[N * IN], W[OUT * IN], b[OUT], y[N * OUT], r[N * OUT];
  uint16_t W16[OUT * IN];
  test_fill(x, N * IN, 4), test_fill(W, OUT * IN, 5), test_fill(b, OUT, 6);
  for (int i = 0; i < OUT * IN; i++) W16[i] = mp_f32_to_f16(W[i]), W[i] = mp_f16_to_f32(W16[i]);
  mp_tensor tw, tb;
  mp_tensor_view(&tw, MP_F16, 4, (int64_t[]){OUT, IN, 1, 1}, W16);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){OUT}, b);
  mp_workspace ws = {0};
  assert_ok(mp_dense(NULL, &ws, y, x, N, &tw, &tb));
  mp_ref_linear(r, x, N, W, b, IN, OUT);
  assert_true(max_diff(y, r, N * OUT) < 1e-5);
  mp_workspace_free(&ws);
}

/* With an f32 backend attached, dense layers of 256 rows and more run on oneDNN's f32 matmul
 * (mp_gemm_pool); fewer rows stay on OpenBLAS. Both must match the reference to float rounding. */
static void test_dense_on_f32_backend(void **state) {
  (void)state;
  enum { IN = 70, OUT = 33 };
  mp_pool *pool;
  mp_backend *be;
  assert_ok(mp_pool_create(2, &pool));
  assert_ok(mp_backend_create(MP_PRECISION_F32, 2, &be));
  mp_pool_set_backend(pool, be);
  const int64_t rows[] = {300, 256, 255, 1};
  for (size_t c = 0; c < sizeof rows / sizeof *rows; c++) {
    const int64_t n = rows[c];
    float *x = malloc(sizeof(float) * (size_t)(n * IN)), *y = malloc(sizeof(float) * (size_t)(n * OUT));
    float *r = malloc(sizeof(float) * (size_t)(n * OUT)), W[OUT * IN], b[OUT];
    uint16_t W16[OUT * IN];
    test_fill(x, n * IN, 7), test_fill(W, OUT * IN, 8), test_fill(b, OUT, 9);
    for (int i = 0; i < OUT * IN; i++) W16[i] = mp_f32_to_f16(W[i]), W[i] = mp_f16_to_f32(W16[i]);
    mp_tensor tw, tb;
    mp_tensor_view(&tw, MP_F16, 2, (int64_t[]){OUT, IN}, W16);
    mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){OUT}, b);
    mp_workspace ws = {0};
    for (int rep = 0; rep < 2; rep++) { /* the second call reuses the cached primitive */
      assert_ok(mp_dense(pool, &ws, y, x, n, &tw, &tb));
      mp_ref_linear(r, x, n, W, b, IN, OUT);
      double e = test_rel_l2(y, r, n * OUT);
      if (e > 1e-6) fail_msg("dense %lld rows on the f32 backend: rel L2 %g", (long long)n, e);
    }
    mp_workspace_free(&ws);
    free(x), free(y), free(r);
  }
  mp_pool_destroy(pool);
  mp_backend_destroy(be);
}

static void test_group_norm_matches_reference(void **state) {
  (void)state;
  enum { B = 2, C = 64, HW = 37, G = 32 };
  float *x = malloc(sizeof(float) * B * C * HW), *y = malloc(sizeof(float) * B * C * HW), *r = malloc(sizeof(float) * C * HW);
  float gamma[C], beta[C];
  test_fill(x, B * C * HW, 7), test_fill(gamma, C, 8), test_fill(beta, C, 9);
  for (int i = 0; i < B * C * HW; i++) x[i] = x[i] * 3.0f + 5.0f; /* an offset mean stresses the variance */
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  for (int silu = 0; silu < 2; silu++) {
    mp_group_norm(pool, y, x, B, C, HW, G, gamma, beta, 1e-6f, silu);
    for (int b = 0; b < B; b++) {
      mp_ref_group_norm(r, x + b * C * HW, C, HW, G, gamma, beta, 1e-6f, silu);
      assert_true(max_diff(y + b * C * HW, r, C * HW) < 2e-5);
    }
  }
  /* in place gives the same as out of place */
  mp_group_norm(pool, y, x, B, C, HW, G, gamma, beta, 1e-5f, true);
  mp_group_norm(pool, x, x, B, C, HW, G, gamma, beta, 1e-5f, true);
  assert_memory_equal(x, y, sizeof(float) * B * C * HW);
  mp_pool_destroy(pool);
  free(x), free(y), free(r);
}

/* Groups larger than the op's 4096-value statistics chunks, with a tail that is not a multiple of its
 * 16 lanes, a large offset and a drift (chunk means differ): the chunks' merged mean and variance must
 * give what one pass over the whole group gives (the reference, in double). */
static void test_group_norm_chunked_statistics(void **state) {
  (void)state;
  enum { C = 8, HW = 3001, G = 2 };
  float *x = malloc(sizeof(float) * C * HW), *y = malloc(sizeof(float) * C * HW), *r = malloc(sizeof(float) * C * HW);
  float gamma[C], beta[C];
  test_fill(x, C * HW, 11), test_fill(gamma, C, 12), test_fill(beta, C, 13);
  for (int i = 0; i < C * HW; i++) x[i] = x[i] * 3.0f + 100.0f + 1e-3f * (float)i;
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  for (int silu = 0; silu < 2; silu++) {
    mp_group_norm(pool, y, x, 1, C, HW, G, gamma, beta, 1e-6f, silu);
    mp_ref_group_norm(r, x, C, HW, G, gamma, beta, 1e-6f, silu);
    assert_true(max_diff(y, r, C * HW) < 2e-5);
  }
  mp_pool_destroy(pool);
  free(x), free(y), free(r);
}

static void test_upsample_and_geglu(void **state) {
  (void)state;
  enum { P = 3, H = 5, W = 7, N = 9, D = 11 };
  float x[P * H * W], y[4 * P * H * W], r[4 * P * H * W];
  test_fill(x, P * H * W, 10);
  mp_upsample_nearest2x(NULL, y, x, P, H, W);
  mp_ref_upsample_nearest2x(r, x, P, H, W);
  assert_memory_equal(y, r, sizeof y);

  float g[N * 2 * D], gy[N * D], gr[N * D];
  test_fill(g, N * 2 * D, 14);
  for (int i = 0; i < N * 2 * D; i++) g[i] *= 6.0f; /* reach the tails */
  mp_geglu(NULL, gy, g, N, D);
  mp_ref_geglu(gr, g, N, D);
  assert_true(max_diff(gy, gr, N * D) < 2e-6);
  mp_geglu(NULL, g, g, N, D); /* in place compacts the rows */
  assert_true(max_diff(g, gr, N * D) < 2e-6);
}

/* mp_dense_geglu gives exactly what mp_geglu then mp_dense give: under a bf16 backend (the gated rows
 * straight to bf16, d past one chunk of the row buffer, rows past one task), under none (f32), and on
 * both it names the weight a feed-forward of the wrong width. Accumulating (it and mp_dense_add), what
 * adding onto the residual gives. */
static void test_dense_geglu_is_geglu_then_dense(void **state) {
  (void)state;
  enum { N = 70, D = 1100, OUT = 24 };
  float *x = malloc(sizeof(float) * N * 2 * D), *g = malloc(sizeof(float) * N * D), *W = malloc(sizeof(float) * OUT * D);
  float *fused = malloc(sizeof(float) * N * OUT), *apart = malloc(sizeof(float) * N * OUT), b[OUT];
  float *resid = malloc(sizeof(float) * N * OUT), *sum = malloc(sizeof(float) * N * OUT);
  assert_non_null(x), assert_non_null(g), assert_non_null(W), assert_non_null(fused), assert_non_null(apart);
  assert_non_null(resid), assert_non_null(sum);
  test_fill(x, N * 2 * D, 31), test_fill(W, OUT * D, 32), test_fill(b, OUT, 33);
  mp_tensor tw, tb, wrong;
  mp_tensor_view(&tw, MP_F32, 2, (int64_t[]){OUT, D}, W);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){OUT}, b);
  mp_tensor_view(&wrong, MP_F32, 2, (int64_t[]){OUT, D - 1}, W);
  mp_pool *pool;
  mp_backend *be;
  assert_ok(mp_pool_create(2, &pool));
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
  for (int attach = 0; attach < 2; attach++) {
    mp_pool_set_backend(pool, attach ? be : NULL);
    mp_workspace ws = {0};
    mp_geglu(pool, g, x, N, D);
    assert_ok(mp_dense(pool, &ws, apart, g, N, &tw, &tb));
    memset(g, 0, sizeof(float) * N * D);
    assert_ok(mp_dense_geglu(pool, &ws, fused, g, x, N, D, &tw, &tb, false));
    assert_memory_equal(fused, apart, sizeof(float) * N * OUT);
    /* accumulating onto a residual: what adding the product to it gives, bit for bit under bf16 (oneDNN
     * adds the finished product); the f32 path's BLAS adds onto it block by block (other roundings) */
    test_fill(resid, N * OUT, 34);
    mp_add(sum, resid, apart, N * OUT);
    memcpy(fused, resid, sizeof(float) * N * OUT);
    assert_ok(mp_dense_geglu(pool, &ws, fused, g, x, N, D, &tw, &tb, true));
    if (attach) assert_memory_equal(fused, sum, sizeof(float) * N * OUT);
    else assert_true(test_rel_l2(fused, sum, N * OUT) < 1e-6);
    memcpy(fused, resid, sizeof(float) * N * OUT);
    mp_geglu(pool, g, x, N, D);
    assert_ok(mp_dense_add(pool, &ws, fused, g, N, &tw, &tb));
    if (attach) assert_memory_equal(fused, sum, sizeof(float) * N * OUT);
    else assert_true(test_rel_l2(fused, sum, N * OUT) < 1e-6);
    mp_error *e = mp_dense_geglu(pool, &ws, fused, g, x, N, D, &wrong, &tb, false); /* on both paths */
    assert_non_null(e);
    assert_non_null(strstr(mp_error_message(e), "feed-forward output weight must be [out, 1100], found 2-D with 1099 inputs"));
    mp_error_free(e);
    mp_workspace_free(&ws);
  }
  mp_pool_set_backend(pool, NULL);
  mp_backend_destroy(be);
  mp_pool_destroy(pool);
  free(x), free(g), free(W), free(fused), free(apart), free(resid), free(sum);
}

/* mp_dense_shared gives exactly what one mp_dense per layer gives, under a bf16 backend (one bf16
 * copy of the input for all) and under none, and refuses layers of different input widths. */
static void test_dense_shared_is_dense_each(void **state) {
  (void)state;
  enum { N = 90, IN = 48, OUT = 40 };
  float x[N * IN], W[3][OUT * IN], Wn[OUT * (IN - 16)], b[OUT], shared[3][N * OUT], each[N * OUT];
  test_fill(x, N * IN, 41), test_fill(b, OUT, 42), test_fill(Wn, OUT * (IN - 16), 46);
  mp_tensor tw[3], tb, narrow;
  for (int i = 0; i < 3; i++) test_fill(W[i], OUT * IN, 43 + i), mp_tensor_view(&tw[i], MP_F32, 2, (int64_t[]){OUT, IN}, W[i]);
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){OUT}, b);
  mp_tensor_view(&narrow, MP_F32, 2, (int64_t[]){OUT, IN - 16}, Wn); /* its own data: packs are found by it */
  const mp_dense_out outs[3] = {{shared[0], &tw[0], &tb}, {shared[1], &tw[1], NULL}, {shared[2], &tw[2], &tb}};
  mp_pool *pool;
  mp_backend *be;
  assert_ok(mp_pool_create(2, &pool));
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
  for (int attach = 0; attach < 2; attach++) {
    mp_pool_set_backend(pool, attach ? be : NULL);
    mp_workspace ws = {0};
    assert_ok(mp_dense_shared(pool, &ws, x, N, outs, 3));
    for (int i = 0; i < 3; i++) {
      assert_ok(mp_dense(pool, &ws, each, x, N, outs[i].W, outs[i].bias));
      assert_memory_equal(shared[i], each, sizeof each);
    }
    if (attach && mp_backend_precision(be) == MP_PRECISION_BF16) {
      const mp_dense_out mixed[2] = {{shared[0], &tw[0], NULL}, {shared[1], &narrow, NULL}};
      mp_error *e = mp_dense_shared(pool, &ws, x, N, mixed, 2);
      assert_non_null(e);
      assert_non_null(strstr(mp_error_message(e), "dense layers sharing an input take 48 and 32 inputs"));
      mp_error_free(e);
    }
    mp_workspace_free(&ws);
  }
  mp_pool_set_backend(pool, NULL);
  mp_backend_destroy(be);
  mp_pool_destroy(pool);
}

/* The 16-lane rows of core/vmath.h both ways: the generic ones, and the AVX-512 ones where the CPU has
 * it (mp_vgeglu_row and the others choose at run time, so each machine runs one of them). */
typedef struct {
  const char *name;
  void (*silu_row)(float *, const float *, const float *, const float *, int64_t);
  void (*silu)(float *, const float *, float, float, int64_t);
  void (*geglu_row)(float *, const float *, const float *, int64_t);
  float (*max_row)(const float *, int64_t, float);
  float (*exp_sum_row)(float *, int64_t, float);
} vrows;

static const vrows VROWS[2] = {
    {"generic", mp_vaffine_silu_row_generic, mp_vaffine_silu_generic, mp_vgeglu_row_generic, mp_vmax_row_generic,
     mp_vexp_sum_row_generic},
    {"avx512", mp_vaffine_silu_row_avx512, mp_vaffine_silu_avx512, mp_vgeglu_row_avx512, mp_vmax_row_avx512,
     mp_vexp_sum_row_avx512},
};

static int vrows_here(void) {
  if (!mp_vmath_avx512()) print_message("no AVX-512 on this CPU: the generic rows only\n");
  return mp_vmath_avx512() ? 2 : 1;
}

/* The affine map + SiLU of the group norms, and GEGLU's gate: against double precision, every length
 * around the vector width, the tails (x * sigmoid(x) -> 0 and -> x) and NaN kept NaN. */
static void test_vector_silu(void **state) {
  (void)state;
  for (int path = 0; path < vrows_here(); path++) {
    const vrows *v = &VROWS[path];
    float x[40], scale[40], shift[40], y[40], z[40];
    for (int n = 0; n <= 40; n++) {
      test_fill(x, n, 30 + (unsigned)n);
      test_fill(scale, n, 60 + (unsigned)n);
      test_fill(shift, n, 90 + (unsigned)n);
      for (int i = 0; i < n; i++) x[i] *= 40.0f;
      y[n < 40 ? n : 39] = 123.0f; /* past the end: untouched */
      v->silu_row(y, x, scale, shift, n);
      v->silu(z, x, 1.5f, -0.25f, n);
      for (int i = 0; i < n; i++) {
        const double a = (double)(x[i] * scale[i] + shift[i]), b = (double)(x[i] * 1.5f - 0.25f);
        assert_true(fabs(y[i] - a / (1.0 + exp(-a))) <= 2e-6 * fmax(1.0, fabs(a)));
        assert_true(fabs(z[i] - b / (1.0 + exp(-b))) <= 2e-6 * fmax(1.0, fabs(b)));
      }
      if (n < 40) assert_true(y[n] == 123.0f);
      /* GEGLU: hid * gelu(gate), gelu with the exact erf */
      v->geglu_row(z, scale, x, n);
      for (int i = 0; i < n; i++) {
        const double g = x[i], want = scale[i] * 0.5 * g * (1.0 + erf(g / sqrt(2.0)));
        assert_true(fabs(z[i] - want) <= 4e-6 * fmax(1.0, fabs(g)) * fmax(1.0, fabs(scale[i])));
      }
    }
    const float tails[4] = {-100.0f, 100.0f, 0.0f, NAN};
    v->silu(y, tails, 1.0f, 0.0f, 4);
    assert_true(fabs(y[0]) < 1e-30f && y[1] == 100.0f && y[2] == 0.0f && isnan(y[3]));
  }
}

static void test_vector_exp(void **state) {
  (void)state;
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.01371f) worst = fmax(worst, fabs(mp_vexpf(x) / exp((double)x) - 1.0));
  assert_true(worst < 5e-7);
  assert_true(mp_vexpf(-INFINITY) < 1e-37f);
  assert_true(mp_vexpf(0.0f) == 1.0f);
  /* the softmax row passes, both ways, every length around the vector widths */
  for (int path = 0; path < vrows_here(); path++) {
    const vrows *v = &VROWS[path];
    float row[70], e[70];
    for (int n = 0; n <= 70; n++) {
      test_fill(row, n, 10 + (unsigned)n);
      for (int i = 0; i < n; i++) row[i] *= 20.0f;
      float mx = -INFINITY;
      for (int i = 0; i < n; i++) mx = row[i] > mx ? row[i] : mx;
      assert_true(v->max_row(row, n, -INFINITY) == mx);
      assert_true(v->max_row(row, n, 1e9f) == 1e9f);
      double sum = 0;
      for (int i = 0; i < n; i++) sum += exp((double)(row[i] - mx)); /* the float difference is what gets exponentiated */
      memcpy(e, row, sizeof(float) * (size_t)n);
      float got = v->exp_sum_row(e, n, mx);
      if (n) assert_true(fabs(got / sum - 1.0) < 1e-6);
      for (int i = 0; i < n; i++) {
        const double want = exp((double)(row[i] - mx));
        assert_true(fabs(e[i] - want) <= 1e-6 * want);
      }
    }
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conv2d_matches_reference), cmocka_unit_test(test_dense_matches_reference),
      cmocka_unit_test(test_dense_on_f32_backend), cmocka_unit_test(test_dense_geglu_is_geglu_then_dense),
      cmocka_unit_test(test_dense_shared_is_dense_each),
      cmocka_unit_test(test_group_norm_matches_reference), cmocka_unit_test(test_group_norm_chunked_statistics), cmocka_unit_test(test_upsample_and_geglu),
      cmocka_unit_test(test_vector_exp),
      cmocka_unit_test(test_vector_silu),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
