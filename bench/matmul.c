/* GEMM backend throughput on the shapes an SD 1.5 UNet runs at 512×512 (batch 2 with CFG).
 * usage: bench_matmul [--threads N] [--precision f32|bf16] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/matmul.h"

int main(int argc, char **argv) {
  int threads = 2;
  const char *prec = "both";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--precision")) prec = argv[i + 1];
  }
  /* M (pixels × batch), K (in × kh × kw), N (out): 3×3 convs at each UNet level, a GEGLU projection, an attention q. */
  static const int64_t shapes[][3] = {{8192, 2880, 320}, {2048, 5760, 640}, {512, 11520, 1280}, {8192, 320, 2560}, {8192, 320, 320}};
  for (int p = 0; p < 2; p++) {
    mp_precision pr = p ? MP_PRECISION_BF16 : MP_PRECISION_F32;
    if (strcmp(prec, "both") && strcmp(prec, mp_precision_name(pr))) continue;
    if (pr == MP_PRECISION_BF16 && !*mp_cpu_bf16_support()) continue;
    mp_backend *b;
    mp_error *e = mp_backend_create(pr, threads, &b);
    if (e) return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
      int64_t M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
      uint16_t *w = calloc((size_t)(N * K), 2);
      float *x = calloc((size_t)(M * K), 4), *y = calloc((size_t)(M * N), 4);
      for (int64_t i = 0; i < N * K; i++) w[i] = mp_f32_to_f16((float)((i * 7919) % 1000) / 1000.0f - 0.5f);
      mp_tensor W;
      mp_tensor_view(&W, MP_F16, 2, (int64_t[]){N, K}, w);
      mp_matmul *mm;
      if ((e = mp_matmul_create(b, &W, NULL, &mm))) return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
      mp_matmul_run(mm, x, M, y, false);
      int runs = 3;
      double t0 = mp_now();
      for (int r = 0; r < runs; r++) mp_matmul_run(mm, x, M, y, false);
      double dt = (mp_now() - t0) / runs;
      printf("%-5s M=%-5lld K=%-6lld N=%-5lld  %8.2f ms  %6.1f GFLOP/s\n", mp_precision_name(pr), (long long)M, (long long)K,
             (long long)N, dt * 1e3, 2.0 * (double)M * (double)K * (double)N / dt / 1e9);
      mp_matmul_free(mm);
      free(w), free(x), free(y);
    }
    mp_backend_destroy(b);
  }
  return 0;
}
