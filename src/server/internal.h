/* What the server's parts share: the server object, the request, replies. Not a public interface. */
#ifndef MP_SERVER_INTERNAL_H
#define MP_SERVER_INTERNAL_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "server/events.h"
#include "server/request.h"
#include "server/server.h"
#include "server/store.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_RESULT;
#else
typedef enum MHD_Result MHD_RESULT;
#endif

/* One worker's running job, visible to DELETE (cancel) and to shutdown. */
typedef struct {
  atomic_llong job_id; /* 0 when idle */
  atomic_int cancel;   /* 1: the user cancelled; the worker stops at the next step */
  atomic_int lost;     /* 1: the lease ran out and another worker took the job: stop, record nothing */
} ms_slot;

#define MS_DURATION_BUCKETS 8
typedef struct ms_callbacks ms_callbacks; /* callback.c */

struct ms_server {
  ms_config cfg;
  char *data_dir, *models_dir, *model_path, *public_url, *listen_url, *tmp_dir;
  ms_store *store;
  struct MHD_Daemon *daemon;
  ms_events *events;
  atomic_int stopping;
  /* mp_now() before which job events are not sent to other processes: a failed send (the database
   * is away) pauses them, so that sampler steps do not each wait on a connection attempt */
  _Atomic double events_pause_until;

  pthread_mutex_t work_mu;
  pthread_cond_t work_cv; /* signalled when a job is enqueued */
  int n_workers;
  pthread_t *threads;
  ms_slot *slots;
  struct ms_worker *workers;
  pthread_t lease_thread; /* shared stores: renews leases, takes back expired ones, listens for enqueues */
  bool lease_thread_started;
  pthread_t retention_thread; /* --retention-days: sweeps old jobs' files at start, then hourly (retention.c) */
  ms_callbacks *callbacks;    /* delivered beside the workers, not by them */
  bool retention_started;

  /* metrics kept in memory (the store keeps the counts) */
  pthread_mutex_t metrics_mu;
  double last_sec_per_step;
  double duration_sum;
  long long duration_count, duration_buckets[MS_DURATION_BUCKETS];
};

extern const double MS_DURATION_BOUNDS[MS_DURATION_BUCKETS];

/* ---- replies (http.c) */
MHD_RESULT ms_reply(struct MHD_Connection *c, unsigned status, const char *content_type, const void *body, size_t n);
/* takes ownership of j */
MHD_RESULT ms_reply_json(struct MHD_Connection *c, unsigned status, cJSON *j);
MHD_RESULT ms_reply_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* 500 with the error's message; frees e */
/* {"error": message} with the message's server paths as the client sees them (ms_public_text); the
 * whole message goes to the log too when status is 5xx, where the operator needs the paths. */
MHD_RESULT ms_reply_mp_error(const ms_server *s, const ms_request *r, unsigned status, mp_error *e);
/* "http://host:port" for absolute URLs in replies (caller frees) */
char *ms_base_url(ms_server *s, struct MHD_Connection *c);

/* ---- routes (routes_*.c); ids[] are the numeric path parameters in order */
typedef MHD_RESULT (*ms_route_fn)(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_prompt_create(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_prompt_plan(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_prompt_get(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_prompt_list(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_prompt_cancel(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_prompt_events(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_tune_create(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_tune_get(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_tune_list(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_tune_delete(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_image(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);
MHD_RESULT ms_route_metrics(ms_server *s, ms_request *r, const int64_t *ids, const char *tail);

/* ---- jobs as JSON (prompt_json.c) */
/* The prompt object of the API (docs/api.md). base_url: "http://host:port" for images[]; data_dir and
 * models_dir: this machine's, for the paths in result.json as a client sees them (below). */
cJSON *ms_prompt_object(const ms_job *j, const char *base_url, const char *data_dir, const char *models_dir);
/* "fail_message": the job's, its paths as a client sees them (below); null when none */
void ms_add_fail_message(cJSON *o, const ms_job *j, const char *data_dir, const char *models_dir);
/* The job's DATA/jobs/<id>/result.json with its paths as a client sees them; NULL when absent. */
cJSON *ms_result_public(const ms_job *j, const char *data_dir, const char *models_dir);
/* Server paths as a client sees them: inside the owner's folder (on any machine), relative to it
 * ("tunes/12/12.safetensors"); inside the models folder, relative to it ("lora/x.safetensors");
 * inside DATA, relative to it; elsewhere, the file name alone. Relative paths are unchanged. */
typedef struct {
  const char *owner, *data_dir, *models_dir;
} ms_path_view;
char *ms_public_path(const char *path, const ms_path_view *v);
/* the same for each absolute path in a message ("cannot open /srv/x.pt: ..."); caller frees */
char *ms_public_text(const char *text, const ms_path_view *v);
/* every string below node (not the user's own prompt texts) through ms_public_text */
void ms_public_tree(cJSON *node, const ms_path_view *v);
cJSON *ms_tune_object(const ms_tune *t);

/* ---- workers (worker.c) */
mp_error *ms_workers_start(ms_server *s);
void ms_workers_join(ms_server *s);
/* the job is running here: ask its worker to stop it */
void ms_workers_cancel(ms_server *s, int64_t job_id);
/* at start: jobs a dead process left running are requeued once, then failed */
mp_error *ms_recover_interrupted(ms_server *s);
void ms_job_dir(const ms_server *s, int64_t id, char *out, size_t cap);
/* DATA/owners/<owner>: holds that owner's tunes/ */
void ms_owner_dir(const ms_server *s, const char *owner, char *out, size_t cap);

/* ---- files in a shared store (blobs.c; no-ops on the SQLite store). Paths are relative to DATA. */
/* stores DATA/rel_dir's files; finish_job > 0: and marks that job done in the same transaction */
mp_error *ms_blobs_upload_dir(ms_server *s, const char *rel_dir, int64_t finish_job);
/* brings the stored files under prefix to DATA (those missing or of another size) */
mp_error *ms_blobs_fetch(ms_server *s, const char *prefix);
/* a done job's outputs into DATA/jobs/<id>/ on this machine if they are not here yet */
void ms_outputs_local(ms_server *s, const ms_job *j);

/* ---- retention (retention.c): the sweep thread, when cfg.retention_days > 0 */
mp_error *ms_retention_start(ms_server *s);
/* stops and joins it (sets stopping) */
void ms_retention_stop(ms_server *s);

/* ---- callbacks (callback.c): POST body to url, 3 tries with backoff, each attempt recorded */
void ms_callback_deliver(ms_store *store, int64_t job_id, const char *url, const char *body, const atomic_int *stopping);
/* The server's callback queue: one thread delivers what workers post, in order (callback.c). Stopping
 * delivers what is still queued, one try each once *stopping, for at most stop_budget seconds (the
 * rest is dropped and logged), then ends the thread. */
mp_error *ms_callbacks_start(ms_store *store, const atomic_int *stopping, double stop_budget, ms_callbacks **out);
void ms_callbacks_post(ms_callbacks *q, int64_t job_id, const char *url, const char *body);
/* returns how many queued callbacks were dropped */
int ms_callbacks_stop(ms_callbacks *q);
/* Callbacks owed (store.h): at once, those no live process holds (their process died or stopped
 * first, on any machine) and those this store holds (what recovery ended) are claimed and queued with
 * body(arg, job) (malloc'd JSON); then a thread renews the leases of what is queued here and claims
 * what runs out, every period seconds, until ms_callbacks_stop. Nothing on stores without the duty. */
mp_error *ms_callbacks_sweep_start(ms_callbacks *q, double period, bool quiet, char *(*body)(void *arg, const ms_job *j), void *arg);
/* At start: the sweep above with the server's callback bodies, every third of --lease-seconds (worker.c). */
mp_error *ms_recover_callbacks(ms_server *s);
/* What a stop may spend on the queue: one try takes up to 15 s (connect 5, answer 10). */
#define MS_CALLBACK_STOP_BUDGET 20.0

/* ---- metrics (metrics.c): Prometheus text exposition (caller frees) */
char *ms_metrics_render(ms_server *s);
void ms_metrics_job_done(ms_server *s, double seconds);

#endif
