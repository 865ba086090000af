/* Retention: the sweep that removes the files of old jobs (retention.h) and the thread that runs it at
 * start and then every hour.
 *
 * Order for one job: its folders are removed, then its stored files, then it is marked expired. A crash
 * in between leaves the job unmarked, so the next sweep does it again (every step is idempotent); the
 * opposite order could leave files behind that no sweep looks at again. Nodes of a shared store each
 * sweep: the first to reach a job removes its stored files and marks it; the others remove their own
 * copies in the second part of the sweep (their DATA/jobs/<id> of expired jobs, and DATA/inputs/<name>
 * folders whose stored files are gone). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/internal.h"
#include "server/retention.h"

#define SWEEP_PERIOD_SECONDS 3600
#define BATCH 100
/* folders nested deeper than this inside one job's folder are not ours: refuse rather than recurse */
#define MAX_DEPTH 32

/* ---------------------------------------------------------------- removing inside DATA */

/* one component of a relative path: not empty, not "." or ".." */
static bool plain_name(const char *s, size_t n) {
  return n > 0 && !(n == 1 && s[0] == '.') && !(n == 2 && s[0] == '.' && s[1] == '.');
}

/* Removes name inside the folder dirfd: a file or link is unlinked, a folder is emptied (entered with
 * O_NOFOLLOW, so a link swapped in meanwhile is refused) and removed. shown is the path for messages. */
static mp_error *remove_at(int dirfd, const char *name, const char *shown, int depth) {
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0)
    return errno == ENOENT ? NULL : mp_errorf("cannot remove %s: %s", shown, strerror(errno));
  if (!S_ISDIR(st.st_mode)) {
    if (unlinkat(dirfd, name, 0) != 0 && errno != ENOENT) return mp_errorf("cannot remove %s: %s", shown, strerror(errno));
    return NULL;
  }
  if (depth > MAX_DEPTH) return mp_errorf("not removing %s: folders nested more than %d deep", shown, MAX_DEPTH);
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return mp_errorf("cannot open %s to remove it: %s", shown, strerror(errno));
  DIR *d = fdopendir(fd);
  if (!d) {
    mp_error *e = mp_errorf("cannot read %s to remove it: %s", shown, strerror(errno));
    close(fd);
    return e;
  }
  mp_error *e = NULL;
  for (struct dirent *de; !e && (de = readdir(d));) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    size_t n = strlen(shown) + strlen(de->d_name) + 2;
    char *sub = malloc(n);
    if (!sub) {
      e = mp_errorf("out of memory");
      break;
    }
    snprintf(sub, n, "%s/%s", shown, de->d_name);
    e = remove_at(fd, de->d_name, sub, depth + 1);
    free(sub);
  }
  closedir(d); /* closes fd */
  if (!e && unlinkat(dirfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) e = mp_errorf("cannot remove %s: %s", shown, strerror(errno));
  return e;
}

mp_error *ms_remove_in_data(const char *data_dir, const char *rel, bool *removed) {
  *removed = false;
  if (!rel || !*rel || rel[0] == '/') return mp_errorf("not removing '%s': not a path inside the data folder", rel ? rel : "");
  for (const char *c = rel;;) {
    size_t n = strcspn(c, "/");
    if (!plain_name(c, n)) return mp_errorf("not removing '%s': empty, '.' or '..' part (the path must stay inside %s)", rel, data_dir);
    if (!c[n]) break;
    c += n + 1;
  }
  int fd = open(data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return mp_errorf("cannot open the data folder %s: %s", data_dir, strerror(errno));
  char part[4096];
  const char *c = rel;
  mp_error *e = NULL;
  for (size_t n; c[n = strcspn(c, "/")] == '/'; c += n + 1) { /* the folders on the way */
    if (n >= sizeof part) {
      e = mp_errorf("not removing %s/%s: path too long", data_dir, rel);
      break;
    }
    memcpy(part, c, n), part[n] = 0;
    int next = openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) {
      /* absent: nothing to remove. A link (ELOOP) or a file (ENOTDIR) on the way: the path would
       * leave DATA or is not ours */
      if (errno != ENOENT)
        e = mp_errorf("not removing %s/%s: %s/%.*s is a symbolic link or not a folder", data_dir, rel, data_dir, (int)(c - rel + n), rel);
      close(fd);
      return e;
    }
    close(fd);
    fd = next;
  }
  if (!e) {
    struct stat st;
    bool there = fstatat(fd, c, &st, AT_SYMLINK_NOFOLLOW) == 0;
    size_t n = strlen(data_dir) + strlen(rel) + 2;
    char *shown = malloc(n);
    if (!shown) e = mp_errorf("out of memory");
    else {
      snprintf(shown, n, "%s/%s", data_dir, rel);
      e = remove_at(fd, c, shown, 0);
      free(shown);
    }
    *removed = there && !e;
  }
  close(fd);
  return e;
}

bool ms_inputs_name(const char *inputs_dir, char *name, size_t cap) {
  const char *found = NULL;
  for (const char *p = inputs_dir ? strstr(inputs_dir, "/inputs/") : NULL; p; p = strstr(p + 1, "/inputs/")) found = p;
  if (!found) return false;
  const char *n = found + 8;
  size_t len = strlen(n);
  while (len > 0 && n[len - 1] == '/') len--; /* "…/inputs/ab12/" names the same folder */
  if (!plain_name(n, len) || memchr(n, '/', len) || len >= cap) return false;
  memcpy(name, n, len), name[len] = 0;
  return true;
}

/* ---------------------------------------------------------------- the sweep */

static void iso_at(time_t t, char out[32]) {
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(out, 32, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
}

/* removes DATA/rel; counts and logs; false when it is still there (the job is not marked then: its
 * files would outlive the mark, and the next sweep tries again) */
static bool remove_logged(const char *data_dir, const char *rel, ms_sweep_stats *stats) {
  bool removed = false;
  mp_error *e = ms_remove_in_data(data_dir, rel, &removed);
  if (removed) stats->folders_removed++;
  if (!e) return true;
  bool refused = !strncmp(mp_error_message(e), "not removing", 12);
  fprintf(stderr, "mpass serve: retention: %s\n", mp_error_message(e));
  mp_error_free(e);
  if (refused) stats->refused++;
  else stats->errors++;
  return false;
}

/* DATA/jobs and DATA/inputs must be folders of DATA itself: a link there would take the sweep outside
 * DATA for every job, so it stops before touching anything (once per sweep, not once per job) */
static mp_error *check_top_folders(const char *data_dir) {
  static const char *const TOP[] = {"jobs", "inputs"};
  for (int i = 0; i < 2; i++) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", data_dir, TOP[i]);
    struct stat st;
    if (lstat(p, &st) != 0) continue; /* absent: nothing to remove there */
    if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode))
      return mp_errorf("%s is a symbolic link or not a folder: retention removes files only inside %s and follows no link, "
                       "so nothing was removed (make it a folder, or run without --retention-days)",
                       p, data_dir);
  }
  return NULL;
}

static bool delete_blobs(ms_store *st, const char *prefix, ms_sweep_stats *stats) {
  if (!st->blob_delete) return true;
  mp_error *e = st->blob_delete(st, prefix);
  if (!e) return true;
  fprintf(stderr, "mpass serve: retention: stored files %s: %s\n", prefix, mp_error_message(e));
  mp_error_free(e);
  stats->errors++;
  return false;
}

/* one ended job: folders, stored files, then the mark */
static mp_error *expire_job(ms_store *st, const char *data_dir, const ms_job *j, ms_sweep_stats *stats) {
  if (j->status != MS_DONE && j->status != MS_FAILED && j->status != MS_CANCELLED) return NULL; /* the store's promise, checked */
  char rel[4200], name[256];
  snprintf(rel, sizeof rel, "jobs/%" PRId64, j->id);
  bool ok = remove_logged(data_dir, rel, stats);
  if (j->inputs_dir && *j->inputs_dir) {
    /* not DATA/inputs/<name> (a damaged or hostile row): not ours to remove; the job is marked anyway */
    if (!ms_inputs_name(j->inputs_dir, name, sizeof name)) {
      fprintf(stderr, "mpass serve: retention: prompt %" PRId64 ": its inputs folder %s is not DATA/inputs/<name>: not removed\n", j->id,
              j->inputs_dir);
      stats->refused++;
    } else {
      snprintf(rel, sizeof rel, "inputs/%s", name);
      ok = remove_logged(data_dir, rel, stats) && ok;
      snprintf(rel, sizeof rel, "inputs/%s/", name);
      ok = delete_blobs(st, rel, stats) && ok;
    }
  }
  snprintf(rel, sizeof rel, "jobs/%" PRId64 "/", j->id);
  ok = delete_blobs(st, rel, stats) && ok;
  if (!ok) return NULL; /* tried again at the next sweep */
  char now[32];
  ms_now_iso(now);
  bool marked = false;
  MP_TRY(st->job_mark_expired(st, j->id, now, &marked));
  if (marked) stats->jobs_expired++;
  return NULL;
}

static bool all_digits(const char *s) {
  if (!*s || *s == '0') return false;
  for (; *s; s++)
    if (*s < '0' || *s > '9') return false;
  return true;
}

/* copies on this machine of jobs another node expired (or that came back from the store meanwhile) */
static mp_error *sweep_local_jobs(ms_store *st, const char *data_dir, ms_sweep_stats *stats) {
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/jobs", data_dir);
  DIR *d = opendir(dir);
  if (!d) return NULL;
  mp_error *e = NULL;
  for (struct dirent *de; !e && (de = readdir(d));) {
    if (!all_digits(de->d_name) || strlen(de->d_name) > 18) continue;
    ms_job j;
    bool found = false;
    e = st->job_get(st, NULL, strtoll(de->d_name, NULL, 10), &j, &found);
    if (e || !found) continue;
    if (j.expired_at) {
      char rel[300];
      snprintf(rel, sizeof rel, "jobs/%s", de->d_name);
      remove_logged(data_dir, rel, stats);
    }
    ms_job_free(&j);
  }
  closedir(d);
  return e;
}

/* shared stores: DATA/inputs/<name> copies (uploads taken here, inputs fetched by a worker) whose stored
 * files are gone (their job expired, or the upload never became a job) and that are older than the
 * retention period */
static mp_error *sweep_local_inputs(ms_store *st, const char *data_dir, time_t cutoff, ms_sweep_stats *stats) {
  if (!st->blob_list) return NULL;
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/inputs", data_dir);
  DIR *d = opendir(dir);
  if (!d) return NULL;
  mp_error *e = NULL;
  for (struct dirent *de; !e && (de = readdir(d));) {
    if (!plain_name(de->d_name, strlen(de->d_name)) || strlen(de->d_name) > 200) continue;
    struct stat sb;
    if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || sb.st_mtime >= cutoff) continue;
    char prefix[300], **keys = NULL;
    int64_t *sizes = NULL;
    int n = 0;
    snprintf(prefix, sizeof prefix, "inputs/%s/", de->d_name);
    e = st->blob_list(st, prefix, &keys, &sizes, &n);
    for (int i = 0; i < n; i++) free(keys[i]);
    free(keys), free(sizes);
    if (!e && n == 0) {
      prefix[strlen(prefix) - 1] = 0;
      remove_logged(data_dir, prefix, stats);
    }
  }
  closedir(d);
  return e;
}

mp_error *ms_retention_sweep(ms_store *st, const char *data_dir, int days, time_t now, bool quiet, ms_sweep_stats *stats) {
  memset(stats, 0, sizeof *stats);
  if (days <= 0) return NULL;
  time_t cutoff = now - (time_t)days * 86400;
  char before[32];
  iso_at(cutoff, before);
  MP_TRY(check_top_folders(data_dir));
  int64_t after = 0;
  for (;;) {
    ms_job *jobs = NULL;
    int n = 0;
    MP_TRY(st->job_list_expirable(st, before, after, BATCH, &jobs, &n));
    mp_error *e = NULL;
    for (int i = 0; i < n && !e; i++) {
      after = jobs[i].id;
      e = expire_job(st, data_dir, &jobs[i], stats);
    }
    ms_job_list_free(jobs, n);
    if (e) return e;
    if (n < BATCH) break;
  }
  MP_TRY(sweep_local_jobs(st, data_dir, stats));
  MP_TRY(sweep_local_inputs(st, data_dir, cutoff, stats));
  if (!quiet && (stats->jobs_expired || stats->folders_removed))
    fprintf(stderr, "mpass serve: retention: %d prompt(s) that ended before %s expired, %d folder(s) removed\n", stats->jobs_expired,
            before, stats->folders_removed);
  return NULL;
}

/* ---------------------------------------------------------------- the thread */

static void *retention_main(void *arg) {
  ms_server *s = arg;
  while (!atomic_load(&s->stopping)) {
    ms_sweep_stats stats;
    mp_error *e = ms_retention_sweep(s->store, s->data_dir, s->cfg.retention_days, time(NULL), s->cfg.quiet, &stats);
    if (e) { /* the database is away: the next sweep tries again */
      fprintf(stderr, "mpass serve: retention: %s\n", mp_error_message(e));
      mp_error_free(e);
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += SWEEP_PERIOD_SECONDS;
    /* work_cv is also signalled by enqueues: wait until the hour is over or the server stops */
    pthread_mutex_lock(&s->work_mu);
    while (!atomic_load(&s->stopping) && pthread_cond_timedwait(&s->work_cv, &s->work_mu, &until) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&s->work_mu);
  }
  return NULL;
}

mp_error *ms_retention_start(ms_server *s) {
  if (s->cfg.retention_days <= 0) return NULL; /* keep forever */
  if (pthread_create(&s->retention_thread, NULL, retention_main, s) != 0) return mp_errorf("cannot start the retention thread");
  s->retention_started = true;
  return NULL;
}

void ms_retention_stop(ms_server *s) {
  if (!s->retention_started) return;
  atomic_store(&s->stopping, 1);
  pthread_mutex_lock(&s->work_mu);
  pthread_cond_broadcast(&s->work_cv);
  pthread_mutex_unlock(&s->work_mu);
  pthread_join(s->retention_thread, NULL);
  s->retention_started = false;
}
