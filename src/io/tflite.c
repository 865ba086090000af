/* TFLite reader and interpreter (see tflite.h).
 *
 * FlatBuffers in brief: a table starts with a signed 32-bit offset back to its vtable; the vtable
 * holds u16 sizes and then one u16 offset per field id (0 = absent, default value). References to
 * tables, vectors and strings are unsigned 32-bit offsets forward from where they are stored; a
 * vector is a u32 length followed by its elements. Field ids below are those of
 * tensorflow/lite/schema/schema.fbs. Every read goes through fb_* helpers that check the range
 * first and latch an error on the first violation. */
#include "io/tflite.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/nhwc_ops.h"
#include "core/tensor.h"

/* ------------------------------------------------------------------ FlatBuffers access */

typedef struct {
  const uint8_t *b;
  size_t n;
  char err[160]; /* first violation, "" while fine */
} fb;

static void fb_fail(fb *f, const char *what, size_t at) {
  if (!f->err[0]) snprintf(f->err, sizeof f->err, "%s at byte %zu is outside the file (%zu bytes)", what, at, f->n);
}

static bool fb_ok_range(fb *f, size_t at, size_t len, const char *what) {
  if (f->err[0]) return false;
  if (at > f->n || len > f->n - at) {
    fb_fail(f, what, at);
    return false;
  }
  return true;
}

static uint32_t fb_u32_at(fb *f, size_t at) {
  if (!fb_ok_range(f, at, 4, "u32")) return 0;
  const uint8_t *p = f->b + at;
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t fb_u16_at(fb *f, size_t at) {
  if (!fb_ok_range(f, at, 2, "u16")) return 0;
  return (uint16_t)(f->b[at] | f->b[at + 1] << 8);
}
static uint64_t fb_u64_at(fb *f, size_t at) {
  return (uint64_t)fb_u32_at(f, at) | (uint64_t)fb_u32_at(f, at + 4) << 32;
}

/* Position of field `id` of the table at `table` (size bytes available), or 0 when absent. */
static size_t fb_field(fb *f, size_t table, int id, size_t size) {
  if (!table || f->err[0]) return 0;
  int32_t soff = (int32_t)fb_u32_at(f, table);
  int64_t vt = (int64_t)table - soff;
  if (vt < 0 || (uint64_t)vt > f->n) {
    fb_fail(f, "vtable", table);
    return 0;
  }
  uint16_t vsize = fb_u16_at(f, (size_t)vt);
  uint16_t tsize = fb_u16_at(f, (size_t)vt + 2);
  size_t slot = 4 + 2 * (size_t)id;
  if (slot + 2 > vsize) return 0;
  uint16_t off = fb_u16_at(f, (size_t)vt + slot);
  if (!off) return 0;
  if (off + size > tsize || !fb_ok_range(f, table + off, size, "table field")) {
    fb_fail(f, "table field", table + off);
    return 0;
  }
  return table + off;
}

static uint32_t fb_u32(fb *f, size_t table, int id, uint32_t def) {
  size_t p = fb_field(f, table, id, 4);
  return p ? fb_u32_at(f, p) : def;
}
static int32_t fb_i32(fb *f, size_t table, int id, int32_t def) { return (int32_t)fb_u32(f, table, id, (uint32_t)def); }
static uint8_t fb_u8(fb *f, size_t table, int id, uint8_t def) {
  size_t p = fb_field(f, table, id, 1);
  return p ? f->b[p] : def;
}
static uint64_t fb_u64(fb *f, size_t table, int id, uint64_t def) {
  size_t p = fb_field(f, table, id, 8);
  return p ? fb_u64_at(f, p) : def;
}

/* Follow the uoffset stored at `at`. */
static size_t fb_deref(fb *f, size_t at) {
  uint32_t off = fb_u32_at(f, at);
  if (f->err[0]) return 0;
  if (off == 0 || (uint64_t)at + off + 4 > f->n) {
    fb_fail(f, "reference", at);
    return 0;
  }
  return at + off;
}

static size_t fb_table(fb *f, size_t table, int id) {
  size_t p = fb_field(f, table, id, 4);
  return p ? fb_deref(f, p) : 0;
}

/* Vector field: returns the position of element 0 (0 when absent) and its length. */
static size_t fb_vector(fb *f, size_t table, int id, size_t elem, uint32_t *len) {
  *len = 0;
  size_t p = fb_field(f, table, id, 4);
  if (!p) return 0;
  size_t v = fb_deref(f, p);
  if (!v) return 0;
  uint32_t n = fb_u32_at(f, v);
  if (!fb_ok_range(f, v + 4, (size_t)n * elem, "vector")) return 0;
  *len = n;
  return v + 4;
}

/* Element i of a vector of tables. */
static size_t fb_vec_table(fb *f, size_t vec, uint32_t i) { return fb_deref(f, vec + 4 * (size_t)i); }

/* A string field, copied (NULL when absent; "" on error). */
static char *fb_string(fb *f, size_t table, int id) {
  uint32_t len;
  size_t p = fb_vector(f, table, id, 1, &len);
  if (!p) return NULL;
  return strndup((const char *)f->b + p, len);
}

/* ------------------------------------------------------------------ schema constants */

enum { /* TensorType */
  TT_FLOAT32 = 0,
  TT_FLOAT16 = 1,
  TT_INT32 = 2,
};
enum { /* BuiltinOperator */
  OP_ADD = 0,
  OP_AVERAGE_POOL_2D = 1,
  OP_CONCATENATION = 2,
  OP_CONV_2D = 3,
  OP_DEPTHWISE_CONV_2D = 4,
  OP_DEPTH_TO_SPACE = 5,
  OP_DEQUANTIZE = 6,
  OP_LOGISTIC = 14,
  OP_MAX_POOL_2D = 17,
  OP_MUL = 18,
  OP_RELU = 19,
  OP_RELU6 = 21,
  OP_RESHAPE = 22,
  OP_RESIZE_BILINEAR = 23,
  OP_CUSTOM = 32,
  OP_PAD = 34,
  OP_MEAN = 40,
  OP_PRELU = 54,
  OP_HARD_SWISH = 117,
  OP_DENSIFY = 124,
  OP_TRANSPOSE_CONV_BIAS = 10000, /* MediaPipe custom op Convolution2DTransposeBias */
};

static const char *const builtin_names[] = {
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE",
    "EMBEDDING_LOOKUP", "FLOOR", "FULLY_CONNECTED", "HASHTABLE_LOOKUP", "L2_NORMALIZATION", "L2_POOL_2D",
    "LOCAL_RESPONSE_NORMALIZATION", "LOGISTIC", "LSH_PROJECTION", "LSTM", "MAX_POOL_2D", "MUL", "RELU",
    "RELU_N1_TO_1", "RELU6", "RESHAPE", "RESIZE_BILINEAR", "RNN", "SOFTMAX", "SPACE_TO_DEPTH", "SVDF", "TANH",
    "CONCAT_EMBEDDINGS", "SKIP_GRAM", "CALL", "CUSTOM", "EMBEDDING_LOOKUP_SPARSE", "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "GATHER", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "TRANSPOSE", "MEAN", "SUB",
    "DIV", "SQUEEZE", "UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "BIDIRECTIONAL_SEQUENCE_RNN", "EXP",
    "TOPK_V2", "SPLIT", "LOG_SOFTMAX", "DELEGATE", "BIDIRECTIONAL_SEQUENCE_LSTM", "CAST", "PRELU", "MAXIMUM",
    "ARG_MAX", "MINIMUM", "LESS", "NEG", "PADV2", "GREATER", "GREATER_EQUAL", "LESS_EQUAL", "SELECT", "SLICE", "SIN",
    "TRANSPOSE_CONV", "SPARSE_TO_DENSE", "TILE", "EXPAND_DIMS", "EQUAL", "NOT_EQUAL", "LOG", "SUM", "SQRT", "RSQRT",
    "SHAPE", "POW", "ARG_MIN", "FAKE_QUANT", "REDUCE_PROD", "REDUCE_MAX", "PACK", "LOGICAL_OR", "ONE_HOT",
    "LOGICAL_AND", "LOGICAL_NOT", "UNPACK", "REDUCE_MIN", "FLOOR_DIV", "REDUCE_ANY", "SQUARE", "ZEROS_LIKE", "FILL",
    "FLOOR_MOD", "RANGE", "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "SQUARED_DIFFERENCE", "MIRROR_PAD", "ABS",
    "SPLIT_V", "UNIQUE", "CEIL", "REVERSE_V2", "ADD_N", "GATHER_ND", "COS", "WHERE", "RANK", "ELU",
    "REVERSE_SEQUENCE", "MATRIX_DIAG", "QUANTIZE", "MATRIX_SET_DIAG", "ROUND", "HARD_SWISH", "IF", "WHILE",
    "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "SCATTER_ND", "SELECT_V2", "DENSIFY", "SEGMENT_SUM",
    "BATCH_MATMUL"};

static const char *op_name(int code) {
  if (code == OP_TRANSPOSE_CONV_BIAS) return "Convolution2DTransposeBias";
  if (code >= 0 && (size_t)code < sizeof builtin_names / sizeof *builtin_names) return builtin_names[code];
  return "BUILTIN_?";
}

/* ------------------------------------------------------------------ model */

#define TFL_MAX_DIMS 8
/* Per-tensor and whole-model limits: far above these models, far below what breaks a machine. */
#define TFL_MAX_NUMEL ((int64_t)1 << 27)
#define TFL_MAX_CONST_FLOATS ((int64_t)1 << 27)

typedef struct {
  char *name;
  int type;
  int ndim;
  int32_t shape[TFL_MAX_DIMS];
  int64_t numel;
  float *f;   /* f32 values (constants after load; activations during a run) */
  int32_t *i; /* INT32 constants */
  bool is_const, is_input, is_output, produced;
  int last_use;
  /* where the constant bytes are, before conversion */
  size_t data_at, data_len;
  size_t sparsity; /* table position of SparsityParameters, 0 = dense */
} tfl_tensor;

typedef struct {
  int code;
  int n_in, n_out;
  int *in, *out;
  mp_conv_params conv;
  mp_act act;
  int axis, block;
  bool align_corners, half_pixel, keep_dims, folded;
} tfl_op;

struct mp_tflite {
  double *op_seconds; /* per operator code when profiling (mp_tflite_profile), else NULL */
  uint8_t *file;
  size_t size;
  tfl_tensor *t;
  int nt;
  tfl_op *ops;
  int nops;
  int *inputs, n_inputs, *outputs, n_outputs;
};

void mp_tflite_close(mp_tflite *m) {
  if (!m) return;
  for (int i = 0; i < m->nt; i++) {
    free(m->t[i].name);
    mp_free(m->t[i].f);
    mp_free(m->t[i].i);
  }
  for (int i = 0; i < m->nops; i++) {
    free(m->ops[i].in);
    free(m->ops[i].out);
  }
  free(m->t);
  free(m->ops);
  free(m->inputs);
  free(m->outputs);
  free(m->file);
  free(m->op_seconds);
  free(m);
}

static const char *tname(const mp_tflite *m, int i) {
  return i >= 0 && i < m->nt && m->t[i].name ? m->t[i].name : "?";
}

/* A vector of int32 tensor indices, each checked (-1 = optional input left out). */
static mp_error *read_index_vector(fb *f, size_t table, int id, int nt, bool allow_missing, int **out, int *n,
                                   const char *what) {
  uint32_t len;
  size_t v = fb_vector(f, table, id, 4, &len);
  if (f->err[0]) return mp_errorf("%s: %s", what, f->err);
  *out = calloc(len ? len : 1, sizeof **out);
  if (!*out) return mp_errorf("out of memory");
  *n = (int)len;
  for (uint32_t k = 0; k < len; k++) {
    int32_t idx = (int32_t)fb_u32_at(f, v + 4 * (size_t)k);
    if ((idx < 0 && !(allow_missing && idx == -1)) || idx >= nt)
      return mp_errorf("%s: tensor index %d out of range (the subgraph has %d tensors)", what, idx, nt);
    (*out)[k] = idx;
  }
  return NULL;
}

static mp_error *parse_tensor(fb *f, size_t tt, size_t buffers, uint32_t n_buffers, tfl_tensor *t, int index) {
  t->name = fb_string(f, tt, 3);
  uint32_t nd;
  size_t sv = fb_vector(f, tt, 0, 4, &nd);
  if (f->err[0]) return mp_errorf("tensor %d: %s", index, f->err);
  if (nd > TFL_MAX_DIMS) return mp_errorf("tensor %d '%s': %u dimensions (at most %d)", index, t->name ? t->name : "", nd, TFL_MAX_DIMS);
  t->ndim = (int)nd;
  t->numel = 1;
  for (uint32_t d = 0; d < nd; d++) {
    int32_t s = (int32_t)fb_u32_at(f, sv + 4 * (size_t)d);
    if (s <= 0) return mp_errorf("tensor %d '%s': dimension %u is %d (dynamic or empty shapes are not supported)", index, t->name ? t->name : "", d, s);
    t->shape[d] = s;
    t->numel *= s;
    if (t->numel > TFL_MAX_NUMEL) return mp_errorf("tensor %d '%s': too many elements", index, t->name ? t->name : "");
  }
  t->type = fb_u8(f, tt, 1, 0);
  uint32_t buf = fb_u32(f, tt, 2, 0);
  t->sparsity = fb_table(f, tt, 6);
  if (f->err[0]) return mp_errorf("tensor %d: %s", index, f->err);
  if (buf >= n_buffers && buf != 0) return mp_errorf("tensor %d '%s': buffer %u out of range (%u buffers)", index, t->name ? t->name : "", buf, n_buffers);
  if (buf == 0 || n_buffers == 0) return NULL; /* buffer 0 is the empty sentinel: an activation */
  size_t bt = fb_vec_table(f, buffers, buf);
  uint32_t len;
  size_t data = fb_vector(f, bt, 0, 1, &len);
  uint64_t ext_off = fb_u64(f, bt, 1, 0), ext_size = fb_u64(f, bt, 2, 0);
  if (f->err[0]) return mp_errorf("tensor %d buffer %u: %s", index, buf, f->err);
  if (!data && ext_off > 1) { /* large models keep data after the flatbuffer, by absolute offset */
    if (ext_off > f->n || ext_size > f->n - ext_off)
      return mp_errorf("tensor %d buffer %u: data [%llu, +%llu) outside the file", index, buf, (unsigned long long)ext_off,
                       (unsigned long long)ext_size);
    data = (size_t)ext_off;
    len = (uint32_t)ext_size;
  }
  if (data && len) {
    t->is_const = true;
    t->data_at = data;
    t->data_len = len;
  }
  return NULL;
}

/* ---- constants ---- */

static mp_error *decode_values(const mp_tflite *m, const tfl_tensor *t, int64_t count, float *dst) {
  size_t esz = t->type == TT_FLOAT16 ? 2 : 4;
  if ((uint64_t)t->data_len != (uint64_t)count * esz)
    return mp_errorf("constant '%s': %zu bytes of data, expected %lld values of %zu bytes", t->name ? t->name : "",
                     t->data_len, (long long)count, esz);
  const uint8_t *p = m->file + t->data_at;
  for (int64_t k = 0; k < count; k++) {
    if (esz == 2) {
      dst[k] = mp_f16_to_f32((uint16_t)(p[2 * k] | p[2 * k + 1] << 8));
    } else {
      uint32_t u = (uint32_t)p[4 * k] | (uint32_t)p[4 * k + 1] << 8 | (uint32_t)p[4 * k + 2] << 16 | (uint32_t)p[4 * k + 3] << 24;
      memcpy(&dst[k], &u, 4);
    }
  }
  return NULL;
}

/* Index vector of a DimensionMetadata (union SparseIndexVector: 1 Int32Vector, 2 Uint16Vector,
 * 3 Uint8Vector, each a table with `values` at field 0). */
typedef struct {
  size_t at;
  uint32_t len;
  int kind;
} index_vec;

static int64_t index_get(const fb *f, const index_vec *v, uint32_t k) {
  const uint8_t *p = f->b + v->at;
  if (v->kind == 1) return (int32_t)((uint32_t)p[4 * k] | (uint32_t)p[4 * k + 1] << 8 | (uint32_t)p[4 * k + 2] << 16 | (uint32_t)p[4 * k + 3] << 24);
  if (v->kind == 2) return p[2 * k] | p[2 * k + 1] << 8;
  return p[k];
}

static bool read_index_vec(fb *f, size_t dm, int type_id, int value_id, index_vec *out) {
  out->kind = fb_u8(f, dm, type_id, 0);
  size_t tab = fb_table(f, dm, value_id);
  size_t esz = out->kind == 1 ? 4 : out->kind == 2 ? 2 : out->kind == 3 ? 1 : 0;
  if (!esz || !tab) return false;
  out->at = fb_vector(f, tab, 0, esz, &out->len);
  return !f->err[0] && out->at;
}

typedef struct {
  fb *f;
  int levels;
  int order[TFL_MAX_DIMS]; /* level -> dimension */
  int format[TFL_MAX_DIMS];
  int dense_size[TFL_MAX_DIMS];
  index_vec seg[TFL_MAX_DIMS], idx[TFL_MAX_DIMS];
  const tfl_tensor *t;
  const float *values;
  int64_t n_values;
  float *dense;
  int64_t coord[TFL_MAX_DIMS];
  const char *bad;
} densify_ctx;

/* Walk the sparse storage tree: a dense level enumerates 0..size-1 under position prev; a CSR level
 * enumerates indices[segments[prev] .. segments[prev+1]). Leaves are the stored values in order. */
static void densify_level(densify_ctx *c, int level, int64_t prev) {
  if (c->bad) return;
  if (level == c->levels) {
    if (prev < 0 || prev >= c->n_values) {
      c->bad = "value position outside the stored values";
      return;
    }
    int64_t off = 0;
    for (int d = 0; d < c->t->ndim; d++) off = off * c->t->shape[d] + c->coord[d];
    c->dense[off] = c->values[prev];
    return;
  }
  int dim = c->order[level];
  if (c->format[level] == 0) {
    int64_t size = c->dense_size[level];
    for (int64_t i = 0; i < size && !c->bad; i++) {
      c->coord[dim] = i;
      densify_level(c, level + 1, prev * size + i);
    }
  } else {
    const index_vec *s = &c->seg[level], *x = &c->idx[level];
    if (prev < 0 || (uint64_t)prev + 1 >= s->len) {
      c->bad = "segment index outside array_segments";
      return;
    }
    int64_t a = index_get(c->f, s, (uint32_t)prev), b = index_get(c->f, s, (uint32_t)prev + 1);
    if (a < 0 || b < a || (uint64_t)b > x->len) {
      c->bad = "array_segments not increasing or beyond array_indices";
      return;
    }
    for (int64_t k = a; k < b && !c->bad; k++) {
      int64_t ix = index_get(c->f, x, (uint32_t)k);
      if (ix < 0 || ix >= c->t->shape[dim]) {
        c->bad = "array_indices value outside the dimension";
        return;
      }
      c->coord[dim] = ix;
      densify_level(c, level + 1, k);
    }
  }
}

static mp_error *densify(mp_tflite *m, fb *f, tfl_tensor *t, float *dense) {
  densify_ctx c = {.f = f, .t = t, .dense = dense};
  const char *nm = t->name ? t->name : "";
  uint32_t n_order, n_block, n_dm;
  size_t order = fb_vector(f, t->sparsity, 0, 4, &n_order);
  fb_vector(f, t->sparsity, 1, 4, &n_block);
  size_t dms = fb_vector(f, t->sparsity, 2, 4, &n_dm);
  if (f->err[0]) return mp_errorf("sparse tensor '%s': %s", nm, f->err);
  if (n_block) return mp_errorf("sparse tensor '%s': block sparsity is not supported", nm);
  if ((int)n_order != t->ndim || (int)n_dm != t->ndim)
    return mp_errorf("sparse tensor '%s': traversal_order has %u entries and dim_metadata %u, expected %d", nm, n_order, n_dm, t->ndim);
  c.levels = t->ndim;
  bool seen[TFL_MAX_DIMS] = {0};
  for (int l = 0; l < c.levels; l++) {
    int32_t d = (int32_t)fb_u32_at(f, order + 4 * (size_t)l);
    if (d < 0 || d >= t->ndim || seen[d]) return mp_errorf("sparse tensor '%s': traversal_order is not a permutation", nm);
    seen[d] = true;
    c.order[l] = d;
    size_t dm = fb_vec_table(f, dms, (uint32_t)l);
    c.format[l] = fb_u8(f, dm, 0, 0);
    c.dense_size[l] = fb_i32(f, dm, 1, 0);
    if (c.format[l] == 0) {
      if (c.dense_size[l] != t->shape[d]) return mp_errorf("sparse tensor '%s': level %d dense_size %d, dimension is %d", nm, l, c.dense_size[l], t->shape[d]);
    } else if (c.format[l] == 1) {
      if (!read_index_vec(f, dm, 2, 3, &c.seg[l]) || !read_index_vec(f, dm, 4, 5, &c.idx[l]))
        return mp_errorf("sparse tensor '%s': level %d CSR arrays missing or unreadable%s%s", nm, l, f->err[0] ? ": " : "", f->err);
    } else {
      return mp_errorf("sparse tensor '%s': level %d has unknown format %d", nm, l, c.format[l]);
    }
    if (f->err[0]) return mp_errorf("sparse tensor '%s': %s", nm, f->err);
  }
  size_t esz = t->type == TT_FLOAT16 ? 2 : 4;
  c.n_values = (int64_t)(t->data_len / esz);
  if (c.n_values > t->numel) return mp_errorf("sparse tensor '%s': more stored values than elements", nm);
  float *vals = mp_alloc((size_t)(c.n_values ? c.n_values : 1) * sizeof *vals);
  if (!vals) return mp_errorf("out of memory");
  mp_error *e = decode_values(m, t, c.n_values, vals);
  c.values = vals;
  if (!e) {
    memset(dense, 0, (size_t)t->numel * sizeof *dense);
    densify_level(&c, 0, 0);
    if (c.bad) e = mp_errorf("sparse tensor '%s': %s", nm, c.bad);
  }
  mp_free(vals);
  return e;
}

static mp_error *load_constant(mp_tflite *m, fb *f, tfl_tensor *t, int64_t *budget) {
  const char *nm = t->name ? t->name : "";
  if (t->numel > *budget) return mp_errorf("constants too large (tensor '%s')", nm);
  *budget -= t->numel;
  if (t->type == TT_INT32) {
    if (t->sparsity) return mp_errorf("sparse INT32 tensor '%s' is not supported", nm);
    if ((uint64_t)t->data_len != (uint64_t)t->numel * 4) return mp_errorf("constant '%s': %zu bytes, expected %lld", nm, t->data_len, (long long)t->numel * 4);
    t->i = mp_alloc((size_t)t->numel * sizeof *t->i);
    if (!t->i) return mp_errorf("out of memory");
    memcpy(t->i, m->file + t->data_at, (size_t)t->numel * 4);
    return NULL;
  }
  if (t->type != TT_FLOAT32 && t->type != TT_FLOAT16) return mp_errorf("constant '%s' has tensor type %d (only FLOAT32, FLOAT16 and INT32 are supported)", nm, t->type);
  t->f = mp_alloc((size_t)t->numel * sizeof *t->f);
  if (!t->f) return mp_errorf("out of memory");
  return t->sparsity ? densify(m, f, t, t->f) : decode_values(m, t, t->numel, t->f);
}

/* ---- operators ---- */

static mp_error *parse_operator(fb *f, size_t ot, const int *codes, const char *const *customs, uint32_t n_codes, int nt,
                                tfl_op *op, int index) {
  uint32_t oc = fb_u32(f, ot, 0, 0);
  if (f->err[0]) return mp_errorf("operator %d: %s", index, f->err);
  if (oc >= n_codes) return mp_errorf("operator %d: opcode index %u out of range (%u codes)", index, oc, n_codes);
  op->code = codes[oc];
  if (op->code == OP_CUSTOM) {
    if (customs[oc] && strcmp(customs[oc], "Convolution2DTransposeBias") == 0) op->code = OP_TRANSPOSE_CONV_BIAS;
    else op->code = -1 - (int)oc; /* unknown custom op: reported by name later */
  }
  MP_TRY(read_index_vector(f, ot, 1, nt, true, &op->in, &op->n_in, "operator inputs"));
  MP_TRY(read_index_vector(f, ot, 2, nt, false, &op->out, &op->n_out, "operator outputs"));
  size_t o = fb_table(f, ot, 4); /* builtin_options (union value; field 3 is its type) */
  mp_conv_params *p = &op->conv;
  p->dil_h = p->dil_w = 1;
  p->depth_multiplier = 1;
  int padding = 0; /* 0 SAME, 1 VALID */
  switch (op->code) {
    case OP_CONV_2D: /* Conv2DOptions */
      padding = fb_u8(f, o, 0, 0);
      p->stride_w = fb_i32(f, o, 1, 0);
      p->stride_h = fb_i32(f, o, 2, 0);
      op->act = (mp_act)fb_u8(f, o, 3, 0);
      p->dil_w = fb_i32(f, o, 4, 1);
      p->dil_h = fb_i32(f, o, 5, 1);
      break;
    case OP_DEPTHWISE_CONV_2D: /* DepthwiseConv2DOptions */
      padding = fb_u8(f, o, 0, 0);
      p->stride_w = fb_i32(f, o, 1, 0);
      p->stride_h = fb_i32(f, o, 2, 0);
      p->depth_multiplier = fb_i32(f, o, 3, 0);
      op->act = (mp_act)fb_u8(f, o, 4, 0);
      p->dil_w = fb_i32(f, o, 5, 1);
      p->dil_h = fb_i32(f, o, 6, 1);
      break;
    case OP_AVERAGE_POOL_2D:
    case OP_MAX_POOL_2D: /* Pool2DOptions */
      padding = fb_u8(f, o, 0, 0);
      p->stride_w = fb_i32(f, o, 1, 0);
      p->stride_h = fb_i32(f, o, 2, 0);
      p->k_w = fb_i32(f, o, 3, 0);
      p->k_h = fb_i32(f, o, 4, 0);
      op->act = (mp_act)fb_u8(f, o, 5, 0);
      break;
    case OP_ADD:
    case OP_MUL: op->act = (mp_act)fb_u8(f, o, 0, 0); break; /* AddOptions / MulOptions */
    case OP_CONCATENATION:
      op->axis = fb_i32(f, o, 0, 0);
      op->act = (mp_act)fb_u8(f, o, 1, 0);
      break;
    case OP_RESIZE_BILINEAR:
      op->align_corners = fb_u8(f, o, 2, 0) != 0;
      op->half_pixel = fb_u8(f, o, 3, 0) != 0;
      break;
    case OP_DEPTH_TO_SPACE: op->block = fb_i32(f, o, 0, 0); break;
    case OP_MEAN: op->keep_dims = fb_u8(f, o, 0, 0) != 0; break;
    case OP_TRANSPOSE_CONV_BIAS: { /* custom_options: int32 padding (1 SAME, 2 VALID), stride_w, stride_h */
      uint32_t len;
      size_t co = fb_vector(f, ot, 5, 1, &len);
      if (len < 12) return mp_errorf("operator %d (Convolution2DTransposeBias): custom options have %u bytes, expected 12", index, len);
      int32_t tp = (int32_t)fb_u32_at(f, co);
      padding = tp == 2 ? 1 : 0;
      p->stride_w = (int32_t)fb_u32_at(f, co + 4);
      p->stride_h = (int32_t)fb_u32_at(f, co + 8);
      break;
    }
    default: break;
  }
  if (f->err[0]) return mp_errorf("operator %d (%s): %s", index, op_name(op->code), f->err);
  op->conv.pad_top = padding; /* stash SAME/VALID until the shapes are checked */
  if (op->act > MP_ACT_TANH) return mp_errorf("operator %d (%s): fused activation %d not supported", index, op_name(op->code), op->act);
  return NULL;
}

/* ---- shape checks: every kernel's reads and writes are proved in range here ---- */

static bool nhwc(const tfl_tensor *t, int *h, int *w, int *c) {
  if (t->ndim != 4 || t->shape[0] != 1) return false;
  *h = t->shape[1];
  *w = t->shape[2];
  *c = t->shape[3];
  return true;
}

static bool broadcastable(const tfl_tensor *a, const tfl_tensor *out) {
  if (a->ndim > MP_BCAST_DIMS || out->ndim > MP_BCAST_DIMS || a->ndim > out->ndim) return false;
  for (int k = 1; k <= a->ndim; k++) {
    int32_t da = a->shape[a->ndim - k], dout = out->shape[out->ndim - k];
    if (da != dout && da != 1) return false;
  }
  return true;
}

#define CHECK(cond, ...)                                                                                 \
  do {                                                                                                   \
    if (!(cond)) return mp_error_wrap(mp_errorf(__VA_ARGS__), "operator %d (%s)", index, op_name(op->code)); \
  } while (0)

static mp_error *check_operator(mp_tflite *m, tfl_op *op, int index) {
  tfl_tensor *T = m->t;
  int n_req_in = 1;
  switch (op->code) {
    case OP_CONV_2D: case OP_DEPTHWISE_CONV_2D: case OP_TRANSPOSE_CONV_BIAS: n_req_in = 2; break;
    case OP_ADD: case OP_MUL: case OP_PRELU: case OP_PAD: case OP_RESIZE_BILINEAR: case OP_MEAN: case OP_RESHAPE: n_req_in = op->code == OP_RESHAPE ? 1 : 2; break;
    default: break;
  }
  CHECK(op->n_in >= n_req_in && op->n_out >= 1, "%d inputs and %d outputs", op->n_in, op->n_out);
  for (int k = 0; k < n_req_in; k++) CHECK(op->in[k] >= 0, "required input %d missing", k);
  if (op->code != OP_CONCATENATION)
    for (int k = n_req_in; k < op->n_in; k++)
      if (op->in[k] >= 0 && !(k == 2 && (op->code == OP_CONV_2D || op->code == OP_DEPTHWISE_CONV_2D || op->code == OP_TRANSPOSE_CONV_BIAS)) &&
          op->code != OP_RESHAPE)
        CHECK(0, "unexpected input %d", k);
  for (int k = 0; k < op->n_in; k++) {
    if (op->in[k] < 0) continue;
    tfl_tensor *x = &T[op->in[k]];
    /* DENSIFY/DEQUANTIZE read raw constants; the INT32 parameter inputs are checked per operator */
    bool int_param = k == 1 && (op->code == OP_PAD || op->code == OP_RESIZE_BILINEAR || op->code == OP_MEAN || op->code == OP_RESHAPE);
    if (op->code == OP_DENSIFY || op->code == OP_DEQUANTIZE || int_param) continue;
    CHECK(x->type != TT_INT32, "input '%s' is INT32, a float tensor is expected", tname(m, op->in[k]));
    CHECK(x->is_const || x->produced, "input '%s' is read before any operator writes it", tname(m, op->in[k]));
    CHECK(x->f != NULL || !x->is_const, "input '%s' has no float data", tname(m, op->in[k]));
  }
  CHECK(op->n_out == 1, "%d outputs (expected 1)", op->n_out);
  tfl_tensor *y = &T[op->out[0]];
  CHECK(!y->is_const && !y->produced && !y->is_input, "output '%s' is written twice or is a constant", tname(m, op->out[0]));
  CHECK(y->type == TT_FLOAT32 || op->code == OP_DENSIFY || op->code == OP_DEQUANTIZE, "output '%s' has type %d, only FLOAT32 activations are supported", tname(m, op->out[0]), y->type);
  tfl_tensor *x = &T[op->in[0]];
  mp_conv_params *p = &op->conv;
  bool same = p->pad_top == 0;
  int h, w, c, oh, ow, oc;
  switch (op->code) {
    case OP_CONV_2D:
    case OP_DEPTHWISE_CONV_2D:
    case OP_TRANSPOSE_CONV_BIAS: {
      tfl_tensor *wt = &T[op->in[1]];
      CHECK(nhwc(x, &h, &w, &c) && nhwc(y, &oh, &ow, &oc), "input and output must be [1,H,W,C]");
      CHECK(wt->is_const && wt->f && wt->ndim == 4, "weights '%s' must be a 4-D float constant", tname(m, op->in[1]));
      CHECK(p->stride_h >= 1 && p->stride_w >= 1 && p->stride_h <= 64 && p->stride_w <= 64 && p->dil_h >= 1 &&
                p->dil_w >= 1 && p->dil_h <= 64 && p->dil_w <= 64,
            "strides %d,%d dilations %d,%d", p->stride_h, p->stride_w, p->dil_h, p->dil_w);
      p->in_h = h, p->in_w = w, p->in_c = c, p->out_h = oh, p->out_w = ow, p->out_c = oc;
      p->k_h = wt->shape[1], p->k_w = wt->shape[2];
      if (op->code == OP_CONV_2D) {
        CHECK(wt->shape[0] == oc && wt->shape[3] == c, "weights [%d,%d,%d,%d] do not fit input channels %d, output %d", wt->shape[0], wt->shape[1], wt->shape[2], wt->shape[3], c, oc);
      } else if (op->code == OP_DEPTHWISE_CONV_2D) {
        CHECK(wt->shape[0] == 1 && wt->shape[3] == oc && oc % c == 0, "depthwise weights do not fit %d -> %d channels", c, oc);
        p->depth_multiplier = oc / c;
      } else {
        CHECK(wt->shape[0] == oc && wt->shape[3] == c, "transposed weights do not fit %d -> %d channels", c, oc);
      }
      if (op->n_in > 2 && op->in[2] >= 0) {
        tfl_tensor *b = &T[op->in[2]];
        CHECK(b->is_const && b->f && b->numel == oc, "bias '%s' must be %d float constants", tname(m, op->in[2]), oc);
      }
      int eh, ew, pt, pl;
      if (op->code == OP_TRANSPOSE_CONV_BIAS) { /* the forward conv maps output -> input */
        mp_conv_out_size(oh, p->k_h, p->stride_h, 1, same, &eh, &pt);
        mp_conv_out_size(ow, p->k_w, p->stride_w, 1, same, &ew, &pl);
        CHECK(eh == h && ew == w, "output %dx%d does not transpose to input %dx%d", oh, ow, h, w);
      } else {
        mp_conv_out_size(h, p->k_h, p->stride_h, p->dil_h, same, &eh, &pt);
        mp_conv_out_size(w, p->k_w, p->stride_w, p->dil_w, same, &ew, &pl);
        CHECK(eh == oh && ew == ow, "output %dx%d, expected %dx%d", oh, ow, eh, ew);
      }
      p->pad_top = pt, p->pad_left = pl;
      p->act = op->act;
      break;
    }
    case OP_AVERAGE_POOL_2D:
    case OP_MAX_POOL_2D: {
      CHECK(nhwc(x, &h, &w, &c) && nhwc(y, &oh, &ow, &oc) && oc == c, "input and output must be [1,H,W,C] alike");
      CHECK(p->stride_h >= 1 && p->stride_w >= 1 && p->k_h >= 1 && p->k_w >= 1 && p->k_h <= 1024 && p->k_w <= 1024 &&
                p->stride_h <= 1024 && p->stride_w <= 1024,
            "bad filter or stride");
      int eh, ew, pt, pl;
      mp_conv_out_size(h, p->k_h, p->stride_h, 1, same, &eh, &pt);
      mp_conv_out_size(w, p->k_w, p->stride_w, 1, same, &ew, &pl);
      CHECK(eh == oh && ew == ow, "output %dx%d, expected %dx%d", oh, ow, eh, ew);
      p->in_h = h, p->in_w = w, p->in_c = c, p->out_h = oh, p->out_w = ow, p->out_c = c;
      p->pad_top = pt, p->pad_left = pl, p->dil_h = p->dil_w = 1;
      p->act = op->act;
      break;
    }
    case OP_ADD:
    case OP_MUL:
    case OP_PRELU: {
      tfl_tensor *b = &T[op->in[1]];
      CHECK(b->type != TT_INT32 && broadcastable(x, y) && broadcastable(b, y), "inputs do not broadcast to the output shape");
      for (int k = 1; k <= y->ndim; k++) { /* the output is no larger than the broadcast of the inputs */
        int32_t da = k <= x->ndim ? x->shape[x->ndim - k] : 1, db = k <= b->ndim ? b->shape[b->ndim - k] : 1;
        CHECK(y->shape[y->ndim - k] == (da > db ? da : db), "output shape is not the broadcast shape");
      }
      break;
    }
    case OP_RELU: case OP_RELU6: case OP_LOGISTIC: case OP_HARD_SWISH: case OP_RESHAPE:
      CHECK(x->numel == y->numel, "input has %lld elements, output %lld", (long long)x->numel, (long long)y->numel);
      break;
    case OP_DEQUANTIZE:
    case OP_DENSIFY:
      CHECK(x->numel == y->numel && (x->is_const ? x->f != NULL : x->produced), "input '%s' must be a float tensor of the output's size", tname(m, op->in[0]));
      break;
    case OP_PAD: {
      tfl_tensor *pd = &T[op->in[1]];
      CHECK(x->ndim <= MP_BCAST_DIMS && x->ndim == y->ndim && pd->is_const && pd->i && pd->numel == 2 * x->ndim, "paddings must be an INT32 constant [%d,2]", x->ndim);
      for (int d = 0; d < x->ndim; d++)
        CHECK(pd->i[2 * d] >= 0 && pd->i[2 * d + 1] >= 0 && (int64_t)x->shape[d] + pd->i[2 * d] + pd->i[2 * d + 1] == y->shape[d], "padding of dimension %d does not give the output shape", d);
      break;
    }
    case OP_RESIZE_BILINEAR: {
      tfl_tensor *sz = &T[op->in[1]];
      CHECK(nhwc(x, &h, &w, &c) && nhwc(y, &oh, &ow, &oc) && oc == c, "input and output must be [1,H,W,C] alike");
      CHECK(sz->is_const && sz->i && sz->numel == 2 && sz->i[0] == oh && sz->i[1] == ow, "size must be an INT32 constant [%d,%d]", oh, ow);
      break;
    }
    case OP_CONCATENATION: {
      int ax = op->axis < 0 ? op->axis + y->ndim : op->axis;
      CHECK(ax >= 0 && ax < y->ndim, "axis %d outside %d dimensions", op->axis, y->ndim);
      op->axis = ax;
      int64_t sum = 0;
      for (int k = 0; k < op->n_in; k++) {
        CHECK(op->in[k] >= 0, "missing input %d", k);
        tfl_tensor *a = &T[op->in[k]];
        CHECK(a->type != TT_INT32 && a->ndim == y->ndim, "input %d has %d dimensions, output %d", k, a->ndim, y->ndim);
        for (int d = 0; d < y->ndim; d++) CHECK(d == ax || a->shape[d] == y->shape[d], "input %d does not match the output outside the axis", k);
        sum += a->shape[ax];
      }
      CHECK(sum == y->shape[ax], "inputs add up to %lld along the axis, output has %d", (long long)sum, y->shape[ax]);
      break;
    }
    case OP_DEPTH_TO_SPACE: {
      int b = op->block;
      CHECK(nhwc(x, &h, &w, &c) && nhwc(y, &oh, &ow, &oc) && b >= 1 && b <= 64 && c % (b * b) == 0 && oh == h * b && ow == w * b && oc == c / (b * b),
            "shapes do not fit block size %d", b);
      break;
    }
    case OP_MEAN: {
      tfl_tensor *ax = &T[op->in[1]];
      CHECK(x->ndim <= MP_BCAST_DIMS && ax->is_const && ax->i && ax->numel <= x->ndim, "axes must be an INT32 constant");
      int64_t keep = 1;
      bool red[TFL_MAX_DIMS] = {0};
      for (int k = 0; k < ax->numel; k++) {
        int a = ax->i[k] < 0 ? ax->i[k] + x->ndim : ax->i[k];
        CHECK(a >= 0 && a < x->ndim, "axis %d outside %d dimensions", ax->i[k], x->ndim);
        red[a] = true;
      }
      for (int d = 0; d < x->ndim; d++) keep *= red[d] ? 1 : x->shape[d];
      CHECK(keep == y->numel, "output has %lld elements, expected %lld", (long long)y->numel, (long long)keep);
      break;
    }
    default: CHECK(0, "not supported");
  }
  return NULL;
}

static mp_error *parse_model(mp_tflite *m) {
  fb f = {.b = m->file, .n = m->size};
  if (m->size < 8 || memcmp(m->file + 4, "TFL3", 4) != 0) return mp_errorf("not a TFLite file (no TFL3 identifier)");
  size_t root = fb_deref(&f, 0);
  uint32_t n_codes, n_sub, n_buf;
  size_t codes_v = fb_vector(&f, root, 1, 4, &n_codes);
  size_t subs = fb_vector(&f, root, 2, 4, &n_sub);
  size_t bufs = fb_vector(&f, root, 4, 4, &n_buf);
  if (f.err[0]) return mp_errorf("model table: %s", f.err);
  if (n_sub < 1) return mp_errorf("the model has no subgraph");
  /* operator codes: builtin = max(deprecated_builtin_code (field 0, int8), builtin_code (field 3)) */
  int *codes = calloc(n_codes ? n_codes : 1, sizeof *codes);
  char **customs = calloc(n_codes ? n_codes : 1, sizeof *customs);
  mp_error *e = NULL;
  if (!codes || !customs) e = mp_errorf("out of memory");
  for (uint32_t k = 0; !e && k < n_codes; k++) {
    size_t ct = fb_vec_table(&f, codes_v, k);
    int dep = (int8_t)fb_u8(&f, ct, 0, 0);
    int bc = fb_i32(&f, ct, 3, 0);
    codes[k] = dep > bc ? dep : bc;
    customs[k] = fb_string(&f, ct, 1);
    if (f.err[0]) e = mp_errorf("operator code %u: %s", k, f.err);
    /* negative codes stand for custom operators below (-1 - index): a file cannot name one */
    else if (codes[k] < 0) e = mp_errorf("operator code %u: builtin code %d is not a TFLite operator", k, codes[k]);
  }
  size_t sg = e ? 0 : fb_vec_table(&f, subs, 0);
  uint32_t n_t = 0, n_ops = 0;
  size_t tv = sg ? fb_vector(&f, sg, 0, 4, &n_t) : 0;
  size_t ov = sg ? fb_vector(&f, sg, 3, 4, &n_ops) : 0;
  if (!e && f.err[0]) e = mp_errorf("subgraph 0: %s", f.err);
  if (!e && (n_t > 1000000 || n_ops > 1000000)) e = mp_errorf("subgraph 0: %u tensors and %u operators is implausible", n_t, n_ops);
  if (!e) {
    m->t = calloc(n_t ? n_t : 1, sizeof *m->t);
    m->ops = calloc(n_ops ? n_ops : 1, sizeof *m->ops);
    if (!m->t || !m->ops) e = mp_errorf("out of memory");
    m->nt = (int)n_t;
  }
  for (uint32_t k = 0; !e && k < n_t; k++) e = parse_tensor(&f, fb_vec_table(&f, tv, k), bufs, n_buf, &m->t[k], (int)k);
  if (!e) e = read_index_vector(&f, sg, 1, m->nt, false, &m->inputs, &m->n_inputs, "subgraph inputs");
  if (!e) e = read_index_vector(&f, sg, 2, m->nt, false, &m->outputs, &m->n_outputs, "subgraph outputs");
  for (uint32_t k = 0; !e && k < n_ops; k++) {
    e = parse_operator(&f, fb_vec_table(&f, ov, k), codes, (const char *const *)customs, n_codes, m->nt, &m->ops[k], (int)k);
    m->nops = (int)k + 1;
  }
  /* Unsupported operators, all named at once. */
  if (!e) {
    char list[1024] = "";
    size_t len = 0;
    for (int k = 0; k < m->nops; k++) {
      int code = m->ops[k].code;
      switch (code) {
        case OP_ADD: case OP_AVERAGE_POOL_2D: case OP_CONCATENATION: case OP_CONV_2D: case OP_DEPTHWISE_CONV_2D:
        case OP_DEPTH_TO_SPACE: case OP_DEQUANTIZE: case OP_LOGISTIC: case OP_MAX_POOL_2D: case OP_MUL: case OP_RELU:
        case OP_RELU6: case OP_RESHAPE: case OP_RESIZE_BILINEAR: case OP_PAD: case OP_MEAN: case OP_PRELU:
        case OP_HARD_SWISH: case OP_DENSIFY: case OP_TRANSPOSE_CONV_BIAS: continue;
        default: break;
      }
      char nm[96];
      if (code < 0) snprintf(nm, sizeof nm, "custom '%s'", customs[-1 - code] ? customs[-1 - code] : "?");
      else snprintf(nm, sizeof nm, "%s", op_name(code));
      if (strstr(list, nm)) continue;
      len += (size_t)snprintf(list + len, len < sizeof list ? sizeof list - len : 0, "%s%s", len ? ", " : "", nm);
      if (len >= sizeof list) break;
    }
    if (list[0]) e = mp_errorf("unsupported operators: %s", list);
  }
  for (uint32_t k = 0; k < n_codes && customs; k++) free(customs[k]);
  free(customs);
  free(codes);
  if (e) return e;

  /* Constants to f32, then the operators in file order (TFLite stores them executable in order). */
  int64_t budget = TFL_MAX_CONST_FLOATS;
  for (int k = 0; k < m->nt; k++)
    if (m->t[k].is_const) MP_TRY(mp_error_wrap(load_constant(m, &f, &m->t[k], &budget), "tensor %d", k));
  for (int k = 0; k < m->n_inputs; k++) {
    tfl_tensor *t = &m->t[m->inputs[k]];
    if (t->is_const || t->type != TT_FLOAT32) return mp_errorf("graph input '%s' must be a FLOAT32 activation", tname(m, m->inputs[k]));
    if (t->is_input) return mp_errorf("graph input '%s' is listed twice", tname(m, m->inputs[k]));
    t->is_input = t->produced = true;
  }
  for (int k = 0; k < m->n_outputs; k++) m->t[m->outputs[k]].is_output = true;
  for (int k = 0; k < m->nt; k++) m->t[k].last_use = -1;
  for (int k = 0; k < m->nops; k++) {
    tfl_op *op = &m->ops[k];
    MP_TRY(check_operator(m, op, k));
    tfl_tensor *x = &m->t[op->in[0]], *y = &m->t[op->out[0]];
    if ((op->code == OP_DEQUANTIZE || op->code == OP_DENSIFY) && x->is_const) { /* fold at load */
      if (y->numel > budget) return mp_errorf("constants too large");
      budget -= y->numel;
      y->f = mp_alloc((size_t)y->numel * sizeof *y->f);
      if (!y->f) return mp_errorf("out of memory");
      memcpy(y->f, x->f, (size_t)y->numel * sizeof *y->f);
      y->is_const = true;
      op->folded = true;
      continue;
    }
    if (op->code == OP_DENSIFY) return mp_errorf("operator %d (DENSIFY): input '%s' is not a constant", k, tname(m, op->in[0]));
    y->produced = true;
    for (int i = 0; i < op->n_in; i++)
      if (op->in[i] >= 0) m->t[op->in[i]].last_use = k;
  }
  for (int k = 0; k < m->n_outputs; k++)
    if (!m->t[m->outputs[k]].produced) return mp_errorf("graph output '%s' is never written", tname(m, m->outputs[k]));
  /* Raw constants that only fed folded operators are no longer needed. */
  for (int k = 0; k < m->nt; k++) {
    tfl_tensor *t = &m->t[k];
    if (t->is_const && t->last_use < 0 && t->f && !t->is_output) {
      bool used = false;
      for (int j = 0; j < m->nops && !used; j++)
        if (!m->ops[j].folded)
          for (int i = 0; i < m->ops[j].n_in; i++) used |= m->ops[j].in[i] == k;
      if (!used) {
        mp_free(t->f);
        t->f = NULL;
      }
    }
  }
  return NULL;
}

mp_error *mp_tflite_open_memory(const uint8_t *data, size_t n, mp_tflite **out) {
  *out = NULL;
  mp_tflite *m = calloc(1, sizeof *m);
  if (!m) return mp_errorf("out of memory");
  m->file = malloc(n ? n : 1);
  if (!m->file) {
    free(m);
    return mp_errorf("out of memory");
  }
  memcpy(m->file, data, n);
  m->size = n;
  mp_error *e = parse_model(m);
  if (e) {
    mp_tflite_close(m);
    return e;
  }
  free(m->file); /* everything needed was copied out */
  m->file = NULL;
  *out = m;
  return NULL;
}

mp_error *mp_tflite_open(const char *path, mp_tflite **out) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return mp_errorf("cannot open %s (run scripts/fetch-models.sh?)", path);
  fseek(fp, 0, SEEK_END);
  long len = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  if (len <= 0 || len > (1L << 30)) {
    fclose(fp);
    return mp_errorf("%s: unexpected size %ld", path, len);
  }
  uint8_t *buf = malloc((size_t)len);
  size_t got = buf ? fread(buf, 1, (size_t)len, fp) : 0;
  fclose(fp);
  if (got != (size_t)len) {
    free(buf);
    return mp_errorf("%s: read failed", path);
  }
  mp_error *e = mp_tflite_open_memory(buf, got, out);
  free(buf);
  return mp_error_wrap(e, "%s", path);
}

/* ------------------------------------------------------------------ running */

int mp_tflite_n_inputs(const mp_tflite *m) { return m->n_inputs; }
int mp_tflite_n_outputs(const mp_tflite *m) { return m->n_outputs; }
const char *mp_tflite_output_name(const mp_tflite *m, int i) {
  return i >= 0 && i < m->n_outputs ? tname(m, m->outputs[i]) : NULL;
}
static int shape_of(const tfl_tensor *t, int32_t *shape) {
  memcpy(shape, t->shape, (size_t)t->ndim * sizeof *shape);
  return t->ndim;
}
int mp_tflite_input_shape(const mp_tflite *m, int i, int32_t *shape) { return shape_of(&m->t[m->inputs[i]], shape); }
int mp_tflite_output_shape(const mp_tflite *m, int i, int32_t *shape) { return shape_of(&m->t[m->outputs[i]], shape); }
int64_t mp_tflite_input_numel(const mp_tflite *m, int i) { return m->t[m->inputs[i]].numel; }

const float *mp_tflite_output(const mp_tflite *m, int i, int64_t *numel) {
  if (i < 0 || i >= m->n_outputs) return NULL;
  const tfl_tensor *t = &m->t[m->outputs[i]];
  if (numel) *numel = t->numel;
  return t->f;
}

const float *mp_tflite_output_by_name(const mp_tflite *m, const char *name, int64_t *numel) {
  for (int i = 0; i < m->n_outputs; i++)
    if (strcmp(tname(m, m->outputs[i]), name) == 0) return mp_tflite_output(m, i, numel);
  return NULL;
}

static void reduce_mean(const tfl_tensor *x, const tfl_tensor *axes, float *out, int64_t out_n) {
  bool red[TFL_MAX_DIMS] = {0};
  for (int k = 0; k < axes->numel; k++) red[axes->i[k] < 0 ? axes->i[k] + x->ndim : axes->i[k]] = true;
  int64_t count = 1;
  for (int d = 0; d < x->ndim; d++) count *= red[d] ? x->shape[d] : 1;
  double *acc = calloc((size_t)out_n, sizeof *acc);
  int64_t idx[TFL_MAX_DIMS] = {0};
  for (int64_t i = 0; acc && i < x->numel; i++) {
    int64_t o = 0;
    for (int d = 0; d < x->ndim; d++)
      if (!red[d]) o = o * x->shape[d] + idx[d];
    acc[o] += x->f[i];
    for (int d = x->ndim - 1; d >= 0; d--) {
      if (++idx[d] < x->shape[d]) break;
      idx[d] = 0;
    }
  }
  for (int64_t o = 0; o < out_n; o++) out[o] = acc ? (float)(acc[o] / (double)count) : 0.0f;
  free(acc);
}

static void concat(const mp_tflite *m, const tfl_op *op, float *out) {
  const tfl_tensor *y = &m->t[op->out[0]];
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < op->axis; d++) outer *= y->shape[d];
  for (int d = op->axis + 1; d < y->ndim; d++) inner *= y->shape[d];
  int64_t row = y->shape[op->axis] * inner, off = 0;
  for (int k = 0; k < op->n_in; k++) {
    const tfl_tensor *a = &m->t[op->in[k]];
    int64_t chunk = a->shape[op->axis] * inner;
    for (int64_t o = 0; o < outer; o++) memcpy(out + o * row + off, a->f + o * chunk, (size_t)chunk * sizeof *out);
    off += chunk;
  }
}

static void pad(const tfl_tensor *x, const int32_t *pads, const tfl_tensor *y, float *out) {
  memset(out, 0, (size_t)y->numel * sizeof *out);
  int64_t idx[TFL_MAX_DIMS] = {0};
  int64_t inner = x->shape[x->ndim - 1];
  for (int64_t i = 0; i < x->numel; i += inner) {
    int64_t o = 0;
    for (int d = 0; d < x->ndim; d++) o = o * y->shape[d] + idx[d] + pads[2 * d];
    memcpy(out + o, x->f + i, (size_t)inner * sizeof *out);
    for (int d = x->ndim - 2; d >= 0; d--) {
      if (++idx[d] < x->shape[d]) break;
      idx[d] = 0;
    }
  }
}

static mp_error *run_op(mp_tflite *m, mp_pool *pool, const tfl_op *op) {
  tfl_tensor *x = &m->t[op->in[0]], *y = &m->t[op->out[0]];
  if (!y->f) {
    y->f = mp_alloc((size_t)y->numel * sizeof *y->f);
    if (!y->f) return mp_errorf("out of memory for tensor '%s'", y->name ? y->name : "");
  }
  float *o = y->f;
  const float *in = x->f;
  const float *bias = op->n_in > 2 && op->in[2] >= 0 ? m->t[op->in[2]].f : NULL;
  int64_t n = y->numel;
  switch (op->code) {
    case OP_CONV_2D: mp_nhwc_conv2d(pool, o, in, m->t[op->in[1]].f, bias, &op->conv); break;
    case OP_DEPTHWISE_CONV_2D: mp_nhwc_depthwise_conv2d(pool, o, in, m->t[op->in[1]].f, bias, &op->conv); break;
    case OP_TRANSPOSE_CONV_BIAS: mp_nhwc_transpose_conv2d(o, in, m->t[op->in[1]].f, bias, &op->conv); break;
    case OP_AVERAGE_POOL_2D: mp_nhwc_pool2d(pool, o, in, &op->conv, false); break;
    case OP_MAX_POOL_2D: mp_nhwc_pool2d(pool, o, in, &op->conv, true); break;
    case OP_ADD:
    case OP_MUL:
    case OP_PRELU: {
      const tfl_tensor *b = &m->t[op->in[1]];
      mp_broadcast_binary(o, in, x->ndim, x->shape, b->f, b->ndim, b->shape, y->ndim, y->shape,
                          op->code == OP_ADD ? MP_BIN_ADD : op->code == OP_MUL ? MP_BIN_MUL : MP_BIN_PRELU);
      mp_activate(o, n, op->act);
      break;
    }
    case OP_RELU: for (int64_t i = 0; i < n; i++) o[i] = in[i] > 0 ? in[i] : 0; break;
    case OP_RELU6: for (int64_t i = 0; i < n; i++) o[i] = in[i] < 0 ? 0 : in[i] > 6 ? 6 : in[i]; break;
    case OP_LOGISTIC: for (int64_t i = 0; i < n; i++) o[i] = 1.0f / (1.0f + expf(-in[i])); break;
    case OP_HARD_SWISH:
      for (int64_t i = 0; i < n; i++) {
        float r = in[i] + 3.0f;
        r = r < 0 ? 0 : r > 6 ? 6 : r;
        o[i] = in[i] * r / 6.0f;
      }
      break;
    case OP_RESHAPE:
    case OP_DEQUANTIZE:
    case OP_DENSIFY: memcpy(o, in, (size_t)n * sizeof *o); break;
    case OP_PAD: pad(x, m->t[op->in[1]].i, y, o); break;
    case OP_RESIZE_BILINEAR:
      mp_nhwc_resize_bilinear(o, in, x->shape[1], x->shape[2], x->shape[3], y->shape[1], y->shape[2], op->align_corners,
                              op->half_pixel);
      break;
    case OP_CONCATENATION:
      concat(m, op, o);
      mp_activate(o, n, op->act);
      break;
    case OP_DEPTH_TO_SPACE: mp_nhwc_depth_to_space(o, in, x->shape[1], x->shape[2], y->shape[3], op->block); break;
    case OP_MEAN: reduce_mean(x, &m->t[op->in[1]], o, n); break;
    default: return mp_errorf("operator %s cannot run", op_name(op->code));
  }
  return NULL;
}

mp_error *mp_tflite_run(mp_tflite *m, mp_pool *pool, const float *const *inputs) {
  for (int k = 0; k < m->nt; k++) { /* drop the previous run's activations */
    tfl_tensor *t = &m->t[k];
    if (!t->is_const) {
      mp_free(t->f);
      t->f = NULL;
    }
  }
  for (int k = 0; k < m->n_inputs; k++) {
    tfl_tensor *t = &m->t[m->inputs[k]];
    t->f = mp_alloc((size_t)t->numel * sizeof *t->f);
    if (!t->f) return mp_errorf("out of memory");
    memcpy(t->f, inputs[k], (size_t)t->numel * sizeof *t->f);
  }
  for (int k = 0; k < m->nops; k++) {
    const tfl_op *op = &m->ops[k];
    if (op->folded) continue;
    struct timespec t0, t1;
    if (m->op_seconds) clock_gettime(CLOCK_MONOTONIC, &t0);
    MP_TRY(mp_error_wrap(run_op(m, pool, op), "operator %d (%s)", k, op_name(op->code)));
    if (m->op_seconds && op->code >= 0 && op->code <= OP_TRANSPOSE_CONV_BIAS) {
      clock_gettime(CLOCK_MONOTONIC, &t1);
      m->op_seconds[op->code] += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    }
    for (int i = 0; i < op->n_in; i++) { /* free activations after their last reader */
      int ti = op->in[i];
      if (ti < 0) continue;
      tfl_tensor *t = &m->t[ti];
      if (!t->is_const && !t->is_output && t->last_use == k) {
        mp_free(t->f);
        t->f = NULL;
      }
    }
  }
  return NULL;
}

char *mp_tflite_op_summary(const mp_tflite *m) {
  size_t cap = 4096, len = 0;
  char *s = malloc(cap);
  if (!s) return NULL;
  s[0] = 0;
  bool done[OP_TRANSPOSE_CONV_BIAS + 1] = {0};
  for (int k = 0; k < m->nops; k++) {
    int c = m->ops[k].code;
    if (c < 0 || c > OP_TRANSPOSE_CONV_BIAS || done[c]) continue;
    done[c] = true;
    int count = 0;
    for (int j = 0; j < m->nops; j++) count += m->ops[j].code == c;
    len += (size_t)snprintf(s + len, len < cap ? cap - len : 0, "%s%s x%d", len ? ", " : "", op_name(c), count);
  }
  return s;
}

int64_t mp_tflite_work(const mp_tflite *m) {
  int64_t w = 0;
  for (int k = 0; k < m->nops; k++) {
    const tfl_op *op = &m->ops[k];
    if (op->folded) continue;
    int64_t per = 1;
    if (op->code == OP_CONV_2D || op->code == OP_TRANSPOSE_CONV_BIAS)
      per = (int64_t)op->conv.k_h * op->conv.k_w * op->conv.in_c;
    else if (op->code == OP_DEPTHWISE_CONV_2D || op->code == OP_AVERAGE_POOL_2D || op->code == OP_MAX_POOL_2D)
      per = (int64_t)op->conv.k_h * op->conv.k_w;
    else if (op->code == OP_MEAN || op->code == OP_PAD)
      per = m->t[op->in[0]].numel / (m->t[op->out[0]].numel ? m->t[op->out[0]].numel : 1) + 1;
    w += m->t[op->out[0]].numel * per;
    if (w > ((int64_t)1 << 50)) break;
  }
  return w;
}

void mp_tflite_profile(mp_tflite *m, bool on) {
  free(m->op_seconds);
  m->op_seconds = on ? calloc(OP_TRANSPOSE_CONV_BIAS + 1, sizeof *m->op_seconds) : NULL;
}

char *mp_tflite_profile_report(const mp_tflite *m) {
  if (!m->op_seconds) return NULL;
  size_t cap = 2048, len = 0;
  char *s = malloc(cap);
  if (!s) return NULL;
  s[0] = 0;
  for (int c = 0; c <= OP_TRANSPOSE_CONV_BIAS; c++)
    if (m->op_seconds[c] > 0)
      len += (size_t)snprintf(s + len, len < cap ? cap - len : 0, "%s%s %.3f s", len ? ", " : "", op_name(c), m->op_seconds[c]);
  return s;
}
