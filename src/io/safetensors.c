/* .safetensors: an 8-byte little-endian header length, a JSON header, then raw tensor data.
 * https://github.com/huggingface/safetensors (format description). The file is memory-mapped and
 * every header entry is checked against the file before any data is touched. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/weights.h"

/* Real headers are well under a megabyte even for SDXL; anything larger is corrupt or hostile. */
#define MAX_HEADER_BYTES (100u << 20)

static int parse_dtype(const char *s, mp_dtype *dt) {
  static const struct {
    const char *name;
    mp_dtype dt;
  } table[] = {{"F32", MP_F32}, {"F16", MP_F16}, {"BF16", MP_BF16}, {"I32", MP_I32},
               {"I64", MP_I64}, {"U8", MP_U8},   {"I8", MP_I8},     {"F64", MP_F64}};
  for (size_t i = 0; i < sizeof table / sizeof *table; i++)
    if (strcmp(s, table[i].name) == 0) {
      *dt = table[i].dt;
      return 1;
    }
  return 0;
}

/* A JSON number that is a non-negative integer below 2^53 (exact in a double). */
static int json_uint(const cJSON *v, int64_t *out) {
  if (!cJSON_IsNumber(v)) return 0;
  double d = v->valuedouble;
  if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return 0;
  *out = (int64_t)d;
  return 1;
}

typedef struct {
  int64_t begin, end;
  const char *name;
} span;

static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end < y->end ? -1 : x->end > y->end);
}

mp_error *mp_safetensors_parse(const char *path, const void *buf, size_t size, mp_weights *w) {
  const unsigned char *p = buf;
  if (size < 8) return mp_errorf("%s: file is %zu bytes, too short for a safetensors header", path, size);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | p[i];
  if (hlen > size - 8)
    return mp_errorf("%s: header length %llu runs past the end of the file (%zu bytes): truncated or not a safetensors file",
                     path, (unsigned long long)hlen, size);
  if (hlen > MAX_HEADER_BYTES) return mp_errorf("%s: header length %llu is absurd (limit %u)", path, (unsigned long long)hlen, MAX_HEADER_BYTES);
  if (hlen < 2 || p[8] != '{') return mp_errorf("%s: header does not start with a JSON object", path);

  const char *hdr = (const char *)p + 8;
  const char *parse_end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &parse_end, 0);
  /* After the object only padding may follow (writers pad the header with spaces to 8 bytes). */
  int trailing = 0;
  for (const char *q = parse_end ? parse_end : hdr + hlen; root && q < hdr + hlen && !trailing; q++)
    trailing = !(*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r');
  if (!root || !cJSON_IsObject(root) || trailing) {
    long off = parse_end ? (long)(parse_end - hdr) : 0;
    cJSON_Delete(root);
    return mp_errorf("%s: header is not valid JSON (near byte %ld of the header)", path, off);
  }
  const int64_t data_size = (int64_t)(size - 8 - hlen);
  const unsigned char *data = p + 8 + hlen;

  int n = cJSON_GetArraySize(root);
  span *spans = calloc((size_t)(n > 0 ? n : 1), sizeof *spans);
  mp_error *err = NULL;
  int ns = 0;
  if (!spans) {
    cJSON_Delete(root);
    return mp_errorf("out of memory");
  }
  for (cJSON *it = root->child; it && !err; it = it->next) {
    const char *name = it->string ? it->string : "";
    if (strcmp(name, "__metadata__") == 0) {
      char *meta = cJSON_PrintUnformatted(it);
      if (meta) err = mp_weights_set_metadata(w, meta);
      free(meta);
      continue;
    }
    if (!cJSON_IsObject(it)) {
      err = mp_errorf("%s: tensor '%s': expected an object with dtype, shape, data_offsets", path, name);
      break;
    }
    cJSON *jdt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    cJSON *jshape = cJSON_GetObjectItemCaseSensitive(it, "shape");
    cJSON *joff = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    mp_dtype dt;
    if (!cJSON_IsString(jdt) || !parse_dtype(jdt->valuestring, &dt)) {
      err = mp_errorf("%s: tensor '%s': unsupported dtype %s (expected F32, F16, BF16, I32, I64, U8, I8 or F64)", path, name,
                      cJSON_IsString(jdt) ? jdt->valuestring : "(missing)");
      break;
    }
    if (!cJSON_IsArray(jshape) || cJSON_GetArraySize(jshape) > MP_MAX_DIMS) {
      err = mp_errorf("%s: tensor '%s': shape must be an array of at most %d dimensions", path, name, MP_MAX_DIMS);
      break;
    }
    int64_t shape[MP_MAX_DIMS];
    int ndim = 0;
    for (cJSON *d = jshape->child; d; d = d->next) {
      if (!json_uint(d, &shape[ndim])) {
        err = mp_errorf("%s: tensor '%s': shape entry %d is not a non-negative integer", path, name, ndim);
        break;
      }
      ndim++;
    }
    if (err) break;
    int64_t begin, end;
    if (!cJSON_IsArray(joff) || cJSON_GetArraySize(joff) != 2 || !json_uint(joff->child, &begin) ||
        !json_uint(joff->child->next, &end) || begin > end) {
      err = mp_errorf("%s: tensor '%s': data_offsets must be [begin, end] with 0 <= begin <= end", path, name);
      break;
    }
    if (end > data_size) {
      err = mp_errorf("%s: tensor '%s': data_offsets [%lld, %lld] run past the end of the data (%lld bytes): file truncated?", path,
                      name, (long long)begin, (long long)end, (long long)data_size);
      break;
    }
    int64_t numel = mp_shape_numel(ndim, shape);
    char sb[128];
    if (numel < 0 || numel > (end - begin) / (int64_t)mp_dtype_size(dt) + 1 ||
        numel * (int64_t)mp_dtype_size(dt) != end - begin) {
      err = mp_errorf("%s: tensor '%s': %s %s needs %lld bytes but data_offsets give %lld", path, name, jdt->valuestring,
                      mp_shape_str(ndim, shape, sb, sizeof sb),
                      numel < 0 ? -1LL : (long long)(numel * (int64_t)mp_dtype_size(dt)), (long long)(end - begin));
      break;
    }
    spans[ns++] = (span){begin, end, name};
    err = mp_weights_add(w, name, dt, ndim, shape, data + begin);
  }
  if (!err) {
    /* Sorted by start, a non-empty span overlaps an earlier one exactly when it starts before the
     * furthest end seen so far (not just the previous span's end: an empty span may sit in between). */
    qsort(spans, (size_t)ns, sizeof *spans, cmp_span);
    int furthest = -1;
    for (int i = 0; i < ns && !err; i++) {
      if (spans[i].end == spans[i].begin) continue;
      if (furthest >= 0 && spans[i].begin < spans[furthest].end)
        err = mp_errorf("%s: tensors '%s' and '%s' overlap in the data section", path, spans[furthest].name, spans[i].name);
      else if (furthest < 0 || spans[i].end > spans[furthest].end)
        furthest = i;
    }
  }
  if (!err) err = mp_weights_finish(w);
  free(spans);
  cJSON_Delete(root);
  return err;
}

mp_error *mp_safetensors_open(const char *path, mp_weights **out) { return mp_weights_open_mapped(path, mp_safetensors_parse, out); }

typedef struct {
  const char *name;
  const mp_tensor *t;
} entry;

static int cmp_entry(const void *a, const void *b) { return strcmp(((const entry *)a)->name, ((const entry *)b)->name); }

mp_error *mp_safetensors_write(const char *path, size_t n, const char *const *names, const mp_tensor *tensors,
                               const char *metadata_json) {
  entry *es = calloc(n ? n : 1, sizeof *es);
  if (!es) return mp_errorf("out of memory");
  for (size_t i = 0; i < n; i++) es[i] = (entry){names[i], &tensors[i]};
  qsort(es, n, sizeof *es, cmp_entry);

  cJSON *root = cJSON_CreateObject();
  mp_error *err = NULL;
  if (metadata_json) {
    cJSON *meta = cJSON_Parse(metadata_json);
    if (meta) cJSON_AddItemToObject(root, "__metadata__", meta);
  }
  int64_t off = 0;
  for (size_t i = 0; i < n && !err; i++) {
    const mp_tensor *t = es[i].t;
    if (!mp_tensor_is_contiguous(t)) {
      err = mp_errorf("writing %s: tensor %s is not contiguous", path, es[i].name);
      break;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "dtype", mp_dtype_name(t->dtype));
    cJSON *shape = cJSON_AddArrayToObject(o, "shape");
    for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
    int64_t nb = (int64_t)mp_tensor_nbytes(t);
    cJSON *offs = cJSON_AddArrayToObject(o, "data_offsets");
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nb)));
    cJSON_AddItemToObject(root, es[i].name, o);
    off += nb;
  }
  char *hdr = err ? NULL : cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  if (!err && !hdr) err = mp_errorf("out of memory");
  FILE *f = err ? NULL : fopen(path, "wb");
  if (!err && !f) err = mp_errorf("cannot create %s", path);
  if (!err) {
    size_t hl = strlen(hdr), padded = (hl + 7) & ~(size_t)7;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    for (size_t i = 0; i < n && ok; i++) {
      size_t nb = mp_tensor_nbytes(es[i].t);
      ok = nb == 0 || fwrite(es[i].t->data, 1, nb, f) == nb;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) err = mp_errorf("writing %s failed (disk full?)", path);
  }
  free(hdr);
  free(es);
  return err;
}
