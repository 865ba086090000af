/* ControlNet (cldm.ControlNet) on f32 activations, weights in their stored dtype. The encoder copy is
 * the UNet's own code (mp_unet_load_encoder / mp_unet_encode); this file adds what ControlNet has on
 * top of it: the hint block, the zero convolutions and the residual hand-over. */
#include "models/controlnet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv.h"
#include "core/ops.h"
#include "io/diffusers.h"
#include "models/sd_diffusers.h"

typedef struct {
  const mp_tensor *w, *b;
} conv;

struct mp_controlnet {
  mp_unet_config cfg;
  mp_weights *owned_file; /* set by mp_controlnet_open */
  mp_unet *encoder;       /* control_model.{time_embed, input_blocks, middle_block} */
  conv input_hint_block[MP_CONTROLNET_HINT_CONVS]; /* input_hint_block.{0,2,...,14} */
  int n_zero;
  conv zero_convs[MP_UNET_MAX_SKIPS]; /* zero_convs.i.0 */
  conv middle_block_out;              /* middle_block_out.0 */
  mp_workspace ws;                    /* conv packing */
  mp_workspace zero_ws;               /* the same for the 1x1 output convs, which stay f32 (see load) */
  mp_workspace hint_acts;             /* the hint block's two ping-pong buffers */
  mp_workspace residuals;             /* down[0..n_zero-1] and mid, contiguous */
};

/* Hint block widths of every release (cldm.ControlNet hard-codes them): 3 -> 16 -> 16 -> 32 -> 32 ->
 * 96 -> 96 -> 256 -> model_channels, stride 2 into 32, 96 and 256 channels (convs 2, 4 and 6 counting
 * from 0, keys 4, 8 and 12). */
static const int hint_width[MP_CONTROLNET_HINT_CONVS] = {16, 16, 32, 32, 96, 96, 256, 0};
static const int hint_stride[MP_CONTROLNET_HINT_CONVS] = {1, 1, 2, 1, 2, 1, 2, 1};

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static mp_error *bind_conv(const mp_weights *w, const char *prefix, const char *base, int c_out, int c_in, int k, conv *out) {
  char name[256];
  snprintf(name, sizeof name, "%s%s.weight", prefix, base);
  MP_TRY(mp_sd_weight(w, name, SHAPE(c_out, c_in, k, k), &out->w));
  snprintf(name, sizeof name, "%s%s.bias", prefix, base);
  return mp_sd_weight(w, name, SHAPE(c_out), &out->b);
}

/* "control_model." in the 1.0 releases (whole ControlLDM state dicts), nothing in the 1.1 .pth files. */
static const char *find_prefix(const mp_weights *w) {
  if (mp_weights_find(w, "control_model.input_hint_block.0.weight")) return "control_model.";
  if (mp_weights_find(w, "input_hint_block.0.weight")) return "";
  return NULL;
}

void mp_controlnet_free(mp_controlnet *cn) {
  if (!cn) return;
  mp_unet_free(cn->encoder);
  mp_workspace_free(&cn->ws);
  mp_workspace_free(&cn->zero_ws);
  mp_workspace_free(&cn->hint_acts);
  mp_workspace_free(&cn->residuals);
  mp_weights_close(cn->owned_file);
  free(cn);
}

mp_error *mp_controlnet_load(const mp_weights *w, const char *config_json, mp_controlnet **out) {
  *out = NULL;
  const char *prefix = find_prefix(w);
  if (!prefix)
    return mp_errorf("%s is not a ControlNet: no input_hint_block.0.weight (with or without the control_model. prefix)",
                     mp_weights_path(w));
  mp_controlnet *cn = calloc(1, sizeof *cn);
  if (!cn) return mp_errorf("out of memory");
  cn->zero_ws.f32_only = true;
  /* A diffusers ControlNet folder says its hyper-parameters in its config.json; the bind below checks
   * every shape against them. */
  const char *folder = mp_weights_path(w);
  mp_error *e = !config_json && mp_diffusers_is_controlnet(folder) ? mp_controlnet_config_from_diffusers(folder, &cn->cfg)
                                                                   : mp_sd_control_config(w, prefix, config_json, &cn->cfg);
  if (!e) e = mp_unet_load_encoder(w, prefix, &cn->cfg, &cn->encoder);
  const int mc = cn->cfg.model_channels;
  char base[64];
  for (int i = 0, c_in = 3; !e && i < MP_CONTROLNET_HINT_CONVS; i++) {
    int c_out = hint_width[i] ? hint_width[i] : mc;
    snprintf(base, sizeof base, "input_hint_block.%d", 2 * i);
    e = bind_conv(w, prefix, base, c_out, c_in, 3, &cn->input_hint_block[i]);
    c_in = c_out;
  }
  /* one zero conv per input block, each as wide as its block: conv_in, then per level the ResBlocks
   * and (but after the last level) a Downsample */
  const mp_unet_config *u = &cn->cfg;
  int widths[MP_UNET_MAX_SKIPS], n = 0;
  if (!e && 1 + u->n_levels * u->num_res_blocks + u->n_levels - 1 > MP_UNET_MAX_SKIPS)
    e = mp_errorf("ControlNet has more than %d input blocks", MP_UNET_MAX_SKIPS);
  if (!e) {
    widths[n++] = mc;
    for (int l = 0; l < u->n_levels; l++) {
      for (int r = 0; r < u->num_res_blocks; r++) widths[n++] = u->channel_mult[l] * mc;
      if (l != u->n_levels - 1) widths[n++] = u->channel_mult[l] * mc;
    }
  }
  for (int i = 0; !e && i < n; i++) {
    snprintf(base, sizeof base, "zero_convs.%d.0", i);
    e = bind_conv(w, prefix, base, widths[i], widths[i], 1, &cn->zero_convs[i]);
  }
  cn->n_zero = n;
  const int mid_c = u->channel_mult[u->n_levels > 0 ? u->n_levels - 1 : 0] * mc;
  if (!e) e = bind_conv(w, prefix, "middle_block_out.0", mid_c, mid_c, 1, &cn->middle_block_out);
  if (e) {
    mp_controlnet_free(cn);
    return mp_error_wrap(e, "loading the ControlNet %s", mp_weights_path(w));
  }
  *out = cn;
  return NULL;
}

mp_error *mp_controlnet_open(const char *path, const char *config_json, mp_controlnet **out) {
  *out = NULL;
  mp_weights *w = NULL;
  MP_TRY(mp_weights_open(path, &w));
  mp_error *e = mp_controlnet_load(w, config_json, out);
  if (e) {
    mp_weights_close(w);
    return e;
  }
  (*out)->owned_file = w;
  return NULL;
}

const mp_unet_config *mp_controlnet_config(const mp_controlnet *cn) { return &cn->cfg; }

mp_error *mp_controlnet_hint(mp_controlnet *cn, mp_pool *pool, int batch, int H, int W, const float *hint, float *emb) {
  if (batch < 1 || H < 8 || W < 8 || H % 8 || W % 8)
    return mp_errorf("ControlNet hint %dx%d (batch %d): sides must be positive multiples of 8", W, H, batch);
  const size_t widest = (size_t)batch * 16 * (size_t)H * (size_t)W; /* the first two convs, at full size */
  MP_TRY(mp_workspace_reserve(&cn->hint_acts, 2 * widest * sizeof(float)));
  float *a = cn->hint_acts.p, *b = a + widest;
  const float *x = hint;
  int c = 3, h = H, w = W;
  for (int i = 0; i < MP_CONTROLNET_HINT_CONVS; i++) {
    const conv *k = &cn->input_hint_block[i];
    const bool last = i == MP_CONTROLNET_HINT_CONVS - 1;
    float *y = last ? emb : (x == a ? b : a);
    MP_TRY(mp_error_wrap(mp_conv2d(pool, &cn->zero_ws, y, x, batch, c, h, w, k->w, k->b, hint_stride[i], (mp_pad){1, 1, 1, 1}),
                         "ControlNet input_hint_block.%d", 2 * i));
    h = mp_conv_out_size(h, 3, hint_stride[i], 1, 1), w = mp_conv_out_size(w, 3, hint_stride[i], 1, 1);
    c = (int)k->w->shape[0];
    if (!last) mp_silu(y, (int64_t)batch * c * h * w);
    x = y;
  }
  return NULL;
}

mp_error *mp_controlnet_forward(mp_controlnet *cn, mp_pool *pool, const mp_unet_inputs *in, const float *hint_emb,
                                mp_unet_control *out) {
  memset(out, 0, sizeof *out);
  if (in->y || in->control) return mp_errorf("ControlNet forward: SDXL label vectors and nested ControlNets are not supported");
  mp_unet_encoded enc;
  MP_TRY(mp_error_wrap(mp_unet_encode(cn->encoder, pool, in, hint_emb, &enc), "ControlNet"));
  if (enc.n_blocks != cn->n_zero) return mp_errorf("ControlNet: %d encoder blocks for %d zero convs", enc.n_blocks, cn->n_zero);
  size_t total = (size_t)in->batch * (size_t)enc.mid_channels * (size_t)enc.mid_h * (size_t)enc.mid_w;
  for (int i = 0; i < enc.n_blocks; i++) total += (size_t)in->batch * (size_t)enc.channels[i] * (size_t)enc.h[i] * (size_t)enc.w[i];
  MP_TRY(mp_workspace_reserve(&cn->residuals, total * sizeof(float)));
  float *p = cn->residuals.p;
  const mp_pad none = {0, 0, 0, 0};
  for (int i = 0; i < enc.n_blocks; i++) {
    const conv *z = &cn->zero_convs[i];
    MP_TRY(mp_error_wrap(mp_conv2d(pool, &cn->zero_ws, p, enc.block[i], in->batch, enc.channels[i], enc.h[i], enc.w[i], z->w, z->b, 1, none),
                         "ControlNet zero_convs.%d", i));
    out->down[i] = p;
    p += (size_t)in->batch * (size_t)enc.channels[i] * (size_t)enc.h[i] * (size_t)enc.w[i];
  }
  const conv *m = &cn->middle_block_out;
  MP_TRY(mp_error_wrap(mp_conv2d(pool, &cn->zero_ws, p, enc.mid, in->batch, enc.mid_channels, enc.mid_h, enc.mid_w, m->w, m->b, 1, none),
                       "ControlNet middle_block_out"));
  out->mid = p;
  out->n_down = enc.n_blocks;
  out->scale = 1.0f;
  return NULL;
}

mp_error *mp_controlnet_model_eps(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context,
                                  int n_ctx, float *eps) {
  mp_controlnet_model *m = ctx;
  const int mc = m->controlnet->cfg.model_channels;
  const size_t per = (size_t)mc * (size_t)h * (size_t)w;
  if (rows < 1) return mp_errorf("ControlNet model: no rows");
  /* The hint is the same for every row: embed it once per size, then repeat it over the rows. */
  if (!m->hint_emb || m->emb_h != h || m->emb_w != w) {
    mp_free(m->hint_emb);
    m->hint_emb = mp_alloc(per * sizeof(float));
    if (!m->hint_emb) return mp_errorf("out of memory");
    mp_error *e = mp_controlnet_hint(m->controlnet, m->pool, 1, 8 * h, 8 * w, m->hint, m->hint_emb);
    if (e) {
      mp_free(m->hint_emb);
      m->hint_emb = NULL;
      return e;
    }
    m->emb_h = h, m->emb_w = w;
  }
  const int cn_in = m->controlnet->cfg.in_channels, x_in = m->x_channels > 0 ? m->x_channels : cn_in;
  if (x_in < cn_in) return mp_errorf("ControlNet takes %d latent channels, the sampler gives %d", cn_in, x_in);
  const size_t plane = (size_t)h * (size_t)w;
  float *emb = mp_alloc((size_t)rows * per * sizeof(float));
  float *x_cn = x_in != cn_in ? mp_alloc((size_t)rows * cn_in * plane * sizeof(float)) : NULL;
  if (!emb || (x_in != cn_in && !x_cn)) {
    mp_free(emb), mp_free(x_cn);
    return mp_errorf("out of memory");
  }
  for (int r = 0; r < rows; r++) memcpy(emb + (size_t)r * per, m->hint_emb, per * sizeof(float));
  for (int r = 0; x_cn && r < rows; r++) /* an inpainting UNet's x: latent, mask, masked image; keep the latent */
    memcpy(x_cn + (size_t)r * cn_in * plane, x + (size_t)r * x_in * plane, (size_t)cn_in * plane * sizeof(float));
  mp_unet_inputs in = {.batch = rows, .h = h, .w = w, .x = x_cn ? x_cn : x, .t = t, .context = context, .n_ctx = n_ctx};
  mp_unet_control control;
  mp_error *e = mp_controlnet_forward(m->controlnet, m->pool, &in, emb, &control);
  mp_free(emb), mp_free(x_cn);
  if (e) return e;
  control.scale = m->scale;
  in.x = x;
  in.control = &control;
  return mp_unet_run(m->unet, m->pool, &in, eps);
}

void mp_controlnet_model_free(mp_controlnet_model *m) {
  if (!m) return;
  mp_free(m->hint_emb);
  m->hint_emb = NULL;
}
