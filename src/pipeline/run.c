#include "pipeline/run.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/pack_cache.h"
#include "io/diffusers.h"
#include "io/image.h"
#include "models/embedding.h"
#include "models/esrgan.h"
#include "models/person.h"
#include "pipeline/control.h"
#include "pipeline/engine.h"
#include "pipeline/params.h"
#include "io/fetch.h"
#include "pipeline/families.h"
#include "pipeline/pack_files.h"
#include "pipeline/tunes.h"
#include "post/contact_sheet.h"
#include "post/grading.h"
#include "post/grain.h"
#include "post/mask.h"
#include "post/resize.h"
#include "post/tiles.h"

/* Everything one job holds while it runs. */
typedef struct {
  mpass_ctx *ctx;
  const mp_plan *plan;
  const mp_job *job;
  const mp_run_options *o;
  mp_tokenizer *tok;
  mp_engine *base;
  mp_engine *tune; /* a checkpoint tune's model, kept while consecutive passes use it */
  /* base_model chose pass 1's checkpoint: person and face passes run on the default (SD 1.5) one,
   * opened at the first such pass. NULL path: they run on `base`. */
  char *persons_path;
  mp_engine *persons_engine;
  mp_person_finder finder;
  mp_esrgan *esrgan; /* loaded by prepare when a post step upscales with Real-ESRGAN */
  bool finder_loaded; /* by prepare when the plan finds persons or faces, or controlnet=pose */
  mp_ti_set ti;
  mp_progress progress;
  int width, height; /* pass-1 size */
  char *tmp_dir, *final_dir;
  cJSON *result, *passes, *warnings, *skipped, *images;
  /* the current image: intermediate results for --debug-passes */
  mp_sheet_item sheet[32];
  mp_image sheet_images[32];
  int n_sheet;
  mp_person_result persons;
  bool have_persons;
  int persons_w, persons_h; /* image size the person masks belong to */
  int person_of_section[MP_MAX_PERSONS + 1]; /* section k -> index in persons, -1 if none */
  /* ControlNet (controlnet=, docs/controlnet.md): the net, and the control image made once from the input */
  mp_controlnet *controlnet;
  mp_weights *controlnet_file; /* its weights, pinned with their pack store like a checkpoint's */
  mp_control_type control_type;
  char *controlnet_path, *controlnet_name;
  char controlnet_hash[11];
  mp_image control; /* at the scene size; empty until the first scene */
  bool control_layout; /* controlnet=pose without an input image: N standing skeletons, one per person section */
  /* the first image URL (input_image_url, else mask_image_url) as downloaded: fetched once per job, not
   * once per image */
  mp_image fetched;
  char *fetched_url;
} run;

static char *path_join(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", a, b);
  return p;
}

static void warn(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(run *r, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  cJSON_AddItemToArray(r->warnings, cJSON_CreateString(buf));
}

static void skip(run *r, int image, const char *what, const char *reason) {
  cJSON *s = cJSON_CreateObject();
  if (image >= 0) cJSON_AddNumberToObject(s, "image", image);
  cJSON_AddStringToObject(s, "step", what);
  cJSON_AddStringToObject(s, "reason", reason);
  cJSON_AddItemToArray(r->skipped, s);
}

/* ---- files ---- */

static mp_error *mkdirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0755) != 0 && errno != EEXIST) return mp_errorf("cannot create folder %s: %s", buf, strerror(errno));
      *p = '/';
    }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) return mp_errorf("cannot create folder %s: %s", buf, strerror(errno));
  return NULL;
}

static void remove_tree(const char *path) {
  DIR *d = opendir(path);
  if (d) {
    struct dirent *de;
    while ((de = readdir(d))) {
      if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
      char *p = path_join(path, de->d_name);
      if (!p) continue;
      struct stat st;
      if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
        remove_tree(p);
      else
        unlink(p);
      free(p);
    }
    closedir(d);
  }
  rmdir(path);
}

/* An input path from the document: relative paths are relative to the prompt file's folder. */
static char *input_path(const run *r, const char *p) {
  if (p[0] == '/' || !r->o->base_dir || !*r->o->base_dir) return strdup(p);
  return path_join(r->o->base_dir, p);
}

static mp_error *save_debug(run *r, int image, const char *name, const mp_image *img) {
  if (!r->o->debug_passes) return NULL;
  char file[256];
  snprintf(file, sizeof file, "debug/%d-%s.png", image, name);
  for (char *c = file + 6; *c; c++)
    if (*c == ' ') *c = '-';
  char *p = path_join(r->tmp_dir, file);
  if (!p) return mp_errorf("out of memory");
  mp_error *e = mp_image_write_png(p, img, NULL, NULL);
  free(p);
  if (!e && r->n_sheet < 32) {
    mp_image *copy = &r->sheet_images[r->n_sheet];
    e = mp_image_alloc(copy, img->width, img->height, img->channels);
    if (!e) {
      memcpy(copy->pixels, img->pixels, (size_t)img->width * img->height * img->channels);
      r->sheet[r->n_sheet].image = copy;
      r->sheet[r->n_sheet].label = strdup(name);
      r->n_sheet++;
    }
  }
  return e;
}

static void clear_sheet(run *r) {
  for (int i = 0; i < r->n_sheet; i++) {
    mp_image_free(&r->sheet_images[i]);
    free((char *)r->sheet[i].label);
  }
  r->n_sheet = 0;
}

/* ---- one diffusion pass with its LoRAs ---- */

typedef struct {
  mp_weights *files[16];
  mp_lora_spec specs[16];
  int n;
} lora_set;

static void lora_set_free(lora_set *s) {
  for (int i = 0; i < s->n; i++) mp_weights_close(s->files[i]), free((char *)s->specs[i].name);
  s->n = 0;
}

/* Resolve a pass's adapters: LoRA files and LoRA tunes go into `set`; a checkpoint tune is returned
 * in *checkpoint (the pass runs on that model). */
static mp_error *resolve_adapters(run *r, const mp_pass_text *t, lora_set *set, char **checkpoint, cJSON *record) {
  *checkpoint = NULL;
  cJSON *loras = cJSON_AddArrayToObject(record, "loras");
  for (int a = 0; a < t->n_adapters; a++) {
    const mp_adapter *ad = &t->adapters[a];
    if (ad->kind == MP_ADAPTER_FACEID) {
      warn(r, "<faceid:%s:%g> skipped: faceid adapters are not supported", ad->id, ad->weight);
      continue;
    }
    mp_lora_ref ref;
    MP_TRY(mp_resolve_lora_in(r->ctx->models_dir, r->o->tunes_root, ad->id, &ref));
    cJSON *l = cJSON_CreateObject();
    cJSON_AddStringToObject(l, "id", ad->id);
    cJSON_AddNumberToObject(l, "weight", ad->weight);
    cJSON_AddStringToObject(l, "file", ref.path);
    cJSON_AddStringToObject(l, "type", ref.is_tune && ref.tune.type == MP_TUNE_CHECKPOINT ? "checkpoint" : "lora");
    cJSON_AddItemToArray(loras, l);
    mp_error *e = NULL;
    if (ref.is_tune && ref.tune.type == MP_TUNE_CHECKPOINT) {
      free(*checkpoint);
      *checkpoint = strdup(ref.path);
    } else if (set->n == 16) {
      e = mp_errorf("more than 16 LoRAs in one pass");
    } else {
      e = mp_weights_open(ref.path, &set->files[set->n]);
      if (!e) {
        set->specs[set->n] = (mp_lora_spec){set->files[set->n], strdup(ad->id), (float)ad->weight, (float)ad->weight};
        set->n++;
      }
    }
    mp_lora_ref_free(&ref);
    if (e) return mp_error_wrap(e, "<lora:%s>", ad->id);
  }
  return NULL;
}

/* Every LoRA and tune the job names, found before the first step: a misspelt person LoRA fails the
 * job at once rather than after the scene pass (minutes at full size), and whether or not that
 * person is found in the image. The files are opened only by the passes that use them. */
static mp_error *find_adapters(const run *r) {
  for (int p = 0; p <= r->job->n_persons; p++) {
    const mp_pass_text *t = &r->job->passes[p];
    for (int a = 0; a < t->n_adapters; a++) {
      const mp_adapter *ad = &t->adapters[a];
      if (ad->kind == MP_ADAPTER_FACEID) continue;
      mp_lora_ref ref;
      mp_error *e = mp_resolve_lora_in(r->ctx->models_dir, r->o->tunes_root, ad->id, &ref);
      if (!e && access(ref.path, R_OK) != 0) e = mp_errorf("cannot read %s: %s", ref.path, strerror(errno));
      mp_lora_ref_free(&ref);
      if (e) return p ? mp_error_wrap(e, "person %d: <lora:%s>", p, ad->id) : mp_error_wrap(e, "scene: <lora:%s>", ad->id);
    }
  }
  return NULL;
}

/* The engine a pass runs on: the base model (a person's pass: the persons' default model), or a
 * checkpoint tune (opened once, kept while used). */
static mp_error *engine_for(run *r, const char *checkpoint, bool person, mp_engine **out) {
  if (!checkpoint && person && r->persons_path) {
    if (!r->persons_engine) MP_TRY(mp_engine_take(r->ctx, r->persons_path, r->tok, &r->persons_engine));
    *out = r->persons_engine;
    return NULL;
  }
  if (!checkpoint) {
    *out = r->base;
    return NULL;
  }
  if (!r->tune || strcmp(r->tune->path, checkpoint) != 0) {
    mp_engine_give(r->tune);
    r->tune = NULL;
    MP_TRY(mp_engine_take(r->ctx, checkpoint, r->tok, &r->tune));
  }
  *out = r->tune;
  return NULL;
}

typedef struct {
  const char *name; /* for progress and result.json: "scene", "person 1", "face 2", "hires fix", "tile 3" */
  const mp_pass_text *text;
  uint64_t seed;
  int steps;
  double cfg, strength;
  const mp_image *init;
  const mp_mask *mask;
  int width, height;
  bool person; /* a person's or face pass: the persons' model unless a checkpoint tune says otherwise */
  const mp_image *control; /* ControlNet control image at any size, or NULL: the pass runs without */
} pass_request;

static mp_error *run_pass(run *r, int image, const pass_request *q, mp_image *out) {
  const mp_job *job = r->job;
  cJSON *rec = cJSON_CreateObject();
  cJSON_AddItemToArray(r->passes, rec);
  cJSON_AddNumberToObject(rec, "image", image);
  cJSON_AddStringToObject(rec, "pass", q->name);
  cJSON_AddNumberToObject(rec, "seed", (double)q->seed);
  cJSON_AddNumberToObject(rec, "width", q->width);
  cJSON_AddNumberToObject(rec, "height", q->height);
  if (q->init) cJSON_AddNumberToObject(rec, "denoising_strength", q->strength);
  if (q->control && r->controlnet) cJSON_AddBoolToObject(rec, "controlnet", true);

  lora_set loras = {0};
  char *checkpoint = NULL;
  mp_engine *eng = NULL;
  mp_error *e = resolve_adapters(r, q->text, &loras, &checkpoint, rec);
  if (!e) e = engine_for(r, checkpoint, q->person, &eng);
  char **lw = NULL;
  int nlw = 0;
  if (!e) e = mp_engine_set_loras(eng, loras.specs, loras.n, &lw, &nlw);
  for (int i = 0; i < nlw; i++) warn(r, "%s", lw[i]), free(lw[i]);
  free(lw);
  cJSON_AddStringToObject(rec, "prompt", q->text->prompt);
  cJSON_AddStringToObject(rec, "negative_prompt", q->text->negative);
  cJSON_AddStringToObject(rec, "model", eng ? eng->name : "");
  cJSON_AddStringToObject(rec, "family", eng ? mp_family_name(eng->cfg.family) : "");
  double t0 = mp_now();
  if (!e) {
    mp_sampler_spec spec = {0};
    e = mp_sampler_parse(mp_scheduler_name(job->scheduler), &spec);
    mp_pass_params p = {.prompt = q->text->prompt, .negative = q->text->negative, .embeddings = &r->ti, .use_lpw = job->use_lpw,
                        .clip_skip = r->o->clip_skip, .sampler = spec, .steps = q->steps, .cfg_scale = q->cfg,
                        .seed = q->seed, .rng = r->o->rng, .width = q->width, .height = q->height, .init = q->init,
                        .strength = q->strength, .mask = q->mask, .controlnet = q->control ? r->controlnet : NULL,
                        .control = q->control, .control_scale = job->controlnet_conditioning_scale};
    char *w = NULL;
    if (!e) mp_progress_pass_sized(&r->progress, image, q->name, mp_engine_pass_steps(eng, &p), q->width, q->height);
    if (!e) e = mp_engine_run_pass(eng, &p, &r->progress, out, &w);
    if (w) warn(r, "%s: %s", q->name, w);
    free(w);
  }
  cJSON_AddNumberToObject(rec, "seconds", mp_now() - t0);
  /* the next pass starts from the base weights again */
  if (eng && loras.n) {
    mp_error *e2 = mp_engine_set_loras(eng, NULL, 0, NULL, NULL);
    if (!e) e = e2;
    else mp_error_free(e2);
  }
  lora_set_free(&loras);
  free(checkpoint);
  return e ? mp_error_wrap(e, "image %d, %s pass", image + 1, q->name) : NULL;
}

/* ---- scene ---- */

static mp_error *copy_image(const mp_image *from, mp_image *to) {
  MP_TRY(mp_image_alloc(to, from->width, from->height, from->channels));
  memcpy(to->pixels, from->pixels, (size_t)from->width * (size_t)from->height * (size_t)from->channels);
  return NULL;
}

static mp_error *load_input(run *r, const char *given, const char *url, const char *what, int channels, mp_image *img) {
  if (!given && r->fetched_url && !strcmp(r->fetched_url, url) && r->fetched.channels == channels)
    return copy_image(&r->fetched, img);
  if (!given) { /* only a URL was given: fetch it to a temporary file, read it, drop it (the job keeps the image) */
    const char *tmp = getenv("TMPDIR");
    char *p = path_join(tmp && *tmp ? tmp : "/tmp", "mpass-download-XXXXXX");
    int fd = p ? mkstemp(p) : -1;
    if (fd < 0) {
      free(p);
      return mp_errorf("%s: cannot create a temporary file for the download", what);
    }
    close(fd);
    mp_fetch_limits lim = {.public_only = r->o->fetch_public_only};
    mp_error *e = mp_fetch_image(what, url, &lim, p);
    if (!e) e = mp_image_read(p, channels, img);
    unlink(p);
    free(p);
    if (!e && !r->fetched_url) {
      if (!(r->fetched_url = strdup(url))) e = mp_errorf("out of memory");
      if (!e && (e = copy_image(img, &r->fetched))) free(r->fetched_url), r->fetched_url = NULL;
    }
    return e;
  }
  char *p = given == r->o->input_image ? strdup(given) : input_path(r, given);
  if (!p) return mp_errorf("out of memory");
  mp_error *e = mp_image_read(p, channels, img);
  free(p);
  return e;
}

/* The control image, made once per job from the input image fitted to the scene size (the same for
 * every image), written as control.png beside the results and shown on the contact sheet. */
static mp_error *scene_control(run *r, int image) {
  if (!r->control.pixels && r->control_layout) { /* issue 16 item 4: one skeleton per person section, left to right */
    mp_openpose_skeleton sk[MP_MAX_PERSONS];
    int n = r->job->n_persons < MP_MAX_PERSONS ? r->job->n_persons : MP_MAX_PERSONS;
    mp_openpose_layout(n, r->width, r->height, sk);
    MP_TRY(mp_openpose_draw(sk, n, r->width, r->height, &r->control));
    char *path = path_join(r->tmp_dir, "control.png");
    mp_error *e = path ? mp_image_write_png(path, &r->control, NULL, NULL) : mp_errorf("out of memory");
    free(path);
    if (e) {
      mp_image_free(&r->control);
      return e;
    }
  }
  if (!r->control.pixels) {
    const mp_job *job = r->job;
    mp_image src = {0}, fitted = {0};
    mp_person_result found = {0};
    bool have_found = false;
    MP_TRY(load_input(r, r->o->input_image ? r->o->input_image : job->input_image, job->input_image_url, "input_image_url", 3, &src));
    mp_error *e = mp_image_fit_crop(&src, r->width, r->height, &fitted);
    mp_image_free(&src);
    if (!e && r->control_type == MP_CONTROL_POSE) {
      mp_progress_pass(&r->progress, image, "control pose", 0);
      e = mp_persons_find(&r->finder, r->ctx->pool, &fitted, &found);
      have_found = !e;
      if (!e && found.n == 0) warn(r, "controlnet=pose: no person found in the input image; the pose image is empty");
    }
    if (!e) e = mp_control_image(r->control_type, &fitted, have_found ? &found : NULL, &r->control);
    if (have_found) mp_person_result_free(&found);
    mp_image_free(&fitted);
    char *path = e ? NULL : path_join(r->tmp_dir, "control.png");
    if (!e) e = path ? mp_image_write_png(path, &r->control, NULL, NULL) : mp_errorf("out of memory");
    free(path);
    if (e) {
      mp_image_free(&r->control);
      return mp_error_wrap(e, "controlnet=%s control image", mp_control_type_name(r->control_type));
    }
  }
  return save_debug(r, image, "control", &r->control);
}

static mp_error *scene_pass(run *r, const mp_image_plan *ip, mp_image *out) {
  const mp_job *job = r->job;
  const mp_pass *p1 = &ip->passes[0];
  pass_request q = {"scene", p1->text, p1->seed, job->steps, job->cfg_scale, 1.0, NULL, NULL, r->width, r->height, false, NULL};
  if (r->controlnet && r->plan->mode != MP_SCENE_INPUT && r->plan->mode != MP_SCENE_BACKGROUND) {
    MP_TRY(scene_control(r, ip->index));
    q.control = &r->control;
  }
  if (r->plan->mode == MP_SCENE_TXT2IMG) return run_pass(r, ip->index, &q, out);

  mp_image src = {0}, fitted = {0};
  mp_mask mask = {0};
  MP_TRY(load_input(r, r->o->input_image ? r->o->input_image : job->input_image, job->input_image_url, "input_image_url", 3, &src));
  mp_error *e = NULL;
  if (r->plan->mode == MP_SCENE_INPUT) { /* --only_upscale: the input goes straight to the post steps */
    *out = src;
    return NULL;
  }
  e = mp_image_fit_crop(&src, r->width, r->height, &fitted);
  mp_image_free(&src);
  if (!e && r->plan->mode == MP_SCENE_BACKGROUND) {
    mp_progress_pass(&r->progress, ip->index, "background", 0);
    *out = fitted;
    return NULL;
  }
  if (!e && r->plan->mode == MP_SCENE_INPAINT) {
    if (!job->mask_image && !job->mask_image_url) e = mp_errorf("--mask_prompt is not supported yet: give mask_image=");
    mp_image m8 = {0}, m8fit = {0};
    if (!e) e = load_input(r, job->mask_image, job->mask_image_url, "mask_image_url", 1, &m8);
    if (!e) e = mp_image_fit_crop(&m8, r->width, r->height, &m8fit);
    if (!e) e = mp_mask_from_image(&m8fit, &mask);
    mp_image_free(&m8), mp_image_free(&m8fit);
    if (!e && job->flags.mask_invert)
      for (int64_t i = 0; i < (int64_t)mask.width * mask.height; i++) mask.data[i] = 1 - mask.data[i];
    q.mask = &mask;
  }
  q.init = &fitted;
  q.strength = job->denoising_strength;
  if (!e) e = run_pass(r, ip->index, &q, out);
  mp_image_free(&fitted);
  mp_mask_free(&mask);
  return e;
}

/* ---- persons ---- */

static mp_error *find_persons(run *r, int image, const mp_image *img) {
  if (r->have_persons) mp_person_result_free(&r->persons);
  r->have_persons = false;
  mp_progress_pass(&r->progress, image, "find persons", 0);
  MP_TRY(mp_persons_find(&r->finder, r->ctx->pool, img, &r->persons));
  r->have_persons = true;
  r->persons_w = img->width, r->persons_h = img->height;
  /* SPEC §4 step 2: more persons than sections -> keep the largest, still left to right. */
  int n_sections = r->job->n_persons, n = r->persons.n;
  bool keep[MP_MAX_FOUND_PERSONS] = {0};
  for (int k = 0; k < n; k++) keep[k] = true;
  while (n > n_sections) {
    int smallest = -1;
    double area_min = 1e30;
    for (int k = 0; k < r->persons.n; k++) {
      const mp_person *p = &r->persons.persons[k];
      double area = (double)(p->x1 - p->x0) * (p->y1 - p->y0);
      if (keep[k] && area < area_min) area_min = area, smallest = k;
    }
    keep[smallest] = false;
    n--;
  }
  for (int s = 0, k = 0; s <= MP_MAX_PERSONS; s++) {
    while (k < r->persons.n && !keep[k]) k++;
    r->person_of_section[s] = s >= 1 && k < r->persons.n ? k++ : -1;
  }
  r->person_of_section[0] = -1;
  return NULL;
}

/* A person crop is rendered at about the job's size; when the persons' model is of another family
 * than the scene's (an SDXL scene, SD 1.5 persons), at about that model's native square instead,
 * in the job's aspect ratio. */
static void person_target_size(run *r, int *w, int *h) {
  if (!r->persons_path) return;
  mp_family f = r->persons_engine ? r->persons_engine->cfg.family : MP_FAMILY_UNKNOWN;
  if (!r->persons_engine) mp_error_free(mp_checkpoint_family(r->persons_path, &f));
  if (f == r->base->cfg.family || f == MP_FAMILY_UNKNOWN) return;
  double side = mp_family_native_side(f), aspect = (double)r->width / r->height;
  *w = ((int)(side * sqrt(aspect)) + 4) / 8 * 8;
  *h = ((int)(side / sqrt(aspect)) + 4) / 8 * 8;
}

static mp_error *person_pass(run *r, const mp_image_plan *ip, const mp_pass *pass, mp_image *running) {
  const mp_job *job = r->job;
  int k = r->person_of_section[pass->person];
  if (k < 0) {
    char why[128];
    snprintf(why, sizeof why, "only %d person(s) found for %d person section(s)", r->persons.n, job->n_persons);
    char what[32];
    snprintf(what, sizeof what, "person %d", pass->person);
    skip(r, ip->index, what, why);
    return NULL;
  }
  const mp_person *person = &r->persons.persons[k];
  mp_mask mask = {0};
  MP_TRY(mp_mask_alloc(&mask, running->width, running->height));
  memcpy(mask.data, person->mask, sizeof(float) * (size_t)running->width * running->height);
  int dilate = job->flags.mask_dilate_given ? mp_mask_dilate_radius(&mask, job->flags.mask_dilate, job->flags.mask_dilate_percent, 0.5f) : 4;
  mp_error *e = mp_mask_dilate(&mask, dilate);
  if (!e) e = mp_mask_blur(&mask, 4.0);
  if (e) {
    mp_mask_free(&mask);
    return e;
  }
  mp_rect box;
  if (!mp_mask_bbox(&mask, 0.5f / 255, &box)) {
    mp_mask_free(&mask);
    skip(r, ip->index, "person", "the person's mask is empty");
    return NULL;
  }
  mp_rect crop = mp_crop_region(box, 32, r->width, r->height, running->width, running->height);
  int ww, wh, tw = r->width, th = r->height;
  person_target_size(r, &tw, &th);
  mp_crop_work_size(crop, tw, th, &ww, &wh);
  mp_image init = {0}, repainted = {0}, mask_img = {0};
  mp_mask work_mask = {0}, crop_mask = {0};
  char name[32];
  snprintf(name, sizeof name, "person %d", pass->person);
  if (!e) e = mp_image_crop_resize(running, crop, ww, wh, MP_RESIZE_LANCZOS3, &init);
  /* the mask over the crop, at the working size */
  if (!e) e = mp_mask_alloc(&crop_mask, mp_rect_width(crop), mp_rect_height(crop));
  for (int y = crop.y0; !e && y < crop.y1; y++)
    memcpy(crop_mask.data + (size_t)(y - crop.y0) * crop_mask.width, mask.data + (size_t)y * mask.width + crop.x0,
           sizeof(float) * (size_t)crop_mask.width);
  if (!e) e = mp_mask_resize(&crop_mask, ww, wh, MP_RESIZE_BILINEAR, &work_mask);
  if (!e && r->o->debug_passes) {
    char dn[48];
    snprintf(dn, sizeof dn, "person %d mask", pass->person);
    e = mp_mask_to_image(&mask, &mask_img);
    if (!e) e = save_debug(r, ip->index, dn, &mask_img);
    snprintf(dn, sizeof dn, "person %d crop", pass->person);
    if (!e) e = save_debug(r, ip->index, dn, &init);
  }
  pass_request q = {name, pass->text, pass->seed, job->steps, job->cfg_scale, pass->strength, &init, &work_mask, ww, wh, true, NULL};
  /* the person pass follows the same control image, cropped to the person's box */
  mp_image control = {0};
  if (!e && r->controlnet && r->control.pixels && r->control.width == running->width && r->control.height == running->height) {
    e = mp_image_crop_resize(&r->control, crop, ww, wh, MP_RESIZE_BILINEAR, &control);
    q.control = &control;
  }
  if (!e) e = run_pass(r, ip->index, &q, &repainted);
  mp_image_free(&control);
  if (!e && r->o->debug_passes) {
    char dn[48];
    snprintf(dn, sizeof dn, "person %d repainted", pass->person);
    e = save_debug(r, ip->index, dn, &repainted);
  }
  if (!e) e = mp_paste_masked(running, &repainted, crop, &mask);
  mp_image_free(&init), mp_image_free(&repainted), mp_image_free(&mask_img);
  mp_mask_free(&mask), mp_mask_free(&work_mask), mp_mask_free(&crop_mask);
  return e;
}

/* ---- post steps ---- */

static mp_error *replace(mp_image *img, mp_image *with) {
  mp_image_free(img);
  *img = *with;
  memset(with, 0, sizeof *with);
  return NULL;
}

/* SPEC §4.1: Real-ESRGAN (realesr-general-x4v3, "x4fast"), ×4, or ×2 for images of 512² or more. */
static mp_error *esrgan_upscale(run *r, int image, const char *what, int scale, const mp_image *img, mp_image *up) {
  if (!scale) scale = mp_super_resolution_scale(img->width, img->height);
  mp_progress_pass(&r->progress, image, what, 0);
  return mp_esrgan_upscale_image(r->esrgan, r->ctx->pool, img, scale, NULL, up);
}

static mp_error *post_upscale(run *r, int image, const mp_post_step *s, mp_image *img) {
  mp_image up = {0};
  MP_TRY(esrgan_upscale(r, image, "super resolution", s->scale, img, &up));
  return replace(img, &up);
}

/* SPEC §4.2: the job's one upscale (Real-ESRGAN by the super-resolution factor when super_resolution
 * is on, else a plain ×2 resize), then SD img2img over it tile by tile. */
static mp_error *post_tiled(run *r, const mp_image_plan *ip, const mp_post_step *s, mp_image *img) {
  mp_image up = {0};
  if (s->esrgan) MP_TRY(esrgan_upscale(r, ip->index, "super resolution (tiled)", s->scale, img, &up));
  else MP_TRY(mp_image_resize(img, img->width * s->scale, img->height * s->scale, MP_RESIZE_LANCZOS3, &up));
  mp_tile_grid grid = {0};
  mp_tile_canvas canvas = {0};
  /* tiles at the model's native size (512² for SD 1.x), or the whole image when it is smaller */
  const int side = mp_family_native_side(r->base->cfg.family);
  int tw = up.width < side ? up.width & ~7 : side, th = up.height < side ? up.height & ~7 : side;
  mp_error *e = mp_tile_grid_make(up.width, up.height, tw, th, 64, &grid);
  if (!e) e = mp_tile_canvas_init(&canvas, up.width, up.height, 3);
  for (int t = 0; !e && t < grid.n; t++) {
    const mp_tile *tile = &grid.tiles[t];
    mp_image crop = {0}, out = {0};
    char name[32];
    snprintf(name, sizeof name, "tile %d/%d", t + 1, grid.n);
    e = mp_image_crop(&up, tile->r, &crop);
    pass_request q = {name, ip->passes[0].text, ip->seed + (uint64_t)t, r->job->steps, s->cfg_scale, s->strength,
                      &crop, NULL, crop.width, crop.height, false, NULL};
    if (!e) e = run_pass(r, ip->index, &q, &out);
    if (!e) e = mp_tile_canvas_add(&canvas, &out, tile);
    mp_image_free(&crop), mp_image_free(&out);
  }
  mp_image merged = {0};
  if (!e) e = mp_tile_canvas_finish(&canvas, &merged);
  if (!e) replace(img, &merged);
  mp_tile_canvas_free(&canvas);
  mp_tile_grid_free(&grid);
  mp_image_free(&up);
  return e;
}

static mp_error *post_hires(run *r, const mp_image_plan *ip, const mp_post_step *s, mp_image *img) {
  int w = img->width & ~7, h = img->height & ~7;
  mp_image init = {0}, out = {0};
  MP_TRY(mp_image_resize(img, w, h, MP_RESIZE_LANCZOS3, &init));
  pass_request q = {"hires fix", ip->passes[0].text, ip->seed, r->job->steps, s->cfg_scale, s->strength, &init, NULL, w, h, false, NULL};
  mp_error *e = run_pass(r, ip->index, &q, &out);
  mp_image_free(&init);
  if (!e) replace(img, &out);
  return e;
}

/* SPEC §4.3: faces of 0.3–30 % of the image, each repainted with its person's prompt and LoRA. */
static mp_error *post_faces(run *r, const mp_image_plan *ip, const mp_post_step *s, mp_image *img) {
  mp_detection faces[MP_MAX_FACES];
  int n = 0;
  mp_progress_pass(&r->progress, ip->index, "find faces", 0);
  MP_TRY(mp_face_detect(&r->finder.face, r->ctx->pool, img, 0, 0, (float)img->width, (float)img->height, faces, MP_MAX_FACES, &n));
  if (n == 0 && r->have_persons && r->persons.n_faces > 0) {
    /* Repainting can leave a face the detector no longer sees (always so with a random-weight
     * model); the faces found with the persons on the scene mark where they are. */
    double sx = (double)img->width / r->persons_w, sy = (double)img->height / r->persons_h;
    for (int f = 0; f < r->persons.n_faces && n < MP_MAX_FACES; f++, n++) {
      faces[n] = r->persons.faces[f];
      faces[n].xmin *= (float)sx, faces[n].w *= (float)sx, faces[n].ymin *= (float)sy, faces[n].h *= (float)sy;
    }
    if (n) warn(r, "image %d: no face found after the person passes; repainting the %d face(s) found on the scene", ip->index + 1, n);
  }
  double area = (double)img->width * img->height;
  int done = 0;
  for (int f = 0; f < n; f++) {
    double fa = (double)faces[f].w * faces[f].h;
    if (fa < 0.003 * area || fa > 0.30 * area) continue;
    /* whose face: the person whose mask holds its centre (masks are at the scene's size) */
    const mp_pass *who = &ip->passes[0];
    if (r->have_persons) {
      int cx = (int)((faces[f].xmin + faces[f].w / 2) * r->persons_w / img->width);
      int cy = (int)((faces[f].ymin + faces[f].h / 2) * r->persons_h / img->height);
      for (int k = 1; k < ip->n_passes; k++) {
        int idx = r->person_of_section[ip->passes[k].person];
        if (idx >= 0 && cx >= 0 && cy >= 0 && cx < r->persons_w && cy < r->persons_h &&
            r->persons.persons[idx].mask[(size_t)cy * r->persons_w + cx] > 0.5f)
          who = &ip->passes[k];
      }
    }
    mp_rect box = {(int)faces[f].xmin, (int)faces[f].ymin, (int)(faces[f].xmin + faces[f].w), (int)(faces[f].ymin + faces[f].h)};
    mp_rect crop = mp_rect_scale(box, 1.8, img->width, img->height);
    mp_mask mask = {0}, work_mask = {0}, crop_mask = {0};
    mp_image init = {0}, out = {0};
    int ww, wh;
    /* SPEC §4.3: about 512² — the job's own size for SD 1.x jobs (512×512, 512×768), less for small jobs */
    mp_crop_work_size(crop, r->width * r->height < 512 * 512 ? r->width : 512, r->width * r->height < 512 * 512 ? r->height : 512, &ww, &wh);
    mp_error *e = mp_mask_alloc(&mask, img->width, img->height);
    if (!e) mp_mask_fill_rect(&mask, mp_rect_scale(box, 1.2, img->width, img->height), 1.0f);
    if (!e) e = mp_mask_blur(&mask, 4.0 * img->width / (r->width > 0 ? r->width : img->width));
    if (!e) e = mp_image_crop_resize(img, crop, ww, wh, MP_RESIZE_LANCZOS3, &init);
    if (!e) e = mp_mask_alloc(&crop_mask, mp_rect_width(crop), mp_rect_height(crop));
    for (int y = crop.y0; !e && y < crop.y1; y++)
      memcpy(crop_mask.data + (size_t)(y - crop.y0) * crop_mask.width, mask.data + (size_t)y * mask.width + crop.x0,
             sizeof(float) * (size_t)crop_mask.width);
    if (!e) e = mp_mask_resize(&crop_mask, ww, wh, MP_RESIZE_BILINEAR, &work_mask);
    char name[32];
    snprintf(name, sizeof name, "face %d", ++done);
    pass_request q = {name, who->text, who->seed, r->job->steps, r->job->cfg_scale, s->strength, &init, &work_mask, ww, wh,
                      who != &ip->passes[0], NULL};
    if (!e) e = run_pass(r, ip->index, &q, &out);
    if (!e) e = save_debug(r, ip->index, name, &out);
    if (!e) e = mp_paste_masked(img, &out, crop, &mask);
    mp_image_free(&init), mp_image_free(&out);
    mp_mask_free(&mask), mp_mask_free(&work_mask), mp_mask_free(&crop_mask);
    if (e) return e;
  }
  if (done == 0) skip(r, ip->index, "inpaint_faces", "no face of 0.3-30 % of the image was found");
  return NULL;
}

static mp_error *post_step(run *r, const mp_image_plan *ip, const mp_post_step *s, mp_image *img) {
  switch (s->kind) {
    case MP_POST_SUPER_RESOLUTION: return post_upscale(r, ip->index, s, img);
    case MP_POST_TILED_UPSCALE: return post_tiled(r, ip, s, img);
    case MP_POST_HIRES_FIX: return post_hires(r, ip, s, img);
    case MP_POST_INPAINT_FACES: return post_faces(r, ip, s, img);
    case MP_POST_COLOR_GRADING: {
      mp_grade_preset p;
      MP_TRY(mp_grade_preset_parse(mp_grading_name(r->job->color_grading), &p));
      mp_progress_pass(&r->progress, ip->index, "color grading", 0);
      return mp_grade_apply(img, p);
    }
    case MP_POST_FILM_GRAIN:
      mp_progress_pass(&r->progress, ip->index, "film grain", 0);
      return mp_grain_apply(img, r->job->seed, (uint32_t)ip->index);
  }
  return mp_errorf("unknown post step %d", (int)s->kind);
}

/* ---- outputs ---- */

static mp_error *write_image(run *r, const mp_image_plan *ip, const mp_image *img) {
  const mp_job *job = r->job;
  const mp_pass_text *t = ip->passes[0].text;
  mp_infotext it;
  mp_gen_params gp = {.prompt = t->prompt, .negative_prompt = t->negative, .steps = job->steps,
                      .scheduler = mp_scheduler_name(job->scheduler), .cfg_scale = job->cfg_scale, .seed = ip->seed,
                      .width = r->width, .height = r->height, .model_hash = r->base->hash, .model_name = r->base->name,
                      .denoising_strength = -1, .rng = r->o->rng == MP_RNG_CPU ? "CPU" : NULL};
  MP_TRY(mp_infotext_from_params(&gp, &it));
  char *text = NULL, file[64];
  /* The whole prompt document rides along, so the image reproduces the multi-pass job. */
  mp_error *e = mp_infotext_set(&it, "mpass document", r->o->document ? r->o->document : job->text);
  if (!e && r->controlnet) {
    char short_hash[9];
    snprintf(short_hash, sizeof short_hash, "%.8s", r->controlnet_hash); /* the ControlNet extension shows 8 digits */
    char *unit = mp_controlnet_infotext(r->control_type, r->controlnet_name, short_hash, job->controlnet_conditioning_scale,
                                        r->width < r->height ? r->width : r->height);
    e = unit ? mp_infotext_set(&it, "ControlNet 0", unit) : mp_errorf("out of memory");
    free(unit);
  }
  if (!e) e = mp_infotext_set(&it, "Version", "mpass " MPASS_VERSION);
  if (!e) e = mp_infotext_format(&it, &text);
  snprintf(file, sizeof file, "%d.png", ip->index);
  char *path = path_join(r->tmp_dir, file);
  if (!e) e = path ? mp_image_write_png(path, img, "parameters", text) : mp_errorf("out of memory");
  free(path), free(text);
  mp_infotext_free(&it);
  if (!e) {
    cJSON *im = cJSON_CreateObject();
    cJSON_AddStringToObject(im, "file", file);
    cJSON_AddNumberToObject(im, "seed", (double)ip->seed);
    cJSON_AddNumberToObject(im, "width", img->width);
    cJSON_AddNumberToObject(im, "height", img->height);
    cJSON_AddNumberToObject(im, "persons_found", r->have_persons ? r->persons.n : 0);
    cJSON_AddItemToArray(r->images, im);
  }
  if (!e && r->o->debug_passes && r->n_sheet > 0) {
    snprintf(file, sizeof file, "passes-%d.png", ip->index);
    char *sp = path_join(r->tmp_dir, file);
    e = sp ? mp_contact_sheet_write(sp, r->sheet, r->n_sheet, 256) : mp_errorf("out of memory");
    free(sp);
  }
  return e;
}

static mp_error *run_image(run *r, const mp_image_plan *ip) {
  mp_image img = {0};
  clear_sheet(r);
  if (r->have_persons) mp_person_result_free(&r->persons);
  r->have_persons = false;
  mp_error *e = scene_pass(r, ip, &img);
  if (!e) e = save_debug(r, ip->index, "scene", &img);
  if (!e && ip->n_passes > 1) e = find_persons(r, ip->index, &img);
  for (int k = 1; !e && k < ip->n_passes; k++) e = person_pass(r, ip, &ip->passes[k], &img);
  if (!e && ip->n_passes > 1) e = save_debug(r, ip->index, "persons done", &img);
  for (int s = 0; !e && s < r->plan->n_post; s++) {
    e = post_step(r, ip, &r->plan->post[s], &img);
    if (!e) e = save_debug(r, ip->index, mp_post_name(r->plan->post[s].kind), &img);
  }
  if (!e) e = write_image(r, ip, &img);
  mp_image_free(&img);
  return e;
}

static void iso_time(char *buf, size_t cap) {
  time_t t = time(NULL);
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* controlnet=TYPE: the type's preprocessor must exist, an input image must give the control image, and
 * the ControlNet file is found by type (or named by --controlnet-model / MPASS_CONTROLNET_MODEL). */
static mp_error *open_controlnet(run *r) {
  const mp_job *job = r->job;
  if (!job->controlnet) return NULL;
  if (r->plan->mode == MP_SCENE_INPUT || r->plan->mode == MP_SCENE_BACKGROUND) {
    warn(r, "controlnet=%s ignored: no pass draws a new scene (%s)", job->controlnet,
         r->plan->mode == MP_SCENE_INPUT ? "--only_upscale" : "the input image is the background");
    return NULL;
  }
  MP_TRY(mp_control_type_parse(job->controlnet, &r->control_type));
  if (!r->o->input_image && !job->input_image && !job->input_image_url) {
    /* pose with person sections: a built-in layout of standing skeletons, one per section */
    if (r->control_type == MP_CONTROL_POSE && job->n_persons > 0 && !job->flags.person_layout_none) r->control_layout = true;
    else
      return mp_errorf("controlnet=%s needs an input_image: the control image is computed from it (only controlnet=pose with "
                       "person sections has a built-in layout, unless --person_layout none)",
                       job->controlnet);
  }
  const char *override = r->o->controlnet_model ? r->o->controlnet_model : getenv("MPASS_CONTROLNET_MODEL");
  MP_TRY(mp_controlnet_find(r->ctx->models_dir, r->control_type, override, &r->controlnet_path));
  /* Pinned like a checkpoint (pipeline/pack_files.h): the next job maps the ControlNet's bf16 packs
   * from the models folder's cache instead of packing its 360 M weights again. */
  mp_error *e = mp_weights_open(r->controlnet_path, &r->controlnet_file);
  if (!e) e = mp_pin_checkpoint(r->ctx, r->controlnet_file, r->controlnet_file);
  if (!e) e = mp_controlnet_load(r->controlnet_file, NULL, &r->controlnet);
  if (!e) {
    const mp_unet_config *c = mp_controlnet_config(r->controlnet), *u = &r->base->cfg.unet;
    if (c->model_channels != u->model_channels || c->n_levels != u->n_levels || c->num_res_blocks != u->num_res_blocks ||
        c->context_dim != u->context_dim)
      e = mp_errorf("%s does not fit the model (ControlNet: %d channels, %d levels, context %d; UNet: %d, %d, %d): an SD 1.5 "
                    "ControlNet needs an SD 1.5 checkpoint",
                    r->controlnet_path, c->model_channels, c->n_levels, c->context_dim, u->model_channels, u->n_levels,
                    u->context_dim);
  }
  char cache[4096];
  snprintf(cache, sizeof cache, "%s/.cache", r->ctx->models_dir);
  char *hashed = NULL; /* a diffusers ControlNet folder is identified by its weights file */
  if (!e) e = mp_checkpoint_hash_file(r->controlnet_path, &hashed);
  if (!e) e = mp_model_short_hash_cached(cache, hashed, r->controlnet_hash);
  free(hashed);
  if (!e) {
    const char *slash = strrchr(r->controlnet_path, '/'), *base = slash ? slash + 1 : r->controlnet_path, *dot = strrchr(base, '.');
    r->controlnet_name = strndup(base, dot ? (size_t)(dot - base) : strlen(base));
    if (!r->controlnet_name) e = mp_errorf("out of memory");
  }
  return e ? mp_error_wrap(e, "controlnet=%s", job->controlnet) : NULL;
}

/* The detection and upscaling models the plan needs, loaded before the first step: a missing or
 * damaged file fails the job at once instead of after its scene pass. */
static mp_error *load_helpers(run *r) {
  bool persons = r->controlnet && r->control_type == MP_CONTROL_POSE && !r->control_layout, esrgan = false;
  for (int i = 0; i < r->plan->n_images; i++) persons |= r->plan->images[i].n_passes > 1;
  for (int i = 0; i < r->plan->n_post; i++) {
    const mp_post_step *s = &r->plan->post[i];
    persons |= s->kind == MP_POST_INPAINT_FACES;
    esrgan |= s->kind == MP_POST_SUPER_RESOLUTION || (s->kind == MP_POST_TILED_UPSCALE && s->esrgan);
  }
  if (persons) {
    MP_TRY(mp_error_wrap(mp_person_finder_load(r->ctx->models_dir, &r->finder),
                         "the person and face detection models (run scripts/fetch-models.sh)"));
    r->finder_loaded = true;
  }
  if (esrgan)
    MP_TRY(mp_error_wrap(mp_esrgan_open_named(r->ctx->models_dir, "x4fast", &r->esrgan),
                         "super_resolution (run scripts/fetch-models.sh)"));
  return NULL;
}

static mp_error *prepare(run *r) {
  const mp_job *job = r->job;
  const mp_run_options *o = r->o;
  MP_TRY(find_adapters(r));
  /* size: given, from ar, or from the input image */
  r->width = job->width, r->height = job->height;
  if (r->width <= 0 || r->height <= 0) {
    const char *input = r->o->input_image ? r->o->input_image : job->input_image;
    if (!input && !job->input_image_url) return mp_errorf("no size: give w and h (or an input_image)");
    mp_image src;
    MP_TRY(load_input(r, input, job->input_image_url, "input_image_url", 3, &src));
    mp_size_round8(src.width, src.height, 1024, &r->width, &r->height);
    mp_image_free(&src);
  }
  char *model = o->model_path ? strdup(o->model_path) : NULL;
  if (job->base_model && *job->base_model) {
    /* base_model: pass 1 on that checkpoint; persons on --model or the first SD 1.5 checkpoint */
    r->persons_path = model;
    model = NULL;
    if (job->n_persons > 0 && !r->persons_path) MP_TRY(mp_default_sd15_checkpoint(r->ctx->models_dir, &r->persons_path));
    MP_TRY(mp_base_model_path(r->ctx->models_dir, job->base_model, &model));
    if (r->persons_path && strcmp(r->persons_path, model) == 0) free(r->persons_path), r->persons_path = NULL;
  }
  if (!model) MP_TRY(mp_default_checkpoint(r->ctx->models_dir, &model));
  char *vocab = NULL; /* a diffusers folder's own tokenizer/, unless --vocab or MPASS_VOCAB says otherwise */
  mp_error *e = mp_diffusers_vocab_for_model(model, o->vocab, &vocab);
  if (!e && !vocab) e = mp_tokenizer_find_vocab(o->vocab, r->ctx->data_dir, r->ctx->models_dir, &vocab);
  if (!e) e = mp_tokenizer_load(vocab, &r->tok);
  free(vocab);
  if (e) {
    free(model);
    return e;
  }
  e = mp_engine_take(r->ctx, model, r->tok, &r->base);
  free(model);
  MP_TRY(e);
  if (r->base->cfg.family == MP_FAMILY_SDXL && !job->size_given && !(r->o->input_image || job->input_image))
    mp_sdxl_default_size(job->ar, &r->width, &r->height); /* SDXL's native sizes, not SD 1.5's 512/768 */
  MP_TRY(open_controlnet(r));
  MP_TRY(load_helpers(r));
  if (job->n_embeddings > 0) {
    char *dir = mp_embeddings_dir(r->ctx->models_dir);
    e = dir ? mp_embeddings_load(dir, job->embeddings, (size_t)job->n_embeddings, r->base->cfg.clip.hidden, &r->ti)
            : mp_errorf("out of memory");
    free(dir);
    MP_TRY(e);
  }
  /* the output folder */
  char name[128];
  if (o->job_name) {
    snprintf(name, sizeof name, "%s", o->job_name);
  } else {
    char t[32];
    iso_time(t, sizeof t);
    for (char *c = t; *c; c++)
      if (*c == ':') *c = '-';
    snprintf(name, sizeof name, "%u-%s", job->seed, t);
  }
  if (strchr(name, '/') || name[0] == '.' || !name[0]) return mp_errorf("job name '%s' must be a plain folder name", name);
  const char *out = o->out_dir ? o->out_dir : "out";
  MP_TRY(mkdirs(out));
  r->final_dir = path_join(out, name);
  char tmp[160];
  snprintf(tmp, sizeof tmp, ".%s.partial-%d", name, (int)getpid());
  r->tmp_dir = path_join(out, tmp);
  if (!r->final_dir || !r->tmp_dir) return mp_errorf("out of memory");
  struct stat st;
  if (stat(r->final_dir, &st) == 0) return mp_errorf("%s already exists: choose another --name or remove it", r->final_dir);
  MP_TRY(mkdirs(r->tmp_dir));
  if (o->debug_passes) {
    char *d = path_join(r->tmp_dir, "debug");
    e = d ? mkdirs(d) : mp_errorf("out of memory");
    free(d);
  }
  return e;
}

static mp_error *write_result(run *r, const char *started) {
  const mp_job *job = r->job;
  cJSON *p = r->result;
  cJSON_AddStringToObject(p, "text", job->text);
  cJSON_AddStringToObject(p, "negative_prompt", job->negative_prompt ? job->negative_prompt : "");
  cJSON_AddNumberToObject(p, "num_images", job->num_images);
  cJSON_AddNumberToObject(p, "seed", job->seed);
  cJSON_AddBoolToObject(p, "seed_random", job->seed_random);
  cJSON_AddNumberToObject(p, "steps", job->steps);
  cJSON_AddNumberToObject(p, "cfg_scale", job->cfg_scale);
  cJSON_AddNumberToObject(p, "w", r->width);
  cJSON_AddNumberToObject(p, "h", r->height);
  cJSON_AddStringToObject(p, "scheduler", mp_scheduler_name(job->scheduler));
  cJSON_AddBoolToObject(p, "use_lpw", job->use_lpw);
  cJSON_AddStringToObject(p, "model", r->base->path);
  cJSON_AddStringToObject(p, "model_hash", r->base->hash);
  /* which model and family each kind of pass ran on (every pass record names its own too) */
  cJSON *models = cJSON_AddObjectToObject(p, "models");
  cJSON *scene = cJSON_AddObjectToObject(models, "scene");
  cJSON_AddStringToObject(scene, "path", r->base->path);
  cJSON_AddStringToObject(scene, "family", mp_family_name(r->base->cfg.family));
  const mp_engine *pe = r->persons_engine ? r->persons_engine : r->persons_path ? NULL : r->base;
  mp_family pf = pe ? pe->cfg.family : MP_FAMILY_UNKNOWN;
  if (!pe && r->persons_path) mp_error_free(mp_checkpoint_family(r->persons_path, &pf)); /* no person pass ran */
  if (pe || r->persons_path) {
    cJSON *persons = cJSON_AddObjectToObject(models, "persons");
    cJSON_AddStringToObject(persons, "path", pe ? pe->path : r->persons_path);
    cJSON_AddStringToObject(persons, "family", mp_family_name(pf));
  }
  cJSON_AddStringToObject(p, "rng", r->o->rng == MP_RNG_CPU ? "cpu" : "cuda");
  cJSON *seeds = cJSON_AddArrayToObject(p, "seeds");
  for (int i = 0; i < r->plan->n_images; i++) cJSON_AddItemToArray(seeds, cJSON_CreateNumber((double)r->plan->images[i].seed));
  for (int i = 0; i < r->plan->n_skipped; i++) skip(r, -1, r->plan->skipped[i].what, r->plan->skipped[i].reason);
  if (r->controlnet) {
    cJSON *cn = cJSON_AddObjectToObject(p, "controlnet");
    cJSON_AddStringToObject(cn, "type", mp_control_type_name(r->control_type));
    cJSON_AddNumberToObject(cn, "scale", job->controlnet_conditioning_scale);
    cJSON_AddBoolToObject(cn, "txt2img", job->controlnet_txt2img);
    cJSON_AddStringToObject(cn, "file", r->controlnet_path);
    cJSON_AddStringToObject(cn, "hash", r->controlnet_hash);
    cJSON_AddStringToObject(cn, "control_image", r->control.pixels ? "control.png" : "");
    if (r->control_layout) { /* the built-in pose layout: which pose stands in which slot */
      static const char *const poses[MP_OPENPOSE_LAYOUT_POSES] = {"arms down", "hands on hips", "right arm raised"};
      cJSON *layout = cJSON_AddArrayToObject(cn, "person_layout");
      for (int k = 0; k < job->n_persons && k < MP_MAX_PERSONS; k++) {
        cJSON *slot = cJSON_CreateObject();
        cJSON_AddNumberToObject(slot, "person", k + 1);
        cJSON_AddStringToObject(slot, "pose", poses[k % MP_OPENPOSE_LAYOUT_POSES]);
        cJSON_AddNumberToObject(slot, "x_center", (k + 0.5) * r->width / job->n_persons);
        cJSON_AddItemToArray(layout, slot);
      }
    }
  }
  for (int i = 0; i < job->n_warnings; i++) cJSON_AddItemToArray(r->warnings, cJSON_CreateString(job->warnings[i]));
  char finished[32];
  iso_time(finished, sizeof finished);
  cJSON_AddStringToObject(p, "started_at", started);
  cJSON_AddStringToObject(p, "finished_at", finished);
  char *text = cJSON_Print(p);
  char *path = path_join(r->tmp_dir, "result.json");
  FILE *f = text && path ? fopen(path, "wb") : NULL;
  int ok = f && fputs(text, f) >= 0 && fputc('\n', f) != EOF;
  if (f && fclose(f) != 0) ok = 0;
  free(text), free(path);
  return ok ? NULL : mp_errorf("cannot write result.json in %s", r->tmp_dir);
}

mp_error *mp_run_plan(mpass_ctx *ctx, const mp_plan *plan, const mp_run_options *opts, char **job_dir) {
  if (job_dir) *job_dir = NULL;
  run r = {.ctx = ctx, .plan = plan, .job = plan->job, .o = opts};
  r.result = cJSON_CreateObject();
  r.images = cJSON_AddArrayToObject(r.result, "images");
  r.passes = cJSON_AddArrayToObject(r.result, "passes");
  r.skipped = cJSON_AddArrayToObject(r.result, "skipped");
  r.warnings = cJSON_AddArrayToObject(r.result, "warnings");
  char started[32];
  iso_time(started, sizeof started);
  mp_progress_init(&r.progress, opts->progress, opts->progress_user, plan->n_images);
  mp_error *e = prepare(&r);
  for (int i = 0; !e && i < plan->n_images; i++) e = run_image(&r, &plan->images[i]);
  if (!e) e = write_result(&r, started);
  if (!e && rename(r.tmp_dir, r.final_dir) != 0)
    e = mp_errorf("cannot move %s to %s: %s", r.tmp_dir, r.final_dir, strerror(errno));
  if (e && r.tmp_dir) remove_tree(r.tmp_dir); /* no partial outputs */
  if (!e && job_dir) *job_dir = strdup(r.final_dir);
  clear_sheet(&r);
  if (r.have_persons) mp_person_result_free(&r.persons);
  if (r.finder_loaded) mp_person_finder_free(&r.finder);
  mp_ti_set_free(&r.ti);
  mp_esrgan_free(r.esrgan);
  mp_controlnet_free(r.controlnet);
  if (r.controlnet_file) mp_pack_cache_release(mp_backend_pack_cache(r.ctx->backend), r.controlnet_file);
  mp_weights_close(r.controlnet_file);
  mp_image_free(&r.control);
  mp_image_free(&r.fetched);
  free(r.fetched_url);
  free(r.controlnet_path), free(r.controlnet_name);
  /* the base last: of the engines kept for the next job (mpass_options.keep_models) it goes last */
  mp_engine_give(r.tune);
  mp_engine_give(r.persons_engine);
  free(r.persons_path);
  mp_engine_give(r.base);
  mp_tokenizer_free(r.tok);
  cJSON_Delete(r.result);
  free(r.tmp_dir), free(r.final_dir);
  return e;
}
