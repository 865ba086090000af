/* Resampling: Lanczos-3, bilinear and nearest, for u8 images and float planes (masks).
 *
 * Coordinates follow the pixel-centre convention (PIL, OpenCV INTER_LINEAR, torch align_corners=False):
 * destination pixel x samples the source at (x + 0.5) * src_w / dst_w - 0.5. Lanczos and bilinear are
 * separable filters; when shrinking, the filter is stretched by the scale factor so that every source
 * pixel contributes (antialiasing, as PIL does). At the borders the taps that fall outside the image
 * are dropped and the remaining weights renormalised, so a constant image stays exactly constant. */
#ifndef MP_POST_RESIZE_H
#define MP_POST_RESIZE_H

#include "core/error.h"
#include "io/image.h"

typedef enum {
  MP_RESIZE_NEAREST,
  MP_RESIZE_BILINEAR,
  MP_RESIZE_LANCZOS3,
} mp_resize_filter;

/* A rectangle [x0, x1) × [y0, y1) in pixels. */
typedef struct {
  int x0, y0, x1, y1;
} mp_rect;

static inline int mp_rect_width(mp_rect r) { return r.x1 - r.x0; }
static inline int mp_rect_height(mp_rect r) { return r.y1 - r.y0; }

/* Resample float planes with `channels` interleaved values per pixel. No clamping (Lanczos may
 * overshoot); src and dst must not overlap. */
mp_error *mp_resize_f32(const float *src, int src_w, int src_h, int channels, float *dst, int dst_w, int dst_h,
                        mp_resize_filter filter);

/* dst = src resized to dst_w × dst_h (newly allocated, same channels). Values are rounded to nearest
 * and clamped to 0..255. Equal sizes give an exact copy. */
mp_error *mp_image_resize(const mp_image *src, int dst_w, int dst_h, mp_resize_filter filter, mp_image *dst);

/* dst = the rectangle `r` of src (must lie inside src), resized to dst_w × dst_h. The filter reads
 * source pixels around the rectangle too, so a crop taken from a larger image has no border seam. */
mp_error *mp_image_crop_resize(const mp_image *src, mp_rect r, int dst_w, int dst_h, mp_resize_filter filter,
                               mp_image *dst);

/* dst = plain copy of rectangle `r` of src. */
mp_error *mp_image_crop(const mp_image *src, mp_rect r, mp_image *dst);

/* The centred rectangle of a src_w × src_h image with the aspect ratio dst_w : dst_h (the largest one). */
mp_rect mp_center_crop_rect(int src_w, int src_h, int dst_w, int dst_h);

/* Scale to cover dst_w × dst_h and cut the overflow equally from both sides (SPEC.md: input_image is
 * "scaled and centre-cropped to w×h"). Lanczos-3. */
mp_error *mp_image_fit_crop(const mp_image *src, int dst_w, int dst_h, mp_image *dst);

/* A working size for an image of w × h: its own size, scaled down so that the long side is at most
 * `max_side`, each side rounded to a multiple of 8 (at least 64). */
void mp_size_round8(int w, int h, int max_side, int *out_w, int *out_h);

#endif
