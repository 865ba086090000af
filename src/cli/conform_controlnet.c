/* Conformance case `controlnet` (golden/tiny-controlnet): the hint embedding, the nine down residuals
 * and the mid residual, and the UNet's eps with them at scales 1 and 0.6 and without them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "io/image.h"
#include "models/controlnet.h"
#include "models/sd.h"
#include "models/unet.h"

mp_error *conform_controlnet_open(conform *c, mp_controlnet **out) {
  *out = NULL;
  const cJSON *ck = cJSON_GetObjectItemCaseSensitive(c->manifest, "controlnet_ckpt");
  if (!cJSON_IsString(ck)) return mp_errorf("%s.json has no \"controlnet_ckpt\" field naming the ControlNet", c->case_name);
  char *path = conform_path(c, ck->valuestring);
  if (!path) return mp_errorf("out of memory");
  mp_error *e = mp_controlnet_open(path, NULL, out);
  free(path);
  return e;
}

mp_error *conform_controlnet_hint(conform *c, float **hint, int *H, int *W) {
  *hint = NULL;
  char *path = conform_path(c, "hint.png");
  if (!path) return mp_errorf("out of memory");
  mp_image img = {0};
  mp_error *e = mp_image_read(path, 3, &img);
  free(path);
  if (e) return e;
  *H = img.height, *W = img.width;
  *hint = mp_alloc((size_t)3 * img.width * img.height * sizeof(float));
  if (*hint) mp_image_to_planar(&img, *hint, 0.0f, 1.0f); /* u8/255, no [-1, 1] normalisation */
  mp_image_free(&img);
  return *hint ? NULL : mp_errorf("out of memory");
}

/* controlnet.<run>.{x,t,context}: the ControlNet's outputs, then the UNet with them. */
static mp_error *controlnet_run(conform *c, mp_unet *unet, mp_controlnet *cn, const char *run, const float *hint, int H, int W) {
  char name[160];
  const float *x = NULL, *t = NULL, *ctx = NULL;
  const mp_tensor *xt = NULL, *tt = NULL, *ct = NULL;
  snprintf(name, sizeof name, "controlnet.%s.x", run);
  MP_TRY(conform_golden_f32(c, name, &x, &xt));
  snprintf(name, sizeof name, "controlnet.%s.t", run);
  MP_TRY(conform_golden_f32(c, name, &t, &tt));
  snprintf(name, sizeof name, "controlnet.%s.context", run);
  MP_TRY(conform_golden_f32(c, name, &ctx, &ct));
  if (xt->ndim != 4 || ct->ndim != 3 || ct->shape[0] != xt->shape[0] || mp_tensor_numel(tt) != xt->shape[0])
    return mp_errorf("controlnet.%s: x must be [B,C,h,w], t [B] and context [B,n,dim]", run);
  const int batch = (int)xt->shape[0], h = (int)xt->shape[2], w = (int)xt->shape[3];
  if (H != 8 * h || W != 8 * w) return mp_errorf("hint.png is %dx%d, the latent %dx%d (expected 8x)", W, H, w, h);
  const int mc = mp_controlnet_config(cn)->model_channels;
  const size_t per_emb = (size_t)mc * h * w, n_eps = (size_t)mp_tensor_numel(xt);
  float *hints = mp_alloc((size_t)batch * 3 * H * W * sizeof(float)), *emb = mp_alloc((size_t)batch * per_emb * sizeof(float));
  float *eps = mp_alloc(n_eps * sizeof(float));
  mp_error *e = (!hints || !emb || !eps) ? mp_errorf("out of memory") : NULL;
  /* batch b repeats the hint, as the reference does; embed every copy to exercise the batched path */
  for (int b = 0; !e && b < batch; b++) memcpy(hints + (size_t)b * 3 * H * W, hint, (size_t)3 * H * W * sizeof(float));
  if (!e) e = mp_controlnet_hint(cn, c->ctx->pool, batch, H, W, hints, emb);
  if (!e) {
    snprintf(name, sizeof name, "controlnet.%s.hint_embedding", run);
    conform_check(c, name, emb, (int64_t)(batch * per_emb), CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  mp_unet_inputs in = {.batch = batch, .h = h, .w = w, .x = x, .t = t, .context = ctx, .n_ctx = (int)ct->shape[1]};
  mp_unet_control control;
  if (!e) e = mp_controlnet_forward(cn, c->ctx->pool, &in, emb, &control);
  for (int i = 0; !e && i < control.n_down; i++) {
    snprintf(name, sizeof name, "controlnet.%s.down.%02d", run, i);
    const mp_tensor *g = NULL;
    mp_error *ge = conform_tensor(c, name, &g);
    if (ge) {
      conform_fail(c, name, "%s", mp_error_message(ge));
      mp_error_free(ge);
      continue;
    }
    conform_check(c, name, control.down[i], mp_tensor_numel(g), CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  if (!e) {
    snprintf(name, sizeof name, "controlnet.%s.down.%02d", run, control.n_down);
    if (mp_weights_find(c->golden, name)) conform_fail(c, name, "the reference has more residuals than our %d", control.n_down);
    const mp_tensor *g = NULL;
    snprintf(name, sizeof name, "controlnet.%s.mid", run);
    e = conform_tensor(c, name, &g);
    if (!e) conform_check(c, name, control.mid, mp_tensor_numel(g), CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  static const struct {
    const char *out;
    float scale;
  } scales[] = {{"eps_s1", 1.0f}, {"eps_s0.6", 0.6f}};
  for (size_t s = 0; !e && s < sizeof scales / sizeof *scales; s++) {
    control.scale = scales[s].scale;
    in.control = &control;
    e = mp_unet_run(unet, c->ctx->pool, &in, eps);
    snprintf(name, sizeof name, "controlnet.%s.%s", run, scales[s].out);
    if (!e) conform_check(c, name, eps, (int64_t)n_eps, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  if (!e) {
    in.control = NULL;
    e = mp_unet_run(unet, c->ctx->pool, &in, eps);
    snprintf(name, sizeof name, "controlnet.%s.eps_nocontrol", run);
    if (!e) conform_check(c, name, eps, (int64_t)n_eps, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  mp_free(hints);
  mp_free(emb);
  mp_free(eps);
  return mp_error_wrap(e, "controlnet.%s", run);
}

mp_error *conform_case_controlnet(conform *c) {
  mp_weights *w;
  mp_sd_config cfg;
  mp_unet *unet = NULL;
  mp_controlnet *cn = NULL;
  float *hint = NULL;
  int H = 0, W = 0;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  MP_TRY(mp_unet_load(w, MP_PREFIX_UNET, &cfg.unet, &unet));
  mp_error *e = conform_controlnet_open(c, &cn);
  if (!e) e = conform_controlnet_hint(c, &hint, &H, &W);
  if (!e) conform_check(c, "controlnet.hint", hint, (int64_t)3 * H * W, 0.0, 0.0);
  if (!e) e = controlnet_run(c, unet, cn, "a", hint, H, W);
  if (!e) e = controlnet_run(c, unet, cn, "b", hint, H, W);
  mp_free(hint);
  mp_controlnet_free(cn);
  mp_unet_free(unet);
  return e;
}
