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

/* z [z_channels(embed_dim), h, w] -> image [3, 8h, 8w] in about [-1, 1] (one image). */
mp_error *mp_vae_decode(mp_vae *vae, mp_pool *pool, int h, int w, const float *z, float *image);
/* image [3, H, W] in [-1, 1] (H, W multiples of 8) -> moments [2*embed_dim, H/8, W/8]
 * (mean then logvar, as quant_conv produces them). */
mp_error *mp_vae_encode(mp_vae *vae, mp_pool *pool, int H, int W, const float *image, float *moments);

#endif
