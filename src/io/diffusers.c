/* diffusers folder reader: the diffusers key names mapped back to the CompVis single-file names.
 *
 * The mapping is the reverse of diffusers' convert_original_stable_diffusion_to_diffusers, derived
 * from the structure the configs describe rather than listed key by key:
 *
 *   UNet (openaimodel.UNetModel), L = layers_per_block:
 *     conv_in                          -> input_blocks.0.0
 *     time_embedding.linear_1 / _2     -> time_embed.0 / time_embed.2
 *     down_blocks.i.resnets.j          -> input_blocks.(1 + i(L+1) + j).0
 *     down_blocks.i.attentions.j       -> input_blocks.(1 + i(L+1) + j).1
 *     down_blocks.i.downsamplers.0.conv-> input_blocks.(1 + i(L+1) + L).0.op
 *     mid_block.resnets.0 / attentions.0 / resnets.1 -> middle_block.0 / .1 / .2
 *     up_blocks.i.resnets.j            -> output_blocks.(i(L+1) + j).0      (L+1 per up block)
 *     up_blocks.i.attentions.j         -> output_blocks.(i(L+1) + j).1
 *     up_blocks.i.upsamplers.0.conv    -> output_blocks.(i(L+1) + L).1.conv (.2 when the block has attention)
 *     conv_norm_out / conv_out         -> out.0 / out.2
 *     resnet parts: norm1 in_layers.0, conv1 in_layers.2, time_emb_proj emb_layers.1, norm2 out_layers.0,
 *                   conv2 out_layers.3, conv_shortcut skip_connection; attention parts keep their names.
 *   VAE (AutoencoderKL), n = number of blocks:
 *     encoder.down_blocks.i.resnets.j  -> encoder.down.i.block.j
 *     encoder.down_blocks.i.downsamplers.0.conv -> encoder.down.i.downsample.conv
 *     decoder.up_blocks.i.resnets.j    -> decoder.up.(n-1-i).block.j   (diffusers counts from the bottom)
 *     decoder.up_blocks.i.upsamplers.0.conv -> decoder.up.(n-1-i).upsample.conv
 *     *.mid_block.resnets.0 / 1        -> *.mid.block_1 / block_2
 *     *.mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0} -> *.mid.attn_1.{norm,q,k,v,proj_out}
 *       (Linear [C,C] in diffusers, 1x1 conv [C,C,1,1] in CompVis: same data, shape viewed as 4-D)
 *     *.conv_norm_out                  -> *.norm_out; resnet conv_shortcut -> nin_shortcut
 *   CLIP text encoder (transformers CLIPTextModel): text_model.* -> cond_stage_model.transformer.text_model.*
 *     (SDXL: conditioner.embedders.0.transformer.text_model.*)
 *   SDXL's second text encoder (CLIPTextModelWithProjection) -> conditioner.embedders.1.model.* in
 *     open_clip's layout, q/k/v fused into in_proj and text_projection transposed (map_openclip below)
 *   ControlNet (ControlNetModel, a folder of its own): the UNet encoder part as above (conv_in,
 *   time_embedding, down_blocks, mid_block) plus what cldm.ControlNet adds, all under control_model.:
 *     controlnet_cond_embedding.conv_in / blocks.k / conv_out -> input_hint_block.0 / .(2k+2) / .14
 *       (cldm's nn.Sequential counts the SiLUs between the convs, hence the even indices)
 *     controlnet_down_blocks.i         -> zero_convs.i.0   (cldm wraps each 1x1 conv in a Sequential)
 *     controlnet_mid_block             -> middle_block_out.0 */
#include "io/diffusers.h"

#include "io/shard_index.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_BLOCKS 8
#define MAX_LAYERS 16

/* What the mappers need to know about the folder's structure, read once from the configs. */
typedef struct {
  int unet_blocks, unet_layers;   /* len(block_out_channels), layers_per_block */
  bool unet_up_attn[MAX_BLOCKS];  /* up_block_types[i] has cross-attention */
  int vae_blocks, vae_layers;
} structure;

/* What becomes of a tensor besides its new name. */
typedef enum {
  MAP_AS_IS,
  MAP_CONV_VIEW, /* a 2-D Linear weight viewed as a [O,I,1,1] conv weight (same data) */
  MAP_TRANSPOSE, /* a 2-D weight stored transposed (a copy) */
  MAP_FUSE_Q,    /* row block 0, 1 or 2 of a fused [q;k;v] tensor (a copy, built once all three are read) */
  MAP_FUSE_K,
  MAP_FUSE_V,
  MAP_SKIP /* a buffer the single file does not carry either (derived, never read) */
} map_how;

/* diffusers key -> CompVis key (without the component prefix). Returns false for a key the table
 * does not know; *how says what else happens to the tensor. */
typedef bool (*key_mapper)(const structure *s, const char *key, char *out, size_t cap, map_how *how);

typedef struct {
  const char *subfolder; /* and the key in model_index.json */
  const char *stem;      /* weights file name without extension */
  const char *prefix;    /* CompVis prefix of the mapped names */
  key_mapper map;
} component;

/* ---------------------------------------------------------------- key parsing */

static bool eat(const char **s, const char *lit) {
  size_t n = strlen(lit);
  if (strncmp(*s, lit, n) != 0) return false;
  *s += n;
  return true;
}

/* "<digits>." with a value below `limit`. */
static bool eat_index(const char **s, int limit, int *v) {
  const char *p = *s;
  int x = 0, digits = 0;
  while (*p >= '0' && *p <= '9' && digits < 4) x = x * 10 + (*p++ - '0'), digits++;
  if (!digits || *p != '.' || x >= limit) return false;
  *s = p + 1;
  *v = x;
  return true;
}

/* out = the head (`fmt_prefix`, one of the literals in map_unet, with at most two %d for a and b) + rest. */
static bool put(char *out, size_t cap, const char *fmt_prefix, int a, int b, const char *rest) {
  char head[96];
  snprintf(head, sizeof head, fmt_prefix, a, b);
  int n = snprintf(out, cap, "%s%s", head, rest);
  return n > 0 && (size_t)n < cap;
}

/* Rename the leading part of `tail` by a table; false when nothing matches. */
static bool rename_tail(const char *const (*table)[2], size_t n, const char *tail, char *out, size_t cap) {
  for (size_t i = 0; i < n; i++) {
    const char *t = tail;
    if (eat(&t, table[i][0])) {
      int k = snprintf(out, cap, "%s%s", table[i][1], t);
      return k > 0 && (size_t)k < cap;
    }
  }
  return false;
}

/* ---------------------------------------------------------------- UNet */

static const char *const unet_resnet[][2] = {{"norm1.", "in_layers.0."},       {"conv1.", "in_layers.2."},
                                             {"time_emb_proj.", "emb_layers.1."}, {"norm2.", "out_layers.0."},
                                             {"conv2.", "out_layers.3."},      {"conv_shortcut.", "skip_connection."}};

static bool unet_resnet_tail(const char *tail, char *out, size_t cap) {
  return rename_tail(unet_resnet, sizeof unet_resnet / sizeof *unet_resnet, tail, out, cap);
}

static bool map_unet(const structure *s, const char *key, char *out, size_t cap, map_how *how) {
  static const char *const fixed[][2] = {{"conv_in.", "input_blocks.0.0."},
                                         {"time_embedding.linear_1.", "time_embed.0."},
                                         {"time_embedding.linear_2.", "time_embed.2."},
                                         {"add_embedding.linear_1.", "label_emb.0.0."}, /* SDXL */
                                         {"add_embedding.linear_2.", "label_emb.0.2."},
                                         {"conv_norm_out.", "out.0."},
                                         {"conv_out.", "out.2."}};
  *how = MAP_AS_IS;
  if (rename_tail(fixed, sizeof fixed / sizeof *fixed, key, out, cap)) return true;
  const int L = s->unet_layers;
  const char *p = key;
  int i, j;
  char tail[256];
  if (eat(&p, "down_blocks.") && eat_index(&p, s->unet_blocks, &i)) {
    if (eat(&p, "resnets.") && eat_index(&p, L, &j))
      return unet_resnet_tail(p, tail, sizeof tail) && put(out, cap, "input_blocks.%d.0.", 1 + i * (L + 1) + j, 0, tail);
    if (eat(&p, "attentions.") && eat_index(&p, L, &j)) return put(out, cap, "input_blocks.%d.1.", 1 + i * (L + 1) + j, 0, p);
    if (eat(&p, "downsamplers.0.conv.")) return put(out, cap, "input_blocks.%d.0.op.", 1 + i * (L + 1) + L, 0, p);
    return false;
  }
  p = key;
  if (eat(&p, "mid_block.")) {
    if (eat(&p, "resnets.") && eat_index(&p, 2, &j))
      return unet_resnet_tail(p, tail, sizeof tail) && put(out, cap, "middle_block.%d.", 2 * j, 0, tail);
    if (eat(&p, "attentions.0.")) return put(out, cap, "middle_block.1.", 0, 0, p);
    return false;
  }
  p = key;
  if (eat(&p, "up_blocks.") && eat_index(&p, s->unet_blocks, &i)) {
    if (eat(&p, "resnets.") && eat_index(&p, L + 1, &j))
      return unet_resnet_tail(p, tail, sizeof tail) && put(out, cap, "output_blocks.%d.0.", i * (L + 1) + j, 0, tail);
    if (eat(&p, "attentions.") && eat_index(&p, L + 1, &j)) return put(out, cap, "output_blocks.%d.1.", i * (L + 1) + j, 0, p);
    if (eat(&p, "upsamplers.0.conv."))
      return put(out, cap, "output_blocks.%d.%d.conv.", i * (L + 1) + L, s->unet_up_attn[i] ? 2 : 1, p);
  }
  return false;
}

/* ---------------------------------------------------------------- VAE */

static bool vae_resnet_tail(const char *tail, char *out, size_t cap) {
  static const char *const t[][2] = {{"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."},
                                     {"conv2.", "conv2."}, {"conv_shortcut.", "nin_shortcut."}};
  return rename_tail(t, sizeof t / sizeof *t, tail, out, cap);
}

/* *.mid_block.attentions.0.* (p points after "mid_block."). */
static bool vae_mid(const char *part, const char *p, char *out, size_t cap, map_how *how) {
  /* to_q/to_k/to_v/to_out.0 since diffusers 0.14; query/key/value/proj_attn before. */
  static const char *const attn[][2] = {{"group_norm.", "norm."}, {"to_q.", "q."},    {"to_k.", "k."},
                                        {"to_v.", "v."},          {"to_out.0.", "proj_out."}, {"query.", "q."},
                                        {"key.", "k."},           {"value.", "v."},   {"proj_attn.", "proj_out."}};
  char tail[256];
  if (eat(&p, "attentions.0.") && rename_tail(attn, sizeof attn / sizeof *attn, p, tail, sizeof tail)) {
    *how = strncmp(tail, "norm.", 5) != 0 ? MAP_CONV_VIEW : MAP_AS_IS;
    int n = snprintf(out, cap, "%smid.attn_1.%s", part, tail);
    return n > 0 && (size_t)n < cap;
  }
  return false;
}

static bool map_vae(const structure *s, const char *key, char *out, size_t cap, map_how *how) {
  static const char *const fixed[][2] = {{"quant_conv.", "quant_conv."},
                                         {"post_quant_conv.", "post_quant_conv."},
                                         {"encoder.conv_in.", "encoder.conv_in."},
                                         {"encoder.conv_out.", "encoder.conv_out."},
                                         {"encoder.conv_norm_out.", "encoder.norm_out."},
                                         {"decoder.conv_in.", "decoder.conv_in."},
                                         {"decoder.conv_out.", "decoder.conv_out."},
                                         {"decoder.conv_norm_out.", "decoder.norm_out."}};
  *how = MAP_AS_IS;
  if (rename_tail(fixed, sizeof fixed / sizeof *fixed, key, out, cap)) return true;
  const char *p = key, *part;
  if (eat(&p, "encoder."))
    part = "encoder.";
  else if (eat(&p, "decoder."))
    part = "decoder.";
  else
    return false;
  const char *q = p;
  char tail[256];
  int i, j, n;
  if (eat(&q, "mid_block.")) {
    if (eat(&q, "resnets.") && eat_index(&q, 2, &j)) {
      if (!vae_resnet_tail(q, tail, sizeof tail)) return false;
      n = snprintf(out, cap, "%smid.block_%d.%s", part, j + 1, tail);
      return n > 0 && (size_t)n < cap;
    }
    return vae_mid(part, q, out, cap, how);
  }
  bool enc = part[0] == 'e';
  if (!eat(&q, enc ? "down_blocks." : "up_blocks.") || !eat_index(&q, s->vae_blocks, &i)) return false;
  int level = enc ? i : s->vae_blocks - 1 - i;
  const char *dir = enc ? "down" : "up";
  if (eat(&q, "resnets.") && eat_index(&q, s->vae_layers + (enc ? 0 : 1), &j)) {
    if (!vae_resnet_tail(q, tail, sizeof tail)) return false;
    n = snprintf(out, cap, "%s%s.%d.block.%d.%s", part, dir, level, j, tail);
  } else if (eat(&q, enc ? "downsamplers.0.conv." : "upsamplers.0.conv.")) {
    n = snprintf(out, cap, "%s%s.%d.%s.conv.%s", part, dir, level, enc ? "downsample" : "upsample", q);
  } else {
    return false;
  }
  return n > 0 && (size_t)n < cap;
}

/* ---------------------------------------------------------------- CLIP text encoder */

static bool map_clip(const structure *s, const char *key, char *out, size_t cap, map_how *how) {
  (void)s;
  *how = MAP_AS_IS;
  if (strncmp(key, "text_model.", 11) != 0) return false;
  int n = snprintf(out, cap, "%s", key);
  return n > 0 && (size_t)n < cap;
}

/* ---------------------------------------------------------------- OpenCLIP text encoder (SDXL's second) */

/* transformers' CLIPTextModelWithProjection -> open_clip's text tower as sgm's FrozenOpenCLIPEmbedder2
 * stores it (the reverse of diffusers' convert_diffusers_to_original_sdxl):
 *   text_model.embeddings.token_embedding.weight    -> token_embedding.weight
 *   text_model.embeddings.position_embedding.weight -> positional_embedding
 *   text_model.encoder.layers.N.self_attn.{q,k,v}_proj.{weight,bias}
 *                                -> transformer.resblocks.N.attn.in_proj_{weight,bias}, rows [q; k; v]
 *                                   (torch.nn.MultiheadAttention's packed projection)
 *   ...self_attn.out_proj        -> ...attn.out_proj
 *   ...layer_norm1 / layer_norm2 -> ...ln_1 / ln_2
 *   ...mlp.fc1 / mlp.fc2         -> ...mlp.c_fc / mlp.c_proj
 *   text_model.final_layer_norm  -> ln_final
 *   text_projection.weight       -> text_projection, transposed: a Linear weight is [proj, hidden]
 *                                   (y = W x), open_clip keeps the [hidden, proj] matrix (y = x P)
 * position_ids (a buffer older transformers saved) is dropped: open_clip has none. */
static bool map_openclip(const structure *s, const char *key, char *out, size_t cap, map_how *how) {
  (void)s;
  *how = MAP_AS_IS;
  static const char *const fixed[][2] = {{"text_model.embeddings.token_embedding.", "token_embedding."},
                                         {"text_model.final_layer_norm.", "ln_final."}};
  if (rename_tail(fixed, sizeof fixed / sizeof *fixed, key, out, cap)) return true;
  if (strcmp(key, "text_model.embeddings.position_embedding.weight") == 0) return put(out, cap, "positional_embedding", 0, 0, "");
  if (strcmp(key, "text_model.embeddings.position_ids") == 0) {
    *how = MAP_SKIP;
    return put(out, cap, "position_ids", 0, 0, "");
  }
  if (strcmp(key, "text_projection.weight") == 0) {
    *how = MAP_TRANSPOSE;
    return put(out, cap, "text_projection", 0, 0, "");
  }
  const char *p = key;
  int n;
  if (!eat(&p, "text_model.encoder.layers.") || !eat_index(&p, 1000, &n)) return false;
  static const char *const qkv[3] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
  for (int i = 0; i < 3; i++)
    if (eat(&p, qkv[i])) {
      if (strcmp(p, "weight") != 0 && strcmp(p, "bias") != 0) return false;
      *how = (map_how)(MAP_FUSE_Q + i);
      return put(out, cap, "transformer.resblocks.%d.attn.in_proj_", n, 0, p);
    }
  static const char *const layer[][2] = {{"self_attn.out_proj.", "attn.out_proj."},
                                         {"layer_norm1.", "ln_1."},
                                         {"layer_norm2.", "ln_2."},
                                         {"mlp.fc1.", "mlp.c_fc."},
                                         {"mlp.fc2.", "mlp.c_proj."}};
  char tail[256];
  return rename_tail(layer, sizeof layer / sizeof *layer, p, tail, sizeof tail) &&
         put(out, cap, "transformer.resblocks.%d.", n, 0, tail);
}

/* ---------------------------------------------------------------- ControlNet */

/* ControlNetConditioningEmbedding: conv_in, 2 convs per step between the 4 widths 16, 32, 96, 256
 * (models/controlnet.c fixes the same widths), conv_out. */
#define CONTROLNET_HINT_BLOCKS 6

static bool map_controlnet(const structure *s, const char *key, char *out, size_t cap, map_how *how) {
  *how = MAP_AS_IS;
  const char *p = key;
  int i;
  if (eat(&p, "controlnet_cond_embedding.")) {
    if (eat(&p, "conv_in.")) return put(out, cap, "input_hint_block.0.", 0, 0, p);
    if (eat(&p, "blocks.") && eat_index(&p, CONTROLNET_HINT_BLOCKS, &i)) return put(out, cap, "input_hint_block.%d.", 2 * i + 2, 0, p);
    if (eat(&p, "conv_out.")) return put(out, cap, "input_hint_block.%d.", 2 * CONTROLNET_HINT_BLOCKS + 2, 0, p);
    return false;
  }
  /* one zero conv per UNet input block: conv_in, then L ResBlocks and a Downsample per level but the last */
  const int n_zero = s->unet_blocks * (s->unet_layers + 1);
  if (eat(&p, "controlnet_down_blocks.") && eat_index(&p, n_zero, &i)) return put(out, cap, "zero_convs.%d.0.", i, 0, p);
  p = key;
  if (eat(&p, "controlnet_mid_block.")) return put(out, cap, "middle_block_out.0.", 0, 0, p);
  /* the encoder copy: the UNet's names, but a ControlNet has no decoder, output head or SDXL labels */
  p = key;
  if (eat(&p, "up_blocks.") || eat(&p, "conv_norm_out.") || eat(&p, "conv_out.") || eat(&p, "add_embedding.")) return false;
  return map_unet(s, key, out, cap, how);
}

/* ---------------------------------------------------------------- pipeline layouts */

#define PREFIX_UNET "model.diffusion_model."
#define PREFIX_VAE "first_stage_model."

/* StableDiffusionPipeline (and its img2img / inpaint variants): SD 1.x and 2.x. */
static const component sd_components[] = {
    {"unet", "diffusion_pytorch_model", PREFIX_UNET, map_unet},
    {"vae", "diffusion_pytorch_model", PREFIX_VAE, map_vae},
    {"text_encoder", "model", "cond_stage_model.transformer.", map_clip},
};

/* StableDiffusionXLPipeline (and its img2img / inpaint variants): the sgm names of sd_xl_base_1.0. The
 * UNet and VAE map as for SD 1.x (map_unet knows SDXL's add_embedding; the per-level transformer depth
 * and the Linear proj_in/proj_out keep their names). */
static const component sdxl_components[] = {
    {"unet", "diffusion_pytorch_model", PREFIX_UNET, map_unet},
    {"vae", "diffusion_pytorch_model", PREFIX_VAE, map_vae},
    {"text_encoder", "model", "conditioner.embedders.0.transformer.", map_clip},
    {"text_encoder_2", "model", "conditioner.embedders.1.model.", map_openclip},
};

/* A pipeline layout: which model_index.json it is, and its components. */
typedef struct {
  const char *name;
  bool (*matches)(const char *class_name, const cJSON *index);
  const component *components;
  size_t n_components;
} layout;

static bool is_sd(const char *class_name, const cJSON *index) {
  return strncmp(class_name, "StableDiffusion", 15) == 0 && !strstr(class_name, "XL") &&
         !cJSON_GetObjectItemCaseSensitive(index, "text_encoder_2");
}

static bool is_sdxl(const char *class_name, const cJSON *index) {
  return strncmp(class_name, "StableDiffusionXL", 17) == 0 || cJSON_GetObjectItemCaseSensitive(index, "text_encoder_2");
}

/* A diffusers ControlNet (ControlNetModel.save_pretrained) is a single model: config.json and the
 * weights file at the top of its folder, no model_index.json. */
static const component controlnet_component = {"", "diffusion_pytorch_model", "control_model.", map_controlnet};

static const layout layouts[] = {
    {"Stable Diffusion 1.x/2.x", is_sd, sd_components, sizeof sd_components / sizeof *sd_components},
    {"Stable Diffusion XL", is_sdxl, sdxl_components, sizeof sdxl_components / sizeof *sdxl_components},
};

/* ---------------------------------------------------------------- files inside the folder */

static char *joinf(const char *a, const char *b) {
  char *s = NULL;
  if (asprintf(&s, "%s/%s", a, b) < 0) s = NULL;
  return s;
}

static bool is_regular(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

bool mp_diffusers_is_folder(const char *path) {
  struct stat st;
  if (!path || stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  char *mi = joinf(path, "model_index.json");
  bool yes = mi && is_regular(mi);
  free(mi);
  return yes;
}

bool mp_diffusers_is_controlnet(const char *path) {
  struct stat st;
  if (!path || stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  char *mi = joinf(path, "model_index.json"), *cj = joinf(path, "config.json");
  bool yes = mi && cj && !is_regular(mi) && is_regular(cj);
  free(mi), free(cj);
  return yes;
}

static bool under(const char *root, const char *real) {
  size_t n = strlen(root);
  return strncmp(real, root, n) == 0 && (real[n] == '/' || real[n] == 0);
}

/* `path` must resolve inside `folder` (or a hub cache's blobs/, see diffusers.h). */
static mp_error *check_inside(const char *folder, const char *path) {
  char root[PATH_MAX], real[PATH_MAX];
  if (!realpath(folder, root)) return mp_errorf("%s: %s", folder, strerror(errno));
  if (!realpath(path, real)) return mp_errorf("%s: %s", path, strerror(errno));
  if (under(root, real)) return NULL;
  /* Hub cache: <repo>/snapshots/<revision>/... are symlinks to <repo>/blobs/<sha256>. */
  char *slash = strrchr(root, '/');
  if (slash && slash > root) {
    *slash = 0;
    char *up = strrchr(root, '/');
    if (up && strcmp(up, "/snapshots") == 0) {
      strcpy(up, "/blobs");
      if (under(root, real)) return NULL;
    }
  }
  return mp_errorf("%s resolves to %s, outside the diffusers folder %s; refusing to read it", path, real, folder);
}

mp_error *mp_diffusers_read_json(const char *folder, const char *rel, bool required, cJSON **out) {
  *out = NULL;
  char *path = joinf(folder, rel);
  if (!path) return mp_errorf("out of memory");
  mp_error *e = NULL;
  struct stat st;
  if (stat(path, &st) != 0) {
    if (required) e = mp_errorf("%s: missing (%s)", path, strerror(errno));
    free(path);
    return e;
  }
  if (!S_ISREG(st.st_mode)) e = mp_errorf("%s is not a regular file", path);
  if (!e) e = check_inside(folder, path);
  if (!e && st.st_size > (4 << 20)) e = mp_errorf("%s is larger than 4 MB; not a config file", path);
  char *text = NULL;
  if (!e) {
    FILE *f = fopen(path, "rb");
    text = f ? malloc((size_t)st.st_size + 1) : NULL;
    size_t got = text ? fread(text, 1, (size_t)st.st_size, f) : 0;
    if (f) fclose(f);
    if (!text) e = f ? mp_errorf("out of memory") : mp_errorf("%s: cannot open (%s)", path, strerror(errno));
    else text[got] = 0;
  }
  if (!e) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    if (!root) {
      int line = 1, col = 1;
      const char *at = cJSON_GetErrorPtr();
      for (const char *c = text; at && *c && c < at; c++) *c == '\n' ? (line++, col = 1) : col++;
      e = mp_errorf("%s: invalid JSON near line %d, column %d", path, line, col);
    } else if (!cJSON_IsObject(root)) {
      cJSON_Delete(root);
      e = mp_errorf("%s: expected a JSON object", path);
    } else {
      *out = root;
    }
  }
  free(text);
  free(path);
  return e;
}

mp_error *mp_diffusers_file(const char *folder, const char *rel, char **path) {
  *path = NULL;
  char *p = joinf(folder, rel);
  if (!p) return mp_errorf("out of memory");
  struct stat st;
  if (lstat(p, &st) != 0) {
    free(p);
    return NULL;
  }
  mp_error *e = stat(p, &st) != 0 ? mp_errorf("%s: %s", p, strerror(errno)) : check_inside(folder, p);
  if (!e && !S_ISREG(st.st_mode)) e = mp_errorf("%s is not a regular file", p);
  if (e) free(p);
  else *path = p;
  return e;
}

/* How a part's weights may be stored, in the order they are looked for: full precision, then the f16
 * variant, then pickles. Where a folder has both a single file and a shard index, mpass takes what the
 * library that saved the part loads: diffusers' ModelMixin.from_pretrained (the UNet, VAE and ControlNet,
 * stem diffusion_pytorch_model) takes the index when there is one, transformers'
 * PreTrainedModel.from_pretrained (the text encoders, stem model) the single file. The f16 index has three
 * spellings: <stem>.safetensors.index.fp16.json (what both libraries write today),
 * <stem>.safetensors.fp16.index.json (older diffusers) and <stem>.fp16.safetensors.index.json (other tools). */
typedef struct {
  const char *suffix;
  bool index;
} weights_name;

static const weights_name diffusers_order[] = {
    {".safetensors.index.json", true},      {".safetensors", false},
    {".safetensors.index.fp16.json", true}, {".safetensors.fp16.index.json", true},
    {".fp16.safetensors.index.json", true}, {".fp16.safetensors", false},
    {".bin", false},                        {".fp16.bin", false}};
static const weights_name transformers_order[] = {
    {".safetensors", false},                {".safetensors.index.json", true},
    {".fp16.safetensors", false},           {".safetensors.index.fp16.json", true},
    {".safetensors.fp16.index.json", true}, {".fp16.safetensors.index.json", true},
    {".bin", false},                        {".fp16.bin", false}};

/* The first of a part's weights names that exists: *path (caller frees), and whether it is a shard index. */
static mp_error *find_weights(const char *folder, const char *subfolder, const char *stem, char **path, bool *sharded) {
  *path = NULL;
  *sharded = false;
  char *dir = *subfolder ? joinf(folder, subfolder) : strdup(folder);
  if (!dir) return mp_errorf("out of memory");
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
    mp_error *e = mp_errorf("diffusers folder %s has no %s/ subfolder", folder, subfolder);
    free(dir);
    return e;
  }
  const bool transformers = strcmp(stem, "model") == 0;
  const weights_name *order = transformers ? transformers_order : diffusers_order;
  const size_t n_order = transformers ? sizeof transformers_order / sizeof *transformers_order : sizeof diffusers_order / sizeof *diffusers_order;
  mp_error *e = NULL;
  for (size_t i = 0; i < n_order && !*path && !e; i++) {
    char *p = NULL;
    if (asprintf(&p, "%s/%s%s", dir, stem, order[i].suffix) < 0) {
      e = mp_errorf("out of memory");
      break;
    }
    if (stat(p, &st) == 0) {
      e = S_ISREG(st.st_mode) ? check_inside(folder, p) : mp_errorf("%s is not a regular file", p);
      if (!e) *path = p, *sharded = order[i].index;
      else free(p);
    } else {
      free(p);
    }
  }
  if (!e && !*path)
    e = mp_errorf("%s: no weights file (looked for %s.safetensors, %s.fp16.safetensors, %s.bin, %s.fp16.bin, and the shard index "
                  "%s.safetensors.index.json or its fp16 variant)",
                  dir, stem, stem, stem, stem, stem);
  free(dir);
  return e;
}

/* The shard index at `index` (found by find_weights in <folder>/<subfolder>), checked as text. */
static mp_error *read_index(const char *folder, const char *subfolder, const char *index, mp_shard_index *ix) {
  const char *base = strrchr(index, '/') + 1;
  memset(ix, 0, sizeof *ix);
  char *rel = NULL;
  if (asprintf(&rel, "%s%s%s", subfolder, *subfolder ? "/" : "", base) < 0) return mp_errorf("out of memory");
  cJSON *root = NULL;
  mp_error *e = mp_diffusers_read_json(folder, rel, true, &root);
  if (!e) e = mp_shard_index_from_json(index, root, ix);
  cJSON_Delete(root);
  free(rel);
  return e;
}

/* <dir of index>/<shard>, a regular file inside the folder. Caller frees *path; the caller's errors name the index. */
static mp_error *shard_path(const char *folder, const char *index, const char *shard, char **path) {
  *path = NULL;
  const char *slash = strrchr(index, '/');
  char *p = NULL;
  if (asprintf(&p, "%.*s/%s", (int)(slash - index), index, shard) < 0) return mp_errorf("out of memory");
  struct stat st;
  mp_error *e = NULL;
  if (lstat(p, &st) != 0)
    e = mp_errorf("weight_map names the shard %s, which is missing (%s)", shard, strerror(errno));
  else if (stat(p, &st) != 0)
    e = mp_errorf("%s: %s", p, strerror(errno));
  else if (!S_ISREG(st.st_mode))
    e = mp_errorf("%s is not a regular file", p);
  else
    e = check_inside(folder, p);
  if (e) free(p);
  else *path = p;
  return e;
}

/* A file beside the index named as one of its shards ("<prefix>-<k>-of-<n><suffix>", same prefix and
 * suffix) that its weight_map does not list: a leftover of an earlier save, or an index that lost entries. */
static mp_error *check_unlisted(const char *index, const mp_shard_index *ix) {
  const char *slash = strrchr(index, '/');
  char *dir = strndup(index, (size_t)(slash - index));
  DIR *d = dir ? opendir(dir) : NULL;
  mp_error *e = !dir ? mp_errorf("out of memory") : !d ? mp_errorf("%s: cannot list (%s)", dir, strerror(errno)) : NULL;
  for (struct dirent *ent; !e && d && (ent = readdir(d));) {
    size_t plen;
    long k, n;
    const char *suffix;
    if (!mp_shard_name_parts(ent->d_name, &plen, &k, &n, &suffix)) continue;
    bool listed = false, same_set = false;
    for (int s = 0; s < ix->n_shards && !listed; s++) {
      size_t pl;
      long ks, ns;
      const char *ss;
      listed = strcmp(ix->shards[s], ent->d_name) == 0;
      if (mp_shard_name_parts(ix->shards[s], &pl, &ks, &ns, &ss) && pl == plen && strncmp(ix->shards[s], ent->d_name, plen) == 0 &&
          strcmp(ss, suffix) == 0)
        same_set = true;
    }
    if (same_set && !listed)
      e = mp_errorf("%s/%s is named as a shard of this index but its weight_map does not list it (a leftover of an earlier "
                    "save, or an incomplete index): remove the file or list its tensors",
                    dir, ent->d_name);
  }
  if (d) closedir(d);
  free(dir);
  return e;
}

/* The shards a shard index names, as one mp_weights (its path: the index) whose tensors view the shards'
 * mappings, which it adopts: no tensor is copied. Its tensors are exactly those of the weight_map, each
 * from the shard the map names. */
static mp_error *open_sharded(const char *folder, const char *subfolder, const char *index, mp_weights **out) {
  *out = NULL;
  mp_shard_index ix;
  MP_TRY(read_index(folder, subfolder, index, &ix));
  mp_error *e = check_unlisted(index, &ix);
  mp_weights *merged = e ? NULL : mp_weights_new(index);
  mp_weights **shard = e ? NULL : calloc((size_t)ix.n_shards, sizeof *shard);
  if (!e && (!merged || !shard)) e = mp_errorf("out of memory");
  for (int s = 0; !e && s < ix.n_shards; s++) {
    char *path = NULL;
    e = shard_path(folder, index, ix.shards[s], &path);
    if (!e) e = mp_safetensors_open(path, &shard[s]);
    if (!e) e = mp_weights_adopt(merged, shard[s]); /* closes it on failure */
    if (e) shard[s] = NULL;
    free(path);
  }
  /* every tensor of a shard is one the weight_map puts there */
  for (int s = 0; !e && s < ix.n_shards; s++)
    for (size_t i = 0; !e && i < mp_weights_count(shard[s]); i++) {
      const char *name = mp_weights_at(shard[s], i)->name;
      const mp_shard_entry *at = mp_shard_index_find(&ix, name);
      if (!at)
        e = mp_errorf("shard %s holds tensor \"%.200s\", which weight_map does not list", ix.shards[s], name);
      else if (at->shard != s && mp_weights_find(shard[at->shard], name))
        e = mp_errorf("tensor \"%.200s\" is in two shards, %s and %s; expected it once, in %s as weight_map says", name,
                      ix.shards[at->shard < s ? at->shard : s], ix.shards[at->shard < s ? s : at->shard], ix.shards[at->shard]);
      else if (at->shard != s)
        e = mp_errorf("tensor \"%.200s\" is in shard %s, but weight_map puts it in %s", name, ix.shards[s], ix.shards[at->shard]);
    }
  /* and every tensor the weight_map lists is in its shard */
  for (size_t i = 0; !e && i < ix.n_entries; i++)
    if (!mp_weights_find(shard[ix.entries[i].shard], ix.entries[i].tensor))
      e = mp_errorf("weight_map puts tensor \"%.200s\" in %s, which has no such tensor", ix.entries[i].tensor, ix.shards[ix.entries[i].shard]);
  for (int s = 0; !e && s < ix.n_shards; s++)
    for (size_t i = 0; !e && i < mp_weights_count(shard[s]); i++) {
      const mp_weight *t = mp_weights_at(shard[s], i);
      e = mp_weights_add(merged, t->name, t->t.dtype, t->t.ndim, t->t.shape, t->t.data); /* aligned already: a view */
    }
  if (!e) e = mp_weights_finish(merged);
  free(shard);
  mp_shard_index_free(&ix);
  if (e) {
    mp_weights_close(merged);
    return mp_error_wrap(e, "reading %s", index);
  }
  *out = merged;
  return NULL;
}

mp_error *mp_diffusers_weights_file(const char *folder, const char *subfolder, const char *stem, char **path) {
  bool sharded;
  MP_TRY(find_weights(folder, subfolder, stem, path, &sharded));
  if (!sharded) return NULL;
  char *index = *path;
  mp_shard_index ix;
  mp_error *e = read_index(folder, subfolder, index, &ix);
  *path = NULL;
  if (!e && (e = shard_path(folder, index, ix.shards[0], path))) /* the first shard (sorted), ...-00001-of-N */
    e = mp_error_wrap(e, "reading %s", index);
  mp_shard_index_free(&ix);
  free(index);
  return e;
}

mp_error *mp_diffusers_weights_files(const char *folder, const char *subfolder, const char *stem, char ***paths, size_t *n) {
  *paths = NULL;
  *n = 0;
  char *found = NULL;
  bool sharded;
  MP_TRY(find_weights(folder, subfolder, stem, &found, &sharded));
  mp_shard_index ix = {0};
  mp_error *e = sharded ? read_index(folder, subfolder, found, &ix) : NULL;
  const size_t count = sharded ? (size_t)ix.n_shards + 1 : 1;
  char **list = e ? NULL : calloc(count, sizeof *list);
  if (!e && !list) e = mp_errorf("out of memory");
  for (int s = 0; !e && s < ix.n_shards; s++)
    if ((e = shard_path(folder, found, ix.shards[s], &list[s]))) e = mp_error_wrap(e, "reading %s", found);
  if (!e) list[count - 1] = found, found = NULL; /* the file itself, or the index after its shards */
  mp_shard_index_free(&ix);
  free(found);
  if (e) {
    for (size_t i = 0; list && i < count; i++) free(list[i]);
    free(list);
    return e;
  }
  *paths = list;
  *n = count;
  return NULL;
}

mp_error *mp_diffusers_tokenizer(const char *folder, const char *subfolder, char **path) {
  *path = NULL;
  if (!mp_diffusers_is_folder(folder)) return NULL;
  char *vj_rel = NULL, *mt_rel = NULL, *vj = NULL, *mt = NULL;
  if (asprintf(&vj_rel, "%s/vocab.json", subfolder) < 0) vj_rel = NULL;
  if (asprintf(&mt_rel, "%s/merges.txt", subfolder) < 0) mt_rel = NULL;
  mp_error *e = !vj_rel || !mt_rel ? mp_errorf("out of memory") : NULL;
  if (!e) e = mp_diffusers_file(folder, vj_rel, &vj);
  if (!e) e = mp_diffusers_file(folder, mt_rel, &mt);
  if (!e && vj && mt && !(*path = joinf(folder, subfolder))) e = mp_errorf("out of memory");
  free(vj_rel), free(mt_rel), free(vj), free(mt);
  return e;
}

mp_error *mp_diffusers_vocab_for_model(const char *model, const char *explicit_vocab, char **path) {
  *path = NULL;
  const char *env = getenv("MPASS_VOCAB");
  if (!model || explicit_vocab || (env && *env)) return NULL;
  MP_TRY(mp_diffusers_tokenizer(model, "tokenizer", path));
  return *path ? NULL : mp_diffusers_tokenizer(model, "tokenizer_2", path); /* SDXL: the same BPE (mp_diffusers_open checks) */
}

/* ---------------------------------------------------------------- SDXL's second tokenizer */

static int cmp_item_key(const void *a, const void *b) {
  return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

/* The members of a JSON object sorted by key (caller frees); NULL when out of memory. */
static const cJSON **sorted_members(const cJSON *o, int *n) {
  *n = cJSON_GetArraySize(o);
  const cJSON **v = malloc(((size_t)*n + 1) * sizeof *v);
  if (!v) return NULL;
  int i = 0;
  for (const cJSON *x = o->child; x && i < *n; x = x->next) v[i++] = x;
  *n = i;
  qsort(v, (size_t)i, sizeof *v, cmp_item_key);
  return v;
}

/* Both vocab.json files map the same tokens to the same ids (the JSON may be formatted differently). */
static mp_error *same_vocab(const char *folder) {
  cJSON *a = NULL, *b = NULL;
  mp_error *e = mp_diffusers_read_json(folder, "tokenizer/vocab.json", true, &a);
  if (!e) e = mp_diffusers_read_json(folder, "tokenizer_2/vocab.json", true, &b);
  int na = 0, nb = 0;
  const cJSON **va = e ? NULL : sorted_members(a, &na), **vb = e ? NULL : sorted_members(b, &nb);
  if (!e && (!va || !vb)) e = mp_errorf("out of memory");
  if (!e && na != nb) e = mp_errorf("tokenizer/vocab.json has %d tokens, tokenizer_2/vocab.json %d", na, nb);
  for (int i = 0; !e && i < na; i++) {
    bool same = strcmp(va[i]->string, vb[i]->string) == 0 && cJSON_IsNumber(va[i]) && cJSON_IsNumber(vb[i]) &&
                va[i]->valuedouble == vb[i]->valuedouble;
    if (!same)
      e = mp_errorf("tokenizer/vocab.json and tokenizer_2/vocab.json differ at token \"%.60s\" (id %g) / \"%.60s\" (id %g)",
                    va[i]->string, va[i]->valuedouble, vb[i]->string, vb[i]->valuedouble);
  }
  free(va), free(vb);
  cJSON_Delete(a), cJSON_Delete(b);
  return e;
}

/* The merges.txt files hold the same merges, line for line (a CR before a line end is ignored). */
static mp_error *same_merges(const char *folder) {
  char *pa = joinf(folder, "tokenizer/merges.txt"), *pb = joinf(folder, "tokenizer_2/merges.txt");
  FILE *fa = pa ? fopen(pa, "rb") : NULL, *fb = pb ? fopen(pb, "rb") : NULL;
  mp_error *e = !pa || !pb ? mp_errorf("out of memory") : !fa ? mp_errorf("cannot open %s", pa) : !fb ? mp_errorf("cannot open %s", pb) : NULL;
  char la[512], lb[512];
  for (int line = 1; !e; line++) {
    char *ga = fgets(la, sizeof la, fa), *gb = fgets(lb, sizeof lb, fb);
    if (!ga && !gb) break;
    if (ga) la[strcspn(la, "\r\n")] = 0;
    if (gb) lb[strcspn(lb, "\r\n")] = 0;
    if (!ga || !gb || strcmp(la, lb) != 0)
      e = mp_errorf("tokenizer/merges.txt and tokenizer_2/merges.txt differ at line %d (\"%.60s\" / \"%.60s\")", line, ga ? la : "(end)",
                    gb ? lb : "(end)");
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  free(pa), free(pb);
  return e;
}

/* SDXL's two tokenizers are the same CLIP BPE; they differ only in the padding id (49407 for the
 * first, 0 for the second, as open_clip pads), which the conditioning applies itself. diffusers'
 * tokenizer_2 also declares "!" (id 0) its pad *special* token, which would turn every "!" of a prompt
 * into 0 (huggingface/diffusers#4153); mpass follows open_clip and the single-file path there, so only
 * the vocabulary and merges of tokenizer_2/ matter, and they must be those of tokenizer/. */
static mp_error *check_tokenizer_2(const char *folder) {
  char *t1 = NULL, *t2 = NULL;
  mp_error *e = mp_diffusers_tokenizer(folder, "tokenizer", &t1);
  if (!e) e = mp_diffusers_tokenizer(folder, "tokenizer_2", &t2);
  if (!e && t1 && t2) e = same_vocab(folder);
  if (!e && t1 && t2) e = same_merges(folder);
  free(t1), free(t2);
  return e ? mp_error_wrap(e, "mpass encodes both SDXL text encoders with one vocabulary, but tokenizer_2/ is not tokenizer/'s") : NULL;
}

mp_error *mp_checkpoint_hash_file(const char *checkpoint, char **path) {
  *path = NULL;
  if (mp_diffusers_is_folder(checkpoint)) return mp_diffusers_weights_file(checkpoint, "unet", "diffusion_pytorch_model", path);
  if (mp_diffusers_is_controlnet(checkpoint)) return mp_diffusers_weights_file(checkpoint, "", "diffusion_pytorch_model", path);
  *path = strdup(checkpoint);
  return *path ? NULL : mp_errorf("out of memory");
}

/* ---------------------------------------------------------------- structure from the configs */

static mp_error *int_field(const char *file, const cJSON *o, const char *key, int lo, int hi, int *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsNumber(x)) return mp_errorf("%s: \"%s\" is missing or not a number", file, key);
  if (x->valuedouble != (double)(int)x->valuedouble || x->valueint < lo || x->valueint > hi)
    return mp_errorf("%s: \"%s\" is %g, expected an integer in %d..%d", file, key, x->valuedouble, lo, hi);
  *v = x->valueint;
  return NULL;
}

static mp_error *array_len(const char *file, const cJSON *o, const char *key, int *n) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(a)) return mp_errorf("%s: \"%s\" is missing or not a list", file, key);
  *n = cJSON_GetArraySize(a);
  if (*n < 1 || *n > MAX_BLOCKS) return mp_errorf("%s: \"%s\" has %d entries, expected 1..%d", file, key, *n, MAX_BLOCKS);
  return NULL;
}

static mp_error *read_structure(const char *folder, structure *s) {
  memset(s, 0, sizeof *s);
  cJSON *unet = NULL, *vae = NULL;
  mp_error *e = mp_diffusers_read_json(folder, "unet/config.json", true, &unet);
  if (!e) e = mp_diffusers_read_json(folder, "vae/config.json", true, &vae);
  const char *uf = "unet/config.json", *vf = "vae/config.json";
  if (!e) e = array_len(uf, unet, "block_out_channels", &s->unet_blocks);
  if (!e) e = int_field(uf, unet, "layers_per_block", 1, MAX_LAYERS, &s->unet_layers);
  int n_up = 0;
  if (!e) e = array_len(uf, unet, "up_block_types", &n_up);
  if (!e && n_up != s->unet_blocks)
    e = mp_errorf("%s: %d up_block_types for %d block_out_channels", uf, n_up, s->unet_blocks);
  for (int i = 0; !e && i < n_up; i++) {
    const cJSON *t = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(unet, "up_block_types"), i);
    if (!cJSON_IsString(t)) e = mp_errorf("%s: up_block_types[%d] is not a string", uf, i);
    else s->unet_up_attn[i] = strncmp(t->valuestring, "CrossAttn", 9) == 0;
  }
  if (!e) e = array_len(vf, vae, "block_out_channels", &s->vae_blocks);
  if (!e) e = int_field(vf, vae, "layers_per_block", 1, MAX_LAYERS, &s->vae_layers);
  if (e) e = mp_error_wrap(e, "diffusers folder %s", folder);
  cJSON_Delete(unet);
  cJSON_Delete(vae);
  return e;
}

/* A ControlNet folder's config.json: a ControlNetModel, and the two numbers the key mapping needs
 * (models/sd_diffusers.c reads the rest). */
static mp_error *read_controlnet_structure(const char *folder, structure *s) {
  memset(s, 0, sizeof *s);
  cJSON *cfg = NULL;
  MP_TRY(mp_diffusers_read_json(folder, "config.json", true, &cfg));
  const char *f = "config.json";
  const cJSON *cls = cJSON_GetObjectItemCaseSensitive(cfg, "_class_name");
  mp_error *e = NULL;
  if (!cJSON_IsString(cls))
    e = mp_errorf("%s: \"_class_name\" is missing or not a string; expected \"ControlNetModel\"", f);
  else if (strcmp(cls->valuestring, "ControlNetModel") != 0)
    e = mp_errorf("%s: \"_class_name\" is \"%s\"; a folder without model_index.json is read as a ControlNet, expected "
                  "\"ControlNetModel\"",
                  f, cls->valuestring);
  if (!e) e = array_len(f, cfg, "block_out_channels", &s->unet_blocks);
  if (!e) e = int_field(f, cfg, "layers_per_block", 1, MAX_LAYERS, &s->unet_layers);
  cJSON_Delete(cfg);
  return e ? mp_error_wrap(e, "diffusers ControlNet folder %s", folder) : NULL;
}

/* ---------------------------------------------------------------- open */

/* "<subfolder>/<key>": how error messages and `inspect` name a tensor of the folder. */
static void folder_name(const component *c, const char *key, char *out, size_t cap) {
  snprintf(out, cap, "%s%s%s", c->subfolder, *c->subfolder ? "/" : "", key);
}

/* A tensor waiting for the other two row blocks of its fused [q; k; v] target. */
typedef struct {
  char target[600];
  const mp_weight *t;
  int block; /* 0 q, 1 k, 2 v */
} fuse_part;

static int cmp_fuse(const void *a, const void *b) {
  const fuse_part *x = a, *y = b;
  int c = strcmp(x->target, y->target);
  return c ? c : x->block - y->block;
}

static bool same_shape(const mp_tensor *a, const mp_tensor *b) {
  if (a->ndim != b->ndim) return false;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] != b->shape[d]) return false;
  return true;
}

/* Concatenate q, k and v (parts[0..2], sorted by block) along dim 0 into one owned tensor. Every
 * block must be there once, with one dtype and one shape; errors name the keys (the caller, the file). */
static mp_error *add_fused(mp_weights *w, const component *c, const fuse_part *parts, size_t n) {
  static const char *const block_name[3] = {"q_proj", "k_proj", "v_proj"};
  char have[600];
  folder_name(c, parts[0].t->name, have, sizeof have);
  for (int b = 0; b < 3; b++)
    if ((size_t)b >= n || parts[b].block != b)
      return mp_errorf("%s has no matching %s (needed to build %s, whose rows are [q; k; v])", have, block_name[b],
                       parts[0].target);
  if (n > 3) return mp_errorf("more than one %s for %s", block_name[parts[3].block], parts[0].target);
  const mp_tensor *q = &parts[0].t->t;
  if (q->ndim < 1 || q->ndim > 2) return mp_errorf("%s is %d-D, expected a Linear weight or bias", have, q->ndim);
  for (int b = 1; b < 3; b++) {
    const mp_tensor *o = &parts[b].t->t;
    char other[600], sa[64], sb[64];
    folder_name(c, parts[b].t->name, other, sizeof other);
    if (o->dtype != q->dtype)
      return mp_errorf("%s is %s but %s is %s; q, k and v must share one dtype", other, mp_dtype_name(o->dtype), have,
                       mp_dtype_name(q->dtype));
    if (!same_shape(o, q))
      return mp_errorf("%s has shape %s, expected %s as %s has", other, mp_shape_str(o->ndim, o->shape, sa, sizeof sa),
                       mp_shape_str(q->ndim, q->shape, sb, sizeof sb), have);
  }
  size_t bytes = mp_tensor_nbytes(q);
  if (!bytes) return mp_errorf("%s is empty", have);
  unsigned char *data = mp_alloc(3 * bytes);
  if (!data) return mp_errorf("out of memory fusing %s (%zu bytes)", parts[0].target, 3 * bytes);
  for (int b = 0; b < 3; b++) memcpy(data + (size_t)b * bytes, parts[b].t->t.data, bytes);
  int64_t shape[MP_MAX_DIMS];
  memcpy(shape, q->shape, sizeof(int64_t) * (size_t)q->ndim);
  shape[0] *= 3;
  MP_TRY(mp_weights_add_owned(w, parts[0].target, q->dtype, q->ndim, shape, data));
  char source[700];
  snprintf(source, sizeof source, "%s + k_proj + v_proj", have);
  return mp_weights_set_source(w, source);
}

/* The 2-D tensor t stored transposed, in new memory the mp_weights owns. */
static mp_error *add_transposed(mp_weights *w, const char *name, const char *source, const mp_tensor *t) {
  if (t->ndim != 2) return mp_errorf("%s is %d-D, expected a 2-D Linear weight", source, t->ndim);
  const size_t es = mp_dtype_size(t->dtype);
  const int64_t rows = t->shape[0], cols = t->shape[1];
  if (!rows || !cols) return mp_errorf("%s is empty", source);
  unsigned char *data = mp_alloc(mp_tensor_nbytes(t));
  if (!data) return mp_errorf("out of memory transposing %s", source);
  const unsigned char *from = t->data;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < cols; k++) memcpy(data + ((size_t)k * (size_t)rows + (size_t)r) * es, from + ((size_t)r * (size_t)cols + (size_t)k) * es, es);
  MP_TRY(mp_weights_add_owned(w, name, t->dtype, 2, (int64_t[]){cols, rows}, data));
  return mp_weights_set_source(w, source);
}

static mp_error *add_component(mp_weights *w, const char *folder, const component *c, const structure *s) {
  char *file = NULL; /* the weights file, or the shard index */
  bool sharded;
  MP_TRY(find_weights(folder, c->subfolder, c->stem, &file, &sharded));
  mp_weights *part = NULL;
  mp_error *e = sharded ? open_sharded(folder, c->subfolder, file, &part) : mp_weights_open(file, &part);
  const bool named = e && sharded; /* open_sharded's errors name the index */
  if (!e) e = mp_weights_adopt(w, part); /* closes part on failure */
  const size_t n_tensors = e ? 0 : mp_weights_count(part);
  fuse_part *fuse = NULL;
  size_t n_fuse = 0;
  for (size_t i = 0; !e && i < n_tensors; i++) {
    const mp_weight *t = mp_weights_at(part, i);
    char mapped[512], name[600], source[600];
    map_how how = MAP_AS_IS;
    int n;
    bool known = c->map(s, t->name, mapped, sizeof mapped, &how);
    folder_name(c, t->name, source, sizeof source);
    if (known && how == MAP_SKIP) continue;
    if (known)
      n = snprintf(name, sizeof name, "%s%s", c->prefix, mapped);
    else
      n = snprintf(name, sizeof name, "%s", source); /* unknown: kept, shown as unexpected */
    if (n < 0 || (size_t)n >= sizeof name) {
      e = mp_errorf("%s: tensor name '%.80s...' is too long", file, t->name);
      break;
    }
    if (known && how >= MAP_FUSE_Q && how <= MAP_FUSE_V) {
      if (!fuse && !(fuse = calloc(n_tensors, sizeof *fuse))) {
        e = mp_errorf("out of memory");
        break;
      }
      fuse_part *f = &fuse[n_fuse++];
      snprintf(f->target, sizeof f->target, "%s", name);
      f->t = t;
      f->block = (int)(how - MAP_FUSE_Q);
      continue;
    }
    if (known && how == MAP_TRANSPOSE) {
      e = add_transposed(w, name, source, &t->t);
      continue;
    }
    int64_t shape[MP_MAX_DIMS];
    int ndim = t->t.ndim;
    memcpy(shape, t->t.shape, sizeof(int64_t) * (size_t)ndim);
    if (how == MAP_CONV_VIEW && ndim == 2) shape[2] = shape[3] = 1, ndim = 4;
    e = mp_weights_add(w, name, t->t.dtype, ndim, shape, t->t.data);
    if (!e && known) e = mp_weights_set_source(w, source); /* so that a shape error also names the key as the folder spells it */
  }
  /* the fused tensors, one per group of the same target */
  if (!e && n_fuse) qsort(fuse, n_fuse, sizeof *fuse, cmp_fuse);
  for (size_t i = 0, j; !e && i < n_fuse; i = j) {
    for (j = i + 1; j < n_fuse && strcmp(fuse[j].target, fuse[i].target) == 0;) j++;
    e = add_fused(w, c, fuse + i, j - i);
  }
  free(fuse);
  if (e && !named) e = mp_error_wrap(e, "reading %s", file);
  free(file);
  return e;
}

static mp_error *open_controlnet(const char *folder, mp_weights **out) {
  structure s;
  MP_TRY(read_controlnet_structure(folder, &s));
  mp_weights *w = mp_weights_new(folder);
  if (!w) return mp_errorf("out of memory");
  mp_error *e = add_component(w, folder, &controlnet_component, &s);
  if (!e) e = mp_weights_finish(w);
  if (e) {
    mp_weights_close(w);
    return mp_error_wrap(e, "diffusers ControlNet folder %s", folder);
  }
  *out = w;
  return NULL;
}

mp_error *mp_diffusers_open(const char *folder, mp_weights **out) {
  *out = NULL;
  if (mp_diffusers_is_controlnet(folder)) return open_controlnet(folder, out);
  if (!mp_diffusers_is_folder(folder))
    return mp_errorf("%s is a folder but not a diffusers model folder (it has no model_index.json, nor the config.json of "
                     "a ControlNet); give a checkpoint file or a folder saved by diffusers",
                     folder);
  cJSON *index = NULL;
  MP_TRY(mp_diffusers_read_json(folder, "model_index.json", true, &index));
  const cJSON *cls = cJSON_GetObjectItemCaseSensitive(index, "_class_name");
  const char *name = cJSON_IsString(cls) ? cls->valuestring : "(no _class_name)";
  const layout *lay = NULL;
  for (size_t i = 0; !lay && i < sizeof layouts / sizeof *layouts; i++)
    if (layouts[i].matches(name, index)) lay = &layouts[i];
  mp_error *e = NULL;
  if (!lay) e = mp_errorf("%s/model_index.json: pipeline %s is not a Stable Diffusion pipeline", folder, name);
  for (size_t i = 0; !e && i < lay->n_components; i++) {
    const char *sub = lay->components[i].subfolder;
    char *dir = joinf(folder, sub);
    struct stat st;
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(index, sub);
    if (!cJSON_IsArray(entry))
      e = mp_errorf("%s/model_index.json names no \"%s\" part", folder, sub);
    else if (!cJSON_IsString(cJSON_GetArrayItem(entry, 0))) /* [null, null]: the SDXL refiner has no first text encoder */
      e = mp_errorf("%s/model_index.json: \"%s\" is not a [library, class] pair, so the %s pipeline has no %s; mpass needs "
                    "every part of a %s pipeline (the SDXL refiner, [null, null] there, has no first text encoder and is not "
                    "supported)",
                    folder, sub, name, sub, lay->name);
    else if (!dir || stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
      e = mp_errorf("diffusers folder %s has no %s/ subfolder (model_index.json names one)", folder, sub);
    free(dir);
  }
  cJSON_Delete(index);
  if (!e && lay->components == sdxl_components) e = check_tokenizer_2(folder);
  MP_TRY(e);

  structure s;
  MP_TRY(read_structure(folder, &s));
  mp_weights *w = mp_weights_new(folder);
  if (!w) return mp_errorf("out of memory");
  for (size_t i = 0; !e && i < lay->n_components; i++) e = add_component(w, folder, &lay->components[i], &s);
  if (!e) e = mp_weights_finish(w);
  if (e) {
    mp_weights_close(w);
    return mp_error_wrap(e, "diffusers folder %s", folder);
  }
  *out = w;
  return NULL;
}
