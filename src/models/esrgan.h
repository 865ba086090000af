/* Real-ESRGAN super-resolution from ncnn model files, run by our own graph executor.
 *
 * The network is whatever the .param graph says, for the layer types the Real-ESRGAN ncnn files
 * use: Input, Split, Concat, Convolution (3x3 and others, with fused ReLU/LeakyReLU/Clip/Sigmoid),
 * PReLU, ReLU, Clip, Sigmoid, Eltwise, BinaryOp, Interp (nearest, integer scale) and PixelShuffle.
 * That covers realesrgan-x4fast (realesr-general-x4v3, SRVGGNetCompact: 34 convs + PReLU, pixel
 * shuffle, plus the nearest-upsampled input) and realesrgan-x4plus (RRDBNet, 351 convs).
 *
 * Images are planar f32 [3, H, W], RGB, values u8/255 (no normalisation). Outputs are not clamped
 * by the network; mp_esrgan_to_u8 clamps in float before rounding (round half up).
 *
 * The upscale pipeline follows realesrgan-ncnn-vulkan: the image is reflect-padded by `border`
 * (10) pixels, cut into tiles of `tile` x `tile` pixels from the top-left, each tile is run with
 * `context` pixels of the padded image around it, and the centre of each result is kept. With
 * context = border = 10 this is exactly realesrgan-ncnn-vulkan's -t N. Memory is bounded by the
 * tile, not the image. */
#ifndef MP_MODELS_ESRGAN_H
#define MP_MODELS_ESRGAN_H

#include <stdint.h>

#include "core/error.h"
#include "core/threads.h"
#include "io/image.h"
#include "io/ncnn.h"

typedef struct mp_esrgan mp_esrgan;

/* Load a model from its .param/.bin pair; checks the graph (layer types, parameters, weight sizes,
 * shapes on a probe input) and finds its scale. */
mp_error *mp_esrgan_open(const char *param_path, const char *bin_path, mp_esrgan **out);
/* The model `name` ("x4fast" or "x4plus") from <models_dir>/upscale/realesrgan-<name>.{param,bin}. */
mp_error *mp_esrgan_open_named(const char *models_dir, const char *name, mp_esrgan **out);
void mp_esrgan_free(mp_esrgan *m);

int mp_esrgan_scale(const mp_esrgan *m);
const mp_ncnn_model *mp_esrgan_graph(const mp_esrgan *m);

/* Called after every layer with each blob it produced (for debugging and conformance). */
typedef struct {
  void (*fn)(void *ctx, const char *blob, const float *data, int c, int h, int w);
  void *ctx;
} mp_esrgan_tap;

/* The plain network: in [3, h, w] -> out [3, h*scale, w*scale]. Every conv zero-pads; no border
 * handling, no tiling. `tap` may be NULL. */
mp_error *mp_esrgan_forward(const mp_esrgan *m, mp_pool *pool, const float *in, int h, int w, float *out,
                            const mp_esrgan_tap *tap);

#define MP_ESRGAN_BORDER 10          /* realesrgan-ncnn-vulkan's prepadding */
#define MP_ESRGAN_DEFAULT_TILE 256

typedef struct {
  int tile;    /* tile side in input pixels; <= 0: one tile for the whole image */
  int border;  /* reflect padding of the whole image (MP_ESRGAN_BORDER; 0 = none) */
  int context; /* input pixels each tile sees beyond its own on every side, within the padded image; < 0: default */
  void (*progress)(void *ctx, int done, int total); /* after each tile; may be NULL */
  void *progress_ctx;
} mp_esrgan_opts;

/* Defaults: tile 256, border 10, context mp_esrgan_default_context(m). */
mp_esrgan_opts mp_esrgan_default_opts(const mp_esrgan *m);
/* The context that makes tile seams invisible for this model (see docs/upscale.md). */
int mp_esrgan_default_context(const mp_esrgan *m);

/* The whole pipeline on a float image: in [3, h, w] -> out [3, h*scale, w*scale], not clamped.
 * `o` NULL: mp_esrgan_default_opts. */
mp_error *mp_esrgan_upscale(const mp_esrgan *m, mp_pool *pool, const float *in, int h, int w, const mp_esrgan_opts *o,
                            float *out);

/* The pipeline on an 8-bit RGB image. out_scale is the model's scale, or a divisor of it (e.g. 2
 * with a x4 model: each 2x2 block of the x4 result is averaged in float before rounding). `out`
 * is allocated here. */
mp_error *mp_esrgan_upscale_image(const mp_esrgan *m, mp_pool *pool, const mp_image *in, int out_scale,
                                  const mp_esrgan_opts *o, mp_image *out);

/* One network output value to u8: clamp(floor(v*255 + 0.5), 0, 255), clamped in float (NaN -> 0). */
uint8_t mp_esrgan_to_u8(float v);

#endif
