/* CLIP text encoder, as in transformers' CLIPTextModel (which SD 1.x checkpoints embed). */
#include "models/clip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"

typedef struct {
  const float *weight, *bias;
} ln_params;

typedef struct {
  mp_tensor weight, bias; /* f32 views, [out, in] and [out] */
} linear_params;

typedef struct {
  ln_params ln1, ln2;
  linear_params q, k, v, out, fc1, fc2;
} clip_layer;

struct mp_clip {
  mp_clip_config cfg;
  mp_tensor token_embedding;    /* [vocab, hidden], stored dtype (rows converted on lookup) */
  const float *position_embedding; /* [max_positions, hidden] */
  clip_layer *layers;
  ln_params final_ln;
  /* f32 copies of weights stored in f16/bf16: converted once at load, owned here */
  float **owned;
  int n_owned, cap_owned;
};

static mp_error *own(mp_clip *c, float *p) {
  if (c->n_owned == c->cap_owned) {
    int cap = c->cap_owned ? 2 * c->cap_owned : 64;
    float **n = realloc(c->owned, (size_t)cap * sizeof *n);
    if (!n) {
      mp_free(p);
      return mp_errorf("out of memory");
    }
    c->owned = n, c->cap_owned = cap;
  }
  c->owned[c->n_owned++] = p;
  return NULL;
}

/* Look up `prefix+name`, check its shape, and return f32 data (a view, or a converted copy). */
static mp_error *bind(mp_clip *c, const mp_weights *w, const char *prefix, const char *name, int ndim, const int64_t *shape,
                      const float **out) {
  char key[512];
  snprintf(key, sizeof key, "%s%s", prefix, name);
  const mp_tensor *t;
  MP_TRY(mp_sd_weight(w, key, ndim, shape, &t));
  float *copy;
  MP_TRY(mp_weight_f32(t, out, &copy));
  return copy ? own(c, copy) : NULL;
}

static mp_error *bind_ln(mp_clip *c, const mp_weights *w, const char *prefix, const char *name, ln_params *ln) {
  char key[256];
  int64_t d[1] = {c->cfg.hidden};
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(bind(c, w, prefix, key, 1, d, &ln->weight));
  snprintf(key, sizeof key, "%s.bias", name);
  return bind(c, w, prefix, key, 1, d, &ln->bias);
}

static mp_error *bind_linear(mp_clip *c, const mp_weights *w, const char *prefix, const char *name, int64_t out, int64_t in,
                             linear_params *lin) {
  char key[256];
  const float *wt, *b;
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(bind(c, w, prefix, key, 2, (int64_t[]){out, in}, &wt));
  snprintf(key, sizeof key, "%s.bias", name);
  MP_TRY(bind(c, w, prefix, key, 1, (int64_t[]){out}, &b));
  mp_tensor_view(&lin->weight, MP_F32, 2, (int64_t[]){out, in}, (void *)wt);
  mp_tensor_view(&lin->bias, MP_F32, 1, (int64_t[]){out}, (void *)b);
  return NULL;
}

static mp_error *load(mp_clip *c, const mp_weights *w, const char *p) {
  const mp_clip_config *cfg = &c->cfg;
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  const mp_tensor *tok;
  char key[512];
  snprintf(key, sizeof key, "%sembeddings.token_embedding.weight", p);
  MP_TRY(mp_sd_weight(w, key, 2, (int64_t[]){cfg->vocab_size, D}, &tok));
  c->token_embedding = *tok;
  c->token_embedding.owns_data = false;
  MP_TRY(bind(c, w, p, "embeddings.position_embedding.weight", 2, (int64_t[]){cfg->max_positions, D}, &c->position_embedding));
  for (int i = 0; i < cfg->layers; i++) {
    clip_layer *L = &c->layers[i];
    char base[128], name[192];
#define LAYER(field) (snprintf(name, sizeof name, "%s.%s", base, field), name)
    snprintf(base, sizeof base, "encoder.layers.%d", i);
    MP_TRY(bind_ln(c, w, p, LAYER("layer_norm1"), &L->ln1));
    MP_TRY(bind_ln(c, w, p, LAYER("layer_norm2"), &L->ln2));
    MP_TRY(bind_linear(c, w, p, LAYER("self_attn.q_proj"), D, D, &L->q));
    MP_TRY(bind_linear(c, w, p, LAYER("self_attn.k_proj"), D, D, &L->k));
    MP_TRY(bind_linear(c, w, p, LAYER("self_attn.v_proj"), D, D, &L->v));
    MP_TRY(bind_linear(c, w, p, LAYER("self_attn.out_proj"), D, D, &L->out));
    MP_TRY(bind_linear(c, w, p, LAYER("mlp.fc1"), F, D, &L->fc1));
    MP_TRY(bind_linear(c, w, p, LAYER("mlp.fc2"), D, F, &L->fc2));
#undef LAYER
  }
  return bind_ln(c, w, p, "final_layer_norm", &c->final_ln);
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
  for (int i = 0; i < c->n_owned; i++) mp_free(c->owned[i]);
  free(c->owned);
  free(c->layers);
  free(c);
}

const mp_clip_config *mp_clip_get_config(const mp_clip *c) { return &c->cfg; }

mp_error *mp_clip_embed_tokens(const mp_clip *c, const int32_t *ids, int n, float *out) {
  return mp_embedding(out, ids, n, &c->token_embedding);
}

/* Activations for one forward pass, allocated together. */
typedef struct {
  float *x, *h, *q, *k, *v, *att, *mlp;
} clip_buffers;

mp_error *mp_clip_encode_embeds(const mp_clip *c, mp_pool *pool, const float *embeds, int n, int n_layers, bool final_ln,
                                float *out) {
  const mp_clip_config *cfg = &c->cfg;
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  if (n <= 0 || n > cfg->max_positions)
    return mp_errorf("text encoder: %d tokens, expected 1..%d", n, cfg->max_positions);
  if (n_layers < 1 || n_layers > cfg->layers)
    return mp_errorf("text encoder: cannot stop after %d layers (model has %d)", n_layers, cfg->layers);

  float *mem = mp_alloc(sizeof(float) * (size_t)n * (size_t)(6 * D + F));
  if (!mem) return mp_errorf("out of memory in the text encoder");
  clip_buffers b = {mem, mem + n * D, mem + 2 * n * D, mem + 3 * n * D, mem + 4 * n * D, mem + 5 * n * D, mem + 6 * n * D};
  mp_error *e = NULL;

  /* token embeddings + learned positions */
  for (int64_t i = 0; i < n * D; i++) b.x[i] = embeds[i] + c->position_embedding[i];

  for (int l = 0; l < n_layers && !e; l++) {
    const clip_layer *L = &c->layers[l];
    /* x += out_proj(causal_self_attention(ln1(x))) */
    mp_layer_norm(pool, b.h, b.x, n, D, L->ln1.weight, L->ln1.bias, cfg->ln_eps);
    if ((e = mp_linear(pool, b.q, b.h, n, &L->q.weight, &L->q.bias))) break;
    if ((e = mp_linear(pool, b.k, b.h, n, &L->k.weight, &L->k.bias))) break;
    if ((e = mp_linear(pool, b.v, b.h, n, &L->v.weight, &L->v.bias))) break;
    mp_attention(pool, b.att, b.q, b.k, b.v, n, n, cfg->heads, (int)(D / cfg->heads), true);
    if ((e = mp_linear(pool, b.h, b.att, n, &L->out.weight, &L->out.bias))) break;
    mp_add(b.x, b.x, b.h, n * D);
    /* x += fc2(act(fc1(ln2(x)))) */
    mp_layer_norm(pool, b.h, b.x, n, D, L->ln2.weight, L->ln2.bias, cfg->ln_eps);
    if ((e = mp_linear(pool, b.mlp, b.h, n, &L->fc1.weight, &L->fc1.bias))) break;
    if (cfg->quick_gelu)
      mp_quick_gelu(b.mlp, n * F);
    else
      mp_gelu(b.mlp, n * F);
    if ((e = mp_linear(pool, b.h, b.mlp, n, &L->fc2.weight, &L->fc2.bias))) break;
    mp_add(b.x, b.x, b.h, n * D);
  }
  if (!e) {
    if (final_ln)
      mp_layer_norm(pool, out, b.x, n, D, c->final_ln.weight, c->final_ln.bias, cfg->ln_eps);
    else
      memcpy(out, b.x, sizeof(float) * (size_t)(n * D));
  }
  mp_free(mem);
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
