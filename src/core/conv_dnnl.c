#include "core/conv_dnnl.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "core/pack_dnnl.h"

#define SHAPES 4

typedef struct {
  int batch, h, w;
  dnnl_primitive_t conv, to_blocked, from_blocked;
  dnnl_memory_desc_t src_user, dst_user, src_md, dst_md;
  /* for mp_dnnl_conv_run_nhwc, made on its first call: NHWC bf16 in, NHWC f32 out, and reorders
   * to and from the primitive's layouts where those differ (NULL where they are the same) */
  bool nhwc_ready;
  dnnl_memory_desc_t src_nhwc, dst_nhwc;
  dnnl_primitive_t nhwc_in, nhwc_out;
  /* the convolution with a sum post-op (y += conv(x)) on NHWC, made on the first accumulating call;
   * NULL after it when oneDNN would want other layouts for it than the plain primitive's */
  bool sum_tried;
  dnnl_primitive_t conv_sum;
} shape_prims;

struct mp_dnnl_conv {
  mp_backend *b;
  int c_in, c_out, kh, kw, stride;
  mp_pad pad;
  dnnl_memory_desc_t wei_md, bias_md;
  dnnl_memory_t weights, bias; /* packed bf16; f32 bias (owned buffer below) */
  mp_packed_mem weights_mem;   /* what holds the packed weights: a pack-store mapping or our buffer */
  float *bias_f32;
  shape_prims shapes[SHAPES];
  int n_shapes, next_evict;
};

static mp_error *ck(dnnl_status_t s, const char *what) {
  return s == dnnl_success ? NULL : mp_errorf("oneDNN convolution: %s failed (status %d)", what, (int)s);
}

/* A convolution primitive for one input shape; weights `wei` (any, or the packed layout); with
 * `sum`, a post-op adds the output to what the destination holds. */
static mp_error *conv_pd(const mp_dnnl_conv *c, int batch, int h, int w, const dnnl_memory_desc_t *wei, bool sum,
                         dnnl_primitive_desc_t *pd) {
  const int ho = mp_conv_out_size(h, c->kh, c->stride, c->pad.top, c->pad.bottom);
  const int wo = mp_conv_out_size(w, c->kw, c->stride, c->pad.left, c->pad.right);
  dnnl_dims_t sd = {batch, c->c_in, h, w}, dd = {batch, c->c_out, ho, wo}, strides = {c->stride, c->stride};
  dnnl_dims_t pl = {c->pad.top, c->pad.left}, pr = {c->pad.bottom, c->pad.right};
  dnnl_memory_desc_t src, dst;
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&src, 4, sd, dnnl_bf16, dnnl_format_tag_any), "src desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&dst, 4, dd, dnnl_f32, dnnl_format_tag_any), "dst desc"));
  dnnl_convolution_desc_t cd;
  MP_TRY(ck(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src, wei,
                                               c->bias_f32 ? &c->bias_md : NULL, &dst, strides, pl, pr),
            "descriptor"));
  if (!sum) return ck(dnnl_primitive_desc_create(pd, &cd, NULL, mp_backend_dnnl_engine(c->b), NULL), "primitive descriptor");
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t po = NULL;
  mp_error *e = ck(dnnl_primitive_attr_create(&attr), "attributes");
  if (!e) e = ck(dnnl_post_ops_create(&po), "post-ops");
  if (!e) e = ck(dnnl_post_ops_append_sum(po, 1.0f), "sum post-op");
  if (!e) e = ck(dnnl_primitive_attr_set_post_ops(attr, po), "post-ops");
  if (!e) e = ck(dnnl_primitive_desc_create(pd, &cd, attr, mp_backend_dnnl_engine(c->b), NULL), "primitive descriptor");
  if (po) dnnl_post_ops_destroy(po);
  if (attr) dnnl_primitive_attr_destroy(attr);
  return e;
}

typedef struct {
  mp_dnnl_conv *c;
  const mp_tensor *W;
} fill_args;

/* The stored weight as f32 OIHW, reordered (and rounded to bf16) into the packed layout `dst`. */
static mp_error *fill_packed(void *ctx, dnnl_memory_t dst) {
  const fill_args *a = ctx;
  const mp_dnnl_conv *c = a->c;
  const size_t nw = (size_t)mp_tensor_numel(a->W);
  dnnl_dims_t wd = {c->c_out, c->c_in, c->kh, c->kw};
  dnnl_memory_desc_t wuser;
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&wuser, 4, wd, dnnl_f32, dnnl_oihw), "weights desc"));
  float *wf = mp_alloc(nw * 4);
  if (!wf) return mp_errorf("out of memory packing a convolution weight");
  mp_convert_to_f32(wf, a->W->data, a->W->dtype, nw);
  mp_error *e = mp_pack_dnnl_reorder(c->b, &wuser, wf, &c->wei_md, dst);
  mp_free(wf);
  return e;
}

mp_error *mp_dnnl_conv_create(mp_backend *b, const mp_tensor *W, const mp_tensor *bias, int stride, mp_pad pad, int batch,
                              int h, int w, mp_dnnl_conv **out) {
  *out = NULL;
  if (W->ndim != 4 || !mp_tensor_is_contiguous(W)) return mp_errorf("convolution weight must be a contiguous 4-D tensor");
  if (!mp_backend_dnnl_engine(b)) return mp_errorf("oneDNN convolution needs the bf16 backend");
  mp_dnnl_conv *c = calloc(1, sizeof *c);
  if (!c) return mp_errorf("out of memory");
  c->b = b;
  c->c_out = (int)W->shape[0], c->c_in = (int)W->shape[1], c->kh = (int)W->shape[2], c->kw = (int)W->shape[3];
  c->stride = stride, c->pad = pad;
  dnnl_engine_t eng = mp_backend_dnnl_engine(b);
  dnnl_primitive_desc_t pd = NULL;
  dnnl_dims_t bd = {c->c_out}, wd = {c->c_out, c->c_in, c->kh, c->kw};
  mp_error *e = ck(dnnl_memory_desc_init_by_tag(&c->bias_md, 1, bd, dnnl_f32, dnnl_a), "bias desc");
  if (!e && bias) {
    if (mp_tensor_numel(bias) != c->c_out) e = mp_errorf("bias has %lld values for %d outputs", (long long)mp_tensor_numel(bias), c->c_out);
    else if (!(c->bias_f32 = mp_alloc((size_t)c->c_out * 4))) e = mp_errorf("out of memory");
    else mp_convert_to_f32(c->bias_f32, bias->data, bias->dtype, (size_t)c->c_out);
    if (!e) e = ck(dnnl_memory_create(&c->bias, &c->bias_md, eng, c->bias_f32), "bias memory");
  }
  /* The packed layout the primitive wants for the first shape it runs on (it depends on the shape:
   * forcing one shape's layout on a very different shape can leave only oneDNN's slow reference
   * kernel, which mp_dnnl_conv_run declines). */
  dnnl_memory_desc_t wany;
  if (!e) e = ck(dnnl_memory_desc_init_by_tag(&wany, 4, wd, dnnl_bf16, dnnl_format_tag_any), "weights desc");
  if (!e) e = conv_pd(c, batch, h, w, &wany, false, &pd);
  if (!e) c->wei_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
  const char *impl = "";
  if (!e && dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && strncmp(impl, "ref", 3) == 0)
    e = mp_errorf("oneDNN has only its reference convolution for this shape");
  if (pd) dnnl_primitive_desc_destroy(pd);
  fill_args fa = {c, W};
  if (!e) e = mp_pack_dnnl_weight(b, W->data, "dnnl-conv-bf16", &c->wei_md, fill_packed, &fa, &c->weights, &c->weights_mem);
  if (e) {
    mp_dnnl_conv_free(c);
    return e;
  }
  *out = c;
  return NULL;
}

void mp_dnnl_conv_drop_resident(mp_dnnl_conv *c) {
  if (c) mp_packed_mem_drop_resident(&c->weights_mem);
}

static void free_shape(shape_prims *s) {
  if (s->conv) dnnl_primitive_destroy(s->conv);
  if (s->to_blocked) dnnl_primitive_destroy(s->to_blocked);
  if (s->from_blocked) dnnl_primitive_destroy(s->from_blocked);
  if (s->nhwc_in) dnnl_primitive_destroy(s->nhwc_in);
  if (s->nhwc_out) dnnl_primitive_destroy(s->nhwc_out);
  if (s->conv_sum) dnnl_primitive_destroy(s->conv_sum);
  memset(s, 0, sizeof *s);
}

void mp_dnnl_conv_free(mp_dnnl_conv *c) {
  if (!c) return;
  for (int i = 0; i < c->n_shapes; i++) free_shape(&c->shapes[i]);
  if (c->weights) dnnl_memory_destroy(c->weights);
  mp_packed_mem_free(&c->weights_mem);
  if (c->bias) dnnl_memory_destroy(c->bias);
  mp_free(c->bias_f32);
  free(c);
}

static mp_error *make_reorder(dnnl_engine_t eng, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to, dnnl_primitive_t *p) {
  dnnl_primitive_desc_t pd;
  MP_TRY(ck(dnnl_reorder_primitive_desc_create(&pd, from, eng, to, eng, NULL), "reorder"));
  mp_error *e = ck(dnnl_primitive_create(p, pd), "reorder");
  dnnl_primitive_desc_destroy(pd);
  return e;
}

static mp_error *shape(mp_dnnl_conv *c, int batch, int h, int w, shape_prims **out) {
  for (int i = 0; i < c->n_shapes; i++)
    if (c->shapes[i].batch == batch && c->shapes[i].h == h && c->shapes[i].w == w) {
      *out = &c->shapes[i];
      return NULL;
    }
  int slot = c->n_shapes < SHAPES ? c->n_shapes++ : c->next_evict++ % SHAPES;
  shape_prims *s = &c->shapes[slot];
  free_shape(s);
  dnnl_engine_t eng = mp_backend_dnnl_engine(c->b);
  dnnl_primitive_desc_t pd;
  mp_error *e = conv_pd(c, batch, h, w, &c->wei_md, false, &pd);
  if (e) {
    c->n_shapes = slot; /* the slot stays empty (only the last one can fail before filling) */
    return mp_error_wrap(e, "%dx%d input, batch %d, with the packed weight layout", h, w, batch);
  }
  const char *impl = "";
  if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && strncmp(impl, "ref", 3) == 0) {
    dnnl_primitive_desc_destroy(pd);
    c->n_shapes = slot;
    return mp_errorf("oneDNN has only its reference convolution for %dx%d, batch %d, with the packed layout", h, w, batch);
  }
  s->src_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0);
  s->dst_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
  const int ho = mp_conv_out_size(h, c->kh, c->stride, c->pad.top, c->pad.bottom);
  const int wo = mp_conv_out_size(w, c->kw, c->stride, c->pad.left, c->pad.right);
  dnnl_dims_t sd = {batch, c->c_in, h, w}, dd = {batch, c->c_out, ho, wo};
  e = ck(dnnl_memory_desc_init_by_tag(&s->src_user, 4, sd, dnnl_f32, dnnl_nchw), "src desc");
  if (!e) e = ck(dnnl_memory_desc_init_by_tag(&s->dst_user, 4, dd, dnnl_f32, dnnl_nchw), "dst desc");
  if (!e) e = ck(dnnl_primitive_create(&s->conv, pd), "convolution primitive");
  dnnl_primitive_desc_destroy(pd);
  if (!e) e = make_reorder(eng, &s->src_user, &s->src_md, &s->to_blocked);
  if (!e) e = make_reorder(eng, &s->dst_md, &s->dst_user, &s->from_blocked);
  if (e) {
    free_shape(s);
    c->n_shapes = slot;
    return e;
  }
  s->batch = batch, s->h = h, s->w = w;
  *out = s;
  return NULL;
}

mp_error *mp_dnnl_conv_run(mp_dnnl_conv *c, mp_workspace *ws, const float *x, int batch, int h, int w, float *y) {
  shape_prims *s = NULL;
  MP_TRY(shape(c, batch, h, w, &s));
  const size_t src_bytes = (dnnl_memory_desc_get_size(&s->src_md) + 63) & ~(size_t)63;
  MP_TRY(mp_workspace_reserve(ws, src_bytes + dnnl_memory_desc_get_size(&s->dst_md)));
  dnnl_engine_t eng = mp_backend_dnnl_engine(c->b);
  dnnl_stream_t st = mp_backend_dnnl_stream(c->b);
  dnnl_memory_t xu = NULL, yu = NULL, xb = NULL, yb = NULL;
  mp_error *e = ck(dnnl_memory_create(&xu, &s->src_user, eng, (void *)x), "memory");
  if (!e) e = ck(dnnl_memory_create(&yu, &s->dst_user, eng, y), "memory");
  if (!e) e = ck(dnnl_memory_create(&xb, &s->src_md, eng, ws->p), "memory");
  if (!e) e = ck(dnnl_memory_create(&yb, &s->dst_md, eng, (char *)ws->p + src_bytes), "memory");
  if (!e) {
    dnnl_exec_arg_t in[2] = {{DNNL_ARG_FROM, xu}, {DNNL_ARG_TO, xb}};
    dnnl_exec_arg_t cv[4] = {{DNNL_ARG_SRC, xb}, {DNNL_ARG_WEIGHTS, c->weights}, {DNNL_ARG_DST, yb}, {DNNL_ARG_BIAS, c->bias}};
    dnnl_exec_arg_t outa[2] = {{DNNL_ARG_FROM, yb}, {DNNL_ARG_TO, yu}};
    e = ck(dnnl_primitive_execute(s->to_blocked, st, 2, in), "input reorder");
    if (!e) e = ck(dnnl_primitive_execute(s->conv, st, c->bias ? 4 : 3, cv), "convolution");
    if (!e) e = ck(dnnl_primitive_execute(s->from_blocked, st, 2, outa), "output reorder");
    if (!e) e = ck(dnnl_stream_wait(st), "stream wait");
  }
  if (xu) dnnl_memory_destroy(xu);
  if (yu) dnnl_memory_destroy(yu);
  if (xb) dnnl_memory_destroy(xb);
  if (yb) dnnl_memory_destroy(yb);
  return e;
}

static mp_error *nhwc_prims(const mp_dnnl_conv *c, shape_prims *s) {
  const int ho = mp_conv_out_size(s->h, c->kh, c->stride, c->pad.top, c->pad.bottom);
  const int wo = mp_conv_out_size(s->w, c->kw, c->stride, c->pad.left, c->pad.right);
  dnnl_dims_t sd = {s->batch, c->c_in, s->h, s->w}, dd = {s->batch, c->c_out, ho, wo};
  dnnl_engine_t eng = mp_backend_dnnl_engine(c->b);
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&s->src_nhwc, 4, sd, dnnl_bf16, dnnl_nhwc), "src desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&s->dst_nhwc, 4, dd, dnnl_f32, dnnl_nhwc), "dst desc"));
  if (!dnnl_memory_desc_equal(&s->src_nhwc, &s->src_md)) MP_TRY(make_reorder(eng, &s->src_nhwc, &s->src_md, &s->nhwc_in));
  if (!dnnl_memory_desc_equal(&s->dst_nhwc, &s->dst_md)) MP_TRY(make_reorder(eng, &s->dst_md, &s->dst_nhwc, &s->nhwc_out));
  s->nhwc_ready = true;
  return NULL;
}

/* The sum primitive where oneDNN keeps the plain one's layouts for it and the output is NHWC as it
 * stands (the post-op adds to the destination in the primitive's own layout); else none. */
static void sum_prim(const mp_dnnl_conv *c, shape_prims *s) {
  s->sum_tried = true;
  if (s->nhwc_out) return;
  dnnl_primitive_desc_t pd;
  mp_error *e = conv_pd(c, s->batch, s->h, s->w, &c->wei_md, true, &pd);
  if (e) {
    mp_error_free(e);
    return;
  }
  const char *impl = "";
  const bool same = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success &&
                    strncmp(impl, "ref", 3) != 0 &&
                    dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0), &s->src_md) &&
                    dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0), &s->dst_md);
  if (same && dnnl_primitive_create(&s->conv_sum, pd) != dnnl_success) s->conv_sum = NULL;
  dnnl_primitive_desc_destroy(pd);
}

mp_error *mp_dnnl_conv_run_nhwc(mp_dnnl_conv *c, mp_workspace *ws, const uint16_t *x, int batch, int h, int w, float *y,
                                bool accumulate) {
  shape_prims *s = NULL;
  MP_TRY(shape(c, batch, h, w, &s));
  if (!s->nhwc_ready) MP_TRY(nhwc_prims(c, s));
  if (accumulate && !s->sum_tried) sum_prim(c, s);
  /* accumulating without the fused sum: the output goes to scratch first and is added below */
  const bool add_after = accumulate && !s->conv_sum;
  const size_t src_bytes = s->nhwc_in ? (dnnl_memory_desc_get_size(&s->src_md) + 63) & ~(size_t)63 : 0;
  const size_t out_bytes = add_after ? (dnnl_memory_desc_get_size(&s->dst_nhwc) + 63) & ~(size_t)63 : 0;
  const size_t dst_bytes = s->nhwc_out ? dnnl_memory_desc_get_size(&s->dst_md) : 0;
  if (src_bytes + out_bytes + dst_bytes) MP_TRY(mp_workspace_reserve(ws, src_bytes + out_bytes + dst_bytes));
  float *out = add_after ? (float *)(void *)((char *)ws->p + src_bytes) : y;
  dnnl_engine_t eng = mp_backend_dnnl_engine(c->b);
  dnnl_stream_t st = mp_backend_dnnl_stream(c->b);
  dnnl_memory_t xu = NULL, yu = NULL, xb = NULL, yb = NULL;
  mp_error *e = ck(dnnl_memory_create(&xu, &s->src_nhwc, eng, (void *)x), "memory");
  if (!e) e = ck(dnnl_memory_create(&yu, &s->dst_nhwc, eng, out), "memory");
  if (!e && s->nhwc_in) e = ck(dnnl_memory_create(&xb, &s->src_md, eng, ws->p), "memory");
  if (!e && s->nhwc_out) e = ck(dnnl_memory_create(&yb, &s->dst_md, eng, (char *)ws->p + src_bytes + out_bytes), "memory");
  if (!e) {
    dnnl_exec_arg_t in[2] = {{DNNL_ARG_FROM, xu}, {DNNL_ARG_TO, xb}};
    dnnl_exec_arg_t cv[4] = {{DNNL_ARG_SRC, xb ? xb : xu}, {DNNL_ARG_WEIGHTS, c->weights}, {DNNL_ARG_DST, yb ? yb : yu},
                             {DNNL_ARG_BIAS, c->bias}};
    dnnl_exec_arg_t outa[2] = {{DNNL_ARG_FROM, yb}, {DNNL_ARG_TO, yu}};
    if (s->nhwc_in) e = ck(dnnl_primitive_execute(s->nhwc_in, st, 2, in), "input reorder");
    if (!e) e = ck(dnnl_primitive_execute(accumulate && s->conv_sum ? s->conv_sum : s->conv, st, c->bias ? 4 : 3, cv), "convolution");
    if (!e && s->nhwc_out) e = ck(dnnl_primitive_execute(s->nhwc_out, st, 2, outa), "output reorder");
    if (!e) e = ck(dnnl_stream_wait(st), "stream wait");
  }
  if (!e && add_after) {
    const size_t n = dnnl_memory_desc_get_size(&s->dst_nhwc) / sizeof(float);
    for (size_t i = 0; i < n; i++) y[i] += out[i];
  }
  if (xu) dnnl_memory_destroy(xu);
  if (yu) dnnl_memory_destroy(yu);
  if (xb) dnnl_memory_destroy(xb);
  if (yb) dnnl_memory_destroy(yb);
  return e;
}
