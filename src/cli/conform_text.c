/* Conformance cases of the text side: tokenizer (tok) and CLIP text encoder (te). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "io/diffusers.h"
#include "models/clip.h"
#include "models/sd.h"
#include "prompt/tokenizer.h"

/* tok: the manifest holds the prompts and the expected ids/tokens itself (no tensors). Ids and
 * token strings must match exactly. */
static bool tok_compare_ids(conform *c, const char *name, const cJSON *want, const int32_t *got, size_t n) {
  bool ok = cJSON_IsArray(want) && (size_t)cJSON_GetArraySize(want) == n;
  size_t i = 0;
  for (const cJSON *x = want ? want->child : NULL; ok && x; x = x->next, i++) ok = cJSON_IsNumber(x) && x->valueint == got[i];
  c->n_checked++;
  if (!ok) c->n_failed++;
  printf("%-44s %s%s\n", name, ok ? "exact  " : "mismatch  ", ok ? "PASS" : "FAIL");
  return ok;
}

mp_error *conform_case_tok(conform *c) {
  const cJSON *src = cJSON_GetObjectItemCaseSensitive(c->manifest, "vocab_source");
  const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(c->manifest, "prompts");
  if (!cJSON_IsString(src) || !cJSON_IsArray(prompts)) return mp_errorf("tok.json needs \"vocab_source\" and \"prompts\"");
  /* With --ckpt naming a diffusers folder, its tokenizer/ (vocab.json + merges.txt) is the one to check. */
  char *path = NULL;
  if (c->ckpt_override) MP_TRY(mp_diffusers_tokenizer(c->ckpt_override, "tokenizer", &path));
  if (path) printf("tokenizer: %s\n", path);
  if (!path && !(path = conform_path(c, src->valuestring))) return mp_errorf("out of memory");
  mp_tokenizer *tok = NULL;
  mp_error *e = mp_tokenizer_load(path, &tok);
  free(path);
  if (e) return e;
  int k = 0;
  for (const cJSON *p = prompts->child; p; p = p->next, k++) {
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "prompt");
    if (!cJSON_IsString(text)) {
      e = mp_errorf("tok.json prompts[%d] has no \"prompt\" string", k);
      break;
    }
    int32_t padded[MP_CLIP_MAX_LENGTH], *ids = NULL;
    size_t n = 0;
    e = mp_tokenize_padded(tok, text->valuestring, padded, NULL);
    if (!e) e = mp_tokenize(tok, text->valuestring, &ids, &n);
    if (e) break;
    int32_t *full = malloc((n + 2) * sizeof *full);
    if (!full) {
      free(ids);
      e = mp_errorf("out of memory");
      break;
    }
    full[0] = mp_tokenizer_bos(tok);
    if (n) memcpy(full + 1, ids, n * sizeof *ids);
    full[n + 1] = mp_tokenizer_eos(tok);
    char name[64];
    snprintf(name, sizeof name, "tok.%d.input_ids", k);
    tok_compare_ids(c, name, cJSON_GetObjectItemCaseSensitive(p, "input_ids"), padded, MP_CLIP_MAX_LENGTH);
    snprintf(name, sizeof name, "tok.%d.untruncated_ids", k);
    tok_compare_ids(c, name, cJSON_GetObjectItemCaseSensitive(p, "untruncated_ids"), full, n + 2);
    const cJSON *want = cJSON_GetObjectItemCaseSensitive(p, "tokens");
    bool ok = cJSON_IsArray(want) && (size_t)cJSON_GetArraySize(want) == n + 2;
    size_t i = 0;
    for (const cJSON *x = want ? want->child : NULL; ok && x; x = x->next, i++) {
      const char *t = mp_tokenizer_token_text(tok, full[i]);
      ok = cJSON_IsString(x) && t && strcmp(t, x->valuestring) == 0;
    }
    snprintf(name, sizeof name, "tok.%d.tokens", k);
    c->n_checked++;
    if (!ok) c->n_failed++;
    printf("%-44s %s%s\n", name, ok ? "exact  " : "mismatch  ", ok ? "PASS" : "FAIL");
    free(full);
    free(ids);
  }
  mp_tokenizer_free(tok);
  return e;
}

/* te.<i>.input_ids -> last_hidden_state, penultimate (hidden_states[-2]) and penultimate_ln (clip skip 2). */
mp_error *conform_case_te(conform *c) {
  mp_weights *w;
  mp_sd_config cfg;
  mp_clip *clip;
  MP_TRY(conform_checkpoint(c, &w));
  MP_TRY(mp_sd_config_detect(w, NULL, &cfg));
  MP_TRY(mp_clip_load(w, MP_PREFIX_CLIP, &cfg.clip, &clip));
  const int D = cfg.clip.hidden;
  mp_error *e = NULL;
  for (int i = 0; !e; i++) {
    char name[128];
    snprintf(name, sizeof name, "te.%d.input_ids", i);
    const mp_tensor *ids_t;
    if (!c->golden || !mp_weights_find(c->golden, name)) {
      if (i == 0) e = mp_errorf("no te.0.input_ids in the golden file");
      break;
    }
    MP_TRY(conform_tensor(c, name, &ids_t));
    int n = (int)mp_tensor_numel(ids_t);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    float *emb = mp_alloc(sizeof(float) * (size_t)n * D), *out = mp_alloc(sizeof(float) * (size_t)n * D);
    if (!ids || !emb || !out) e = mp_errorf("out of memory");
    for (int k = 0; !e && k < n; k++)
      ids[k] = ids_t->dtype == MP_I64 ? (int32_t)((const int64_t *)ids_t->data)[k] : ((const int32_t *)ids_t->data)[k];
    if (!e) e = mp_clip_embed_tokens(clip, ids, n, emb);
    static const struct {
      const char *suffix;
      int skip_layers;
      bool final_ln;
    } outputs[] = {{"last_hidden_state", 0, true}, {"penultimate", 1, false}, {"penultimate_ln", 1, true}};
    for (size_t o = 0; !e && o < sizeof outputs / sizeof *outputs; o++) {
      e = mp_clip_encode_embeds(clip, c->ctx->pool, emb, n, cfg.clip.layers - outputs[o].skip_layers, outputs[o].final_ln, out);
      snprintf(name, sizeof name, "te.%d.%s", i, outputs[o].suffix);
      if (!e) conform_check(c, name, out, (int64_t)n * D, CONFORM_FP32_REL, CONFORM_FP32_ABS);
    }
    free(ids);
    mp_free(emb);
    mp_free(out);
  }
  mp_clip_free(clip);
  return e;
}
