/* The callback queue (callback.c): delivery in order beside the caller, a stop bounded by its budget,
 * and with a store that keeps the duty: only what this process holds is delivered, then settled. */
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

/* A store that keeps the duty (store.h, callbacks owed): job 2's callback belongs to another process
 * (its lease was taken over), so this one must not deliver it; the others are settled once delivered. */
typedef struct {
  recording_store rec;
  int64_t settled[16];
  int n_settled;
} owing_store;

static mp_error *renew_all_but_2(ms_store *s, const int64_t *ids, int n, int *held) {
  (void)s;
  *held = 0;
  for (int i = 0; i < n; i++) *held += ids[i] != 2;
  return NULL;
}

static mp_error *record_settle(ms_store *s, int64_t id) {
  owing_store *o = (owing_store *)(void *)s;
  pthread_mutex_lock(&o->rec.mu);
  if (o->n_settled < 16) o->settled[o->n_settled++] = id;
  pthread_mutex_unlock(&o->rec.mu);
  return NULL;
}

static void test_only_held_callbacks_are_delivered_and_settled(void **state) {
  (void)state;
  owing_store st = {.rec = {.base = {.callback_attempt = record_attempt, .callback_renew = renew_all_but_2, .callback_settle = record_settle}}};
  pthread_mutex_init(&st.rec.mu, NULL);
  file_host rc;
  file_host_start(&rc, "", 0);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/hook", rc.port);
  atomic_int stopping = 0;
  ms_callbacks *q;
  assert_ok(ms_callbacks_start(&st.rec.base, &stopping, 5.0, &q));
  for (int64_t id = 1; id <= 3; id++) ms_callbacks_post(q, id, url, "{\"prompt\":{}}");
  ms_callbacks_post(q, 3, url, "{\"prompt\":{}}"); /* queued already: once is enough */
  for (int i = 0; i < 200 && attempts(&st.rec) < 2; i++) usleep(20000);
  usleep(100000);
  assert_int_equal(ms_callbacks_stop(q), 0);
  assert_int_equal(st.rec.n, 2);
  assert_true(st.rec.ids[0] == 1 && st.rec.ids[1] == 3);
  assert_int_equal(atomic_load(&rc.requests), 2);
  assert_int_equal(st.n_settled, 2);
  assert_true(st.settled[0] == 1 && st.settled[1] == 3);
  file_host_stop(&rc);
  pthread_mutex_destroy(&st.rec.mu);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_delivered_in_order),
      cmocka_unit_test(test_stop_within_budget),
      cmocka_unit_test(test_only_held_callbacks_are_delivered_and_settled),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
