/* ControlNet preprocessors that need no network of their own: each turns an image (or pose
 * landmarks) into the control image a ControlNet was trained on.
 *  - canny: OpenCV's Canny edge detector (3×3 Sobel, L1 gradient magnitude, non-maximum suppression,
 *    hysteresis) with AUTOMATIC1111's default thresholds 100/200, on the RGB image as A1111 passes it
 *    (cv2.Canny has no smoothing step of its own, and A1111 adds none);
 *  - pose: OpenPose's 18-keypoint body skeletons drawn the way the v1.1 openpose annotator draws them,
 *    from the MediaPipe pose landmarks models/person.c computes;
 *  - tile: the input itself, resized.
 * The others (depth, normal, lineart, mlsd, hed, ...) need an annotator network: asking for them is an
 * error that says so. */
#ifndef MP_POST_CONTROL_H
#define MP_POST_CONTROL_H

#include <stdbool.h>

#include "core/error.h"
#include "io/image.h"

typedef enum { MP_CONTROL_CANNY, MP_CONTROL_POSE, MP_CONTROL_TILE } mp_control_type;

/* "canny", "pose" (also "openpose"), "tile"; any other name is an error naming what is available
 * ("not available: needs the depth annotator model" for the known network-backed ones). */
mp_error *mp_control_type_parse(const char *name, mp_control_type *out);
const char *mp_control_type_name(mp_control_type t);
/* The names mp_control_type_parse accepts, for messages and docs. */
#define MP_CONTROL_AVAILABLE "canny, pose, tile"

/* cv2.Canny(img, low, high) with aperture 3 and the L1 gradient: img 1 or 3 channels (a 3-channel
 * pixel uses the channel with the largest |dx| + |dy|, the first on ties); edges: newly allocated,
 * `out_channels` (1, or 3 for a ControlNet hint) channels of 0 or 255. */
mp_error *mp_canny(const mp_image *img, double low, double high, int out_channels, mp_image *edges);
#define MP_CANNY_LOW 100.0
#define MP_CANNY_HIGH 200.0

/* OpenPose (COCO) keypoints: 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left, 8-10 right
 * hip/knee/ankle, 11-13 left, 14 right eye, 15 left eye, 16 right ear, 17 left ear. */
#define MP_OPENPOSE_KEYPOINTS 18
#define MP_MEDIAPIPE_LANDMARKS 33
typedef struct {
  float x[MP_OPENPOSE_KEYPOINTS], y[MP_OPENPOSE_KEYPOINTS]; /* pixels */
  bool present[MP_OPENPOSE_KEYPOINTS];
} mp_openpose_skeleton;

/* From MediaPipe's 33 landmarks (x, y in pixels, visibility 0..1 each): the neck is the shoulders'
 * midpoint; a keypoint is present when its landmarks' visibility is at least `min_visibility` and it
 * lies inside the w × h image. */
void mp_openpose_from_mediapipe(const float landmarks[MP_MEDIAPIPE_LANDMARKS][3], float min_visibility, int w, int h,
                                mp_openpose_skeleton *out);

/* A layout of n standing people side by side, for a w × h scene without an input image: slot i (left
 * to right) holds pose i % 3 of a small built-in table (arms down, hands on hips, one arm raised),
 * scaled to the slot and the height, feet near the bottom. */
void mp_openpose_layout(int n, int w, int h, mp_openpose_skeleton *out);
#define MP_OPENPOSE_LAYOUT_POSES 3

/* The skeletons on black, w × h RGB (newly allocated): the 17 limbs as filled ellipses 4 px thick in
 * OpenPose's limb colours, the whole drawing dimmed to 60 %, then the keypoints as filled circles of
 * radius 4 in full colour on top. */
mp_error *mp_openpose_draw(const mp_openpose_skeleton *skeletons, int n, int w, int h, mp_image *out);

#endif
