/* What switching LoRAs costs: the first UNet evaluation after mp_engine_set_loras, against a steady one.
 *
 *   ./build/bench_lora_switch --model CKPT --lora A.safetensors --lora B.safetensors [--latent 32] [--threads 2]
 *                             [--precision bf16|f32]
 *
 * Opens the checkpoint through the pipeline engine (as `mpass run` does), runs two batch-2 UNet
 * evaluations on the base (the first packs the weights), then switches A -> B -> base -> A -> B -> base, timing for
 * each switch mp_engine_set_loras itself (merging, rebinding) and the first evaluation after it
 * (which, under bf16, carries any re-packing). "excess" = switch + first evaluation - a steady
 * evaluation: what a pass pays for changing the LoRA. Wall and CPU seconds (all threads) are printed,
 * as the machine may be shared; the latent size only scales the steady evaluation, not the excess. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "core/context.h"
#include "pipeline/engine.h"

static int fail(mp_error *e) {
  fprintf(stderr, "bench_lora_switch: %s\n", mp_error_message(e));
  mp_error_free(e);
  return 1;
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {{"model", required_argument, 0, 'm'},   {"lora", required_argument, 0, 'l'},
                                           {"latent", required_argument, 0, 's'},  {"threads", required_argument, 0, 't'},
                                           {"precision", required_argument, 0, 'p'}, {0, 0, 0, 0}};
  const char *model = NULL, *loras[2] = {NULL, NULL};
  int n_loras = 0, lat = 32, opt;
  /* models_dir holds the engine's model-hash cache (.cache/): keep it in the build tree */
  mpass_options o = {.n_threads = 2, .models_dir = "build", .precision = MPASS_PRECISION_BF16};
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (opt == 'm') model = optarg;
    else if (opt == 'l' && n_loras < 2) loras[n_loras++] = optarg;
    else if (opt == 's') lat = atoi(optarg);
    else if (opt == 't') o.n_threads = atoi(optarg);
    else if (opt == 'p') o.precision = strcmp(optarg, "f32") == 0 ? MPASS_PRECISION_F32 : MPASS_PRECISION_BF16;
    else return 2;
  }
  if (!model || n_loras != 2 || lat < 8 || lat % 8) {
    fprintf(stderr, "usage: bench_lora_switch --model CKPT --lora A --lora B [--latent 32] [--threads 2] [--precision bf16|f32]\n");
    return 2;
  }
  mpass_ctx *ctx = NULL;
  mp_error *e = mpass_ctx_create(&o, &ctx);
  if (e) return fail(e);
  mp_engine *eng = NULL;
  mp_weights *lw[2] = {NULL, NULL};
  float *x = NULL, *cond = NULL, *eps = NULL;
  bench_stamp t = bench_now();
  if ((e = mp_engine_open(ctx, model, NULL, &eng))) goto done;
  for (int i = 0; i < 2; i++)
    if ((e = mp_weights_open(loras[i], &lw[i]))) goto done;
  printf("%s, %s, latent %dx%d batch 2, %d threads; open %.2f s\n", model, mpass_ctx_precision(ctx), lat, lat, ctx->n_threads,
         bench_since(t).wall);
  const int C = eng->cfg.unet.in_channels, D = eng->cfg.unet.context_dim, n_ctx = 77;
  const size_t nx = (size_t)C * lat * lat;
  x = malloc(sizeof(float) * 2 * nx), eps = malloc(sizeof(float) * 2 * nx), cond = malloc(sizeof(float) * 2 * n_ctx * (size_t)D);
  if (!x || !eps || !cond) {
    e = mp_errorf("out of memory");
    goto done;
  }
  for (size_t i = 0; i < 2 * nx; i++) x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  for (size_t i = 0; i < 2 * (size_t)n_ctx * D; i++) cond[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
  const float ts[2] = {500.0f, 500.0f};
  bench_stamp steady = {0, 0};
  for (int r = 0; r < 2; r++) {
    t = bench_now();
    if ((e = mp_unet_forward(eng->unet, ctx->pool, 2, lat, lat, x, ts, cond, n_ctx, eps))) goto done;
    steady = bench_since(t);
    printf("base evaluation %d:          %7.2f s wall %7.2f s CPU%s\n", r + 1, steady.wall, steady.cpu, r ? "  (steady)" : "  (packs)");
  }
  const int seq[6] = {0, 1, -1, 0, 1, -1};
  const char *names[2] = {"A", "B"};
  for (int k = 0; k < 6; k++) {
    mp_lora_spec spec = {0};
    if (seq[k] >= 0) spec = (mp_lora_spec){lw[seq[k]], names[seq[k]], 1.0f, 1.0f};
    t = bench_now();
    if ((e = mp_engine_set_loras(eng, &spec, seq[k] >= 0 ? 1 : 0, NULL, NULL))) goto done;
    bench_stamp sw = bench_since(t);
    t = bench_now();
    if ((e = mp_unet_forward(eng->unet, ctx->pool, 2, lat, lat, x, ts, cond, n_ctx, eps))) goto done;
    bench_stamp first = bench_since(t);
    printf("switch to %-4s set_loras %6.2f s wall %6.2f s CPU; first evaluation %6.2f s wall %6.2f s CPU; "
           "excess %6.2f s wall %6.2f s CPU\n",
           seq[k] >= 0 ? names[seq[k]] : "base", sw.wall, sw.cpu, first.wall, first.cpu, sw.wall + first.wall - steady.wall,
           sw.cpu + first.cpu - steady.cpu);
  }
  printf("peak RSS %.0f MB\n", bench_peak_rss_mb());
done:
  free(x), free(eps), free(cond);
  for (int i = 0; i < 2; i++) mp_weights_close(lw[i]);
  mp_engine_close(eng);
  mpass_ctx_destroy(ctx);
  return e ? fail(e) : 0;
}
