/* Conformance cases of the image side: UNet (unet), VAE (vae) and LoRA (lora). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/conform.h"
#include "models/clip.h"
#include "models/lora.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"

/* One UNet run of the golden inputs <pre>.{x,t,context} checked against <pre>.<out>. */
static mp_error *conform_unet_run(conform *c, mp_unet *u, const char *pre, const char *in_pre, const char *out) {
  char name[160];
  const float *x = NULL, *t = NULL, *ctx = NULL;
  const mp_tensor *xt = NULL, *ct = NULL;
  snprintf(name, sizeof name, "%s.x", in_pre);
  MP_TRY(conform_golden_f32(c, name, &x, &xt));
  snprintf(name, sizeof name, "%s.t", in_pre);
  MP_TRY(conform_golden_f32(c, name, &t, NULL));
  snprintf(name, sizeof name, "%s.context", in_pre);
  MP_TRY(conform_golden_f32(c, name, &ctx, &ct));
  if (xt->ndim != 4 || ct->ndim != 3 || ct->shape[0] != xt->shape[0])
    return mp_errorf("%s: x must be [B,C,H,W] and context [B,n,dim]", in_pre);
  int batch = (int)xt->shape[0], h = (int)xt->shape[2], w = (int)xt->shape[3];
  int64_t n = mp_tensor_numel(xt);
  float *eps = mp_alloc(sizeof(float) * (size_t)n);
  if (!eps) return mp_errorf("out of memory");
  mp_error *e = mp_unet_forward(u, c->ctx->pool, batch, h, w, x, t, ctx, (int)ct->shape[1], eps);
  snprintf(name, sizeof name, "%s.%s", pre, out);
  if (!e) conform_check(c, name, eps, n, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  mp_free(eps);
  return e;
}

/* unet.{a,b}: {x, t, context} -> eps (batch 2, non-square and fractional t in b). */
mp_error *conform_case_unet(conform *c) {
  mp_weights *w;
  mp_sd_config cfg;
  mp_unet *u;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  MP_TRY(mp_unet_load(w, MP_PREFIX_UNET, &cfg.unet, &u));
  mp_error *e = conform_unet_run(c, u, "unet.a", "unet.a", "eps");
  if (!e) e = conform_unet_run(c, u, "unet.b", "unet.b", "eps");
  mp_unet_free(u);
  return e;
}

/* vae.decode_{a,b}.z -> image; vae.encode.image -> moments, mean, std = exp(0.5 clamp(logvar, -30, 20)). */
mp_error *conform_case_vae(conform *c) {
  mp_weights *w;
  mp_sd_config cfg;
  mp_vae *v;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  MP_TRY(mp_vae_load(w, MP_PREFIX_VAE, &cfg.vae, &v));
  /* The goldens are the decoder's and encoder's own arithmetic, untiled at every size: AUTO would tile
   * sd15-size's 512x576 decode (tiles normalise with their own statistics, rel L2 ~1e-2 by design). */
  mp_vae_set_tiling(v, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  mp_error *e = NULL;
  float *buf = NULL;
  const char *runs[] = {"vae.decode_a", "vae.decode_b"};
  for (int r = 0; r < 2 && !e; r++) {
    char name[96];
    const float *z = NULL;
    const mp_tensor *zt = NULL;
    snprintf(name, sizeof name, "%s.z", runs[r]);
    if ((e = conform_golden_f32(c, name, &z, &zt))) break;
    if (zt->ndim != 4 || zt->shape[0] != 1) {
      e = mp_errorf("%s must be [1, C, h, w]", name);
      break;
    }
    int h = (int)zt->shape[2], wd = (int)zt->shape[3], f8 = 1 << (cfg.vae.n_levels - 1);
    int64_t n = (int64_t)cfg.vae.out_channels * h * f8 * wd * f8;
    mp_free(buf);
    if (!(buf = mp_alloc(sizeof(float) * (size_t)n))) {
      e = mp_errorf("out of memory");
      break;
    }
    if ((e = mp_vae_decode(v, c->ctx->pool, h, wd, z, buf))) break;
    snprintf(name, sizeof name, "%s.image", runs[r]);
    conform_check(c, name, buf, n, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  const float *img = NULL;
  const mp_tensor *it = NULL;
  if (!e) e = conform_golden_f32(c, "vae.encode.image", &img, &it);
  if (!e && (it->ndim != 4 || it->shape[0] != 1)) e = mp_errorf("vae.encode.image must be [1, 3, H, W]");
  if (!e) {
    int H = (int)it->shape[2], W = (int)it->shape[3], f8 = 1 << (cfg.vae.n_levels - 1), E = cfg.vae.embed_dim;
    int64_t hw = (int64_t)(H / f8) * (W / f8);
    mp_free(buf);
    buf = mp_alloc(sizeof(float) * (size_t)(3 * E * hw));
    if (!buf) e = mp_errorf("out of memory");
    if (!e) e = mp_vae_encode(v, c->ctx->pool, H, W, img, buf);
    if (!e) {
      conform_check(c, "vae.encode.moments", buf, 2 * E * hw, CONFORM_FP32_REL, CONFORM_FP32_ABS);
      conform_check(c, "vae.encode.mean", buf, E * hw, CONFORM_FP32_REL, CONFORM_FP32_ABS);
      float *std = buf + 2 * E * hw;
      for (int64_t i = 0; i < E * hw; i++) {
        float lv = buf[E * hw + i];
        lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
        std[i] = expf(0.5f * lv);
      }
      conform_check(c, "vae.encode.std", std, E * hw, CONFORM_FP32_REL, CONFORM_FP32_ABS);
    }
  }
  mp_free(buf);
  mp_vae_free(v);
  return e;
}

/* lora: lora_tiny.safetensors merged at multipliers 1 and 0.5: UNet eps (lora.unet.{a,b}) and text
 * encoder last_hidden_state for te.{i}.input_ids of the te case. */
mp_error *conform_case_lora(conform *c) {
  mp_weights *w, *lw = NULL, *te = NULL;
  mp_sd_config cfg;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  const char *lora_file;
  MP_TRY(conform_open_lora(c, &lw, &lora_file));
  char *tp = conform_path(c, "te.safetensors");
  mp_error *e = tp ? mp_weights_open(tp, &te) : mp_errorf("out of memory");
  static const struct {
    float mult;
    const char *suffix;
  } runs[] = {{1.0f, "m1"}, {0.5f, "m0.5"}};
  for (int r = 0; r < 2 && !e; r++) {
    mp_lora_spec spec = {lw, lora_file, runs[r].mult, runs[r].mult};
    mp_weights *ov = NULL;
    mp_lora_report rep;
    if ((e = mp_lora_apply(w, &cfg, &spec, 1, &ov, &rep))) break;
    if (rep.n_unmatched) conform_fail(c, "lora.modules", "%d LoRA modules matched nothing, e.g. %s", rep.n_unmatched, rep.unmatched[0]);
    mp_lora_report_free(&rep);
    mp_unet *u = NULL;
    e = mp_unet_load(ov, MP_PREFIX_UNET, &cfg.unet, &u);
    char out[32];
    snprintf(out, sizeof out, "eps_%s", runs[r].suffix);
    if (!e) e = conform_unet_run(c, u, "lora.unet.a", "lora.unet.a", out);
    if (!e) e = conform_unet_run(c, u, "lora.unet.b", "lora.unet.b", out);
    mp_unet_free(u);
    mp_clip *clip = NULL;
    if (!e) e = mp_clip_load(ov, MP_PREFIX_CLIP, &cfg.clip, &clip);
    for (int i = 0; !e; i++) {
      char name[96];
      snprintf(name, sizeof name, "te.%d.input_ids", i);
      const mp_weight *idw = mp_weights_find(te, name);
      char gname[96];
      snprintf(gname, sizeof gname, "lora.te.%d.last_hidden_state_%s", i, runs[r].suffix);
      if (!mp_weights_find(c->golden, gname)) { /* the golden covers the first prompts of the te case */
        if (i == 0) e = mp_errorf("no %s in the golden file", gname);
        break;
      }
      if (!idw) {
        e = mp_errorf("%s has no %s for %s", tp, name, gname);
        break;
      }
      int n = (int)mp_tensor_numel(&idw->t), D = cfg.clip.hidden;
      int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
      float *hs = mp_alloc(sizeof(float) * (size_t)n * (size_t)D);
      if (!ids || !hs) e = mp_errorf("out of memory");
      for (int k = 0; !e && k < n; k++)
        ids[k] = idw->t.dtype == MP_I64 ? (int32_t)((const int64_t *)idw->t.data)[k] : ((const int32_t *)idw->t.data)[k];
      if (!e) e = mp_clip_encode(clip, c->ctx->pool, ids, n, 1, hs);
      if (!e) conform_check(c, gname, hs, (int64_t)n * D, CONFORM_FP32_REL, CONFORM_FP32_ABS);
      free(ids);
      mp_free(hs);
    }
    mp_clip_free(clip);
    mp_weights_close(ov); /* the base checkpoint is untouched: dropping the overlay removes the LoRA */
  }
  mp_weights_close(te);
  mp_weights_close(lw);
  free(tp);
  return e;
}
