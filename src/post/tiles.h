/* Overlapping tiles with feathered seams, for `--tiled_upscale` (SPEC.md §4.2): the upscaled image is
 * cut into tiles of the model's native size that overlap by at least `overlap` pixels, each tile is
 * repainted on its own, and the repainted tiles are blended back with weights that ramp linearly across
 * each overlap, so neighbouring tiles cross-fade and no grid shows.
 *
 *   mp_tile_grid g;  mp_tile_grid_make(W, H, 512, 512, 64, &g);
 *   mp_tile_canvas c; mp_tile_canvas_init(&c, W, H, 3);
 *   for each g.tiles[i]: crop it, img2img it (same size back), mp_tile_canvas_add(&c, &tile_img, &g.tiles[i]);
 *   mp_tile_canvas_finish(&c, &result); */
#ifndef MP_POST_TILES_H
#define MP_POST_TILES_H

#include "core/error.h"
#include "io/image.h"
#include "post/resize.h"

typedef struct {
  mp_rect r;
  /* Ramp lengths on each side: the overlap with the neighbour there, 0 at the image edge. */
  int feather_left, feather_top, feather_right, feather_bottom;
} mp_tile;

typedef struct {
  mp_tile *tiles; /* row-major: rows × cols */
  int n, cols, rows;
} mp_tile_grid;

/* Tiles of tile_w × tile_h (smaller only when the image is), evenly spaced so that neighbours overlap
 * by at least `overlap` pixels and the last tile ends exactly at the image edge. */
mp_error *mp_tile_grid_make(int width, int height, int tile_w, int tile_h, int overlap, mp_tile_grid *g);
void mp_tile_grid_free(mp_tile_grid *g);

/* Weighted sums for blending tiles. */
typedef struct {
  int width, height, channels;
  float *sum, *weight;
} mp_tile_canvas;

mp_error *mp_tile_canvas_init(mp_tile_canvas *c, int width, int height, int channels);
/* Blend `img` (exactly the tile's size) in at the tile's place. */
mp_error *mp_tile_canvas_add(mp_tile_canvas *c, const mp_image *img, const mp_tile *t);
/* The blended image; every pixel must have been covered by some tile. */
mp_error *mp_tile_canvas_finish(const mp_tile_canvas *c, mp_image *out);
void mp_tile_canvas_free(mp_tile_canvas *c);

#endif
