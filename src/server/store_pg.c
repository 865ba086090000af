/* The PostgreSQL job store (store.h) for several machines sharing one queue (issue 14).
 *
 * Connections: a small pool; a call takes an idle connection (or opens one), runs its statements,
 * and gives it back. A connection that broke is dropped, so the next call reconnects; the failing
 * call returns an error naming the server and libpq's reason.
 *
 * Claims are leases: job_claim picks the oldest queued job with FOR UPDATE SKIP LOCKED (two workers
 * never wait on, nor take, the same row), marks it running with this process's worker_id and
 * lease_until = now() + lease. The worker renews the lease (job_heartbeat); when a worker dies its
 * lease runs out and job_reclaim_expired queues the job again (or fails it on its second interruption,
 * as recovery at start does for SQLite). Time is the database's clock, so skewed machines agree.
 *
 * Enqueue sends NOTIFY mpass_jobs (delivered at commit); job_wait LISTENs on a connection of its own.
 * Job events (SSE) travel as NOTIFY mpass_events "<sender> <job> <terminal> <name> <data>"; the
 * event listener is one thread per store with one more connection of its own. */
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/store.h"

/* Migrations, compiled in from src/server/sql/pg/ (cmake/embed.cmake). Append, never edit. */
extern const unsigned char mpass_pg_001_init[], mpass_pg_002_retention[], mpass_pg_003_callbacks[];
static const unsigned char *const MIGRATIONS[] = {mpass_pg_001_init, mpass_pg_002_retention, mpass_pg_003_callbacks};
#define N_MIGRATIONS ((int)(sizeof MIGRATIONS / sizeof MIGRATIONS[0]))

/* pg_advisory_lock key held while migrating: "mpas" in ASCII */
#define MIGRATE_LOCK_KEY "1835102323"
#define POOL_MAX 8

typedef struct {
  char *conninfo;
  int lease_seconds;
  char worker_id[192]; /* host:pid, written to jobs.worker_id on claim */
  pthread_mutex_t mu;
  PGconn *idle[POOL_MAX];
  int n_idle;
  pthread_mutex_t listen_mu; /* job_wait's connection */
  PGconn *listen;
  /* the event listener (event_listen): its thread, the pipe that wakes it to stop, its callback */
  pthread_t ev_thread;
  bool ev_started;
  int ev_pipe[2];
  atomic_bool ev_stop, ev_up;
  void (*ev_fn)(void *arg, int64_t job, const char *name, const char *data, bool terminal);
  void *ev_arg;
} pg;

/* libpq's messages end in a newline: drop it */
static mp_error *pgerr_msg(const char *what, const char *msg) {
  int n = (int)strlen(msg);
  while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) n--;
  return mp_errorf("job store (PostgreSQL): %s: %.*s", what, n, msg);
}

static void ignore_notice(void *arg, const char *message) { (void)arg, (void)message; }

static mp_error *connect_one(pg *p, PGconn **out) {
  PGconn *c = PQconnectdb(p->conninfo);
  if (!c) return mp_errorf("job store (PostgreSQL): out of memory");
  if (PQstatus(c) != CONNECTION_OK) {
    mp_error *e = pgerr_msg("cannot connect (check --db: host, port, database, user, password)", PQerrorMessage(c));
    PQfinish(c);
    return e;
  }
  /* notices (e.g. "relation already exists, skipping") are not the user's business */
  PQsetNoticeProcessor(c, ignore_notice, NULL);
  *out = c;
  return NULL;
}

static mp_error *conn_get(pg *p, PGconn **out) {
  pthread_mutex_lock(&p->mu);
  PGconn *c = p->n_idle > 0 ? p->idle[--p->n_idle] : NULL;
  pthread_mutex_unlock(&p->mu);
  if (c && PQstatus(c) != CONNECTION_OK) {
    PQreset(c); /* the server restarted or the network dropped: one reconnect */
    if (PQstatus(c) != CONNECTION_OK) {
      mp_error *e = pgerr_msg("lost the connection and cannot reconnect", PQerrorMessage(c));
      PQfinish(c);
      return e;
    }
  }
  if (c) {
    *out = c;
    return NULL;
  }
  return connect_one(p, out);
}

/* A connection goes back to the pool only when healthy and outside any transaction. */
static void conn_put(pg *p, PGconn *c) {
  if (!c) return;
  if (PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) != PQTRANS_IDLE) {
    PQfinish(c);
    return;
  }
  pthread_mutex_lock(&p->mu);
  if (p->n_idle < POOL_MAX) p->idle[p->n_idle++] = c, c = NULL;
  pthread_mutex_unlock(&p->mu);
  if (c) PQfinish(c);
}

/* One statement with text parameters; *res (when wanted) holds the rows, else it is cleared. */
static mp_error *run(PGconn *c, const char *what, const char *sql, int n, const char *const *v, PGresult **res) {
  if (res) *res = NULL;
  bool outside_tx = PQtransactionStatus(c) == PQTRANS_IDLE;
  PGresult *r = PQexecParams(c, sql, n, NULL, v, NULL, NULL, 0);
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && outside_tx && PQstatus(c) == CONNECTION_BAD) {
    /* a pooled connection the server dropped (restart, failover, idle timeout): the statement did
     * not run inside a transaction, so reconnect and send it once more */
    PQclear(r);
    PQreset(c);
    r = PQstatus(c) == CONNECTION_OK ? PQexecParams(c, sql, n, NULL, v, NULL, NULL, 0) : NULL;
    st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  }
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
    mp_error *e = pgerr_msg(what, r ? PQresultErrorMessage(r) : PQerrorMessage(c));
    PQclear(r);
    return e;
  }
  if (res) *res = r;
  else PQclear(r);
  return NULL;
}

static mp_error *run0(PGconn *c, const char *sql) { return run(c, sql, sql, 0, NULL, NULL); }

static void end_tx(PGconn *c, mp_error **e) {
  if (!*e) *e = run0(c, "COMMIT");
  else if (PQtransactionStatus(c) != PQTRANS_IDLE) PQclear(PQexec(c, "ROLLBACK"));
}

static char *dup_val(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}
static int64_t int_val(const PGresult *r, int row, int col) { return strtoll(PQgetvalue(r, row, col), NULL, 10); }

#define I64(buf, v) (snprintf(buf, sizeof buf, "%" PRId64, (int64_t)(v)), (const char *)buf)

#define CONN(s) \
  pg *p = (s)->impl; \
  PGconn *c; \
  MP_TRY(conn_get(p, &c))

/* ---------------- tokens */

static mp_error *token_add(ms_store *s, const char *name, const char *hash) {
  CONN(s);
  char now[32];
  ms_now_iso(now);
  const char *v[] = {name, hash, now};
  mp_error *e = run(c, "adding a token", "INSERT INTO tokens(name, sha256, created_at) VALUES($1,$2,$3)", 3, v, NULL);
  conn_put(p, c);
  return e;
}

static mp_error *token_lookup(ms_store *s, const char *hash, char **name) {
  *name = NULL;
  CONN(s);
  PGresult *r;
  const char *v[] = {hash};
  mp_error *e = run(c, "looking up a token", "SELECT name FROM tokens WHERE sha256 = $1", 1, v, &r);
  if (!e && PQntuples(r) > 0) *name = dup_val(r, 0, 0);
  PQclear(r);
  conn_put(p, c);
  return e;
}

static mp_error *token_count(ms_store *s, int64_t *n) {
  CONN(s);
  PGresult *r;
  mp_error *e = run(c, "counting tokens", "SELECT COUNT(*) FROM tokens", 0, NULL, &r);
  if (!e) *n = int_val(r, 0, 0);
  PQclear(r);
  conn_put(p, c);
  return e;
}

/* ---------------- tunes */

#define TUNE_COLS "id, owner, title, name, token, model_type, branch, file_name, created_at"

static void read_tune(const PGresult *r, int row, ms_tune *t) {
  memset(t, 0, sizeof *t);
  t->id = int_val(r, row, 0);
  t->owner = dup_val(r, row, 1), t->title = dup_val(r, row, 2), t->name = dup_val(r, row, 3), t->token = dup_val(r, row, 4);
  t->model_type = dup_val(r, row, 5), t->branch = dup_val(r, row, 6), t->file_name = dup_val(r, row, 7);
  t->created_at = dup_val(r, row, 8);
}

static mp_error *tune_create(ms_store *s, const ms_tune *t, int64_t *id) {
  CONN(s);
  char now[32];
  ms_now_iso(now);
  const char *v[] = {t->owner, t->title, t->name, t->token, t->model_type, t->branch, t->file_name, t->created_at ? t->created_at : now};
  PGresult *r;
  mp_error *e = run(c, "adding a tune",
                    "INSERT INTO tunes(owner, title, name, token, model_type, branch, file_name, created_at)"
                    " VALUES($1,$2,$3,$4,$5,$6,$7,$8) RETURNING id",
                    8, v, &r);
  if (!e) *id = int_val(r, 0, 0);
  PQclear(r);
  conn_put(p, c);
  return e;
}

static mp_error *tune_get(ms_store *s, const char *owner, int64_t id, ms_tune *out, bool *found) {
  memset(out, 0, sizeof *out);
  *found = false;
  CONN(s);
  char b[32];
  const char *v[] = {I64(b, id), owner};
  PGresult *r;
  mp_error *e = run(c, "reading a tune", "SELECT " TUNE_COLS " FROM tunes WHERE id = $1 AND owner = $2", 2, v, &r);
  if (!e && PQntuples(r) > 0) read_tune(r, 0, out), *found = true;
  PQclear(r);
  conn_put(p, c);
  return e;
}

static mp_error *tune_list(ms_store *s, const char *owner, ms_tune **out, int *n) {
  *out = NULL, *n = 0;
  CONN(s);
  const char *v[] = {owner};
  PGresult *r;
  mp_error *e = run(c, "listing tunes", "SELECT " TUNE_COLS " FROM tunes WHERE owner = $1 ORDER BY id", 1, v, &r);
  int rows = e ? 0 : PQntuples(r);
  if (rows > 0 && !(*out = calloc((size_t)rows, sizeof **out))) e = mp_errorf("out of memory");
  for (int i = 0; !e && i < rows; i++) read_tune(r, i, &(*out)[(*n)++]);
  PQclear(r);
  conn_put(p, c);
  return e;
}

static mp_error *tune_delete(ms_store *s, const char *owner, int64_t id, bool *found, int64_t *in_use) {
  *found = false, *in_use = 0;
  CONN(s);
  char b[32];
  const char *v[] = {I64(b, id), owner};
  PGresult *r = NULL;
  mp_error *e = run0(c, "BEGIN");
  if (!e) e = run(c, "deleting a tune", "SELECT id FROM tunes WHERE id = $1 AND owner = $2 FOR UPDATE", 2, v, &r);
  if (!e) *found = PQntuples(r) > 0;
  PQclear(r), r = NULL;
  if (!e && *found) e = run(c, "deleting a tune", "SELECT COUNT(*) FROM jobs WHERE tune_id = $1 AND status IN (0, 1)", 1, v, &r);
  if (!e && *found) *in_use = int_val(r, 0, 0);
  PQclear(r);
  if (!e && *found && *in_use == 0) e = run(c, "deleting a tune", "DELETE FROM tunes WHERE id = $1", 1, v, NULL);
  end_tx(c, &e);
  conn_put(p, c);
  return e;
}

/* ---------------- jobs */

#define JOB_COLS                                                                                                      \
  "id, owner, tune_id, document, is_json, params_json, model_path, inputs_dir, callback, idempotency_key, status, " \
  "progress, attempts, created_at, started_at, finished_at, failed_at, fail_message, callbacks_json::text, cancel_requested, " \
  "expired_at"

static void read_job(const PGresult *r, int row, ms_job *j) {
  memset(j, 0, sizeof *j);
  j->id = int_val(r, row, 0);
  j->owner = dup_val(r, row, 1);
  j->tune_id = int_val(r, row, 2);
  j->document = dup_val(r, row, 3);
  j->is_json = (int)int_val(r, row, 4);
  j->params_json = dup_val(r, row, 5), j->model_path = dup_val(r, row, 6), j->inputs_dir = dup_val(r, row, 7);
  j->callback = dup_val(r, row, 8), j->idempotency_key = dup_val(r, row, 9);
  j->status = (ms_status)int_val(r, row, 10);
  j->progress = strtod(PQgetvalue(r, row, 11), NULL);
  j->attempts = (int)int_val(r, row, 12);
  j->created_at = dup_val(r, row, 13), j->started_at = dup_val(r, row, 14), j->finished_at = dup_val(r, row, 15);
  j->failed_at = dup_val(r, row, 16), j->fail_message = dup_val(r, row, 17), j->callbacks_json = dup_val(r, row, 18);
  j->cancel_requested = PQgetvalue(r, row, 19)[0] == 't';
  j->expired_at = dup_val(r, row, 20);
}

static mp_error *job_enqueue(ms_store *s, const ms_job *j, int max_queued, int64_t *id, ms_enqueue_result *res) {
  *id = 0, *res = MS_ENQUEUED;
  CONN(s);
  PGresult *r = NULL;
  const char *ov[] = {j->owner};
  mp_error *e = run0(c, "BEGIN");
  /* one owner's enqueues take turns (several API nodes): the quota count and the idempotency check
   * then see every earlier enqueue */
  if (!e) e = run(c, "adding a job", "SELECT pg_advisory_xact_lock(hashtext('mpass-owner:' || $1))", 1, ov, NULL);
  bool decided = false;
  if (!e && j->idempotency_key) {
    const char *v[] = {j->owner, j->idempotency_key};
    e = run(c, "adding a job", "SELECT id FROM jobs WHERE owner = $1 AND idempotency_key = $2", 2, v, &r);
    if (!e && PQntuples(r) > 0) *id = int_val(r, 0, 0), *res = MS_DUPLICATE, decided = true;
    PQclear(r), r = NULL;
  }
  if (!e && !decided && max_queued > 0) {
    e = run(c, "adding a job", "SELECT COUNT(*) FROM jobs WHERE owner = $1 AND status = 0", 1, ov, &r);
    if (!e && int_val(r, 0, 0) >= max_queued) *res = MS_OVER_QUOTA, decided = true;
    PQclear(r), r = NULL;
  }
  if (!e && !decided) {
    char now[32], tb[32];
    ms_now_iso(now);
    const char *v[] = {j->owner, I64(tb, j->tune_id), j->document, j->is_json ? "1" : "0", j->params_json ? j->params_json : "{}",
                       j->model_path, j->inputs_dir, j->callback, j->idempotency_key, now};
    e = run(c, "adding a job",
            "INSERT INTO jobs(owner, tune_id, document, is_json, params_json, model_path, inputs_dir, callback,"
            " idempotency_key, status, created_at) VALUES($1,$2,$3,$4,$5,$6,$7,$8,$9,0,$10) RETURNING id",
            10, v, &r);
    if (!e) *id = int_val(r, 0, 0);
    PQclear(r), r = NULL;
    if (!e) e = run0(c, "NOTIFY mpass_jobs");
  }
  end_tx(c, &e);
  conn_put(p, c);
  return e;
}

static mp_error *job_get_conn(PGconn *c, const char *owner, int64_t id, ms_job *out, bool *found) {
  *found = false;
  memset(out, 0, sizeof *out);
  char b[32];
  const char *v[] = {I64(b, id), owner};
  PGresult *r;
  mp_error *e = run(c, "reading a job",
                    owner ? "SELECT " JOB_COLS " FROM jobs WHERE id = $1 AND owner = $2" : "SELECT " JOB_COLS " FROM jobs WHERE id = $1",
                    owner ? 2 : 1, v, &r);
  if (!e && PQntuples(r) > 0) read_job(r, 0, out), *found = true;
  PQclear(r);
  return e;
}

static mp_error *job_claim(ms_store *s, ms_job *out, bool *found) {
  memset(out, 0, sizeof *out);
  *found = false;
  CONN(s);
  char now[32], lease[32];
  ms_now_iso(now);
  snprintf(lease, sizeof lease, "%d", p->lease_seconds);
  const char *v[] = {now, p->worker_id, lease};
  PGresult *r;
  /* one statement is one short transaction: the row lock taken by the sub-select is held until the
   * UPDATE commits, and SKIP LOCKED lets other workers pass over it to the next job */
  mp_error *e = run(c, "claiming a job",
                    "UPDATE jobs SET status = 1, attempts = attempts + 1, started_at = $1, progress = 0,"
                    " worker_id = $2, lease_until = now() + make_interval(secs => $3::int)"
                    " WHERE id = (SELECT id FROM jobs WHERE status = 0 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                    " RETURNING " JOB_COLS,
                    3, v, &r);
  if (!e && PQntuples(r) > 0) read_job(r, 0, out), *found = true;
  PQclear(r);
  conn_put(p, c);
  return e;
}

static mp_error *update_job(ms_store *s, const char *what, const char *sql, int n, const char *const *v) {
  CONN(s);
  mp_error *e = run(c, what, sql, n, v, NULL);
  conn_put(p, c);
  return e;
}

static mp_error *job_progress(ms_store *s, int64_t id, double progress) {
  char b[32], f[32];
  snprintf(f, sizeof f, "%.6f", progress);
  const char *v[] = {f, I64(b, id)};
  /* NOTIFY mpass_progress for tools watching the table (SSE gets its events from mpass_events) */
  return update_job(s, "recording progress",
                    "WITH u AS (UPDATE jobs SET progress = $1 WHERE id = $2 AND status = 1 RETURNING id)"
                    " SELECT pg_notify('mpass_progress', id::text) FROM u",
                    2, v);
}

/* The columns that make a job that ends done or failed owe its callback (store.h, 003_callbacks.sql),
 * held by the ending process (worker_id parameter) for a lease (seconds parameter): part of the
 * statement that ends the job, so that the end and the duty commit together. */
#define OWE_CALLBACK(node, secs)                                                                  \
  "callback_lease_until = CASE WHEN callback IS NOT NULL THEN now() + make_interval(secs => " secs \
  "::int) END, callback_node = CASE WHEN callback IS NOT NULL THEN " node " END"

/* A running job is ended or handed back only by the worker holding its lease: one that stalled past
 * its lease must not overwrite the run of the worker that took the job over. */
static mp_error *job_finish(ms_store *s, int64_t id, ms_status status, const char *message) {
  pg *p = s->impl;
  char now[32], b[32], lease[32];
  ms_now_iso(now);
  snprintf(lease, sizeof lease, "%d", p->lease_seconds);
  if (status == MS_DONE) {
    const char *v[] = {now, I64(b, id), p->worker_id, lease};
    return update_job(s, "finishing a job",
                      "UPDATE jobs SET status = 2, progress = 1, finished_at = $1, lease_until = NULL, " OWE_CALLBACK("$3", "$4")
                      " WHERE id = $2 AND (status <> 1 OR worker_id = $3)", 4, v);
  }
  const char *v[] = {now, message ? message : "", I64(b, id), p->worker_id, lease};
  return update_job(s, "finishing a job",
                    status == MS_FAILED ? "UPDATE jobs SET status = 3, failed_at = $1, fail_message = $2, lease_until = NULL, "
                                          OWE_CALLBACK("$4", "$5") " WHERE id = $3 AND (status <> 1 OR worker_id = $4)"
                                        : "UPDATE jobs SET status = 4, finished_at = $1, fail_message = $2, lease_until = NULL"
                                          " WHERE id = $3 AND (status <> 1 OR worker_id = $4)",
                    status == MS_FAILED ? 5 : 4, v);
}

static mp_error *job_requeue(ms_store *s, int64_t id, bool uncount) {
  pg *p = s->impl;
  char b[32];
  const char *v[] = {I64(b, id), p->worker_id};
  return update_job(s, "requeueing a job",
                    uncount ? "UPDATE jobs SET status = 0, progress = 0, started_at = NULL, worker_id = NULL, lease_until = NULL,"
                              " attempts = GREATEST(attempts - 1, 0) WHERE id = $1 AND (status <> 1 OR worker_id = $2)"
                            : "UPDATE jobs SET status = 0, progress = 0, started_at = NULL, worker_id = NULL, lease_until = NULL"
                              " WHERE id = $1 AND (status <> 1 OR worker_id = $2)",
                    2, v);
}

static mp_error *job_cancel(ms_store *s, const char *owner, int64_t id, bool *found, ms_status *now_status) {
  *found = false;
  CONN(s);
  char b[32], now[32];
  ms_now_iso(now);
  const char *v[] = {I64(b, id), owner, now};
  PGresult *r = NULL;
  mp_error *e = run0(c, "BEGIN");
  if (!e) e = run(c, "cancelling a job", "SELECT status FROM jobs WHERE id = $1 AND owner = $2 FOR UPDATE", 2, v, &r);
  if (!e && PQntuples(r) > 0) {
    *found = true;
    *now_status = (ms_status)int_val(r, 0, 0);
    if (*now_status == MS_QUEUED) {
      const char *qv[] = {v[0], now};
      e = run(c, "cancelling a job", "UPDATE jobs SET status = 4, finished_at = $2, fail_message = 'cancelled' WHERE id = $1", 2, qv, NULL);
      *now_status = MS_CANCELLED;
    } else if (*now_status == MS_RUNNING) {
      e = run(c, "cancelling a job", "UPDATE jobs SET cancel_requested = true WHERE id = $1", 1, v, NULL);
      if (!e) e = run(c, "cancelling a job", "SELECT pg_notify('mpass_cancel', $1)", 1, v, NULL);
    }
  }
  PQclear(r);
  end_tx(c, &e);
  conn_put(p, c);
  return e;
}

static mp_error *job_get(ms_store *s, const char *owner, int64_t id, ms_job *out, bool *found) {
  CONN(s);
  mp_error *e = job_get_conn(c, owner, id, out, found);
  conn_put(p, c);
  return e;
}

/* Every row of r as jobs into a new array *out of *n (r is cleared). */
static mp_error *read_jobs(PGresult *r, ms_job **out, int *n) {
  const int rows = PQntuples(r);
  mp_error *e = NULL;
  if (!(*out = calloc((size_t)(rows > 0 ? rows : 1), sizeof **out))) e = mp_errorf("out of memory");
  for (int i = 0; !e && i < rows; i++) read_job(r, i, &(*out)[(*n)++]);
  PQclear(r);
  return e;
}

static mp_error *job_list(ms_store *s, const char *owner, int64_t tune_id, int limit, int offset, ms_job **out, int *n) {
  *out = NULL, *n = 0;
  CONN(s);
  char tb[32], lb[32], ob[32];
  PGresult *r;
  mp_error *e;
  if (tune_id < 0) {
    const char *v[] = {owner, I64(lb, limit), I64(ob, offset)};
    e = run(c, "listing jobs", "SELECT " JOB_COLS " FROM jobs WHERE owner = $1 ORDER BY id DESC LIMIT $2 OFFSET $3", 3, v, &r);
  } else {
    const char *v[] = {owner, I64(tb, tune_id), I64(lb, limit), I64(ob, offset)};
    e = run(c, "listing jobs", "SELECT " JOB_COLS " FROM jobs WHERE owner = $1 AND tune_id = $2 ORDER BY id DESC LIMIT $3 OFFSET $4", 4, v, &r);
  }
  if (!e) e = read_jobs(r, out, n);
  conn_put(p, c);
  return e;
}

/* Running jobs whose lease ran out: those are what a dead process left behind. Jobs running under a
 * live lease belong to a worker somewhere else and are not listed. */
static mp_error *job_list_running(ms_store *s, int64_t **ids, int *n) {
  *ids = NULL, *n = 0;
  CONN(s);
  PGresult *r;
  mp_error *e = run(c, "listing running jobs", "SELECT id FROM jobs WHERE status = 1 AND lease_until < now() ORDER BY id", 0, NULL, &r);
  if (!e) {
    int rows = PQntuples(r);
    if (rows > 0 && !(*ids = malloc(sizeof **ids * (size_t)rows))) e = mp_errorf("out of memory");
    for (int i = 0; !e && i < rows; i++) (*ids)[(*n)++] = int_val(r, i, 0);
    PQclear(r);
  }
  conn_put(p, c);
  return e;
}

static mp_error *job_counts(ms_store *s, ms_counts *out) {
  memset(out, 0, sizeof *out);
  CONN(s);
  PGresult *r;
  mp_error *e = run(c, "counting jobs", "SELECT status, COUNT(*) FROM jobs GROUP BY status", 0, NULL, &r);
  if (!e) {
    for (int i = 0; i < PQntuples(r); i++) {
      int64_t k = int_val(r, i, 0);
      if (k >= 0 && k < MS_STATUS_COUNT) out->by_status[k] = int_val(r, i, 1);
    }
    PQclear(r);
  }
  conn_put(p, c);
  return e;
}

static mp_error *callback_attempt(ms_store *s, int64_t id, int attempt, long http_status, const char *error) {
  char now[32], ab[32], hb[32], ib[32];
  ms_now_iso(now);
  const char *v[] = {I64(ab, attempt), now, I64(hb, http_status), error, I64(ib, id)};
  return update_job(s, "recording a callback attempt",
                    "UPDATE jobs SET callbacks_json = callbacks_json || jsonb_build_array(jsonb_build_object("
                    "'attempt', $1::int, 'at', $2::text, 'http_status', $3::bigint, 'error', $4::text)) WHERE id = $5",
                    5, v);
}

/* ---------------- callbacks owed (store.h) */

static mp_error *callback_claim(ms_store *s, const char *since, bool own_too, int limit, ms_job **out, int *n) {
  *out = NULL, *n = 0;
  if (limit <= 0) return NULL;
  CONN(s);
  char lease[32], lb[32];
  snprintf(lease, sizeof lease, "%d", p->lease_seconds);
  const char *v[] = {lease, p->worker_id, since, own_too ? "true" : "false", I64(lb, limit)};
  PGresult *r;
  /* one statement: the sub-select locks the rows it picks and SKIP LOCKED passes over rows another
   * process is claiming, renewing or settling right now, so two processes never claim one callback;
   * the lease then keeps it with the claimer (another sweep sees a lease in the future) */
  mp_error *e = run(c, "claiming callbacks owed",
                    "UPDATE jobs SET callback_lease_until = now() + make_interval(secs => $1::int), callback_node = $2"
                    " WHERE id IN (SELECT id FROM jobs WHERE callback_lease_until IS NOT NULL"
                    "   AND (callback_lease_until < now() OR ($4::boolean AND callback_node = $2))"
                    "   AND COALESCE(finished_at, failed_at) > $3 ORDER BY id LIMIT $5::int FOR UPDATE SKIP LOCKED)"
                    " RETURNING " JOB_COLS,
                    5, v, &r);
  if (!e) e = read_jobs(r, out, n);
  conn_put(p, c);
  return e;
}

/* "{1,2,3}": a bigint[] parameter */
static char *id_array(const int64_t *ids, int n) {
  char *a = malloc((size_t)n * 21 + 3), *o = a;
  if (!a) return NULL;
  *o++ = '{';
  for (int i = 0; i < n; i++) o += sprintf(o, "%s%" PRId64, i ? "," : "", ids[i]);
  *o++ = '}', *o = 0;
  return a;
}

static mp_error *callback_renew(ms_store *s, const int64_t *ids, int n, int *held) {
  *held = 0;
  if (n <= 0) return NULL;
  char *arr = id_array(ids, n);
  if (!arr) return mp_errorf("out of memory");
  pg *p = s->impl;
  PGconn *c;
  mp_error *e = conn_get(p, &c);
  if (e) return free(arr), e;
  char lease[32];
  snprintf(lease, sizeof lease, "%d", p->lease_seconds);
  const char *v[] = {lease, arr, p->worker_id};
  PGresult *r;
  e = run(c, "renewing callback leases",
          "UPDATE jobs SET callback_lease_until = now() + make_interval(secs => $1::int)"
          " WHERE id = ANY($2::bigint[]) AND callback_node = $3 AND callback_lease_until IS NOT NULL RETURNING id",
          3, v, &r);
  if (!e) *held = PQntuples(r), PQclear(r);
  free(arr);
  conn_put(p, c);
  return e;
}

static mp_error *callback_settle(ms_store *s, int64_t id) {
  pg *p = s->impl;
  char b[32];
  const char *v[] = {I64(b, id), p->worker_id};
  return update_job(s, "settling a callback",
                    "UPDATE jobs SET callback_lease_until = NULL, callback_node = NULL WHERE id = $1 AND callback_node = $2", 2, v);
}

static mp_error *callback_release(ms_store *s) {
  pg *p = s->impl;
  const char *v[] = {p->worker_id};
  return update_job(s, "handing back callbacks",
                    "UPDATE jobs SET callback_lease_until = now(), callback_node = NULL"
                    " WHERE callback_node = $1 AND callback_lease_until IS NOT NULL",
                    1, v);
}

static mp_error *callback_give_up(ms_store *s, const char *ended_before, const char *why, int *n) {
  *n = 0;
  CONN(s);
  char now[32];
  ms_now_iso(now);
  const char *v[] = {now, why, ended_before};
  PGresult *r;
  /* rows another process is claiming, renewing or settling right now are passed over (SKIP LOCKED):
   * the next sweep sees them again */
  mp_error *e = run(c, "giving up old callbacks",
                    "UPDATE jobs SET callbacks_json = callbacks_json || jsonb_build_array(jsonb_build_object("
                    "   'attempt', 0, 'at', $1::text, 'http_status', 0, 'error', $2::text)),"
                    " callback_lease_until = NULL, callback_node = NULL"
                    " WHERE id IN (SELECT id FROM jobs WHERE callback_lease_until IS NOT NULL AND callback_lease_until < now()"
                    "   AND COALESCE(finished_at, failed_at) <= $3 FOR UPDATE SKIP LOCKED)"
                    " RETURNING id",
                    3, v, &r);
  if (!e) *n = PQntuples(r), PQclear(r);
  conn_put(p, c);
  return e;
}

/* ---------------- retention */

static mp_error *job_list_expirable(ms_store *s, const char *before, int64_t after_id, int limit, ms_job **out, int *n) {
  *out = NULL, *n = 0;
  if (limit <= 0) return NULL;
  CONN(s);
  char ab[32], lb[32];
  const char *v[] = {before, I64(ab, after_id), I64(lb, limit)};
  PGresult *r;
  /* ended: done (2) and cancelled (4) have finished_at, failed (3) failed_at */
  mp_error *e = run(c, "listing jobs to expire",
                    "SELECT " JOB_COLS " FROM jobs WHERE status IN (2, 3, 4) AND expired_at IS NULL"
                    " AND COALESCE(finished_at, failed_at) < $1 AND id > $2 ORDER BY id LIMIT $3",
                    3, v, &r);
  if (!e) e = read_jobs(r, out, n);
  conn_put(p, c);
  return e;
}

static mp_error *job_mark_expired(ms_store *s, int64_t id, const char *at, bool *marked) {
  *marked = false;
  CONN(s);
  char b[32];
  const char *v[] = {at, I64(b, id)};
  PGresult *r;
  mp_error *e = run(c, "marking a job expired",
                    "UPDATE jobs SET expired_at = $1 WHERE id = $2 AND status IN (2, 3, 4) AND expired_at IS NULL RETURNING id", 2, v, &r);
  if (!e) *marked = PQntuples(r) > 0, PQclear(r);
  conn_put(p, c);
  return e;
}

/* ---------------- leases */

static mp_error *job_heartbeat(ms_store *s, int64_t id, bool *cancel, bool *lost) {
  *cancel = false, *lost = false;
  CONN(s);
  char b[32], lease[32];
  snprintf(lease, sizeof lease, "%d", p->lease_seconds);
  const char *v[] = {I64(b, id), p->worker_id, lease};
  PGresult *r;
  mp_error *e = run(c, "renewing a lease",
                    "UPDATE jobs SET lease_until = now() + make_interval(secs => $3::int)"
                    " WHERE id = $1 AND status = 1 AND worker_id = $2 RETURNING cancel_requested",
                    3, v, &r);
  if (!e) {
    if (PQntuples(r) == 0) *lost = true;
    else *cancel = PQgetvalue(r, 0, 0)[0] == 't';
    PQclear(r);
  }
  conn_put(p, c);
  return e;
}

static mp_error *job_reclaim_expired(ms_store *s, int *requeued, int *failed) {
  *requeued = 0, *failed = 0;
  CONN(s);
  char now[32];
  ms_now_iso(now);
  const char *v[] = {now};
  PGresult *r;
  /* SKIP LOCKED: a row being finished or renewed right now is left for the next round */
  mp_error *e = run(c, "taking back jobs whose worker died",
                    "UPDATE jobs SET"
                    " status = CASE WHEN attempts >= 2 THEN 3 ELSE 0 END,"
                    " failed_at = CASE WHEN attempts >= 2 THEN $1 ELSE failed_at END,"
                    " fail_message = CASE WHEN attempts >= 2 THEN 'interrupted twice: worker died (its lease ran out)'"
                    "   ELSE fail_message END,"
                    " progress = 0, started_at = CASE WHEN attempts >= 2 THEN started_at END, worker_id = NULL, lease_until = NULL,"
                    /* failed: its callback is owed, claimable at once by any process's sweep */
                    " callback_lease_until = CASE WHEN attempts >= 2 AND callback IS NOT NULL THEN now() END, callback_node = NULL"
                    " WHERE id IN (SELECT id FROM jobs WHERE status = 1 AND lease_until < now() FOR UPDATE SKIP LOCKED)"
                    " RETURNING status",
                    1, v, &r);
  if (!e) {
    for (int i = 0; i < PQntuples(r); i++) {
      if (int_val(r, i, 0) == MS_QUEUED) (*requeued)++;
      else (*failed)++;
    }
    PQclear(r);
    if (*requeued > 0) mp_error_free(run0(c, "NOTIFY mpass_jobs"));
  }
  conn_put(p, c);
  return e;
}

static mp_error *job_wait(ms_store *s, int timeout_ms, bool *woken) {
  *woken = false;
  pg *p = s->impl;
  pthread_mutex_lock(&p->listen_mu);
  mp_error *e = NULL;
  if (p->listen && PQstatus(p->listen) != CONNECTION_OK) PQfinish(p->listen), p->listen = NULL;
  if (!p->listen) {
    e = connect_one(p, &p->listen);
    if (!e) e = run0(p->listen, "LISTEN mpass_jobs");
    if (e && p->listen) PQfinish(p->listen), p->listen = NULL;
  }
  if (!e) {
    struct pollfd fd = {.fd = PQsocket(p->listen), .events = POLLIN};
    PGnotify *n = PQnotifies(p->listen);
    if (!n && poll(&fd, 1, timeout_ms) > 0) {
      if (!PQconsumeInput(p->listen)) e = pgerr_msg("waiting for jobs", PQerrorMessage(p->listen));
      else n = PQnotifies(p->listen);
    }
    while (n) { /* one wake for however many enqueues arrived */
      *woken = true;
      PQfreemem(n);
      n = PQnotifies(p->listen);
    }
  }
  pthread_mutex_unlock(&p->listen_mu);
  if (e) usleep((useconds_t)timeout_ms * 1000); /* the database is away: wait as long as asked, then retry */
  return e;
}

/* ---------------- job events between processes */

static mp_error *event_send(ms_store *s, int64_t job, const char *name, const char *data, bool terminal) {
  pg *p = s->impl;
  size_t cap = strlen(p->worker_id) + strlen(name) + strlen(data) + 64;
  char *payload = malloc(cap);
  if (!payload) return mp_errorf("out of memory");
  snprintf(payload, cap, "%s %" PRId64 " %d %s %s", p->worker_id, job, terminal ? 1 : 0, name, data);
  const char *v[] = {payload};
  /* outside a transaction: delivered at once (NOTIFY payloads are limited to 8000 bytes; events.c
   * keeps data under 2 KiB) */
  mp_error *e = update_job(s, "sending a job event", "SELECT pg_notify('mpass_events', $1)", 1, v);
  free(payload);
  return e;
}

/* one notification: skipped when this store sent it (the process published it already) or when it
 * is not in the expected form (another program on the channel) */
static void event_deliver(pg *p, const char *payload) {
  size_t own = strlen(p->worker_id);
  if (!strncmp(payload, p->worker_id, own) && payload[own] == ' ') return;
  const char *sp = strchr(payload, ' ');
  if (!sp) return;
  char *end;
  long long job = strtoll(sp + 1, &end, 10);
  if (end == sp + 1 || *end != ' ' || (end[1] != '0' && end[1] != '1') || end[2] != ' ') return;
  bool terminal = end[1] == '1';
  const char *nm = end + 3, *nm_end = strchr(nm, ' ');
  if (!nm_end || nm_end == nm || nm_end - nm >= 16) return;
  char name[16];
  snprintf(name, sizeof name, "%.*s", (int)(nm_end - nm), nm);
  p->ev_fn(p->ev_arg, (int64_t)job, name, nm_end + 1, terminal);
}

/* sleeps up to ms unless asked to stop; true: stop */
static bool event_pause(pg *p, int ms) {
  struct pollfd fd = {.fd = p->ev_pipe[0], .events = POLLIN};
  return poll(&fd, 1, ms) > 0 || atomic_load(&p->ev_stop);
}

static void *event_listener_main(void *arg) {
  pg *p = arg;
  PGconn *c = NULL;
  while (!atomic_load(&p->ev_stop)) {
    if (!c) {
      mp_error *e = connect_one(p, &c);
      if (!e) e = run0(c, "LISTEN mpass_events");
      if (e) { /* the database is away: SSE streams follow the job rows meanwhile; retry in a second */
        mp_error_free(e);
        if (c) PQfinish(c), c = NULL;
        if (event_pause(p, 1000)) break;
        continue;
      }
      atomic_store(&p->ev_up, true);
    }
    struct pollfd fds[2] = {{.fd = PQsocket(c), .events = POLLIN}, {.fd = p->ev_pipe[0], .events = POLLIN}};
    int r = poll(fds, 2, 5000);
    if (r < 0 && errno != EINTR) break;
    if (fds[1].revents || atomic_load(&p->ev_stop)) break;
    if (r > 0 && fds[0].revents) {
      if (!PQconsumeInput(c)) {
        atomic_store(&p->ev_up, false);
        PQfinish(c), c = NULL;
        continue;
      }
      for (PGnotify *n; (n = PQnotifies(c)); PQfreemem(n)) event_deliver(p, n->extra);
    }
    if (PQstatus(c) != CONNECTION_OK) atomic_store(&p->ev_up, false), PQfinish(c), c = NULL;
  }
  atomic_store(&p->ev_up, false);
  if (c) PQfinish(c);
  return NULL;
}

static mp_error *event_listen(ms_store *s, void (*fn)(void *arg, int64_t job, const char *name, const char *data, bool terminal),
                              void *arg) {
  pg *p = s->impl;
  if (p->ev_started) return mp_errorf("job store (PostgreSQL): the event listener is already running");
  if (pipe(p->ev_pipe)) return mp_errorf("job store (PostgreSQL): cannot make a pipe for the event listener: %s", strerror(errno));
  p->ev_fn = fn, p->ev_arg = arg;
  atomic_store(&p->ev_stop, false);
  int rc = pthread_create(&p->ev_thread, NULL, event_listener_main, p);
  if (rc) {
    close(p->ev_pipe[0]), close(p->ev_pipe[1]);
    return mp_errorf("job store (PostgreSQL): cannot start the event listener thread: %s", strerror(rc));
  }
  p->ev_started = true;
  return NULL;
}

static bool event_listening(ms_store *s) {
  pg *p = s->impl;
  return atomic_load(&p->ev_up);
}

static void event_listen_stop(pg *p) {
  if (!p->ev_started) return;
  atomic_store(&p->ev_stop, true);
  ssize_t w = write(p->ev_pipe[1], "x", 1);
  (void)w; /* the flag alone stops it within one poll round */
  pthread_join(p->ev_thread, NULL);
  close(p->ev_pipe[0]), close(p->ev_pipe[1]);
  p->ev_started = false;
}

/* ---------------- blobs */

#define CHUNK (1 << 20)

/* LIKE pattern matching keys that start with prefix (its own % and _ escaped) */
static char *like_prefix(const char *prefix) {
  size_t n = strlen(prefix);
  char *p = malloc(2 * n + 2), *o = p;
  if (!p) return NULL;
  for (const char *c = prefix; *c; c++) {
    if (*c == '%' || *c == '_' || *c == '\\') *o++ = '\\';
    *o++ = *c;
  }
  *o++ = '%', *o = 0;
  return p;
}

static mp_error *put_file(PGconn *c, const char *root, const char *key, unsigned char *buf) {
  char path[4400];
  snprintf(path, sizeof path, "%s/%s", root, key);
  const char *dv[] = {key};
  MP_TRY(run(c, "storing a file", "DELETE FROM blobs WHERE key = $1", 1, dv, NULL));
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot read %s to store it: %s", path, strerror(errno));
  mp_error *e = NULL;
  size_t got;
  int chunk = 0;
  do {
    got = fread(buf, 1, CHUNK, f);
    if (got == 0 && chunk > 0) break; /* an empty file still gets one (empty) chunk */
    char num[16];
    snprintf(num, sizeof num, "%d", chunk++);
    const char *v[] = {key, num, (const char *)buf};
    int len[] = {0, 0, (int)got}, fmt[] = {0, 0, 1};
    PGresult *r = PQexecParams(c, "INSERT INTO blobs(key, chunk_no, data) VALUES($1, $2::int, $3::bytea)", 3, NULL, v, len, fmt, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) e = pgerr_msg("storing a file", PQresultErrorMessage(r));
    PQclear(r);
  } while (!e && got == CHUNK);
  if (!e && ferror(f)) e = mp_errorf("cannot read %s to store it", path);
  fclose(f);
  return e;
}

static mp_error *put_files(PGconn *c, const char *root, char *const *rel, int n) {
  unsigned char *buf = malloc(CHUNK);
  if (!buf) return mp_errorf("out of memory");
  mp_error *e = NULL;
  for (int i = 0; i < n && !e; i++) e = put_file(c, root, rel[i], buf);
  free(buf);
  return e;
}

static mp_error *blob_put_files(ms_store *s, const char *root, char *const *rel, int n) {
  CONN(s);
  mp_error *e = run0(c, "BEGIN");
  if (!e) e = put_files(c, root, rel, n);
  end_tx(c, &e);
  conn_put(p, c);
  return e;
}

static mp_error *job_finish_with_files(ms_store *s, int64_t id, const char *root, char *const *rel, int n) {
  CONN(s);
  char now[32], b[32], lease[32];
  ms_now_iso(now);
  snprintf(lease, sizeof lease, "%d", p->lease_seconds);
  const char *v[] = {now, I64(b, id), p->worker_id, lease};
  PGresult *r = NULL;
  mp_error *e = run0(c, "BEGIN");
  /* only the lease holder commits outputs: a worker that stalled past its lease must not write
   * over the run of the worker that took the job over */
  if (!e) e = run(c, "finishing a job", "UPDATE jobs SET status = 2, progress = 1, finished_at = $1, lease_until = NULL, "
                  OWE_CALLBACK("$3", "$4") " WHERE id = $2 AND status = 1 AND worker_id = $3 RETURNING id", 4, v, &r);
  if (!e && PQntuples(r) == 0) e = mp_errorf("job store: prompt %" PRId64 " is no longer running under this worker (lease lost or cancelled)", id);
  PQclear(r);
  if (!e) e = put_files(c, root, rel, n);
  end_tx(c, &e);
  conn_put(p, c);
  return e;
}

static mp_error *blob_list(ms_store *s, const char *prefix, char ***keys, int64_t **sizes, int *n) {
  *keys = NULL, *sizes = NULL, *n = 0;
  char *pat = like_prefix(prefix);
  if (!pat) return mp_errorf("out of memory");
  pg *p = s->impl;
  PGconn *c;
  mp_error *e = conn_get(p, &c);
  if (e) return free(pat), e;
  const char *v[] = {pat};
  PGresult *r;
  e = run(c, "listing stored files", "SELECT key, SUM(length(data)) FROM blobs WHERE key LIKE $1 GROUP BY key ORDER BY key", 1, v, &r);
  free(pat);
  if (!e) {
    int rows = PQntuples(r);
    if (rows > 0) {
      *keys = calloc((size_t)rows, sizeof **keys), *sizes = calloc((size_t)rows, sizeof **sizes);
      if (!*keys || !*sizes) e = mp_errorf("out of memory");
    }
    for (int i = 0; !e && i < rows; i++) {
      (*sizes)[i] = int_val(r, i, 1);
      if (!((*keys)[i] = strdup(PQgetvalue(r, i, 0)))) e = mp_errorf("out of memory");
      else (*n)++;
    }
    PQclear(r);
  }
  conn_put(p, c);
  return e;
}

static mp_error *blob_get_file(ms_store *s, const char *key, const char *path, bool *found) {
  *found = false;
  CONN(s);
  FILE *f = NULL;
  mp_error *e = NULL;
  for (int chunk = 0; !e; chunk++) {
    char num[16];
    snprintf(num, sizeof num, "%d", chunk);
    const char *v[] = {key, num};
    PGresult *r = PQexecParams(c, "SELECT data FROM blobs WHERE key = $1 AND chunk_no = $2::int", 2, NULL, v, NULL, NULL, 1);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) e = pgerr_msg("reading a stored file", PQresultErrorMessage(r));
    else if (PQntuples(r) == 0) {
      PQclear(r);
      break;
    } else {
      if (!f && !(f = fopen(path, "wb"))) e = mp_errorf("cannot write %s: %s", path, strerror(errno));
      int len = PQgetlength(r, 0, 0);
      if (!e && len > 0 && fwrite(PQgetvalue(r, 0, 0), 1, (size_t)len, f) != (size_t)len) e = mp_errorf("cannot write %s: %s", path, strerror(errno));
      *found = true;
    }
    PQclear(r);
  }
  if (f && fclose(f) != 0 && !e) e = mp_errorf("cannot write %s: %s", path, strerror(errno));
  conn_put(p, c);
  return e;
}

static mp_error *blob_delete(ms_store *s, const char *prefix) {
  char *pat = like_prefix(prefix);
  if (!pat) return mp_errorf("out of memory");
  const char *v[] = {pat};
  mp_error *e = update_job(s, "deleting stored files", "DELETE FROM blobs WHERE key LIKE $1", 1, v);
  free(pat);
  return e;
}

/* ---------------- open and close */

static void store_close(ms_store *s) {
  if (!s) return;
  pg *p = s->impl;
  if (p) {
    event_listen_stop(p);
    for (int i = 0; i < p->n_idle; i++) PQfinish(p->idle[i]);
    if (p->listen) PQfinish(p->listen);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->listen_mu);
    free(p->conninfo);
    free(p);
  }
  free(s);
}

static mp_error *migrate(PGconn *c) {
  /* two nodes starting at once: the second waits here, then finds the schema current */
  MP_TRY(run0(c, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")"));
  mp_error *e = run0(c, "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)");
  PGresult *r = NULL;
  int version = 0;
  if (!e) e = run(c, "reading the schema version", "SELECT COALESCE(MAX(version), 0) FROM schema_version", 0, NULL, &r);
  if (!e) version = (int)int_val(r, 0, 0);
  PQclear(r);
  if (!e && version > N_MIGRATIONS)
    e = mp_errorf("the PostgreSQL database has schema version %d; this mpass knows up to %d: use a newer mpass", version, N_MIGRATIONS);
  for (int v = version; !e && v < N_MIGRATIONS; v++) {
    char num[16];
    snprintf(num, sizeof num, "%d", v + 1);
    const char *pv[] = {num};
    e = run0(c, "BEGIN");
    /* PQexec runs a script of several statements (no parameters) */
    if (!e) {
      PGresult *m = PQexec(c, (const char *)MIGRATIONS[v]);
      if (PQresultStatus(m) != PGRES_COMMAND_OK && PQresultStatus(m) != PGRES_TUPLES_OK)
        e = pgerr_msg("applying a migration", PQresultErrorMessage(m));
      PQclear(m);
    }
    if (!e) e = run(c, "recording the schema version", "INSERT INTO schema_version VALUES($1::int)", 1, pv, NULL);
    end_tx(c, &e);
    if (e) e = mp_error_wrap(e, "migrating to schema version %d (src/server/sql/pg/%03d_*.sql)", v + 1, v + 1);
  }
  PQclear(PQexec(c, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
  return e;
}

mp_error *ms_store_pg_open(const char *conninfo, int lease_seconds, ms_store **out) {
  *out = NULL;
  ms_store *s = calloc(1, sizeof *s);
  pg *p = calloc(1, sizeof *p);
  if (!s || !p || !(p->conninfo = strdup(conninfo))) {
    free(s), free(p);
    return mp_errorf("out of memory");
  }
  p->lease_seconds = lease_seconds > 0 ? lease_seconds : 30;
  char host[128] = "?";
  gethostname(host, sizeof host - 1);
  /* host:pid names the process (what an operator looks for); the suffix tells apart two stores
   * opened by one process, which must not renew each other's leases */
  snprintf(p->worker_id, sizeof p->worker_id, "%s:%ld/%lx", host, (long)getpid(), (unsigned long)(uintptr_t)p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->listen_mu, NULL);
  s->impl = p;
  s->close = store_close;
  s->token_add = token_add, s->token_lookup = token_lookup, s->token_count = token_count;
  s->tune_create = tune_create, s->tune_get = tune_get, s->tune_list = tune_list, s->tune_delete = tune_delete;
  s->job_enqueue = job_enqueue, s->job_claim = job_claim, s->job_progress = job_progress, s->job_finish = job_finish;
  s->job_requeue = job_requeue, s->job_cancel = job_cancel, s->job_get = job_get, s->job_list = job_list;
  s->job_list_running = job_list_running, s->job_counts = job_counts, s->callback_attempt = callback_attempt;
  s->job_list_expirable = job_list_expirable, s->job_mark_expired = job_mark_expired;
  s->callback_claim = callback_claim, s->callback_renew = callback_renew, s->callback_settle = callback_settle;
  s->callback_release = callback_release, s->callback_give_up = callback_give_up;
  s->shared = true;
  s->job_heartbeat = job_heartbeat, s->job_reclaim_expired = job_reclaim_expired, s->job_wait = job_wait;
  s->blob_put_files = blob_put_files, s->job_finish_with_files = job_finish_with_files, s->blob_list = blob_list;
  s->blob_get_file = blob_get_file, s->blob_delete = blob_delete;
  s->event_send = event_send, s->event_listen = event_listen, s->event_listening = event_listening;
  PGconn *c = NULL;
  mp_error *e = connect_one(p, &c);
  if (!e) e = migrate(c);
  conn_put(p, c);
  if (e) {
    store_close(s);
    return e;
  }
  *out = s;
  return NULL;
}
