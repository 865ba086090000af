/* Retention (src/server/retention.c) on the SQLite store and a temporary DATA: removal never leaves
 * DATA nor follows a link; the sweep removes exactly the files of jobs that ended before the cutoff
 * (outputs, inputs) and marks them, and nothing of queued, running or recent jobs; copies that come
 * back later are removed; a database of schema version 1 (before expired_at) is migrated. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "server/retention.h"
#include "server/store.h"
#include "testutil.h"

static bool exists(const char *dir, const char *rel) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  struct stat st;
  return lstat(p, &st) == 0;
}

static void put(const char *dir, const char *rel, const char *text) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  /* the folders on the way */
  for (char *c = p + strlen(dir) + 1; (c = strchr(c, '/')); c++) {
    *c = 0;
    mkdir(p, 0755);
    *c = '/';
  }
  test_write_file(p, text, strlen(text));
}

static void link_to(const char *target, const char *dir, const char *rel) {
  char p[2048];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  assert_int_equal(symlink(target, p), 0);
}

static void test_remove_in_data(void **state) {
  (void)state;
  char *data = test_tmpdir(), *outside = test_tmpdir();
  put(outside, "keep.txt", "precious");
  put(outside, "dir/inner.txt", "precious too");
  put(data, "jobs/1/0.png", "png");
  put(data, "jobs/1/sub/deep.txt", "x");
  char target[2048];
  snprintf(target, sizeof target, "%s/keep.txt", outside);
  link_to(target, data, "jobs/1/link-to-file");
  snprintf(target, sizeof target, "%s/dir", outside);
  link_to(target, data, "jobs/1/link-to-dir");
  bool removed;
  assert_ok(ms_remove_in_data(data, "jobs/1", &removed));
  assert_true(removed);
  assert_false(exists(data, "jobs/1"));
  assert_true(exists(data, "jobs")); /* only what was named */
  /* the links were removed, not followed */
  assert_true(exists(outside, "keep.txt"));
  assert_true(exists(outside, "dir/inner.txt"));
  /* absent: nothing to do, no error */
  assert_ok(ms_remove_in_data(data, "jobs/1", &removed));
  assert_false(removed);
  /* paths that could leave DATA are refused before anything is touched */
  assert_err_contains(ms_remove_in_data(data, "../x", &removed), "not removing");
  assert_err_contains(ms_remove_in_data(data, "jobs/../../x", &removed), "not removing");
  assert_err_contains(ms_remove_in_data(data, "/etc", &removed), "not removing");
  assert_err_contains(ms_remove_in_data(data, "jobs//2", &removed), "not removing");
  assert_err_contains(ms_remove_in_data(data, "", &removed), "not removing");
  /* a link on the way (DATA/inputs -> outside) is refused, not followed */
  snprintf(target, sizeof target, "%s", outside);
  link_to(target, data, "inputs");
  assert_err_contains(ms_remove_in_data(data, "inputs/dir", &removed), "symbolic link");
  assert_true(exists(outside, "dir/inner.txt"));
  /* the link itself, when named last, is unlinked; its target stays */
  assert_ok(ms_remove_in_data(data, "inputs", &removed));
  assert_true(removed);
  assert_false(exists(data, "inputs"));
  assert_true(exists(outside, "dir/inner.txt"));
  test_remove_tree(data), test_remove_tree(outside);
  free(data), free(outside);
}

static void test_inputs_name(void **state) {
  (void)state;
  char name[64];
  assert_true(ms_inputs_name("/srv/data/inputs/0a1b2c3d4e5f6071", name, sizeof name));
  assert_string_equal(name, "0a1b2c3d4e5f6071");
  /* the API node's DATA may itself contain /inputs/: the last one counts */
  assert_true(ms_inputs_name("/x/inputs/data/inputs/ab12/", name, sizeof name));
  assert_string_equal(name, "ab12");
  assert_false(ms_inputs_name("/srv/data/inputs/..", name, sizeof name));
  assert_false(ms_inputs_name("/srv/data/inputs/a/b", name, sizeof name));
  assert_false(ms_inputs_name("/srv/data/other/ab12", name, sizeof name));
  assert_false(ms_inputs_name("/srv/data/inputs/", name, sizeof name));
  assert_false(ms_inputs_name(NULL, name, sizeof name));
}

/* ---- the sweep */

typedef struct {
  char *data, *db_path;
  ms_store *store;
} fixture;

static void open_fixture(fixture *f) {
  f->data = test_tmpdir();
  size_t n = strlen(f->data) + 16;
  f->db_path = malloc(n);
  snprintf(f->db_path, n, "%s/mpass.db", f->data);
  assert_ok(ms_store_sqlite_open(f->db_path, &f->store));
}

static void close_fixture(fixture *f) {
  f->store->close(f->store);
  test_remove_tree(f->data);
  free(f->data), free(f->db_path);
}

static void sql(fixture *f, const char *fmt, long long id) {
  char q[512];
  snprintf(q, sizeof q, fmt, id);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(f->db_path, &db), SQLITE_OK);
  char *msg = NULL;
  if (sqlite3_exec(db, q, NULL, NULL, &msg) != SQLITE_OK) fail_msg("%s: %s", q, msg);
  sqlite3_close(db);
}

/* a job with outputs in DATA/jobs/<id>/ and uploads in DATA/inputs/in<id>/ */
static int64_t job_with_files(fixture *f, const char *inputs_dir_fmt) {
  char inputs[2048] = "";
  static int k = 0;
  char name[32];
  snprintf(name, sizeof name, "in%d", ++k);
  if (inputs_dir_fmt) snprintf(inputs, sizeof inputs, inputs_dir_fmt, f->data, name);
  ms_job j = {.owner = "alice", .document = "a cat", .params_json = "{}", .inputs_dir = inputs_dir_fmt ? inputs : NULL};
  int64_t id;
  ms_enqueue_result res;
  assert_ok(f->store->job_enqueue(f->store, &j, 0, &id, &res));
  char rel[128];
  snprintf(rel, sizeof rel, "jobs/%lld/0.png", (long long)id);
  put(f->data, rel, "png");
  snprintf(rel, sizeof rel, "jobs/%lld/result.json", (long long)id);
  put(f->data, rel, "{}");
  snprintf(rel, sizeof rel, "inputs/%s/input_image.png", name);
  put(f->data, rel, "png");
  return id;
}

static ms_job get(fixture *f, int64_t id) {
  ms_job j;
  bool found;
  assert_ok(f->store->job_get(f->store, NULL, id, &j, &found));
  assert_true(found);
  return j;
}

static bool has_outputs(fixture *f, int64_t id) {
  char rel[64];
  snprintf(rel, sizeof rel, "jobs/%lld/0.png", (long long)id);
  return exists(f->data, rel);
}

static bool has_inputs(fixture *f, int64_t id) {
  ms_job j = get(f, id);
  char name[64], rel[128];
  bool named = ms_inputs_name(j.inputs_dir, name, sizeof name);
  ms_job_free(&j);
  assert_true(named);
  snprintf(rel, sizeof rel, "inputs/%s/input_image.png", name);
  return exists(f->data, rel);
}

static bool expired(fixture *f, int64_t id) {
  ms_job j = get(f, id);
  bool e = j.expired_at != NULL;
  ms_job_free(&j);
  return e;
}

static void test_sweep(void **state) {
  (void)state;
  fixture f;
  open_fixture(&f);
  const char *in = "%s/inputs/%s";
  /* claimed in id order: the first four run, the last two stay queued */
  int64_t done_old = job_with_files(&f, in), failed_old = job_with_files(&f, in), running = job_with_files(&f, in);
  int64_t done_recent = job_with_files(&f, in), cancelled_old = job_with_files(&f, in), queued = job_with_files(&f, in);
  ms_job j;
  bool found;
  for (int i = 0; i < 4; i++) {
    assert_ok(f.store->job_claim(f.store, &j, &found));
    assert_true(found);
    ms_job_free(&j);
  }
  assert_ok(f.store->job_finish(f.store, done_old, MS_DONE, NULL));
  assert_ok(f.store->job_finish(f.store, failed_old, MS_FAILED, "boom"));
  assert_ok(f.store->job_finish(f.store, done_recent, MS_DONE, NULL));
  ms_status now_status;
  assert_ok(f.store->job_cancel(f.store, "alice", cancelled_old, &found, &now_status));
  assert_int_equal(now_status, MS_CANCELLED);
  sql(&f, "UPDATE jobs SET finished_at = '2099-01-01T00:00:00.000Z' WHERE id = %lld", done_recent);
  /* the old ones ended in 2000; queued and running get old timestamps too, as a store bug might leave:
   * their status alone must keep them */
  sql(&f, "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", done_old);
  sql(&f, "UPDATE jobs SET failed_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", failed_old);
  sql(&f, "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", cancelled_old);
  sql(&f, "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", running);
  sql(&f, "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000Z', failed_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", queued);
  j = get(&f, running);
  assert_int_equal(j.status, MS_RUNNING);
  ms_job_free(&j);
  j = get(&f, queued);
  assert_int_equal(j.status, MS_QUEUED);
  ms_job_free(&j);

  /* 0 days: keep forever */
  ms_sweep_stats st;
  assert_ok(ms_retention_sweep(f.store, f.data, 0, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 0);
  assert_true(has_outputs(&f, done_old));

  assert_ok(ms_retention_sweep(f.store, f.data, 30, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 3);
  assert_int_equal(st.folders_removed, 6); /* three outputs folders, three inputs folders */
  assert_int_equal(st.refused + st.errors, 0);
  int64_t gone[] = {done_old, failed_old, cancelled_old}, kept[] = {running, queued, done_recent};
  for (int i = 0; i < 3; i++) {
    assert_false(has_outputs(&f, gone[i]));
    assert_false(has_inputs(&f, gone[i]));
    assert_true(expired(&f, gone[i]));
    assert_true(has_outputs(&f, kept[i]));
    assert_true(has_inputs(&f, kept[i]));
    assert_false(expired(&f, kept[i]));
  }
  /* the row stays, with its history */
  j = get(&f, failed_old);
  assert_int_equal(j.status, MS_FAILED);
  assert_string_equal(j.fail_message, "boom");
  ms_job_free(&j);
  /* a second sweep has nothing left to do */
  assert_ok(ms_retention_sweep(f.store, f.data, 30, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 0);
  assert_int_equal(st.folders_removed, 0);
  /* a copy that came back (fetched by another node meanwhile) is removed by the next sweep */
  char rel[64];
  snprintf(rel, sizeof rel, "jobs/%lld/0.png", (long long)done_old);
  put(f.data, rel, "png");
  assert_ok(ms_retention_sweep(f.store, f.data, 30, time(NULL), true, &st));
  assert_int_equal(st.folders_removed, 1);
  assert_false(has_outputs(&f, done_old));
  /* the recent one expires once its time comes: 30 days after 2099-01-01 */
  assert_ok(ms_retention_sweep(f.store, f.data, 30, (time_t)4078080000 /* 2099-03-25 */, true, &st));
  assert_int_equal(st.jobs_expired, 1);
  assert_false(has_outputs(&f, done_recent));
  assert_true(has_outputs(&f, running));
  assert_true(has_inputs(&f, queued));
  close_fixture(&f);
}

/* an inputs_dir that is not DATA/inputs/<name> (a hostile or damaged row) is left alone */
static void test_sweep_refuses_odd_inputs(void **state) {
  (void)state;
  fixture f;
  open_fixture(&f);
  char *outside = test_tmpdir();
  put(outside, "inputs/x/a/keep.png", "png");
  char odd[2048];
  snprintf(odd, sizeof odd, "%s/inputs/x/a", outside); /* two parts after /inputs/ */
  ms_job jd = {.owner = "alice", .document = "a cat", .params_json = "{}", .inputs_dir = odd};
  int64_t id;
  ms_enqueue_result res;
  assert_ok(f.store->job_enqueue(f.store, &jd, 0, &id, &res));
  ms_status now_status;
  bool found;
  assert_ok(f.store->job_cancel(f.store, "alice", id, &found, &now_status));
  ms_sweep_stats st;
  assert_ok(ms_retention_sweep(f.store, f.data, 1, time(NULL) + 3 * 86400, true, &st));
  assert_int_equal(st.refused, 1);
  assert_int_equal(st.jobs_expired, 1); /* its outputs (none here) are gone: the row says so */
  assert_true(exists(outside, "inputs/x/a/keep.png"));
  assert_true(expired(&f, id));
  test_remove_tree(outside);
  free(outside);
  close_fixture(&f);
}

/* DATA/jobs as a link to another folder: the sweep removes nothing there (nor anywhere) and says so */
static void test_sweep_refuses_linked_jobs_folder(void **state) {
  (void)state;
  fixture f;
  open_fixture(&f);
  char *outside = test_tmpdir();
  ms_job jd = {.owner = "alice", .document = "a cat", .params_json = "{}"};
  int64_t id;
  ms_enqueue_result res;
  assert_ok(f.store->job_enqueue(f.store, &jd, 0, &id, &res));
  ms_status now_status;
  bool found;
  assert_ok(f.store->job_cancel(f.store, "alice", id, &found, &now_status));
  char rel[64];
  snprintf(rel, sizeof rel, "%lld/0.png", (long long)id);
  put(outside, rel, "png");
  link_to(outside, f.data, "jobs");
  ms_sweep_stats st;
  assert_err_contains(ms_retention_sweep(f.store, f.data, 1, time(NULL) + 3 * 86400, true, &st), "symbolic link");
  assert_true(exists(outside, rel));
  assert_false(expired(&f, id));
  test_remove_tree(outside);
  free(outside);
  close_fixture(&f);
}

/* The schema of version 1, as shipped before retention (store_sqlite.c's first migration). */
static const char *const SCHEMA_V1 =
    "CREATE TABLE schema_version (version INTEGER NOT NULL);"
    "INSERT INTO schema_version VALUES(1);"
    "CREATE TABLE tokens (name TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);"
    "CREATE TABLE tunes (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, title TEXT, name TEXT,"
    "  token TEXT, model_type TEXT NOT NULL, branch TEXT NOT NULL, file_name TEXT, created_at TEXT NOT NULL);"
    "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, tune_id INTEGER NOT NULL DEFAULT 0,"
    "  document TEXT NOT NULL, is_json INTEGER NOT NULL, params_json TEXT NOT NULL, model_path TEXT, inputs_dir TEXT,"
    "  callback TEXT, idempotency_key TEXT, status INTEGER NOT NULL, progress REAL NOT NULL DEFAULT 0,"
    "  attempts INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,"
    "  failed_at TEXT, fail_message TEXT, callbacks_json TEXT NOT NULL DEFAULT '[]',"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0);"
    "CREATE UNIQUE INDEX jobs_idem ON jobs(owner, idempotency_key) WHERE idempotency_key IS NOT NULL;"
    "CREATE INDEX jobs_queue ON jobs(status, id);"
    "CREATE INDEX jobs_owner ON jobs(owner, tune_id, id);"
    "INSERT INTO jobs(owner, document, is_json, params_json, status, created_at, finished_at)"
    "  VALUES('alice', 'a cat', 0, '{}', 2, '2001-01-01T00:00:00.000Z', '2001-01-01T00:01:00.000Z');"
    "INSERT INTO jobs(owner, document, is_json, params_json, status, created_at)"
    "  VALUES('alice', 'a dog', 0, '{}', 0, '2001-01-01T00:00:00.000Z');";

static void test_migrates_version_1(void **state) {
  (void)state;
  char *dir = test_tmpdir(), path[1024];
  snprintf(path, sizeof path, "%s/mpass.db", dir);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  char *msg = NULL;
  if (sqlite3_exec(db, SCHEMA_V1, NULL, NULL, &msg) != SQLITE_OK) fail_msg("%s", msg);
  sqlite3_close(db);
  put(dir, "jobs/1/0.png", "png");
  ms_store *s;
  assert_ok(ms_store_sqlite_open(path, &s));
  ms_job j;
  bool found;
  assert_ok(s->job_get(s, "alice", 1, &j, &found));
  assert_true(found);
  assert_null(j.expired_at); /* the added column is NULL on old rows */
  assert_string_equal(j.document, "a cat");
  ms_job_free(&j);
  ms_sweep_stats st;
  assert_ok(ms_retention_sweep(s, dir, 1, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 1); /* the done job of 2001; the queued one stays */
  assert_false(exists(dir, "jobs/1"));
  assert_ok(s->job_get(s, "alice", 2, &j, &found));
  assert_int_equal(j.status, MS_QUEUED);
  assert_null(j.expired_at);
  ms_job_free(&j);
  s->close(s);
  /* recorded as the current version (3: callbacks owed); a second open changes nothing */
  assert_ok(ms_store_sqlite_open(path, &s));
  s->close(s);
  assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
  sqlite3_stmt *q;
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT COUNT(*), MAX(version) FROM schema_version", -1, &q, NULL), SQLITE_OK);
  assert_int_equal(sqlite3_step(q), SQLITE_ROW);
  assert_int_equal(sqlite3_column_int(q, 0), 3);
  assert_int_equal(sqlite3_column_int(q, 1), 3);
  sqlite3_finalize(q);
  sqlite3_close(db);
  test_remove_tree(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_remove_in_data), cmocka_unit_test(test_inputs_name),
                                     cmocka_unit_test(test_sweep), cmocka_unit_test(test_sweep_refuses_odd_inputs),
                                     cmocka_unit_test(test_sweep_refuses_linked_jobs_folder),
                                     cmocka_unit_test(test_migrates_version_1)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
