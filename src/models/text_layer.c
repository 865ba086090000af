/* The transformer layer and weight binding that CLIP and OpenCLIP share (see text_layer.h). */
#include "models/text_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/matmul.h"
#include "core/ops.h"

/* How much of a projection matrix is converted to f32 at a time (4 MB of scratch). With ~77 token
 * rows the GEMM needs a wide block to run well: bench_clip_encoder (CLIP ViT-L, 2 threads, OpenBLAS)
 * encoded in 0.30 s with 32K-float blocks, 0.15 s with 128K, 0.104-0.106 s from 1M floats up (the
 * whole matrix at once: no better), against 0.093 s from f32 copies made at load; on the backend's
 * oneDNN matmul (gemm_xwt) 0.067-0.071 s. */
#define WEIGHT_BLOCK_FLOATS (1024 * 1024)

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

mp_error *mp_bind_matrix(const mp_weights *w, const char *prefix, const char *name, int64_t rows, int64_t cols,
                         const mp_tensor **out) {
  char key[512];
  snprintf(key, sizeof key, "%s%s", prefix, name);
  MP_TRY(mp_sd_weight(w, key, 2, (int64_t[]){rows, cols}, out));
  const mp_dtype dt = (*out)->dtype;
  if ((dt != MP_F32 && dt != MP_F16 && dt != MP_BF16) || !mp_tensor_is_contiguous(*out))
    return mp_errorf("%s: stored as %s, expected a contiguous f32, f16 or bf16 matrix", key, mp_dtype_name(dt));
  return NULL;
}

mp_error *mp_bind_ln(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t dim,
                     mp_ln_weights *ln) {
  char key[256];
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(mp_bind_f32(copies, w, prefix, key, 1, (int64_t[]){dim}, &ln->weight));
  snprintf(key, sizeof key, "%s.bias", name);
  return mp_bind_f32(copies, w, prefix, key, 1, (int64_t[]){dim}, &ln->bias);
}

void mp_linear_rows(mp_linear_weights *lin, const mp_tensor *W, int64_t row0, int64_t out, const float *bias) {
  const int64_t in = W->shape[1];
  mp_tensor_view(&lin->weight, W->dtype, 2, (int64_t[]){out, in},
                 (char *)W->data + (size_t)(row0 * in) * mp_dtype_size(W->dtype));
  lin->bias = bias;
}

mp_error *mp_bind_linear(mp_f32_copies *copies, const mp_weights *w, const char *prefix, const char *name, int64_t out, int64_t in,
                         mp_linear_weights *lin) {
  char key[256];
  const mp_tensor *W;
  const float *b;
  snprintf(key, sizeof key, "%s.weight", name);
  MP_TRY(mp_bind_matrix(w, prefix, key, out, in, &W));
  snprintf(key, sizeof key, "%s.bias", name);
  MP_TRY(mp_bind_f32(copies, w, prefix, key, 1, (int64_t[]){out}, &b));
  mp_linear_rows(lin, W, 0, out, b);
  return NULL;
}

bool mp_text_activations_alloc(const mp_clip_config *cfg, int n, mp_text_activations *a) {
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  /* at least one row of every matrix (rows of hidden or intermediate values) */
  const int64_t widest = D > F ? D : F, wf = WEIGHT_BLOCK_FLOATS > widest ? WEIGHT_BLOCK_FLOATS : widest;
  float *mem = mp_alloc(sizeof(float) * ((size_t)n * (size_t)(6 * D + F) + (size_t)wf));
  if (!mem) return false;
  *a = (mp_text_activations){.block = mem,
                             .x = mem,
                             .h = mem + n * D,
                             .q = mem + 2 * n * D,
                             .k = mem + 3 * n * D,
                             .v = mem + 4 * n * D,
                             .att = mem + 5 * n * D,
                             .mlp = mem + 6 * n * D,
                             .weights = mem + n * (6 * D + F),
                             .weights_floats = wf};
  return true;
}

typedef struct {
  float *dst;
  const char *src;
  mp_dtype dtype;
  int64_t in;
} convert_rows_args;

static void convert_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const convert_rows_args *c = ctx;
  const size_t es = mp_dtype_size(c->dtype);
  mp_convert_to_f32(c->dst + begin * c->in, c->src + (size_t)(begin * c->in) * es, c->dtype, (size_t)((end - begin) * c->in));
}

/* y[n, out] (row stride ldy) = x[n, in] · W[out, in]ᵀ for f32 W: on the backend's oneDNN f32 matmul
 * when the pool has a backend (the pipeline's always does), else OpenBLAS. With the ~77 rows of a
 * prompt and the matrix converted block by block, oneDNN ran SDXL's two encoders in 1.8-1.9 s for
 * two prompts against 2.3-2.5 s on OpenBLAS (mpass bench, 2 threads, the first prompt paging the
 * weights in). */
static mp_error *gemm_xwt(mp_pool *pool, int64_t n, int64_t out, int64_t in, const float *x, const float *W, float *y,
                          int64_t ldy) {
  mp_backend *be = mp_pool_backend(pool);
  if (be) return mp_backend_sgemm(be, true, n, out, in, x, in, W, in, y, ldy);
  mp_gemm(false, true, n, out, in, 1.0f, x, in, W, in, 0.0f, y, ldy);
  return NULL;
}

mp_error *mp_text_linear(mp_pool *pool, const mp_linear_weights *lin, const float *x, int n, float *y,
                         const mp_text_activations *a) {
  const mp_tensor *W = &lin->weight;
  const int64_t out = W->shape[0], in = W->shape[1];
  if (W->dtype == MP_F32) {
    MP_TRY(gemm_xwt(pool, n, out, in, x, W->data, y, out));
  } else {
    /* y[:, r0:r0+rows] = x · W[r0:r0+rows]ᵀ, one block of rows converted at a time */
    const int64_t block = a->weights_floats / in;
    if (block < 1) return mp_errorf("text encoder: no scratch for a row of %lld values", (long long)in);
    const size_t es = mp_dtype_size(W->dtype);
    for (int64_t r0 = 0; r0 < out; r0 += block) {
      const int64_t rows = out - r0 < block ? out - r0 : block;
      convert_rows_args c = {.dst = a->weights, .src = (const char *)W->data + (size_t)(r0 * in) * es, .dtype = W->dtype, .in = in};
      mp_pool_for(pool, rows, 0, convert_rows, &c);
      MP_TRY(gemm_xwt(pool, n, rows, in, x, a->weights, y + r0, out));
    }
  }
  for (int64_t i = 0; i < n; i++) {
    float *row = y + i * out;
    for (int64_t j = 0; j < out; j++) row[j] += lin->bias[j];
  }
  return NULL;
}

void mp_text_layer_release(const mp_weights *w, const mp_text_layer *L) {
  const mp_linear_weights *m[] = {L->q, L->k, L->v, L->out, L->fc_in, L->fc_out};
  for (size_t i = 0; i < sizeof m / sizeof *m; i++) mp_weights_drop_pages(w, m[i]->weight.data, mp_tensor_nbytes(&m[i]->weight));
}

mp_error *mp_text_layer_forward(mp_pool *pool, const mp_text_layer *L, const mp_clip_config *cfg, int n,
                                const mp_text_activations *a) {
  const int64_t D = cfg->hidden, F = cfg->intermediate;
  float *x = a->x, *h = a->h;
  /* x += out(causal_self_attention(ln_attn(x))) */
  mp_layer_norm(pool, h, x, n, D, L->ln_attn->weight, L->ln_attn->bias, cfg->ln_eps);
  MP_TRY(mp_text_linear(pool, L->q, h, n, a->q, a));
  MP_TRY(mp_text_linear(pool, L->k, h, n, a->k, a));
  MP_TRY(mp_text_linear(pool, L->v, h, n, a->v, a));
  mp_attention(pool, a->att, a->q, a->k, a->v, n, n, cfg->heads, (int)(D / cfg->heads), true);
  MP_TRY(mp_text_linear(pool, L->out, a->att, n, h, a));
  mp_add(x, x, h, n * D);
  /* x += fc_out(act(fc_in(ln_mlp(x)))) */
  mp_layer_norm(pool, h, x, n, D, L->ln_mlp->weight, L->ln_mlp->bias, cfg->ln_eps);
  MP_TRY(mp_text_linear(pool, L->fc_in, h, n, a->mlp, a));
  if (cfg->quick_gelu)
    mp_quick_gelu(a->mlp, n * F);
  else
    mp_gelu(a->mlp, n * F);
  MP_TRY(mp_text_linear(pool, L->fc_out, a->mlp, n, h, a));
  mp_add(x, x, h, n * D);
  return NULL;
}
