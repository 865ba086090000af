/* The job's one upscale, run end to end on the tiny model (random weights: the pixels are noise; the
 * sizes and passes are what is tested). super_resolution with --tiled_upscale is one Real-ESRGAN
 * upscale by the super-resolution factor, then the tiles repaint it (SPEC §4.2); --tiled_upscale alone
 * is a x2 resize. The models folder is empty: the Real-ESRGAN model is found next to the source tree. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "io/image.h"
#include "models/sd_layout.h"
#include "pipeline/run.h"
#include "prompt/document.h"
#include "prompt/plan.h"
#include "testutil.h"

typedef struct {
  char *dir, *ckpt;
  mpass_ctx *ctx;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  char p[1200];
  snprintf(p, sizeof p, "%s/models", f->dir);
  mkdir(p, 0755);
  mpass_options o = {.n_threads = 2, .models_dir = p};
  assert_ok(mpass_ctx_create(&o, &f->ctx));
  snprintf(p, sizeof p, "%s/tiny.safetensors", f->dir);
  f->ckpt = strdup(p);
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny", &cfg));
  assert_ok(mp_sd_write_random(f->ckpt, &cfg, MP_F16, 5, "tiny"));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->ctx);
  free(f->dir), free(f->ckpt);
  free(f);
  return 0;
}

/* Run `doc`; the output image's size and the number of tile passes. */
static void run_doc(fixture *f, const char *doc, const char *name, int *w, int *h, int *tiles) {
  mp_job *job;
  mp_plan *plan;
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  assert_ok(mp_plan_make(job, &plan));
  char out[1200], p[1400], *dir = NULL;
  snprintf(out, sizeof out, "%s/out", f->dir);
  mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = name, .document = doc, .rng = MP_RNG_CPU,
                      .clip_skip = 1};
  assert_ok(mp_run_plan(f->ctx, plan, &o, &dir));
  snprintf(p, sizeof p, "%s/0.png", dir);
  mp_image img = {0};
  assert_ok(mp_image_read(p, 3, &img));
  *w = img.width, *h = img.height;
  mp_image_free(&img);
  /* the plan said so before anything ran */
  assert_int_equal(plan->final_width, *w);
  assert_int_equal(plan->final_height, *h);
  snprintf(p, sizeof p, "%s/result.json", dir);
  FILE *fp = fopen(p, "rb");
  assert_non_null(fp);
  static char buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = 0;
  cJSON *res = cJSON_Parse(buf);
  assert_non_null(res);
  *tiles = 0;
  for (cJSON *ps = cJSON_GetObjectItem(res, "passes")->child; ps; ps = ps->next)
    *tiles += strncmp(cJSON_GetObjectItem(ps, "pass")->valuestring, "tile", 4) == 0;
  cJSON_Delete(res);
  free(dir);
  mp_plan_free(plan);
  mp_job_free(job);
}

static void test_super_resolution_with_tiles_upscales_once(void **state) {
  fixture *f = *state;
  int w, h, tiles;
  /* 64x80 has fewer than 512² pixels: Real-ESRGAN x4 -> 256x320, repainted as one tile; not x4 then x2 */
  run_doc(f, "a cat --tiled_upscale\nsuper_resolution=true\nseed=1\nsteps=1\nscheduler=euler\nw=64\nh=80", "sr_tiled", &w, &h,
          &tiles);
  assert_int_equal(w, 256), assert_int_equal(h, 320);
  assert_int_equal(tiles, 1);
  /* --tiled_upscale alone: x2 */
  run_doc(f, "a cat --tiled_upscale\nseed=1\nsteps=1\nscheduler=euler\nw=64\nh=80", "tiled", &w, &h, &tiles);
  assert_int_equal(w, 128), assert_int_equal(h, 160);
  assert_int_equal(tiles, 1);
  /* super_resolution alone: x4, no tiles */
  run_doc(f, "a cat\nsuper_resolution=true\nseed=1\nsteps=1\nscheduler=euler\nw=64\nh=64", "sr", &w, &h, &tiles);
  assert_int_equal(w, 256), assert_int_equal(h, 256);
  assert_int_equal(tiles, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_super_resolution_with_tiles_upscales_once),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
