/* ncnn .param/.bin reader: the real Real-ESRGAN files, every weight storage, and hostile files. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/ncnn.h"
#include "testutil.h"

/* A growable byte buffer for building .bin files. */
typedef struct {
  uint8_t b[4096];
  size_t n;
} bytes;

static void put(bytes *b, const void *p, size_t n) {
  assert_true(b->n + n <= sizeof b->b);
  memcpy(b->b + b->n, p, n);
  b->n += n;
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_f32(bytes *b, float v) { put(b, &v, 4); }
static void put_f16(bytes *b, float v) {
  uint16_t h = mp_f32_to_f16(v);
  put(b, &h, 2);
}

static mp_error *parse(const char *param, const bytes *bin, mp_ncnn_model **m) {
  return mp_ncnn_parse("t.param", param, strlen(param), "t.bin", bin ? bin->b : (const uint8_t *)"", bin ? bin->n : 0, m);
}

/* conv 3x3 1->2 (18 fp16 weights, 2 biases), PReLU 2 slopes */
static const char *MINI = "7767517\n"
                          "3 3\n"
                          "Input            in     0 1 data\n"
                          "Convolution      conv   1 1 data c 0=2 1=3 4=1 5=1 6=18 9=2 -23310=1,2.000000e-01\n"
                          "PReLU            act    1 1 c output 0=2\n";

static bytes mini_bin(void) {
  bytes b = {.n = 0};
  put_u32(&b, 0x01306B47);
  for (int i = 0; i < 18; i++) put_f16(&b, 0.25f * (float)(i - 9));
  put_f32(&b, 0.5f), put_f32(&b, -1.5f);
  put_f32(&b, 0.1f), put_f32(&b, 0.2f);
  return b;
}

static void test_mini_model(void **state) {
  (void)state;
  bytes b = mini_bin();
  mp_ncnn_model *m = NULL;
  assert_ok(parse(MINI, &b, &m));
  assert_int_equal(m->n_layers, 3);
  assert_int_equal(m->n_blobs, 3);
  assert_int_equal(mp_ncnn_find_blob(m, "output"), 2);
  assert_int_equal(mp_ncnn_find_blob(m, "nope"), -1);
  const mp_ncnn_layer *conv = &m->layers[1];
  assert_string_equal(conv->type, "Convolution");
  assert_int_equal(conv->line, 4);
  int v = 0;
  float f = 0;
  assert_ok(mp_ncnn_get_int(conv, 0, -1, &v));
  assert_int_equal(v, 2);
  assert_ok(mp_ncnn_get_int(conv, 7, 42, &v)); /* absent: the default */
  assert_int_equal(v, 42);
  const mp_ncnn_value *a = NULL;
  int n = 0;
  assert_ok(mp_ncnn_get_array(conv, 10, &a, &n));
  assert_int_equal(n, 1);
  assert_true(a[0].is_float && fabsf(a[0].f - 0.2f) < 1e-7f);
  assert_ok(mp_ncnn_get_float(conv, 0, 0, &f)); /* an int reads as float */
  assert_true(f == 2.0f);
  assert_err_contains(mp_ncnn_get_int(conv, 10, 0, &v), "must be an integer");
  const mp_ncnn_weight *w = mp_ncnn_weight_find(conv, "weight"), *bias = mp_ncnn_weight_find(conv, "bias");
  assert_non_null(w);
  assert_non_null(bias);
  assert_int_equal(w->storage, MP_NCNN_STORE_F16);
  assert_int_equal(w->count, 18);
  for (int i = 0; i < 18; i++) assert_true(w->data[i] == 0.25f * (float)(i - 9));
  assert_true(bias->data[1] == -1.5f);
  const mp_ncnn_weight *slope = mp_ncnn_weight_find(&m->layers[2], "slope");
  assert_true(slope && slope->count == 2 && slope->data[1] == 0.2f);
  mp_ncnn_free(m);
}

/* The other storages behind the tag: raw f32 (tag 0), f32 with tag 0x0002C056, an odd fp16 count
 * (padded to 4 bytes) and the 256-entry table. */
static void test_weight_storages(void **state) {
  (void)state;
  const char *p = "7767517\n5 5\nInput in 0 1 x\n"
                  "Convolution a 1 1 x a 0=1 1=1 6=3\n"
                  "Convolution b 1 1 a b 0=1 1=1 6=3\n"
                  "Convolution c 1 1 b c 0=1 1=1 6=3\n"
                  "Convolution d 1 1 c d 0=1 1=1 6=3\n";
  bytes b = {.n = 0};
  put_u32(&b, 0), put_f32(&b, 1), put_f32(&b, 2), put_f32(&b, 3);
  put_u32(&b, 0x0002C056), put_f32(&b, 4), put_f32(&b, 5), put_f32(&b, 6);
  put_u32(&b, 0x01306B47), put_f16(&b, 7), put_f16(&b, 8), put_f16(&b, 9), put_f16(&b, 0); /* 3 values + pad */
  put_u32(&b, 0x01020304);
  for (int i = 0; i < 256; i++) put_f32(&b, (float)i * 0.5f);
  uint8_t idx[4] = {10, 20, 255, 0};
  put(&b, idx, 4);
  mp_ncnn_model *m = NULL;
  assert_ok(parse(p, &b, &m));
  const float want[4][3] = {{1, 2, 3}, {4, 5, 6}, {7, 8, 9}, {5, 10, 127.5f}};
  const mp_ncnn_storage st[4] = {MP_NCNN_STORE_F32, MP_NCNN_STORE_F32_TAG, MP_NCNN_STORE_F16, MP_NCNN_STORE_TABLE8};
  for (int l = 0; l < 4; l++) {
    const mp_ncnn_weight *w = mp_ncnn_weight_find(&m->layers[l + 1], "weight");
    assert_int_equal(w->storage, st[l]);
    for (int i = 0; i < 3; i++) assert_true(w->data[i] == want[l][i]);
  }
  mp_ncnn_free(m);
}

typedef struct {
  const char *param; /* NULL: MINI */
  int bin_edit;      /* 0 none, 1 truncate by 4, 2 add 4 bytes, 3 int8 tag, 4 NaN bias */
  const char *needle;
} bad_case;

static void test_hostile_files(void **state) {
  (void)state;
  const bad_case cases[] = {
      {"7767518\n1 1\nInput in 0 1 data\n", 0, "magic"},
      {"", 0, "empty file"},
      {"7767517\n", 0, "layer count"},
      {"7767517\n0 1\n", 0, "two positive integers"},
      {"7767517\n1000000 1\nInput in 0 1 data\n", 0, "only"},
      {"7767517\n2 2\nInput in 0 1 data\n", 0, "declares 2 layers but has 1"},
      {"7767517\n1 1\nInput in 0 1 data\nInput in2 0 1 data2\n", 0, "more lines"},
      {"7767517\n1 2\nInput in 0 1 data\n", 0, "declares 2 blobs"},
      {"7767517\n2 2\nInput in 0 1 data\nReLU r 1 1 nothere out\n", 0, "not produced by any earlier layer"},
      {"7767517\n2 2\nInput in 0 1 data\nReLU r 1 1 data data\n", 0, "already produced"},
      {"7767517\n1 1\nInput in 0 2 data\n", 0, "declares 2 outputs but names 1"},
      {"7767517\n1 1\nInput in x 1 data\n", 0, "input/output counts"},
      {"7767517\n1 1\nInput in 0 1 data 0=1 0=2\n", 0, "given twice"},
      {"7767517\n1 1\nInput in 0 1 data 32=1\n", 0, "out of range"},
      {"7767517\n1 1\nInput in 0 1 data -23340=1,2\n", 0, "out of range"},
      {"7767517\n1 1\nInput in 0 1 data abc\n", 0, "expected key=value"},
      {"7767517\n1 1\nInput in 0 1 data 0=12x\n", 0, "not a 32-bit integer"},
      {"7767517\n1 1\nInput in 0 1 data 0=99999999999\n", 0, "not a 32-bit integer"},
      {"7767517\n1 1\nInput in 0 1 data 0=1e99\n", 0, "not a finite number"},
      {"7767517\n1 1\nInput in 0 1 data -23300=2,1.0\n", 0, "declares 2 values but has 1"},
      {"7767517\n1 1\nInput in 0 1 data -23300=-1\n", 0, "count"},
      {"7767517\n2 2\nInput in 0 1 data\nMystery m 1 1 data out\n", 0, "not supported"},
      {"7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=1 1=1 6=2000000000\n", 0, "truncated"},
      {"7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=1 1=1 6=0\n", 0, "must be positive"},
      {"7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=1 1=1 6=1 8=2\n", 0, "int8"},
      {"7767517\n2 2\nInput in 0 1 data\nConvolution c 1 1 data out 0=1 1=1 6=1 0.5=1\n", 0, "parameter key"},
      {NULL, 1, "truncated"},
      {NULL, 2, "4 bytes are left after the last weight"},
      {NULL, 3, "int8"},
      {NULL, 4, "not finite"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    bytes b = mini_bin();
    if (cases[i].bin_edit == 1) b.n -= 4;
    if (cases[i].bin_edit == 2) put_u32(&b, 0);
    if (cases[i].bin_edit == 3) {
      uint32_t t = 0x000D4B38;
      memcpy(b.b, &t, 4);
    }
    if (cases[i].bin_edit == 4) {
      float nan = NAN;
      memcpy(b.b + 4 + 36, &nan, 4);
    }
    mp_ncnn_model *m = (mp_ncnn_model *)1;
    mp_error *e = parse(cases[i].param ? cases[i].param : MINI, cases[i].param ? NULL : &b, &m);
    if (!e) fail_msg("case %zu: expected an error containing '%s'", i, cases[i].needle);
    if (!strstr(mp_error_message(e), cases[i].needle))
      fail_msg("case %zu: error '%s' does not contain '%s'", i, mp_error_message(e), cases[i].needle);
    assert_null(m);
    mp_error_free(e);
  }
  /* a NUL byte inside the text */
  mp_ncnn_model *m = NULL;
  static const char nul[] = "7767517\n1 1\nInput in 0 1\0data\n";
  assert_err_contains(mp_ncnn_parse("t.param", nul, sizeof nul - 1, "t.bin", "", 0, &m), "NUL");
}

static void check_real(const char *param, const char *bin, int layers, int blobs, int convs) {
  char *src = getenv("MPASS_SOURCE_DIR"), pp[4096], bp[4096];
  snprintf(pp, sizeof pp, "%s/models/upscale/%s", src ? src : ".", param);
  snprintf(bp, sizeof bp, "%s/models/upscale/%s", src ? src : ".", bin);
  FILE *f = fopen(pp, "rb");
  if (!f) fail_msg("%s is missing: run scripts/fetch-models.sh", pp);
  fclose(f);
  mp_ncnn_model *m = NULL;
  assert_ok(mp_ncnn_open(pp, bp, &m));
  assert_int_equal(m->n_layers, layers);
  assert_int_equal(m->n_blobs, blobs);
  int n_conv = 0;
  int64_t n_params = 0;
  for (int i = 0; i < m->n_layers; i++) {
    const mp_ncnn_layer *l = &m->layers[i];
    if (strcmp(l->type, "Convolution") == 0) {
      n_conv++;
      assert_int_equal(mp_ncnn_weight_find(l, "weight")->storage, MP_NCNN_STORE_F16);
      assert_int_equal(mp_ncnn_weight_find(l, "bias")->storage, MP_NCNN_STORE_F32);
    }
    for (int k = 0; k < l->n_weights; k++) n_params += l->weights[k].count;
  }
  assert_int_equal(n_conv, convs);
  if (strstr(param, "x4fast")) assert_int_equal(n_params, 1213296); /* the manifest's parameter count */
  else assert_int_equal(n_params, 16697987);
  assert_true(mp_ncnn_find_blob(m, "data") >= 0 && mp_ncnn_find_blob(m, "output") >= 0);
  mp_ncnn_free(m);
}

static void test_real_models(void **state) {
  (void)state;
  check_real("realesrgan-x4fast.param", "realesrgan-x4fast.bin", 72, 73, 34);
  check_real("realesrgan-x4plus.param", "realesrgan-x4plus.bin", 999, 1782, 351);
  /* the .bin of one with the .param of the other: caught by the size check */
  char *src = getenv("MPASS_SOURCE_DIR"), pp[4096], bp[4096];
  snprintf(pp, sizeof pp, "%s/models/upscale/realesrgan-x4fast.param", src ? src : ".");
  snprintf(bp, sizeof bp, "%s/models/upscale/realesrgan-x4plus.bin", src ? src : ".");
  mp_ncnn_model *m = NULL;
  assert_err_contains(mp_ncnn_open(pp, bp, &m), "does not belong to this .param");
  assert_err_contains(mp_ncnn_open("/nonexistent.param", bp, &m), "cannot open /nonexistent.param");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mini_model),
      cmocka_unit_test(test_weight_storages),
      cmocka_unit_test(test_hostile_files),
      cmocka_unit_test(test_real_models),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
