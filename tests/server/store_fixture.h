/* Store-level fixtures shared by the SQLite and PostgreSQL store tests (include after cmocka.h). */
#ifndef MPASS_TESTS_SERVER_STORE_FIXTURE_H
#define MPASS_TESTS_SERVER_STORE_FIXTURE_H

#include <cJSON.h>

#include "server/store.h"
#include "testutil.h"

/* A job with the given callback URL (or NULL), enqueued, claimed by s and ended with status. */
static inline int64_t store_fixture_ended(ms_store *s, const char *callback, ms_status status) {
  ms_job j = {.owner = "alice", .document = "a cat", .params_json = "{}", .callback = (char *)callback};
  int64_t id;
  ms_enqueue_result res;
  assert_ok(s->job_enqueue(s, &j, 0, &id, &res));
  bool found;
  assert_ok(s->job_claim(s, &j, &found));
  assert_true(found && j.id == id);
  ms_job_free(&j);
  assert_ok(s->job_finish(s, id, status, status == MS_DONE ? NULL : "boom"));
  return id;
}

/* SQL (both stores) that moves the end of jobs %lld and %lld to 2001, whichever of done or failed they are */
#define STORE_FIXTURE_ENDED_IN_2001                                                                             \
  "UPDATE jobs SET finished_at = CASE WHEN finished_at IS NULL THEN NULL ELSE '2001-01-01T00:00:00.000Z' END," \
  " failed_at = CASE WHEN failed_at IS NULL THEN NULL ELSE '2001-01-01T00:00:00.000Z' END WHERE id IN (%lld, %lld)"

/* Gives up the owed callbacks of jobs that ended before `horizon`, asserts that there were `expected`,
 * and that job `id` (one of them) lists the untried attempt with the reason. */
static inline void store_fixture_give_up(ms_store *s, const char *horizon, int expected, int64_t id) {
  int n = -1;
  assert_ok(s->callback_give_up(s, horizon, "not sent: too old", &n));
  assert_int_equal(n, expected);
  if (!id) return;
  ms_job j;
  bool found;
  assert_ok(s->job_get(s, "alice", id, &j, &found));
  assert_true(found);
  cJSON *attempts = cJSON_Parse(j.callbacks_json), *last = cJSON_GetArrayItem(attempts, cJSON_GetArraySize(attempts) - 1);
  assert_non_null(last);
  assert_int_equal(cJSON_GetObjectItem(last, "attempt")->valueint, 0);
  assert_int_equal(cJSON_GetObjectItem(last, "http_status")->valueint, 0);
  assert_string_equal(cJSON_GetObjectItem(last, "error")->valuestring, "not sent: too old");
  assert_true(cJSON_IsString(cJSON_GetObjectItem(last, "at")));
  cJSON_Delete(attempts);
  ms_job_free(&j);
}

#endif
