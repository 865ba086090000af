/* Callbacks: POST {"prompt": {...}} to the job's URL with libcurl. Three tries (backoff 1 s, 2 s),
 * a short timeout, http/https only, every attempt recorded on the job. A failed callback never
 * fails the job: the prompt can still be polled.
 *
 * Workers do not deliver them: they post them to a queue that one thread of the server serves, so a
 * slow or failing receiver (three tries of up to 15 s) holds back other callbacks at worst, never
 * the next job.
 *
 * Nothing is lost to a crash (store.h, "callbacks owed"): the write that ends a job also records
 * that its callback is owed, under a lease held by the process that ended it. The lease, not the
 * memory of one process, says who delivers: a second thread (the sweep) renews the leases of what is
 * queued here every period and claims the owed callbacks whose lease ran out, i.e. whose process
 * died (on any machine sharing the store) or stopped without the time to deliver them. A delivery
 * checks before each try that this process still holds the lease, and settles the duty once
 * delivered or given up. Why leases and not "whoever ended the job delivers, a restart delivers the
 * rest": with several machines on one queue, a dead machine may never restart, and two machines
 * restarting must not both deliver; a lease in the job's row gives the duty one holder at a time
 * without any process knowing about the others. At least once: a kill between a delivery and its
 * settle delivers the callback again (receivers dedupe on the prompt id). */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "server/internal.h"

static size_t discard(char *p, size_t sz, size_t n, void *u) {
  (void)p, (void)u;
  return sz * n;
}

void ms_callback_deliver(ms_store *store, int64_t job_id, const char *url, const char *body, const atomic_int *stopping) {
  for (int attempt = 1; attempt <= 3; attempt++) {
    if (store->callback_renew) {
      /* another process took the callback over (this one stalled past its lease) or it was
       * settled: not ours to deliver. A store that cannot answer leaves the duty as it is: deliver */
      int held = 1;
      mp_error *e = store->callback_renew(store, &job_id, 1, &held);
      if (e) held = 1, mp_error_free(e);
      if (!held) {
        fprintf(stderr, "mpass serve: prompt %lld: its callback is no longer this process's to deliver (taken over)\n", (long long)job_id);
        return;
      }
    }
    CURL *c = curl_easy_init();
    if (!c) return;
    char err[CURL_ERROR_SIZE] = "";
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "mpass-serve/" "0.1");
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    bool ok = rc == CURLE_OK && status >= 200 && status < 300;
    char msg[CURL_ERROR_SIZE + 64];
    if (rc != CURLE_OK) snprintf(msg, sizeof msg, "%s", err[0] ? err : curl_easy_strerror(rc));
    else if (!ok) snprintf(msg, sizeof msg, "the receiver answered HTTP %ld", status);
    mp_error_free(store->callback_attempt(store, job_id, attempt, status, ok ? NULL : msg));
    if (ok || attempt == 3) { /* delivered, or given up: owed no more */
      if (store->callback_settle) mp_error_free(store->callback_settle(store, job_id));
      return;
    }
    for (int t = 0; t < attempt * 10 && !atomic_load(stopping); t++) usleep(100 * 1000); /* 1 s, then 2 s */
    if (atomic_load(stopping)) return; /* still owed: the stop hands it back (ms_callbacks_stop) */
  }
}

/* ---- the delivery queue ---- */
typedef struct cb_item {
  int64_t job_id;
  char *url, *body;
  struct cb_item *next;
} cb_item;

struct ms_callbacks {
  ms_store *store;
  const atomic_int *stopping;
  pthread_mutex_t mu;
  pthread_cond_t cv, sweep_cv;
  cb_item *head, *tail;
  int queued;
  int64_t current; /* the job whose callback is being delivered; 0: none */
  bool closing;    /* ms_callbacks_stop: deliver what is queued (one try each once stopping), then end */
  double stop_budget, drop_after; /* a closing queue drops what is left after drop_after (mp_now) */
  int dropped;
  pthread_t th;
  /* the sweep (ms_callbacks_sweep_start) */
  bool sweeping, quiet;
  double period, last_error;
  char *(*body)(void *arg, const ms_job *j);
  void *body_arg;
  pthread_t sweep_th;
};

static void *callbacks_main(void *arg) {
  ms_callbacks *q = arg;
  for (;;) {
    pthread_mutex_lock(&q->mu);
    q->current = 0;
    while (!q->head && !q->closing) pthread_cond_wait(&q->cv, &q->mu);
    cb_item *it = q->head;
    if (it && !(q->head = it->next)) q->tail = NULL;
    if (it) q->queued--, q->current = it->job_id;
    const bool drop = q->closing && mp_now() > q->drop_after;
    pthread_mutex_unlock(&q->mu);
    if (!it) return NULL;
    if (drop) q->dropped++;
    else ms_callback_deliver(q->store, it->job_id, it->url, it->body, q->stopping);
    free(it->url), free(it->body), free(it);
  }
}

mp_error *ms_callbacks_start(ms_store *store, const atomic_int *stopping, double stop_budget, ms_callbacks **out) {
  *out = NULL;
  ms_callbacks *q = calloc(1, sizeof *q);
  if (!q) return mp_errorf("out of memory");
  q->store = store, q->stopping = stopping, q->stop_budget = stop_budget;
  pthread_mutex_init(&q->mu, NULL);
  pthread_cond_init(&q->cv, NULL);
  pthread_cond_init(&q->sweep_cv, NULL);
  if (pthread_create(&q->th, NULL, callbacks_main, q) != 0) {
    pthread_cond_destroy(&q->sweep_cv), pthread_cond_destroy(&q->cv), pthread_mutex_destroy(&q->mu), free(q);
    return mp_errorf("cannot start the callback thread");
  }
  *out = q;
  return NULL;
}

void ms_callbacks_post(ms_callbacks *q, int64_t job_id, const char *url, const char *body) {
  cb_item *it = calloc(1, sizeof *it);
  if (it) it->job_id = job_id, it->url = strdup(url), it->body = strdup(body);
  if (!it || !it->url || !it->body) {
    fprintf(stderr, "mpass serve: prompt %lld: out of memory for its callback (the prompt can still be polled)\n", (long long)job_id);
    if (it) free(it->url), free(it->body), free(it);
    return;
  }
  pthread_mutex_lock(&q->mu);
  /* once is enough: a sweep may claim back a callback still queued here (its renewals failed for a
   * lease, the database being away) */
  bool here = q->current == job_id;
  for (cb_item *o = q->head; o && !here; o = o->next) here = o->job_id == job_id;
  if (!here) {
    if (q->tail) q->tail->next = it;
    else q->head = it;
    q->tail = it, q->queued++, it = NULL;
    pthread_cond_signal(&q->cv);
  }
  pthread_mutex_unlock(&q->mu);
  if (it) free(it->url), free(it->body), free(it);
}

/* ---- the sweep */

/* a process claims while it has fewer queued than this: a backlog is left for other processes */
#define SWEEP_HOLD_MAX 64

static void sweep_error(ms_callbacks *q, mp_error *e) {
  if (mp_now() - q->last_error > 30) { /* the database is away: say so, but not every round */
    fprintf(stderr, "mpass serve: callbacks: %s (retrying)\n", mp_error_message(e));
    q->last_error = mp_now();
  }
  mp_error_free(e);
}

/* Renews the leases of what is queued here, then claims owed callbacks (own_too: at start) and
 * queues them. The first error is returned. */
static mp_error *sweep_once(ms_callbacks *q, bool own_too) {
  ms_store *st = q->store;
  pthread_mutex_lock(&q->mu);
  const int queued = q->queued;
  int n = 0;
  int64_t *ids = malloc(sizeof *ids * (size_t)(queued + 1));
  if (ids) {
    if (q->current) ids[n++] = q->current;
    for (cb_item *o = q->head; o && n < queued + 1; o = o->next) ids[n++] = o->job_id;
  }
  pthread_mutex_unlock(&q->mu);
  if (!ids) return mp_errorf("out of memory");
  int held = 0;
  mp_error *e = n ? st->callback_renew(st, ids, n, &held) : NULL;
  free(ids);
  if (e || queued >= SWEEP_HOLD_MAX) return e;
  /* the last 24 hours: a cluster down for days does not wake up to callbacks of last week */
  char since[32];
  const time_t t = time(NULL) - 24 * 3600;
  struct tm tm;
  gmtime_r(&t, &tm);
  strftime(since, sizeof since, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
  /* older ones are given up, with the reason in their callback_attempts, so that they are not owed
   * for ever and no sweep passes over them again */
  int given_up = 0;
  if (st->callback_give_up) {
    MP_TRY(st->callback_give_up(st, since, "not sent: the prompt ended more than 24 hours before a server could deliver its callback",
                                &given_up));
    if (given_up && !q->quiet)
      fprintf(stderr, "mpass serve: %d callback(s) owed for prompts that ended more than 24 hours ago: given up (see their callback_attempts)\n",
              given_up);
  }
  ms_job *jobs = NULL;
  int got = 0;
  MP_TRY(st->callback_claim(st, since, own_too, SWEEP_HOLD_MAX - queued, &jobs, &got));
  for (int i = 0; i < got; i++) {
    char *body = jobs[i].callback ? q->body(q->body_arg, &jobs[i]) : NULL;
    if (body) ms_callbacks_post(q, jobs[i].id, jobs[i].callback, body);
    else mp_error_free(st->callback_settle(st, jobs[i].id)); /* no URL (cannot happen) or no memory */
    free(body);
  }
  if (got && !q->quiet)
    fprintf(stderr, "mpass serve: %d callback(s) owed by a stopped or dead process: delivering them\n", got);
  ms_job_list_free(jobs, got);
  return NULL;
}

static void *sweep_main(void *arg) {
  ms_callbacks *q = arg;
  pthread_mutex_lock(&q->mu);
  while (!q->closing) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    const double at = (double)until.tv_sec + until.tv_nsec * 1e-9 + q->period;
    until.tv_sec = (time_t)at, until.tv_nsec = (long)((at - (double)(time_t)at) * 1e9);
    pthread_cond_timedwait(&q->sweep_cv, &q->mu, &until);
    if (q->closing) break;
    pthread_mutex_unlock(&q->mu);
    mp_error *e = sweep_once(q, false);
    if (e) sweep_error(q, e);
    pthread_mutex_lock(&q->mu);
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}

mp_error *ms_callbacks_sweep_start(ms_callbacks *q, double period, bool quiet, char *(*body)(void *arg, const ms_job *j), void *arg) {
  ms_store *st = q->store;
  if (!st->callback_claim || !st->callback_renew || !st->callback_settle) return NULL; /* a store that keeps no duty */
  q->period = period > 1 ? period : 1, q->quiet = quiet, q->body = body, q->body_arg = arg, q->last_error = -1e9;
  MP_TRY(sweep_once(q, true));
  if (pthread_create(&q->sweep_th, NULL, sweep_main, q) != 0) return mp_errorf("cannot start the callback sweep thread");
  q->sweeping = true;
  return NULL;
}

int ms_callbacks_stop(ms_callbacks *q) {
  if (!q) return 0;
  pthread_mutex_lock(&q->mu);
  q->closing = true;
  q->drop_after = mp_now() + q->stop_budget;
  pthread_cond_signal(&q->cv);
  pthread_cond_signal(&q->sweep_cv);
  pthread_mutex_unlock(&q->mu);
  if (q->sweeping) pthread_join(q->sweep_th, NULL);
  pthread_join(q->th, NULL);
  /* what was not delivered (dropped, or cut short by the stop) is still owed: any process may take it
   * now rather than when its lease runs out */
  if (q->store->callback_release) {
    mp_error *e = q->store->callback_release(q->store);
    if (e) fprintf(stderr, "mpass serve: stopping: %s (they will be delivered once their lease runs out)\n", mp_error_message(e));
    mp_error_free(e);
  }
  if (q->dropped)
    fprintf(stderr, "mpass serve: stopping: %d callback(s) not delivered (no time left; %s)\n", q->dropped,
            q->store->callback_release ? "handed back: the next process to sweep delivers them" : "the prompts can be polled");
  pthread_cond_destroy(&q->sweep_cv), pthread_cond_destroy(&q->cv), pthread_mutex_destroy(&q->mu);
  const int dropped = q->dropped;
  free(q);
  return dropped;
}
