/* Stable Diffusion checkpoints: which family a file is, and the hyper-parameters of its parts.
 *
 * Real single-file checkpoints (CompVis layout for SD 1.x, sgm layout for SDXL) are recognised from
 * tensor names and shapes; tiny test models come with an LDM-style JSON config beside them
 * (`<ckpt stem>.json`, the format of v1-inference.yaml / sd_xl_base.yaml plus "text_encoder" and
 * "text_encoder_2" blocks), which takes precedence when present. */
#ifndef MP_MODELS_SD_H
#define MP_MODELS_SD_H

#include <stdbool.h>

#include "core/error.h"
#include "io/weights.h"

#define MP_PREFIX_UNET "model.diffusion_model."
#define MP_PREFIX_VAE "first_stage_model."
#define MP_PREFIX_CLIP "cond_stage_model.transformer.text_model."
/* SDXL (sgm layout): CLIP ViT-L in the transformers layout, OpenCLIP ViT-bigG in its own layout */
#define MP_PREFIX_XL_CLIP "conditioner.embedders.0.transformer.text_model."
#define MP_PREFIX_XL_OPENCLIP "conditioner.embedders.1.model."

typedef enum { MP_FAMILY_UNKNOWN, MP_FAMILY_SD1, MP_FAMILY_SD2, MP_FAMILY_SDXL } mp_family;

typedef struct {
  int vocab_size, max_positions, hidden, intermediate, layers, heads;
  float ln_eps;
  bool quick_gelu; /* CLIP ViT-L/14 (SD 1.x); OpenCLIP uses exact GELU */
  int projection_dim; /* OpenCLIP's text_projection width (SDXL's pooled vector); 0 for CLIP ViT-L */
} mp_clip_config;

#define MP_MAX_LEVELS 8

typedef struct {
  int in_channels, out_channels, model_channels;
  int n_levels, channel_mult[MP_MAX_LEVELS];
  bool attention_at_level[MP_MAX_LEVELS]; /* from attention_resolutions (downsample factors) */
  int num_res_blocks;
  int num_heads;     /* heads per transformer (SD 1.x: 8); -1 when head_dim is fixed instead */
  int num_head_channels; /* SD 2.x: 64; -1 when num_heads is fixed */
  int context_dim, transformer_depth;
  int depth_at_level[MP_MAX_LEVELS]; /* SDXL: transformer blocks per level; 0 = transformer_depth */
  int mid_depth;                     /* transformer blocks of the middle block; 0 = transformer_depth */
  bool linear_in_transformer; /* proj_in/out as Linear (SD 2.x) rather than 1x1 conv */
  int adm_in_channels; /* SDXL: width of the label vector y into label_emb; 0 = no label embedding */
} mp_unet_config;

typedef struct {
  int in_channels, out_channels, ch, n_levels, ch_mult[MP_MAX_LEVELS], num_res_blocks;
  int z_channels, embed_dim;
} mp_vae_config;

typedef struct {
  mp_family family;
  mp_clip_config clip;  /* SD 1.x's text encoder; SDXL's first (CLIP ViT-L, penultimate layer) */
  mp_clip_config clip2; /* SDXL's second text encoder (OpenCLIP ViT-bigG); zero for SD 1.x */
  int time_id_dim;      /* SDXL: sinusoidal width of each of the six size/crop numbers (256; tiny 8) */
  mp_unet_config unet;
  mp_vae_config vae;
  float scale_factor; /* latent scale: 0.18215 for SD 1.x, 0.13025 for SDXL */
  float linear_start, linear_end;
  int timesteps;
  bool inpainting; /* 9-channel UNet input */
} mp_sd_config;

const char *mp_family_name(mp_family f);

/* Recognise the checkpoint and fill `cfg`. `config_json` (may be NULL) is an LDM-style config
 * file; when NULL, `<checkpoint path without extension>.json` is used if it exists. */
mp_error *mp_sd_config_detect(const mp_weights *w, const char *config_json, mp_sd_config *cfg);

/* The UNet hyper-parameters of a ControlNet whose encoder copy is under `prefix` ("control_model." or
 * ""): from shapes, then from `config_json` (or `<file stem>.json` beside it, when present), a cldm
 * config whose model.params.control_stage_config has the unet_config form. out_channels = in_channels. */
mp_error *mp_sd_control_config(const mp_weights *w, const char *prefix, const char *config_json, mp_unet_config *u);

/* A weight by full name, checked for dtype class (float) and exact shape. The error names the key
 * and the expected and found shapes. `ndim` values of `shape` are compared. */
/* The depth of the transformer at UNet level l (SDXL varies it per level), and of the middle block. */
int mp_unet_level_depth(const mp_unet_config *u, int level);
int mp_unet_mid_depth(const mp_unet_config *u);

/* Prefix of the (first) CLIP text encoder: MP_PREFIX_CLIP or MP_PREFIX_XL_CLIP. */
const char *mp_sd_clip_prefix(const mp_sd_config *cfg);

mp_error *mp_sd_weight(const mp_weights *w, const char *name, int ndim, const int64_t *shape, const mp_tensor **out);

#endif
