/* Colour grading, SPEC.md §4.4: three film-look presets as 3-D lookup tables built from our own
 * formulas (below), applied with trilinear interpolation.
 *
 * All formulas act on the stored (sRGB-encoded) values in [0, 1]. Helpers:
 *   Y(c)        = 0.2126 r + 0.7152 g + 0.0722 b                         (Rec. 709 weights)
 *   curve(x, a) = x + a · (x²(3 − 2x) − x)    an S-curve through 0, ½ and 1: a > 0 adds contrast,
 *                                            a < 0 softens it; monotone for −2 < a < 1
 *   hsv(c, g)   = saturation in HSV terms: V = max channel stays, S = (V − min)/V becomes
 *                 1 − (1 − S)^g', each channel keeps its relative place between min and V (hue kept);
 *                 g' = 1 + (g − 1)·smoothstep(V / 0.25) fades the change in over the darkest quarter.
 *                 It cannot leave the colour cube, so saturated colours never clip or band.
 *   shadow(Y)   = 6.75 · Y · (1 − Y)²         1 at Y = ⅓, 0 at black and white
 *   mid(Y)      = 1 − (2Y − 1)⁴               broad mid-tone weight, 0 at black and white
 *   w_red(c)    = max(0, cos hue)³            hue from HSV; 1 for pure red, 0 beyond ±90°
 *   push(x, d)  = x + d·(1 − x) for d > 0, x + d·x for d < 0: a tint as a fraction of the headroom,
 *                 so it never leaves [0, 1]
 *   fit(c)      = c pulled toward its (clamped) luma just enough to lie in [0,1]³ — a safety net
 *                 against rounding; none of the steps above leave the cube
 * Presets (each step uses the previous step's output; Y is recomputed per step):
 *   Film Velvia — saturated, cool shadows:
 *       curve(·, 0.25) per channel; hsv(·, 1.50);
 *       r = push(r, −0.04·shadow(Y)), b = push(b, 0.05·shadow(Y)); fit
 *   Film Portra — warm, soft contrast:
 *       curve(·, −0.30) per channel, then 0.02 + 0.96·x (lifted blacks, rolled-off whites);
 *       hsv(·, 0.90); r = push(r, 0.05·mid(Y)), g = push(g, 0.015·mid(Y)),
 *       b = push(b, −0.05·mid(Y)); fit
 *   Ektar — vivid, punchy reds:
 *       curve(·, 0.35) per channel; hsv(·, 1.35 · (1 + 0.45·w_red));
 *       r = push(r, 0.03·w_red·chroma); fit
 *       (chroma = max − min before the saturation step) */
#ifndef MP_POST_GRADING_H
#define MP_POST_GRADING_H

#include "core/error.h"
#include "io/image.h"

typedef enum {
  MP_GRADE_NONE, /* identity */
  MP_GRADE_VELVIA,
  MP_GRADE_PORTRA,
  MP_GRADE_EKTAR,
} mp_grade_preset;

#define MP_LUT_SIZE 33

/* "Film Velvia", "Film Portra", "Ektar" (case-insensitive; "none" or "" = MP_GRADE_NONE). */
mp_error *mp_grade_preset_parse(const char *name, mp_grade_preset *out);
const char *mp_grade_preset_name(mp_grade_preset p);

/* The preset's formula for one colour (each in [0, 1]). */
void mp_grade_color(mp_grade_preset p, const float in[3], float out[3]);

typedef struct {
  int size;    /* entries per axis */
  float *data; /* [r][g][b][3], owned */
} mp_lut3d;

mp_error *mp_lut3d_build(mp_lut3d *lut, mp_grade_preset p, int size);
void mp_lut3d_free(mp_lut3d *lut);
/* Trilinear lookup for every pixel of an RGB image, in place. */
mp_error *mp_lut3d_apply(const mp_lut3d *lut, mp_image *img);

/* Build the preset's 33³ table and apply it. */
mp_error *mp_grade_apply(mp_image *img, mp_grade_preset p);

#endif
