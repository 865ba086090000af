/* The SD 1.x/2.x UNet (LDM openaimodel.UNetModel) on f32 activations, weights in their stored dtype.
 *
 * Key layout (CompVis): input_blocks.0.0 = conv_in; input_blocks.N.0 = ResBlock or Downsample (.op);
 * input_blocks.N.1 = SpatialTransformer; middle_block.{0,1,2}; output_blocks.N.0 = ResBlock,
 * .1 = SpatialTransformer or Upsample (.conv), .2 = Upsample after a transformer; out.{0,2}; time_embed.{0,2}. */
#include "models/unet.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/attention_bf16.h"
#include "core/conv.h"
#include "core/nhwc_bf16.h"
#include "core/ops.h"
#include "core/profile.h"

enum { GROUPS = 32 };
static const float RES_EPS = 1e-5f, ST_EPS = 1e-6f, LN_EPS = 1e-5f;

typedef struct {
  float *gamma, *beta;
} norm;

typedef struct {
  const mp_tensor *w, *b;
} layer; /* a weight and its bias (b may be NULL) */

typedef struct {
  int c_in, c_out;
  norm in_norm, out_norm;
  layer conv1, emb, conv2, skip; /* skip.w NULL: identity */
} resblock;

typedef struct {
  norm ln1, ln2, ln3;
  const mp_tensor *q1, *k1, *v1, *q2, *k2, *v2;
  layer out1, out2, ff1, ff2;
} tblock;

typedef struct {
  int C, heads, head_dim, depth, inner_ff;
  norm gn;
  layer proj_in, proj_out;
  tblock *blocks;
} spatial;

typedef struct {
  bool is_down; /* a Downsample (conv stride 2) rather than a ResBlock (+ transformer) */
  resblock res;
  spatial *st; /* NULL if none */
  layer down;
  int c_out, level;
} in_block;

typedef struct {
  resblock res;
  spatial *st;
  bool has_up;
  layer up;
  int level;
} out_block;

struct mp_unet {
  mp_unet_config cfg;
  int model_ch, emb_dim;
  layer time1, time2, conv_in, conv_out;
  layer label1, label2; /* SDXL's label_emb.0.{0,2}; w NULL without one */
  norm out_norm;
  int n_in, n_out;
  in_block *in;
  resblock mid1, mid2;
  spatial mid_st;
  out_block *out;
  int max_c[MP_MAX_LEVELS + 1]; /* widest activation (incl. concatenation) at each level */
  int max_tok_c;                /* widest transformer */
  /* f32 copies of the small vectors (norms), owned */
  float **owned;
  int n_owned, cap_owned;
  mp_workspace ws;
  mp_workspace acts; /* the forward's activations, kept between calls: a sampling step allocates nothing */
};

/* ---- binding ---- */
typedef struct {
  const mp_weights *w;
  const char *prefix;
  mp_unet *u;
  mp_error *err; /* the first error; later binds are skipped */
} binder;

static const mp_tensor *bindv(binder *b, int ndim, const int64_t *shape, const char *fmt, va_list ap) {
  if (b->err) return NULL;
  char name[256];
  int n = snprintf(name, sizeof name, "%s", b->prefix);
  vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
  const mp_tensor *t = NULL;
  b->err = mp_sd_weight(b->w, name, ndim, shape, &t);
  return t;
}

static const mp_tensor *bind(binder *b, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const mp_tensor *bind(binder *b, int ndim, const int64_t *shape, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const mp_tensor *t = bindv(b, ndim, shape, fmt, ap);
  va_end(ap);
  return t;
}

static float *own_f32(binder *b, const mp_tensor *t, int64_t n) {
  if (b->err || !t) return NULL;
  mp_unet *u = b->u;
  if (u->n_owned == u->cap_owned) {
    int cap = u->cap_owned ? 2 * u->cap_owned : 256;
    float **nn = realloc(u->owned, sizeof *nn * (size_t)cap);
    if (!nn) {
      b->err = mp_errorf("out of memory");
      return NULL;
    }
    u->owned = nn, u->cap_owned = cap;
  }
  float *v = malloc(sizeof(float) * (size_t)n);
  if (!v) {
    b->err = mp_errorf("out of memory");
    return NULL;
  }
  u->owned[u->n_owned++] = v;
  b->err = mp_vector_f32(t, v, n);
  return v;
}

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static norm bind_norm(binder *b, int C, const char *base) {
  norm n;
  n.gamma = own_f32(b, bind(b, SHAPE(C), "%s.weight", base), C);
  n.beta = own_f32(b, bind(b, SHAPE(C), "%s.bias", base), C);
  return n;
}

static layer bind_conv(binder *b, int c_out, int c_in, int k, const char *base) {
  layer l;
  l.w = bind(b, SHAPE(c_out, c_in, k, k), "%s.weight", base);
  l.b = bind(b, SHAPE(c_out), "%s.bias", base);
  return l;
}

static layer bind_linear(binder *b, int out, int in, bool bias, const char *base) {
  layer l;
  l.w = bind(b, SHAPE(out, in), "%s.weight", base);
  l.b = bias ? bind(b, SHAPE(out), "%s.bias", base) : NULL;
  return l;
}

static void bind_res(binder *b, resblock *r, int c_in, int c_out, int emb_dim, const char *base) {
  char k[160];
  r->c_in = c_in, r->c_out = c_out;
  snprintf(k, sizeof k, "%s.in_layers.0", base), r->in_norm = bind_norm(b, c_in, k);
  snprintf(k, sizeof k, "%s.in_layers.2", base), r->conv1 = bind_conv(b, c_out, c_in, 3, k);
  snprintf(k, sizeof k, "%s.emb_layers.1", base), r->emb = bind_linear(b, c_out, emb_dim, true, k);
  snprintf(k, sizeof k, "%s.out_layers.0", base), r->out_norm = bind_norm(b, c_out, k);
  snprintf(k, sizeof k, "%s.out_layers.3", base), r->conv2 = bind_conv(b, c_out, c_out, 3, k);
  r->skip.w = r->skip.b = NULL;
  if (c_in != c_out) snprintf(k, sizeof k, "%s.skip_connection", base), r->skip = bind_conv(b, c_out, c_in, 1, k);
}

static void bind_spatial(binder *b, spatial *s, int C, int depth, const mp_unet_config *cfg, const char *base) {
  char k[200];
  s->C = C;
  if (cfg->num_head_channels > 0) {
    s->head_dim = cfg->num_head_channels, s->heads = C / cfg->num_head_channels;
  } else {
    s->heads = cfg->num_heads, s->head_dim = cfg->num_heads > 0 ? C / cfg->num_heads : 0;
  }
  if (s->heads <= 0 || s->head_dim <= 0 || s->heads * s->head_dim != C) {
    if (!b->err) b->err = mp_errorf("%s: %d channels do not split into attention heads (num_heads %d, num_head_channels %d)", base,
                                    C, cfg->num_heads, cfg->num_head_channels);
    return;
  }
  s->depth = depth;
  s->inner_ff = 4 * C;
  const int cd = cfg->context_dim;
  snprintf(k, sizeof k, "%s.norm", base), s->gn = bind_norm(b, C, k);
  snprintf(k, sizeof k, "%s.proj_in", base);
  s->proj_in = cfg->linear_in_transformer ? bind_linear(b, C, C, true, k) : bind_conv(b, C, C, 1, k);
  snprintf(k, sizeof k, "%s.proj_out", base);
  s->proj_out = cfg->linear_in_transformer ? bind_linear(b, C, C, true, k) : bind_conv(b, C, C, 1, k);
  s->blocks = calloc((size_t)(s->depth > 0 ? s->depth : 1), sizeof *s->blocks);
  if (!s->blocks) {
    if (!b->err) b->err = mp_errorf("out of memory");
    return;
  }
  for (int d = 0; d < s->depth; d++) {
    tblock *t = &s->blocks[d];
    char tb[180];
    snprintf(tb, sizeof tb, "%s.transformer_blocks.%d", base, d);
    snprintf(k, sizeof k, "%s.norm1", tb), t->ln1 = bind_norm(b, C, k);
    snprintf(k, sizeof k, "%s.norm2", tb), t->ln2 = bind_norm(b, C, k);
    snprintf(k, sizeof k, "%s.norm3", tb), t->ln3 = bind_norm(b, C, k);
    t->q1 = bind(b, SHAPE(C, C), "%s.attn1.to_q.weight", tb);
    t->k1 = bind(b, SHAPE(C, C), "%s.attn1.to_k.weight", tb);
    t->v1 = bind(b, SHAPE(C, C), "%s.attn1.to_v.weight", tb);
    snprintf(k, sizeof k, "%s.attn1.to_out.0", tb), t->out1 = bind_linear(b, C, C, true, k);
    t->q2 = bind(b, SHAPE(C, C), "%s.attn2.to_q.weight", tb);
    t->k2 = bind(b, SHAPE(C, cd), "%s.attn2.to_k.weight", tb);
    t->v2 = bind(b, SHAPE(C, cd), "%s.attn2.to_v.weight", tb);
    snprintf(k, sizeof k, "%s.attn2.to_out.0", tb), t->out2 = bind_linear(b, C, C, true, k);
    snprintf(k, sizeof k, "%s.ff.net.0.proj", tb), t->ff1 = bind_linear(b, 2 * s->inner_ff, C, true, k);
    snprintf(k, sizeof k, "%s.ff.net.2", tb), t->ff2 = bind_linear(b, C, s->inner_ff, true, k);
  }
}

static void free_spatial(spatial *s) {
  if (s) free(s->blocks);
}

void mp_unet_free(mp_unet *u) {
  if (!u) return;
  for (int i = 0; i < u->n_in; i++) free_spatial(u->in[i].st), free(u->in[i].st);
  for (int i = 0; i < u->n_out; i++) free_spatial(u->out[i].st), free(u->out[i].st);
  free_spatial(&u->mid_st);
  free(u->in);
  free(u->out);
  for (int i = 0; i < u->n_owned; i++) free(u->owned[i]);
  free(u->owned);
  mp_workspace_free(&u->ws);
  mp_workspace_free(&u->acts);
  free(u);
}

void mp_unet_trim(mp_unet *u) {
  if (!u) return;
  mp_workspace_trim(&u->ws);
  mp_workspace_trim(&u->acts);
}

static void move_buffer(mp_workspace *to, mp_workspace *from) {
  if (from->cap <= to->cap) return;
  mp_free(to->p);
  to->p = from->p, to->cap = from->cap;
  from->p = NULL, from->cap = 0;
}

void mp_unet_adopt_buffers(mp_unet *to, mp_unet *from) {
  if (!to || !from) return;
  move_buffer(&to->ws, &from->ws);
  move_buffer(&to->acts, &from->acts);
}

static spatial *new_spatial(binder *b, int C, int depth, const mp_unet_config *cfg, const char *base) {
  spatial *s = calloc(1, sizeof *s);
  if (!s) {
    if (!b->err) b->err = mp_errorf("out of memory");
    return NULL;
  }
  bind_spatial(b, s, C, depth, cfg, base);
  return s;
}

static void note_width(mp_unet *u, int level, int c) {
  if (c > u->max_c[level]) u->max_c[level] = c;
}

/* encoder_only: ControlNet's copy, which has time_embed, input_blocks and middle_block but no decoder. */
static mp_error *load(const mp_weights *w, const char *prefix, const mp_unet_config *cfg, bool encoder_only, mp_unet **out) {
  *out = NULL;
  if (cfg->n_levels < 1 || cfg->n_levels > MP_MAX_LEVELS || cfg->num_res_blocks < 1 || cfg->model_channels < GROUPS ||
      cfg->model_channels % GROUPS || cfg->in_channels < 1 || cfg->out_channels < 1 || cfg->context_dim < 1 ||
      cfg->transformer_depth < 1 || cfg->adm_in_channels < 0)
    return mp_errorf("unsupported UNet config (levels %d, res blocks %d, model channels %d, context %d)", cfg->n_levels,
                     cfg->num_res_blocks, cfg->model_channels, cfg->context_dim);
  mp_unet *u = calloc(1, sizeof *u);
  if (!u) return mp_errorf("out of memory");
  u->cfg = *cfg;
  const int mc = cfg->model_channels, L = cfg->n_levels, nrb = cfg->num_res_blocks;
  u->model_ch = mc, u->emb_dim = 4 * mc;
  binder b = {w, prefix ? prefix : "", u, NULL};
  char k[160];
  u->time1 = bind_linear(&b, u->emb_dim, mc, true, "time_embed.0");
  u->time2 = bind_linear(&b, u->emb_dim, u->emb_dim, true, "time_embed.2");
  if (cfg->adm_in_channels > 0) { /* SDXL: label_emb = Linear, SiLU, Linear on y, added to the time embedding */
    u->label1 = bind_linear(&b, u->emb_dim, cfg->adm_in_channels, true, "label_emb.0.0");
    u->label2 = bind_linear(&b, u->emb_dim, u->emb_dim, true, "label_emb.0.2");
  }

  u->n_in = 1 + L * nrb + (L - 1);
  u->n_out = encoder_only ? 0 : L * (nrb + 1);
  u->in = calloc((size_t)u->n_in, sizeof *u->in);
  u->out = calloc((size_t)(u->n_out ? u->n_out : 1), sizeof *u->out);
  int *skip_c = calloc((size_t)u->n_in, sizeof *skip_c), n_skip = 0;
  if (!u->in || !u->out || !skip_c) {
    free(skip_c);
    mp_unet_free(u);
    return mp_errorf("out of memory");
  }
  u->conv_in = bind_conv(&b, mc, cfg->in_channels, 3, "input_blocks.0.0");
  note_width(u, 0, cfg->in_channels > mc ? cfg->in_channels : mc);
  skip_c[n_skip++] = mc;
  int ch = mc, idx = 1;
  for (int l = 0; l < L && !b.err; l++) {
    for (int r = 0; r < nrb; r++, idx++) {
      in_block *ib = &u->in[idx];
      int c_out = cfg->channel_mult[l] * mc;
      if (c_out % GROUPS) {
        b.err = mp_errorf("level %d has %d channels, not a multiple of %d groups", l, c_out, GROUPS);
        break;
      }
      snprintf(k, sizeof k, "input_blocks.%d.0", idx), bind_res(&b, &ib->res, ch, c_out, u->emb_dim, k);
      if (cfg->attention_at_level[l])
        snprintf(k, sizeof k, "input_blocks.%d.1", idx), ib->st = new_spatial(&b, c_out, mp_unet_level_depth(cfg, l), cfg, k);
      ib->c_out = ch = c_out, ib->level = l;
      note_width(u, l, ch);
      skip_c[n_skip++] = ch;
    }
    if (l != L - 1) {
      in_block *ib = &u->in[idx];
      ib->is_down = true, ib->c_out = ch, ib->level = l + 1;
      snprintf(k, sizeof k, "input_blocks.%d.0.op", idx), ib->down = bind_conv(&b, ch, ch, 3, k);
      idx++;
      skip_c[n_skip++] = ch;
    }
  }
  bind_res(&b, &u->mid1, ch, ch, u->emb_dim, "middle_block.0");
  bind_spatial(&b, &u->mid_st, ch, mp_unet_mid_depth(cfg), cfg, "middle_block.1");
  bind_res(&b, &u->mid2, ch, ch, u->emb_dim, "middle_block.2");
  idx = 0;
  for (int l = L - 1; l >= 0 && !b.err && !encoder_only; l--) {
    for (int r = 0; r <= nrb; r++, idx++) {
      out_block *ob = &u->out[idx];
      int c_skip = skip_c[--n_skip], c_out = cfg->channel_mult[l] * mc;
      note_width(u, l, ch + c_skip);
      snprintf(k, sizeof k, "output_blocks.%d.0", idx), bind_res(&b, &ob->res, ch + c_skip, c_out, u->emb_dim, k);
      ch = c_out, ob->level = l;
      int sub = 1;
      if (cfg->attention_at_level[l])
        snprintf(k, sizeof k, "output_blocks.%d.1", idx), ob->st = new_spatial(&b, ch, mp_unet_level_depth(cfg, l), cfg, k), sub++;
      if (l > 0 && r == nrb) {
        ob->has_up = true;
        snprintf(k, sizeof k, "output_blocks.%d.%d.conv", idx, sub), ob->up = bind_conv(&b, ch, ch, 3, k);
        note_width(u, l - 1, ch);
      }
    }
  }
  free(skip_c);
  if (!encoder_only) {
    u->out_norm = bind_norm(&b, ch, "out.0");
    u->conv_out = bind_conv(&b, cfg->out_channels, ch, 3, "out.2");
    note_width(u, 0, cfg->out_channels);
  }
  for (int l = 0; l < L; l++)
    if (cfg->attention_at_level[l] && cfg->channel_mult[l] * mc > u->max_tok_c) u->max_tok_c = cfg->channel_mult[l] * mc;
  if (cfg->channel_mult[L - 1] * mc > u->max_tok_c) u->max_tok_c = cfg->channel_mult[L - 1] * mc;
  if (b.err) {
    mp_unet_free(u);
    return mp_error_wrap(b.err, "loading the UNet");
  }
  *out = u;
  return NULL;
}

mp_error *mp_unet_load(const mp_weights *w, const char *prefix, const mp_unet_config *cfg, mp_unet **out) {
  return load(w, prefix, cfg, false, out);
}

mp_error *mp_unet_load_encoder(const mp_weights *w, const char *prefix, const mp_unet_config *cfg, mp_unet **out) {
  return load(w, prefix, cfg, true, out);
}

/* ---- forward ---- */
typedef struct {
  mp_pool *pool;
  mp_workspace *ws;
  int batch;
  /* activation scratch [batch, C, h, w] at the widest level, and the transformers' token scratch: tok_cap
   * floats each (tok, nrm, q, k, v, att), n_ctx x C per batch item (ck, cv) */
  float *t1, *t2;
  float *tok, *nrm, *q, *k, *v, *att, *ff, *ck, *cv;
  int64_t tok_cap;
  const float *context;
  int n_ctx, ctx_dim;
  const float *emb_silu; /* [batch, emb_dim] */
  float *emb_out;        /* [batch, max C] */
  int emb_dim;
  /* where the batch's two halves have the same input (run: alike_half), the tokens of each pair's first
   * item after the first self-attention, [hw, C], for its second item */
  float *pair_tok;
} fwd;

/* res_forward with the block's inside in NHWC ([batch, hw, C]), where both convolutions take the bf16
 * backend's direct convolution (res_nhwc_usable): the input is transposed once, each group norm writes
 * its convolution's bf16 NHWC input itself, and conv2 adds onto the residual where it lies; the result
 * is transposed back, or, with nhwc_out, left in NHWC (in t1 or y) and *nhwc_out set to it. Through
 * mp_conv2d each convolution reordered its NCHW f32 input to NHWC bf16 and its output back (oneDNN
 * reorders: 0.87 s of a 1024² CFG step on AMX, growing faster than the pixels). The 1x1 skip
 * projection is the same bf16 product as a dense layer on the pixels. */
static mp_error *res_forward_nhwc(fwd *f, const resblock *r, const float *x, float *y, int h, int w, float **nhwc_out) {
  const int64_t hw = (int64_t)h * w;
  const int B = f->batch, ci = r->c_in, co = r->c_out;
  const mp_pad p1 = {1, 1, 1, 1};
  float *xt = f->t1;                              /* x as [B, hw, ci]; the residual where there is no skip */
  uint16_t *t = (uint16_t *)(void *)f->t2;        /* the convolutions' bf16 inputs */
  for (int b = 0; b < B; b++) mp_transpose(f->pool, xt + b * hw * ci, x + b * ci * hw, ci, hw);
  for (int b = 0; b < B; b++)
    MP_TRY(mp_group_norm_nhwc(f->pool, f->ws, t + b * hw * ci, true, xt + b * hw * ci, hw, ci, GROUPS, r->in_norm.gamma,
                              r->in_norm.beta, RES_EPS, true));
  float *hb = y; /* conv1's output, [B, hw, co], in y until conv2's input is made from it */
  MP_TRY(mp_conv2d_nhwc_bf16(f->pool, f->ws, hb, t, B, ci, h, w, r->conv1.w, r->conv1.b, 1, p1, false));
  MP_TRY(mp_dense(f->pool, f->ws, f->emb_out, f->emb_silu, B, r->emb.w, r->emb.b));
  for (int b = 0; b < B; b++) /* out_norm(h + the item's time embedding), the sum never written */
    MP_TRY(mp_group_norm_nhwc_biased(f->pool, f->ws, t + b * hw * co, true, hb + b * hw * co, f->emb_out + (int64_t)b * co, hw,
                                     co, GROUPS, r->out_norm.gamma, r->out_norm.beta, RES_EPS, true));
  float *res = xt; /* the residual, [B, hw, co]: x itself, or its projection (into y, free again) */
  if (r->skip.w) {
    MP_TRY(mp_dense(f->pool, f->ws, y, xt, B * hw, r->skip.w, r->skip.b));
    res = y;
  }
  MP_TRY(mp_conv2d_nhwc_bf16(f->pool, f->ws, res, t, B, co, h, w, r->conv2.w, r->conv2.b, 1, p1, true));
  if (nhwc_out) { /* a spatial transformer follows: it takes the pixels as tokens (spatial_forward_nhwc) */
    *nhwc_out = res;
    return NULL;
  }
  if (res == y) { /* back to [B, co, hw] through t1, whose x is no longer needed */
    for (int b = 0; b < B; b++) mp_transpose(f->pool, f->t1 + b * co * hw, y + b * hw * co, hw, co);
    memcpy(y, f->t1, sizeof(float) * (size_t)B * (size_t)co * (size_t)hw);
  } else {
    for (int b = 0; b < B; b++) mp_transpose(f->pool, y + b * co * hw, xt + b * hw * co, hw, co);
  }
  return NULL;
}

/* y [batch, C, 2h, 2w] = conv(nearest 2x upsample of x [batch, C, h, w]); scratch [batch, C, 2h, 2w].
 * Where the convolution takes the direct bf16 path the upsample happens in NHWC straight into its bf16
 * input, and its NHWC output is transposed back: the same values as upsampling in NCHW and letting
 * mp_conv2d reorder (into level 0 at 1024x1024 those two reorders alone took 0.14 s per CFG step). */
static mp_error *upsample_forward(fwd *f, const layer *conv, const float *x, float *y, float *scratch, int C, int h, int w) {
  const int B = f->batch;
  const int64_t hw = (int64_t)h * w, hw2 = 4 * hw;
  if (f->ws->f32_only || !mp_conv2d_nhwc_usable(f->pool, C, C, 2 * h, 2 * w, B)) {
    mp_upsample_nearest2x(f->pool, scratch, x, (int64_t)B * C, h, w);
    return mp_conv2d(f->pool, f->ws, y, scratch, B, C, 2 * h, 2 * w, conv->w, conv->b, 1, (mp_pad){1, 1, 1, 1});
  }
  uint16_t *up = (uint16_t *)(void *)f->t2; /* [B, 4hw, C] bf16 */
  for (int b = 0; b < B; b++) {
    mp_transpose(f->pool, f->t1, x + b * C * hw, C, hw);
    mp_upsample_nearest2x_nhwc_bf16(f->pool, up + b * hw2 * C, f->t1, h, w, C);
  }
  MP_TRY(mp_conv2d_nhwc_bf16(f->pool, f->ws, scratch, up, B, C, 2 * h, 2 * w, conv->w, conv->b, 1, (mp_pad){1, 1, 1, 1}, false));
  for (int b = 0; b < B; b++) mp_transpose(f->pool, y + b * C * hw2, scratch + b * hw2 * C, hw2, C);
  return NULL;
}

static bool res_nhwc_usable(const fwd *f, const resblock *r, int h, int w) {
  return !f->ws->f32_only && mp_conv2d_nhwc_usable(f->pool, r->c_in, r->c_out, h, w, f->batch) &&
         mp_conv2d_nhwc_usable(f->pool, r->c_out, r->c_out, h, w, f->batch);
}

/* y = ResBlock(x): x [batch, c_in, hw] -> y [batch, c_out, hw]; y must not alias x. */
static mp_error *res_forward(fwd *f, const resblock *r, const float *x, float *y, int h, int w) {
  const int64_t hw = (int64_t)h * w;
  const mp_pad p1 = {1, 1, 1, 1};
  if (res_nhwc_usable(f, r, h, w)) return res_forward_nhwc(f, r, x, y, h, w, NULL);
  mp_group_norm(f->pool, f->t1, x, f->batch, r->c_in, hw, GROUPS, r->in_norm.gamma, r->in_norm.beta, RES_EPS, true);
  MP_TRY(mp_conv2d(f->pool, f->ws, f->t2, f->t1, f->batch, r->c_in, h, w, r->conv1.w, r->conv1.b, 1, p1));
  MP_TRY(mp_dense(f->pool, f->ws, f->emb_out, f->emb_silu, f->batch, r->emb.w, r->emb.b));
  for (int b = 0; b < f->batch; b++)
    for (int c = 0; c < r->c_out; c++) {
      float *p = f->t2 + ((int64_t)b * r->c_out + c) * hw, e = f->emb_out[(int64_t)b * r->c_out + c];
      for (int64_t i = 0; i < hw; i++) p[i] += e;
    }
  mp_group_norm(f->pool, f->t2, f->t2, f->batch, r->c_out, hw, GROUPS, r->out_norm.gamma, r->out_norm.beta, RES_EPS, true);
  MP_TRY(mp_conv2d(f->pool, f->ws, y, f->t2, f->batch, r->c_out, h, w, r->conv2.w, r->conv2.b, 1, p1));
  const int64_t n = (int64_t)f->batch * r->c_out * hw;
  if (r->skip.w) {
    MP_TRY(mp_conv2d(f->pool, f->ws, f->t1, x, f->batch, r->c_in, h, w, r->skip.w, r->skip.b, 1, (mp_pad){0, 0, 0, 0}));
    mp_add(y, y, f->t1, n);
  } else {
    mp_add(y, y, x, n);
  }
  return NULL;
}

/* x [items x n, C] += Attention(q = dense(nrm), k/v = dense(src)) projected by `out`, for `items` batch
 * items one after the other (n query rows and n_src source rows each): the projections run on all of
 * them at once, the attention item by item. */
static mp_error *attention_block(fwd *f, const spatial *s, float *x, int items, int64_t n, const mp_tensor *Wq,
                                 const mp_tensor *Wk, const mp_tensor *Wv, const layer *out, const float *src, int64_t n_src,
                                 float *kbuf, float *vbuf) {
  const mp_dense_out qkv[3] = {{kbuf, Wk, NULL}, {vbuf, Wv, NULL}, {f->q, Wq, NULL}};
  if (src == f->nrm) { /* self-attention: q, k and v share their input */
    MP_TRY(mp_dense_shared(f->pool, f->ws, src, items * n, qkv, 3));
  } else {
    MP_TRY(mp_dense(f->pool, f->ws, f->q, f->nrm, items * n, Wq, NULL));
    MP_TRY(mp_dense_shared(f->pool, f->ws, src, items * n_src, qkv, 2));
  }
  mp_profile_begin(mp_pool_profile(f->pool));
  const int64_t C = s->C;
  for (int i = 0; i < items; i++) /* bf16 products under a bf16 backend on AVX512_BF16 CPUs, else the f32 kernel */
    mp_attention_auto(f->pool, f->att + i * n * C, f->q + i * n * C, kbuf + i * n_src * C, vbuf + i * n_src * C, n, n_src,
                      s->heads, s->head_dim, false);
  mp_profile_end(mp_pool_profile(f->pool), MP_OP_ATTENTION);
  return mp_dense_add(f->pool, f->ws, x, f->att, items * n, out->w, out->b);
}

/* The feed-forward (ff1, GEGLU, ff2: each row on its own) runs on chunks of rows whose f32 projection
 * [rows, 2 * inner] is at most 16 MB, so that it stays in the cache between the product that writes it
 * and the GEGLU that reads it instead of going through memory: 168 MB per item at level 0 of a
 * 1024x1024 image, where the chunks take its time from 53 to 31 ms (bench/RESULTS.md). The rows are a
 * power of two: oneDNN's products run 816 rows as slowly as 16384 and 1024 at full speed. */
enum { FF_CHUNK_FLOATS = 4 << 20 };

static int64_t ff_rows(int64_t hw, int64_t inner) {
  int64_t rows = 64;
  while (rows * 2 * (2 * inner) <= FF_CHUNK_FLOATS) rows *= 2;
  return rows < hw ? rows : hw;
}

/* How spatial_tokens starts an item: from its input, or, for the second item of a pair whose items
 * have the same input (alike_half), from the first item's tokens after block 0's self-attention
 * (f->pair_tok), which it then keeps (PAIR_KEEP) or takes (PAIR_TAKE). */
typedef enum { PAIR_NONE, PAIR_KEEP, PAIR_TAKE } pair_role;

/* The transformer of batch items b .. b + items - 1 on their group-normed tokens f->nrm [items x hw, C]
 * (not read with PAIR_TAKE, which takes one item): proj_in, the blocks, proj_out; the result (without
 * the residual) in f->nrm. Every product but the attention runs on all the items' rows at once. */
static mp_error *spatial_tokens(fwd *f, const spatial *s, int b, int items, int64_t hw, pair_role pair) {
  const int64_t C = s->C, n = items * hw;
  const float *ctx = f->context + (int64_t)b * f->n_ctx * f->ctx_dim; /* the items' contexts, one after the other */
  if (pair == PAIR_TAKE) memcpy(f->tok, f->pair_tok, sizeof(float) * (size_t)(hw * C));
  else MP_TRY(mp_dense(f->pool, f->ws, f->tok, f->nrm, n, s->proj_in.w, s->proj_in.b));
  for (int d = 0; d < s->depth; d++) {
    const tblock *t = &s->blocks[d];
    if (d > 0 || pair != PAIR_TAKE) {
      mp_layer_norm(f->pool, f->nrm, f->tok, n, C, t->ln1.gamma, t->ln1.beta, LN_EPS);
      MP_TRY(attention_block(f, s, f->tok, items, hw, t->q1, t->k1, t->v1, &t->out1, f->nrm, hw, f->k, f->v));
    }
    if (d == 0 && pair == PAIR_KEEP) memcpy(f->pair_tok, f->tok, sizeof(float) * (size_t)(hw * C));
    mp_layer_norm(f->pool, f->nrm, f->tok, n, C, t->ln2.gamma, t->ln2.beta, LN_EPS);
    MP_TRY(attention_block(f, s, f->tok, items, hw, t->q2, t->k2, t->v2, &t->out2, ctx, f->n_ctx, f->ck, f->cv));
    mp_layer_norm(f->pool, f->nrm, f->tok, n, C, t->ln3.gamma, t->ln3.beta, LN_EPS);
    const int64_t inner = s->inner_ff, rows = ff_rows(n, inner);
    for (int64_t r0 = 0; r0 < n; r0 += rows) { /* tokens += ff2(GEGLU(ff1(normed))), chunk by chunk */
      const int64_t m = n - r0 < rows ? n - r0 : rows;
      MP_TRY(mp_dense(f->pool, f->ws, f->ff, f->nrm + r0 * C, m, t->ff1.w, t->ff1.b));
      MP_TRY(mp_dense_geglu(f->pool, f->ws, f->tok + r0 * C, f->ff + m * 2 * inner, f->ff, m, inner, t->ff2.w, t->ff2.b, true));
    }
  }
  return mp_dense(f->pool, f->ws, f->nrm, f->tok, n, s->proj_out.w, s->proj_out.b);
}

/* How many batch items a transformer takes per pass: all of them where their tokens fit the scratch and
 * no pair shares its start (half = 0), else one. Larger products run closer to the CPU's peak: one
 * 512x512 CFG step's bf16 matmuls took 1096 ms item by item and 1066 ms so (AMD EPYC Zen 5, oneDNN
 * verbose; level 2's 1280x1280 projections 93 -> 89 ms, level 1's 640x640 ones 91 -> 86 ms). */
static int spatial_items(const fwd *f, int64_t hw, int64_t C, int half) {
  return !half && (int64_t)f->batch * hw * C <= f->tok_cap ? f->batch : 1;
}

/* The k-th batch item a transformer takes, and how (pair_role): in order, or, where the halves are alike
 * (half > 0), each pair's two items one after the other, so that one pair_tok serves them all. */
static int item_order(int half, int k, pair_role *pair) {
  if (!half) {
    *pair = PAIR_NONE;
    return k;
  }
  *pair = k % 2 ? PAIR_TAKE : PAIR_KEEP;
  return k / 2 + (k % 2) * half;
}

/* x [batch, C, h, w] += SpatialTransformer(x), one batch item at a time (bounded token scratch); half as
 * for res_spatial_forward. */
static mp_error *spatial_forward(fwd *f, const spatial *s, float *x, int h, int w, int half) {
  const int64_t hw = (int64_t)h * w, C = s->C;
  const int items = spatial_items(f, hw, C, half);
  for (int k = 0; k < f->batch; k += items) {
    pair_role pair;
    const int b = item_order(half, k, &pair);
    float *xb = x + (int64_t)b * C * hw;
    if (pair != PAIR_TAKE) {
      mp_group_norm(f->pool, f->t1, xb, items, (int)C, hw, GROUPS, s->gn.gamma, s->gn.beta, ST_EPS, false);
      for (int i = 0; i < items; i++) mp_transpose(f->pool, f->nrm + i * hw * C, f->t1 + i * C * hw, C, hw);
    }
    MP_TRY(spatial_tokens(f, s, b, items, hw, pair));
    for (int i = 0; i < items; i++) mp_transpose_add(f->pool, xb + i * C * hw, f->nrm + i * hw * C, C, hw);
  }
  return NULL;
}

/* y [batch, C, h, w] = xn + SpatialTransformer(xn) for xn [batch, hw, C] in NHWC, which is the token
 * layout itself: the group norm reads it as it is, and only the result is transposed. y may be xn
 * (each item's result overwrites only its own input, once that is read); half as for
 * res_spatial_forward. */
static mp_error *spatial_forward_nhwc(fwd *f, const spatial *s, const float *xn, float *y, int h, int w, int half) {
  const int64_t hw = (int64_t)h * w, C = s->C;
  const int items = spatial_items(f, hw, C, half);
  for (int k = 0; k < f->batch; k += items) {
    pair_role pair;
    const int b = item_order(half, k, &pair);
    const float *xb = xn + (int64_t)b * hw * C;
    if (pair != PAIR_TAKE)
      for (int i = 0; i < items; i++)
        MP_TRY(mp_group_norm_nhwc(f->pool, f->ws, f->nrm + i * hw * C, false, xb + i * hw * C, hw, (int)C, GROUPS, s->gn.gamma,
                                  s->gn.beta, ST_EPS, false));
    MP_TRY(spatial_tokens(f, s, b, items, hw, pair));
    for (int i = 0; i < items; i++) { /* item i's input is read here, before its result overwrites it (y may be xn) */
      mp_add(f->nrm + i * hw * C, f->nrm + i * hw * C, xb + i * hw * C, hw * C);
      mp_transpose(f->pool, y + (int64_t)(b + i) * C * hw, f->nrm + i * hw * C, hw, C);
    }
  }
  return NULL;
}

/* y = SpatialTransformer(ResBlock(x)), or the ResBlock alone where st is NULL. Where the ResBlock runs
 * in NHWC its result goes to the transformer as tokens: two transposes fewer per pair (ResBlock out,
 * transformer in). y must not alias x.
 * half > 0: items b and b + half of x are the same, and so is the time embedding (run: alike_half).
 * The ResBlock then runs on the first half and its result is copied to the second, and each pair
 * shares the transformer's first self-attention; they part at its first cross-attention. */
static mp_error *res_spatial_forward(fwd *f, const resblock *r, const spatial *st, const float *x, float *y, int h, int w,
                                     int half) {
  const int batch = f->batch;
  const size_t item = (size_t)r->c_out * (size_t)h * (size_t)w;
  if (half) f->batch = half;
  mp_error *e = NULL;
  float *xn = NULL; /* the ResBlock's result in NHWC, when the transformer takes it as tokens */
  if (st && res_nhwc_usable(f, r, h, w)) e = res_forward_nhwc(f, r, x, y, h, w, &xn);
  else e = res_forward(f, r, x, y, h, w);
  f->batch = batch;
  MP_TRY(e);
  float *out = xn ? xn : y;
  if (half) memcpy(out + half * item, out, sizeof(float) * half * item);
  if (!st) return NULL;
  return xn ? spatial_forward_nhwc(f, st, xn, y, h, w, half) : spatial_forward(f, st, y, h, w, half);
}

/* LDM's timestep_embedding (cos half first: flip_sin_to_cos=True, downscale_freq_shift=0), in the
 * float32 order of operations the reference uses. */
void mp_unet_timestep_embedding(float *emb, const float *t, int batch, int dim) {
  const int half = dim / 2;
  for (int b = 0; b < batch; b++) {
    float *e = emb + (int64_t)b * dim;
    for (int i = 0; i < half; i++) {
      float expo = (-9.21034037198e+00f * (float)i) / (float)half; /* -ln(10000) i / half */
      float arg = t[b] * expf(expo);
      e[i] = (float)cos((double)arg);
      e[half + i] = (float)sin((double)arg);
    }
    if (dim % 2) e[dim - 1] = 0;
  }
}

/* y += scale * r, the product rounded to float first as the reference does (it scales the residuals
 * before adding them). */
static void add_scaled(float *y, const float *r, float scale, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] += r[i] * scale;
}

static void concat_channels(float *dst, const float *a, int ca, const float *s, int cs, int batch, int64_t hw) {
  for (int b = 0; b < batch; b++) {
    memcpy(dst + (int64_t)b * (ca + cs) * hw, a + (int64_t)b * ca * hw, sizeof(float) * (size_t)(ca * hw));
    memcpy(dst + ((int64_t)b * (ca + cs) + ca) * hw, s + (int64_t)b * cs * hw, sizeof(float) * (size_t)(cs * hw));
  }
}

mp_error *mp_unet_forward(mp_unet *u, mp_pool *pool, int batch, int h, int w, const float *x, const float *t,
                          const float *context, int n_ctx, float *eps) {
  const mp_unet_inputs in = {.batch = batch, .h = h, .w = w, .x = x, .t = t, .context = context, .n_ctx = n_ctx};
  return mp_unet_run(u, pool, &in, eps);
}

/* Classifier-free guidance evaluates each latent twice, with and without its text: rows b and b + batch/2
 * then have the same x, t and y (and a ControlNet the same hint), and only the context differs. Until
 * the first cross-attention reads the context, both rows of a pair compute the same numbers; run
 * computes them once (for SD 1.x: conv_in, input block 1's ResBlock and its first self-attention, over
 * the most tokens of the step). Returns batch/2 where the inputs are alike bit for bit, else 0. */
static int alike_half(const mp_unet_inputs *in, const float *hint, const mp_unet_config *cfg, int model_ch) {
  if (in->batch % 2) return 0;
  const size_t half = (size_t)in->batch / 2, hw = (size_t)in->h * (size_t)in->w;
  const size_t nx = half * (size_t)cfg->in_channels * hw, ny = half * (size_t)cfg->adm_in_channels,
               nh = half * (size_t)model_ch * hw;
  return memcmp(in->x, in->x + nx, sizeof(float) * nx) == 0 && memcmp(in->t, in->t + half, sizeof(float) * half) == 0 &&
                 (!in->y || memcmp(in->y, in->y + ny, sizeof(float) * ny) == 0) &&
                 (!hint || memcmp(hint, hint + nh, sizeof(float) * nh) == 0)
             ? (int)half
             : 0;
}

/* The whole UNet (enc NULL: eps out), or only its encoder (enc set: eps unused, `hint` added to the
 * conv_in output, the block and middle outputs returned as views). */
static mp_error *run(mp_unet *u, mp_pool *pool, const mp_unet_inputs *in, const float *hint, mp_unet_encoded *enc, float *eps) {
  const int batch = in->batch, h = in->h, w = in->w, n_ctx = in->n_ctx;
  const float *x = in->x, *t = in->t, *context = in->context;
  const mp_unet_control *control = enc ? NULL : in->control;
  if (in->y && !u->label1.w) return mp_errorf("UNet forward: this model takes no label vector (y); SDXL conditioning needs an SDXL UNet");
  if (!in->y && u->label1.w) return mp_errorf("UNet forward: this SDXL UNet needs its label vector y (pooled text and size embeddings)");
  if (!enc && u->n_out == 0) return mp_errorf("UNet forward: this is an encoder-only copy (a ControlNet); it has no decoder");
  if (control && (control->n_down != u->n_in || !control->mid))
    return mp_errorf("UNet forward: ControlNet gives %d residuals%s, this UNet has %d input blocks and a middle block",
                     control->n_down, control->mid ? "" : " and no middle one", u->n_in);
  const mp_unet_config *cfg = &u->cfg;
  const int L = cfg->n_levels, div = 1 << (L - 1);
  if (batch < 1 || h < 1 || w < 1 || h % div || w % div)
    return mp_errorf("UNet input %dx%d (batch %d): height and width must be positive multiples of %d", h, w, batch, div);
  if (n_ctx < 1) return mp_errorf("UNet context needs at least one token");
  size_t act = 0;
  int widest = u->emb_dim;
  for (int l = 0; l < L; l++) {
    widest = u->max_c[l] > widest ? u->max_c[l] : widest;
    size_t a = (size_t)batch * (size_t)u->max_c[l] * (size_t)(h >> l) * (size_t)(w >> l);
    act = a > act ? a : act;
  }
  const size_t hw0 = (size_t)h * w, C = (size_t)u->max_tok_c, ffw = (size_t)2 * 4 * C;
  /* skips: one per input block, each [batch, c, hw_l] */
  size_t skip_total = (size_t)batch * hw0 * (size_t)u->model_ch;
  for (int i = 1; i < u->n_in; i++) {
    int l = u->in[i].level;
    skip_total += (size_t)batch * (size_t)u->in[i].c_out * (size_t)(h >> l) * (size_t)(w >> l);
  }
  const size_t emb_n = (size_t)batch * (size_t)u->emb_dim;
  /* the feed-forward's scratch: its widest chunk (ff_rows) of projections, and of gated rows on the f32 path */
  size_t ff_n = ((size_t)FF_CHUNK_FLOATS > 64 * ffw ? (size_t)FF_CHUNK_FLOATS : 64 * ffw) * 3 / 2;
  if (ff_n > hw0 * ffw * 3 / 2) ff_n = hw0 * ffw * 3 / 2;
  size_t total = 5 * act + skip_total + 6 * hw0 * C + ff_n + 2 * (size_t)batch * (size_t)n_ctx * C + 4 * emb_n +
                 (size_t)batch * (size_t)widest;
  mp_error *oom = mp_workspace_reserve(&u->acts, sizeof(float) * total);
  if (oom) {
    mp_error_free(oom);
    return mp_errorf("out of memory: the UNet forward at %dx%d batch %d needs %zu MB", h, w, batch, (total * 4) >> 20);
  }
  float *p = u->acts.p;
#define TAKE(n) (p += (n), p - (n))
  float *cur = TAKE(act), *nxt = TAKE(act), *cat = TAKE(act);
  fwd f = {.pool = pool, .ws = &u->ws, .batch = batch, .context = context, .n_ctx = n_ctx, .ctx_dim = cfg->context_dim,
           .emb_dim = u->emb_dim};
  f.t1 = TAKE(act), f.t2 = TAKE(act);
  float *skips = TAKE(skip_total);
  f.tok = TAKE(hw0 * C), f.nrm = TAKE(hw0 * C), f.q = TAKE(hw0 * C), f.k = TAKE(hw0 * C), f.v = TAKE(hw0 * C);
  f.att = TAKE(hw0 * C), f.ff = TAKE(ff_n);
  f.ck = TAKE((size_t)batch * (size_t)n_ctx * C), f.cv = TAKE((size_t)batch * (size_t)n_ctx * C);
  f.tok_cap = (int64_t)(hw0 * C);
  float *temb = TAKE(emb_n), *emb = TAKE(emb_n), *emb_silu = TAKE(emb_n), *label = TAKE(emb_n);
  f.emb_out = TAKE((size_t)batch * (size_t)widest);
#undef TAKE
  mp_error *e = NULL;

  /* time embedding */
  mp_unet_timestep_embedding(temb, t, batch, u->model_ch);
  if ((e = mp_dense(pool, &u->ws, emb, temb, batch, u->time1.w, u->time1.b))) goto done;
  mp_silu(emb, (int64_t)emb_n);
  if ((e = mp_dense(pool, &u->ws, emb_silu, emb, batch, u->time2.w, u->time2.b))) goto done;
  if (in->y) { /* SDXL: emb += label_emb(y) */
    if ((e = mp_dense(pool, &u->ws, label, in->y, batch, u->label1.w, u->label1.b))) goto done;
    mp_silu(label, (int64_t)emb_n);
    if ((e = mp_dense(pool, &u->ws, emb, label, batch, u->label2.w, u->label2.b))) goto done;
    mp_add(emb_silu, emb_silu, emb, (int64_t)emb_n);
  }
  mp_silu(emb_silu, (int64_t)emb_n); /* every ResBlock's emb_layers start with SiLU */
  f.emb_silu = emb_silu;

  /* input blocks */
  float *skip_at[64 + 4 * MP_MAX_LEVELS];
  int c_at[64 + 4 * MP_MAX_LEVELS], n_skip = 0;
  if (u->n_in > (int)(sizeof skip_at / sizeof *skip_at)) {
    e = mp_errorf("too many UNet blocks");
    goto done;
  }
  const mp_pad p1 = {1, 1, 1, 1};
  int ch = u->model_ch, hh = h, ww = w;
  float *sp = skips;
  int half = alike_half(in, hint, cfg, u->model_ch); /* > 0 until the first cross-attention */
  f.pair_tok = f.t2;
  if ((e = mp_conv2d(pool, &u->ws, cur, x, half ? half : batch, cfg->in_channels, h, w, u->conv_in.w, u->conv_in.b, 1, p1)))
    goto done;
  if (half) memcpy(cur + (size_t)half * ch * hw0, cur, sizeof(float) * (size_t)half * ch * hw0);
  if (hint) mp_add(cur, cur, hint, (int64_t)batch * ch * (int64_t)hw0);
  memcpy(sp, cur, sizeof(float) * (size_t)batch * (size_t)ch * hw0);
  if (control) add_scaled(sp, control->down[n_skip], control->scale, (size_t)batch * (size_t)ch * hw0);
  if (enc) enc->block[n_skip] = sp, enc->channels[n_skip] = ch, enc->h[n_skip] = h, enc->w[n_skip] = w;
  skip_at[n_skip] = sp, c_at[n_skip++] = ch, sp += (size_t)batch * (size_t)ch * hw0;
  for (int i = 1; i < u->n_in; i++) {
    const in_block *ib = &u->in[i];
    if (ib->is_down) {
      if ((e = mp_conv2d(pool, &u->ws, nxt, cur, half ? half : batch, ch, hh, ww, ib->down.w, ib->down.b, 2, p1))) goto done;
      hh /= 2, ww /= 2;
      const size_t item = (size_t)ch * (size_t)hh * (size_t)ww;
      if (half) memcpy(nxt + half * item, nxt, sizeof(float) * half * item);
    } else {
      if ((e = res_spatial_forward(&f, &ib->res, ib->st, cur, nxt, hh, ww, half))) goto done;
      if (ib->st) half = 0;
    }
    ch = ib->c_out;
    float *s = cur;
    cur = nxt, nxt = s;
    size_t n = (size_t)batch * (size_t)ch * (size_t)hh * (size_t)ww;
    memcpy(sp, cur, sizeof(float) * n);
    if (control) add_scaled(sp, control->down[n_skip], control->scale, n);
    if (enc) enc->block[n_skip] = sp, enc->channels[n_skip] = ch, enc->h[n_skip] = hh, enc->w[n_skip] = ww;
    skip_at[n_skip] = sp, c_at[n_skip++] = ch, sp += n;
  }
  /* middle */
  if ((e = res_spatial_forward(&f, &u->mid1, &u->mid_st, cur, nxt, hh, ww, half))) goto done;
  if ((e = res_forward(&f, &u->mid2, nxt, cur, hh, ww))) goto done;
  if (control) add_scaled(cur, control->mid, control->scale, (size_t)batch * (size_t)ch * (size_t)hh * (size_t)ww);
  if (enc) {
    enc->n_blocks = n_skip, enc->mid = cur, enc->mid_channels = ch, enc->mid_h = hh, enc->mid_w = ww;
    goto done;
  }
  /* output blocks */
  for (int i = 0; i < u->n_out; i++) {
    const out_block *ob = &u->out[i];
    n_skip--;
    const int64_t hw = (int64_t)hh * ww;
    concat_channels(cat, cur, ch, skip_at[n_skip], c_at[n_skip], batch, hw);
    if ((e = res_spatial_forward(&f, &ob->res, ob->st, cat, nxt, hh, ww, 0))) goto done;
    ch = ob->res.c_out;
    if (ob->has_up) {
      if ((e = upsample_forward(&f, &ob->up, nxt, cur, cat, ch, hh, ww))) goto done;
      hh *= 2, ww *= 2;
    } else {
      float *s = cur;
      cur = nxt, nxt = s;
    }
  }
  /* out */
  mp_group_norm(pool, nxt, cur, batch, ch, (int64_t)hh * ww, GROUPS, u->out_norm.gamma, u->out_norm.beta, RES_EPS, true);
  e = mp_conv2d(pool, &u->ws, eps, nxt, batch, ch, hh, ww, u->conv_out.w, u->conv_out.b, 1, p1);
done:
  return e ? mp_error_wrap(e, "UNet forward") : NULL;
}

mp_error *mp_unet_run(mp_unet *u, mp_pool *pool, const mp_unet_inputs *in, float *eps) {
  return run(u, pool, in, NULL, NULL, eps);
}

mp_error *mp_unet_encode(mp_unet *u, mp_pool *pool, const mp_unet_inputs *in, const float *hint, mp_unet_encoded *out) {
  memset(out, 0, sizeof *out);
  if (u->n_in > MP_UNET_MAX_SKIPS) return mp_errorf("UNet encoder: %d input blocks, at most %d supported", u->n_in, MP_UNET_MAX_SKIPS);
  return run(u, pool, in, hint, out, NULL);
}
