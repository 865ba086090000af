/* controlnet= end to end on the tiny model with the tiny golden ControlNet (random weights: the pixels
 * are noise, the wiring is what is tested): the control image, which passes use it, result.json, the
 * PNG's "ControlNet 0" field, scale 0 equal to no ControlNet, and the errors for missing files and
 * types that need an annotator network. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io/image.h"
#include "pipeline/params.h"
#include "pipeline/run.h"
#include "post/control.h"
#include "post/resize.h"
#include "prompt/document.h"
#include "prompt/plan.h"
#include "models_folder.h"
#include "pack_listing.h"
#include "testutil.h"

typedef struct {
  char *dir, *models, *ckpt, *input, *vocab;
  mpass_ctx *ctx;
  int runs;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  char p[1024];
  f->models = test_models_folder(f->dir);
  snprintf(p, sizeof p, "%s/controlnet", f->models), mkdir(p, 0755);
  /* the tiny ControlNet under the canny release name, its cldm config beside it */
  char *cn = test_shared_path("golden/tiny-controlnet/controlnet_tiny.safetensors");
  char *cj = test_shared_path("golden/tiny-controlnet/controlnet_tiny.json");
  snprintf(p, sizeof p, "%s/controlnet/control_v11p_sd15_canny.safetensors", f->models), test_copy_file(cn, p);
  snprintf(p, sizeof p, "%s/controlnet/control_v11p_sd15_canny.json", f->models), test_copy_file(cj, p);
  free(cn), free(cj);
  f->input = test_vision_path("images/sample6.jpg");
  snprintf(p, sizeof p, "%s/tiny.safetensors", f->dir), f->ckpt = strdup(p);
  test_write_tiny_checkpoint(f->ckpt, "tiny", 3);
  f->vocab = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  mpass_options o = {.n_threads = 2, .models_dir = f->models};
  assert_ok(mpass_ctx_create(&o, &f->ctx));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->ctx);
  free(f->dir), free(f->models), free(f->ckpt), free(f->input), free(f->vocab);
  free(f);
  return 0;
}

/* Run a document (with "%s" for the input image); returns the job folder (free) or NULL with *err. */
static char *run_doc(fixture *f, const char *fmt, const char *controlnet_model, mp_error **err) {
  char doc[2048], out[1024], name[32];
  snprintf(doc, sizeof doc, fmt, f->input);
  mp_job *job;
  mp_plan *plan;
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  assert_ok(mp_plan_make(job, &plan));
  snprintf(out, sizeof out, "%s/out", f->dir);
  snprintf(name, sizeof name, "job%d", f->runs++);
  mp_run_options o = {.model_path = f->ckpt, .out_dir = out, .job_name = name, .document = doc, .vocab = f->vocab,
                      .debug_passes = true, .rng = MP_RNG_CPU, .clip_skip = 1, .controlnet_model = controlnet_model};
  char *dir = NULL;
  *err = mp_run_plan(f->ctx, plan, &o, &dir);
  mp_plan_free(plan);
  mp_job_free(job);
  return dir;
}

static void read_png(const char *dir, const char *file, mp_image *img) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  assert_ok(mp_image_read(p, 3, img));
}

static const char *CANNY =
    "a city street BREAK BREAK a person in a coat\n"
    "input_image=%s\ncontrolnet=canny\ncontrolnet_txt2img=true\ncontrolnet_conditioning_scale=%s\n"
    "seed=7\nsteps=2\nscheduler=euler\nw=128\nh=128\n";

static void test_canny_txt2img(void **state) {
  fixture *f = *state;
  char fmt[1024];
  snprintf(fmt, sizeof fmt, CANNY, "%s", "0.8");
  mp_error *e = NULL;
  char *dir = run_doc(f, fmt, NULL, &e);
  assert_ok(e);
  char p[2048];
  snprintf(p, sizeof p, "%s/result.json", dir);
  cJSON *res = test_read_json(p);
  cJSON *cn = cJSON_GetObjectItem(res, "controlnet");
  assert_non_null(cn);
  assert_string_equal(cJSON_GetObjectItem(cn, "type")->valuestring, "canny");
  assert_true(cJSON_GetObjectItem(cn, "scale")->valuedouble == 0.8);
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(cn, "txt2img")));
  assert_non_null(strstr(cJSON_GetObjectItem(cn, "file")->valuestring, "controlnet/control_v11p_sd15_canny.safetensors"));
  assert_int_equal(strlen(cJSON_GetObjectItem(cn, "hash")->valuestring), 10);
  assert_string_equal(cJSON_GetObjectItem(cn, "control_image")->valuestring, "control.png");
  /* the scene is txt2img guided by the control image; a person pass (if a person was found) too */
  int scenes = 0;
  for (cJSON *ps = cJSON_GetObjectItem(res, "passes")->child; ps; ps = ps->next) {
    const char *name = cJSON_GetObjectItem(ps, "pass")->valuestring;
    bool guided = cJSON_IsTrue(cJSON_GetObjectItem(ps, "controlnet"));
    if (!strcmp(name, "scene")) {
      scenes++;
      assert_true(guided);
      assert_null(cJSON_GetObjectItem(ps, "denoising_strength")); /* txt2img */
    } else if (!strncmp(name, "person", 6)) {
      assert_true(guided);
    } else if (!strncmp(name, "face", 4)) {
      assert_false(guided);
    }
  }
  assert_int_equal(scenes, 1);
  cJSON_Delete(res);
  /* control.png is the canny map of the input fitted to the scene, on the contact sheet too */
  mp_image control, src, fitted, edges, sheet_copy;
  read_png(dir, "control.png", &control);
  read_png(dir, "debug/0-control.png", &sheet_copy);
  assert_ok(mp_image_read(f->input, 3, &src));
  assert_ok(mp_image_fit_crop(&src, 128, 128, &fitted));
  assert_ok(mp_canny(&fitted, 100, 200, 3, &edges));
  assert_int_equal(control.width, 128);
  assert_memory_equal(control.pixels, edges.pixels, (size_t)128 * 128 * 3);
  assert_memory_equal(sheet_copy.pixels, edges.pixels, (size_t)128 * 128 * 3);
  size_t lit = 0;
  for (size_t k = 0; k < (size_t)128 * 128 * 3; k++) lit += edges.pixels[k] == 255;
  assert_true(lit > 100);
  /* the PNG's parameters carry A1111's ControlNet unit */
  snprintf(p, sizeof p, "%s/0.png", dir);
  char *text = NULL;
  assert_ok(mp_image_read_png_text(p, "parameters", &text));
  mp_infotext it;
  assert_ok(mp_infotext_parse(text, &it));
  const char *unit = mp_infotext_get(&it, "ControlNet 0");
  assert_non_null(unit);
  assert_non_null(strstr(unit, "Module: canny, Model: control_v11p_sd15_canny ["));
  assert_non_null(strstr(unit, "Weight: 0.8"));
  mp_infotext_free(&it);
  free(text);
  mp_image_free(&control), mp_image_free(&src), mp_image_free(&fitted), mp_image_free(&edges), mp_image_free(&sheet_copy);
  free(dir);
}

/* Scale 0 adds zero residuals: the image is the plain txt2img one, bit for bit; scale 1 changes it. */
static void test_scale_zero_is_no_controlnet(void **state) {
  fixture *f = *state;
  static const char *plain = "a city street\nseed=7\nsteps=2\nscheduler=euler\nw=128\nh=128\n";
  static const char *guided = "a city street\ninput_image=%s\ncontrolnet=canny\ncontrolnet_txt2img=true\n"
                              "controlnet_conditioning_scale=%s\nseed=7\nsteps=2\nscheduler=euler\nw=128\nh=128\n";
  char fmt[1024];
  mp_error *e = NULL;
  char *d0 = run_doc(f, plain, NULL, &e);
  assert_ok(e);
  snprintf(fmt, sizeof fmt, guided, "%s", "0");
  char *d1 = run_doc(f, fmt, NULL, &e);
  assert_ok(e);
  snprintf(fmt, sizeof fmt, guided, "%s", "1");
  char *d2 = run_doc(f, fmt, NULL, &e);
  assert_ok(e);
  mp_image a, b, c;
  read_png(d0, "0.png", &a), read_png(d1, "0.png", &b), read_png(d2, "0.png", &c);
  assert_memory_equal(a.pixels, b.pixels, (size_t)128 * 128 * 3);
  assert_true(memcmp(a.pixels, c.pixels, (size_t)128 * 128 * 3) != 0);
  mp_image_free(&a), mp_image_free(&b), mp_image_free(&c);
  free(d0), free(d1), free(d2);
}

/* Under bf16 the ControlNet's packs go to the models folder's cache like a checkpoint's
 * (pipeline/pack_files.h): the next job maps the same files instead of packing again, and paints the
 * same image, bit for bit. */
static void test_packs_kept_on_disk(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) {
    print_message("no native bf16 on this CPU: the pack cache serves the bf16 backend\n");
    return;
  }
  char fmt[1024], packs[1100];
  snprintf(fmt, sizeof fmt, CANNY, "%s", "1");
  snprintf(packs, sizeof packs, "%.1000s/.cache/packs", f->models);
  mp_error *e = NULL;
  char *d0 = run_doc(f, fmt, NULL, &e);
  assert_ok(e);
  pack_listing *before = malloc(sizeof *before), *after = malloc(sizeof *after);
  pack_list(packs, before);
  assert_int_equal(before->n_dirs, 1); /* the checkpoint lies outside the models folder: its packs do not */
  assert_non_null(strstr(before->dir, "/control_v11p_sd15_canny-"));
  assert_true(before->n > 10);
  char *d1 = run_doc(f, fmt, NULL, &e);
  assert_ok(e);
  pack_list(packs, after);
  assert_int_equal(after->n, before->n);
  for (int i = 0; i < before->n; i++) {
    assert_string_equal(after->name[i], before->name[i]);
    assert_int_equal(after->ino[i], before->ino[i]); /* mapped, not written again */
  }
  mp_image a, b;
  read_png(d0, "0.png", &a), read_png(d1, "0.png", &b);
  assert_memory_equal(a.pixels, b.pixels, (size_t)128 * 128 * 3);
  mp_image_free(&a), mp_image_free(&b);
  free(before), free(after), free(d0), free(d1);
}

/* pose: skeletons of the people in the input (found by the person models), img2img with control on
 * top when controlnet_txt2img is false; the file named directly by the option. */
static void test_pose_img2img(void **state) {
  fixture *f = *state;
  char cn[1024];
  snprintf(cn, sizeof cn, "%s/controlnet/control_v11p_sd15_canny.safetensors", f->models);
  mp_error *e = NULL;
  char *dir = run_doc(f, "a group of friends\ninput_image=%s\ncontrolnet=pose\ndenoising_strength=0.6\nseed=3\nsteps=2\n"
                         "scheduler=euler\nw=192\nh=128\n", cn, &e);
  assert_ok(e);
  char p[2048];
  snprintf(p, sizeof p, "%s/result.json", dir);
  cJSON *res = test_read_json(p);
  cJSON *scene = cJSON_GetObjectItem(res, "passes")->child;
  assert_string_equal(cJSON_GetObjectItem(scene, "pass")->valuestring, "scene");
  assert_true(cJSON_GetObjectItem(scene, "denoising_strength")->valuedouble == 0.6); /* img2img */
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(scene, "controlnet")));
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(res, "controlnet"), "type")->valuestring, "pose");
  cJSON_Delete(res);
  mp_image control;
  read_png(dir, "control.png", &control);
  /* sample6 has four people: their skeletons are drawn in OpenPose's colours; the neck dot is orange */
  size_t coloured = 0, neck = 0;
  for (size_t k = 0; k < (size_t)control.width * control.height; k++) {
    const uint8_t *px = control.pixels + 3 * k;
    coloured += px[0] || px[1] || px[2];
    neck += px[0] == 255 && px[1] == 85 && px[2] == 0;
  }
  assert_true(coloured > 200);
  assert_true(neck >= 4 * 20); /* four neck dots of about 49 pixels, some overlapped */
  mp_image_free(&control);
  free(dir);
}

/* No input image, controlnet=pose and two person sections: the scene is guided by two standing
 * skeletons (the built-in layout), recorded in result.json; --person_layout none turns it off. */
static void test_pose_layout(void **state) {
  fixture *f = *state;
  char cn[1024];
  snprintf(cn, sizeof cn, "%s/controlnet/control_v11p_sd15_canny.safetensors", f->models);
  mp_error *e = NULL;
  char *dir = run_doc(f, "a beach BREAK BREAK a woman BREAK a man\ncontrolnet=pose\nseed=5\nsteps=2\nscheduler=euler\nw=256\nh=128\n",
                      cn, &e);
  assert_ok(e);
  char p[2048];
  snprintf(p, sizeof p, "%s/result.json", dir);
  cJSON *res = test_read_json(p);
  cJSON *c = cJSON_GetObjectItem(res, "controlnet");
  cJSON *layout = cJSON_GetObjectItem(c, "person_layout");
  assert_int_equal(cJSON_GetArraySize(layout), 2);
  assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(layout, 1), "person")->valueint, 2);
  assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(layout, 1), "x_center")->valuedouble == 192);
  cJSON *scene = cJSON_GetObjectItem(res, "passes")->child;
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(scene, "controlnet")));
  cJSON_Delete(res);
  mp_image control, drawn;
  read_png(dir, "control.png", &control);
  read_png(dir, "debug/0-control.png", &drawn);
  mp_openpose_skeleton s[2];
  mp_openpose_layout(2, 256, 128, s);
  mp_image want;
  assert_ok(mp_openpose_draw(s, 2, 256, 128, &want));
  assert_memory_equal(control.pixels, want.pixels, (size_t)256 * 128 * 3);
  assert_memory_equal(drawn.pixels, want.pixels, (size_t)256 * 128 * 3);
  mp_image_free(&control), mp_image_free(&drawn), mp_image_free(&want);
  free(dir);
  dir = run_doc(f, "a beach BREAK BREAK a woman --person_layout none\ncontrolnet=pose\nsteps=1\nw=64\nh=64\n", cn, &e);
  assert_null(dir);
  assert_err_contains(e, "needs an input_image");
}

static void test_errors(void **state) {
  fixture *f = *state;
  mp_error *e = NULL;
  char *dir = run_doc(f, "a\ninput_image=%s\ncontrolnet=tile\nsteps=1\nw=64\nh=64\n", NULL, &e);
  assert_null(dir);
  assert_err_contains(e, "controlnet/control_v11f1e_sd15_tile.safetensors");
  dir = run_doc(f, "a\ninput_image=%s\ncontrolnet=depth\nsteps=1\nw=64\nh=64\n", NULL, &e);
  assert_null(dir);
  assert_err_contains(e, "not available: needs the depth annotator model");
  dir = run_doc(f, "a\ncontrolnet=canny\nsteps=1\nw=64\nh=64\n", NULL, &e);
  assert_null(dir);
  assert_err_contains(e, "needs an input_image");
  dir = run_doc(f, "a\ninput_image=%s\ncontrolnet=canny\nsteps=1\nw=64\nh=64\n", "/nonexistent/cn.safetensors", &e);
  assert_null(dir);
  assert_err_contains(e, "/nonexistent/cn.safetensors");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_canny_txt2img),
      cmocka_unit_test(test_scale_zero_is_no_controlnet),
      cmocka_unit_test(test_packs_kept_on_disk),
      cmocka_unit_test(test_pose_img2img),
      cmocka_unit_test(test_pose_layout),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
