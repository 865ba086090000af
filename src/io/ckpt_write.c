/* Writes a state dict the way torch.save does (protocol-2 pickle in a STORED zip), so that tests can
 * produce .ckpt files without Python and the reader is checked against torch's byte layout:
 *
 *   torch.save(model.state_dict())  ->  OrderedDict() then SETITEMS of
 *     name -> _rebuild_tensor_v2((BINPERSID ('storage', torch.FloatStorage, '0', 'cpu', numel)),
 *                                 offset, size, stride, False, OrderedDict())
 *
 * Python's pickler memoizes every string, tuple and global it writes (BINPUT n) and refers back to a
 * global or an interned string it has written before with BINGET; this writer does the same. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "io/ckpt.h"

typedef struct {
  unsigned char *p;
  size_t n, cap;
  int failed;
  unsigned memo; /* next memo index */
  /* memo indices of things written once and then fetched with BINGET (0 = not yet written) */
  unsigned m_rebuild, m_odict, m_storage_str, m_cpu, m_storage_cls[MP_DTYPE_COUNT];
} buf;

static void put(buf *b, const void *d, size_t n) {
  if (b->failed) return;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->n + n) cap *= 2;
    unsigned char *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, d, n);
  b->n += n;
}
static void put1(buf *b, unsigned v) {
  unsigned char c = (unsigned char)v;
  put(b, &c, 1);
}
static void put_le(buf *b, uint64_t v, int k) {
  for (int i = 0; i < k; i++) put1(b, (unsigned)(v >> (8 * i)) & 0xff);
}

/* Memoize the object on top of the stack; returns its index + 1 so 0 can mean "not memoized". */
static unsigned memoize(buf *b) {
  unsigned idx = b->memo++;
  if (idx < 256) {
    put1(b, 'q'); /* BINPUT */
    put1(b, idx);
  } else {
    put1(b, 'r'); /* LONG_BINPUT */
    put_le(b, idx, 4);
  }
  return idx + 1;
}
static void get(buf *b, unsigned memo_plus_1) {
  unsigned idx = memo_plus_1 - 1;
  if (idx < 256) {
    put1(b, 'h'); /* BINGET */
    put1(b, idx);
  } else {
    put1(b, 'j'); /* LONG_BINGET */
    put_le(b, idx, 4);
  }
}

static void put_int(buf *b, int64_t v) {
  if (v >= 0 && v < 256) {
    put1(b, 'K'), put1(b, (unsigned)v);
  } else if (v >= 0 && v < 65536) {
    put1(b, 'M'), put_le(b, (uint64_t)v, 2);
  } else if (v >= INT32_MIN && v <= INT32_MAX) {
    put1(b, 'J'), put_le(b, (uint64_t)v, 4);
  } else {
    /* LONG1 with the fewest bytes that keep the sign, as pickle's encode_long does */
    int nb = 8;
    while (nb > 1) {
      int64_t lo = -((int64_t)1 << (8 * (nb - 1) - 1)), hi = ((int64_t)1 << (8 * (nb - 1) - 1)) - 1;
      if (v < lo || v > hi) break;
      nb--;
    }
    put1(b, 0x8a), put1(b, (unsigned)nb), put_le(b, (uint64_t)v, nb);
  }
}

static unsigned put_str(buf *b, const char *s) {
  size_t n = strlen(s);
  put1(b, 'X'); /* BINUNICODE */
  put_le(b, n, 4);
  put(b, s, n);
  return memoize(b);
}

static void put_global(buf *b, unsigned *memo, const char *module, const char *name) {
  if (*memo) {
    get(b, *memo);
    return;
  }
  put1(b, 'c');
  put(b, module, strlen(module));
  put1(b, '\n');
  put(b, name, strlen(name));
  put1(b, '\n');
  *memo = memoize(b);
}

static void put_int_tuple(buf *b, int n, const int64_t *v) {
  if (n == 0) {
    put1(b, ')'); /* EMPTY_TUPLE, not memoized */
    return;
  }
  if (n > 3) put1(b, '(');
  for (int i = 0; i < n; i++) put_int(b, v[i]);
  put1(b, n > 3 ? 't' : 0x84 + (unsigned)n); /* TUPLE or TUPLE1..3 */
  memoize(b);
}

static const char *storage_class(mp_dtype dt) {
  switch (dt) {
  case MP_F32: return "FloatStorage";
  case MP_F16: return "HalfStorage";
  case MP_BF16: return "BFloat16Storage";
  case MP_I32: return "IntStorage";
  case MP_I64: return "LongStorage";
  case MP_U8: return "ByteStorage";
  case MP_I8: return "CharStorage";
  case MP_F64: return "DoubleStorage";
  default: return NULL;
  }
}

static void put_empty_ordered_dict(buf *b) {
  put_global(b, &b->m_odict, "collections", "OrderedDict");
  put1(b, ')'); /* EMPTY_TUPLE */
  put1(b, 'R'); /* REDUCE */
  memoize(b);
}

static void put_tensor(buf *b, const mp_tensor *t, size_t key) {
  put_global(b, &b->m_rebuild, "torch._utils", "_rebuild_tensor_v2");
  put1(b, '('); /* args tuple */
  /* persistent id ('storage', torch.<T>Storage, '<key>', 'cpu', numel) */
  put1(b, '(');
  if (b->m_storage_str)
    get(b, b->m_storage_str);
  else
    b->m_storage_str = put_str(b, "storage");
  put_global(b, &b->m_storage_cls[t->dtype], "torch", storage_class(t->dtype));
  char k[32];
  snprintf(k, sizeof k, "%zu", key);
  put_str(b, k);
  if (b->m_cpu)
    get(b, b->m_cpu);
  else
    b->m_cpu = put_str(b, "cpu");
  put_int(b, mp_tensor_numel(t));
  put1(b, 't');
  memoize(b);
  put1(b, 'Q'); /* BINPERSID */
  put_int(b, 0); /* storage_offset */
  put_int_tuple(b, t->ndim, t->shape);
  int64_t stride[MP_MAX_DIMS], s = 1;
  for (int d = t->ndim - 1; d >= 0; d--) stride[d] = s, s *= t->shape[d];
  put_int_tuple(b, t->ndim, stride);
  put1(b, 0x89); /* NEWFALSE: requires_grad */
  put_empty_ordered_dict(b); /* backward_hooks */
  put1(b, 't');
  memoize(b);
  put1(b, 'R');
  memoize(b);
}

/* The state dict: OrderedDict() then its items in SETITEMS batches of up to 1000, like pickle's
 * _batch_setitems (a batch of one is a single SETITEM). */
static void put_state_dict(buf *b, size_t n, const char *const *names, const mp_tensor *tensors) {
  put_empty_ordered_dict(b);
  for (size_t start = 0; start < n; start += 1000) {
    size_t end = start + 1000 < n ? start + 1000 : n;
    if (end - start > 1) put1(b, '(');
    for (size_t i = start; i < end; i++) {
      put_str(b, names[i]);
      put_tensor(b, &tensors[i], i);
    }
    put1(b, end - start > 1 ? 'u' : 's');
  }
}

/* ---- zip (STORED, data aligned to 64 bytes with a padding extra field as PyTorch's writer does) ---- */

typedef struct {
  char name[64];
  uint32_t crc;
  uint64_t size, offset;
} record;

static int write_record(FILE *f, uint64_t *pos, record *r, const char *name, const void *data, size_t size) {
  size_t nlen = strlen(name);
  snprintf(r->name, sizeof r->name, "%s", name);
  r->crc = (uint32_t)crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < size;) {
    size_t chunk = size - done > (1u << 30) ? (1u << 30) : size - done;
    r->crc = (uint32_t)crc32(r->crc, (const Bytef *)data + done, (uInt)chunk);
    done += chunk;
  }
  r->size = size;
  r->offset = *pos;
  size_t header = 30 + nlen + 4; /* + the padding field's own 4-byte header */
  size_t pad = (64 - (*pos + header) % 64) % 64;
  buf b = {0};
  put_le(&b, 0x04034b50, 4);
  put_le(&b, 20, 2); /* version needed */
  put_le(&b, 0, 2);  /* flags */
  put_le(&b, 0, 2);  /* STORED */
  put_le(&b, 0, 4);  /* time, date */
  put_le(&b, r->crc, 4);
  put_le(&b, size, 4);
  put_le(&b, size, 4);
  put_le(&b, nlen, 2);
  put_le(&b, 4 + pad, 2);
  put(&b, name, nlen);
  put_le(&b, 0x4246, 2); /* "FB": PyTorch's alignment padding */
  put_le(&b, pad, 2);
  for (size_t i = 0; i < pad; i++) put1(&b, 'Z');
  int ok = !b.failed && fwrite(b.p, 1, b.n, f) == b.n && (size == 0 || fwrite(data, 1, size, f) == size);
  *pos += b.n + size;
  free(b.p);
  return ok;
}

mp_error *mp_ckpt_write(const char *path, size_t n, const char *const *names, const mp_tensor *tensors, bool nest_state_dict) {
  for (size_t i = 0; i < n; i++) {
    if (!mp_tensor_is_contiguous(&tensors[i])) return mp_errorf("writing %s: tensor %s is not contiguous", path, names[i]);
    if (!storage_class(tensors[i].dtype)) return mp_errorf("writing %s: tensor %s has an unsupported dtype", path, names[i]);
    if (mp_tensor_nbytes(&tensors[i]) > 0xffffffffu) return mp_errorf("writing %s: tensor %s is over 4 GiB (no zip64 in this writer)", path, names[i]);
  }
  buf pk = {0};
  put1(&pk, 0x80), put1(&pk, 2); /* PROTO 2 */
  if (nest_state_dict) {
    put1(&pk, '}'); /* {"state_dict": ...} */
    memoize(&pk);
    put_str(&pk, "state_dict");
    put_state_dict(&pk, n, names, tensors);
    put1(&pk, 's');
  } else {
    put_state_dict(&pk, n, names, tensors);
  }
  put1(&pk, '.'); /* STOP */
  if (pk.failed) {
    free(pk.p);
    return mp_errorf("out of memory writing %s", path);
  }

  FILE *f = fopen(path, "wb");
  if (!f) {
    free(pk.p);
    return mp_errorf("cannot create %s", path);
  }
  record *recs = calloc(n + 3, sizeof *recs);
  uint64_t pos = 0;
  size_t nr = 0;
  int ok = recs != NULL;
  if (ok) ok = write_record(f, &pos, &recs[nr++], "archive/data.pkl", pk.p, pk.n);
  if (ok) ok = write_record(f, &pos, &recs[nr++], "archive/byteorder", "little", 6);
  for (size_t i = 0; i < n && ok; i++) {
    char name[64];
    snprintf(name, sizeof name, "archive/data/%zu", i);
    ok = write_record(f, &pos, &recs[nr++], name, tensors[i].data, mp_tensor_nbytes(&tensors[i]));
  }
  if (ok) ok = write_record(f, &pos, &recs[nr++], "archive/version", "3\n", 2);
  free(pk.p);
  /* central directory + end record */
  buf cd = {0};
  for (size_t i = 0; ok && i < nr; i++) {
    size_t nlen = strlen(recs[i].name);
    put_le(&cd, 0x02014b50, 4);
    put_le(&cd, 20, 2), put_le(&cd, 20, 2); /* made by, needed */
    put_le(&cd, 0, 2), put_le(&cd, 0, 2);   /* flags, STORED */
    put_le(&cd, 0, 4);                      /* time, date */
    put_le(&cd, recs[i].crc, 4);
    put_le(&cd, recs[i].size, 4), put_le(&cd, recs[i].size, 4);
    put_le(&cd, nlen, 2), put_le(&cd, 0, 2), put_le(&cd, 0, 2); /* name, extra, comment lengths */
    put_le(&cd, 0, 2), put_le(&cd, 0, 2), put_le(&cd, 0, 4);    /* disk, internal, external attributes */
    put_le(&cd, recs[i].offset, 4);
    put(&cd, recs[i].name, nlen);
  }
  size_t cd_size = cd.n;
  put_le(&cd, 0x06054b50, 4);
  put_le(&cd, 0, 2), put_le(&cd, 0, 2);
  put_le(&cd, nr, 2), put_le(&cd, nr, 2);
  put_le(&cd, cd_size, 4);
  put_le(&cd, pos, 4);
  put_le(&cd, 0, 2);
  if (pos > 0xffffffffu || nr > 0xffff) ok = 0;
  if (ok) ok = !cd.failed && fwrite(cd.p, 1, cd.n, f) == cd.n;
  if (fclose(f) != 0) ok = 0;
  free(cd.p);
  free(recs);
  return ok ? NULL : mp_errorf("writing %s failed (disk full, out of memory, or over 4 GiB)", path);
}
