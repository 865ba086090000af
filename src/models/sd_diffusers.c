#include "models/sd_diffusers.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "io/diffusers.h"

/* ---- typed reads that say what is wrong ---- */

static mp_error *req_int(const char *file, const cJSON *o, const char *key, int lo, int hi, int *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(x)) return mp_errorf("%s: \"%s\" is missing or not a number", file, key);
  if (x->valuedouble != floor(x->valuedouble) || x->valuedouble < lo || x->valuedouble > hi)
    return mp_errorf("%s: \"%s\" is %g, expected an integer in %d..%d", file, key, x->valuedouble, lo, hi);
  *v = (int)x->valuedouble;
  return NULL;
}

static mp_error *opt_int(const char *file, const cJSON *o, const char *key, int lo, int hi, int *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  return !x || cJSON_IsNull(x) ? NULL : req_int(file, o, key, lo, hi, v);
}

static mp_error *opt_num(const char *file, const cJSON *o, const char *key, double lo, double hi, float *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!x || cJSON_IsNull(x)) return NULL;
  if (!cJSON_IsNumber(x) || !(x->valuedouble >= lo && x->valuedouble <= hi))
    return mp_errorf("%s: \"%s\" should be a number in %g..%g", file, key, lo, hi);
  *v = (float)x->valuedouble;
  return NULL;
}

/* A list of positive integers, 1..MP_MAX_LEVELS long. */
static mp_error *int_list(const char *file, const cJSON *o, const char *key, int *out, int *n) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(a)) return mp_errorf("%s: \"%s\" is missing or not a list", file, key);
  *n = 0;
  for (const cJSON *x = a->child; x; x = x->next) {
    if (*n == MP_MAX_LEVELS) return mp_errorf("%s: \"%s\" has more than %d entries", file, key, MP_MAX_LEVELS);
    if (!cJSON_IsNumber(x) || x->valuedouble != floor(x->valuedouble) || x->valuedouble < 1 || x->valuedouble > 1e6)
      return mp_errorf("%s: \"%s\"[%d] should be a positive integer", file, key, *n);
    out[(*n)++] = (int)x->valuedouble;
  }
  if (*n == 0) return mp_errorf("%s: \"%s\" is empty", file, key);
  return NULL;
}

/* A key that must be absent, null, or equal to `want` (a feature mpass does not implement). */
static mp_error *only(const char *file, const cJSON *o, const char *key, const char *want) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!x || cJSON_IsNull(x)) return NULL;
  if (want && cJSON_IsString(x) && strcmp(x->valuestring, want) == 0) return NULL;
  char *text = cJSON_PrintUnformatted(x);
  mp_error *e = mp_errorf("%s: \"%s\" is %s; mpass supports only %s%s%s", file, key, text ? text : "?",
                          want ? "\"" : "null", want ? want : "", want ? "\"" : "");
  cJSON_free(text);
  return e;
}

/* channel multipliers from block_out_channels: [320, 640, 1280, 1280] -> 320 x [1, 2, 4, 4] */
static mp_error *channels(const char *file, const int *boc, int n, int *base, int *mult) {
  *base = boc[0];
  for (int i = 0; i < n; i++) {
    if (boc[i] % boc[0] != 0)
      return mp_errorf("%s: block_out_channels[%d] = %d is not a multiple of block_out_channels[0] = %d", file, i, boc[i], boc[0]);
    mult[i] = boc[i] / boc[0];
  }
  return NULL;
}

/* ---- the three models ---- */

/* A UNet2DConditionModel's config, or (`f` = "config.json", controlnet) a ControlNetModel's: the same
 * keys for the encoder, and no out_channels (the ControlNet config keeps out = in, as for cldm). */
static mp_error *unet_config(const char *f, const cJSON *j, bool controlnet, bool sdxl, mp_unet_config *u, int *time_id_dim) {
  int boc[MP_MAX_LEVELS], n = 0, nd = 0;
  memset(u, 0, sizeof *u);
  MP_TRY(req_int(f, j, "in_channels", 1, 64, &u->in_channels));
  if (controlnet) u->out_channels = u->in_channels;
  else MP_TRY(req_int(f, j, "out_channels", 1, 64, &u->out_channels));
  MP_TRY(req_int(f, j, "layers_per_block", 1, 16, &u->num_res_blocks));
  MP_TRY(req_int(f, j, "cross_attention_dim", 1, 1 << 16, &u->context_dim));
  MP_TRY(int_list(f, j, "block_out_channels", boc, &n));
  MP_TRY(channels(f, boc, n, &u->model_channels, u->channel_mult));
  u->n_levels = n;
  const cJSON *down = cJSON_GetObjectItemCaseSensitive(j, "down_block_types");
  if (!cJSON_IsArray(down) || (nd = cJSON_GetArraySize(down)) != n)
    return mp_errorf("%s: \"down_block_types\" should list %d block types, one per block_out_channels", f, n);
  for (int i = 0; i < n; i++) {
    const cJSON *t = cJSON_GetArrayItem(down, i);
    if (!cJSON_IsString(t)) return mp_errorf("%s: down_block_types[%d] is not a string", f, i);
    u->attention_at_level[i] = strncmp(t->valuestring, "CrossAttn", 9) == 0;
  }
  u->transformer_depth = 1;
  const cJSON *tl = cJSON_GetObjectItemCaseSensitive(j, "transformer_layers_per_block");
  if (cJSON_IsArray(tl)) { /* SDXL: one depth per level; the middle block takes the last, as diffusers builds it */
    int nt = 0;
    MP_TRY(int_list(f, j, "transformer_layers_per_block", u->depth_at_level, &nt));
    if (nt != n) return mp_errorf("%s: \"transformer_layers_per_block\" has %d entries for %d blocks", f, nt, n);
    u->transformer_depth = u->mid_depth = u->depth_at_level[n - 1];
  } else {
    MP_TRY(opt_int(f, j, "transformer_layers_per_block", 1, 32, &u->transformer_depth));
  }
  const cJSON *lin = cJSON_GetObjectItemCaseSensitive(j, "use_linear_projection");
  u->linear_in_transformer = cJSON_IsTrue(lin);
  /* Heads: "num_attention_heads" when set; else "attention_head_dim", which diffusers' SD 1.x configs
   * use for the number of heads (8), and SD 2.x for heads per level ([5, 10, 20, 20] = 64 channels each). */
  u->num_heads = u->num_head_channels = -1;
  const cJSON *nh = cJSON_GetObjectItemCaseSensitive(j, "num_attention_heads");
  const char *hkey = nh && !cJSON_IsNull(nh) ? "num_attention_heads" : "attention_head_dim";
  const cJSON *h = cJSON_GetObjectItemCaseSensitive(j, hkey);
  if (cJSON_IsNumber(h)) {
    MP_TRY(req_int(f, j, hkey, 1, 1024, &u->num_heads));
  } else if (cJSON_IsArray(h)) {
    int heads[MP_MAX_LEVELS], nh2 = 0;
    MP_TRY(int_list(f, j, hkey, heads, &nh2));
    if (nh2 != n) return mp_errorf("%s: \"%s\" has %d entries for %d blocks", f, hkey, nh2, n);
    bool same_heads = true, same_width = true;
    for (int i = 1; i < n; i++) {
      same_heads &= heads[i] == heads[0];
      same_width &= boc[i] % heads[i] == 0 && boc[i] / heads[i] == boc[0] / heads[0];
    }
    if (same_heads) u->num_heads = heads[0];
    else if (same_width && boc[0] % heads[0] == 0) u->num_head_channels = boc[0] / heads[0];
    else return mp_errorf("%s: \"%s\" gives neither one head count nor one head width for all blocks", f, hkey);
  } else {
    return mp_errorf("%s: \"attention_head_dim\" is missing", f);
  }
  MP_TRY(only(f, j, "time_embedding_type", "positional"));
  MP_TRY(only(f, j, "class_embed_type", NULL));
  if (sdxl) {
    /* SDXL's added conditioning: add_embedding (sgm's label_emb) takes the pooled text and the six
     * size/crop numbers, each embedded sinusoidally in addition_time_embed_dim values. */
    MP_TRY(only(f, j, "addition_embed_type", "text_time"));
    MP_TRY(req_int(f, j, "addition_time_embed_dim", 2, 1 << 16, time_id_dim));
    MP_TRY(req_int(f, j, "projection_class_embeddings_input_dim", 1, 1 << 20, &u->adm_in_channels));
  } else {
    MP_TRY(only(f, j, "addition_embed_type", NULL));
  }
  MP_TRY(only(f, j, "resnet_time_scale_shift", "default"));
  MP_TRY(only(f, j, "act_fn", "silu"));
  return NULL;
}

static mp_error *vae_config(const cJSON *j, mp_vae_config *v, float *scale_factor) {
  const char *f = "vae/config.json";
  int boc[MP_MAX_LEVELS], n = 0;
  memset(v, 0, sizeof *v);
  MP_TRY(req_int(f, j, "in_channels", 1, 64, &v->in_channels));
  MP_TRY(req_int(f, j, "out_channels", 1, 64, &v->out_channels));
  MP_TRY(req_int(f, j, "latent_channels", 1, 64, &v->z_channels));
  MP_TRY(req_int(f, j, "layers_per_block", 1, 16, &v->num_res_blocks));
  MP_TRY(int_list(f, j, "block_out_channels", boc, &n));
  MP_TRY(channels(f, boc, n, &v->ch, v->ch_mult));
  v->n_levels = n;
  v->embed_dim = v->z_channels;
  MP_TRY(opt_num(f, j, "scaling_factor", 1e-6, 1e3, scale_factor));
  return only(f, j, "act_fn", "silu");
}

/* A transformers CLIPTextConfig (text_encoder/config.json, or SDXL's text_encoder_2/config.json,
 * whose projection_dim is the width of the pooled vector). */
static mp_error *clip_config(const char *f, const cJSON *j, bool projection, mp_clip_config *c) {
  memset(c, 0, sizeof *c);
  if (projection) MP_TRY(req_int(f, j, "projection_dim", 1, 1 << 16, &c->projection_dim));
  MP_TRY(req_int(f, j, "vocab_size", 1, 1 << 24, &c->vocab_size));
  MP_TRY(req_int(f, j, "max_position_embeddings", 1, 1 << 16, &c->max_positions));
  MP_TRY(req_int(f, j, "hidden_size", 1, 1 << 16, &c->hidden));
  MP_TRY(req_int(f, j, "intermediate_size", 1, 1 << 18, &c->intermediate));
  MP_TRY(req_int(f, j, "num_hidden_layers", 1, 256, &c->layers));
  MP_TRY(req_int(f, j, "num_attention_heads", 1, 1024, &c->heads));
  c->ln_eps = 1e-5f;
  MP_TRY(opt_num(f, j, "layer_norm_eps", 0, 1, &c->ln_eps));
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(j, "hidden_act");
  if (!cJSON_IsString(act)) return mp_errorf("%s: \"hidden_act\" is missing or not a string", f);
  if (strcmp(act->valuestring, "quick_gelu") != 0 && strcmp(act->valuestring, "gelu") != 0)
    return mp_errorf("%s: \"hidden_act\" is \"%s\"; expected \"quick_gelu\" or \"gelu\"", f, act->valuestring);
  c->quick_gelu = strcmp(act->valuestring, "quick_gelu") == 0;
  return NULL;
}

static mp_error *scheduler_config(const cJSON *j, mp_sd_config *cfg) {
  const char *f = "scheduler/scheduler_config.json";
  MP_TRY(opt_num(f, j, "beta_start", 0, 1, &cfg->linear_start));
  MP_TRY(opt_num(f, j, "beta_end", 0, 1, &cfg->linear_end));
  MP_TRY(opt_int(f, j, "num_train_timesteps", 2, 100000, &cfg->timesteps));
  MP_TRY(only(f, j, "beta_schedule", "scaled_linear"));
  MP_TRY(only(f, j, "trained_betas", NULL));
  return only(f, j, "prediction_type", "epsilon");
}

/* An SDXL pipeline: model_index.json names a text_encoder_2 (as diffusers.c's layout table decides). */
static mp_error *is_sdxl_folder(const char *folder, bool *sdxl) {
  cJSON *index = NULL;
  MP_TRY(mp_diffusers_read_json(folder, "model_index.json", true, &index));
  const cJSON *cls = cJSON_GetObjectItemCaseSensitive(index, "_class_name");
  *sdxl = cJSON_GetObjectItemCaseSensitive(index, "text_encoder_2") ||
          (cJSON_IsString(cls) && strncmp(cls->valuestring, "StableDiffusionXL", 17) == 0);
  cJSON_Delete(index);
  return NULL;
}

mp_error *mp_sd_config_from_diffusers(const char *folder, mp_sd_config *cfg) {
  cJSON *unet = NULL, *vae = NULL, *te = NULL, *te2 = NULL, *sched = NULL;
  bool sdxl = false;
  mp_error *e = is_sdxl_folder(folder, &sdxl);
  if (!e) e = mp_diffusers_read_json(folder, "unet/config.json", true, &unet);
  if (!e) e = mp_diffusers_read_json(folder, "vae/config.json", true, &vae);
  if (!e) e = mp_diffusers_read_json(folder, "text_encoder/config.json", true, &te);
  if (!e && sdxl) e = mp_diffusers_read_json(folder, "text_encoder_2/config.json", true, &te2);
  if (!e) e = mp_diffusers_read_json(folder, "scheduler/scheduler_config.json", false, &sched);
  if (!e) e = unet_config("unet/config.json", unet, false, sdxl, &cfg->unet, &cfg->time_id_dim);
  if (!e && sdxl) cfg->scale_factor = 0.13025f; /* SDXL's VAE, when its config does not say */
  if (!e) e = vae_config(vae, &cfg->vae, &cfg->scale_factor);
  if (!e) e = clip_config("text_encoder/config.json", te, false, &cfg->clip);
  if (!e && sdxl) e = clip_config("text_encoder_2/config.json", te2, true, &cfg->clip2);
  if (!e && sched) e = scheduler_config(sched, cfg);
  if (!e && sdxl) {
    cfg->family = MP_FAMILY_SDXL; /* mp_sd_config_detect's validation checks the widths fit together */
  } else if (!e) {
    /* SD 2.x: OpenCLIP ViT-H (exact GELU) and linear projections in the transformers. */
    bool sd2 = !cfg->clip.quick_gelu || cfg->unet.linear_in_transformer || cfg->unet.num_head_channels > 0;
    cfg->family = sd2 ? MP_FAMILY_SD2 : MP_FAMILY_SD1;
    if (sd2) e = mp_errorf("this is an SD 2.x model (OpenCLIP text encoder): SD 2.x is not supported yet (SD 1.x only)");
  }
  cJSON_Delete(unet), cJSON_Delete(vae), cJSON_Delete(te), cJSON_Delete(te2), cJSON_Delete(sched);
  return e ? mp_error_wrap(e, "diffusers folder %s", folder) : NULL;
}

/* A list key that must be absent, null, or exactly `want`. */
static mp_error *only_list(const char *file, const cJSON *o, const char *key, const int *want, int n_want) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!x || cJSON_IsNull(x)) return NULL;
  int got[MP_MAX_LEVELS], n = 0;
  MP_TRY(int_list(file, o, key, got, &n));
  bool same = n == n_want;
  for (int i = 0; same && i < n; i++) same = got[i] == want[i];
  if (same) return NULL;
  char *text = cJSON_PrintUnformatted(x);
  mp_error *e = mp_errorf("%s: \"%s\" is %s; mpass supports only the released ControlNets' [16, 32, 96, 256]", file, key, text ? text : "?");
  cJSON_free(text);
  return e;
}

mp_error *mp_controlnet_config_from_diffusers(const char *folder, mp_unet_config *u) {
  const char *f = "config.json";
  cJSON *j = NULL;
  MP_TRY(mp_error_wrap(mp_diffusers_read_json(folder, f, true, &j), "diffusers ControlNet folder %s", folder));
  const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "_class_name");
  mp_error *e = NULL;
  if (!cJSON_IsString(cls) || strcmp(cls->valuestring, "ControlNetModel") != 0)
    e = mp_errorf("%s: \"_class_name\" should be \"ControlNetModel\"", f);
  int time_id_dim = 0;
  if (!e) e = unet_config(f, j, true, false, u, &time_id_dim);
  /* The hint block is cldm's: RGB in, 16-32-96-256 channels (models/controlnet.c), every residual used. */
  int hint_channels = 3;
  static const int hint_widths[] = {16, 32, 96, 256};
  if (!e) e = opt_int(f, j, "conditioning_channels", 1, 64, &hint_channels);
  if (!e && hint_channels != 3)
    e = mp_errorf("%s: \"conditioning_channels\" is %d; mpass supports only 3 (an RGB control image)", f, hint_channels);
  if (!e) e = only_list(f, j, "conditioning_embedding_out_channels", hint_widths, 4);
  if (!e) e = only(f, j, "controlnet_conditioning_channel_order", "rgb");
  if (!e) e = only(f, j, "mid_block_type", "UNetMidBlock2DCrossAttn");
  const cJSON *pool = cJSON_GetObjectItemCaseSensitive(j, "global_pool_conditions");
  if (!e && cJSON_IsTrue(pool)) e = mp_errorf("%s: \"global_pool_conditions\" is true (a shuffle-style ControlNet); mpass supports only false", f);
  cJSON_Delete(j);
  return e ? mp_error_wrap(e, "diffusers ControlNet folder %s", folder) : NULL;
}
