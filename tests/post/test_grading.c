/* Colour grading: the identity table is exact, each preset moves colours the way its name promises,
 * a grey ramp comes through smooth and monotone, and the table reproduces the formula. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "post/grading.h"
#include "post/resize.h"
#include "testutil.h"

static unsigned lcg(unsigned *s) { return *s = *s * 1664525u + 1013904223u; }

static void test_parse_names(void **state) {
  (void)state;
  mp_grade_preset p;
  assert_ok(mp_grade_preset_parse("Film Velvia", &p));
  assert_int_equal(p, MP_GRADE_VELVIA);
  assert_ok(mp_grade_preset_parse("film portra", &p));
  assert_int_equal(p, MP_GRADE_PORTRA);
  assert_ok(mp_grade_preset_parse("Ektar", &p));
  assert_int_equal(p, MP_GRADE_EKTAR);
  assert_ok(mp_grade_preset_parse("", &p));
  assert_int_equal(p, MP_GRADE_NONE);
  assert_err_contains(mp_grade_preset_parse("Kodachrome", &p), "'Film Velvia', 'Film Portra' or 'Ektar'");
  assert_string_equal(mp_grade_preset_name(MP_GRADE_PORTRA), "Film Portra");
}

static void test_identity_is_exact(void **state) {
  (void)state;
  mp_lut3d lut;
  assert_ok(mp_lut3d_build(&lut, MP_GRADE_NONE, MP_LUT_SIZE));
  /* Every level on each axis with the others varied, plus 300 000 random colours. */
  mp_image img;
  assert_ok(mp_image_alloc(&img, 768, 392, 3)); /* row 0: the sweeps; the rest random */
  uint8_t *p = img.pixels;
  unsigned s = 1;
  for (int v = 0; v < 256; v++) {
    p[0] = (uint8_t)v, p[1] = (uint8_t)(255 - v), p[2] = (uint8_t)(v * 7), p += 3;
    p[0] = (uint8_t)(v * 3), p[1] = (uint8_t)v, p[2] = (uint8_t)(255 - v), p += 3;
    p[0] = (uint8_t)(v * 5), p[1] = (uint8_t)(v * 11), p[2] = (uint8_t)v, p += 3;
  }
  for (int i = 0; i < 768 * 391 * 3; i++) *p++ = (uint8_t)(lcg(&s) >> 24);
  size_t n = (size_t)img.width * img.height * 3;
  uint8_t *copy = malloc(n);
  memcpy(copy, img.pixels, n);
  assert_ok(mp_lut3d_apply(&lut, &img));
  assert_memory_equal(copy, img.pixels, n);
  free(copy);
  mp_image_free(&img);
  mp_lut3d_free(&lut);
}


static double hsv_sat(const uint8_t *c) {
  int mx = c[0] > c[1] ? c[0] : c[1], mn = c[0] < c[1] ? c[0] : c[1];
  mx = c[2] > mx ? c[2] : mx, mn = c[2] < mn ? c[2] : mn;
  return mx ? (double)(mx - mn) / mx : 0;
}

/* Mean HSV saturation and mean R−B over a fixed random set of mid-range colours. */
static void measure(const mp_image *img, double *sat, double *warmth) {
  *sat = *warmth = 0;
  for (int i = 0; i < img->width; i++) {
    *sat += hsv_sat(img->pixels + 3 * i);
    *warmth += (double)img->pixels[3 * i] - img->pixels[3 * i + 2];
  }
  *sat /= img->width, *warmth /= img->width;
}

static void random_colors(mp_image *img, int n) {
  assert_ok(mp_image_alloc(img, n, 1, 3));
  unsigned s = 77;
  for (int i = 0; i < 3 * n; i++) img->pixels[i] = (uint8_t)(40 + (lcg(&s) >> 24) * 175 / 255);
}

static void graded(mp_grade_preset p, const uint8_t in[3], uint8_t out[3]) {
  mp_image img;
  assert_ok(mp_image_alloc(&img, 1, 1, 3));
  memcpy(img.pixels, in, 3);
  assert_ok(mp_grade_apply(&img, p));
  memcpy(out, img.pixels, 3);
  mp_image_free(&img);
}

static double chroma(const uint8_t *c) {
  int mx = c[0] > c[1] ? c[0] : c[1], mn = c[0] < c[1] ? c[0] : c[1];
  return (c[2] > mx ? c[2] : mx) - (c[2] < mn ? c[2] : mn);
}

static void test_presets_move_colours_as_named(void **state) {
  (void)state;
  mp_image base, img;
  random_colors(&base, 5000);
  double s0, w0, s, w;
  measure(&base, &s0, &w0);

  /* Velvia: more saturated; dark neutrals turn blue. */
  assert_ok(mp_image_crop(&base, (mp_rect){0, 0, 5000, 1}, &img));
  assert_ok(mp_grade_apply(&img, MP_GRADE_VELVIA));
  measure(&img, &s, &w);
  assert_true(s > s0 * 1.15);
  uint8_t dark[3] = {70, 70, 70}, o[3];
  graded(MP_GRADE_VELVIA, dark, o);
  assert_true(o[2] > o[0] + 4);
  uint8_t light[3] = {230, 230, 230};
  graded(MP_GRADE_VELVIA, light, o);
  assert_true(abs(o[2] - o[0]) <= 3); /* the cool cast is in the shadows, not the highlights */
  mp_image_free(&img);

  /* Portra: warmer (R−B up, grey turns warm), softer contrast (dark greys lifted, light greys lowered). */
  assert_ok(mp_image_crop(&base, (mp_rect){0, 0, 5000, 1}, &img));
  assert_ok(mp_grade_apply(&img, MP_GRADE_PORTRA));
  measure(&img, &s, &w);
  assert_true(w > w0 + 10);
  uint8_t grey[3] = {128, 128, 128};
  graded(MP_GRADE_PORTRA, grey, o);
  assert_true(o[0] > o[2] + 10);
  uint8_t g1[3] = {50, 50, 50}, g2[3] = {205, 205, 205}, o1[3], o2[3];
  graded(MP_GRADE_PORTRA, g1, o1);
  graded(MP_GRADE_PORTRA, g2, o2);
  assert_true(o1[1] > 50 && o2[1] < 205);
  mp_image_free(&img);

  /* Ektar: vivid overall, and reds gain more chroma than blues do. */
  assert_ok(mp_image_crop(&base, (mp_rect){0, 0, 5000, 1}, &img));
  assert_ok(mp_grade_apply(&img, MP_GRADE_EKTAR));
  measure(&img, &s, &w);
  assert_true(s > s0 * 1.1);
  uint8_t red[3] = {170, 70, 60}, blue[3] = {60, 70, 170}, orr[3], ob[3];
  graded(MP_GRADE_EKTAR, red, orr);
  graded(MP_GRADE_EKTAR, blue, ob);
  double red_gain = chroma(orr) / chroma(red), blue_gain = chroma(ob) / chroma(blue);
  assert_true(red_gain > blue_gain + 0.1);
  /* Compared with Velvia on the same red, Ektar's red is the more saturated. */
  graded(MP_GRADE_VELVIA, red, o);
  assert_true(hsv_sat(orr) > hsv_sat(o));
  mp_image_free(&img);
  mp_image_free(&base);
}

static void test_grey_ramp_smooth_no_clipping(void **state) {
  (void)state;
  for (int p = MP_GRADE_VELVIA; p <= MP_GRADE_EKTAR; p++) {
    mp_image img;
    assert_ok(mp_image_alloc(&img, 256, 1, 3));
    for (int v = 0; v < 256; v++) memset(img.pixels + 3 * v, v, 3);
    assert_ok(mp_grade_apply(&img, (mp_grade_preset)p));
    int at0 = 0, at255 = 0;
    for (int v = 0; v < 256; v++) {
      const uint8_t *c = img.pixels + 3 * v;
      for (int k = 0; k < 3; k++) {
        at0 += c[k] == 0, at255 += c[k] == 255;
        if (v > 0) {
          int d = c[k] - c[k - 3];
          /* monotone per channel, and no jumps (the steepest curve slope here is below 2) */
          if (d < 0 || d > 3) fail_msg("%s: level %d channel %d steps by %d", mp_grade_preset_name(p), v, k, d);
        }
      }
      /* A ramp stays near-neutral: tints, not colour casts. */
      int mx = c[0] > c[1] ? c[0] : c[1], mn = c[0] < c[1] ? c[0] : c[1];
      mx = c[2] > mx ? c[2] : mx, mn = c[2] < mn ? c[2] : mn;
      if (mx - mn > 20) fail_msg("%s: grey %d becomes %d,%d,%d", mp_grade_preset_name(p), v, c[0], c[1], c[2]);
    }
    /* Only the very ends may touch 0 / 255 (a couple of levels per channel, no plateaus). */
    if (at0 > 9 || at255 > 9) fail_msg("%s: %d zeros, %d 255s on a grey ramp", mp_grade_preset_name(p), at0, at255);
    mp_image_free(&img);
  }
}

static void test_table_matches_formula(void **state) {
  (void)state;
  /* Between table nodes trilinear interpolation stays within about two levels of the exact formula
   * (the formulas are smooth; measured worst 2.0 over 5M random colours). */
  unsigned s = 5;
  for (int p = MP_GRADE_VELVIA; p <= MP_GRADE_EKTAR; p++) {
    mp_lut3d lut;
    assert_ok(mp_lut3d_build(&lut, (mp_grade_preset)p, MP_LUT_SIZE));
    mp_image img;
    assert_ok(mp_image_alloc(&img, 200, 100, 3));
    for (int i = 0; i < 60000; i++) img.pixels[i] = (uint8_t)(lcg(&s) >> 24);
    uint8_t *orig = malloc(60000);
    memcpy(orig, img.pixels, 60000);
    assert_ok(mp_lut3d_apply(&lut, &img));
    double worst = 0;
    for (int i = 0; i < 20000; i++) {
      float in[3] = {orig[3 * i] / 255.0f, orig[3 * i + 1] / 255.0f, orig[3 * i + 2] / 255.0f}, out[3];
      mp_grade_color((mp_grade_preset)p, in, out);
      for (int k = 0; k < 3; k++) worst = fmax(worst, fabs(out[k] * 255.0 - img.pixels[3 * i + k]));
    }
    if (worst > 2.5) fail_msg("%s: LUT differs from the formula by %.2f levels", mp_grade_preset_name(p), worst);
    free(orig);
    mp_image_free(&img);
    mp_lut3d_free(&lut);
  }
  mp_image g;
  assert_ok(mp_image_alloc(&g, 2, 2, 1));
  assert_err_contains(mp_grade_apply(&g, MP_GRADE_EKTAR), "RGB");
  mp_image_free(&g);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_names),
      cmocka_unit_test(test_identity_is_exact),
      cmocka_unit_test(test_presets_move_colours_as_named),
      cmocka_unit_test(test_grey_ramp_smooth_no_clipping),
      cmocka_unit_test(test_table_matches_formula),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
