/* An SDXL diffusers folder through the CLI, wherever an SDXL single file is taken: `mpass inspect`,
 * `generate --model` (the same pixels as tiny-xl's single file), `base_model=` naming a folder in
 * <models>/checkpoints, and a checkpoint tune made from the folder. The folder is the one
 * io_test_diffusers_xl writes (<build>/test-output/tiny-xl-diffusers; a CTest fixture). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/image.h"
#include "testutil.h"

typedef struct {
  char bin[1024], folder[1024];
  char *dir, *file;
} fixture;

static fixture F;

static int setup(void **state) {
  (void)state;
  const char *b = getenv("MPASS_BINARY_DIR");
  snprintf(F.bin, sizeof F.bin, "%s/mpass", b ? b : "build");
  snprintf(F.folder, sizeof F.folder, "%s/test-output/tiny-xl-diffusers", b ? b : "build");
  F.dir = test_tmpdir();
  F.file = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", F.dir);
  if (system(cmd) != 0) return 1;
  free(F.dir), free(F.file);
  return 0;
}


static void test_fixture_there(void **state) {
  (void)state;
  char p[1100];
  snprintf(p, sizeof p, "%s/model_index.json", F.folder);
  if (access(p, R_OK) != 0) fail_msg("%s is missing: io_test_diffusers_xl writes it (the CTest fixture tiny_xl_diffusers)", p);
}

/* The per-part parameter counts of the folder equal the single file's. */
static void test_inspect(void **state) {
  (void)state;
  char *a, *b;
  assert_int_equal(test_shell(&a, "'%s' inspect '%s'", F.bin, F.folder), 0);
  assert_int_equal(test_shell(&b, "'%s' inspect '%s'", F.bin, F.file), 0);
  test_assert_contains(a, "family:      SDXL");
  test_assert_contains(a, "unexpected:  0 tensors");
  test_assert_contains(a, "text 2:      OpenCLIP, hidden 48, 3 layers, 4 heads, MLP 192, projection 40");
  static const char *const parts[] = {"UNet         ", "VAE          ", "text enc. 1  ", "text enc. 2  "};
  for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
    const char *x = strstr(a, parts[i]), *y = strstr(b, parts[i]);
    assert_non_null(x);
    assert_non_null(y);
    size_t n = strcspn(x, "\n");
    if (n != strcspn(y, "\n") || strncmp(x, y, n) != 0) fail_msg("folder '%.*s' vs file '%.*s'", (int)n, x, (int)strcspn(y, "\n"), y);
  }
  free(a), free(b);
}

/* The same image from the folder and from the single file (a "!" in the prompt: ordinary BPE for both). */
static void test_generate_same_pixels(void **state) {
  (void)state;
  char a[1100], b[1100], *out;
  snprintf(a, sizeof a, "%s/folder.png", F.dir);
  snprintf(b, sizeof b, "%s/file.png", F.dir);
  const char *args = "-p 'a red cube!' -n '' --steps 3 -W 64 -H 64 --seed 7 -q";
  assert_int_equal(test_shell(&out, "'%s' generate -m '%s' %s -o '%s'", F.bin, F.folder, args, a), 0);
  free(out);
  assert_int_equal(test_shell(&out, "'%s' generate -m '%s' %s -o '%s'", F.bin, F.file, args, b), 0);
  free(out);
  mp_image ia, ib;
  assert_ok(mp_image_read(a, 3, &ia));
  assert_ok(mp_image_read(b, 3, &ib));
  assert_int_equal(ia.width, 64), assert_int_equal(ib.width, 64);
  assert_int_equal(ia.height, ib.height);
  assert_memory_equal(ia.pixels, ib.pixels, (size_t)ia.width * ia.height * 3);
  mp_image_free(&ia), mp_image_free(&ib);
}

/* base_model=NAME finds <models>/checkpoints/NAME/; a checkpoint tune made from the folder is SDXL and
 * works as base_model too. */
static void test_base_model_and_tune(void **state) {
  (void)state;
  char models[1100], p[1300], *out;
  snprintf(models, sizeof models, "%s/models", F.dir);
  snprintf(p, sizeof p, "%s/checkpoints", models);
  assert_int_equal(test_shell(NULL, "mkdir -p '%s'", p), 0);
  snprintf(p, sizeof p, "%s/checkpoints/xl-folder", models);
  assert_int_equal(symlink(F.folder, p), 0);
  snprintf(p, sizeof p, "%s/scene.prompt", F.dir);
  const char *doc = "a small house\nbase_model=xl-folder\nsteps=2\nw=64\nh=64\n";
  test_write_file(p, doc, strlen(doc));
  assert_int_equal(test_shell(&out, "cd '%s' && '%s' --models '%s' run scene.prompt --out out --quiet", F.dir, F.bin, models), 0);
  free(out);
  assert_int_equal(test_shell(&out, "cat '%s'/out/*/result.json", F.dir), 0);
  test_assert_contains(out, "\"family\":\t\"SDXL\"");
  test_assert_contains(out, "xl-folder");
  free(out);

  assert_int_equal(test_shell(&out, "'%s' --models '%s' tune add --type checkpoint --id xlt --name scene --token sks '%s'", F.bin, models, F.folder), 0);
  free(out);
  assert_int_equal(test_shell(&out, "'%s' --models '%s' tune show xlt", F.bin, models), 0);
  test_assert_contains(out, "sdxl");
  free(out);
  assert_int_equal(test_shell(&out, "'%s' inspect '%s/tunes/xlt/xlt'", F.bin, models), 0);
  test_assert_contains(out, "family:      SDXL");
  test_assert_contains(out, "unexpected:  0 tensors");
  free(out);
  snprintf(p, sizeof p, "%s/tune.prompt", F.dir);
  doc = "a small house\nbase_model=xlt\nsteps=2\nw=64\nh=64\n";
  test_write_file(p, doc, strlen(doc));
  assert_int_equal(test_shell(&out, "cd '%s' && '%s' --models '%s' run tune.prompt --out out2 --quiet", F.dir, F.bin, models), 0);
  free(out);
  assert_int_equal(test_shell(&out, "cat '%s'/out2/*/result.json", F.dir), 0);
  test_assert_contains(out, "\"family\":\t\"SDXL\"");
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fixture_there),
      cmocka_unit_test(test_inspect),
      cmocka_unit_test(test_generate_same_pixels),
      cmocka_unit_test(test_base_model_and_tune),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
