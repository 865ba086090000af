/* Float masks in [0, 1] (1 = repaint) and the "only masked" inpainting geometry.
 *
 * The per-person pass (SPEC.md §4 step 3) is, in these terms:
 *   mp_mask_dilate(m, 4); mp_mask_blur(m, 4);                     dilated and blurred mask
 *   mp_mask_bbox(m, 0.5f / 255, &box);                              what the blur reaches (A1111 takes the box
 *                                                                   of the 8-bit mask: values that round to 0 drop out)
 *   r = mp_crop_region(box, 32, w, h, W, H);                        + padding, grown to the job's aspect
 *   mp_crop_work_size(r, w, h, &cw, &ch);                           about w×h pixels, multiples of 8
 *   mp_image_crop_resize(running, r, cw, ch, LANCZOS3, &crop);      what the inpainting pass sees
 *   ... inpaint crop ...
 *   mp_paste_masked(running, repainted, r, m);                      back through the blurred mask
 * which is what AUTOMATIC1111 does for "Inpaint area: Only masked" (modules/masking.py). */
#ifndef MP_POST_MASK_H
#define MP_POST_MASK_H

#include <stdbool.h>

#include "core/error.h"
#include "io/image.h"
#include "post/resize.h"

typedef struct {
  int width, height;
  float *data; /* row-major, owned (mp_alloc) */
} mp_mask;

mp_error *mp_mask_alloc(mp_mask *m, int width, int height); /* zero-filled */
void mp_mask_free(mp_mask *m);
mp_error *mp_mask_copy(const mp_mask *src, mp_mask *dst);
/* From a 1-channel image (255 = 1.0) and back (rounded). A 3-channel image uses its first channel. */
mp_error *mp_mask_from_image(const mp_image *img, mp_mask *m);
mp_error *mp_mask_to_image(const mp_mask *m, mp_image *img);
/* Resize (values clamped to [0, 1] afterwards, as Lanczos overshoots). */
mp_error *mp_mask_resize(const mp_mask *src, int w, int h, mp_resize_filter filter, mp_mask *dst);

/* Grey-scale dilation by a disc of `radius` pixels: each pixel becomes the maximum within Euclidean
 * distance `radius`. radius 0 is a no-op. O(pixels × radius). */
mp_error *mp_mask_dilate(mp_mask *m, int radius);

/* The radius for `--mask_dilate N` (pixels) or `--mask_dilate N%` (decision: N percent of the longer
 * side of the mask's bounding box above `threshold`, rounded). An empty mask gives 0. */
int mp_mask_dilate_radius(const mp_mask *m, double value, bool percent, float threshold);

/* Separable gaussian blur with standard deviation `sigma` pixels, kernel radius ceil(3 sigma), mirrored
 * borders (…2 1 0 | 0 1 2…, i.e. the edge pixel repeats once). sigma <= 0 is a no-op. */
mp_error *mp_mask_blur(mp_mask *m, double sigma);

/* The smallest rectangle holding every pixel > threshold; false when there is none. */
bool mp_mask_bbox(const mp_mask *m, float threshold, mp_rect *box);

/* AUTOMATIC1111's "only masked" crop: `box` grown by `pad` pixels on each side (clamped to the image),
 * then widened or heightened about its centre to the aspect ratio target_w:target_h, shifted back
 * inside the image when it pokes out, and clamped to the image when it is larger than the image
 * (the only case where the ratio is not met). Same integer arithmetic as get_crop_region +
 * expand_crop_region in modules/masking.py. */
mp_rect mp_crop_region(mp_rect box, int pad, int target_w, int target_h, int image_w, int image_h);

/* The working size for a crop: about target_w × target_h pixels in total, with the crop's own aspect
 * ratio, each side a multiple of 8 and at least 64 (decision, SPEC.md §4 step 3 "resized to about w×h"). */
void mp_crop_work_size(mp_rect crop, int target_w, int target_h, int *work_w, int *work_h);

/* `box` scaled by `factor` about its centre (faces: 1.8), shifted back inside the image where it pokes
 * out, and clamped to the image where it is larger than the image. */
mp_rect mp_rect_scale(mp_rect box, double factor, int image_w, int image_h);

/* Set every pixel of rectangle r (clipped to the mask) to v. */
void mp_mask_fill_rect(mp_mask *m, mp_rect r, float v);
/* The value at (x, y); 0 outside the mask (e.g. "does this person's mask hold the face's centre?"). */
float mp_mask_at(const mp_mask *m, int x, int y);

/* Paste `patch` (the repainted crop, any size) back into rectangle `r` of `dst`: the patch is resized
 * to the rectangle with Lanczos-3, then blended through `mask` (dst-sized): out = m·patch + (1-m)·dst,
 * rounded. Pixels where the mask is 0 or that lie outside `r` are left exactly as they were. */
mp_error *mp_paste_masked(mp_image *dst, const mp_image *patch, mp_rect r, const mp_mask *mask);

#endif
