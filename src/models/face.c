/* MediaPipe face detection full range and the shared SSD post-processing (see face.h).
 * Options follow face_detection_full_range_common.pbtxt / pose_detection_cpu.pbtxt as recorded in
 * the golden manifests (the .json manifests in ../shared/golden/vision). */
#include "models/face.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

int mp_ssd_anchors(const mp_ssd_anchor_opts *o, float *anchors, int cap) {
  int n = 0;
  for (int layer = 0; layer < o->num_layers;) {
    int last = layer; /* layers with the same stride share one feature map */
    while (last + 1 < o->num_layers && o->strides[last + 1] == o->strides[layer]) last++;
    int per_cell = (last - layer + 1) * (1 + (o->interpolated_scale_aspect_ratio > 0));
    int stride = o->strides[layer];
    int fh = (o->input_h + stride - 1) / stride, fw = (o->input_w + stride - 1) / stride;
    for (int y = 0; y < fh; y++)
      for (int x = 0; x < fw; x++)
        for (int a = 0; a < per_cell; a++) {
          if (n >= cap) return -1;
          float *an = anchors + 4 * n++;
          an[0] = ((float)x + o->offset_x) / (float)fw;
          an[1] = ((float)y + o->offset_y) / (float)fh;
          an[2] = an[3] = 1.0f; /* fixed_anchor_size */
        }
    layer = last + 1;
  }
  return n;
}

int mp_ssd_decode(const float *raw, const float *scores, const float *anchors, const mp_ssd_decode_opts *o,
                  mp_detection *out, int cap) {
  int n = 0;
  for (int i = 0; i < o->num_boxes && n < cap; i++) {
    float s = scores[i];
    s = s < -o->clip ? -o->clip : s > o->clip ? o->clip : s;
    s = 1.0f / (1.0f + expf(-s));
    if (!(s >= o->min_score)) continue;
    const float *r = raw + (size_t)i * o->num_coords, *a = anchors + 4 * i;
    float xc = r[0] / o->scale * a[2] + a[0], yc = r[1] / o->scale * a[3] + a[1];
    float w = r[2] / o->scale * a[2], h = r[3] / o->scale * a[3];
    if (!(w >= 0) || !(h >= 0)) continue; /* negative or NaN size */
    mp_detection *d = &out[n++];
    memset(d, 0, sizeof *d);
    d->xmin = xc - w / 2, d->ymin = yc - h / 2, d->w = w, d->h = h;
    d->score = s;
    d->merged = 1;
    d->n_kp = o->num_kp < MP_DET_MAX_KP ? o->num_kp : MP_DET_MAX_KP;
    for (int k = 0; k < d->n_kp; k++) {
      d->kp[k][0] = r[4 + 2 * k] / o->scale * a[2] + a[0];
      d->kp[k][1] = r[5 + 2 * k] / o->scale * a[3] + a[1];
    }
  }
  return n;
}

float mp_detection_iou(const mp_detection *a, const mp_detection *b) {
  float x0 = fmaxf(a->xmin, b->xmin), y0 = fmaxf(a->ymin, b->ymin);
  float x1 = fminf(a->xmin + a->w, b->xmin + b->w), y1 = fminf(a->ymin + a->h, b->ymin + b->h);
  if (x1 <= x0 || y1 <= y0) return 0.0f;
  float inter = (x1 - x0) * (y1 - y0);
  float uni = a->w * a->h + b->w * b->h - inter;
  return uni > 0 ? inter / uni : 0.0f;
}

static int by_score_desc(const void *pa, const void *pb) {
  const mp_detection *a = pa, *b = pb;
  return a->score < b->score ? 1 : a->score > b->score ? -1 : 0;
}

int mp_weighted_nms(mp_detection *d, int n, float iou_thresh) {
  if (n <= 0) return 0;
  /* mergesort keeps equal scores in anchor order */
  mp_detection *rest = malloc((size_t)n * sizeof *rest), *kept = malloc((size_t)n * sizeof *kept);
  if (!rest || !kept) {
    free(rest);
    free(kept);
    qsort(d, (size_t)n, sizeof *d, by_score_desc);
    return n;
  }
  memcpy(rest, d, (size_t)n * sizeof *d);
  for (int i = 1; i < n; i++) /* insertion sort: stable, n is small after thresholding */
    for (int j = i; j > 0 && rest[j].score > rest[j - 1].score; j--) {
      mp_detection t = rest[j];
      rest[j] = rest[j - 1];
      rest[j - 1] = t;
    }
  int n_rest = n, n_kept = 0;
  while (n_rest > 0) {
    mp_detection top = rest[0];
    double wsum = 0, x0 = 0, y0 = 0, x1 = 0, y1 = 0, kp[MP_DET_MAX_KP][2] = {{0}};
    int left = 0, merged = 0;
    for (int i = 0; i < n_rest; i++) {
      const mp_detection *c = &rest[i];
      if (mp_detection_iou(&top, c) > iou_thresh) {
        double s = c->score;
        wsum += s;
        x0 += s * c->xmin, y0 += s * c->ymin, x1 += s * (c->xmin + c->w), y1 += s * (c->ymin + c->h);
        for (int k = 0; k < c->n_kp; k++) kp[k][0] += s * c->kp[k][0], kp[k][1] += s * c->kp[k][1];
        merged++;
      } else {
        rest[left++] = *c;
      }
    }
    mp_detection out = top;
    if (merged > 0 && wsum > 0) {
      out.xmin = (float)(x0 / wsum), out.ymin = (float)(y0 / wsum);
      out.w = (float)(x1 / wsum) - out.xmin, out.h = (float)(y1 / wsum) - out.ymin;
      for (int k = 0; k < top.n_kp; k++) out.kp[k][0] = (float)(kp[k][0] / wsum), out.kp[k][1] = (float)(kp[k][1] / wsum);
    }
    out.merged = merged > 0 ? merged : 1;
    kept[n_kept++] = out;
    if (left == n_rest) left--, memmove(rest, rest + 1, (size_t)left * sizeof *rest); /* NaN box: drop it */
    n_rest = left;
  }
  memcpy(d, kept, (size_t)n_kept * sizeof *d);
  free(rest);
  free(kept);
  return n_kept;
}

/* Bilinear tap with zero outside the image. */
static inline float tap0(const mp_image *img, int x, int y, int c) {
  if (x < 0 || y < 0 || x >= img->width || y >= img->height) return 0.0f;
  return img->pixels[((size_t)y * img->width + x) * 3 + c];
}

mp_square mp_letterbox_input(const mp_image *img, float x0, float y0, float w, float h, int n, float lo, float hi,
                             float *out) {
  mp_square sq = {x0 + w / 2, y0 + h / 2, w > h ? w : h};
  double step = (double)sq.side / n, left = sq.cx - sq.side / 2.0, top = sq.cy - sq.side / 2.0;
  float scale = (hi - lo) / 255.0f;
  for (int i = 0; i < n; i++) {
    double sy = top + (i + 0.5) * step - 0.5;
    int yi = (int)floor(sy);
    float fy = (float)(sy - yi);
    for (int j = 0; j < n; j++) {
      double sx = left + (j + 0.5) * step - 0.5;
      int xi = (int)floor(sx);
      float fx = (float)(sx - xi);
      for (int c = 0; c < 3; c++) {
        float v = (tap0(img, xi, yi, c) * (1 - fx) + tap0(img, xi + 1, yi, c) * fx) * (1 - fy) +
                  (tap0(img, xi, yi + 1, c) * (1 - fx) + tap0(img, xi + 1, yi + 1, c) * fx) * fy;
        out[((size_t)i * n + j) * 3 + c] = lo + v * scale;
      }
    }
  }
  return sq;
}

void mp_detections_to_pixels(mp_detection *d, int n, mp_square sq) {
  float left = sq.cx - sq.side / 2, top = sq.cy - sq.side / 2;
  for (int i = 0; i < n; i++) {
    d[i].xmin = left + d[i].xmin * sq.side, d[i].ymin = top + d[i].ymin * sq.side;
    d[i].w *= sq.side, d[i].h *= sq.side;
    for (int k = 0; k < d[i].n_kp; k++) d[i].kp[k][0] = left + d[i].kp[k][0] * sq.side, d[i].kp[k][1] = top + d[i].kp[k][1] * sq.side;
  }
}

/* ---- face detection full range ---- */

enum { FACE_N = 192, FACE_ANCHORS = 2304 };

mp_error *mp_face_detector_load(const char *path, mp_face_detector *fd) {
  memset(fd, 0, sizeof *fd);
  MP_TRY(mp_tflite_open(path, &fd->model));
  int32_t shape[8];
  mp_error *e = NULL;
  if (mp_tflite_n_inputs(fd->model) != 1 || mp_tflite_input_numel(fd->model, 0) != FACE_N * FACE_N * 3 ||
      mp_tflite_n_outputs(fd->model) != 2)
    e = mp_errorf("%s: expected one 192x192x3 input and two outputs", path);
  /* The dense file names its outputs reshaped_*; the sparse one Identity / Identity_1. Tell them
   * apart by size: the box output has 16 values per anchor. */
  for (int i = 0; !e && i < 2; i++) {
    int nd = mp_tflite_output_shape(fd->model, i, shape);
    int last = nd > 0 ? shape[nd - 1] : 0;
    if (last == 16) fd->out_boxes = mp_tflite_output_name(fd->model, i);
    else if (last == 1) fd->out_scores = mp_tflite_output_name(fd->model, i);
  }
  if (!e && (!fd->out_boxes || !fd->out_scores)) e = mp_errorf("%s: outputs are not [.,2304,16] and [.,2304,1]", path);
  fd->anchors = malloc(FACE_ANCHORS * 4 * sizeof *fd->anchors);
  mp_ssd_anchor_opts ao = {.num_layers = 1, .strides = {4}, .input_w = FACE_N, .input_h = FACE_N, .offset_x = 0.5f, .offset_y = 0.5f,
                           .interpolated_scale_aspect_ratio = 0.0f};
  if (!e && (!fd->anchors || (fd->n_anchors = mp_ssd_anchors(&ao, fd->anchors, FACE_ANCHORS)) != FACE_ANCHORS))
    e = mp_errorf("face anchors: expected %d", FACE_ANCHORS);
  if (e) mp_face_detector_free(fd);
  return e;
}

void mp_face_detector_free(mp_face_detector *fd) {
  mp_tflite_close(fd->model);
  free(fd->anchors);
  memset(fd, 0, sizeof *fd);
}

int mp_face_postprocess(const mp_face_detector *fd, const float *boxes, const float *scores, mp_detection *out, int cap) {
  mp_ssd_decode_opts o = {.num_boxes = FACE_ANCHORS, .num_coords = 16, .num_kp = 6, .scale = 192.0f, .min_score = 0.6f, .clip = 100.0f};
  int n = mp_ssd_decode(boxes, scores, fd->anchors, &o, out, cap);
  return mp_weighted_nms(out, n, 0.3f);
}

mp_error *mp_face_detect(mp_face_detector *fd, mp_pool *pool, const mp_image *img, float x0, float y0, float w, float h,
                         mp_detection *out, int cap, int *n) {
  *n = 0;
  if (img->channels != 3) return mp_errorf("face detection needs an RGB image");
  float *in = mp_alloc(FACE_N * FACE_N * 3 * sizeof *in);
  if (!in) return mp_errorf("out of memory");
  mp_square sq = mp_letterbox_input(img, x0, y0, w, h, FACE_N, -1.0f, 1.0f, in);
  const float *inputs[1] = {in};
  mp_error *e = mp_tflite_run(fd->model, pool, inputs);
  mp_free(in);
  if (e) return mp_error_wrap(e, "face detection");
  const float *boxes = mp_tflite_output_by_name(fd->model, fd->out_boxes, NULL);
  const float *scores = mp_tflite_output_by_name(fd->model, fd->out_scores, NULL);
  mp_detection *tmp = malloc(FACE_ANCHORS * sizeof *tmp);
  if (!tmp) return mp_errorf("out of memory");
  int k = mp_face_postprocess(fd, boxes, scores, tmp, FACE_ANCHORS);
  if (k > cap) k = cap;
  mp_detections_to_pixels(tmp, k, sq);
  memcpy(out, tmp, (size_t)k * sizeof *out);
  free(tmp);
  *n = k;
  return NULL;
}
