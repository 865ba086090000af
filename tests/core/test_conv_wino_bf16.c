/* The bf16 Winograd F(2x2,3x3) convolution against the f32 reference (mp_ref_conv2d): within bf16's
 * precision (V and U rounded to bf16, f32 accumulation: rel L2 about 4e-3, twice the direct bf16
 * convolution's) over odd and tiny images, channel counts that are not a multiple of the 32-lane
 * transform blocks, rows wider than one staged strip of 16 tiles, batch > 1, bias or not, bands
 * smaller than the image, one pack reused over many shapes (primitive cache eviction); mp_conv2d
 * taking it exactly where mp_wino_bf16_pays says so; and its refusals. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv.h"
#include "core/conv_wino_bf16.h"
#include "core/matmul.h"
#include "core/pack_cache.h"
#include "testutil.h"

static void fill(float *x, int64_t n, unsigned seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    x[i] = ((float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f) * 2.0f;
  }
}

static double rel_l2(const float *a, const float *b, int64_t n) {
  double d = 0, r = 0;
  for (int64_t i = 0; i < n; i++) d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), r += (double)b[i] * b[i];
  return sqrt(d / (r > 0 ? r : 1));
}

typedef struct {
  mp_pool *pool;
  mp_backend *be;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || mp_pool_create(2, &f->pool) || mp_backend_create(MP_PRECISION_BF16, 2, &f->be)) return -1;
  mp_pool_set_backend(f->pool, f->be);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_pool_destroy(f->pool);
  mp_backend_destroy(f->be);
  free(f);
  return 0;
}

/* A packed [O, C, 3, 3] f16 weight (values exactly representable in f16, kept in W32 for the reference). */
typedef struct {
  int C, O;
  float *W32, *bias;
  uint16_t *W16;
  mp_tensor tw, tb;
} layer;

static void layer_make(layer *l, int C, int O, unsigned seed) {
  const int64_t nw = (int64_t)O * C * 9;
  l->C = C, l->O = O;
  l->W32 = malloc(sizeof(float) * nw), l->W16 = malloc(2 * nw), l->bias = malloc(sizeof(float) * O);
  fill(l->W32, nw, seed), fill(l->bias, O, seed + 1);
  for (int64_t i = 0; i < nw; i++) l->W16[i] = mp_f32_to_f16(l->W32[i]), l->W32[i] = mp_f16_to_f32(l->W16[i]);
  mp_tensor_view(&l->tw, MP_F16, 4, (int64_t[]){O, C, 3, 3}, l->W16);
  mp_tensor_view(&l->tb, MP_F32, 1, (int64_t[]){O}, l->bias);
}

static void layer_free(layer *l) { free(l->W32), free(l->W16), free(l->bias); }

/* rel L2 of the Winograd convolution (packed as `wc`, run with band_rows) against the reference. */
static double wino_error(fixture *f, mp_workspace *ws, mp_wino_bf16 *wc, const layer *l, int batch, int h, int w, bool bias,
                         int band_rows) {
  const int64_t nx = (int64_t)batch * l->C * h * w, ny = (int64_t)batch * l->O * h * w;
  float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * ny), *r = malloc(sizeof(float) * ny);
  fill(x, nx, 7u + (unsigned)(h * 31 + w));
  for (int64_t i = 0; i < ny; i++) y[i] = NAN; /* every output must be written */
  assert_ok(mp_wino_bf16_run(wc, f->pool, ws, x, batch, h, w, y, band_rows));
  const mp_pad p1 = {1, 1, 1, 1};
  for (int b = 0; b < batch; b++)
    mp_ref_conv2d(r + (int64_t)b * l->O * h * w, x + (int64_t)b * l->C * h * w, l->C, h, w, l->W32, bias ? l->bias : NULL, l->O, 3,
                  3, 1, p1);
  double e = rel_l2(y, r, ny);
  free(x), free(y), free(r);
  return e;
}

static void test_against_reference(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip(); /* the bf16 backend needs native bf16 (AUTO resolves to f32) */
  const struct {
    int C, O, batch, h, w;
    bool bias;
    int band_rows;
  } cases[] = {
      {32, 48, 1, 9, 11, true, 0},  /* odd height and width: half-empty edge tiles */
      {40, 24, 2, 7, 5, false, 0},  /* channel tails in both transforms, batch 2, no bias */
      {64, 32, 1, 1, 1, true, 0},   /* one pixel: only the kernel's centre sees data */
      {33, 65, 2, 3, 2, true, 1},   /* one tile row per band, bands across the images */
      {32, 32, 1, 6, 70, true, 2},  /* 35 tiles per row: several staged strips, a partial last one */
      {48, 40, 2, 16, 16, true, 3}, /* uneven bands (3, 3, 2 rows over 16 tile rows) */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    layer l;
    layer_make(&l, cases[i].C, cases[i].O, 100u + (unsigned)i);
    mp_wino_bf16 *wc;
    assert_ok(mp_wino_bf16_create(f->be, &l.tw, cases[i].bias ? &l.tb : NULL, &wc));
    mp_workspace ws = {0};
    for (int rep = 0; rep < 2; rep++) { /* the second run reuses the workspace and the primitive */
      double e = wino_error(f, &ws, wc, &l, cases[i].batch, cases[i].h, cases[i].w, cases[i].bias, cases[i].band_rows);
      if (!(e < 8e-3)) fail_msg("Winograd bf16 case %zu: rel L2 %g", i, e);
      if (e < 1e-5) fail_msg("Winograd bf16 case %zu: rel L2 %g, no bf16 rounding happened", i, e);
    }
    mp_workspace_free(&ws);
    mp_wino_bf16_free(wc);
    layer_free(&l);
  }
}

/* One pack over more image sizes than the primitive cache holds (each size is another band height). */
static void test_many_shapes(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  layer l;
  layer_make(&l, 32, 32, 200);
  mp_wino_bf16 *wc;
  assert_ok(mp_wino_bf16_create(f->be, &l.tw, &l.tb, &wc));
  mp_workspace ws = {0};
  const int sizes[][2] = {{4, 4}, {6, 8}, {8, 6}, {10, 10}, {12, 3}, {4, 4}, {5, 9}};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    double e = wino_error(f, &ws, wc, &l, 1, sizes[i][0], sizes[i][1], true, 0);
    if (!(e < 8e-3) || e < 1e-5) fail_msg("size %dx%d: rel L2 %g", sizes[i][0], sizes[i][1], e);
  }
  mp_workspace_free(&ws);
  mp_wino_bf16_free(wc);
  layer_free(&l);
}

/* mp_conv2d under the bf16 backend packs a Winograd form exactly where mp_wino_bf16_pays chooses it,
 * and is within bf16 bounds either way. */
static void test_dispatch(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  const int C = 256, O = 256, h = 32, w = 32, batch = 1;
  layer l;
  layer_make(&l, C, O, 300);
  const int64_t nx = (int64_t)batch * C * h * w, ny = (int64_t)batch * O * h * w;
  float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * ny), *r = malloc(sizeof(float) * ny);
  fill(x, nx, 301);
  mp_workspace ws = {0};
  const mp_pad p1 = {1, 1, 1, 1};
  assert_ok(mp_conv2d(f->pool, &ws, y, x, batch, C, h, w, &l.tw, &l.tb, 1, p1));
  for (int b = 0; b < batch; b++)
    mp_ref_conv2d(r + (int64_t)b * O * h * w, x + (int64_t)b * C * h * w, C, h, w, l.W32, l.bias, O, 3, 3, 1, p1);
  const double e = rel_l2(y, r, ny);
  if (!(e < 8e-3) || e < 1e-5) fail_msg("mp_conv2d bf16 3x3: rel L2 %g", e);
  assert_int_equal(ws.n_packs, 1); /* the weight is not pinned: the pack is the workspace's */
  assert_int_equal(ws.packs[0].wino != NULL, mp_wino_bf16_pays(C, O, h, w, batch));
  /* few channels or small images never take it */
  assert_false(mp_wino_bf16_pays(32, 256, 64, 64, 2));
  assert_false(mp_wino_bf16_pays(256, 256, 4, 4, 2));
  assert_false(mp_wino_bf16_pays(1280, 1280, 16, 16, 2)); /* memory for too little time (see the function) */
  mp_workspace_free(&ws);
  free(x), free(y), free(r);
  layer_free(&l);
}

static void test_refusals(void **state) {
  fixture *f = *state;
  layer l;
  layer_make(&l, 8, 8, 400);
  mp_wino_bf16 *wc = NULL;
  /* not 3x3 */
  mp_tensor t1;
  mp_tensor_view(&t1, MP_F16, 4, (int64_t[]){8, 8, 1, 9}, l.W16);
  assert_err_contains(mp_wino_bf16_create(f->be, &t1, NULL, &wc), "3, 3");
  assert_null(wc);
  /* bias of the wrong length */
  mp_tensor tb;
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){7}, l.bias);
  if (*mp_cpu_bf16_support()) assert_err_contains(mp_wino_bf16_create(f->be, &l.tw, &tb, &wc), "7 values");
  assert_null(wc);
  /* the f32 backend */
  mp_backend *b32;
  assert_ok(mp_backend_create(MP_PRECISION_F32, 1, &b32));
  assert_err_contains(mp_wino_bf16_create(b32, &l.tw, NULL, &wc), "bf16 backend");
  mp_backend_destroy(b32);
  /* an empty image */
  if (*mp_cpu_bf16_support()) {
    assert_ok(mp_wino_bf16_create(f->be, &l.tw, NULL, &wc));
    mp_workspace ws = {0};
    float x = 0, y = 0;
    assert_err_contains(mp_wino_bf16_run(wc, f->pool, &ws, &x, 1, 0, 4, &y, 0), "0x4");
    mp_workspace_free(&ws);
    mp_wino_bf16_free(wc);
  }
  layer_free(&l);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_against_reference), cmocka_unit_test(test_many_shapes),
                                     cmocka_unit_test(test_dispatch), cmocka_unit_test(test_refusals)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
