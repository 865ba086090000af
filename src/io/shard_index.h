/* The index of a safetensors checkpoint split into several files ("shards"), as diffusers' and
 * transformers' save_pretrained(max_shard_size=...) write it beside the shards:
 *
 *   diffusion_pytorch_model.safetensors.index.json
 *     {"metadata": {"total_size": 3438167536},
 *      "weight_map": {"conv_in.bias": "diffusion_pytorch_model-00001-of-00002.safetensors", ...}}
 *   diffusion_pytorch_model-00001-of-00002.safetensors, diffusion_pytorch_model-00002-of-00002.safetensors
 *
 * This part reads the index's JSON only (io/diffusers.c finds, checks and maps the shard files).
 * A shard must be a bare `.safetensors` file name (the shards sit beside their index: no folder, no
 * path); shards named in the save_pretrained way ("<prefix>-<k>-of-<n><suffix>") must be listed
 * 1..n, all of one n. */
#ifndef MP_IO_SHARD_INDEX_H
#define MP_IO_SHARD_INDEX_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "core/error.h"

/* More shards than any real checkpoint has (an SDXL UNet saved in 100 MB shards has about 100). */
#define MP_SHARD_INDEX_MAX_SHARDS 256

typedef struct {
  char *tensor; /* a key of weight_map */
  int shard;    /* its shard: an index into mp_shard_index.shards */
} mp_shard_entry;

typedef struct {
  char **shards; /* the distinct shard file names, sorted */
  int n_shards;
  mp_shard_entry *entries; /* weight_map, sorted by tensor name, each name once */
  size_t n_entries;
} mp_shard_index;

/* Check and take in a parsed index. `file` names it in errors, which say the key and what was expected
 * and found. On error *out is left empty (nothing to free). */
mp_error *mp_shard_index_from_json(const char *file, const cJSON *root, mp_shard_index *out);
void mp_shard_index_free(mp_shard_index *ix);

/* The entry of `tensor`, or NULL. O(log n). */
const mp_shard_entry *mp_shard_index_find(const mp_shard_index *ix, const char *tensor);

/* Whether `name` is a save_pretrained shard name: "<prefix>-<k>-of-<n><suffix>" with k and n
 * decimal (5 digits as written) and the suffix starting with '.'; gives the prefix length, k, n and the
 * suffix (a pointer into name). */
int mp_shard_name_parts(const char *name, size_t *prefix_len, long *k, long *n, const char **suffix);

#endif
