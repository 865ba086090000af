/* Shared by the benchmarks: wall and CPU clocks, peak memory, deterministic inputs and the oneDNN
 * plumbing the kernel benchmarks need. */
#ifndef MP_BENCH_UTIL_H
#define MP_BENCH_UTIL_H

#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

/* A benchmark has nothing to recover from: a failed oneDNN call ends it. */
#define CK(x)                                          \
  do {                                                 \
    dnnl_status_t s_ = (x);                            \
    if (s_ != dnnl_success) {                          \
      fprintf(stderr, "%s failed: %d\n", #x, (int)s_); \
      exit(1);                                         \
    }                                                  \
  } while (0)

/* Wall seconds and CPU seconds of all threads: the machine may be shared, so benchmarks print both. */
typedef struct {
  double wall, cpu;
} bench_stamp;

static inline bench_stamp bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (bench_stamp){(double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec,
                       (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
                           1e-6 * (double)ru.ru_stime.tv_usec};
}

/* The time from a to now. */
static inline bench_stamp bench_since(bench_stamp a) {
  bench_stamp b = bench_now();
  return (bench_stamp){b.wall - a.wall, b.cpu - a.cpu};
}

/* The process's peak resident memory so far, MB (Linux reports ru_maxrss in KiB). */
static inline double bench_peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

/* n pseudo-random values in [-scale/2, scale/2), the same for the same seed. */
static inline void bench_fill(float *x, size_t n, unsigned seed, float scale) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    x[i] = ((float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f) * scale;
  }
}

static inline dnnl_primitive_t bench_reorder(dnnl_engine_t eng, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to) {
  dnnl_primitive_desc_t pd;
  dnnl_primitive_t p;
  CK(dnnl_reorder_primitive_desc_create(&pd, from, eng, to, eng, NULL));
  CK(dnnl_primitive_create(&p, pd));
  dnnl_primitive_desc_destroy(pd);
  return p;
}

static inline void bench_run_reorder(dnnl_primitive_t p, dnnl_stream_t st, dnnl_memory_t from, dnnl_memory_t to) {
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  CK(dnnl_primitive_execute(p, st, 2, args));
}

#endif
