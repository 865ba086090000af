/* A job that mixes families (SPEC §1.1 base_model): the scene on a tiny SDXL checkpoint, the person
 * on the tiny SD 1.5 one (random weights: the structure is tested, not the pixels). result.json must
 * name each pass's model and family; an SDXL LoRA on the SD 1.5 person is an error naming both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "models/sd_layout.h"
#include "pipeline/families.h"
#include "pipeline/run.h"
#include "prompt/document.h"
#include "prompt/plan.h"
#include "models_folder.h"
#include "testutil.h"

/* Random weights turn any scene into noise (no person would be found on it), so the person passes run
 * on the photo kept as background (leading BREAK BREAK) and the SDXL scene pass in its own job. */
static const char *PERSONS_DOC =
    "BREAK BREAK a woman in a red coat%s\n"
    "base_model=scene-xl\n"
    "input_image=%s\n"
    "seed=7\n"
    "steps=2\n"
    "scheduler=euler\n";
static const char *SCENE_DOC =
    "a street at dusk BREAK photo\n"
    "base_model=scene-xl\n"
    "w=128\n"
    "h=192\n"
    "seed=7\n"
    "steps=2\n"
    "scheduler=euler\n";

/* the scene with a textual-inversion tag (%s: the embedding's name) */
static const char *SCENE_TI_DOC =
    "a street at dusk <%s>\n"
    "base_model=scene-xl\n"
    "w=128\n"
    "h=128\n"
    "seed=7\n"
    "steps=1\n"
    "scheduler=euler\n";

typedef struct {
  char *dir, *models;
  mpass_ctx *ctx;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  char p[1024];
  f->models = test_models_folder(f->dir);
  snprintf(p, sizeof p, "%s/checkpoints", f->models), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/lora", f->models), mkdir(p, 0755);
  /* "scene-xl" sorts before "tiny-sd15": the default SD 1.5 model must be found by family, not name */
  snprintf(p, sizeof p, "%s/checkpoints/scene-xl.safetensors", f->models);
  test_write_tiny_checkpoint(p, "tiny-xl", 5);
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny-xl", &cfg));
  snprintf(p, sizeof p, "%s/lora/xl-style.safetensors", f->models);
  assert_ok(mp_sd_write_random_lora(p, &cfg, 4, 9)); /* an SDXL LoRA (UNet attention, 80-wide context) */
  snprintf(p, sizeof p, "%s/embeddings", f->models), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/embeddings/xl-emb.safetensors", f->models);
  assert_ok(mp_sd_write_random_embedding(p, &cfg, 2, 11)); /* clip_l + clip_g */
  mp_sd_config cfg15;
  assert_ok(mp_sd_preset("tiny", &cfg15));
  snprintf(p, sizeof p, "%s/embeddings/sd15-emb.safetensors", f->models);
  assert_ok(mp_sd_write_random_embedding(p, &cfg15, 2, 12)); /* emb_params */
  snprintf(p, sizeof p, "%s/checkpoints/tiny-sd15.safetensors", f->models);
  test_write_tiny_checkpoint(p, "tiny", 3);
  mpass_options o = {.n_threads = 2, .models_dir = f->models};
  assert_ok(mpass_ctx_create(&o, &f->ctx));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->ctx);
  free(f->dir), free(f->models);
  free(f);
  return 0;
}

static mp_error *run_doc(fixture *f, const char *fmt, const char *extra, const char *name, char **dir) {
  char *img = test_vision_path("images/sample6.jpg"), doc[4096], out[1024];
  snprintf(doc, sizeof doc, fmt, extra, img);
  free(img);
  mp_job *job;
  mp_plan *plan;
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  assert_string_equal(job->base_model, "scene-xl");
  assert_ok(mp_plan_make(job, &plan));
  char *v = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  snprintf(out, sizeof out, "%s/out", f->dir);
  mp_run_options o = {.out_dir = out, .job_name = name, .document = doc, .vocab = v, .rng = MP_RNG_CPU, .clip_skip = 1};
  mp_error *e = mp_run_plan(f->ctx, plan, &o, dir);
  free(v);
  mp_plan_free(plan);
  mp_job_free(job);
  return e;
}

static void test_sdxl_scene_sd15_person(void **state) {
  fixture *f = *state;
  char *dir = NULL, p[1200];
  /* the scene alone on SDXL */
  assert_ok(run_doc(f, SCENE_DOC, "", "scene", &dir));
  snprintf(p, sizeof p, "%s/result.json", dir);
  cJSON *res = test_read_json(p);
  cJSON *pass = cJSON_GetObjectItem(res, "passes")->child;
  assert_string_equal(cJSON_GetObjectItem(pass, "pass")->valuestring, "scene");
  assert_string_equal(cJSON_GetObjectItem(pass, "family")->valuestring, "SDXL");
  assert_int_equal(cJSON_GetObjectItem(pass, "width")->valueint, 128);
  assert_null(pass->next);
  cJSON_Delete(res);
  free(dir);
  /* persons on SD 1.5 while base_model names the SDXL file */
  assert_ok(run_doc(f, PERSONS_DOC, "", "mixed", &dir));
  snprintf(p, sizeof p, "%s/result.json", dir);
  res = test_read_json(p);
  cJSON *models = cJSON_GetObjectItem(res, "models");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(models, "scene"), "family")->valuestring, "SDXL");
  assert_non_null(strstr(cJSON_GetObjectItem(cJSON_GetObjectItem(models, "scene"), "path")->valuestring, "scene-xl"));
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(models, "persons"), "family")->valuestring, "SD 1.x");
  assert_non_null(strstr(cJSON_GetObjectItem(cJSON_GetObjectItem(models, "persons"), "path")->valuestring, "tiny-sd15"));
  int persons = 0;
  for (cJSON *ps = cJSON_GetObjectItem(res, "passes")->child; ps; ps = ps->next) {
    const char *name = cJSON_GetObjectItem(ps, "pass")->valuestring;
    const char *model = cJSON_GetObjectItem(ps, "model")->valuestring, *family = cJSON_GetObjectItem(ps, "family")->valuestring;
    if (!strncmp(name, "person", 6)) {
      persons++;
      assert_string_equal(model, "tiny-sd15"), assert_string_equal(family, "SD 1.x");
      /* rendered near SD 1.5's native size, not the scene's */
      int w = cJSON_GetObjectItem(ps, "width")->valueint, h = cJSON_GetObjectItem(ps, "height")->valueint;
      assert_true(w * h <= 640 * 640 && w * h >= 384 * 384);
    }
  }
  assert_int_equal(persons, 1);
  cJSON_Delete(res);
  free(dir);
}

static void test_sdxl_lora_on_sd15_person(void **state) {
  fixture *f = *state;
  char *dir = NULL;
  mp_error *e = run_doc(f, PERSONS_DOC, " <lora:xl-style:1>", "wrong-family", &dir);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "is for SDXL"));
  assert_non_null(strstr(mp_error_message(e), "the model is SD 1.x"));
  mp_error_free(e);
  assert_null(dir);
}

/* An SDXL embedding is used by the SDXL scene pass (no warning); an SD 1.x one there is an error
 * naming both families. */
static void test_sdxl_textual_inversion(void **state) {
  fixture *f = *state;
  char *v = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz"), doc[1024], out[1024];
  snprintf(out, sizeof out, "%s/out", f->dir);
  const char *names[2] = {"xl-emb", "sd15-emb"};
  for (int i = 0; i < 2; i++) {
    snprintf(doc, sizeof doc, SCENE_TI_DOC, names[i]);
    mp_job *job;
    mp_plan *plan;
    assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
    assert_int_equal(job->n_embeddings, 1);
    assert_ok(mp_plan_make(job, &plan));
    mp_run_options o = {.out_dir = out, .job_name = names[i], .document = doc, .vocab = v, .rng = MP_RNG_CPU, .clip_skip = 1};
    char *dir = NULL;
    mp_error *e = mp_run_plan(f->ctx, plan, &o, &dir);
    if (i == 0) {
      assert_ok(e);
      char p[1200];
      snprintf(p, sizeof p, "%s/result.json", dir);
      cJSON *res = test_read_json(p);
      for (cJSON *w = cJSON_GetObjectItem(res, "warnings")->child; w; w = w->next) assert_null(strstr(w->valuestring, "textual"));
      cJSON_Delete(res);
    } else {
      assert_err_contains(e, "'sd15-emb' is an SD 1.x embedding (one vector set, 32 wide); this SDXL model needs clip_l");
    }
    free(dir);
    mp_plan_free(plan);
    mp_job_free(job);
  }
  free(v);
}

static void test_families_helpers(void **state) {
  fixture *f = *state;
  char *path = NULL;
  assert_ok(mp_default_sd15_checkpoint(f->models, &path));
  assert_non_null(strstr(path, "tiny-sd15"));
  free(path);
  assert_ok(mp_base_model_path(f->models, "scene-xl", &path));
  mp_family fam;
  assert_ok(mp_checkpoint_family(path, &fam));
  assert_int_equal(fam, MP_FAMILY_SDXL);
  free(path);
  assert_err_contains(mp_base_model_path(f->models, "nope", &path), "no checkpoint tune with that id");
  assert_err_contains(mp_base_model_path(f->models, "../x", &path), "expected a checkpoint name");
  int w, h;
  mp_sdxl_default_size(MP_AR_NONE, &w, &h), assert_true(w == 1024 && h == 1024);
  mp_sdxl_default_size(MP_AR_PORTRAIT, &w, &h), assert_true(w == 832 && h == 1216);
  mp_sdxl_default_size(MP_AR_16_9, &w, &h), assert_true(w == 1344 && h == 768);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_families_helpers),
      cmocka_unit_test(test_sdxl_scene_sd15_person),
      cmocka_unit_test(test_sdxl_lora_on_sd15_person),
      cmocka_unit_test(test_sdxl_textual_inversion),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
