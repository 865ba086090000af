/* Conformance cases of SDXL checkpoints (../shared/golden/tiny-xl): both text encoders with the
 * pooled vector (te), the UNet with its label vector (unet), and sampling (txt2img, in
 * conform_sampling.c) and LoRA. The case names are those of SD 1.x; conform.c sends a case here
 * when the checkpoint its manifest names is an SDXL one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "models/clip.h"
#include "models/lora.h"
#include "models/openclip.h"
#include "models/sd.h"
#include "models/unet.h"
#include "prompt/conditioning_xl.h"
#include "prompt/tokenizer.h"

enum { T = MP_CLIP_MAX_LENGTH };

static mp_error *golden_ids(conform *c, const char *name, int32_t ids[T]) {
  const mp_tensor *t;
  MP_TRY(conform_tensor(c, name, &t));
  if (mp_tensor_numel(t) != T) return mp_errorf("golden %s has %lld ids, expected %d", name, (long long)mp_tensor_numel(t), T);
  for (int k = 0; k < T; k++)
    ids[k] = t->dtype == MP_I64 ? (int32_t)((const int64_t *)t->data)[k] : ((const int32_t *)t->data)[k];
  return NULL;
}

typedef struct {
  mp_sd_config cfg;
  mp_clip *clip;
  mp_openclip *clip2;
} xl_text;

static mp_error *load_text(const mp_weights *w, xl_text *x) {
  memset(x, 0, sizeof *x);
  MP_TRY(mp_sd_config_detect(w, NULL, &x->cfg));
  if (x->cfg.family != MP_FAMILY_SDXL) return mp_errorf("%s is not an SDXL checkpoint", mp_weights_path(w));
  MP_TRY(mp_clip_load(w, MP_PREFIX_XL_CLIP, &x->cfg.clip, &x->clip));
  mp_error *e = mp_openclip_load(w, MP_PREFIX_XL_OPENCLIP, &x->cfg.clip2, &x->clip2);
  if (e) mp_clip_free(x->clip);
  return e;
}

static void free_text(xl_text *x) {
  mp_clip_free(x->clip);
  mp_openclip_free(x->clip2);
}

/* Every output of one pair of id rows: each encoder's states, the pooled vector, the context.
 * `pre` names the golden tensors (te.0, lora.te.0, ...), `suffix` is appended (LoRA runs). */
static mp_error *check_text_outputs(conform *c, xl_text *x, const char *pre, const char *suffix, bool all) {
  char name[160];
  int32_t ids1[T], ids2[T];
  snprintf(name, sizeof name, "%s.input_ids", pre);
  MP_TRY(golden_ids(c, name, ids1));
  snprintf(name, sizeof name, "%s.input_ids_2", pre);
  MP_TRY(golden_ids(c, name, ids2));
  const int D1 = x->cfg.clip.hidden, D2 = x->cfg.clip2.hidden, P = x->cfg.clip2.projection_dim;
  float *emb = mp_alloc(sizeof(float) * T * (size_t)(D1 > D2 ? D1 : D2)), *h = mp_alloc(sizeof(float) * T * (size_t)(D1 + D2));
  float *last = mp_alloc(sizeof(float) * T * (size_t)D2), *pooled = mp_alloc(sizeof(float) * (size_t)P);
  mp_error *e = emb && h && last && pooled ? NULL : mp_errorf("out of memory");
  const int32_t eos = 49407;
  if (!e) e = mp_clip_embed_tokens(x->clip, ids1, T, emb);
  if (!e) e = mp_clip_encode_embeds(x->clip, c->ctx->pool, emb, T, x->cfg.clip.layers - 1, false, h);
  if (!e) snprintf(name, sizeof name, "%s.te1_penultimate%s", pre, suffix), conform_check(c, name, h, (int64_t)T * D1, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  if (!e && all) e = mp_clip_encode_embeds(x->clip, c->ctx->pool, emb, T, x->cfg.clip.layers, true, h);
  if (!e && all) snprintf(name, sizeof name, "%s.te1_last_hidden_state%s", pre, suffix), conform_check(c, name, h, (int64_t)T * D1, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  if (!e) e = mp_openclip_embed_tokens(x->clip2, ids2, T, emb);
  if (!e) e = mp_openclip_encode_embeds(x->clip2, c->ctx->pool, emb, T, mp_openclip_eos_index(ids2, T, eos), h, last, pooled);
  if (!e) {
    snprintf(name, sizeof name, "%s.te2_penultimate%s", pre, suffix), conform_check(c, name, h, (int64_t)T * D2, CONFORM_FP32_REL, CONFORM_FP32_ABS);
    if (all) snprintf(name, sizeof name, "%s.te2_last_hidden_state%s", pre, suffix), conform_check(c, name, last, (int64_t)T * D2, CONFORM_FP32_REL, CONFORM_FP32_ABS);
    snprintf(name, sizeof name, "%s.text_embeds%s", pre, suffix), conform_check(c, name, pooled, P, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  if (!e && all) e = mp_xl_encode_chunk(x->clip, x->clip2, c->ctx->pool, ids1, ids2, eos, NULL, h, pooled);
  if (!e && all) {
    snprintf(name, sizeof name, "%s.context%s", pre, suffix), conform_check(c, name, h, (int64_t)T * (D1 + D2), CONFORM_FP32_REL, CONFORM_FP32_ABS);
    snprintf(name, sizeof name, "%s.pooled%s", pre, suffix), conform_check(c, name, pooled, P, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  }
  mp_free(emb), mp_free(h), mp_free(last), mp_free(pooled);
  return e;
}

/* The manifest's prompts through our tokenizers: tokenizer 1 pads with EOS, tokenizer 2 with 0. */
static mp_error *check_tokenizers(conform *c) {
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(c->manifest, "vocab");
  const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(c->manifest, "prompts");
  if (!cJSON_IsString(vocab) || !cJSON_IsArray(prompts)) return mp_errorf("te.json needs \"vocab\" and \"prompts\"");
  char *path = conform_path(c, vocab->valuestring);
  if (!path) return mp_errorf("out of memory");
  mp_tokenizer *tok = NULL;
  mp_error *e = mp_tokenizer_load(path, &tok);
  free(path);
  int i = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, prompts) {
    if (e) break;
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "prompt");
    if (!cJSON_IsString(text)) {
      e = mp_errorf("te.json prompts[%d] has no \"prompt\"", i);
      break;
    }
    int32_t ids[T];
    char name[64];
    if ((e = mp_tokenize_padded(tok, text->valuestring, ids, NULL))) break;
    snprintf(name, sizeof name, "te.%d.input_ids", i);
    conform_check_ids(c, name, ids, T);
    int at = mp_openclip_eos_index(ids, T, mp_tokenizer_eos(tok));
    for (int k = at + 1; k < T; k++) ids[k] = 0;
    snprintf(name, sizeof name, "te.%d.input_ids_2", i);
    conform_check_ids(c, name, ids, T);
    i++;
  }
  /* the whole conditioning path on prompt 0 with an empty negative: zeros for the negative */
  const cJSON *p0 = cJSON_GetArrayItem(prompts, 0), *t0 = p0 ? cJSON_GetObjectItemCaseSensitive(p0, "prompt") : NULL;
  mp_weights *w = NULL;
  xl_text x = {0};
  if (!e && cJSON_IsString(t0)) e = conform_checkpoint(c, &w);
  if (!e && w) e = load_text(w, &x);
  if (!e && w) {
    mp_cond_options o = mp_cond_options_default();
    o.use_lpw = false;
    mp_xl_conditioning xc;
    e = mp_xl_conditioning_encode(x.clip, x.clip2, c->ctx->pool, tok, t0->valuestring, "", NULL, &o, &xc);
    if (!e) {
      conform_check(c, "te.neg_zeros.context", xc.uncond.data, mp_tensor_numel(&xc.uncond), CONFORM_FP32_REL, CONFORM_FP32_ABS);
      conform_check(c, "te.neg_zeros.pooled", xc.pooled_uncond.data, mp_tensor_numel(&xc.pooled_uncond), CONFORM_FP32_REL, CONFORM_FP32_ABS);
      mp_xl_conditioning_free(&xc);
    }
    free_text(&x);
  }
  mp_tokenizer_free(tok);
  return e;
}

mp_error *conform_xl_case_te(conform *c) {
  mp_weights *w;
  xl_text x;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(load_text(w, &x));
  mp_error *e = NULL;
  for (int i = 0; !e; i++) {
    char pre[32], name[64];
    snprintf(pre, sizeof pre, "te.%d", i);
    snprintf(name, sizeof name, "%s.input_ids", pre);
    if (!mp_weights_find(c->golden, name)) {
      if (i == 0) e = mp_errorf("no te.0.input_ids in the golden file");
      break;
    }
    e = check_text_outputs(c, &x, pre, "", true);
  }
  if (!e) { /* "" encoded (diffusers with force_zeros_for_empty_prompt off) */
    int32_t ids1[T], ids2[T];
    const int D = x.cfg.clip.hidden + x.cfg.clip2.hidden, P = x.cfg.clip2.projection_dim;
    float *ctx = mp_alloc(sizeof(float) * T * (size_t)D), *pooled = mp_alloc(sizeof(float) * (size_t)P);
    if (!ctx || !pooled) e = mp_errorf("out of memory");
    if (!e) e = golden_ids(c, "te.neg_empty.input_ids", ids1);
    if (!e) e = golden_ids(c, "te.neg_empty.input_ids_2", ids2);
    if (!e) e = mp_xl_encode_chunk(x.clip, x.clip2, c->ctx->pool, ids1, ids2, 49407, NULL, ctx, pooled);
    if (!e) {
      conform_check(c, "te.neg_empty.context", ctx, (int64_t)T * D, CONFORM_FP32_REL, CONFORM_FP32_ABS);
      conform_check(c, "te.neg_empty.pooled", pooled, P, CONFORM_FP32_REL, CONFORM_FP32_ABS);
    }
    mp_free(ctx), mp_free(pooled);
  }
  free_text(&x);
  if (!e) e = check_tokenizers(c);
  return e;
}

/* <in_pre>.{x,t,context,text_embeds,time_ids} -> <pre>.<out>; the label vector is checked against
 * <pre>.add_embeds_in when the golden has it. */
static mp_error *xl_unet_run(conform *c, const mp_sd_config *cfg, mp_unet *u, const char *pre, const char *out) {
  char name[160];
  const mp_tensor *xt, *tt, *ct, *pt, *it;
  snprintf(name, sizeof name, "%s.x", pre);
  MP_TRY(conform_golden_f32(c, name, NULL, &xt));
  snprintf(name, sizeof name, "%s.t", pre);
  MP_TRY(conform_golden_f32(c, name, NULL, &tt));
  snprintf(name, sizeof name, "%s.context", pre);
  MP_TRY(conform_golden_f32(c, name, NULL, &ct));
  snprintf(name, sizeof name, "%s.text_embeds", pre);
  MP_TRY(conform_golden_f32(c, name, NULL, &pt));
  snprintf(name, sizeof name, "%s.time_ids", pre);
  MP_TRY(conform_golden_f32(c, name, NULL, &it));
  const int P = cfg->clip2.projection_dim, Y = cfg->unet.adm_in_channels;
  if (xt->ndim != 4 || ct->ndim != 3 || ct->shape[0] != xt->shape[0] || mp_tensor_numel(pt) != xt->shape[0] * P ||
      mp_tensor_numel(it) != xt->shape[0] * 6)
    return mp_errorf("%s: x [B,C,H,W], context [B,n,dim], text_embeds [B,%d], time_ids [B,6] expected", pre, P);
  const int batch = (int)xt->shape[0];
  float *y = mp_alloc(sizeof(float) * (size_t)batch * (size_t)Y), *eps = mp_alloc(sizeof(float) * (size_t)mp_tensor_numel(xt));
  mp_error *e = y && eps ? NULL : mp_errorf("out of memory");
  for (int b = 0; !e && b < batch; b++)
    mp_xl_label_vector((const float *)pt->data + (size_t)b * P, P, (const float *)it->data + 6 * b, cfg->time_id_dim, y + (size_t)b * Y);
  snprintf(name, sizeof name, "%s.add_embeds_in", pre);
  if (!e && mp_weights_find(c->golden, name)) conform_check(c, name, y, (int64_t)batch * Y, CONFORM_FP32_REL, CONFORM_FP32_ABS);
  mp_unet_inputs in = {.batch = batch, .h = (int)xt->shape[2], .w = (int)xt->shape[3], .x = xt->data, .t = tt->data,
                       .context = ct->data, .n_ctx = (int)ct->shape[1], .y = y};
  if (!e) e = mp_unet_run(u, c->ctx->pool, &in, eps);
  snprintf(name, sizeof name, "%s.%s", pre, out);
  if (!e) conform_check(c, name, eps, mp_tensor_numel(xt), CONFORM_FP32_REL, CONFORM_FP32_ABS);
  mp_free(y), mp_free(eps);
  return e;
}

mp_error *conform_xl_case_unet(conform *c) {
  mp_weights *w;
  mp_sd_config cfg;
  mp_unet *u;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  MP_TRY(mp_unet_load(w, MP_PREFIX_UNET, &cfg.unet, &u));
  mp_error *e = xl_unet_run(c, &cfg, u, "unet.a", "eps");
  if (!e) e = xl_unet_run(c, &cfg, u, "unet.b", "eps");
  mp_unet_free(u);
  return e;
}

/* lora: lora_tinyxl.safetensors (kohya SDXL names) merged at multipliers 1 and 0.5, patched tensors
 * kept in f32 (the golden merges in f32; an f16 merge is the reduced-precision path): UNet eps
 * (lora.unet.{a,b}) and both encoders' states and the pooled vector (lora.te.{0,1}), each against
 * diffusers' load_lora_weights and the manual merge. */
mp_error *conform_xl_case_lora(conform *c) {
  mp_weights *w, *lw = NULL;
  mp_sd_config cfg;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  const char *lora_file;
  mp_error *e = conform_open_lora(c, &lw, &lora_file);
  static const struct {
    float mult;
    const char *suffix;
  } runs[] = {{1.0f, "_m1"}, {0.5f, "_m0.5"}};
  for (int r = 0; r < 2 && !e; r++) {
    mp_lora_spec spec = {lw, lora_file, runs[r].mult, runs[r].mult};
    mp_lora_options opt = {.f32_patches = true};
    mp_weights *ov = NULL;
    mp_lora_report rep;
    if ((e = mp_lora_apply_opts(w, &cfg, &spec, 1, &opt, &ov, &rep))) break;
    if (rep.n_unmatched) conform_fail(c, "lora.modules", "%d LoRA modules matched nothing, e.g. %s", rep.n_unmatched, rep.unmatched[0]);
    printf("%-44s %d modules merged into %d tensors\n", "lora.modules", rep.n_modules, rep.n_patched_tensors);
    mp_lora_report_free(&rep);
    mp_unet *u = NULL;
    e = mp_unet_load(ov, MP_PREFIX_UNET, &cfg.unet, &u);
    char out[48];
    for (int manual = 0; manual < 2 && !e; manual++) {
      snprintf(out, sizeof out, "eps%s%s", runs[r].suffix, manual ? "_manual" : "");
      e = xl_unet_run(c, &cfg, u, "lora.unet.a", out);
      if (!e) e = xl_unet_run(c, &cfg, u, "lora.unet.b", out);
    }
    mp_unet_free(u);
    xl_text x = {0};
    if (!e) e = load_text(ov, &x);
    for (int i = 0; !e; i++) {
      char pre[32], name[64];
      snprintf(pre, sizeof pre, "lora.te.%d", i);
      snprintf(name, sizeof name, "%s.input_ids", pre);
      if (!mp_weights_find(c->golden, name)) {
        if (i == 0) e = mp_errorf("no lora.te.0.input_ids in the golden file");
        break;
      }
      for (int manual = 0; manual < 2 && !e; manual++) {
        snprintf(out, sizeof out, "%s%s", runs[r].suffix, manual ? "_manual" : "");
        e = check_text_outputs(c, &x, pre, out, false);
      }
    }
    free_text(&x);
    mp_weights_close(ov); /* the base checkpoint is untouched: dropping the overlay removes the LoRA */
  }
  mp_weights_close(lw);
  return e;
}
