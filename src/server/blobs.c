/* Files kept in a shared store (issue 14): uploads, tunes and job outputs travel through the database
 * so that API nodes and workers on different machines need no shared filesystem. Each machine keeps
 * a local copy under its own DATA, at the same relative path as the key ("jobs/12/0001.png"), and
 * fetches what it lacks. With the SQLite store (no blob functions) every call here does nothing.
 *
 * A tune's weights file is the exception: it is kept once per machine under DATA/cache/<sha256> (the
 * sha256 of tune.json), checked against that sha256 when fetched, and the owner's tunes folder holds
 * a symbolic link to it, so that the same LoRA uploaded by two owners is fetched and stored once.
 * DATA/cache/<sha256>.verified records the size and modification time the file had when its hash
 * last matched; a cache file that no longer has them is hashed again and fetched again if it differs. */
#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pipeline/params.h"
#include "server/internal.h"

static mp_error *mkdir_parents(const char *path) {
  char b[4400];
  snprintf(b, sizeof b, "%s", path);
  for (char *p = b + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(b, 0755) && errno != EEXIST) return mp_errorf("cannot create folder %s (%s)", b, strerror(errno));
      *p = '/';
    }
  return NULL;
}

typedef struct {
  char **rel;
  int n, cap;
} file_list;

static void file_list_free(file_list *l) {
  for (int i = 0; i < l->n; i++) free(l->rel[i]);
  free(l->rel);
}

/* regular files under DATA/rel (recursively), as paths relative to DATA; partial folders skipped */
static mp_error *collect(const char *data_dir, const char *rel, file_list *out) {
  char dir[4400];
  snprintf(dir, sizeof dir, "%s/%s", data_dir, rel);
  DIR *d = opendir(dir);
  if (!d) return mp_errorf("cannot read %s: %s", dir, strerror(errno));
  mp_error *e = NULL;
  struct dirent *de;
  while (!e && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char sub[4400], full[8800];
    snprintf(sub, sizeof sub, "%s/%s", rel, de->d_name);
    snprintf(full, sizeof full, "%s/%s", data_dir, sub);
    struct stat st;
    if (lstat(full, &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) e = collect(data_dir, sub, out);
    else if (S_ISREG(st.st_mode)) {
      if (out->n == out->cap) {
        char **g = realloc(out->rel, sizeof *g * (size_t)(out->cap = out->cap ? out->cap * 2 : 16));
        if (!g) {
          e = mp_errorf("out of memory");
          break;
        }
        out->rel = g;
      }
      if (!(out->rel[out->n] = strdup(sub))) e = mp_errorf("out of memory");
      else out->n++;
    }
  }
  closedir(d);
  return e;
}

mp_error *ms_blobs_upload_dir(ms_server *s, const char *rel_dir, int64_t finish_job) {
  if (!s->store->blob_put_files) return finish_job ? s->store->job_finish(s->store, finish_job, MS_DONE, NULL) : NULL;
  file_list l = {0};
  mp_error *e = collect(s->data_dir, rel_dir, &l);
  if (!e && finish_job) e = s->store->job_finish_with_files(s->store, finish_job, s->data_dir, l.rel, l.n);
  else if (!e) e = s->store->blob_put_files(s->store, s->data_dir, l.rel, l.n);
  file_list_free(&l);
  return e;
}

/* relative, and no ".." component */
static bool safe_key(const char *key) {
  if (!*key || key[0] == '/') return false;
  for (const char *c = key; c; c = strchr(c, '/')) {
    if (*c == '/') c++;
    if (c[0] == '.' && c[1] == '.' && (c[2] == '/' || c[2] == 0)) return false;
  }
  return true;
}

static bool is_result_json(const char *key) {
  const char *slash = strrchr(key, '/');
  return !strcmp(slash ? slash + 1 : key, "result.json");
}

/* ---- the tune weights cache */

/* the weights file named by DATA/<dir of key>/tune.json when key is that file: its sha256 (64
 * lowercase hex digits) in sha. False for any other key (then it is fetched by path). */
static bool tune_weights_sha(const char *data_dir, const char *key, char sha[65]) {
  const char *slash = strrchr(key, '/');
  if (!slash || !strcmp(slash + 1, "tune.json")) return false;
  char path[4400];
  snprintf(path, sizeof path, "%s/%.*s/tune.json", data_dir, (int)(slash - key), key);
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  char text[16384];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = 0;
  cJSON *o = cJSON_Parse(text);
  const cJSON *file = cJSON_GetObjectItemCaseSensitive(o, "file"), *h = cJSON_GetObjectItemCaseSensitive(o, "sha256");
  bool ok = cJSON_IsString(file) && cJSON_IsString(h) && !strcmp(file->valuestring, slash + 1) && strlen(h->valuestring) == 64 &&
            strspn(h->valuestring, "0123456789abcdef") == 64;
  if (ok) memcpy(sha, h->valuestring, 65);
  cJSON_Delete(o);
  return ok;
}

static mp_error *file_sha256(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot read %s: %s", path, strerror(errno));
  enum { CHUNK = 1 << 20 };
  unsigned char *buf = malloc(CHUNK);
  if (!buf) return fclose(f), mp_errorf("out of memory");
  mp_sha256 h;
  mp_sha256_init(&h);
  size_t n;
  while ((n = fread(buf, 1, CHUNK, f)) > 0) mp_sha256_update(&h, buf, n);
  bool bad = ferror(f);
  fclose(f);
  free(buf);
  if (bad) return mp_errorf("cannot read %s: read error", path);
  uint8_t d[32];
  mp_sha256_final(&h, d);
  mp_sha256_hex(d, hex);
  return NULL;
}

/* "<size> <mtime s> <mtime ns>" of a file, what the .verified stamp records */
static bool stat_stamp(const char *path, char out[96]) {
  struct stat st;
  if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return false;
  snprintf(out, 96, "%lld %lld %ld\n", (long long)st.st_size, (long long)st.st_mtim.tv_sec, (long)st.st_mtim.tv_nsec);
  return true;
}

/* the cache file matches its name: checked by hash when its stamp changed since the last check */
static mp_error *cache_valid(const char *cache, const char *sha, bool *valid) {
  *valid = false;
  char now[96], was[96] = "", stamp_path[4500];
  if (!stat_stamp(cache, now)) return NULL;
  snprintf(stamp_path, sizeof stamp_path, "%s.verified", cache);
  FILE *f = fopen(stamp_path, "r");
  if (f) {
    if (!fgets(was, sizeof was, f)) was[0] = 0;
    fclose(f);
  }
  if (!strcmp(now, was)) return *valid = true, NULL;
  char got[65];
  MP_TRY(file_sha256(cache, got));
  if (strcmp(got, sha) != 0) {
    fprintf(stderr, "mpass worker: cached tune file %s has sha256 %s (changed on disk): fetching it again\n", cache, got);
    return NULL;
  }
  f = fopen(stamp_path, "w");
  if (f) fputs(now, f), fclose(f);
  *valid = true;
  return NULL;
}

/* DATA/cache/<sha> holds key's bytes (fetched and checked when absent or damaged); DATA/key links to it */
static mp_error *fetch_cached(ms_server *s, const char *key, const char *sha) {
  char cache[4400], tmp[4500], path[4400];
  snprintf(cache, sizeof cache, "%s/cache/%s", s->data_dir, sha);
  snprintf(path, sizeof path, "%s/%s", s->data_dir, key);
  MP_TRY(mkdir_parents(cache));
  bool valid;
  MP_TRY(cache_valid(cache, sha, &valid));
  if (!valid) {
    snprintf(tmp, sizeof tmp, "%s.fetch-%ld-%lx", cache, (long)getpid(), (unsigned long)pthread_self());
    bool found = false;
    mp_error *e = s->store->blob_get_file(s->store, key, tmp, &found);
    char got[65] = "";
    if (!e && !found) e = mp_errorf("tune file %s is listed but no longer stored (deleted meanwhile?)", key);
    if (!e) e = file_sha256(tmp, got);
    if (!e && strcmp(got, sha) != 0)
      e = mp_errorf("tune file %s as fetched from the job store has sha256 %s, but its tune.json says %s: the stored copy is "
                    "damaged; upload the tune again",
                    key, got, sha);
    char stamp[96], stamp_path[4500];
    snprintf(stamp_path, sizeof stamp_path, "%s.verified", cache);
    unlink(stamp_path);
    if (!e && rename(tmp, cache) != 0) e = mp_errorf("cannot write %s: %s", cache, strerror(errno));
    if (e) return unlink(tmp), e;
    FILE *f = stat_stamp(cache, stamp) ? fopen(stamp_path, "w") : NULL;
    if (f) fputs(stamp, f), fclose(f);
  }
  /* the owner's file: a link to the cache entry (a file fetched by path before the cache existed is
   * replaced too) */
  char have[4400];
  ssize_t n = readlink(path, have, sizeof have - 1);
  if (n >= 0 && (have[n] = 0, !strcmp(have, cache))) return NULL;
  MP_TRY(mkdir_parents(path));
  snprintf(tmp, sizeof tmp, "%s.link-%ld-%lx", path, (long)getpid(), (unsigned long)pthread_self());
  unlink(tmp);
  if (symlink(cache, tmp) != 0) return mp_errorf("cannot create the link %s -> %s: %s", tmp, cache, strerror(errno));
  if (rename(tmp, path) != 0) {
    mp_error *e = mp_errorf("cannot write %s: %s", path, strerror(errno));
    unlink(tmp);
    return e;
  }
  return NULL;
}

mp_error *ms_blobs_fetch(ms_server *s, const char *prefix) {
  if (!s->store->blob_list) return NULL;
  char **keys;
  int64_t *sizes;
  int n;
  MP_TRY(s->store->blob_list(s->store, prefix, &keys, &sizes, &n));
  mp_error *e = NULL;
  /* tune.json first: it says which file of its folder goes to the cache (with which sha256);
   * result.json last: its presence says the other outputs are here (ms_outputs_local) */
  for (int pass = 0; pass < 3 && !e; pass++)
    for (int i = 0; i < n && !e; i++) {
      const char *slash = strrchr(keys[i], '/');
      bool tune_json = !strcmp(slash ? slash + 1 : keys[i], "tune.json");
      if ((pass == 0) != tune_json || (pass == 2) != is_result_json(keys[i])) continue;
      if (!safe_key(keys[i])) continue; /* keys are written by mpass; never leave DATA */
      char sha[65];
      if (pass == 1 && tune_weights_sha(s->data_dir, keys[i], sha)) {
        e = fetch_cached(s, keys[i], sha);
        continue;
      }
      char path[4400], tmp[4500];
      snprintf(path, sizeof path, "%s/%s", s->data_dir, keys[i]);
      struct stat st;
      if (stat(path, &st) == 0 && (int64_t)st.st_size == sizes[i]) continue; /* cached */
      snprintf(tmp, sizeof tmp, "%s.fetch-%ld-%lx", path, (long)getpid(), (unsigned long)pthread_self());
      bool found;
      e = mkdir_parents(path);
      if (!e) e = s->store->blob_get_file(s->store, keys[i], tmp, &found);
      if (!e && found && rename(tmp, path) != 0) e = mp_errorf("cannot write %s: %s", path, strerror(errno));
      if (e) unlink(tmp);
    }
  for (int i = 0; i < n; i++) free(keys[i]);
  free(keys), free(sizes);
  return e;
}

void ms_outputs_local(ms_server *s, const ms_job *j) {
  if (!s->store->blob_list || j->status != MS_DONE || j->expired_at) return; /* expired: removed on purpose */
  char p[4200], prefix[64];
  ms_job_dir(s, j->id, p, sizeof p);
  strcat(p, "/result.json");
  struct stat st;
  if (stat(p, &st) == 0) return;
  snprintf(prefix, sizeof prefix, "jobs/%" PRId64 "/", j->id);
  mp_error *e = ms_blobs_fetch(s, prefix);
  if (e) {
    fprintf(stderr, "mpass serve: prompt %" PRId64 ": cannot fetch its outputs from the store: %s\n", j->id, mp_error_message(e));
    mp_error_free(e);
  }
}
