/* OpenCLIP text transformer (open_clip.model.CLIP.encode_text), read from its own key layout. */
#include "models/openclip.h"

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
  ln_params ln_1, ln_2;
  linear_params q, k, v; /* row blocks of attn.in_proj_weight / in_proj_bias */
  linear_params out_proj, c_fc, c_proj;
} resblock;

struct mp_openclip {
  mp_clip_config cfg;
  mp_tensor token_embedding;       /* [vocab, hidden], stored dtype */
  const float *positional_embedding; /* [max_positions, hidden] */
  resblock *blocks;
  ln_params ln_final;
  const float *text_projection; /* [hidden, projection_dim]: pooled = x @ P */
  float **owned;                /* f32 copies of f16/bf16 weights */
  int n_owned, cap_owned;
};

static mp_error *own(mp_openclip *m, float *p) {
  if (m->n_owned == m->cap_owned) {
    int cap = m->cap_owned ? 2 * m->cap_owned : 64;
    float **n = realloc(m->owned, (size_t)cap * sizeof *n);
    if (!n) {
      mp_free(p);
      return mp_errorf("out of memory");
    }
    m->owned = n, m->cap_owned = cap;
  }
  m->owned[m->n_owned++] = p;
  return NULL;
}

/* prefix+name, shape-checked, as f32 (a view or an owned converted copy). */
static mp_error *bind(mp_openclip *m, const mp_weights *w, const char *prefix, const char *name, int ndim, const int64_t *shape,
                      const float **out) {
  char key[512];
  snprintf(key, sizeof key, "%s%s", prefix, name);
  const mp_tensor *t;
  MP_TRY(mp_sd_weight(w, key, ndim, shape, &t));
  float *copy;
  MP_TRY(mp_weight_f32(t, out, &copy));
  return copy ? own(m, copy) : NULL;
}

static mp_error *bind_ln(mp_openclip *m, const mp_weights *w, const char *prefix, const char *name, ln_params *ln) {
  char key[256];
  int64_t d[1] = {m->cfg.hidden};
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(bind(m, w, prefix, key, 1, d, &ln->weight));
  snprintf(key, sizeof key, "%s.bias", name);
  return bind(m, w, prefix, key, 1, d, &ln->bias);
}

static void view_linear(linear_params *l, const float *wt, const float *b, int64_t out, int64_t in) {
  mp_tensor_view(&l->weight, MP_F32, 2, (int64_t[]){out, in}, (void *)wt);
  mp_tensor_view(&l->bias, MP_F32, 1, (int64_t[]){out}, (void *)b);
}

static mp_error *bind_linear(mp_openclip *m, const mp_weights *w, const char *prefix, const char *name, int64_t out, int64_t in,
                             linear_params *l) {
  char key[256];
  const float *wt, *b;
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(bind(m, w, prefix, key, 2, (int64_t[]){out, in}, &wt));
  snprintf(key, sizeof key, "%s.bias", name);
  MP_TRY(bind(m, w, prefix, key, 1, (int64_t[]){out}, &b));
  view_linear(l, wt, b, out, in);
  return NULL;
}

static mp_error *load(mp_openclip *m, const mp_weights *w, const char *p) {
  const mp_clip_config *cfg = &m->cfg;
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  char key[512];
  const mp_tensor *tok;
  snprintf(key, sizeof key, "%stoken_embedding.weight", p);
  MP_TRY(mp_sd_weight(w, key, 2, (int64_t[]){cfg->vocab_size, D}, &tok));
  m->token_embedding = *tok;
  m->token_embedding.owns_data = false;
  MP_TRY(bind(m, w, p, "positional_embedding", 2, (int64_t[]){cfg->max_positions, D}, &m->positional_embedding));
  for (int i = 0; i < cfg->layers; i++) {
    resblock *B = &m->blocks[i];
    char base[96], name[192];
#define FIELD(f) (snprintf(name, sizeof name, "%s.%s", base, f), name)
    snprintf(base, sizeof base, "transformer.resblocks.%d", i);
    MP_TRY(bind_ln(m, w, p, FIELD("ln_1"), &B->ln_1));
    MP_TRY(bind_ln(m, w, p, FIELD("ln_2"), &B->ln_2));
    const float *in_w, *in_b;
    MP_TRY(bind(m, w, p, FIELD("attn.in_proj_weight"), 2, (int64_t[]){3 * D, D}, &in_w));
    MP_TRY(bind(m, w, p, FIELD("attn.in_proj_bias"), 1, (int64_t[]){3 * D}, &in_b));
    view_linear(&B->q, in_w, in_b, D, D);
    view_linear(&B->k, in_w + D * D, in_b + D, D, D);
    view_linear(&B->v, in_w + 2 * D * D, in_b + 2 * D, D, D);
    MP_TRY(bind_linear(m, w, p, FIELD("attn.out_proj"), D, D, &B->out_proj));
    MP_TRY(bind_linear(m, w, p, FIELD("mlp.c_fc"), F, D, &B->c_fc));
    MP_TRY(bind_linear(m, w, p, FIELD("mlp.c_proj"), D, F, &B->c_proj));
#undef FIELD
  }
  MP_TRY(bind_ln(m, w, p, "ln_final", &m->ln_final));
  return bind(m, w, p, "text_projection", 2, (int64_t[]){D, cfg->projection_dim}, &m->text_projection);
}

mp_error *mp_openclip_load(const mp_weights *w, const char *prefix, const mp_clip_config *cfg, mp_openclip **out) {
  *out = NULL;
  if (cfg->hidden <= 0 || cfg->heads <= 0 || cfg->hidden % cfg->heads || cfg->layers < 2 || cfg->layers > 256 ||
      cfg->max_positions <= 0 || cfg->intermediate <= 0 || cfg->vocab_size <= 0 || cfg->projection_dim <= 0)
    return mp_errorf("invalid OpenCLIP configuration (hidden %d, heads %d, layers %d, projection %d)", cfg->hidden, cfg->heads,
                     cfg->layers, cfg->projection_dim);
  mp_openclip *m = calloc(1, sizeof *m);
  if (!m) return mp_errorf("out of memory");
  m->cfg = *cfg;
  m->blocks = calloc((size_t)cfg->layers, sizeof *m->blocks);
  mp_error *e = m->blocks ? load(m, w, prefix) : mp_errorf("out of memory");
  if (e) {
    mp_openclip_free(m);
    return mp_error_wrap(e, "loading the OpenCLIP text encoder");
  }
  *out = m;
  return NULL;
}

void mp_openclip_free(mp_openclip *m) {
  if (!m) return;
  for (int i = 0; i < m->n_owned; i++) mp_free(m->owned[i]);
  free(m->owned);
  free(m->blocks);
  free(m);
}

const mp_clip_config *mp_openclip_get_config(const mp_openclip *m) { return &m->cfg; }

mp_error *mp_openclip_embed_tokens(const mp_openclip *m, const int32_t *ids, int n, float *out) {
  return mp_embedding(out, ids, n, &m->token_embedding);
}

int mp_openclip_eos_index(const int32_t *ids, int n, int32_t eos_id) {
  for (int i = 0; i < n; i++)
    if (ids[i] == eos_id) return i;
  return n - 1;
}

mp_error *mp_openclip_encode_embeds(const mp_openclip *m, mp_pool *pool, const float *embeds, int n, int eos, float *penultimate,
                                    float *last, float *pooled) {
  const mp_clip_config *cfg = &m->cfg;
  const int64_t D = cfg->hidden, F = cfg->intermediate, P = cfg->projection_dim;
  if (n <= 0 || n > cfg->max_positions) return mp_errorf("OpenCLIP text encoder: %d tokens, expected 1..%d", n, cfg->max_positions);
  if (eos < 0 || eos >= n) return mp_errorf("OpenCLIP text encoder: EOS position %d outside %d tokens", eos, n);
  /* Only the penultimate state needed: the last layer need not run. */
  const int n_layers = (last || pooled) ? cfg->layers : cfg->layers - 1;
  float *mem = mp_alloc(sizeof(float) * (size_t)n * (size_t)(6 * D + F));
  if (!mem) return mp_errorf("out of memory in the OpenCLIP text encoder");
  float *x = mem, *h = x + n * D, *q = h + n * D, *k = q + n * D, *v = k + n * D, *att = v + n * D, *mlp = att + n * D;
  mp_error *e = NULL;
  for (int64_t i = 0; i < n * D; i++) x[i] = embeds[i] + m->positional_embedding[i];
  for (int l = 0; l < n_layers && !e; l++) {
    const resblock *B = &m->blocks[l];
    /* x += out_proj(causal_attention(ln_1(x))) */
    mp_layer_norm(pool, h, x, n, D, B->ln_1.weight, B->ln_1.bias, cfg->ln_eps);
    if ((e = mp_linear(pool, q, h, n, &B->q.weight, &B->q.bias))) break;
    if ((e = mp_linear(pool, k, h, n, &B->k.weight, &B->k.bias))) break;
    if ((e = mp_linear(pool, v, h, n, &B->v.weight, &B->v.bias))) break;
    mp_attention(pool, att, q, k, v, n, n, cfg->heads, (int)(D / cfg->heads), true);
    if ((e = mp_linear(pool, h, att, n, &B->out_proj.weight, &B->out_proj.bias))) break;
    mp_add(x, x, h, n * D);
    /* x += c_proj(GELU(c_fc(ln_2(x)))) */
    mp_layer_norm(pool, h, x, n, D, B->ln_2.weight, B->ln_2.bias, cfg->ln_eps);
    if ((e = mp_linear(pool, mlp, h, n, &B->c_fc.weight, &B->c_fc.bias))) break;
    if (cfg->quick_gelu) mp_quick_gelu(mlp, n * F);
    else mp_gelu(mlp, n * F);
    if ((e = mp_linear(pool, h, mlp, n, &B->c_proj.weight, &B->c_proj.bias))) break;
    mp_add(x, x, h, n * D);
    if (l == cfg->layers - 2 && penultimate) memcpy(penultimate, x, sizeof(float) * (size_t)(n * D));
  }
  if (!e && (last || pooled)) {
    mp_layer_norm(pool, h, x, n, D, m->ln_final.weight, m->ln_final.bias, cfg->ln_eps);
    if (last) memcpy(last, h, sizeof(float) * (size_t)(n * D));
    if (pooled) { /* pooled[j] = sum_i h[eos, i] P[i, j], accumulated in double */
      const float *row = h + (int64_t)eos * D;
      for (int64_t j = 0; j < P; j++) {
        double s = 0;
        for (int64_t i = 0; i < D; i++) s += (double)row[i] * m->text_projection[i * P + j];
        pooled[j] = (float)s;
      }
    }
  }
  mp_free(mem);
  return e;
}
