#include "core/nhwc_ops.h"

#include <math.h>
#include <string.h>

#include "core/ops.h"
#include "core/tensor.h"

void mp_conv_out_size(int in, int k, int stride, int dil, bool same_padding, int *out, int *pad_before) {
  int eff = (k - 1) * dil + 1;
  if (same_padding) {
    *out = (in + stride - 1) / stride;
    int total = (*out - 1) * stride + eff - in;
    *pad_before = total > 0 ? total / 2 : 0;
  } else {
    *out = in >= eff ? (in - eff) / stride + 1 : 0;
    *pad_before = 0;
  }
}

static inline float act1(float v, mp_act act) {
  switch (act) {
    case MP_ACT_RELU: return v > 0 ? v : 0;
    case MP_ACT_RELU6: return v < 0 ? 0 : v > 6 ? 6 : v;
    case MP_ACT_RELU_N1_TO_1: return v < -1 ? -1 : v > 1 ? 1 : v;
    case MP_ACT_TANH: return tanhf(v);
    default: return v;
  }
}

void mp_activate(float *x, int64_t n, mp_act act) {
  if (act == MP_ACT_NONE) return;
  for (int64_t i = 0; i < n; i++) x[i] = act1(x[i], act);
}

static void bias_act(float *out, int64_t pixels, int oc, const float *bias, mp_act act) {
  for (int64_t i = 0; i < pixels; i++) {
    float *o = out + i * oc;
    if (bias)
      for (int c = 0; c < oc; c++) o[c] += bias[c];
    if (act != MP_ACT_NONE)
      for (int c = 0; c < oc; c++) o[c] = act1(o[c], act);
  }
}

/* ---- convolution: im2col in chunks of output pixels, then one GEMM per chunk ---- */

typedef struct {
  const mp_conv_params *p;
  const float *in;
  float *col;
  int64_t p0; /* first output pixel of the chunk */
} im2col_job;

static void im2col_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const im2col_job *j = ctx;
  const mp_conv_params *p = j->p;
  int64_t K = (int64_t)p->k_h * p->k_w * p->in_c;
  for (int64_t r = begin; r < end; r++) {
    int64_t pix = j->p0 + r;
    int oy = (int)(pix / p->out_w), ox = (int)(pix % p->out_w);
    float *dst = j->col + r * K;
    for (int ky = 0; ky < p->k_h; ky++) {
      int iy = oy * p->stride_h - p->pad_top + ky * p->dil_h;
      for (int kx = 0; kx < p->k_w; kx++, dst += p->in_c) {
        int ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
        if (iy < 0 || iy >= p->in_h || ix < 0 || ix >= p->in_w)
          memset(dst, 0, (size_t)p->in_c * sizeof *dst);
        else
          memcpy(dst, j->in + ((int64_t)iy * p->in_w + ix) * p->in_c, (size_t)p->in_c * sizeof *dst);
      }
    }
  }
}

void mp_nhwc_conv2d(mp_pool *pool, float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p) {
  int64_t pixels = (int64_t)p->out_h * p->out_w, K = (int64_t)p->k_h * p->k_w * p->in_c;
  bool pointwise = p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_top == 0 &&
                   p->pad_left == 0 && p->out_h == p->in_h && p->out_w == p->in_w;
  if (pointwise) {
    mp_gemm(false, true, pixels, p->out_c, K, 1.0f, in, K, w, K, 0.0f, out, p->out_c);
  } else {
    /* Bound the im2col scratch to about 4M floats (16 MB). */
    int64_t chunk = (int64_t)(4 << 20) / (K > 0 ? K : 1);
    if (chunk < 1) chunk = 1;
    if (chunk > pixels) chunk = pixels;
    float *col = mp_alloc((size_t)(chunk * K) * sizeof *col);
    if (!col) { /* out of memory: fall back to the plain loop rather than fail mid-graph */
      mp_ref_nhwc_conv2d(out, in, w, bias, p);
      return;
    }
    for (int64_t p0 = 0; p0 < pixels; p0 += chunk) {
      int64_t n = pixels - p0 < chunk ? pixels - p0 : chunk;
      im2col_job job = {p, in, col, p0};
      mp_pool_for(pool, n, 64, im2col_rows, &job);
      mp_gemm(false, true, n, p->out_c, K, 1.0f, col, K, w, K, 0.0f, out + p0 * p->out_c, p->out_c);
    }
    mp_free(col);
  }
  bias_act(out, pixels, p->out_c, bias, p->act);
}

/* ---- depthwise: one output row per task, channels innermost ---- */

typedef struct {
  const mp_conv_params *p;
  float *out;
  const float *in, *w, *bias;
} dw_job;

/* One output pixel, multiplier 1: every tap adds x*w over the channels (contiguous, vectorised). */
static inline void dw_tap1(float *restrict o, const float *restrict x, const float *restrict wk, int c) {
  for (int k = 0; k < c; k++) o[k] += x[k] * wk[k];
}

static void dw_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const dw_job *j = ctx;
  const mp_conv_params *p = j->p;
  int oc = p->out_c, ic = p->in_c, m = p->depth_multiplier;
  for (int64_t oy = begin; oy < end; oy++) {
    for (int ox = 0; ox < p->out_w; ox++) {
      float *restrict o = j->out + (oy * p->out_w + ox) * oc;
      if (j->bias) memcpy(o, j->bias, (size_t)oc * sizeof *o);
      else memset(o, 0, (size_t)oc * sizeof *o);
      for (int ky = 0; ky < p->k_h; ky++) {
        int iy = (int)oy * p->stride_h - p->pad_top + ky * p->dil_h;
        if (iy < 0 || iy >= p->in_h) continue;
        for (int kx = 0; kx < p->k_w; kx++) {
          int ix = ox * p->stride_w - p->pad_left + kx * p->dil_w;
          if (ix < 0 || ix >= p->in_w) continue;
          const float *x = j->in + ((int64_t)iy * p->in_w + ix) * ic;
          const float *wk = j->w + (ky * p->k_w + kx) * oc;
          if (m == 1)
            dw_tap1(o, x, wk, oc);
          else
            for (int c = 0; c < oc; c++) o[c] += x[c / m] * wk[c];
        }
      }
      if (p->act != MP_ACT_NONE)
        for (int c = 0; c < oc; c++) o[c] = act1(o[c], p->act);
    }
  }
}

void mp_nhwc_depthwise_conv2d(mp_pool *pool, float *out, const float *in, const float *w, const float *bias,
                              const mp_conv_params *p) {
  dw_job job = {p, out, in, w, bias};
  mp_pool_for(pool, p->out_h, 0, dw_rows, &job);
}

void mp_nhwc_transpose_conv2d(float *out, const float *in, const float *w, const float *bias, const mp_conv_params *p) {
  int oc = p->out_c, ic = p->in_c;
  int64_t opix = (int64_t)p->out_h * p->out_w;
  for (int64_t i = 0; i < opix; i++)
    for (int o = 0; o < oc; o++) out[i * oc + o] = bias ? bias[o] : 0.0f;
  for (int iy = 0; iy < p->in_h; iy++)
    for (int ix = 0; ix < p->in_w; ix++) {
      const float *x = in + ((int64_t)iy * p->in_w + ix) * ic;
      for (int ky = 0; ky < p->k_h; ky++) {
        int oy = iy * p->stride_h - p->pad_top + ky;
        if (oy < 0 || oy >= p->out_h) continue;
        for (int kx = 0; kx < p->k_w; kx++) {
          int ox = ix * p->stride_w - p->pad_left + kx;
          if (ox < 0 || ox >= p->out_w) continue;
          float *o = out + ((int64_t)oy * p->out_w + ox) * oc;
          for (int c = 0; c < oc; c++) {
            const float *wk = w + (((int64_t)c * p->k_h + ky) * p->k_w + kx) * ic;
            float s = 0;
            for (int i = 0; i < ic; i++) s += x[i] * wk[i];
            o[c] += s;
          }
        }
      }
    }
  mp_activate(out, opix * oc, p->act);
}

/* ---- pooling ---- */

typedef struct {
  const mp_conv_params *p;
  float *out;
  const float *in;
  bool max;
} pool_job;

static void pool_rows(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const pool_job *j = ctx;
  const mp_conv_params *p = j->p;
  int c = p->in_c;
  for (int64_t oy = begin; oy < end; oy++)
    for (int ox = 0; ox < p->out_w; ox++) {
      float *o = j->out + (oy * p->out_w + ox) * c;
      for (int k = 0; k < c; k++) o[k] = j->max ? -INFINITY : 0.0f;
      int count = 0;
      for (int ky = 0; ky < p->k_h; ky++) {
        int iy = (int)oy * p->stride_h - p->pad_top + ky;
        if (iy < 0 || iy >= p->in_h) continue;
        for (int kx = 0; kx < p->k_w; kx++) {
          int ix = ox * p->stride_w - p->pad_left + kx;
          if (ix < 0 || ix >= p->in_w) continue;
          const float *x = j->in + ((int64_t)iy * p->in_w + ix) * c;
          count++;
          if (j->max)
            for (int k = 0; k < c; k++) o[k] = x[k] > o[k] ? x[k] : o[k];
          else
            for (int k = 0; k < c; k++) o[k] += x[k];
        }
      }
      if (!j->max)
        for (int k = 0; k < c; k++) o[k] = count ? o[k] / (float)count : 0.0f;
      if (j->max && count == 0)
        for (int k = 0; k < c; k++) o[k] = 0.0f;
      for (int k = 0; k < c; k++) o[k] = act1(o[k], p->act);
    }
}

void mp_nhwc_pool2d(mp_pool *pool, float *out, const float *in, const mp_conv_params *p, bool max) {
  pool_job job = {p, out, in, max};
  mp_pool_for(pool, p->out_h, 4, pool_rows, &job);
}

/* ---- resize, depth_to_space ---- */

static void interp_coord(int dst, float scale, bool half_pixel, int in_size, float *frac, int *lo, int *hi) {
  float v = half_pixel ? ((float)dst + 0.5f) * scale - 0.5f : (float)dst * scale;
  float fl = floorf(v);
  *lo = fl < 0 ? 0 : (int)fl;
  if (*lo > in_size - 1) *lo = in_size - 1;
  int c = (int)ceilf(v);
  *hi = c > in_size - 1 ? in_size - 1 : c < 0 ? 0 : c;
  *frac = v - (float)*lo; /* TFLite weighs from the clamped lower tap */
}

void mp_nhwc_resize_bilinear(float *out, const float *in, int in_h, int in_w, int c, int out_h, int out_w,
                             bool align_corners, bool half_pixel_centers) {
  float sy = align_corners && out_h > 1 ? (float)(in_h - 1) / (float)(out_h - 1) : (float)in_h / (float)out_h;
  float sx = align_corners && out_w > 1 ? (float)(in_w - 1) / (float)(out_w - 1) : (float)in_w / (float)out_w;
  for (int y = 0; y < out_h; y++) {
    float fy;
    int y0, y1;
    interp_coord(y, sy, half_pixel_centers, in_h, &fy, &y0, &y1);
    for (int x = 0; x < out_w; x++) {
      float fx;
      int x0, x1;
      interp_coord(x, sx, half_pixel_centers, in_w, &fx, &x0, &x1);
      const float *a = in + ((int64_t)y0 * in_w + x0) * c, *b = in + ((int64_t)y0 * in_w + x1) * c;
      const float *d = in + ((int64_t)y1 * in_w + x0) * c, *e = in + ((int64_t)y1 * in_w + x1) * c;
      float *o = out + ((int64_t)y * out_w + x) * c;
      for (int k = 0; k < c; k++)
        o[k] = a[k] * (1 - fy) * (1 - fx) + b[k] * (1 - fy) * fx + d[k] * fy * (1 - fx) + e[k] * fy * fx;
    }
  }
}

void mp_nhwc_depth_to_space(float *out, const float *in, int h, int w, int c_out, int block) {
  int ow = w * block, ic = c_out * block * block;
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++)
      for (int dy = 0; dy < block; dy++)
        for (int dx = 0; dx < block; dx++)
          memcpy(out + ((int64_t)(y * block + dy) * ow + (x * block + dx)) * c_out,
                 in + ((int64_t)y * w + x) * ic + (dy * block + dx) * c_out, (size_t)c_out * sizeof *out);
}

/* ---- broadcasting elementwise ---- */

static inline float binop(float a, float b, mp_binop op) {
  switch (op) {
    case MP_BIN_ADD: return a + b;
    case MP_BIN_MUL: return a * b;
    default: return a >= 0 ? a : a * b;
  }
}

void mp_broadcast_binary(float *out, const float *a, int a_ndim, const int32_t *a_shape, const float *b, int b_ndim,
                         const int32_t *b_shape, int out_ndim, const int32_t *out_shape, mp_binop op) {
  const int D = MP_BCAST_DIMS;
  int64_t os[MP_BCAST_DIMS], as[MP_BCAST_DIMS], bs[MP_BCAST_DIMS];
  for (int i = 0; i < D; i++) {
    int oi = i - (D - out_ndim), ai = i - (D - a_ndim), bi = i - (D - b_ndim);
    os[i] = oi >= 0 ? out_shape[oi] : 1;
    as[i] = ai >= 0 ? a_shape[ai] : 1;
    bs[i] = bi >= 0 ? b_shape[bi] : 1;
  }
  int64_t n = 1, na = 1, nb = 1;
  for (int i = 0; i < D; i++) n *= os[i], na *= as[i], nb *= bs[i];
  if (na == n && nb == n) {
    for (int64_t i = 0; i < n; i++) out[i] = binop(a[i], b[i], op);
    return;
  }
  if (na == n && nb == bs[D - 1] && bs[D - 1] == os[D - 1]) { /* per-channel b */
    int64_t c = os[D - 1];
    for (int64_t i = 0; i < n; i += c)
      for (int64_t k = 0; k < c; k++) out[i + k] = binop(a[i + k], b[k], op);
    return;
  }
  if (na == n && nb == 1) {
    for (int64_t i = 0; i < n; i++) out[i] = binop(a[i], b[0], op);
    return;
  }
  /* General case: strides with 0 on broadcast dimensions. */
  int64_t ast[MP_BCAST_DIMS], bst[MP_BCAST_DIMS], sa = 1, sb = 1;
  for (int i = D - 1; i >= 0; i--) {
    ast[i] = as[i] == 1 ? 0 : sa;
    bst[i] = bs[i] == 1 ? 0 : sb;
    sa *= as[i];
    sb *= bs[i];
  }
  int64_t idx[MP_BCAST_DIMS] = {0};
  for (int64_t i = 0; i < n; i++) {
    int64_t ao = 0, bo = 0;
    for (int d = 0; d < D; d++) ao += idx[d] * ast[d], bo += idx[d] * bst[d];
    out[i] = binop(a[ao], b[bo], op);
    for (int d = D - 1; d >= 0; d--) {
      if (++idx[d] < os[d]) break;
      idx[d] = 0;
    }
  }
}
