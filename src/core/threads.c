#include "core/threads.h"

#include "core/profile.h"

#include <omp.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

struct mp_pool {
  int n_threads; /* including the caller */
  pthread_t *workers;
  pthread_mutex_t mu;
  pthread_cond_t wake, done;
  /* The loop being run; guarded by mu, except the atomic chunk counter. */
  uint64_t generation;
  int active; /* workers still inside the current loop */
  bool quit;
  mp_pool_fn fn;
  void *ctx;
  int64_t n, grain;
  atomic_int_fast64_t next;
  struct mp_backend *backend; /* not owned */
  struct mp_profile *profile; /* not owned; NULL: the operators do not time themselves */
};

typedef struct {
  mp_pool *pool;
  int index;
} worker_arg;

static void run_chunks(mp_pool *p, int index) {
  for (;;) {
    int64_t begin = atomic_fetch_add(&p->next, p->grain);
    if (begin >= p->n) break;
    int64_t end = begin + p->grain < p->n ? begin + p->grain : p->n;
    p->fn(p->ctx, begin, end, index);
  }
}

static void *worker_main(void *arg) {
  worker_arg *wa = arg;
  mp_pool *p = wa->pool;
  int index = wa->index;
  free(wa);
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->quit && p->generation == seen) pthread_cond_wait(&p->wake, &p->mu);
    if (p->quit) break;
    seen = p->generation;
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, index);
    pthread_mutex_lock(&p->mu);
    if (--p->active == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int mp_cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}

mp_error *mp_pool_create(int n_threads, mp_pool **out) {
  *out = NULL;
  if (n_threads <= 0) n_threads = mp_cpu_count();
  if (n_threads > 1024) return mp_errorf("--threads %d is too many (at most 1024)", n_threads);
  mp_pool *p = calloc(1, sizeof *p);
  if (!p) return mp_errorf("out of memory creating thread pool");
  p->n_threads = n_threads;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->wake, NULL);
  pthread_cond_init(&p->done, NULL);
  p->workers = calloc((size_t)n_threads, sizeof *p->workers);
  if (!p->workers) {
    mp_pool_destroy(p);
    return mp_errorf("out of memory creating thread pool");
  }
  for (int i = 1; i < n_threads; i++) {
    worker_arg *wa = malloc(sizeof *wa);
    if (!wa || (wa->pool = p, wa->index = i, pthread_create(&p->workers[i], NULL, worker_main, wa) != 0)) {
      free(wa);
      p->n_threads = i; /* destroy joins the ones that started */
      mp_pool_destroy(p);
      return mp_errorf("cannot start worker thread %d", i);
    }
  }
  *out = p;
  return NULL;
}

void mp_pool_destroy(mp_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->quit = true;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->n_threads && p->workers; i++) pthread_join(p->workers[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->wake);
  pthread_cond_destroy(&p->done);
  free(p->workers);
  free(p);
}

int mp_pool_size(const mp_pool *p) { return p ? p->n_threads : 1; }

void mp_pool_for(mp_pool *p, int64_t n, int64_t grain, mp_pool_fn fn, void *ctx) {
  if (n <= 0) return;
  int nt = p ? p->n_threads : 1;
  if (grain <= 0) grain = (n + nt - 1) / nt;
  if (!p || nt == 1 || n <= grain) {
    for (int64_t b = 0; b < n; b += grain) fn(ctx, b, b + grain < n ? b + grain : n, 0);
    return;
  }
  if (p->backend) {
    /* A backend (oneDNN) runs its kernels on the OpenMP team, whose threads spin for a while after
     * each kernel; our own workers would then fight them for the cores (measured: a UNet step took
     * 2.3x the CPU time). So while a backend is attached, the pool's loops run on that same team. */
    const int64_t chunks = (n + grain - 1) / grain;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t c = 0; c < chunks; c++) fn(ctx, c * grain, c * grain + grain < n ? c * grain + grain : n, omp_get_thread_num());
    return;
  }
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  p->n = n;
  p->grain = grain;
  atomic_store(&p->next, 0);
  p->active = nt - 1;
  p->generation++;
  pthread_cond_broadcast(&p->wake);
  pthread_mutex_unlock(&p->mu);
  run_chunks(p, 0);
  pthread_mutex_lock(&p->mu);
  while (p->active > 0) pthread_cond_wait(&p->done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

void mp_pool_set_backend(mp_pool *pool, struct mp_backend *backend) {
  if (pool) pool->backend = backend;
}
struct mp_backend *mp_pool_backend(const mp_pool *pool) { return pool ? pool->backend : NULL; }

void mp_pool_set_profile(mp_pool *pool, mp_profile *profile) {
  if (pool) pool->profile = profile;
}
mp_profile *mp_pool_profile(const mp_pool *pool) { return pool ? pool->profile : NULL; }
