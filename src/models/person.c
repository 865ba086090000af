/* Person finding: pose detector + face detector + pose-landmark masks + selfie-segmentation bound
 * (see person.h). Post-processing constants are MediaPipe's, as recorded with their sources in
 * ../shared/golden/vision/pose_detection.json; the face-seeded body geometry is ours. */
#include "models/person.h"
#include "models/model_files.h"

#include "core/clock.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/tensor.h"

enum { POSE_N = 224, POSE_ANCHORS = 2254, LM_N = 256, SEG_N = 256 };

int mp_pose_anchors(float *anchors, int cap) {
  mp_ssd_anchor_opts o = {.num_layers = 5, .strides = {8, 16, 32, 32, 32}, .input_w = POSE_N, .input_h = POSE_N,
                          .offset_x = 0.5f, .offset_y = 0.5f, .interpolated_scale_aspect_ratio = 1.0f};
  return mp_ssd_anchors(&o, anchors, cap);
}

int mp_pose_postprocess(const float *anchors, const float *raw, const float *scores, mp_detection *out, int cap) {
  mp_ssd_decode_opts o = {.num_boxes = POSE_ANCHORS, .num_coords = 12, .num_kp = 4, .scale = 224.0f, .min_score = 0.5f, .clip = 100.0f};
  int n = mp_ssd_decode(raw, scores, anchors, &o, out, cap);
  return mp_weighted_nms(out, n, 0.3f);
}

mp_rotated_roi mp_pose_roi(const mp_detection *d) {
  /* AlignmentPointsRectsCalculator (keypoint 0 = centre, 1 = scale/rotation point, target 90°)
   * then RectTransformationCalculator (scale 1.25, square_long). */
  float x0 = d->kp[0][0], y0 = d->kp[0][1], x1 = d->kp[1][0], y1 = d->kp[1][1];
  float size = 2.0f * hypotf(x1 - x0, y1 - y0);
  double rot = M_PI / 2 - atan2(-(y1 - y0), x1 - x0);
  rot = rot - 2 * M_PI * floor((rot + M_PI) / (2 * M_PI));
  mp_rotated_roi r = {x0, y0, size * 1.25f, (float)rot};
  return r;
}

/* Open one of the vision models wherever mp_find_model_file finds it. */
static mp_error *vision_path(const char *models_dir, const char *file, char *path, size_t cap) {
  char *found = NULL;
  MP_TRY(mp_find_model_file(models_dir, "vision", file, &found));
  snprintf(path, cap, "%s", found);
  free(found);
  return NULL;
}

mp_error *mp_person_finder_load(const char *models_dir, mp_person_finder *pf) {
  memset(pf, 0, sizeof *pf);
  char path[4096];
  mp_error *e = vision_path(models_dir, "pose_solution_packed_assets.data", path, sizeof path);
  if (!e) e = mp_tflite_open(path, &pf->detector);
  if (!e) e = vision_path(models_dir, "pose_landmark_full.tflite", path, sizeof path);
  if (!e) e = mp_tflite_open(path, &pf->landmark);
  if (!e) e = vision_path(models_dir, "selfie_segmentation.tflite", path, sizeof path);
  if (!e) e = mp_tflite_open(path, &pf->selfie);
  /* the sparse file is the one MediaPipe's own graph loads */
  if (!e) e = vision_path(models_dir, "face_detection_full_range_sparse.tflite", path, sizeof path);
  if (!e) e = mp_face_detector_load(path, &pf->face);
  /* The buffers below are sized for these models: a different file is refused here. */
  int64_t n1 = 0, n2 = 0, n3 = 0;
  if (!e && (mp_tflite_n_inputs(pf->detector) != 1 || mp_tflite_input_numel(pf->detector, 0) != POSE_N * POSE_N * 3))
    e = mp_errorf("pose detector: expected one 224x224x3 input");
  if (!e) {
    n1 = n2 = n3 = 0;
    for (int i = 0; i < mp_tflite_n_outputs(pf->detector); i++) {
      int32_t sh[8];
      int nd = mp_tflite_output_shape(pf->detector, i, sh);
      const char *nm = mp_tflite_output_name(pf->detector, i);
      int64_t numel = 1;
      for (int d = 0; d < nd; d++) numel *= sh[d];
      if (strcmp(nm, "Identity") == 0) n1 = numel;
      if (strcmp(nm, "Identity_1") == 0) n2 = numel;
    }
    if (n1 != POSE_ANCHORS * 12 || n2 != POSE_ANCHORS) e = mp_errorf("pose detector: outputs Identity [2254,12] and Identity_1 [2254,1] expected");
  }
  for (int which = 0; !e && which < 2; which++) {
    mp_tflite *m = which ? pf->selfie : pf->landmark;
    const char *out = which ? NULL : "Identity_2";
    n3 = 0;
    for (int i = 0; i < mp_tflite_n_outputs(m); i++) {
      int32_t sh[8];
      int nd = mp_tflite_output_shape(m, i, sh);
      int64_t numel = 1;
      for (int d = 0; d < nd; d++) numel *= sh[d];
      if (out ? strcmp(mp_tflite_output_name(m, i), out) == 0 : i == 0) n3 = numel;
    }
    if (mp_tflite_n_inputs(m) != 1 || mp_tflite_input_numel(m, 0) != LM_N * LM_N * 3 || n3 != LM_N * LM_N)
      e = mp_errorf("%s: expected a 256x256x3 input and a 256x256 mask output", which ? "selfie segmentation" : "pose landmark");
  }
  if (!e) {
    pf->anchors = malloc(POSE_ANCHORS * 4 * sizeof *pf->anchors);
    if (!pf->anchors || mp_pose_anchors(pf->anchors, POSE_ANCHORS) != POSE_ANCHORS) e = mp_errorf("pose anchors");
  }
  if (e) mp_person_finder_free(pf);
  return e;
}

void mp_person_finder_free(mp_person_finder *pf) {
  mp_tflite_close(pf->detector);
  mp_tflite_close(pf->landmark);
  mp_tflite_close(pf->selfie);
  mp_face_detector_free(&pf->face);
  free(pf->anchors);
  memset(pf, 0, sizeof *pf);
}

void mp_person_result_free(mp_person_result *r) {
  for (int i = 0; i < r->n; i++) mp_free(r->persons[i].mask);
  r->n = 0;
}

/* ---- sampling helpers ---- */

static inline float px_clamped(const mp_image *img, int x, int y, int c) {
  x = x < 0 ? 0 : x >= img->width ? img->width - 1 : x;
  y = y < 0 ? 0 : y >= img->height ? img->height - 1 : y;
  return img->pixels[((size_t)y * img->width + x) * 3 + c];
}

static float bilinear_clamped(const mp_image *img, double sx, double sy, int c) {
  int xi = (int)floor(sx), yi = (int)floor(sy);
  float fx = (float)(sx - xi), fy = (float)(sy - yi);
  return (px_clamped(img, xi, yi, c) * (1 - fx) + px_clamped(img, xi + 1, yi, c) * fx) * (1 - fy) +
         (px_clamped(img, xi, yi + 1, c) * (1 - fx) + px_clamped(img, xi + 1, yi + 1, c) * fx) * fy;
}

/* A person's anchor: face centre and face size, pixels. */
typedef struct {
  float x, y, s;
} anchor;

/* How far a pixel is from a person, in that person's face sizes: horizontally from the face
 * centre, plus how far it lies above the top of the head (a person's body hangs below the face;
 * nearer people have larger faces and claim more). */
static double anchor_dist(const anchor *a, double x, double y) {
  double above = (a->y - 1.5 * a->s) - y;
  return (fabs(x - a->x) + (above > 0 ? above : 0)) / a->s;
}

/* Rotated square crop to n x n RGB in [0,1], BORDER_REPLICATE (ImageToTensor with a NORM_RECT).
 * In a group the ROI of one person (about 10 face heights wide) holds its neighbours too, and the
 * landmark model then segments whichever person it prefers. So when other people's anchors are
 * given, pixels nearer (anchor_dist) to another person than to this one fade to grey over 0.4
 * face sizes: the model sees one person. */
static void crop_rotated(const mp_image *img, mp_rotated_roi r, int n, const anchor *own, const anchor *others,
                         int n_other, float *out) {
  double c = cos(r.rotation), s = sin(r.rotation);
  for (int i = 0; i < n; i++) {
    double v = ((i + 0.5) / n - 0.5) * r.side;
    for (int j = 0; j < n; j++) {
      double u = ((j + 0.5) / n - 0.5) * r.side;
      double sx = r.cx + u * c - v * s - 0.5, sy = r.cy + u * s + v * c - 0.5;
      float keep = 1.0f;
      if (n_other > 0) {
        double mine = anchor_dist(own, sx + 0.5, sy + 0.5), other = INFINITY;
        for (int k = 0; k < n_other; k++) other = fmin(other, anchor_dist(&others[k], sx + 0.5, sy + 0.5));
        keep = (float)((other - mine) / 0.4 + 0.5);
        keep = keep < 0 ? 0 : keep > 1 ? 1 : keep;
      }
      for (int k = 0; k < 3; k++)
        out[((size_t)i * n + j) * 3 + k] = keep * bilinear_clamped(img, sx, sy, k) / 255.0f + (1 - keep) * 0.5f;
    }
  }
}

/* Stretch the whole image to n x n RGB in [0,1] (selfie segmentation input). */
static void stretch(const mp_image *img, int n, float *out) {
  for (int i = 0; i < n; i++) {
    double sy = (i + 0.5) * img->height / n - 0.5;
    for (int j = 0; j < n; j++) {
      double sx = (j + 0.5) * img->width / n - 0.5;
      for (int k = 0; k < 3; k++) out[((size_t)i * n + j) * 3 + k] = bilinear_clamped(img, sx, sy, k) / 255.0f;
    }
  }
}

static float mask_tap(const float *m, int n, double x, double y) {
  if (x < -0.5 || y < -0.5 || x > n - 0.5 || y > n - 0.5) return 0.0f;
  if (x < 0) x = 0;
  if (y < 0) y = 0;
  if (x > n - 1) x = n - 1;
  if (y > n - 1) y = n - 1;
  int xi = (int)x, yi = (int)y;
  int x1 = xi + 1 < n ? xi + 1 : xi, y1 = yi + 1 < n ? yi + 1 : yi;
  float fx = (float)(x - xi), fy = (float)(y - yi);
  return (m[yi * n + xi] * (1 - fx) + m[yi * n + x1] * fx) * (1 - fy) + (m[y1 * n + xi] * (1 - fx) + m[y1 * n + x1] * fx) * fy;
}

/* Warp an n x n ROI mask back into the image (zero outside the ROI). */
static void warp_back(const float *m, int n, mp_rotated_roi r, float *dst, int w, int h) {
  double c = cos(r.rotation), s = sin(r.rotation);
  double half = r.side * 0.7072; /* the rotated square's reach from its centre */
  int x0 = (int)floor(r.cx - half), x1 = (int)ceil(r.cx + half), y0 = (int)floor(r.cy - half), y1 = (int)ceil(r.cy + half);
  x0 = x0 < 0 ? 0 : x0, y0 = y0 < 0 ? 0 : y0, x1 = x1 > w ? w : x1, y1 = y1 > h ? h : y1;
  memset(dst, 0, (size_t)w * h * sizeof *dst);
  for (int y = y0; y < y1; y++)
    for (int x = x0; x < x1; x++) {
      double dx = x + 0.5 - r.cx, dy = y + 0.5 - r.cy;
      double u = dx * c + dy * s, v = -dx * s + dy * c;
      dst[(size_t)y * w + x] = mask_tap(m, n, (u / r.side + 0.5) * n - 0.5, (v / r.side + 0.5) * n - 0.5);
    }
}

/* The landmark model's 33 pose landmarks (x, y in the 256² crop's pixels, z, visibility and presence
 * logits) mapped through the ROI back into image pixels, visibility as a probability (ControlNet's
 * pose preprocessor draws from these). */
static void landmarks_to_image(const float *raw, mp_rotated_roi r, float out[MP_POSE_LANDMARKS][3]) {
  double c = cos(r.rotation), s = sin(r.rotation);
  for (int k = 0; k < MP_POSE_LANDMARKS; k++) {
    const float *v = raw + 5 * k;
    double u = (v[0] / LM_N - 0.5) * r.side, w = (v[1] / LM_N - 0.5) * r.side;
    float vis = v[3] < -80 ? -80 : v[3] > 80 ? 80 : v[3];
    out[k][0] = (float)(r.cx + u * c - w * s);
    out[k][1] = (float)(r.cy + u * s + w * c);
    out[k][2] = 1.0f / (1.0f + expf(-vis));
  }
}

/* ---- the pipeline ---- */

typedef struct {
  mp_rotated_roi roi;
  float score;
  int source;
  mp_detection det; /* the pose detection (pixels) or the seeding face */
  anchor a;         /* the person's face (or the detector's face box) */
} candidate;


/* Body ROI from a face box: the pose ROI is centred on the mid-hip with side 2.5 x hip-to-crown.
 * For an upright adult the mid-hip lies about 3.3 face heights below the face centre and the ROI
 * side is about 10 face heights (measured on the pose goldens: sample1 side 1949 px for a
 * 191 px face box). Upright: a tilted head (sample1, right) rarely means a tilted body. */
static mp_rotated_roi roi_from_face(const mp_detection *f) {
  float s = f->w > f->h ? f->w : f->h;
  float cx = f->xmin + f->w / 2, cy = f->ymin + f->h / 2;
  mp_rotated_roi r = {cx, cy + 3.3f * s, 10.0f * s, 0.0f};
  return r;
}

/* Pose detections to faces, one to one: each pair with the face centre inside the detector's face
 * box (grown by half) is scored by centre distance over box size; greedy, nearest first.
 * match[d] = face index or -1; near[d] = some face lies in the grown box at all. */
static void match_faces(const mp_detection *dets, int nd, const mp_detection *faces, int nf, int *match, bool *near) {
  bool face_used[MP_MAX_FACES] = {0};
  for (int d = 0; d < nd; d++) match[d] = -1, near[d] = false;
  for (;;) {
    int bd = -1, bf = -1;
    float best = INFINITY;
    for (int d = 0; d < nd; d++) {
      float cx = dets[d].xmin + dets[d].w / 2, cy = dets[d].ymin + dets[d].h / 2, size = fmaxf(dets[d].w, dets[d].h);
      for (int f = 0; f < nf; f++) {
        float fx = faces[f].xmin + faces[f].w / 2, fy = faces[f].ymin + faces[f].h / 2;
        if (fabsf(fx - cx) > dets[d].w || fabsf(fy - cy) > dets[d].h) continue; /* outside the box grown by half */
        near[d] = true;
        float dist = hypotf(fx - cx, fy - cy) / size;
        if (match[d] < 0 && !face_used[f] && dist < best) best = dist, bd = d, bf = f;
      }
    }
    if (bd < 0) return;
    match[bd] = bf;
    face_used[bf] = true;
  }
}

static int by_centre_x(const void *pa, const void *pb) {
  const mp_person *a = pa, *b = pb;
  float ca = a->x0 + a->x1, cb = b->x0 + b->x1;
  return ca < cb ? -1 : ca > cb ? 1 : 0;
}

mp_error *mp_persons_find(mp_person_finder *pf, mp_pool *pool, const mp_image *img, mp_person_result *out) {
  memset(out, 0, sizeof *out);
  if (img->channels != 3) return mp_errorf("person finding needs an RGB image");
  int W = img->width, H = img->height;
  out->width = W, out->height = H;
  size_t npix = (size_t)W * H;
  mp_error *e = NULL;
  float *buf = mp_alloc((size_t)LM_N * LM_N * 3 * sizeof *buf);
  mp_detection *dets = malloc(POSE_ANCHORS * sizeof *dets);
  candidate *cand = malloc(MP_MAX_FOUND_PERSONS * sizeof *cand);
  float *seg_full = mp_alloc(npix * sizeof *seg_full);
  if (!buf || !dets || !cand || !seg_full) {
    e = mp_errorf("out of memory");
    goto done;
  }

  double t_stage = mp_now();
  /* 1. Pose detector on the letterboxed image. */
  mp_square sq = mp_letterbox_input(img, 0, 0, (float)W, (float)H, POSE_N, -1.0f, 1.0f, buf);
  const float *in1[1] = {buf};
  if ((e = mp_tflite_run(pf->detector, pool, in1))) goto done;
  const float *raw = mp_tflite_output_by_name(pf->detector, "Identity", NULL);
  const float *sc = mp_tflite_output_by_name(pf->detector, "Identity_1", NULL);
  if (!raw || !sc) {
    e = mp_errorf("pose detector: outputs Identity/Identity_1 missing");
    goto done;
  }
  int nd = mp_pose_postprocess(pf->anchors, raw, sc, dets, POSE_ANCHORS);
  mp_detections_to_pixels(dets, nd, sq);
  int nc = 0;

  out->seconds[0] = mp_now() - t_stage;
  t_stage = mp_now();
  /* 2. Faces on the whole image; each face no pose detection explains seeds a person. Every
   * person gets an anchor: its face (or the detector's face box, about twice a face). */
  if ((e = mp_face_detect(&pf->face, pool, img, 0, 0, (float)W, (float)H, out->faces, MP_MAX_FACES, &out->n_faces))) goto done;
  int match[MP_MAX_FOUND_PERSONS];
  bool near[MP_MAX_FOUND_PERSONS], face_taken[MP_MAX_FACES] = {0};
  if (nd > MP_MAX_FOUND_PERSONS) nd = MP_MAX_FOUND_PERSONS;
  match_faces(dets, nd, out->faces, out->n_faces, match, near);
  for (int i = 0; i < nd; i++) {
    if (match[i] < 0 && near[i]) continue; /* a second detection of someone whose face is taken */
    candidate cd = {mp_pose_roi(&dets[i]), dets[i].score, MP_PERSON_FROM_POSE, dets[i], {0, 0, 1}};
    const mp_detection *a = match[i] >= 0 ? &out->faces[match[i]] : &dets[i];
    if (match[i] >= 0) face_taken[match[i]] = true;
    cd.a = (anchor){a->xmin + a->w / 2, a->ymin + a->h / 2, (a->w > a->h ? a->w : a->h) * (match[i] >= 0 ? 1.0f : 0.5f)};
    cand[nc++] = cd;
  }
  for (int i = 0; i < out->n_faces && nc < MP_MAX_FOUND_PERSONS; i++)
    if (!face_taken[i]) {
      const mp_detection *f = &out->faces[i];
      anchor a = {f->xmin + f->w / 2, f->ymin + f->h / 2, f->w > f->h ? f->w : f->h};
      cand[nc++] = (candidate){roi_from_face(f), f->score, MP_PERSON_FROM_FACE, *f, a};
    }

  out->seconds[1] = mp_now() - t_stage;
  t_stage = mp_now();
  /* 3. Selfie segmentation: where any person can be. */
  stretch(img, SEG_N, buf);
  if ((e = mp_tflite_run(pf->selfie, pool, in1))) goto done;
  const float *seg = mp_tflite_output(pf->selfie, 0, NULL);
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++)
      seg_full[(size_t)y * W + x] = mask_tap(seg, SEG_N, (x + 0.5) * SEG_N / W - 0.5, (y + 0.5) * SEG_N / H - 0.5);

  out->seconds[2] = mp_now() - t_stage;
  t_stage = mp_now();
  /* 4. One pose-landmark run per candidate: its segmentation is that person's mask. */
  for (int i = 0; i < nc; i++) {
    anchor others[MP_MAX_FOUND_PERSONS];
    int n_others = 0;
    for (int j = 0; j < nc; j++)
      if (j != i) others[n_others++] = cand[j].a;
    crop_rotated(img, cand[i].roi, LM_N, &cand[i].a, others, n_others, buf);
    if ((e = mp_tflite_run(pf->landmark, pool, in1))) goto done;
    const float *logits = mp_tflite_output_by_name(pf->landmark, "Identity_2", NULL);
    const float *pres = mp_tflite_output_by_name(pf->landmark, "Identity_1", NULL);
    int64_t n_lm = 0;
    const float *lm = mp_tflite_output_by_name(pf->landmark, "Identity", &n_lm);
    if (!logits || !pres || !lm || n_lm < MP_POSE_LANDMARKS * 5) {
      e = mp_errorf("pose landmark: outputs Identity [195]/Identity_1/Identity_2 missing");
      goto done;
    }
    float *m = mp_alloc((size_t)LM_N * LM_N * sizeof *m);
    mp_person *p = &out->persons[out->n];
    p->mask = mp_alloc(npix * sizeof *p->mask);
    if (!m || !p->mask) {
      mp_free(m);
      mp_free(p->mask);
      p->mask = NULL;
      e = mp_errorf("out of memory");
      goto done;
    }
    for (int k = 0; k < LM_N * LM_N; k++) {
      float l = logits[k] < -80 ? -80 : logits[k] > 80 ? 80 : logits[k];
      m[k] = 1.0f / (1.0f + expf(-l));
    }
    warp_back(m, LM_N, cand[i].roi, p->mask, W, H);
    mp_free(m);
    for (size_t k = 0; k < npix; k++) p->mask[k] = fminf(p->mask[k], seg_full[k]);
    landmarks_to_image(lm, cand[i].roi, p->landmarks);
    p->score = cand[i].score;
    p->presence = pres[0];
    p->source = cand[i].source;
    p->roi = cand[i].roi;
    p->det = cand[i].det;
    out->n++;
  }

  out->seconds[3] = mp_now() - t_stage;
  t_stage = mp_now();
  /* 5. Overlaps: each pixel belongs to the person whose mask is strongest there. */
  for (size_t k = 0; k < npix; k++) {
    int best = -1;
    float bv = 0;
    for (int i = 0; i < out->n; i++)
      if (out->persons[i].mask[k] > bv) bv = out->persons[i].mask[k], best = i;
    for (int i = 0; i < out->n; i++)
      if (i != best) out->persons[i].mask[k] = 0.0f;
  }

  /* 6. Boxes; drop persons left with (almost) nothing; order left to right. */
  int kept = 0;
  for (int i = 0; i < out->n; i++) {
    mp_person *p = &out->persons[i];
    int bx0 = W, by0 = H, bx1 = -1, by1 = -1;
    size_t area = 0;
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++)
        if (p->mask[(size_t)y * W + x] > 0.5f) {
          area++;
          bx0 = x < bx0 ? x : bx0, bx1 = x > bx1 ? x : bx1, by0 = y < by0 ? y : by0, by1 = y > by1 ? y : by1;
        }
    if (area < npix / 1000 + 1) {
      mp_free(p->mask);
      continue;
    }
    p->x0 = (float)bx0, p->y0 = (float)by0, p->x1 = (float)bx1 + 1, p->y1 = (float)by1 + 1;
    out->persons[kept++] = *p;
  }
  out->n = kept;
  qsort(out->persons, (size_t)out->n, sizeof *out->persons, by_centre_x);

  out->seconds[4] = mp_now() - t_stage;
  t_stage = mp_now();
  /* 7. Faces again on the crop (the top square of its box) of each person whose mask holds no face
   * yet: a face too small for the whole-image pass is large there. New faces are those
   * overlapping no known one. */
  for (int i = 0; i < out->n && out->n_faces < MP_MAX_FACES; i++) {
    const mp_person *p = &out->persons[i];
    bool has_face = false; /* only persons without a face yet: a found face was large enough */
    for (int f = 0; f < out->n_faces && !has_face; f++) {
      int fx = (int)(out->faces[f].xmin + out->faces[f].w / 2), fy = (int)(out->faces[f].ymin + out->faces[f].h / 2);
      has_face = fx >= 0 && fy >= 0 && fx < W && fy < H && p->mask[(size_t)fy * W + fx] > 0.5f;
    }
    if (has_face) continue;
    float side = p->x1 - p->x0;
    mp_detection found[8];
    int nf = 0;
    if ((e = mp_face_detect(&pf->face, pool, img, p->x0, p->y0, side, fminf(side, p->y1 - p->y0), found, 8, &nf))) goto done;
    for (int k = 0; k < nf && out->n_faces < MP_MAX_FACES; k++) {
      bool known = false;
      for (int f = 0; f < out->n_faces && !known; f++) known = mp_detection_iou(&found[k], &out->faces[f]) > 0.3f;
      if (!known) out->faces[out->n_faces++] = found[k];
    }
  }

  out->seconds[5] = mp_now() - t_stage;
  t_stage = mp_now();
  /* 8. Faces to persons: the mask under the face centre. */
  for (int f = 0; f < out->n_faces; f++) {
    int x = (int)(out->faces[f].xmin + out->faces[f].w / 2), y = (int)(out->faces[f].ymin + out->faces[f].h / 2);
    out->face_person[f] = -1;
    if (x < 0 || y < 0 || x >= W || y >= H) continue;
    float bv = 0.0f;
    for (int i = 0; i < out->n; i++)
      if (out->persons[i].mask[(size_t)y * W + x] > bv) bv = out->persons[i].mask[(size_t)y * W + x], out->face_person[f] = i;
  }

done:
  mp_free(buf);
  free(dets);
  free(cand);
  mp_free(seg_full);
  if (e) mp_person_result_free(out);
  return e;
}
