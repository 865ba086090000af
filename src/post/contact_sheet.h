/* A contact sheet: several images side by side, scaled to one height, each with a caption underneath,
 * written by `--debug-passes` so the passes of a job can be compared at a glance. Captions use a
 * built-in 5×7 pixel font (digits, A–Z, common punctuation; lower case is drawn as upper case). */
#ifndef MP_POST_CONTACT_SHEET_H
#define MP_POST_CONTACT_SHEET_H

#include <stdint.h>

#include "core/error.h"
#include "io/image.h"

typedef struct {
  const mp_image *image; /* RGB or gray */
  const char *label;     /* may be NULL */
} mp_sheet_item;

/* height <= 0: the smallest input height, at most 512. Images keep their aspect ratio (Lanczos).
 * Cells run left to right and wrap onto a new row past 8192 px. */
mp_error *mp_contact_sheet(const mp_sheet_item *items, int n, int height, mp_image *out);
/* The same, written as a PNG. */
mp_error *mp_contact_sheet_write(const char *path, const mp_sheet_item *items, int n, int height);

/* Text in the built-in font: `scale` pixels per font pixel; the advance is 6·scale per character and
 * a line is 7·scale high. Pixels outside the image are skipped. */
int mp_text_width(const char *s, int scale);
void mp_draw_text(mp_image *img, int x, int y, const char *s, int scale, const uint8_t color[3]);

#endif
