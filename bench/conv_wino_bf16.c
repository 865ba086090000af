/* bf16 3x3 convolutions: oneDNN's direct convolution (what mp_conv2d ran under --precision bf16
 * before) against Winograd F(2x2,3x3) with bf16 batched matmuls (core/conv_wino_bf16.c), both from
 * and to f32 NCHW, on the SD 1.5 UNet's 3x3 shapes at 512x512 with CFG (batch 2). Also the error of
 * each against the f32 path (mp_conv2d without a backend), as rel L2 and max |error| / max |y|.
 * Weights are random f16 with the scale of a trained layer (1/sqrt(9 c_in)), inputs uniform [-1, 1].
 * oneDNN's ISA can be capped with DNNL_MAX_CPU_ISA (e.g. AVX512_CORE_BF16 on an AMX machine).
 * usage: bench_conv_wino_bf16 [--threads N] [--runs N] */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "core/clock.h"
#include "core/conv.h"
#include "core/conv_dnnl.h"
#include "core/conv_wino_bf16.h"
#include "core/matmul.h"

static void errors(const float *y, const float *r, size_t n, double *rel_l2, double *rel_max) {
  double d = 0, s = 0, dm = 0, rm = 0;
  for (size_t i = 0; i < n; i++) {
    const double e = (double)y[i] - r[i];
    d += e * e, s += (double)r[i] * r[i];
    dm = fabs(e) > dm ? fabs(e) : dm, rm = fabs(r[i]) > rm ? fabs(r[i]) : rm;
  }
  *rel_l2 = sqrt(d / (s > 0 ? s : 1)), *rel_max = dm / (rm > 0 ? rm : 1);
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void die(mp_error *e) {
  if (!e) return;
  fprintf(stderr, "%s\n", mp_error_message(e));
  exit(1);
}

int main(int argc, char **argv) {
  int threads = 2, runs = 5;
  for (int i = 1; i + 1 < argc; i += 2)
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
  if (runs < 1 || runs > 50) runs = 5;
  /* c_in, c_out, H = W: the in = out layers of each level, then the up blocks' concatenated inputs */
  static const int shapes[][3] = {{320, 320, 64},  {640, 640, 32},  {1280, 1280, 16}, {1280, 1280, 8},
                                  {960, 320, 64},  {640, 320, 64},  {1920, 640, 32},  {960, 640, 32},
                                  {2560, 1280, 16}, {1920, 1280, 16}, {2560, 1280, 8}, {320, 640, 32}};
  const int B = 2;
  mp_pool *pool, *pool32;
  mp_backend *be;
  die(mp_pool_create(threads, &pool));
  die(mp_pool_create(threads, &pool32));
  die(mp_backend_create(MP_PRECISION_BF16, threads, &be));
  mp_pool_set_backend(pool, be);
  printf("oneDNN ISA %d (dnnl_cpu_isa_t), CPU bf16: %s, %d threads, best and median of %d runs\n",
         (int)dnnl_get_effective_cpu_isa(), mp_cpu_bf16_support(), threads, runs);
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int C = shapes[s][0], O = shapes[s][1], H = shapes[s][2], W = H;
    const size_t nx = (size_t)B * C * H * W, ny = (size_t)B * O * H * W, nw = (size_t)O * C * 9;
    float *x = malloc(nx * 4), *y = malloc(ny * 4), *r = malloc(ny * 4), *w = malloc(nw * 4), *bias = malloc((size_t)O * 4);
    uint16_t *w16 = malloc(nw * 2);
    bench_fill(x, nx, 1, 2.0f), bench_fill(w, nw, 2, 2.0f * sqrtf(3.0f / (9.0f * (float)C))), bench_fill(bias, (size_t)O, 3, 0.2f);
    for (size_t i = 0; i < nw; i++) w16[i] = mp_f32_to_f16(w[i]);
    mp_tensor tw, tb;
    mp_tensor_view(&tw, MP_F16, 4, (int64_t[]){O, C, 3, 3}, w16);
    mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){O}, bias);
    const mp_pad p1 = {1, 1, 1, 1};
    const double flop = 2.0 * B * H * W * (double)C * O * 9;
    mp_workspace ws = {0};
    die(mp_conv2d(pool32, &ws, r, x, B, C, H, W, &tw, &tb, 1, p1)); /* the f32 path */

    double t_direct[50], t_wino[50], e_d[2], e_w[2];
    mp_dnnl_conv *dc;
    double t0 = mp_now();
    die(mp_dnnl_conv_create(be, &tw, &tb, 1, p1, B, H, W, &dc));
    const double pack_d = mp_now() - t0;
    die(mp_dnnl_conv_run(dc, &ws, x, B, H, W, y));
    errors(y, r, ny, &e_d[0], &e_d[1]);
    mp_wino_bf16 *wc;
    t0 = mp_now();
    die(mp_wino_bf16_create(be, &tw, &tb, &wc));
    const double pack_w = mp_now() - t0;
    die(mp_wino_bf16_run(wc, pool, &ws, x, B, H, W, y, 0));
    errors(y, r, ny, &e_w[0], &e_w[1]);
    for (int i = 0; i < runs; i++) { /* interleaved, so drifting load hits both alike */
      t0 = mp_now();
      die(mp_dnnl_conv_run(dc, &ws, x, B, H, W, y));
      t_direct[i] = mp_now() - t0;
      t0 = mp_now();
      die(mp_wino_bf16_run(wc, pool, &ws, x, B, H, W, y, 0));
      t_wino[i] = mp_now() - t0;
    }
    qsort(t_direct, (size_t)runs, sizeof(double), cmp_double);
    qsort(t_wino, (size_t)runs, sizeof(double), cmp_double);
    printf("%4d->%-4d %2dx%-2d b%d | direct %6.2f ms (med %6.2f, %5.0f GFLOP/s) | winograd F2 %6.2f ms (med %6.2f) | "
           "ratio %.2f | rel L2 vs f32: direct %.2e, wino %.2e | max: %.2e, %.2e | pack %.0f / %.0f ms | %s\n",
           C, O, H, W, B, t_direct[0] * 1e3, t_direct[runs / 2] * 1e3, flop / t_direct[0] / 1e9, t_wino[0] * 1e3,
           t_wino[runs / 2] * 1e3, t_wino[0] / t_direct[0], e_d[0], e_w[0], e_d[1], e_w[1], pack_d * 1e3, pack_w * 1e3,
           mp_wino_bf16_pays(C, O, H, W, B) ? "mp_conv2d: winograd" : "mp_conv2d: direct");
    fflush(stdout);
    mp_dnnl_conv_free(dc);
    mp_wino_bf16_free(wc);
    mp_workspace_free(&ws);
    free(x), free(y), free(r), free(w), free(w16), free(bias);
  }
  mp_backend_destroy(be);
  mp_pool_destroy(pool);
  mp_pool_destroy(pool32);
  return 0;
}
