/* The SD autoencoder (AutoencoderKL, CompVis layout): encoder to latent moments, decoder to pixels.
 * The latent scale factor (0.18215 for SD 1.x) is applied by the pipeline, not here. */
#ifndef MP_MODELS_VAE_H
#define MP_MODELS_VAE_H

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct mp_vae mp_vae;

mp_error *mp_vae_load(const mp_weights *w, const char *prefix, const mp_vae_config *cfg, mp_vae **out);
void mp_vae_free(mp_vae *vae);

/* Tiled decoding/encoding for large images: overlapping tiles of `tile` latent cells (8 pixels each for
 * SD) overlapping by `overlap` cells, blended with linear ramps; activation memory is bounded by the
 * tile. AUTO (the default) tiles when the latent area exceeds MP_VAE_AUTO_TILE_AREA cells, with the split
 * of least work among tiles of at most 2 `tile` cells per side and 2 x 5/4 `tile`² cells in all (the
 * encoder: square, at most 5/4 `tile` per side), each as small as its count allows (vae.c: auto_tile). 0 for tile
 * or overlap picks the defaults (64 and tile/4). Tiles normalise with their own statistics, so tiled
 * output is close to, not bit-equal to, untiled output. */
typedef enum { MP_VAE_TILE_AUTO, MP_VAE_TILE_ON, MP_VAE_TILE_OFF } mp_vae_tile_mode;
typedef struct {
  mp_vae_tile_mode mode;
  int tile, overlap;
} mp_vae_tiling;
#define MP_VAE_DEFAULT_TILE 64
/* Above 640x640 pixels (5/4 of the default tile per side, 1.56x a 512x512 decode's activations): below
 * it a whole decode is faster than tiles (768x512 whole 1.5x a 512x512 decode, in two tiles 2x) and its
 * memory stays under the UNet step's, which is the peak of a job. */
#define MP_VAE_AUTO_TILE_AREA (80 * 80)
void mp_vae_set_tiling(mp_vae *vae, mp_vae_tiling tiling);
/* Whether decoding an h x w latent goes in tiles under the current tiling, and their size in cells. */
bool mp_vae_decode_tiles(const mp_vae *vae, int h, int w, int *tile_h, int *tile_w);
/* Under a bf16 backend the bf16 levels of the decoder and the encoder run on NHWC activations, with no
 * layout reorder around each convolution (core/nhwc_bf16.h); false keeps every level NCHW (tests,
 * benchmarks). */
void mp_vae_set_nhwc(mp_vae *vae, bool allow);

/* z [z_channels(embed_dim), h, w] -> image [3, 8h, 8w] in about [-1, 1] (one image). */
mp_error *mp_vae_decode(mp_vae *vae, mp_pool *pool, int h, int w, const float *z, float *image);
/* image [3, H, W] in [-1, 1] (H, W multiples of 8) -> moments [2*embed_dim, H/8, W/8]
 * (mean then logvar, as quant_conv produces them). */
mp_error *mp_vae_encode(mp_vae *vae, mp_pool *pool, int H, int W, const float *image, float *moments);

#endif
