/* MediaPipe face detection (full range), and the SSD detector machinery it shares with the pose
 * detector: anchors, box/keypoint decoding, weighted non-max suppression, letterboxed input.
 *
 * Coordinates of an mp_detection are normalised to whatever frame produced them (the model's
 * square input) until mp_detections_to_pixels maps them into image pixels. */
#ifndef MP_MODELS_FACE_H
#define MP_MODELS_FACE_H

#include <stdbool.h>

#include "core/error.h"
#include "core/threads.h"
#include "io/image.h"
#include "io/tflite.h"

#define MP_DET_MAX_KP 8

typedef struct {
  float xmin, ymin, w, h; /* box */
  float kp[MP_DET_MAX_KP][2];
  int n_kp;
  float score;
  int merged; /* how many raw detections weighted NMS merged into this one */
} mp_detection;

/* MediaPipe SsdAnchorsCalculator with fixed_anchor_size (every anchor w = h = 1), aspect ratio 1:
 * layers sharing a stride are merged; per cell 1 anchor, +1 when interpolated_scale_aspect_ratio > 0. */
typedef struct {
  int num_layers;
  int strides[8];
  int input_w, input_h;
  float offset_x, offset_y;
  float interpolated_scale_aspect_ratio;
} mp_ssd_anchor_opts;

/* Anchors as (x_center, y_center, w, h); returns the count, or -1 if cap is too small. */
int mp_ssd_anchors(const mp_ssd_anchor_opts *o, float *anchors, int cap);

typedef struct {
  int num_boxes, num_coords, num_kp;
  float scale;     /* x/y/w/h scale (the input size) */
  float min_score; /* after sigmoid */
  float clip;      /* score logit clamp */
} mp_ssd_decode_opts;

/* raw [num_boxes, num_coords] (x,y,w,h then keypoints, MediaPipe reverse_output_order), scores
 * [num_boxes] logits. Keeps detections with sigmoid(clamped logit) >= min_score. Returns count. */
int mp_ssd_decode(const float *raw, const float *scores, const float *anchors, const mp_ssd_decode_opts *o,
                  mp_detection *out, int cap);

/* MediaPipe's WEIGHTED non-max suppression (IoU > thresh merges, score-weighted corners and
 * keypoints, the top score kept). In place; returns the number kept, best first. */
int mp_weighted_nms(mp_detection *d, int n, float iou_thresh);
float mp_detection_iou(const mp_detection *a, const mp_detection *b);

/* The square region a detector sees: centre (cx, cy) and side in image pixels. */
typedef struct {
  float cx, cy, side;
} mp_square;

/* Letterbox `roi_x0,y0,w,h` (pixels) into a centred square and sample it to n x n RGB floats with
 * bilinear half-pixel taps (pixels outside the image read 0), mapped to [lo, hi]. */
mp_square mp_letterbox_input(const mp_image *img, float x0, float y0, float w, float h, int n, float lo, float hi,
                             float *out);
/* Map detections from the square's normalised frame to image pixels. */
void mp_detections_to_pixels(mp_detection *d, int n, mp_square sq);

/* ---- face detection ---- */
typedef struct {
  mp_tflite *model;
  float *anchors; /* [2304, 4] */
  int n_anchors;
  const char *out_boxes, *out_scores; /* output tensor names of this file */
} mp_face_detector;

/* Load the full-range detector; `path` is the dense or the sparse .tflite file. */
mp_error *mp_face_detector_load(const char *path, mp_face_detector *fd);
void mp_face_detector_free(mp_face_detector *fd);
/* Post-processing of raw outputs (input frame coordinates, normalised). */
int mp_face_postprocess(const mp_face_detector *fd, const float *boxes, const float *scores, mp_detection *out, int cap);
/* Faces in the region (x0,y0,w,h) of img, in image pixels. Returns the count in *n. */
mp_error *mp_face_detect(mp_face_detector *fd, mp_pool *pool, const mp_image *img, float x0, float y0, float w, float h,
                         mp_detection *out, int cap, int *n);

#endif
