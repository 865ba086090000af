/* A sharded safetensors checkpoint's index (see shard_index.h): checked as text, before any file is opened. */
#include "io/shard_index.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static const char *json_type(const cJSON *x) {
  if (!x) return "missing";
  if (cJSON_IsString(x)) return "a string";
  if (cJSON_IsNumber(x)) return "a number";
  if (cJSON_IsObject(x)) return "an object";
  if (cJSON_IsArray(x)) return "a list";
  if (cJSON_IsBool(x)) return "true or false";
  return "null";
}

static bool is_digit(char c) { return c >= '0' && c <= '9'; }

int mp_shard_name_parts(const char *name, size_t *prefix_len, long *k, long *n, const char **suffix) {
  const char *of = NULL;
  for (const char *p = strstr(name, "-of-"); p; p = strstr(p + 1, "-of-")) of = p;
  if (!of) return 0;
  const char *kd = of;
  while (kd > name && is_digit(kd[-1])) kd--;
  if (kd == of || kd == name || kd[-1] != '-' || of - kd > 9) return 0;
  const char *nd = of + 4, *end = nd;
  while (is_digit(*end)) end++;
  if (end == nd || end - nd > 9 || *end != '.') return 0;
  *prefix_len = (size_t)(kd - 1 - name);
  *k = strtol(kd, NULL, 10);
  *n = strtol(nd, NULL, 10);
  *suffix = end;
  return 1;
}

/* A file name beside the index: no folder part, no control characters, ending in .safetensors. */
static bool bare_safetensors_name(const char *s) {
  static const char ext[] = ".safetensors";
  const size_t n = strlen(s), e = sizeof ext - 1;
  if (n <= e || n > 255) return false;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++)
    if (*p == '/' || *p == '\\' || *p < 0x20) return false;
  return strcmp(s + n - e, ext) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_entry(const void *a, const void *b) {
  return strcmp(((const mp_shard_entry *)a)->tensor, ((const mp_shard_entry *)b)->tensor);
}

void mp_shard_index_free(mp_shard_index *ix) {
  if (!ix) return;
  for (int i = 0; i < ix->n_shards; i++) free(ix->shards[i]);
  free(ix->shards);
  for (size_t i = 0; i < ix->n_entries; i++) free(ix->entries[i].tensor);
  free(ix->entries);
  memset(ix, 0, sizeof *ix);
}

const mp_shard_entry *mp_shard_index_find(const mp_shard_index *ix, const char *tensor) {
  mp_shard_entry key = {.tensor = (char *)tensor};
  return ix->n_entries ? bsearch(&key, ix->entries, ix->n_entries, sizeof key, cmp_entry) : NULL;
}

/* Shards named "<prefix>-<k>-of-<n><suffix>" come as a set: every k of 1..n once, one n for the set. */
static mp_error *check_numbered(const char *file, const mp_shard_index *ix) {
  for (int i = 0; i < ix->n_shards; i++) {
    size_t plen;
    long k, n;
    const char *suffix;
    if (!mp_shard_name_parts(ix->shards[i], &plen, &k, &n, &suffix)) continue;
    if (n < 1 || n > MP_SHARD_INDEX_MAX_SHARDS || k < 1 || k > n)
      return mp_errorf("%s: shard %s is number %ld of %ld, expected a number in 1..%ld with at most %d shards", file, ix->shards[i],
                       k, n, n, MP_SHARD_INDEX_MAX_SHARDS);
    bool seen[MP_SHARD_INDEX_MAX_SHARDS + 1] = {false};
    for (int j = 0; j < ix->n_shards; j++) {
      size_t pl;
      long kj, nj;
      const char *sj;
      if (!mp_shard_name_parts(ix->shards[j], &pl, &kj, &nj, &sj) || pl != plen || strncmp(ix->shards[j], ix->shards[i], plen) != 0 ||
          strcmp(sj, suffix) != 0)
        continue; /* another set */
      if (nj != n) return mp_errorf("%s: shards %s and %s are of %ld and of %ld shards; expected one set", file, ix->shards[i], ix->shards[j], n, nj);
      if (kj < 1 || kj > n) continue; /* reported when j's turn comes */
      if (seen[kj]) return mp_errorf("%s: two shard files are number %ld of %ld (one is %s)", file, kj, n, ix->shards[j]);
      seen[kj] = true;
    }
    for (long m = 1; m <= n; m++)
      if (!seen[m])
        return mp_errorf("%s: weight_map names %s but no shard %ld of %ld; expected every shard of the set to hold a tensor", file,
                         ix->shards[i], m, n);
  }
  return NULL;
}

mp_error *mp_shard_index_from_json(const char *file, const cJSON *root, mp_shard_index *out) {
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(root)) return mp_errorf("%s: expected a JSON object with a \"weight_map\", found %s", file, json_type(root));
  const cJSON *meta = cJSON_GetObjectItemCaseSensitive(root, "metadata");
  if (meta && !cJSON_IsObject(meta) && !cJSON_IsNull(meta))
    return mp_errorf("%s: \"metadata\" is %s, expected an object", file, json_type(meta));
  const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(map))
    return mp_errorf("%s: \"weight_map\" is %s, expected an object from tensor names to shard file names", file, json_type(map));
  size_t n = 0;
  for (const cJSON *x = map->child; x; x = x->next) n++;
  if (!n) return mp_errorf("%s: \"weight_map\" is empty, expected at least one tensor and its shard file", file);

  mp_shard_index ix = {0};
  const char **shard_of = calloc(n, sizeof *shard_of); /* each entry's shard name, in the JSON */
  const char **names = calloc(n, sizeof *names);        /* the same, sorted, then made unique */
  ix.entries = calloc(n, sizeof *ix.entries);
  mp_error *e = !shard_of || !names || !ix.entries ? mp_errorf("out of memory") : NULL;
  size_t i = 0;
  for (const cJSON *x = map->child; !e && x; x = x->next, i++) {
    if (!x->string || !*x->string)
      e = mp_errorf("%s: \"weight_map\" has an entry with an empty tensor name", file);
    else if (!cJSON_IsString(x) || !x->valuestring)
      e = mp_errorf("%s: weight_map[\"%.200s\"] is %s, expected a shard file name (a string)", file, x->string, json_type(x));
    else if (!bare_safetensors_name(x->valuestring))
      e = mp_errorf("%s: weight_map[\"%.200s\"] is \"%.200s\", expected the name of a .safetensors file beside the index (no folder, "
                    "no path)",
                    file, x->string, x->valuestring);
    else if (!(ix.entries[i].tensor = strdup(x->string)))
      e = mp_errorf("out of memory");
    else
      ix.n_entries = i + 1, shard_of[i] = names[i] = x->valuestring;
  }
  size_t n_names = 0;
  if (!e) {
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t j = 0; j < n; j++)
      if (!n_names || strcmp(names[n_names - 1], names[j]) != 0) names[n_names++] = names[j];
    if (n_names > MP_SHARD_INDEX_MAX_SHARDS)
      e = mp_errorf("%s: weight_map names %zu shard files, more than the %d mpass reads", file, n_names, MP_SHARD_INDEX_MAX_SHARDS);
  }
  if (!e && !(ix.shards = calloc(n_names, sizeof *ix.shards))) e = mp_errorf("out of memory");
  for (size_t j = 0; !e && j < n_names; j++)
    if ((ix.shards[j] = strdup(names[j]))) ix.n_shards = (int)j + 1;
    else e = mp_errorf("out of memory");
  for (size_t j = 0; !e && j < n; j++) {
    const char **at = bsearch(&shard_of[j], names, n_names, sizeof *names, cmp_str);
    ix.entries[j].shard = (int)(at - names);
  }
  if (!e) {
    qsort(ix.entries, n, sizeof *ix.entries, cmp_entry);
    for (size_t j = 1; !e && j < n; j++)
      if (strcmp(ix.entries[j - 1].tensor, ix.entries[j].tensor) == 0)
        e = mp_errorf("%s: weight_map lists tensor \"%.200s\" twice", file, ix.entries[j].tensor);
  }
  if (!e) e = check_numbered(file, &ix);
  free(shard_of);
  free(names);
  if (e) {
    mp_shard_index_free(&ix);
    return e;
  }
  *out = ix;
  return NULL;
}
