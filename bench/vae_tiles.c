/* Tiled against untiled VAE decode (and encode): peak memory, time and the difference between them.
 *
 *   ./build/bench_vae_tiles --model CKPT [-W 768] [-H 512] [--tile T] [--overlap O] [--threads 2] [--encode] [--bf16] [--nchw] [--auto]
 *
 * Loads the checkpoint's VAE alone, decodes a deterministic pseudo-random latent (values as a sampler
 * leaves them, divided by the scale factor) tiled first — so the peak RSS printed after it is the tiled
 * decode's — then untiled, and prints rel L2, max |difference|, RMS and PSNR of the images in [-1, 1].
 * With --encode it does the same for the encoder (latent means) on the untiled decoded image. CPU
 * seconds are all threads. --auto tiles as a pipeline's decode does (AUTO) instead of --tile. --nchw keeps the bf16 decoder levels on NCHW activations (the layout before
 * they ran NHWC), for comparison. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "core/context.h"
#include "io/weights.h"
#include "models/sd.h"
#include "models/vae.h"

static void compare(const char *what, const float *a, const float *b, size_t n) {
  double d2 = 0, r2 = 0, mx = 0;
  for (size_t i = 0; i < n; i++) {
    double d = (double)a[i] - b[i];
    d2 += d * d, r2 += (double)b[i] * b[i];
    if (fabs(d) > mx) mx = fabs(d);
  }
  /* PSNR over the [-1, 1] range (peak-to-peak 2) */
  double mse = d2 / (double)n, psnr = mse > 0 ? 10 * log10(4.0 / mse) : INFINITY;
  printf("%s tiled vs untiled: rel L2 %.3g, max |diff| %.3g, RMS %.3g, PSNR %.1f dB (8-bit: max %.2f levels)\n", what,
         sqrt(d2 / (r2 > 0 ? r2 : 1)), mx, sqrt(mse), psnr, mx * 127.5);
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {{"model", required_argument, 0, 'm'},   {"tile", required_argument, 0, 't'},
                                           {"overlap", required_argument, 0, 'o'}, {"threads", required_argument, 0, 'j'},
                                           {"encode", no_argument, 0, 'e'},        {"bf16", no_argument, 0, 'b'},
                                           {"nchw", no_argument, 0, 'n'},        {"auto", no_argument, 0, 'a'},
                                           {0, 0, 0, 0}};
  const char *model = NULL;
  int W = 768, H = 512, tile = 0, overlap = 0, threads = 2, encode = 0, bf16 = 0, nchw = 0, automatic = 0, opt;
  while ((opt = getopt_long(argc, argv, "W:H:", longopts, NULL)) != -1) {
    if (opt == 'm') model = optarg;
    else if (opt == 'W') W = atoi(optarg);
    else if (opt == 'H') H = atoi(optarg);
    else if (opt == 't') tile = atoi(optarg);
    else if (opt == 'o') overlap = atoi(optarg);
    else if (opt == 'j') threads = atoi(optarg);
    else if (opt == 'e') encode = 1;
    else if (opt == 'b') bf16 = 1;
    else if (opt == 'n') nchw = 1;
    else if (opt == 'a') automatic = 1;
    else return 2;
  }
  if (!model || W < 8 || H < 8 || W % 8 || H % 8) {
    fprintf(stderr, "usage: bench_vae_tiles --model CKPT [-W 768] [-H 512] [--tile T] [--overlap O] [--threads 2] [--encode] [--bf16] [--nchw] [--auto]\n");
    return 2;
  }
  mpass_options o = {.n_threads = threads, .models_dir = "build", .precision = bf16 ? MPASS_PRECISION_BF16 : MPASS_PRECISION_F32};
  mpass_ctx *ctx = NULL;
  mp_weights *wts = NULL;
  mp_vae *vae = NULL;
  mp_sd_config cfg;
  float *z = NULL, *tiled = NULL, *whole = NULL, *m1 = NULL, *m2 = NULL;
  mp_error *e = mpass_ctx_create(&o, &ctx);
  if (!e) e = mp_weights_open(model, &wts);
  if (!e) e = mp_sd_config_detect(wts, NULL, &cfg);
  if (!e) e = mp_vae_load(wts, MP_PREFIX_VAE, &cfg.vae, &vae);
  if (!e && nchw) mp_vae_set_nhwc(vae, false);
  const int f8 = 1 << (cfg.vae.n_levels - 1), h = H / f8, w = W / f8;
  const size_t nz = (size_t)cfg.vae.embed_dim * h * w, ni = (size_t)cfg.vae.out_channels * W * H;
  if (!e && (!(z = malloc(sizeof(float) * nz)) || !(tiled = malloc(sizeof(float) * ni)) || !(whole = malloc(sizeof(float) * ni))))
    e = mp_errorf("out of memory");
  if (e) goto done;
  unsigned seed = 1;
  for (size_t i = 0; i < nz; i++) {
    seed = seed * 1664525u + 1013904223u;
    z[i] = ((float)(seed >> 9) / 8388608.0f - 0.5f) * 3.4f / cfg.scale_factor; /* a unit-variance latent, unscaled */
  }
  printf("%s: VAE decode %dx%d (latent %dx%d), %d threads, %s\n", model, W, H, w, h, threads, bf16 ? "bf16" : "f32");
  mp_vae_set_tiling(vae, (mp_vae_tiling){automatic ? MP_VAE_TILE_AUTO : MP_VAE_TILE_ON, tile, overlap});
  int th = 0, tw = 0;
  if (!mp_vae_decode_tiles(vae, h, w, &th, &tw)) th = tw = 0;
  bench_stamp t = bench_now();
  if ((e = mp_vae_decode(vae, ctx->pool, h, w, z, tiled))) goto done;
  bench_stamp ts = bench_since(t);
  printf("tiled (%dx%d cells, overlap %d; 0 = default)  %6.2f s wall %6.2f s CPU  peak RSS %.0f MB\n", tw, th, overlap, ts.wall,
         ts.cpu, bench_peak_rss_mb());
  mp_vae_set_tiling(vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  t = bench_now();
  if ((e = mp_vae_decode(vae, ctx->pool, h, w, z, whole))) goto done;
  bench_stamp us = bench_since(t);
  printf("untiled                                  %6.2f s wall %6.2f s CPU  peak RSS %.0f MB\n", us.wall, us.cpu, bench_peak_rss_mb());
  compare("decode", tiled, whole, ni);
  if (encode) {
    const size_t nm = 2 * (size_t)cfg.vae.embed_dim * h * w;
    if (!(m1 = malloc(sizeof(float) * nm)) || !(m2 = malloc(sizeof(float) * nm))) {
      e = mp_errorf("out of memory");
      goto done;
    }
    for (size_t i = 0; i < ni; i++) whole[i] = fmaxf(-1.0f, fminf(1.0f, whole[i]));
    mp_vae_set_tiling(vae, (mp_vae_tiling){MP_VAE_TILE_ON, tile, overlap});
    t = bench_now();
    if ((e = mp_vae_encode(vae, ctx->pool, H, W, whole, m1))) goto done;
    ts = bench_since(t);
    mp_vae_set_tiling(vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
    t = bench_now();
    if ((e = mp_vae_encode(vae, ctx->pool, H, W, whole, m2))) goto done;
    us = bench_since(t);
    printf("encode: tiled %.2f s wall %.2f s CPU, untiled %.2f s wall %.2f s CPU\n", ts.wall, ts.cpu, us.wall, us.cpu);
    compare("encode (mean)", m1, m2, nm / 2);
  }
done:
  free(z), free(tiled), free(whole), free(m1), free(m2);
  mp_vae_free(vae);
  mp_weights_close(wts);
  mpass_ctx_destroy(ctx);
  if (e) {
    fprintf(stderr, "bench_vae_tiles: %s\n", mp_error_message(e));
    mp_error_free(e);
    return 1;
  }
  return 0;
}
