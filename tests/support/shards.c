#include "shards.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/weights.h"
#include "testutil.h"

void test_split_shards(const char *dir, const char *sub, const char *stem, int n, const char *prefix, const char *index_name) {
  char folder[1024], single[1200], path[2048];
  snprintf(folder, sizeof folder, "%s%s%s", dir, *sub ? "/" : "", sub);
  snprintf(single, sizeof single, "%s/%s.safetensors", folder, stem);
  mp_weights *w;
  assert_ok(mp_weights_open(single, &w));
  const size_t count = mp_weights_count(w);
  assert_true(n >= 1 && (size_t)n <= count);
  const char **names = calloc(count, sizeof *names);
  mp_tensor *ts = calloc(count, sizeof *ts);
  assert_non_null(names);
  assert_non_null(ts);
  cJSON *index = cJSON_CreateObject(), *map = cJSON_CreateObject();
  double total = 0;
  for (int k = 0; k < n; k++) {
    const size_t from = count * (size_t)k / (size_t)n, to = count * (size_t)(k + 1) / (size_t)n;
    char shard[512];
    snprintf(shard, sizeof shard, "%s-%05d-of-%05d.safetensors", prefix ? prefix : stem, k + 1, n);
    for (size_t i = from; i < to; i++) {
      const mp_weight *t = mp_weights_at(w, i);
      names[i - from] = t->name;
      ts[i - from] = t->t;
      ts[i - from].owns_data = false;
      total += (double)mp_tensor_nbytes(&t->t);
      cJSON_AddStringToObject(map, t->name, shard);
    }
    snprintf(path, sizeof path, "%s/%s", folder, shard);
    assert_ok(mp_safetensors_write(path, to - from, names, ts, NULL));
  }
  cJSON *meta = cJSON_AddObjectToObject(index, "metadata");
  cJSON_AddNumberToObject(meta, "total_size", total);
  cJSON_AddItemToObject(index, "weight_map", map);
  char *text = cJSON_Print(index);
  assert_non_null(text);
  if (index_name) snprintf(path, sizeof path, "%s/%s", folder, index_name);
  else snprintf(path, sizeof path, "%s/%s.safetensors.index.json", folder, stem);
  test_write_file(path, text, strlen(text));
  cJSON_free(text);
  cJSON_Delete(index);
  free(names), free(ts);
  mp_weights_close(w);
  assert_int_equal(unlink(single), 0);
}
