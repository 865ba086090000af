/* Callbacks: POST {"prompt": {...}} to the job's URL with libcurl. Three tries (backoff 1 s, 2 s),
 * a short timeout, http/https only, every attempt recorded on the job. A failed callback never
 * fails the job: the prompt can still be polled.
 *
 * Workers do not deliver them: they post them to a queue that one thread of the server serves, so a
 * slow or failing receiver (three tries of up to 15 s) holds back other callbacks at worst, never
 * the next job. */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "server/internal.h"

static size_t discard(char *p, size_t sz, size_t n, void *u) {
  (void)p, (void)u;
  return sz * n;
}

void ms_callback_deliver(ms_store *store, int64_t job_id, const char *url, const char *body, const atomic_int *stopping) {
  for (int attempt = 1; attempt <= 3; attempt++) {
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
    if (ok || attempt == 3) return;
    for (int t = 0; t < attempt * 10 && !atomic_load(stopping); t++) usleep(100 * 1000); /* 1 s, then 2 s */
    if (atomic_load(stopping)) return;
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
  pthread_cond_t cv;
  cb_item *head, *tail;
  bool closing;    /* ms_callbacks_stop: deliver what is queued (one try each once stopping), then end */
  double stop_budget, drop_after; /* a closing queue drops what is left after drop_after (mp_now) */
  int dropped;
  pthread_t th;
};

static void *callbacks_main(void *arg) {
  ms_callbacks *q = arg;
  for (;;) {
    pthread_mutex_lock(&q->mu);
    while (!q->head && !q->closing) pthread_cond_wait(&q->cv, &q->mu);
    cb_item *it = q->head;
    if (it && !(q->head = it->next)) q->tail = NULL;
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
  if (pthread_create(&q->th, NULL, callbacks_main, q) != 0) {
    pthread_cond_destroy(&q->cv), pthread_mutex_destroy(&q->mu), free(q);
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
  if (q->tail) q->tail->next = it;
  else q->head = it;
  q->tail = it;
  pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
}

int ms_callbacks_stop(ms_callbacks *q) {
  if (!q) return 0;
  pthread_mutex_lock(&q->mu);
  q->closing = true;
  q->drop_after = mp_now() + q->stop_budget;
  pthread_cond_signal(&q->cv);
  pthread_mutex_unlock(&q->mu);
  pthread_join(q->th, NULL);
  if (q->dropped)
    fprintf(stderr, "mpass serve: stopping: %d callback(s) not delivered (no time left; the prompts can be polled)\n", q->dropped);
  pthread_cond_destroy(&q->cv), pthread_mutex_destroy(&q->mu);
  const int dropped = q->dropped;
  free(q);
  return dropped;
}
