/* The job store: where tokens, tunes and jobs live (issue 13, DESIGN.md "src/server").
 *
 * Routes and workers talk to a store only through this table of functions, so a second backend
 * (store_pg.c: PostgreSQL, several machines sharing one queue with FOR UPDATE SKIP LOCKED) drops in
 * without touching them. A store is shared by every thread of the server: each function is safe to
 * call concurrently (the SQLite backend gives each call its own transaction under one connection
 * mutex). Strings in records are owned by the record; free it with ms_job_free / ms_tune_free.
 *
 * Durability: every write returns only once committed (the SQLite backend runs WAL with
 * synchronous=FULL), so a 201 answered after ms_store.job_enqueue means the job is on disk.
 *
 * Job life: queued -> running (claim; attempts + 1) -> done | failed | cancelled.
 * A job left running by a dead process is requeued (or failed on its second interruption) by the
 * server at start; a server that stops cleanly hands its running job back with requeue(uncount=1). */
#ifndef MP_SERVER_STORE_H
#define MP_SERVER_STORE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef enum { MS_QUEUED, MS_RUNNING, MS_DONE, MS_FAILED, MS_CANCELLED, MS_STATUS_COUNT } ms_status;
const char *ms_status_name(ms_status s);
/* -1 for an unknown name */
int ms_status_parse(const char *s);

typedef struct {
  int64_t id;
  char *owner;        /* the token's name */
  int64_t tune_id;    /* 0: no tune */
  char *document;     /* the prompt document as stored (see is_json) */
  int is_json;        /* document is the JSON API form {"prompt": {...}}, else the text form */
  char *params_json;  /* the document's parameters as a JSON object, computed once at creation */
  char *model_path;   /* the checkpoint to run on (a checkpoint tune); NULL: the server's default */
  char *inputs_dir;   /* uploaded input/mask images live here (base_dir of the run); NULL: none */
  char *callback;     /* URL or NULL */
  char *idempotency_key; /* NULL when none was given */
  ms_status status;
  double progress;    /* 0..1 */
  int attempts;       /* claims so far */
  char *created_at, *started_at, *finished_at, *failed_at; /* ISO 8601 UTC or NULL */
  char *fail_message; /* NULL unless failed/cancelled */
  char *callbacks_json; /* JSON array of callback attempts, "[]" when none */
  bool cancel_requested;
  char *expired_at;   /* when the retention sweep removed its outputs and inputs (ISO 8601 UTC); NULL: kept */
} ms_job;
void ms_job_free(ms_job *j); /* frees the strings, not j itself */

typedef struct {
  int64_t id;
  char *owner, *title, *name, *token, *model_type, *branch, *file_name, *created_at;
} ms_tune;
void ms_tune_free(ms_tune *t);

typedef struct {
  int64_t by_status[MS_STATUS_COUNT];
} ms_counts;

/* What enqueue answered. */
typedef enum { MS_ENQUEUED, MS_DUPLICATE /* idempotency key seen: *id is the first job */, MS_OVER_QUOTA } ms_enqueue_result;

typedef struct ms_store ms_store;
struct ms_store {
  void *impl;
  void (*close)(ms_store *s); /* frees s too */

  /* tokens: only SHA-256 hex digests are stored */
  mp_error *(*token_add)(ms_store *s, const char *name, const char *sha256_hex);
  /* *name = NULL when no token has this hash */
  mp_error *(*token_lookup)(ms_store *s, const char *sha256_hex, char **name);
  mp_error *(*token_count)(ms_store *s, int64_t *n);

  /* tunes: ids are assigned by the store (numeric, never reused) */
  mp_error *(*tune_create)(ms_store *s, const ms_tune *t, int64_t *id);
  /* *found = false when the tune is absent or another owner's */
  mp_error *(*tune_get)(ms_store *s, const char *owner, int64_t id, ms_tune *out, bool *found);
  mp_error *(*tune_list)(ms_store *s, const char *owner, ms_tune **out, int *n);
  /* *in_use = number of queued or running jobs using it (then nothing is deleted) */
  mp_error *(*tune_delete)(ms_store *s, const char *owner, int64_t id, bool *found, int64_t *in_use);

  /* jobs. enqueue fills *id; with an idempotency key already used by this owner, answers MS_DUPLICATE
   * and that job's id; with max_queued > 0 and the owner already holding that many queued jobs,
   * MS_OVER_QUOTA. One transaction. */
  mp_error *(*job_enqueue)(ms_store *s, const ms_job *j, int max_queued, int64_t *id, ms_enqueue_result *res);
  /* the oldest queued job becomes running (attempts + 1, started_at now); *found false if none */
  mp_error *(*job_claim)(ms_store *s, ms_job *out, bool *found);
  mp_error *(*job_progress)(ms_store *s, int64_t id, double progress);
  /* running -> done | failed | cancelled; a queued job may be cancelled too */
  mp_error *(*job_finish)(ms_store *s, int64_t id, ms_status status, const char *message);
  /* back to queued; uncount: the attempt does not count (a clean shutdown) */
  mp_error *(*job_requeue)(ms_store *s, int64_t id, bool uncount);
  /* queued -> cancelled at once (*now_status = MS_CANCELLED); running -> cancel_requested (the
   * worker stops it); finished: unchanged. *found false when absent or another owner's. */
  mp_error *(*job_cancel)(ms_store *s, const char *owner, int64_t id, bool *found, ms_status *now_status);
  /* owner NULL: any owner (workers, recovery) */
  mp_error *(*job_get)(ms_store *s, const char *owner, int64_t id, ms_job *out, bool *found);
  /* newest first; tune_id < 0: every job of the owner, 0: jobs without tune, > 0: that tune's */
  mp_error *(*job_list)(ms_store *s, const char *owner, int64_t tune_id, int limit, int offset, ms_job **out, int *n);
  /* the ids of jobs in the running state (what a dead process left behind) */
  mp_error *(*job_list_running)(ms_store *s, int64_t **ids, int *n);
  mp_error *(*job_counts)(ms_store *s, ms_counts *out);
  /* appends one attempt {"attempt", "at", "http_status", "error"} to the job's callbacks */
  mp_error *(*callback_attempt)(ms_store *s, int64_t id, int attempt, long http_status, const char *error);

  /* ---- callbacks owed (callback.c). A job that ends done or failed with a callback URL owes its
   * callback from the very write that ends it (job_finish, job_finish_with_files): that write also
   * gives the ending process the callback's lease (a reclaim that fails a job leaves its callback
   * claimable at once, by whoever sweeps). The duty lasts until
   * callback_settle (delivered, or given up after the last try). A process renews the leases of the
   * callbacks it has queued; those whose lease ran out (their process died, or stopped and released
   * them) are claimed by whichever process sweeps first, never by two at once. At least once: a
   * process killed between a delivery and its settle leaves it owed, and it is delivered again.
   * NULL in stores that do not keep the duty (callback.c then delivers what is posted, and no more). */
  /* Owed callbacks of jobs that ended after `since` (ISO 8601 UTC) whose lease ran out, now held by
   * this store for another lease; own_too: also those this store holds already (at start, before
   * any job ends here: what recovery ended). The SQLite store, owned by one process at a time, also
   * takes those another (so: dead) process held. At most limit, by id, into *out of *n. */
  mp_error *(*callback_claim)(ms_store *s, const char *since, bool own_too, int limit, ms_job **out, int *n);
  /* renews the leases this store holds among ids[0..n); *held: how many it still holds (0 for one id:
   * another process took it over, or it was settled) */
  mp_error *(*callback_renew)(ms_store *s, const int64_t *ids, int n, int *held);
  /* the callback is owed no more (delivered or given up), when this store holds it */
  mp_error *(*callback_settle)(ms_store *s, int64_t id);
  /* a clean stop: every callback this store holds becomes claimable at once by any process */
  mp_error *(*callback_release)(ms_store *s);
  /* Owed callbacks of jobs that ended at or before `ended_before` whose lease ran out (claimable as
   * callback_claim sees them, but past its horizon) are given up untried: each job's callbacks get
   * the attempt {"attempt": 0, "at": now, "http_status": 0, "error": why} and the duty ends. *n: how
   * many. (Without this they stayed owed for ever, and every sweep passed over them again.) */
  mp_error *(*callback_give_up)(ms_store *s, const char *ended_before, const char *why, int *n);

  /* ---- retention (retention.c). A job is expirable when it ended (done, failed or cancelled: its
   * finished_at or failed_at) before `before` (ISO 8601 UTC, compared as text) and is not expired yet.
   * Queued and running jobs are never listed. At most limit jobs with id > after_id, by id. */
  mp_error *(*job_list_expirable)(ms_store *s, const char *before, int64_t after_id, int limit, ms_job **out, int *n);
  /* expired_at = at, only on an ended job not expired yet; *marked: whether this call marked it */
  mp_error *(*job_mark_expired)(ms_store *s, int64_t id, const char *at, bool *marked);

  /* ---- stores shared by several processes (issue 14). A claim there is a lease: the claiming
   * process renews it with job_heartbeat while the job runs, and a job whose lease ran out (its
   * worker died) is taken back by job_reclaim_expired, then claimed again by any worker. */
  bool shared; /* true: running jobs may belong to live processes elsewhere (PostgreSQL) */
  /* renew the lease of a running job; *cancel: a cancel was requested; *lost: the job is no longer
   * running under this process (its lease ran out and it was reclaimed, or it ended) */
  mp_error *(*job_heartbeat)(ms_store *s, int64_t id, bool *cancel, bool *lost);
  /* running jobs whose lease ran out go back to queued, or fail on their second interruption
   * (the attempts rule of recovery at start); the SQLite store has no leases and reclaims nothing */
  mp_error *(*job_reclaim_expired)(ms_store *s, int *requeued, int *failed);
  /* waits up to timeout_ms for a job to be enqueued by any process (LISTEN/NOTIFY); NULL when the
   * store cannot tell (in-process enqueues signal the workers directly) */
  mp_error *(*job_wait)(ms_store *s, int timeout_ms, bool *woken);

  /* ---- job events between processes, for SSE on any API node (PostgreSQL: NOTIFY mpass_events,
   * the payload naming the sender, the job id and the event). NULL in the SQLite store. */
  /* sends one event (name and data as in events.h) to every listening process */
  mp_error *(*event_send)(ms_store *s, int64_t job, const char *name, const char *data, bool terminal);
  /* starts the store's listener: one thread holding one connection of its own that LISTENs and calls
   * fn for every event sent by another process (its own are skipped). It reconnects when the
   * connection drops; close stops it (joins the thread, closes the connection). Once per store. */
  mp_error *(*event_listen)(ms_store *s, void (*fn)(void *arg, int64_t job, const char *name, const char *data, bool terminal),
                            void *arg);
  /* true while the listener's connection is up and LISTENing (callers poll less often then) */
  bool (*event_listening)(ms_store *s);

  /* ---- bytes kept in the store, so that no filesystem is shared between machines (issue 14).
   * NULL in the SQLite store: its files stay where they are under DATA and callers use them directly.
   * A key is a path relative to DATA ("jobs/12/0001.png", "inputs/ab12.../input_image.png"); a file
   * is kept in chunks of at most 1 MiB. */
  /* root/rel[i] stored under key rel[i] (replacing an older one), all in one transaction */
  mp_error *(*blob_put_files)(ms_store *s, const char *root, char *const *rel, int n);
  /* the same, and the job marked done in that transaction: done means its outputs are committed */
  mp_error *(*job_finish_with_files)(ms_store *s, int64_t id, const char *root, char *const *rel, int n);
  /* the keys starting with prefix (caller frees each and the array), with their sizes in bytes */
  mp_error *(*blob_list)(ms_store *s, const char *prefix, char ***keys, int64_t **sizes, int *n);
  /* writes the blob to path chunk by chunk (memory stays at one chunk); *found false if absent */
  mp_error *(*blob_get_file)(ms_store *s, const char *key, const char *path, bool *found);
  /* deletes every key starting with prefix */
  mp_error *(*blob_delete)(ms_store *s, const char *prefix);
};

/* The SQLite backend: DATA/mpass.db (created with its schema; migrated when older). */
mp_error *ms_store_sqlite_open(const char *path, ms_store **out);
/* The PostgreSQL backend (store_pg.c): conninfo is a postgres:// or postgresql:// URI or a libpq
 * "key=value" string. The schema is created or migrated (src/server/sql/pg/NNN_*.sql) under an
 * advisory lock. A claim holds the job for lease_seconds, renewed by job_heartbeat. */
mp_error *ms_store_pg_open(const char *conninfo, int lease_seconds, ms_store **out);
/* --db: "postgres://...", "postgresql://...", a libpq conninfo (contains '='), "sqlite:PATH";
 * NULL or empty: SQLite in DATA/mpass.db */
mp_error *ms_store_open(const char *db, const char *data_dir, int lease_seconds, ms_store **out);

void ms_job_list_free(ms_job *jobs, int n);
void ms_tune_list_free(ms_tune *tunes, int n);
/* "2026-12-05T13:30:00.123Z" */
void ms_now_iso(char out[32]);

#endif
