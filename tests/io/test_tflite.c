/* The TFLite reader and interpreter: hand-built models (fp16 + CSR-sparse weights through
 * DENSIFY/DEQUANTIZE into a convolution), unsupported operators named at load, every truncation
 * and many byte flips of a model rejected or loaded without a bad access (ASan), the real MediaPipe
 * files loading with the operators they need, and the NHWC kernels against their twins. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/nhwc_ops.h"
#include "core/tensor.h"
#include "io/tflite.h"
#include "testutil.h"

/* ---- a tiny forward FlatBuffers writer: parents first, children appended, offsets patched ---- */

typedef struct {
  uint8_t *b;
  size_t n, cap;
} fbb;

static size_t fbb_grow(fbb *f, size_t len) {
  while (f->n % 4) f->b[f->n++] = 0;
  if (f->n + len + 8 > f->cap) {
    f->cap = (f->n + len + 8) * 2;
    f->b = realloc(f->b, f->cap);
    assert_non_null(f->b);
  }
  size_t at = f->n;
  memset(f->b + at, 0, len);
  f->n += len;
  return at;
}
static void w16(fbb *f, size_t at, uint16_t v) { f->b[at] = (uint8_t)v, f->b[at + 1] = (uint8_t)(v >> 8); }
static void w32(fbb *f, size_t at, uint32_t v) {
  for (int i = 0; i < 4; i++) f->b[at + i] = (uint8_t)(v >> (8 * i));
}

typedef struct {
  size_t t;
  int slot[16]; /* byte offset of each present field in the table, 0 = absent */
} tab;

/* A table whose present fields (bits of mask) are all 4-byte slots. */
static tab tab_new(fbb *f, int nf, uint32_t mask) {
  tab t = {0};
  int np = 0;
  for (int i = 0; i < nf; i++)
    if (mask >> i & 1) t.slot[i] = 4 + 4 * np++;
  size_t vt = fbb_grow(f, 4 + 2 * (size_t)nf);
  w16(f, vt, (uint16_t)(4 + 2 * nf));
  w16(f, vt + 2, (uint16_t)(4 + 4 * np));
  for (int i = 0; i < nf; i++) w16(f, vt + 4 + 2 * i, (uint16_t)t.slot[i]);
  t.t = fbb_grow(f, 4 + 4 * (size_t)np);
  w32(f, t.t, (uint32_t)(t.t - vt));
  return t;
}
static void tab_u32(fbb *f, const tab *t, int field, uint32_t v) { w32(f, t->t + t->slot[field], v); }
static void ref(fbb *f, size_t slot_at, size_t target) { w32(f, slot_at, (uint32_t)(target - slot_at)); }
static void tab_ref(fbb *f, const tab *t, int field, size_t target) { ref(f, t->t + t->slot[field], target); }
static size_t vec_new(fbb *f, uint32_t n, size_t elem) {
  size_t v = fbb_grow(f, 4 + n * elem);
  w32(f, v, n);
  return v;
}
static size_t vec_i32(fbb *f, int n, const int32_t *x) {
  size_t v = vec_new(f, (uint32_t)n, 4);
  for (int i = 0; i < n; i++) w32(f, v + 4 + 4 * (size_t)i, (uint32_t)x[i]);
  return v;
}
static size_t vec_bytes(fbb *f, size_t n, const void *x) {
  size_t v = vec_new(f, (uint32_t)n, 1);
  memcpy(f->b + v + 4, x, n);
  return v;
}
static size_t str(fbb *f, const char *s) { return vec_bytes(f, strlen(s) + 1, s) /* includes NUL: harmless */; }

typedef struct {
  int ndim;
  int32_t shape[4];
  int type, buffer;
  const char *name;
  bool sparse;
} tdesc;

typedef struct {
  int code;
  const char *custom;
  int n_in, in[3], n_out, out[1];
  int padding, stride; /* conv options */
} odesc;

/* Sparse storage of the weights: dims 0..2 dense, dim 3 CSR (what MediaPipe's files use). */
typedef struct {
  int rows, cols;
  int32_t *segments, *indices;
  int nnz;
} csr;

/* The graph's inputs are tensor 0, listed input_copies times (1 in a valid model); its output is
 * the last tensor. */
static size_t build_graph(fbb *f, int input_copies, int nt, const tdesc *ts, int nops, const odesc *os, int nbuf,
                          const void *const *bufs, const size_t *buf_len, const csr *sp) {
  f->n = 0;
  size_t root = fbb_grow(f, 8);
  memcpy(f->b + 4, "TFL3", 4);
  tab model = tab_new(f, 5, 0x17); /* version, operator_codes, subgraphs, buffers */
  ref(f, root, model.t);
  tab_u32(f, &model, 0, 3);
  /* operator codes: one per operator, in order */
  size_t codes = vec_new(f, (uint32_t)nops, 4);
  tab_ref(f, &model, 1, codes);
  for (int i = 0; i < nops; i++) {
    tab oc = tab_new(f, 4, os[i].custom ? 0xB : 0x9);
    ref(f, codes + 4 + 4 * (size_t)i, oc.t);
    tab_u32(f, &oc, 0, (uint32_t)(os[i].code < 127 ? os[i].code : 127));
    tab_u32(f, &oc, 3, (uint32_t)os[i].code);
    if (os[i].custom) tab_ref(f, &oc, 1, str(f, os[i].custom));
  }
  size_t subs = vec_new(f, 1, 4);
  tab_ref(f, &model, 2, subs);
  tab sg = tab_new(f, 4, 0xF);
  ref(f, subs + 4, sg.t);
  size_t tv = vec_new(f, (uint32_t)nt, 4);
  tab_ref(f, &sg, 0, tv);
  for (int i = 0; i < nt; i++) {
    tab t = tab_new(f, 7, ts[i].sparse ? 0x4F : 0xF);
    ref(f, tv + 4 + 4 * (size_t)i, t.t);
    tab_ref(f, &t, 0, vec_i32(f, ts[i].ndim, ts[i].shape));
    tab_u32(f, &t, 1, (uint32_t)ts[i].type);
    tab_u32(f, &t, 2, (uint32_t)ts[i].buffer);
    tab_ref(f, &t, 3, str(f, ts[i].name));
    if (ts[i].sparse) {
      tab s = tab_new(f, 3, 0x5);
      tab_ref(f, &t, 6, s.t);
      int32_t order[4] = {0, 1, 2, 3};
      tab_ref(f, &s, 0, vec_i32(f, 4, order));
      size_t dms = vec_new(f, 4, 4);
      tab_ref(f, &s, 2, dms);
      for (int l = 0; l < 4; l++) {
        tab dm = tab_new(f, 6, l < 3 ? 0x3 : 0x3D);
        ref(f, dms + 4 + 4 * (size_t)l, dm.t);
        tab_u32(f, &dm, 0, l < 3 ? 0 : 1);
        if (l < 3) tab_u32(f, &dm, 1, (uint32_t)ts[i].shape[l]);
        if (l == 3) {
          tab_u32(f, &dm, 2, 1); /* Int32Vector */
          tab_u32(f, &dm, 4, 1);
          tab seg = tab_new(f, 1, 1), idx = tab_new(f, 1, 1);
          tab_ref(f, &dm, 3, seg.t);
          tab_ref(f, &dm, 5, idx.t);
          tab_ref(f, &seg, 0, vec_i32(f, sp->rows + 1, sp->segments));
          tab_ref(f, &idx, 0, vec_i32(f, sp->nnz, sp->indices));
        }
      }
    }
  }
  int32_t in0[2] = {0, 0}, outl = nt - 1;
  assert_true(input_copies >= 1 && input_copies <= 2);
  tab_ref(f, &sg, 1, vec_i32(f, input_copies, in0));
  tab_ref(f, &sg, 2, vec_i32(f, 1, &outl));
  size_t ov = vec_new(f, (uint32_t)nops, 4);
  tab_ref(f, &sg, 3, ov);
  for (int i = 0; i < nops; i++) {
    bool conv = os[i].code == 3;
    tab o = tab_new(f, 5, conv ? 0x1F : 0x7);
    ref(f, ov + 4 + 4 * (size_t)i, o.t);
    tab_u32(f, &o, 0, (uint32_t)i);
    tab_ref(f, &o, 1, vec_i32(f, os[i].n_in, os[i].in));
    tab_ref(f, &o, 2, vec_i32(f, os[i].n_out, os[i].out));
    if (conv) {
      tab_u32(f, &o, 3, 1); /* Conv2DOptions */
      tab c = tab_new(f, 6, 0x7);
      tab_ref(f, &o, 4, c.t);
      tab_u32(f, &c, 0, (uint32_t)os[i].padding);
      tab_u32(f, &c, 1, (uint32_t)os[i].stride);
      tab_u32(f, &c, 2, (uint32_t)os[i].stride);
    }
  }
  size_t bv = vec_new(f, (uint32_t)nbuf, 4);
  tab_ref(f, &model, 4, bv);
  for (int i = 0; i < nbuf; i++) {
    tab b = tab_new(f, 1, buf_len[i] ? 1 : 0);
    ref(f, bv + 4 + 4 * (size_t)i, b.t);
    if (buf_len[i]) tab_ref(f, &b, 0, vec_bytes(f, buf_len[i], bufs[i]));
  }
  return f->n;
}

static size_t build_model(fbb *f, int nt, const tdesc *ts, int nops, const odesc *os, int nbuf, const void *const *bufs,
                          const size_t *buf_len, const csr *sp) {
  return build_graph(f, 1, nt, ts, nops, os, nbuf, bufs, buf_len, sp);
}

/* Conv model: input [1,5,5,2] -> conv 3x3 (fp16 CSR-sparse weights [3,3,3,2] via DENSIFY and
 * DEQUANTIZE, f32 bias) stride 2 SAME -> [1,3,3,3]. Fills the dense f32 weights it encoded. */
static size_t conv_model(fbb *f, float *w_dense, float *bias) {
  enum { O = 3, K = 3, C = 2, ROWS = O * K * K };
  static int32_t segments[ROWS + 1], indices[ROWS * C];
  static uint16_t vals[ROWS * C];
  int nnz = 0;
  float r[ROWS * C];
  test_fill(r, ROWS * C, 7);
  for (int row = 0; row < ROWS; row++) {
    segments[row] = nnz;
    for (int c = 0; c < C; c++) {
      float v = (row + c) % 3 == 0 ? 0.0f : r[row * C + c]; /* a third of the weights are zero */
      uint16_t h = mp_f32_to_f16(v);
      w_dense[row * C + c] = mp_f16_to_f32(h);
      if (v != 0.0f) indices[nnz] = c, vals[nnz++] = h;
    }
  }
  segments[ROWS] = nnz;
  csr sp = {ROWS, C, segments, indices, nnz};
  test_fill(bias, O, 9);
  tdesc ts[] = {{4, {1, 5, 5, 2}, 0, 0, "input", false},  {4, {O, K, K, C}, 1, 1, "w_sparse", true},
                {4, {O, K, K, C}, 1, 0, "w_f16", false},  {4, {O, K, K, C}, 0, 0, "w", false},
                {1, {O}, 0, 2, "bias", false},            {4, {1, 3, 3, O}, 0, 0, "output", false}};
  odesc os[] = {{124, NULL, 1, {1}, 1, {2}, 0, 0}, {6, NULL, 1, {2}, 1, {3}, 0, 0}, {3, NULL, 3, {0, 3, 4}, 1, {5}, 0, 2}};
  const void *bufs[] = {NULL, vals, bias};
  size_t lens[] = {0, (size_t)nnz * 2, O * 4};
  return build_model(f, 6, ts, 3, os, 3, bufs, lens, &sp);
}

static void test_sparse_fp16_conv(void **state) {
  (void)state;
  fbb f = {0};
  float w[3 * 3 * 3 * 2], bias[3];
  size_t n = conv_model(&f, w, bias);
  char *dir = getenv("MPASS_TFLITE_CORPUS"); /* seeds for the fuzzer */
  if (dir) {
    char p[4096];
    snprintf(p, sizeof p, "%s/conv_sparse.tflite", dir);
    test_write_file(p, f.b, n);
  }
  mp_tflite *m = NULL;
  assert_ok(mp_tflite_open_memory(f.b, n, &m));
  float in[50], ref[27];
  test_fill(in, 50, 3);
  const float *inputs[1] = {in};
  assert_ok(mp_tflite_run(m, NULL, inputs));
  int64_t numel = 0;
  const float *got = mp_tflite_output(m, 0, &numel);
  assert_int_equal(numel, 27);
  mp_conv_params p = {.in_h = 5, .in_w = 5, .in_c = 2, .out_h = 3, .out_w = 3, .out_c = 3, .k_h = 3, .k_w = 3,
                      .stride_h = 2, .stride_w = 2, .dil_h = 1, .dil_w = 1, .pad_top = 1, .pad_left = 1, .depth_multiplier = 1};
  mp_ref_nhwc_conv2d(ref, in, w, bias, &p);
  for (int i = 0; i < 27; i++) assert_true(fabsf(got[i] - ref[i]) < 1e-5f);
  char *s = mp_tflite_op_summary(m);
  assert_non_null(strstr(s, "DENSIFY"));
  free(s);
  mp_tflite_close(m);

  /* Every truncation is an error; byte flips load or fail cleanly (ASan watches). */
  for (size_t len = 0; len < n; len++) {
    mp_error *e = mp_tflite_open_memory(f.b, len, &m);
    if (!e) fail_msg("truncated to %zu of %zu bytes loaded", len, n);
    mp_error_free(e);
  }
  uint8_t *copy = malloc(n);
  for (size_t at = 0; at < n; at++)
    for (int v = 0; v < 4; v++) {
      memcpy(copy, f.b, n);
      copy[at] = (uint8_t)(v == 0 ? 0 : v == 1 ? 0xff : v == 2 ? copy[at] ^ 0x80 : copy[at] + 1);
      mp_error *e = mp_tflite_open_memory(copy, n, &m);
      if (!e) { /* a flip may change the input's shape: feed what the model asks for */
        int ni = mp_tflite_n_inputs(m);
        float *big[4] = {0};
        const float *cbig[4] = {0};
        for (int k = 0; k < ni && k < 4; k++) cbig[k] = big[k] = calloc((size_t)mp_tflite_input_numel(m, k), sizeof(float));
        if (ni <= 4 && mp_tflite_work(m) < 10000000) mp_error_free(mp_tflite_run(m, NULL, cbig));
        for (int k = 0; k < 4; k++) free(big[k]);
        mp_tflite_close(m);
      }
      mp_error_free(e);
    }
  free(copy);
  free(f.b);
}

static void test_unsupported_ops_named(void **state) {
  (void)state;
  fbb f = {0};
  tdesc ts[] = {{2, {1, 4}, 0, 0, "x", false}, {2, {1, 4}, 0, 0, "y", false}, {2, {1, 4}, 0, 0, "z", false}};
  odesc os[] = {{9, NULL, 1, {0}, 1, {1}, 0, 0}, {32, "MyCustomOp", 1, {1}, 1, {2}, 0, 0}};
  size_t lens[] = {0};
  const void *bufs[] = {NULL};
  size_t n = build_model(&f, 3, ts, 2, os, 1, bufs, lens, NULL);
  mp_tflite *m = NULL;
  mp_error *e = mp_tflite_open_memory(f.b, n, &m);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "FULLY_CONNECTED"));
  assert_non_null(strstr(mp_error_message(e), "MyCustomOp"));
  mp_error_free(e);
  assert_err_contains(mp_tflite_open_memory((const uint8_t *)"not a model at all", 18, &m), "TFL3");
  free(f.b);
  /* a negative builtin code (found by fuzz_tflite: it was taken for a custom operator's index and read
   * past the list of custom names) */
  fbb g = {0};
  odesc neg[] = {{-5, NULL, 1, {0}, 1, {1}, 0, 0}};
  n = build_model(&g, 2, ts, 1, neg, 1, bufs, lens, NULL);
  assert_err_contains(mp_tflite_open_memory(g.b, n, &m), "operator code 0: builtin code -5 is not a TFLite operator");
  /* a graph input listed twice (found by fuzz_tflite: each run allocated it twice and leaked one) */
  odesc relu[] = {{19, NULL, 1, {0}, 1, {1}, 0, 0}};
  n = build_graph(&g, 1, 2, ts, 1, relu, 1, bufs, lens, NULL);
  assert_null(mp_tflite_open_memory(g.b, n, &m)); /* the same graph with its input once loads */
  mp_tflite_close(m);
  n = build_graph(&g, 2, 2, ts, 1, relu, 1, bufs, lens, NULL);
  assert_err_contains(mp_tflite_open_memory(g.b, n, &m), "graph input 'x' is listed twice");
  free(g.b);
}

static void test_shape_mismatch_rejected(void **state) {
  (void)state;
  fbb f = {0};
  float w[54], bias[3];
  size_t n = conv_model(&f, w, bias);
  /* The output tensor claims [1,3,3,3]; make the conv stride 1 so SAME gives 5x5: a clear error. */
  tdesc ts[] = {{4, {1, 5, 5, 2}, 0, 0, "input", false}, {4, {3, 3, 3, 2}, 0, 1, "w", false},
                {1, {3}, 0, 2, "bias", false},          {4, {1, 3, 3, 3}, 0, 0, "output", false}};
  odesc os[] = {{3, NULL, 3, {0, 1, 2}, 1, {3}, 0, 1}};
  const void *bufs[] = {NULL, w, bias};
  size_t lens[] = {0, sizeof w, sizeof bias};
  n = build_model(&f, 4, ts, 1, os, 3, bufs, lens, NULL);
  mp_tflite *m = NULL;
  assert_err_contains(mp_tflite_open_memory(f.b, n, &m), "expected 5x5");
  free(f.b);
}

static void test_real_models_load(void **state) {
  (void)state;
  const char *src = getenv("MPASS_SOURCE_DIR");
  static const struct {
    const char *file, *needs;
  } files[] = {{"pose_solution_packed_assets.data", "DENSIFY"},
               {"pose_landmark_full.tflite", "RESIZE_BILINEAR"},
               {"selfie_segmentation.tflite", "Convolution2DTransposeBias"},
               {"face_detection_full_range.tflite", "MAX_POOL_2D"},
               {"face_detection_full_range_sparse.tflite", "DEPTH_TO_SPACE"}};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/models/vision/%s", src ? src : ".", files[i].file);
    mp_tflite *m = NULL;
    mp_error *e = mp_tflite_open(path, &m);
    if (e) fail_msg("%s (run scripts/fetch-models.sh)", mp_error_message(e));
    char *s = mp_tflite_op_summary(m);
    if (!strstr(s, files[i].needs)) fail_msg("%s: %s lacks %s", files[i].file, s, files[i].needs);
    free(s);
    mp_tflite_close(m);
  }
}

static void test_kernels_match_reference(void **state) {
  (void)state;
  mp_pool *pool = NULL;
  assert_ok(mp_pool_create(2, &pool));
  static const struct {
    int h, w, c, o, k, stride, dil, same;
  } cases[] = {{9, 7, 3, 5, 3, 2, 1, 1}, {8, 8, 6, 4, 1, 1, 1, 1}, {10, 9, 4, 3, 3, 1, 2, 0}, {6, 6, 5, 10, 5, 1, 1, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    mp_conv_params p = {.in_h = cases[i].h, .in_w = cases[i].w, .in_c = cases[i].c, .k_h = cases[i].k, .k_w = cases[i].k,
                        .stride_h = cases[i].stride, .stride_w = cases[i].stride, .dil_h = cases[i].dil,
                        .dil_w = cases[i].dil, .depth_multiplier = 1, .act = MP_ACT_RELU6};
    mp_conv_out_size(p.in_h, p.k_h, p.stride_h, p.dil_h, cases[i].same, &p.out_h, &p.pad_top);
    mp_conv_out_size(p.in_w, p.k_w, p.stride_w, p.dil_w, cases[i].same, &p.out_w, &p.pad_left);
    int64_t nin = (int64_t)p.in_h * p.in_w * p.in_c, npix = (int64_t)p.out_h * p.out_w;
    /* full convolution */
    p.out_c = cases[i].o;
    float *in = malloc((size_t)nin * 4), *w = malloc((size_t)p.out_c * p.k_h * p.k_w * p.in_c * 4), *b = malloc(64 * 4);
    float *got = malloc((size_t)npix * 64 * 4), *ref = malloc((size_t)npix * 64 * 4);
    test_fill(in, nin, 11 + (unsigned)i);
    test_fill(w, (int64_t)p.out_c * p.k_h * p.k_w * p.in_c, 13);
    test_fill(b, 64, 17);
    mp_nhwc_conv2d(pool, got, in, w, b, &p);
    mp_ref_nhwc_conv2d(ref, in, w, b, &p);
    for (int64_t k = 0; k < npix * p.out_c; k++) assert_true(fabsf(got[k] - ref[k]) < 1e-4f);
    /* depthwise, multiplier 2 */
    p.depth_multiplier = 2;
    p.out_c = p.in_c * 2;
    test_fill(w, (int64_t)p.k_h * p.k_w * p.out_c, 19);
    mp_nhwc_depthwise_conv2d(pool, got, in, w, b, &p);
    mp_ref_nhwc_depthwise_conv2d(ref, in, w, b, &p);
    for (int64_t k = 0; k < npix * p.out_c; k++) assert_true(fabsf(got[k] - ref[k]) < 1e-4f);
    free(in), free(w), free(b), free(got), free(ref);
  }
  /* resize: align_corners maps corners onto corners; half-pixel 2x of a ramp stays a ramp inside */
  float in4[4] = {0, 1, 2, 3}, out[16];
  mp_nhwc_resize_bilinear(out, in4, 2, 2, 1, 4, 4, true, false);
  assert_true(out[0] == 0 && fabsf(out[3] - 1) < 1e-6f && fabsf(out[15] - 3) < 1e-6f && fabsf(out[12] - 2) < 1e-6f);
  mp_nhwc_resize_bilinear(out, in4, 2, 2, 1, 4, 4, false, true);
  assert_true(out[0] == 0 && fabsf(out[1] - 0.25f) < 1e-6f && fabsf(out[2] - 0.75f) < 1e-6f && out[3] == 1);
  mp_pool_destroy(pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sparse_fp16_conv),        cmocka_unit_test(test_unsupported_ops_named),
      cmocka_unit_test(test_shape_mismatch_rejected), cmocka_unit_test(test_real_models_load),
      cmocka_unit_test(test_kernels_match_reference),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
