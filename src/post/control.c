#include "post/control.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- types ---- */

static const struct {
  const char *name;
  mp_control_type type;
} known[] = {{"canny", MP_CONTROL_CANNY}, {"pose", MP_CONTROL_POSE}, {"openpose", MP_CONTROL_POSE}, {"tile", MP_CONTROL_TILE}};

/* Control types of the public ControlNet releases whose preprocessor is a network of its own. */
static const char *const need_annotator[] = {"depth", "normal", "normalbae", "lineart", "lineart_anime", "mlsd", "hed",
                                             "softedge", "scribble", "seg", "shuffle", "inpaint", "ip2p", "qrcode"};

mp_error *mp_control_type_parse(const char *name, mp_control_type *out) {
  for (size_t i = 0; i < sizeof known / sizeof *known; i++)
    if (strcmp(name, known[i].name) == 0) {
      *out = known[i].type;
      return NULL;
    }
  for (size_t i = 0; i < sizeof need_annotator / sizeof *need_annotator; i++)
    if (strcmp(name, need_annotator[i]) == 0)
      return mp_errorf("controlnet=%s is not available: needs the %s annotator model (available: " MP_CONTROL_AVAILABLE ")", name,
                       name);
  return mp_errorf("controlnet=%s: unknown control type (available: " MP_CONTROL_AVAILABLE ")", name);
}

const char *mp_control_type_name(mp_control_type t) {
  switch (t) {
    case MP_CONTROL_CANNY: return "canny";
    case MP_CONTROL_POSE: return "pose";
    case MP_CONTROL_TILE: return "tile";
  }
  return "?";
}

/* ---- canny ---- */

/* tan(22.5°) in 15-bit fixed point: the direction tests of OpenCV's Canny, done in integers so that
 * the same pixels pass. */
enum { CANNY_SHIFT = 15, TG22 = 13573 };

mp_error *mp_canny(const mp_image *img, double low_thresh, double high_thresh, int out_channels, mp_image *edges) {
  const int W = img->width, H = img->height, C = img->channels;
  if (W < 1 || H < 1 || (C != 1 && C != 3)) return mp_errorf("canny: expected a 1- or 3-channel image, got %dx%dx%d", W, H, C);
  if (out_channels != 1 && out_channels != 3) return mp_errorf("canny: %d output channels (1 or 3)", out_channels);
  if (low_thresh > high_thresh) {
    double t = low_thresh;
    low_thresh = high_thresh, high_thresh = t;
  }
  const int low = (int)floor(low_thresh), high = (int)floor(high_thresh);
  const size_t n = (size_t)W * H, pw = (size_t)W + 2;
  int *dx = malloc(n * sizeof *dx), *dy = malloc(n * sizeof *dy);
  int *mag = calloc(pw * (size_t)(H + 2), sizeof *mag); /* a zero border all round */
  uint8_t *map = malloc(n);                              /* 0 none, 1 candidate, 2 edge */
  size_t *stack = malloc(n * sizeof *stack);
  if (!dx || !dy || !mag || !map || !stack) {
    free(dx), free(dy), free(mag), free(map), free(stack);
    return mp_errorf("out of memory");
  }
  /* 3x3 Sobel per channel, the border replicated; keep the channel with the largest |dx| + |dy| */
  for (int y = 0; y < H; y++) {
    const int ym = y > 0 ? y - 1 : 0, yp = y < H - 1 ? y + 1 : H - 1;
    for (int x = 0; x < W; x++) {
      const int xm = x > 0 ? x - 1 : 0, xp = x < W - 1 ? x + 1 : W - 1;
      int best = -1, bx = 0, by = 0;
      for (int c = 0; c < C; c++) {
#define P(yy, xx) ((int)img->pixels[((size_t)(yy) * W + (xx)) * C + c])
        int gx = (P(ym, xp) - P(ym, xm)) + 2 * (P(y, xp) - P(y, xm)) + (P(yp, xp) - P(yp, xm));
        int gy = (P(yp, xm) - P(ym, xm)) + 2 * (P(yp, x) - P(ym, x)) + (P(yp, xp) - P(ym, xp));
#undef P
        int m = abs(gx) + abs(gy);
        if (m > best) best = m, bx = gx, by = gy;
      }
      dx[(size_t)y * W + x] = bx, dy[(size_t)y * W + x] = by;
      mag[(size_t)(y + 1) * pw + x + 1] = best;
    }
  }
  /* non-maximum suppression along the gradient direction (quantised to 0°, 45°, 90°, 135°); on a
   * tie the first of the two neighbours wins, as in OpenCV */
  size_t top = 0;
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      const size_t k = (size_t)y * W + x;
      const int *row = mag + (size_t)(y + 1) * pw + x + 1, m = *row;
      map[k] = 0;
      if (m <= low) continue;
      const int xs = dx[k], ys = dy[k], ax = abs(xs);
      const int64_t ay = (int64_t)abs(ys) << CANNY_SHIFT, tg22x = (int64_t)ax * TG22;
      bool peak;
      if (ay < tg22x) {
        peak = m > row[-1] && m >= row[1];
      } else {
        const int64_t tg67x = tg22x + ((int64_t)ax << (CANNY_SHIFT + 1));
        if (ay > tg67x) {
          peak = m > row[-(ptrdiff_t)pw] && m >= row[pw];
        } else {
          const int s = (xs ^ ys) < 0 ? -1 : 1;
          peak = m > row[-(ptrdiff_t)pw - s] && m > row[(ptrdiff_t)pw + s];
        }
      }
      if (!peak) continue;
      map[k] = 1;
      if (m > high) map[k] = 2, stack[top++] = k;
    }
  /* hysteresis: candidates 8-connected to an edge become edges */
  while (top > 0) {
    const size_t k = stack[--top];
    const int y = (int)(k / (size_t)W), x = (int)(k % (size_t)W);
    for (int yy = y - 1; yy <= y + 1; yy++)
      for (int xx = x - 1; xx <= x + 1; xx++) {
        if (yy < 0 || xx < 0 || yy >= H || xx >= W) continue;
        const size_t j = (size_t)yy * W + xx;
        if (map[j] == 1) map[j] = 2, stack[top++] = j;
      }
  }
  mp_error *e = mp_image_alloc(edges, W, H, out_channels);
  if (!e)
    for (size_t k = 0; k < n; k++)
      for (int c = 0; c < out_channels; c++) edges->pixels[k * out_channels + c] = map[k] == 2 ? 255 : 0;
  free(dx), free(dy), free(mag), free(map), free(stack);
  return e;
}

/* ---- pose ---- */

/* OpenPose keypoint -> MediaPipe landmark (the neck, 1, is the shoulders' midpoint). */
static const int from_mediapipe[MP_OPENPOSE_KEYPOINTS] = {0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7};

void mp_openpose_from_mediapipe(const float lm[MP_MEDIAPIPE_LANDMARKS][3], float min_visibility, int w, int h,
                                mp_openpose_skeleton *out) {
  memset(out, 0, sizeof *out);
  for (int k = 0; k < MP_OPENPOSE_KEYPOINTS; k++) {
    float x, y, vis;
    if (from_mediapipe[k] >= 0) {
      const float *p = lm[from_mediapipe[k]];
      x = p[0], y = p[1], vis = p[2];
    } else {
      const float *l = lm[11], *r = lm[12];
      x = 0.5f * (l[0] + r[0]), y = 0.5f * (l[1] + r[1]), vis = fminf(l[2], r[2]);
    }
    out->x[k] = x, out->y[k] = y;
    out->present[k] = vis >= min_visibility && x >= 0 && y >= 0 && x < (float)w && y < (float)h;
  }
}

/* The body limbs (pairs of keypoints) and the colours (RGB) of limbs and keypoints, in the order the
 * openpose ControlNets saw them in training. */
static const int limbs[17][2] = {{1, 2},  {1, 5},  {2, 3},   {3, 4},  {5, 6},  {6, 7},   {1, 8},  {8, 9},  {9, 10},
                                 {1, 11}, {11, 12}, {12, 13}, {1, 0}, {0, 14}, {14, 16}, {0, 15}, {15, 17}};
static const uint8_t colours[MP_OPENPOSE_KEYPOINTS][3] = {
    {255, 0, 0},   {255, 85, 0},  {255, 170, 0}, {255, 255, 0}, {170, 255, 0}, {85, 255, 0},
    {0, 255, 0},   {0, 255, 85},  {0, 255, 170}, {0, 255, 255}, {0, 170, 255}, {0, 85, 255},
    {0, 0, 255},   {85, 0, 255},  {170, 0, 255}, {255, 0, 255}, {255, 0, 170}, {255, 0, 85}};

static void put(mp_image *img, int x, int y, const uint8_t rgb[3]) {
  if (x < 0 || y < 0 || x >= img->width || y >= img->height) return;
  memcpy(img->pixels + ((size_t)y * img->width + x) * 3, rgb, 3);
}

/* A filled ellipse: centre (cx, cy), semi-axes a (along `deg`) and b, as the annotator passes them to
 * cv2.ellipse2Poly (integer centre, axes and angle). */
static void fill_ellipse(mp_image *img, int cx, int cy, int a, int b, int deg, const uint8_t rgb[3]) {
  const double th = deg * 3.14159265358979323846 / 180.0, c = cos(th), s = sin(th);
  const int r = (a > b ? a : b) + 1;
  const double aa = a > 0 ? a : 0.5, bb = b > 0 ? b : 0.5;
  for (int y = cy - r; y <= cy + r; y++)
    for (int x = cx - r; x <= cx + r; x++) {
      const double dx = x - cx, dy = y - cy, u = dx * c + dy * s, v = -dx * s + dy * c;
      if ((u / aa) * (u / aa) + (v / bb) * (v / bb) <= 1.0) put(img, x, y, rgb);
    }
}

/* Standing poses, facing the viewer (the person's right is on the image's left), in units of body
 * height: x from the body's centre line, y from the top of the head. Keypoints in OpenPose order. */
static const float layout_poses[MP_OPENPOSE_LAYOUT_POSES][MP_OPENPOSE_KEYPOINTS][2] = {
    {/* arms down */
     {0, 0.07f}, {0, 0.17f}, {-0.10f, 0.18f}, {-0.13f, 0.33f}, {-0.14f, 0.47f}, {0.10f, 0.18f}, {0.13f, 0.33f}, {0.14f, 0.47f},
     {-0.06f, 0.50f}, {-0.065f, 0.72f}, {-0.07f, 0.95f}, {0.06f, 0.50f}, {0.065f, 0.72f}, {0.07f, 0.95f},
     {-0.02f, 0.055f}, {0.02f, 0.055f}, {-0.045f, 0.065f}, {0.045f, 0.065f}},
    {/* hands on hips */
     {0, 0.07f}, {0, 0.17f}, {-0.10f, 0.18f}, {-0.19f, 0.31f}, {-0.09f, 0.45f}, {0.10f, 0.18f}, {0.19f, 0.31f}, {0.09f, 0.45f},
     {-0.06f, 0.50f}, {-0.08f, 0.72f}, {-0.10f, 0.95f}, {0.06f, 0.50f}, {0.08f, 0.72f}, {0.10f, 0.95f},
     {-0.02f, 0.055f}, {0.02f, 0.055f}, {-0.045f, 0.065f}, {0.045f, 0.065f}},
    {/* right arm raised */
     {0, 0.07f}, {0, 0.17f}, {-0.10f, 0.18f}, {-0.18f, 0.12f}, {-0.20f, 0.02f}, {0.10f, 0.18f}, {0.12f, 0.33f}, {0.13f, 0.47f},
     {-0.06f, 0.50f}, {-0.06f, 0.72f}, {-0.06f, 0.95f}, {0.06f, 0.50f}, {0.07f, 0.72f}, {0.08f, 0.95f},
     {-0.02f, 0.055f}, {0.02f, 0.055f}, {-0.045f, 0.065f}, {0.045f, 0.065f}},
};

void mp_openpose_layout(int n, int w, int h, mp_openpose_skeleton *out) {
  const float slot = n > 0 ? (float)w / (float)n : (float)w;
  /* a body is about 0.45 of its height wide with the arms out: fit it in 90 % of the slot and the height */
  float height = 0.9f * (float)h;
  if (0.45f * height > 0.9f * slot) height = 0.9f * slot / 0.45f;
  const float top = (float)h - 0.03f * (float)h - height; /* feet near the bottom edge */
  for (int i = 0; i < n; i++) {
    const float(*pose)[2] = layout_poses[i % MP_OPENPOSE_LAYOUT_POSES];
    const float cx = ((float)i + 0.5f) * slot;
    memset(&out[i], 0, sizeof out[i]);
    for (int k = 0; k < MP_OPENPOSE_KEYPOINTS; k++) {
      out[i].x[k] = cx + pose[k][0] * height, out[i].y[k] = top + pose[k][1] * height;
      out[i].present[k] = out[i].x[k] >= 0 && out[i].y[k] >= 0 && out[i].x[k] < (float)w && out[i].y[k] < (float)h;
    }
  }
}

mp_error *mp_openpose_draw(const mp_openpose_skeleton *sk, int n, int w, int h, mp_image *out) {
  MP_TRY(mp_image_alloc(out, w, h, 3));
  memset(out->pixels, 0, (size_t)w * h * 3);
  const int stickwidth = 4;
  for (int i = 0; i < 17; i++)
    for (int p = 0; p < n; p++) {
      const int a = limbs[i][0], b = limbs[i][1];
      if (!sk[p].present[a] || !sk[p].present[b]) continue;
      const double x0 = sk[p].x[a], y0 = sk[p].y[a], x1 = sk[p].x[b], y1 = sk[p].y[b];
      const double len = sqrt((x0 - x1) * (x0 - x1) + (y0 - y1) * (y0 - y1));
      const int deg = (int)(atan2(y0 - y1, x0 - x1) * 180.0 / 3.14159265358979323846);
      fill_ellipse(out, (int)((x0 + x1) / 2), (int)((y0 + y1) / 2), (int)(len / 2), stickwidth, deg, colours[i]);
    }
  for (size_t k = 0; k < (size_t)w * h * 3; k++) out->pixels[k] = (uint8_t)(out->pixels[k] * 0.6); /* limbs at 60 % */
  for (int k = 0; k < MP_OPENPOSE_KEYPOINTS; k++)
    for (int p = 0; p < n; p++) {
      if (!sk[p].present[k]) continue;
      const int cx = (int)sk[p].x[k], cy = (int)sk[p].y[k];
      for (int y = cy - 4; y <= cy + 4; y++)
        for (int x = cx - 4; x <= cx + 4; x++)
          if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= 16) put(out, x, y, colours[k]);
    }
  return NULL;
}
