/* Workers: N threads, each with its own mpass_ctx (the compute threads are split between them:
 * mpass_run is not re-entrant on one context). Each claims the oldest queued job, runs it with
 * mpass_run into DATA/jobs/<id>/, reports progress (events at every step, the store at most once a
 * second), honours cancel at the next sampler step, finishes the job and posts its callback (callback.c). */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "mpass/mpass.h"
#include "server/internal.h"

typedef struct ms_worker {
  ms_server *s;
  int index;
  mpass_ctx *ctx;
  int64_t job;
  double last_store_write, progress;
} ms_worker;

void ms_job_dir(const ms_server *s, int64_t id, char *out, size_t cap) {
  snprintf(out, cap, "%s/jobs/%" PRId64, s->data_dir, id);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  remove(path);
  return 0;
}

/* mpass_run builds a job in DATA/jobs/.<id>.partial-<pid>; a dead process leaves it behind. */
static void remove_partials(ms_server *s, int64_t id) {
  char dir[4096], prefix[64];
  snprintf(dir, sizeof dir, "%s/jobs", s->data_dir);
  snprintf(prefix, sizeof prefix, ".%" PRId64 ".partial-", id);
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d)))
    if (!strncmp(de->d_name, prefix, strlen(prefix))) {
      char p[4400];
      snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
      nftw(p, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
  closedir(d);
}

static bool has_result(ms_server *s, int64_t id) {
  char p[4200];
  ms_job_dir(s, id, p, sizeof p);
  strcat(p, "/result.json");
  struct stat st;
  return stat(p, &st) == 0;
}

mp_error *ms_recover_interrupted(ms_server *s) {
  /* a shared store: running jobs may be alive on other machines; the lease thread takes back those
   * whose lease ran out (same attempts rule), and outputs only count once committed to the store */
  if (s->store->shared) return NULL;
  int64_t *ids;
  int n;
  MP_TRY(s->store->job_list_running(s->store, &ids, &n));
  mp_error *e = NULL;
  for (int i = 0; i < n && !e; i++) {
    ms_job j;
    bool found;
    e = s->store->job_get(s->store, NULL, ids[i], &j, &found);
    if (e || !found) continue;
    if (has_result(s, j.id)) /* it finished; the process died before the store heard: never run it twice */
      e = s->store->job_finish(s->store, j.id, MS_DONE, NULL);
    else if (j.attempts >= 2)
      e = s->store->job_finish(s->store, j.id, MS_FAILED, "interrupted twice: worker died");
    else {
      remove_partials(s, j.id);
      e = s->store->job_requeue(s->store, j.id, false);
    }
    if (!s->cfg.quiet && !e)
      fprintf(stderr, "mpass serve: prompt %" PRId64 " was interrupted (attempt %d): %s\n", j.id, j.attempts,
              has_result(s, j.id) ? "its outputs are complete: done" : j.attempts >= 2 ? "failed" : "queued again");
    ms_job_free(&j);
  }
  free(ids);
  return e;
}

static int on_progress(const mpass_progress *p, void *user) {
  ms_worker *w = user;
  ms_server *s = w->s;
  ms_slot *slot = &s->slots[w->index];
  double within = p->n_steps > 0 ? (double)p->step / p->n_steps : 0;
  double f = p->n_images > 0 ? (p->image + within) / p->n_images : 0;
  if (f > 0.99) f = 0.99;
  if (f > w->progress) w->progress = f; /* passes restart their steps: progress only grows */
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "id", (double)w->job);
  cJSON_AddStringToObject(o, "status", "running");
  cJSON_AddNumberToObject(o, "progress", w->progress);
  cJSON_AddNumberToObject(o, "image", p->image);
  cJSON_AddNumberToObject(o, "n_images", p->n_images);
  cJSON_AddStringToObject(o, "pass", p->pass ? p->pass : "");
  cJSON_AddNumberToObject(o, "step", p->step);
  cJSON_AddNumberToObject(o, "n_steps", p->n_steps);
  cJSON_AddNumberToObject(o, "sec_per_it", p->sec_per_it);
  cJSON_AddNumberToObject(o, "eta_seconds", p->eta_seconds);
  cJSON_AddNumberToObject(o, "elapsed_seconds", p->elapsed_seconds);
  char *data = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (data) ms_events_publish(s->events, w->job, p->step == 0 ? "pass" : "step", data, false);
  free(data);
  if (p->sec_per_it > 0) {
    pthread_mutex_lock(&s->metrics_mu);
    s->last_sec_per_step = p->sec_per_it;
    pthread_mutex_unlock(&s->metrics_mu);
  }
  double now = mp_now();
  if (now - w->last_store_write >= 1.0) {
    w->last_store_write = now;
    mp_error_free(s->store->job_progress(s->store, w->job, w->progress));
    /* a cancel recorded by another process sharing the store; on a shared store this renews the lease */
    bool cancel = false, lost = false;
    mp_error *e = s->store->job_heartbeat(s->store, w->job, &cancel, &lost);
    if (e) mp_error_free(e); /* the database is away for a moment: the lease thread keeps trying */
    else if (cancel) atomic_store(&slot->cancel, 1);
    else if (lost && s->store->shared) atomic_store(&slot->lost, 1);
  }
  if (atomic_load(&slot->lost)) return 1;
  return atomic_load(&slot->cancel) || atomic_load(&s->stopping);
}

/* The ended job's callback body, {"prompt": {...}} as the API shows it (malloc'd; NULL: no memory). */
static char *callback_body(void *arg, const ms_job *j) {
  ms_server *s = arg;
  cJSON *body = cJSON_CreateObject();
  cJSON_AddItemToObject(body, "prompt", ms_prompt_object(j, s->public_url ? s->public_url : s->listen_url, s->data_dir, s->models_dir));
  char *text = cJSON_PrintUnformatted(body);
  cJSON_Delete(body);
  return text;
}

/* to the delivery queue */
static void post_callback(ms_server *s, const ms_job *j) {
  char *text = callback_body(s, j);
  if (text) ms_callbacks_post(s->callbacks, j->id, j->callback, text);
  else fprintf(stderr, "mpass serve: prompt %" PRId64 ": out of memory for its callback (the prompt can still be polled)\n", j->id);
  free(text);
}

mp_error *ms_recover_callbacks(ms_server *s) {
  /* a third of the lease, as job leases are renewed; at most 10 s, the stores' callback lease
   * being at least 30 s where --lease-seconds does not apply (SQLite) */
  double period = s->cfg.lease_seconds / 3.0;
  return ms_callbacks_sweep_start(s->callbacks, period < 10 ? period : 10, s->cfg.quiet, callback_body, s);
}

static void publish_end(ms_server *s, int64_t id) {
  ms_job j;
  bool found;
  mp_error *e = s->store->job_get(s->store, NULL, id, &j, &found);
  if (e || !found) return mp_error_free(e);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "id", (double)id);
  cJSON_AddStringToObject(o, "status", ms_status_name(j.status));
  if (j.fail_message) ms_add_fail_message(o, &j, s->data_dir, s->models_dir); /* no server paths */
  char *data = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  ms_events_publish(s->events, id, ms_status_name(j.status), data ? data : "{}", j.status != MS_QUEUED);
  free(data);
  if (j.callback && (j.status == MS_DONE || j.status == MS_FAILED)) post_callback(s, &j);
  ms_job_free(&j);
}

/* the last occurrence of part in path (the API node's DATA may itself contain "/inputs/") */
static const char *last_part(const char *path, const char *part) {
  const char *found = NULL;
  for (const char *p = path ? strstr(path, part) : NULL; p; p = strstr(p + 1, part)) found = p;
  return found;
}

static void run_job(ms_worker *w, ms_job *j) {
  ms_server *s = w->s;
  ms_slot *slot = &s->slots[w->index];
  w->job = j->id, w->progress = 0, w->last_store_write = mp_now();
  atomic_store(&slot->cancel, 0);
  atomic_store(&slot->lost, 0);
  atomic_store(&slot->job_id, j->id);
  if (j->cancel_requested) atomic_store(&slot->cancel, 1);
  double t0 = mp_now();
  mp_error *e = NULL;
  ms_status end = MS_DONE;
  const char *msg = NULL;
  if (has_result(s, j->id)) {
    end = MS_DONE; /* outputs complete from an earlier run */
  } else {
    remove_partials(s, j->id);
    char running[96];
    snprintf(running, sizeof running, "{\"id\":%" PRId64 ",\"status\":\"running\",\"progress\":0}", j->id);
    ms_events_publish(s->events, j->id, "running", running, false);
    mpass_job *job = NULL;
    e = mpass_job_parse(j->document, strlen(j->document), j->is_json, &job);
    char out[4096], name[32], owner_dir[4096];
    snprintf(out, sizeof out, "%s/jobs", s->data_dir);
    snprintf(name, sizeof name, "%" PRId64, j->id);
    ms_owner_dir(s, j->owner, owner_dir, sizeof owner_dir);
    /* a shared store: the uploads and tunes come from the database into this machine's DATA, at the
     * same relative paths as on the API node that took them */
    char inputs_local[4200] = "", model_local[4200] = "";
    const char *inputs_dir = j->inputs_dir, *model_path = j->model_path;
    if (!e && s->store->blob_list) {
      char prefix[4200];
      snprintf(prefix, sizeof prefix, "owners/%s/", j->owner);
      e = ms_blobs_fetch(s, prefix);
      const char *in = last_part(j->inputs_dir, "/inputs/");
      if (!e && in) {
        snprintf(prefix, sizeof prefix, "%s/", in + 1);
        e = ms_blobs_fetch(s, prefix);
        snprintf(inputs_local, sizeof inputs_local, "%s%s", s->data_dir, in);
        inputs_dir = inputs_local;
      }
      const char *mo = last_part(j->model_path, "/owners/");
      if (mo) snprintf(model_local, sizeof model_local, "%s%s", s->data_dir, mo), model_path = model_local;
    }
    mpass_run_options o = {.model_path = model_path ? model_path : s->model_path, .out_dir = out, .job_name = name,
                           .base_dir = inputs_dir, .rng = "cuda", .clip_skip = 1, .debug_passes = 1,
                           .progress = on_progress, .progress_user = w, .tunes_dir = owner_dir,
                           .fetch_public_only = !s->cfg.allow_private_urls};
    if (!e) e = mpass_run(w->ctx, job, &o, NULL);
    mpass_job_free(job);
    if (e) {
      if (atomic_load(&slot->lost)) {
        /* our lease ran out (this process stalled) and another worker owns the job now */
        fprintf(stderr, "mpass worker: prompt %" PRId64 ": lease lost to another worker; dropped here\n", j->id);
        mp_error_free(e);
        atomic_store(&slot->job_id, 0);
        return;
      }
      if (atomic_load(&slot->cancel)) end = MS_CANCELLED, msg = "cancelled";
      else if (atomic_load(&s->stopping)) end = MS_QUEUED; /* shutdown: back to the queue, attempt uncounted */
      else end = MS_FAILED, msg = mp_error_message(e);
    }
  }
  char rel[64];
  snprintf(rel, sizeof rel, "jobs/%" PRId64, j->id);
  /* on a shared store, done is committed together with the outputs (ms_blobs_upload_dir) */
  mp_error *se = end == MS_QUEUED ? s->store->job_requeue(s->store, j->id, true)
                 : end == MS_DONE ? ms_blobs_upload_dir(s, rel, j->id)
                                  : s->store->job_finish(s->store, j->id, end, msg);
  if (se) {
    fprintf(stderr, "mpass serve: prompt %" PRId64 ": %s\n", j->id, mp_error_message(se));
    mp_error_free(se);
    if (s->store->shared) { /* not recorded: its lease runs out and another worker runs it again */
      mp_error_free(e);
      atomic_store(&slot->job_id, 0);
      return;
    }
  }
  if (!s->cfg.quiet)
    fprintf(stderr, "mpass serve: prompt %" PRId64 " %s%s%s\n", j->id, end == MS_QUEUED ? "handed back to the queue" : ms_status_name(end),
            msg && end == MS_FAILED ? ": " : "", msg && end == MS_FAILED ? msg : "");
  mp_error_free(e);
  atomic_store(&slot->job_id, 0);
  if (end != MS_QUEUED) {
    ms_metrics_job_done(s, mp_now() - t0);
    publish_end(s, j->id);
  }
}

static void *worker_main(void *arg) {
  ms_worker *w = arg;
  ms_server *s = w->s;
  int ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
  int total = s->cfg.n_threads > 0 ? s->cfg.n_threads : ncpu > 0 ? ncpu : 1;
  /* keep_models: one checkpoint served prompt after prompt is opened (and its weights packed) once */
  mpass_options mo = {.n_threads = total / s->n_workers > 0 ? total / s->n_workers : 1, .models_dir = s->models_dir,
                      .keep_models = 1};
  mp_error *e = mpass_ctx_create(&mo, &w->ctx);
  if (e) {
    fprintf(stderr, "mpass serve: worker %d cannot start: %s\n", w->index, mp_error_message(e));
    mp_error_free(e);
    return NULL;
  }
  while (!atomic_load(&s->stopping)) {
    ms_job j;
    bool found = false;
    e = s->store->job_claim(s->store, &j, &found);
    if (e) {
      fprintf(stderr, "mpass serve: %s\n", mp_error_message(e));
      mp_error_free(e);
    }
    if (found) {
      run_job(w, &j);
      ms_job_free(&j);
      continue;
    }
    /* wait for an enqueue (or a second, for jobs another process may have added to a shared store) */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    pthread_mutex_lock(&s->work_mu);
    if (!atomic_load(&s->stopping)) pthread_cond_timedwait(&s->work_cv, &s->work_mu, &until);
    pthread_mutex_unlock(&s->work_mu);
  }
  mpass_ctx_destroy(w->ctx);
  w->ctx = NULL;
  return NULL;
}

/* Shared stores only: every lease/3 seconds renew the leases of this process's running jobs (also
 * while a model loads, when no progress is reported) and take back jobs whose worker died; between
 * rounds wait on LISTEN/NOTIFY and wake the workers when a job is enqueued anywhere. */
static void *lease_main(void *arg) {
  ms_server *s = arg;
  double period = s->cfg.lease_seconds / 3.0 < 1 ? 1 : s->cfg.lease_seconds / 3.0;
  double next = 0, last_error = -1e9;
  while (!atomic_load(&s->stopping)) {
    mp_error *e = NULL;
    double now = mp_now();
    if (now >= next) {
      next = now + period;
      for (int i = 0; i < s->n_workers && !e; i++) {
        int64_t id = atomic_load(&s->slots[i].job_id);
        bool cancel = false, lost = false;
        if (id) e = s->store->job_heartbeat(s->store, id, &cancel, &lost);
        if (!e && id && cancel) atomic_store(&s->slots[i].cancel, 1);
        if (!e && id && lost && atomic_load(&s->slots[i].job_id) == id) atomic_store(&s->slots[i].lost, 1);
      }
      int requeued = 0, failed = 0;
      if (!e) e = s->store->job_reclaim_expired(s->store, &requeued, &failed);
      if (!e && (requeued || failed) && !s->cfg.quiet)
        fprintf(stderr, "mpass worker: %d job(s) whose worker died queued again, %d failed (second interruption)\n", requeued, failed);
      if (!e && requeued) {
        pthread_mutex_lock(&s->work_mu);
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->work_mu);
      }
    }
    bool woken = false;
    if (!e && s->store->job_wait) e = s->store->job_wait(s->store, 500, &woken);
    else if (!e) usleep(500000);
    if (woken) {
      pthread_mutex_lock(&s->work_mu);
      pthread_cond_broadcast(&s->work_cv);
      pthread_mutex_unlock(&s->work_mu);
    }
    if (e) {
      if (mp_now() - last_error > 30) { /* the database is away: say so, but not every second */
        fprintf(stderr, "mpass worker: %s (retrying)\n", mp_error_message(e));
        last_error = mp_now();
      }
      mp_error_free(e);
      usleep(500000);
    }
  }
  return NULL;
}

mp_error *ms_workers_start(ms_server *s) {
  s->n_workers = s->cfg.workers;
  if (s->n_workers == 0) return NULL; /* an API node */
  s->threads = calloc((size_t)s->n_workers, sizeof *s->threads);
  s->slots = calloc((size_t)s->n_workers, sizeof *s->slots);
  s->workers = calloc((size_t)s->n_workers, sizeof *s->workers);
  if (!s->threads || !s->slots || !s->workers) return mp_errorf("out of memory");
  for (int i = 0; i < s->n_workers; i++) {
    s->workers[i] = (ms_worker){.s = s, .index = i};
    if (pthread_create(&s->threads[i], NULL, worker_main, &s->workers[i]) != 0) {
      atomic_store(&s->stopping, 1);
      for (int k = 0; k < i; k++) pthread_join(s->threads[k], NULL);
      s->n_workers = 0;
      return mp_errorf("cannot start worker threads");
    }
  }
  if (s->store->shared) {
    if (pthread_create(&s->lease_thread, NULL, lease_main, s) != 0) {
      atomic_store(&s->stopping, 1);
      ms_workers_join(s);
      return mp_errorf("cannot start the lease thread");
    }
    s->lease_thread_started = true;
  }
  return NULL;
}

void ms_workers_join(ms_server *s) {
  if (s->lease_thread_started) pthread_join(s->lease_thread, NULL), s->lease_thread_started = false;
  for (int i = 0; i < s->n_workers; i++) pthread_join(s->threads[i], NULL);
  s->n_workers = 0;
}

void ms_workers_cancel(ms_server *s, int64_t job_id) {
  for (int i = 0; i < s->n_workers; i++)
    if (atomic_load(&s->slots[i].job_id) == job_id) atomic_store(&s->slots[i].cancel, 1);
}
