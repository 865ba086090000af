/* Images: 8-bit RGB (or gray) pixels, read from and written to PNG (libpng) and JPEG (libjpeg-turbo).
 * PNG output can carry text chunks, e.g. AUTOMATIC1111's "parameters". */
#ifndef MP_IO_IMAGE_H
#define MP_IO_IMAGE_H

#include <stdint.h>

#include "core/error.h"

typedef struct {
  int width, height, channels; /* channels: 1 (gray/mask) or 3 (RGB) */
  uint8_t *pixels;             /* row-major, interleaved, owned (mp_alloc) */
} mp_image;

/* Largest accepted side; larger files are refused before any pixel is decoded. */
#define MP_IMAGE_MAX_SIDE 16384

mp_error *mp_image_alloc(mp_image *img, int width, int height, int channels);
void mp_image_free(mp_image *img);

/* Read PNG or JPEG (chosen by content) as `channels` (1 or 3) channels, converting as needed. */
mp_error *mp_image_read(const char *path, int channels, mp_image *img);
/* The PNG "parameters" text chunk if present (caller frees), else NULL. */
mp_error *mp_image_read_png_text(const char *path, const char *key, char **value);

/* Write PNG; `text_key`/`text_value` may be NULL. */
mp_error *mp_image_write_png(const char *path, const mp_image *img, const char *text_key, const char *text_value);
mp_error *mp_image_write_jpeg(const char *path, const mp_image *img, int quality);

/* Planar float [C, H, W] in [-1, 1] <-> interleaved u8 (round half away from zero after clamping). */
void mp_image_to_planar(const mp_image *img, float *chw, float lo, float hi);
void mp_image_from_planar(mp_image *img, const float *chw, float lo, float hi);

#endif
