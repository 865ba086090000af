/* Where the detection and upscaling models are found (models/model_files.h): the --models folder
 * first, then the installed data folder, then the source tree; the error names every place. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "models/model_files.h"
#include "testutil.h"

static void test_models_dir_first(void **state) {
  (void)state;
  char *dir = test_tmpdir(), p[4200];
  snprintf(p, sizeof p, "%s/vision", dir);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/vision/selfie_segmentation.tflite", dir);
  test_write_file(p, "x", 1);
  char *found = NULL;
  assert_ok(mp_find_model_file(dir, "vision", "selfie_segmentation.tflite", &found));
  assert_string_equal(found, p);
  free(found);
  free(dir);
}

static void test_not_found_names_every_place(void **state) {
  (void)state;
  char *found = (char *)"unset";
  mp_error *e = mp_find_model_file("/nonexistent-models", "upscale", "no-such-model.param", &found);
  assert_non_null(e);
  assert_null(found);
  const char *msg = mp_error_message(e);
  const char *want[] = {"upscale/no-such-model.param not found", "/nonexistent-models/upscale/no-such-model.param",
                        MPASS_INSTALL_DATA_DIR "/upscale/no-such-model.param", "share/mpass/upscale/no-such-model.param",
                        MPASS_SOURCE_DIR "/models/upscale/no-such-model.param", "fetch-models.sh"};
  for (size_t i = 0; i < sizeof want / sizeof *want; i++)
    if (!strstr(msg, want[i])) fail_msg("'%s' missing from: %s", want[i], msg);
  mp_error_free(e);
}

/* A --models folder without vision/ (checkpoints kept elsewhere) still finds the fetched models next
 * to the source tree: scripts/fetch-models.sh runs before the suite (scripts/test.sh). */
static void test_falls_back_to_the_source_tree(void **state) {
  (void)state;
  char *dir = test_tmpdir(), *found = NULL;
  assert_ok(mp_find_model_file(dir, "vision", "selfie_segmentation.tflite", &found));
  char want[4200];
  snprintf(want, sizeof want, "%s/models/vision/selfie_segmentation.tflite", MPASS_SOURCE_DIR);
  /* the installed data folder comes first when mpass is installed there too */
  char installed[4200];
  snprintf(installed, sizeof installed, "%s/vision/selfie_segmentation.tflite", MPASS_INSTALL_DATA_DIR);
  if (strcmp(found, installed) != 0) assert_string_equal(found, want);
  free(found);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_models_dir_first),
      cmocka_unit_test(test_not_found_names_every_place),
      cmocka_unit_test(test_falls_back_to_the_source_tree),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
