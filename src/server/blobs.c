/* Files kept in a shared store (issue 14): uploads, tunes and job outputs travel through the database
 * so that API nodes and workers on different machines need no shared filesystem. Each machine keeps
 * a local copy under its own DATA, at the same relative path as the key ("jobs/12/0001.png"), and
 * fetches what it lacks. With the SQLite store (no blob functions) every call here does nothing. */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

mp_error *ms_blobs_fetch(ms_server *s, const char *prefix) {
  if (!s->store->blob_list) return NULL;
  char **keys;
  int64_t *sizes;
  int n;
  MP_TRY(s->store->blob_list(s->store, prefix, &keys, &sizes, &n));
  mp_error *e = NULL;
  /* result.json last: its presence says the other outputs are here (ms_outputs_local) */
  for (int pass = 0; pass < 2 && !e; pass++)
    for (int i = 0; i < n && !e; i++) {
      if (is_result_json(keys[i]) != (pass == 1)) continue;
      if (!safe_key(keys[i])) continue; /* keys are written by mpass; never leave DATA */
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
  if (!s->store->blob_list || j->status != MS_DONE) return;
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
