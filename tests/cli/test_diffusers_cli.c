/* A diffusers folder through the CLI, wherever a checkpoint file is taken: `mpass inspect`,
 * `generate --model` (same pixels as the single file, the folder's own tokenizer with no vocabulary
 * anywhere else), the default checkpoint in <models>/checkpoints, and checkpoint tunes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/image.h"
#include "pipeline/params.h"
#include "testutil.h"

typedef struct {
  char bin[1024];
  char *dir, *folder, *file, *vocab;
} fixture;

static fixture F;

static int setup(void **state) {
  (void)state;
  /* the folder's own tokenizer must be what the commands below use, not a vocabulary from the environment */
  unsetenv("MPASS_VOCAB");
  const char *b = getenv("MPASS_BINARY_DIR");
  snprintf(F.bin, sizeof F.bin, "%s/mpass", b ? b : "build");
  F.dir = test_tmpdir();
  F.folder = test_shared_path("golden/tiny-diffusers");
  F.file = test_shared_path("golden/tiny/tiny.safetensors");
  F.vocab = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", F.dir);
  if (system(cmd) != 0) return 1;
  free(F.dir), free(F.folder), free(F.file), free(F.vocab);
  return 0;
}


static void test_inspect(void **state) {
  (void)state;
  char *out;
  assert_int_equal(test_shell(&out, "'%s' inspect '%s'", F.bin, F.folder), 0);
  test_assert_contains(out, "family:      SD 1.x");
  test_assert_contains(out, "check text:  all tensors present with the expected shapes");
  test_assert_contains(out, "check UNet:  all tensors present with the expected shapes");
  test_assert_contains(out, "check VAE:   all tensors present with the expected shapes");
  test_assert_contains(out, "unexpected:  0 tensors");
  free(out);
  /* a folder that is not a diffusers folder says so */
  assert_int_equal(test_shell(&out, "'%s' inspect '%s'", F.bin, F.dir), 1);
  test_assert_contains(out, "has no model_index.json");
  free(out);
}

static void read_pixels(const char *path, mp_image *img) { assert_ok(mp_image_read(path, 3, img)); }

/* The folder and the single file give the same image; the folder needs no vocabulary besides its own. */
static void test_generate_same_pixels(void **state) {
  (void)state;
  char models[1100], a[1100], b[1100], *out;
  snprintf(models, sizeof models, "%s/empty-models", F.dir);
  assert_int_equal(mkdir(models, 0755), 0);
  snprintf(a, sizeof a, "%s/folder.png", F.dir);
  snprintf(b, sizeof b, "%s/file.png", F.dir);
  const char *args = "-p 'a red cube' -n blurry --steps 3 -W 64 -H 64 --seed 7 -q";
  assert_int_equal(test_shell(&out, "cd '%s' && '%s' --models '%s' generate -m '%s' %s -o '%s'", F.dir, F.bin, models, F.folder, args, a), 0);
  free(out);
  assert_int_equal(test_shell(&out, "'%s' --models '%s' generate -m '%s' --vocab '%s' %s -o '%s'", F.bin, models, F.file, F.vocab, args, b), 0);
  free(out);
  mp_image ia, ib;
  read_pixels(a, &ia);
  read_pixels(b, &ib);
  assert_int_equal(ia.width, ib.width);
  assert_int_equal(ia.height, ib.height);
  assert_memory_equal(ia.pixels, ib.pixels, (size_t)ia.width * ia.height * 3);
  mp_image_free(&ia), mp_image_free(&ib);
  /* Model hash: the UNet weights file's, as A1111 would show for that file */
  char *text = NULL, unet[1100], hash[11], want[64];
  assert_ok(mp_image_read_png_text(a, "parameters", &text));
  snprintf(unet, sizeof unet, "%s/unet/diffusion_pytorch_model.safetensors", F.folder);
  assert_ok(mp_model_short_hash(unet, hash));
  snprintf(want, sizeof want, "Model hash: %s", hash);
  test_assert_contains(text, want);
  test_assert_contains(text, "Model: tiny-diffusers");
  free(text);
}

/* <models>/checkpoints/<folder> is the default checkpoint; checkpoint tunes take a folder. */
static void test_default_checkpoint_and_tune(void **state) {
  (void)state;
  char models[1100], link[1200], png[1100], *out;
  snprintf(models, sizeof models, "%s/models", F.dir);
  snprintf(link, sizeof link, "%s/checkpoints", models);
  assert_int_equal(test_shell(NULL, "mkdir -p '%s'", link), 0);
  snprintf(link, sizeof link, "%s/checkpoints/my-sd", models);
  assert_int_equal(symlink(F.folder, link), 0);
  snprintf(png, sizeof png, "%s/default.png", F.dir);
  assert_int_equal(test_shell(&out, "'%s' --models '%s' generate -p cat --steps 2 -W 64 -H 64 --seed 1 -q -o '%s'", F.bin, models, png), 0);
  free(out);
  char *text = NULL;
  assert_ok(mp_image_read_png_text(png, "parameters", &text));
  test_assert_contains(text, "Model: my-sd");
  free(text);

  assert_int_equal(test_shell(&out, "'%s' --models '%s' tune add --type checkpoint --id tinyd --name cube --token sks '%s'", F.bin,
                       models, F.folder),
                   0);
  free(out);
  assert_int_equal(test_shell(&out, "'%s' --models '%s' tune show tinyd", F.bin, models), 0);
  test_assert_contains(out, "family:     sd15");
  free(out);
  assert_int_equal(test_shell(&out, "'%s' inspect '%s/tunes/tinyd/tinyd'", F.bin, models), 0);
  test_assert_contains(out, "unexpected:  0 tensors");
  free(out);
  assert_int_equal(test_shell(&out, "'%s' --models '%s' tune remove tinyd", F.bin, models), 0);
  free(out);
  char gone[1200];
  snprintf(gone, sizeof gone, "%s/tunes/tinyd", models);
  assert_int_not_equal(access(gone, F_OK), 0);
  /* a LoRA tune is never a folder */
  assert_int_not_equal(test_shell(&out, "'%s' --models '%s' tune add --type lora --id l --name x --token y '%s'", F.bin, models, F.folder), 0);
  test_assert_contains(out, "no such file");
  free(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_inspect),
      cmocka_unit_test(test_generate_same_pixels),
      cmocka_unit_test(test_default_checkpoint_and_tune),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
