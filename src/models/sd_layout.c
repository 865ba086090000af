#include "models/sd_layout.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/weights.h"
#include "models/lora.h"

typedef struct {
  mp_layout_entry *items;
  int n, cap;
  mp_error *err;
} layout;

static void add(layout *L, mp_init_kind init, int64_t fan_in, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void add(layout *L, mp_init_kind init, int64_t fan_in, int ndim, const int64_t *shape, const char *fmt, ...) {
  if (L->err) return;
  if (L->n == L->cap) {
    int cap = L->cap ? 2 * L->cap : 1024;
    mp_layout_entry *n = realloc(L->items, (size_t)cap * sizeof *n);
    if (!n) {
      L->err = mp_errorf("out of memory");
      return;
    }
    L->items = n, L->cap = cap;
  }
  mp_layout_entry *e = &L->items[L->n++];
  memset(e, 0, sizeof *e);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->name, sizeof e->name, fmt, ap);
  va_end(ap);
  e->dtype = init == MP_INIT_POSITIONS ? MP_I64 : MP_F32;
  e->ndim = ndim;
  memcpy(e->shape, shape, sizeof(int64_t) * (size_t)ndim);
  e->init = init;
  e->fan_in = fan_in;
}


/* Building blocks, named as in the checkpoints. */
static void linear(layout *L, const char *p, int64_t out, int64_t in, int bias) {
  add(L, MP_INIT_WEIGHT, in, 2, (int64_t[]){out, in}, "%s.weight", p);
  if (bias) add(L, MP_INIT_BIAS, in, 1, (int64_t[]){out}, "%s.bias", p);
}
static void conv(layout *L, const char *p, int64_t out, int64_t in, int k) {
  add(L, MP_INIT_WEIGHT, in * k * k, 4, (int64_t[]){out, in, k, k}, "%s.weight", p);
  add(L, MP_INIT_BIAS, in * k * k, 1, (int64_t[]){out}, "%s.bias", p);
}
static void norm(layout *L, const char *p, int64_t c) {
  add(L, MP_INIT_ONES, 0, 1, (int64_t[]){c}, "%s.weight", p);
  add(L, MP_INIT_ZEROS, 0, 1, (int64_t[]){c}, "%s.bias", p);
}

static void unet_resblock(layout *L, const char *p, int64_t in, int64_t out, int64_t emb) {
  char n[256];
  snprintf(n, sizeof n, "%s.in_layers.0", p), norm(L, n, in);
  snprintf(n, sizeof n, "%s.in_layers.2", p), conv(L, n, out, in, 3);
  snprintf(n, sizeof n, "%s.emb_layers.1", p), linear(L, n, out, emb, 1);
  snprintf(n, sizeof n, "%s.out_layers.0", p), norm(L, n, out);
  snprintf(n, sizeof n, "%s.out_layers.3", p), conv(L, n, out, out, 3);
  if (in != out) snprintf(n, sizeof n, "%s.skip_connection", p), conv(L, n, out, in, 1);
}

static void unet_transformer(layout *L, const char *p, int64_t ch, int depth, const mp_unet_config *u) {
  char n[256];
  snprintf(n, sizeof n, "%s.norm", p), norm(L, n, ch);
  for (int io = 0; io < 2; io++) {
    snprintf(n, sizeof n, "%s.%s", p, io ? "proj_out" : "proj_in");
    if (u->linear_in_transformer)
      linear(L, n, ch, ch, 1);
    else
      conv(L, n, ch, ch, 1);
  }
  for (int d = 0; d < depth; d++) {
    char b[160];
    snprintf(b, sizeof b, "%s.transformer_blocks.%d", p, d);
    for (int a = 1; a <= 2; a++) {
      int64_t kv = a == 1 ? ch : u->context_dim;
      snprintf(n, sizeof n, "%s.attn%d.to_q", b, a), linear(L, n, ch, ch, 0);
      snprintf(n, sizeof n, "%s.attn%d.to_k", b, a), linear(L, n, ch, kv, 0);
      snprintf(n, sizeof n, "%s.attn%d.to_v", b, a), linear(L, n, ch, kv, 0);
      snprintf(n, sizeof n, "%s.attn%d.to_out.0", b, a), linear(L, n, ch, ch, 1);
    }
    snprintf(n, sizeof n, "%s.ff.net.0.proj", b), linear(L, n, 8 * ch, ch, 1); /* GEGLU: value and gate */
    snprintf(n, sizeof n, "%s.ff.net.2", b), linear(L, n, ch, 4 * ch, 1);
    for (int k = 1; k <= 3; k++) snprintf(n, sizeof n, "%s.norm%d", b, k), norm(L, n, ch);
  }
}

static void unet_layout(layout *L, const mp_unet_config *u) {
  const char *P = "model.diffusion_model";
  const int64_t C = u->model_channels, E = 4 * C;
  char n[256];
  snprintf(n, sizeof n, "%s.time_embed.0", P), linear(L, n, E, C, 1);
  snprintf(n, sizeof n, "%s.time_embed.2", P), linear(L, n, E, E, 1);
  if (u->adm_in_channels > 0) { /* SDXL's label embedding */
    snprintf(n, sizeof n, "%s.label_emb.0.0", P), linear(L, n, E, u->adm_in_channels, 1);
    snprintf(n, sizeof n, "%s.label_emb.0.2", P), linear(L, n, E, E, 1);
  }
  snprintf(n, sizeof n, "%s.input_blocks.0.0", P), conv(L, n, C, u->in_channels, 3);
  int64_t skips[64];
  int n_skips = 0, idx = 1;
  int64_t ch = C;
  skips[n_skips++] = ch;
  for (int l = 0; l < u->n_levels; l++) {
    for (int r = 0; r < u->num_res_blocks; r++, idx++) {
      int64_t out = (int64_t)u->channel_mult[l] * C;
      snprintf(n, sizeof n, "%s.input_blocks.%d.0", P, idx), unet_resblock(L, n, ch, out, E);
      ch = out;
      if (u->attention_at_level[l])
        snprintf(n, sizeof n, "%s.input_blocks.%d.1", P, idx), unet_transformer(L, n, ch, mp_unet_level_depth(u, l), u);
      if (n_skips < 64) skips[n_skips++] = ch;
    }
    if (l != u->n_levels - 1) {
      snprintf(n, sizeof n, "%s.input_blocks.%d.0.op", P, idx++), conv(L, n, ch, ch, 3);
      if (n_skips < 64) skips[n_skips++] = ch;
    }
  }
  snprintf(n, sizeof n, "%s.middle_block.0", P), unet_resblock(L, n, ch, ch, E);
  snprintf(n, sizeof n, "%s.middle_block.1", P), unet_transformer(L, n, ch, mp_unet_mid_depth(u), u);
  snprintf(n, sizeof n, "%s.middle_block.2", P), unet_resblock(L, n, ch, ch, E);
  idx = 0;
  for (int l = u->n_levels - 1; l >= 0; l--)
    for (int r = 0; r <= u->num_res_blocks; r++, idx++) {
      int64_t out = (int64_t)u->channel_mult[l] * C, skip = n_skips > 0 ? skips[--n_skips] : 0;
      snprintf(n, sizeof n, "%s.output_blocks.%d.0", P, idx), unet_resblock(L, n, ch + skip, out, E);
      ch = out;
      int sub = 1;
      if (u->attention_at_level[l])
        snprintf(n, sizeof n, "%s.output_blocks.%d.1", P, idx), unet_transformer(L, n, ch, mp_unet_level_depth(u, l), u), sub = 2;
      if (l > 0 && r == u->num_res_blocks) snprintf(n, sizeof n, "%s.output_blocks.%d.%d.conv", P, idx, sub), conv(L, n, ch, ch, 3);
    }
  snprintf(n, sizeof n, "%s.out.0", P), norm(L, n, C);
  snprintf(n, sizeof n, "%s.out.2", P), conv(L, n, u->out_channels, C, 3);
}

static void vae_resblock(layout *L, const char *p, int64_t in, int64_t out) {
  char n[256];
  snprintf(n, sizeof n, "%s.norm1", p), norm(L, n, in);
  snprintf(n, sizeof n, "%s.conv1", p), conv(L, n, out, in, 3);
  snprintf(n, sizeof n, "%s.norm2", p), norm(L, n, out);
  snprintf(n, sizeof n, "%s.conv2", p), conv(L, n, out, out, 3);
  if (in != out) snprintf(n, sizeof n, "%s.nin_shortcut", p), conv(L, n, out, in, 1);
}

static void vae_mid(layout *L, const char *p, int64_t c) {
  char n[256];
  snprintf(n, sizeof n, "%s.mid.block_1", p), vae_resblock(L, n, c, c);
  snprintf(n, sizeof n, "%s.mid.attn_1.norm", p), norm(L, n, c);
  static const char *const qkv[] = {"q", "k", "v", "proj_out"};
  for (int i = 0; i < 4; i++) snprintf(n, sizeof n, "%s.mid.attn_1.%s", p, qkv[i]), conv(L, n, c, c, 1);
  snprintf(n, sizeof n, "%s.mid.block_2", p), vae_resblock(L, n, c, c);
}

static void vae_layout(layout *L, const mp_vae_config *v) {
  const char *P = "first_stage_model";
  char n[256], p[64];
  const int64_t C = v->ch;
  snprintf(p, sizeof p, "%s.encoder", P);
  snprintf(n, sizeof n, "%s.conv_in", p), conv(L, n, C, v->in_channels, 3);
  int64_t ch = C;
  for (int l = 0; l < v->n_levels; l++) {
    int64_t out = (int64_t)v->ch_mult[l] * C;
    for (int r = 0; r < v->num_res_blocks; r++)
      snprintf(n, sizeof n, "%s.down.%d.block.%d", p, l, r), vae_resblock(L, n, ch, out), ch = out;
    if (l != v->n_levels - 1) snprintf(n, sizeof n, "%s.down.%d.downsample.conv", p, l), conv(L, n, ch, ch, 3);
  }
  vae_mid(L, p, ch);
  snprintf(n, sizeof n, "%s.norm_out", p), norm(L, n, ch);
  snprintf(n, sizeof n, "%s.conv_out", p), conv(L, n, 2 * v->z_channels, ch, 3);
  snprintf(n, sizeof n, "%s.quant_conv", P), conv(L, n, 2 * v->embed_dim, 2 * v->z_channels, 1);
  snprintf(n, sizeof n, "%s.post_quant_conv", P), conv(L, n, v->z_channels, v->embed_dim, 1);

  snprintf(p, sizeof p, "%s.decoder", P);
  ch = (int64_t)v->ch_mult[v->n_levels - 1] * C;
  snprintf(n, sizeof n, "%s.conv_in", p), conv(L, n, ch, v->z_channels, 3);
  vae_mid(L, p, ch);
  for (int l = v->n_levels - 1; l >= 0; l--) {
    int64_t out = (int64_t)v->ch_mult[l] * C;
    for (int r = 0; r <= v->num_res_blocks; r++)
      snprintf(n, sizeof n, "%s.up.%d.block.%d", p, l, r), vae_resblock(L, n, ch, out), ch = out;
    if (l != 0) snprintf(n, sizeof n, "%s.up.%d.upsample.conv", p, l), conv(L, n, ch, ch, 3);
  }
  snprintf(n, sizeof n, "%s.norm_out", p), norm(L, n, ch);
  snprintf(n, sizeof n, "%s.conv_out", p), conv(L, n, v->out_channels, C, 3);
}

/* P: the text model's prefix without the trailing dot */
static void clip_layout(layout *L, const char *P, const mp_clip_config *c) {
  char n[256];
  add(L, MP_INIT_BIAS, 0, 2, (int64_t[]){c->vocab_size, c->hidden}, "%s.embeddings.token_embedding.weight", P);
  add(L, MP_INIT_BIAS, 0, 2, (int64_t[]){c->max_positions, c->hidden}, "%s.embeddings.position_embedding.weight", P);
  add(L, MP_INIT_POSITIONS, 0, 2, (int64_t[]){1, c->max_positions}, "%s.embeddings.position_ids", P);
  for (int i = 0; i < c->layers; i++) {
    static const char *const proj[] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int k = 0; k < 4; k++)
      snprintf(n, sizeof n, "%s.encoder.layers.%d.self_attn.%s", P, i, proj[k]), linear(L, n, c->hidden, c->hidden, 1);
    snprintf(n, sizeof n, "%s.encoder.layers.%d.layer_norm1", P, i), norm(L, n, c->hidden);
    snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc1", P, i), linear(L, n, c->intermediate, c->hidden, 1);
    snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc2", P, i), linear(L, n, c->hidden, c->intermediate, 1);
    snprintf(n, sizeof n, "%s.encoder.layers.%d.layer_norm2", P, i), norm(L, n, c->hidden);
  }
  snprintf(n, sizeof n, "%s.final_layer_norm", P), norm(L, n, c->hidden);
}

/* SDXL's OpenCLIP ViT-bigG in its own layout (fused in_proj, text_projection [hidden, proj]). */
static void openclip_layout(layout *L, const mp_clip_config *c) {
  const char *P = "conditioner.embedders.1.model";
  const int64_t D = c->hidden;
  char n[256];
  add(L, MP_INIT_BIAS, 0, 2, (int64_t[]){c->vocab_size, D}, "%s.token_embedding.weight", P);
  add(L, MP_INIT_BIAS, 0, 2, (int64_t[]){c->max_positions, D}, "%s.positional_embedding", P);
  for (int i = 0; i < c->layers; i++) {
    char b[128];
    snprintf(b, sizeof b, "%s.transformer.resblocks.%d", P, i);
    snprintf(n, sizeof n, "%s.ln_1", b), norm(L, n, D);
    add(L, MP_INIT_WEIGHT, D, 2, (int64_t[]){3 * D, D}, "%s.attn.in_proj_weight", b);
    add(L, MP_INIT_BIAS, D, 1, (int64_t[]){3 * D}, "%s.attn.in_proj_bias", b);
    snprintf(n, sizeof n, "%s.attn.out_proj", b), linear(L, n, D, D, 1);
    snprintf(n, sizeof n, "%s.ln_2", b), norm(L, n, D);
    snprintf(n, sizeof n, "%s.mlp.c_fc", b), linear(L, n, c->intermediate, D, 1);
    snprintf(n, sizeof n, "%s.mlp.c_proj", b), linear(L, n, D, c->intermediate, 1);
  }
  snprintf(n, sizeof n, "%s.ln_final", P), norm(L, n, D);
  add(L, MP_INIT_WEIGHT, D, 2, (int64_t[]){D, c->projection_dim}, "%s.text_projection", P);
}

mp_error *mp_sd_layout(const mp_sd_config *cfg, mp_layout_entry **out, int *n_out) {
  layout L = {0};
  static const char *const schedule[] = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                                         "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod",
                                         "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"};
  const bool xl = cfg->family == MP_FAMILY_SDXL;
  for (size_t i = 0; !xl && i < sizeof schedule / sizeof *schedule; i++) /* sgm files carry no schedule */
    add(&L, MP_INIT_SCHEDULE, 0, 1, (int64_t[]){cfg->timesteps}, "%s", schedule[i]);
  unet_layout(&L, &cfg->unet);
  vae_layout(&L, &cfg->vae);
  clip_layout(&L, xl ? "conditioner.embedders.0.transformer.text_model" : "cond_stage_model.transformer.text_model", &cfg->clip);
  if (xl) openclip_layout(&L, &cfg->clip2);
  if (L.err) {
    free(L.items);
    return L.err;
  }
  *out = L.items;
  *n_out = L.n;
  return NULL;
}

mp_error *mp_sd_preset(const char *name, mp_sd_config *c) {
  memset(c, 0, sizeof *c);
  c->family = MP_FAMILY_SD1;
  c->scale_factor = 0.18215f, c->linear_start = 0.00085f, c->linear_end = 0.012f, c->timesteps = 1000;
  c->vae = (mp_vae_config){.in_channels = 3, .out_channels = 3, .ch = 128, .n_levels = 4, .ch_mult = {1, 2, 4, 4},
                           .num_res_blocks = 2, .z_channels = 4, .embed_dim = 4};
  c->clip = (mp_clip_config){.vocab_size = 49408, .max_positions = 77, .hidden = 768, .intermediate = 3072, .layers = 12,
                             .heads = 12, .ln_eps = 1e-5f, .quick_gelu = true};
  c->unet = (mp_unet_config){.in_channels = 4, .out_channels = 4, .model_channels = 320, .n_levels = 4,
                             .channel_mult = {1, 2, 4, 4}, .attention_at_level = {true, true, true, false},
                             .num_res_blocks = 2, .num_heads = 8, .num_head_channels = -1, .context_dim = 768,
                             .transformer_depth = 1};
  if (strcmp(name, "sd15") == 0) return NULL;
  if (strcmp(name, "tiny") == 0) {
    c->vae.ch = 32, c->vae.ch_mult[0] = 1, c->vae.ch_mult[1] = 1, c->vae.ch_mult[2] = 2, c->vae.ch_mult[3] = 2;
    c->clip.hidden = 32, c->clip.intermediate = 64, c->clip.layers = 2, c->clip.heads = 4;
    c->unet = (mp_unet_config){.in_channels = 4, .out_channels = 4, .model_channels = 32, .n_levels = 3,
                               .channel_mult = {1, 2, 2}, .attention_at_level = {true, true, false}, .num_res_blocks = 2,
                               .num_heads = 2, .num_head_channels = -1, .context_dim = 32, .transformer_depth = 1};
    return NULL;
  }
  if (strcmp(name, "sdxl") == 0 || strcmp(name, "tiny-xl") == 0) {
    /* SDXL base 1.0 (sd_xl_base.yaml): no attention at level 0, depth 2 and 10, 64-channel heads */
    c->family = MP_FAMILY_SDXL;
    c->scale_factor = 0.13025f;
    c->time_id_dim = 256;
    c->clip2 = (mp_clip_config){.vocab_size = 49408, .max_positions = 77, .hidden = 1280, .intermediate = 5120, .layers = 32,
                                .heads = 20, .ln_eps = 1e-5f, .quick_gelu = false, .projection_dim = 1280};
    c->unet = (mp_unet_config){.in_channels = 4, .out_channels = 4, .model_channels = 320, .n_levels = 3,
                               .channel_mult = {1, 2, 4}, .attention_at_level = {false, true, true}, .num_res_blocks = 2,
                               .num_heads = -1, .num_head_channels = 64, .context_dim = 2048, .transformer_depth = 10,
                               .depth_at_level = {0, 2, 10}, .mid_depth = 10, .linear_in_transformer = true,
                               .adm_in_channels = 1280 + 6 * 256};
    if (strcmp(name, "sdxl") == 0) return NULL;
    /* the shapes of ../shared/golden/tiny-xl/tinyxl.safetensors */
    c->time_id_dim = 8;
    c->vae.ch = 32, c->vae.ch_mult[0] = 1, c->vae.ch_mult[1] = 1, c->vae.ch_mult[2] = 2, c->vae.ch_mult[3] = 2;
    c->clip.hidden = 32, c->clip.intermediate = 64, c->clip.layers = 3, c->clip.heads = 4;
    c->clip2.hidden = 48, c->clip2.intermediate = 192, c->clip2.layers = 3, c->clip2.heads = 4, c->clip2.projection_dim = 40;
    c->unet = (mp_unet_config){.in_channels = 4, .out_channels = 4, .model_channels = 32, .n_levels = 3,
                               .channel_mult = {1, 2, 2}, .attention_at_level = {false, true, true}, .num_res_blocks = 2,
                               .num_heads = -1, .num_head_channels = 16, .context_dim = 80, .transformer_depth = 2,
                               .depth_at_level = {1, 1, 2}, .mid_depth = 2, .linear_in_transformer = true,
                               .adm_in_channels = 40 + 6 * 8};
    return NULL;
  }
  return mp_errorf("unknown model preset '%s' (expected tiny, sd15, tiny-xl or sdxl)", name);
}

/* ---- random checkpoint writer ---- */

/* splitmix64 -> Box-Muller: a small, documented, reproducible generator for made-up weights. */
static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double uniform01(uint64_t *s) { return ((double)(splitmix(s) >> 11) + 0.5) / 9007199254740992.0; }
static float normal(uint64_t *s) { return (float)(sqrt(-2.0 * log(uniform01(s))) * cos(6.283185307179586 * uniform01(s))); }

static void schedule_values(const char *name, const mp_sd_config *c, double *v, int64_t n) {
  /* LDM's "linear" schedule: betas = linspace(sqrt(start), sqrt(end), n)^2 */
  double ac = 1, prev = 1;
  for (int64_t t = 0; t < n; t++) {
    double s = sqrt(c->linear_start) + (sqrt(c->linear_end) - sqrt(c->linear_start)) * (double)t / (double)(n > 1 ? n - 1 : 1);
    double beta = s * s;
    prev = ac;
    ac *= 1 - beta;
    if (!strcmp(name, "betas")) v[t] = beta;
    else if (!strcmp(name, "alphas_cumprod")) v[t] = ac;
    else if (!strcmp(name, "alphas_cumprod_prev")) v[t] = prev;
    else if (!strcmp(name, "sqrt_alphas_cumprod")) v[t] = sqrt(ac);
    else if (!strcmp(name, "sqrt_one_minus_alphas_cumprod")) v[t] = sqrt(1 - ac);
    else if (!strcmp(name, "log_one_minus_alphas_cumprod")) v[t] = log(1 - ac);
    else if (!strcmp(name, "sqrt_recip_alphas_cumprod")) v[t] = sqrt(1 / ac);
    else v[t] = sqrt(1 / ac - 1);
  }
}

static mp_error *write_config_json(const char *ckpt_path, const mp_sd_config *c, const char *preset) {
  char path[4096];
  const char *dot = strrchr(ckpt_path, '.'), *slash = strrchr(ckpt_path, '/');
  size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - ckpt_path) : strlen(ckpt_path);
  snprintf(path, sizeof path, "%.*s.json", (int)stem, ckpt_path);
  cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model");
  cJSON_AddStringToObject(model, "target", c->family == MP_FAMILY_SDXL ? "sgm.models.diffusion.DiffusionEngine"
                                                                         : "ldm.models.diffusion.ddpm.LatentDiffusion");
  cJSON *params = cJSON_AddObjectToObject(model, "params");
  cJSON_AddNumberToObject(params, "linear_start", c->linear_start);
  cJSON_AddNumberToObject(params, "linear_end", c->linear_end);
  cJSON_AddNumberToObject(params, "timesteps", c->timesteps);
  cJSON_AddNumberToObject(params, "scale_factor", c->scale_factor);
  const bool xl = c->family == MP_FAMILY_SDXL;
  cJSON *up = cJSON_AddObjectToObject(cJSON_AddObjectToObject(params, xl ? "network_config" : "unet_config"), "params");
  const mp_unet_config *u = &c->unet;
  cJSON_AddNumberToObject(up, "in_channels", u->in_channels);
  cJSON_AddNumberToObject(up, "out_channels", u->out_channels);
  cJSON_AddNumberToObject(up, "model_channels", u->model_channels);
  cJSON_AddNumberToObject(up, "num_res_blocks", u->num_res_blocks);
  cJSON_AddItemToObject(up, "channel_mult", cJSON_CreateIntArray(u->channel_mult, u->n_levels));
  cJSON *att = cJSON_AddArrayToObject(up, "attention_resolutions");
  for (int l = 0, ds = 1; l < u->n_levels; l++, ds *= 2)
    if (u->attention_at_level[l]) cJSON_AddItemToArray(att, cJSON_CreateNumber(ds));
  if (u->num_head_channels > 0) cJSON_AddNumberToObject(up, "num_head_channels", u->num_head_channels);
  else cJSON_AddNumberToObject(up, "num_heads", u->num_heads);
  cJSON_AddNumberToObject(up, "context_dim", u->context_dim);
  if (xl) {
    int depth[MP_MAX_LEVELS];
    for (int l = 0; l < u->n_levels; l++) depth[l] = mp_unet_level_depth(u, l);
    cJSON_AddItemToObject(up, "transformer_depth", cJSON_CreateIntArray(depth, u->n_levels));
    cJSON_AddNumberToObject(up, "transformer_depth_middle", mp_unet_mid_depth(u));
    cJSON_AddNumberToObject(up, "adm_in_channels", u->adm_in_channels);
    /* the size/crop embedders: what says each number's embedding width */
    cJSON *models = cJSON_AddArrayToObject(cJSON_AddObjectToObject(params, "conditioner_config"), "emb_models");
    cJSON *emb = cJSON_CreateObject();
    cJSON_AddStringToObject(emb, "target", "sgm.modules.encoders.modules.ConcatTimestepEmbedderND");
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(emb, "params"), "outdim", c->time_id_dim);
    cJSON_AddItemToArray(models, emb);
  } else {
    cJSON_AddNumberToObject(up, "transformer_depth", u->transformer_depth);
  }
  cJSON_AddBoolToObject(up, "use_linear_in_transformer", u->linear_in_transformer);
  cJSON *fs = cJSON_AddObjectToObject(cJSON_AddObjectToObject(params, "first_stage_config"), "params");
  cJSON_AddNumberToObject(fs, "embed_dim", c->vae.embed_dim);
  cJSON *dd = cJSON_AddObjectToObject(fs, "ddconfig");
  cJSON_AddNumberToObject(dd, "z_channels", c->vae.z_channels);
  cJSON_AddNumberToObject(dd, "in_channels", c->vae.in_channels);
  cJSON_AddNumberToObject(dd, "out_ch", c->vae.out_channels);
  cJSON_AddNumberToObject(dd, "ch", c->vae.ch);
  cJSON_AddNumberToObject(dd, "num_res_blocks", c->vae.num_res_blocks);
  cJSON_AddItemToObject(dd, "ch_mult", cJSON_CreateIntArray(c->vae.ch_mult, c->vae.n_levels));
  cJSON *te = cJSON_AddObjectToObject(root, "text_encoder");
  cJSON_AddNumberToObject(te, "vocab_size", c->clip.vocab_size);
  cJSON_AddNumberToObject(te, "max_position_embeddings", c->clip.max_positions);
  cJSON_AddNumberToObject(te, "hidden_size", c->clip.hidden);
  cJSON_AddNumberToObject(te, "intermediate_size", c->clip.intermediate);
  cJSON_AddNumberToObject(te, "num_hidden_layers", c->clip.layers);
  cJSON_AddNumberToObject(te, "num_attention_heads", c->clip.heads);
  cJSON_AddNumberToObject(te, "layer_norm_eps", c->clip.ln_eps);
  cJSON_AddStringToObject(te, "hidden_act", c->clip.quick_gelu ? "quick_gelu" : "gelu");
  if (xl) {
    cJSON *t2 = cJSON_AddObjectToObject(root, "text_encoder_2");
    cJSON_AddNumberToObject(t2, "vocab_size", c->clip2.vocab_size);
    cJSON_AddNumberToObject(t2, "max_position_embeddings", c->clip2.max_positions);
    cJSON_AddNumberToObject(t2, "hidden_size", c->clip2.hidden);
    cJSON_AddNumberToObject(t2, "intermediate_size", c->clip2.intermediate);
    cJSON_AddNumberToObject(t2, "num_hidden_layers", c->clip2.layers);
    cJSON_AddNumberToObject(t2, "num_attention_heads", c->clip2.heads);
    cJSON_AddNumberToObject(t2, "layer_norm_eps", c->clip2.ln_eps);
    cJSON_AddStringToObject(t2, "hidden_act", "gelu");
    cJSON_AddNumberToObject(t2, "projection_dim", c->clip2.projection_dim);
  }
  cJSON *meta = cJSON_AddObjectToObject(root, "meta");
  cJSON_AddStringToObject(meta, "name", preset);
  cJSON_AddStringToObject(meta, "note", "random weights made by mpass make-model: images from it are noise");
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  FILE *f = text ? fopen(path, "wb") : NULL;
  int ok = f && fputs(text, f) >= 0;
  if (f && fclose(f) != 0) ok = 0;
  free(text);
  return ok ? NULL : mp_errorf("cannot write %s", path);
}

static mp_error *write_random(const char *path, const mp_sd_config *cfg, mp_layout_entry *L, int n, mp_dtype dtype, uint64_t seed,
                              const char *preset);

mp_error *mp_sd_write_random(const char *path, const mp_sd_config *cfg, mp_dtype dtype, uint64_t seed, const char *preset) {
  if (dtype != MP_F32 && dtype != MP_F16) return mp_errorf("random checkpoints are written in F32 or F16");
  mp_layout_entry *L;
  int n;
  MP_TRY(mp_sd_layout(cfg, &L, &n));
  return write_random(path, cfg, L, n, dtype, seed, preset);
}

/* A ControlNet for cfg's UNet in the single-file layout of the 1.0 releases: the UNet's encoder
 * entries under control_model., the hint block, a zero conv per input block, middle_block_out. */
mp_error *mp_sd_write_random_controlnet(const char *path, const mp_sd_config *cfg, mp_dtype dtype, uint64_t seed, const char *preset) {
  if (dtype != MP_F32 && dtype != MP_F16) return mp_errorf("random ControlNets are written in F32 or F16");
  mp_layout_entry *U;
  int nu;
  MP_TRY(mp_sd_layout(cfg, &U, &nu));
  const mp_unet_config *u = &cfg->unet;
  const int mc = u->model_channels, n_blocks = 1 + u->n_levels * u->num_res_blocks + u->n_levels - 1;
  mp_layout_entry *L = calloc((size_t)nu + 2 * 8 + 2 * (size_t)n_blocks + 2, sizeof *L);
  if (!L) {
    free(U);
    return mp_errorf("out of memory");
  }
  int n = 0;
  const size_t pl = strlen(MP_PREFIX_UNET);
  for (int i = 0; i < nu; i++) {
    const char *rest = U[i].name + pl;
    if (strncmp(U[i].name, MP_PREFIX_UNET, pl) != 0 ||
        (strncmp(rest, "time_embed.", 11) && strncmp(rest, "input_blocks.", 13) && strncmp(rest, "middle_block.", 13)))
      continue;
    L[n] = U[i];
    snprintf(L[n].name, sizeof L[n].name, "control_model.%s", rest);
    n++;
  }
  free(U);
  static const int hint_w[8] = {16, 16, 32, 32, 96, 96, 256, 0};
  for (int i = 0, c_in = 3; i < 8; i++) {
    int c_out = hint_w[i] ? hint_w[i] : mc;
    L[n] = (mp_layout_entry){.dtype = MP_F32, .ndim = 4, .shape = {c_out, c_in, 3, 3}, .init = MP_INIT_WEIGHT, .fan_in = 9 * c_in};
    snprintf(L[n++].name, sizeof L->name, "control_model.input_hint_block.%d.weight", 2 * i);
    L[n] = (mp_layout_entry){.dtype = MP_F32, .ndim = 1, .shape = {c_out}, .init = MP_INIT_BIAS};
    snprintf(L[n++].name, sizeof L->name, "control_model.input_hint_block.%d.bias", 2 * i);
    c_in = c_out;
  }
  /* the "zero" convs get random weights too, so that the residuals are not zero */
  int widths[64 + 4 * MP_MAX_LEVELS], nw = 0;
  widths[nw++] = mc; /* conv_in, then per level its ResBlocks and (but the last) a Downsample */
  for (int l = 0; l < u->n_levels; l++)
    for (int r = 0; r < u->num_res_blocks + (l < u->n_levels - 1) && nw < n_blocks; r++) widths[nw++] = u->channel_mult[l] * mc;
  for (int b = 0; b < nw; b++) {
    const int c = widths[b];
    L[n] = (mp_layout_entry){.dtype = MP_F32, .ndim = 4, .shape = {c, c, 1, 1}, .init = MP_INIT_WEIGHT, .fan_in = c};
    snprintf(L[n++].name, sizeof L->name, "control_model.zero_convs.%d.0.weight", b);
    L[n] = (mp_layout_entry){.dtype = MP_F32, .ndim = 1, .shape = {c}, .init = MP_INIT_BIAS};
    snprintf(L[n++].name, sizeof L->name, "control_model.zero_convs.%d.0.bias", b);
  }
  const int mid = u->channel_mult[u->n_levels - 1] * mc;
  L[n] = (mp_layout_entry){.dtype = MP_F32, .ndim = 4, .shape = {mid, mid, 1, 1}, .init = MP_INIT_WEIGHT, .fan_in = mid};
  snprintf(L[n++].name, sizeof L->name, "control_model.middle_block_out.0.weight");
  L[n] = (mp_layout_entry){.dtype = MP_F32, .ndim = 1, .shape = {mid}, .init = MP_INIT_BIAS};
  snprintf(L[n++].name, sizeof L->name, "control_model.middle_block_out.0.bias");
  return write_random(path, cfg, L, n, dtype, seed, preset);
}

/* Write the entries L[0..n) (freed here) with random values, streaming. */
static mp_error *write_random(const char *path, const mp_sd_config *cfg, mp_layout_entry *L, int n, mp_dtype dtype, uint64_t seed,
                              const char *preset) {
  /* Header first: the safetensors writer wants tensors in memory, so write the format by hand,
   * streaming one tensor at a time (a real-size model never sits in memory). */
  cJSON *root = cJSON_CreateObject();
  cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
  cJSON_AddStringToObject(meta, "format", "pt");
  cJSON_AddStringToObject(meta, "mpass", "random weights (mpass make-model): not a trained model");
  int64_t off = 0, max_numel = 0;
  /* safetensors wants the header's tensors in any order; keep the layout order so data streams in it */
  for (int i = 0; i < n; i++) {
    mp_dtype dt = L[i].dtype == MP_I64 ? MP_I64 : L[i].init == MP_INIT_SCHEDULE ? MP_F32 : dtype;
    int64_t numel = mp_shape_numel(L[i].ndim, L[i].shape);
    max_numel = numel > max_numel ? numel : max_numel;
    cJSON *o = cJSON_AddObjectToObject(root, L[i].name);
    cJSON_AddStringToObject(o, "dtype", mp_dtype_name(dt));
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    for (int d = 0; d < L[i].ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)L[i].shape[d]));
    cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    off += numel * (int64_t)mp_dtype_size(dt);
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
  }
  char *hdr = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  void *buf = mp_alloc((size_t)max_numel * 8);
  double *sched = malloc(sizeof(double) * (size_t)(cfg->timesteps > 0 ? cfg->timesteps : 1));
  FILE *f = hdr && buf && sched ? fopen(path, "wb") : NULL;
  mp_error *e = NULL;
  if (!hdr || !buf || !sched) e = mp_errorf("out of memory");
  else if (!f) e = mp_errorf("cannot create %s", path);
  if (!e) {
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    uint64_t state = seed;
    for (int i = 0; i < n && ok; i++) {
      const mp_layout_entry *t = &L[i];
      int64_t numel = mp_shape_numel(t->ndim, t->shape);
      size_t nbytes;
      if (t->init == MP_INIT_POSITIONS) {
        int64_t *p = buf;
        for (int64_t k = 0; k < numel; k++) p[k] = k;
        nbytes = (size_t)numel * 8;
      } else if (t->init == MP_INIT_SCHEDULE) {
        schedule_values(t->name, cfg, sched, numel);
        float *p = buf;
        for (int64_t k = 0; k < numel; k++) p[k] = (float)sched[k];
        nbytes = (size_t)numel * 4;
      } else {
        float scale = t->init == MP_INIT_WEIGHT ? (float)(1.0 / sqrt((double)(t->fan_in > 0 ? t->fan_in : 1)))
                      : t->init == MP_INIT_BIAS ? 0.02f : 0.0f;
        float base = t->init == MP_INIT_ONES ? 1.0f : 0.0f;
        for (int64_t k = 0; k < numel; k++) {
          float v = base + (scale != 0 ? scale * normal(&state) : 0.0f);
          if (dtype == MP_F16)
            ((uint16_t *)buf)[k] = mp_f32_to_f16(v);
          else
            ((float *)buf)[k] = v;
        }
        nbytes = (size_t)numel * mp_dtype_size(dtype);
      }
      ok = nbytes == 0 || fwrite(buf, 1, nbytes, f) == nbytes;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) e = mp_errorf("writing %s failed (disk full?)", path);
  }
  free(hdr);
  mp_free(buf);
  free(sched);
  free(L);
  if (!e && strcmp(preset, "sd15") != 0 && strcmp(preset, "sdxl") != 0) e = write_config_json(path, cfg, preset);
  return e;
}

/* ---- random LoRA and embedding files (the demo's person model and negative embeddings) ---- */

static bool is_attention_projection(const char *name) {
  static const char *const ends[] = {"attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight",
                                     "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight",
                                     "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                     "self_attn.out_proj.weight"};
  size_t n = strlen(name);
  for (size_t i = 0; i < sizeof ends / sizeof *ends; i++) {
    size_t m = strlen(ends[i]);
    if (n > m && !strcmp(name + n - m, ends[i])) return true;
  }
  return false;
}

static mp_error *random_tensor(mp_tensor *t, int ndim, const int64_t *shape, float std, uint64_t *state) {
  MP_TRY(mp_tensor_alloc(t, MP_F32, ndim, shape));
  float *d = t->data;
  for (int64_t i = 0; i < mp_tensor_numel(t); i++) d[i] = std * normal(state);
  return NULL;
}

mp_error *mp_sd_write_random_lora(const char *path, const mp_sd_config *cfg, int rank, uint64_t seed) {
  mp_layout_entry *L;
  int n;
  MP_TRY(mp_sd_layout(cfg, &L, &n));
  int cap = 3 * n;
  char **names = calloc((size_t)cap, sizeof *names);
  mp_tensor *ts = calloc((size_t)cap, sizeof *ts);
  int k = 0;
  uint64_t state = seed;
  mp_error *e = names && ts ? NULL : mp_errorf("out of memory");
  for (int i = 0; !e && i < n; i++) {
    char module[256], name[300];
    if (L[i].ndim != 2 || !is_attention_projection(L[i].name) ||
        !mp_lora_kohya_name(L[i].name, cfg->unet.num_res_blocks, module, sizeof module))
      continue;
    int64_t out = L[i].shape[0], in = L[i].shape[1];
    snprintf(name, sizeof name, "%s.lora_down.weight", module), names[k] = strdup(name);
    e = random_tensor(&ts[k++], 2, (int64_t[]){rank, in}, 1.0f / (float)sqrt((double)in), &state);
    snprintf(name, sizeof name, "%s.lora_up.weight", module), names[k] = strdup(name);
    if (!e) e = random_tensor(&ts[k++], 2, (int64_t[]){out, rank}, 0.05f, &state);
    snprintf(name, sizeof name, "%s.alpha", module), names[k] = strdup(name);
    if (!e) e = mp_tensor_alloc(&ts[k++], MP_F32, 0, NULL);
    if (!e) *(float *)ts[k - 1].data = (float)rank;
  }
  if (!e && k == 0) e = mp_errorf("no attention projection to attach a LoRA to");
  if (!e) e = mp_safetensors_write(path, (size_t)k, (const char *const *)names, ts,
                                   "{\"ss_network_module\": \"networks.lora\", \"mpass\": \"random demo LoRA\"}");
  for (int i = 0; i < k; i++) free(names[i]), mp_tensor_free(&ts[i]);
  free(names), free(ts), free(L);
  return e;
}

mp_error *mp_sd_write_random_embedding(const char *path, const mp_sd_config *cfg, int n_vectors, uint64_t seed) {
  if (n_vectors < 1 || n_vectors > 75) return mp_errorf("an embedding has 1 to 75 vectors, not %d", n_vectors);
  mp_tensor t[2] = {0};
  uint64_t state = seed;
  MP_TRY(random_tensor(&t[0], 2, (int64_t[]){n_vectors, cfg->clip.hidden}, 0.02f, &state));
  if (cfg->family == MP_FAMILY_SDXL) { /* A1111/kohya SDXL layout: one vector set per text encoder */
    mp_error *e = random_tensor(&t[1], 2, (int64_t[]){n_vectors, cfg->clip2.hidden}, 0.02f, &state);
    const char *names[2] = {"clip_l", "clip_g"};
    if (!e) e = mp_safetensors_write(path, 2, names, t, NULL);
    mp_tensor_free(&t[0]), mp_tensor_free(&t[1]);
    return e;
  }
  const char *name = "emb_params";
  mp_error *e = mp_safetensors_write(path, 1, &name, &t[0], NULL);
  mp_tensor_free(&t[0]);
  return e;
}
