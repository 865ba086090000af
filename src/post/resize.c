#include "post/resize.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

/* Filter kernels, as functions of the distance in (possibly stretched) source pixels. */
static double sinc(double x) {
  if (fabs(x) < 1e-12) return 1.0;
  x *= M_PI;
  return sin(x) / x;
}
static double lanczos3(double x) { return fabs(x) < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0; }
static double triangle(double x) {
  x = fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

/* For each destination index: the first source index, the tap count and `max_taps` weights. */
typedef struct {
  int *first, *count;
  float *weight;
  int max_taps;
} taps;

static void taps_free(taps *t) {
  free(t->first);
  free(t->count);
  free(t->weight);
}

/* Taps for sampling `dst_len` points evenly over [start, start + len) of a source axis of `src_len`
 * pixels (continuous coordinates: pixel i covers [i, i + 1)). Taps outside the source are dropped and
 * the rest renormalised. */
static mp_error *make_taps(int src_len, double start, double len, int dst_len, mp_resize_filter filter, taps *t) {
  memset(t, 0, sizeof *t);
  double scale = len / dst_len;
  double stretch = scale > 1.0 ? scale : 1.0; /* antialias when shrinking */
  double support = filter == MP_RESIZE_LANCZOS3 ? 3.0 : filter == MP_RESIZE_BILINEAR ? 1.0 : 0.5;
  double radius = support * stretch;
  t->max_taps = filter == MP_RESIZE_NEAREST ? 1 : (int)ceil(radius) * 2 + 2;
  t->first = malloc((size_t)dst_len * sizeof *t->first);
  t->count = malloc((size_t)dst_len * sizeof *t->count);
  t->weight = malloc((size_t)dst_len * (size_t)t->max_taps * sizeof *t->weight);
  double *wd = malloc((size_t)t->max_taps * sizeof *wd);
  if (!t->first || !t->count || !t->weight || !wd) {
    free(wd);
    taps_free(t);
    return mp_errorf("out of memory for resize filter taps");
  }
  for (int x = 0; x < dst_len; x++) {
    double center = start + (x + 0.5) * scale;
    float *w = t->weight + (size_t)x * (size_t)t->max_taps;
    if (filter == MP_RESIZE_NEAREST) {
      int i = (int)floor(center);
      t->first[x] = i < 0 ? 0 : i >= src_len ? src_len - 1 : i;
      t->count[x] = 1;
      w[0] = 1.0f;
      continue;
    }
    int lo = (int)floor(center - radius), hi = (int)ceil(center + radius); /* [lo, hi) */
    if (lo < 0) lo = 0;
    if (hi > src_len) hi = src_len;
    if (hi - lo > t->max_taps) hi = lo + t->max_taps;
    double total = 0.0;
    for (int i = lo; i < hi; i++) {
      double d = (i + 0.5 - center) / stretch;
      wd[i - lo] = filter == MP_RESIZE_LANCZOS3 ? lanczos3(d) : triangle(d);
      total += wd[i - lo];
    }
    if (hi <= lo || fabs(total) < 1e-9) { /* only possible far outside the image: take the nearest pixel */
      int i = (int)floor(center);
      t->first[x] = i < 0 ? 0 : i >= src_len ? src_len - 1 : i;
      t->count[x] = 1;
      w[0] = 1.0f;
      continue;
    }
    /* Trim zero-weight taps at both ends (the kernel is zero at whole-pixel distances). */
    int a = 0, b = hi - lo;
    while (a < b - 1 && wd[a] == 0.0) a++;
    while (b > a + 1 && wd[b - 1] == 0.0) b--;
    t->first[x] = lo + a;
    t->count[x] = b - a;
    for (int k = a; k < b; k++) w[k - a] = (float)(wd[k] / total);
  }
  free(wd);
  return NULL;
}

typedef struct {
  const uint8_t *u8; /* exactly one of u8 / f32 is set */
  const float *f32;
  int w, h, channels;
} plane_src;

static inline float src_at(const plane_src *s, size_t i) { return s->u8 ? (float)s->u8[i] : s->f32[i]; }

/* The shared core: sample region (rx, ry, rw, rh) of `s` onto dst_w × dst_h floats (interleaved). */
static mp_error *resample(const plane_src *s, double rx, double ry, double rw, double rh, float *dst, int dst_w,
                          int dst_h, mp_resize_filter filter) {
  if (dst_w <= 0 || dst_h <= 0 || s->w <= 0 || s->h <= 0 || rw <= 0 || rh <= 0)
    return mp_errorf("resize: invalid sizes (source %dx%d, region %gx%g, target %dx%d)", s->w, s->h, rw, rh, dst_w,
                     dst_h);
  if (dst_w > MP_IMAGE_MAX_SIDE || dst_h > MP_IMAGE_MAX_SIDE)
    return mp_errorf("resize: target %dx%d exceeds the %d px limit", dst_w, dst_h, MP_IMAGE_MAX_SIDE);
  taps tx, ty;
  MP_TRY(make_taps(s->w, rx, rw, dst_w, filter, &tx));
  mp_error *e = make_taps(s->h, ry, rh, dst_h, filter, &ty);
  if (e) {
    taps_free(&tx);
    return e;
  }
  /* Rows of the source the vertical pass needs. */
  int row_lo = s->h, row_hi = 0;
  for (int y = 0; y < dst_h; y++) {
    if (ty.first[y] < row_lo) row_lo = ty.first[y];
    if (ty.first[y] + ty.count[y] > row_hi) row_hi = ty.first[y] + ty.count[y];
  }
  const int C = s->channels;
  size_t tmp_row = (size_t)dst_w * (size_t)C;
  float *tmp = mp_alloc((size_t)(row_hi - row_lo) * tmp_row * sizeof(float));
  float *acc = malloc((size_t)C * sizeof(float));
  if (!tmp || !acc) {
    mp_free(tmp);
    free(acc);
    taps_free(&tx);
    taps_free(&ty);
    return mp_errorf("resize: out of memory");
  }
  /* Horizontal pass over the needed rows. */
  for (int y = row_lo; y < row_hi; y++) {
    float *out = tmp + (size_t)(y - row_lo) * tmp_row;
    size_t row = (size_t)y * (size_t)s->w * (size_t)C;
    for (int x = 0; x < dst_w; x++) {
      const float *w = tx.weight + (size_t)x * (size_t)tx.max_taps;
      for (int c = 0; c < C; c++) acc[c] = 0.0f;
      for (int k = 0; k < tx.count[x]; k++) {
        size_t base = row + (size_t)(tx.first[x] + k) * (size_t)C;
        for (int c = 0; c < C; c++) acc[c] += w[k] * src_at(s, base + (size_t)c);
      }
      for (int c = 0; c < C; c++) out[(size_t)x * (size_t)C + (size_t)c] = acc[c];
    }
  }
  /* Vertical pass. */
  for (int y = 0; y < dst_h; y++) {
    float *out = dst + (size_t)y * tmp_row;
    const float *w = ty.weight + (size_t)y * (size_t)ty.max_taps;
    for (size_t i = 0; i < tmp_row; i++) out[i] = 0.0f;
    for (int k = 0; k < ty.count[y]; k++) {
      const float *in = tmp + (size_t)(ty.first[y] + k - row_lo) * tmp_row;
      for (size_t i = 0; i < tmp_row; i++) out[i] += w[k] * in[i];
    }
  }
  mp_free(tmp);
  free(acc);
  taps_free(&tx);
  taps_free(&ty);
  return NULL;
}

mp_error *mp_resize_f32(const float *src, int src_w, int src_h, int channels, float *dst, int dst_w, int dst_h,
                        mp_resize_filter filter) {
  if (channels < 1 || channels > 4) return mp_errorf("resize: %d channels (expected 1 to 4)", channels);
  plane_src s = {.f32 = src, .w = src_w, .h = src_h, .channels = channels};
  if (src_w == dst_w && src_h == dst_h) {
    memcpy(dst, src, (size_t)src_w * (size_t)src_h * (size_t)channels * sizeof(float));
    return NULL;
  }
  return resample(&s, 0, 0, src_w, src_h, dst, dst_w, dst_h, filter);
}

static mp_error *resample_image(const mp_image *src, mp_rect r, int dst_w, int dst_h, mp_resize_filter filter,
                                mp_image *dst) {
  memset(dst, 0, sizeof *dst);
  if (r.x0 < 0 || r.y0 < 0 || r.x1 > src->width || r.y1 > src->height || r.x1 <= r.x0 || r.y1 <= r.y0)
    return mp_errorf("crop rectangle (%d,%d)-(%d,%d) is not inside the %dx%d image", r.x0, r.y0, r.x1, r.y1,
                     src->width, src->height);
  MP_TRY(mp_image_alloc(dst, dst_w, dst_h, src->channels));
  size_t n = (size_t)dst_w * (size_t)dst_h * (size_t)src->channels;
  if (dst_w == mp_rect_width(r) && dst_h == mp_rect_height(r)) { /* a plain copy: exact */
    size_t row = (size_t)dst_w * (size_t)src->channels;
    for (int y = 0; y < dst_h; y++)
      memcpy(dst->pixels + (size_t)y * row,
             src->pixels + ((size_t)(r.y0 + y) * (size_t)src->width + (size_t)r.x0) * (size_t)src->channels, row);
    return NULL;
  }
  float *f = mp_alloc(n * sizeof(float));
  if (!f) {
    mp_image_free(dst);
    return mp_errorf("resize: out of memory for a %dx%d image", dst_w, dst_h);
  }
  plane_src s = {.u8 = src->pixels, .w = src->width, .h = src->height, .channels = src->channels};
  mp_error *e = resample(&s, r.x0, r.y0, mp_rect_width(r), mp_rect_height(r), f, dst_w, dst_h, filter);
  if (e) {
    mp_free(f);
    mp_image_free(dst);
    return e;
  }
  for (size_t i = 0; i < n; i++) {
    float v = f[i];
    dst->pixels[i] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)lrintf(v);
  }
  mp_free(f);
  return NULL;
}

mp_error *mp_image_resize(const mp_image *src, int dst_w, int dst_h, mp_resize_filter filter, mp_image *dst) {
  return resample_image(src, (mp_rect){0, 0, src->width, src->height}, dst_w, dst_h, filter, dst);
}

mp_error *mp_image_crop_resize(const mp_image *src, mp_rect r, int dst_w, int dst_h, mp_resize_filter filter,
                               mp_image *dst) {
  return resample_image(src, r, dst_w, dst_h, filter, dst);
}

mp_error *mp_image_crop(const mp_image *src, mp_rect r, mp_image *dst) {
  return resample_image(src, r, mp_rect_width(r), mp_rect_height(r), MP_RESIZE_NEAREST, dst);
}

mp_rect mp_center_crop_rect(int src_w, int src_h, int dst_w, int dst_h) {
  /* Compare src_w/src_h with dst_w/dst_h without rounding: cross-multiply. */
  if ((long long)src_w * dst_h > (long long)dst_w * src_h) { /* source is wider: cut the sides */
    int w = (int)(((long long)src_h * dst_w + dst_h / 2) / dst_h);
    if (w < 1) w = 1;
    int x0 = (src_w - w) / 2;
    return (mp_rect){x0, 0, x0 + w, src_h};
  }
  int h = (int)(((long long)src_w * dst_h + dst_w / 2) / dst_w);
  if (h < 1) h = 1;
  int y0 = (src_h - h) / 2;
  return (mp_rect){0, y0, src_w, y0 + h};
}

mp_error *mp_image_fit_crop(const mp_image *src, int dst_w, int dst_h, mp_image *dst) {
  if (dst_w <= 0 || dst_h <= 0) return mp_errorf("fit-crop: invalid target %dx%d", dst_w, dst_h);
  return mp_image_crop_resize(src, mp_center_crop_rect(src->width, src->height, dst_w, dst_h), dst_w, dst_h,
                              MP_RESIZE_LANCZOS3, dst);
}

void mp_size_round8(int w, int h, int max_side, int *out_w, int *out_h) {
  double scale = 1.0;
  int longest = w > h ? w : h;
  if (max_side > 0 && longest > max_side) scale = (double)max_side / longest;
  int rw = (int)lrint(w * scale / 8.0) * 8, rh = (int)lrint(h * scale / 8.0) * 8;
  *out_w = rw < 64 ? 64 : rw;
  *out_h = rh < 64 ? 64 : rh;
}
