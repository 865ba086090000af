#include "models/sd.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/diffusers.h"
#include "models/sd_diffusers.h"

const char *mp_family_name(mp_family f) {
  switch (f) {
    case MP_FAMILY_SD1: return "SD 1.x";
    case MP_FAMILY_SD2: return "SD 2.x";
    case MP_FAMILY_SDXL: return "SDXL";
    default: return "unknown";
  }
}

mp_error *mp_sd_weight(const mp_weights *w, const char *name, int ndim, const int64_t *shape, const mp_tensor **out) {
  char want[128], got[128];
  const mp_weight *it = mp_weights_find(w, name);
  if (!it)
    return mp_errorf("missing tensor %s (expected shape %s)%s", name, mp_shape_str(ndim, shape, want, sizeof want),
                     mp_diffusers_is_folder(mp_weights_path(w)) ? "; no key of the diffusers folder maps to it" : "");
  const mp_tensor *t = &it->t;
  if (t->dtype != MP_F32 && t->dtype != MP_F16 && t->dtype != MP_BF16)
    return mp_errorf("tensor %s has dtype %s, expected a float type", name, mp_dtype_name(t->dtype));
  bool same = t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
  if (!same)
    return mp_errorf("tensor %s%s%s%s: expected shape %s, found %s", name, it->source ? " (" : "", it->source ? it->source : "",
                     it->source ? " in the diffusers folder)" : "", mp_shape_str(ndim, shape, want, sizeof want),
                     mp_shape_str(t->ndim, t->shape, got, sizeof got));
  *out = t;
  return NULL;
}

int mp_unet_level_depth(const mp_unet_config *u, int level) {
  return level >= 0 && level < MP_MAX_LEVELS && u->depth_at_level[level] > 0 ? u->depth_at_level[level] : u->transformer_depth;
}

int mp_unet_mid_depth(const mp_unet_config *u) { return u->mid_depth > 0 ? u->mid_depth : u->transformer_depth; }

const char *mp_sd_clip_prefix(const mp_sd_config *cfg) { return cfg->family == MP_FAMILY_SDXL ? MP_PREFIX_XL_CLIP : MP_PREFIX_CLIP; }

/* ---- helpers to read shapes ---- */

static const mp_tensor *find(const mp_weights *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const mp_tensor *find(const mp_weights *w, const char *fmt, ...) {
  char name[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name, sizeof name, fmt, ap);
  va_end(ap);
  const mp_weight *t = mp_weights_find(w, name);
  return t ? &t->t : NULL;
}

static bool has_prefix(const mp_weights *w, const char *prefix) {
  size_t n = strlen(prefix);
  for (size_t i = 0; i < mp_weights_count(w); i++)
    if (strncmp(mp_weights_at(w, i)->name, prefix, n) == 0) return true;
  return false;
}

/* ---- from tensor shapes (real checkpoints) ---- */

static mp_error *clip_from_shapes(const mp_weights *w, const char *prefix, mp_clip_config *c) {
  const mp_tensor *tok = find(w, "%sembeddings.token_embedding.weight", prefix);
  const mp_tensor *pos = find(w, "%sembeddings.position_embedding.weight", prefix);
  const mp_tensor *fc1 = find(w, "%sencoder.layers.0.mlp.fc1.weight", prefix);
  if (!tok || !pos || !fc1 || tok->ndim != 2 || pos->ndim != 2 || fc1->ndim != 2)
    return mp_errorf("text encoder weights (%sembeddings.token_embedding.weight, ...) are missing or malformed", prefix);
  c->vocab_size = (int)tok->shape[0];
  c->hidden = (int)tok->shape[1];
  c->max_positions = (int)pos->shape[0];
  c->intermediate = (int)fc1->shape[0];
  c->layers = 0;
  while (c->layers < 256 && find(w, "%sencoder.layers.%d.self_attn.q_proj.weight", prefix, c->layers)) c->layers++;
  c->heads = c->hidden / 64 > 0 ? c->hidden / 64 : 1; /* CLIP ViT-L/14: 768 wide, 12 heads of 64 */
  c->ln_eps = 1e-5f;
  c->quick_gelu = true;
  return NULL;
}

/* SDXL's second text encoder in the OpenCLIP layout (ViT-bigG/14: 1280 wide, 32 layers, 20 heads of
 * 64, exact GELU, projection to 1280). */
static mp_error *openclip_from_shapes(const mp_weights *w, mp_clip_config *c) {
  const char *p = MP_PREFIX_XL_OPENCLIP;
  const mp_tensor *tok = find(w, "%stoken_embedding.weight", p), *pos = find(w, "%spositional_embedding", p);
  const mp_tensor *fc = find(w, "%stransformer.resblocks.0.mlp.c_fc.weight", p), *proj = find(w, "%stext_projection", p);
  if (!tok || !pos || !fc || !proj || tok->ndim != 2 || pos->ndim != 2 || fc->ndim != 2 || proj->ndim != 2)
    return mp_errorf("OpenCLIP text encoder weights (%stoken_embedding.weight, positional_embedding, text_projection, ...) are "
                     "missing or malformed", p);
  c->vocab_size = (int)tok->shape[0];
  c->hidden = (int)tok->shape[1];
  c->max_positions = (int)pos->shape[0];
  c->intermediate = (int)fc->shape[0];
  c->projection_dim = (int)proj->shape[1];
  c->layers = 0;
  while (c->layers < 256 && find(w, "%stransformer.resblocks.%d.attn.in_proj_weight", p, c->layers)) c->layers++;
  c->heads = c->hidden / 64 > 0 ? c->hidden / 64 : 1;
  c->ln_eps = 1e-5f;
  c->quick_gelu = false;
  return NULL;
}

/* The UNet under `p`; a ControlNet's encoder copy (encoder_only) has no out.2 and no output channels. */
static mp_error *unet_shapes_at(const mp_weights *w, const char *p, bool encoder_only, mp_unet_config *u) {
  const mp_tensor *in = find(w, "%sinput_blocks.0.0.weight", p), *out = find(w, "%sout.2.weight", p);
  if (encoder_only && in && in->ndim == 4) out = in;
  if (!in || !out || in->ndim != 4 || out->ndim != 4) return mp_errorf("UNet weights (%sinput_blocks.0.0.weight, out.2.weight) are missing", p);
  memset(u, 0, sizeof *u);
  u->model_channels = (int)in->shape[0];
  u->in_channels = (int)in->shape[1];
  u->out_channels = encoder_only ? u->in_channels : (int)out->shape[0];
  /* Walk input_blocks: ResBlocks (with optional transformer) per level, a Downsample between levels. */
  int level = 0, res_in_level = 0;
  for (int i = 1; i < 64; i++) {
    const mp_tensor *rb = find(w, "%sinput_blocks.%d.0.out_layers.3.weight", p, i);
    if (find(w, "%sinput_blocks.%d.0.op.weight", p, i)) {
      if (level == 0) u->num_res_blocks = res_in_level;
      level++;
      res_in_level = 0;
      continue;
    }
    if (!rb) break;
    if (level >= MP_MAX_LEVELS) return mp_errorf("UNet has more than %d levels", MP_MAX_LEVELS);
    u->channel_mult[level] = (int)(rb->shape[0] / u->model_channels);
    if (find(w, "%sinput_blocks.%d.1.proj_in.weight", p, i)) {
      u->attention_at_level[level] = true;
      int d = 0;
      while (d < 64 && find(w, "%sinput_blocks.%d.1.transformer_blocks.%d.attn1.to_q.weight", p, i, d)) d++;
      u->depth_at_level[level] = d;
    }
    res_in_level++;
  }
  u->n_levels = level + 1;
  if (level == 0) u->num_res_blocks = res_in_level;
  const mp_tensor *k = find(w, "%smiddle_block.1.transformer_blocks.0.attn2.to_k.weight", p);
  const mp_tensor *pin = find(w, "%sinput_blocks.1.1.proj_in.weight", p);
  if (!pin) pin = find(w, "%smiddle_block.1.proj_in.weight", p);
  if (!k || !pin) return mp_errorf("UNet has no cross-attention (attn2.to_k) weights");
  u->context_dim = (int)k->shape[1];
  u->linear_in_transformer = pin->ndim == 2;
  u->transformer_depth = 0;
  while (u->transformer_depth < 64 && find(w, "%smiddle_block.1.transformer_blocks.%d.attn1.to_q.weight", p, u->transformer_depth))
    u->transformer_depth++;
  u->mid_depth = u->transformer_depth;
  const mp_tensor *label = find(w, "%slabel_emb.0.0.weight", p);
  if (label && label->ndim == 2) u->adm_in_channels = (int)label->shape[1];
  /* SD 1.x fixes 8 heads; SD 2.x fixes 64 channels per head. The weights cannot tell. */
  u->num_heads = u->context_dim == 768 ? 8 : -1;
  u->num_head_channels = u->context_dim == 768 ? -1 : 64;
  return NULL;
}

static mp_error *unet_from_shapes(const mp_weights *w, mp_unet_config *u) { return unet_shapes_at(w, MP_PREFIX_UNET, false, u); }

static mp_error *vae_from_shapes(const mp_weights *w, mp_vae_config *v) {
  const char *p = MP_PREFIX_VAE;
  const mp_tensor *ci = find(w, "%sencoder.conv_in.weight", p), *dci = find(w, "%sdecoder.conv_in.weight", p);
  const mp_tensor *qc = find(w, "%squant_conv.weight", p), *co = find(w, "%sdecoder.conv_out.weight", p);
  if (!ci || !dci || !qc || !co || ci->ndim != 4 || dci->ndim != 4 || qc->ndim != 4 || co->ndim != 4)
    return mp_errorf("VAE weights (%sencoder.conv_in.weight, decoder.conv_in.weight, quant_conv.weight) are missing", p);
  memset(v, 0, sizeof *v);
  v->ch = (int)ci->shape[0];
  v->in_channels = (int)ci->shape[1];
  v->out_channels = (int)co->shape[0];
  v->z_channels = (int)dci->shape[1];
  v->embed_dim = (int)qc->shape[0] / 2;
  while (v->n_levels < MP_MAX_LEVELS) {
    const mp_tensor *b = find(w, "%sencoder.down.%d.block.0.conv1.weight", p, v->n_levels);
    if (!b) break;
    v->ch_mult[v->n_levels++] = (int)(b->shape[0] / v->ch);
  }
  while (v->num_res_blocks < 16 && find(w, "%sencoder.down.0.block.%d.conv1.weight", p, v->num_res_blocks)) v->num_res_blocks++;
  if (v->n_levels == 0 || v->num_res_blocks == 0) return mp_errorf("VAE encoder has no down blocks");
  return NULL;
}

/* ---- from an LDM-style JSON config ---- */

static int jint(const cJSON *o, const char *key, int def) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valueint : def;
}
static double jnum(const cJSON *o, const char *key, double def) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsNumber(v) ? v->valuedouble : def;
}
static int jarray(const cJSON *o, const char *key, int *out, int max) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
  int n = 0;
  for (const cJSON *v = cJSON_IsArray(a) ? a->child : NULL; v && n < max; v = v->next)
    if (cJSON_IsNumber(v)) out[n++] = v->valueint;
  return n;
}

/* A transformers CLIPTextConfig block ("text_encoder", "text_encoder_2"). */
static void clip_from_json(const cJSON *te, mp_clip_config *c) {
  if (!cJSON_IsObject(te)) return;
  c->vocab_size = jint(te, "vocab_size", c->vocab_size);
  c->max_positions = jint(te, "max_position_embeddings", c->max_positions);
  c->hidden = jint(te, "hidden_size", c->hidden);
  c->intermediate = jint(te, "intermediate_size", c->intermediate);
  c->layers = jint(te, "num_hidden_layers", c->layers);
  c->heads = jint(te, "num_attention_heads", c->heads);
  c->ln_eps = (float)jnum(te, "layer_norm_eps", c->ln_eps);
  c->projection_dim = jint(te, "projection_dim", c->projection_dim);
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(te, "hidden_act");
  if (cJSON_IsString(act)) c->quick_gelu = strcmp(act->valuestring, "quick_gelu") == 0;
}

static mp_error *config_from_json(const char *path, const cJSON *root, mp_sd_config *cfg) {
  const cJSON *params = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "params");
  if (!cJSON_IsObject(params)) return mp_errorf("%s: expected model.params (LDM v1-inference.yaml layout)", path);
  cfg->linear_start = (float)jnum(params, "linear_start", cfg->linear_start);
  cfg->linear_end = (float)jnum(params, "linear_end", cfg->linear_end);
  cfg->timesteps = jint(params, "timesteps", cfg->timesteps);
  cfg->scale_factor = (float)jnum(params, "scale_factor", cfg->scale_factor);

  const cJSON *up = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(params, "unet_config"), "params");
  if (!up) /* sgm (sd_xl_base.yaml) names it network_config */
    up = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(params, "network_config"), "params");
  if (cJSON_IsObject(up)) {
    mp_unet_config *u = &cfg->unet;
    u->in_channels = jint(up, "in_channels", u->in_channels);
    u->out_channels = jint(up, "out_channels", u->out_channels);
    u->model_channels = jint(up, "model_channels", u->model_channels);
    u->num_res_blocks = jint(up, "num_res_blocks", u->num_res_blocks);
    int n = jarray(up, "channel_mult", u->channel_mult, MP_MAX_LEVELS);
    if (n) u->n_levels = n;
    int res[MP_MAX_LEVELS];
    int nr = jarray(up, "attention_resolutions", res, MP_MAX_LEVELS);
    if (nr) {
      for (int l = 0; l < MP_MAX_LEVELS; l++) u->attention_at_level[l] = false;
      for (int i = 0; i < nr; i++)
        for (int l = 0, ds = 1; l < u->n_levels; l++, ds *= 2)
          if (res[i] == ds) u->attention_at_level[l] = true;
    }
    u->num_heads = jint(up, "num_heads", u->num_heads);
    u->num_head_channels = jint(up, "num_head_channels", u->num_head_channels);
    if (cJSON_GetObjectItemCaseSensitive(up, "num_heads") && !cJSON_GetObjectItemCaseSensitive(up, "num_head_channels"))
      u->num_head_channels = -1;
    u->context_dim = jint(up, "context_dim", u->context_dim);
    const cJSON *td = cJSON_GetObjectItemCaseSensitive(up, "transformer_depth");
    if (cJSON_IsArray(td)) { /* SDXL: one depth per level; the middle block takes the last unless told */
      int nd = jarray(up, "transformer_depth", u->depth_at_level, MP_MAX_LEVELS);
      if (nd > 0) u->transformer_depth = u->mid_depth = u->depth_at_level[nd - 1];
    } else {
      u->transformer_depth = jint(up, "transformer_depth", u->transformer_depth);
    }
    u->mid_depth = jint(up, "transformer_depth_middle", u->mid_depth);
    u->adm_in_channels = jint(up, "adm_in_channels", u->adm_in_channels);
    const cJSON *lin = cJSON_GetObjectItemCaseSensitive(up, "use_linear_in_transformer");
    if (cJSON_IsBool(lin)) u->linear_in_transformer = cJSON_IsTrue(lin);
  }
  const cJSON *fs = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(params, "first_stage_config"), "params");
  const cJSON *dd = cJSON_GetObjectItemCaseSensitive(fs, "ddconfig");
  if (cJSON_IsObject(dd)) {
    mp_vae_config *v = &cfg->vae;
    v->embed_dim = jint(fs, "embed_dim", v->embed_dim);
    v->ch = jint(dd, "ch", v->ch);
    v->in_channels = jint(dd, "in_channels", v->in_channels);
    v->out_channels = jint(dd, "out_ch", v->out_channels);
    v->z_channels = jint(dd, "z_channels", v->z_channels);
    v->num_res_blocks = jint(dd, "num_res_blocks", v->num_res_blocks);
    int n = jarray(dd, "ch_mult", v->ch_mult, MP_MAX_LEVELS);
    if (n) v->n_levels = n;
  }
  clip_from_json(cJSON_GetObjectItemCaseSensitive(root, "text_encoder"), &cfg->clip);
  clip_from_json(cJSON_GetObjectItemCaseSensitive(root, "text_encoder_2"), &cfg->clip2);
  /* SDXL: the size/crop embedders (ConcatTimestepEmbedderND) say the width of each number's embedding */
  const cJSON *cond = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(params, "conditioner_config"), "params");
  const cJSON *emb;
  cJSON_ArrayForEach(emb, cJSON_GetObjectItemCaseSensitive(cond, "emb_models")) {
    const cJSON *target = cJSON_GetObjectItemCaseSensitive(emb, "target");
    if (cJSON_IsString(target) && strstr(target->valuestring, "ConcatTimestepEmbedderND"))
      cfg->time_id_dim = jint(cJSON_GetObjectItemCaseSensitive(emb, "params"), "outdim", cfg->time_id_dim);
  }
  return NULL;
}

static mp_error *read_text_file(const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL; /* absent: not an error, the caller decides */
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  if (n < 0 || n > (16 << 20)) {
    fclose(f);
    return mp_errorf("%s: config file is larger than 16 MB", path);
  }
  char *buf = malloc((size_t)n + 1);
  if (!buf) {
    fclose(f);
    return mp_errorf("out of memory");
  }
  size_t got = fread(buf, 1, (size_t)n, f);
  fclose(f);
  buf[got] = 0;
  *out = buf;
  return NULL;
}

/* The JSON config of a checkpoint: `config_json` when given (it must exist), else the file beside
 * the checkpoint with .json for its extension (absent is fine: *root stays NULL). *path names the
 * file for messages; the caller frees it and deletes *root. */
static mp_error *read_config_beside(const mp_weights *w, const char *config_json, char **path, cJSON **root) {
  *path = NULL, *root = NULL;
  if (config_json) {
    *path = strdup(config_json);
  } else {
    const char *ckpt = mp_weights_path(w);
    const char *dot = strrchr(ckpt, '.'), *slash = strrchr(ckpt, '/');
    size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - ckpt) : strlen(ckpt);
    if ((*path = malloc(stem + 6))) {
      memcpy(*path, ckpt, stem);
      memcpy(*path + stem, ".json", 6);
    }
  }
  if (!*path) return mp_errorf("out of memory");
  char *text = NULL;
  mp_error *e = read_text_file(*path, &text);
  if (!e && config_json && !text) e = mp_errorf("cannot open config %s", config_json);
  if (!e && text && !(*root = cJSON_Parse(text))) e = mp_errorf("%s: not valid JSON", *path);
  free(text);
  if (e) {
    free(*path);
    *path = NULL;
  }
  return e;
}

static mp_error *validate(const mp_sd_config *c) {
  const mp_unet_config *u = &c->unet;
  const mp_vae_config *v = &c->vae;
  const mp_clip_config *t = &c->clip;
  if (u->model_channels <= 0 || u->n_levels <= 0 || u->num_res_blocks <= 0 || u->context_dim <= 0 || u->in_channels <= 0)
    return mp_errorf("UNet configuration is incomplete (channels %d, levels %d, res blocks %d, context %d)", u->model_channels,
                     u->n_levels, u->num_res_blocks, u->context_dim);
  if ((u->num_heads <= 0) == (u->num_head_channels <= 0))
    return mp_errorf("UNet configuration must fix exactly one of num_heads and num_head_channels");
  if (v->ch <= 0 || v->n_levels <= 0 || v->z_channels <= 0 || v->embed_dim <= 0)
    return mp_errorf("VAE configuration is incomplete");
  if (t->hidden <= 0 || t->layers <= 0 || t->heads <= 0 || t->hidden % t->heads != 0 || t->max_positions <= 0)
    return mp_errorf("text encoder configuration is invalid (hidden %d, heads %d, layers %d)", t->hidden, t->heads, t->layers);
  if (c->family != MP_FAMILY_SDXL) return u->adm_in_channels ? mp_errorf("a label embedding (label_emb) outside SDXL is not supported") : NULL;
  const mp_clip_config *t2 = &c->clip2;
  if (t2->hidden <= 0 || t2->layers <= 0 || t2->heads <= 0 || t2->hidden % t2->heads != 0 || t2->projection_dim <= 0)
    return mp_errorf("second text encoder configuration is invalid (hidden %d, heads %d, layers %d, projection %d)", t2->hidden,
                     t2->heads, t2->layers, t2->projection_dim);
  if (u->context_dim != t->hidden + t2->hidden)
    return mp_errorf("SDXL UNet context is %d wide, the text encoders give %d + %d", u->context_dim, t->hidden, t2->hidden);
  if (c->time_id_dim <= 0 || c->time_id_dim % 2 || u->adm_in_channels != t2->projection_dim + 6 * c->time_id_dim)
    return mp_errorf("SDXL label vector: label_emb takes %d values, the pooled text (%d) and six size embeddings of %d give %d",
                     u->adm_in_channels, t2->projection_dim, c->time_id_dim, t2->projection_dim + 6 * c->time_id_dim);
  return NULL;
}

mp_error *mp_sd_config_detect(const mp_weights *w, const char *config_json, mp_sd_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->scale_factor = 0.18215f;
  cfg->linear_start = 0.00085f;
  cfg->linear_end = 0.012f;
  cfg->timesteps = 1000;

  /* A diffusers folder says its hyper-parameters in its config files. */
  if (mp_diffusers_is_folder(mp_weights_path(w))) {
    MP_TRY(mp_sd_config_from_diffusers(mp_weights_path(w), cfg));
    cfg->inpainting = cfg->unet.in_channels == 9;
    return validate(cfg);
  }
  const bool xl = has_prefix(w, "conditioner.embedders.");
  if (has_prefix(w, "cond_stage_model.model.")) {
    cfg->family = MP_FAMILY_SD2;
    return mp_errorf("this is an SD 2.x checkpoint (OpenCLIP text encoder): SD 2.x is not supported yet (SD 1.x and SDXL only)");
  }
  if (xl) cfg->family = MP_FAMILY_SDXL;
  if (!has_prefix(w, MP_PREFIX_UNET))
    return mp_errorf("not a Stable Diffusion checkpoint in the CompVis or sgm layout (no %s* tensors)", MP_PREFIX_UNET);
  cfg->family = xl ? MP_FAMILY_SDXL : MP_FAMILY_SD1;
  MP_TRY(mp_error_wrap(clip_from_shapes(w, xl ? MP_PREFIX_XL_CLIP : MP_PREFIX_CLIP, &cfg->clip), "text encoder"));
  if (xl) {
    cfg->scale_factor = 0.13025f;
    MP_TRY(mp_error_wrap(openclip_from_shapes(w, &cfg->clip2), "second text encoder"));
  }
  MP_TRY(mp_error_wrap(unet_from_shapes(w, &cfg->unet), "UNet"));
  MP_TRY(mp_error_wrap(vae_from_shapes(w, &cfg->vae), "VAE"));
  if (xl && cfg->unet.adm_in_channels > cfg->clip2.projection_dim)
    cfg->time_id_dim = (cfg->unet.adm_in_channels - cfg->clip2.projection_dim) / 6;
  const mp_weight *betas = mp_weights_find(w, "betas");
  if (betas && betas->t.ndim == 1) cfg->timesteps = (int)betas->t.shape[0];

  /* A config beside the checkpoint overrides what shapes cannot say (head counts, schedules). */
  char *cpath = NULL;
  cJSON *root = NULL;
  MP_TRY(read_config_beside(w, config_json, &cpath, &root));
  mp_error *e = root ? config_from_json(cpath, root, cfg) : NULL;
  cJSON_Delete(root);
  free(cpath);
  MP_TRY(e);
  cfg->inpainting = cfg->unet.in_channels == 9;
  return validate(cfg);
}

/* A ControlNet's UNet part. Its cldm config (cldm_v15.yaml as JSON) holds control_stage_config in the
 * form of unet_config, so that block is read through the same parser by putting it in unet_config's place. */
mp_error *mp_sd_control_config(const mp_weights *w, const char *prefix, const char *config_json, mp_unet_config *u) {
  MP_TRY(mp_error_wrap(unet_shapes_at(w, prefix, true, u), "ControlNet"));
  char *cpath = NULL;
  cJSON *root = NULL;
  MP_TRY(read_config_beside(w, config_json, &cpath, &root));
  mp_error *e = NULL;
  if (root) {
    cJSON *params = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "model"), "params");
    cJSON *control = cJSON_GetObjectItemCaseSensitive(params, "control_stage_config");
    if (!cJSON_IsObject(control) && !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(params, "unet_config")))
      e = mp_errorf("%s: expected model.params.control_stage_config (the cldm config) or unet_config", cpath);
    else { /* without control_stage_config (a plain LDM config) the ControlNet copies its UNet's hyper-parameters */
      if (cJSON_IsObject(control)) {
        cJSON_DeleteItemFromObjectCaseSensitive(params, "unet_config");
        cJSON_AddItemReferenceToObject(params, "unet_config", control);
      }
      mp_sd_config sd = {.unet = *u};
      e = config_from_json(cpath, root, &sd);
      *u = sd.unet;
    }
    cJSON_Delete(root);
  }
  free(cpath);
  MP_TRY(e);
  if (u->model_channels <= 0 || u->n_levels <= 0 || u->num_res_blocks <= 0 || u->context_dim <= 0 || u->in_channels <= 0)
    return mp_errorf("ControlNet configuration is incomplete (channels %d, levels %d, res blocks %d, context %d)", u->model_channels,
                     u->n_levels, u->num_res_blocks, u->context_dim);
  if ((u->num_heads <= 0) == (u->num_head_channels <= 0))
    return mp_errorf("ControlNet configuration must fix exactly one of num_heads and num_head_channels");
  return NULL;
}
