/* Face detection full range (dense and sparse files) on the whole group photos: the faces of the
 * manifests' expected_postprocessed (image coordinates after letterbox removal). The JPEG is
 * decoded here by libjpeg-turbo rather than Pillow and resampled by our code, so positions are
 * compared to 1% of the image and scores to 0.02. Also the anchors against the golden ones. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/image.h"
#include "io/weights.h"
#include "models/face.h"
#include "testutil.h"

static cJSON *read_json(const char *rel) {
  char *path = test_shared_path(rel);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = 0;
  fclose(f);
  cJSON *j = cJSON_Parse(buf);
  assert_non_null(j);
  free(buf);
  free(path);
  return j;
}

static void check_model(const char *file, const char *manifest) {
  char path[4096];
  const char *src = getenv("MPASS_SOURCE_DIR");
  snprintf(path, sizeof path, "%s/models/vision/%s", src ? src : ".", file);
  mp_face_detector fd;
  mp_error *e = mp_face_detector_load(path, &fd);
  if (e) fail_msg("%s (run scripts/fetch-models.sh)", mp_error_message(e));
  cJSON *j = read_json(manifest);
  const char *cases[] = {"sample1", "sample6"};
  for (int c = 0; c < 2; c++) {
    char rel[256];
    snprintf(rel, sizeof rel, "golden/vision/images/%s.jpg", cases[c]);
    char *img_path = test_shared_path(rel);
    mp_image img = {0};
    assert_ok(mp_image_read(img_path, 3, &img));
    mp_detection d[16];
    int n = 0;
    assert_ok(mp_face_detect(&fd, NULL, &img, 0, 0, (float)img.width, (float)img.height, d, 16, &n));
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "expected_postprocessed"), cases[c]),
        "after_letterbox_removal_image_coords");
    int ne = cJSON_GetArraySize(ex);
    if (n != ne) fail_msg("%s %s: %d faces, expected %d", file, cases[c], n, ne);
    for (int i = 0; i < ne; i++) { /* match each expected face to the nearest found one */
      const cJSON *x = cJSON_GetArrayItem(ex, i);
      double ex0 = cJSON_GetObjectItem(x, "xmin")->valuedouble * img.width, ey0 = cJSON_GetObjectItem(x, "ymin")->valuedouble * img.height;
      double ew = cJSON_GetObjectItem(x, "width")->valuedouble * img.width, eh = cJSON_GetObjectItem(x, "height")->valuedouble * img.height;
      int best = -1;
      double bd = INFINITY;
      for (int k = 0; k < n; k++) {
        double dd = hypot(d[k].xmin - ex0, d[k].ymin - ey0);
        if (dd < bd) bd = dd, best = k;
      }
      double tol = 0.01 * img.width;
      if (bd > tol || fabs(d[best].w - ew) > tol || fabs(d[best].h - eh) > tol ||
          fabs(d[best].score - cJSON_GetObjectItem(x, "score")->valuedouble) > 0.02)
        fail_msg("%s %s face %d: found (%.1f,%.1f %.1fx%.1f s=%.3f), expected (%.1f,%.1f %.1fx%.1f s=%.3f)", file, cases[c],
                 i, d[best].xmin, d[best].ymin, d[best].w, d[best].h, d[best].score, ex0, ey0, ew, eh,
                 cJSON_GetObjectItem(x, "score")->valuedouble);
    }
    mp_image_free(&img);
    free(img_path);
  }
  /* the anchors equal the golden tensor */
  snprintf(path, sizeof path, "%s", manifest);
  strcpy(strstr(path, ".json"), ".safetensors");
  char *st = test_shared_path(path);
  mp_weights *w = NULL;
  assert_ok(mp_weights_open(st, &w));
  const mp_weight *an = mp_weights_find(w, "anchors");
  assert_non_null(an);
  mp_tensor a32;
  assert_ok(mp_tensor_to_f32(&an->t, &a32));
  assert_int_equal(mp_tensor_numel(&a32), fd.n_anchors * 4);
  for (int i = 0; i < fd.n_anchors * 4; i++) assert_true(fabsf(((float *)a32.data)[i] - fd.anchors[i]) < 1e-6f);
  mp_tensor_free(&a32);
  mp_weights_close(w);
  free(st);
  cJSON_Delete(j);
  mp_face_detector_free(&fd);
}

static void test_dense(void **state) {
  (void)state;
  check_model("face_detection_full_range.tflite", "golden/vision/face_detection_full_range.json");
}

static void test_sparse(void **state) {
  (void)state;
  check_model("face_detection_full_range_sparse.tflite", "golden/vision/face_detection_full_range_sparse.json");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_dense), cmocka_unit_test(test_sparse)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
