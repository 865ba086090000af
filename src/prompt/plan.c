/* The pass plan: a job turned into the explicit list of passes and post steps of SPEC.md §4. */
#include "prompt/plan.h"

#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

const char *mp_scene_mode_name(mp_scene_mode m) {
  switch (m) {
    case MP_SCENE_TXT2IMG: return "txt2img";
    case MP_SCENE_IMG2IMG: return "img2img";
    case MP_SCENE_INPAINT: return "inpaint";
    case MP_SCENE_BACKGROUND: return "background";
    case MP_SCENE_INPUT: return "input";
  }
  return "?";
}

const char *mp_post_name(mp_post_kind k) {
  switch (k) {
    case MP_POST_SUPER_RESOLUTION: return "super_resolution";
    case MP_POST_TILED_UPSCALE: return "tiled_upscale";
    case MP_POST_HIRES_FIX: return "hires_fix";
    case MP_POST_INPAINT_FACES: return "inpaint_faces";
    case MP_POST_COLOR_GRADING: return "color_grading";
    case MP_POST_FILM_GRAIN: return "film_grain";
  }
  return "?";
}

static void skip(mp_plan *p, const char *what, const char *reason) {
  if (p->n_skipped < (int)(sizeof p->skipped / sizeof *p->skipped)) p->skipped[p->n_skipped++] = (mp_skipped){what, reason};
}

static void post(mp_plan *p, mp_post_kind kind, int scale, double strength, double cfg) {
  p->post[p->n_post++] = (mp_post_step){.kind = kind, .scale = scale, .strength = strength, .cfg_scale = cfg};
}

int mp_super_resolution_scale(int w, int h) { return (long)w * h < 512L * 512L ? 4 : 2; }

mp_error *mp_plan_make(const mp_job *job, mp_plan **out) {
  *out = NULL;
  mp_plan *p = calloc(1, sizeof *p);
  if (!p) return mp_errorf("out of memory");
  p->job = job;
  bool has_input = job->input_image || job->input_image_url;
  bool has_mask = job->mask_image || job->mask_image_url || job->flags.mask_prompt;
  if (job->flags.only_upscale) p->mode = MP_SCENE_INPUT;
  else if (job->keep_background) p->mode = MP_SCENE_BACKGROUND;
  else if (has_input && has_mask) p->mode = MP_SCENE_INPAINT;
  else if (has_input && job->controlnet && job->controlnet_txt2img) p->mode = MP_SCENE_TXT2IMG; /* guided by the input's control image */
  else if (has_input) p->mode = MP_SCENE_IMG2IMG;
  else p->mode = MP_SCENE_TXT2IMG;

  double scene_strength = p->mode == MP_SCENE_TXT2IMG ? 1.0
                          : (p->mode == MP_SCENE_IMG2IMG || p->mode == MP_SCENE_INPAINT) ? job->denoising_strength
                                                                                          : 0.0;
  int persons = p->mode == MP_SCENE_INPUT ? 0 : job->n_persons;
  if (p->mode == MP_SCENE_INPUT && job->n_persons > 0)
    skip(p, "person passes", "--only_upscale: the input image is upscaled, nothing is repainted");

  p->n_images = job->num_images;
  for (int i = 0; i < job->num_images; i++) {
    mp_image_plan *im = &p->images[i];
    im->index = i;
    im->seed = (uint64_t)job->seed + (uint64_t)i;
    im->passes[0] = (mp_pass){0, &job->passes[0], im->seed, scene_strength};
    for (int k = 1; k <= persons; k++)
      im->passes[k] = (mp_pass){k, &job->passes[k], im->seed + (uint64_t)k, job->flags.person_denoising_strength};
    im->n_passes = 1 + persons;
  }

  /* post, in SPEC §4 order; --only_upscale always upscales. One upscale per job: with --tiled_upscale
   * the tiled pass is the super resolution (Real-ESRGAN by its factor, then the tiles repaint the
   * result), never Real-ESRGAN followed by another x2. */
  bool sr = job->super_resolution || job->flags.only_upscale;
  int sr_scale = job->width ? mp_super_resolution_scale(job->width, job->height) : 0;
  int upscale = 1;
  if (job->flags.tiled_upscale) {
    post(p, MP_POST_TILED_UPSCALE, sr ? sr_scale : 2, 1.0 - job->flags.resemblance, job->flags.hires_cfg_scale);
    p->post[p->n_post - 1].esrgan = sr;
    upscale = sr ? sr_scale : 2;
  } else if (sr) {
    post(p, MP_POST_SUPER_RESOLUTION, sr_scale, 0, 0);
    upscale = sr_scale;
  }
  if (job->width && upscale) {
    p->final_width = job->width * upscale;
    p->final_height = job->height * upscale;
  }
  if (job->hires_fix) post(p, MP_POST_HIRES_FIX, 0, job->flags.hires_denoising_strength, job->flags.hires_cfg_scale);
  if (job->inpaint_faces) post(p, MP_POST_INPAINT_FACES, 0, job->flags.face_denoising_strength, job->cfg_scale);
  if (job->color_grading != MP_GRADING_NONE) post(p, MP_POST_COLOR_GRADING, 0, 0, 0);
  if (job->film_grain) post(p, MP_POST_FILM_GRAIN, 0, 0, 0);

  if (job->face_correct) skip(p, "face_correct", "no face-restoration model is configured (mpass has none yet)");
  if (job->face_swap) skip(p, "face_swap", "no face-swap model is configured (mpass has none yet)");
  if (job->prompt_expansion) skip(p, "prompt_expansion", "no prompt-expansion model runs locally; the prompt is used as written");
  for (int k = 0; k < 1 + job->n_persons; k++)
    for (int a = 0; a < job->passes[k].n_adapters; a++)
      if (job->passes[k].adapters[a].kind == MP_ADAPTER_FACEID) {
        skip(p, "faceid", "faceid adapters are not supported: the <faceid:...> tags are ignored");
        k = 1 + job->n_persons;
        break;
      }
  *out = p;
  return NULL;
}

void mp_plan_free(mp_plan *plan) { free(plan); }

/* ---------------------------------------------------------------- readable form */

static void print_refs(FILE *f, const char *indent, const mp_pass_text *t) {
  for (int a = 0; a < t->n_adapters; a++)
    fprintf(f, "%s%s %s at %g%s\n", indent, t->adapters[a].kind == MP_ADAPTER_LORA ? "lora" : "faceid", t->adapters[a].id,
            t->adapters[a].weight, t->adapters[a].kind == MP_ADAPTER_LORA ? " (tune or LoRA file)" : " (not supported)");
  if (t->n_embeddings) {
    fprintf(f, "%sembeddings:", indent);
    for (int e = 0; e < t->n_embeddings; e++) fprintf(f, " %s", t->embeddings[e]);
    fprintf(f, "\n");
  }
}

static void print_section(FILE *f, const char *label, const mp_section *s) {
  fprintf(f, "  %-10s \"%s\"", label, s->text);
  for (int a = 0; a < s->n_adapters; a++)
    fprintf(f, " [%s %s at %g]", s->adapters[a].kind == MP_ADAPTER_LORA ? "lora" : "faceid", s->adapters[a].id, s->adapters[a].weight);
  for (int e = 0; e < s->n_embeddings; e++) fprintf(f, " [embedding %s]", s->embeddings[e]);
  fprintf(f, "\n");
}

static void print_sections(FILE *f, const mp_section *s, int n) {
  char label[32];
  for (int k = 0; k < n; k++) {
    if (n == 1) snprintf(label, sizeof label, "all:");
    else if (k == 0) snprintf(label, sizeof label, "base:");
    else if (k == 1) snprintf(label, sizeof label, "common:");
    else snprintf(label, sizeof label, "person %d:", k - 1);
    print_section(f, label, &s[k]);
  }
}

void mp_plan_print(const mp_plan *p, FILE *f) {
  const mp_job *j = p->job;
  fprintf(f, "job\n");
  fprintf(f, "  images     %d, seeds %llu..%llu%s\n", j->num_images, (unsigned long long)j->seed,
          (unsigned long long)j->seed + (unsigned long long)(j->num_images - 1), j->seed_random ? " (seed chosen at random)" : "");
  if (j->width) fprintf(f, "  size       %dx%d%s\n", j->width, j->height, j->ar_used ? " (from ar)" : "");
  else fprintf(f, "  size       from the input image (multiples of 8, long side at most 1024)\n");
  fprintf(f, "  sampler    %s, %d steps, cfg %g\n", mp_scheduler_name(j->scheduler), j->steps, j->cfg_scale);
  fprintf(f, "  use_lpw    %s\n", j->use_lpw ? "true" : "false");
  if (j->input_image || j->input_image_url)
    fprintf(f, "  input      %s (denoising_strength %g)\n", j->input_image ? j->input_image : j->input_image_url, j->denoising_strength);
  if (j->mask_image || j->mask_image_url) fprintf(f, "  mask       %s\n", j->mask_image ? j->mask_image : j->mask_image_url);
  fprintf(f, "flags (%d)\n", j->n_flags);
  if (j->flags.tiled_upscale) fprintf(f, "  --tiled_upscale\n");
  if (j->flags.hires_cfg_scale_given) fprintf(f, "  --hires_cfg_scale %g\n", j->flags.hires_cfg_scale);
  if (j->flags.resemblance_given) fprintf(f, "  --resemblance %g\n", j->flags.resemblance);
  if (j->flags.hires_denoising_strength_given) fprintf(f, "  --hires_denoising_strength %g\n", j->flags.hires_denoising_strength);
  if (j->flags.only_upscale) fprintf(f, "  --only_upscale\n");
  if (j->flags.mask_prompt) fprintf(f, "  --mask_prompt %s\n", j->flags.mask_prompt);
  if (j->flags.mask_invert) fprintf(f, "  --mask_invert\n");
  if (j->flags.mask_dilate_given) fprintf(f, "  --mask_dilate %d%s\n", j->flags.mask_dilate, j->flags.mask_dilate_percent ? "%" : "");
  if (j->flags.person_denoising_strength_given) fprintf(f, "  --person_denoising_strength %g\n", j->flags.person_denoising_strength);
  if (j->flags.face_denoising_strength_given) fprintf(f, "  --face_denoising_strength %g\n", j->flags.face_denoising_strength);
  if (j->flags.person_layout_none) fprintf(f, "  --person_layout none\n");
  fprintf(f, "sections (%d)%s\n", j->n_sections, j->keep_background ? ", leading BREAK BREAK: the input image is the background" : "");
  print_sections(f, j->sections, j->n_sections);
  fprintf(f, "negative sections (%d)%s\n", j->n_neg_sections, j->n_neg_sections == 1 ? ", no BREAK: used by every pass" : "");
  print_sections(f, j->neg_sections, j->n_neg_sections);
  fprintf(f, "embeddings (%d):", j->n_embeddings);
  for (int e = 0; e < j->n_embeddings; e++) fprintf(f, " %s", j->embeddings[e]);
  fprintf(f, "\nwarnings (%d)\n", j->n_warnings);
  for (int w = 0; w < j->n_warnings; w++) fprintf(f, "  %s\n", j->warnings[w]);

  fprintf(f, "plan: pass 1 %s", mp_scene_mode_name(p->mode));
  int persons = p->n_images ? p->images[0].n_passes - 1 : 0;
  if (persons) fprintf(f, ", %d person pass%s", persons, persons > 1 ? "es" : "");
  fprintf(f, "\n");
  for (int k = 0; k <= persons; k++) {
    const mp_pass *ps = &p->images[0].passes[k];
    if (k == 0) fprintf(f, "  pass 1 (scene, base model, %s, strength %g)\n", mp_scene_mode_name(p->mode), ps->strength);
    else fprintf(f, "  person %d (inpaint on the person's mask, strength %g)\n", k, ps->strength);
    fprintf(f, "    prompt:   \"%s\"\n    negative: \"%s\"\n", ps->text->prompt, ps->text->negative);
    print_refs(f, "    ", ps->text);
  }
  for (int i = 0; i < p->n_images; i++) {
    const mp_image_plan *im = &p->images[i];
    fprintf(f, "  image %d: seed %llu", i + 1, (unsigned long long)im->seed);
    for (int k = 1; k < im->n_passes; k++) fprintf(f, ", person %d seed %llu", k, (unsigned long long)im->passes[k].seed);
    fprintf(f, "\n");
  }
  fprintf(f, "post:");
  if (!p->n_post) fprintf(f, " (none)");
  for (int s = 0; s < p->n_post; s++) {
    const mp_post_step *st = &p->post[s];
    fprintf(f, "%s %s", s ? " ->" : "", mp_post_name(st->kind));
    switch (st->kind) {
      case MP_POST_SUPER_RESOLUTION:
        if (st->scale) fprintf(f, " (x%d)", st->scale);
        else fprintf(f, " (x4, or x2 when the image has 512x512 pixels or more)");
        break;
      case MP_POST_TILED_UPSCALE:
        if (st->scale) fprintf(f, " (x%d", st->scale);
        else fprintf(f, " (x4, or x2 when the image has 512x512 pixels or more,");
        fprintf(f, " %s, then tiles at strength %g, cfg %g)", st->esrgan ? "Real-ESRGAN" : "resize", st->strength, st->cfg_scale);
        break;
      case MP_POST_HIRES_FIX: fprintf(f, " (strength %g, cfg %g)", st->strength, st->cfg_scale); break;
      case MP_POST_INPAINT_FACES: fprintf(f, " (strength %g)", st->strength); break;
      case MP_POST_COLOR_GRADING: fprintf(f, " (%s)", mp_grading_name(j->color_grading)); break;
      case MP_POST_FILM_GRAIN: break;
    }
  }
  if (p->final_width) fprintf(f, "\nfinal size %dx%d", p->final_width, p->final_height);
  else fprintf(f, "\nfinal size from the input image (times the upscale above, if any)");
  fprintf(f, "\nskipped (%d)\n", p->n_skipped);
  for (int s = 0; s < p->n_skipped; s++) fprintf(f, "  %s: %s\n", p->skipped[s].what, p->skipped[s].reason);
}

/* ---------------------------------------------------------------- JSON */

static cJSON *str_or_null(const char *s) { return s ? cJSON_CreateString(s) : cJSON_CreateNull(); }

static cJSON *adapters_json(const mp_adapter *a, int n) {
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; i < n; i++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "type", a[i].kind == MP_ADAPTER_LORA ? "lora" : "faceid");
    cJSON_AddStringToObject(o, "id", a[i].id);
    cJSON_AddNumberToObject(o, "weight", a[i].weight);
    cJSON_AddItemToArray(arr, o);
  }
  return arr;
}

static cJSON *names_json(char *const *v, int n) {
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, cJSON_CreateString(v[i]));
  return arr;
}

static cJSON *sections_json(const mp_section *s, int n) {
  cJSON *arr = cJSON_CreateArray();
  for (int k = 0; k < n; k++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "role", n == 1 ? "all" : k == 0 ? "base" : k == 1 ? "common" : "person");
    if (n >= 3 && k >= 2) cJSON_AddNumberToObject(o, "person", k - 1);
    cJSON_AddStringToObject(o, "text", s[k].text);
    cJSON_AddItemToObject(o, "adapters", adapters_json(s[k].adapters, s[k].n_adapters));
    cJSON_AddItemToObject(o, "embeddings", names_json(s[k].embeddings, s[k].n_embeddings));
    cJSON_AddItemToArray(arr, o);
  }
  return arr;
}

static cJSON *flags_json(const mp_job *j) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddBoolToObject(o, "tiled_upscale", j->flags.tiled_upscale);
  cJSON_AddNumberToObject(o, "hires_cfg_scale", j->flags.hires_cfg_scale);
  cJSON_AddNumberToObject(o, "resemblance", j->flags.resemblance);
  cJSON_AddNumberToObject(o, "hires_denoising_strength", j->flags.hires_denoising_strength);
  cJSON_AddBoolToObject(o, "only_upscale", j->flags.only_upscale);
  cJSON_AddItemToObject(o, "mask_prompt", str_or_null(j->flags.mask_prompt));
  cJSON_AddBoolToObject(o, "mask_invert", j->flags.mask_invert);
  if (j->flags.mask_dilate_given) {
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "value", j->flags.mask_dilate);
    cJSON_AddStringToObject(d, "unit", j->flags.mask_dilate_percent ? "percent" : "px");
    cJSON_AddItemToObject(o, "mask_dilate", d);
  } else cJSON_AddNullToObject(o, "mask_dilate");
  cJSON_AddNumberToObject(o, "person_denoising_strength", j->flags.person_denoising_strength);
  cJSON_AddNumberToObject(o, "face_denoising_strength", j->flags.face_denoising_strength);
  cJSON_AddStringToObject(o, "person_layout", j->flags.person_layout_none ? "none" : "auto");
  return o;
}

static cJSON *job_json(const mp_job *j) {
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "text", j->text);
  cJSON_AddStringToObject(o, "negative_prompt", j->negative_prompt);
  cJSON_AddNumberToObject(o, "num_images", j->num_images);
  cJSON_AddNumberToObject(o, "seed", j->seed);
  cJSON_AddBoolToObject(o, "seed_random", j->seed_random);
  cJSON_AddNumberToObject(o, "steps", j->steps);
  cJSON_AddNumberToObject(o, "cfg_scale", j->cfg_scale);
  if (j->width) {
    cJSON_AddNumberToObject(o, "w", j->width);
    cJSON_AddNumberToObject(o, "h", j->height);
  } else {
    cJSON_AddNullToObject(o, "w");
    cJSON_AddNullToObject(o, "h");
  }
  cJSON_AddItemToObject(o, "ar", str_or_null(mp_aspect_name(j->ar)));
  cJSON_AddBoolToObject(o, "ar_used", j->ar_used);
  cJSON_AddStringToObject(o, "scheduler", mp_scheduler_name(j->scheduler));
  cJSON_AddBoolToObject(o, "use_lpw", j->use_lpw);
  cJSON_AddNumberToObject(o, "denoising_strength", j->denoising_strength);
  cJSON_AddItemToObject(o, "input_image", str_or_null(j->input_image));
  cJSON_AddItemToObject(o, "input_image_url", str_or_null(j->input_image_url));
  cJSON_AddItemToObject(o, "mask_image", str_or_null(j->mask_image));
  cJSON_AddItemToObject(o, "mask_image_url", str_or_null(j->mask_image_url));
  cJSON_AddBoolToObject(o, "super_resolution", j->super_resolution);
  cJSON_AddBoolToObject(o, "hires_fix", j->hires_fix);
  cJSON_AddBoolToObject(o, "inpaint_faces", j->inpaint_faces);
  cJSON_AddBoolToObject(o, "film_grain", j->film_grain);
  cJSON_AddItemToObject(o, "color_grading", str_or_null(mp_grading_name(j->color_grading)));
  cJSON_AddBoolToObject(o, "face_correct", j->face_correct);
  cJSON_AddBoolToObject(o, "face_swap", j->face_swap);
  cJSON_AddItemToObject(o, "controlnet", str_or_null(j->controlnet));
  cJSON_AddNumberToObject(o, "controlnet_conditioning_scale", j->controlnet_conditioning_scale);
  cJSON_AddBoolToObject(o, "controlnet_txt2img", j->controlnet_txt2img);
  cJSON_AddBoolToObject(o, "prompt_expansion", j->prompt_expansion);
  cJSON_AddItemToObject(o, "callback", str_or_null(j->callback));
  cJSON_AddItemToObject(o, "base_model", str_or_null(j->base_model));
  cJSON_AddItemToObject(o, "flags", flags_json(j));
  cJSON_AddItemToObject(o, "sections", sections_json(j->sections, j->n_sections));
  cJSON_AddItemToObject(o, "negative_sections", sections_json(j->neg_sections, j->n_neg_sections));
  cJSON_AddBoolToObject(o, "keep_background", j->keep_background);
  cJSON_AddItemToObject(o, "embeddings", names_json(j->embeddings, j->n_embeddings));
  return o;
}

static cJSON *pass_json(const mp_plan *p, const mp_pass *ps) {
  const mp_job *j = p->job;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "kind", ps->person ? "person" : "scene");
  if (ps->person) cJSON_AddNumberToObject(o, "person", ps->person);
  cJSON_AddStringToObject(o, "model", "base"); /* a checkpoint tune among the adapters replaces it (SPEC §1.4) */
  cJSON_AddStringToObject(o, "mode", ps->person ? "inpaint_person" : mp_scene_mode_name(p->mode));
  cJSON_AddStringToObject(o, "prompt", ps->text->prompt);
  cJSON_AddStringToObject(o, "negative_prompt", ps->text->negative);
  cJSON_AddItemToObject(o, "adapters", adapters_json(ps->text->adapters, ps->text->n_adapters));
  cJSON_AddItemToObject(o, "embeddings", names_json(ps->text->embeddings, ps->text->n_embeddings));
  cJSON_AddNumberToObject(o, "seed", (double)ps->seed);
  cJSON_AddStringToObject(o, "scheduler", mp_scheduler_name(j->scheduler));
  cJSON_AddNumberToObject(o, "steps", j->steps);
  cJSON_AddNumberToObject(o, "cfg_scale", j->cfg_scale);
  if (j->width) {
    cJSON_AddNumberToObject(o, "w", j->width);
    cJSON_AddNumberToObject(o, "h", j->height);
  } else {
    cJSON_AddNullToObject(o, "w");
    cJSON_AddNullToObject(o, "h");
  }
  cJSON_AddNumberToObject(o, "denoising_strength", ps->strength);
  cJSON_AddBoolToObject(o, "use_lpw", j->use_lpw);
  if (!ps->person && p->mode == MP_SCENE_INPAINT) {
    cJSON *m = cJSON_CreateObject();
    if (j->flags.mask_prompt) {
      cJSON_AddStringToObject(m, "source", "prompt");
      cJSON_AddStringToObject(m, "prompt", j->flags.mask_prompt);
    } else {
      cJSON_AddStringToObject(m, "source", "image");
      cJSON_AddStringToObject(m, "image", j->mask_image ? j->mask_image : j->mask_image_url);
    }
    cJSON_AddBoolToObject(m, "invert", j->flags.mask_invert);
    cJSON_AddNumberToObject(m, "dilate", j->flags.mask_dilate_given ? j->flags.mask_dilate : 0);
    cJSON_AddStringToObject(m, "dilate_unit", j->flags.mask_dilate_percent ? "percent" : "px");
    cJSON_AddItemToObject(o, "mask", m);
  }
  return o;
}

mp_error *mp_plan_to_json(const mp_plan *p, char **out) {
  *out = NULL;
  const mp_job *j = p->job;
  cJSON *root = cJSON_CreateObject();
  if (!root) return mp_errorf("out of memory");
  cJSON_AddStringToObject(root, "schema", MP_PLAN_SCHEMA);
  cJSON_AddItemToObject(root, "job", job_json(j));
  cJSON_AddItemToObject(root, "warnings", names_json(j->warnings, j->n_warnings));
  cJSON_AddStringToObject(root, "scene_mode", mp_scene_mode_name(p->mode));
  cJSON *images = cJSON_AddArrayToObject(root, "images");
  for (int i = 0; i < p->n_images; i++) {
    const mp_image_plan *im = &p->images[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", im->index);
    cJSON_AddNumberToObject(o, "seed", (double)im->seed);
    cJSON *passes = cJSON_AddArrayToObject(o, "passes");
    for (int k = 0; k < im->n_passes; k++) cJSON_AddItemToArray(passes, pass_json(p, &im->passes[k]));
    cJSON_AddItemToArray(images, o);
  }
  cJSON *steps = cJSON_AddArrayToObject(root, "post");
  for (int s = 0; s < p->n_post; s++) {
    const mp_post_step *st = &p->post[s];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "step", mp_post_name(st->kind));
    switch (st->kind) {
      case MP_POST_SUPER_RESOLUTION:
        if (st->scale) cJSON_AddNumberToObject(o, "scale", st->scale);
        else cJSON_AddNullToObject(o, "scale");
        cJSON_AddStringToObject(o, "model", "realesr-general-x4v3");
        break;
      case MP_POST_TILED_UPSCALE:
        if (st->scale) cJSON_AddNumberToObject(o, "scale", st->scale);
        else cJSON_AddNullToObject(o, "scale");
        cJSON_AddStringToObject(o, "upscaler", st->esrgan ? "realesr-general-x4v3" : "lanczos3");
        cJSON_AddNumberToObject(o, "denoising_strength", st->strength);
        cJSON_AddNumberToObject(o, "cfg_scale", st->cfg_scale);
        break;
      case MP_POST_HIRES_FIX:
        cJSON_AddNumberToObject(o, "denoising_strength", st->strength);
        cJSON_AddNumberToObject(o, "cfg_scale", st->cfg_scale);
        break;
      case MP_POST_INPAINT_FACES:
        cJSON_AddNumberToObject(o, "denoising_strength", st->strength);
        cJSON_AddNumberToObject(o, "cfg_scale", st->cfg_scale);
        break;
      case MP_POST_COLOR_GRADING: cJSON_AddStringToObject(o, "preset", mp_grading_name(j->color_grading)); break;
      case MP_POST_FILM_GRAIN:
        cJSON_AddNumberToObject(o, "sigma_full", 0.010);
        cJSON_AddNumberToObject(o, "sigma_half", 0.020);
        break;
    }
    cJSON_AddItemToArray(steps, o);
  }
  if (p->final_width) {
    cJSON *fs = cJSON_AddObjectToObject(root, "final_size");
    cJSON_AddNumberToObject(fs, "w", p->final_width);
    cJSON_AddNumberToObject(fs, "h", p->final_height);
  } else {
    cJSON_AddNullToObject(root, "final_size");
  }
  cJSON *sk = cJSON_AddArrayToObject(root, "skipped");
  for (int s = 0; s < p->n_skipped; s++) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "what", p->skipped[s].what);
    cJSON_AddStringToObject(o, "reason", p->skipped[s].reason);
    cJSON_AddItemToArray(sk, o);
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  if (!text) return mp_errorf("out of memory");
  *out = text;
  return NULL;
}
