/* Real-ESRGAN executor and pipeline: the conv helper against its twin, every layer kind on a small
 * synthetic graph, the real x4fast against the golden, tiled == untiled, u8 rounding and x2 output. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv_nchw.h"
#include "core/tensor.h"
#include "io/weights.h"
#include "models/esrgan.h"
#include "testutil.h"

static double max_diff(const float *a, const float *b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

static void test_conv_matches_reference(void **state) {
  (void)state;
  const struct {
    mp_conv2d_desc d;
    int h, w;
  } cases[] = {
      {{3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1}, 9, 13},
      {{5, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0}, 7, 6},           /* pointwise: one GEMM */
      {{4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1}, 11, 10},         /* stride 2 */
      {{2, 3, 3, 3, 1, 1, 2, 2, 2, 2, 2, 2}, 8, 9},           /* dilation 2 */
      {{3, 2, 2, 3, 1, 2, 1, 1, 0, 2, 1, 0}, 6, 7},           /* rectangular kernel, uneven pads */
      {{64, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1}, 40, 1200},      /* wide: several bands */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const mp_conv2d_desc *d = &cases[i].d;
    int oh, ow, h = cases[i].h, w = cases[i].w;
    mp_conv2d_out_size(d, h, w, &oh, &ow);
    assert_true(oh > 0 && ow > 0);
    int64_t nin = (int64_t)d->c_in * h * w, nw = (int64_t)d->c_out * d->c_in * d->kh * d->kw, nout = (int64_t)d->c_out * oh * ow;
    float *in = malloc(nin * sizeof *in), *wt = malloc(nw * sizeof *wt), *b = malloc(d->c_out * sizeof *b);
    float *out = malloc(nout * sizeof *out), *ref = malloc(nout * sizeof *ref);
    test_fill(in, nin, 1 + (unsigned)i), test_fill(wt, nw, 7), test_fill(b, d->c_out, 9);
    assert_ok(mp_conv2d_nchw(NULL, d, in, h, w, wt, b, out));
    mp_ref_conv2d_nchw(d, in, h, w, wt, b, ref);
    if (max_diff(out, ref, nout) > 1e-4) fail_msg("conv case %zu: max diff %g", i, max_diff(out, ref, nout));
    free(in), free(wt), free(b), free(out), free(ref);
  }
  mp_conv2d_desc bad = {3, 8, 5, 5, 1, 1, 1, 1, 0, 0, 0, 0};
  float x[3 * 2 * 2] = {0}, y[8] = {0};
  assert_err_contains(mp_conv2d_nchw(NULL, &bad, x, 2, 2, x, NULL, y), "does not fit");
}

/* ---- a synthetic graph with every layer kind the executor runs ---- */

static const char *GRAPH = "7767517\n"
                           "9 11\n"
                           "Input        in   0 1 data\n"
                           "Split        sp   1 3 data d0 d1 d2\n"
                           "Convolution  c1   1 1 d0 c1o 0=8 1=3 4=1 5=1 6=216 9=2 -23310=1,1.000000e-01\n"
                           "Convolution  c2   1 1 d1 c2o 0=4 1=1 5=0 6=12\n"
                           "Concat       cat  2 1 c1o c2o cato\n"
                           "PixelShuffle ps   1 1 cato pso 0=2\n"
                           "Interp       up   1 1 d2 upo 0=1 1=2.000000e+00 2=2.000000e+00\n"
                           "Eltwise      sum  2 1 pso upo eo 0=1 -23301=2,5.000000e-01,1.000000e+00\n"
                           "BinaryOp     mul  1 1 eo output 0=2 1=1 2=2.000000e+00\n";

typedef struct {
  float w1[216], b1[8], w2[12];
} graph_weights;

static char *write_graph(const char *param, const graph_weights *gw, bool fp16_w2) {
  char *dir = test_tmpdir(), path[4096];
  snprintf(path, sizeof path, "%s/g.param", dir);
  test_write_file(path, param, strlen(param));
  uint8_t bin[2048];
  size_t n = 0;
  uint32_t tag = 0;
  memcpy(bin + n, &tag, 4), n += 4;
  memcpy(bin + n, gw->w1, sizeof gw->w1), n += sizeof gw->w1;
  memcpy(bin + n, gw->b1, sizeof gw->b1), n += sizeof gw->b1;
  tag = fp16_w2 ? 0x01306B47 : 0;
  memcpy(bin + n, &tag, 4), n += 4;
  for (int i = 0; i < 12; i++) {
    if (fp16_w2) {
      uint16_t h = mp_f32_to_f16(gw->w2[i]);
      memcpy(bin + n, &h, 2), n += 2;
    } else {
      memcpy(bin + n, &gw->w2[i], 4), n += 4;
    }
  }
  snprintf(path, sizeof path, "%s/g.bin", dir);
  test_write_file(path, bin, n);
  return dir;
}

static mp_error *open_graph(const char *dir, mp_esrgan **m) {
  char p[4096], b[4096];
  snprintf(p, sizeof p, "%s/g.param", dir);
  snprintf(b, sizeof b, "%s/g.bin", dir);
  return mp_esrgan_open(p, b, m);
}

static void test_synthetic_graph(void **state) {
  (void)state;
  graph_weights gw;
  test_fill(gw.w1, 216, 3), test_fill(gw.b1, 8, 4), test_fill(gw.w2, 12, 5);
  for (int i = 0; i < 12; i++) gw.w2[i] = mp_f16_to_f32(mp_f32_to_f16(gw.w2[i])); /* exactly representable */
  char *dir = write_graph(GRAPH, &gw, true);
  mp_esrgan *m = NULL;
  assert_ok(open_graph(dir, &m));
  assert_int_equal(mp_esrgan_scale(m), 2);

  enum { H = 5, W = 7 };
  float in[3 * H * W], out[3 * 4 * H * W], ref[3 * 4 * H * W];
  test_fill(in, 3 * H * W, 11);
  assert_ok(mp_esrgan_forward(m, NULL, in, H, W, out, NULL));

  /* by hand: c1 = leaky0.1(conv3x3(in)), c2 = conv1x1(in), cat = [c1; c2] (12 ch),
   * ps = PixelShuffle(2)(cat) (3 ch at 2x, PyTorch order), up = nearest x2 (in), out = 2 * (0.5 ps + up) */
  float c1[8 * H * W], cat[12 * H * W];
  mp_conv2d_desc d1 = {3, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1}, d2 = {3, 4, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
  mp_ref_conv2d_nchw(&d1, in, H, W, gw.w1, gw.b1, c1);
  for (int i = 0; i < 8 * H * W; i++) cat[i] = c1[i] < 0 ? 0.1f * c1[i] : c1[i];
  mp_ref_conv2d_nchw(&d2, in, H, W, gw.w2, NULL, cat + 8 * H * W);
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < 2 * H; y++)
      for (int x = 0; x < 2 * W; x++) {
        float ps = cat[((c * 4 + (y % 2) * 2 + (x % 2)) * H + y / 2) * W + x / 2];
        float up = in[(c * H + y / 2) * W + x / 2];
        ref[(c * 2 * H + y) * 2 * W + x] = 2.0f * (0.5f * ps + up);
      }
  if (max_diff(out, ref, 3 * 4 * H * W) > 1e-5) fail_msg("synthetic graph: max diff %g", max_diff(out, ref, 3 * 4 * H * W));

  mp_esrgan_free(m);
  free(dir);
}

static void test_graph_errors(void **state) {
  (void)state;
  graph_weights gw;
  memset(&gw, 0, sizeof gw);
  const struct {
    const char *from, *to, *needle;
  } edits[] = {
      {"Interp       up   1 1 d2 upo 0=1", "Interp       up   1 1 d2 upo 0=2", "resize_type 2"},
      {"1=2.000000e+00 2=2.000000e+00", "1=1.500000e+00 2=2.000000e+00", "whole factors"},
      {"0=4 1=1 5=0 6=12", "0=3 1=1 5=0 6=12", "weights are for 4"},
      {"9=2 -23310=1,1.000000e-01", "9=6", "activation_type 6"},
      {"Concat       cat  2 1 c1o c2o cato", "Concat       cat  2 1 c1o c2o cato 0=1", "axis 1"},
      {"0=1 -23301=2,5.000000e-01,1.000000e+00", "0=1 -23301=1,5.000000e-01", "1 coefficients for 2 inputs"},
      {"0=8 1=3 4=1", "0=8 1=3 4=-233", "automatic"},
  };
  for (size_t i = 0; i < sizeof edits / sizeof *edits; i++) {
    char param[2048];
    const char *at = strstr(GRAPH, edits[i].from);
    assert_non_null(at);
    snprintf(param, sizeof param, "%.*s%s%s", (int)(at - GRAPH), GRAPH, edits[i].to, at + strlen(edits[i].from));
    char *dir = write_graph(param, &gw, false);
    mp_esrgan *m = NULL;
    mp_error *e = open_graph(dir, &m);
    if (!e) fail_msg("edit %zu: expected an error containing '%s'", i, edits[i].needle);
    if (!strstr(mp_error_message(e), edits[i].needle))
      fail_msg("edit %zu: '%s' does not contain '%s'", i, mp_error_message(e), edits[i].needle);
    mp_error_free(e);
    assert_null(m);
    free(dir);
  }
  mp_esrgan *m = NULL;
  char *src = getenv("MPASS_SOURCE_DIR"), dir[4096];
  snprintf(dir, sizeof dir, "%s/models", src ? src : ".");
  assert_ok(mp_esrgan_open_named(dir, "x4plus", &m)); /* RRDBNet: 351 convs, two nearest x2 */
  assert_int_equal(mp_esrgan_scale(m), 4);
  assert_int_equal(mp_esrgan_default_context(m), 64);
  mp_esrgan_free(m);
  m = NULL;
  /* a --models folder without upscale/ still finds the fetched model (installed, or next to the
   * source tree: models/model_files.h); the not-found error is tested in test_model_files.c */
  assert_ok(mp_esrgan_open_named("/nonexistent", "x4fast", &m));
  assert_int_equal(mp_esrgan_scale(m), 4);
  mp_esrgan_free(m);
  m = NULL;
  assert_err_contains(mp_esrgan_open_named("/nonexistent", "x8", &m), "unknown upscale model");
}

/* ---- the real model ---- */

static mp_esrgan *open_x4fast(void) {
  char *src = getenv("MPASS_SOURCE_DIR"), dir[4096];
  snprintf(dir, sizeof dir, "%s/models", src ? src : ".");
  mp_esrgan *m = NULL;
  assert_ok(mp_esrgan_open_named(dir, "x4fast", &m));
  assert_int_equal(mp_esrgan_scale(m), 4);
  assert_int_equal(mp_esrgan_default_context(m), 34); /* 34 3x3 convs: the whole receptive field */
  return m;
}

static void golden_f32(mp_weights *g, const char *name, const float **data, int64_t *n) {
  const mp_weight *w = mp_weights_find(g, name);
  if (!w) fail_msg("golden tensor %s missing", name);
  assert_int_equal(w->t.dtype, MP_F32);
  *data = w->t.data;
  *n = mp_tensor_numel(&w->t);
}

static void test_x4fast_golden(void **state) {
  (void)state;
  mp_esrgan *m = open_x4fast();
  char *path = test_shared_path("golden/esrgan/x4fast.safetensors");
  mp_weights *g = NULL;
  assert_ok(mp_weights_open(path, &g));
  const float *in, *want;
  int64_t nin, nout;
  golden_f32(g, "t.input", &in, &nin);
  golden_f32(g, "t.output", &want, &nout);
  assert_int_equal(nin, 3 * 12 * 16);
  assert_int_equal(nout, 3 * 48 * 64);
  float *out = malloc(nout * sizeof *out);
  assert_ok(mp_esrgan_forward(m, NULL, in, 12, 16, out, NULL));
  assert_true(test_rel_l2(out, want, nout) <= 1e-5);
  assert_true(max_diff(out, want, nout) <= 1e-4);
  /* the padded pipeline: prepad10 */
  golden_f32(g, "t.prepad10.output", &want, &nout);
  mp_esrgan_opts o = {.tile = 0, .border = MP_ESRGAN_BORDER, .context = MP_ESRGAN_BORDER};
  assert_ok(mp_esrgan_upscale(m, NULL, in, 12, 16, &o, out));
  assert_true(test_rel_l2(out, want, nout) <= 1e-5);
  assert_true(max_diff(out, want, nout) <= 1e-4);
  free(out);
  mp_weights_close(g);
  free(path);
  mp_esrgan_free(m);
}

static int tiles_seen;
static void count_tiles(void *ctx, int done, int total) {
  (void)ctx;
  tiles_seen = done;
  assert_true(done <= total);
}

/* Tiles with the default context (x4fast: its whole receptive field) give the untiled result, up
 * to float noise, seams and image border included; with realesrgan-ncnn-vulkan's 10 px they do not. */
static void test_tiled_equals_untiled(void **state) {
  (void)state;
  mp_esrgan *m = open_x4fast();
  char *path = test_shared_path("golden/esrgan/x4fast.safetensors");
  mp_weights *g = NULL;
  assert_ok(mp_weights_open(path, &g));
  const float *in;
  int64_t nin;
  golden_f32(g, "b.input", &in, &nin);
  const int H = 64, W = 96, S = 4;
  assert_int_equal(nin, 3 * H * W);
  int64_t n = (int64_t)3 * H * S * W * S;
  float *whole = malloc(n * sizeof *whole), *tiled = malloc(n * sizeof *tiled);
  mp_esrgan_opts o = mp_esrgan_default_opts(m);
  o.tile = 0;
  assert_ok(mp_esrgan_upscale(m, NULL, in, H, W, &o, whole));
  o.tile = 40; /* 2 x 3 tiles, the last ones smaller */
  o.progress = count_tiles;
  tiles_seen = 0;
  assert_ok(mp_esrgan_upscale(m, NULL, in, H, W, &o, tiled));
  assert_int_equal(tiles_seen, 6);
  double rel = test_rel_l2(tiled, whole, n), mx = max_diff(tiled, whole, n);
  if (rel > 1e-5 || mx > 1e-4) fail_msg("tiled vs untiled: rel L2 %g, max abs %g", rel, mx);
  o.context = MP_ESRGAN_BORDER;
  assert_ok(mp_esrgan_upscale(m, NULL, in, H, W, &o, tiled));
  assert_true(max_diff(tiled, whole, n) > 1e-3); /* the seams this default avoids */
  free(whole);
  free(tiled);
  mp_weights_close(g);
  free(path);
  mp_esrgan_free(m);
}

static void test_u8_and_half_scale(void **state) {
  (void)state;
  assert_int_equal(mp_esrgan_to_u8(-0.34f), 0);
  assert_int_equal(mp_esrgan_to_u8(1.29f), 255);
  assert_int_equal(mp_esrgan_to_u8(NAN), 0);
  assert_int_equal(mp_esrgan_to_u8(-INFINITY), 0);
  assert_int_equal(mp_esrgan_to_u8(INFINITY), 255);
  assert_int_equal(mp_esrgan_to_u8(0.5f / 255.0f), 1); /* half rounds up */
  assert_int_equal(mp_esrgan_to_u8(128.0f / 255.0f), 128);

  mp_esrgan *m = open_x4fast();
  char *path = test_shared_path("golden/esrgan/inputs/t_photo_16x12.png");
  mp_image img, up4, up2;
  assert_ok(mp_image_read(path, 3, &img));
  mp_esrgan_opts o = mp_esrgan_default_opts(m);
  o.tile = 8;
  assert_ok(mp_esrgan_upscale_image(m, NULL, &img, 4, &o, &up4));
  assert_ok(mp_esrgan_upscale_image(m, NULL, &img, 2, &o, &up2));
  assert_int_equal(up4.width, 64);
  assert_int_equal(up4.height, 48);
  assert_int_equal(up2.width, 32);
  assert_int_equal(up2.height, 24);
  /* the same pixels from the float pipeline */
  const int h = 12, w = 16;
  float in[3 * 12 * 16], *out = malloc(sizeof(float) * 3 * 48 * 64);
  for (int i = 0; i < h * w; i++)
    for (int c = 0; c < 3; c++) in[c * h * w + i] = img.pixels[i * 3 + c] / 255.0f;
  assert_ok(mp_esrgan_upscale(m, NULL, in, h, w, &o, out));
  for (int y = 0; y < 48; y++)
    for (int x = 0; x < 64; x++)
      for (int c = 0; c < 3; c++) assert_int_equal(up4.pixels[(y * 64 + x) * 3 + c], mp_esrgan_to_u8(out[(c * 48 + y) * 64 + x]));
  for (int y = 0; y < 24; y++)
    for (int x = 0; x < 32; x++)
      for (int c = 0; c < 3; c++) {
        const float *p = out + (c * 48 + 2 * y) * 64 + 2 * x;
        float avg = (p[0] + p[1] + p[64] + p[65]) * 0.25f;
        int got = up2.pixels[(y * 32 + x) * 3 + c], want = mp_esrgan_to_u8(avg);
        assert_true(abs(got - want) <= 1); /* summation order may differ by an ulp */
      }
  mp_image out3;
  assert_err_contains(mp_esrgan_upscale_image(m, NULL, &img, 3, &o, &out3), "scale 3");
  free(out);
  mp_image_free(&img);
  mp_image_free(&up4);
  mp_image_free(&up2);
  free(path);
  mp_esrgan_free(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_conv_matches_reference), cmocka_unit_test(test_synthetic_graph),
      cmocka_unit_test(test_graph_errors),           cmocka_unit_test(test_x4fast_golden),
      cmocka_unit_test(test_tiled_equals_untiled),   cmocka_unit_test(test_u8_and_half_scale),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
