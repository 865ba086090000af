/* UNet and VAE speed on a real-size SD 1.5 checkpoint (f16 on disk, memory-mapped).
 *
 * usage: bench_unet_vae --model CKPT [--threads N] [--latent N] [--batch N] [--runs N] [--no-vae] [--no-unet]
 * One UNet forward at latent NxN (default 64 = 512x512 pixels) and batch 2 (one sampling step with
 * classifier-free guidance), and one VAE decode of an NxN latent, on random inputs. Weights stay f16
 * in memory and are converted per layer. Make a checkpoint with
 *   mpass make-model --preset sd15 --dtype f16 models/sd15-random-f16.safetensors */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench_util.h"
#include "core/clock.h"
#include "core/threads.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"

static void randn_like(float *x, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = ((float)(seed >> 9) / 8388608.0f - 0.5f) * 3.4f; /* unit variance, uniform */
  }
}

static int fail(mp_error *e) {
  fprintf(stderr, "bench_unet_vae: %s\n", mp_error_message(e));
  mp_error_free(e);
  return 1;
}

int main(int argc, char **argv) {
  const char *model = NULL;
  int threads = 2, latent = 64, batch = 2, runs = 1, vae = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--latent") && i + 1 < argc) latent = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-vae")) vae = 0;
    else if (!strcmp(argv[i], "--no-unet")) runs = 0;
    else {
      fprintf(stderr, "usage: bench_unet_vae --model CKPT [--threads N] [--latent N] [--batch N] [--runs N] [--no-vae] [--no-unet]\n");
      return 2;
    }
  }
  if (!model || threads < 1 || latent < 8 || latent % 8 || batch < 1 || runs < 0) {
    fprintf(stderr, "bench_unet_vae: --model is required; latent a multiple of 8\n");
    return 2;
  }
  openblas_set_num_threads(threads);
  mp_pool *pool;
  mp_error *e = mp_pool_create(threads, &pool);
  if (e) return fail(e);
  double t0 = mp_now();
  mp_weights *w;
  mp_sd_config cfg;
  mp_unet *u;
  mp_vae *v;
  if ((e = mp_weights_open(model, &w)) || (e = mp_sd_config_detect(w, NULL, &cfg)) ||
      (e = mp_unet_load(w, MP_PREFIX_UNET, &cfg.unet, &u)) || (e = mp_vae_load(w, MP_PREFIX_VAE, &cfg.vae, &v)))
    return fail(e);
  double load_s = mp_now() - t0;
  const int C = cfg.unet.in_channels, n_ctx = 77, D = cfg.unet.context_dim;
  size_t nx = (size_t)batch * C * latent * latent;
  float *x = malloc(sizeof(float) * nx), *eps = malloc(sizeof(float) * nx), *ctx = malloc(sizeof(float) * batch * n_ctx * D);
  float *t = malloc(sizeof(float) * batch);
  randn_like(x, nx, 1);
  randn_like(ctx, (size_t)batch * n_ctx * D, 2);
  for (int b = 0; b < batch; b++) t[b] = 500.0f + 0.25f * b;
  double best = 1e30, sum = 0;
  for (int r = 0; r < runs; r++) {
    double s = mp_now();
    if ((e = mp_unet_forward(u, pool, batch, latent, latent, x, t, ctx, n_ctx, eps))) return fail(e);
    double d = mp_now() - s;
    best = d < best ? d : best, sum += d;
    fprintf(stderr, "unet forward %d: %.2f s\n", r + 1, d);
  }
  double vae_s = 0;
  if (vae) {
    float *img = malloc(sizeof(float) * 3 * (size_t)latent * 8 * latent * 8);
    double s = mp_now();
    if ((e = mp_vae_decode(v, pool, latent, latent, x, img))) return fail(e);
    vae_s = mp_now() - s;
    free(img);
  }
  if (!runs) best = sum = 0, runs = 1;
  printf("bench: precision=f32 latent=%dx%d batch=%d threads=%d load_s=%.2f unet_step_s=%.2f unet_step_mean_s=%.2f "
         "vae_decode_s=%.2f peak_rss_mb=%.0f\n",
         latent, latent, batch, threads, load_s, best, sum / runs, vae_s, bench_peak_rss_mb());
  mp_unet_free(u);
  mp_vae_free(v);
  mp_weights_close(w);
  mp_pool_destroy(pool);
  free(x), free(eps), free(ctx), free(t);
  return 0;
}
