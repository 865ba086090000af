/* libFuzzer target: the shard index of a split safetensors checkpoint (io/shard_index.h) on arbitrary
 * bytes: cJSON's parse, then every check of mp_shard_index_from_json, and a lookup of each entry. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/shard_index.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  cJSON *root = cJSON_ParseWithLength((const char *)data, size);
  if (!root) return 0;
  mp_shard_index ix;
  mp_error *e = mp_shard_index_from_json("fuzz.safetensors.index.json", root, &ix);
  if (e) {
    mp_error_free(e);
  } else {
    for (size_t i = 0; i < ix.n_entries; i++) {
      const mp_shard_entry *at = mp_shard_index_find(&ix, ix.entries[i].tensor);
      if (!at || at->shard < 0 || at->shard >= ix.n_shards) abort();
      size_t plen;
      long k, n;
      const char *suffix;
      if (mp_shard_name_parts(ix.shards[at->shard], &plen, &k, &n, &suffix) && (k < 1 || k > n || plen >= strlen(ix.shards[at->shard])))
        abort(); /* an accepted numbered shard is k of n, 1 <= k <= n */
    }
    mp_shard_index_free(&ix);
  }
  cJSON_Delete(root);
  return 0;
}
