#include "post/mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

mp_error *mp_mask_alloc(mp_mask *m, int width, int height) {
  memset(m, 0, sizeof *m);
  if (width <= 0 || height <= 0 || width > MP_IMAGE_MAX_SIDE || height > MP_IMAGE_MAX_SIDE)
    return mp_errorf("invalid mask size %dx%d (sides 1..%d)", width, height, MP_IMAGE_MAX_SIDE);
  m->data = mp_calloc((size_t)width * (size_t)height, sizeof(float));
  if (!m->data) return mp_errorf("out of memory for a %dx%d mask", width, height);
  m->width = width, m->height = height;
  return NULL;
}

void mp_mask_free(mp_mask *m) {
  if (!m) return;
  mp_free(m->data);
  memset(m, 0, sizeof *m);
}

mp_error *mp_mask_copy(const mp_mask *src, mp_mask *dst) {
  MP_TRY(mp_mask_alloc(dst, src->width, src->height));
  memcpy(dst->data, src->data, (size_t)src->width * (size_t)src->height * sizeof(float));
  return NULL;
}

mp_error *mp_mask_from_image(const mp_image *img, mp_mask *m) {
  MP_TRY(mp_mask_alloc(m, img->width, img->height));
  size_t n = (size_t)img->width * (size_t)img->height;
  for (size_t i = 0; i < n; i++) m->data[i] = img->pixels[i * (size_t)img->channels] / 255.0f;
  return NULL;
}

mp_error *mp_mask_to_image(const mp_mask *m, mp_image *img) {
  MP_TRY(mp_image_alloc(img, m->width, m->height, 1));
  size_t n = (size_t)m->width * (size_t)m->height;
  for (size_t i = 0; i < n; i++) {
    float v = m->data[i];
    img->pixels[i] = v <= 0.0f ? 0 : v >= 1.0f ? 255 : (uint8_t)lrintf(v * 255.0f);
  }
  return NULL;
}

mp_error *mp_mask_resize(const mp_mask *src, int w, int h, mp_resize_filter filter, mp_mask *dst) {
  MP_TRY(mp_mask_alloc(dst, w, h));
  mp_error *e = mp_resize_f32(src->data, src->width, src->height, 1, dst->data, w, h, filter);
  if (e) {
    mp_mask_free(dst);
    return e;
  }
  size_t n = (size_t)w * (size_t)h;
  for (size_t i = 0; i < n; i++) dst->data[i] = dst->data[i] < 0.0f ? 0.0f : dst->data[i] > 1.0f ? 1.0f : dst->data[i];
  return NULL;
}

static inline float maxf(float a, float b) { return a > b ? a : b; } /* vectorises; masks hold no NaN */

/* A disc is a stack of horizontal segments: at row offset dy its half-width is
 * hw(dy) = floor(sqrt(r² − dy²)). For each source row we grow its horizontal maximum one pixel at a time
 * (width 2k+1 from width 2k−1 costs two comparisons per pixel) and, at each k, hand it to the output
 * rows whose disc segment at that offset has half-width k. Work: O(pixels × r), a few operations each. */
mp_error *mp_mask_dilate(mp_mask *m, int radius) {
  if (radius < 0) return mp_errorf("mask dilation radius %d is negative", radius);
  if (radius == 0) return NULL;
  const int W = m->width, H = m->height, R = radius;
  float *out = mp_alloc((size_t)W * (size_t)H * sizeof(float));
  float *cur = malloc((size_t)W * sizeof(float));
  int *hw = malloc((size_t)(2 * R + 1) * sizeof(int));
  if (!out || !cur || !hw) {
    mp_free(out), free(cur), free(hw);
    return mp_errorf("out of memory dilating a %dx%d mask", W, H);
  }
  for (int dy = -R; dy <= R; dy++) /* 1e-9 keeps exact squares (r² − dy² = k²) inside */
    hw[dy + R] = (int)floor(sqrt((double)R * R - (double)dy * dy) + 1e-9);
  for (size_t i = 0; i < (size_t)W * (size_t)H; i++) out[i] = -INFINITY;
  for (int yy = 0; yy < H; yy++) {
    const float *row = m->data + (size_t)yy * (size_t)W;
    memcpy(cur, row, (size_t)W * sizeof(float));
    for (int k = 0; k <= R; k++) {
      if (k > 0 && k < W) { /* cur = max over [x−k, x+k] */
        for (int x = 0; x < W - k; x++) cur[x] = maxf(cur[x], row[x + k]);
        for (int x = k; x < W; x++) cur[x] = maxf(cur[x], row[x - k]);
      }
      /* Output row y = yy − dy sees source row yy at offset dy. */
      for (int dy = -R; dy <= R; dy++) {
        if (hw[dy + R] != k) continue;
        int y = yy - dy;
        if (y < 0 || y >= H) continue;
        float *o = out + (size_t)y * (size_t)W;
        for (int x = 0; x < W; x++) o[x] = maxf(o[x], cur[x]);
      }
    }
  }
  memcpy(m->data, out, (size_t)W * (size_t)H * sizeof(float));
  mp_free(out), free(cur), free(hw);
  return NULL;
}

int mp_mask_dilate_radius(const mp_mask *m, double value, bool percent, float threshold) {
  if (value <= 0) return 0;
  if (!percent) return (int)lrint(value);
  mp_rect box;
  if (!mp_mask_bbox(m, threshold, &box)) return 0;
  int side = mp_rect_width(box) > mp_rect_height(box) ? mp_rect_width(box) : mp_rect_height(box);
  return (int)lrint(value / 100.0 * side);
}

/* Symmetric mirror: index -1 reads 0, -2 reads 1, n reads n-1; period 2n, so any offset is valid. */
static inline int mirror(int i, int n) {
  int p = 2 * n;
  i %= p;
  if (i < 0) i += p;
  return i < n ? i : p - 1 - i;
}

mp_error *mp_mask_blur(mp_mask *m, double sigma) {
  if (!(sigma > 0)) return NULL;
  if (sigma > 1000) return mp_errorf("mask blur sigma %g is too large (at most 1000)", sigma);
  const int W = m->width, H = m->height, R = (int)ceil(3.0 * sigma);
  float *k = malloc((size_t)(2 * R + 1) * sizeof(float));
  float *tmp = mp_alloc((size_t)W * (size_t)H * sizeof(float));
  int *ix = malloc((size_t)(W + 2 * R) * sizeof(int)), *iy = malloc((size_t)(H + 2 * R) * sizeof(int));
  if (!k || !tmp || !ix || !iy) {
    free(k), mp_free(tmp), free(ix), free(iy);
    return mp_errorf("out of memory blurring a %dx%d mask", W, H);
  }
  double total = 0;
  for (int i = -R; i <= R; i++) total += exp(-(double)i * i / (2.0 * sigma * sigma));
  for (int i = -R; i <= R; i++) k[i + R] = (float)(exp(-(double)i * i / (2.0 * sigma * sigma)) / total);
  for (int i = 0; i < W + 2 * R; i++) ix[i] = mirror(i - R, W);
  for (int i = 0; i < H + 2 * R; i++) iy[i] = mirror(i - R, H);
  /* Horizontal into tmp. */
  for (int y = 0; y < H; y++) {
    const float *in = m->data + (size_t)y * (size_t)W;
    float *out = tmp + (size_t)y * (size_t)W;
    for (int x = 0; x < W; x++) {
      float acc = 0.0f;
      for (int j = 0; j <= 2 * R; j++) acc += k[j] * in[ix[x + j]];
      out[x] = acc;
    }
  }
  /* Vertical back into the mask, row by row so the inner loop runs along memory. */
  for (int y = 0; y < H; y++) {
    float *out = m->data + (size_t)y * (size_t)W;
    for (int x = 0; x < W; x++) out[x] = 0.0f;
    for (int j = 0; j <= 2 * R; j++) {
      const float *in = tmp + (size_t)iy[y + j] * (size_t)W;
      for (int x = 0; x < W; x++) out[x] += k[j] * in[x];
    }
  }
  free(k), mp_free(tmp), free(ix), free(iy);
  return NULL;
}

bool mp_mask_bbox(const mp_mask *m, float threshold, mp_rect *box) {
  int x0 = m->width, y0 = m->height, x1 = -1, y1 = -1;
  for (int y = 0; y < m->height; y++) {
    const float *row = m->data + (size_t)y * (size_t)m->width;
    for (int x = 0; x < m->width; x++)
      if (row[x] > threshold) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
  }
  if (x1 < 0) return false;
  *box = (mp_rect){x0, y0, x1 + 1, y1 + 1};
  return true;
}

/* Python's // for the non-negative values used here. */
mp_rect mp_crop_region(mp_rect box, int pad, int target_w, int target_h, int image_w, int image_h) {
  int x1 = box.x0 - pad < 0 ? 0 : box.x0 - pad;
  int y1 = box.y0 - pad < 0 ? 0 : box.y0 - pad;
  int x2 = box.x1 + pad > image_w ? image_w : box.x1 + pad;
  int y2 = box.y1 + pad > image_h ? image_h : box.y1 + pad;
  if (x2 <= x1 || y2 <= y1 || target_w <= 0 || target_h <= 0) return (mp_rect){0, 0, image_w, image_h};
  double ratio_crop = (double)(x2 - x1) / (y2 - y1), ratio_target = (double)target_w / target_h;
  if (ratio_crop > ratio_target) { /* too wide: grow the height */
    double desired = (x2 - x1) / ratio_target;
    int diff = (int)(desired - (y2 - y1));
    y1 -= diff / 2;
    y2 += diff - diff / 2;
    if (y2 >= image_h) { /* shift up */
      int d = y2 - image_h;
      y2 -= d, y1 -= d;
    }
    if (y1 < 0) { /* shift down */
      y2 -= y1;
      y1 = 0;
    }
    if (y2 >= image_h) y2 = image_h; /* taller than the image */
  } else { /* too tall: grow the width */
    double desired = (y2 - y1) * ratio_target;
    int diff = (int)(desired - (x2 - x1));
    x1 -= diff / 2;
    x2 += diff - diff / 2;
    if (x2 >= image_w) {
      int d = x2 - image_w;
      x2 -= d, x1 -= d;
    }
    if (x1 < 0) {
      x2 -= x1;
      x1 = 0;
    }
    if (x2 >= image_w) x2 = image_w;
  }
  return (mp_rect){x1, y1, x2, y2};
}

static int round8(double v) {
  int r = (int)lrint(v / 8.0) * 8;
  return r < 64 ? 64 : r;
}

void mp_crop_work_size(mp_rect crop, int target_w, int target_h, int *work_w, int *work_h) {
  double aspect = (double)mp_rect_width(crop) / mp_rect_height(crop);
  double area = (double)target_w * target_h;
  *work_w = round8(sqrt(area * aspect));
  *work_h = round8(sqrt(area / aspect));
}

mp_rect mp_rect_scale(mp_rect box, double factor, int image_w, int image_h) {
  double cx = (box.x0 + box.x1) / 2.0, cy = (box.y0 + box.y1) / 2.0;
  int w = (int)lrint(mp_rect_width(box) * factor), h = (int)lrint(mp_rect_height(box) * factor);
  if (w < 1) w = 1;
  if (h < 1) h = 1;
  if (w > image_w) w = image_w;
  if (h > image_h) h = image_h;
  int x0 = (int)lrint(cx - w / 2.0), y0 = (int)lrint(cy - h / 2.0);
  if (x0 < 0) x0 = 0;
  if (y0 < 0) y0 = 0;
  if (x0 + w > image_w) x0 = image_w - w;
  if (y0 + h > image_h) y0 = image_h - h;
  return (mp_rect){x0, y0, x0 + w, y0 + h};
}

void mp_mask_fill_rect(mp_mask *m, mp_rect r, float v) {
  int x0 = r.x0 < 0 ? 0 : r.x0, y0 = r.y0 < 0 ? 0 : r.y0;
  int x1 = r.x1 > m->width ? m->width : r.x1, y1 = r.y1 > m->height ? m->height : r.y1;
  for (int y = y0; y < y1; y++)
    for (int x = x0; x < x1; x++) m->data[(size_t)y * (size_t)m->width + (size_t)x] = v;
}

float mp_mask_at(const mp_mask *m, int x, int y) {
  if (x < 0 || y < 0 || x >= m->width || y >= m->height) return 0.0f;
  return m->data[(size_t)y * (size_t)m->width + (size_t)x];
}

mp_error *mp_paste_masked(mp_image *dst, const mp_image *patch, mp_rect r, const mp_mask *mask) {
  if (mask->width != dst->width || mask->height != dst->height)
    return mp_errorf("paste: mask is %dx%d but the image is %dx%d", mask->width, mask->height, dst->width,
                     dst->height);
  if (patch->channels != dst->channels)
    return mp_errorf("paste: patch has %d channels, image %d", patch->channels, dst->channels);
  if (r.x0 < 0 || r.y0 < 0 || r.x1 > dst->width || r.y1 > dst->height || r.x1 <= r.x0 || r.y1 <= r.y0)
    return mp_errorf("paste: rectangle (%d,%d)-(%d,%d) is not inside the %dx%d image", r.x0, r.y0, r.x1, r.y1,
                     dst->width, dst->height);
  mp_image fitted;
  MP_TRY(mp_image_resize(patch, mp_rect_width(r), mp_rect_height(r), MP_RESIZE_LANCZOS3, &fitted));
  const int C = dst->channels;
  for (int y = r.y0; y < r.y1; y++)
    for (int x = r.x0; x < r.x1; x++) {
      float m = mask->data[(size_t)y * (size_t)dst->width + (size_t)x];
      if (!(m > 0.0f)) continue;
      if (m > 1.0f) m = 1.0f;
      uint8_t *d = dst->pixels + ((size_t)y * (size_t)dst->width + (size_t)x) * (size_t)C;
      const uint8_t *p = fitted.pixels + ((size_t)(y - r.y0) * (size_t)fitted.width + (size_t)(x - r.x0)) * (size_t)C;
      for (int c = 0; c < C; c++) d[c] = (uint8_t)lrintf(m * p[c] + (1.0f - m) * d[c]);
    }
  mp_image_free(&fitted);
  return NULL;
}
