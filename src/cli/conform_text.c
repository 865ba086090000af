/* Conformance cases of the text side: tokenizer (tok) and CLIP text encoder (te). */
#include <stdio.h>
#include <stdlib.h>

#include "cli/conform.h"
#include "models/clip.h"
#include "models/sd.h"

mp_error *conform_case_tok(conform *c) { (void)c; return mp_errorf("tokenizer not implemented yet"); }

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
