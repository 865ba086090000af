/* /metrics in the Prometheus text format: queue depth, jobs by status (from the store), seconds per
 * sampler step and the job duration histogram (kept in memory since the server started). */
#include <stdlib.h>
#include <string.h>

#include "server/internal.h"

const double MS_DURATION_BOUNDS[MS_DURATION_BUCKETS] = {1, 5, 15, 60, 300, 900, 3600, 14400};

void ms_metrics_job_done(ms_server *s, double seconds) {
  pthread_mutex_lock(&s->metrics_mu);
  s->duration_sum += seconds;
  s->duration_count++;
  for (int i = 0; i < MS_DURATION_BUCKETS; i++)
    if (seconds <= MS_DURATION_BOUNDS[i]) s->duration_buckets[i]++;
  pthread_mutex_unlock(&s->metrics_mu);
}

char *ms_metrics_render(ms_server *s) {
  ms_counts c;
  mp_error *e = s->store->job_counts(s->store, &c);
  if (e) return mp_error_free(e), NULL;
  size_t cap = 4096, n = 0;
  char *b = malloc(cap);
  if (!b) return NULL;
#define OUT(...) n += (size_t)snprintf(b + n, n < cap ? cap - n : 0, __VA_ARGS__)
  OUT("# HELP mpass_queue_depth Jobs waiting for a worker.\n# TYPE mpass_queue_depth gauge\n");
  OUT("mpass_queue_depth %lld\n", (long long)c.by_status[MS_QUEUED]);
  OUT("# HELP mpass_jobs Jobs in the store by status.\n# TYPE mpass_jobs gauge\n");
  for (int i = 0; i < MS_STATUS_COUNT; i++) OUT("mpass_jobs{status=\"%s\"} %lld\n", ms_status_name((ms_status)i), (long long)c.by_status[i]);
  OUT("# HELP mpass_workers Worker threads.\n# TYPE mpass_workers gauge\nmpass_workers %d\n", s->n_workers);
  pthread_mutex_lock(&s->metrics_mu);
  OUT("# HELP mpass_seconds_per_step Seconds per sampler step of the latest step.\n# TYPE mpass_seconds_per_step gauge\n");
  OUT("mpass_seconds_per_step %.6f\n", s->last_sec_per_step);
  OUT("# HELP mpass_job_duration_seconds Time from claim to finish of jobs that ended since the start.\n");
  OUT("# TYPE mpass_job_duration_seconds histogram\n");
  for (int i = 0; i < MS_DURATION_BUCKETS; i++)
    OUT("mpass_job_duration_seconds_bucket{le=\"%g\"} %lld\n", MS_DURATION_BOUNDS[i], s->duration_buckets[i]);
  OUT("mpass_job_duration_seconds_bucket{le=\"+Inf\"} %lld\n", s->duration_count);
  OUT("mpass_job_duration_seconds_sum %.3f\nmpass_job_duration_seconds_count %lld\n", s->duration_sum, s->duration_count);
  pthread_mutex_unlock(&s->metrics_mu);
#undef OUT
  if (n >= cap) b[cap - 1] = 0; /* cannot happen with these few lines; never overrun */
  return b;
}
