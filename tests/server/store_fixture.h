/* Store-level fixtures shared by the SQLite and PostgreSQL store tests (include after cmocka.h). */
#ifndef MPASS_TESTS_SERVER_STORE_FIXTURE_H
#define MPASS_TESTS_SERVER_STORE_FIXTURE_H

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

#endif
