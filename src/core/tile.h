/* Running an image-to-image function on overlapping tiles and blending the results, so that memory is
 * bounded by the tile (the VAE on large images; upscalers later).
 *
 * The grid is counted in cells: the input has in_scale pixels per cell, the output out_scale (for the
 * SD VAE decoder 1 and 8; for the encoder 8 and 1). Tiles are tile_h x tile_w cells (smaller where the
 * image is), overlap by `overlap` cells, the last one in a row/column flush with the edge; each
 * output pixel is the weighted mean of the tiles covering it, weights ramping linearly from the
 * tile's interior edges (edges on the image border keep weight 1). A pointwise function gives
 * exactly the untiled result. */
#ifndef MP_CORE_TILE_H
#define MP_CORE_TILE_H

#include "core/error.h"

/* in [c_in, h, w] pixels -> out [c_out, h/in_scale*out_scale, ...] for one tile. */
typedef mp_error *(*mp_tile_fn)(void *ctx, int h, int w, const float *in, float *out);

/* in [c_in, n_h*in_scale, n_w*in_scale] -> out [c_out, n_h*out_scale, n_w*out_scale]. */
mp_error *mp_tiled_apply(mp_tile_fn fn, void *ctx, int n_h, int n_w, int tile_h, int tile_w, int overlap, int in_scale,
                         int out_scale, int c_in, int c_out, const float *in, float *out);

#endif
