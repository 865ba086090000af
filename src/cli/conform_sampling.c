/* Conformance cases of the sampling side: rng (torch's CPU generator), txt2img (every k-diffusion
 * run and diffusers' DDIM, fed the reference's noise tape) and inpaint (diffusers DDIM img2img
 * and legacy 4-channel inpainting at strength 0.5). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "io/image.h"
#include "models/clip.h"
#include "models/controlnet.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/generate.h"
#include "prompt/conditioning_xl.h"
#include "sampling/noise.h"
#include "sampling/rng.h"
#include "sampling/sampler.h"
#include "sampling/schedule.h"

/* ../shared/golden/README.md: fp32 full sampling (latent, every step, image) rel L2 <= 1e-3 (no
 * max-abs bound is given for sampling); image_u8 exact but for +-1 on at most 0.1 % of values. */
#define SAMPLING_REL 1e-3
#define SAMPLING_ABS INFINITY
#define U8_OFF_BY_ONE 0.001

/* ---- rng ---- */

/* rng.{randn,rand}.seed<S>.<shape>: exact below 16 values, |d| <= 5e-7 otherwise. */
mp_error *conform_case_rng(conform *c) {
  if (!c->golden) return mp_errorf("rng.safetensors is missing");
  int done = 0;
  for (size_t i = 0; i < mp_weights_count(c->golden); i++) {
    const mp_weight *g = mp_weights_at(c->golden, i);
    unsigned seed;
    char kind[8];
    if (sscanf(g->name, "rng.%7[a-z].seed%u.", kind, &seed) != 2) continue;
    int64_t n = mp_tensor_numel(&g->t);
    float *got = malloc((size_t)n * sizeof *got);
    if (!got) return mp_errorf("out of memory");
    mp_torch_cpu_rng rng;
    mp_torch_cpu_seed(&rng, seed);
    if (strcmp(kind, "randn") == 0) mp_torch_cpu_randn(&rng, got, n);
    else mp_torch_cpu_rand(&rng, got, n);
    /* conform_check scales its max-abs bound by max(1, max|golden|); undo that for an absolute 5e-7 */
    double gmax = 0;
    for (int64_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(((const float *)g->t.data)[k]));
    double abs_tol = n < 16 ? 0.0 : 5e-7 / fmax(1.0, gmax);
    conform_check(c, g->name, got, n, n < 16 ? 0.0 : INFINITY, abs_tol);
    free(got);
    done++;
  }
  return done ? NULL : mp_errorf("no rng.* tensors in rng.safetensors");
}

/* ---- shared model setup ---- */

typedef struct {
  mp_weights *w;
  mp_sd_config cfg;
  mp_clip *clip;
  mp_unet *unet;
  mp_vae *vae;
  mp_schedule sched;
} sd_models;

static void free_models(sd_models *m) {
  mp_clip_free(m->clip);
  mp_unet_free(m->unet);
  mp_vae_free(m->vae);
  mp_schedule_free(&m->sched);
}

static mp_error *load_models(conform *c, sd_models *m) {
  memset(m, 0, sizeof *m);
  MP_TRY(conform_checkpoint(c, &m->w));
  MP_TRY(mp_sd_config_detect(m->w, NULL, &m->cfg));
  mp_error *e = mp_clip_load(m->w, mp_sd_clip_prefix(&m->cfg), &m->cfg.clip, &m->clip);
  if (!e) e = mp_unet_load(m->w, MP_PREFIX_UNET, &m->cfg.unet, &m->unet);
  if (!e) e = mp_vae_load(m->w, MP_PREFIX_VAE, &m->cfg.vae, &m->vae);
  if (!e) e = mp_schedule_from_checkpoint(&m->sched, m->w, m->cfg.linear_start, m->cfg.linear_end, m->cfg.timesteps);
  if (e) free_models(m);
  return e;
}

/* Token ids of a prompt as the reference tokenized it: the entry of tok.json with that text. */
static mp_error *reference_ids(conform *c, const char *prompt, int32_t ids[77]) {
  char *path = conform_path(c, "tok.json");
  FILE *f = path ? fopen(path, "rb") : NULL;
  const cJSON *ck = cJSON_GetObjectItemCaseSensitive(c->manifest, "ckpt");
  if (!f && cJSON_IsString(ck) && strrchr(ck->valuestring, '/')) { /* a suite on another's model (tiny-controlnet): its tok.json */
    char rel[1024];
    snprintf(rel, sizeof rel, "%.*stok.json", (int)(strrchr(ck->valuestring, '/') + 1 - ck->valuestring), ck->valuestring);
    free(path);
    path = conform_path(c, rel);
    f = path ? fopen(path, "rb") : NULL;
  }
  if (!f) {
    mp_error *e = mp_errorf("cannot open %s (the reference token ids of the prompts)", path ? path : "tok.json");
    free(path);
    return e;
  }
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc(len > 0 ? (size_t)len + 1 : 1);
  size_t got = buf ? fread(buf, 1, (size_t)(len > 0 ? len : 0), f) : 0;
  fclose(f);
  if (buf) buf[got] = 0;
  cJSON *j = buf ? cJSON_Parse(buf) : NULL;
  free(buf);
  mp_error *e = j ? NULL : mp_errorf("%s is not valid JSON", path);
  bool found = false;
  const cJSON *prompts = j ? cJSON_GetObjectItemCaseSensitive(j, "prompts") : NULL, *p;
  cJSON_ArrayForEach(p, prompts) {
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "prompt"), *arr = cJSON_GetObjectItemCaseSensitive(p, "input_ids");
    if (!cJSON_IsString(text) || strcmp(text->valuestring, prompt) != 0 || cJSON_GetArraySize(arr) != 77) continue;
    for (int k = 0; k < 77; k++) ids[k] = (int32_t)cJSON_GetArrayItem(arr, k)->valuedouble;
    found = true;
    break;
  }
  if (!e && !found) e = mp_errorf("%s has no 77 input_ids for the prompt \"%s\"", path, prompt);
  cJSON_Delete(j);
  free(path);
  return e;
}

/* CFG context [2, 77, hidden]: the negative prompt's encoding, then the prompt's. */
static mp_error *encode_pair(conform *c, sd_models *m, const char *prompt, const char *negative, float **out) {
  int D = m->cfg.clip.hidden;
  int32_t ids[77];
  float *ctx = mp_alloc((size_t)2 * 77 * D * sizeof(float));
  if (!ctx) return mp_errorf("out of memory");
  mp_error *e = reference_ids(c, negative, ids);
  if (!e) e = mp_clip_encode(m->clip, c->ctx->pool, ids, 77, 1, ctx);
  if (!e) e = reference_ids(c, prompt, ids);
  if (!e) e = mp_clip_encode(m->clip, c->ctx->pool, ids, 77, 1, ctx + (size_t)77 * D);
  if (e) mp_free(ctx);
  else *out = ctx;
  return e;
}

static const char *manifest_string(const cJSON *obj, const char *key, const char *fallback) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsString(v) ? v->valuestring : fallback;
}

static double manifest_number(const cJSON *obj, const char *key, double fallback) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsNumber(v) ? v->valuedouble : fallback;
}

/* Records x after every step; DDIM references record the DDPM variable, k-diffusion its own. */
typedef struct {
  float *steps; /* [capacity, n] */
  int count, capacity;
  bool ddpm;
} step_recorder;

static mp_error *record_step(void *ctx, int step, int n_steps, float *x, int64_t n, double sigma, double sigma_next) {
  step_recorder *r = ctx;
  if (r->count >= r->capacity) return mp_errorf("more steps (%d) than the reference recorded (%d)", n_steps, r->capacity);
  double f = r->ddpm ? 1.0 / sqrt(1.0 + sigma_next * sigma_next) : 1.0;
  for (int64_t i = 0; i < n; i++) r->steps[(int64_t)r->count * n + i] = (float)(x[i] * f);
  r->count++;
  return NULL;
}

/* Decode a [1,4,h,w] latent and check <run>.image and <run>.image_u8. */
static mp_error *check_image(conform *c, sd_models *m, const char *run, const float *latent, int h, int w) {
  int64_t n = (int64_t)3 * 8 * h * 8 * w;
  float *img = mp_alloc((size_t)n * sizeof(float));
  uint8_t *u8 = malloc((size_t)n);
  mp_error *e = (!img || !u8) ? mp_errorf("out of memory") : NULL;
  if (!e) e = mp_decode_latent(m->vae, c->ctx->pool, latent, h, w, m->cfg.scale_factor, img);
  char name[256];
  if (!e) {
    snprintf(name, sizeof name, "%s.image", run);
    conform_check(c, name, img, n, SAMPLING_REL, SAMPLING_ABS);
    snprintf(name, sizeof name, "%s.image_u8", run);
    if (c->golden && mp_weights_find(c->golden, name)) {
      mp_image_to_u8_torch(img, n, u8);
      conform_check_u8(c, name, u8, n, U8_OFF_BY_ONE);
    }
  }
  mp_free(img);
  free(u8);
  return e;
}

/* Information only: rel L2 of a result against a reference we do not claim to follow. */
static void info_compare(conform *c, const char *name, const float *got, int64_t n) {
  const mp_weight *g = c->golden ? mp_weights_find(c->golden, name) : NULL;
  if (!g || mp_tensor_numel(&g->t) != n || g->t.dtype != MP_F32) {
    printf("%-44s info: no comparable reference\n", name);
    return;
  }
  double d2 = 0, r2 = 0;
  const float *r = g->t.data;
  for (int64_t i = 0; i < n; i++) {
    d2 += ((double)got[i] - r[i]) * ((double)got[i] - r[i]);
    r2 += (double)r[i] * r[i];
  }
  printf("%-44s rel_l2=%-10.3g (information only, not a check)\n", name, r2 > 0 ? sqrt(d2 / r2) : sqrt(d2));
}

/* ---- txt2img ---- */

typedef struct {
  const char *run;     /* golden prefix */
  const char *sampler; /* mpass sampler */
  bool tape;           /* feed <run>.noise.NN */
  bool info_only;      /* compare the final latent for information */
  uint64_t brownian_seed;
} txt2img_run;

static const txt2img_run txt2img_runs[] = {
    {"kdiff.euler", "euler", false, false, 0},
    {"kdiff.euler_a", "euler_a", true, false, 0},
    {"kdiff.dpmpp_2m_karras", "dpm++2m_karras", false, false, 0},
    {"kdiff.dpmpp_sde_karras", "dpm++sde_karras", true, false, 0},
    {"txt2img.ddim", "ddim", false, false, 0},
    /* information only: torchsde's Brownian tree (ours has the same law, not the same numbers), and
     * diffusers' schedulers where they differ from k-diffusion (README "Known differences") */
    {"kdiff.dpmpp_sde_karras_bt", "dpm++sde_karras", false, true, 3},
    {"txt2img.euler", "euler", false, true, 0},
    {"txt2img.euler_a", "euler_a", true, true, 0},
    {"txt2img.dpmpp_2m_karras", "dpm++2m_karras", false, true, 0},
    {"txt2img.dpmpp_sde_karras", "dpm++sde_karras", true, true, 0},
};

/* control: the ControlNet-guided model (golden/tiny-controlnet), or NULL for the plain UNet. */
static mp_error *run_txt2img(conform *c, sd_models *m, const txt2img_run *r, const float *context, const float *y, const float *init,
                             int steps, double cfg, int h, int w, mp_controlnet_model *control) {
  int64_t n = (int64_t)MP_LATENT_CHANNELS * h * w;
  mp_unet_model um = {.unet = m->unet, .pool = c->ctx->pool, .y = y, .y_rows = 2, .y_dim = m->cfg.unet.adm_in_channels};
  mp_generate_params p = {.model = control ? mp_controlnet_model_eps : mp_unet_model_eps,
                          .model_ctx = control ? (void *)control : (void *)&um,
                          .unet_in_channels = m->cfg.unet.in_channels,
                          .schedule = &m->sched,
                          .context = context,
                          .n_ctx = 77,
                          .ctx_dim = m->cfg.unet.context_dim,
                          .batch = 1,
                          .lat_h = h,
                          .lat_w = w,
                          .cfg_scale = cfg,
                          .steps = steps,
                          .init_noise = init};
  MP_TRY(mp_sampler_parse(r->sampler, &p.sampler));
  char prefix[256], name[256];
  snprintf(prefix, sizeof prefix, "%s.noise.", r->run);
  mp_noise *noise = NULL;
  mp_error *e = NULL;
  if (r->tape) e = mp_noise_tape(c->golden, prefix, &noise);
  else if (r->brownian_seed) e = mp_noise_brownian(r->brownian_seed, mp_schedule_sigma_min(&m->sched), mp_schedule_sigma_max(&m->sched), &noise);
  else e = mp_noise_philox(0, &noise); /* these samplers draw nothing after the initial latent */
  p.noise = noise;
  step_recorder rec = {.capacity = steps, .ddpm = p.sampler.kind == MP_SAMPLER_DDIM};
  rec.steps = mp_alloc((size_t)steps * (size_t)n * sizeof(float));
  float *latent = mp_alloc((size_t)n * sizeof(float));
  float *sigmas = malloc((size_t)(steps + 1) * sizeof *sigmas);
  if (!e && (!rec.steps || !latent || !sigmas)) e = mp_errorf("out of memory");
  if (!r->info_only) {
    p.on_step = record_step;
    p.step_ctx = &rec;
  }
  if (!e && !r->info_only) {
    int ns = 0;
    e = mp_generate_sigmas(&p, sigmas, &ns);
    snprintf(name, sizeof name, "%s.sigmas", r->run);
    if (!e && c->golden && mp_weights_find(c->golden, name)) conform_check(c, name, sigmas, ns, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  if (!e) e = mp_generate_latents(&p, latent);
  if (!e && r->tape && mp_noise_tape_position(noise) == 0 && p.sampler.kind != MP_SAMPLER_EULER)
    e = mp_errorf("the sampler drew nothing from the noise tape");
  if (!e && r->info_only) {
    snprintf(name, sizeof name, "%s.latent", r->run);
    info_compare(c, name, latent, n);
  } else if (!e) {
    snprintf(name, sizeof name, "%s.steps", r->run);
    if (rec.count != steps) conform_fail(c, name, "%d steps recorded, expected %d", rec.count, steps);
    else conform_check(c, name, rec.steps, (int64_t)steps * n, SAMPLING_REL, SAMPLING_ABS);
    snprintf(name, sizeof name, "%s.latent", r->run);
    conform_check(c, name, latent, n, SAMPLING_REL, SAMPLING_ABS);
    e = check_image(c, m, r->run, latent, h, w);
  }
  mp_noise_free(noise);
  mp_free(rec.steps);
  mp_free(latent);
  free(sigmas);
  return mp_error_wrap(e, "%s", r->run);
}

/* SDXL: the reference's CFG batch as stored (txt2img.context [2, 77, d] with the zeroed negative
 * first, text_embeds [2, proj], time_ids [2, 6]), and the label vectors y [2, adm] made from them.
 * The text side itself is checked by the te case. */
static mp_error *sdxl_inputs(conform *c, sd_models *m, float **context, float **y) {
  mp_tensor ctx = {0}, pooled = {0}, ids = {0};
  const int P = m->cfg.clip2.projection_dim, Y = m->cfg.unet.adm_in_channels;
  mp_error *e = conform_tensor_f32(c, "txt2img.context", &ctx);
  if (!e) e = conform_tensor_f32(c, "txt2img.text_embeds", &pooled);
  if (!e) e = conform_tensor_f32(c, "txt2img.time_ids", &ids);
  if (!e && (mp_tensor_numel(&ctx) != 2 * 77 * (int64_t)m->cfg.unet.context_dim || mp_tensor_numel(&pooled) != 2 * P ||
             mp_tensor_numel(&ids) != 12))
    e = mp_errorf("txt2img.{context,text_embeds,time_ids} must be [2,77,%d], [2,%d], [2,6]", m->cfg.unet.context_dim, P);
  if (!e) {
    *context = mp_alloc(sizeof(float) * (size_t)mp_tensor_numel(&ctx));
    *y = mp_alloc(sizeof(float) * 2 * (size_t)Y);
    if (!*context || !*y) e = mp_errorf("out of memory");
  }
  if (!e) {
    memcpy(*context, ctx.data, sizeof(float) * (size_t)mp_tensor_numel(&ctx));
    for (int b = 0; b < 2; b++)
      mp_xl_label_vector((const float *)pooled.data + b * P, P, (const float *)ids.data + 6 * b, m->cfg.time_id_dim, *y + b * Y);
  }
  mp_tensor_free(&ctx), mp_tensor_free(&pooled), mp_tensor_free(&ids);
  return e;
}

mp_error *conform_case_txt2img(conform *c) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(c->manifest, "txt2img");
  if (!t) return mp_errorf("txt2img.json has no \"txt2img\" block");
  const char *prompt = manifest_string(t, "prompt", NULL), *negative = manifest_string(t, "negative", "");
  int steps = (int)manifest_number(t, "steps", 0), W = (int)manifest_number(t, "width", 0), H = (int)manifest_number(t, "height", 0);
  double cfg = manifest_number(t, "cfg", 7.0);
  if (!prompt || steps < 1 || W < 8 || H < 8) return mp_errorf("txt2img.json: prompt, steps, width or height missing");
  sd_models m;
  MP_TRY(load_models(c, &m));
  float *context = NULL, *y = NULL;
  mp_tensor init = {0};
  const bool xl = m.cfg.family == MP_FAMILY_SDXL;
  mp_error *e = xl ? sdxl_inputs(c, &m, &context, &y) : encode_pair(c, &m, prompt, negative, &context);
  if (!e) e = conform_tensor_f32(c, "txt2img.init_latent", &init);
  if (!e && mp_tensor_numel(&init) != (int64_t)MP_LATENT_CHANNELS * (H / 8) * (W / 8))
    e = mp_errorf("txt2img.init_latent has %lld values, expected 4x%dx%d", (long long)mp_tensor_numel(&init), H / 8, W / 8);
  /* golden/tiny-controlnet: the same runs guided by a ControlNet on both CFG halves (those it has goldens for) */
  mp_controlnet *cn = NULL;
  mp_controlnet_model control = {0};
  float *hint = NULL;
  const bool guided = cJSON_GetObjectItemCaseSensitive(c->manifest, "controlnet_ckpt") != NULL;
  if (!e && guided) {
    int hh = 0, hw = 0;
    e = conform_controlnet_open(c, &cn);
    if (!e) e = conform_controlnet_hint(c, &hint, &hh, &hw);
    if (!e && (hh != H || hw != W)) e = mp_errorf("hint.png is %dx%d, the txt2img run %dx%d", hw, hh, W, H);
    control = (mp_controlnet_model){.unet = m.unet, .controlnet = cn, .pool = c->ctx->pool, .hint = hint,
                                    .scale = (float)manifest_number(t, "controlnet_conditioning_scale", 1.0)};
  }
  for (size_t i = 0; !e && i < sizeof txt2img_runs / sizeof *txt2img_runs; i++) {
    char latent_name[256];
    snprintf(latent_name, sizeof latent_name, "%s.latent", txt2img_runs[i].run);
    /* tiny-xl holds k-diffusion runs and diffusers' Euler only; tiny-controlnet the guided runs it has */
    if ((xl || guided) && !mp_weights_find(c->golden, latent_name)) continue;
    e = run_txt2img(c, &m, &txt2img_runs[i], context, y, init.data, steps, cfg, H / 8, W / 8, guided ? &control : NULL);
  }
  mp_controlnet_model_free(&control);
  mp_controlnet_free(cn);
  mp_free(hint);
  mp_tensor_free(&init);
  mp_free(context);
  mp_free(y);
  free_models(&m);
  return e;
}

/* ---- inpaint (diffusers DDIM img2img and legacy inpainting) ---- */

static mp_error *read_planar_image(conform *c, const char *file, int channels, mp_image *img, float **planar) {
  char *path = conform_path(c, file);
  if (!path) return mp_errorf("out of memory");
  mp_error *e = mp_image_read(path, channels, img);
  free(path);
  if (e || !planar) return e;
  *planar = mp_alloc((size_t)channels * img->width * img->height * sizeof(float));
  if (!*planar) return mp_errorf("out of memory");
  mp_image_to_planar(img, *planar, -1.0f, 1.0f);
  return NULL;
}

static mp_error *run_inpaint(conform *c, sd_models *m, const char *run, const float *context, const float *image, int H, int W,
                             const float *mask_latent, int steps, double strength, double cfg) {
  int h = H / 8, w = W / 8;
  int64_t n = (int64_t)MP_LATENT_CHANNELS * h * w;
  char prefix[256], name[256];
  snprintf(prefix, sizeof prefix, "%s.noise.", run);
  mp_noise *tape = NULL;
  MP_TRY(mp_noise_tape(c->golden, prefix, &tape));
  float *x0 = mp_alloc((size_t)n * sizeof(float)), *latent = mp_alloc((size_t)n * sizeof(float));
  step_recorder rec = {.capacity = steps, .ddpm = true};
  rec.steps = mp_alloc((size_t)steps * (size_t)n * sizeof(float));
  mp_error *e = (!x0 || !latent || !rec.steps) ? mp_errorf("out of memory") : NULL;
  /* noise order: the VAE posterior sample first, then the starting noise */
  if (!e) e = mp_encode_latent(m->vae, c->ctx->pool, image, H, W, tape, m->cfg.scale_factor, x0);
  mp_unet_model um = {.unet = m->unet, .pool = c->ctx->pool};
  mp_generate_params p = {.model = mp_unet_model_eps,
                          .model_ctx = &um,
                          .unet_in_channels = m->cfg.unet.in_channels,
                          .schedule = &m->sched,
                          .context = context,
                          .n_ctx = 77,
                          .ctx_dim = m->cfg.clip.hidden,
                          .batch = 1,
                          .lat_h = h,
                          .lat_w = w,
                          .cfg_scale = cfg,
                          .steps = steps,
                          .noise = tape,
                          .init_latent = x0,
                          .strength = strength,
                          .mask = mask_latent,
                          .on_step = record_step,
                          .step_ctx = &rec};
  if (!e) e = mp_sampler_parse("ddim", &p.sampler);
  float sigmas[256];
  int ns = 0;
  if (!e && steps + 1 > 256) e = mp_errorf("%d steps", steps);
  if (!e) e = mp_generate_sigmas(&p, sigmas, &ns);
  if (!e) {
    int32_t ts[256];
    for (int i = 0; i < ns - 1; i++) ts[i] = (int32_t)lround(mp_schedule_sigma_to_t(&m->sched, sigmas[i]));
    snprintf(name, sizeof name, "%s.timesteps", run);
    conform_check_ids(c, name, ts, ns - 1);
  }
  if (!e) e = mp_generate_latents(&p, latent);
  if (!e) {
    snprintf(name, sizeof name, "%s.steps", run);
    if (rec.count * n != mp_tensor_numel(&mp_weights_find(c->golden, name)->t))
      conform_fail(c, name, "%d steps recorded", rec.count);
    else conform_check(c, name, rec.steps, (int64_t)rec.count * n, SAMPLING_REL, SAMPLING_ABS);
    snprintf(name, sizeof name, "%s.latent", run);
    conform_check(c, name, latent, n, SAMPLING_REL, SAMPLING_ABS);
    e = check_image(c, m, run, latent, h, w);
  }
  mp_noise_free(tape);
  mp_free(x0);
  mp_free(latent);
  mp_free(rec.steps);
  return mp_error_wrap(e, "%s", run);
}

mp_error *conform_case_inpaint(conform *c) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(c->manifest, "inpaint");
  if (!t) return mp_errorf("inpaint.json has no \"inpaint\" block");
  const char *prompt = manifest_string(t, "prompt", NULL);
  int steps = (int)manifest_number(t, "steps", 0);
  double strength = manifest_number(t, "strength", -1), cfg = manifest_number(t, "cfg", 7.0);
  if (!prompt || steps < 1 || steps > 200 || !(strength >= 0 && strength <= 1))
    return mp_errorf("inpaint.json: prompt, steps or strength missing or out of range");
  if (!c->golden || !mp_weights_find(c->golden, "inpaint.steps")) return mp_errorf("inpaint.safetensors is missing");
  sd_models m;
  MP_TRY(load_models(c, &m));
  mp_image img = {0}, mask_img = {0};
  float *image = NULL, *context = NULL, *mask = NULL, *mask_latent = NULL;
  mp_error *e = encode_pair(c, &m, prompt, "", &context);
  if (!e) e = read_planar_image(c, "init_image.png", 3, &img, &image);
  if (!e) e = read_planar_image(c, "mask.png", 1, &mask_img, NULL);
  if (!e && (mask_img.width != img.width || mask_img.height != img.height))
    e = mp_errorf("mask.png is %dx%d, init_image.png %dx%d", mask_img.width, mask_img.height, img.width, img.height);
  int H = img.height, W = img.width;
  if (!e) {
    mask = mp_alloc((size_t)H * W * sizeof(float));
    mask_latent = mp_alloc((size_t)(H / 8) * (W / 8) * sizeof(float));
    if (!mask || !mask_latent) e = mp_errorf("out of memory");
  }
  if (!e) e = mp_inpaint_binarize(&mask_img, mask);
  if (!e) {
    mp_inpaint_latent_mask(mask, H, W, H / 8, W / 8, mask_latent);
    conform_check(c, "inpaint.mask", mask, (int64_t)H * W, 0.0, 0.0);
    conform_check(c, "inpaint.mask_latent", mask_latent, (int64_t)(H / 8) * (W / 8), 0.0, 0.0);
  }
  if (!e) e = run_inpaint(c, &m, "img2img", context, image, H, W, NULL, steps, strength, cfg);
  if (!e) e = run_inpaint(c, &m, "inpaint", context, image, H, W, mask_latent, steps, strength, cfg);
  mp_image_free(&img);
  mp_image_free(&mask_img);
  mp_free(image);
  mp_free(context);
  mp_free(mask);
  mp_free(mask_latent);
  free_models(&m);
  return e;
}
