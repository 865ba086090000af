/* safetensors: a round trip through the writer, and hostile headers that must fail with a clear error
 * (and no crash or leak under ASan). Files are parsed from memory with mp_safetensors_parse. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/weights.h"
#include "testutil.h"

/* 8-byte little-endian header length + header + data, in a malloc'd buffer. */
static unsigned char *make_file(const char *header, const void *data, size_t data_len, size_t *size) {
  size_t hl = strlen(header);
  *size = 8 + hl + data_len;
  unsigned char *b = malloc(*size ? *size : 1);
  assert_non_null(b);
  for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(b + 8, header, hl);
  if (data_len) memcpy(b + 8 + hl, data, data_len);
  return b;
}

static mp_error *parse(const void *buf, size_t size) {
  mp_weights *w = mp_weights_new("x.safetensors");
  assert_non_null(w);
  mp_error *e = mp_safetensors_parse("x.safetensors", buf, size, w);
  mp_weights_close(w);
  return e;
}

static void expect_err(const char *header, size_t data_len, const char *needle) {
  unsigned char data[64] = {0};
  assert_true(data_len <= sizeof data);
  size_t size;
  unsigned char *f = make_file(header, data, data_len, &size);
  assert_err_contains(parse(f, size), needle);
  free(f);
}

static void test_roundtrip(void **state) {
  (void)state;
  float a[6] = {1, 2, 3, 4, 5, 6};
  uint16_t h[3] = {0x3c00, 0x4000, 0x4200};
  mp_tensor ts[2];
  mp_tensor_view(&ts[0], MP_F32, 2, (int64_t[]){2, 3}, a);
  mp_tensor_view(&ts[1], MP_F16, 1, (int64_t[]){3}, h);
  const char *names[2] = {"z.weight", "a.bias"};
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/t.safetensors", dir);
  assert_ok(mp_safetensors_write(path, 2, names, ts, "{\"format\":\"pt\"}"));
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  assert_int_equal(mp_weights_count(w), 2);
  const mp_weight *t = mp_weights_find(w, "z.weight");
  assert_non_null(t);
  assert_int_equal(t->t.shape[1], 3);
  assert_memory_equal(t->t.data, a, sizeof a);
  t = mp_weights_find(w, "a.bias");
  assert_non_null(t);
  assert_memory_equal(t->t.data, h, sizeof h);
  assert_non_null(strstr(mp_weights_metadata(w), "\"format\":\"pt\""));
  mp_weights_close(w);
  remove(path);
  rmdir(dir);
  free(dir);
}

static void test_rejects_truncated(void **state) {
  (void)state;
  assert_err_contains(parse("", 0), "0 bytes, too short");
  assert_err_contains(parse("\x10\x00\x00", 3), "too short for a safetensors header");
  /* header length past the end */
  size_t size;
  unsigned char *f = make_file("{}", NULL, 0, &size);
  assert_ok(parse(f, size)); /* no tensors at all is a valid file (UBSan: no qsort of a NULL array) */
  f[0] = 200;
  assert_err_contains(parse(f, size), "header length 200 runs past the end of the file");
  memset(f, 0xff, 8);
  assert_err_contains(parse(f, size), "runs past the end of the file");
  free(f);
  /* a valid file cut inside its data */
  const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
  unsigned char data[16] = {0};
  f = make_file(hdr, data, sizeof data, &size);
  assert_ok(parse(f, size));
  assert_err_contains(parse(f, size - 1), "run past the end of the data (15 bytes): file truncated?");
  assert_err_contains(parse(f, 8 + 10), "runs past the end of the file");
  free(f);
}

static void test_rejects_bad_headers(void **state) {
  (void)state;
  expect_err("[1,2]", 0, "does not start with a JSON object");
  expect_err("{\"a\":{\"dtype\":\"F32\",", 0, "not valid JSON");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} trailing", 4, "not valid JSON");
  expect_err("{\"a\":7}", 0, "tensor 'a': expected an object");
  expect_err("{\"a\":{\"dtype\":\"Q7\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unsupported dtype Q7");
  expect_err("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "unsupported dtype (missing)");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "at most 8 dimensions");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "shape entry 0 is not a non-negative integer");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "not a non-negative integer");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, "not a non-negative integer");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "0 <= begin <= end");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets must be [begin, end]");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 4, "data_offsets must be");
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,400]}}", 4, "run past the end of the data");
}

static void test_rejects_inconsistent_tensors(void **state) {
  (void)state;
  /* dtype/size mismatch */
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "F32 [3] needs 12 bytes but data_offsets give 8");
  expect_err("{\"a\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, "F16 [2,2] needs 8 bytes");
  /* absurd shapes: overflowing, and huge but consistent-looking */
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "needs -1 bytes");
  expect_err("{\"a\":{\"dtype\":\"F64\",\"shape\":[1099511627776,1099511627776],\"data_offsets\":[0,8]}}", 8, "but data_offsets give 8");
  /* overlapping data: neighbours, and a big tensor covering a later one that is not its neighbour */
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
             12, "tensors 'a' and 'b' overlap");
  expect_err("{\"big\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
             "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,8]},"
             "\"c\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[16,20]}}",
             32, "tensors 'big' and 'c' overlap");
  /* the same name twice (JSON allows it; a checkpoint must not) */
  expect_err("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
             8, "duplicate tensor name 'a'");
  /* empty tensors may share an offset with anything */
  unsigned char data[8] = {0};
  size_t size;
  unsigned char *f = make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                               "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}",
                               data, sizeof data, &size);
  assert_ok(parse(f, size));
  free(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_rejects_truncated),
      cmocka_unit_test(test_rejects_bad_headers),
      cmocka_unit_test(test_rejects_inconsistent_tensors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
