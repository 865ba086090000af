/* The SD autoencoder (AutoencoderKL, CompVis `first_stage_model.*` layout) on f32 activations, NCHW;
 * under a bf16 backend the levels whose convolutions are bf16 keep theirs NHWC (see PRECISION in
 * mp_vae_load, and decode_whole / encode_whole).
 *
 *   encode: conv_in ─▶ levels [ResnetBlock×n, Downsample (pad right/bottom, stride 2)] ─▶ mid [Res, Attn, Res]
 *           ─▶ GroupNorm, SiLU, conv_out ─▶ quant_conv ─▶ moments (mean, logvar)
 *   decode: post_quant_conv ─▶ conv_in ─▶ mid [Res, Attn, Res] ─▶ levels reversed [ResnetBlock×(n+1), Upsample]
 *           ─▶ GroupNorm, SiLU, conv_out ─▶ image
 * GroupNorm: 32 groups, eps 1e-6. The mid attention is single-head over all pixels, with its q/k/v/proj_out
 * stored as [C, C, 1, 1] convolutions.
 *
 * Large images run in overlapping tiles (latent tiles for decoding, pixel tiles for encoding), blended
 * with linear ramps across the overlap, so activation memory is bounded by the tile. Tiles see their own
 * GroupNorm statistics and attention context, so tiled output is close to, not equal to, untiled. */
#include "models/vae.h"

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
#include "core/tile.h"

enum { GROUPS = 32 };
static const float EPS = 1e-6f;

typedef struct {
  float *gamma, *beta;
} norm;

typedef struct {
  const mp_tensor *w, *b;
} layer;

typedef struct {
  int c_in, c_out;
  norm n1, n2;
  layer conv1, conv2, skip;
  bool bf16; /* conv1/conv2 take the backend's bf16 path (see PRECISION below); the 1x1 skip stays f32 */
} resblock;

typedef struct {
  int C;
  norm gn;
  layer q, k, v, proj;
} attn;

typedef struct {
  resblock *blocks;
  int n_blocks;
  bool has_resample;
  layer resample;
  bool resample_bf16;
  int c_out;
} level;

typedef struct {
  layer conv_in, conv_out;
  norm norm_out;
  level lv[MP_MAX_LEVELS];
  resblock mid1, mid2;
  attn mid_attn;
  int c_mid;
} coder;

struct mp_vae {
  mp_vae_config cfg;
  coder enc, dec;
  layer quant, post_quant;
  float **owned;
  int n_owned, cap_owned;
  mp_workspace ws;
  mp_vae_tiling tiling;
  bool nhwc; /* the bf16 levels may run on NHWC activations (mp_vae_set_nhwc) */
};

/* ---- binding: shape-checked lookups, the first error kept ---- */
typedef struct {
  const mp_weights *w;
  const char *prefix;
  mp_vae *v;
  mp_error *err;
} binder;

static const mp_tensor *bind(binder *b, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static const mp_tensor *bind(binder *b, int ndim, const int64_t *shape, const char *fmt, ...) {
  if (b->err) return NULL;
  char name[256];
  int n = snprintf(name, sizeof name, "%s", b->prefix);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(name + n, sizeof name - (size_t)n, fmt, ap);
  va_end(ap);
  const mp_tensor *t = NULL;
  b->err = mp_sd_weight(b->w, name, ndim, shape, &t);
  return t;
}

#define SHAPE(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

static float *own_f32(binder *b, const mp_tensor *t, int64_t n) {
  if (b->err || !t) return NULL;
  mp_vae *v = b->v;
  if (v->n_owned == v->cap_owned) {
    int cap = v->cap_owned ? 2 * v->cap_owned : 64;
    float **nn = realloc(v->owned, sizeof *nn * (size_t)cap);
    if (!nn) return b->err = mp_errorf("out of memory"), NULL;
    v->owned = nn, v->cap_owned = cap;
  }
  float *x = malloc(sizeof(float) * (size_t)n);
  if (!x) return b->err = mp_errorf("out of memory"), NULL;
  v->owned[v->n_owned++] = x;
  b->err = mp_vector_f32(t, x, n);
  return x;
}

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

static void bind_res(binder *b, resblock *r, int c_in, int c_out, const char *base) {
  char k[160];
  r->c_in = c_in, r->c_out = c_out;
  snprintf(k, sizeof k, "%s.norm1", base), r->n1 = bind_norm(b, c_in, k);
  snprintf(k, sizeof k, "%s.conv1", base), r->conv1 = bind_conv(b, c_out, c_in, 3, k);
  snprintf(k, sizeof k, "%s.norm2", base), r->n2 = bind_norm(b, c_out, k);
  snprintf(k, sizeof k, "%s.conv2", base), r->conv2 = bind_conv(b, c_out, c_out, 3, k);
  r->skip.w = r->skip.b = NULL;
  if (c_in != c_out) snprintf(k, sizeof k, "%s.nin_shortcut", base), r->skip = bind_conv(b, c_out, c_in, 1, k);
}

static void bind_mid(binder *b, coder *c, int C, const char *part) {
  char k[160];
  c->c_mid = C;
  snprintf(k, sizeof k, "%s.mid.block_1", part), bind_res(b, &c->mid1, C, C, k);
  snprintf(k, sizeof k, "%s.mid.block_2", part), bind_res(b, &c->mid2, C, C, k);
  attn *a = &c->mid_attn;
  a->C = C;
  snprintf(k, sizeof k, "%s.mid.attn_1.norm", part), a->gn = bind_norm(b, C, k);
  snprintf(k, sizeof k, "%s.mid.attn_1.q", part), a->q = bind_conv(b, C, C, 1, k);
  snprintf(k, sizeof k, "%s.mid.attn_1.k", part), a->k = bind_conv(b, C, C, 1, k);
  snprintf(k, sizeof k, "%s.mid.attn_1.v", part), a->v = bind_conv(b, C, C, 1, k);
  snprintf(k, sizeof k, "%s.mid.attn_1.proj_out", part), a->proj = bind_conv(b, C, C, 1, k);
}

static resblock *new_blocks(binder *b, int n) {
  resblock *r = calloc((size_t)n, sizeof *r);
  if (!r && !b->err) b->err = mp_errorf("out of memory");
  return r;
}

void mp_vae_free(mp_vae *v) {
  if (!v) return;
  for (int l = 0; l < MP_MAX_LEVELS; l++) free(v->enc.lv[l].blocks), free(v->dec.lv[l].blocks);
  for (int i = 0; i < v->n_owned; i++) free(v->owned[i]);
  free(v->owned);
  mp_workspace_free(&v->ws);
  free(v);
}

mp_error *mp_vae_load(const mp_weights *w, const char *prefix, const mp_vae_config *cfg, mp_vae **out) {
  *out = NULL;
  const int L = cfg->n_levels, ch = cfg->ch, nrb = cfg->num_res_blocks;
  if (L < 1 || L > MP_MAX_LEVELS || ch < GROUPS || ch % GROUPS || nrb < 1 || cfg->z_channels < 1 || cfg->embed_dim < 1 ||
      cfg->in_channels < 1 || cfg->out_channels < 1)
    return mp_errorf("unsupported VAE config (levels %d, ch %d, res blocks %d, z %d)", L, ch, nrb, cfg->z_channels);
  for (int l = 0; l < L; l++)
    if (cfg->ch_mult[l] < 1) return mp_errorf("VAE ch_mult[%d] = %d", l, cfg->ch_mult[l]);
  mp_vae *v = calloc(1, sizeof *v);
  if (!v) return mp_errorf("out of memory");
  v->cfg = *cfg;
  v->tiling = (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0};
  v->nhwc = true;
  /* PRECISION. Under --precision bf16 only some convolutions take the bf16 path; the rest stay f32.
   * All in bf16, the decoded image misses the golden reduced-precision bound (tiny model: rel L2
   * 1.8e-2 > 1e-2). Measured one part at a time in bf16, the rest f32 (tiny decode_a, rel L2):
   * mid ResBlocks 1.0e-2, mid attention 1.3e-3, up level 3 blocks 7.5e-3, level 2 7.0e-3, level 1
   * 6.3e-3, level 0 3.9e-3; the upsample convolutions into levels 2/1/0 5.7e-3 / 4.7e-3 / 3.3e-3;
   * the 1x1 skips 2.1e-3. The errors add about in quadrature, and the low-resolution parts, which
   * hold the most error, are the cheap ones (the work grows with the resolution). So bf16 takes the
   * decoder's two highest-resolution levels (0 and 1, their 3x3 convolutions) and the upsample into
   * level 0: tiny 8.2e-3, tiny-xl 7.6e-3, SD 1.5 size 3.8e-3 / 3.9e-3 (bf16_floor 1.7e-2 / 1.8e-2).
   * The encoder likewise (one part in bf16, tiny moments: level 0 8.2e-3, level 1 5.3e-3, level 2
   * 4.8e-3, level 3 3.0e-3, downsamples 4.6e-3 / 3.8e-3 / 2.7e-3, mid ResBlocks 2.1e-3): bf16 takes
   * levels 1 and 2 and the downsample between them (tiny moments 7.7e-3). Everything else (mid
   * blocks, the 1x1 skips, conv_in/out) stays f32, except the mid attention's two products, which
   * take the bf16 attention kernel (f32 softmax): its cost grows with the square of the pixels (at
   * 1024x1024 it was 1.3 of 17 s in f32, 0.2 s in bf16) and it adds little error (tiny decode 8.1e-3,
   * moments 8.1e-3; SD 1.5 size unchanged at 3.9e-3 and 5.9e-3). */
  v->ws.f32_only = true;
  binder b = {w, prefix ? prefix : "", v, NULL};
  char k[160];
  const int z = cfg->z_channels, e = cfg->embed_dim;
  /* encoder */
  coder *en = &v->enc;
  en->conv_in = bind_conv(&b, ch, cfg->in_channels, 3, "encoder.conv_in");
  int c = ch;
  for (int l = 0; l < L && !b.err; l++) {
    level *lv = &en->lv[l];
    lv->n_blocks = nrb;
    lv->blocks = new_blocks(&b, nrb);
    int c_out = ch * cfg->ch_mult[l];
    for (int j = 0; j < nrb && !b.err; j++, c = c_out)
      snprintf(k, sizeof k, "encoder.down.%d.block.%d", l, j), bind_res(&b, &lv->blocks[j], c, c_out, k);
    lv->c_out = c;
    for (int j = 0; j < nrb && lv->blocks; j++) lv->blocks[j].bf16 = l >= 1 && l <= L - 2;
    lv->resample_bf16 = l == 1 && l <= L - 2;
    if (l != L - 1) lv->has_resample = true, snprintf(k, sizeof k, "encoder.down.%d.downsample.conv", l), lv->resample = bind_conv(&b, c, c, 3, k);
  }
  bind_mid(&b, en, c, "encoder");
  en->norm_out = bind_norm(&b, c, "encoder.norm_out");
  en->conv_out = bind_conv(&b, 2 * z, c, 3, "encoder.conv_out");
  v->quant = bind_conv(&b, 2 * e, 2 * z, 1, "quant_conv");
  /* decoder */
  coder *de = &v->dec;
  v->post_quant = bind_conv(&b, z, e, 1, "post_quant_conv");
  c = ch * cfg->ch_mult[L - 1];
  de->conv_in = bind_conv(&b, c, z, 3, "decoder.conv_in");
  bind_mid(&b, de, c, "decoder");
  for (int l = L - 1; l >= 0 && !b.err; l--) {
    level *lv = &de->lv[l];
    lv->n_blocks = nrb + 1;
    lv->blocks = new_blocks(&b, nrb + 1);
    int c_out = ch * cfg->ch_mult[l];
    for (int j = 0; j <= nrb && !b.err; j++, c = c_out)
      snprintf(k, sizeof k, "decoder.up.%d.block.%d", l, j), bind_res(&b, &lv->blocks[j], c, c_out, k);
    lv->c_out = c;
    for (int j = 0; j <= nrb && lv->blocks; j++) lv->blocks[j].bf16 = l <= 1;
    lv->resample_bf16 = l == 1;
    if (l != 0) lv->has_resample = true, snprintf(k, sizeof k, "decoder.up.%d.upsample.conv", l), lv->resample = bind_conv(&b, c, c, 3, k);
  }
  de->norm_out = bind_norm(&b, c, "decoder.norm_out");
  de->conv_out = bind_conv(&b, cfg->out_channels, c, 3, "decoder.conv_out");
  if (b.err) {
    mp_vae_free(v);
    return mp_error_wrap(b.err, "loading the VAE");
  }
  *out = v;
  return NULL;
}

void mp_vae_set_tiling(mp_vae *v, mp_vae_tiling t) { v->tiling = t; }

void mp_vae_set_nhwc(mp_vae *v, bool allow) { v->nhwc = allow; }

/* ---- forward pieces; activations [C, h, w] of one image ---- */
typedef struct {
  mp_pool *pool;
  mp_workspace *ws;
  float *t1, *t2; /* scratch: t2 as large as the widest activation, t1 as the middle block's (attention) */
  float *q, *k, *v; /* attention scratch [hw, C] (q also holds the normalised tokens) */
} fwd;

static const mp_pad PAD1 = {1, 1, 1, 1}, PAD0 = {0, 0, 0, 0};

/* The next ops' precision (the backend's bf16 where allowed, else f32); see PRECISION in mp_vae_load. */
static void use_bf16(fwd *f, bool bf16) { f->ws->f32_only = !bf16; }

/* y = x + conv2(silu(gn2(conv1(silu(gn1(x)))))) (x through the 1x1 skip convolution when the width
 * changes). x is consumed: it serves as scratch, so a block needs three activation buffers (x, y, t2)
 * rather than four, which bounds the VAE's peak memory; the arithmetic and its order are unchanged. */
static mp_error *res_forward(fwd *f, const resblock *r, float *x, float *y, int h, int w) {
  const int64_t hw = (int64_t)h * w;
  if (r->skip.w) {
    use_bf16(f, false);
    MP_TRY(mp_conv2d(f->pool, f->ws, y, x, 1, r->c_in, h, w, r->skip.w, r->skip.b, 1, PAD0));
    mp_group_norm(f->pool, x, x, 1, r->c_in, hw, GROUPS, r->n1.gamma, r->n1.beta, EPS, true);
    use_bf16(f, r->bf16);
    MP_TRY(mp_conv2d(f->pool, f->ws, f->t2, x, 1, r->c_in, h, w, r->conv1.w, r->conv1.b, 1, PAD1));
    mp_group_norm(f->pool, f->t2, f->t2, 1, r->c_out, hw, GROUPS, r->n2.gamma, r->n2.beta, EPS, true);
    MP_TRY(mp_conv2d(f->pool, f->ws, x, f->t2, 1, r->c_out, h, w, r->conv2.w, r->conv2.b, 1, PAD1));
    mp_add(y, x, y, r->c_out * hw);
  } else {
    use_bf16(f, r->bf16);
    mp_group_norm(f->pool, y, x, 1, r->c_in, hw, GROUPS, r->n1.gamma, r->n1.beta, EPS, true);
    MP_TRY(mp_conv2d(f->pool, f->ws, f->t2, y, 1, r->c_in, h, w, r->conv1.w, r->conv1.b, 1, PAD1));
    mp_group_norm(f->pool, f->t2, f->t2, 1, r->c_out, hw, GROUPS, r->n2.gamma, r->n2.beta, EPS, true);
    MP_TRY(mp_conv2d(f->pool, f->ws, y, f->t2, 1, r->c_out, h, w, r->conv2.w, r->conv2.b, 1, PAD1));
    mp_add(y, y, x, r->c_out * hw);
  }
  return NULL;
}

/* x [C, hw] += proj_out(softmax(q kᵀ / sqrt(C)) v), one head over all pixels. */
static mp_error *attn_forward(fwd *f, const attn *a, float *x, int h, int w) {
  const int64_t hw = (int64_t)h * w;
  use_bf16(f, false);
  mp_group_norm(f->pool, f->t1, x, 1, a->C, hw, GROUPS, a->gn.gamma, a->gn.beta, EPS, false);
  mp_transpose(f->pool, f->t2, f->t1, a->C, hw); /* tokens [hw, C] */
  MP_TRY(mp_dense(f->pool, f->ws, f->q, f->t2, hw, a->q.w, a->q.b));
  MP_TRY(mp_dense(f->pool, f->ws, f->k, f->t2, hw, a->k.w, a->k.b));
  MP_TRY(mp_dense(f->pool, f->ws, f->v, f->t2, hw, a->v.w, a->v.b));
  mp_profile_begin(mp_pool_profile(f->pool));
  mp_attention_auto(f->pool, f->t1, f->q, f->k, f->v, hw, hw, 1, a->C, false);
  mp_profile_end(mp_pool_profile(f->pool), MP_OP_ATTENTION);
  MP_TRY(mp_dense(f->pool, f->ws, f->t2, f->t1, hw, a->proj.w, a->proj.b));
  mp_transpose_add(f->pool, x, f->t2, a->C, hw);
  return NULL;
}

static mp_error *mid_forward(fwd *f, const coder *c, float **cur, float **nxt, int h, int w) {
  MP_TRY(res_forward(f, &c->mid1, *cur, *nxt, h, w));
  MP_TRY(attn_forward(f, &c->mid_attn, *nxt, h, w));
  MP_TRY(res_forward(f, &c->mid2, *nxt, *cur, h, w));
  return NULL;
}

/* ---- the bf16 levels on NHWC activations [pixels, C] (see core/nhwc_bf16.h) ---- */

/* y = conv(x), or y += conv(x) when `accumulate` (the residual add in the convolution's epilogue) */
static mp_error *conv_nhwc(fwd *f, const layer *l, float *y, const uint16_t *x, int c_in, int h, int w, bool accumulate) {
  return mp_conv2d_nhwc_bf16(f->pool, f->ws, y, x, 1, c_in, h, w, l->w, l->b, 1, PAD1, accumulate);
}

/* res_forward on NHWC: the same arithmetic, each norm writing its convolution's bf16 input into
 * whichever buffer is free at that point (t2, or y before anything else lands there), and conv2
 * adding onto the residual where it lies. *out is that buffer: x without a skip projection (the
 * input is the residual), y with one. */
static mp_error *res_forward_nhwc(fwd *f, const resblock *r, float *x, float *y, int h, int w, float **out) {
  const int64_t hw = (int64_t)h * w;
  if (r->skip.w) {
    use_bf16(f, false);
    MP_TRY(mp_dense(f->pool, f->ws, y, x, hw, r->skip.w, r->skip.b)); /* a 1x1 convolution is a dense layer on pixels */
    use_bf16(f, true);
    uint16_t *t = (uint16_t *)(void *)f->t2;
    MP_TRY(mp_group_norm_nhwc(f->pool, f->ws, t, true, x, hw, r->c_in, GROUPS, r->n1.gamma, r->n1.beta, EPS, true));
    MP_TRY(conv_nhwc(f, &r->conv1, x, t, r->c_in, h, w, false));
    MP_TRY(mp_group_norm_nhwc(f->pool, f->ws, t, true, x, hw, r->c_out, GROUPS, r->n2.gamma, r->n2.beta, EPS, true));
    MP_TRY(conv_nhwc(f, &r->conv2, y, t, r->c_out, h, w, true));
    *out = y;
  } else {
    use_bf16(f, true);
    uint16_t *t = (uint16_t *)(void *)y;
    MP_TRY(mp_group_norm_nhwc(f->pool, f->ws, t, true, x, hw, r->c_in, GROUPS, r->n1.gamma, r->n1.beta, EPS, true));
    MP_TRY(conv_nhwc(f, &r->conv1, f->t2, t, r->c_in, h, w, false));
    MP_TRY(mp_group_norm_nhwc(f->pool, f->ws, t, true, f->t2, hw, r->c_out, GROUPS, r->n2.gamma, r->n2.beta, EPS, true));
    MP_TRY(conv_nhwc(f, &r->conv2, x, t, r->c_out, h, w, true));
    *out = x;
  }
  return NULL;
}

static void swap_buffers(float **a, float **b) {
  float *t = *a;
  *a = *b, *b = t;
}

/* A level's ResnetBlocks on *cur, the result in *cur again (*nxt is the other activation buffer). With
 * `to_nhwc` the activations turn NHWC first ([C, hw] -> [hw, C]); from then on (*nhwc) blocks run NHWC. */
static mp_error *level_blocks(fwd *f, const level *lv, float **cur, float **nxt, int h, int w, bool to_nhwc, bool *nhwc) {
  if (to_nhwc && !*nhwc) {
    mp_transpose(f->pool, *nxt, *cur, lv->blocks[0].c_in, (int64_t)h * w);
    swap_buffers(cur, nxt);
    *nhwc = true;
  }
  for (int j = 0; j < lv->n_blocks; j++) {
    float *o = *nxt;
    MP_TRY(*nhwc ? res_forward_nhwc(f, &lv->blocks[j], *cur, *nxt, h, w, &o) : res_forward(f, &lv->blocks[j], *cur, *nxt, h, w));
    if (o == *nxt) swap_buffers(cur, nxt);
  }
  return NULL;
}

/* Whether decoding from level `from` (at h x w) down can stay NHWC: every 3x3 convolution left in
 * the levels is bf16 and goes to the direct convolution (not the f32 path, not Winograd). */
static bool decode_nhwc_from(const mp_vae *v, mp_pool *pool, int from, int h, int w) {
  for (int l = from; l >= 0; l--, h *= 2, w *= 2) {
    const level *lv = &v->dec.lv[l];
    for (int j = 0; j < lv->n_blocks; j++) {
      const resblock *r = &lv->blocks[j];
      if (!r->bf16 || !mp_conv2d_nhwc_usable(pool, r->c_in, r->c_out, h, w, 1) ||
          !mp_conv2d_nhwc_usable(pool, r->c_out, r->c_out, h, w, 1))
        return false;
    }
    if (lv->has_resample && (!lv->resample_bf16 || !mp_conv2d_nhwc_usable(pool, lv->c_out, lv->c_out, 2 * h, 2 * w, 1))) return false;
  }
  return true;
}

/* Widest activation, in floats, of decoding an h x w latent (or encoding an 8h x 8w image). */
static size_t widest(const mp_vae *v, int h, int w) {
  const int L = v->cfg.n_levels;
  size_t m = 0;
  for (int l = 0; l < L; l++) {
    /* level l holds its own width and, at its boundaries, its neighbours' (encoder input, decoder input) */
    int cmax = v->cfg.ch * v->cfg.ch_mult[l];
    if (l > 0 && v->cfg.ch * v->cfg.ch_mult[l - 1] > cmax) cmax = v->cfg.ch * v->cfg.ch_mult[l - 1];
    if (l + 1 < L && v->cfg.ch * v->cfg.ch_mult[l + 1] > cmax) cmax = v->cfg.ch * v->cfg.ch_mult[l + 1];
    if (v->cfg.ch > cmax) cmax = v->cfg.ch;
    size_t s = (size_t)cmax * (size_t)(h << (L - 1 - l)) * (size_t)(w << (L - 1 - l));
    m = s > m ? s : m;
  }
  size_t io = (size_t)(2 * v->cfg.z_channels + 2 * v->cfg.embed_dim + v->cfg.in_channels + v->cfg.out_channels) *
              (size_t)(h << (L - 1)) * (size_t)(w << (L - 1));
  return m > io ? m : io;
}

/* The activation memory of one decode or encode call, shared by its tiles: a 1024x1024 decode's two
 * tiles would otherwise each map ~1 GB afresh, faulting and zeroing every page again (0.4-0.7 s of
 * sys time per decode). Its first touch still costs: mp_alloc asks for huge pages at this size, which
 * took a 512x512 decode from 5.2-5.8 s to 4.2-4.3 s on a Zen 5 (bench/RESULTS.md, thirteenth session).
 * Freed when the call returns, so the memory is not held between a pipeline's phases. */
typedef struct {
  float *mem;
  size_t cap; /* floats */
} arena;

typedef struct {
  fwd f;
  float *a, *b;
} buffers;

static mp_error *buffers_alloc(mp_vae *v, mp_pool *pool, int h, int w, arena *ar, buffers *bf) {
  const int L = v->cfg.n_levels;
  size_t act = widest(v, h, w);
  size_t mid_c = (size_t)v->cfg.ch * (size_t)v->cfg.ch_mult[L - 1], mid_hw = (size_t)h * (size_t)w;
  size_t attn_n = 4 * mid_c * mid_hw; /* t1, q, k, v */
  size_t total = 3 * act + attn_n;
  if (total > ar->cap) {
    mp_free(ar->mem);
    ar->cap = 0;
    if (!(ar->mem = mp_alloc(sizeof(float) * total)))
      return mp_errorf("out of memory: the VAE at %dx%d latent needs %zu MB (tiling bounds this)", h, w, (total * 4) >> 20);
    ar->cap = total;
  }
  float *p = ar->mem;
  bf->a = p, bf->b = p + act, bf->f.t2 = p + 2 * act;
  bf->f.t1 = p + 3 * act, bf->f.q = bf->f.t1 + mid_c * mid_hw, bf->f.k = bf->f.q + mid_c * mid_hw, bf->f.v = bf->f.k + mid_c * mid_hw;
  bf->f.pool = pool, bf->f.ws = &v->ws;
  return NULL;
}

/* Decode one latent tile z [embed_dim, h, w] -> image [out, 8h, 8w] (for L = 4). With allow_nhwc,
 * the levels from where decode_nhwc_from holds run on NHWC activations (*went_nhwc says whether
 * they did: a failure there, such as oneDNN declining a shape, may be retried without). */
static mp_error *decode_whole(mp_vae *v, mp_pool *pool, arena *ar, int h, int w, const float *z, float *image, bool allow_nhwc,
                              bool *went_nhwc) {
  const mp_vae_config *cfg = &v->cfg;
  const coder *de = &v->dec;
  buffers bf;
  MP_TRY(buffers_alloc(v, pool, h, w, ar, &bf));
  fwd *f = &bf.f;
  float *cur = bf.a, *nxt = bf.b;
  mp_error *e = NULL;
  int hh = h, ww = w;
  use_bf16(f, false);
  if ((e = mp_conv2d(pool, f->ws, f->t1, z, 1, cfg->embed_dim, h, w, v->post_quant.w, v->post_quant.b, 1, PAD0))) goto done;
  if ((e = mp_conv2d(pool, f->ws, cur, f->t1, 1, cfg->z_channels, h, w, de->conv_in.w, de->conv_in.b, 1, PAD1))) goto done;
  if ((e = mid_forward(f, de, &cur, &nxt, hh, ww))) goto done;
  bool nhwc = false;
  for (int l = cfg->n_levels - 1; l >= 0; l--) {
    const level *lv = &de->lv[l];
    const bool to_nhwc = allow_nhwc && !nhwc && decode_nhwc_from(v, pool, l, hh, ww);
    if ((e = level_blocks(f, lv, &cur, &nxt, hh, ww, to_nhwc, &nhwc))) goto done;
    *went_nhwc |= nhwc;
    if (lv->has_resample && nhwc) {
      uint16_t *up = (uint16_t *)(void *)nxt;
      mp_upsample_nearest2x_nhwc_bf16(pool, up, cur, hh, ww, lv->c_out);
      hh *= 2, ww *= 2;
      use_bf16(f, true);
      if ((e = conv_nhwc(f, &lv->resample, cur, up, lv->c_out, hh, ww, false))) goto done;
    } else if (lv->has_resample) {
      mp_upsample_nearest2x(pool, nxt, cur, lv->c_out, hh, ww);
      hh *= 2, ww *= 2;
      use_bf16(f, lv->resample_bf16);
      if ((e = mp_conv2d(pool, f->ws, cur, nxt, 1, lv->c_out, hh, ww, lv->resample.w, lv->resample.b, 1, PAD1))) goto done;
    }
  }
  const int c = de->lv[0].c_out;
  if (nhwc) { /* back to [C, hw] for the f32 output layers */
    mp_transpose(pool, nxt, cur, (int64_t)hh * ww, c);
    swap_buffers(&cur, &nxt);
  }
  use_bf16(f, false);
  mp_group_norm(pool, nxt, cur, 1, c, (int64_t)hh * ww, GROUPS, de->norm_out.gamma, de->norm_out.beta, EPS, true);
  e = mp_conv2d(pool, f->ws, image, nxt, 1, c, hh, ww, de->conv_out.w, de->conv_out.b, 1, PAD1);
done:
  use_bf16(f, false);
  return e;
}

/* Whether the encoder's level `lv` (at h x w) can run NHWC: its blocks' convolutions are bf16 and direct. */
static bool encode_level_nhwc(mp_pool *pool, const level *lv, int h, int w) {
  for (int j = 0; j < lv->n_blocks; j++) {
    const resblock *r = &lv->blocks[j];
    if (!r->bf16 || !mp_conv2d_nhwc_usable(pool, r->c_in, r->c_out, h, w, 1) || !mp_conv2d_nhwc_usable(pool, r->c_out, r->c_out, h, w, 1))
      return false;
  }
  return lv->n_blocks > 0;
}

/* Encode one image tile [in, H, W] -> moments [2*embed_dim, H/8, W/8] (for L = 4). With allow_nhwc the
 * bf16 levels (and the bf16 downsample between them) run on NHWC activations, as in decode_whole. */
static mp_error *encode_whole(mp_vae *v, mp_pool *pool, arena *ar, int H, int W, const float *image, float *moments, bool allow_nhwc,
                              bool *went_nhwc) {
  const mp_vae_config *cfg = &v->cfg;
  const coder *en = &v->enc;
  const int f8 = 1 << (cfg->n_levels - 1);
  buffers bf;
  MP_TRY(buffers_alloc(v, pool, H / f8, W / f8, ar, &bf));
  fwd *f = &bf.f;
  float *cur = bf.a, *nxt = bf.b;
  mp_error *e = NULL;
  int hh = H, ww = W;
  use_bf16(f, false);
  if ((e = mp_conv2d(pool, f->ws, cur, image, 1, cfg->in_channels, H, W, en->conv_in.w, en->conv_in.b, 1, PAD1))) goto done;
  bool nhwc = false;
  const mp_pad down_pad = {0, 1, 0, 1}; /* torch pads (0, 1, 0, 1): one zero column right, one row below */
  for (int l = 0; l < cfg->n_levels; l++) {
    const level *lv = &en->lv[l];
    const bool to_nhwc = allow_nhwc && !nhwc && encode_level_nhwc(pool, lv, hh, ww);
    if ((e = level_blocks(f, lv, &cur, &nxt, hh, ww, to_nhwc, &nhwc))) goto done;
    *went_nhwc |= nhwc;
    const int h2 = mp_conv_out_size(hh, 3, 2, 0, 1), w2 = mp_conv_out_size(ww, 3, 2, 0, 1);
    if (lv->has_resample && nhwc && lv->resample_bf16 && mp_conv2d_nhwc_usable(pool, lv->c_out, lv->c_out, hh, ww, 1) &&
        l + 1 < cfg->n_levels && encode_level_nhwc(pool, &en->lv[l + 1], h2, w2)) { /* the next level runs NHWC too */
      uint16_t *xb = (uint16_t *)(void *)nxt;
      mp_bf16_copy(pool, xb, cur, (int64_t)hh * ww * lv->c_out);
      use_bf16(f, true);
      if ((e = mp_conv2d_nhwc_bf16(pool, f->ws, cur, xb, 1, lv->c_out, hh, ww, lv->resample.w, lv->resample.b, 2, down_pad, false)))
        goto done;
      hh = h2, ww = w2;
      continue;
    }
    if (nhwc && (lv->has_resample || l + 1 == cfg->n_levels)) { /* back to [C, hw] */
      mp_transpose(pool, nxt, cur, (int64_t)hh * ww, lv->c_out);
      swap_buffers(&cur, &nxt);
      nhwc = false;
    }
    if (lv->has_resample) {
      use_bf16(f, lv->resample_bf16);
      if ((e = mp_conv2d(pool, f->ws, nxt, cur, 1, lv->c_out, hh, ww, lv->resample.w, lv->resample.b, 2, down_pad))) goto done;
      hh = h2, ww = w2;
      swap_buffers(&cur, &nxt);
    }
  }
  if ((e = mid_forward(f, en, &cur, &nxt, hh, ww))) goto done;
  const int c = en->c_mid;
  use_bf16(f, false);
  mp_group_norm(pool, nxt, cur, 1, c, (int64_t)hh * ww, GROUPS, en->norm_out.gamma, en->norm_out.beta, EPS, true);
  if ((e = mp_conv2d(pool, f->ws, cur, nxt, 1, c, hh, ww, en->conv_out.w, en->conv_out.b, 1, PAD1))) goto done;
  e = mp_conv2d(pool, f->ws, moments, cur, 1, 2 * cfg->z_channels, hh, ww, v->quant.w, v->quant.b, 1, PAD0);
done:
  use_bf16(f, false);
  return e;
}

/* The side of each of `count` tiles covering n cells with the given overlap, as small as that allows. */
static int side_for(int n, int count, int ov) { return count == 1 ? n : (n + (count - 1) * ov + count - 1) / count; }

/* The tiles AUTO uses for an h x w latent: of the splits into rows x columns of tiles, each as small
 * as its count allows (the tiles then overlap by about the configured overlap), with sides of at most
 * twice the configured tile and an area of at most 2 x 5/4 of its square, the one with the least
 * work (cells decoded, overlaps counted twice; fewer tiles on a tie). Why: with the fixed 64-cell
 * tile a 1024x1024 decode (128 cells) took 3x3 tiles, 2.25x the pixels' work, since the last tile
 * sits flush with the edge and overlaps its neighbour by 48 cells; square 72-cell tiles took 2x2
 * (1.27x); two 128x72 tiles take 1.125x and were 15 % faster (2 x 7.2 s vs 4 x 4.2 s in bf16). The
 * area bound keeps a tile's activations at 2.5x a 512x512 decode's: with the bf16 levels NHWC that
 * is 1.5 GB at SD 1.5 size, below the UNet step's peak at the same image size. The encoder, whose
 * full-resolution level 0 is f32 NCHW (not measured with larger tiles), keeps square tiles of at
 * most 5/4 of the configured tile per side (`square`). */
static void auto_tile(const mp_vae *v, int h, int w, bool square, int *th, int *tw) {
  const int t = v->tiling.tile > 0 ? v->tiling.tile : MP_VAE_DEFAULT_TILE, ov = v->tiling.overlap > 0 ? v->tiling.overlap : t / 4;
  const int longest = square ? t + t / 4 : 2 * t;
  const int64_t area = (int64_t)longest * (t + t / 4);
  int64_t best = -1;
  *th = h < longest ? h : longest, *tw = w < longest ? w : longest; /* no split fits: never for ov < t/2 */
  for (int ny = 1; ny <= h && ny <= 64; ny++)
    for (int nx = 1; nx <= w && nx <= 64; nx++) {
      const int sh = side_for(h, ny, ov), sw = side_for(w, nx, ov);
      if (sh > longest || sw > longest || (int64_t)sh * sw > area || (ny > 1 && sh <= ov) || (nx > 1 && sw <= ov)) continue;
      const int64_t work = (int64_t)ny * nx * sh * sw;
      if (best < 0 || work < best) best = work, *th = sh, *tw = sw;
    }
}

static void tile_dims(const mp_vae *v, int h, int w, bool square, int *th, int *tw) {
  if (v->tiling.mode == MP_VAE_TILE_AUTO) auto_tile(v, h, w, square, th, tw);
  else *th = *tw = v->tiling.tile > 0 ? v->tiling.tile : MP_VAE_DEFAULT_TILE;
  if (square) *th = *tw = *th > *tw ? *th : *tw;
}

static bool use_tiles(const mp_vae *v, int h, int w) {
  switch (v->tiling.mode) {
    case MP_VAE_TILE_OFF: return false;
    case MP_VAE_TILE_ON: return h > v->tiling.tile || w > v->tiling.tile;
    default: return (int64_t)h * w > MP_VAE_AUTO_TILE_AREA;
  }
}

static mp_error *check_tiling(mp_vae *v) {
  if (v->tiling.tile <= 0) v->tiling.tile = MP_VAE_DEFAULT_TILE;
  if (v->tiling.overlap <= 0) v->tiling.overlap = v->tiling.tile / 4;
  if (v->tiling.overlap >= v->tiling.tile) return mp_errorf("VAE tile overlap %d must be below the tile size %d", v->tiling.overlap, v->tiling.tile);
  return NULL;
}

typedef struct {
  mp_vae *v;
  mp_pool *pool;
  arena ar;
} tile_ctx;

/* decode_whole, NHWC where it can be; where the NHWC levels fail, once more on NCHW */
static mp_error *decode_tile_fn(void *ctx, int h, int w, const float *z, float *image) {
  tile_ctx *t = ctx;
  bool went_nhwc = false;
  mp_error *e = decode_whole(t->v, t->pool, &t->ar, h, w, z, image, t->v->nhwc, &went_nhwc);
  if (e && went_nhwc) mp_error_free(e), e = decode_whole(t->v, t->pool, &t->ar, h, w, z, image, false, &went_nhwc);
  return e;
}

/* encode_whole, NHWC where it can be; where the NHWC levels fail, once more on NCHW */
static mp_error *encode_tile_fn(void *ctx, int H, int W, const float *image, float *moments) {
  tile_ctx *t = ctx;
  bool went_nhwc = false;
  mp_error *e = encode_whole(t->v, t->pool, &t->ar, H, W, image, moments, t->v->nhwc, &went_nhwc);
  if (e && went_nhwc) mp_error_free(e), e = encode_whole(t->v, t->pool, &t->ar, H, W, image, moments, false, &went_nhwc);
  return e;
}

bool mp_vae_decode_tiles(const mp_vae *v, int h, int w, int *tile_h, int *tile_w) {
  tile_dims(v, h, w, false, tile_h, tile_w);
  if (*tile_h > h) *tile_h = h;
  if (*tile_w > w) *tile_w = w;
  return use_tiles(v, h, w) && (*tile_h < h || *tile_w < w);
}

mp_error *mp_vae_decode(mp_vae *v, mp_pool *pool, int h, int w, const float *z, float *image) {
  if (h < 1 || w < 1) return mp_errorf("VAE decode of a %dx%d latent", h, w);
  MP_TRY(check_tiling(v));
  const int f8 = 1 << (v->cfg.n_levels - 1);
  int th, tw;
  tile_dims(v, h, w, false, &th, &tw);
  tile_ctx t = {v, pool, {NULL, 0}};
  mp_error *e = use_tiles(v, h, w) ? mp_tiled_apply(decode_tile_fn, &t, h, w, th, tw, v->tiling.overlap, 1, f8, v->cfg.embed_dim,
                                                    v->cfg.out_channels, z, image)
                                   : decode_tile_fn(&t, h, w, z, image);
  mp_free(t.ar.mem);
  return e ? mp_error_wrap(e, "VAE decode") : NULL;
}

mp_error *mp_vae_encode(mp_vae *v, mp_pool *pool, int H, int W, const float *image, float *moments) {
  const int f8 = 1 << (v->cfg.n_levels - 1);
  if (H < f8 || W < f8 || H % f8 || W % f8)
    return mp_errorf("VAE encode: image size %dx%d must be a positive multiple of %d", W, H, f8);
  MP_TRY(check_tiling(v));
  const int h = H / f8, w = W / f8;
  int th, tw;
  tile_dims(v, h, w, true, &th, &tw);
  tile_ctx t = {v, pool, {NULL, 0}};
  mp_error *e = use_tiles(v, h, w) ? mp_tiled_apply(encode_tile_fn, &t, h, w, th, tw, v->tiling.overlap, f8, 1, v->cfg.in_channels,
                                                    2 * v->cfg.embed_dim, image, moments)
                                   : encode_tile_fn(&t, H, W, image, moments);
  mp_free(t.ar.mem);
  return e ? mp_error_wrap(e, "VAE encode") : NULL;
}
