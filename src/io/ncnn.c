/* ncnn .param/.bin reader (format in ncnn.h). Everything read from either file is checked before
 * it is used: counts against the lines and bytes that are really there, names against the blobs
 * already defined, weight sizes against the bytes left in the .bin. */
#include "io/ncnn.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/weights.h"

#define MAX_PARAM_BYTES (64u << 20) /* x4plus.param is 117 KB */
#define MAX_NAME 255                /* ncnn reads names with %255s */
#define MAX_LAYER_IO 65536          /* inputs or outputs of one layer */

#define TAG_F16 0x01306B47u
#define TAG_INT8 0x000D4B38u
#define TAG_F32 0x0002C056u

/* ---- blob name table: open addressing, FNV-1a ---- */

struct mp_ncnn_names {
  size_t cap; /* power of two */
  int *slot;  /* blob index + 1; 0 = empty */
};

static uint64_t hash_name(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static int names_find(const mp_ncnn_model *m, const char *name) {
  const struct mp_ncnn_names *t = m->names;
  if (!t || !t->cap) return -1;
  for (size_t i = hash_name(name) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    int s = t->slot[i];
    if (!s) return -1;
    if (strcmp(m->blobs[s - 1].name, name) == 0) return s - 1;
  }
}

static bool names_insert(mp_ncnn_model *m, int index) {
  struct mp_ncnn_names *t = m->names;
  if ((size_t)(index + 1) * 2 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    while ((size_t)(index + 1) * 2 > cap) cap *= 2;
    int *slot = calloc(cap, sizeof *slot);
    if (!slot) return false;
    for (int b = 0; b < index; b++) {
      size_t i = hash_name(m->blobs[b].name) & (cap - 1);
      while (slot[i]) i = (i + 1) & (cap - 1);
      slot[i] = b + 1;
    }
    free(t->slot);
    t->slot = slot;
    t->cap = cap;
  }
  size_t i = hash_name(m->blobs[index].name) & (t->cap - 1);
  while (t->slot[i]) i = (i + 1) & (t->cap - 1);
  t->slot[i] = index + 1;
  return true;
}

int mp_ncnn_find_blob(const mp_ncnn_model *m, const char *name) { return m ? names_find(m, name) : -1; }

/* ---- freeing ---- */

static void free_layer(mp_ncnn_layer *l) {
  free(l->type);
  free(l->name);
  free(l->inputs);
  free(l->outputs);
  for (int i = 0; i < l->n_params; i++) free(l->params[i].v);
  free(l->params);
  for (int i = 0; i < l->n_weights; i++) mp_free(l->weights[i].data);
}

void mp_ncnn_free(mp_ncnn_model *m) {
  if (!m) return;
  for (int i = 0; i < m->n_layers; i++) free_layer(&m->layers[i]);
  free(m->layers);
  for (int i = 0; i < m->n_blobs; i++) free(m->blobs[i].name);
  free(m->blobs);
  if (m->names) free(m->names->slot);
  free(m->names);
  free(m);
}

/* ---- .param text ---- */

/* Next whitespace-separated token of a NUL-terminated line; advances *p. NULL at end of line. */
static char *next_token(char **p) {
  char *s = *p;
  while (*s == ' ' || *s == '\t' || *s == '\r') s++;
  if (!*s) {
    *p = s;
    return NULL;
  }
  char *t = s;
  while (*s && *s != ' ' && *s != '\t' && *s != '\r') s++;
  if (*s) *s++ = 0;
  *p = s;
  return t;
}

static bool parse_int(const char *s, long lo, long hi, long *out) {
  if (!*s) return false;
  errno = 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return false;
  *out = v;
  return true;
}

static bool looks_float(const char *s) { return strpbrk(s, ".eE") != NULL; }

static mp_error *parse_value(const char *file, int line, const char *key, const char *s, mp_ncnn_value *v) {
  if (looks_float(s)) {
    errno = 0;
    char *end;
    float f = strtof(s, &end);
    if (!*s || *end || errno == ERANGE || !isfinite(f))
      return mp_errorf("%s:%d: parameter %s: '%s' is not a finite number", file, line, key, s);
    v->is_float = true;
    v->f = f;
    v->i = (f >= (float)INT32_MIN && f < 2147483648.0f) ? (int32_t)f : 0;
  } else {
    long i;
    if (!parse_int(s, INT32_MIN, INT32_MAX, &i))
      return mp_errorf("%s:%d: parameter %s: '%s' is not a 32-bit integer", file, line, key, s);
    v->is_float = false;
    v->i = (int32_t)i;
    v->f = (float)i;
  }
  return NULL;
}

/* "k=v" or "-233xx=n,v1,...,vn" into l->params[l->n_params]. */
static mp_error *parse_param(const char *file, int line, mp_ncnn_layer *l, char *tok) {
  char *eq = strchr(tok, '=');
  if (!eq) return mp_errorf("%s:%d: layer '%s': expected key=value, found '%s'", file, line, l->name, tok);
  *eq = 0;
  char *val = eq + 1;
  long key;
  if (!parse_int(tok, INT_MIN, INT_MAX, &key))
    return mp_errorf("%s:%d: layer '%s': parameter key '%s' is not an integer", file, line, l->name, tok);
  bool is_array = key <= -23300;
  long id = is_array ? -key - 23300 : key;
  if (id < 0 || id >= MP_NCNN_MAX_PARAM_ID)
    return mp_errorf("%s:%d: layer '%s': parameter key %ld out of range (0..%d, or -23300..-%d for arrays)", file, line,
                     l->name, key, MP_NCNN_MAX_PARAM_ID - 1, 23300 + MP_NCNN_MAX_PARAM_ID - 1);
  for (int i = 0; i < l->n_params; i++)
    if (l->params[i].id == (int)id)
      return mp_errorf("%s:%d: layer '%s': parameter %ld given twice", file, line, l->name, id);
  mp_ncnn_param *p = &l->params[l->n_params];
  p->id = (int)id;
  p->is_array = is_array;
  if (!is_array) {
    p->count = 1;
    p->v = calloc(1, sizeof *p->v);
    if (!p->v) return mp_errorf("out of memory");
    l->n_params++;
    return parse_value(file, line, tok, val, p->v);
  }
  /* count,v1,...,vn — the count must match the values that follow */
  char *comma = strchr(val, ',');
  if (comma) *comma = 0;
  long count;
  if (!parse_int(val, 0, 1 << 20, &count))
    return mp_errorf("%s:%d: layer '%s': array parameter %s: count '%s' is not an integer in 0..%d", file, line, l->name,
                     tok, val, 1 << 20);
  size_t commas = 0;
  for (char *c = comma ? comma + 1 : NULL; c && *c; c++) commas += *c == ',';
  size_t have = comma ? commas + 1 : 0;
  if (have != (size_t)count)
    return mp_errorf("%s:%d: layer '%s': array parameter %s declares %ld values but has %zu", file, line, l->name, tok,
                     count, have);
  p->count = (int)count;
  p->v = calloc(count ? (size_t)count : 1, sizeof *p->v);
  if (!p->v) return mp_errorf("out of memory");
  l->n_params++;
  char *s = comma ? comma + 1 : NULL;
  for (long i = 0; i < count; i++) {
    char *c = strchr(s, ',');
    if (c) *c = 0;
    MP_TRY(parse_value(file, line, tok, s, &p->v[i]));
    s = c ? c + 1 : NULL;
  }
  return NULL;
}

static bool valid_name(const char *s) {
  size_t n = strlen(s);
  return n >= 1 && n <= MAX_NAME;
}

static mp_error *parse_layer(const char *file, int line, char *text, mp_ncnn_model *m, int index) {
  mp_ncnn_layer *l = &m->layers[index];
  l->line = line;
  char *p = text;
  char *type = next_token(&p), *name = next_token(&p), *nin = next_token(&p), *nout = next_token(&p);
  if (!nout)
    return mp_errorf("%s:%d: expected '<type> <name> <n inputs> <n outputs> ...' for layer %d of %d", file, line,
                     index + 1, m->n_layers);
  if (!valid_name(type) || !valid_name(name))
    return mp_errorf("%s:%d: layer type and name must be 1..%d characters", file, line, MAX_NAME);
  l->type = strdup(type);
  l->name = strdup(name);
  if (!l->type || !l->name) return mp_errorf("out of memory");
  long ni, no;
  if (!parse_int(nin, 0, MAX_LAYER_IO, &ni) || !parse_int(nout, 0, MAX_LAYER_IO, &no))
    return mp_errorf("%s:%d: layer '%s': input/output counts '%s %s' are not integers in 0..%d", file, line, name, nin,
                     nout, MAX_LAYER_IO);
  l->inputs = calloc(ni ? (size_t)ni : 1, sizeof *l->inputs);
  l->outputs = calloc(no ? (size_t)no : 1, sizeof *l->outputs);
  if (!l->inputs || !l->outputs) return mp_errorf("out of memory");
  for (long i = 0; i < ni; i++) {
    char *b = next_token(&p);
    if (!b) return mp_errorf("%s:%d: layer '%s': declares %ld inputs but names %ld", file, line, name, ni, i);
    int bi = names_find(m, b);
    if (bi < 0)
      return mp_errorf("%s:%d: layer '%s': input blob '%s' is not produced by any earlier layer", file, line, name, b);
    l->inputs[l->n_inputs++] = bi;
    m->blobs[bi].n_consumers++;
  }
  for (long i = 0; i < no; i++) {
    char *b = next_token(&p);
    if (!b) return mp_errorf("%s:%d: layer '%s': declares %ld outputs but names %ld", file, line, name, no, i);
    if (!valid_name(b)) return mp_errorf("%s:%d: layer '%s': blob name longer than %d", file, line, name, MAX_NAME);
    if (names_find(m, b) >= 0)
      return mp_errorf("%s:%d: layer '%s': output blob '%s' is already produced by layer '%s'", file, line, name, b,
                       m->layers[m->blobs[names_find(m, b)].producer].name);
    if (m->n_blobs >= INT_MAX / 2) return mp_errorf("%s:%d: too many blobs", file, line);
    mp_ncnn_blob *nb = realloc(m->blobs, (size_t)(m->n_blobs + 1) * sizeof *nb);
    if (!nb) return mp_errorf("out of memory");
    m->blobs = nb;
    mp_ncnn_blob *blob = &m->blobs[m->n_blobs];
    blob->name = strdup(b);
    blob->producer = index;
    blob->n_consumers = 0;
    if (!blob->name) return mp_errorf("out of memory");
    m->n_blobs++;
    if (!names_insert(m, m->n_blobs - 1)) return mp_errorf("out of memory");
    l->outputs[l->n_outputs++] = m->n_blobs - 1;
  }
  /* the rest are parameters; there are at most as many as tokens left */
  size_t left = 0;
  for (char *s = p; *s; s++) left += *s == '=';
  l->params = calloc(left ? left : 1, sizeof *l->params);
  if (!l->params) return mp_errorf("out of memory");
  for (char *tok; (tok = next_token(&p));) MP_TRY(parse_param(file, line, l, tok));
  return NULL;
}

static mp_error *parse_param_text(const char *file, char *text, size_t len, mp_ncnn_model *m) {
  if (memchr(text, 0, len)) return mp_errorf("%s: contains a NUL byte: not an ncnn text .param file", file);
  text[len] = 0;
  size_t n_lines = 1;
  for (size_t i = 0; i < len; i++) n_lines += text[i] == '\n';

  char *p = text;
  int line = 0;
  /* next non-empty line, NUL-terminated in place */
#define NEXT_LINE(out)                                         \
  do {                                                         \
    (out) = NULL;                                              \
    while (*p) {                                               \
      char *s_ = p, *nl_ = strchr(p, '\n');                    \
      line++;                                                  \
      if (nl_) *nl_ = 0, p = nl_ + 1;                          \
      else p += strlen(p);                                     \
      if (strspn(s_, " \t\r") != strlen(s_)) { (out) = s_; break; } \
    }                                                          \
  } while (0)

  char *l1, *l2;
  NEXT_LINE(l1);
  if (!l1) return mp_errorf("%s: empty file", file);
  char *q = l1, *magic = next_token(&q);
  long v;
  if (!magic || !parse_int(magic, 0, LONG_MAX, &v) || v != MP_NCNN_MAGIC || next_token(&q))
    return mp_errorf("%s:%d: expected the ncnn magic %d on the first line, found '%.40s' (binary .param files are not "
                     "supported)",
                     file, line, MP_NCNN_MAGIC, l1);
  NEXT_LINE(l2);
  if (!l2) return mp_errorf("%s: missing the '<layer count> <blob count>' line", file);
  q = l2;
  char *sl = next_token(&q), *sb = next_token(&q);
  long nl, nb;
  if (!sb || next_token(&q) || !parse_int(sl, 1, INT_MAX / 2, &nl) || !parse_int(sb, 1, INT_MAX / 2, &nb))
    return mp_errorf("%s:%d: expected '<layer count> <blob count>' (two positive integers), found '%.60s'", file, line, l2);
  if ((size_t)nl > n_lines)
    return mp_errorf("%s:%d: declares %ld layers but the file has only %zu lines", file, line, nl, n_lines);
  m->layers = calloc((size_t)nl, sizeof *m->layers);
  m->names = calloc(1, sizeof *m->names);
  if (!m->layers || !m->names) return mp_errorf("out of memory");
  for (long i = 0; i < nl; i++) {
    char *lt;
    NEXT_LINE(lt);
    if (!lt) return mp_errorf("%s: declares %ld layers but has %ld", file, nl, i);
    m->n_layers = (int)i + 1;
    MP_TRY(parse_layer(file, line, lt, m, (int)i));
  }
  char *extra;
  NEXT_LINE(extra);
  if (extra) return mp_errorf("%s:%d: declares %ld layers but has more lines after them", file, line, nl);
  if (m->n_blobs != nb)
    return mp_errorf("%s: declares %ld blobs but its layers produce %d distinct blobs", file, nb, m->n_blobs);
#undef NEXT_LINE
  return NULL;
}

/* ---- parameter lookups ---- */

const mp_ncnn_param *mp_ncnn_param_find(const mp_ncnn_layer *l, int id) {
  for (int i = 0; i < l->n_params; i++)
    if (l->params[i].id == id) return &l->params[i];
  return NULL;
}

mp_error *mp_ncnn_get_int(const mp_ncnn_layer *l, int id, int def, int *out) {
  const mp_ncnn_param *p = mp_ncnn_param_find(l, id);
  if (!p) {
    *out = def;
    return NULL;
  }
  if (p->is_array || p->v[0].is_float)
    return mp_errorf("layer '%s' (%s, line %d): parameter %d must be an integer", l->name, l->type, l->line, id);
  *out = p->v[0].i;
  return NULL;
}

mp_error *mp_ncnn_get_float(const mp_ncnn_layer *l, int id, float def, float *out) {
  const mp_ncnn_param *p = mp_ncnn_param_find(l, id);
  if (!p) {
    *out = def;
    return NULL;
  }
  if (p->is_array)
    return mp_errorf("layer '%s' (%s, line %d): parameter %d must be a number, not an array", l->name, l->type, l->line, id);
  *out = p->v[0].f;
  return NULL;
}

mp_error *mp_ncnn_get_array(const mp_ncnn_layer *l, int id, const mp_ncnn_value **v, int *count) {
  const mp_ncnn_param *p = mp_ncnn_param_find(l, id);
  *v = NULL;
  *count = 0;
  if (!p) return NULL;
  if (!p->is_array)
    return mp_errorf("layer '%s' (%s, line %d): parameter %d must be an array (key %d)", l->name, l->type, l->line, id,
                     -23300 - id);
  *v = p->v;
  *count = p->count;
  return NULL;
}

const mp_ncnn_weight *mp_ncnn_weight_find(const mp_ncnn_layer *l, const char *what) {
  for (int i = 0; i < l->n_weights; i++)
    if (strcmp(l->weights[i].what, what) == 0) return &l->weights[i];
  return NULL;
}

/* ---- .bin weights ---- */

typedef struct {
  const char *what;
  int64_t count;
  bool tagged; /* may be stored compactly behind a 4-byte tag (ncnn ModelBin type 0) */
} weight_spec;

/* Layer types that store nothing in the .bin. */
static const char *const no_weight_types[] = {"Input",  "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle",
                                              "ReLU",   "Clip",  "Sigmoid", "TanH",   "Crop",     "Noop",   "Dropout",
                                              "Reshape", "Flatten", "Permute", "Softmax", "UnaryOp"};

/* What the .bin holds for layer l, in order. */
static mp_error *weight_specs(const mp_ncnn_layer *l, weight_spec *spec, int *n) {
  *n = 0;
  for (size_t i = 0; i < sizeof no_weight_types / sizeof *no_weight_types; i++)
    if (strcmp(l->type, no_weight_types[i]) == 0) return NULL;
  if (strcmp(l->type, "Convolution") == 0 || strcmp(l->type, "ConvolutionDepthWise") == 0) {
    int num_output = 0, bias_term = 0, weight_size = 0, int8 = 0, dynamic = 0;
    MP_TRY(mp_ncnn_get_int(l, 0, 0, &num_output));
    MP_TRY(mp_ncnn_get_int(l, 5, 0, &bias_term));
    MP_TRY(mp_ncnn_get_int(l, 6, 0, &weight_size));
    MP_TRY(mp_ncnn_get_int(l, 8, 0, &int8));
    MP_TRY(mp_ncnn_get_int(l, 19, 0, &dynamic));
    if (dynamic) return mp_errorf("layer '%s' (line %d): dynamic-weight convolution (19=1) is not supported", l->name, l->line);
    if (int8) return mp_errorf("layer '%s' (line %d): int8 convolution (8=%d) is not supported", l->name, l->line, int8);
    if (num_output <= 0) return mp_errorf("layer '%s' (line %d): num_output (0=) must be positive, found %d", l->name, l->line, num_output);
    if (weight_size <= 0)
      return mp_errorf("layer '%s' (line %d): weight_data_size (6=) must be positive, found %d", l->name, l->line, weight_size);
    spec[(*n)++] = (weight_spec){"weight", weight_size, true};
    if (bias_term) spec[(*n)++] = (weight_spec){"bias", num_output, false};
    return NULL;
  }
  if (strcmp(l->type, "PReLU") == 0) {
    int num_slope = 0;
    MP_TRY(mp_ncnn_get_int(l, 0, 0, &num_slope));
    if (num_slope <= 0) return mp_errorf("layer '%s' (line %d): num_slope (0=) must be positive, found %d", l->name, l->line, num_slope);
    spec[(*n)++] = (weight_spec){"slope", num_slope, false};
    return NULL;
  }
  return mp_errorf("layer '%s' (line %d): layer type '%s' is not supported (its weight layout in the .bin is unknown)",
                   l->name, l->line, l->type);
}

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

static mp_error *read_weight(const char *file, const uint8_t *bin, size_t len, size_t *off, const mp_ncnn_layer *l,
                             const weight_spec *s, mp_ncnn_weight *w) {
  size_t at = *off;
#define NEED(nbytes, what_)                                                                                             \
  do {                                                                                                                 \
    if ((nbytes) > len - *off)                                                                                         \
      return mp_errorf("%s: layer '%s' (%s, .param line %d) %s: needs %llu bytes (%s) at offset %zu but the file ends at " \
                       "%zu: truncated, or a .bin that does not belong to this .param",                                \
                       file, l->name, l->type, l->line, s->what, (unsigned long long)(nbytes), what_, *off, len);       \
  } while (0)
  uint64_t count = (uint64_t)s->count;
  w->what = s->what;
  w->count = s->count;
  w->storage = MP_NCNN_STORE_F32;
  uint32_t tag = 0;
  if (s->tagged) {
    NEED(4, "storage tag");
    tag = rd32(bin + *off);
    *off += 4;
  }
  const uint8_t b0 = tag & 0xff, b1 = tag >> 8 & 0xff, b2 = tag >> 16 & 0xff, b3 = tag >> 24;
  if (tag == TAG_INT8)
    return mp_errorf("%s: layer '%s' %s at offset %zu: int8 weights (tag 0x%08X) are not supported", file, l->name,
                     s->what, at, tag);
  /* every weight size is checked against the file before anything is allocated */
  uint64_t nbytes;
  if (tag == TAG_F16) nbytes = (count * 2 + 3) & ~(uint64_t)3;
  else if (tag == 0 || tag == TAG_F32) nbytes = count * 4;
  else if (b0 + b1 + b2 + b3 != 0) nbytes = 256 * 4 + ((count + 3) & ~(uint64_t)3);
  else nbytes = count * 4;
  NEED(nbytes, tag == TAG_F16 ? "fp16" : tag == 0 || tag == TAG_F32 ? "f32" : "f32 table + u8 indices");
#undef NEED
  w->data = mp_alloc((size_t)count * sizeof(float));
  if (!w->data) return mp_errorf("out of memory for %llu weights of layer '%s'", (unsigned long long)count, l->name);
  const uint8_t *p = bin + *off;
  if (tag == TAG_F16) {
    w->storage = MP_NCNN_STORE_F16;
    for (uint64_t i = 0; i < count; i++) w->data[i] = mp_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
  } else if (tag == 0 || tag == TAG_F32) {
    w->storage = tag ? MP_NCNN_STORE_F32_TAG : MP_NCNN_STORE_F32;
    memcpy(w->data, p, (size_t)count * 4);
  } else {
    w->storage = MP_NCNN_STORE_TABLE8;
    float table[256];
    memcpy(table, p, sizeof table);
    for (uint64_t i = 0; i < count; i++) w->data[i] = table[p[1024 + i]];
  }
  for (uint64_t i = 0; i < count; i++)
    if (!isfinite(w->data[i]))
      return mp_errorf("%s: layer '%s' %s: value %llu (file offset %zu) is not finite", file, l->name, s->what,
                       (unsigned long long)i, *off);
  *off += (size_t)nbytes;
  return NULL;
}

static mp_error *load_bin(const char *file, const uint8_t *bin, size_t len, mp_ncnn_model *m) {
  size_t off = 0;
  for (int i = 0; i < m->n_layers; i++) {
    mp_ncnn_layer *l = &m->layers[i];
    weight_spec spec[MP_NCNN_MAX_WEIGHTS];
    int n;
    MP_TRY(weight_specs(l, spec, &n));
    for (int k = 0; k < n; k++) {
      l->n_weights = k + 1; /* owned by the layer from here on, even if reading fails */
      MP_TRY(read_weight(file, bin, len, &off, l, &spec[k], &l->weights[k]));
    }
  }
  if (off != len)
    return mp_errorf("%s: %zu bytes are left after the last weight (which ends at offset %zu): the .bin does not "
                     "belong to this .param",
                     file, len - off, off);
  return NULL;
}

mp_error *mp_ncnn_parse(const char *param_name, const char *param_text, size_t param_len, const char *bin_name,
                        const void *bin, size_t bin_len, mp_ncnn_model **out) {
  *out = NULL;
  if (param_len > MAX_PARAM_BYTES)
    return mp_errorf("%s: %zu bytes is too large for a .param file (limit %u)", param_name, param_len, MAX_PARAM_BYTES);
  char *text = malloc(param_len + 1);
  mp_ncnn_model *m = calloc(1, sizeof *m);
  if (!text || !m) {
    free(text);
    free(m);
    return mp_errorf("out of memory");
  }
  memcpy(text, param_text, param_len);
  mp_error *e = parse_param_text(param_name, text, param_len, m);
  free(text);
  if (!e) e = load_bin(bin_name, bin, bin_len, m);
  if (e) {
    mp_ncnn_free(m);
    return e;
  }
  *out = m;
  return NULL;
}

static mp_error *read_text(const char *path, char **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot open %s: %s", path, strerror(errno));
  char *b = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n == cap) {
      if (cap >= MAX_PARAM_BYTES) {
        free(b);
        fclose(f);
        return mp_errorf("%s: larger than %u bytes: not an ncnn .param file", path, MAX_PARAM_BYTES);
      }
      cap = cap ? cap * 2 : 65536;
      char *nb = realloc(b, cap + 1);
      if (!nb) {
        free(b);
        fclose(f);
        return mp_errorf("out of memory");
      }
      b = nb;
    }
    size_t got = fread(b + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  bool bad = ferror(f);
  fclose(f);
  if (bad) {
    free(b);
    return mp_errorf("error reading %s", path);
  }
  *buf = b;
  *len = n;
  return NULL;
}

mp_error *mp_ncnn_open(const char *param_path, const char *bin_path, mp_ncnn_model **out) {
  *out = NULL;
  char *text = NULL;
  size_t tlen = 0;
  MP_TRY(read_text(param_path, &text, &tlen));
  void *bin = NULL;
  size_t blen = 0;
  mp_error *e = mp_map_file(bin_path, &bin, &blen);
  if (!e) e = mp_ncnn_parse(param_path, text, tlen, bin_path, bin, blen, out);
  free(text);
  if (bin) mp_unmap_file(bin, blen);
  return e;
}
