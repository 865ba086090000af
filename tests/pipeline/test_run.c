/* The multi-pass pipeline end to end on the tiny model (random weights: the pixels are noise, the
 * structure is what is tested): a 2-person document on a real group photo with every post step. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/image.h"
#include "pipeline/params.h"
#include "pipeline/run.h"
#include "pipeline/tunes.h"
#include "prompt/document.h"
#include "prompt/plan.h"
#include "models_folder.h"
#include "testutil.h"

static const char *DOC =
    "--tiled_upscale BREAK BREAK a woman in a red dress <lora:lora_a:0.8>\n"
    "BREAK a woman in a blue coat <lora:lora_b:0.5>\n"
    "num_images=2\n"
    "input_image=%s\n"
    "negative_prompt=blurry BREAK BREAK ugly BREAK bad hands\n"
    "seed=1000\n"
    "steps=2\n"
    "scheduler=euler\n"
    "w=256\n"
    "h=192\n"
    "hires_fix=true\n"
    "inpaint_faces=true\n"
    "film_grain=true\n"
    "color_grading=Ektar\n";

typedef struct {
  char *dir, *models, *ckpt, *doc;
  mpass_ctx *ctx;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  char p[1024];
  f->models = test_models_folder(f->dir); /* with the detection models fetched by scripts/fetch-models.sh */
  snprintf(p, sizeof p, "%s/lora", f->models); mkdir(p, 0755);
  char *lora = test_shared_path("golden/tiny/lora_tiny.safetensors");
  snprintf(p, sizeof p, "%s/lora/lora_a.safetensors", f->models); test_copy_file(lora, p);
  snprintf(p, sizeof p, "%s/lora/lora_b.safetensors", f->models); test_copy_file(lora, p);
  free(lora);
  snprintf(p, sizeof p, "%s/demo.safetensors", f->dir); f->ckpt = strdup(p);
  test_write_tiny_checkpoint(f->ckpt, "tiny", 3);
  char *photo = test_vision_path("images/sample6.jpg"), doc[4096];
  snprintf(doc, sizeof doc, DOC, photo);
  free(photo);
  f->doc = strdup(doc);
  mpass_options o = {.n_threads = 2, .models_dir = f->models};
  assert_ok(mpass_ctx_create(&o, &f->ctx));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->ctx);
  free(f->dir), free(f->models), free(f->ckpt), free(f->doc);
  free(f);
  return 0;
}

static char *vocab(void) { return test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz"); }

static void test_two_person_job(void **state) {
  fixture *f = *state;
  mp_job *job;
  assert_ok(mp_job_parse_text(f->doc, strlen(f->doc), &job));
  mp_plan *plan;
  assert_ok(mp_plan_make(job, &plan));
  char out[1024], *v = vocab(), *dir = NULL;
  snprintf(out, sizeof out, "%s/out", f->dir);
  mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = "job", .document = f->doc, .vocab = v,
                      .debug_passes = true, .rng = MP_RNG_CPU, .clip_skip = 1};
  assert_ok(mp_run_plan(f->ctx, plan, &o, &dir));

  /* result.json: the passes in order, with the right prompts, LoRAs and seeds */
  char p[1200];
  snprintf(p, sizeof p, "%s/result.json", dir);
  cJSON *res = test_read_json(p);
  cJSON *passes = cJSON_GetObjectItem(res, "passes");
  int person_seen[2] = {0};
  const char *last = "";
  int order_ok = 1;
  static const char *const stage[] = {"person", "tile", "hires", "face"};
  int last_stage = 0, last_image = 0;
  for (cJSON *ps = passes->child; ps; ps = ps->next) {
    const char *name = cJSON_GetObjectItem(ps, "pass")->valuestring;
    int image = cJSON_GetObjectItem(ps, "image")->valueint;
    double seed = cJSON_GetObjectItem(ps, "seed")->valuedouble;
    cJSON *loras = cJSON_GetObjectItem(ps, "loras");
    const char *prompt = cJSON_GetObjectItem(ps, "prompt")->valuestring;
    const char *neg = cJSON_GetObjectItem(ps, "negative_prompt")->valuestring;
    int st = 0;
    for (int s = 0; s < 4; s++)
      if (!strncmp(name, stage[s], strlen(stage[s]))) st = s;
    if (image != last_image) last_stage = 0, last_image = image;
    if (st < last_stage) order_ok = 0;
    last_stage = st;
    if (!strcmp(name, "person 1") || !strcmp(name, "person 2")) {
      int k = name[7] - '0';
      person_seen[k - 1]++;
      assert_true(seed == 1000 + image + k); /* SPEC §4.3: seed + i + k */
      assert_int_equal(cJSON_GetArraySize(loras), 1);
      assert_string_equal(cJSON_GetObjectItem(loras->child, "id")->valuestring, k == 1 ? "lora_a" : "lora_b");
      assert_string_equal(prompt, k == 1 ? "a woman in a red dress" : "a woman in a blue coat");
      assert_string_equal(neg, k == 1 ? "ugly" : "bad hands");
    }
    last = name;
  }
  (void)last;
  assert_true(order_ok);
  assert_int_equal(person_seen[0], 2);
  assert_int_equal(person_seen[1], 2);
  cJSON_Delete(res);

  for (int i = 0; i < 2; i++) {
    /* outside every person's (dilated, blurred) mask, pass 2 left the scene's pixels as they were */
    mp_image scene, done, m1, m2;
    snprintf(p, sizeof p, "%s/debug/%d-scene.png", dir, i); assert_ok(mp_image_read(p, 3, &scene));
    snprintf(p, sizeof p, "%s/debug/%d-persons-done.png", dir, i); assert_ok(mp_image_read(p, 3, &done));
    snprintf(p, sizeof p, "%s/debug/%d-person-1-mask.png", dir, i); assert_ok(mp_image_read(p, 1, &m1));
    snprintf(p, sizeof p, "%s/debug/%d-person-2-mask.png", dir, i); assert_ok(mp_image_read(p, 1, &m2));
    long outside = 0, changed_outside = 0, changed_inside = 0;
    for (int px = 0; px < scene.width * scene.height; px++) {
      bool out_of_masks = m1.pixels[px] == 0 && m2.pixels[px] == 0;
      bool same = !memcmp(scene.pixels + 3 * px, done.pixels + 3 * px, 3);
      outside += out_of_masks;
      changed_outside += out_of_masks && !same;
      changed_inside += !out_of_masks && !same;
    }
    assert_true(outside > scene.width * scene.height / 4);
    assert_int_equal(changed_outside, 0);
    assert_true(changed_inside > 0);
    mp_image_free(&scene), mp_image_free(&done), mp_image_free(&m1), mp_image_free(&m2);

    /* the PNG's parameters carry the document, which parses back into the same job */
    snprintf(p, sizeof p, "%s/%d.png", dir, i);
    char *text = NULL;
    assert_ok(mp_image_read_png_text(p, "parameters", &text));
    assert_non_null(text);
    mp_infotext it;
    assert_ok(mp_infotext_parse(text, &it));
    long long seed;
    assert_ok(mp_infotext_get_int(&it, "Seed", &seed));
    assert_int_equal(seed, 1000 + i);
    const char *docp = mp_infotext_get(&it, "mpass document");
    assert_non_null(docp);
    mp_job *back;
    assert_ok(mp_job_parse_text(docp, strlen(docp), &back));
    assert_int_equal(back->seed, job->seed);
    assert_int_equal(back->num_images, job->num_images);
    assert_int_equal(back->n_persons, job->n_persons);
    assert_string_equal(back->passes[1].prompt, job->passes[1].prompt);
    assert_string_equal(back->passes[2].negative, job->passes[2].negative);
    assert_true(back->flags.tiled_upscale && back->hires_fix && back->inpaint_faces && back->film_grain);
    mp_job_free(back);
    mp_infotext_free(&it);
    free(text);
  }
  free(dir);
  free(v);
  mp_plan_free(plan);
  mp_job_free(job);
}

static int cancel_after_three(const mpass_progress *p, void *user) {
  int *steps = user;
  return p->step > 0 && ++*steps >= 3;
}

static void test_cancel_leaves_nothing(void **state) {
  fixture *f = *state;
  mp_job *job;
  assert_ok(mp_job_parse_text(f->doc, strlen(f->doc), &job));
  mp_plan *plan;
  assert_ok(mp_plan_make(job, &plan));
  char out[1024], *v = vocab();
  snprintf(out, sizeof out, "%s/cancel", f->dir);
  int steps = 0;
  mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = "job", .document = f->doc, .vocab = v,
                      .rng = MP_RNG_CPU, .progress = cancel_after_three, .progress_user = &steps};
  assert_err_contains(mp_run_plan(f->ctx, plan, &o, NULL), "cancelled");
  assert_int_equal(steps, 3); /* stopped at the step that asked */
  DIR *d = opendir(out);
  assert_non_null(d);
  int entries = 0;
  for (struct dirent *de; (de = readdir(d));) entries += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
  closedir(d);
  assert_int_equal(entries, 0); /* neither the job folder nor a partial one */
  free(v);
  mp_plan_free(plan);
  mp_job_free(job);
}

/* A LoRA that is not there fails the job before its first step, naming the person and the file
 * searched for, and leaves nothing in the output folder. */
static void test_missing_lora_fails_first(void **state) {
  fixture *f = *state;
  char *doc = strdup(f->doc), *at = strstr(doc, "lora_b");
  at[5] = 'x'; /* <lora:lora_x:0.5>: person 2's */
  mp_job *job;
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  mp_plan *plan;
  assert_ok(mp_plan_make(job, &plan));
  char out[1024], *v = vocab();
  snprintf(out, sizeof out, "%s/missing", f->dir);
  int steps = 0;
  mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = "job", .document = doc, .vocab = v,
                      .rng = MP_RNG_CPU, .progress = cancel_after_three, .progress_user = &steps};
  mp_error *e = mp_run_plan(f->ctx, plan, &o, NULL);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "person 2: <lora:lora_x>: LoRA 'lora_x' not found; searched: "));
  assert_non_null(strstr(mp_error_message(e), "/lora/lora_x.safetensors"));
  mp_error_free(e);
  assert_int_equal(steps, 0);
  struct stat st;
  assert_int_not_equal(stat(out, &st), 0); /* not even the output folder */
  free(v), free(doc);
  mp_plan_free(plan);
  mp_job_free(job);
}

/* The detection and upscaling models a plan needs are loaded before its first step: a models folder
 * with damaged ones fails a person job at once, naming what to run, and a job that needs neither
 * runs. (Damaged rather than missing: a test build also finds the checkout's models/.) */
static void test_damaged_detection_models_fail_first(void **state) {
  fixture *f = *state;
  char bare[1024], p[1200], out[1024], doc[4096], *v = vocab(), *photo = test_vision_path("images/sample6.jpg");
  snprintf(bare, sizeof bare, "%s/damaged-models", f->dir);
  static const char *const damaged[] = {"", "/vision", "/upscale", "/vision/pose_solution_packed_assets.data",
                                        "/upscale/realesrgan-x4fast.param"};
  for (int i = 0; i < 5; i++) {
    snprintf(p, sizeof p, "%s%s", bare, damaged[i]);
    if (i < 3) {
      assert_int_equal(mkdir(p, 0755), 0);
    } else {
      FILE *fp = fopen(p, "w");
      assert_non_null(fp);
      fputs("not a model\n", fp);
      fclose(fp);
    }
  }
  snprintf(out, sizeof out, "%s/bare-out", f->dir);
  mpass_options mo = {.n_threads = 2, .models_dir = bare};
  mpass_ctx *ctx;
  assert_ok(mpass_ctx_create(&mo, &ctx));
  static const char *const docs[] = {
      "BREAK BREAK a woman\ninput_image=%s\nsteps=1\nscheduler=euler\nw=64\nh=64\n",        /* persons */
      "a room\nsuper_resolution=true\ninput_image=%s\nsteps=1\nscheduler=euler\nw=64\nh=64\n", /* Real-ESRGAN */
      "a room\ninput_image=%s\nsteps=1\nscheduler=euler\nw=64\nh=64\n"};                  /* neither */
  static const char *const errors[] = {"the person and face detection models (run scripts/fetch-models.sh)",
                                       "super_resolution (run scripts/fetch-models.sh)", NULL};
  for (int i = 0; i < 3; i++) {
    snprintf(doc, sizeof doc, docs[i], photo);
    mp_job *job;
    assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
    mp_plan *plan;
    assert_ok(mp_plan_make(job, &plan));
    int steps = 0;
    char name[16];
    snprintf(name, sizeof name, "job%d", i);
    mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = name, .document = doc, .vocab = v,
                        .rng = MP_RNG_CPU, .progress = cancel_after_three, .progress_user = &steps};
    mp_error *e = mp_run_plan(ctx, plan, &o, NULL);
    if (errors[i]) {
      if (!e) fail_msg("document %d ran (%d steps) without its models", i, steps);
      assert_non_null(strstr(mp_error_message(e), errors[i]));
      assert_int_equal(steps, 0);
    } else {
      assert_ok(e);
      e = NULL;
      assert_int_equal(steps, 1);
    }
    mp_error_free(e);
    mp_plan_free(plan);
    mp_job_free(job);
  }
  mpass_ctx_destroy(ctx);
  free(v), free(photo);
}

/* A checkpoint tune replaces the whole model for its person's pass only. */
static void test_checkpoint_tune(void **state) {
  fixture *f = *state;
  mp_tune_spec spec = {.id = "ckpt_tune", .name = "woman", .token = "sks", .type = MP_TUNE_CHECKPOINT};
  assert_ok(mp_tune_add(f->models, &spec, f->ckpt, NULL));
  char doc[4096];
  const char *src = getenv("MPASS_SOURCE_DIR");
  snprintf(doc, sizeof doc,
           "BREAK BREAK a woman <lora:ckpt_tune:1>\ninput_image=%s/models/vision/images/sample6.jpg\nseed=5\nsteps=1\n"
           "scheduler=euler\nw=256\nh=192\n",
           src ? src : ".");
  mp_job *job;
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  mp_plan *plan;
  assert_ok(mp_plan_make(job, &plan));
  char out[1024], *v = vocab(), *dir = NULL, p[1200];
  snprintf(out, sizeof out, "%s/tune", f->dir);
  mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = "job", .document = doc, .vocab = v, .rng = MP_RNG_CPU};
  assert_ok(mp_run_plan(f->ctx, plan, &o, &dir));
  snprintf(p, sizeof p, "%s/result.json", dir);
  cJSON *res = test_read_json(p);
  cJSON *pass = cJSON_GetObjectItem(res, "passes")->child;
  assert_string_equal(cJSON_GetObjectItem(pass, "pass")->valuestring, "person 1");
  cJSON *lora = cJSON_GetObjectItem(pass, "loras")->child;
  assert_string_equal(cJSON_GetObjectItem(lora, "type")->valuestring, "checkpoint");
  assert_non_null(strstr(cJSON_GetObjectItem(lora, "file")->valuestring, "tunes/ckpt_tune/"));
  assert_string_equal(cJSON_GetObjectItem(pass, "model")->valuestring, "ckpt_tune"); /* the tune's copy of the file */
  cJSON_Delete(res);
  free(dir), free(v);
  mp_plan_free(plan);
  mp_job_free(job);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cancel_leaves_nothing),
      cmocka_unit_test(test_missing_lora_fails_first),
      cmocka_unit_test(test_damaged_detection_models_fail_first),
      cmocka_unit_test(test_two_person_job),
      cmocka_unit_test(test_checkpoint_tune),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
