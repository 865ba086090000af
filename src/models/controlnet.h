/* ControlNet for SD 1.x (Zhang et al. 2023; cldm.ControlNet, the single-file layout of the 1.0/1.1 releases).
 *
 *   hint (RGB u8/255, image size) ─▶ input_hint_block: 8 3×3 convs, SiLU between, stride 2 at 3 of
 *                                     them (image size -> latent size), last one -> model_channels
 *   x, t, context ─▶ a trainable copy of the UNet encoder (time_embed, input_blocks, middle_block),
 *                    the hint embedding added to the conv_in output
 *   each input block output ─▶ zero_convs[i] (1×1) ─▶ residual down[i]
 *   middle block output ─▶ middle_block_out (1×1) ─▶ residual mid
 * The UNet adds scale × down[i] to its skip connection i and scale × mid to its middle block output
 * (mp_unet_control). Keys: `control_model.` + the names above (1.0 files, which also hold a whole SD
 * model), or the names alone (1.1 .pth files). A diffusers folder (ControlNetModel) is renamed to the
 * control_model. names by io/diffusers.c. */
#ifndef MP_MODELS_CONTROLNET_H
#define MP_MODELS_CONTROLNET_H

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"
#include "models/unet.h"

#define MP_CONTROLNET_HINT_CONVS 8

typedef struct mp_controlnet mp_controlnet;

/* Bind the ControlNet in `w` (which must outlive it). `config_json`: a cldm config, or NULL to use
 * `<file stem>.json` when it exists and the tensor shapes otherwise; for weights read from a
 * diffusers ControlNet folder (io/diffusers.h), NULL means the folder's config.json. */
mp_error *mp_controlnet_load(const mp_weights *w, const char *config_json, mp_controlnet **out);
/* Open `path` (.safetensors, .pth, .ckpt, or a diffusers ControlNet folder: config.json +
 * diffusion_pytorch_model[.fp16].safetensors/.bin) and bind it; the ControlNet owns the file. */
mp_error *mp_controlnet_open(const char *path, const char *config_json, mp_controlnet **out);
void mp_controlnet_free(mp_controlnet *cn);
const mp_unet_config *mp_controlnet_config(const mp_controlnet *cn);

/* input_hint_block: hint [batch, 3, H, W] (RGB in [0, 1]) -> emb [batch, model_channels, H/8, W/8]. */
mp_error *mp_controlnet_hint(mp_controlnet *cn, mp_pool *pool, int batch, int H, int W, const float *hint, float *emb);

/* The residuals for in->x, t, context (y and control unused) with the hint embedding `hint_emb`
 * [batch, model_channels, h, w]. `out` gets views into the ControlNet's buffers (valid until its next
 * call), n_down = the number of input blocks, scale = 1; the caller sets the scale. */
mp_error *mp_controlnet_forward(mp_controlnet *cn, mp_pool *pool, const mp_unet_inputs *in, const float *hint_emb,
                                mp_unet_control *out);

/* The sampling model (mp_model_fn of pipeline/generate.h) with a ControlNet: for every row batch (CFG's
 * uncond and cond halves alike) the ControlNet runs on the same x, t and context as the UNet, the hint
 * repeated, and the UNet adds its residuals times `scale`. The hint embedding is computed once. */
typedef struct {
  mp_unet *unet;
  mp_controlnet *controlnet;
  mp_pool *pool;
  const float *hint; /* [1, 3, 8 h, 8 w] in [0, 1] */
  float scale;
  int x_channels;    /* channels of the x the sampler passes (9 for an inpainting UNet: the ControlNet
                      * sees the first 4, the latent); 0 means the ControlNet's own in_channels */
  float *hint_emb;   /* cache: [1, model_channels, h, w], owned; free with mp_controlnet_model_free */
  int emb_h, emb_w;
} mp_controlnet_model;
mp_error *mp_controlnet_model_eps(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context,
                                  int n_ctx, float *eps);
void mp_controlnet_model_free(mp_controlnet_model *m);

#endif
