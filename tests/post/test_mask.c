/* Mask morphology and the "only masked" geometry, checked against direct definitions and against
 * hand-worked AUTOMATIC1111 get_crop_region/expand_crop_region cases. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "post/mask.h"
#include "testutil.h"

static float at(const mp_mask *m, int x, int y) { return m->data[(size_t)y * m->width + x]; }

static void test_dilate_is_a_disc(void **state) {
  (void)state;
  mp_mask m;
  assert_ok(mp_mask_alloc(&m, 41, 31));
  m.data[15 * 41 + 20] = 1.0f; /* one pixel at (20, 15) */
  m.data[2 * 41 + 1] = 0.5f;   /* a half pixel near the corner */
  assert_ok(mp_mask_dilate(&m, 6));
  for (int y = 0; y < 31; y++)
    for (int x = 0; x < 41; x++) {
      int d1 = (x - 20) * (x - 20) + (y - 15) * (y - 15), d2 = (x - 1) * (x - 1) + (y - 2) * (y - 2);
      float want = d1 <= 36 ? 1.0f : d2 <= 36 ? 0.5f : 0.0f;
      if (at(&m, x, y) != want) fail_msg("(%d,%d): %g, want %g", x, y, at(&m, x, y), want);
    }
  assert_ok(mp_mask_dilate(&m, 0));
  assert_err_contains(mp_mask_dilate(&m, -1), "negative");
  mp_mask_free(&m);
}

static void test_dilate_brute_force_random(void **state) {
  (void)state;
  mp_mask m, ref;
  assert_ok(mp_mask_alloc(&m, 23, 19));
  unsigned s = 5;
  for (int i = 0; i < 23 * 19; i++) {
    s = s * 1664525u + 1013904223u;
    m.data[i] = (s >> 28) == 0 ? (float)(s >> 8 & 0xff) / 255.0f : 0.0f;
  }
  assert_ok(mp_mask_copy(&m, &ref));
  for (int r = 1; r <= 9; r += 4) {
    mp_mask work;
    assert_ok(mp_mask_copy(&ref, &work));
    assert_ok(mp_mask_dilate(&work, r));
    for (int y = 0; y < 19; y++)
      for (int x = 0; x < 23; x++) {
        float want = 0;
        for (int v = 0; v < 19; v++)
          for (int u = 0; u < 23; u++)
            if ((u - x) * (u - x) + (v - y) * (v - y) <= r * r) want = fmaxf(want, at(&ref, u, v));
        assert_true(at(&work, x, y) == want);
      }
    mp_mask_free(&work);
  }
  mp_mask_free(&m);
  mp_mask_free(&ref);
}

static void test_dilate_radius_percent(void **state) {
  (void)state;
  mp_mask m;
  assert_ok(mp_mask_alloc(&m, 300, 300));
  for (int y = 100; y < 300; y++)
    for (int x = 10; x < 60; x++) m.data[y * 300 + x] = 1;
  assert_int_equal(mp_mask_dilate_radius(&m, 4, false, 0.5f), 4);
  assert_int_equal(mp_mask_dilate_radius(&m, 5, true, 0.5f), 10); /* 5 % of the 200 px long side */
  mp_mask_free(&m);
  assert_ok(mp_mask_alloc(&m, 10, 10));
  assert_int_equal(mp_mask_dilate_radius(&m, 5, true, 0.5f), 0);
  mp_mask_free(&m);
}

static void test_blur(void **state) {
  (void)state;
  mp_mask m;
  assert_ok(mp_mask_alloc(&m, 64, 48));
  /* Constant stays constant (mirrored borders, normalised kernel). */
  for (int i = 0; i < 64 * 48; i++) m.data[i] = 0.7f;
  assert_ok(mp_mask_blur(&m, 4));
  for (int i = 0; i < 64 * 48; i++) assert_float_equal(m.data[i], 0.7f, 1e-5);
  /* An impulse becomes a normalised gaussian with the right spread. */
  memset(m.data, 0, 64 * 48 * sizeof(float));
  m.data[24 * 64 + 32] = 1;
  assert_ok(mp_mask_blur(&m, 3));
  double sum = 0, var = 0;
  for (int y = 0; y < 48; y++)
    for (int x = 0; x < 64; x++) sum += at(&m, x, y), var += at(&m, x, y) * ((x - 32.0) * (x - 32.0));
  assert_float_equal(sum, 1.0, 1e-4);
  assert_float_equal(var, 8.85, 0.1); /* sigma² = 9, less the tails cut at 3 sigma */
  assert_true(at(&m, 32, 24) > at(&m, 33, 24) && at(&m, 33, 24) == at(&m, 31, 24));
  /* Mirrored border: a 1 at the edge keeps the mass that would fall outside. */
  memset(m.data, 0, 64 * 48 * sizeof(float));
  for (int y = 0; y < 48; y++) m.data[y * 64] = 1;
  assert_ok(mp_mask_blur(&m, 2));
  double row = 0;
  for (int x = 0; x < 64; x++) row += at(&m, x, 20);
  assert_float_equal(row, 1.0, 1e-4);
  assert_true(at(&m, 0, 20) > at(&m, 1, 20) && at(&m, 1, 20) > at(&m, 2, 20));
  /* Tiny images with a kernel wider than the image stay finite and normalised. */
  mp_mask t;
  assert_ok(mp_mask_alloc(&t, 3, 2));
  for (int i = 0; i < 6; i++) t.data[i] = 1;
  assert_ok(mp_mask_blur(&t, 10));
  for (int i = 0; i < 6; i++) assert_float_equal(t.data[i], 1.0f, 1e-5);
  mp_mask_free(&t);
  mp_mask_free(&m);
}

static void test_bbox(void **state) {
  (void)state;
  mp_mask m;
  mp_rect b;
  assert_ok(mp_mask_alloc(&m, 50, 40));
  assert_false(mp_mask_bbox(&m, 0, &b));
  m.data[5 * 50 + 7] = 0.2f;
  m.data[30 * 50 + 44] = 0.9f;
  assert_true(mp_mask_bbox(&m, 0, &b));
  assert_int_equal(b.x0, 7), assert_int_equal(b.y0, 5), assert_int_equal(b.x1, 45), assert_int_equal(b.y1, 31);
  assert_true(mp_mask_bbox(&m, 0.5f, &b));
  assert_int_equal(b.x0, 44), assert_int_equal(b.y0, 30), assert_int_equal(b.x1, 45), assert_int_equal(b.y1, 31);
  mp_mask_free(&m);
}

static void assert_rect(mp_rect r, int x0, int y0, int x1, int y1) {
  if (r.x0 != x0 || r.y0 != y0 || r.x1 != x1 || r.y1 != y1)
    fail_msg("got (%d,%d)-(%d,%d), want (%d,%d)-(%d,%d)", r.x0, r.y0, r.x1, r.y1, x0, y0, x1, y1);
}

static void test_crop_region_a1111(void **state) {
  (void)state;
  /* The docstring's example: a 128x32 mask region processed at 512x512 grows to 128x128. */
  assert_rect(mp_crop_region((mp_rect){100, 200, 228, 232}, 0, 512, 512, 1024, 1024), 100, 152, 228, 280);
  /* Padding 32, portrait target 512x768, room everywhere: box 100x100 -> 164x164 -> width 109.33.. */
  /* ratio 1 > 2/3 so the height grows: desired 164*1.5 = 246, diff 82 -> y 68-41=27 .. 232+41=273 */
  assert_rect(mp_crop_region((mp_rect){200, 100, 300, 200}, 32, 512, 768, 1000, 1000), 168, 27, 332, 273);
  /* Pokes out at the top: shifted down. */
  assert_rect(mp_crop_region((mp_rect){200, 10, 300, 110}, 32, 512, 768, 1000, 1000), 168, 0, 332, 246);
  /* Pokes out at the bottom: shifted up. */
  assert_rect(mp_crop_region((mp_rect){200, 950, 300, 1000}, 32, 512, 768, 1000, 1000), 168, 754, 332, 1000);
  /* Wider than needed for a landscape target from a tall box; odd difference splits 1 left / 2 right. */
  /* box+pad = (10..20)x(0..21) -> 10x21, target 2:1 -> desired 42, diff 32 -> x 10-16<0 -> shift */
  assert_rect(mp_crop_region((mp_rect){10, 0, 20, 21}, 0, 200, 100, 100, 100), 0, 0, 42, 21);
  /* Larger than the image: clamped, the only case where the ratio is not met. */
  assert_rect(mp_crop_region((mp_rect){0, 40, 100, 60}, 0, 100, 400, 100, 100), 0, 0, 100, 100);
  /* Odd difference: 10x7 to 1:1 -> diff 3 -> 1 above (3//2), 2 below. */
  assert_rect(mp_crop_region((mp_rect){0, 50, 10, 57}, 0, 1, 1, 100, 100), 0, 49, 10, 59);
}

static void test_work_size(void **state) {
  (void)state;
  int w, h;
  mp_crop_work_size((mp_rect){168, 27, 332, 273}, 512, 768, &w, &h);
  assert_int_equal(w, 512), assert_int_equal(h, 768);
  mp_crop_work_size((mp_rect){0, 0, 100, 100}, 512, 768, &w, &h);
  assert_int_equal(w % 8, 0), assert_int_equal(h % 8, 0);
  assert_int_equal(w, h);
  assert_in_range(w * h, 600 * 600, 650 * 650);
}

static void test_paste_masked(void **state) {
  (void)state;
  mp_image dst, orig, patch;
  mp_mask m;
  assert_ok(mp_image_alloc(&dst, 60, 40, 3));
  for (int i = 0; i < 60 * 40 * 3; i++) dst.pixels[i] = (uint8_t)(i * 7);
  assert_ok(mp_image_crop(&dst, (mp_rect){0, 0, 60, 40}, &orig));
  assert_ok(mp_image_alloc(&patch, 40, 30, 3)); /* a 2x larger repaint of the 20x15 crop */
  memset(patch.pixels, 250, 40 * 30 * 3);
  assert_ok(mp_mask_alloc(&m, 60, 40));
  for (int y = 10; y < 20; y++)
    for (int x = 20; x < 30; x++) m.data[y * 60 + x] = 1.0f;
  m.data[12 * 60 + 32] = 0.5f;
  m.data[5 * 60 + 5] = 1.0f; /* outside the rectangle: must stay as it was */
  mp_rect r = {15, 8, 35, 23};
  assert_ok(mp_paste_masked(&dst, &patch, r, &m));
  for (int y = 0; y < 40; y++)
    for (int x = 0; x < 60; x++)
      for (int c = 0; c < 3; c++) {
        int i = (y * 60 + x) * 3 + c;
        float mv = m.data[y * 60 + x];
        bool inside = x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1;
        int want = !inside || mv == 0 ? orig.pixels[i] : (int)lrintf(mv * 250 + (1 - mv) * orig.pixels[i]);
        if (dst.pixels[i] != want) fail_msg("(%d,%d,%d): %d, want %d", x, y, c, dst.pixels[i], want);
      }
  assert_err_contains(mp_paste_masked(&dst, &patch, (mp_rect){50, 0, 61, 10}, &m), "not inside");
  mp_image_free(&dst), mp_image_free(&orig), mp_image_free(&patch), mp_mask_free(&m);
}

static void test_image_round_trip(void **state) {
  (void)state;
  mp_image img, back;
  mp_mask m, small;
  assert_ok(mp_image_alloc(&img, 16, 8, 1));
  for (int i = 0; i < 128; i++) img.pixels[i] = (uint8_t)(i * 2);
  assert_ok(mp_mask_from_image(&img, &m));
  assert_ok(mp_mask_to_image(&m, &back));
  assert_memory_equal(img.pixels, back.pixels, 128);
  assert_ok(mp_mask_resize(&m, 5, 40, MP_RESIZE_LANCZOS3, &small));
  for (int i = 0; i < 200; i++) assert_true(small.data[i] >= 0 && small.data[i] <= 1);
  mp_image_free(&img), mp_image_free(&back), mp_mask_free(&m), mp_mask_free(&small);
}

static void test_face_helpers(void **state) {
  (void)state;
  /* 1.8x about the centre */
  mp_rect r = mp_rect_scale((mp_rect){100, 100, 150, 160}, 1.8, 1000, 1000);
  assert_rect(r, 80, 76, 170, 184);
  /* near the corner: shifted inside */
  r = mp_rect_scale((mp_rect){0, 0, 50, 50}, 1.8, 1000, 1000);
  assert_rect(r, 0, 0, 90, 90);
  r = mp_rect_scale((mp_rect){950, 960, 1000, 1000}, 1.8, 1000, 1000);
  assert_rect(r, 910, 928, 1000, 1000);
  /* larger than the image: clamped */
  r = mp_rect_scale((mp_rect){10, 10, 90, 50}, 1.8, 100, 60);
  assert_rect(r, 0, 0, 100, 60);
  mp_mask m;
  assert_ok(mp_mask_alloc(&m, 20, 10));
  mp_mask_fill_rect(&m, (mp_rect){-5, 8, 3, 30}, 0.5f);
  assert_true(mp_mask_at(&m, 0, 9) == 0.5f && mp_mask_at(&m, 2, 8) == 0.5f);
  assert_true(mp_mask_at(&m, 3, 8) == 0.0f && mp_mask_at(&m, 0, 7) == 0.0f);
  assert_true(mp_mask_at(&m, -1, 9) == 0.0f && mp_mask_at(&m, 0, 10) == 0.0f);
  mp_mask_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dilate_is_a_disc),   cmocka_unit_test(test_dilate_brute_force_random),
      cmocka_unit_test(test_dilate_radius_percent), cmocka_unit_test(test_blur),
      cmocka_unit_test(test_bbox),               cmocka_unit_test(test_crop_region_a1111),
      cmocka_unit_test(test_work_size),          cmocka_unit_test(test_paste_masked),
      cmocka_unit_test(test_image_round_trip),   cmocka_unit_test(test_face_helpers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
