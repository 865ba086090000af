/* PyTorch zip checkpoint reader.
 *
 * torch.save (>= 1.6) writes a zip: <root>/data.pkl (a pickle of the saved object, tensors replaced by
 * persistent ids naming storages), <root>/data/<key> (raw little-endian storage bytes), <root>/version,
 * and in newer versions <root>/byteorder. Pickles can run arbitrary code when loaded by Python, so this
 * reader interprets data.pkl with its own small machine: globals are only names checked against an
 * allow list, REDUCE never calls anything, and every length, index and offset is checked against the
 * file before use. Memory use is bounded by limits on the pickle size, the stack, the memo and the
 * total size of the values built. */
#include "io/ckpt.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "io/weights.h"

/* ------------------------------------------------------------------------------------------------ */
/* Limits. Real SD checkpoints have a data.pkl of a few hundred KB, a few thousand memo entries and
 * containers nested less than ten deep; these bounds are orders of magnitude above that. */
#define MAX_PICKLE_BYTES ((size_t)256 << 20)
#define MAX_VALUE_BYTES ((size_t)1 << 30) /* everything the pickle machine allocates */
#define MAX_STACK ((size_t)1 << 20)
#define MAX_MEMO ((size_t)1 << 20)
#define MAX_MARKS 256
#define MAX_ZIP_ENTRIES ((size_t)1 << 20)
#define MAX_DEFLATE_RATIO 1100 /* deflate cannot do better than ~1032:1 */

/* ------------------------------------------------------------------------------------------------ */
/* Zip (only what torch writes: STORED or DEFLATED entries, optionally zip64). */

typedef struct {
  const unsigned char *name; /* not NUL-terminated; points into the file */
  size_t name_len;
  uint16_t method;
  uint64_t csize, usize;
  uint64_t data_off; /* start of the entry's data in the file */
} zip_entry;

typedef struct {
  const char *path;
  const unsigned char *buf;
  size_t size;
  zip_entry *entries;
  size_t n;
  unsigned char **inflated; /* per entry, filled on first use: a shared deflated storage is inflated once */
} zip_file;

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static int cmp_entry_name(const void *a, const void *b) {
  const zip_entry *x = a, *y = b;
  size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
  int c = memcmp(x->name, y->name, n);
  return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Read a zip64 extended-information extra field: the 64-bit values for the 32-bit fields that were
 * saturated, in the fixed order usize, csize, offset. */
static mp_error *zip64_extra(const zip_file *z, const unsigned char *extra, size_t extra_len, uint64_t *usize, uint64_t *csize,
                             uint64_t *off, size_t idx) {
  size_t pos = 0;
  while (pos + 4 <= extra_len) {
    uint16_t id = rd16(extra + pos), len = rd16(extra + pos + 2);
    if (len > extra_len - pos - 4) break;
    if (id == 0x0001) {
      const unsigned char *f = extra + pos + 4;
      size_t k = 0;
      uint64_t *fields[3] = {usize, csize, off};
      for (int i = 0; i < 3; i++) {
        if (*fields[i] != 0xffffffffu) continue;
        if (k + 8 > len) return mp_errorf("%s: zip entry %zu: zip64 extra field too short", z->path, idx);
        *fields[i] = rd64(f + k);
        k += 8;
      }
      return NULL;
    }
    pos += 4 + (size_t)len;
  }
  if (*usize == 0xffffffffu || *csize == 0xffffffffu || *off == 0xffffffffu)
    return mp_errorf("%s: zip entry %zu: sizes are saturated but there is no zip64 extra field", z->path, idx);
  return NULL;
}

static mp_error *zip_open(zip_file *z) {
  const unsigned char *b = z->buf;
  size_t size = z->size;
  if (size < 22) return mp_errorf("%s: %zu bytes is too short for a zip file", z->path, size);
  /* The end-of-central-directory record is the last 22 bytes plus a comment of up to 65535 bytes. */
  size_t eocd = SIZE_MAX;
  size_t lowest = size - 22 > 65535 ? size - 22 - 65535 : 0;
  for (size_t i = size - 22 + 1; i-- > lowest;)
    if (rd32(b + i) == 0x06054b50 && i + 22 + rd16(b + i + 20) <= size) {
      eocd = i;
      break;
    }
  if (eocd == SIZE_MAX) return mp_errorf("%s: no zip end-of-central-directory record: truncated or not a zip file", z->path);
  uint64_t count = rd16(b + eocd + 10), cd_size = rd32(b + eocd + 12), cd_off = rd32(b + eocd + 16);
  if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
    /* zip64: a locator just before the EOCD points at the zip64 EOCD record (torch uses it past 4 GiB). */
    if (eocd < 20 || rd32(b + eocd - 20) != 0x07064b50) return mp_errorf("%s: zip64 archive without a zip64 locator", z->path);
    uint64_t rec = rd64(b + eocd - 20 + 8);
    if (rec > size || size - rec < 56 || rec > eocd - 20 || rd32(b + rec) != 0x06064b50)
      return mp_errorf("%s: zip64 end-of-central-directory record at %" PRIu64 " is missing or out of bounds", z->path, rec);
    count = rd64(b + rec + 32);
    cd_size = rd64(b + rec + 40);
    cd_off = rd64(b + rec + 48);
  }
  if (cd_off > size || cd_size > size - cd_off || cd_off + cd_size > eocd)
    return mp_errorf("%s: zip central directory (offset %" PRIu64 ", %" PRIu64 " bytes) lies outside the file (%zu bytes)", z->path,
                     cd_off, cd_size, size);
  if (count > MAX_ZIP_ENTRIES || count > cd_size / 46)
    return mp_errorf("%s: zip central directory claims %" PRIu64 " entries in %" PRIu64 " bytes", z->path, count, cd_size);
  z->entries = calloc(count ? count : 1, sizeof *z->entries);
  z->inflated = calloc(count ? count : 1, sizeof *z->inflated);
  if (!z->entries || !z->inflated) return mp_errorf("out of memory");
  size_t pos = cd_off, end = cd_off + cd_size;
  for (size_t i = 0; i < count; i++) {
    if (end - pos < 46 || rd32(b + pos) != 0x02014b50)
      return mp_errorf("%s: zip central directory entry %zu at offset %zu is corrupt", z->path, i, pos);
    uint16_t flags = rd16(b + pos + 8), method = rd16(b + pos + 10);
    uint64_t csize = rd32(b + pos + 20), usize = rd32(b + pos + 24), off = rd32(b + pos + 42);
    size_t nlen = rd16(b + pos + 28), xlen = rd16(b + pos + 30), clen = rd16(b + pos + 32);
    if (end - pos - 46 < nlen + xlen + clen) return mp_errorf("%s: zip central directory entry %zu runs past the directory", z->path, i);
    const unsigned char *name = b + pos + 46;
    MP_TRY(zip64_extra(z, name + nlen, xlen, &usize, &csize, &off, i));
    if (flags & 1) return mp_errorf("%s: zip entry '%.*s' is encrypted", z->path, (int)nlen, name);
    if (method != 0 && method != 8)
      return mp_errorf("%s: zip entry '%.*s' uses compression method %u (only stored and deflate are supported)", z->path, (int)nlen,
                       name, method);
    if (off > size || size - off < 30 || rd32(b + off) != 0x04034b50)
      return mp_errorf("%s: zip entry '%.*s': local header at offset %" PRIu64 " is missing or out of bounds", z->path, (int)nlen, name,
                       off);
    uint64_t data = off + 30 + rd16(b + off + 26) + rd16(b + off + 28);
    if (data > size || csize > size - data)
      return mp_errorf("%s: zip entry '%.*s' (%" PRIu64 " bytes at offset %" PRIu64 ") runs past the end of the file (%zu bytes)",
                       z->path, (int)nlen, name, csize, data, size);
    if (method == 0 && csize != usize)
      return mp_errorf("%s: zip entry '%.*s' is stored but its sizes differ (%" PRIu64 " vs %" PRIu64 ")", z->path, (int)nlen, name,
                       csize, usize);
    if (method == 8 && usize / MAX_DEFLATE_RATIO > csize + 1)
      return mp_errorf("%s: zip entry '%.*s' claims %" PRIu64 " bytes from %" PRIu64 " compressed: impossible for deflate", z->path,
                       (int)nlen, name, usize, csize);
    z->entries[i] = (zip_entry){name, nlen, method, csize, usize, data};
    z->n = i + 1;
    pos += 46 + nlen + xlen + clen;
  }
  qsort(z->entries, z->n, sizeof *z->entries, cmp_entry_name);
  for (size_t i = 1; i < z->n; i++)
    if (cmp_entry_name(&z->entries[i - 1], &z->entries[i]) == 0)
      return mp_errorf("%s: zip entry '%.*s' appears twice", z->path, (int)z->entries[i].name_len, z->entries[i].name);
  return NULL;
}

static const zip_entry *zip_find(const zip_file *z, const char *name) {
  zip_entry key = {(const unsigned char *)name, strlen(name), 0, 0, 0, 0};
  return bsearch(&key, z->entries, z->n, sizeof *z->entries, cmp_entry_name);
}

/* Inflate a DEFLATED entry into a new mp_alloc buffer of exactly usize bytes. */
static mp_error *zip_inflate(const zip_file *z, const zip_entry *e, unsigned char **out) {
  *out = NULL;
  unsigned char *dst = mp_alloc(e->usize ? (size_t)e->usize : 1);
  if (!dst) return mp_errorf("%s: out of memory inflating zip entry '%.*s' (%" PRIu64 " bytes)", z->path, (int)e->name_len, e->name, e->usize);
  z_stream s;
  memset(&s, 0, sizeof s);
  if (inflateInit2(&s, -15) != Z_OK) {
    mp_free(dst);
    return mp_errorf("zlib inflateInit2 failed");
  }
  /* zlib counts in uInt; feed and drain in chunks so entries over 4 GiB work too. */
  uint64_t in_left = e->csize, out_left = e->usize;
  s.next_in = (unsigned char *)(uintptr_t)(z->buf + e->data_off);
  s.next_out = dst;
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (s.avail_in == 0 && in_left) {
      s.avail_in = in_left > 1u << 30 ? 1u << 30 : (uInt)in_left;
      in_left -= s.avail_in;
    }
    if (s.avail_out == 0 && out_left) {
      s.avail_out = out_left > 1u << 30 ? 1u << 30 : (uInt)out_left;
      out_left -= s.avail_out;
    }
    uInt before_in = s.avail_in, before_out = s.avail_out;
    rc = inflate(&s, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR || (rc == Z_OK && before_in == s.avail_in && before_out == s.avail_out)) break;
  }
  uint64_t produced = e->usize - out_left - s.avail_out;
  inflateEnd(&s);
  if (rc != Z_STREAM_END || produced != e->usize) {
    mp_free(dst);
    return mp_errorf("%s: zip entry '%.*s': deflate data is corrupt or does not give the %" PRIu64 " bytes the directory claims", z->path,
                     (int)e->name_len, e->name, e->usize);
  }
  *out = dst;
  return NULL;
}

/* ------------------------------------------------------------------------------------------------ */
/* Pickle values. Everything lives in an arena freed at once, so shared and even cyclic references
 * (which the memo makes possible) need no ownership bookkeeping. */

typedef enum { V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_BYTES, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR, V_OPAQUE } vkind;

/* What an allowed global stands for. Nothing is ever called; the kind decides what REDUCE builds. */
typedef enum { G_ORDERED_DICT, G_REBUILD_TENSOR_V2, G_REBUILD_PARAMETER, G_STORAGE, G_OPAQUE } gkind;

typedef struct value value;

typedef struct {
  value *storage;
  int64_t offset;
  int ndim;
  int64_t shape[MP_MAX_DIMS], stride[MP_MAX_DIMS];
} tensor_val;

struct value {
  vkind kind;
  union {
    int64_t i;
    double f;
    struct {
      char *s; /* NUL-terminated copy */
      size_t n;
    } str;
    struct {
      value **items;
      size_t n, cap;
    } seq; /* tuple, list, set */
    struct {
      value **keys, **vals;
      size_t n, cap;
    } dict;
    struct {
      gkind kind;
      const char *module, *name;
      mp_dtype dt; /* for G_STORAGE */
    } global;
    struct {
      mp_dtype dt;
      const char *key;
      int64_t numel;
    } storage;
    tensor_val *tensor;
  } u;
};

typedef struct arena_block {
  struct arena_block *next;
  size_t used, cap;
  _Alignas(16) unsigned char data[];
} arena_block;

typedef struct {
  const char *path;
  const unsigned char *p;
  size_t n, pos, op_pos; /* op_pos: offset of the opcode being run, for messages */
  value **stack;
  size_t sp, stack_cap;
  size_t marks[MAX_MARKS];
  int nmarks;
  value **memo;
  size_t memo_cap;
  size_t memo_len; /* one past the highest index set; MEMOIZE appends here */
  arena_block *arena;
  size_t arena_total;
  value none_value;
} vm;

static mp_error *vm_err(vm *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static mp_error *vm_err(vm *m, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return mp_errorf("%s: data.pkl byte %zu: %s", m->path, m->op_pos, msg);
}

static void *arena_alloc(vm *m, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n > MAX_VALUE_BYTES || m->arena_total + n > MAX_VALUE_BYTES) return NULL;
  arena_block *b = m->arena;
  if (!b || b->cap - b->used < n) {
    size_t cap = n > 65536 ? n : 65536;
    b = malloc(sizeof *b + cap);
    if (!b) return NULL;
    b->next = m->arena;
    b->used = 0;
    b->cap = cap;
    m->arena = b;
    m->arena_total += cap;
  }
  void *p = b->data + b->used;
  b->used += n;
  memset(p, 0, n);
  return p;
}

static void arena_free(vm *m) {
  while (m->arena) {
    arena_block *next = m->arena->next;
    free(m->arena);
    m->arena = next;
  }
}

#define OOM(m) vm_err(m, "pickle needs more than %zu MiB of memory: refusing", MAX_VALUE_BYTES >> 20)

static mp_error *new_value(vm *m, vkind k, value **out) {
  *out = arena_alloc(m, sizeof(value));
  if (!*out) return OOM(m);
  (*out)->kind = k;
  return NULL;
}

/* Grow a pointer array held in the arena (the old copy is abandoned; growth doubles, so the waste is
 * bounded by the live size). */
static mp_error *grow_ptrs(vm *m, value ***arr, size_t n, size_t *cap, size_t need) {
  if (need <= *cap) return NULL;
  size_t c = *cap ? *cap : 4;
  while (c < need) c *= 2;
  value **a = arena_alloc(m, c * sizeof *a);
  if (!a) return OOM(m);
  if (n) memcpy(a, *arr, n * sizeof *a);
  *arr = a;
  *cap = c;
  return NULL;
}

static mp_error *seq_append(vm *m, value *seq, value *item) {
  MP_TRY(grow_ptrs(m, &seq->u.seq.items, seq->u.seq.n, &seq->u.seq.cap, seq->u.seq.n + 1));
  seq->u.seq.items[seq->u.seq.n++] = item;
  return NULL;
}

static mp_error *dict_set(vm *m, value *d, value *k, value *v) {
  size_t cap = d->u.dict.cap;
  MP_TRY(grow_ptrs(m, &d->u.dict.keys, d->u.dict.n, &cap, d->u.dict.n + 1));
  MP_TRY(grow_ptrs(m, &d->u.dict.vals, d->u.dict.n, &d->u.dict.cap, d->u.dict.n + 1));
  d->u.dict.keys[d->u.dict.n] = k;
  d->u.dict.vals[d->u.dict.n++] = v;
  return NULL;
}

/* The base of the current MARK frame: like Python's unpickler, ops may not pop below it. */
static size_t frame_base(const vm *m) { return m->nmarks ? m->marks[m->nmarks - 1] : 0; }

static mp_error *push(vm *m, value *v) {
  if (m->sp == m->stack_cap) {
    if (m->stack_cap >= MAX_STACK) return vm_err(m, "pickle stack deeper than %zu entries: refusing", MAX_STACK);
    size_t cap = m->stack_cap ? m->stack_cap * 2 : 256;
    value **s = realloc(m->stack, cap * sizeof *s);
    if (!s) return OOM(m);
    m->stack = s;
    m->stack_cap = cap;
  }
  m->stack[m->sp++] = v;
  return NULL;
}

static mp_error *pop(vm *m, value **out) {
  if (m->sp <= frame_base(m)) return vm_err(m, "pickle stack underflow");
  *out = m->stack[--m->sp];
  return NULL;
}

static mp_error *top(vm *m, value **out) {
  if (m->sp <= frame_base(m)) return vm_err(m, "pickle stack underflow");
  *out = m->stack[m->sp - 1];
  return NULL;
}

/* Pop the items above the last MARK and the MARK itself; items stay in m->stack[*first .. sp_before). */
static mp_error *pop_mark(vm *m, size_t *first, size_t *count) {
  if (m->nmarks == 0) return vm_err(m, "opcode needs a MARK but none is open");
  size_t base = m->marks[--m->nmarks];
  *first = base;
  *count = m->sp - base;
  m->sp = base;
  return NULL;
}

static mp_error *need(vm *m, size_t k) {
  if (m->n - m->pos < k) return vm_err(m, "pickle ends in the middle of an opcode (truncated data.pkl)");
  return NULL;
}

static uint64_t rd_le(const unsigned char *p, int k) {
  uint64_t v = 0;
  for (int i = k - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static mp_error *make_str(vm *m, vkind k, const unsigned char *s, size_t n, value **out) {
  if (n > MAX_PICKLE_BYTES) return vm_err(m, "string of %zu bytes is absurd", n);
  MP_TRY(new_value(m, k, out));
  char *c = arena_alloc(m, n + 1);
  if (!c) return OOM(m);
  if (n) memcpy(c, s, n);
  c[n] = 0;
  (*out)->u.str.s = c;
  (*out)->u.str.n = n;
  return NULL;
}

static mp_error *read_counted_str(vm *m, vkind k, int len_bytes) {
  MP_TRY(need(m, (size_t)len_bytes));
  uint64_t n = rd_le(m->p + m->pos, len_bytes);
  if (m->p[m->op_pos] == 'T' && (n & 0x80000000u)) return vm_err(m, "BINSTRING with a negative length");
  m->pos += (size_t)len_bytes;
  if (n > m->n - m->pos) return vm_err(m, "string of %" PRIu64 " bytes runs past the end of data.pkl", n);
  value *v = NULL;
  MP_TRY(make_str(m, k, m->p + m->pos, (size_t)n, &v));
  m->pos += (size_t)n;
  return push(m, v);
}

static mp_error *push_int(vm *m, int64_t i) {
  value *v = NULL;
  MP_TRY(new_value(m, V_INT, &v));
  v->u.i = i;
  return push(m, v);
}

static int storage_dtype(const char *name, mp_dtype *dt) {
  static const struct {
    const char *name;
    mp_dtype dt;
  } table[] = {{"FloatStorage", MP_F32}, {"HalfStorage", MP_F16},  {"BFloat16Storage", MP_BF16}, {"IntStorage", MP_I32},
               {"LongStorage", MP_I64},  {"ByteStorage", MP_U8},   {"CharStorage", MP_I8},       {"DoubleStorage", MP_F64},
               {"BoolStorage", MP_U8}};
  for (size_t i = 0; i < sizeof table / sizeof *table; i++)
    if (strcmp(name, table[i].name) == 0) {
      *dt = table[i].dt;
      return 1;
    }
  return 0;
}

/* Globals a Stable Diffusion checkpoint may name. The harmless ones become opaque values: a REDUCE on
 * them yields an opaque value, they are never called. Everything else is refused by name. */
static int classify_global(const char *module, const char *name, gkind *kind, mp_dtype *dt) {
  static const char *const opaque[][2] = {
      {"torch", "Size"},
      {"torch", "device"},
      {"torch", "float32"},
      {"torch", "float16"},
      {"torch", "bfloat16"},
      {"torch", "float64"},
      {"torch", "int64"},
      {"torch", "int32"},
      {"torch", "uint8"},
      {"torch", "ShortStorage"},
      {"torch", "ComplexFloatStorage"},
      {"torch", "ComplexDoubleStorage"},
      {"torch.torch_version", "TorchVersion"},
      {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"},
      {"pytorch_lightning.callbacks.early_stopping", "EarlyStopping"},
      {"lightning.pytorch.callbacks.model_checkpoint", "ModelCheckpoint"},
      {"numpy.core.multiarray", "scalar"},
      {"numpy.core.multiarray", "_reconstruct"},
      {"numpy._core.multiarray", "scalar"},
      {"numpy._core.multiarray", "_reconstruct"},
      {"numpy", "dtype"},
      {"numpy", "ndarray"},
      {"_codecs", "encode"},
      {"collections", "defaultdict"},
      {"builtins", "set"},
      {"builtins", "frozenset"},
      {"__builtin__", "set"},
  };
  if (strcmp(module, "collections") == 0 && strcmp(name, "OrderedDict") == 0) return *kind = G_ORDERED_DICT, 1;
  if (strcmp(module, "torch._utils") == 0 && strcmp(name, "_rebuild_tensor_v2") == 0) return *kind = G_REBUILD_TENSOR_V2, 1;
  if (strcmp(module, "torch._utils") == 0 &&
      (strcmp(name, "_rebuild_parameter") == 0 || strcmp(name, "_rebuild_parameter_with_state") == 0))
    return *kind = G_REBUILD_PARAMETER, 1;
  if (strcmp(module, "torch") == 0 && storage_dtype(name, dt)) return *kind = G_STORAGE, 1;
  for (size_t i = 0; i < sizeof opaque / sizeof *opaque; i++)
    if (strcmp(module, opaque[i][0]) == 0 && strcmp(name, opaque[i][1]) == 0) return *kind = G_OPAQUE, 1;
  return 0;
}

static mp_error *push_global(vm *m, const char *module, size_t mlen, const char *name, size_t nlen) {
  value *mv = NULL, *nv = NULL;
  MP_TRY(make_str(m, V_STR, (const unsigned char *)module, mlen, &mv));
  MP_TRY(make_str(m, V_STR, (const unsigned char *)name, nlen, &nv));
  gkind kind;
  mp_dtype dt = MP_F32;
  if (strlen(mv->u.str.s) != mlen || strlen(nv->u.str.s) != nlen || !classify_global(mv->u.str.s, nv->u.str.s, &kind, &dt))
    return vm_err(m, "refusing to load global '%s.%s': not on the list of names a checkpoint may use (the file may try to run code)",
                  mv->u.str.s, nv->u.str.s);
  value *v = NULL;
  MP_TRY(new_value(m, V_GLOBAL, &v));
  v->u.global.kind = kind;
  v->u.global.module = mv->u.str.s;
  v->u.global.name = nv->u.str.s;
  v->u.global.dt = dt;
  return push(m, v);
}

/* GLOBAL's operand: "module\nname\n". */
static mp_error *op_global(vm *m) {
  const unsigned char *s = m->p + m->pos, *end = m->p + m->n;
  const unsigned char *nl1 = memchr(s, '\n', (size_t)(end - s));
  const unsigned char *nl2 = nl1 ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
  if (!nl2) return vm_err(m, "GLOBAL operand is not two newline-terminated names");
  m->pos = (size_t)(nl2 + 1 - m->p);
  return push_global(m, (const char *)s, (size_t)(nl1 - s), (const char *)nl1 + 1, (size_t)(nl2 - nl1 - 1));
}

static const char *kind_name(vkind k) {
  static const char *const names[] = {"None", "bool", "int", "float", "str", "bytes", "tuple", "list", "dict", "global", "storage", "tensor", "object"};
  return names[k];
}

static mp_error *get_int(vm *m, value *v, const char *what, int64_t *out) {
  if (v->kind != V_INT && v->kind != V_BOOL) return vm_err(m, "%s must be an int, found %s", what, kind_name(v->kind));
  *out = v->u.i;
  return NULL;
}

/* Persistent id ('storage', storage_type, key, location, numel) -> a storage reference. */
static mp_error *op_binpersid(vm *m) {
  value *pid = NULL;
  MP_TRY(pop(m, &pid));
  if (pid->kind != V_TUPLE || pid->u.seq.n != 5)
    return vm_err(m, "persistent id must be ('storage', type, key, location, numel), found a %s of %zu items", kind_name(pid->kind),
                  pid->kind == V_TUPLE ? pid->u.seq.n : (size_t)0);
  value **it = pid->u.seq.items;
  if (it[0]->kind != V_STR || strcmp(it[0]->u.str.s, "storage") != 0) return vm_err(m, "persistent id is not a 'storage' reference");
  if (it[1]->kind != V_GLOBAL || it[1]->u.global.kind != G_STORAGE)
    return vm_err(m, "storage type %s%s%s is not supported (expected torch.FloatStorage, HalfStorage, BFloat16Storage, ...)",
                  it[1]->kind == V_GLOBAL ? it[1]->u.global.module : kind_name(it[1]->kind), it[1]->kind == V_GLOBAL ? "." : "",
                  it[1]->kind == V_GLOBAL ? it[1]->u.global.name : "");
  if (it[2]->kind != V_STR) return vm_err(m, "storage key must be a string");
  if (it[2]->u.str.n == 0 || strlen(it[2]->u.str.s) != it[2]->u.str.n || strchr(it[2]->u.str.s, '/'))
    return vm_err(m, "storage key '%s' is not a plain name", it[2]->u.str.s);
  int64_t numel = 0;
  MP_TRY(get_int(m, it[4], "storage numel", &numel));
  if (numel < 0) return vm_err(m, "storage '%s' has negative size %" PRId64, it[2]->u.str.s, numel);
  value *v = NULL;
  MP_TRY(new_value(m, V_STORAGE, &v));
  v->u.storage.dt = it[1]->u.global.dt;
  v->u.storage.key = it[2]->u.str.s;
  v->u.storage.numel = numel;
  return push(m, v);
}

static mp_error *int_tuple(vm *m, value *v, const char *what, int *ndim, int64_t *out) {
  if (v->kind != V_TUPLE && v->kind != V_LIST) return vm_err(m, "tensor %s must be a tuple, found %s", what, kind_name(v->kind));
  if (v->u.seq.n > MP_MAX_DIMS) return vm_err(m, "tensor has %zu dimensions (at most %d are supported)", v->u.seq.n, MP_MAX_DIMS);
  for (size_t i = 0; i < v->u.seq.n; i++) MP_TRY(get_int(m, v->u.seq.items[i], what, &out[i]));
  *ndim = (int)v->u.seq.n;
  return NULL;
}

/* REDUCE: callable(args). Nothing is called: the few callables torch needs are interpreted, the other
 * allowed ones give an opaque value. */
static mp_error *op_reduce(vm *m) {
  value *args = NULL, *fn = NULL, *v = NULL;
  MP_TRY(pop(m, &args));
  MP_TRY(pop(m, &fn));
  if (fn->kind != V_GLOBAL) return vm_err(m, "REDUCE on a %s, which is not a callable global", kind_name(fn->kind));
  if (args->kind != V_TUPLE) return vm_err(m, "REDUCE arguments must be a tuple, found %s", kind_name(args->kind));
  size_t n = args->u.seq.n;
  value **a = args->u.seq.items;
  switch (fn->u.global.kind) {
  case G_ORDERED_DICT:
    MP_TRY(new_value(m, n == 0 ? V_DICT : V_OPAQUE, &v));
    return push(m, v);
  case G_REBUILD_TENSOR_V2: {
    /* (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
    if (n < 6 || n > 7) return vm_err(m, "_rebuild_tensor_v2 takes 6 or 7 arguments, found %zu", n);
    if (a[0]->kind != V_STORAGE) return vm_err(m, "_rebuild_tensor_v2: first argument must be a storage, found %s", kind_name(a[0]->kind));
    tensor_val *t = arena_alloc(m, sizeof *t);
    if (!t) return OOM(m);
    t->storage = a[0];
    MP_TRY(get_int(m, a[1], "storage offset", &t->offset));
    if (t->offset < 0) return vm_err(m, "negative storage offset %" PRId64, t->offset);
    int nstride;
    MP_TRY(int_tuple(m, a[2], "size", &t->ndim, t->shape));
    MP_TRY(int_tuple(m, a[3], "stride", &nstride, t->stride));
    if (nstride != t->ndim) return vm_err(m, "tensor size has %d dimensions but stride has %d", t->ndim, nstride);
    MP_TRY(new_value(m, V_TENSOR, &v));
    v->u.tensor = t;
    return push(m, v);
  }
  case G_REBUILD_PARAMETER:
    if (n < 1 || a[0]->kind != V_TENSOR) return vm_err(m, "_rebuild_parameter: first argument must be a tensor");
    return push(m, a[0]);
  case G_STORAGE:
  case G_OPAQUE:
    MP_TRY(new_value(m, V_OPAQUE, &v));
    return push(m, v);
  }
  return vm_err(m, "internal: unknown global kind");
}

static mp_error *memo_put(vm *m, uint64_t idx, value *v) {
  if (idx >= MAX_MEMO) return vm_err(m, "memo index %" PRIu64 " is beyond the limit of %zu", idx, MAX_MEMO);
  if (idx >= m->memo_cap) {
    size_t cap = m->memo_cap ? m->memo_cap : 256;
    while (cap <= idx) cap *= 2;
    value **nm = realloc(m->memo, cap * sizeof *nm);
    if (!nm) return OOM(m);
    memset(nm + m->memo_cap, 0, (cap - m->memo_cap) * sizeof *nm);
    m->memo = nm;
    m->memo_cap = cap;
  }
  m->memo[idx] = v;
  if (idx >= m->memo_len) m->memo_len = (size_t)idx + 1;
  return NULL;
}

static mp_error *memo_get(vm *m, uint64_t idx) {
  if (idx >= m->memo_cap || !m->memo[idx]) return vm_err(m, "memo index %" PRIu64 " was never set (corrupt pickle)", idx);
  return push(m, m->memo[idx]);
}

/* Run data.pkl to its STOP; *result is the unpickled object. */
static mp_error *run_pickle(vm *m, value **result) {
  m->none_value.kind = V_NONE;
  for (;;) {
    if (m->pos >= m->n) return vm_err(m, "pickle ends without STOP (truncated data.pkl)");
    m->op_pos = m->pos;
    unsigned char op = m->p[m->pos++];
    value *v = NULL, *k = NULL, *x = NULL;
    size_t first = 0, count = 0;
    switch (op) {
    case 0x80: /* PROTO */
      MP_TRY(need(m, 1));
      if (m->p[m->pos] > 5) return vm_err(m, "unsupported pickle protocol %u", m->p[m->pos]);
      m->pos++;
      break;
    case 0x95: /* FRAME: a length hint only */
      MP_TRY(need(m, 8));
      m->pos += 8;
      break;
    case '.': /* STOP */
      MP_TRY(pop(m, result));
      return NULL;
    case '}': MP_TRY(new_value(m, V_DICT, &v)); MP_TRY(push(m, v)); break;
    case ']': MP_TRY(new_value(m, V_LIST, &v)); MP_TRY(push(m, v)); break;
    case ')': MP_TRY(new_value(m, V_TUPLE, &v)); MP_TRY(push(m, v)); break;
    case 0x8f: MP_TRY(new_value(m, V_LIST, &v)); MP_TRY(push(m, v)); break; /* EMPTY_SET */
    case 'N': MP_TRY(push(m, &m->none_value)); break;
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
      MP_TRY(new_value(m, V_BOOL, &v));
      v->u.i = op == 0x88;
      MP_TRY(push(m, v));
      break;
    case '(': /* MARK */
      if (m->nmarks == MAX_MARKS) return vm_err(m, "MARKs nested deeper than %d: refusing", MAX_MARKS);
      m->marks[m->nmarks++] = m->sp;
      break;
    case 't': /* TUPLE */
    case 'l': /* LIST */
    case 0x91: /* FROZENSET */
      MP_TRY(pop_mark(m, &first, &count));
      MP_TRY(new_value(m, op == 't' ? V_TUPLE : V_LIST, &v));
      MP_TRY(grow_ptrs(m, &v->u.seq.items, 0, &v->u.seq.cap, count));
      if (count) memcpy(v->u.seq.items, m->stack + first, count * sizeof *m->stack);
      v->u.seq.n = count;
      MP_TRY(push(m, v));
      break;
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: { /* TUPLE3 */
      size_t k_items = (size_t)(op - 0x84);
      if (m->sp - frame_base(m) < k_items) return vm_err(m, "pickle stack underflow");
      MP_TRY(new_value(m, V_TUPLE, &v));
      MP_TRY(grow_ptrs(m, &v->u.seq.items, 0, &v->u.seq.cap, k_items));
      m->sp -= k_items;
      memcpy(v->u.seq.items, m->stack + m->sp, k_items * sizeof *m->stack);
      v->u.seq.n = k_items;
      MP_TRY(push(m, v));
      break;
    }
    case 'd': /* DICT */
      MP_TRY(pop_mark(m, &first, &count));
      if (count % 2) return vm_err(m, "DICT with an odd number of items");
      MP_TRY(new_value(m, V_DICT, &v));
      for (size_t i = 0; i < count; i += 2) MP_TRY(dict_set(m, v, m->stack[first + i], m->stack[first + i + 1]));
      MP_TRY(push(m, v));
      break;
    case 'a': /* APPEND */
      MP_TRY(pop(m, &x));
      MP_TRY(top(m, &v));
      if (v->kind == V_LIST) MP_TRY(seq_append(m, v, x));
      else if (v->kind != V_OPAQUE) return vm_err(m, "APPEND to a %s", kind_name(v->kind));
      break;
    case 'e': /* APPENDS */
    case 0x90: /* ADDITEMS */
      MP_TRY(pop_mark(m, &first, &count));
      MP_TRY(top(m, &v));
      if (v->kind == V_LIST) {
        for (size_t i = 0; i < count; i++) MP_TRY(seq_append(m, v, m->stack[first + i]));
      } else if (v->kind != V_OPAQUE) {
        return vm_err(m, "APPENDS to a %s", kind_name(v->kind));
      }
      break;
    case 's': /* SETITEM */
      MP_TRY(pop(m, &x));
      MP_TRY(pop(m, &k));
      MP_TRY(top(m, &v));
      if (v->kind == V_DICT) MP_TRY(dict_set(m, v, k, x));
      else if (v->kind != V_OPAQUE) return vm_err(m, "SETITEM on a %s", kind_name(v->kind));
      break;
    case 'u': /* SETITEMS */
      MP_TRY(pop_mark(m, &first, &count));
      if (count % 2) return vm_err(m, "SETITEMS with an odd number of items");
      MP_TRY(top(m, &v));
      if (v->kind == V_DICT) {
        for (size_t i = 0; i < count; i += 2) MP_TRY(dict_set(m, v, m->stack[first + i], m->stack[first + i + 1]));
      } else if (v->kind != V_OPAQUE) {
        return vm_err(m, "SETITEMS on a %s", kind_name(v->kind));
      }
      break;
    case 'q': /* BINPUT */
      MP_TRY(need(m, 1));
      MP_TRY(top(m, &v));
      MP_TRY(memo_put(m, m->p[m->pos++], v));
      break;
    case 'r': /* LONG_BINPUT */
      MP_TRY(need(m, 4));
      MP_TRY(top(m, &v));
      MP_TRY(memo_put(m, rd_le(m->p + m->pos, 4), v));
      m->pos += 4;
      break;
    case 0x94: /* MEMOIZE */
      MP_TRY(top(m, &v));
      MP_TRY(memo_put(m, m->memo_len, v));
      break;
    case 'h': /* BINGET */
      MP_TRY(need(m, 1));
      MP_TRY(memo_get(m, m->p[m->pos++]));
      break;
    case 'j': /* LONG_BINGET */
      MP_TRY(need(m, 4));
      m->pos += 4;
      MP_TRY(memo_get(m, rd_le(m->p + m->pos - 4, 4)));
      break;
    case 'K': /* BININT1 */
      MP_TRY(need(m, 1));
      MP_TRY(push_int(m, m->p[m->pos++]));
      break;
    case 'M': /* BININT2 */
      MP_TRY(need(m, 2));
      MP_TRY(push_int(m, (int64_t)rd_le(m->p + m->pos, 2)));
      m->pos += 2;
      break;
    case 'J': /* BININT: signed 32-bit */
      MP_TRY(need(m, 4));
      MP_TRY(push_int(m, (int32_t)(uint32_t)rd_le(m->p + m->pos, 4)));
      m->pos += 4;
      break;
    case 0x8a: /* LONG1: n-byte little-endian two's complement */
    case 0x8b: { /* LONG4 */
      int lb = op == 0x8a ? 1 : 4;
      MP_TRY(need(m, (size_t)lb));
      uint64_t nb = rd_le(m->p + m->pos, lb);
      m->pos += (size_t)lb;
      if (op == 0x8b && (nb & 0x80000000u)) return vm_err(m, "LONG4 with negative length");
      if (nb > 8) return vm_err(m, "integer of %" PRIu64 " bytes does not fit in 64 bits", nb);
      MP_TRY(need(m, (size_t)nb));
      uint64_t u = rd_le(m->p + m->pos, (int)nb);
      if (nb > 0 && nb < 8 && (m->p[m->pos + nb - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * nb); /* sign-extend */
      m->pos += (size_t)nb;
      MP_TRY(push_int(m, (int64_t)u));
      break;
    }
    case 'G': { /* BINFLOAT: big-endian double */
      MP_TRY(need(m, 8));
      uint64_t u = 0;
      for (int i = 0; i < 8; i++) u = u << 8 | m->p[m->pos + (size_t)i];
      m->pos += 8;
      MP_TRY(new_value(m, V_FLOAT, &v));
      memcpy(&v->u.f, &u, sizeof u);
      MP_TRY(push(m, v));
      break;
    }
    case 'X': MP_TRY(read_counted_str(m, V_STR, 4)); break;  /* BINUNICODE */
    case 0x8c: MP_TRY(read_counted_str(m, V_STR, 1)); break; /* SHORT_BINUNICODE */
    case 0x8d: MP_TRY(read_counted_str(m, V_STR, 8)); break; /* BINUNICODE8 */
    case 'T': MP_TRY(read_counted_str(m, V_BYTES, 4)); break; /* BINSTRING */
    case 'U': MP_TRY(read_counted_str(m, V_BYTES, 1)); break; /* SHORT_BINSTRING */
    case 'B': MP_TRY(read_counted_str(m, V_BYTES, 4)); break; /* BINBYTES */
    case 'C': MP_TRY(read_counted_str(m, V_BYTES, 1)); break; /* SHORT_BINBYTES */
    case 0x8e: MP_TRY(read_counted_str(m, V_BYTES, 8)); break; /* BINBYTES8 */
    case 'c': MP_TRY(op_global(m)); break;
    case 0x93: { /* STACK_GLOBAL */
      value *mod = NULL, *name = NULL;
      MP_TRY(pop(m, &name));
      MP_TRY(pop(m, &mod));
      if (mod->kind != V_STR || name->kind != V_STR) return vm_err(m, "STACK_GLOBAL needs two strings");
      MP_TRY(push_global(m, mod->u.str.s, mod->u.str.n, name->u.str.s, name->u.str.n));
      break;
    }
    case 'R': MP_TRY(op_reduce(m)); break;
    case 0x81: /* NEWOBJ: cls.__new__(cls, *args) -> opaque */
    case 0x92: /* NEWOBJ_EX */
      if (op == 0x92) MP_TRY(pop(m, &x)); /* kwargs */
      MP_TRY(pop(m, &x));                 /* args */
      MP_TRY(pop(m, &k));                 /* cls */
      if (k->kind != V_GLOBAL) return vm_err(m, "NEWOBJ on a %s, which is not a class", kind_name(k->kind));
      MP_TRY(new_value(m, k->u.global.kind == G_ORDERED_DICT ? V_DICT : V_OPAQUE, &v));
      MP_TRY(push(m, v));
      break;
    case 'b': /* BUILD: obj.__setstate__(state). State is dropped: it only carries metadata here. */
      MP_TRY(pop(m, &x));
      MP_TRY(top(m, &v));
      break;
    case 'Q': MP_TRY(op_binpersid(m)); break;
    case '0': MP_TRY(pop(m, &x)); break; /* POP */
    case '1': MP_TRY(pop_mark(m, &first, &count)); break; /* POP_MARK */
    case '2': /* DUP */
      MP_TRY(top(m, &v));
      MP_TRY(push(m, v));
      break;
    default:
      return vm_err(m, "unsupported pickle opcode 0x%02x (not one torch.save writes)", op);
    }
  }
}

/* ------------------------------------------------------------------------------------------------ */
/* From the unpickled object to named tensors. */

static value *dict_get(const value *d, const char *key) {
  for (size_t i = 0; i < d->u.dict.n; i++)
    if (d->u.dict.keys[i]->kind == V_STR && strcmp(d->u.dict.keys[i]->u.str.s, key) == 0) return d->u.dict.vals[i];
  return NULL;
}

static bool is_contiguous(const tensor_val *t, int64_t numel) {
  if (numel == 0) return true;
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != expect) return false;
    expect *= t->shape[i];
  }
  return true;
}

static mp_error *add_tensor(const zip_file *z, const char *root, size_t root_len, const char *name, const tensor_val *t, mp_weights *w) {
  const char *path = z->path;
  mp_dtype dt = t->storage->u.storage.dt;
  size_t es = mp_dtype_size(dt);
  int64_t numel = mp_shape_numel(t->ndim, t->shape);
  char sb[192];
  if (numel < 0) return mp_errorf("%s: tensor '%s': shape %s is invalid or too large", path, name, mp_shape_str(t->ndim, t->shape, sb, sizeof sb));
  if (!is_contiguous(t, numel))
    return mp_errorf("%s: tensor '%s' is not contiguous (shape %s, stride %s): re-save it after .contiguous()", path, name,
                     mp_shape_str(t->ndim, t->shape, sb, sizeof sb), mp_shape_str(t->ndim, t->stride, sb + 96, 96));
  int64_t snumel = t->storage->u.storage.numel;
  if (t->offset > snumel || numel > snumel - t->offset)
    return mp_errorf("%s: tensor '%s': %" PRId64 " elements at offset %" PRId64 " run past its storage '%s' of %" PRId64 " elements", path,
                     name, numel, t->offset, t->storage->u.storage.key, snumel);
  char ename[512];
  int k = snprintf(ename, sizeof ename, "%.*sdata/%s", (int)root_len, root, t->storage->u.storage.key);
  if (k < 0 || (size_t)k >= sizeof ename) return mp_errorf("%s: tensor '%s': storage key too long", path, name);
  const zip_entry *e = zip_find(z, ename);
  if (!e) return mp_errorf("%s: tensor '%s': storage entry '%s' is missing from the zip", path, name, ename);
  if ((uint64_t)snumel > UINT64_MAX / es || e->usize != (uint64_t)snumel * es)
    return mp_errorf("%s: tensor '%s': storage '%s' should hold %" PRId64 " %s elements but its zip entry has %" PRIu64 " bytes", path, name,
                     ename, snumel, mp_dtype_name(dt), e->usize);
  size_t off = (size_t)t->offset * es, nbytes = (size_t)numel * es;
  if (e->method == 0) return mp_error_wrap(mp_weights_add(w, name, dt, t->ndim, t->shape, z->buf + e->data_off + off), "%s", path);
  /* Deflated storage: inflate it once (tensors may share it), and give each tensor its own copy. */
  size_t idx = (size_t)(e - z->entries);
  if (!z->inflated[idx]) MP_TRY(zip_inflate(z, e, &z->inflated[idx]));
  unsigned char *part = mp_alloc(nbytes ? nbytes : 1);
  if (!part) return mp_errorf("%s: out of memory copying tensor '%s'", path, name);
  if (nbytes) memcpy(part, z->inflated[idx] + off, nbytes);
  return mp_error_wrap(mp_weights_add_owned(w, name, dt, t->ndim, t->shape, part), "%s", path);
}

/* Tensors in dicts below the top level, named by their keys joined with '.' ("string_to_param.*"):
 * how textual-inversion embeddings hold them ({"string_to_param": {"*": tensor}, "name": ...}).
 * Used only when the top level holds no tensor, so state dicts read exactly as before. The depth
 * and a budget of visited entries bound the walk: the memo lets one dict appear many times. */
#define MAX_NESTED_DEPTH 3
#define MAX_NESTED_VISITS ((size_t)1 << 20)

static mp_error *collect_nested(const zip_file *z, const char *root, size_t root_len, const value *d, char *name, size_t name_len,
                                int depth, size_t *visits, size_t *found, mp_weights *w) {
  for (size_t i = 0; i < d->u.dict.n; i++) {
    const value *key = d->u.dict.keys[i], *val = d->u.dict.vals[i];
    if (++*visits > MAX_NESTED_VISITS)
      return mp_errorf("%s: data.pkl's nested dicts hold over %zu entries: refusing", z->path, MAX_NESTED_VISITS);
    if (key->kind != V_STR || strlen(key->u.str.s) != key->u.str.n) continue;
    if (val->kind != V_TENSOR && (val->kind != V_DICT || depth == MAX_NESTED_DEPTH)) continue;
    size_t len = name_len + (name_len ? 1 : 0) + key->u.str.n;
    if (len >= 512) return mp_errorf("%s: a nested tensor name is over 511 bytes", z->path);
    char *end = name + name_len;
    if (name_len) *end++ = '.';
    memcpy(end, key->u.str.s, key->u.str.n + 1);
    if (val->kind == V_TENSOR) {
      MP_TRY(add_tensor(z, root, root_len, name, val->u.tensor, w));
      ++*found;
    } else {
      MP_TRY(collect_nested(z, root, root_len, val, name, len, depth + 1, visits, found, w));
    }
    name[name_len] = 0;
  }
  return NULL;
}

static mp_error *collect(const zip_file *z, const char *root, size_t root_len, value *obj, mp_weights *w) {
  if (obj->kind != V_DICT) return mp_errorf("%s: data.pkl holds a %s, expected a dict of tensors", z->path, kind_name(obj->kind));
  value *sd = dict_get(obj, "state_dict");
  if (sd && sd->kind == V_DICT) obj = sd;
  size_t found = 0;
  for (size_t i = 0; i < obj->u.dict.n; i++) {
    value *key = obj->u.dict.keys[i], *val = obj->u.dict.vals[i];
    if (val->kind != V_TENSOR) continue;
    if (key->kind != V_STR || strlen(key->u.str.s) != key->u.str.n)
      return mp_errorf("%s: a tensor is stored under a %s key; expected a string name", z->path, kind_name(key->kind));
    MP_TRY(add_tensor(z, root, root_len, key->u.str.s, val->u.tensor, w));
    found++;
  }
  if (found == 0) {
    char name[512] = "";
    size_t visits = 0;
    MP_TRY(collect_nested(z, root, root_len, obj, name, 0, 0, &visits, &found, w));
  }
  if (found == 0) {
    char keys[256] = "";
    size_t used = 0;
    for (size_t i = 0; i < obj->u.dict.n && used + 4 < sizeof keys; i++) {
      value *key = obj->u.dict.keys[i];
      int k = snprintf(keys + used, sizeof keys - used, "%s'%s'", i ? ", " : "", key->kind == V_STR ? key->u.str.s : kind_name(key->kind));
      if (k < 0) break;
      used += (size_t)k;
    }
    if (used >= sizeof keys) strcpy(keys + sizeof keys - 5, "...");
    return mp_errorf("%s: no tensors at the top level or under 'state_dict' (keys: %s)", z->path, used ? keys : "none");
  }
  return NULL;
}

mp_error *mp_ckpt_parse(const char *path, const void *buf, size_t size, mp_weights *w) {
  zip_file z = {path, buf, size, NULL, 0, NULL};
  vm m;
  memset(&m, 0, sizeof m);
  m.path = path;
  unsigned char *inflated = NULL;
  mp_error *err = zip_open(&z);

  /* data.pkl sits in the archive's single top-level folder, whose name varies ("archive", the file stem). */
  const zip_entry *pkl = NULL;
  for (size_t i = 0; !err && i < z.n; i++) {
    const zip_entry *e = &z.entries[i];
    if (e->name_len >= 9 && memcmp(e->name + e->name_len - 9, "/data.pkl", 9) == 0 &&
        memchr(e->name, '/', e->name_len - 9) == NULL) {
      if (pkl) err = mp_errorf("%s: zip holds more than one data.pkl", path);
      pkl = e;
    }
  }
  if (!err && !pkl) err = mp_errorf("%s: zip has no <archive>/data.pkl: not a PyTorch checkpoint", path);
  const char *root = pkl ? (const char *)pkl->name : "";
  size_t root_len = pkl ? pkl->name_len - 8 : 0; /* keeps the '/' */
  if (!err && pkl->usize > MAX_PICKLE_BYTES)
    err = mp_errorf("%s: data.pkl is %" PRIu64 " bytes (limit %zu): refusing", path, pkl->usize, MAX_PICKLE_BYTES);
  if (!err) {
    char bo[300];
    snprintf(bo, sizeof bo, "%.*sbyteorder", (int)root_len, root);
    const zip_entry *e = zip_find(&z, bo);
    if (e) {
      unsigned char *text = NULL;
      if (e->usize != 6) err = mp_errorf("%s: byteorder record is %" PRIu64 " bytes, expected \"little\"", path, e->usize);
      if (!err && e->method == 8) err = zip_inflate(&z, e, &text);
      if (!err && memcmp(text ? text : z.buf + e->data_off, "little", 6) != 0)
        err = mp_errorf("%s: checkpoint is not little-endian (byteorder record says \"%.6s\")", path, text ? (char *)text : (const char *)z.buf + e->data_off);
      mp_free(text);
    }
  }
  if (!err) {
    m.p = z.buf + pkl->data_off;
    m.n = (size_t)pkl->usize;
    if (pkl->method == 8) {
      err = zip_inflate(&z, pkl, &inflated);
      m.p = inflated;
    }
  }
  value *obj = NULL;
  if (!err) err = run_pickle(&m, &obj);
  if (!err) err = collect(&z, root, root_len, obj, w);
  if (!err) err = mp_weights_finish(w);
  if (err && !strstr(mp_error_message(err), path)) err = mp_error_wrap(err, "%s", path);
  mp_free(inflated);
  free(m.stack);
  free(m.memo);
  arena_free(&m);
  for (size_t i = 0; z.inflated && i < z.n; i++) mp_free(z.inflated[i]);
  free(z.inflated);
  free(z.entries);
  return err;
}

mp_error *mp_ckpt_open(const char *path, mp_weights **out) { return mp_weights_open_mapped(path, mp_ckpt_parse, out); }
