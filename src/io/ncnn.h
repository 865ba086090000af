/* ncnn models: a `.param` text file (the graph) and a `.bin` file (the weights).
 *
 * .param (text):
 *   7767517                                   magic
 *   <layer count> <blob count>
 *   <Type> <name> <n inputs> <n outputs> <input blob names...> <output blob names...> <k=v ...>
 *   ...one line per layer, in execution order.
 * A parameter key 0..31 holds one int or float (a float has '.', 'e' or 'E'); the key -23300-id
 * holds an array "count,v1,...,vcount" of parameter id.
 *
 * .bin: the weights of every layer that has any, in layer order, with no header. Which blobs a
 * layer stores, and how many values each, follows from its type and parameters (for example a
 * Convolution stores weight_data_size (param 6) weights, then num_output (param 0) biases when
 * bias_term (param 5) is set). A blob that may be stored compactly starts with a 4-byte tag:
 * 0x01306B47 fp16, 0x000D4B38 int8, 0x0002C056 f32, 0 f32, other non-zero values an 8-bit index
 * into a 256-entry f32 table that follows the tag; fp16, int8 and index data are padded to 4 bytes.
 * Other blobs (biases, PReLU slopes) are raw f32 with no tag.
 *
 * The reader checks the two files against each other: the declared layer and blob counts, every
 * blob name (an input must be produced by an earlier layer; an output produced once), every weight
 * size against what is left in the .bin, and that the .bin ends exactly where the last weight does.
 * Weights are converted to f32 at load; the model owns them. */
#ifndef MP_IO_NCNN_H
#define MP_IO_NCNN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define MP_NCNN_MAGIC 7767517
#define MP_NCNN_MAX_PARAM_ID 32 /* ids 0..31, as ncnn */

typedef struct {
  bool is_float; /* as written in the file */
  int32_t i;     /* the value as int (a float is truncated) */
  float f;       /* the value as float */
} mp_ncnn_value;

typedef struct {
  int id;          /* 0..31 */
  bool is_array;   /* written as -23300-id=count,... */
  int count;       /* number of values (1 for a scalar) */
  mp_ncnn_value *v;
} mp_ncnn_param;

typedef enum {
  MP_NCNN_STORE_F32,     /* raw f32 (untagged, or tag 0) */
  MP_NCNN_STORE_F32_TAG, /* tag 0x0002C056 */
  MP_NCNN_STORE_F16,     /* tag 0x01306B47 */
  MP_NCNN_STORE_TABLE8,  /* 256-entry f32 table + u8 indices */
} mp_ncnn_storage;

typedef struct {
  const char *what;        /* "weight", "bias", "slope" */
  int64_t count;           /* number of values */
  mp_ncnn_storage storage; /* how the .bin stored them */
  float *data;             /* converted to f32, owned (mp_alloc) */
} mp_ncnn_weight;

#define MP_NCNN_MAX_WEIGHTS 2

typedef struct {
  char *type;  /* "Convolution" */
  char *name;  /* "Conv_0" */
  int line;    /* 1-based line in the .param file */
  int n_inputs, n_outputs;
  int *inputs, *outputs; /* blob indices */
  int n_params;
  mp_ncnn_param *params;
  int n_weights;
  mp_ncnn_weight weights[MP_NCNN_MAX_WEIGHTS];
} mp_ncnn_layer;

typedef struct {
  char *name;
  int producer;    /* layer index */
  int n_consumers; /* layers that read it */
} mp_ncnn_blob;

typedef struct mp_ncnn_model {
  int n_layers, n_blobs;
  mp_ncnn_layer *layers;
  mp_ncnn_blob *blobs;
  struct mp_ncnn_names *names; /* blob name -> index */
} mp_ncnn_model;

/* Read `param_path` and `bin_path`. On error *out is NULL and the message names the file, the line
 * (for .param) or byte offset (for .bin), and what was expected. */
mp_error *mp_ncnn_open(const char *param_path, const char *bin_path, mp_ncnn_model **out);
/* The same from memory; `param_name`/`bin_name` only label error messages. */
mp_error *mp_ncnn_parse(const char *param_name, const char *param_text, size_t param_len, const char *bin_name,
                        const void *bin, size_t bin_len, mp_ncnn_model **out);
void mp_ncnn_free(mp_ncnn_model *m);

/* Blob index by name, or -1. */
int mp_ncnn_find_blob(const mp_ncnn_model *m, const char *name);

/* Parameter lookups. A missing key yields `def`. Errors name the layer and the key. */
const mp_ncnn_param *mp_ncnn_param_find(const mp_ncnn_layer *l, int id);
mp_error *mp_ncnn_get_int(const mp_ncnn_layer *l, int id, int def, int *out);     /* must be written as an int */
mp_error *mp_ncnn_get_float(const mp_ncnn_layer *l, int id, float def, float *out); /* int or float */
/* An array parameter (NULL and 0 values when absent). */
mp_error *mp_ncnn_get_array(const mp_ncnn_layer *l, int id, const mp_ncnn_value **v, int *count);

/* The weight blob `what` of a layer, or NULL. */
const mp_ncnn_weight *mp_ncnn_weight_find(const mp_ncnn_layer *l, const char *what);

#endif
