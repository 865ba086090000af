/* bf16 3x3 convolution: mpass's path (bf16 im2col + prepacked oneDNN matmul + transpose back to
 * NCHW, as mp_conv2d runs it under --precision bf16) against oneDNN's own convolution primitive
 * (blocked bf16 activations, prepacked weights, fused bias), on the UNet's 3x3 shapes at 512x512
 * with CFG (batch 2). The primitive is timed alone (as if activations stayed blocked bf16 between
 * layers) and with the reorders from and to f32 NCHW that the models' layout needs today.
 * usage: bench_conv_bf16 [--threads N] */
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "core/clock.h"
#include "core/conv.h"
#include "core/matmul.h"

int main(int argc, char **argv) {
  int threads = 2;
  for (int i = 1; i + 1 < argc; i += 2)
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
  static const int shapes[][3] = {{320, 64, 64}, {640, 32, 32}, {1280, 16, 16}}; /* C (in = out), H, W */
  const int B = 2, runs = 3;
  mp_pool *pool;
  mp_backend *be;
  mp_error *e;
  if ((e = mp_pool_create(threads, &pool)) || (e = mp_backend_create(MP_PRECISION_BF16, threads, &be)))
    return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
  mp_pool_set_backend(pool, be);
  dnnl_engine_t eng;
  dnnl_stream_t st;
  CK(dnnl_engine_create(&eng, dnnl_cpu, 0));
  CK(dnnl_stream_create(&st, eng, dnnl_stream_default_flags));
  for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
    const int C = shapes[s][0], H = shapes[s][1], W = shapes[s][2];
    const size_t nx = (size_t)B * C * H * W, nw = (size_t)C * C * 9;
    float *x = malloc(nx * 4), *y = malloc(nx * 4), *w = malloc(nw * 4), *bias = malloc((size_t)C * 4);
    bench_fill(x, nx, 1, 1.0f), bench_fill(w, nw, 2, 1.0f), bench_fill(bias, (size_t)C, 3, 1.0f);
    const double flop = 2.0 * B * H * W * (double)C * C * 9;

    /* mpass: mp_conv2d on the bf16 backend */
    mp_tensor tw, tb;
    mp_tensor_view(&tw, MP_F32, 4, (int64_t[]){C, C, 3, 3}, w);
    mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){C}, bias);
    mp_workspace ws = {0};
    mp_pad p1 = {1, 1, 1, 1};
    if ((e = mp_conv2d(pool, &ws, y, x, B, C, H, W, &tw, &tb, 1, p1))) return fprintf(stderr, "%s\n", mp_error_message(e)), 1;
    double t0 = mp_now();
    for (int r = 0; r < runs; r++) mp_conv2d(pool, &ws, y, x, B, C, H, W, &tw, &tb, 1, p1);
    double t_mp = (mp_now() - t0) / runs;
    mp_workspace_free(&ws);

    /* oneDNN convolution primitive */
    dnnl_dims_t sd = {B, C, H, W}, wd = {C, C, 3, 3}, bd = {C}, strides = {1, 1}, pad = {1, 1};
    dnnl_memory_desc_t src_any, wei_any, dst_any, bias_md, src_user, dst_user, wei_user;
    CK(dnnl_memory_desc_init_by_tag(&src_any, 4, sd, dnnl_bf16, dnnl_format_tag_any));
    CK(dnnl_memory_desc_init_by_tag(&wei_any, 4, wd, dnnl_bf16, dnnl_format_tag_any));
    CK(dnnl_memory_desc_init_by_tag(&dst_any, 4, sd, dnnl_f32, dnnl_format_tag_any));
    CK(dnnl_memory_desc_init_by_tag(&bias_md, 1, bd, dnnl_f32, dnnl_a));
    CK(dnnl_memory_desc_init_by_tag(&src_user, 4, sd, dnnl_f32, dnnl_nchw));
    CK(dnnl_memory_desc_init_by_tag(&dst_user, 4, sd, dnnl_f32, dnnl_nchw));
    CK(dnnl_memory_desc_init_by_tag(&wei_user, 4, wd, dnnl_f32, dnnl_oihw));
    dnnl_convolution_desc_t cd;
    CK(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src_any, &wei_any, &bias_md,
                                          &dst_any, strides, pad, pad));
    dnnl_primitive_desc_t cpd;
    CK(dnnl_primitive_desc_create(&cpd, &cd, NULL, eng, NULL));
    const char *impl = "";
    dnnl_primitive_desc_query(cpd, dnnl_query_impl_info_str, 0, &impl);
    dnnl_memory_desc_t src_md = *dnnl_primitive_desc_query_md(cpd, dnnl_query_src_md, 0);
    dnnl_memory_desc_t wei_md = *dnnl_primitive_desc_query_md(cpd, dnnl_query_weights_md, 0);
    dnnl_memory_desc_t dst_md = *dnnl_primitive_desc_query_md(cpd, dnnl_query_dst_md, 0);
    dnnl_primitive_t conv;
    CK(dnnl_primitive_create(&conv, cpd));
    dnnl_memory_t m_xu, m_yu, m_wu, m_x, m_w, m_y, m_b;
    CK(dnnl_memory_create(&m_xu, &src_user, eng, x));
    CK(dnnl_memory_create(&m_yu, &dst_user, eng, y));
    CK(dnnl_memory_create(&m_wu, &wei_user, eng, w));
    CK(dnnl_memory_create(&m_b, &bias_md, eng, bias));
    CK(dnnl_memory_create(&m_x, &src_md, eng, DNNL_MEMORY_ALLOCATE));
    CK(dnnl_memory_create(&m_w, &wei_md, eng, DNNL_MEMORY_ALLOCATE));
    CK(dnnl_memory_create(&m_y, &dst_md, eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_t r_w = bench_reorder(eng, &wei_user, &wei_md), r_in = bench_reorder(eng, &src_user, &src_md),
                     r_out = bench_reorder(eng, &dst_md, &dst_user);
    bench_run_reorder(r_w, st, m_wu, m_w);
    dnnl_exec_arg_t cargs[4] = {{DNNL_ARG_SRC, m_x}, {DNNL_ARG_WEIGHTS, m_w}, {DNNL_ARG_BIAS, m_b}, {DNNL_ARG_DST, m_y}};
    bench_run_reorder(r_in, st, m_xu, m_x);
    CK(dnnl_primitive_execute(conv, st, 4, cargs));
    CK(dnnl_stream_wait(st));
    double t_in = 0, t_conv = 0, t_out = 0;
    for (int r = 0; r < runs; r++) {
      double a = mp_now();
      bench_run_reorder(r_in, st, m_xu, m_x);
      CK(dnnl_stream_wait(st));
      double b = mp_now();
      CK(dnnl_primitive_execute(conv, st, 4, cargs));
      CK(dnnl_stream_wait(st));
      double c = mp_now();
      bench_run_reorder(r_out, st, m_y, m_yu);
      CK(dnnl_stream_wait(st));
      double d = mp_now();
      t_in += b - a, t_conv += c - b, t_out += d - c;
    }
    t_in /= runs, t_conv /= runs, t_out /= runs;
    printf("C=%-4d %2dx%-2d batch %d | mpass im2col+matmul %7.2f ms (%5.0f GFLOP/s) | oneDNN conv %s: %7.2f ms (%5.0f GFLOP/s), "
           "+ reorders in %.2f / out %.2f ms = %7.2f ms\n",
           C, H, W, B, t_mp * 1e3, flop / t_mp / 1e9, impl, t_conv * 1e3, flop / t_conv / 1e9, t_in * 1e3, t_out * 1e3,
           (t_in + t_conv + t_out) * 1e3);
    dnnl_primitive_destroy(conv), dnnl_primitive_destroy(r_w), dnnl_primitive_destroy(r_in), dnnl_primitive_destroy(r_out);
    dnnl_primitive_desc_destroy(cpd);
    dnnl_memory_destroy(m_xu), dnnl_memory_destroy(m_yu), dnnl_memory_destroy(m_wu), dnnl_memory_destroy(m_x);
    dnnl_memory_destroy(m_w), dnnl_memory_destroy(m_y), dnnl_memory_destroy(m_b);
    free(x), free(y), free(w), free(bias);
  }
  dnnl_stream_destroy(st);
  dnnl_engine_destroy(eng);
  mp_backend_destroy(be);
  mp_pool_destroy(pool);
  return 0;
}
