#include "pipeline/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/pack_cache.h"
#include "io/diffusers.h"
#include "pipeline/engine_text.h"
#include "pipeline/pack_files.h"
#include "pipeline/generate.h"
#include "pipeline/params.h"
#include "post/resize.h"
#include "prompt/conditioning_xl.h"

static mp_error *bind_models(mp_engine *e) {
  const mp_weights *w = e->overlay ? e->overlay : e->base;
  mp_engine_text_forget(e); /* encoded with the text encoders being replaced */
  mp_clip_free(e->clip);
  mp_openclip_free(e->clip2);
  mp_unet *old = e->unet;
  e->clip = NULL, e->clip2 = NULL, e->unet = NULL;
  mp_error *err = mp_clip_load(w, mp_sd_clip_prefix(&e->cfg), &e->cfg.clip, &e->clip);
  if (!err && e->cfg.family == MP_FAMILY_SDXL) err = mp_openclip_load(w, MP_PREFIX_XL_OPENCLIP, &e->cfg.clip2, &e->clip2);
  if (!err) err = mp_unet_load(w, MP_PREFIX_UNET, &e->cfg.unet, &e->unet);
  mp_unet_adopt_buffers(e->unet, old); /* the new binding's first step runs in the old one's memory */
  mp_unet_free(old);
  return err;
}

/* Pin the base checkpoint's tensors in the backend's pack cache: their memory lives as long as the
 * engine, so their packed bf16 copies survive rebinding to a LoRA overlay (whose untouched entries view
 * the same memory) and a LoRA switch re-packs only the layers it patched. With them goes the
 * checkpoint's on-disk pack store (pipeline/pack_files.h), so the next process maps its packs. */
static mp_error *pin_base(mp_engine *e) { return mp_pin_checkpoint(e->ctx, e->base, e->base); }

/* The weights file as it is now, for a kept engine to tell that its file is still the one it opened: a
 * replaced file has another inode, a rewritten one another mtime (and mostly another size). */
static bool file_identity(const char *path, long long id[4]) {
  struct stat st;
  if (stat(path, &st) != 0) return false;
  id[0] = (long long)st.st_dev, id[1] = (long long)st.st_ino, id[2] = (long long)st.st_size;
  id[3] = (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
  return true;
}

mp_error *mp_engine_open(mpass_ctx *ctx, const char *path, const mp_tokenizer *tok, mp_engine **out) {
  *out = NULL;
  mp_engine *e = calloc(1, sizeof *e);
  if (!e) return mp_errorf("out of memory");
  e->ctx = ctx;
  e->tok = tok;
  e->path = strdup(path);
  /* the file name without extension; a diffusers folder's name as it is ("models/sd-v1.5/" -> "sd-v1.5") */
  bool folder = mp_diffusers_is_folder(path);
  size_t len = strlen(path);
  while (folder && len > 1 && path[len - 1] == '/') len--;
  const char *base = path + len;
  while (base > path && base[-1] != '/') base--;
  const char *dot = folder ? NULL : strrchr(base, '.');
  e->name = strndup(base, dot ? (size_t)(dot - base) : (size_t)(path + len - base));
  mp_error *err = !e->path || !e->name ? mp_errorf("out of memory") : NULL;
  if (!err) err = mp_weights_open(path, &e->base);
  if (!err) err = pin_base(e);
  if (!err) err = mp_sd_config_detect(e->base, NULL, &e->cfg);
  if (!err)
    err = mp_schedule_from_checkpoint(&e->schedule, e->base, e->cfg.linear_start, e->cfg.linear_end, e->cfg.timesteps);
  if (!err) err = bind_models(e);
  if (!err) err = mp_vae_load(e->base, MP_PREFIX_VAE, &e->cfg.vae, &e->vae);
  char cache[4096];
  snprintf(cache, sizeof cache, "%s/.cache", ctx->models_dir);
  char *hashed = NULL; /* a diffusers folder is identified by its UNet weights file */
  if (!err) err = mp_checkpoint_hash_file(path, &hashed);
  if (!err) err = mp_model_short_hash_cached(cache, hashed, e->hash);
  if (!err && !file_identity(hashed, e->file_id)) err = mp_errorf("cannot stat %s", hashed);
  free(hashed);
  if (err) {
    mp_engine_close(e);
    return mp_error_wrap(err, "loading %s", path);
  }
  *out = e;
  return NULL;
}

void mp_engine_close(mp_engine *e) {
  if (!e) return;
  mp_engine_text_forget(e);
  mp_clip_free(e->clip);
  mp_openclip_free(e->clip2);
  mp_unet_free(e->unet);
  mp_vae_free(e->vae);
  mp_schedule_free(&e->schedule);
  mp_weights_close(e->overlay);
  mp_page_arena_free(&e->lora_pages);
  if (e->base) mp_pack_cache_release(mp_backend_pack_cache(e->ctx->backend), e->base);
  mp_weights_close(e->base);
  free(e->path);
  free(e->name);
  free(e);
}

/* ---- engines kept between jobs ---- */
struct mp_engine_keep {
  mp_engine *e[MP_KEPT_ENGINES]; /* given back longest ago first */
  int n;
  int in_use; /* taken and not given back yet */
};

static void drop_kept(mpass_ctx *ctx) {
  struct mp_engine_keep *k = ctx->kept;
  for (int i = 0; k && i < k->n; i++) mp_engine_close(k->e[i]);
  free(k);
  ctx->kept = NULL;
}

/* ctx's keeper, made on first use; NULL without keep_models (or memory) */
static struct mp_engine_keep *keeper(mpass_ctx *ctx) {
  if (ctx->keep_models && !ctx->kept && (ctx->kept = calloc(1, sizeof *ctx->kept))) ctx->drop_kept = drop_kept;
  return ctx->keep_models ? ctx->kept : NULL;
}

static void close_oldest(struct mp_engine_keep *k) {
  mp_engine_close(k->e[0]);
  k->n--;
  memmove(k->e, k->e + 1, sizeof *k->e * (size_t)k->n);
}

const mp_engine *mp_engine_kept(const mpass_ctx *ctx, int i) {
  return ctx->kept && i >= 0 && i < ctx->kept->n ? ctx->kept->e[i] : NULL;
}

mp_error *mp_engine_take(mpass_ctx *ctx, const char *path, const mp_tokenizer *tok, mp_engine **out) {
  *out = NULL;
  struct mp_engine_keep *k = keeper(ctx);
  for (int i = 0; k && i < k->n; i++) {
    mp_engine *e = k->e[i];
    if (strcmp(e->path, path) != 0) continue;
    k->n--;
    memmove(k->e + i, k->e + i + 1, sizeof *k->e * (size_t)(k->n - i));
    char *hashed = NULL;
    long long now[4];
    mp_error *err = mp_checkpoint_hash_file(path, &hashed);
    const bool same = !err && file_identity(hashed, now) && !memcmp(now, e->file_id, sizeof now);
    mp_error_free(err);
    free(hashed);
    if (!same) { /* changed on disk (or gone): what the engine maps is not what the job names */
      mp_engine_close(e);
      break;
    }
    e->tok = tok;
    k->in_use++;
    *out = e;
    return NULL;
  }
  /* Engines alive stay within MP_KEPT_ENGINES (or what one job holds at once, if more): a job on other
   * checkpoints first closes the kept ones it does not use, instead of stacking its own on them. */
  while (k && k->n > 0 && k->n + k->in_use >= MP_KEPT_ENGINES) close_oldest(k);
  MP_TRY(mp_engine_open(ctx, path, tok, out));
  if (k) k->in_use++;
  return NULL;
}

void mp_engine_give(mp_engine *e) {
  if (!e) return;
  mpass_ctx *ctx = e->ctx;
  struct mp_engine_keep *k = keeper(ctx);
  if (k && k->in_use > 0) k->in_use--;
  mp_error *err = k ? mp_engine_set_loras(e, NULL, 0, NULL, NULL) : NULL;
  if (!k || err) {
    mp_error_free(err);
    mp_engine_close(e);
    return;
  }
  /* nothing of the job stays: its texts, its tokenizer (the job's), its scratch */
  mp_engine_text_forget(e);
  e->tok = NULL;
  mp_page_arena_free(&e->lora_pages);
  mp_unet_trim(e->unet);
  mp_backend_trim(ctx->backend);
  if (k->n == MP_KEPT_ENGINES) close_oldest(k); /* the one given back longest ago makes room */
  k->e[k->n++] = e;
}

mp_error *mp_engine_set_loras(mp_engine *e, const mp_lora_spec *specs, int n, char ***warnings, int *n_warnings) {
  if (n == 0 && !e->overlay && e->unet) return NULL; /* already the base */
  mp_weights_close(e->overlay);
  e->overlay = NULL;
  if (n > 0) {
    mp_lora_report rep = {0};
    /* At f32 precision the patched layers are kept in f32: merging the delta into an f16 checkpoint's
     * own dtype would round W + dW to f16, a reduced-precision step on the fp32 path. At bf16 the
     * backend packs every weight to bf16 before the matmul anyway, so the checkpoint's dtype loses
     * nothing further and keeps the overlay half the size. */
    mp_lora_options opt = {.f32_patches = e->ctx->precision == MP_PRECISION_F32, .pool = e->ctx->pool, .arena = &e->lora_pages};
    mp_error *err = mp_lora_apply_opts(e->base, &e->cfg, specs, n, &opt, &e->overlay, &rep);
    if (err) { /* the models still point into the overlay just closed: back to the base before anything runs */
      mp_error_free(bind_models(e));
      return err;
    }
    for (int i = 0; warnings && i < rep.n_unmatched; i++) {
      char **grown = realloc(*warnings, (size_t)(*n_warnings + 1) * sizeof *grown);
      if (!grown) break;
      *warnings = grown;
      size_t len = strlen(rep.unmatched[i]) + 64;
      if (((*warnings)[*n_warnings] = malloc(len))) snprintf((*warnings)[(*n_warnings)++], len, "LoRA %s matches no layer", rep.unmatched[i]);
    }
    mp_lora_report_free(&rep);
  }
  return bind_models(e);
}

typedef struct {
  mp_progress *progress;
} step_ctx;

static mp_error *on_step(void *ctx, int step, int n_steps, float *x, int64_t n, double sigma, double sigma_next) {
  (void)n_steps, (void)x, (void)n, (void)sigma, (void)sigma_next;
  step_ctx *s = ctx;
  if (s->progress && mp_progress_step(s->progress, step + 1)) return mp_errorf("cancelled");
  return NULL;
}

/* The model, counting its evaluations for the progress report (`mpass bench --job` prints them). */
typedef struct {
  mp_model_fn fn;
  void *ctx;
  mp_progress *progress;
} counted_model;

static mp_error *counted_eps(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context, int n_ctx,
                             float *eps) {
  counted_model *m = ctx;
  if (m->progress) mp_progress_evaluation(m->progress);
  return m->fn(m->ctx, rows, h, w, x, t, context, n_ctx, eps);
}

/* The image as planar floats in [-1, 1], the VAE's input range. */
static float *image_to_planar(const mp_image *img) {
  float *chw = mp_alloc(sizeof(float) * 3 * (size_t)img->width * (size_t)img->height);
  if (chw) mp_image_to_planar(img, chw, -1.0f, 1.0f);
  return chw;
}

int mp_engine_pass_steps(const mp_engine *e, const mp_pass_params *p) {
  if (!p->init) return p->steps;
  float *sigmas = malloc(sizeof(float) * (size_t)(p->steps + 2));
  int n = 0;
  mp_error *err = sigmas ? mp_sampler_img2img_sigmas(&p->sampler, &e->schedule, p->steps, p->strength, sigmas, &n) : NULL;
  mp_error_free(err);
  free(sigmas);
  return n > 1 && !err ? n - 1 : p->steps;
}

/* The UNet halves the latent once per level after the first: sizes must divide by 8 · 2^(levels-1)
 * (64 px for SD 1.x). */
static int size_granularity(const mp_engine *e) { return 8 << (e->cfg.unet.n_levels - 1); }

static mp_error *run_pass_aligned(mp_engine *e, const mp_pass_params *p, mp_progress *progress, mp_image *out, char **warning);

/* Other sizes run at the next size up that the UNet takes, resized there and back, as the crops and
 * tiles of the person, face and upscale passes come in any multiple of 8. */
mp_error *mp_engine_run_pass(mp_engine *e, const mp_pass_params *p, mp_progress *progress, mp_image *out, char **warning) {
  int g = size_granularity(e);
  if (p->width % g == 0 && p->height % g == 0) return run_pass_aligned(e, p, progress, out, warning);
  mp_pass_params q = *p;
  q.width = (p->width + g - 1) / g * g, q.height = (p->height + g - 1) / g * g;
  mp_image init = {0}, big = {0}, control = {0};
  mp_mask mask = {0};
  mp_error *err = NULL;
  if (p->init) err = mp_image_resize(p->init, q.width, q.height, MP_RESIZE_LANCZOS3, &init), q.init = &init;
  if (!err && p->controlnet && p->control) /* bilinear: an edge map or skeleton stays crisp enough, no ringing */
    err = mp_image_resize(p->control, q.width, q.height, MP_RESIZE_BILINEAR, &control), q.control = &control;
  if (!err && p->mask) err = mp_mask_resize(p->mask, q.width, q.height, MP_RESIZE_BILINEAR, &mask), q.mask = &mask;
  if (!err) err = run_pass_aligned(e, &q, progress, &big, warning);
  if (!err) err = mp_image_resize(&big, p->width, p->height, MP_RESIZE_LANCZOS3, out);
  mp_image_free(&init), mp_image_free(&big), mp_image_free(&control);
  mp_mask_free(&mask);
  return err;
}

static mp_error *run_pass_aligned(mp_engine *e, const mp_pass_params *p, mp_progress *progress, mp_image *out, char **warning) {
  memset(out, 0, sizeof *out);
  if (warning) *warning = NULL;
  if (p->width % 8 || p->height % 8 || p->width < 8 || p->height < 8)
    return mp_errorf("pass size %dx%d: width and height must be positive multiples of 8", p->width, p->height);
  if (p->init && (p->init->width != p->width || p->init->height != p->height || p->init->channels != 3))
    return mp_errorf("init image is %dx%d, the pass is %dx%d", p->init->width, p->init->height, p->width, p->height);
  mp_pool *pool = e->ctx->pool;
  const int H = p->height, W = p->width, h = H / 8, w = W / 8;
  const int64_t lat_n = (int64_t)MP_LATENT_CHANNELS * h * w;
  const float scale = e->cfg.scale_factor;

  /* borrowed from the engine, which keeps them for the next pass with the same texts (engine_text.h) */
  const mp_conditioning *cond = NULL;
  const mp_xl_conditioning *xc = NULL;
  const bool xl = e->cfg.family == MP_FAMILY_SDXL;
  mp_error *err = mp_engine_text(e, p, &cond, &xc);
  if (err) return mp_error_wrap(err, "conditioning");
  const mp_tensor *t_cond = xl ? &xc->cond : &cond->cond, *t_uncond = xl ? &xc->uncond : &cond->uncond;
  const char *cond_warning = xl ? xc->warning : cond->warning;
  if (warning && cond_warning) *warning = strdup(cond_warning);

  const int n_ctx = (int)t_cond->shape[1], dim = (int)t_cond->shape[2];
  float *context = mp_alloc(sizeof(float) * 2 * (size_t)n_ctx * (size_t)dim);
  /* SDXL's label vectors [uncond, cond]: the pooled text and the size conditioning of A1111 and
   * diffusers: original size = target size = the pass size, no crop. */
  const int Y = e->cfg.unet.adm_in_channels;
  float *y = xl ? mp_alloc(sizeof(float) * 2 * (size_t)Y) : NULL;
  if (xl && y) {
    const float time_ids[6] = {(float)H, (float)W, 0, 0, (float)H, (float)W};
    const int P = e->cfg.clip2.projection_dim;
    mp_xl_label_vector(xc->pooled_uncond.data, P, time_ids, e->cfg.time_id_dim, y);
    mp_xl_label_vector(xc->pooled_cond.data, P, time_ids, e->cfg.time_id_dim, y + Y);
  }
  float *latent = mp_alloc(sizeof(float) * (size_t)lat_n);
  float *init_latent = NULL, *lat_mask = NULL, *inpaint_cond = NULL, *image = NULL, *pixels = NULL;
  mp_noise *noise = NULL;
  if (!context || !latent || (xl && !y)) err = mp_errorf("out of memory");
  if (!err) {
    /* the CFG batch: unconditional rows first, then conditional */
    memcpy(context, t_uncond->data, sizeof(float) * (size_t)n_ctx * dim);
    memcpy(context + (size_t)n_ctx * dim, t_cond->data, sizeof(float) * (size_t)n_ctx * dim);
  }
  if (!err && p->init) {
    image = image_to_planar(p->init);
    init_latent = mp_alloc(sizeof(float) * (size_t)lat_n);
    err = image && init_latent ? mp_encode_latent(e->vae, pool, image, H, W, NULL, scale, init_latent) : mp_errorf("out of memory");
  }
  if (!err && p->init && p->mask) {
    /* AUTOMATIC1111 resizes the (blurred) mask to the latent and rounds it: inside > 0.5 is repainted. */
    mp_mask small = {0};
    err = mp_mask_resize(p->mask, w, h, MP_RESIZE_BILINEAR, &small);
    if (!err && !(lat_mask = mp_alloc(sizeof(float) * (size_t)h * w))) err = mp_errorf("out of memory");
    for (int64_t i = 0; !err && i < (int64_t)h * w; i++) lat_mask[i] = small.data[i] >= 0.5f ? 1.0f : 0.0f;
    mp_mask_free(&small);
    if (!err && e->cfg.inpainting) {
      float *full = mp_alloc(sizeof(float) * (size_t)H * W);
      inpaint_cond = mp_alloc(sizeof(float) * 5 * (size_t)h * w);
      if (!full || !inpaint_cond) err = mp_errorf("out of memory");
      for (int64_t i = 0; !err && i < (int64_t)H * W; i++) full[i] = p->mask->data[i] >= 0.5f ? 1.0f : 0.0f;
      if (!err) err = mp_inpaint_condition(e->vae, pool, image, full, H, W, scale, inpaint_cond);
      mp_free(full);
    }
  }
  if (!err && e->cfg.inpainting && !inpaint_cond) {
    /* A 9-channel model outside inpainting: the whole image is "masked", as diffusers does for txt2img. */
    inpaint_cond = mp_calloc(5 * (size_t)h * w, sizeof(float));
    if (!inpaint_cond) err = mp_errorf("out of memory");
    for (int64_t i = 0; !err && i < (int64_t)h * w; i++) inpaint_cond[i] = 1.0f;
  }
  if (!err) err = mp_noise_for_seeds(p->rng, &p->seed, 1, &noise);
  /* ControlNet: the control image as its hint (RGB u8/255 at the pass size) */
  mp_image control_fit = {0};
  float *hint = NULL;
  mp_controlnet_model cn = {.unet = e->unet, .controlnet = p->controlnet, .pool = pool, .scale = (float)p->control_scale,
                            .x_channels = e->cfg.unet.in_channels};
  if (!err && p->controlnet && p->control) {
    const mp_image *c = p->control;
    if (c->width != W || c->height != H || c->channels != 3)
      err = mp_image_resize(c, W, H, MP_RESIZE_BILINEAR, &control_fit), c = &control_fit;
    if (!err && c->channels != 3) err = mp_errorf("control image has %d channels, expected RGB", c->channels);
    if (!err && !(hint = mp_alloc(sizeof(float) * 3 * (size_t)H * W))) err = mp_errorf("out of memory");
    if (!err) mp_image_to_planar(c, hint, 0.0f, 1.0f), cn.hint = hint;
  }
  if (!err) {
    mp_unet_model model = {.unet = e->unet, .pool = pool, .y = y, .y_rows = 2, .y_dim = Y};
    step_ctx sc = {progress};
    const bool controlled = cn.controlnet && cn.hint;
    counted_model counted = {controlled ? mp_controlnet_model_eps : mp_unet_model_eps, controlled ? (void *)&cn : (void *)&model,
                             progress};
    mp_generate_params g = {
        .model = counted_eps, .model_ctx = &counted, .unet_in_channels = e->cfg.unet.in_channels,
        .schedule = &e->schedule, .context = context, .n_ctx = n_ctx, .ctx_dim = dim, .batch = 1, .lat_h = h,
        .lat_w = w, .cfg_scale = p->cfg_scale, .sampler = p->sampler, .steps = p->steps, .noise = noise,
        .seeds = &p->seed, .init_latent = init_latent, .strength = p->strength, .mask = lat_mask,
        .inpaint_cond = inpaint_cond, .on_step = on_step, .step_ctx = &sc};
    if (progress) mp_progress_sampling_starts(progress);
    err = mp_generate_latents(&g, latent);
  }
  if (!err) {
    /* the UNet's activations are not needed while the VAE decodes: do not hold both at once */
    mp_unet_trim(e->unet);
    mp_backend_trim(e->ctx->backend);
    pixels = mp_alloc(sizeof(float) * 3 * (size_t)H * W);
    err = pixels ? mp_decode_latent(e->vae, pool, latent, h, w, scale, pixels) : mp_errorf("out of memory");
  }
  if (!err) err = mp_image_alloc(out, W, H, 3);
  if (!err) mp_image_from_planar(out, pixels, -1.0f, 1.0f);
  mp_controlnet_model_free(&cn);
  mp_free(hint);
  mp_image_free(&control_fit);
  mp_noise_free(noise);
  mp_free(context), mp_free(latent), mp_free(init_latent), mp_free(lat_mask), mp_free(inpaint_cond);
  mp_free(image), mp_free(pixels);
  mp_free(y);
  if (err && warning) {
    free(*warning);
    *warning = NULL;
  }
  return err;
}
