/* mp_attention on the UNets' attention shapes (one image), by set:
 *   (default) SD 1.5 at 512x512: 4096 queries x 4096 keys x 8 heads x 40 at 64x64, 1024 x 1024 x 8 x 80
 *             at 32x32, 256 x 256 x 8 x 160 at 16x16, and the 4096 x 77 cross-attention of level 0;
 *   --hires   SD 1.5 at 1024x1024: the same levels with 16384, 4096 and 1024 tokens;
 *   --xl      SDXL at 1024x1024: 4096 tokens x 10 heads x 64 (ten transformer blocks), 1024 x 20 x 64
 *             (sixty), and their 77-key cross-attentions;
 *   --vae     the VAE decoder's mid-block attention (one head of 512): 4096 tokens at 512x512, 9216 in
 *             each of the two tiles of a 1024x1024 decode.
 * "per step" weighs each UNet shape by its calls in one CFG step (batch 2, one call per image and
 * transformer block): the attention row of `mpass bench --profile`, less the shapes not listed.
 * --kernel bf16 / amx times the AVX-512 BF16 / AMX kernel (core/attention_bf16.h) instead of the f32 one.
 * usage: bench_attention [--threads N] [--runs N] [--kernel f32|bf16|amx] [--hires | --xl | --vae] */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "core/attention_bf16.h"
#include "core/clock.h"
#include "core/cpu_kernels.h"
#include "core/matmul.h"
#include "core/ops.h"
#include "core/threads.h"

typedef struct {
  int nq, nk, heads, hd, calls; /* calls per CFG step; 0: not a UNet shape */
} shape;

static const shape sd15[] = {{4096, 4096, 8, 40, 10}, {1024, 1024, 8, 80, 10}, {256, 256, 8, 160, 10}, {4096, 77, 8, 40, 10}, {0}};
static const shape sd15_hires[] = {
    {16384, 16384, 8, 40, 10}, {4096, 4096, 8, 80, 10}, {1024, 1024, 8, 160, 10}, {16384, 77, 8, 40, 10}, {0}};
static const shape xl[] = {{4096, 4096, 10, 64, 20}, {1024, 1024, 20, 64, 120}, {4096, 77, 10, 64, 20}, {1024, 77, 20, 64, 120}, {0}};
static const shape decoder[] = {{4096, 4096, 1, 512, 0}, {9216, 9216, 1, 512, 0}, {0}};

int main(int argc, char **argv) {
  int threads = 2, runs = 3;
  const shape *shapes = sd15;
  mp_attention_kernel kernel = MP_ATTENTION_F32;
  for (int i = 1; i < argc; i++) {
    const shape *set = !strcmp(argv[i], "--hires") ? sd15_hires : !strcmp(argv[i], "--xl") ? xl : !strcmp(argv[i], "--vae") ? decoder : NULL;
    if (set) shapes = set, memmove(argv + i, argv + i + 1, sizeof *argv * (size_t)(argc - i)), argc--, i--;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--kernel"))
      kernel = !strcmp(argv[i + 1], "amx") ? MP_ATTENTION_AMX_BF16 : !strcmp(argv[i + 1], "bf16") ? MP_ATTENTION_AVX512_BF16 : MP_ATTENTION_F32;
  }
  if ((kernel == MP_ATTENTION_AVX512_BF16 && !mp_cpu_avx512_bf16()) || (kernel == MP_ATTENTION_AMX_BF16 && !(mp_cpu_avx512_bf16() && mp_cpu_amx_usable())))
    return fprintf(stderr, "this CPU lacks the %s kernel's instructions\n", mp_attention_kernel_name(kernel)), 1;
  printf("kernel %s, %d threads\n", mp_attention_kernel_name(kernel), threads);
  mp_pool *pool;
  mp_error *e = mp_pool_create(threads, &pool);
  if (e) return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
  /* the UNet's pool has a backend, whose scratch holds the kernels' packs from call to call: so does
   * this one's (without, every call maps, faults in and unmaps them) */
  mp_backend *backend;
  if ((e = mp_backend_create(MP_PRECISION_F32, threads, &backend))) return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
  mp_pool_set_backend(pool, backend);
  double total = 0, per_step = 0;
  for (const shape *sh = shapes; sh->nq; sh++) {
    const int nq = sh->nq, nk = sh->nk, heads = sh->heads, hd = sh->hd;
    const size_t dq = (size_t)nq * heads * hd, dk = (size_t)nk * heads * hd;
    float *q = malloc(dq * 4), *k = malloc(dk * 4), *v = malloc(dk * 4), *o = malloc(dq * 4);
    bench_fill(q, dq, 1, 4.0f), bench_fill(k, dk, 2, 4.0f), bench_fill(v, dk, 3, 4.0f);
    mp_attention_with(kernel, pool, o, q, k, v, nq, nk, heads, hd, false);
    double t0 = mp_now();
    for (int r = 0; r < runs; r++) mp_attention_with(kernel, pool, o, q, k, v, nq, nk, heads, hd, false);
    double t = (mp_now() - t0) / runs, flop = 4.0 * nq * (double)nk * heads * hd;
    double sum = 0;
    for (size_t i = 0; i < dq; i++) sum += o[i];
    printf("%5d x %5d x %2d heads x %3d: %7.2f ms  %5.0f GFLOP/s  (checksum %.6g)\n", nq, nk, heads, hd, t * 1e3, flop / t / 1e9, sum);
    total += t, per_step += t * sh->calls;
    free(q), free(k), free(v), free(o);
  }
  if (shapes[0].calls)
    printf("total %.2f ms, per step %.3f s\n", total * 1e3, per_step);
  else
    printf("total %.2f ms\n", total * 1e3);
  mp_pool_destroy(pool);
  mp_backend_destroy(backend);
  return 0;
}
