/* Finding every person in an image, with one soft mask each (SPEC.md §4 step 2).
 *
 * Cues, all MediaPipe models run by io/tflite:
 *  - the pose detector (SSD, 224², built for one prominent person) gives person detections whose
 *    keypoints define a rotated region of interest (ROI) per person;
 *  - face detection full range finds every face; a face that no pose detection explains seeds a
 *    person ROI of its own, the body estimated from the face box;
 *  - the pose-landmark model runs on each ROI; its segmentation logits -> sigmoid is that
 *    person's mask, warped back into the image;
 *  - selfie segmentation gives one mask for all people: it bounds what can be person at all;
 *  - a pixel claimed by two persons goes to the one whose mask is stronger there.
 * Persons are ordered left to right by box centre. */
#ifndef MP_MODELS_PERSON_H
#define MP_MODELS_PERSON_H

#include "core/error.h"
#include "core/threads.h"
#include "io/image.h"
#include "models/face.h"

/* A rotated square in image pixels (rotation clockwise, radians). */
typedef struct {
  float cx, cy, side, rotation;
} mp_rotated_roi;

typedef struct {
  mp_tflite *detector, *landmark, *selfie;
  mp_face_detector face;
  float *anchors; /* [2254, 4] */
} mp_person_finder;

enum { MP_PERSON_FROM_POSE = 0, MP_PERSON_FROM_FACE = 1 };
#define MP_POSE_LANDMARKS 33

typedef struct {
  float x0, y0, x1, y1; /* box of the mask (> 0.5), pixels */
  float score;          /* detector score (pose or face) */
  float presence;       /* the landmark model's pose presence for the ROI */
  int source;           /* MP_PERSON_FROM_* */
  mp_rotated_roi roi;
  mp_detection det; /* what found it: the pose detection (its box is a face box) or the face, pixels */
  float *mask;      /* [height * width], 0..1, owned */
  /* MediaPipe's 33 pose landmarks: x, y in image pixels, visibility 0..1 (from the same landmark run) */
  float landmarks[MP_POSE_LANDMARKS][3];
} mp_person;

#define MP_MAX_FOUND_PERSONS 32
#define MP_MAX_FACES 64

typedef struct {
  int width, height;
  int n;
  mp_person persons[MP_MAX_FOUND_PERSONS];
  int n_faces;
  mp_detection faces[MP_MAX_FACES]; /* image pixels */
  int face_person[MP_MAX_FACES];    /* index into persons containing the face centre, -1 if none */
  /* wall seconds per stage: pose detector, faces, selfie segmentation, landmark models,
   * mask composition, faces on crops */
  double seconds[6];
} mp_person_result;

/* Load the four models from <models_dir>/vision/ (see scripts/fetch-models.sh). */
mp_error *mp_person_finder_load(const char *models_dir, mp_person_finder *pf);
void mp_person_finder_free(mp_person_finder *pf);

mp_error *mp_persons_find(mp_person_finder *pf, mp_pool *pool, const mp_image *img, mp_person_result *out);
void mp_person_result_free(mp_person_result *r);

/* Pose detector post-processing on raw outputs: decode (score >= 0.5) and weighted NMS, in the
 * 224² input frame. */
int mp_pose_postprocess(const float *anchors, const float *raw, const float *scores, mp_detection *out, int cap);
/* MediaPipe PoseDetectionToRoi on a detection in image pixels. */
mp_rotated_roi mp_pose_roi(const mp_detection *d);
/* The anchors of the pose detector ([2254,4]); returns the count. */
int mp_pose_anchors(float *anchors, int cap);

#endif
