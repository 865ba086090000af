/* Textual-inversion embedding files for the tiny model's 32-wide text encoder. The tests write the
 * files themselves: safetensors with mp_safetensors_write, torch.save zips with mp_ckpt_write (flat
 * dicts) or with the pickle + zip built below (A1111's nested {"string_to_param": {"*": tensor}}),
 * then check the formats, name lookup, errors, and that a loaded file conditions exactly as the same
 * vectors placed by hand. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/tensor.h"
#include "io/ckpt.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/embedding.h"
#include "models/sd.h"
#include "prompt/conditioning.h"
#include "testutil.h"
#include "tiny_text.h"

typedef struct {
  tiny_text text;
  char *tmp;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  mp_error *e = tiny_text_load(&f->text);
  if (e) {
    fprintf(stderr, "setup: %s\n", mp_error_message(e));
    mp_error_free(e);
    return -1;
  }
  f->tmp = test_tmpdir();
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  tiny_text_free(&f->text);
  free(f->tmp);
  free(f);
  return 0;
}

/* ---- writing embedding files -------------------------------------------------------------------- */

static void fill(float *v, size_t n, double phase) {
  for (size_t i = 0; i < n; i++) v[i] = (float)(0.5 * sin(0.37 * (double)i + phase));
}

static char *path_in(const char *dir, const char *file) {
  size_t n = strlen(dir) + strlen(file) + 2;
  char *p = malloc(n);
  snprintf(p, n, "%s/%s", dir, file);
  return p;
}

static void write_st(const char *path, const char *tname, mp_dtype dt, int ndim, const int64_t *shape, const void *data) {
  mp_tensor t;
  mp_tensor_view(&t, dt, ndim, shape, (void *)data);
  assert_ok(mp_safetensors_write(path, 1, &tname, &t, NULL));
}

/* [n, hidden] f32 under `tname` (ndim 1 when n == 0 means a bare [hidden] vector). */
static void write_st_f32(const char *path, const char *tname, int n, int hidden, const float *v) {
  int64_t shape[2] = {n, hidden};
  if (n == 0)
    write_st(path, tname, MP_F32, 1, shape + 1, v);
  else
    write_st(path, tname, MP_F32, 2, shape, v);
}

/* A protocol-2 pickle and a STORED zip, written the way torch.save lays them out, for the nested
 * dicts mp_ckpt_write does not produce. */
typedef struct {
  unsigned char *p;
  size_t n, cap;
} bytes;

static void put(bytes *b, const void *d, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    assert_non_null(b->p);
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void put1(bytes *b, unsigned v) {
  unsigned char c = (unsigned char)v;
  put(b, &c, 1);
}
static void put_le(bytes *b, uint64_t v, int k) {
  for (int i = 0; i < k; i++) put1(b, (unsigned)(v >> (8 * i)) & 0xff);
}
static void pk_str(bytes *b, const char *s) {
  put1(b, 'X'); /* BINUNICODE */
  put_le(b, strlen(s), 4);
  put(b, s, strlen(s));
}
static void pk_int(bytes *b, int64_t v) {
  if (v >= 0 && v < 256)
    put1(b, 'K'), put1(b, (unsigned)v);
  else
    put1(b, 'J'), put_le(b, (uint64_t)v, 4);
}
static void pk_global(bytes *b, const char *module, const char *name) {
  put1(b, 'c');
  put(b, module, strlen(module));
  put1(b, '\n');
  put(b, name, strlen(name));
  put1(b, '\n');
}
/* _rebuild_tensor_v2(storage '<key>' of `numel` floats, offset 0, shape, contiguous stride, requires_grad, OrderedDict()) */
static void pk_tensor(bytes *b, const char *key, int ndim, const int64_t *shape, int64_t numel) {
  pk_global(b, "torch._utils", "_rebuild_tensor_v2");
  put1(b, '(');
  put1(b, '(');
  pk_str(b, "storage");
  pk_global(b, "torch", "FloatStorage");
  pk_str(b, key);
  pk_str(b, "cpu");
  pk_int(b, numel);
  put1(b, 't');
  put1(b, 'Q'); /* BINPERSID */
  pk_int(b, 0);
  put1(b, '(');
  for (int i = 0; i < ndim; i++) pk_int(b, shape[i]);
  put1(b, 't');
  put1(b, '(');
  for (int i = 0; i < ndim; i++) {
    int64_t s = 1;
    for (int k = i + 1; k < ndim; k++) s *= shape[k];
    pk_int(b, s);
  }
  put1(b, 't');
  put1(b, 0x88); /* NEWTRUE: A1111 saves the trained vector with requires_grad */
  pk_global(b, "collections", "OrderedDict");
  put1(b, ')');
  put1(b, 'R');
  put1(b, 't');
  put1(b, 'R');
}

static void zip_entry_out(bytes *file, bytes *cd, const char *name, const void *data, size_t size) {
  uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), data, (uInt)size);
  size_t nlen = strlen(name), offset = file->n;
  put_le(file, 0x04034b50, 4), put_le(file, 20, 2), put_le(file, 0, 2), put_le(file, 0, 2), put_le(file, 0, 4);
  put_le(file, crc, 4), put_le(file, size, 4), put_le(file, size, 4), put_le(file, nlen, 2), put_le(file, 0, 2);
  put(file, name, nlen);
  put(file, data, size);
  put_le(cd, 0x02014b50, 4), put_le(cd, 20, 2), put_le(cd, 20, 2), put_le(cd, 0, 2), put_le(cd, 0, 2), put_le(cd, 0, 4);
  put_le(cd, crc, 4), put_le(cd, size, 4), put_le(cd, size, 4), put_le(cd, nlen, 2), put_le(cd, 0, 2), put_le(cd, 0, 2);
  put_le(cd, 0, 2), put_le(cd, 0, 2), put_le(cd, 0, 4), put_le(cd, offset, 4);
  put(cd, name, nlen);
}

/* <stem>/data.pkl, <stem>/data/0 (the floats), <stem>/version, as torch.save names them. */
static void write_torch_zip(const char *path, const bytes *pkl, const float *storage, size_t numel) {
  bytes file = {0}, cd = {0};
  zip_entry_out(&file, &cd, "emb/data.pkl", pkl->p, pkl->n);
  zip_entry_out(&file, &cd, "emb/data/0", storage, numel * sizeof(float));
  zip_entry_out(&file, &cd, "emb/version", "3\n", 2);
  size_t cd_off = file.n, cd_size = cd.n;
  put(&file, cd.p, cd.n);
  put_le(&file, 0x06054b50, 4), put_le(&file, 0, 2), put_le(&file, 0, 2), put_le(&file, 3, 2), put_le(&file, 3, 2);
  put_le(&file, cd_size, 4), put_le(&file, cd_off, 4), put_le(&file, 0, 2);
  test_write_file(path, file.p, file.n);
  free(file.p);
  free(cd.p);
}

/* What AUTOMATIC1111's Embedding.save writes: {"string_to_token": {"*": 265}, "string_to_param": {"*": vec},
 * "name": ..., "step": ..., "sd_checkpoint": ..., "sd_checkpoint_name": ...}. n_terms > 1 puts more
 * tensors (all viewing the same storage) under string_to_param. */
static void write_a1111_pt(const char *path, int n, int hidden, const float *v, int n_terms) {
  int64_t shape[2] = {n, hidden};
  bytes b = {0};
  put1(&b, 0x80), put1(&b, 2); /* PROTO 2 */
  put1(&b, '}');
  put1(&b, '(');
  pk_str(&b, "string_to_token");
  put1(&b, '}');
  pk_str(&b, "*");
  pk_int(&b, 265);
  put1(&b, 's');
  pk_str(&b, "string_to_param");
  put1(&b, '}');
  for (int t = 0; t < n_terms; t++) {
    pk_str(&b, t == 0 ? "*" : "#");
    pk_tensor(&b, "0", 2, shape, (int64_t)n * hidden);
    put1(&b, 's');
  }
  pk_str(&b, "name");
  pk_str(&b, "badhand");
  pk_str(&b, "step");
  pk_int(&b, 1500);
  pk_str(&b, "sd_checkpoint");
  pk_str(&b, "cafe1234");
  pk_str(&b, "sd_checkpoint_name");
  put1(&b, 'N'); /* None */
  put1(&b, 'u');
  put1(&b, '.');
  write_torch_zip(path, &b, v, (size_t)n * (size_t)hidden);
  free(b.p);
}

static void write_ckpt_f32(const char *path, const char *tname, int n, int hidden, const float *v) {
  int64_t shape[2] = {n, hidden};
  mp_tensor t;
  if (n == 0)
    mp_tensor_view(&t, MP_F32, 1, shape + 1, (void *)v);
  else
    mp_tensor_view(&t, MP_F32, 2, shape, (void *)v);
  assert_ok(mp_ckpt_write(path, 1, &tname, &t, false));
}

static void expect_vectors(const mp_embedding *e, int n, int hidden, const float *v) {
  assert_int_equal(e->n_vectors, n);
  assert_int_equal(e->hidden, hidden);
  assert_memory_equal(e->vectors, v, (size_t)n * (size_t)hidden * sizeof(float));
}

/* ---- formats ------------------------------------------------------------------------------------ */

static void test_a1111_safetensors(void **state) {
  fixture *f = *state;
  float v[3 * 32];
  fill(v, 3 * 32, 0.1);
  char *p = path_in(f->tmp, "a1111.safetensors");
  write_st_f32(p, "emb_params", 3, 32, v);
  mp_embedding e;
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 3, 32, v);
  mp_embedding_free(&e);
  /* half precision is widened exactly */
  uint16_t h[3 * 32];
  float back[3 * 32];
  for (int i = 0; i < 3 * 32; i++) h[i] = mp_f32_to_f16(v[i]), back[i] = mp_f16_to_f32(h[i]);
  int64_t shape[2] = {3, 32};
  write_st(p, "emb_params", MP_F16, 2, shape, h);
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 3, 32, back);
  mp_embedding_free(&e);
  free(p);
}

static void test_diffusers_forms(void **state) {
  fixture *f = *state;
  float v[2 * 32];
  fill(v, 2 * 32, 0.7);
  mp_embedding e;
  /* learned_embeds.safetensors with one [hidden] vector under its token */
  char *p = path_in(f->tmp, "learned_embeds.safetensors");
  write_st_f32(p, "<cat-toy>", 0, 32, v);
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 1, 32, v);
  mp_embedding_free(&e);
  free(p);
  /* learned_embeds.bin (torch.save of {"<cat-toy>": tensor[hidden]}) and a [n, hidden] one */
  p = path_in(f->tmp, "learned_embeds.bin");
  write_ckpt_f32(p, "<cat-toy>", 0, 32, v);
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 1, 32, v);
  mp_embedding_free(&e);
  write_ckpt_f32(p, "<cat-toy>", 2, 32, v);
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 2, 32, v);
  mp_embedding_free(&e);
  free(p);
}

static void test_a1111_pt(void **state) {
  fixture *f = *state;
  float v[4 * 32];
  fill(v, 4 * 32, 1.3);
  mp_embedding e;
  char *p = path_in(f->tmp, "a1111.pt");
  write_a1111_pt(p, 4, 32, v, 1);
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 4, 32, v);
  mp_embedding_free(&e);
  /* an older plain {token: tensor} .pt */
  write_ckpt_f32(p, "*", 4, 32, v);
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  expect_vectors(&e, 4, 32, v);
  mp_embedding_free(&e);
  /* two terms in string_to_param: A1111 refuses it too */
  write_a1111_pt(p, 4, 32, v, 2);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "exactly one");
  free(p);
}

/* ---- errors ------------------------------------------------------------------------------------- */

static void test_wrong_width(void **state) {
  fixture *f = *state;
  float v[2 * 64];
  fill(v, 2 * 64, 0);
  char *p = path_in(f->tmp, "wide.safetensors");
  write_st_f32(p, "emb_params", 2, 64, v);
  mp_embedding e;
  mp_error *err = mp_embedding_read(p, f->text.D, &e);
  assert_non_null(err);
  const char *m = mp_error_message(err);
  assert_non_null(strstr(m, p));
  assert_non_null(strstr(m, "width is 64"));
  assert_non_null(strstr(m, "text encoder's is 32"));
  mp_error_free(err);
  /* the same for a .pt, and a real-world case: an SD 2.x embedding on SD 1.x */
  write_a1111_pt(p, 2, 64, v, 1);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "width is 64");
  float *w = calloc(1024, sizeof *w);
  write_st_f32(p, "emb_params", 1, 1024, w);
  assert_err_contains(mp_embedding_read(p, 768, &e), "1024 is SD 2.x");
  free(w);
  /* 0 accepts any width */
  assert_ok(mp_embedding_read(p, 0, &e));
  assert_int_equal(e.hidden, 1024);
  mp_embedding_free(&e);
  free(p);
}

static void test_bad_contents(void **state) {
  fixture *f = *state;
  float v[76 * 32];
  fill(v, 76 * 32, 0.2);
  char *p = path_in(f->tmp, "bad.safetensors");
  mp_embedding e;
  /* not a checkpoint at all, truncated, empty */
  test_write_file(p, "this is not an embedding at all", 31);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), p);
  write_st_f32(p, "emb_params", 2, 32, v);
  struct stat st;
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(truncate(p, st.st_size - 9), 0);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), p);
  test_write_file(p, "", 0);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), p);
  char *missing = path_in(f->tmp, "nope.safetensors");
  assert_err_contains(mp_embedding_read(missing, f->text.D, &e), missing);
  free(missing);
  /* wrong shapes and types */
  write_st_f32(p, "emb_params", 76, 32, v);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "76 vectors, expected 1..75");
  int64_t s3[3] = {1, 2, 32};
  write_st(p, "emb_params", MP_F32, 3, s3, v);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "expected [hidden] or [vectors, hidden]");
  int64_t s0[2] = {0, 32};
  write_st(p, "emb_params", MP_F32, 2, s0, v);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "0 vectors");
  int32_t ints[32] = {0};
  int64_t s1[1] = {32};
  write_st(p, "emb_params", MP_I32, 1, s1, ints);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "must be floating point");
  /* a NaN is corruption, not an embedding */
  float nan_v[32];
  fill(nan_v, 32, 0);
  nan_v[5] = NAN;
  write_st_f32(p, "emb_params", 1, 32, nan_v);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "non-finite value (vector 0, element 5)");
  /* several tensors: which one is meant is unknowable; SDXL pairs are named and read as a pair */
  mp_tensor ts[2];
  int64_t sh[2] = {1, 32};
  mp_tensor_view(&ts[0], MP_F32, 2, sh, v);
  mp_tensor_view(&ts[1], MP_F32, 2, sh, v + 32);
  const char *two[2] = {"a", "b"}, *sdxl[2] = {"clip_g", "clip_l"};
  assert_ok(mp_safetensors_write(p, 2, two, ts, NULL));
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "holds 2 tensors ('a', 'b')");
  assert_ok(mp_safetensors_write(p, 2, sdxl, ts, NULL));
  assert_ok(mp_embedding_read(p, f->text.D, &e));
  assert_int_equal(e.n_vectors, 1);
  assert_int_equal(e.hidden, 32);
  assert_int_equal(e.hidden2, 32);
  assert_memory_equal(e.vectors, v + 32, 32 * sizeof *v); /* clip_l is the second tensor written */
  assert_memory_equal(e.vectors2, v, 32 * sizeof *v);
  mp_embedding_free(&e);
  /* on an SD 1.x model an SDXL pair is a family error naming both widths */
  mp_ti_set set = {0};
  assert_ok(mp_embedding_load_file(p, "mpassxl", f->text.D, &set));
  mp_conditioning c;
  mp_error *err = mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "a mpassxl cat", "", &set, NULL, &c);
  assert_err_contains(err, "'mpassxl' is an SDXL embedding (clip_l 32 + clip_g 32 wide); this SD 1.x model");
  mp_ti_set_free(&set);
  /* clip_l and clip_g with different vector counts */
  int64_t sh2[2] = {2, 16};
  mp_tensor_view(&ts[0], MP_F32, 2, sh2, v);
  assert_ok(mp_safetensors_write(p, 2, sdxl, ts, NULL));
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "1 clip_l vectors but 2 clip_g vectors");
  free(p);
}

static void test_hostile_pt(void **state) {
  fixture *f = *state;
  float v[32];
  fill(v, 32, 0);
  char *p = path_in(f->tmp, "evil.pt");
  mp_embedding e;
  /* a pickle that would run a command when loaded with Python */
  bytes b = {0};
  put1(&b, 0x80), put1(&b, 2);
  pk_global(&b, "os", "system");
  pk_str(&b, "touch /tmp/mpass-pwned");
  put1(&b, 0x85); /* TUPLE1 */
  put1(&b, 'R');
  put1(&b, '.');
  write_torch_zip(p, &b, v, 32);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "refusing to load global 'os.system'");
  /* the original textual_inversion repo pickled a ParameterDict module: refused, with what to do */
  b.n = 0;
  put1(&b, 0x80), put1(&b, 2);
  put1(&b, '}');
  pk_str(&b, "string_to_param");
  pk_global(&b, "torch.nn.modules.container", "ParameterDict");
  put1(&b, ')');
  put1(&b, 0x81); /* NEWOBJ */
  put1(&b, '}');
  put1(&b, 'b'); /* BUILD */
  put1(&b, 's');
  put1(&b, '.');
  write_torch_zip(p, &b, v, 32);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), "re-save its tensor as .safetensors");
  /* a .pt whose pickle ends early */
  b.n = 0;
  put1(&b, 0x80), put1(&b, 2);
  put1(&b, '}');
  put1(&b, '(');
  pk_str(&b, "string_to_param");
  write_torch_zip(p, &b, v, 32);
  assert_err_contains(mp_embedding_read(p, f->text.D, &e), p);
  /* every truncation of a valid .pt is an error naming the file, never a crash */
  write_a1111_pt(p, 1, 32, v, 1);
  FILE *fp = fopen(p, "rb");
  unsigned char whole[4096];
  size_t n = fread(whole, 1, sizeof whole, fp);
  fclose(fp);
  assert_true(n > 100 && n < sizeof whole);
  for (size_t cut = 0; cut < n; cut += 7) {
    test_write_file(p, whole, cut);
    assert_err_contains(mp_embedding_read(p, f->text.D, &e), p);
  }
  free(b.p);
  free(p);
}

/* ---- the ckpt reader's nested dicts (the small change made for embeddings) ---------------------- */

static void pk_memo_put(bytes *b, unsigned idx) { put1(b, 'r'), put_le(b, idx, 4); }  /* LONG_BINPUT */
static void pk_memo_get(bytes *b, unsigned idx) { put1(b, 'j'), put_le(b, idx, 4); }  /* LONG_BINGET */

static mp_error *open_pickle(const char *path, bytes *b, mp_weights **w) {
  float v[32];
  fill(v, 32, 0);
  write_torch_zip(path, b, v, 32);
  b->n = 0;
  return mp_weights_open(path, w);
}

static void test_ckpt_nested_dicts(void **state) {
  fixture *f = *state;
  char *p = path_in(f->tmp, "nested.pt");
  int64_t shape[1] = {32};
  bytes b = {0};
  mp_weights *w = NULL;
  /* a top-level tensor: nested ones are not looked at (state dicts read as before) */
  put1(&b, 0x80), put1(&b, 2), put1(&b, '}'), put1(&b, '(');
  pk_str(&b, "a");
  pk_tensor(&b, "0", 1, shape, 32);
  pk_str(&b, "meta");
  put1(&b, '}');
  pk_str(&b, "b");
  pk_tensor(&b, "0", 1, shape, 32);
  put1(&b, 's');
  put1(&b, 'u'), put1(&b, '.');
  assert_ok(open_pickle(p, &b, &w));
  assert_int_equal(mp_weights_count(w), 1);
  assert_string_equal(mp_weights_at(w, 0)->name, "a");
  mp_weights_close(w);
  /* none at the top: found 4 keys deep as "a.b.c.d", not 5 deep */
  for (int depth = 4; depth <= 5; depth++) {
    put1(&b, 0x80), put1(&b, 2);
    for (int i = 0; i < depth; i++) {
      put1(&b, '}');
      char k[2] = {(char)('a' + i), 0};
      pk_str(&b, k);
    }
    pk_tensor(&b, "0", 1, shape, 32);
    for (int i = 0; i < depth; i++) put1(&b, 's');
    put1(&b, '.');
    if (depth == 4) {
      assert_ok(open_pickle(p, &b, &w));
      assert_int_equal(mp_weights_count(w), 1);
      assert_string_equal(mp_weights_at(w, 0)->name, "a.b.c.d");
      mp_weights_close(w);
    } else {
      assert_err_contains(open_pickle(p, &b, &w), "no tensors");
    }
  }
  /* one dict referenced a thousand times from a thousand entries (the memo allows it): a bounded
   * refusal instead of a billion tensor names */
  put1(&b, 0x80), put1(&b, 2);
  put1(&b, '}'), pk_memo_put(&b, 0), pk_str(&b, "t"), pk_tensor(&b, "0", 1, shape, 32), put1(&b, 's'); /* D0 = {"t": x} */
  for (unsigned level = 1; level <= 2; level++) {
    put1(&b, '}'), pk_memo_put(&b, level), put1(&b, '(');
    for (int i = 0; i < 1000; i++) {
      char k[16];
      snprintf(k, sizeof k, "k%d", i);
      pk_str(&b, k);
      pk_memo_get(&b, level - 1);
    }
    put1(&b, 'u');
  }
  put1(&b, '0'); /* POP the top dict and make a new top-level one holding it */
  put1(&b, '}'), pk_str(&b, "x"), pk_memo_get(&b, 2), put1(&b, 's'), put1(&b, '.');
  assert_err_contains(open_pickle(p, &b, &w), "nested dicts hold over");
  free(b.p);
  free(p);
}

/* ---- finding by name ---------------------------------------------------------------------------- */

static void test_find_by_name(void **state) {
  fixture *f = *state;
  float v[32];
  fill(v, 32, 0.4);
  char *dir = path_in(f->tmp, "embeddings"), *sub = path_in(dir, "negative");
  assert_int_equal(mkdir(dir, 0755), 0);
  assert_int_equal(mkdir(sub, 0755), 0);
  char *st = path_in(dir, "badhandv4.safetensors"), *pt = path_in(dir, "badhandv4.pt"), *bin = path_in(dir, "only_bin.bin");
  char *nested = path_in(sub, "EasyNegative.safetensors");
  write_st_f32(st, "emb_params", 1, 32, v);
  write_a1111_pt(pt, 1, 32, v, 1);
  write_ckpt_f32(bin, "<x>", 0, 32, v);
  write_st_f32(nested, "emb_params", 1, 32, v);
  char *found = NULL;
  /* .safetensors before .pt before .bin */
  assert_ok(mp_embedding_find(dir, "badhandv4", &found));
  assert_string_equal(found, st);
  free(found);
  assert_int_equal(remove(st), 0);
  assert_ok(mp_embedding_find(dir, "badhandv4", &found));
  assert_string_equal(found, pt);
  free(found);
  assert_ok(mp_embedding_find(dir, "only_bin", &found));
  assert_string_equal(found, bin);
  free(found);
  /* subfolders and any letter case, as A1111 (which scans the folder and matches tokenized names) */
  assert_ok(mp_embedding_find(dir, "easynegative", &found));
  assert_string_equal(found, nested);
  free(found);
  /* not a plain name */
  assert_err_contains(mp_embedding_find(dir, "../badhandv4", &found), "not a plain file name");
  assert_err_contains(mp_embedding_find(dir, "negative/EasyNegative", &found), "not a plain file name");
  assert_err_contains(mp_embedding_find(dir, "", &found), "empty");
  assert_null(found);
  free(st), free(pt), free(bin), free(nested), free(sub), free(dir);
}

static void test_missing_names_every_path(void **state) {
  fixture *f = *state;
  char *dir = path_in(f->tmp, "emb-missing");
  assert_int_equal(mkdir(dir, 0755), 0);
  char *found = NULL;
  mp_error *e = mp_embedding_find(dir, "cyberrealistic-neg", &found);
  assert_non_null(e);
  const char *ext[] = {".safetensors", ".pt", ".bin"};
  for (int i = 0; i < 3; i++) {
    char file[256];
    snprintf(file, sizeof file, "%s/cyberrealistic-neg%s", dir, ext[i]);
    if (!strstr(mp_error_message(e), file)) fail_msg("'%s' does not name %s", mp_error_message(e), file);
  }
  assert_non_null(strstr(mp_error_message(e), "any letter case"));
  mp_error_free(e);
  /* a folder that does not exist is said so */
  char *gone = path_in(f->tmp, "no-such-folder");
  assert_err_contains(mp_embedding_find(gone, "x", &found), "does not exist");
  /* loading a job's list reports every failure at once; what loaded stays */
  float v[32];
  fill(v, 32, 0);
  char *ok = path_in(dir, "present.safetensors"), *wide = path_in(dir, "wide.safetensors");
  write_st_f32(ok, "emb_params", 1, 32, v);
  float w[64] = {0};
  write_st_f32(wide, "emb_params", 1, 64, w);
  char *names[] = {"absent1", "present", "wide", "absent2"};
  mp_ti_set set = {0};
  e = mp_embeddings_load(dir, names, 4, f->text.D, &set);
  assert_non_null(e);
  const char *m = mp_error_message(e);
  assert_non_null(strstr(m, "3 of 4 embeddings could not be loaded"));
  assert_non_null(strstr(m, "absent1.safetensors"));
  assert_non_null(strstr(m, "absent2.bin"));
  assert_non_null(strstr(m, "embedding 'wide'"));
  assert_non_null(strstr(m, "width is 64"));
  mp_error_free(e);
  assert_int_equal(set.n, 1);
  assert_string_equal(set.items[0].name, "present");
  mp_ti_set_free(&set);
  free(ok), free(wide), free(gone), free(dir);
}

/* ---- end to end: a file conditions exactly like its vectors placed by hand ----------------------- */

static void expect_same_conditioning(fixture *f, const mp_ti_set *a, const mp_ti_set *b, const char *prompt, int chunks) {
  mp_cond_options o = mp_cond_options_default();
  mp_conditioning ca, cb;
  assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, prompt, "mpassneg", a, &o, &ca));
  assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, prompt, "mpassneg", b, &o, &cb));
  assert_int_equal(ca.n_chunks, chunks);
  assert_int_equal(cb.n_chunks, chunks);
  size_t bytes_ = mp_tensor_nbytes(&ca.cond);
  assert_int_equal(bytes_, mp_tensor_nbytes(&cb.cond));
  assert_memory_equal(ca.cond.data, cb.cond.data, bytes_);
  assert_memory_equal(ca.uncond.data, cb.uncond.data, bytes_);
  mp_conditioning_free(&ca);
  mp_conditioning_free(&cb);
}

static void test_file_conditions_like_hand_placed(void **state) {
  fixture *f = *state;
  const size_t T = MP_CLIP_MAX_LENGTH, D = (size_t)f->text.D;
  float v3[3 * 32], vn[32];
  fill(v3, 3 * 32, 2.1);
  fill(vn, 32, -0.6);
  char *dir = path_in(f->tmp, "e2e");
  assert_int_equal(mkdir(dir, 0755), 0);
  char *p3 = path_in(dir, "mpassemb.pt"), *pn = path_in(dir, "mpassneg.safetensors");
  write_a1111_pt(p3, 3, 32, v3, 1);
  write_st_f32(pn, "emb_params", 1, 32, vn);
  char *names[] = {"mpassemb", "mpassneg"};
  mp_ti_set from_file = {0}, by_hand = {0};
  assert_ok(mp_embeddings_load(dir, names, 2, f->text.D, &from_file));
  assert_ok(mp_ti_set_add(&by_hand, "mpassemb", v3, 3, 32));
  assert_ok(mp_ti_set_add(&by_hand, "mpassneg", vn, 1, 32));

  /* the short prompt against the vectors written over the token embeddings by hand */
  mp_cond_options o = mp_cond_options_default();
  mp_conditioning c;
  assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "a mpassemb cat", "", &from_file, &o, &c));
  int32_t ids[MP_CLIP_MAX_LENGTH];
  assert_ok(mp_tokenize_padded(f->text.tok, "a x x x cat", ids, NULL));
  float *emb = mp_alloc(T * D * sizeof(float)), *z = mp_alloc(T * D * sizeof(float));
  assert_ok(mp_clip_embed_tokens(f->text.clip, ids, (int)T, emb));
  memcpy(emb + 2 * D, v3, 3 * D * sizeof(float)); /* after BOS and "a" */
  assert_ok(mp_clip_encode_embeds(f->text.clip, NULL, emb, (int)T, f->text.cfg.clip.layers, true, z));
  assert_memory_equal(c.cond.data, z, T * D * sizeof(float));
  mp_free(emb);
  mp_free(z);
  mp_conditioning_free(&c);

  /* equal to the hand-made set everywhere, including where the 3 vectors would straddle a chunk end
   * (73 words + 3 vectors > 75: they move whole to chunk 2) and in the negative */
  expect_same_conditioning(f, &from_file, &by_hand, "a mpassemb cat", 1);
  char *long_prompt = malloc(73 * 4 + 64);
  long_prompt[0] = 0;
  for (int i = 0; i < 73; i++) strcat(long_prompt, "cat ");
  strcat(long_prompt, "mpassemb dog");
  expect_same_conditioning(f, &from_file, &by_hand, long_prompt, 2);
  free(long_prompt);
  mp_ti_set_free(&from_file);
  mp_ti_set_free(&by_hand);
  free(p3), free(pn), free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a1111_safetensors),
      cmocka_unit_test(test_diffusers_forms),
      cmocka_unit_test(test_a1111_pt),
      cmocka_unit_test(test_wrong_width),
      cmocka_unit_test(test_bad_contents),
      cmocka_unit_test(test_hostile_pt),
      cmocka_unit_test(test_ckpt_nested_dicts),
      cmocka_unit_test(test_find_by_name),
      cmocka_unit_test(test_missing_names_every_path),
      cmocka_unit_test(test_file_conditions_like_hand_placed),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
