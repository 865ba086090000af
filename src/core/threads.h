/* A fixed pool of worker threads for data-parallel loops.
 *
 * mp_pool_for splits [0, n) into chunks of `grain` iterations that the workers (and the calling
 * thread) take in turn; it returns when every chunk is done. One loop runs at a time per pool. */
#ifndef MP_CORE_THREADS_H
#define MP_CORE_THREADS_H

#include <stdint.h>

#include "core/error.h"

typedef struct mp_pool mp_pool;

/* fn(ctx, begin, end, thread_index): process iterations [begin, end). thread_index < n_threads. */
typedef void (*mp_pool_fn)(void *ctx, int64_t begin, int64_t end, int thread_index);

/* n_threads <= 0 means one per online CPU. */
mp_error *mp_pool_create(int n_threads, mp_pool **out);
void mp_pool_destroy(mp_pool *pool);
int mp_pool_size(const mp_pool *pool);

/* grain <= 0 picks one chunk per thread. A NULL pool runs the loop on the calling thread. */
void mp_pool_for(mp_pool *pool, int64_t n, int64_t grain, mp_pool_fn fn, void *ctx);

/* The arithmetic backend (core/matmul.h) the operators running on this pool use: set by the
 * context for --precision bf16; NULL (the default) means the f32 operators. The pool does not own it.
 * It travels with the pool because every model forward already receives the pool. */
struct mp_backend;
void mp_pool_set_backend(mp_pool *pool, struct mp_backend *backend);
struct mp_backend *mp_pool_backend(const mp_pool *pool);

/* Number of online CPUs. */
int mp_cpu_count(void);

#endif
