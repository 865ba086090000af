#include "post/tiles.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

/* Start positions along one axis: n tiles of `tile` over `len`, evenly spaced, first at 0, last at len − tile. */
static int axis_tiles(int len, int tile, int overlap, int **starts) {
  int n = 1;
  if (len > tile) n = (int)ceil((double)(len - overlap) / (double)(tile - overlap));
  if (n < 1) n = 1;
  *starts = malloc((size_t)n * sizeof **starts);
  if (!*starts) return -1;
  for (int i = 0; i < n; i++) (*starts)[i] = n == 1 ? 0 : (int)lround((double)i * (len - tile) / (n - 1));
  return n;
}

mp_error *mp_tile_grid_make(int width, int height, int tile_w, int tile_h, int overlap, mp_tile_grid *g) {
  memset(g, 0, sizeof *g);
  if (width <= 0 || height <= 0 || tile_w <= 0 || tile_h <= 0)
    return mp_errorf("tiles: invalid sizes (image %dx%d, tile %dx%d)", width, height, tile_w, tile_h);
  if (tile_w > width) tile_w = width;
  if (tile_h > height) tile_h = height;
  int limit = (tile_w < tile_h ? tile_w : tile_h) / 2;
  if (overlap < 0 || overlap > limit)
    return mp_errorf("tiles: overlap %d must be between 0 and half the tile (%d)", overlap, limit);
  int *xs = NULL, *ys = NULL;
  int nx = axis_tiles(width, tile_w, overlap, &xs), ny = axis_tiles(height, tile_h, overlap, &ys);
  g->tiles = nx > 0 && ny > 0 ? calloc((size_t)nx * (size_t)ny, sizeof *g->tiles) : NULL;
  if (!g->tiles) {
    free(xs), free(ys);
    return mp_errorf("out of memory");
  }
  g->cols = nx, g->rows = ny, g->n = nx * ny;
  for (int j = 0; j < ny; j++)
    for (int i = 0; i < nx; i++) {
      mp_tile *t = &g->tiles[j * nx + i];
      t->r = (mp_rect){xs[i], ys[j], xs[i] + tile_w, ys[j] + tile_h};
      t->feather_left = i > 0 ? xs[i - 1] + tile_w - xs[i] : 0;
      t->feather_right = i + 1 < nx ? xs[i] + tile_w - xs[i + 1] : 0;
      t->feather_top = j > 0 ? ys[j - 1] + tile_h - ys[j] : 0;
      t->feather_bottom = j + 1 < ny ? ys[j] + tile_h - ys[j + 1] : 0;
    }
  free(xs), free(ys);
  return NULL;
}

void mp_tile_grid_free(mp_tile_grid *g) {
  if (!g) return;
  free(g->tiles);
  memset(g, 0, sizeof *g);
}

mp_error *mp_tile_canvas_init(mp_tile_canvas *c, int width, int height, int channels) {
  memset(c, 0, sizeof *c);
  if (width <= 0 || height <= 0 || width > MP_IMAGE_MAX_SIDE || height > MP_IMAGE_MAX_SIDE || (channels != 1 && channels != 3))
    return mp_errorf("tile canvas: invalid size %dx%dx%d", width, height, channels);
  size_t n = (size_t)width * (size_t)height;
  c->sum = mp_calloc(n * (size_t)channels, sizeof(float));
  c->weight = mp_calloc(n, sizeof(float));
  if (!c->sum || !c->weight) {
    mp_tile_canvas_free(c);
    return mp_errorf("out of memory for a %dx%d tile canvas", width, height);
  }
  c->width = width, c->height = height, c->channels = channels;
  return NULL;
}

void mp_tile_canvas_free(mp_tile_canvas *c) {
  if (!c) return;
  mp_free(c->sum);
  mp_free(c->weight);
  memset(c, 0, sizeof *c);
}

/* Weight at offset i of n along an axis with ramps `a` at the start and `b` at the end: rises linearly
 * over the first a pixels and falls over the last b; pixel centres, so it is never exactly 0 inside
 * and two complementary ramps over the same pixels add up to 1. */
static float ramp(int i, int n, int a, int b) {
  float w = 1.0f;
  if (a > 0 && i < a) w = fminf(w, (i + 0.5f) / a);
  if (b > 0 && i >= n - b) w = fminf(w, (n - i - 0.5f) / b);
  return w;
}

mp_error *mp_tile_canvas_add(mp_tile_canvas *c, const mp_image *img, const mp_tile *t) {
  int tw = mp_rect_width(t->r), th = mp_rect_height(t->r);
  if (img->width != tw || img->height != th || img->channels != c->channels)
    return mp_errorf("tile canvas: tile image is %dx%dx%d, expected %dx%dx%d", img->width, img->height, img->channels,
                     tw, th, c->channels);
  if (t->r.x0 < 0 || t->r.y0 < 0 || t->r.x1 > c->width || t->r.y1 > c->height)
    return mp_errorf("tile canvas: tile (%d,%d)-(%d,%d) is outside the %dx%d canvas", t->r.x0, t->r.y0, t->r.x1,
                     t->r.y1, c->width, c->height);
  const int C = c->channels;
  float *wx = malloc((size_t)tw * sizeof *wx);
  if (!wx) return mp_errorf("out of memory");
  for (int x = 0; x < tw; x++) wx[x] = ramp(x, tw, t->feather_left, t->feather_right);
  for (int y = 0; y < th; y++) {
    float wy = ramp(y, th, t->feather_top, t->feather_bottom);
    size_t row = (size_t)(t->r.y0 + y) * (size_t)c->width + (size_t)t->r.x0;
    const uint8_t *src = img->pixels + (size_t)y * (size_t)tw * (size_t)C;
    for (int x = 0; x < tw; x++) {
      float w = wx[x] * wy;
      c->weight[row + (size_t)x] += w;
      for (int k = 0; k < C; k++) c->sum[(row + (size_t)x) * (size_t)C + (size_t)k] += w * src[(size_t)x * (size_t)C + (size_t)k];
    }
  }
  free(wx);
  return NULL;
}

mp_error *mp_tile_canvas_finish(const mp_tile_canvas *c, mp_image *out) {
  MP_TRY(mp_image_alloc(out, c->width, c->height, c->channels));
  size_t n = (size_t)c->width * (size_t)c->height;
  for (size_t i = 0; i < n; i++) {
    float w = c->weight[i];
    if (!(w > 0.0f)) {
      mp_image_free(out);
      return mp_errorf("tile canvas: pixel (%zu,%zu) was covered by no tile", i % (size_t)c->width,
                       i / (size_t)c->width);
    }
    for (int k = 0; k < c->channels; k++) {
      float v = c->sum[i * (size_t)c->channels + (size_t)k] / w;
      out->pixels[i * (size_t)c->channels + (size_t)k] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : (uint8_t)lrintf(v);
    }
  }
  return NULL;
}
