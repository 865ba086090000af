/* `mpass generate` and `mpass params` end to end, through the CLI binary, on the tiny model (random
 * weights: the pixels are noise; what is tested is the door — parameters stored and read back,
 * seeds, batch naming, img2img / inpainting / LoRA paths, errors, Ctrl-C). */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/image.h"
#include "models/sd_layout.h"
#include "mpass/mpass.h"
#include "pipeline/params.h"
#include "testutil.h"

typedef struct {
  char *dir, *ckpt, *vocab, *golden_init, *golden_mask, *lora;
  char bin[1024];
  char hash[11];
} fixture;

static fixture F;

static int setup(void **state) {
  (void)state;
  F.dir = test_tmpdir();
  const char *b = getenv("MPASS_BINARY_DIR");
  snprintf(F.bin, sizeof F.bin, "%s/mpass", b ? b : "build");
  char p[1024];
  snprintf(p, sizeof p, "%s/tiny.safetensors", F.dir);
  F.ckpt = strdup(p);
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny", &cfg));
  assert_ok(mp_sd_write_random(F.ckpt, &cfg, MP_F16, 11, "tiny"));
  assert_ok(mp_model_short_hash(F.ckpt, F.hash));
  F.vocab = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  F.golden_init = test_shared_path("golden/tiny/init_image.png");
  F.golden_mask = test_shared_path("golden/tiny/mask.png");
  F.lora = test_shared_path("golden/tiny/lora_tiny.safetensors");
  snprintf(p, sizeof p, "%s/models", F.dir); /* an empty models folder: nothing from the checkout leaks in */
  mkdir(p, 0755);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  free(F.dir), free(F.ckpt), free(F.vocab), free(F.golden_init), free(F.golden_mask), free(F.lora);
  return 0;
}

/* Run `mpass --models DIR/models <args>` (stdout + stderr into `out`); returns the exit code. */
static int mpass(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int mpass(char *out, size_t cap, const char *fmt, ...) {
  char args[4096], cmd[8192], log[1100];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(log, sizeof log, "%s/log.txt", F.dir);
  snprintf(cmd, sizeof cmd, "cd %s && %s --models %s/models %s > %s 2>&1", F.dir, F.bin, F.dir, args, log);
  int rc = system(cmd);
  FILE *f = fopen(log, "rb");
  assert_non_null(f);
  size_t n = fread(out, 1, cap - 1, f);
  out[n] = 0;
  fclose(f);
  /* under ASan/UBSan the binary's own reports do not always change its exit code: look for them */
  if (strstr(out, "Sanitizer") || strstr(out, "runtime error:")) fail_msg("mpass %s:\n%s", args, out);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* `generate` with the model, vocabulary and a fixed small job; `extra` adds or overrides flags. */
static int generate(char *out, size_t cap, const char *extra) {
  return mpass(out, cap, "generate --model %s --vocab %s -W 64 -H 64 --steps 2 --sampler euler --rng cpu %s", F.ckpt,
               F.vocab, extra);
}

static char *path_in(const char *name) {
  static char p[4][1200];
  static int k;
  k = (k + 1) % 4;
  snprintf(p[k], sizeof p[k], "%s/%s", F.dir, name);
  return p[k];
}

static void read_params(const char *name, mp_infotext *it) {
  char *text = NULL;
  assert_ok(mp_image_read_png_text(path_in(name), "parameters", &text));
  assert_non_null(text);
  assert_ok(mp_infotext_parse(text, it));
  free(text);
}

static void assert_field(const mp_infotext *it, const char *key, const char *want) {
  const char *got = mp_infotext_get(it, key);
  if (!want) {
    if (got) fail_msg("field %s: expected none, found '%s'", key, got);
    return;
  }
  if (!got) fail_msg("field %s: missing", key);
  if (strcmp(got, want) != 0) fail_msg("field %s: expected '%s', found '%s'", key, want, got);
}

/* Number of bytes that differ between two images of the same size. */
static long pixels_differ(const char *a, const char *b) {
  mp_image x = {0}, y = {0};
  assert_ok(mp_image_read(path_in(a), 3, &x));
  assert_ok(mp_image_read(path_in(b), 3, &y));
  assert_int_equal(x.width, y.width);
  assert_int_equal(x.height, y.height);
  long n = 0;
  for (size_t i = 0; i < (size_t)x.width * x.height * 3; i++) n += x.pixels[i] != y.pixels[i];
  mp_image_free(&x), mp_image_free(&y);
  return n;
}

static bool exists(const char *name) { return access(path_in(name), F_OK) == 0; }

/* No file in the folder whose name contains `needle` (temporaries from cancelled or failed runs). */
static void assert_no_file_like(const char *needle) {
  DIR *d = opendir(F.dir);
  assert_non_null(d);
  struct dirent *de;
  while ((de = readdir(d)))
    if (strstr(de->d_name, needle)) fail_msg("left behind: %s", de->d_name);
  closedir(d);
}

static void test_txt2img_parameters_round_trip(void **state) {
  (void)state;
  char out[16384];
  int rc = generate(out, sizeof out,
                    "-p 'a red fox, (studio light:1.2)' -n 'blurry, lowres: bad' --cfg 6.5 --seed 42 -o fox.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  /* progress: a line per step with the step count and speed, then the path on stdout */
  assert_non_null(strstr(out, "txt2img · step 1/2 ·"));
  assert_non_null(strstr(out, "step 2/2"));
  assert_non_null(strstr(out, "ETA"));
  assert_non_null(strstr(out, "fox.png\n"));

  mp_image img = {0};
  assert_ok(mp_image_read(path_in("fox.png"), 3, &img));
  assert_int_equal(img.width, 64), assert_int_equal(img.height, 64);
  mp_image_free(&img);

  mp_infotext it;
  read_params("fox.png", &it);
  assert_string_equal(it.prompt, "a red fox, (studio light:1.2)");
  assert_string_equal(it.negative_prompt, "blurry, lowres: bad");
  assert_field(&it, "Steps", "2");
  assert_field(&it, "Sampler", "Euler");
  assert_field(&it, "Schedule type", "Uniform");
  assert_field(&it, "CFG scale", "6.5");
  assert_field(&it, "Seed", "42");
  assert_field(&it, "Size", "64x64");
  assert_field(&it, "Model hash", F.hash);
  assert_field(&it, "Model", "tiny");
  assert_field(&it, "RNG", "CPU");
  assert_field(&it, "Denoising strength", NULL); /* txt2img */
  assert_field(&it, "Lora hashes", NULL);
  mp_infotext_free(&it);

  /* `mpass params` shows the same, as lines, as JSON and as a command */
  assert_int_equal(mpass(out, sizeof out, "params %s", path_in("fox.png")), 0);
  assert_non_null(strstr(out, "Prompt: a red fox, (studio light:1.2)\n"));
  assert_non_null(strstr(out, "Negative prompt: blurry, lowres: bad\n"));
  assert_non_null(strstr(out, "Seed: 42\n"));
  assert_int_equal(mpass(out, sizeof out, "params --json %s", path_in("fox.png")), 0);
  cJSON *j = cJSON_Parse(out);
  assert_non_null(j);
  assert_string_equal(cJSON_GetObjectItem(j, "prompt")->valuestring, "a red fox, (studio light:1.2)");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "fields"), "Model hash")->valuestring, F.hash);
  cJSON_Delete(j);
  assert_int_equal(mpass(out, sizeof out, "params --command %s", path_in("fox.png")), 0);
  assert_non_null(strstr(out, "-p 'a red fox, (studio light:1.2)' -n 'blurry, lowres: bad' --sampler euler --steps 2 "
                              "--cfg 6.5 --seed 42 -W 64 -H 64 --rng cpu"));

  /* the same parameters make the same image (the command line is a faithful recipe) */
  rc = generate(out, sizeof out, "-p 'a red fox, (studio light:1.2)' -n 'blurry, lowres: bad' --cfg 6.5 --seed 42 -q -o fox2.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_int_equal(pixels_differ("fox.png", "fox2.png"), 0);

  /* params on a PNG without parameters */
  mp_image plain = {0};
  assert_ok(mp_image_alloc(&plain, 8, 8, 3));
  assert_ok(mp_image_write_png(path_in("plain.png"), &plain, NULL, NULL));
  mp_image_free(&plain);
  assert_int_equal(mpass(out, sizeof out, "params %s", path_in("plain.png")), 1);
  assert_non_null(strstr(out, "has no \"parameters\" text"));
}

static void test_batch_seeds_and_names(void **state) {
  (void)state;
  char out[16384];
  int rc = generate(out, sizeof out, "-p 'a cat' --seed 100 -o one.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  rc = generate(out, sizeof out, "-p 'a cat' --seed 100 --batch 3 -o batch.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_non_null(strstr(out, "image 3/3"));
  assert_true(exists("batch.png") && exists("batch-1.png") && exists("batch-2.png"));
  assert_false(exists("batch-3.png"));
  const char *names[] = {"batch.png", "batch-1.png", "batch-2.png"}, *seeds[] = {"100", "101", "102"};
  for (int k = 0; k < 3; k++) {
    mp_infotext it;
    read_params(names[k], &it);
    assert_field(&it, "Seed", seeds[k]);
    mp_infotext_free(&it);
  }
  /* A1111 semantics: image k of a batch is the image of seed+k alone */
  assert_int_equal(pixels_differ("one.png", "batch.png"), 0);
  assert_true(pixels_differ("batch.png", "batch-1.png") > 0);
}

static void test_img2img_and_inpaint(void **state) {
  (void)state;
  char out[16384], extra[2048];
  snprintf(extra, sizeof extra, "-p 'a cat' --seed 5 --steps 4 --init-img %s --strength 0.5 -o i2i.png", F.golden_init);
  int rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_non_null(strstr(out, "img2img · step 3/3")); /* A1111: the last int(0.5 * 4) + 1 steps of the schedule */
  mp_infotext it;
  read_params("i2i.png", &it);
  assert_field(&it, "Denoising strength", "0.5");
  assert_field(&it, "Size", "64x64");
  mp_infotext_free(&it);

  snprintf(extra, sizeof extra, "-p 'a cat' --seed 5 --steps 4 --init-img %s --mask %s --strength 0.75 -o inp.png",
           F.golden_init, F.golden_mask);
  rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_non_null(strstr(out, "inpaint · step 1/4"));
  read_params("inp.png", &it);
  assert_field(&it, "Denoising strength", "0.75");
  mp_infotext_free(&it);
  assert_true(pixels_differ("i2i.png", "inp.png") > 0);

  /* sizes that are not multiples of 64 (the engine runs them at the next size up) and JPEG output */
  snprintf(extra, sizeof extra, "-p 'a cat' --seed 5 --init-img %s -W 72 -H 64 -o wide.jpg", F.golden_init);
  rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_non_null(strstr(out, "only in PNGs"));
  mp_image img = {0};
  assert_ok(mp_image_read(path_in("wide.jpg"), 3, &img));
  assert_int_equal(img.width, 72), assert_int_equal(img.height, 64);
  mp_image_free(&img);
}

static void test_lora_changes_the_image(void **state) {
  (void)state;
  char out[16384], extra[2048];
  int rc = generate(out, sizeof out, "-p 'a dog' --seed 9 -o base.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  snprintf(extra, sizeof extra, "-p 'a dog' --seed 9 --lora %s:0.8 -o lora.png", F.lora);
  rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_null(strstr(out, "matches no layer"));
  assert_true(pixels_differ("base.png", "lora.png") > 0);
  mp_infotext it;
  read_params("lora.png", &it);
  /* the --lora LoRA is also a tag at the end of the stored prompt, which is what AUTOMATIC1111 applies */
  assert_string_equal(it.prompt, "a dog <lora:lora_tiny:0.8>");
  const char *h = mp_infotext_get(&it, "Lora hashes");
  assert_non_null(h);
  assert_int_equal(strncmp(h, "lora_tiny: ", 11), 0);
  assert_int_equal(strlen(h), 11 + 12);
  assert_field(&it, "Lora weights", "lora_tiny: 0.8");
  /* the whole stored text, exactly as A1111 1.9/1.10 need it (fixture; hashes filled in) */
  char *raw = NULL, want[2048];
  assert_ok(mp_image_read_png_text(path_in("lora.png"), "parameters", &raw));
  snprintf(want, sizeof want,
           "a dog <lora:lora_tiny:0.8>\n"
           "Steps: 2, Sampler: Euler, Schedule type: Uniform, CFG scale: 7, Seed: 9, Size: 64x64, Model hash: %s, "
           "Model: tiny, RNG: CPU, Lora hashes: \"%s\", Lora weights: \"lora_tiny: 0.8\", Version: mpass %s",
           F.hash, h, MPASS_VERSION);
  assert_string_equal(raw, want);
  free(raw);
  mp_infotext_free(&it);
  /* read back as the same values: the prompt as given and the LoRA as --lora, not twice */
  assert_int_equal(mpass(out, sizeof out, "params --command %s", path_in("lora.png")), 0);
  assert_non_null(strstr(out, "-p 'a dog' "));
  assert_non_null(strstr(out, "--lora 'lora_tiny:0.8'"));
  assert_null(strstr(out, "<lora:"));

  /* the same LoRA as an AUTOMATIC1111 tag in the prompt, found in <models>/lora: the same image; the
   * stored prompt keeps the tag (as A1111 stores it), so no "Lora weights" field */
  char p[1200];
  snprintf(p, sizeof p, "%s/models/lora", F.dir);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/models/lora/lora_tiny.safetensors", F.dir);
  assert_int_equal(symlink(F.lora, p), 0);
  rc = generate(out, sizeof out, "-p 'a dog <lora:lora_tiny:0.8>' -n 'x <lora:lora_tiny:1>' --seed 9 -o tag.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  read_params("tag.png", &it);
  assert_string_equal(it.prompt, "a dog <lora:lora_tiny:0.8>");
  assert_non_null(mp_infotext_get(&it, "Lora hashes"));
  assert_field(&it, "Lora weights", NULL);
  mp_infotext_free(&it);
  assert_int_equal(mpass(out, sizeof out, "params --command %s", path_in("tag.png")), 0);
  assert_null(strstr(out, "--lora"));
  /* the negative's tag is text (A1111 reads tags in the prompt only), so compare with the same negative */
  snprintf(extra, sizeof extra, "-p 'a dog' -n 'x <lora:lora_tiny:1>' --seed 9 --lora %s:0.8 -o flag.png", F.lora);
  rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_int_equal(pixels_differ("tag.png", "flag.png"), 0);
  /* A1111's other spellings: TE and UNet weights, positional or named */
  rc = generate(out, sizeof out, "-p 'a dog <lora:lora_tiny:0.8:0.8>' -n 'x <lora:lora_tiny:1>' --seed 9 -q -o tag2.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_int_equal(pixels_differ("tag.png", "tag2.png"), 0);
  rc = generate(out, sizeof out, "-p 'a dog <lora:lora_tiny:unet=0.8:te=0.8>' -n 'x <lora:lora_tiny:1>' --seed 9 -q -o tag3.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_int_equal(pixels_differ("tag.png", "tag3.png"), 0);
  rc = generate(out, sizeof out, "-p 'a dog <lora:lora_tiny:0.8:0>' -n 'x <lora:lora_tiny:1>' --seed 9 -q -o tag4.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_true(pixels_differ("tag.png", "tag4.png") > 0);
  rc = generate(out, sizeof out, "-p 'a dog <hypernet:foo:1>' --seed 9 -o hyper.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_non_null(strstr(out, "<hypernet:foo:1>: only <lora:...> tags are supported"));
  assert_int_equal(pixels_differ("base.png", "hyper.png"), 0);

  /* weight 0 is the base model again */
  snprintf(extra, sizeof extra, "-p 'a dog' --seed 9 --lora %s:0 -q -o lora0.png", F.lora);
  rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_int_equal(pixels_differ("base.png", "lora0.png"), 0);
}

static void test_embeddings_and_clip_skip(void **state) {
  (void)state;
  char out[16384], extra[2048], p[1200];
  snprintf(p, sizeof p, "%s/emb", F.dir);
  mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/emb/mystyle.safetensors", F.dir);
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny", &cfg));
  assert_ok(mp_sd_write_random_embedding(p, &cfg, 2, 77));
  int rc = generate(out, sizeof out, "-p 'a mystyle cat' --seed 3 --clip-skip 2 -o plain.png");
  if (rc) fail_msg("rc %d: %s", rc, out);
  snprintf(extra, sizeof extra, "-p 'a mystyle cat' --seed 3 --clip-skip 2 --embeddings %s/emb -o emb.png", F.dir);
  rc = generate(out, sizeof out, extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_true(pixels_differ("plain.png", "emb.png") > 0); /* "mystyle" became the embedding's vectors */
  mp_infotext it;
  read_params("emb.png", &it);
  assert_field(&it, "Clip skip", "2");
  mp_infotext_free(&it);
  /* <models>/embeddings is the default folder */
  snprintf(p, sizeof p, "%s/models/embeddings", F.dir);
  mkdir(p, 0755);
  snprintf(extra, sizeof extra, "%s/models/embeddings/mystyle.safetensors", F.dir);
  assert_int_equal(rename(path_in("emb/mystyle.safetensors"), extra), 0);
  rc = generate(out, sizeof out, "-p 'a mystyle cat' --seed 3 --clip-skip 2 -o emb2.png");
  unlink(extra);
  if (rc) fail_msg("rc %d: %s", rc, out);
  assert_int_equal(pixels_differ("emb.png", "emb2.png"), 0);
}

/* `mpass params` on images from AUTOMATIC1111 (its text, written here): multi-line prompts, the
 * pre-1.9 sampler spelling, a sampler mpass does not have, --raw. */
static void test_params_of_a1111_images(void **state) {
  (void)state;
  static const char *a1111 =
      "masterpiece, a castle\non a hill <lora:castles:0.7>\n"
      "Negative prompt: (worst quality:1.4)\n"
      "Steps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 3859183829, Size: 512x768, Model hash: 6ce0161689, "
      "Model: v1-5-pruned-emaonly, Denoising strength: 0.45, Clip skip: 2, Lora hashes: \"castles: 0123456789ab\", "
      "Version: v1.6.0";
  mp_image img = {0};
  assert_ok(mp_image_alloc(&img, 8, 8, 3));
  assert_ok(mp_image_write_png(path_in("a1111.png"), &img, "parameters", a1111));
  char out[16384];
  assert_int_equal(mpass(out, sizeof out, "params %s", path_in("a1111.png")), 0);
  assert_non_null(strstr(out, "Prompt: masterpiece, a castle\n  on a hill <lora:castles:0.7>\n"));
  assert_non_null(strstr(out, "Lora hashes: castles: 0123456789ab\n"));
  assert_int_equal(mpass(out, sizeof out, "params --command %s", path_in("a1111.png")), 0);
  assert_non_null(strstr(out, "mpass generate --model 'v1-5-pruned-emaonly.safetensors' -p 'masterpiece, a castle\non a hill "
                              "<lora:castles:0.7>' -n '(worst quality:1.4)' --sampler dpm++2m_karras --steps 25 --cfg 6 "
                              "--seed 3859183829 -W 512 -H 768 --init-img INIT.png --strength 0.45 --clip-skip 2\n"));
  assert_int_equal(mpass(out, sizeof out, "params --raw %s", path_in("a1111.png")), 0);
  assert_non_null(strstr(out, a1111));

  const char *unipc = "a cat\nSteps: 20, Sampler: UniPC, CFG scale: 7, Seed: 1, Size: 512x512";
  assert_ok(mp_image_write_png(path_in("unipc.png"), &img, "parameters", unipc));
  assert_int_equal(mpass(out, sizeof out, "params --command %s", path_in("unipc.png")), 0);
  assert_non_null(strstr(out, "sampler 'UniPC' has no mpass equivalent"));
  assert_non_null(strstr(out, "mpass generate -p 'a cat' --steps 20 --cfg 7 --seed 1 -W 512 -H 512\n"));
  mp_image_free(&img);
  assert_int_equal(mpass(out, sizeof out, "params %s", path_in("missing.png")), 1);
  assert_int_equal(mpass(out, sizeof out, "params"), 2);
}

/* An error run: the exit code, a message containing `needle`, and no output file. */
static void expect_error(const char *extra, int want_rc, const char *needle) {
  char out[16384];
  int rc = generate(out, sizeof out, extra);
  if (rc != want_rc) fail_msg("%s: expected exit %d, found %d: %s", extra, want_rc, rc, out);
  if (!strstr(out, needle)) fail_msg("%s: message '%s' does not contain '%s'", extra, out, needle);
  assert_false(exists("bad.png"));
}

static void test_bad_arguments(void **state) {
  (void)state;
  char extra[2048];
  expect_error("-p x --sampler heun -o bad.png", 2, "unknown sampler 'heun' (expected one of euler, euler_a");
  expect_error("-p x --sampler tcd -o bad.png", 2, "'tcd' is not implemented yet");
  expect_error("-p x -W 100 -o bad.png", 2, "-W/--width expects a multiple of 8 from 64 to 2048, found '100'");
  expect_error("-p x -H 8 -o bad.png", 2, "-H/--height expects a multiple of 8");
  expect_error("-p x --steps 0 -o bad.png", 2, "--steps expects a whole number from 1 to 150");
  expect_error("-p x --cfg abc -o bad.png", 2, "--cfg expects a number");
  expect_error("-p x --seed 4294967296 -o bad.png", 2, "--seed expects a whole number from 0 to 4294967295");
  expect_error("-p x --rng gpu2 -o bad.png", 2, "unknown rng 'gpu2'");
  expect_error("-p x --clip-skip 3 -o bad.png", 2, "--clip-skip expects a whole number from 1 to 2");
  expect_error("-p x --strength 0.5 -o bad.png", 2, "--strength applies to img2img");
  expect_error("-o bad.png", 2, "-p PROMPT is required");
  expect_error("-p x -o bad.gif", 2, "the output must end in .png");
  snprintf(extra, sizeof extra, "-p x --mask %s -o bad.png", F.golden_mask);
  expect_error(extra, 2, "--mask needs --init-img");
  expect_error("-p x --model /no/such/model.safetensors -o bad.png", 1, "--model /no/such/model.safetensors: No such file");
  expect_error("-p x --init-img /no/such/init.png -o bad.png", 1, "--init-img /no/such/init.png: No such file");
  test_write_file(path_in("notimage.png"), "hello", 5);
  snprintf(extra, sizeof extra, "-p x --init-img %s -o bad.png", path_in("notimage.png"));
  expect_error(extra, 1, "not a PNG or JPEG file");
  expect_error("-p x --lora /no/such/lora.safetensors:0.5 -o bad.png", 1, "cannot open /no/such/lora.safetensors");
  expect_error("-p x --lora nosuch -o bad.png", 1, "LoRA 'nosuch' not found");
  expect_error("-p 'x <lora:nosuch:0.5>' -o bad.png", 1, "<lora:nosuch:0.5>: LoRA 'nosuch' not found");
  expect_error("-p 'x <lora:a:heavy>' -o bad.png", 2, "<lora:a:heavy>: the weight must be a number from -10 to 10, found 'heavy'");
  expect_error("-p x --lora a.safetensors:99 -o bad.png", 2, "--lora a.safetensors:99: the weight must be a number from -10 to 10");
  snprintf(extra, sizeof extra, "-p x --lora %s:0.5 -o bad.png", F.ckpt);
  expect_error(extra, 1, "holds no LoRA tensors");
  expect_error("-p x --embeddings /no/such/dir -o bad.png", 1, "--embeddings /no/such/dir: No such file");
  expect_error("-p x -o nodir/bad.png", 1, "-o nodir/bad.png: folder nodir: No such file");
  assert_no_file_like(".tmp");
}

/* Ctrl-C while sampling: exit 130 within a step, no image and no temporary file. */
static void test_ctrl_c_leaves_nothing(void **state) {
  (void)state;
  int err[2];
  assert_int_equal(pipe(err), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(err[1], 2);
    close(err[0]), close(err[1]);
    int devnull = open("/dev/null", O_WRONLY);
    dup2(devnull, 1);
    if (chdir(F.dir) != 0) _exit(99);
    execl(F.bin, "mpass", "generate", "--model", F.ckpt, "--vocab", F.vocab, "-p", "x", "-W", "64", "-H", "64", "--steps",
          "150", "--batch", "3", "--sampler", "euler", "-o", "cancel.png", (char *)NULL);
    _exit(98);
  }
  close(err[1]);
  FILE *f = fdopen(err[0], "r");
  assert_non_null(f);
  char line[512], all[65536] = "";
  bool sent = false;
  while (fgets(line, sizeof line, f)) {
    if (strlen(all) + strlen(line) < sizeof all) strcat(all, line);
    if (!sent && strstr(line, "step 1/150")) {
      kill(pid, SIGINT);
      sent = true;
    }
  }
  fclose(f);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(sent);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 130) fail_msg("expected exit 130: %s", all);
  assert_non_null(strstr(all, "cancelled; no output was written"));
  assert_null(strstr(all, "step 150/150"));
  assert_null(strstr(all, "Sanitizer"));
  assert_false(exists("cancel.png"));
  assert_no_file_like("cancel");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_txt2img_parameters_round_trip), cmocka_unit_test(test_batch_seeds_and_names),
      cmocka_unit_test(test_img2img_and_inpaint),           cmocka_unit_test(test_lora_changes_the_image),
      cmocka_unit_test(test_embeddings_and_clip_skip), cmocka_unit_test(test_params_of_a1111_images),
      cmocka_unit_test(test_bad_arguments),                 cmocka_unit_test(test_ctrl_c_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
