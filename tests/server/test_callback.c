/* The callback queue (callback.c): delivery in order beside the caller, and a stop bounded by its budget. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/internal.h"
#include "file_host.h"

/* a store that only records callback attempts (the one call the queue makes) */
typedef struct {
  ms_store base; /* first: the queue sees an ms_store * */
  pthread_mutex_t mu;
  int64_t ids[16];
  long statuses[16];
  int n;
} recording_store;

static mp_error *record_attempt(ms_store *s, int64_t id, int attempt, long http_status, const char *error) {
  (void)attempt, (void)error;
  recording_store *r = (recording_store *)(void *)s;
  pthread_mutex_lock(&r->mu);
  if (r->n < 16) r->ids[r->n] = id, r->statuses[r->n] = http_status, r->n++;
  pthread_mutex_unlock(&r->mu);
  return NULL;
}

static int attempts(recording_store *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->n;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static void test_delivered_in_order(void **state) {
  (void)state;
  recording_store st = {.base = {.callback_attempt = record_attempt}};
  pthread_mutex_init(&st.mu, NULL);
  file_host rc;
  file_host_start(&rc, "", 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", rc.port);
  atomic_int stopping = 0;
  ms_callbacks *q;
  assert_ok(ms_callbacks_start(&st.base, &stopping, 5.0, &q));
  for (int64_t id = 1; id <= 3; id++) ms_callbacks_post(q, id, url, "{\"prompt\":{}}");
  for (int i = 0; i < 200 && attempts(&st) < 3; i++) usleep(20000);
  assert_int_equal(ms_callbacks_stop(q), 0);
  assert_int_equal(st.n, 3);
  for (int i = 0; i < 3; i++) assert_true(st.ids[i] == i + 1 && st.statuses[i] == 200);
  file_host_stop(&rc);
  pthread_mutex_destroy(&st.mu);
}

/* Stopping with a slow receiver: what the budget leaves no time for is dropped, not waited for. */
static void test_stop_within_budget(void **state) {
  (void)state;
  recording_store st = {.base = {.callback_attempt = record_attempt}};
  pthread_mutex_init(&st.mu, NULL);
  file_host rc;
  file_host_start(&rc, "", 0);
  atomic_store(&rc.delay_ms, 700);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", rc.port);
  atomic_int stopping = 1;
  ms_callbacks *q;
  assert_ok(ms_callbacks_start(&st.base, &stopping, 0.3, &q));
  for (int64_t id = 1; id <= 3; id++) ms_callbacks_post(q, id, url, "{\"prompt\":{}}");
  assert_int_equal(ms_callbacks_stop(q), 2); /* the first takes 0.7 s: past the 0.3 s budget */
  assert_int_equal(st.n, 1);
  assert_true(st.ids[0] == 1 && st.statuses[0] == 200);
  file_host_stop(&rc);
  pthread_mutex_destroy(&st.mu);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_delivered_in_order),
      cmocka_unit_test(test_stop_within_budget),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
