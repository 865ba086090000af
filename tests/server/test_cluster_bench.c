/* Throughput of the PostgreSQL queue (issue 14, label server_slow): one API node and 1, 2, 3 workers
 * (one compute thread each) on the tiny model; prints jobs/minute for each. A bench, not a speed
 * assertion: it only checks that every job ends done. On a 2-core machine the scaling stops at 2
 * workers (the cores, not the queue, are the limit), and figures are only indicative when other
 * work shares the machine. */
#include "cluster_harness.h"

#define N_JOBS 12

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static double run_with(int n_workers) {
  server api;
  h_prepare(&api);
  if (!api.db) fail_msg("test_cluster_bench needs MPASS_TEST_STORE=postgres and MPASS_TEST_PG (CTest sets them)");
  h_start(&api, (const char *const[]){"--workers", "0", NULL});
  worker w[3] = {0};
  for (int i = 0; i < n_workers; i++) c_worker_start(&w[i], &api, i, 30);
  double t0 = now_s();
  for (int k = 0; k < N_JOBS; k++)
    h_create(&api, TOKEN_A, "/prompts",
             "{\"prompt\": {\"text\": \"bench\", \"steps\": 8, \"w\": 64, \"h\": 64, \"scheduler\": \"euler\"}}");
  int t;
  for (t = 0; t < 6000; t++) {
    if (c_query_long(&api, "SELECT COUNT(*) FROM jobs WHERE status IN (0, 1)") == 0) break;
    usleep(50000);
  }
  double seconds = now_s() - t0;
  assert_int_equal(c_query_long(&api, "SELECT COUNT(*) FROM jobs WHERE status = 2"), N_JOBS);
  for (int i = 0; i < n_workers; i++) c_worker_stop(&w[i], SIGTERM), c_worker_free(&w[i]);
  h_stop(&api, SIGTERM);
  h_free(&api);
  return N_JOBS / seconds * 60;
}

static void test_throughput(void **state) {
  (void)state;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  for (int n = 1; n <= 3; n++) {
    double jpm = run_with(n);
    printf("cluster bench: %d worker(s), %d jobs (tiny model, 64x64, 8 steps): %.1f jobs/minute%s\n", n, N_JOBS, jpm,
           n > cores ? " (more workers than the machine's cores: capped by the cores)" : "");
    fflush(stdout);
  }
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_throughput)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
