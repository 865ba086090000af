/* PyTorch zip checkpoints: the reader against torch's byte layout, a round trip of the tiny golden model
 * through the writer, and hostile files that must fail with a clear error (and no crash or leak under
 * ASan). Zips and pickles here are built by hand, independently of mp_ckpt_write. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "io/ckpt.h"
#include "io/weights.h"
#include "testutil.h"

/* ---- a growable byte buffer ---- */
typedef struct {
  unsigned char *p;
  size_t n, cap;
} bytes;

static void b_put(bytes *b, const void *d, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    assert_non_null(b->p);
  }
  if (n) memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void b_str(bytes *b, const char *s) { b_put(b, s, strlen(s)); }
static void b_u8(bytes *b, unsigned v) {
  unsigned char c = (unsigned char)v;
  b_put(b, &c, 1);
}
static void b_le(bytes *b, uint64_t v, int k) {
  for (int i = 0; i < k; i++) b_u8(b, (unsigned)(v >> (8 * i)) & 0xff);
}

/* ---- a minimal zip writer, separate from the library's ---- */
typedef struct {
  const char *name;
  const void *data;
  size_t size;
  int deflate;
} zentry;

/* zip64: as torch writes files over 4 GiB (every SD 1.x full checkpoint): saturated 32-bit fields in
 * the central directory with the real values in a zip64 extra field, a zip64 end record and locator. */
static bytes make_zip_ex(const zentry *e, size_t n, int zip64) {
  bytes z = {0}, cd = {0};
  for (size_t i = 0; i < n; i++) {
    const unsigned char *data = e[i].data;
    size_t csize = e[i].size;
    unsigned char *packed = NULL;
    if (e[i].deflate) {
      z_stream s = {0};
      assert_int_equal(deflateInit2(&s, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
      uLong bound = deflateBound(&s, (uLong)e[i].size);
      packed = malloc(bound);
      s.next_in = (Bytef *)(uintptr_t)data, s.avail_in = (uInt)e[i].size;
      s.next_out = packed, s.avail_out = (uInt)bound;
      assert_int_equal(deflate(&s, Z_FINISH), Z_STREAM_END);
      csize = s.total_out;
      deflateEnd(&s);
      data = packed;
    }
    uint32_t crc = (uint32_t)crc32(0, e[i].data, (uInt)e[i].size);
    size_t off = z.n, nlen = strlen(e[i].name);
    b_le(&z, 0x04034b50, 4), b_le(&z, 20, 2), b_le(&z, 0, 2), b_le(&z, e[i].deflate ? 8 : 0, 2), b_le(&z, 0, 4);
    b_le(&z, crc, 4), b_le(&z, csize, 4), b_le(&z, e[i].size, 4), b_le(&z, nlen, 2), b_le(&z, 0, 2);
    b_put(&z, e[i].name, nlen);
    b_put(&z, data, csize);
    b_le(&cd, 0x02014b50, 4), b_le(&cd, 20, 2), b_le(&cd, 20, 2), b_le(&cd, 0, 2), b_le(&cd, e[i].deflate ? 8 : 0, 2);
    uint32_t sat = 0xffffffffu;
    b_le(&cd, 0, 4), b_le(&cd, crc, 4), b_le(&cd, zip64 ? sat : csize, 4), b_le(&cd, zip64 ? sat : e[i].size, 4), b_le(&cd, nlen, 2);
    b_le(&cd, zip64 ? 28 : 0, 2), b_le(&cd, 0, 2), b_le(&cd, 0, 2), b_le(&cd, 0, 2), b_le(&cd, 0, 4), b_le(&cd, zip64 ? sat : off, 4);
    b_put(&cd, e[i].name, nlen);
    if (zip64) b_le(&cd, 0x0001, 2), b_le(&cd, 24, 2), b_le(&cd, e[i].size, 8), b_le(&cd, csize, 8), b_le(&cd, off, 8);
    free(packed);
  }
  size_t cd_off = z.n;
  b_put(&z, cd.p, cd.n);
  if (zip64) {
    size_t rec = z.n;
    b_le(&z, 0x06064b50, 4), b_le(&z, 44, 8), b_le(&z, 45, 2), b_le(&z, 45, 2), b_le(&z, 0, 4), b_le(&z, 0, 4);
    b_le(&z, n, 8), b_le(&z, n, 8), b_le(&z, cd.n, 8), b_le(&z, cd_off, 8);
    b_le(&z, 0x07064b50, 4), b_le(&z, 0, 4), b_le(&z, rec, 8), b_le(&z, 1, 4);
    b_le(&z, 0x06054b50, 4), b_le(&z, 0, 4), b_le(&z, 0xffff, 2), b_le(&z, 0xffff, 2), b_le(&z, 0xffffffffu, 4),
        b_le(&z, 0xffffffffu, 4), b_le(&z, 0, 2);
  } else {
    b_le(&z, 0x06054b50, 4), b_le(&z, 0, 4), b_le(&z, n, 2), b_le(&z, n, 2), b_le(&z, cd.n, 4), b_le(&z, cd_off, 4), b_le(&z, 0, 2);
  }
  free(cd.p);
  return z;
}
static bytes make_zip(const zentry *e, size_t n) { return make_zip_ex(e, n, 0); }

static mp_error *parse_mem(const bytes *z) {
  mp_weights *w = mp_weights_new("mem.ckpt");
  assert_non_null(w);
  mp_error *e = mp_ckpt_parse("mem.ckpt", z->p, z->n, w);
  mp_weights_close(w);
  return e;
}

/* A checkpoint whose data.pkl is `pkl` and whose storages are "0" (6 f32) and "1" (4 f16). */
static bytes ckpt_with(const void *pkl, size_t n) {
  static const float s0[6] = {1, 2, 3, 4, 5, 6};
  static const uint16_t s1[4] = {0x3c00, 0x4000, 0x4200, 0x4400};
  zentry e[] = {{"archive/data.pkl", pkl, n, 0},
                {"archive/data/0", s0, sizeof s0, 0},
                {"archive/data/1", s1, sizeof s1, 0},
                {"archive/version", "3\n", 2, 0}};
  return make_zip(e, 4);
}

/* ---- hand-written pickle pieces, in the order torch.save emits them ---- */
static void pk_unicode(bytes *b, const char *s) {
  b_u8(b, 'X');
  b_le(b, strlen(s), 4);
  b_str(b, s);
}
static void pk_int(bytes *b, int64_t v) {
  b_u8(b, 0x8a), b_u8(b, 8), b_le(b, (uint64_t)v, 8); /* LONG1, 8 bytes: covers every value */
}
/* key -> _rebuild_tensor_v2(('storage', torch.<cls>, skey, 'cpu', numel), offset, size, stride, False, OrderedDict()) */
static void pk_tensor_item(bytes *b, const char *key, const char *cls, const char *skey, int64_t numel, int64_t offset, int ndim,
                           const int64_t *size, const int64_t *stride) {
  pk_unicode(b, key);
  b_str(b, "ctorch._utils\n_rebuild_tensor_v2\n(");
  b_str(b, "(");
  pk_unicode(b, "storage");
  b_str(b, "ctorch\n"), b_str(b, cls), b_str(b, "\n");
  pk_unicode(b, skey);
  pk_unicode(b, "cpu");
  pk_int(b, numel);
  b_str(b, "tQ");
  pk_int(b, offset);
  b_str(b, "(");
  for (int i = 0; i < ndim; i++) pk_int(b, size[i]);
  b_str(b, "t(");
  for (int i = 0; i < ndim; i++) pk_int(b, stride[i]);
  b_str(b, "t\x89" "ccollections\nOrderedDict\n)R");
  b_str(b, "tR");
}
static bytes pk_one_tensor(const char *key, const char *cls, const char *skey, int64_t numel, int64_t offset, int ndim,
                           const int64_t *size, const int64_t *stride) {
  bytes b = {0};
  b_str(&b, "\x80\x02}");
  pk_tensor_item(&b, key, cls, skey, numel, offset, ndim, size, stride);
  b_str(&b, "s.");
  return b;
}

static void expect_pickle_error(const void *pkl, size_t n, const char *needle) {
  bytes z = ckpt_with(pkl, n);
  assert_err_contains(parse_mem(&z), needle);
  free(z.p);
}
#define EXPECT_PKL_ERR(lit, needle) expect_pickle_error(lit, sizeof lit - 1, needle)

/* ---- torch's real byte layout ---- */

/* data.pkl for a Lightning-style checkpoint, from CPython's pickler configured exactly as torch.save
 * (tests/io/torchlike_pickle.py): {'epoch', 'global_step', 'pytorch-lightning_version',
 * 'state_dict': OrderedDict(w f32[2,3] @ storage 0, b f16[4] @ storage 1, w_t f32[3] @ storage 0 offset 3,
 * big i64[1] @ storage 2) with _metadata restored by BUILD, 'callbacks': {ModelCheckpoint: {numpy scalar
 * via _codecs.encode, ...}}, 'lr': float}. */
static const unsigned char torch_like_pkl[] = {
    /* 832 bytes from tests/io/torchlike_pickle.py */
#include "torchlike_pickle.inc"
};

static void test_reads_torch_layout(void **state) {
  (void)state;
  const float s0[6] = {1, 2, 3, 4, 5, 6};
  const uint16_t s1[4] = {0x3c00, 0x4000, 0x4200, 0x4400};
  const int64_t s2[1] = {-5};
  for (int variant = 0; variant < 3; variant++) {
    int deflate = variant == 1, zip64 = variant == 2;
    zentry e[] = {{"sd-v1-x/data.pkl", torch_like_pkl, sizeof torch_like_pkl, deflate},
                  {"sd-v1-x/byteorder", "little", 6, deflate},
                  {"sd-v1-x/data/0", s0, sizeof s0, deflate},
                  {"sd-v1-x/data/1", s1, sizeof s1, deflate},
                  {"sd-v1-x/data/2", s2, sizeof s2, deflate},
                  {"sd-v1-x/version", "3\n", 2, deflate}};
    bytes z = make_zip_ex(e, 6, zip64);
    char *dir = test_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/x.ckpt", dir);
    test_write_file(path, z.p, z.n);
    mp_weights *w;
    assert_ok(mp_weights_open(path, &w));
    assert_int_equal(mp_weights_count(w), 4);
    const mp_weight *t = mp_weights_find(w, "w");
    assert_non_null(t);
    assert_int_equal(t->t.dtype, MP_F32);
    assert_int_equal(t->t.ndim, 2);
    assert_int_equal(t->t.shape[0], 2);
    assert_int_equal(t->t.shape[1], 3);
    assert_memory_equal(t->t.data, s0, sizeof s0);
    t = mp_weights_find(w, "w_t"); /* a view sharing storage 0 from element 3 */
    assert_non_null(t);
    assert_int_equal(t->t.ndim, 1);
    assert_int_equal(t->t.shape[0], 3);
    assert_memory_equal(t->t.data, s0 + 3, 3 * sizeof(float));
    t = mp_weights_find(w, "b");
    assert_non_null(t);
    assert_int_equal(t->t.dtype, MP_F16);
    assert_memory_equal(t->t.data, s1, sizeof s1);
    t = mp_weights_find(w, "big");
    assert_non_null(t);
    assert_int_equal(t->t.dtype, MP_I64);
    assert_true(((const int64_t *)t->t.data)[0] == -5);
    assert_null(mp_weights_find(w, "epoch"));
    mp_weights_close(w);
    remove(path);
    rmdir(dir);
    free(dir);
    free(z.p);
  }
}

/* A plain (not nested) dict of tensors, hand-written, with BINGET reuse of a storage tuple. */
static void test_reads_plain_dict(void **state) {
  (void)state;
  bytes b = {0};
  b_put(&b, "\x80\x02}q\x00(", 6);
  pk_tensor_item(&b, "a", "FloatStorage", "0", 6, 0, 2, (int64_t[]){3, 2}, (int64_t[]){2, 1});
  pk_tensor_item(&b, "h", "HalfStorage", "1", 4, 2, 2, (int64_t[]){1, 2}, (int64_t[]){7, 1}); /* size-1 dim: any stride */
  pk_tensor_item(&b, "e", "FloatStorage", "0", 6, 6, 1, (int64_t[]){0}, (int64_t[]){1});     /* empty, at the end */
  b_str(&b, "u.");
  bytes z = ckpt_with(b.p, b.n);
  mp_weights *w = mp_weights_new("mem.ckpt");
  assert_ok(mp_ckpt_parse("mem.ckpt", z.p, z.n, w));
  assert_int_equal(mp_weights_count(w), 3);
  const mp_weight *h = mp_weights_find(w, "h");
  assert_non_null(h);
  assert_int_equal(((const uint16_t *)h->t.data)[0], 0x4200);
  assert_int_equal(mp_weights_find(w, "e")->t.shape[0], 0);
  assert_true(((const float *)mp_weights_find(w, "a")->t.data)[5] == 6.0f);
  mp_weights_close(w);
  free(z.p);
  free(b.p);
}

/* ---- round trip of the tiny golden model through mp_ckpt_write ---- */

/* The tensor lines of `mpass inspect FILE --tensors` ("  name dtype shape"); the summary lines may differ
 * (the file name; settings a safetensors file carries in __metadata__, which a .ckpt has no place for). */
static char *run_inspect(const char *file, int *status) {
  const char *bin = getenv("MPASS_BINARY_DIR");
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s/mpass' inspect '%s' --tensors", bin ? bin : "build", file);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  bytes out = {0};
  char line[4096];
  while (fgets(line, sizeof line, p))
    if (strncmp(line, "  ", 2) == 0) b_str(&out, line);
  *status = pclose(p);
  b_u8(&out, 0);
  return (char *)out.p;
}

static void test_roundtrip_tiny(void **state) {
  (void)state;
  char *src = test_shared_path("golden/tiny/tiny.safetensors");
  mp_weights *ws;
  assert_ok(mp_weights_open(src, &ws));
  size_t n = mp_weights_count(ws);
  assert_true(n > 10);
  const char **names = calloc(n, sizeof *names);
  mp_tensor *ts = calloc(n, sizeof *ts);
  /* write in reverse order: the reader must not depend on the pickle's order */
  for (size_t i = 0; i < n; i++) {
    const mp_weight *t = mp_weights_at(ws, n - 1 - i);
    names[i] = t->name;
    ts[i] = t->t;
  }
  char *dir = test_tmpdir();
  for (int nest = 0; nest < 2; nest++) {
    char path[512];
    snprintf(path, sizeof path, "%s/tiny%d.ckpt", dir, nest);
    assert_ok(mp_ckpt_write(path, n, names, ts, nest));
    mp_weights *wc;
    assert_ok(mp_weights_open(path, &wc));
    assert_int_equal(mp_weights_count(wc), n);
    for (size_t i = 0; i < n; i++) {
      const mp_weight *a = mp_weights_at(ws, i), *b = mp_weights_at(wc, i);
      assert_string_equal(a->name, b->name);
      assert_int_equal(a->t.dtype, b->t.dtype);
      assert_int_equal(a->t.ndim, b->t.ndim);
      for (int d = 0; d < a->t.ndim; d++) assert_int_equal(a->t.shape[d], b->t.shape[d]);
      assert_int_equal(mp_tensor_nbytes(&a->t), mp_tensor_nbytes(&b->t));
      if (mp_tensor_nbytes(&a->t)) assert_memory_equal(a->t.data, b->t.data, mp_tensor_nbytes(&a->t));
      /* torch aligns storages to 64 bytes; the writer does too, so tensors are viewed in place */
      assert_int_equal((uintptr_t)b->t.data % 64, 0);
    }
    mp_weights_close(wc);
    /* and the CLI sees the same tensors (with the same LDM config beside it, so that the UNet binds) */
    char cfg[520], *src_cfg = test_shared_path("golden/tiny/tiny.json");
    snprintf(cfg, sizeof cfg, "%s/tiny%d.json", dir, nest);
    FILE *in = fopen(src_cfg, "rb");
    assert_non_null(in);
    char text[1 << 14];
    size_t got = fread(text, 1, sizeof text, in);
    fclose(in);
    test_write_file(cfg, text, got);
    free(src_cfg);
    int sa, sb;
    char *ia = run_inspect(src, &sa), *ib = run_inspect(path, &sb);
    assert_true(strlen(ia) > 100);
    assert_string_equal(ia, ib);
    assert_int_equal(sa, sb);
    free(ia);
    free(ib);
    remove(path);
    remove(cfg);
  }
  rmdir(dir);
  free(dir);
  free(names);
  free(ts);
  mp_weights_close(ws);
  free(src);
}

/* ---- hostile pickles ---- */

static void test_refuses_code_execution(void **state) {
  (void)state;
  /* the classic: os.system('ls') */
  EXPECT_PKL_ERR("\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03.", "'os.system'");
  EXPECT_PKL_ERR("\x80\x02" "cposix\nsystem\nX\x02\x00\x00\x00ls\x85R.", "'posix.system'");
  /* protocol 4 STACK_GLOBAL spelling */
  EXPECT_PKL_ERR("\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x08" "builtins\x8c\x04" "eval\x93X\x01\x00\x00\x00" "1\x85R.",
                 "'builtins.eval'");
  EXPECT_PKL_ERR("\x80\x02" "csubprocess\nPopen\n)\x81.", "'subprocess.Popen'");
  /* hidden inside a tensor's state dict entry, after a legitimate tensor */
  bytes b = {0};
  b_str(&b, "\x80\x02}(");
  pk_tensor_item(&b, "ok", "FloatStorage", "0", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1});
  pk_unicode(&b, "evil");
  b_str(&b, "cbuiltins\nexec\nX\x01\x00\x00\x00x\x85Ru.");
  expect_pickle_error(b.p, b.n, "'builtins.exec'");
  free(b.p);
  /* a storage type that is not a storage */
  bytes c = pk_one_tensor("w", "Tensor", "0", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1});
  expect_pickle_error(c.p, c.n, "'torch.Tensor'");
  free(c.p);
  /* and REDUCE on something that is not a global */
  EXPECT_PKL_ERR("\x80\x02X\x01\x00\x00\x00x)R.", "not a callable");
}

static void test_rejects_broken_pickles(void **state) {
  (void)state;
  EXPECT_PKL_ERR("\x80\x02}h\x05.", "memo index 5 was never set");
  EXPECT_PKL_ERR("\x80\x02}j\xff\xff\xff\x7f.", "memo index 2147483647 was never set");
  EXPECT_PKL_ERR("\x80\x02}r\xff\xff\xff\xff.", "beyond the limit");
  EXPECT_PKL_ERR("\x80\x02}", "without STOP");
  EXPECT_PKL_ERR("\x80\x02X\xff\xff\x00\x00ab.", "runs past the end of data.pkl");
  EXPECT_PKL_ERR("\x80\x02J\x01\x00", "middle of an opcode");
  EXPECT_PKL_ERR("\x80\x02I1\n.", "unsupported pickle opcode 0x49");
  EXPECT_PKL_ERR("\x80\x02.", "stack underflow");
  EXPECT_PKL_ERR("\x80\x02(.", "stack underflow"); /* STOP may not reach below a MARK */
  EXPECT_PKL_ERR("\x80\x02t.", "needs a MARK");
  EXPECT_PKL_ERR("\x80\x02}(Nu.", "odd number");
  EXPECT_PKL_ERR("\x80\x02]N\x85u.", "needs a MARK");
  EXPECT_PKL_ERR("\x80\x02K\x01K\x02K\x03s.", "SETITEM on a int");
  EXPECT_PKL_ERR("\x80\x02\x8a\x09\x01\x01\x01\x01\x01\x01\x01\x01\x01.", "does not fit in 64 bits");
  EXPECT_PKL_ERR("\x80\x09.", "unsupported pickle protocol 9");
  EXPECT_PKL_ERR("\x80\x02].", "holds a list, expected a dict");
  EXPECT_PKL_ERR("\x80\x02}X\x05\x00\x00\x00" "epochK\x01s.", "no tensors at the top level or under 'state_dict' (keys: 'epoch')");
  EXPECT_PKL_ERR("\x80\x02(X\x07\x00\x00\x00storageNX\x01\x00\x00\x00" "0NK\x01tQ.", "storage type None is not supported");
  EXPECT_PKL_ERR("\x80\x02K\x01Q.", "persistent id must be");

  /* deep MARK nesting and a stack that would grow without bound */
  size_t n = 100000;
  unsigned char *deep = malloc(n + 3);
  deep[0] = 0x80, deep[1] = 2;
  memset(deep + 2, '(', n);
  deep[n + 2] = '.';
  expect_pickle_error(deep, n + 3, "MARKs nested deeper than");
  free(deep);
  n = (size_t)1 << 21;
  unsigned char *wide = malloc(n + 3);
  wide[0] = 0x80, wide[1] = 2;
  memset(wide + 2, 'N', n);
  wide[n + 2] = '.';
  expect_pickle_error(wide, n + 3, "stack deeper than");
  free(wide);
  /* DUP + APPEND doubling would be exponential if containers were copied; they are shared, so this is
   * cheap, and a self-containing list (a cycle) must not hang anything */
  EXPECT_PKL_ERR("\x80\x02]q\x00h\x00" "a2a2a2a.", "holds a list");
}

static void test_rejects_bad_tensors(void **state) {
  (void)state;
  struct {
    bytes pkl;
    const char *needle;
  } cases[] = {
      /* 10 elements in a 6-element storage */
      {pk_one_tensor("w", "FloatStorage", "0", 6, 0, 1, (int64_t[]){10}, (int64_t[]){1}), "'w': 10 elements at offset 0 run past its storage '0' of 6"},
      {pk_one_tensor("w", "FloatStorage", "0", 6, 5, 1, (int64_t[]){2}, (int64_t[]){1}), "run past its storage"},
      /* the pickle claims a bigger storage than the zip entry holds */
      {pk_one_tensor("w", "FloatStorage", "0", 600, 0, 1, (int64_t[]){6}, (int64_t[]){1}), "should hold 600 F32 elements but its zip entry has 24 bytes"},
      {pk_one_tensor("w", "FloatStorage", "9", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1}), "storage entry 'archive/data/9' is missing"},
      {pk_one_tensor("w", "FloatStorage", "0", 6, 0, 2, (int64_t[]){2, 3}, (int64_t[]){1, 2}), "tensor 'w' is not contiguous"},
      {pk_one_tensor("w", "FloatStorage", "0", 6, 0, 3, (int64_t[]){1LL << 40, 1LL << 40, 1LL << 40}, (int64_t[]){0, 0, 1}), "is invalid or too large"},
      {pk_one_tensor("w", "FloatStorage", "0", 6, 0, 1, (int64_t[]){-6}, (int64_t[]){1}), "is invalid or too large"},
      {pk_one_tensor("w", "FloatStorage", "0", 6, -1, 1, (int64_t[]){6}, (int64_t[]){1}), "negative storage offset"},
      {pk_one_tensor("w", "FloatStorage", "0", -6, 0, 1, (int64_t[]){6}, (int64_t[]){1}), "negative size"},
      {pk_one_tensor("w", "FloatStorage", "0/../../x", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1}), "is not a plain name"},
      {pk_one_tensor("w", "FloatStorage", "0", 6, 0, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1, 6}, (int64_t[]){6, 6, 6, 6, 6, 6, 6, 6, 1}), "9 dimensions"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    expect_pickle_error(cases[i].pkl.p, cases[i].pkl.n, cases[i].needle);
    free(cases[i].pkl.p);
  }
  /* the same name twice */
  bytes b = {0};
  b_str(&b, "\x80\x02}(");
  pk_tensor_item(&b, "w", "FloatStorage", "0", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1});
  pk_tensor_item(&b, "w", "HalfStorage", "1", 4, 0, 1, (int64_t[]){4}, (int64_t[]){1});
  b_str(&b, "u.");
  expect_pickle_error(b.p, b.n, "duplicate tensor name 'w'");
  free(b.p);
  /* a dtype/size mismatch: f16 storage read as 6 elements when it holds 4 */
  bytes c = pk_one_tensor("h", "HalfStorage", "1", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1});
  expect_pickle_error(c.p, c.n, "should hold 6 F16 elements but its zip entry has 8 bytes");
  free(c.p);
}

/* ---- hostile zips ---- */

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void test_rejects_bad_zips(void **state) {
  (void)state;
  bytes good = pk_one_tensor("w", "FloatStorage", "0", 6, 0, 1, (int64_t[]){6}, (int64_t[]){1});
  bytes z = ckpt_with(good.p, good.n);
  assert_ok(parse_mem(&z));
  size_t eocd = z.n - 22;
  uint32_t cd_off = (uint32_t)(z.p[eocd + 16] | z.p[eocd + 17] << 8 | z.p[eocd + 18] << 16 | (uint32_t)z.p[eocd + 19] << 24);

  bytes t = z;
  t.n = z.n / 2; /* truncated */
  assert_err_contains(parse_mem(&t), "no zip end-of-central-directory record");
  t.n = 10;
  assert_err_contains(parse_mem(&t), "too short for a zip file");

  unsigned char *m = malloc(z.n);
  bytes mz = {m, z.n, z.n};
#define MUTATE(stmt, needle)               \
  do {                                     \
    memcpy(m, z.p, z.n);                   \
    stmt;                                  \
    assert_err_contains(parse_mem(&mz), needle); \
  } while (0)
  MUTATE(put32(m + eocd + 16, 0x7fffffff), "central directory (offset 2147483647");
  MUTATE(put32(m + eocd + 12, 0x7fffffff), "lies outside the file");
  MUTATE(m[eocd + 10] = 200, "claims 200 entries");
  MUTATE(put32(m + cd_off, 0x12345678), "central directory entry 0 at offset");
  MUTATE(put32(m + cd_off + 42, 0x7ffffff0), "local header at offset 2147483632 is missing or out of bounds");
  MUTATE(put32(m + cd_off + 42, 1), "local header at offset 1 is missing");
  MUTATE((put32(m + cd_off + 20, 0x7ffffff0), put32(m + cd_off + 24, 0x7ffffff0)), "runs past the end of the file");
  MUTATE(put32(m + cd_off + 24, 3), "is stored but its sizes differ");
  MUTATE(m[cd_off + 10] = 12, "compression method 12");
  MUTATE(m[cd_off + 8] = 1, "is encrypted");
  MUTATE((m[cd_off + 10] = 8, put32(m + cd_off + 24, 0xfffffff0)), "impossible for deflate");
  MUTATE(m[cd_off + 10] = 8, "deflate data is corrupt");
  MUTATE(m[cd_off + 28] = 0xff, "runs past the directory");
  MUTATE((put32(m + cd_off + 20, 0xffffffff)), "no zip64 extra field");
  MUTATE((m[eocd + 10] = 0xff, m[eocd + 11] = 0xff), "zip64 archive without a zip64 locator");
  MUTATE(m[cd_off + 46 + 8] = 'X', "no <archive>/data.pkl"); /* renamed archive/data.pkl */
  free(m);

  /* zip64 records that point nowhere */
  bytes z64 = make_zip_ex((zentry[]){{"archive/data.pkl", good.p, good.n, 0}, {"archive/data/0", "abcdefghijklmnopqrstuvwx", 24, 0}}, 2, 1);
  assert_ok(parse_mem(&z64));
  size_t loc = z64.n - 22 - 20;
  z64.p[loc + 8] ^= 0x40; /* locator -> zip64 end record offset */
  assert_err_contains(parse_mem(&z64), "zip64 end-of-central-directory record at");
  z64.p[loc + 8] ^= 0x40;
  size_t rec = z64.n - 22 - 20 - 56;
  put32(z64.p + rec + 48, 0x7fff0000); /* zip64 central directory offset */
  assert_err_contains(parse_mem(&z64), "lies outside the file");
  put32(z64.p + rec + 48, 0);
  put32(z64.p + rec + 40, 0); /* zip64 central directory size 0 but 2 entries */
  assert_err_contains(parse_mem(&z64), "claims 2 entries in 0 bytes");
  free(z64.p);
  z64 = make_zip_ex((zentry[]){{"archive/data.pkl", good.p, good.n, 0}}, 1, 1);
  size_t cd64 = z64.n - 22 - 20 - 56 - (46 + 16 + 28);
  z64.p[cd64 + 46 + 16 + 2] = 16; /* zip64 field shortened: the offset no longer fits */
  assert_err_contains(parse_mem(&z64), "zip64 extra field too short");
  free(z64.p);

  /* two entries with the same name */
  zentry dup[] = {{"archive/data.pkl", good.p, good.n, 0}, {"archive/data.pkl", good.p, good.n, 0}};
  bytes d = make_zip(dup, 2);
  assert_err_contains(parse_mem(&d), "appears twice");
  free(d.p);
  /* a big-endian checkpoint */
  zentry be[] = {{"archive/data.pkl", good.p, good.n, 0}, {"archive/byteorder", "big", 3, 0}};
  d = make_zip(be, 2);
  assert_err_contains(parse_mem(&d), "byteorder record");
  free(d.p);
  /* not a zip at all, through the file-level door */
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/x.ckpt", dir);
  static const char not_zip[] = "PK\x03\x04 this is not a zip archive, only its magic";
  test_write_file(path, not_zip, sizeof not_zip - 1);
  mp_weights *w = NULL;
  assert_err_contains(mp_weights_open(path, &w), "x.ckpt: no zip end-of-central-directory");
  assert_null(w);
  remove(path);
  rmdir(dir);
  free(dir);
  free(z.p);
  free(good.p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reads_torch_layout),     cmocka_unit_test(test_reads_plain_dict),
      cmocka_unit_test(test_roundtrip_tiny),         cmocka_unit_test(test_refuses_code_execution),
      cmocka_unit_test(test_rejects_broken_pickles), cmocka_unit_test(test_rejects_bad_tensors),
      cmocka_unit_test(test_rejects_bad_zips),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
