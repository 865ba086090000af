/* End-to-end person finding on the group photos of ../shared/golden/vision/images: every person
 * found (sample1: 3, sample6: 4; the pose detector alone finds 1 and 3), ordered left to right,
 * each mask's box holding what found it (pose detector face box or face) and plausibly a body,
 * masks of different persons not overlapping, every face inside its own person's mask. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/image.h"
#include "models/person.h"
#include "testutil.h"

static void models_dir(char *buf, size_t cap) {
  const char *src = getenv("MPASS_SOURCE_DIR");
  snprintf(buf, cap, "%s/models", src ? src : ".");
}

static void check_photo(const char *rel, int expected) {
  char *path = test_shared_path(rel), dir[4096];
  models_dir(dir, sizeof dir);
  mp_pool *pool = NULL;
  assert_ok(mp_pool_create(2, &pool));
  mp_person_finder pf;
  mp_error *e = mp_person_finder_load(dir, &pf);
  if (e) fail_msg("%s (run scripts/fetch-models.sh)", mp_error_message(e));
  mp_image img = {0};
  assert_ok(mp_image_read(path, 3, &img));
  mp_person_result r;
  assert_ok(mp_persons_find(&pf, pool, &img, &r));
  if (r.n != expected) fail_msg("%s: %d persons found, expected %d", rel, r.n, expected);
  size_t npix = (size_t)img.width * img.height;
  for (int i = 0; i < r.n; i++) {
    const mp_person *p = &r.persons[i];
    if (i > 0) assert_true(p->x0 + p->x1 >= r.persons[i - 1].x0 + r.persons[i - 1].x1); /* left to right */
    /* the box of the mask holds the centre of what found the person */
    float cx = p->det.xmin + p->det.w / 2, cy = p->det.ymin + p->det.h / 2;
    if (!(cx >= p->x0 && cx <= p->x1 && cy >= p->y0 && cy <= p->y1))
      fail_msg("%s person %d: detector box centre (%.0f,%.0f) outside mask box [%.0f,%.0f,%.0f,%.0f]", rel, i + 1, cx, cy,
               p->x0, p->y0, p->x1, p->y1);
    /* a body, not a face: taller than two face heights, wider than the face box */
    float face_h = p->source == MP_PERSON_FROM_POSE ? p->det.h / 2 : p->det.h;
    assert_true(p->y1 - p->y0 > 2 * face_h);
    assert_true(p->x1 - p->x0 > face_h);
    /* barely overlapping: pixels above 0.5 in two masks */
    for (int j = i + 1; j < r.n; j++) {
      size_t both = 0, a = 0;
      for (size_t k = 0; k < npix; k++) {
        both += p->mask[k] > 0.5f && r.persons[j].mask[k] > 0.5f;
        a += p->mask[k] > 0.5f;
      }
      if (both > a / 100) fail_msg("%s: persons %d and %d overlap on %zu pixels", rel, i + 1, j + 1, both);
    }
  }
  /* each face inside a person's mask, one face per person on these photos */
  assert_true(r.n_faces >= expected);
  int faces_of[MP_MAX_FOUND_PERSONS] = {0};
  for (int f = 0; f < r.n_faces; f++) {
    if (r.face_person[f] < 0) fail_msg("%s: face %d lies in no person's mask", rel, f);
    faces_of[r.face_person[f]]++;
  }
  for (int i = 0; i < r.n; i++)
    if (faces_of[i] != 1) fail_msg("%s: person %d holds %d faces", rel, i + 1, faces_of[i]);
  /* the pose landmarks are in image pixels: each person's nose (landmark 0) inside their face box
   * (grown by half its size), both shoulders (11, 12) below it and inside the person's box */
  for (int f = 0; f < r.n_faces; f++) {
    const mp_person *p = &r.persons[r.face_person[f]];
    const mp_detection *d = &r.faces[f];
    float nx = p->landmarks[0][0], ny = p->landmarks[0][1];
    if (!(nx > d->xmin - d->w / 2 && nx < d->xmin + 1.5f * d->w && ny > d->ymin - d->h / 2 && ny < d->ymin + 1.5f * d->h))
      fail_msg("%s face %d: the nose landmark (%.0f,%.0f) is not on the face [%.0f,%.0f %.0fx%.0f]", rel, f, nx, ny, d->xmin,
               d->ymin, d->w, d->h);
    for (int k = 11; k <= 12; k++) {
      float sx = p->landmarks[k][0], sy = p->landmarks[k][1];
      if (!(sy > ny && sx >= p->x0 - d->w && sx <= p->x1 + d->w)) fail_msg("%s face %d: shoulder %d at (%.0f,%.0f)", rel, f, k, sx, sy);
      assert_true(p->landmarks[k][2] > 0.5f); /* visible in these photos */
    }
  }
  mp_person_result_free(&r);
  mp_image_free(&img);
  mp_person_finder_free(&pf);
  mp_pool_destroy(pool);
  free(path);
}

static void test_sample1_three_persons(void **state) {
  (void)state;
  check_photo("golden/vision/images/sample1.jpg", 3);
}

static void test_sample6_four_persons(void **state) {
  (void)state;
  check_photo("golden/vision/images/sample6.jpg", 4);
}

static void test_pose_anchors(void **state) {
  (void)state;
  float a[2254 * 4];
  assert_int_equal(mp_pose_anchors(a, 2254), 2254);
  /* first anchor of the stride-8 map, last of the merged stride-32 maps (manifest: 28x28x2, 14x14x2, 7x7x6) */
  assert_true(fabsf(a[0] - 0.5f / 28) < 1e-6f && fabsf(a[1] - 0.5f / 28) < 1e-6f && a[2] == 1 && a[3] == 1);
  assert_true(fabsf(a[4 * 2253] - 6.5f / 7) < 1e-6f && fabsf(a[4 * 2253 + 1] - 6.5f / 7) < 1e-6f);
  assert_true(fabsf(a[4 * 1568] - 0.5f / 14) < 1e-6f); /* the stride-16 map starts after 1568 anchors */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pose_anchors),
      cmocka_unit_test(test_sample1_three_persons),
      cmocka_unit_test(test_sample6_four_persons),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
