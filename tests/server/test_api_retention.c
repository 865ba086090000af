/* Retention through the real server (`mpass serve --retention-days N`, src/server/retention.c and
 * routes_images.c): a job made old by hand is swept at start: its prompt object keeps its fields with
 * no images and says expired_at, its image and result.json URLs answer 410 with a JSON message, its
 * folder (and, on PostgreSQL, its stored files) are gone; a recent job is untouched. Before that, the
 * API names no server path (passes[].loras[].file, the served result.json).
 * MPASS_TEST_STORE=postgres runs it on the PostgreSQL store (CTest: server_test_api_retention_pg). */
#pragma GCC diagnostic ignored "-Wunused-function" /* the harness serves several test programs */
#include <sqlite3.h>

#include "server_harness.h"

static const char *JOB = "{\"prompt\": {\"text\": \"a red cube <lora:shared_lora:0.5>\", \"steps\": 2, \"w\": 64, \"h\": 64}}";

/* one statement on the server's store; returns the first column of the first row as a number (or -1) */
static long long store_sql(const server *s, const char *stmt) {
  long long v = -1;
  if (s->db) {
    PGconn *c = PQconnectdb(s->db);
    PGresult *r = PQexec(c, stmt);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) fail_msg("%s: %s", stmt, PQerrorMessage(c));
    if (st == PGRES_TUPLES_OK && PQntuples(r) > 0) v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r), PQfinish(c);
    return v;
  }
  char p[2048];
  snprintf(p, sizeof p, "%s/mpass.db", s->data);
  sqlite3 *db;
  assert_int_equal(sqlite3_open(p, &db), SQLITE_OK);
  sqlite3_stmt *q;
  if (sqlite3_prepare_v2(db, stmt, -1, &q, NULL) != SQLITE_OK) fail_msg("%s: %s", stmt, sqlite3_errmsg(db));
  int rc = sqlite3_step(q);
  if (rc == SQLITE_ROW) v = sqlite3_column_int64(q, 0);
  else if (rc != SQLITE_DONE) fail_msg("%s: %s", stmt, sqlite3_errmsg(db));
  sqlite3_finalize(q);
  sqlite3_close(db);
  return v;
}

static bool job_dir_exists(const server *s, int64_t id) {
  char p[2048];
  snprintf(p, sizeof p, "%s/jobs/%lld", s->data, (long long)id);
  struct stat st;
  return stat(p, &st) == 0;
}

static long stored_files(const server *s, int64_t id) {
  char q[256];
  snprintf(q, sizeof q, "SELECT COUNT(*) FROM blobs WHERE key LIKE 'jobs/%lld/%%'", (long long)id);
  return (long)store_sql(s, q);
}

static void expect_gone(const server *s, const char *url) {
  reply r = h_req(s, "GET", url, TOKEN_A, NULL, NULL, NULL, NULL);
  if (r.status != 410) fail_msg("GET %s: HTTP %ld %s (expected 410)", url, r.status, r.body);
  cJSON *j = h_json(&r);
  const cJSON *e = cJSON_GetObjectItem(j, "error");
  assert_true(cJSON_IsString(e));
  test_assert_contains(e->valuestring, "removed");
  cJSON_Delete(j), reply_free(&r);
}

static void test_retention(void **state) {
  (void)state;
  server s;
  h_prepare(&s);
  h_start(&s, NULL); /* no --retention-days: kept forever */
  int64_t old = h_create(&s, TOKEN_A, "/prompts", JOB), recent = h_create(&s, TOKEN_A, "/prompts", JOB);
  cJSON *o = h_wait_end(&s, TOKEN_A, old, 60);
  assert_string_equal(h_status(o), "done");
  cJSON_Delete(h_wait_end(&s, TOKEN_A, recent, 60));

  /* no server paths: the shared LoRA by its place in the models folder */
  cJSON *lora = cJSON_GetArrayItem(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "passes"), 0), "loras"), 0);
  assert_string_equal(cJSON_GetObjectItem(lora, "file")->valuestring, "lora/shared_lora.safetensors");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "expired_at")));
  char *text = cJSON_PrintUnformatted(o);
  if (strstr(text, s.models) || strstr(text, s.data)) fail_msg("server paths in the prompt object: %s", text);
  free(text);
  char image[1200], result[256];
  /* as a path: the restarted server listens on another port */
  const char *url = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "images"), 0)->valuestring;
  assert_true(!strncmp(url, s.url, strlen(s.url)));
  snprintf(image, sizeof image, "%s", url + strlen(s.url));
  snprintf(result, sizeof result, "/images/%lld/result.json", (long long)old);
  cJSON_Delete(o);
  reply r = h_req(&s, "GET", result, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  if (strstr(r.body, s.models) || strstr(r.body, s.data)) fail_msg("server paths in result.json: %s", r.body);
  test_assert_contains(r.body, "\"lora/shared_lora.safetensors\"");
  test_assert_contains(r.body, "\"checkpoints/tiny.safetensors\"");
  reply_free(&r);
  r = h_req(&s, "GET", image, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  assert_int_equal(h_stop(&s, SIGTERM), 0);
  assert_true(job_dir_exists(&s, old));
  if (s.db) assert_true(stored_files(&s, old) > 0);

  /* the first ended in 2000; a server keeping 30 days sweeps it at start */
  char stmt[256];
  snprintf(stmt, sizeof stmt, "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", (long long)old);
  store_sql(&s, stmt);
  const char *const keep30[] = {"--retention-days", "30", NULL};
  h_start(&s, keep30);
  for (int i = 0; i < 200; i++) { /* the sweep runs in its own thread: wait for it (10 s at most) */
    o = h_get_prompt(&s, TOKEN_A, old);
    if (cJSON_IsString(cJSON_GetObjectItem(o, "expired_at"))) break;
    cJSON_Delete(o), o = NULL;
    usleep(50000);
  }
  if (!o) fail_msg("prompt %lld was not expired within 10 s; see %s", (long long)old, s.log);
  assert_string_equal(h_status(o), "done");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "images")), 0);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "contact_sheets")), 0);
  assert_string_equal(cJSON_GetObjectItem(o, "text")->valuestring, "a red cube <lora:shared_lora:0.5>");
  assert_string_equal(cJSON_GetObjectItem(o, "finished_at")->valuestring, "2000-01-01T00:00:00.000Z");
  cJSON_Delete(o);
  expect_gone(&s, image);
  expect_gone(&s, result);
  assert_false(job_dir_exists(&s, old));
  if (s.db) assert_int_equal(stored_files(&s, old), 0);
  /* listed too, still the owner's only */
  r = h_req(&s, "GET", "/prompts", TOKEN_A, NULL, NULL, NULL, NULL);
  cJSON *l = h_json(&r);
  assert_int_equal(cJSON_GetArraySize(l), 2);
  reply_free(&r);
  cJSON *it;
  int n_expired = 0;
  cJSON_ArrayForEach(it, l) n_expired += cJSON_IsString(cJSON_GetObjectItem(it, "expired_at"));
  assert_int_equal(n_expired, 1);
  cJSON_Delete(l);
  r = h_req(&s, "GET", image, TOKEN_B, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 404); /* another owner's prompt does not exist for bob, expired or not */
  reply_free(&r);

  /* the recent one is untouched */
  o = h_get_prompt(&s, TOKEN_A, recent);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "expired_at")));
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "images")), 1);
  r = h_req(&s, "GET", cJSON_GetArrayItem(cJSON_GetObjectItem(o, "images"), 0)->valuestring, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  cJSON_Delete(o);
  assert_true(job_dir_exists(&s, recent));
  if (s.db) assert_true(stored_files(&s, recent) > 0);
  assert_int_equal(h_stop(&s, SIGTERM), 0);
  h_free(&s);
}

int main(void) {
  curl_global_init(CURL_GLOBAL_DEFAULT);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_retention)};
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  curl_global_cleanup();
  return rc;
}
