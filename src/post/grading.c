#include "post/grading.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/tensor.h"

static const char *const preset_names[] = {"none", "Film Velvia", "Film Portra", "Ektar"};

mp_error *mp_grade_preset_parse(const char *name, mp_grade_preset *out) {
  if (!name || !*name) {
    *out = MP_GRADE_NONE;
    return NULL;
  }
  for (int i = 0; i < 4; i++)
    if (strcasecmp(name, preset_names[i]) == 0) {
      *out = (mp_grade_preset)i;
      return NULL;
    }
  return mp_errorf("unknown color_grading '%s' (expected 'Film Velvia', 'Film Portra' or 'Ektar')", name);
}

const char *mp_grade_preset_name(mp_grade_preset p) {
  return (unsigned)p < 4 ? preset_names[p] : "unknown";
}

static double luma(const double c[3]) { return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]; }
static double curve(double x, double a) { return x + a * (x * x * (3.0 - 2.0 * x) - x); }
/* Saturation in HSV terms, which cannot leave the colour cube: V (the largest channel) stays, the
 * saturation S = (V − min)/V becomes 1 − (1 − S)^g, and every channel keeps its place between min and V
 * (so the hue stays). g > 1 saturates, g < 1 desaturates; the change fades in over the darkest
 * quarter (smoothstep of V/0.25), where the hue of a near-black pixel means nothing. */
static void hsv_saturate(double c[3], double gamma) {
  double v = fmax(c[0], fmax(c[1], c[2])), m = fmin(c[0], fmin(c[1], c[2]));
  if (v <= 1e-9 || v - m <= 1e-12) return;
  double s = (v - m) / v, t = fmin(v / 0.25, 1.0);
  double g = 1.0 + (gamma - 1.0) * t * t * (3.0 - 2.0 * t);
  double f = (1.0 - pow(1.0 - s, g)) / s;
  for (int i = 0; i < 3; i++) c[i] = v - (v - c[i]) * f;
}
/* Move x by the fraction d of its headroom: toward 1 when d > 0, toward 0 when d < 0. Never leaves
 * [0, 1], so tints need no clipping. */
static double push(double x, double d) { return d > 0 ? x + d * (1.0 - x) : x + d * x; }

static double shadow(double y) { return 6.75 * y * (1.0 - y) * (1.0 - y); }
static double mid(double y) {
  double t = 2.0 * y - 1.0;
  return 1.0 - t * t * t * t;
}

/* max(0, cos hue)³ with the HSV hue, and the chroma (max − min). */
static double red_weight(const double c[3], double *chroma) {
  double mx = fmax(c[0], fmax(c[1], c[2])), mn = fmin(c[0], fmin(c[1], c[2]));
  *chroma = mx - mn;
  if (*chroma < 1e-9) return 0.0;
  double h; /* degrees */
  if (mx == c[0])
    h = 60.0 * fmod((c[1] - c[2]) / *chroma + 6.0, 6.0);
  else if (mx == c[1])
    h = 60.0 * ((c[2] - c[0]) / *chroma + 2.0);
  else
    h = 60.0 * ((c[0] - c[1]) / *chroma + 4.0);
  double w = cos(h * M_PI / 180.0);
  return w > 0 ? w * w * w : 0.0;
}

/* Pull toward the luma until every channel is in [0, 1]. */
static void fit(double c[3]) {
  double y = luma(c);
  y = y < 0 ? 0 : y > 1 ? 1 : y;
  double t = 1.0;
  for (int i = 0; i < 3; i++) {
    double d = c[i] - y;
    if (c[i] > 1.0 && d > 0) t = fmin(t, (1.0 - y) / d);
    if (c[i] < 0.0 && d < 0) t = fmin(t, -y / d);
  }
  for (int i = 0; i < 3; i++) {
    double v = y + t * (c[i] - y);
    c[i] = v < 0 ? 0 : v > 1 ? 1 : v; /* only rounding error is left to clamp */
  }
}

void mp_grade_color(mp_grade_preset p, const float in[3], float out[3]) {
  double c[3] = {in[0], in[1], in[2]};
  switch (p) {
    case MP_GRADE_VELVIA: {
      for (int i = 0; i < 3; i++) c[i] = curve(c[i], 0.25);
      hsv_saturate(c, 1.50);
      double s = shadow(fmin(fmax(luma(c), 0.0), 1.0));
      c[0] = push(c[0], -0.04 * s);
      c[2] = push(c[2], 0.05 * s);
      fit(c);
      break;
    }
    case MP_GRADE_PORTRA: {
      for (int i = 0; i < 3; i++) c[i] = 0.02 + 0.96 * curve(c[i], -0.30);
      hsv_saturate(c, 0.90);
      double m = mid(fmin(fmax(luma(c), 0.0), 1.0));
      c[0] = push(c[0], 0.05 * m);
      c[1] = push(c[1], 0.015 * m);
      c[2] = push(c[2], -0.05 * m);
      fit(c);
      break;
    }
    case MP_GRADE_EKTAR: {
      for (int i = 0; i < 3; i++) c[i] = curve(c[i], 0.35);
      double chroma, w = red_weight(c, &chroma);
      hsv_saturate(c, 1.35 * (1.0 + 0.45 * w));
      c[0] = push(c[0], 0.03 * w * chroma);
      fit(c);
      break;
    }
    default: break;
  }
  for (int i = 0; i < 3; i++) out[i] = (float)c[i];
}

mp_error *mp_lut3d_build(mp_lut3d *lut, mp_grade_preset p, int size) {
  memset(lut, 0, sizeof *lut);
  if (size < 2 || size > 129) return mp_errorf("3-D LUT size %d (expected 2 to 129)", size);
  lut->data = mp_alloc((size_t)size * size * size * 3 * sizeof(float));
  if (!lut->data) return mp_errorf("out of memory for a %d³ LUT", size);
  lut->size = size;
  for (int r = 0; r < size; r++)
    for (int g = 0; g < size; g++)
      for (int b = 0; b < size; b++) {
        float in[3] = {(float)r / (size - 1), (float)g / (size - 1), (float)b / (size - 1)};
        mp_grade_color(p, in, lut->data + (((size_t)r * size + g) * size + b) * 3);
      }
  return NULL;
}

void mp_lut3d_free(mp_lut3d *lut) {
  if (!lut) return;
  mp_free(lut->data);
  memset(lut, 0, sizeof *lut);
}

mp_error *mp_lut3d_apply(const mp_lut3d *lut, mp_image *img) {
  if (img->channels != 3) return mp_errorf("color grading needs an RGB image (found %d channel(s))", img->channels);
  const int N = lut->size;
  /* Per 8-bit level: the lower table index and the fraction toward the next. */
  int i0[256];
  float fr[256];
  for (int v = 0; v < 256; v++) {
    double pos = v * (N - 1) / 255.0;
    int i = (int)floor(pos);
    if (i >= N - 1) i = N - 2;
    i0[v] = i;
    fr[v] = (float)(pos - i);
  }
  const size_t sr = (size_t)N * N * 3, sg = (size_t)N * 3, sb = 3;
  size_t n = (size_t)img->width * (size_t)img->height;
  for (size_t p = 0; p < n; p++) {
    uint8_t *px = img->pixels + 3 * p;
    float fx = fr[px[0]], fy = fr[px[1]], fz = fr[px[2]];
    const float *c000 = lut->data + (size_t)i0[px[0]] * sr + (size_t)i0[px[1]] * sg + (size_t)i0[px[2]] * sb;
    for (int k = 0; k < 3; k++) {
      float c00 = c000[k] + fz * (c000[sb + k] - c000[k]);
      float c01 = c000[sg + k] + fz * (c000[sg + sb + k] - c000[sg + k]);
      float c10 = c000[sr + k] + fz * (c000[sr + sb + k] - c000[sr + k]);
      float c11 = c000[sr + sg + k] + fz * (c000[sr + sg + sb + k] - c000[sr + sg + k]);
      float c0 = c00 + fy * (c01 - c00), c1 = c10 + fy * (c11 - c10);
      float v = (c0 + fx * (c1 - c0)) * 255.0f;
      px[k] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)lrintf(v);
    }
  }
  return NULL;
}

mp_error *mp_grade_apply(mp_image *img, mp_grade_preset p) {
  if (p == MP_GRADE_NONE) return NULL;
  mp_lut3d lut;
  MP_TRY(mp_lut3d_build(&lut, p, MP_LUT_SIZE));
  mp_error *e = mp_lut3d_apply(&lut, img);
  mp_lut3d_free(&lut);
  return e;
}
