/* Resampling: exactness where it must be exact, the pixel-centre convention, antialiasing, and the
 * separable implementation against a direct 2-D double-precision twin. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "post/resize.h"
#include "testutil.h"

static void fill_random(mp_image *img, unsigned seed) {
  size_t n = (size_t)img->width * img->height * img->channels;
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    img->pixels[i] = (uint8_t)(seed >> 24);
  }
}

static void test_constant_stays_constant(void **state) {
  (void)state;
  mp_image src, dst;
  assert_ok(mp_image_alloc(&src, 37, 23, 3));
  for (size_t i = 0; i < 37 * 23; i++) src.pixels[3 * i] = 200, src.pixels[3 * i + 1] = 17, src.pixels[3 * i + 2] = 0;
  const int sizes[][2] = {{100, 61}, {9, 5}, {37, 60}, {1, 1}, {400, 3}};
  for (int f = 0; f < 3; f++)
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
      assert_ok(mp_image_resize(&src, sizes[s][0], sizes[s][1], (mp_resize_filter)f, &dst));
      for (int i = 0; i < sizes[s][0] * sizes[s][1]; i++) {
        assert_int_equal(dst.pixels[3 * i], 200);
        assert_int_equal(dst.pixels[3 * i + 1], 17);
        assert_int_equal(dst.pixels[3 * i + 2], 0);
      }
      mp_image_free(&dst);
    }
  mp_image_free(&src);
}

static void test_same_size_is_exact_copy(void **state) {
  (void)state;
  mp_image src, dst;
  assert_ok(mp_image_alloc(&src, 31, 17, 3));
  fill_random(&src, 7);
  for (int f = 0; f < 3; f++) {
    assert_ok(mp_image_resize(&src, 31, 17, (mp_resize_filter)f, &dst));
    assert_memory_equal(src.pixels, dst.pixels, 31 * 17 * 3);
    mp_image_free(&dst);
  }
  mp_image_free(&src);
}

static void test_bilinear_pixel_centres(void **state) {
  (void)state;
  mp_image src, dst;
  assert_ok(mp_image_alloc(&src, 2, 1, 1));
  src.pixels[0] = 0, src.pixels[1] = 100;
  assert_ok(mp_image_resize(&src, 4, 1, MP_RESIZE_BILINEAR, &dst));
  /* Centres at 0.25, 0.75, 1.25, 1.75 source pixels: 0 (edge), 25, 75, 100 (edge). */
  const uint8_t want[] = {0, 25, 75, 100};
  assert_memory_equal(dst.pixels, want, 4);
  mp_image_free(&dst);
  assert_ok(mp_image_resize(&src, 4, 1, MP_RESIZE_NEAREST, &dst));
  const uint8_t want_nn[] = {0, 0, 100, 100};
  assert_memory_equal(dst.pixels, want_nn, 4);
  mp_image_free(&dst);
  mp_image_free(&src);
}

static void test_downscale_antialiases(void **state) {
  (void)state;
  /* A 1-pixel checkerboard shrunk 4x must come out flat grey, not aliased. */
  mp_image src, dst;
  assert_ok(mp_image_alloc(&src, 64, 64, 1));
  for (int y = 0; y < 64; y++)
    for (int x = 0; x < 64; x++) src.pixels[y * 64 + x] = ((x + y) & 1) ? 255 : 0;
  for (int f = MP_RESIZE_BILINEAR; f <= MP_RESIZE_LANCZOS3; f++) {
    assert_ok(mp_image_resize(&src, 16, 16, (mp_resize_filter)f, &dst));
    for (int i = 0; i < 16 * 16; i++) assert_in_range(dst.pixels[i], 120, 135);
    mp_image_free(&dst);
  }
  mp_image_free(&src);
}

static double lanczos3(double x) {
  if (fabs(x) >= 3) return 0;
  if (fabs(x) < 1e-12) return 1;
  return 3 * sin(M_PI * x) * sin(M_PI * x / 3) / (M_PI * M_PI * x * x);
}

/* Direct 2-D sum in double precision, weights normalised over the in-image taps of each axis. */
static double reference(const mp_image *s, int c, double cx, double cy, double sx, double sy) {
  double acc = 0, wsum_x = 0, wsum_y = 0;
  for (int i = 0; i < s->width; i++) wsum_x += lanczos3((i + 0.5 - cx) / sx);
  for (int j = 0; j < s->height; j++) wsum_y += lanczos3((j + 0.5 - cy) / sy);
  for (int j = 0; j < s->height; j++)
    for (int i = 0; i < s->width; i++)
      acc += lanczos3((i + 0.5 - cx) / sx) * lanczos3((j + 0.5 - cy) / sy) * s->pixels[(j * s->width + i) * 3 + c];
  return acc / (wsum_x * wsum_y);
}

static void test_lanczos_matches_direct_2d(void **state) {
  (void)state;
  mp_image src, dst;
  assert_ok(mp_image_alloc(&src, 13, 11, 3));
  fill_random(&src, 99);
  const int sizes[][2] = {{29, 23}, {5, 4}, {13, 30}};
  for (size_t s = 0; s < 3; s++) {
    int W = sizes[s][0], H = sizes[s][1];
    assert_ok(mp_image_resize(&src, W, H, MP_RESIZE_LANCZOS3, &dst));
    double scx = 13.0 / W, scy = 11.0 / H;
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++)
        for (int c = 0; c < 3; c++) {
          double r = reference(&src, c, (x + 0.5) * scx, (y + 0.5) * scy, scx > 1 ? scx : 1, scy > 1 ? scy : 1);
          r = r < 0 ? 0 : r > 255 ? 255 : r;
          double got = dst.pixels[(y * W + x) * 3 + c];
          if (fabs(got - r) > 0.51) fail_msg("%dx%d at (%d,%d,%d): %g vs reference %g", W, H, x, y, c, got, r);
        }
    mp_image_free(&dst);
  }
  mp_image_free(&src);
}

static void test_crop_resize(void **state) {
  (void)state;
  mp_image src, a, b;
  assert_ok(mp_image_alloc(&src, 40, 30, 3));
  fill_random(&src, 3);
  mp_rect r = {5, 7, 25, 22};
  assert_ok(mp_image_crop(&src, r, &a));
  assert_int_equal(a.width, 20);
  assert_int_equal(a.height, 15);
  for (int y = 0; y < 15; y++) assert_memory_equal(a.pixels + y * 60, src.pixels + ((y + 7) * 40 + 5) * 3, 60);
  assert_ok(mp_image_crop_resize(&src, (mp_rect){0, 0, 40, 30}, 80, 60, MP_RESIZE_LANCZOS3, &b));
  mp_image full;
  assert_ok(mp_image_resize(&src, 80, 60, MP_RESIZE_LANCZOS3, &full));
  assert_memory_equal(b.pixels, full.pixels, 80 * 60 * 3);
  mp_image_free(&b);
  /* A 2x crop-resize samples the same points as a 2x resize of the whole image. */
  assert_ok(mp_image_crop_resize(&src, (mp_rect){10, 10, 30, 20}, 40, 20, MP_RESIZE_LANCZOS3, &b));
  for (int y = 0; y < 20; y++) assert_memory_equal(b.pixels + y * 120, full.pixels + ((y + 20) * 80 + 20) * 3, 120);
  mp_image_free(&b);
  mp_image_free(&full);
  mp_image_free(&a);
  assert_err_contains(mp_image_crop(&src, (mp_rect){30, 0, 41, 5}, &a), "not inside");
  assert_err_contains(mp_image_resize(&src, 0, 5, MP_RESIZE_BILINEAR, &a), "invalid");
  mp_image_free(&src);
}

static void test_float_planes(void **state) {
  (void)state;
  float src[4] = {0, 1, 1, 0}, dst[16];
  assert_ok(mp_resize_f32(src, 2, 2, 1, dst, 4, 4, MP_RESIZE_BILINEAR));
  assert_float_equal(dst[0], 0.0f, 1e-6);
  assert_float_equal(dst[1], 0.25f, 1e-6);
  assert_float_equal(dst[5], 0.375f, 1e-6); /* 0.75*0.25 + 0.25*0.75 */
  /* Lanczos overshoots on a step and the float path keeps it (masks clamp themselves). */
  float step[8] = {0, 0, 0, 0, 1, 1, 1, 1}, up[32];
  assert_ok(mp_resize_f32(step, 8, 1, 1, up, 32, 1, MP_RESIZE_LANCZOS3));
  float lo = 1, hi = 0;
  for (int i = 0; i < 32; i++) lo = fminf(lo, up[i]), hi = fmaxf(hi, up[i]);
  assert_true(lo < 0 && hi > 1);
}

static void test_fit_crop(void **state) {
  (void)state;
  mp_rect r = mp_center_crop_rect(1000, 500, 512, 512);
  assert_int_equal(r.x0, 250), assert_int_equal(r.x1, 750), assert_int_equal(r.y0, 0), assert_int_equal(r.y1, 500);
  r = mp_center_crop_rect(600, 900, 512, 512);
  assert_int_equal(r.y0, 150), assert_int_equal(r.y1, 750), assert_int_equal(r.x1, 600);
  r = mp_center_crop_rect(512, 768, 512, 768);
  assert_int_equal(r.x0, 0), assert_int_equal(r.y0, 0), assert_int_equal(r.x1, 512), assert_int_equal(r.y1, 768);
  /* A wide image, bright in the middle: the middle third is kept, the dark sides are cut (the filter
   * reads a few pixels past the cut, which are bright too). */
  mp_image src, dst;
  assert_ok(mp_image_alloc(&src, 300, 100, 3));
  for (int y = 0; y < 100; y++)
    for (int x = 0; x < 300; x++) memset(src.pixels + (y * 300 + x) * 3, x < 50 || x >= 250 ? 0 : 200, 3);
  assert_ok(mp_image_fit_crop(&src, 64, 64, &dst));
  assert_int_equal(dst.width, 64), assert_int_equal(dst.height, 64);
  for (int i = 0; i < 64 * 64 * 3; i++) assert_int_equal(dst.pixels[i], 200);
  mp_image_free(&dst);
  mp_image_free(&src);
  int w, h;
  mp_size_round8(3000, 2000, 1024, &w, &h);
  assert_int_equal(w, 1024), assert_int_equal(h, 680);
  mp_size_round8(513, 771, 1024, &w, &h);
  assert_int_equal(w, 512), assert_int_equal(h, 768);
  mp_size_round8(20, 10, 1024, &w, &h);
  assert_int_equal(w, 64), assert_int_equal(h, 64);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_constant_stays_constant), cmocka_unit_test(test_same_size_is_exact_copy),
      cmocka_unit_test(test_bilinear_pixel_centres),  cmocka_unit_test(test_downscale_antialiases),
      cmocka_unit_test(test_lanczos_matches_direct_2d), cmocka_unit_test(test_crop_resize),
      cmocka_unit_test(test_float_planes),            cmocka_unit_test(test_fit_crop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
