/* Durability: kill -9 the server mid-job, restart it on the same data folder: no job is lost, none
 * runs twice to completion, a job interrupted twice fails with the reason, finished images are
 * intact. Slow (a job is run twice): CTest label server_slow. */
#include <dirent.h>
#include <sqlite3.h>

#include "server_harness.h"

static const char *FAST = "{\"prompt\": {\"text\": \"a red cube\", \"steps\": 2, \"w\": 64, \"h\": 64, \"scheduler\": \"euler\"}}";
static const char *SLOW = "{\"prompt\": {\"text\": \"a slow cube\", \"steps\": 60, \"w\": 512, \"h\": 512, \"scheduler\": \"euler\"}}";

static void sql(const server *s, const char *stmt) {
  char p[2048];
  snprintf(p, sizeof p, "%s/mpass.db", s->data);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
  char *err = NULL;
  if (sqlite3_exec(db, stmt, NULL, NULL, &err) != SQLITE_OK) fail_msg("%s: %s", stmt, err);
  sqlite3_close(db);
}

/* the callback attempts recorded for a prompt, read from the database (the server may be down) */
static int callback_attempts_in_db(const server *s, int64_t id) {
  char p[2048];
  snprintf(p, sizeof p, "%s/mpass.db", s->data);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
  sqlite3_stmt *st;
  assert_int_equal(sqlite3_prepare_v2(db, "SELECT json_array_length(callbacks_json) FROM jobs WHERE id = ?", -1, &st, NULL), SQLITE_OK);
  sqlite3_bind_int64(st, 1, id);
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  const int n = sqlite3_column_int(st, 0);
  sqlite3_finalize(st), sqlite3_close(db);
  return n;
}

static long long mtime_of(const server *s, int64_t id, const char *file) {
  char p[2048];
  snprintf(p, sizeof p, "%s/jobs/%lld/%s", s->data, (long long)id, file);
  struct stat st;
  if (stat(p, &st)) return -1;
  return (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
}

static void expect_png(const server *s, const cJSON *o) {
  cJSON *images = cJSON_GetObjectItem(o, "images");
  assert_int_equal(cJSON_GetArraySize(images), 1);
  reply r = h_req(s, "GET", cJSON_GetArrayItem(images, 0)->valuestring, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_true(r.len > 100 && !memcmp(r.body, "\x89PNG\r\n\x1a\n", 8));
  reply_free(&r);
}

static void test_kill9_restart(void **state) {
  (void)state;
  server s;
  h_prepare(&s);
  h_start(&s, NULL);
  int64_t done0 = h_create(&s, TOKEN_A, "/prompts", FAST);
  cJSON_Delete(h_wait_end(&s, TOKEN_A, done0, 60));
  long long png0 = mtime_of(&s, done0, "0.png");
  assert_true(png0 > 0);

  int64_t slow = h_create(&s, TOKEN_A, "/prompts", SLOW);
  int64_t q[3];
  for (int i = 0; i < 3; i++) q[i] = h_create(&s, TOKEN_A, "/prompts", FAST);
  cJSON_Delete(h_wait_status(&s, TOKEN_A, slow, "running", 60));
  usleep(1500 * 1000); /* well into its steps */
  h_stop(&s, SIGKILL);

  /* Two states a crash can leave, made by hand: a job whose outputs were complete when the process
   * died before recording it (must become done without running again), and a job already on its
   * second attempt (must fail, not loop). */
  char stmt[256];
  snprintf(stmt, sizeof stmt, "UPDATE jobs SET status = 1 WHERE id = %lld", (long long)done0);
  sql(&s, stmt);
  snprintf(stmt, sizeof stmt, "UPDATE jobs SET status = 1, attempts = 2 WHERE id = %lld", (long long)q[0]);
  sql(&s, stmt);

  h_start(&s, NULL);
  cJSON *o = h_wait_end(&s, TOKEN_A, done0, 30);
  assert_string_equal(h_status(o), "done");
  assert_int_equal(cJSON_GetObjectItem(o, "attempts")->valueint, 1);
  assert_true(mtime_of(&s, done0, "0.png") == png0); /* not rerun */
  expect_png(&s, o);
  cJSON_Delete(o);

  o = h_wait_end(&s, TOKEN_A, q[0], 30);
  assert_string_equal(h_status(o), "failed");
  assert_non_null(strstr(cJSON_GetObjectItem(o, "fail_message")->valuestring, "interrupted twice"));
  cJSON_Delete(o);

  o = h_wait_end(&s, TOKEN_A, slow, 300);
  if (strcmp(h_status(o), "done")) fail_msg("the interrupted job: %s", cJSON_Print(o));
  assert_int_equal(cJSON_GetObjectItem(o, "attempts")->valueint, 2); /* retried once */
  expect_png(&s, o);
  cJSON_Delete(o);
  for (int i = 1; i < 3; i++) {
    o = h_wait_end(&s, TOKEN_A, q[i], 60);
    assert_string_equal(h_status(o), "done");
    assert_int_equal(cJSON_GetObjectItem(o, "attempts")->valueint, 1);
    expect_png(&s, o);
    cJSON_Delete(o);
  }
  /* no half-built job folders left, one folder per finished job */
  char p[2048];
  snprintf(p, sizeof p, "%s/jobs", s.data);
  DIR *d = opendir(p);
  assert_non_null(d);
  int folders = 0;
  for (struct dirent *de; (de = readdir(d));) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    if (de->d_name[0] == '.') fail_msg("left over: %s", de->d_name);
    folders++;
  }
  closedir(d);
  assert_int_equal(folders, 4); /* done0, slow, q[1], q[2] */

  int st = h_stop(&s, SIGTERM);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  h_free(&s);
}

/* SIGTERM while a job runs: the job goes back to the queue without spending an attempt. */
static void test_sigterm_requeues(void **state) {
  (void)state;
  server s;
  h_prepare(&s);
  h_start(&s, NULL);
  int64_t slow = h_create(&s, TOKEN_A, "/prompts", SLOW);
  cJSON_Delete(h_wait_status(&s, TOKEN_A, slow, "running", 60));
  int st = h_stop(&s, SIGTERM);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  h_start(&s, NULL);
  cJSON *o = h_wait_end(&s, TOKEN_A, slow, 300);
  assert_string_equal(h_status(o), "done");
  assert_int_equal(cJSON_GetObjectItem(o, "attempts")->valueint, 1);
  cJSON_Delete(o);
  h_stop(&s, SIGTERM);
  h_free(&s);
}

/* Two workers, and input_image_url from a loopback host (allowed with --allow-private-urls), fetched once
 * for a job of two images. */
static void test_workers_and_image_url(void **state) {
  (void)state;
  server s;
  h_prepare(&s);
  h_start(&s, (const char *const[]){"--workers", "2", "--allow-private-urls", NULL});
  char *img = test_shared_path("golden/tiny/init_image.png");
  FILE *f = fopen(img, "rb");
  assert_non_null(f);
  static char png[1 << 20];
  size_t n = fread(png, 1, sizeof png, f);
  fclose(f), free(img);
  file_host fh;
  file_host_start(&fh, png, n);
  char body[512];
  snprintf(body, sizeof body,
           "{\"prompt\": {\"text\": \"from a url\", \"steps\": 2, \"w\": 64, \"h\": 64, \"num_images\": 2, \"input_image_url\": "
           "\"http://127.0.0.1:%d/in.png\"}}",
           fh.port);
  int64_t ids[4];
  ids[0] = h_create(&s, TOKEN_A, "/prompts", body);
  for (int i = 1; i < 4; i++) ids[i] = h_create(&s, TOKEN_B, "/prompts", FAST);
  for (int i = 0; i < 4; i++) {
    cJSON *o = h_wait_end(&s, i ? TOKEN_B : TOKEN_A, ids[i], 120);
    if (strcmp(h_status(o), "done")) fail_msg("prompt %d: %s", i, cJSON_Print(o));
    cJSON_Delete(o);
  }
  assert_int_equal(atomic_load(&fh.requests), 1);
  reply r = h_req(&s, "GET", "/metrics", TOKEN_A, NULL, NULL, NULL, NULL);
  assert_non_null(strstr(r.body, "mpass_workers 2"));
  reply_free(&r);
  file_host_stop(&fh);
  int st = h_stop(&s, SIGTERM);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  h_free(&s);
}

static int callback_attempts(const server *s, int64_t id) {
  cJSON *o = h_get_prompt(s, TOKEN_A, id);
  const int n = cJSON_GetArraySize(cJSON_GetObjectItem(o, "callback_attempts"));
  cJSON_Delete(o);
  return n;
}

/* Callbacks a dead process never delivered (still owed, under its lease) go out at the next start:
 * those of the last 24 hours; older ones are given up untried, which their callback_attempts say.
 * The crash is made by hand: a delivered callback made owed again, as a process killed before
 * delivering it leaves it. */
static void test_callbacks_after_restart(void **state) {
  (void)state;
  server s;
  h_prepare(&s);
  h_start(&s, NULL);
  file_host fh;
  file_host_start(&fh, "", 0);
  char body[512];
  snprintf(body, sizeof body,
           "{\"prompt\": {\"text\": \"cb\", \"steps\": 2, \"w\": 64, \"h\": 64, \"callback\": \"http://127.0.0.1:%d/hook\"}}", fh.port);
  int64_t recent = h_create(&s, TOKEN_A, "/prompts", body), old = h_create(&s, TOKEN_A, "/prompts", body);
  for (int i = 0; i < 300 && (callback_attempts(&s, recent) < 1 || callback_attempts(&s, old) < 1); i++) usleep(50000);
  assert_int_equal(atomic_load(&fh.requests), 2);
  int st = h_stop(&s, SIGTERM);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  char stmt[256];
  snprintf(stmt, sizeof stmt,
           "UPDATE jobs SET callbacks_json = '[]', callback_lease_until = '2999-01-01T00:00:00.000Z', callback_node = 'dead'"
           " WHERE id IN (%lld, %lld)",
           (long long)recent, (long long)old);
  sql(&s, stmt);
  snprintf(stmt, sizeof stmt, "UPDATE jobs SET finished_at = '2020-01-01T00:00:00.000Z' WHERE id = %lld", (long long)old);
  sql(&s, stmt);
  h_start(&s, NULL);
  for (int i = 0; i < 300 && callback_attempts(&s, recent) < 1; i++) usleep(50000);
  assert_int_equal(callback_attempts(&s, recent), 1);
  usleep(300 * 1000);
  cJSON *o = h_get_prompt(&s, TOKEN_A, old), *attempts = cJSON_GetObjectItem(o, "callback_attempts");
  assert_int_equal(cJSON_GetArraySize(attempts), 1);
  cJSON *given_up = cJSON_GetArrayItem(attempts, 0);
  assert_int_equal(cJSON_GetObjectItem(given_up, "attempt")->valueint, 0);
  assert_int_equal(cJSON_GetObjectItem(given_up, "http_status")->valueint, 0);
  assert_non_null(strstr(cJSON_GetObjectItem(given_up, "error")->valuestring, "not sent: the prompt ended more than 24 hours"));
  cJSON_Delete(o);
  assert_int_equal(atomic_load(&fh.requests), 3); /* the recent one again, the old one never */
  file_host_stop(&fh);
  st = h_stop(&s, SIGTERM);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  h_free(&s);
}

/* A real crash: the server is killed (SIGKILL) while it delivers a callback to a slow receiver. The
 * callback was owed from the write that ended the prompt, so the next start delivers it (at least
 * once: the receiver saw the first try too). */
static void test_callback_after_kill9(void **state) {
  (void)state;
  server s;
  h_prepare(&s);
  h_start(&s, NULL);
  file_host fh;
  file_host_start(&fh, "", 0);
  atomic_store(&fh.delay_ms, 3000);
  char body[512];
  snprintf(body, sizeof body,
           "{\"prompt\": {\"text\": \"cb\", \"steps\": 2, \"w\": 64, \"h\": 64, \"callback\": \"http://127.0.0.1:%d/hook\"}}", fh.port);
  int64_t id = h_create(&s, TOKEN_A, "/prompts", body);
  cJSON_Delete(h_wait_end(&s, TOKEN_A, id, 60));
  for (int i = 0; i < 200 && atomic_load(&fh.received) < 1; i++) usleep(50000);
  assert_int_equal(atomic_load(&fh.received), 1); /* its first try waits on the receiver */
  h_stop(&s, SIGKILL);
  assert_int_equal(callback_attempts_in_db(&s, id), 0);
  atomic_store(&fh.delay_ms, 0);
  h_start(&s, NULL);
  for (int i = 0; i < 300 && callback_attempts(&s, id) < 1; i++) usleep(50000);
  assert_int_equal(callback_attempts(&s, id), 1);
  for (int i = 0; i < 100 && atomic_load(&fh.requests) < 2; i++) usleep(50000);
  assert_int_equal(atomic_load(&fh.requests), 2);
  file_host_stop(&fh);
  int st = h_stop(&s, SIGTERM);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  h_free(&s);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_kill9_restart), cmocka_unit_test(test_sigterm_requeues),
                                     cmocka_unit_test(test_workers_and_image_url), cmocka_unit_test(test_callbacks_after_restart),
                                     cmocka_unit_test(test_callback_after_kill9)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
