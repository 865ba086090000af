/* CLIP text encoder, as in transformers' CLIPTextModel (which SD 1.x checkpoints embed). */
#include "models/clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "models/text_layer.h"

typedef struct {
  mp_ln_weights layer_norm1, layer_norm2;
  mp_linear_weights q_proj, k_proj, v_proj, out_proj; /* self_attn.* */
  mp_linear_weights fc1, fc2;                         /* mlp.* */
} clip_layer;

struct mp_clip {
  mp_clip_config cfg;
  mp_tensor token_embedding;    /* [vocab, hidden], stored dtype (rows converted on lookup) */
  const float *position_embedding; /* [max_positions, hidden] */
  clip_layer *layers;
  mp_ln_weights final_layer_norm;
  mp_f32_copies f32;   /* f32 copies of the small weights stored in f16/bf16 */
  const mp_weights *w; /* what the matrices view, for handing their pages back after a layer */
};

static mp_error *load(mp_clip *c, const mp_weights *w, const char *p) {
  const mp_clip_config *cfg = &c->cfg;
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  mp_f32_copies *f32 = &c->f32;
  c->w = w;
  const mp_tensor *tok;
  char key[512];
  snprintf(key, sizeof key, "%sembeddings.token_embedding.weight", p);
  MP_TRY(mp_sd_weight(w, key, 2, (int64_t[]){cfg->vocab_size, D}, &tok));
  c->token_embedding = *tok;
  c->token_embedding.owns_data = false;
  MP_TRY(mp_bind_f32(f32, w, p, "embeddings.position_embedding.weight", 2, (int64_t[]){cfg->max_positions, D},
                     &c->position_embedding));
  for (int i = 0; i < cfg->layers; i++) {
    clip_layer *L = &c->layers[i];
    char base[128], name[192];
#define LAYER(field) (snprintf(name, sizeof name, "%s.%s", base, field), name)
    snprintf(base, sizeof base, "encoder.layers.%d", i);
    MP_TRY(mp_bind_ln(f32, w, p, LAYER("layer_norm1"), D, &L->layer_norm1));
    MP_TRY(mp_bind_ln(f32, w, p, LAYER("layer_norm2"), D, &L->layer_norm2));
    MP_TRY(mp_bind_linear(f32, w, p, LAYER("self_attn.q_proj"), D, D, &L->q_proj));
    MP_TRY(mp_bind_linear(f32, w, p, LAYER("self_attn.k_proj"), D, D, &L->k_proj));
    MP_TRY(mp_bind_linear(f32, w, p, LAYER("self_attn.v_proj"), D, D, &L->v_proj));
    MP_TRY(mp_bind_linear(f32, w, p, LAYER("self_attn.out_proj"), D, D, &L->out_proj));
    MP_TRY(mp_bind_linear(f32, w, p, LAYER("mlp.fc1"), F, D, &L->fc1));
    MP_TRY(mp_bind_linear(f32, w, p, LAYER("mlp.fc2"), D, F, &L->fc2));
#undef LAYER
  }
  return mp_bind_ln(f32, w, p, "final_layer_norm", D, &c->final_layer_norm);
}

mp_error *mp_clip_load(const mp_weights *w, const char *prefix, const mp_clip_config *cfg, mp_clip **out) {
  *out = NULL;
  if (cfg->hidden <= 0 || cfg->heads <= 0 || cfg->hidden % cfg->heads || cfg->layers <= 0 || cfg->layers > 256 ||
      cfg->max_positions <= 0 || cfg->intermediate <= 0 || cfg->vocab_size <= 0)
    return mp_errorf("invalid CLIP configuration (hidden %d, heads %d, layers %d)", cfg->hidden, cfg->heads, cfg->layers);
  mp_clip *c = calloc(1, sizeof *c);
  if (!c) return mp_errorf("out of memory");
  c->cfg = *cfg;
  c->layers = calloc((size_t)cfg->layers, sizeof *c->layers);
  mp_error *e = c->layers ? load(c, w, prefix) : mp_errorf("out of memory");
  if (e) {
    mp_clip_free(c);
    return mp_error_wrap(e, "loading the CLIP text encoder");
  }
  *out = c;
  return NULL;
}

void mp_clip_free(mp_clip *c) {
  if (!c) return;
  mp_f32_copies_free(&c->f32);
  free(c->layers);
  free(c);
}

const mp_clip_config *mp_clip_get_config(const mp_clip *c) { return &c->cfg; }

mp_error *mp_clip_embed_tokens(const mp_clip *c, const int32_t *ids, int n, float *out) {
  return mp_embedding(out, ids, n, &c->token_embedding);
}

mp_error *mp_clip_encode_embeds(const mp_clip *c, mp_pool *pool, const float *embeds, int n, int n_layers, bool final_ln,
                                float *out) {
  const mp_clip_config *cfg = &c->cfg;
  const int64_t D = cfg->hidden;
  if (n <= 0 || n > cfg->max_positions)
    return mp_errorf("text encoder: %d tokens, expected 1..%d", n, cfg->max_positions);
  if (n_layers < 1 || n_layers > cfg->layers)
    return mp_errorf("text encoder: cannot stop after %d layers (model has %d)", n_layers, cfg->layers);

  mp_text_activations a;
  if (!mp_text_activations_alloc(cfg, n, &a)) return mp_errorf("out of memory in the text encoder");
  mp_error *e = NULL;

  /* token embeddings + learned positions */
  for (int64_t i = 0; i < n * D; i++) a.x[i] = embeds[i] + c->position_embedding[i];

  for (int l = 0; l < n_layers && !e; l++) {
    const clip_layer *L = &c->layers[l];
    const mp_text_layer layer = {.ln_attn = &L->layer_norm1, .ln_mlp = &L->layer_norm2, .q = &L->q_proj, .k = &L->k_proj,
                                 .v = &L->v_proj, .out = &L->out_proj, .fc_in = &L->fc1, .fc_out = &L->fc2};
    /* x += out_proj(causal_self_attention(layer_norm1(x))); x += fc2(act(fc1(layer_norm2(x)))) */
    e = mp_text_layer_forward(pool, &layer, cfg, n, &a);
    mp_text_layer_release(c->w, &layer);
  }
  if (!e) {
    if (final_ln)
      mp_layer_norm(pool, out, a.x, n, D, c->final_layer_norm.weight, c->final_layer_norm.bias, cfg->ln_eps);
    else
      memcpy(out, a.x, sizeof(float) * (size_t)(n * D));
  }
  mp_free(a.block);
  return e;
}

mp_error *mp_clip_encode(const mp_clip *c, mp_pool *pool, const int32_t *ids, int n, int clip_skip, float *out) {
  if (clip_skip < 1 || clip_skip > c->cfg.layers) return mp_errorf("clip skip %d is out of range 1..%d", clip_skip, c->cfg.layers);
  if (n <= 0 || n > c->cfg.max_positions) return mp_errorf("text encoder: %d tokens, expected 1..%d", n, c->cfg.max_positions);
  float *emb = mp_alloc(sizeof(float) * (size_t)n * (size_t)c->cfg.hidden);
  if (!emb) return mp_errorf("out of memory");
  mp_error *e = mp_clip_embed_tokens(c, ids, n, emb);
  if (!e) e = mp_clip_encode_embeds(c, pool, emb, n, c->cfg.layers - (clip_skip - 1), true, out);
  mp_free(emb);
  return e;
}
