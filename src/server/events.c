/* Job events: a small table of each job's newest event behind one mutex and condition variable. */
#include "server/events.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_JOBS 512
#define MAX_DATA 2048

typedef struct {
  int64_t job;
  uint64_t seq;
  bool terminal;
  char name[16];
  char data[MAX_DATA];
} entry;

struct ms_events {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  entry *e;
  int n;
  uint64_t next_seq; /* global, so a job's sequence numbers only grow even after eviction */
  bool closed;
  ms_events_forward_fn forward; /* NULL: nothing leaves this process */
  void *forward_arg;
};

ms_events *ms_events_new(void) {
  ms_events *ev = calloc(1, sizeof *ev);
  if (!ev || !(ev->e = calloc(MAX_JOBS, sizeof *ev->e))) return free(ev), NULL;
  pthread_mutex_init(&ev->mu, NULL);
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&ev->cv, &a);
  pthread_condattr_destroy(&a);
  return ev;
}

void ms_events_free(ms_events *ev) {
  if (!ev) return;
  pthread_mutex_destroy(&ev->mu);
  pthread_cond_destroy(&ev->cv);
  free(ev->e);
  free(ev);
}

static entry *find(ms_events *ev, int64_t job) {
  for (int i = 0; i < ev->n; i++)
    if (ev->e[i].job == job) return &ev->e[i];
  return NULL;
}

void ms_events_set_forward(ms_events *ev, ms_events_forward_fn fn, void *arg) {
  ev->forward = fn;
  ev->forward_arg = arg;
}

void ms_events_publish(ms_events *ev, int64_t job, const char *name, const char *data, bool terminal) {
  ms_events_publish_local(ev, job, name, data, terminal);
  if (ev->forward) ev->forward(ev->forward_arg, job, name, data, terminal);
}

void ms_events_publish_local(ms_events *ev, int64_t job, const char *name, const char *data, bool terminal) {
  pthread_mutex_lock(&ev->mu);
  entry *x = find(ev, job);
  if (!x) {
    if (ev->n < MAX_JOBS) x = &ev->e[ev->n++];
    else { /* evict the oldest event, finished jobs first (their streams re-read the store) */
      int victim = -1;
      for (int pass = 0; pass < 2 && victim < 0; pass++)
        for (int i = 0; i < ev->n; i++)
          if ((pass || ev->e[i].terminal) && (victim < 0 || ev->e[i].seq < ev->e[victim].seq)) victim = i;
      x = &ev->e[victim];
    }
    memset(x, 0, sizeof *x);
    x->job = job;
  }
  x->seq = ++ev->next_seq;
  x->terminal = terminal;
  snprintf(x->name, sizeof x->name, "%s", name);
  snprintf(x->data, sizeof x->data, "%s", data);
  pthread_cond_broadcast(&ev->cv);
  pthread_mutex_unlock(&ev->mu);
}

void ms_events_close(ms_events *ev) {
  pthread_mutex_lock(&ev->mu);
  ev->closed = true;
  pthread_cond_broadcast(&ev->cv);
  pthread_mutex_unlock(&ev->mu);
}

uint64_t ms_events_seq(ms_events *ev, int64_t job) {
  pthread_mutex_lock(&ev->mu);
  entry *x = find(ev, job);
  uint64_t s = x ? x->seq : 0;
  pthread_mutex_unlock(&ev->mu);
  return s;
}

bool ms_events_wait(ms_events *ev, int64_t job, uint64_t *seq, char name[16], char *data, size_t cap, bool *terminal,
                    int timeout_ms, bool *closed) {
  struct timespec until;
  clock_gettime(CLOCK_MONOTONIC, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
  pthread_mutex_lock(&ev->mu);
  bool got = false;
  for (;;) {
    entry *x = find(ev, job);
    if (x && x->seq > *seq) {
      *seq = x->seq;
      *terminal = x->terminal;
      snprintf(name, 16, "%s", x->name);
      snprintf(data, cap, "%s", x->data);
      got = true;
      break;
    }
    if (ev->closed) break;
    if (pthread_cond_timedwait(&ev->cv, &ev->mu, &until) == ETIMEDOUT) break;
  }
  *closed = ev->closed;
  pthread_mutex_unlock(&ev->mu);
  return got;
}
