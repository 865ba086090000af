/* The transformer layer and weight binding that CLIP and OpenCLIP share (see text_layer.h). */
#include "models/text_layer.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/ops.h"

void mp_f32_copies_free(mp_f32_copies *c) {
  for (int i = 0; i < c->n_owned; i++) mp_free(c->owned[i]);
  free(c->owned);
  *c = (mp_f32_copies){0};
}

static mp_error *own(mp_f32_copies *c, float *p) {
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

mp_error *mp_bind_f32(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int ndim,
                      const int64_t *shape, const float **out) {
  char key[512];
  snprintf(key, sizeof key, "%s%s", prefix, name);
  const mp_tensor *t;
  MP_TRY(mp_sd_weight(w, key, ndim, shape, &t));
  float *copy;
  MP_TRY(mp_weight_f32(t, out, &copy));
  return copy ? own(copies, copy) : NULL;
}

mp_error *mp_bind_ln(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t dim,
                     mp_ln_weights *ln) {
  char key[256];
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(mp_bind_f32(copies, w, prefix, key, 1, (int64_t[]){dim}, &ln->weight));
  snprintf(key, sizeof key, "%s.bias", name);
  return mp_bind_f32(copies, w, prefix, key, 1, (int64_t[]){dim}, &ln->bias);
}

void mp_linear_view(mp_linear_weights *lin, const float *weight, const float *bias, int64_t out, int64_t in) {
  mp_tensor_view(&lin->weight, MP_F32, 2, (int64_t[]){out, in}, (void *)weight);
  mp_tensor_view(&lin->bias, MP_F32, 1, (int64_t[]){out}, (void *)bias);
}

mp_error *mp_bind_linear(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t out, int64_t in,
                         mp_linear_weights *lin) {
  char key[256];
  const float *wt, *b;
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(mp_bind_f32(copies, w, prefix, key, 2, (int64_t[]){out, in}, &wt));
  snprintf(key, sizeof key, "%s.bias", name);
  MP_TRY(mp_bind_f32(copies, w, prefix, key, 1, (int64_t[]){out}, &b));
  mp_linear_view(lin, wt, b, out, in);
  return NULL;
}

bool mp_text_activations_alloc(const mp_clip_config *cfg, int n, mp_text_activations *a) {
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  float *mem = mp_alloc(sizeof(float) * (size_t)n * (size_t)(6 * D + F));
  if (!mem) return false;
  *a = (mp_text_activations){.block = mem,
                             .x = mem,
                             .h = mem + n * D,
                             .q = mem + 2 * n * D,
                             .k = mem + 3 * n * D,
                             .v = mem + 4 * n * D,
                             .att = mem + 5 * n * D,
                             .mlp = mem + 6 * n * D};
  return true;
}

mp_error *mp_text_layer_forward(mp_pool *pool, const mp_text_layer *L, const mp_clip_config *cfg, int n,
                                const mp_text_activations *a) {
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  float *x = a->x, *h = a->h;
  /* x += out(causal_self_attention(ln_attn(x))) */
  mp_layer_norm(pool, h, x, n, D, L->ln_attn->weight, L->ln_attn->bias, cfg->ln_eps);
  MP_TRY(mp_linear(pool, a->q, h, n, &L->q->weight, &L->q->bias));
  MP_TRY(mp_linear(pool, a->k, h, n, &L->k->weight, &L->k->bias));
  MP_TRY(mp_linear(pool, a->v, h, n, &L->v->weight, &L->v->bias));
  mp_attention(pool, a->att, a->q, a->k, a->v, n, n, cfg->heads, (int)(D / cfg->heads), true);
  MP_TRY(mp_linear(pool, h, a->att, n, &L->out->weight, &L->out->bias));
  mp_add(x, x, h, n * D);
  /* x += fc_out(act(fc_in(ln_mlp(x)))) */
  mp_layer_norm(pool, h, x, n, D, L->ln_mlp->weight, L->ln_mlp->bias, cfg->ln_eps);
  MP_TRY(mp_linear(pool, a->mlp, h, n, &L->fc_in->weight, &L->fc_in->bias));
  if (cfg->quick_gelu)
    mp_quick_gelu(a->mlp, n * F);
  else
    mp_gelu(a->mlp, n * F);
  MP_TRY(mp_linear(pool, h, a->mlp, n, &L->fc_out->weight, &L->fc_out->bias));
  mp_add(x, x, h, n * D);
  return NULL;
}
