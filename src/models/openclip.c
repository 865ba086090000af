/* OpenCLIP text transformer (open_clip.model.CLIP.encode_text), read from its own key layout. */
#include "models/openclip.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "models/text_layer.h"

typedef struct {
  mp_ln_weights ln_1, ln_2;
  mp_linear_weights q, k, v; /* row blocks of attn.in_proj_weight / in_proj_bias */
  mp_linear_weights out_proj; /* attn.out_proj */
  mp_linear_weights c_fc, c_proj; /* mlp.* */
} resblock;

struct mp_openclip {
  mp_clip_config cfg;
  mp_tensor token_embedding;       /* [vocab, hidden], stored dtype */
  const float *positional_embedding; /* [max_positions, hidden] */
  resblock *blocks;
  mp_ln_weights ln_final;
  const float *text_projection; /* [hidden, projection_dim]: pooled = x @ P */
  mp_f32_copies f32;            /* f32 copies of the small f16/bf16 weights */
  const mp_weights *w;          /* what the matrices view, for handing their pages back after a block */
};

static mp_error *load(mp_openclip *m, const mp_weights *w, const char *p) {
  const mp_clip_config *cfg = &m->cfg;
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  mp_f32_copies *f32 = &m->f32;
  m->w = w;
  char key[512];
  const mp_tensor *tok;
  snprintf(key, sizeof key, "%stoken_embedding.weight", p);
  MP_TRY(mp_sd_weight(w, key, 2, (int64_t[]){cfg->vocab_size, D}, &tok));
  m->token_embedding = *tok;
  m->token_embedding.owns_data = false;
  MP_TRY(mp_bind_f32(f32, w, p, "positional_embedding", 2, (int64_t[]){cfg->max_positions, D}, &m->positional_embedding));
  for (int i = 0; i < cfg->layers; i++) {
    resblock *B = &m->blocks[i];
    char base[96], name[192];
#define FIELD(f) (snprintf(name, sizeof name, "%s.%s", base, f), name)
    snprintf(base, sizeof base, "transformer.resblocks.%d", i);
    MP_TRY(mp_bind_ln(f32, w, p, FIELD("ln_1"), D, &B->ln_1));
    MP_TRY(mp_bind_ln(f32, w, p, FIELD("ln_2"), D, &B->ln_2));
    const mp_tensor *in_w;
    const float *in_b;
    MP_TRY(mp_bind_matrix(w, p, FIELD("attn.in_proj_weight"), 3 * D, D, &in_w));
    MP_TRY(mp_bind_f32(f32, w, p, FIELD("attn.in_proj_bias"), 1, (int64_t[]){3 * D}, &in_b));
    mp_linear_rows(&B->q, in_w, 0, D, in_b);
    mp_linear_rows(&B->k, in_w, D, D, in_b + D);
    mp_linear_rows(&B->v, in_w, 2 * D, D, in_b + 2 * D);
    MP_TRY(mp_bind_linear(f32, w, p, FIELD("attn.out_proj"), D, D, &B->out_proj));
    MP_TRY(mp_bind_linear(f32, w, p, FIELD("mlp.c_fc"), F, D, &B->c_fc));
    MP_TRY(mp_bind_linear(f32, w, p, FIELD("mlp.c_proj"), D, F, &B->c_proj));
#undef FIELD
  }
  MP_TRY(mp_bind_ln(f32, w, p, "ln_final", D, &m->ln_final));
  return mp_bind_f32(f32, w, p, "text_projection", 2, (int64_t[]){D, cfg->projection_dim}, &m->text_projection);
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
  mp_f32_copies_free(&m->f32);
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
  const int64_t D = cfg->hidden, P = cfg->projection_dim;
  if (n <= 0 || n > cfg->max_positions) return mp_errorf("OpenCLIP text encoder: %d tokens, expected 1..%d", n, cfg->max_positions);
  if (eos < 0 || eos >= n) return mp_errorf("OpenCLIP text encoder: EOS position %d outside %d tokens", eos, n);
  /* Only the penultimate state needed: the last layer need not run. */
  const int n_layers = (last || pooled) ? cfg->layers : cfg->layers - 1;
  mp_text_activations a;
  if (!mp_text_activations_alloc(cfg, n, &a)) return mp_errorf("out of memory in the OpenCLIP text encoder");
  float *x = a.x, *h = a.h;
  mp_error *e = NULL;
  for (int64_t i = 0; i < n * D; i++) x[i] = embeds[i] + m->positional_embedding[i];
  for (int l = 0; l < n_layers && !e; l++) {
    const resblock *B = &m->blocks[l];
    const mp_text_layer layer = {.ln_attn = &B->ln_1, .ln_mlp = &B->ln_2, .q = &B->q, .k = &B->k, .v = &B->v,
                                 .out = &B->out_proj, .fc_in = &B->c_fc, .fc_out = &B->c_proj};
    /* x += out_proj(causal_attention(ln_1(x))); x += c_proj(act(c_fc(ln_2(x)))) */
    e = mp_text_layer_forward(pool, &layer, cfg, n, &a);
    mp_text_layer_release(m->w, &layer);
    if (!e && l == cfg->layers - 2 && penultimate) memcpy(penultimate, x, sizeof(float) * (size_t)(n * D));
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
  mp_free(a.block);
  return e;
}
