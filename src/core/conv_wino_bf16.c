#include "core/conv_wino_bf16.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pack_dnnl.h"

/* XI: the 16 positions of a 4x4 transformed tile. CB: channels per transform task (one cache
 * line of bf16 V, two of f32 M). CHUNK: tiles of one tile row transformed from one staged strip
 * of the input (bounds the stack buffer whatever the width). */
enum { XI = 16, CB = 32, CHUNK = 16, SPAN = 2 * CHUNK + 2, PRIMS = 4 };
/* V (bf16) + M (f32) per band of tile rows. Each band reads all of U again (52 MB for 1280 -> 1280
 * channels) and gives the products its tiles as rows: with 24 MB bands a 1024x1024 step's 1280-channel
 * layers ran in bands of 128-192 tiles at 417-566 GFLOP/s; with 64 MB, 256-512 tiles at 547-605, 0.28 s
 * less per step for 34 MB more peak RSS at 512x512 (Zen 5, bench/RESULTS.md, thirteenth session). */
#define BAND_BYTES ((size_t)64 << 20)

struct mp_wino_bf16 {
  mp_backend *b;
  int C, O;
  float *bias; /* f32 copy, or NULL */
  dnnl_memory_desc_t wei_md;
  dnnl_memory_t weights; /* U [16][C][O] in the matmul's packed bf16 layout */
  mp_packed_mem weights_mem; /* what holds it: a pack-store mapping or our own buffer */
  /* oneDNN 2.6 takes its brgemm kernels only for a known row count: one primitive per band height
   * seen (a layer sees one or two per image size). */
  struct {
    int64_t M;
    dnnl_primitive_t prim;
  } prims[PRIMS];
  int n_prims, next_evict;
};

static mp_error *ck(dnnl_status_t s, const char *what) {
  return s == dnnl_success ? NULL : mp_errorf("oneDNN Winograd matmul: %s failed (status %d)", what, (int)s);
}

static inline uint16_t bf16_round(float f) { /* nearest even; NaN stays NaN */
  uint32_t u;
  memcpy(&u, &f, 4);
  const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : r);
}

/* The batched product M[ξ][rows, O] = V[ξ][rows, C] · U[ξ][C, O] with weights in layout `wei`. */
static mp_error *matmul_pd(const mp_wino_bf16 *c, int64_t rows, const dnnl_memory_desc_t *wei, dnnl_primitive_desc_t *pd) {
  *pd = NULL;
  dnnl_dims_t sd = {XI, rows, c->C}, dd = {XI, rows, c->O};
  dnnl_memory_desc_t src, dst;
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&src, 3, sd, dnnl_bf16, dnnl_abc), "src desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&dst, 3, dd, dnnl_f32, dnnl_abc), "dst desc"));
  dnnl_matmul_desc_t md;
  MP_TRY(ck(dnnl_matmul_desc_init(&md, &src, wei, NULL, &dst), "descriptor"));
  MP_TRY(ck(dnnl_primitive_desc_create(pd, &md, NULL, mp_backend_dnnl_engine(c->b), NULL), "primitive descriptor"));
  const char *impl = "";
  if (dnnl_primitive_desc_query(*pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && strstr(impl, "ref")) {
    dnnl_primitive_desc_destroy(*pd);
    *pd = NULL;
    return mp_errorf("oneDNN has only its reference matmul (%s) for %lld Winograd tiles, %d -> %d channels", impl,
                     (long long)rows, c->C, c->O);
  }
  return NULL;
}

void mp_wino_bf16_free(mp_wino_bf16 *c) {
  if (!c) return;
  for (int i = 0; i < c->n_prims; i++) dnnl_primitive_destroy(c->prims[i].prim);
  if (c->weights) dnnl_memory_destroy(c->weights);
  mp_packed_mem_free(&c->weights_mem);
  mp_free(c->bias);
  free(c);
}

/* U[ξ][o][c] = (G g Gᵀ)[ξ] for g = W[o][c], rounded to bf16. G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]:
 * the products by ½ are exact, so the only rounding is the final one to bf16. */
static void transform_weights(uint16_t *U, const float *w, int o, int O, int C) {
  for (int ch = 0; ch < C; ch++) {
    const float *g = w + (size_t)ch * 9;
    float t[4][3];
    for (int j = 0; j < 3; j++) {
      const float g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
      t[0][j] = g0, t[1][j] = 0.5f * (g0 + g1 + g2), t[2][j] = 0.5f * (g0 - g1 + g2), t[3][j] = g2;
    }
    for (int i = 0; i < 4; i++) {
      const float u[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]), 0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
      for (int j = 0; j < 4; j++) U[((size_t)(i * 4 + j) * O + o) * C + ch] = bf16_round(u[j]);
    }
  }
}

typedef struct {
  const mp_wino_bf16 *c;
  const mp_tensor *W;
} weights_fill;

/* The packed U into dst: transformed in f32 into the plain [16][C][O] order, rounded to bf16, then
 * reordered into dst's blocked layout by oneDNN. */
static mp_error *fill_weights(void *ctx, dnnl_memory_t dst) {
  const weights_fill *f = ctx;
  const int O = f->c->O, C = f->c->C;
  uint16_t *U = mp_alloc((size_t)XI * O * C * 2);
  float *w32 = mp_alloc((size_t)C * 9 * 4);
  mp_error *e = U && w32 ? NULL : mp_errorf("out of memory transforming a %dx%dx3x3 weight", O, C);
  if (!e) {
    const size_t row = (size_t)C * 9, es = mp_dtype_size(f->W->dtype);
    for (int o = 0; o < O; o++) {
      mp_convert_to_f32(w32, (const char *)f->W->data + (size_t)o * row * es, f->W->dtype, row);
      transform_weights(U, w32, o, O, C);
    }
  }
  dnnl_dims_t wd = {XI, C, O};
  dnnl_memory_desc_t wuser;
  if (!e) e = ck(dnnl_memory_desc_init_by_tag(&wuser, 3, wd, dnnl_bf16, dnnl_acb), "weights desc");
  if (!e) e = mp_pack_dnnl_reorder(f->c->b, &wuser, U, &f->c->wei_md, dst);
  mp_free(U);
  mp_free(w32);
  return e;
}

mp_error *mp_wino_bf16_create(mp_backend *b, const mp_tensor *W, const mp_tensor *bias, mp_wino_bf16 **out) {
  *out = NULL;
  if (W->ndim != 4 || W->shape[2] != 3 || W->shape[3] != 3 || !mp_tensor_is_contiguous(W))
    return mp_errorf("Winograd convolution needs a contiguous [out, in, 3, 3] weight");
  if (W->dtype != MP_F32 && W->dtype != MP_F16 && W->dtype != MP_BF16)
    return mp_errorf("Winograd convolution weight has dtype %s", mp_dtype_name(W->dtype));
  if (!b || mp_backend_precision(b) != MP_PRECISION_BF16) return mp_errorf("the bf16 Winograd convolution needs the bf16 backend");
  mp_wino_bf16 *c = calloc(1, sizeof *c);
  if (!c) return mp_errorf("out of memory");
  c->b = b, c->O = (int)W->shape[0], c->C = (int)W->shape[1];
  const int O = c->O, C = c->C;
  mp_error *e = NULL;
  if (bias) {
    if (mp_tensor_numel(bias) != O) e = mp_errorf("bias has %lld values for %d outputs", (long long)mp_tensor_numel(bias), O);
    else if (!(c->bias = mp_alloc((size_t)O * 4))) e = mp_errorf("out of memory");
    else mp_convert_to_f32(c->bias, bias->data, bias->dtype, (size_t)O);
  }
  /* The packed layout oneDNN picks for a band of a few hundred tiles. */
  dnnl_dims_t wd = {XI, C, O};
  dnnl_memory_desc_t wany;
  dnnl_primitive_desc_t pd = NULL;
  if (!e) e = ck(dnnl_memory_desc_init_by_tag(&wany, 3, wd, dnnl_bf16, dnnl_format_tag_any), "weights desc");
  if (!e) e = matmul_pd(c, 512, &wany, &pd);
  if (!e) c->wei_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  if (pd) dnnl_primitive_desc_destroy(pd);
  /* Everything the packed bytes depend on beyond that layout (which gives dims 16 x C x O, bf16 and
   * the blocking): the tile, the transform matrix, the rounding and the order of the 16 positions. */
  char form[256];
  snprintf(form, sizeof form,
           "winograd F(2x2,3x3) U[xi=4i+j][c][o]=(G g G^T)[i][j] G=[1,0,0;.5,.5,.5;.5,-.5,.5;0,0,1] f32 then bf16 "
           "round-nearest-even, C=%d O=%d",
           C, O);
  weights_fill fa = {c, W};
  if (!e) e = mp_pack_dnnl_weight_as(b, W->data, MP_WINO_BF16_PACK_KIND, form, &c->wei_md, fill_weights, &fa, &c->weights,
                                     &c->weights_mem);
  if (e) {
    mp_wino_bf16_free(c);
    return e;
  }
  *out = c;
  return NULL;
}

void mp_wino_bf16_drop_resident(mp_wino_bf16 *c) {
  if (c) mp_packed_mem_drop_resident(&c->weights_mem);
}

const void *mp_wino_bf16_packed(const mp_wino_bf16 *c, size_t *bytes) {
  void *h = NULL;
  *bytes = dnnl_memory_desc_get_size(&c->wei_md);
  return dnnl_memory_get_data_handle(c->weights, &h) == dnnl_success ? h : NULL;
}

static mp_error *primitive(mp_wino_bf16 *c, int64_t rows, dnnl_primitive_t *out) {
  for (int i = 0; i < c->n_prims; i++)
    if (c->prims[i].M == rows) {
      *out = c->prims[i].prim;
      return NULL;
    }
  dnnl_primitive_desc_t pd;
  MP_TRY(matmul_pd(c, rows, &c->wei_md, &pd));
  dnnl_primitive_t p;
  mp_error *e = ck(dnnl_primitive_create(&p, pd), "primitive");
  dnnl_primitive_desc_destroy(pd);
  MP_TRY(e);
  const int slot = c->n_prims < PRIMS ? c->n_prims++ : c->next_evict++ % PRIMS;
  if (c->prims[slot].prim) dnnl_primitive_destroy(c->prims[slot].prim);
  c->prims[slot].M = rows, c->prims[slot].prim = p;
  *out = p;
  return NULL;
}

/* One band: tile rows [r0, r0 + nr) counted over all images (tile row g is row g % th of image
 * g / th), n = nr * tw tiles; tile (r, tx) of the band is row r * tw + tx of V and M. */
typedef struct {
  const float *x;
  float *y;
  uint16_t *V;
  const float *M, *bias;
  int C, O, h, w, th, tw;
  int64_t r0, n;
} band_args;

/* V[ξ][tile][c] = (Bᵀ d B)[ξ] in bf16, Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. A task is one
 * tile row and CB channels: each input row is staged once (zero-padded, channel-minor) so that the
 * arithmetic runs over channels in vector lanes and the stores are contiguous runs of channels. */
static void input_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const band_args *a = ctx;
  const int ncb = (a->C + CB - 1) / CB;
  float buf[4][SPAN][CB], s[4][4][CB], v[XI][CB];
  for (int64_t task = begin; task < end; task++) {
    const int64_t r = task / ncb, g = a->r0 + r;
    const int img = (int)(g / a->th), y0 = 2 * (int)(g % a->th) - 1, c0 = (int)(task % ncb) * CB;
    const int nc = a->C - c0 < CB ? a->C - c0 : CB;
    const float *xc = a->x + ((size_t)img * a->C + (size_t)c0) * a->h * a->w;
    if (nc < CB) memset(buf, 0, sizeof buf); /* lanes past the last channel stay zero */
    for (int tx0 = 0; tx0 < a->tw; tx0 += CHUNK) {
      const int nt = a->tw - tx0 < CHUNK ? a->tw - tx0 : CHUNK, xs = 2 * tx0 - 1, span = 2 * nt + 2;
      const int qlo = xs < 0 ? -xs : 0, qhi = xs + span > a->w ? a->w - xs : span; /* inside the image */
      for (int i = 0; i < 4; i++) {
        const int iy = y0 + i;
        if (iy < 0 || iy >= a->h) {
          memset(buf[i], 0, sizeof buf[i]);
          continue;
        }
        for (int cc = 0; cc < nc; cc++) {
          const float *row = xc + (size_t)cc * a->h * a->w + (size_t)iy * a->w;
          for (int q = 0; q < qlo; q++) buf[i][q][cc] = 0.0f;
          for (int q = qlo; q < qhi; q++) buf[i][q][cc] = row[xs + q];
          for (int q = qhi; q < span; q++) buf[i][q][cc] = 0.0f;
        }
      }
      for (int k = 0; k < nt; k++) {
        for (int j = 0; j < 4; j++) { /* s = Bᵀ d */
          const float *d0 = buf[0][2 * k + j], *d1 = buf[1][2 * k + j], *d2 = buf[2][2 * k + j], *d3 = buf[3][2 * k + j];
          for (int cc = 0; cc < CB; cc++) {
            s[0][j][cc] = d0[cc] - d2[cc], s[1][j][cc] = d1[cc] + d2[cc];
            s[2][j][cc] = d2[cc] - d1[cc], s[3][j][cc] = d1[cc] - d3[cc];
          }
        }
        for (int i = 0; i < 4; i++) /* V = s B */
          for (int cc = 0; cc < CB; cc++) {
            v[4 * i][cc] = s[i][0][cc] - s[i][2][cc], v[4 * i + 1][cc] = s[i][1][cc] + s[i][2][cc];
            v[4 * i + 2][cc] = s[i][2][cc] - s[i][1][cc], v[4 * i + 3][cc] = s[i][1][cc] - s[i][3][cc];
          }
        const int64_t t = r * a->tw + tx0 + k;
        for (int xi = 0; xi < XI; xi++) {
          uint16_t *dst = a->V + ((size_t)xi * (size_t)a->n + (size_t)t) * (size_t)a->C + (size_t)c0;
          for (int cc = 0; cc < nc; cc++) dst[cc] = bf16_round(v[xi][cc]);
        }
      }
    }
  }
}

/* y = Aᵀ M A + bias, Aᵀ = [1 1 1 0; 0 1 -1 -1], for one tile row and CB output channels: the
 * products are read as contiguous runs of channels, the 2 x 2·nt outputs staged, then written as
 * rows of the NCHW output. */
static void output_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  (void)thread;
  const band_args *a = ctx;
  const int nob = (a->O + CB - 1) / CB;
  float m[XI][CB], s[2][4][CB], out[2][2 * CHUNK][CB], bv[CB];
  for (int64_t task = begin; task < end; task++) {
    const int64_t r = task / nob, g = a->r0 + r;
    const int img = (int)(g / a->th), oy0 = 2 * (int)(g % a->th), o0 = (int)(task % nob) * CB;
    const int no = a->O - o0 < CB ? a->O - o0 : CB;
    if (no < CB) memset(m, 0, sizeof m);
    for (int cc = 0; cc < CB; cc++) bv[cc] = a->bias && cc < no ? a->bias[o0 + cc] : 0.0f;
    float *yo = a->y + ((size_t)img * a->O + (size_t)o0) * a->h * a->w;
    for (int tx0 = 0; tx0 < a->tw; tx0 += CHUNK) {
      const int nt = a->tw - tx0 < CHUNK ? a->tw - tx0 : CHUNK;
      for (int k = 0; k < nt; k++) {
        const int64_t t = r * a->tw + tx0 + k;
        for (int xi = 0; xi < XI; xi++)
          memcpy(m[xi], a->M + ((size_t)xi * (size_t)a->n + (size_t)t) * (size_t)a->O + (size_t)o0, sizeof(float) * (size_t)no);
        for (int j = 0; j < 4; j++) /* s = Aᵀ m */
          for (int cc = 0; cc < CB; cc++) {
            s[0][j][cc] = m[j][cc] + m[4 + j][cc] + m[8 + j][cc];
            s[1][j][cc] = m[4 + j][cc] - m[8 + j][cc] - m[12 + j][cc];
          }
        for (int i = 0; i < 2; i++) /* Y = s A + bias */
          for (int cc = 0; cc < CB; cc++) {
            out[i][2 * k][cc] = s[i][0][cc] + s[i][1][cc] + s[i][2][cc] + bv[cc];
            out[i][2 * k + 1][cc] = s[i][1][cc] - s[i][2][cc] - s[i][3][cc] + bv[cc];
          }
      }
      const int ox0 = 2 * tx0, nx = 2 * nt <= a->w - ox0 ? 2 * nt : a->w - ox0;
      for (int i = 0; i < 2 && oy0 + i < a->h; i++)
        for (int cc = 0; cc < no; cc++) {
          float *row = yo + (size_t)cc * a->h * a->w + (size_t)(oy0 + i) * a->w + ox0;
          for (int q = 0; q < nx; q++) row[q] = out[i][q][cc];
        }
    }
  }
}

mp_error *mp_wino_bf16_run(mp_wino_bf16 *c, mp_pool *pool, mp_workspace *ws, const float *x, int batch, int h, int w,
                           float *y, int band_rows) {
  if (batch < 1 || h < 1 || w < 1) return mp_errorf("Winograd convolution of a %dx%d image, batch %d", h, w, batch);
  const int th = (h + 1) / 2, tw = (w + 1) / 2, C = c->C, O = c->O;
  const int64_t rows = (int64_t)batch * th, row_bytes = (int64_t)XI * tw * (2 * C + 4 * O);
  int64_t per_band = (int64_t)BAND_BYTES / row_bytes;
  if (band_rows > 0 && per_band > band_rows) per_band = band_rows;
  per_band = per_band < 1 ? 1 : per_band > rows ? rows : per_band;
  const int64_t n_bands = (rows + per_band - 1) / per_band;
  per_band = (rows + n_bands - 1) / n_bands; /* even bands: at most two band heights, two primitives */
  const int64_t tb = per_band * tw;
  const size_t v_bytes = ((size_t)(XI * tb * C) * 2 + 63) & ~(size_t)63;
  MP_TRY(mp_workspace_reserve(ws, v_bytes + (size_t)(XI * tb * O) * 4));
  uint16_t *V = ws->p;
  float *M = (float *)((char *)ws->p + v_bytes);
  dnnl_engine_t eng = mp_backend_dnnl_engine(c->b);
  dnnl_stream_t st = mp_backend_dnnl_stream(c->b);
  for (int64_t r0 = 0; r0 < rows; r0 += per_band) {
    const int64_t nr = rows - r0 < per_band ? rows - r0 : per_band, n = nr * tw;
    band_args a = {x, y, V, M, c->bias, C, O, h, w, th, tw, r0, n};
    mp_pool_for(pool, nr * ((C + CB - 1) / CB), 1, input_tasks, &a);
    dnnl_primitive_t prim;
    MP_TRY(primitive(c, n, &prim));
    dnnl_dims_t sd = {XI, n, C}, dd = {XI, n, O};
    dnnl_memory_desc_t src_md, dst_md;
    dnnl_memory_t src = NULL, dst = NULL;
    mp_error *e = ck(dnnl_memory_desc_init_by_tag(&src_md, 3, sd, dnnl_bf16, dnnl_abc), "src desc");
    if (!e) e = ck(dnnl_memory_desc_init_by_tag(&dst_md, 3, dd, dnnl_f32, dnnl_abc), "dst desc");
    if (!e) e = ck(dnnl_memory_create(&src, &src_md, eng, V), "memory");
    if (!e) e = ck(dnnl_memory_create(&dst, &dst_md, eng, M), "memory");
    if (!e) {
      dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, c->weights}, {DNNL_ARG_DST, dst}};
      e = ck(dnnl_primitive_execute(prim, st, 3, args), "execution");
      if (!e) e = ck(dnnl_stream_wait(st), "stream wait");
    }
    if (src) dnnl_memory_destroy(src);
    if (dst) dnnl_memory_destroy(dst);
    MP_TRY(e);
    mp_pool_for(pool, nr * ((O + CB - 1) / CB), 1, output_tasks, &a);
  }
  return NULL;
}

/* Measured with bench_conv_wino_bf16 on the SD 1.5 UNet's 3x3 layers at 512x512, batch 2, and with
 * `mpass bench` (bench/RESULTS.md; Intel Xeon family 6 model 167 with AMX, 2 threads):
 * - oneDNN with AMX: the direct convolution runs at 1.2-2.5 TFLOP/s; the 16 batched matmuls reach
 *   about half that (small per-position products) and the transforms, bound by memory, cost as
 *   much again, so Winograd takes 0.91-1.65x the direct time (0.91 only for 2560->1280 at 16x16,
 *   2 ms): never chosen.
 * - oneDNN on AVX512-BF16 without AMX (DNNL_MAX_CPU_ISA=AVX512_CORE_BF16 there; what the EPYC
 *   Zen 4/5 machines run): the direct convolution runs at ~230 GFLOP/s and Winograd takes
 *   0.55-0.61x its time at 64x64, 32x32 and 16x16 and 0.78x at 8x8, for every channel count
 *   measured (320-2560). But its packed weight holds 16 values per channel pair against 9: on all
 *   layers from 8x8 a step went from 7.72 to 6.52 s and the sampling RSS rose by 770 MB, most of it
 *   the 1280-channel layers at 16x16 and 8x8, which give the least time per byte. So it is taken
 *   from 32x32 pixels on (the 320- and 640-channel layers at 512x512: most of the gain for about
 *   +100 MB; at larger images the 1280-channel layers reach 32x32 too).
 * Below 256 channels nothing was measured, so the direct convolution stays. */
bool mp_wino_bf16_pays(int c_in, int c_out, int h, int w, int batch) {
  (void)batch;
  if (c_in < 256 || c_out < 256 || (int64_t)h * w < 1024) return false;
  return dnnl_get_effective_cpu_isa() == dnnl_cpu_isa_avx512_core_bf16;
}
