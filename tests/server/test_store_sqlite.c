/* The SQLite job store on a temporary database: tokens, tunes, the job life cycle, idempotency,
 * quota, claim order, cancel, recovery listing, callback attempts, callbacks owed (their lease, the
 * migration from schema 2), reopening (durability). */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/store.h"
#include "store_fixture.h"
#include "testutil.h"

/* the folder open_tmp made for *path, removed; path freed */
static void remove_tmp(char *path) {
  char *slash = strrchr(path, '/');
  if (slash) *slash = 0, test_remove_tree(path);
  free(path);
}

static ms_store *open_tmp(char **path) {
  char *dir = test_tmpdir();
  size_t n = strlen(dir) + 16;
  *path = malloc(n);
  snprintf(*path, n, "%s/mpass.db", dir);
  free(dir);
  ms_store *s;
  assert_ok(ms_store_sqlite_open(*path, &s));
  return s;
}

static int64_t enqueue(ms_store *s, const char *owner, const char *idem, int max_queued, ms_enqueue_result *res) {
  ms_job j = {.owner = (char *)owner, .document = "a cat\nsteps=2\n", .params_json = "{\"steps\":2}", .idempotency_key = (char *)idem};
  int64_t id;
  assert_ok(s->job_enqueue(s, &j, max_queued, &id, res));
  return id;
}

static void test_tokens(void **state) {
  (void)state;
  char *path;
  ms_store *s = open_tmp(&path);
  char *name = NULL;
  int64_t n;
  assert_ok(s->token_count(s, &n));
  assert_int_equal(n, 0);
  assert_ok(s->token_add(s, "alice", "aa11"));
  assert_ok(s->token_lookup(s, "aa11", &name));
  assert_string_equal(name, "alice");
  free(name);
  assert_ok(s->token_lookup(s, "bb22", &name));
  assert_null(name);
  assert_err_contains(s->token_add(s, "again", "aa11"), "UNIQUE"); /* one hash, one name */
  s->close(s);
  remove_tmp(path);
}

static void test_job_life(void **state) {
  (void)state;
  char *path;
  ms_store *s = open_tmp(&path);
  ms_enqueue_result res;
  int64_t a = enqueue(s, "alice", NULL, 0, &res), b = enqueue(s, "alice", NULL, 0, &res);
  assert_int_equal(res, MS_ENQUEUED);
  assert_true(b > a);
  ms_job j;
  bool found;
  assert_ok(s->job_claim(s, &j, &found));
  assert_true(found);
  assert_int_equal(j.id, a); /* the oldest first */
  assert_int_equal(j.status, MS_RUNNING);
  assert_int_equal(j.attempts, 1);
  assert_non_null(j.started_at);
  assert_string_equal(j.document, "a cat\nsteps=2\n");
  ms_job_free(&j);
  assert_ok(s->job_progress(s, a, 0.5));
  assert_ok(s->job_get(s, "alice", a, &j, &found));
  assert_true(found && j.progress == 0.5);
  ms_job_free(&j);
  assert_ok(s->job_get(s, "bob", a, &j, &found)); /* another owner's job is absent */
  assert_false(found);
  /* running jobs are what a dead process leaves */
  int64_t *ids;
  int n;
  assert_ok(s->job_list_running(s, &ids, &n));
  assert_int_equal(n, 1);
  assert_int_equal(ids[0], a);
  free(ids);
  /* clean shutdown: back to queued, attempt uncounted; it is claimed again before b */
  assert_ok(s->job_requeue(s, a, true));
  assert_ok(s->job_claim(s, &j, &found));
  assert_int_equal(j.id, a);
  assert_int_equal(j.attempts, 1);
  ms_job_free(&j);
  assert_ok(s->job_finish(s, a, MS_DONE, NULL));
  assert_ok(s->callback_attempt(s, a, 1, 500, "the receiver answered HTTP 500"));
  assert_ok(s->callback_attempt(s, a, 2, 200, NULL));
  assert_ok(s->job_get(s, NULL, a, &j, &found));
  assert_int_equal(j.status, MS_DONE);
  assert_non_null(j.finished_at);
  assert_non_null(strstr(j.callbacks_json, "\"attempt\":2"));
  assert_non_null(strstr(j.callbacks_json, "HTTP 500"));
  ms_job_free(&j);
  /* cancel: queued -> cancelled at once; running -> requested; finished: unchanged */
  ms_status now;
  assert_ok(s->job_cancel(s, "alice", b, &found, &now));
  assert_true(found);
  assert_int_equal(now, MS_CANCELLED);
  assert_ok(s->job_cancel(s, "alice", a, &found, &now));
  assert_int_equal(now, MS_DONE);
  assert_ok(s->job_cancel(s, "bob", a, &found, &now));
  assert_false(found);
  int64_t c = enqueue(s, "alice", NULL, 0, &res);
  assert_ok(s->job_claim(s, &j, &found));
  ms_job_free(&j);
  assert_ok(s->job_cancel(s, "alice", c, &found, &now));
  assert_int_equal(now, MS_RUNNING);
  assert_ok(s->job_get(s, NULL, c, &j, &found));
  assert_true(j.cancel_requested);
  ms_job_free(&j);
  assert_ok(s->job_finish(s, c, MS_FAILED, "boom"));
  ms_counts counts;
  assert_ok(s->job_counts(s, &counts));
  assert_int_equal(counts.by_status[MS_DONE], 1);
  assert_int_equal(counts.by_status[MS_CANCELLED], 1);
  assert_int_equal(counts.by_status[MS_FAILED], 1);
  assert_ok(s->job_claim(s, &j, &found));
  assert_false(found); /* nothing queued */
  /* durability: a reopened database has it all */
  s->close(s);
  assert_ok(ms_store_sqlite_open(path, &s));
  assert_ok(s->job_get(s, NULL, c, &j, &found));
  assert_true(found);
  assert_string_equal(j.fail_message, "boom");
  assert_non_null(j.failed_at);
  ms_job_free(&j);
  s->close(s);
  remove_tmp(path);
}

static void test_idempotency_quota_list(void **state) {
  (void)state;
  char *path;
  ms_store *s = open_tmp(&path);
  ms_enqueue_result res;
  int64_t a = enqueue(s, "alice", "k1", 0, &res);
  assert_int_equal(res, MS_ENQUEUED);
  int64_t again = enqueue(s, "alice", "k1", 0, &res);
  assert_int_equal(res, MS_DUPLICATE);
  assert_int_equal(again, a);
  enqueue(s, "bob", "k1", 0, &res); /* keys are per owner */
  assert_int_equal(res, MS_ENQUEUED);
  enqueue(s, "alice", NULL, 2, &res);
  assert_int_equal(res, MS_ENQUEUED);
  enqueue(s, "alice", NULL, 2, &res);
  assert_int_equal(res, MS_OVER_QUOTA);
  enqueue(s, "alice", "k1", 2, &res); /* a repeat is answered even over quota */
  assert_int_equal(res, MS_DUPLICATE);
  ms_job *jobs;
  int n;
  assert_ok(s->job_list(s, "alice", -1, 120, 0, &jobs, &n));
  assert_int_equal(n, 2);
  assert_true(jobs[0].id > jobs[1].id); /* newest first */
  ms_job_list_free(jobs, n);
  assert_ok(s->job_list(s, "alice", -1, 1, 1, &jobs, &n));
  assert_int_equal(n, 1);
  assert_int_equal(jobs[0].id, a);
  ms_job_list_free(jobs, n);
  assert_ok(s->job_list(s, "alice", 7, 10, 0, &jobs, &n));
  assert_int_equal(n, 0);
  ms_job_list_free(jobs, n);
  s->close(s);
  remove_tmp(path);
}

static void test_tunes(void **state) {
  (void)state;
  char *path;
  ms_store *s = open_tmp(&path);
  ms_tune t = {.owner = "alice", .title = "Jane", .name = "woman", .token = "sks", .model_type = "lora", .branch = "sd15"};
  int64_t id, id2;
  assert_ok(s->tune_create(s, &t, &id));
  assert_ok(s->tune_create(s, &t, &id2));
  assert_true(id2 > id);
  ms_tune got;
  bool found;
  assert_ok(s->tune_get(s, "alice", id, &got, &found));
  assert_true(found);
  assert_string_equal(got.title, "Jane");
  ms_tune_free(&got);
  assert_ok(s->tune_get(s, "bob", id, &got, &found));
  assert_false(found);
  /* a queued job holds its tune */
  ms_job j = {.owner = "alice", .tune_id = id, .document = "x", .params_json = "{}"};
  int64_t jid;
  ms_enqueue_result res;
  assert_ok(s->job_enqueue(s, &j, 0, &jid, &res));
  int64_t in_use;
  assert_ok(s->tune_delete(s, "alice", id, &found, &in_use));
  assert_true(found);
  assert_int_equal(in_use, 1);
  ms_status now;
  assert_ok(s->job_cancel(s, "alice", jid, &found, &now));
  assert_ok(s->tune_delete(s, "bob", id, &found, &in_use));
  assert_false(found);
  assert_ok(s->tune_delete(s, "alice", id, &found, &in_use));
  assert_true(found);
  assert_int_equal(in_use, 0);
  ms_tune *list;
  int n;
  assert_ok(s->tune_list(s, "alice", &list, &n));
  assert_int_equal(n, 1);
  assert_int_equal(list[0].id, id2);
  ms_tune_list_free(list, n);
  /* ids are never reused */
  int64_t id3;
  assert_ok(s->tune_create(s, &t, &id3));
  assert_true(id3 > id2);
  s->close(s);
  remove_tmp(path);
}

static void test_bad_database(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char p[1024];
  snprintf(p, sizeof p, "%s/mpass.db", dir);
  const char *junk = "this is not a database, just text that is long enough to fill a header......";
  test_write_file(p, junk, strlen(junk));
  ms_store *s;
  assert_err_contains(ms_store_sqlite_open(p, &s), "mpass.db");
  /* a newer schema than this build knows is refused by name */
  char *path;
  s = open_tmp(&path);
  s->close(s);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db, "INSERT INTO schema_version VALUES(99)", NULL, NULL, NULL), SQLITE_OK);
  sqlite3_close(db);
  assert_err_contains(ms_store_sqlite_open(path, &s), "schema version 99");
  test_remove_tree(dir);
  free(dir);
  remove_tmp(path);
}

/* Callbacks owed (store.h) on SQLite: the same duty and lease as on PostgreSQL, except that one
 * process owns the file: what another store (a dead process) held is claimable at once. */
static int claim(ms_store *s, const char *since, bool own_too, int64_t *first) {
  ms_job *jobs;
  int n;
  assert_ok(s->callback_claim(s, since, own_too, 10, &jobs, &n));
  if (first) *first = n > 0 ? jobs[0].id : 0;
  for (int i = 0; i < n; i++) assert_string_equal(jobs[i].callback, "http://127.0.0.1:9/hook");
  ms_job_list_free(jobs, n);
  return n;
}

static void test_callbacks_owed(void **state) {
  (void)state;
  char *path;
  ms_store *a = open_tmp(&path);
  const char *since = "2000-01-01T00:00:00.000Z", *url = "http://127.0.0.1:9/hook";
  int64_t done = store_fixture_ended(a, url, MS_DONE), failed = store_fixture_ended(a, url, MS_FAILED), first;
  store_fixture_ended(a, url, MS_CANCELLED), store_fixture_ended(a, NULL, MS_DONE); /* nothing owed */
  assert_int_equal(claim(a, since, false, NULL), 0); /* a holds both under a live lease */
  int64_t ids[] = {done, failed, 12345};
  int held;
  assert_ok(a->callback_renew(a, ids, 3, &held));
  assert_int_equal(held, 2);
  assert_int_equal(claim(a, since, true, &first), 2); /* at start: its own too */
  assert_int_equal(first, done);
  assert_ok(a->callback_settle(a, done)); /* delivered */
  /* a dies holding `failed`: the next process takes it at once, and a has lost it */
  ms_store *b;
  assert_ok(ms_store_sqlite_open(path, &b));
  assert_int_equal(claim(b, since, false, &first), 1);
  assert_int_equal(first, failed);
  assert_int_equal(claim(b, since, false, NULL), 0);
  assert_ok(a->callback_renew(a, &failed, 1, &held));
  assert_int_equal(held, 0);
  a->close(a);
  /* a stop hands back what it holds; the horizon leaves older ones out */
  assert_ok(b->callback_release(b));
  assert_int_equal(claim(b, "2999-01-01T00:00:00.000Z", false, NULL), 0);
  assert_int_equal(claim(b, since, false, &first), 1);
  assert_int_equal(first, failed);
  assert_ok(b->callback_settle(b, failed));
  assert_int_equal(claim(b, since, true, NULL), 0);
  b->close(b);
  remove_tmp(path);
}

static void sql_exec(const char *path, const char *stmt) {
  sqlite3 *db;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  char *err = NULL;
  if (sqlite3_exec(db, stmt, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", stmt, err);
  sqlite3_close(db);
}

/* Upgrading from schema 2 (made here by dropping what 3 added): only what a schema 2 start would
 * have delivered is owed (ended done or failed in the last 24 hours, with a callback, none tried). */
static void test_migrates_version_2_callbacks(void **state) {
  (void)state;
  char *path;
  ms_store *s = open_tmp(&path);
  s->close(s);
  time_t now = time(NULL);
  char recent[32], old[32], stmt[2048];
  strftime(recent, sizeof recent, "%Y-%m-%dT%H:%M:%S.000Z", gmtime(&(time_t){now - 3600}));
  strftime(old, sizeof old, "%Y-%m-%dT%H:%M:%S.000Z", gmtime(&(time_t){now - 3 * 24 * 3600}));
  snprintf(stmt, sizeof stmt,
           "DROP INDEX jobs_callbacks_owed; ALTER TABLE jobs DROP COLUMN callback_lease_until;"
           "ALTER TABLE jobs DROP COLUMN callback_node; DELETE FROM schema_version WHERE version = 3;"
           "INSERT INTO jobs(owner, document, is_json, params_json, status, created_at, finished_at, failed_at, callback, callbacks_json)"
           " VALUES ('alice', 'owed', 0, '{}', 2, '%s', '%s', NULL, 'http://127.0.0.1:9/hook', '[]'),"
           " ('alice', 'owed too', 0, '{}', 3, '%s', NULL, '%s', 'http://127.0.0.1:9/hook', '[]'),"
           " ('alice', 'too old', 0, '{}', 2, '%s', '%s', NULL, 'http://127.0.0.1:9/hook', '[]'),"
           " ('alice', 'tried', 0, '{}', 2, '%s', '%s', NULL, 'http://127.0.0.1:9/hook', '[{\"attempt\":1}]'),"
           " ('alice', 'cancelled', 0, '{}', 4, '%s', '%s', NULL, 'http://127.0.0.1:9/hook', '[]'),"
           " ('alice', 'no url', 0, '{}', 2, '%s', '%s', NULL, NULL, '[]'),"
           " ('alice', 'queued', 0, '{}', 0, '%s', NULL, NULL, 'http://127.0.0.1:9/hook', '[]')",
           recent, recent, recent, recent, old, old, recent, recent, recent, recent, recent, recent, recent);
  sql_exec(path, stmt);
  assert_ok(ms_store_sqlite_open(path, &s));
  ms_job *jobs;
  int n;
  assert_ok(s->callback_claim(s, "2000-01-01T00:00:00.000Z", false, 10, &jobs, &n));
  assert_int_equal(n, 2);
  assert_string_equal(jobs[0].document, "owed");
  assert_string_equal(jobs[1].document, "owed too");
  ms_job_list_free(jobs, n);
  s->close(s);
  remove_tmp(path);
}

/* Owed callbacks past the sweep's horizon are given up, with the reason in their attempts, once no
 * live lease holds them; newer ones stay owed. */
static void test_callbacks_given_up(void **state) {
  (void)state;
  char *path;
  ms_store *a = open_tmp(&path);
  const char *url = "http://127.0.0.1:9/hook", *horizon = "2020-01-01T00:00:00.000Z";
  int64_t old = store_fixture_ended(a, url, MS_DONE), old_failed = store_fixture_ended(a, url, MS_FAILED);
  int64_t recent = store_fixture_ended(a, url, MS_DONE);
  char stmt[256];
  snprintf(stmt, sizeof stmt, STORE_FIXTURE_ENDED_IN_2001, (long long)old, (long long)old_failed);
  sql_exec(path, stmt);
  store_fixture_give_up(a, horizon, 0, 0); /* a holds them under live leases: they may be on their way */
  assert_ok(a->callback_release(a));
  store_fixture_give_up(a, horizon, 2, old);
  store_fixture_give_up(a, horizon, 0, 0); /* owed no more */
  assert_int_equal(claim(a, "2000-01-01T00:00:00.000Z", false, NULL), 1); /* the recent one only */
  assert_ok(a->callback_settle(a, recent));
  a->close(a);
  remove_tmp(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tokens), cmocka_unit_test(test_job_life),
                                     cmocka_unit_test(test_idempotency_quota_list), cmocka_unit_test(test_tunes),
                                     cmocka_unit_test(test_bad_database), cmocka_unit_test(test_callbacks_owed),
                                     cmocka_unit_test(test_migrates_version_2_callbacks), cmocka_unit_test(test_callbacks_given_up)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
