/* What the two CLIP text encoders share: CLIP (transformers' layout, models/clip.c) and OpenCLIP
 * (open_clip's layout, models/openclip.c) run the same pre-LayerNorm causal transformer layer
 *
 *   x += out(attention(q(h), k(h), v(h)))   h = ln_attn(x); causal, cfg->heads heads
 *   x += fc_out(act(fc_in(ln_mlp(x))))       act = quick-GELU if cfg->quick_gelu, else erf GELU
 *
 * and bind their weights the same way (shape-checked). Each model keeps its own weights struct named
 * after its checkpoint keys and hands this layer views of them.
 *
 * Memory: the projection matrices (nearly all of a text encoder) stay in the checkpoint's dtype and
 * are converted to f32 a block of rows at a time while the layer runs, into scratch that lives with
 * the activations; only the small vectors (LayerNorms, biases, positions) are kept as f32 copies.
 * An SDXL job would otherwise hold ~3.1 GB of f32 copies of CLIP-L + OpenCLIP bigG for its whole run
 * (issue 15 item 7). After a layer has run, the pages of its matrices are handed back to the kernel
 * when they are a read-only file mapping (mp_weights_drop_pages): the next prompt faults them back in
 * from the page cache, and the UNet's sampling steps, the job's peak, do not carry them. */
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
  mp_tensor weight; /* [out, in], a view in the stored dtype (f32, f16 or bf16) */
  const float *bias; /* [out], f32 */
} mp_linear_weights;

/* The f32 copies made of the small weights stored in f16/bf16 (converted once at load); every other
 * bound weight is a view of the mp_weights, which must outlive the model. */
typedef struct {
  float **owned;
  int n_owned, cap_owned;
} mp_f32_copies;

void mp_f32_copies_free(mp_f32_copies *c);

/* Look up prefix+name, check its shape, and return f32 data (a view, or a copy owned by `copies`).
 * For small tensors: a matrix is bound with mp_bind_matrix. */
mp_error *mp_bind_f32(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int ndim,
                      const int64_t *shape, const float **out);
/* name.weight and name.bias, each [dim]. */
mp_error *mp_bind_ln(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t dim,
                     mp_ln_weights *ln);
/* Look up prefix+name, check that it is [rows, cols], and return it as it is stored (f32, f16 or bf16). */
mp_error *mp_bind_matrix(const mp_weights *w, const char *prefix, const char *name, int64_t rows, int64_t cols,
                         const mp_tensor **out);
/* name.weight [out, in] (kept in its stored dtype) and name.bias [out] (as f32). */
mp_error *mp_bind_linear(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t out, int64_t in,
                         mp_linear_weights *lin);
/* Rows [row0, row0 + out) of a bound matrix W as a linear layer with an f32 bias [out] (a block of a
 * fused projection). */
void mp_linear_rows(mp_linear_weights *lin, const mp_tensor *W, int64_t row0, int64_t out, const float *bias);

/* One layer's weights, by role. */
typedef struct {
  const mp_ln_weights *ln_attn, *ln_mlp;
  const mp_linear_weights *q, *k, *v, *out, *fc_in, *fc_out;
} mp_text_layer;

/* The activations of a forward over n tokens, allocated as one block (free `block` with mp_free):
 * x [n, hidden] is the residual stream; the rest is scratch for mp_text_layer_forward, including
 * `weights`, which holds one block of a projection matrix converted to f32. */
typedef struct {
  float *block;
  float *x, *h, *q, *k, *v, *att, *mlp;
  float *weights;
  int64_t weights_floats;
} mp_text_activations;

/* false when out of memory (the caller names the encoder in its error). */
bool mp_text_activations_alloc(const mp_clip_config *cfg, int n, mp_text_activations *a);

/* Run one layer on a->x [n, hidden] in place. */
mp_error *mp_text_layer_forward(mp_pool *pool, const mp_text_layer *L, const mp_clip_config *cfg, int n,
                                const mp_text_activations *a);

/* y[n, out] = x[n, in] · Wᵀ + bias for a bound linear layer, converting W to f32 a block of rows at a
 * time into a->weights when it is stored in f16/bf16. */
mp_error *mp_text_linear(mp_pool *pool, const mp_linear_weights *lin, const float *x, int n, float *y,
                         const mp_text_activations *a);

/* Hand the resident pages of the layer's matrices back to the kernel where w maps them from the file
 * (see mp_weights_drop_pages); the data stays readable. */
void mp_text_layer_release(const mp_weights *w, const mp_text_layer *L);

#endif
