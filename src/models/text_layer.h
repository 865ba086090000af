/* What the two CLIP text encoders share: CLIP (transformers' layout, models/clip.c) and OpenCLIP
 * (open_clip's layout, models/openclip.c) run the same pre-LayerNorm causal transformer layer
 *
 *   x += out(attention(q(h), k(h), v(h)))   h = ln_attn(x); causal, cfg->heads heads
 *   x += fc_out(act(fc_in(ln_mlp(x))))       act = quick-GELU if cfg->quick_gelu, else erf GELU
 *
 * and bind their weights the same way (shape-checked, as f32). Each model keeps its own weights
 * struct named after its checkpoint keys and hands this layer views of them. */
#ifndef MP_MODELS_TEXT_LAYER_H
#define MP_MODELS_TEXT_LAYER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct {
  const float *weight, *bias; /* [hidden] each */
} mp_ln_weights;

typedef struct {
  mp_tensor weight, bias; /* f32 views, [out, in] and [out] */
} mp_linear_weights;

/* The f32 copies made of weights stored in f16/bf16 (converted once at load); every other bound
 * weight is a view of the mp_weights, which must outlive the model. */
typedef struct {
  float **owned;
  int n_owned, cap_owned;
} mp_f32_copies;

void mp_f32_copies_free(mp_f32_copies *c);

/* Look up prefix+name, check its shape, and return f32 data (a view, or a copy owned by `copies`). */
mp_error *mp_bind_f32(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int ndim,
                      const int64_t *shape, const float **out);
/* name.weight and name.bias, each [dim]. */
mp_error *mp_bind_ln(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t dim,
                     mp_ln_weights *ln);
/* name.weight [out, in] and name.bias [out]. */
mp_error *mp_bind_linear(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t out, int64_t in,
                         mp_linear_weights *lin);
/* A linear layer over f32 data already bound (e.g. a row block of a fused projection). */
void mp_linear_view(mp_linear_weights *lin, const float *weight, const float *bias, int64_t out, int64_t in);

/* One layer's weights, by role. */
typedef struct {
  const mp_ln_weights *ln_attn, *ln_mlp;
  const mp_linear_weights *q, *k, *v, *out, *fc_in, *fc_out;
} mp_text_layer;

/* The activations of a forward over n tokens, allocated as one block (free `block` with mp_free):
 * x [n, hidden] is the residual stream; the rest is scratch for mp_text_layer_forward. */
typedef struct {
  float *block;
  float *x, *h, *q, *k, *v, *att, *mlp;
} mp_text_activations;

/* false when out of memory (the caller names the encoder in its error). */
bool mp_text_activations_alloc(const mp_clip_config *cfg, int n, mp_text_activations *a);

/* Run one layer on a->x [n, hidden] in place. */
mp_error *mp_text_layer_forward(mp_pool *pool, const mp_text_layer *L, const mp_clip_config *cfg, int n,
                                const mp_text_activations *a);

#endif
