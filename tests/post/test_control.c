/* ControlNet preprocessors: canny equals OpenCV's cv2.Canny(img, 100, 200) exactly on the fixtures that
 * tests/post/make_canny_fixture.py made with Debian's python3-opencv; the OpenPose drawing against a
 * hand-checked skeleton; the type names and their errors. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "post/control.h"
#include "testutil.h"

static void read_fixture(const char *name, int channels, mp_image *img) {
  const char *src = getenv("MPASS_SOURCE_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/tests/post/data/%s", src ? src : ".", name);
  assert_ok(mp_image_read(path, channels, img));
}

static void canny_case(const char *stem, int channels) {
  char in[256], ref[256];
  snprintf(in, sizeof in, "%s.png", stem);
  snprintf(ref, sizeof ref, "%s_edges.png", stem);
  mp_image img, want, got;
  read_fixture(in, channels, &img);
  read_fixture(ref, 1, &want);
  assert_ok(mp_canny(&img, MP_CANNY_LOW, MP_CANNY_HIGH, 1, &got));
  assert_int_equal(got.width, want.width);
  assert_int_equal(got.height, want.height);
  size_t n = (size_t)got.width * got.height, differ = 0, edges = 0;
  for (size_t k = 0; k < n; k++) differ += got.pixels[k] != want.pixels[k], edges += want.pixels[k] == 255;
  print_message("%s: %zu edge pixels, %zu differ\n", stem, edges, differ);
  assert_true(edges > n / 100); /* the fixture has edges to get right */
  assert_int_equal(differ, 0);
  /* the 3-channel hint is the same map in every channel; swapped thresholds are the same thresholds */
  mp_image rgb;
  assert_ok(mp_canny(&img, MP_CANNY_HIGH, MP_CANNY_LOW, 3, &rgb));
  for (size_t k = 0; k < n; k++)
    if (rgb.pixels[3 * k] != want.pixels[k] || rgb.pixels[3 * k + 1] != want.pixels[k] || rgb.pixels[3 * k + 2] != want.pixels[k])
      fail_msg("%s: 3-channel map differs at pixel %zu", stem, k);
  mp_image_free(&img), mp_image_free(&want), mp_image_free(&got), mp_image_free(&rgb);
}

static void test_canny_matches_opencv(void **state) {
  (void)state;
  canny_case("canny_blobs", 3);
  canny_case("canny_synth", 3);
  canny_case("canny_gray", 1);
  mp_image two = {.width = 4, .height = 4, .channels = 2};
  mp_image out;
  assert_err_contains(mp_canny(&two, 100, 200, 1, &out), "1- or 3-channel");
}

static void test_control_types(void **state) {
  (void)state;
  mp_control_type t;
  assert_ok(mp_control_type_parse("canny", &t));
  assert_int_equal(t, MP_CONTROL_CANNY);
  assert_ok(mp_control_type_parse("openpose", &t));
  assert_int_equal(t, MP_CONTROL_POSE);
  assert_ok(mp_control_type_parse("tile", &t));
  assert_string_equal(mp_control_type_name(t), "tile");
  assert_err_contains(mp_control_type_parse("depth", &t), "not available: needs the depth annotator model");
  assert_err_contains(mp_control_type_parse("lineart", &t), "available: canny, pose, tile");
  assert_err_contains(mp_control_type_parse("bogus", &t), "unknown control type");
}

/* A standing figure, hand-placed on a 128x128 canvas (keypoints at least 10 px apart). */
static const float figure[MP_OPENPOSE_KEYPOINTS][2] = {
    {64, 20},  /* 0 nose */
    {64, 40},  /* 1 neck */
    {48, 40},  /* 2 right shoulder (image left: the person faces us) */
    {40, 60},  /* 3 right elbow */
    {36, 80},  /* 4 right wrist */
    {80, 40},  /* 5 left shoulder */
    {88, 60},  /* 6 left elbow */
    {92, 80},  /* 7 left wrist */
    {54, 80},  /* 8 right hip */
    {52, 100}, /* 9 right knee */
    {50, 120}, /* 10 right ankle */
    {74, 80},  /* 11 left hip */
    {76, 100}, /* 12 left knee */
    {78, 120}, /* 13 left ankle */
    {58, 14},  /* 14 right eye */
    {70, 14},  /* 15 left eye */
    {48, 18},  /* 16 right ear */
    {80, 18},  /* 17 left ear */
};

static const uint8_t *px(const mp_image *img, int x, int y) { return img->pixels + ((size_t)y * img->width + x) * 3; }

static void expect_rgb(const mp_image *img, int x, int y, int r, int g, int b) {
  const uint8_t *p = px(img, x, y);
  if (p[0] != r || p[1] != g || p[2] != b) fail_msg("pixel (%d, %d) is (%d, %d, %d), expected (%d, %d, %d)", x, y, p[0], p[1], p[2], r, g, b);
}

static void test_openpose_drawing(void **state) {
  (void)state;
  mp_openpose_skeleton s = {0};
  for (int k = 0; k < MP_OPENPOSE_KEYPOINTS; k++) s.x[k] = figure[k][0], s.y[k] = figure[k][1], s.present[k] = true;
  s.present[17] = false; /* the left ear is hidden: no dot, no limb 16 (left eye -> left ear) */
  mp_image img;
  assert_ok(mp_openpose_draw(&s, 1, 128, 128, &img));
  /* keypoints: full colour at their centres (OpenPose's colour k for keypoint k) */
  expect_rgb(&img, 64, 20, 255, 0, 0);    /* nose: red */
  expect_rgb(&img, 64, 40, 255, 85, 0);   /* neck: orange */
  expect_rgb(&img, 48, 40, 255, 170, 0);  /* right shoulder */
  expect_rgb(&img, 36, 80, 170, 255, 0);  /* right wrist */
  expect_rgb(&img, 54, 80, 0, 255, 170);  /* right hip */
  expect_rgb(&img, 78, 120, 85, 0, 255);  /* left ankle: violet */
  expect_rgb(&img, 80, 18, 0, 0, 0);      /* the hidden left ear: nothing */
  expect_rgb(&img, 84, 18 + 4, 0, 0, 0);
  /* limbs at 60 % of their colour, away from the dots: limb 0 neck -> right shoulder is red */
  expect_rgb(&img, 56, 40, 153, 0, 0);
  expect_rgb(&img, 64, 60, 0, 0, 0);                 /* between the arms and the hips: empty */
  expect_rgb(&img, 52, 110, 0, 153, 102);            /* limb 8 right knee -> ankle: (0,255,170) x 0.6 */
  expect_rgb(&img, 64, 30, 0, 0, 153);               /* limb 12 neck -> nose: (0,0,255) x 0.6 */
  expect_rgb(&img, 44, 50, 153, 102, 0);             /* limb 2 right shoulder -> elbow: (255,170,0) x 0.6 */
  /* limb thickness: 4 px either side of the axis, not 6 */
  expect_rgb(&img, 64, 70, 0, 0, 0); /* 7 px from both neck -> hip limbs */
  expect_rgb(&img, 68, 30, 0, 0, 153);
  expect_rgb(&img, 70, 30, 0, 0, 0);
  expect_rgb(&img, 0, 0, 0, 0, 0);
  const char *dump = getenv("MPASS_TEST_DUMP"); /* for looking at it: MPASS_TEST_DUMP=/tmp/pose.png */
  if (dump) assert_ok(mp_image_write_png(dump, &img, NULL, NULL));
  mp_image_free(&img);
}

static void test_openpose_from_mediapipe(void **state) {
  (void)state;
  float lm[MP_MEDIAPIPE_LANDMARKS][3];
  for (int i = 0; i < MP_MEDIAPIPE_LANDMARKS; i++) lm[i][0] = (float)i, lm[i][1] = (float)(2 * i), lm[i][2] = 0.9f;
  lm[27][2] = 0.2f;       /* left ankle barely visible */
  lm[28][0] = 500.0f;     /* right ankle outside the image */
  mp_openpose_skeleton s;
  mp_openpose_from_mediapipe(lm, 0.5f, 100, 100, &s);
  assert_true(s.x[0] == 0.0f && s.present[0]);                 /* nose */
  assert_true(s.x[1] == 11.5f && s.y[1] == 23.0f && s.present[1]); /* neck: between shoulders 11 and 12 */
  assert_true(s.x[2] == 12.0f && s.x[5] == 11.0f);              /* right shoulder = MediaPipe 12, left = 11 */
  assert_true(s.x[4] == 16.0f && s.x[7] == 15.0f);              /* wrists */
  assert_true(s.x[8] == 24.0f && s.x[11] == 23.0f);             /* hips */
  assert_true(s.x[14] == 5.0f && s.x[15] == 2.0f && s.x[16] == 8.0f && s.x[17] == 7.0f); /* eyes, ears */
  assert_false(s.present[13]); /* low visibility */
  assert_false(s.present[10]); /* outside */
  assert_true(s.present[12]);
}

/* The built-in layout: n figures side by side, left to right, whole and inside the image. */
static void test_openpose_layout(void **state) {
  (void)state;
  mp_openpose_skeleton s[4];
  mp_openpose_layout(4, 512, 256, s);
  for (int i = 0; i < 4; i++) {
    const float slot_lo = 128.0f * i, slot_hi = 128.0f * (i + 1);
    for (int k = 0; k < MP_OPENPOSE_KEYPOINTS; k++) {
      assert_true(s[i].present[k]);
      if (!(s[i].x[k] > slot_lo && s[i].x[k] < slot_hi)) fail_msg("figure %d keypoint %d at x %.1f outside its slot", i, k, s[i].x[k]);
      assert_true(s[i].y[k] > 0 && s[i].y[k] < 256);
    }
    assert_true(s[i].x[1] == 64.0f + 128.0f * i);   /* the neck on the slot's centre line */
    assert_true(s[i].y[0] < s[i].y[1] && s[i].y[1] < s[i].y[8] && s[i].y[8] < s[i].y[10]); /* head, neck, hip, ankle */
    assert_true(s[i].x[2] < s[i].x[5]);                /* facing us: the right shoulder on the image's left */
  }
  assert_true(s[0].y[10] > 256 * 0.9f);               /* feet near the bottom */
  assert_true(s[2].y[4] < s[2].y[2]);                 /* the third pose raises its right arm */
  /* one figure on a wide image keeps body proportions: as tall as 90 % of the image */
  mp_openpose_layout(1, 512, 128, s);
  assert_true(s[0].y[10] - s[0].y[0] > 0.8f * 128 * 0.88f);
  mp_image img;
  assert_ok(mp_openpose_draw(s, 1, 512, 128, &img));
  expect_rgb(&img, (int)s[0].x[1], (int)s[0].y[1], 255, 85, 0); /* the neck dot */
  mp_image_free(&img);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_canny_matches_opencv),
      cmocka_unit_test(test_control_types),
      cmocka_unit_test(test_openpose_drawing),
      cmocka_unit_test(test_openpose_from_mediapipe),
      cmocka_unit_test(test_openpose_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
