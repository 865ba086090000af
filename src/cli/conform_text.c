/* Conformance cases of the text side: tokenizer (tok) and CLIP text encoder (te). */
#include "cli/conform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
  char *path = conform_path(c, src->valuestring);
  if (!path) return mp_errorf("out of memory");
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
    memcpy(full + 1, ids, n * sizeof *ids);
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
mp_error *conform_case_te(conform *c) { (void)c; return mp_errorf("text encoder not implemented yet"); }
