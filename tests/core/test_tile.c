/* Tiled application: a pointwise function (per-cell, any scale) gives exactly the untiled result. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tile.h"
#include "testutil.h"

/* "decoder": each input cell -> s x s output pixels, 2 channels -> 3 (a fixed per-pixel mix) */
typedef struct {
  int s;
} up_ctx;

static mp_error *upsample_mix(void *ctx, int h, int w, const float *in, float *out) {
  int s = ((up_ctx *)ctx)->s;
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < h * s; i++)
      for (int j = 0; j < w * s; j++) {
        float a = in[(0 * h + i / s) * w + j / s], b = in[(1 * h + i / s) * w + j / s];
        out[((int64_t)c * h * s + i) * w * s + j] = a * (float)(c + 1) - b * 0.5f * (float)c + (float)((i % s) * s + j % s);
      }
  return NULL;
}

/* "encoder": s x s input pixels -> one cell, 3 channels -> 2 */
static mp_error *pool_mix(void *ctx, int H, int W, const float *in, float *out) {
  int s = ((up_ctx *)ctx)->s, h = H / s, w = W / s;
  for (int c = 0; c < 2; c++)
    for (int i = 0; i < h; i++)
      for (int j = 0; j < w; j++) {
        double acc = 0;
        for (int k = 0; k < 3; k++)
          for (int y = 0; y < s; y++)
            for (int x = 0; x < s; x++) acc += in[((int64_t)k * H + i * s + y) * W + j * s + x] * (c ? k : 1.0);
        out[((int64_t)c * h + i) * w + j] = (float)acc;
      }
  return NULL;
}

static void test_tiled_pointwise_is_exact(void **state) {
  (void)state;
  enum { NH = 13, NW = 21, S = 4 };
  up_ctx ctx = {S};
  float *in = malloc(sizeof(float) * 2 * NH * NW), *a = malloc(sizeof(float) * 3 * NH * NW * S * S),
        *b = malloc(sizeof(float) * 3 * NH * NW * S * S);
  for (int i = 0; i < 2 * NH * NW; i++) in[i] = sinf((float)i * 0.37f);
  assert_ok(upsample_mix(&ctx, NH, NW, in, a));
  const int tiles[][2] = {{5, 2}, {8, 3}, {6, 0}, {13, 4}, {40, 8}};
  for (size_t t = 0; t < sizeof tiles / sizeof *tiles; t++) {
    assert_ok(mp_tiled_apply(upsample_mix, &ctx, NH, NW, tiles[t][0], tiles[t][0], tiles[t][1], 1, S, 2, 3, in, b));
    for (int i = 0; i < 3 * NH * NW * S * S; i++)
      if (fabsf(a[i] - b[i]) > 1e-5f * (1 + fabsf(a[i]))) fail_msg("tile %d overlap %d: pixel %d %g != %g", tiles[t][0], tiles[t][1], i, b[i], a[i]);
  }
  /* tiles of different height and width */
  assert_ok(mp_tiled_apply(upsample_mix, &ctx, NH, NW, 5, 8, 2, 1, S, 2, 3, in, b));
  for (int i = 0; i < 3 * NH * NW * S * S; i++)
    if (fabsf(a[i] - b[i]) > 1e-5f * (1 + fabsf(a[i]))) fail_msg("5x8 tiles: pixel %d %g != %g", i, b[i], a[i]);
  /* and the other direction, pixels -> cells */
  float *m1 = malloc(sizeof(float) * 2 * NH * NW), *m2 = malloc(sizeof(float) * 2 * NH * NW);
  assert_ok(pool_mix(&ctx, NH * S, NW * S, a, m1));
  assert_ok(mp_tiled_apply(pool_mix, &ctx, NH, NW, 6, 9, 2, S, 1, 3, 2, a, m2));
  for (int i = 0; i < 2 * NH * NW; i++) assert_true(fabsf(m1[i] - m2[i]) <= 1e-4f * (1 + fabsf(m1[i])));
  assert_err_contains(mp_tiled_apply(pool_mix, &ctx, NH, NW, 9, 6, 6, S, 1, 3, 2, a, m2), "overlap");
  free(in), free(a), free(b), free(m1), free(m2);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tiled_pointwise_is_exact)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
