/* The SQLite job store (store.h): one database file, WAL journal, synchronous=FULL so that every
 * committed write is on disk before the call returns. One connection guarded by a mutex: SQLite
 * serialises writers anyway, and a job server's writes are few and small. */
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "server/store.h"

/* Migrations: schema_version holds the number of the last one applied. Append, never edit. */
static const char *const MIGRATIONS[] = {
    "CREATE TABLE tokens (name TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);"
    "CREATE TABLE tunes (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, title TEXT, name TEXT,"
    "  token TEXT, model_type TEXT NOT NULL, branch TEXT NOT NULL, file_name TEXT, created_at TEXT NOT NULL);"
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, tune_id INTEGER NOT NULL DEFAULT 0,"
    "  document TEXT NOT NULL, is_json INTEGER NOT NULL, params_json TEXT NOT NULL, model_path TEXT, inputs_dir TEXT,"
    "  callback TEXT, idempotency_key TEXT, status INTEGER NOT NULL, progress REAL NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
    "  failed_at TEXT, fail_message TEXT, callbacks_json TEXT NOT NULL DEFAULT '[]',"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0);"
    "CREATE UNIQUE INDEX jobs_idem ON jobs(owner, idempotency_key) WHERE idempotency_key IS NOT NULL;"
    "CREATE INDEX jobs_queue ON jobs(status, id);"
    "CREATE INDEX jobs_owner ON jobs(owner, tune_id, id);",
    /* 2: retention (retention.c): when a job's files were removed; NULL while they are kept */
    "ALTER TABLE jobs ADD COLUMN expired_at TEXT;",
    /* 3: callbacks owed (store.h; the same columns as src/server/sql/pg/003_callbacks.sql): NULL
     * callback_lease_until: nothing owed; else the lease (ISO 8601 UTC) of callback_node. Upgrading,
     * what a schema 2 start delivered is owed at once: ended done or failed in the last 24 hours with
     * a callback and no attempt. */
    "ALTER TABLE jobs ADD COLUMN callback_lease_until TEXT;"
    "ALTER TABLE jobs ADD COLUMN callback_node TEXT;"
    "UPDATE jobs SET callback_lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
    "  WHERE status IN (2, 3) AND callback IS NOT NULL AND callbacks_json = '[]'"
    "  AND COALESCE(finished_at, failed_at) > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day');"
    "CREATE INDEX jobs_callbacks_owed ON jobs(callback_lease_until) WHERE callback_lease_until IS NOT NULL;",
};
#define N_MIGRATIONS ((int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]))

/* A callback's lease here (store.h): the server renews what it has queued every few seconds. */
#define CALLBACK_LEASE_SECONDS 30

typedef struct {
  sqlite3 *db;
  pthread_mutex_t mu;
  char node[64]; /* this store's name in callback_node: pid and handle, so a restart is another */
} sq;

static const char *const STATUS_NAMES[] = {"queued", "running", "done", "failed", "cancelled"};
const char *ms_status_name(ms_status s) { return (unsigned)s < MS_STATUS_COUNT ? STATUS_NAMES[s] : "unknown"; }
int ms_status_parse(const char *s) {
  for (int i = 0; i < MS_STATUS_COUNT; i++)
    if (s && !strcmp(s, STATUS_NAMES[i])) return i;
  return -1;
}

/* now + seconds, as ms_now_iso writes it */
static void iso_after(double seconds, char out[32]) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  const int64_t ms = (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000 + (int64_t)(seconds * 1000);
  const time_t t = (time_t)(ms / 1000);
  struct tm tm;
  gmtime_r(&t, &tm);
  char b[24];
  strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 32, "%s.%03dZ", b, (int)(ms % 1000));
}

void ms_now_iso(char out[32]) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char b[24];
  strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, 32, "%s.%03dZ", b, (int)(tv.tv_usec / 1000));
}

void ms_job_free(ms_job *j) {
  if (!j) return;
  free(j->owner), free(j->document), free(j->params_json), free(j->model_path), free(j->inputs_dir);
  free(j->callback), free(j->idempotency_key), free(j->created_at), free(j->started_at), free(j->finished_at);
  free(j->failed_at), free(j->fail_message), free(j->callbacks_json), free(j->expired_at);
  memset(j, 0, sizeof *j);
}
void ms_tune_free(ms_tune *t) {
  if (!t) return;
  free(t->owner), free(t->title), free(t->name), free(t->token), free(t->model_type), free(t->branch);
  free(t->file_name), free(t->created_at);
  memset(t, 0, sizeof *t);
}
void ms_job_list_free(ms_job *jobs, int n) {
  for (int i = 0; i < n; i++) ms_job_free(&jobs[i]);
  free(jobs);
}
void ms_tune_list_free(ms_tune *tunes, int n) {
  for (int i = 0; i < n; i++) ms_tune_free(&tunes[i]);
  free(tunes);
}

static mp_error *dberr(sq *q, const char *what) { return mp_errorf("job store: %s: %s", what, sqlite3_errmsg(q->db)); }

static mp_error *exec(sq *q, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(q->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    mp_error *e = mp_errorf("job store: %s", msg ? msg : sqlite3_errmsg(q->db));
    sqlite3_free(msg);
    return e;
  }
  return NULL;
}

static mp_error *prep(sq *q, const char *sql, sqlite3_stmt **st) {
  if (sqlite3_prepare_v2(q->db, sql, -1, st, NULL) != SQLITE_OK) return dberr(q, "preparing a statement");
  return NULL;
}

static void bind_text(sqlite3_stmt *st, int i, const char *s) {
  if (s) sqlite3_bind_text(st, i, s, -1, SQLITE_TRANSIENT);
  else sqlite3_bind_null(st, i);
}

static char *col_text(sqlite3_stmt *st, int i) {
  const unsigned char *t = sqlite3_column_text(st, i);
  return t ? strdup((const char *)t) : NULL;
}

#define LOCK(s) sq *q = (s)->impl; pthread_mutex_lock(&q->mu)
#define UNLOCK() pthread_mutex_unlock(&q->mu)

/* ---------------- tokens */

static mp_error *token_add(ms_store *s, const char *name, const char *hash) {
  LOCK(s);
  sqlite3_stmt *st = NULL;
  char now[32];
  ms_now_iso(now);
  mp_error *e = prep(q, "INSERT INTO tokens(name, sha256, created_at) VALUES(?,?,?)", &st);
  if (!e) {
    bind_text(st, 1, name), bind_text(st, 2, hash), bind_text(st, 3, now);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "adding a token");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *token_lookup(ms_store *s, const char *hash, char **name) {
  *name = NULL;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "SELECT name FROM tokens WHERE sha256 = ?", &st);
  if (!e) {
    bind_text(st, 1, hash);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *name = col_text(st, 0);
    else if (rc != SQLITE_DONE) e = dberr(q, "looking up a token");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *count_query(ms_store *s, const char *sql, int64_t *n) {
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, sql, &st);
  if (!e) {
    if (sqlite3_step(st) == SQLITE_ROW) *n = sqlite3_column_int64(st, 0);
    else e = dberr(q, "counting");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *token_count(ms_store *s, int64_t *n) { return count_query(s, "SELECT COUNT(*) FROM tokens", n); }

/* ---------------- tunes */

#define TUNE_COLS "id, owner, title, name, token, model_type, branch, file_name, created_at"

static void read_tune(sqlite3_stmt *st, ms_tune *t) {
  t->id = sqlite3_column_int64(st, 0);
  t->owner = col_text(st, 1), t->title = col_text(st, 2), t->name = col_text(st, 3), t->token = col_text(st, 4);
  t->model_type = col_text(st, 5), t->branch = col_text(st, 6), t->file_name = col_text(st, 7);
  t->created_at = col_text(st, 8);
}

static mp_error *tune_create(ms_store *s, const ms_tune *t, int64_t *id) {
  LOCK(s);
  sqlite3_stmt *st = NULL;
  char now[32];
  ms_now_iso(now);
  mp_error *e = prep(q,
                     "INSERT INTO tunes(owner, title, name, token, model_type, branch, file_name, created_at)"
                     " VALUES(?,?,?,?,?,?,?,?)",
                     &st);
  if (!e) {
    bind_text(st, 1, t->owner), bind_text(st, 2, t->title), bind_text(st, 3, t->name), bind_text(st, 4, t->token);
    bind_text(st, 5, t->model_type), bind_text(st, 6, t->branch), bind_text(st, 7, t->file_name);
    bind_text(st, 8, t->created_at ? t->created_at : now);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "adding a tune");
    else *id = sqlite3_last_insert_rowid(q->db);
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *tune_get(ms_store *s, const char *owner, int64_t id, ms_tune *out, bool *found) {
  memset(out, 0, sizeof *out);
  *found = false;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "SELECT " TUNE_COLS " FROM tunes WHERE id = ? AND owner = ?", &st);
  if (!e) {
    sqlite3_bind_int64(st, 1, id), bind_text(st, 2, owner);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) read_tune(st, out), *found = true;
    else if (rc != SQLITE_DONE) e = dberr(q, "reading a tune");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *tune_list(ms_store *s, const char *owner, ms_tune **out, int *n) {
  *out = NULL, *n = 0;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "SELECT " TUNE_COLS " FROM tunes WHERE owner = ? ORDER BY id", &st);
  int cap = 0, rc = SQLITE_DONE;
  if (!e) {
    bind_text(st, 1, owner);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (*n == cap) {
        ms_tune *g = realloc(*out, sizeof **out * (size_t)(cap = cap ? cap * 2 : 16));
        if (!g) break;
        *out = g;
      }
      memset(&(*out)[*n], 0, sizeof **out);
      read_tune(st, &(*out)[(*n)++]);
    }
    if (rc != SQLITE_DONE) e = rc == SQLITE_ROW ? mp_errorf("out of memory") : dberr(q, "listing tunes");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *tune_delete(ms_store *s, const char *owner, int64_t id, bool *found, int64_t *in_use) {
  *found = false, *in_use = 0;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = exec(q, "BEGIN IMMEDIATE");
  if (!e) e = prep(q, "SELECT COUNT(*) FROM tunes WHERE id = ? AND owner = ?", &st);
  if (!e) {
    sqlite3_bind_int64(st, 1, id), bind_text(st, 2, owner);
    if (sqlite3_step(st) == SQLITE_ROW) *found = sqlite3_column_int64(st, 0) > 0;
    sqlite3_finalize(st), st = NULL;
  }
  if (!e && *found) e = prep(q, "SELECT COUNT(*) FROM jobs WHERE tune_id = ? AND status IN (0, 1)", &st);
  if (!e && *found) {
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) == SQLITE_ROW) *in_use = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st), st = NULL;
  }
  if (!e && *found && *in_use == 0) e = prep(q, "DELETE FROM tunes WHERE id = ?", &st);
  if (!e && st) {
    sqlite3_bind_int64(st, 1, id);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "deleting a tune");
  }
  sqlite3_finalize(st);
  if (!e) e = exec(q, "COMMIT");
  else mp_error_free(exec(q, "ROLLBACK"));
  UNLOCK();
  return e;
}

/* ---------------- jobs */

#define JOB_COLS                                                                                                      \
  "id, owner, tune_id, document, is_json, params_json, model_path, inputs_dir, callback, idempotency_key, status, " \
  "progress, attempts, created_at, started_at, finished_at, failed_at, fail_message, callbacks_json, cancel_requested, " \
  "expired_at"

static void read_job(sqlite3_stmt *st, ms_job *j) {
  memset(j, 0, sizeof *j);
  j->id = sqlite3_column_int64(st, 0);
  j->owner = col_text(st, 1);
  j->tune_id = sqlite3_column_int64(st, 2);
  j->document = col_text(st, 3);
  j->is_json = sqlite3_column_int(st, 4);
  j->params_json = col_text(st, 5), j->model_path = col_text(st, 6), j->inputs_dir = col_text(st, 7);
  j->callback = col_text(st, 8), j->idempotency_key = col_text(st, 9);
  j->status = (ms_status)sqlite3_column_int(st, 10);
  j->progress = sqlite3_column_double(st, 11);
  j->attempts = sqlite3_column_int(st, 12);
  j->created_at = col_text(st, 13), j->started_at = col_text(st, 14), j->finished_at = col_text(st, 15);
  j->failed_at = col_text(st, 16), j->fail_message = col_text(st, 17), j->callbacks_json = col_text(st, 18);
  j->cancel_requested = sqlite3_column_int(st, 19) != 0;
  j->expired_at = col_text(st, 20);
}

static mp_error *job_enqueue(ms_store *s, const ms_job *j, int max_queued, int64_t *id, ms_enqueue_result *res) {
  *id = 0, *res = MS_ENQUEUED;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = exec(q, "BEGIN IMMEDIATE");
  bool decided = false;
  if (!e && j->idempotency_key) {
    e = prep(q, "SELECT id FROM jobs WHERE owner = ? AND idempotency_key = ?", &st);
    if (!e) {
      bind_text(st, 1, j->owner), bind_text(st, 2, j->idempotency_key);
      if (sqlite3_step(st) == SQLITE_ROW) *id = sqlite3_column_int64(st, 0), *res = MS_DUPLICATE, decided = true;
    }
    sqlite3_finalize(st), st = NULL;
  }
  if (!e && !decided && max_queued > 0) {
    e = prep(q, "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = 0", &st);
    if (!e) {
      bind_text(st, 1, j->owner);
      if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int64(st, 0) >= max_queued) *res = MS_OVER_QUOTA, decided = true;
    }
    sqlite3_finalize(st), st = NULL;
  }
  if (!e && !decided) {
    char now[32];
    ms_now_iso(now);
    e = prep(q,
             "INSERT INTO jobs(owner, tune_id, document, is_json, params_json, model_path, inputs_dir, callback,"
             " idempotency_key, status, created_at) VALUES(?,?,?,?,?,?,?,?,?,0,?)",
             &st);
    if (!e) {
      bind_text(st, 1, j->owner), sqlite3_bind_int64(st, 2, j->tune_id), bind_text(st, 3, j->document);
      sqlite3_bind_int(st, 4, j->is_json), bind_text(st, 5, j->params_json ? j->params_json : "{}");
      bind_text(st, 6, j->model_path), bind_text(st, 7, j->inputs_dir), bind_text(st, 8, j->callback);
      bind_text(st, 9, j->idempotency_key), bind_text(st, 10, now);
      if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "adding a job");
      else *id = sqlite3_last_insert_rowid(q->db);
    }
    sqlite3_finalize(st), st = NULL;
  }
  if (!e) e = exec(q, "COMMIT");
  else mp_error_free(exec(q, "ROLLBACK"));
  UNLOCK();
  return e;
}

static mp_error *job_get_locked(sq *q, const char *owner, int64_t id, ms_job *out, bool *found) {
  *found = false;
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, owner ? "SELECT " JOB_COLS " FROM jobs WHERE id = ? AND owner = ?" : "SELECT " JOB_COLS " FROM jobs WHERE id = ?", &st);
  if (!e) {
    sqlite3_bind_int64(st, 1, id);
    if (owner) bind_text(st, 2, owner);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) read_job(st, out), *found = true;
    else if (rc != SQLITE_DONE) e = dberr(q, "reading a job");
  }
  sqlite3_finalize(st);
  return e;
}

static mp_error *job_claim(ms_store *s, ms_job *out, bool *found) {
  memset(out, 0, sizeof *out);
  *found = false;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  int64_t id = 0;
  mp_error *e = exec(q, "BEGIN IMMEDIATE");
  if (!e) e = prep(q, "SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT 1", &st);
  if (!e) {
    if (sqlite3_step(st) == SQLITE_ROW) id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st), st = NULL;
  }
  if (!e && id) {
    char now[32];
    ms_now_iso(now);
    e = prep(q, "UPDATE jobs SET status = 1, attempts = attempts + 1, started_at = ?, progress = 0 WHERE id = ?", &st);
    if (!e) {
      bind_text(st, 1, now), sqlite3_bind_int64(st, 2, id);
      if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "claiming a job");
    }
    sqlite3_finalize(st), st = NULL;
    if (!e) e = job_get_locked(q, NULL, id, out, found);
  }
  if (!e) e = exec(q, "COMMIT");
  else mp_error_free(exec(q, "ROLLBACK"));
  if (e) ms_job_free(out), *found = false;
  UNLOCK();
  return e;
}

static mp_error *simple_update(ms_store *s, const char *sql, int64_t id, const char *t1, const char *t2, double d) {
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, sql, &st);
  if (!e) {
    int n = sqlite3_bind_parameter_count(st);
    /* parameters in order: the id is last; text parameters then the number fill what precedes it */
    int i = 1;
    if (n >= 2 && t1 != NULL) bind_text(st, i++, t1);
    if (n >= 3 && t2 != NULL) bind_text(st, i++, t2);
    if (i < n) sqlite3_bind_double(st, i++, d);
    sqlite3_bind_int64(st, n, id);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "updating a job");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *job_progress(ms_store *s, int64_t id, double p) {
  return simple_update(s, "UPDATE jobs SET progress = ? WHERE id = ? AND status = 1", id, NULL, NULL, p);
}

/* Done or failed with a callback URL: the callback is owed from this same statement, held by this
 * store for a lease (store.h). */
static mp_error *job_finish(ms_store *s, int64_t id, ms_status status, const char *message) {
  char now[32], lease[32];
  ms_now_iso(now);
  iso_after(CALLBACK_LEASE_SECONDS, lease);
#define OWE_CALLBACK \
  ", callback_lease_until = CASE WHEN callback IS NOT NULL THEN ?3 END, callback_node = CASE WHEN callback IS NOT NULL THEN ?4 END"
  const char *sql = status == MS_DONE     ? "UPDATE jobs SET status = 2, progress = 1, finished_at = ?1" OWE_CALLBACK " WHERE id = ?5"
                    : status == MS_FAILED ? "UPDATE jobs SET status = 3, failed_at = ?1, fail_message = ?2" OWE_CALLBACK " WHERE id = ?5"
                                          : "UPDATE jobs SET status = 4, finished_at = ?1, fail_message = ?2 WHERE id = ?5";
#undef OWE_CALLBACK
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, sql, &st);
  if (!e) {
    /* unused numbered parameters are fine: each statement names the ones it reads */
    bind_text(st, 1, now), bind_text(st, 2, message ? message : ""), bind_text(st, 3, lease), bind_text(st, 4, q->node);
    sqlite3_bind_int64(st, 5, id);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "finishing a job");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *job_requeue(ms_store *s, int64_t id, bool uncount) {
  return simple_update(s,
                       uncount ? "UPDATE jobs SET status = 0, progress = 0, started_at = NULL, attempts = MAX(attempts - 1, 0) WHERE id = ?"
                               : "UPDATE jobs SET status = 0, progress = 0, started_at = NULL WHERE id = ?",
                       id, NULL, NULL, 0);
}

static mp_error *job_cancel(ms_store *s, const char *owner, int64_t id, bool *found, ms_status *now_status) {
  LOCK(s);
  ms_job j;
  mp_error *e = exec(q, "BEGIN IMMEDIATE");
  if (!e) e = job_get_locked(q, owner, id, &j, found);
  if (!e && *found) {
    *now_status = j.status;
    const char *sql = j.status == MS_QUEUED ? "UPDATE jobs SET status = 4, finished_at = ?, fail_message = 'cancelled' WHERE id = ?"
                      : j.status == MS_RUNNING ? "UPDATE jobs SET cancel_requested = 1 WHERE id = ?"
                                               : NULL;
    if (sql) {
      sqlite3_stmt *st = NULL;
      e = prep(q, sql, &st);
      if (!e) {
        char now[32];
        ms_now_iso(now);
        if (j.status == MS_QUEUED) bind_text(st, 1, now), sqlite3_bind_int64(st, 2, id);
        else sqlite3_bind_int64(st, 1, id);
        if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "cancelling a job");
      }
      sqlite3_finalize(st);
      if (j.status == MS_QUEUED) *now_status = MS_CANCELLED;
    }
    ms_job_free(&j);
  }
  if (!e) e = exec(q, "COMMIT");
  else mp_error_free(exec(q, "ROLLBACK"));
  UNLOCK();
  return e;
}

static mp_error *job_get(ms_store *s, const char *owner, int64_t id, ms_job *out, bool *found) {
  LOCK(s);
  mp_error *e = job_get_locked(q, owner, id, out, found);
  UNLOCK();
  return e;
}

static mp_error *job_list(ms_store *s, const char *owner, int64_t tune_id, int limit, int offset, ms_job **out, int *n) {
  *out = NULL, *n = 0;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q,
                     tune_id < 0 ? "SELECT " JOB_COLS " FROM jobs WHERE owner = ? ORDER BY id DESC LIMIT ? OFFSET ?"
                                 : "SELECT " JOB_COLS " FROM jobs WHERE owner = ? AND tune_id = ? ORDER BY id DESC LIMIT ? OFFSET ?",
                     &st);
  if (!e) {
    int i = 1;
    bind_text(st, i++, owner);
    if (tune_id >= 0) sqlite3_bind_int64(st, i++, tune_id);
    sqlite3_bind_int(st, i++, limit), sqlite3_bind_int(st, i++, offset);
    *out = calloc((size_t)(limit > 0 ? limit : 1), sizeof **out);
    int rc = SQLITE_DONE;
    while (*out && *n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) read_job(st, &(*out)[(*n)++]);
    if (!*out) e = mp_errorf("out of memory");
    else if (rc != SQLITE_DONE && rc != SQLITE_ROW) e = dberr(q, "listing jobs");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *job_list_running(ms_store *s, int64_t **ids, int *n) {
  *ids = NULL, *n = 0;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "SELECT id FROM jobs WHERE status = 1 ORDER BY id", &st);
  int cap = 0;
  while (!e && sqlite3_step(st) == SQLITE_ROW) {
    if (*n == cap) {
      int64_t *g = realloc(*ids, sizeof **ids * (size_t)(cap = cap ? cap * 2 : 8));
      if (!g) {
        e = mp_errorf("out of memory");
        break;
      }
      *ids = g;
    }
    (*ids)[(*n)++] = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *job_counts(ms_store *s, ms_counts *out) {
  memset(out, 0, sizeof *out);
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "SELECT status, COUNT(*) FROM jobs GROUP BY status", &st);
  while (!e && sqlite3_step(st) == SQLITE_ROW) {
    int k = sqlite3_column_int(st, 0);
    if (k >= 0 && k < MS_STATUS_COUNT) out->by_status[k] = sqlite3_column_int64(st, 1);
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *callback_attempt(ms_store *s, int64_t id, int attempt, long http_status, const char *error) {
  char now[32];
  ms_now_iso(now);
  LOCK(s);
  sqlite3_stmt *st = NULL;
  /* json_insert with '$[#]' appends to the array (SQLite's JSON1, built into Debian's SQLite) */
  mp_error *e = prep(q,
                     "UPDATE jobs SET callbacks_json = json_insert(callbacks_json, '$[#]',"
                     " json_object('attempt', ?, 'at', ?, 'http_status', ?, 'error', ?)) WHERE id = ?",
                     &st);
  if (!e) {
    sqlite3_bind_int(st, 1, attempt), bind_text(st, 2, now), sqlite3_bind_int64(st, 3, http_status);
    bind_text(st, 4, error), sqlite3_bind_int64(st, 5, id);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "recording a callback attempt");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

/* Up to limit rows of a prepared SELECT JOB_COLS into a new array *out of *n (none on failure). */
static mp_error *read_jobs(sq *q, sqlite3_stmt *st, int limit, const char *what, ms_job **out, int *n) {
  if (!(*out = calloc((size_t)limit, sizeof **out))) return mp_errorf("out of memory");
  int rc = SQLITE_DONE;
  while (*n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) read_job(st, &(*out)[(*n)++]);
  if (rc == SQLITE_DONE || rc == SQLITE_ROW) return NULL;
  mp_error *e = dberr(q, what);
  ms_job_list_free(*out, *n), *out = NULL, *n = 0;
  return e;
}

/* ---------------- callbacks owed (store.h) */

static mp_error *callback_claim(ms_store *s, const char *since, bool own_too, int limit, ms_job **out, int *n) {
  *out = NULL, *n = 0;
  if (limit <= 0) return NULL;
  char now[32], lease[32];
  ms_now_iso(now);
  iso_after(CALLBACK_LEASE_SECONDS, lease);
  LOCK(s);
  sqlite3_stmt *st = NULL;
  /* one process owns a SQLite store: a lease held under another name is a dead process's */
  mp_error *e = prep(q,
                     "UPDATE jobs SET callback_lease_until = ?1, callback_node = ?2"
                     " WHERE id IN (SELECT id FROM jobs WHERE callback_lease_until IS NOT NULL"
                     "   AND (callback_lease_until < ?3 OR callback_node IS NOT ?2 OR ?4)"
                     "   AND COALESCE(finished_at, failed_at) > ?5 ORDER BY id LIMIT ?6)"
                     " RETURNING " JOB_COLS,
                     &st);
  if (!e) {
    bind_text(st, 1, lease), bind_text(st, 2, q->node), bind_text(st, 3, now), sqlite3_bind_int(st, 4, own_too);
    bind_text(st, 5, since), sqlite3_bind_int(st, 6, limit);
    /* the change is made at the first step; the rows it returns follow (at most limit) */
    int rc = SQLITE_DONE;
    if (!(*out = calloc((size_t)limit, sizeof **out))) e = mp_errorf("out of memory");
    while (!e && (rc = sqlite3_step(st)) == SQLITE_ROW)
      if (*n < limit) read_job(st, &(*out)[(*n)++]);
    if (!e && rc != SQLITE_DONE) e = dberr(q, "claiming callbacks owed");
    if (e) ms_job_list_free(*out, *n), *out = NULL, *n = 0;
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *callback_renew(ms_store *s, const int64_t *ids, int n, int *held) {
  *held = 0;
  if (n <= 0) return NULL;
  char lease[32];
  iso_after(CALLBACK_LEASE_SECONDS, lease);
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = exec(q, "BEGIN IMMEDIATE");
  if (!e) e = prep(q, "UPDATE jobs SET callback_lease_until = ? WHERE id = ? AND callback_node = ? AND callback_lease_until IS NOT NULL", &st);
  for (int i = 0; !e && i < n; i++) {
    sqlite3_reset(st);
    bind_text(st, 1, lease), sqlite3_bind_int64(st, 2, ids[i]), bind_text(st, 3, q->node);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "renewing callback leases");
    else *held += sqlite3_changes(q->db);
  }
  sqlite3_finalize(st);
  if (!e) e = exec(q, "COMMIT");
  else mp_error_free(exec(q, "ROLLBACK")), *held = 0;
  UNLOCK();
  return e;
}

static mp_error *callback_settle(ms_store *s, int64_t id) {
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "UPDATE jobs SET callback_lease_until = NULL, callback_node = NULL WHERE id = ? AND callback_node = ?", &st);
  if (!e) {
    sqlite3_bind_int64(st, 1, id), bind_text(st, 2, q->node);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "settling a callback");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *callback_release(ms_store *s) {
  char now[32];
  ms_now_iso(now);
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "UPDATE jobs SET callback_lease_until = ?, callback_node = NULL WHERE callback_node = ? AND callback_lease_until IS NOT NULL", &st);
  if (!e) {
    bind_text(st, 1, now), bind_text(st, 2, q->node);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "handing back callbacks");
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *callback_give_up(ms_store *s, const char *ended_before, const char *why, int *n) {
  *n = 0;
  char now[32];
  ms_now_iso(now);
  LOCK(s);
  sqlite3_stmt *st = NULL;
  /* claimable as in callback_claim: a lease run out, or held under another name (a dead process's) */
  mp_error *e = prep(q,
                     "UPDATE jobs SET callbacks_json = json_insert(callbacks_json, '$[#]',"
                     "   json_object('attempt', 0, 'at', ?1, 'http_status', 0, 'error', ?2)),"
                     " callback_lease_until = NULL, callback_node = NULL"
                     " WHERE callback_lease_until IS NOT NULL AND (callback_lease_until < ?1 OR callback_node IS NOT ?3)"
                     "   AND COALESCE(finished_at, failed_at) <= ?4",
                     &st);
  if (!e) {
    bind_text(st, 1, now), bind_text(st, 2, why), bind_text(st, 3, q->node), bind_text(st, 4, ended_before);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "giving up old callbacks");
    else *n = sqlite3_changes(q->db);
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

/* ---------------- retention */

static mp_error *job_list_expirable(ms_store *s, const char *before, int64_t after_id, int limit, ms_job **out, int *n) {
  *out = NULL, *n = 0;
  if (limit <= 0) return NULL;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  /* ended: done (2) and cancelled (4) have finished_at, failed (3) failed_at */
  mp_error *e = prep(q,
                     "SELECT " JOB_COLS " FROM jobs WHERE status IN (2, 3, 4) AND expired_at IS NULL"
                     " AND COALESCE(finished_at, failed_at) < ? AND id > ? ORDER BY id LIMIT ?",
                     &st);
  if (!e) {
    bind_text(st, 1, before), sqlite3_bind_int64(st, 2, after_id), sqlite3_bind_int(st, 3, limit);
    e = read_jobs(q, st, limit, "listing jobs to expire", out, n);
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

static mp_error *job_mark_expired(ms_store *s, int64_t id, const char *at, bool *marked) {
  *marked = false;
  LOCK(s);
  sqlite3_stmt *st = NULL;
  mp_error *e = prep(q, "UPDATE jobs SET expired_at = ? WHERE id = ? AND status IN (2, 3, 4) AND expired_at IS NULL", &st);
  if (!e) {
    bind_text(st, 1, at), sqlite3_bind_int64(st, 2, id);
    if (sqlite3_step(st) != SQLITE_DONE) e = dberr(q, "marking a job expired");
    else *marked = sqlite3_changes(q->db) > 0;
  }
  sqlite3_finalize(st);
  UNLOCK();
  return e;
}

/* One process owns a SQLite store: no leases to renew, only the cancel flag to report. */
static mp_error *job_heartbeat(ms_store *s, int64_t id, bool *cancel, bool *lost) {
  *cancel = false, *lost = false;
  ms_job j;
  bool found;
  MP_TRY(job_get(s, NULL, id, &j, &found));
  *lost = !found || j.status != MS_RUNNING;
  *cancel = found && j.cancel_requested;
  ms_job_free(&j);
  return NULL;
}

/* Recovery at start (worker.c) handles what a dead process left: nothing expires here. */
static mp_error *job_reclaim_expired(ms_store *s, int *requeued, int *failed) {
  (void)s;
  *requeued = 0, *failed = 0;
  return NULL;
}

static void store_close(ms_store *s) {
  if (!s) return;
  sq *q = s->impl;
  if (q) {
    sqlite3_close(q->db);
    pthread_mutex_destroy(&q->mu);
    free(q);
  }
  free(s);
}

static mp_error *migrate(sq *q) {
  MP_TRY(exec(q, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"));
  int version = 0;
  sqlite3_stmt *st = NULL;
  MP_TRY(prep(q, "SELECT MAX(version) FROM schema_version", &st));
  if (sqlite3_step(st) == SQLITE_ROW) version = sqlite3_column_int(st, 0);
  sqlite3_finalize(st);
  if (version > N_MIGRATIONS)
    return mp_errorf("the database has schema version %d; this mpass knows up to %d: use a newer mpass", version, N_MIGRATIONS);
  for (int v = version; v < N_MIGRATIONS; v++) {
    MP_TRY(exec(q, "BEGIN IMMEDIATE"));
    char sql[64];
    snprintf(sql, sizeof sql, "INSERT INTO schema_version VALUES(%d)", v + 1);
    mp_error *e = exec(q, MIGRATIONS[v]);
    if (!e) e = exec(q, sql);
    if (!e) e = exec(q, "COMMIT");
    if (e) {
      mp_error_free(exec(q, "ROLLBACK"));
      return mp_error_wrap(e, "migrating to schema version %d", v + 1);
    }
  }
  return NULL;
}

mp_error *ms_store_sqlite_open(const char *path, ms_store **out) {
  *out = NULL;
  ms_store *s = calloc(1, sizeof *s);
  sq *q = calloc(1, sizeof *q);
  if (!s || !q) {
    free(s), free(q);
    return mp_errorf("out of memory");
  }
  pthread_mutex_init(&q->mu, NULL);
  snprintf(q->node, sizeof q->node, "sqlite:%ld/%lx", (long)getpid(), (unsigned long)(uintptr_t)q);
  s->impl = q;
  mp_error *e = NULL;
  if (sqlite3_open_v2(path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK)
    e = mp_errorf("cannot open the job database %s: %s", path, q->db ? sqlite3_errmsg(q->db) : "out of memory");
  if (!e) sqlite3_busy_timeout(q->db, 5000);
  if (!e) e = exec(q, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;");
  if (!e) e = migrate(q);
  s->close = store_close;
  s->token_add = token_add, s->token_lookup = token_lookup, s->token_count = token_count;
  s->tune_create = tune_create, s->tune_get = tune_get, s->tune_list = tune_list, s->tune_delete = tune_delete;
  s->job_enqueue = job_enqueue, s->job_claim = job_claim, s->job_progress = job_progress, s->job_finish = job_finish;
  s->job_requeue = job_requeue, s->job_cancel = job_cancel, s->job_get = job_get, s->job_list = job_list;
  s->job_list_running = job_list_running, s->job_counts = job_counts, s->callback_attempt = callback_attempt;
  s->job_list_expirable = job_list_expirable, s->job_mark_expired = job_mark_expired;
  s->callback_claim = callback_claim, s->callback_renew = callback_renew, s->callback_settle = callback_settle;
  s->callback_release = callback_release, s->callback_give_up = callback_give_up;
  s->job_heartbeat = job_heartbeat, s->job_reclaim_expired = job_reclaim_expired; /* shared = false, job_wait = NULL */
  if (e) {
    store_close(s);
    return mp_error_wrap(e, "%s", path);
  }
  *out = s;
  return NULL;
}
