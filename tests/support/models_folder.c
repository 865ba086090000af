#include "models_folder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "models/sd_layout.h"
#include "testutil.h"

static const char *source_dir(void) {
  const char *src = getenv("MPASS_SOURCE_DIR");
  return src ? src : ".";
}

char *test_vision_path(const char *rel) {
  char p[1024];
  snprintf(p, sizeof p, "%s/models/vision/%s", source_dir(), rel);
  return strdup(p);
}

char *test_models_folder(const char *dir) {
  char p[1024], q[1024];
  snprintf(q, sizeof q, "%s/models/vision", source_dir());
  if (access(q, R_OK)) fail_msg("%s is missing: run scripts/fetch-models.sh", q);
  snprintf(p, sizeof p, "%s/models", dir);
  assert_int_equal(mkdir(p, 0755), 0);
  char *models = strdup(p);
  snprintf(p, sizeof p, "%s/vision", models);
  assert_int_equal(symlink(q, p), 0);
  return models;
}

void test_write_tiny_checkpoint(const char *path, const char *preset, uint64_t seed) {
  mp_sd_config cfg;
  assert_ok(mp_sd_preset(preset, &cfg));
  assert_ok(mp_sd_write_random(path, &cfg, MP_F16, seed, preset));
}

void test_copy_file(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  assert_non_null(a), assert_non_null(b);
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, n, b), n);
  fclose(a), assert_int_equal(fclose(b), 0);
}

cJSON *test_read_json(const char *path) {
  FILE *fp = fopen(path, "rb");
  if (!fp) fail_msg("cannot open %s", path);
  assert_int_equal(fseek(fp, 0, SEEK_END), 0);
  long n = ftell(fp);
  assert_true(n >= 0);
  assert_int_equal(fseek(fp, 0, SEEK_SET), 0);
  char *buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  size_t got = fread(buf, 1, (size_t)n, fp);
  fclose(fp);
  buf[got] = 0;
  cJSON *j = cJSON_Parse(buf);
  free(buf);
  if (!j) fail_msg("%s is not valid JSON", path);
  return j;
}
