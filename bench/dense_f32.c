/* f32 dense layer y[M, N] = x[M, K] · Wᵀ: mpass's f32 path (mp_dense: f16 weight converted per call,
 * OpenBLAS sgemm split over mpass's pool) against oneDNN's f32 matmul with a primitive made for the
 * row count, (a) reading the f32 weight in its stored [N, K] order and (b) with the weight converted
 * from f16 and reordered into oneDNN's blocked layout on every call. UNet transformer shapes at
 * 512x512 with CFG (batch 2). With ATTACH=1 in the environment the pool gets the f32 backend, so
 * "mpass" is mp_dense as the models run it (oneDNN from 256 rows on).
 * usage: bench_dense_f32 [--threads N] */
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "core/clock.h"
#include "core/conv.h"
#include "core/matmul.h"

static dnnl_primitive_t matmul(dnnl_engine_t eng, int64_t M, int64_t K, int64_t N, const dnnl_memory_desc_t *wmd,
                               dnnl_memory_desc_t *chosen, const char **impl) {
  dnnl_memory_desc_t smd, dmd;
  dnnl_dims_t sd = {M, K}, dd = {M, N};
  CK(dnnl_memory_desc_init_by_tag(&smd, 2, sd, dnnl_f32, dnnl_ab));
  CK(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab));
  dnnl_matmul_desc_t d;
  CK(dnnl_matmul_desc_init(&d, &smd, wmd, NULL, &dmd));
  dnnl_primitive_desc_t pd;
  CK(dnnl_primitive_desc_create(&pd, &d, NULL, eng, NULL));
  dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, impl);
  if (chosen) *chosen = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  dnnl_primitive_t p;
  CK(dnnl_primitive_create(&p, pd));
  dnnl_primitive_desc_destroy(pd);
  return p;
}

int main(int argc, char **argv) {
  int threads = 2;
  for (int i = 1; i + 1 < argc; i += 2)
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
  static const int64_t shapes[][3] = {{8192, 320, 320},  {8192, 320, 2560}, {8192, 1280, 320}, {2048, 640, 640},
                                      {2048, 640, 5120}, {2048, 2560, 640}, {512, 1280, 1280}, {512, 1280, 10240},
                                      {512, 5120, 1280}}; /* M, K, N */
  const int runs = 3;
  mp_pool *pool;
  mp_backend *be;
  mp_error *e;
  if ((e = mp_pool_create(threads, &pool)) || (e = mp_backend_create(MP_PRECISION_F32, threads, &be)))
    return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
  if (getenv("ATTACH")) mp_pool_set_backend(pool, be);
  dnnl_engine_t eng;
  dnnl_stream_t st;
  CK(dnnl_engine_create(&eng, dnnl_cpu, 0));
  CK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int64_t M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
    float *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4), *w = malloc((size_t)(N * K) * 4);
    uint16_t *wh = malloc((size_t)(N * K) * 2);
    bench_fill(x, (size_t)(M * K), 1, 1.0f), bench_fill(w, (size_t)(N * K), 2, 1.0f);
    for (int64_t i = 0; i < N * K; i++) wh[i] = mp_f32_to_f16(w[i]);
    const double flop = 2.0 * (double)M * (double)K * (double)N;
    mp_tensor tw;
    mp_tensor_view(&tw, MP_F16, 2, (int64_t[]){N, K}, wh);
    mp_workspace ws = {0};
    mp_dense(pool, &ws, y, x, M, &tw, NULL);
    double t0 = mp_now();
    for (int r = 0; r < runs; r++) mp_dense(pool, &ws, y, x, M, &tw, NULL);
    double t_mp = (mp_now() - t0) / runs;
    mp_workspace_free(&ws);

    dnnl_dims_t wd = {K, N};
    dnnl_memory_desc_t w_ba, w_any, w_packed;
    CK(dnnl_memory_desc_init_by_tag(&w_ba, 2, wd, dnnl_f32, dnnl_ba));
    CK(dnnl_memory_desc_init_by_tag(&w_any, 2, wd, dnnl_f32, dnnl_format_tag_any));
    const char *impl_plain = "", *impl_packed = "";
    dnnl_primitive_t p_plain = matmul(eng, M, K, N, &w_ba, NULL, &impl_plain);
    dnnl_primitive_t p_packed = matmul(eng, M, K, N, &w_any, &w_packed, &impl_packed);
    dnnl_memory_desc_t smd, dmd;
    dnnl_dims_t sd = {M, K}, dd = {M, N};
    CK(dnnl_memory_desc_init_by_tag(&smd, 2, sd, dnnl_f32, dnnl_ab));
    CK(dnnl_memory_desc_init_by_tag(&dmd, 2, dd, dnnl_f32, dnnl_ab));
    dnnl_memory_t mx, my, mw, mwp;
    CK(dnnl_memory_create(&mx, &smd, eng, x));
    CK(dnnl_memory_create(&my, &dmd, eng, y));
    CK(dnnl_memory_create(&mw, &w_ba, eng, w));
    CK(dnnl_memory_create(&mwp, &w_packed, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t rpd;
    dnnl_primitive_t reorder;
    CK(dnnl_reorder_primitive_desc_create(&rpd, &w_ba, eng, &w_packed, eng, NULL));
    CK(dnnl_primitive_create(&reorder, rpd));
    dnnl_primitive_desc_destroy(rpd);
    dnnl_exec_arg_t a_plain[3] = {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, my}};
    dnnl_exec_arg_t a_packed[3] = {{DNNL_ARG_SRC, mx}, {DNNL_ARG_WEIGHTS, mwp}, {DNNL_ARG_DST, my}};
    dnnl_exec_arg_t a_re[2] = {{DNNL_ARG_FROM, mw}, {DNNL_ARG_TO, mwp}};
    CK(dnnl_primitive_execute(p_plain, st, 3, a_plain));
    CK(dnnl_primitive_execute(reorder, st, 2, a_re));
    CK(dnnl_primitive_execute(p_packed, st, 3, a_packed));
    CK(dnnl_stream_wait(st));
    double t_plain = 0, t_w = 0, t_packed = 0;
    for (int r = 0; r < runs; r++) {
      double a = mp_now();
      mp_convert_to_f32(w, wh, MP_F16, (size_t)(N * K));
      CK(dnnl_primitive_execute(p_plain, st, 3, a_plain));
      CK(dnnl_stream_wait(st));
      double b = mp_now();
      mp_convert_to_f32(w, wh, MP_F16, (size_t)(N * K));
      CK(dnnl_primitive_execute(reorder, st, 2, a_re));
      CK(dnnl_stream_wait(st));
      double c = mp_now();
      CK(dnnl_primitive_execute(p_packed, st, 3, a_packed));
      CK(dnnl_stream_wait(st));
      double d = mp_now();
      t_plain += b - a, t_w += c - b, t_packed += d - c;
    }
    t_plain /= runs, t_w /= runs, t_packed /= runs;
    printf("M=%-5lld K=%-5lld N=%-5lld | mpass %7.2f ms (%4.0f GFLOP/s) | oneDNN plain W (%s) %7.2f ms (%4.0f) | packed (%s) %7.2f + "
           "convert/reorder %.2f ms (%4.0f)\n",
           (long long)M, (long long)K, (long long)N, t_mp * 1e3, flop / t_mp / 1e9, impl_plain, t_plain * 1e3,
           flop / t_plain / 1e9, impl_packed, t_packed * 1e3, t_w * 1e3, flop / (t_packed + t_w) / 1e9);
    dnnl_primitive_destroy(p_plain), dnnl_primitive_destroy(p_packed), dnnl_primitive_destroy(reorder);
    dnnl_memory_destroy(mx), dnnl_memory_destroy(my), dnnl_memory_destroy(mw), dnnl_memory_destroy(mwp);
    free(x), free(y), free(w), free(wh);
  }
  dnnl_stream_destroy(st);
  dnnl_engine_destroy(eng);
  mp_backend_destroy(be);
  mp_pool_destroy(pool);
  return 0;
}
