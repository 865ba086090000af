/* mp_attention on the SD 1.5 UNet's attention shapes at 512x512 (one image): 4096 queries x 4096 keys
 * x 8 heads x 40 at 64x64, 1024 x 1024 x 8 x 80 at 32x32, 256 x 256 x 8 x 160 at 16x16, and the
 * 4096 x 77 cross-attention of level 0. --hires times the same levels at 1024x1024 instead (16384,
 * 4096 and 1024 tokens). "per step" weighs each shape by its calls in one CFG step (batch 2; five
 * transformers at each of levels 0-2), the attention row of `mpass bench --profile` less the mid
 * block's and the other cross-attentions.
 * --vae times the VAE decoder's mid-block attention instead (one head of 512): 4096 tokens at 512x512,
 * 9216 in each of the two tiles of a 1024x1024 decode.
 * --kernel bf16 / amx times the AVX-512 BF16 / AMX kernel (core/attention_bf16.h) instead of the f32 one.
 * usage: bench_attention [--threads N] [--runs N] [--kernel f32|bf16|amx] [--hires | --vae] */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "core/attention_bf16.h"
#include "core/clock.h"
#include "core/cpu_kernels.h"
#include "core/ops.h"
#include "core/threads.h"

int main(int argc, char **argv) {
  int threads = 2, runs = 3;
  bool hires = false, vae = false;
  mp_attention_kernel kernel = MP_ATTENTION_F32;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--hires") || !strcmp(argv[i], "--vae")) {
      *(argv[i][2] == 'h' ? &hires : &vae) = true;
      memmove(argv + i, argv + i + 1, sizeof *argv * (size_t)(argc - i)), argc--, i--;
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
  static const int lowres[][4] = {{4096, 4096, 8, 40}, {1024, 1024, 8, 80}, {256, 256, 8, 160}, {4096, 77, 8, 40}};
  static const int highres[][4] = {{16384, 16384, 8, 40}, {4096, 4096, 8, 80}, {1024, 1024, 8, 160}, {16384, 77, 8, 40}};
  static const int decoder[][4] = {{4096, 4096, 1, 512}, {9216, 9216, 1, 512}};
  const int(*shapes)[4] = vae ? decoder : hires ? highres : lowres;
  const size_t n_shapes = vae ? sizeof decoder / sizeof *decoder : sizeof lowres / sizeof *lowres;
  enum { CALLS_PER_STEP = 5 * 2 };
  mp_pool *pool;
  mp_error *e = mp_pool_create(threads, &pool);
  if (e) return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
  double total = 0;
  for (size_t s = 0; s < n_shapes; s++) {
    const int nq = shapes[s][0], nk = shapes[s][1], heads = shapes[s][2], hd = shapes[s][3];
    const size_t dq = (size_t)nq * heads * hd, dk = (size_t)nk * heads * hd;
    float *q = malloc(dq * 4), *k = malloc(dk * 4), *v = malloc(dk * 4), *o = malloc(dq * 4);
    bench_fill(q, dq, 1, 4.0f), bench_fill(k, dk, 2, 4.0f), bench_fill(v, dk, 3, 4.0f);
    mp_attention_with(kernel, pool, o, q, k, v, nq, nk, heads, hd, false);
    double t0 = mp_now();
    for (int r = 0; r < runs; r++) mp_attention_with(kernel, pool, o, q, k, v, nq, nk, heads, hd, false);
    double t = (mp_now() - t0) / runs, flop = 4.0 * nq * (double)nk * heads * hd;
    double sum = 0;
    for (size_t i = 0; i < dq; i++) sum += o[i];
    printf("%5d x %5d x %d heads x %3d: %7.2f ms  %5.0f GFLOP/s  (checksum %.6g)\n", nq, nk, heads, hd, t * 1e3, flop / t / 1e9, sum);
    total += t;
    free(q), free(k), free(v), free(o);
  }
  if (vae)
    printf("total %.2f ms\n", total * 1e3);
  else
    printf("total %.2f ms, per step %.3f s\n", total * 1e3, total * CALLS_PER_STEP);
  mp_pool_destroy(pool);
  return 0;
}
