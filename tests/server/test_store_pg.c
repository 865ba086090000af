/* The PostgreSQL job store (issue 14) on a fresh database of the test server (scripts/test-pg.sh):
 * the interface's semantics as for SQLite, plus what only a shared store has: leases (renewal by the
 * holder only, reclaim when they run out, failure on the second interruption, done refused to a
 * worker that lost its lease), SKIP LOCKED claims by two stores, NOTIFY on enqueue, chunked blobs,
 * job events between processes (a listener thread per store; reconnects), and migrations
 * (idempotent; a newer schema refused). */
#pragma GCC diagnostic ignored "-Wunused-function"
#include "server_harness.h"
#include "server/retention.h"
#include "server/store.h"
#include "store_fixture.h"

/* a fresh database; MPASS_TEST_STORE=postgres and MPASS_TEST_PG come from CTest */
static char *new_db(void) {
  char *db = h_test_db();
  if (!db) fail_msg("set MPASS_TEST_STORE=postgres and MPASS_TEST_PG (CTest does, with the pg fixture)");
  return db;
}

static ms_store *open_pg(const char *db, int lease) {
  ms_store *s;
  assert_ok(ms_store_pg_open(db, lease, &s));
  return s;
}

static int64_t enqueue(ms_store *s, const char *owner, const char *idem, int max_queued, ms_enqueue_result *res) {
  ms_job j = {.owner = (char *)owner, .document = "a cat\nsteps=2\n", .params_json = "{\"steps\":2}", .idempotency_key = (char *)idem};
  int64_t id;
  assert_ok(s->job_enqueue(s, &j, max_queued, &id, res));
  return id;
}

static ms_job get(ms_store *s, int64_t id) {
  ms_job j;
  bool found;
  assert_ok(s->job_get(s, NULL, id, &j, &found));
  assert_true(found);
  return j;
}

static void test_basics(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *s = open_pg(db, 30);
  int64_t n;
  char *name = NULL;
  assert_ok(s->token_add(s, "alice", "aa11"));
  assert_ok(s->token_lookup(s, "aa11", &name));
  assert_string_equal(name, "alice");
  free(name);
  assert_ok(s->token_lookup(s, "nope", &name));
  assert_null(name);
  assert_ok(s->token_count(s, &n));
  assert_int_equal(n, 1);
  /* idempotency and quota */
  ms_enqueue_result res;
  int64_t a = enqueue(s, "alice", "k1", 2, &res);
  assert_int_equal(res, MS_ENQUEUED);
  assert_int_equal(enqueue(s, "alice", "k1", 2, &res), a);
  assert_int_equal(res, MS_DUPLICATE);
  int64_t b = enqueue(s, "alice", NULL, 2, &res);
  assert_int_equal(res, MS_ENQUEUED);
  enqueue(s, "alice", NULL, 2, &res);
  assert_int_equal(res, MS_OVER_QUOTA);
  enqueue(s, "bob", "k1", 2, &res); /* keys are per owner */
  assert_int_equal(res, MS_ENQUEUED);
  /* claim order, cancel */
  ms_job j;
  bool found;
  assert_ok(s->job_claim(s, &j, &found));
  assert_true(found);
  assert_int_equal(j.id, a);
  assert_int_equal(j.status, MS_RUNNING);
  assert_int_equal(j.attempts, 1);
  assert_string_equal(j.document, "a cat\nsteps=2\n");
  ms_job_free(&j);
  ms_status now;
  assert_ok(s->job_cancel(s, "bob", a, &found, &now));
  assert_false(found); /* another owner's */
  assert_ok(s->job_cancel(s, "alice", a, &found, &now));
  assert_true(found);
  assert_int_equal(now, MS_RUNNING);
  j = get(s, a);
  assert_true(j.cancel_requested);
  ms_job_free(&j);
  assert_ok(s->job_cancel(s, "alice", b, &found, &now));
  assert_int_equal(now, MS_CANCELLED);
  assert_ok(s->job_progress(s, a, 0.5));
  assert_ok(s->callback_attempt(s, a, 1, 200, NULL));
  assert_ok(s->callback_attempt(s, a, 2, 0, "refused"));
  assert_ok(s->job_finish(s, a, MS_DONE, NULL));
  j = get(s, a);
  assert_int_equal(j.status, MS_DONE);
  assert_true(j.progress == 1.0);
  assert_non_null(j.finished_at);
  cJSON *cbs = cJSON_Parse(j.callbacks_json);
  assert_int_equal(cJSON_GetArraySize(cbs), 2);
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cbs, 1), "error")->valuestring, "refused");
  cJSON_Delete(cbs);
  ms_job_free(&j);
  ms_job *list;
  int nl;
  assert_ok(s->job_list(s, "alice", -1, 10, 0, &list, &nl));
  assert_int_equal(nl, 2);
  assert_int_equal(list[0].id, b); /* newest first */
  ms_job_list_free(list, nl);
  ms_counts c;
  assert_ok(s->job_counts(s, &c));
  assert_int_equal(c.by_status[MS_DONE], 1);
  assert_int_equal(c.by_status[MS_CANCELLED], 1);
  assert_int_equal(c.by_status[MS_QUEUED], 1);
  /* tunes */
  ms_tune t = {.owner = "alice", .title = "me", .model_type = "lora", .branch = "sd15"};
  int64_t tid;
  assert_ok(s->tune_create(s, &t, &tid));
  ms_tune got;
  assert_ok(s->tune_get(s, "bob", tid, &got, &found));
  assert_false(found);
  assert_ok(s->tune_get(s, "alice", tid, &got, &found));
  assert_true(found);
  assert_string_equal(got.title, "me");
  ms_tune_free(&got);
  int64_t in_use;
  assert_ok(s->tune_delete(s, "alice", tid, &found, &in_use));
  assert_true(found);
  assert_int_equal(in_use, 0);
  s->close(s);
  free(db);
}

static void test_leases(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *a = open_pg(db, 1), *b = open_pg(db, 1); /* two workers, 1 s leases */
  ms_enqueue_result res;
  int64_t j1 = enqueue(a, "alice", NULL, 0, &res), j2 = enqueue(a, "alice", NULL, 0, &res);
  ms_job j;
  bool found, cancel, lost;
  assert_ok(a->job_claim(a, &j, &found));
  assert_int_equal(j.id, j1);
  ms_job_free(&j);
  assert_ok(b->job_claim(b, &j, &found)); /* the next one, not the one a holds */
  assert_int_equal(j.id, j2);
  ms_job_free(&j);
  assert_ok(a->job_heartbeat(a, j1, &cancel, &lost));
  assert_false(lost);
  assert_ok(b->job_heartbeat(b, j1, &cancel, &lost)); /* only the holder renews */
  assert_true(lost);
  int64_t *ids;
  int n, requeued, failed;
  assert_ok(a->job_list_running(a, &ids, &n)); /* live leases are nobody's leftovers */
  assert_int_equal(n, 0);
  free(ids);
  usleep(1300000);
  assert_ok(b->job_heartbeat(b, j2, &cancel, &lost)); /* b is alive: its job stays */
  assert_false(lost);
  assert_ok(b->job_reclaim_expired(b, &requeued, &failed));
  assert_int_equal(requeued, 1);
  assert_int_equal(failed, 0);
  j = get(a, j1);
  assert_int_equal(j.status, MS_QUEUED);
  assert_int_equal(j.attempts, 1);
  ms_job_free(&j);
  /* a stalled past its lease: no renewal, no done */
  assert_ok(a->job_heartbeat(a, j1, &cancel, &lost));
  assert_true(lost);
  char *dir = test_tmpdir(), *rel[] = {"jobs/1/result.json"};
  char p[4096];
  snprintf(p, sizeof p, "%s/jobs", dir), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/jobs/1", dir), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/jobs/1/result.json", dir);
  FILE *f = fopen(p, "w");
  fputs("{}", f), fclose(f);
  mp_error *e = a->job_finish_with_files(a, j1, dir, rel, 1);
  assert_non_null(e);
  mp_error_free(e);
  /* the second claim, and its lease runs out too: failed with the reason */
  assert_ok(b->job_claim(b, &j, &found));
  assert_int_equal(j.id, j1);
  assert_int_equal(j.attempts, 2);
  ms_job_free(&j);
  assert_ok(a->job_finish(a, j1, MS_FAILED, "stale")); /* not the holder: nothing changes */
  assert_ok(a->job_requeue(a, j1, true));
  j = get(a, j1);
  assert_int_equal(j.status, MS_RUNNING);
  assert_int_equal(j.attempts, 2);
  ms_job_free(&j);
  assert_ok(b->job_finish_with_files(b, j2, dir, rel, 1)); /* the holder's done, outputs included */
  usleep(1300000);
  assert_ok(a->job_reclaim_expired(a, &requeued, &failed));
  assert_int_equal(requeued, 0);
  assert_int_equal(failed, 1);
  j = get(a, j1);
  assert_int_equal(j.status, MS_FAILED);
  assert_non_null(strstr(j.fail_message, "worker died"));
  ms_job_free(&j);
  j = get(a, j2);
  assert_int_equal(j.status, MS_DONE);
  ms_job_free(&j);
  char **keys;
  int64_t *sizes;
  assert_ok(a->blob_list(a, "jobs/1/", &keys, &sizes, &n));
  assert_int_equal(n, 1);
  assert_int_equal(sizes[0], 2);
  free(keys[0]), free(keys), free(sizes);
  a->close(a), b->close(b);
  test_remove_tree(dir);
  free(dir), free(db);
}

static void test_notify_on_enqueue(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *api = open_pg(db, 30), *wk = open_pg(db, 30);
  bool woken = true;
  assert_ok(wk->job_wait(wk, 0, &woken)); /* LISTEN from here on */
  assert_false(woken);
  ms_enqueue_result res;
  enqueue(api, "alice", NULL, 0, &res);
  assert_ok(wk->job_wait(wk, 5000, &woken));
  assert_true(woken);
  assert_ok(wk->job_wait(wk, 100, &woken)); /* one wake per burst, then quiet */
  assert_false(woken);
  api->close(api), wk->close(wk);
  free(db);
}

/* what the listener handed over */
typedef struct {
  pthread_mutex_t mu;
  int n;
  int64_t job[8];
  char name[8][16], data[8][64];
  bool terminal[8];
} heard;

static void on_event(void *arg, int64_t job, const char *name, const char *data, bool terminal) {
  heard *h = arg;
  pthread_mutex_lock(&h->mu);
  if (h->n < 8) {
    h->job[h->n] = job, h->terminal[h->n] = terminal;
    snprintf(h->name[h->n], 16, "%s", name), snprintf(h->data[h->n], 64, "%s", data);
    h->n++;
  }
  pthread_mutex_unlock(&h->mu);
}

static int heard_count(heard *h) {
  pthread_mutex_lock(&h->mu);
  int n = h->n;
  pthread_mutex_unlock(&h->mu);
  return n;
}

/* waits up to 5 s for the listener to hold n events */
static void wait_heard(heard *h, int n) {
  for (int t = 0; t < 500 && heard_count(h) < n; t++) usleep(10000);
  assert_int_equal(heard_count(h), n);
}

static void test_events_between_stores(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *api = open_pg(db, 30), *wk = open_pg(db, 30);
  heard h = {.mu = PTHREAD_MUTEX_INITIALIZER};
  assert_ok(api->event_listen(api, on_event, &h));
  assert_err_contains(api->event_listen(api, on_event, &h), "already running");
  int t;
  for (t = 0; t < 500 && !api->event_listening(api); t++) usleep(10000);
  assert_true(api->event_listening(api));
  assert_ok(wk->event_send(wk, 42, "step", "{\"step\":3}", false));
  assert_ok(api->event_send(api, 42, "queued", "{}", false)); /* its own: not handed back */
  assert_ok(wk->event_send(wk, 42, "done", "{\"id\":42, \"x\": \"a b\"}", true));
  wait_heard(&h, 2);
  usleep(100000);
  assert_int_equal(heard_count(&h), 2);
  assert_int_equal(h.job[0], 42);
  assert_string_equal(h.name[0], "step");
  assert_string_equal(h.data[0], "{\"step\":3}");
  assert_false(h.terminal[0]);
  assert_string_equal(h.name[1], "done");
  assert_string_equal(h.data[1], "{\"id\":42, \"x\": \"a b\"}");
  assert_true(h.terminal[1]);
  /* something else on the channel is ignored */
  PGconn *c = PQconnectdb(db);
  PQclear(PQexec(c, "NOTIFY mpass_events, 'not an event'"));
  /* the listener's connection dies: it says so, reconnects, and hears again */
  PGresult *r = PQexec(c, "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE 'LISTEN mpass_events%'");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_int_equal(atoi(PQgetvalue(r, 0, 0)), 1);
  PQclear(r), PQfinish(c);
  for (t = 0; t < 300 && api->event_listening(api); t++) usleep(10000);
  for (t = 0; t < 500 && !api->event_listening(api); t++) usleep(10000);
  assert_true(api->event_listening(api));
  assert_ok(wk->event_send(wk, 43, "running", "{}", false));
  wait_heard(&h, 3);
  assert_int_equal(h.job[2], 43);
  api->close(api), wk->close(wk); /* the listener stops with its store */
  pthread_mutex_destroy(&h.mu);
  free(db);
}

static void write_file(const char *path, const unsigned char *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

static void test_blobs(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *s = open_pg(db, 30);
  char *dir = test_tmpdir(), p[4096];
  snprintf(p, sizeof p, "%s/in_x", dir), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/inyx", dir), mkdir(p, 0755);
  size_t big_n = (5u << 20) / 2 + 17; /* three chunks, the last one short */
  unsigned char *big = malloc(big_n);
  for (size_t i = 0; i < big_n; i++) big[i] = (unsigned char)(i * 2654435761u >> 13);
  snprintf(p, sizeof p, "%s/in_x/big.bin", dir), write_file(p, big, big_n);
  snprintf(p, sizeof p, "%s/in_x/empty", dir), write_file(p, (const unsigned char *)"", 0);
  snprintf(p, sizeof p, "%s/inyx/other", dir), write_file(p, (const unsigned char *)"abc", 3);
  char *rel[] = {"in_x/big.bin", "in_x/empty", "inyx/other"};
  assert_ok(s->blob_put_files(s, dir, rel, 3));
  assert_ok(s->blob_put_files(s, dir, rel, 1)); /* storing again replaces */
  char **keys;
  int64_t *sizes;
  int n;
  assert_ok(s->blob_list(s, "in_x/", &keys, &sizes, &n)); /* '_' is a character, not a wildcard */
  assert_int_equal(n, 2);
  assert_string_equal(keys[0], "in_x/big.bin");
  assert_int_equal(sizes[0], (int64_t)big_n);
  assert_int_equal(sizes[1], 0);
  for (int i = 0; i < n; i++) free(keys[i]);
  free(keys), free(sizes);
  bool found;
  snprintf(p, sizeof p, "%s/copy.bin", dir);
  assert_ok(s->blob_get_file(s, "in_x/big.bin", p, &found));
  assert_true(found);
  FILE *f = fopen(p, "rb");
  unsigned char *back = malloc(big_n + 1);
  assert_int_equal(fread(back, 1, big_n + 1, f), big_n);
  fclose(f);
  assert_memory_equal(back, big, big_n);
  snprintf(p, sizeof p, "%s/copy-empty", dir);
  assert_ok(s->blob_get_file(s, "in_x/empty", p, &found));
  assert_true(found);
  struct stat st;
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_size, 0);
  assert_ok(s->blob_get_file(s, "in_x/none", p, &found));
  assert_false(found);
  assert_ok(s->blob_delete(s, "in_x/"));
  assert_ok(s->blob_list(s, "in", &keys, &sizes, &n));
  assert_int_equal(n, 1);
  free(keys[0]), free(keys), free(sizes);
  s->close(s);
  test_remove_tree(dir);
  free(big), free(back), free(dir), free(db);
}

static void test_migrations(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *s = open_pg(db, 30);
  s->close(s);
  s = open_pg(db, 30); /* a second start finds the schema current */
  s->close(s);
  PGconn *c = PQconnectdb(db);
  PGresult *r = PQexec(c, "SELECT COUNT(*), MAX(version) FROM schema_version");
  assert_string_equal(PQgetvalue(r, 0, 0), "3");
  assert_string_equal(PQgetvalue(r, 0, 1), "3");
  PQclear(r);
  PQclear(PQexec(c, "INSERT INTO schema_version VALUES (99)"));
  PQfinish(c);
  mp_error *e = ms_store_pg_open(db, 30, &s);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "newer mpass"));
  mp_error_free(e);
  e = ms_store_pg_open("host=/nonexistent-mpass-socket dbname=x", 30, &s);
  assert_non_null(e);
  assert_non_null(strstr(mp_error_message(e), "cannot connect"));
  mp_error_free(e);
  free(db);
}

/* ---- retention (retention.c) on the shared store */

static void put_file(const char *root, const char *rel, const char *text) {
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", root, rel);
  for (char *c = p + strlen(root) + 1; (c = strchr(c, '/')); c++) *c = 0, mkdir(p, 0755), *c = '/';
  write_file(p, (const unsigned char *)text, strlen(text));
}

static bool exists_in(const char *root, const char *rel) {
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", root, rel);
  struct stat st;
  return lstat(p, &st) == 0;
}

static int stored(ms_store *s, const char *prefix) {
  char **keys;
  int64_t *sizes;
  int n;
  assert_ok(s->blob_list(s, prefix, &keys, &sizes, &n));
  for (int i = 0; i < n; i++) free(keys[i]);
  free(keys), free(sizes);
  return n;
}

static void pg_exec(const char *db, const char *sql) {
  PGconn *c = PQconnectdb(db);
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(c));
  PQclear(r), PQfinish(c);
}

/* a job with uploads recorded at another machine's path (the API node's DATA), its outputs and
 * inputs here and in the store */
static int64_t job_with_files(ms_store *s, const char *data, const char *name) {
  char inputs[256], rel[2][128];
  snprintf(inputs, sizeof inputs, "/srv/api-node/data/inputs/%s", name);
  ms_job j = {.owner = "alice", .document = "a cat", .params_json = "{}", .inputs_dir = inputs};
  int64_t id;
  ms_enqueue_result res;
  assert_ok(s->job_enqueue(s, &j, 0, &id, &res));
  snprintf(rel[0], sizeof rel[0], "jobs/%lld/0.png", (long long)id);
  snprintf(rel[1], sizeof rel[1], "inputs/%s/input_image.png", name);
  put_file(data, rel[0], "png"), put_file(data, rel[1], "png");
  char *keys[] = {rel[0], rel[1]};
  assert_ok(s->blob_put_files(s, data, keys, 2));
  return id;
}

static void test_retention(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *s = open_pg(db, 30);
  char *data = test_tmpdir(), *node2 = test_tmpdir();
  int64_t old = job_with_files(s, data, "in1"), running = job_with_files(s, data, "in2"), recent = job_with_files(s, data, "in3");
  ms_job j;
  bool found;
  for (int i = 0; i < 3; i++) {
    assert_ok(s->job_claim(s, &j, &found));
    ms_job_free(&j);
  }
  assert_ok(s->job_finish(s, old, MS_DONE, NULL));
  assert_ok(s->job_finish(s, recent, MS_DONE, NULL));
  int64_t queued = job_with_files(s, data, "in4");
  char sql[256];
  snprintf(sql, sizeof sql, "UPDATE jobs SET finished_at = '2000-01-01T00:00:00.000Z' WHERE id IN (%lld, %lld)", (long long)old,
           (long long)running); /* running: its status alone must keep it */
  pg_exec(db, sql);
  snprintf(sql, sizeof sql, "UPDATE jobs SET failed_at = '2000-01-01T00:00:00.000Z' WHERE id = %lld", (long long)queued);
  pg_exec(db, sql);
  /* another node's copies of the old job, fetched long ago, and an old upload that never became a job */
  snprintf(sql, sizeof sql, "jobs/%lld/0.png", (long long)old);
  put_file(node2, sql, "png");
  put_file(node2, "inputs/in1/input_image.png", "png");
  put_file(node2, "inputs/in4/input_image.png", "png");
  put_file(node2, "inputs/orphan/input_image.png", "png");
  const char *aged[] = {"inputs/in1", "inputs/in4", "inputs/orphan"};
  for (int i = 0; i < 3; i++) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", node2, aged[i]);
    struct timespec t[2] = {{.tv_sec = 946684800}, {.tv_sec = 946684800}}; /* 2000-01-01 */
    assert_int_equal(utimensat(AT_FDCWD, p, t, 0), 0);
  }

  ms_sweep_stats st;
  assert_ok(ms_retention_sweep(s, data, 30, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 1);
  assert_int_equal(st.folders_removed, 2);
  char prefix[64];
  snprintf(prefix, sizeof prefix, "jobs/%lld/", (long long)old);
  assert_int_equal(stored(s, prefix), 0);
  assert_int_equal(stored(s, "inputs/in1/"), 0);
  assert_false(exists_in(data, prefix));
  assert_false(exists_in(data, "inputs/in1"));
  j = get(s, old);
  assert_non_null(j.expired_at);
  assert_int_equal(j.status, MS_DONE);
  ms_job_free(&j);
  int64_t kept[] = {running, recent, queued};
  const char *kept_inputs[] = {"inputs/in2", "inputs/in3", "inputs/in4"};
  for (int i = 0; i < 3; i++) {
    snprintf(prefix, sizeof prefix, "jobs/%lld/", (long long)kept[i]);
    assert_int_equal(stored(s, prefix), 1);
    assert_true(exists_in(data, prefix));
    char ip[64];
    snprintf(ip, sizeof ip, "%s/", kept_inputs[i]);
    assert_int_equal(stored(s, ip), 1);
    assert_true(exists_in(data, kept_inputs[i]));
    j = get(s, kept[i]);
    assert_null(j.expired_at);
    ms_job_free(&j);
  }
  /* the second node: its copy of the expired job and the inputs whose stored files are gone; the
   * queued job's inputs stay (still stored), however old the folder */
  assert_ok(ms_retention_sweep(s, node2, 30, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 0);
  assert_int_equal(st.folders_removed, 3);
  snprintf(prefix, sizeof prefix, "jobs/%lld", (long long)old);
  assert_false(exists_in(node2, prefix));
  assert_false(exists_in(node2, "inputs/in1"));
  assert_false(exists_in(node2, "inputs/orphan"));
  assert_true(exists_in(node2, "inputs/in4/input_image.png"));
  s->close(s);
  test_remove_tree(data), test_remove_tree(node2);
  free(data), free(node2), free(db);
}

/* a database of schema version 1 (001_init.sql as shipped, before expired_at) is migrated */
static void test_migrates_version_1(void **state) {
  (void)state;
  char *db = new_db();
  const char *src = getenv("MPASS_SOURCE_DIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/src/server/sql/pg/001_init.sql", src ? src : ".");
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot read %s", path);
  char *v1 = calloc(1, 1 << 16);
  size_t got = fread(v1, 1, (1 << 16) - 1, f);
  fclose(f);
  assert_true(got > 100);
  pg_exec(db, v1);
  free(v1);
  pg_exec(db, "CREATE TABLE schema_version (version integer NOT NULL); INSERT INTO schema_version VALUES (1);"
              "INSERT INTO jobs(owner, document, is_json, params_json, status, created_at, finished_at)"
              " VALUES ('alice', 'a cat', 0, '{}', 2, '2001-01-01T00:00:00.000Z', '2001-01-01T00:01:00.000Z')");
  ms_store *s = open_pg(db, 30);
  ms_job j = get(s, 1);
  assert_string_equal(j.document, "a cat");
  assert_null(j.expired_at);
  ms_job_free(&j);
  char *data = test_tmpdir();
  ms_sweep_stats st;
  assert_ok(ms_retention_sweep(s, data, 1, time(NULL), true, &st));
  assert_int_equal(st.jobs_expired, 1);
  s->close(s);
  PGconn *c = PQconnectdb(db);
  PGresult *r = PQexec(c, "SELECT COUNT(*), MAX(version) FROM schema_version");
  assert_string_equal(PQgetvalue(r, 0, 0), "3");
  assert_string_equal(PQgetvalue(r, 0, 1), "3");
  PQclear(r), PQfinish(c);
  test_remove_tree(data);
  free(data), free(db);
}

/* the server drops every connection (a restart, a failover): the next call reconnects */
static void test_reconnect(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *s = open_pg(db, 30);
  int64_t n;
  assert_ok(s->token_add(s, "alice", "aa11"));
  PGconn *c = PQconnectdb(db);
  PGresult *r = PQexec(c, "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity"
                          " WHERE datname = current_database() AND pid <> pg_backend_pid()");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_true(atoi(PQgetvalue(r, 0, 0)) >= 1);
  PQclear(r), PQfinish(c);
  usleep(200000);
  assert_ok(s->token_count(s, &n));
  assert_int_equal(n, 1);
  ms_enqueue_result res;
  enqueue(s, "alice", NULL, 0, &res); /* a transaction on a fresh connection */
  assert_int_equal(res, MS_ENQUEUED);
  s->close(s);
  free(db);
}

/* ---- callbacks owed (store.h): the duty is written with the job's end, held under a lease, claimed
 * by one store at a time (SKIP LOCKED), settled once delivered or given up */

static const char *SINCE = "2000-01-01T00:00:00.000Z";

/* a job with a callback URL, claimed by s and ended with status */
static int64_t ended_with_callback(ms_store *s, ms_status status) { return store_fixture_ended(s, "http://127.0.0.1:9/hook", status); }

/* claims with s; returns how many, and the first id in *first */
static int claim(ms_store *s, bool own_too, int64_t *first) {
  ms_job *jobs;
  int n;
  assert_ok(s->callback_claim(s, SINCE, own_too, 10, &jobs, &n));
  if (first) *first = n > 0 ? jobs[0].id : 0;
  for (int i = 0; i < n; i++) assert_non_null(jobs[i].callback);
  ms_job_list_free(jobs, n);
  return n;
}

static int renew(ms_store *s, int64_t id) {
  int held = -1;
  assert_ok(s->callback_renew(s, &id, 1, &held));
  return held;
}

static void test_callback_leases(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *a = open_pg(db, 1), *b = open_pg(db, 1); /* two processes, 1 s leases */
  int64_t done = ended_with_callback(a, MS_DONE), first;
  /* a ended it: a holds the duty; b cannot take it while a's lease runs */
  assert_int_equal(claim(b, false, NULL), 0);
  assert_int_equal(renew(a, done), 1);
  assert_int_equal(renew(b, done), 0);
  /* a claims nothing new either, unless asked for its own (a start, after recovery) */
  assert_int_equal(claim(a, false, NULL), 0);
  assert_int_equal(claim(a, true, &first), 1);
  assert_int_equal(first, done);
  /* a dies (no more renewals): once its lease ran out, b takes it, and only b */
  usleep(1300 * 1000);
  assert_int_equal(claim(b, false, &first), 1);
  assert_int_equal(first, done);
  assert_int_equal(claim(a, false, NULL), 0);
  assert_int_equal(renew(a, done), 0); /* a stalled, not dead: it sees it lost the callback */
  assert_int_equal(renew(b, done), 1);
  /* settled by b (delivered): owed no more, whatever the lease */
  assert_ok(a->callback_settle(a, done)); /* not the holder: nothing */
  usleep(1300 * 1000);
  assert_int_equal(claim(a, false, &first), 1);
  assert_int_equal(first, done);
  assert_ok(a->callback_settle(a, done));
  usleep(1300 * 1000);
  assert_int_equal(claim(a, false, NULL) + claim(b, true, NULL), 0);
  assert_int_equal(renew(a, done), 0);
  /* no duty: cancelled, or no callback URL */
  ended_with_callback(a, MS_CANCELLED);
  ms_enqueue_result res;
  int64_t plain = enqueue(a, "alice", NULL, 0, &res);
  ms_job j;
  bool found;
  assert_ok(a->job_claim(a, &j, &found));
  assert_true(found && j.id == plain);
  ms_job_free(&j);
  assert_ok(a->job_finish(a, plain, MS_DONE, NULL));
  assert_int_equal(claim(a, true, NULL) + claim(b, true, NULL), 0);
  /* failed ones owe theirs too; a clean stop hands them back at once */
  int64_t failed = ended_with_callback(a, MS_FAILED);
  assert_int_equal(claim(b, false, NULL), 0);
  assert_ok(a->callback_release(a));
  assert_int_equal(claim(b, false, &first), 1);
  assert_int_equal(first, failed);
  assert_ok(b->callback_settle(b, failed));
  /* only the last 24 hours (the caller's horizon) */
  int64_t old = ended_with_callback(a, MS_DONE);
  char sql[256];
  snprintf(sql, sizeof sql, "UPDATE jobs SET finished_at = '2001-01-01T00:00:00.000Z' WHERE id = %lld", (long long)old);
  pg_exec(db, sql);
  ms_job *jobs;
  int n;
  assert_ok(a->callback_claim(a, "2020-01-01T00:00:00.000Z", true, 10, &jobs, &n));
  assert_int_equal(n, 0);
  free(jobs);
  assert_ok(a->callback_settle(a, old));
  a->close(a), b->close(b);
  free(db);
}

/* Owed callbacks past the sweep's horizon are given up by whichever process sweeps, with the reason in
 * their attempts, once no live lease holds them; newer ones stay owed. */
static void test_callbacks_given_up(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *a = open_pg(db, 1), *b = open_pg(db, 1); /* two processes, 1 s leases */
  const char *horizon = "2020-01-01T00:00:00.000Z";
  int64_t old = ended_with_callback(a, MS_DONE), old_failed = ended_with_callback(a, MS_FAILED);
  int64_t recent = ended_with_callback(a, MS_DONE);
  char sql[256];
  snprintf(sql, sizeof sql, STORE_FIXTURE_ENDED_IN_2001, (long long)old, (long long)old_failed);
  pg_exec(db, sql);
  store_fixture_give_up(b, horizon, 0, 0); /* a holds them under live leases: they may be on their way */
  usleep(1300 * 1000); /* a dies */
  store_fixture_give_up(b, horizon, 2, old);
  store_fixture_give_up(a, horizon, 0, 0); /* owed no more */
  int64_t first;
  assert_int_equal(claim(b, false, &first), 1); /* the recent one only */
  assert_int_equal(first, recent);
  assert_ok(b->callback_settle(b, recent));
  a->close(a), b->close(b);
  free(db);
}

/* Claims never wait on nor take a row another process holds locked (it may be claiming, renewing
 * or settling it right now): SKIP LOCKED. */
static void test_callback_claim_skips_locked(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *a = open_pg(db, 1), *b = open_pg(db, 1);
  int64_t x = ended_with_callback(a, MS_DONE), y = ended_with_callback(a, MS_DONE);
  usleep(1300 * 1000); /* a died: both are due */
  PGconn *c = PQconnectdb(db);
  PQclear(PQexec(c, "BEGIN"));
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT id FROM jobs WHERE id = %lld FOR UPDATE", (long long)x);
  PGresult *r = PQexec(c, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  PQclear(r);
  int64_t first;
  assert_int_equal(claim(b, false, &first), 1); /* at once, and not the locked one */
  assert_int_equal(first, y);
  PQclear(PQexec(c, "COMMIT"));
  PQfinish(c);
  assert_int_equal(claim(a, false, &first), 1); /* unlocked: the next claimer gets it */
  assert_int_equal(first, x);
  assert_int_equal(claim(b, false, NULL), 0);
  a->close(a), b->close(b);
  free(db);
}

/* A job that fails on its second interruption (its worker died, reclaim) owes its callback at once:
 * nobody holds it, any process's sweep delivers it. */
static void test_callback_after_reclaim(void **state) {
  (void)state;
  char *db = new_db();
  ms_store *a = open_pg(db, 1), *b = open_pg(db, 1);
  ms_job j = {.owner = "alice", .document = "a cat", .params_json = "{}", .callback = "http://127.0.0.1:9/hook"};
  int64_t id;
  ms_enqueue_result res;
  assert_ok(a->job_enqueue(a, &j, 0, &id, &res));
  bool found;
  assert_ok(a->job_claim(a, &j, &found));
  ms_job_free(&j);
  char sql[128];
  snprintf(sql, sizeof sql, "UPDATE jobs SET attempts = 2, lease_until = now() - interval '1 second' WHERE id = %lld", (long long)id);
  pg_exec(db, sql);
  int requeued, failed;
  assert_ok(b->job_reclaim_expired(b, &requeued, &failed));
  assert_int_equal(failed, 1);
  int64_t first;
  assert_int_equal(claim(a, false, &first), 1);
  assert_int_equal(first, id);
  a->close(a), b->close(b);
  free(db);
}

/* Upgrading from schema 2 (000-002 as shipped): only what a schema 2 start would have delivered is
 * owed (ended done or failed in the last 24 hours, with a callback, none tried); nothing older. */
static void test_migrates_version_2_callbacks(void **state) {
  (void)state;
  char *db = new_db();
  const char *src = getenv("MPASS_SOURCE_DIR");
  for (int v = 1; v <= 2; v++) {
    char path[4096];
    snprintf(path, sizeof path, "%s/src/server/sql/pg/%s", src ? src : ".", v == 1 ? "001_init.sql" : "002_retention.sql");
    FILE *f = fopen(path, "rb");
    if (!f) fail_msg("cannot read %s", path);
    char *sql = calloc(1, 1 << 16);
    size_t got = fread(sql, 1, (1 << 16) - 1, f);
    fclose(f);
    assert_true(got > 10);
    pg_exec(db, sql);
    free(sql);
  }
  time_t now = time(NULL);
  char recent[32], old[32], sql[2048];
  strftime(recent, sizeof recent, "%Y-%m-%dT%H:%M:%S.000Z", gmtime(&(time_t){now - 3600}));
  strftime(old, sizeof old, "%Y-%m-%dT%H:%M:%S.000Z", gmtime(&(time_t){now - 3 * 24 * 3600}));
  snprintf(sql, sizeof sql,
           "CREATE TABLE schema_version (version integer NOT NULL); INSERT INTO schema_version VALUES (1), (2);"
           "INSERT INTO jobs(owner, document, is_json, params_json, status, created_at, finished_at, failed_at, callback, callbacks_json)"
           " VALUES ('alice', 'owed', 0, '{}', 2, '%s', '%s', NULL, 'http://h/1', '[]'),"
           " ('alice', 'owed too', 0, '{}', 3, '%s', NULL, '%s', 'http://h/2', '[]'),"
           " ('alice', 'too old', 0, '{}', 2, '%s', '%s', NULL, 'http://h/3', '[]'),"
           " ('alice', 'tried', 0, '{}', 2, '%s', '%s', NULL, 'http://h/4', '[{\"attempt\": 1}]'),"
           " ('alice', 'cancelled', 0, '{}', 4, '%s', '%s', NULL, 'http://h/5', '[]'),"
           " ('alice', 'no url', 0, '{}', 2, '%s', '%s', NULL, NULL, '[]'),"
           " ('alice', 'queued', 0, '{}', 0, '%s', NULL, NULL, 'http://h/7', '[]')",
           recent, recent, recent, recent, old, old, recent, recent, recent, recent, recent, recent, recent);
  pg_exec(db, sql);
  ms_store *s = open_pg(db, 30);
  ms_job *jobs;
  int n;
  assert_ok(s->callback_claim(s, SINCE, false, 10, &jobs, &n));
  assert_int_equal(n, 2);
  assert_string_equal(jobs[0].document, "owed");
  assert_string_equal(jobs[1].document, "owed too");
  ms_job_list_free(jobs, n);
  s->close(s);
  PGconn *c = PQconnectdb(db);
  PGresult *r = PQexec(c, "SELECT COUNT(*), MAX(version) FROM schema_version");
  assert_string_equal(PQgetvalue(r, 0, 0), "3");
  assert_string_equal(PQgetvalue(r, 0, 1), "3");
  PQclear(r), PQfinish(c);
  free(db);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_basics), cmocka_unit_test(test_leases),
                                     cmocka_unit_test(test_notify_on_enqueue), cmocka_unit_test(test_events_between_stores),
                                     cmocka_unit_test(test_blobs),
                                     cmocka_unit_test(test_migrations), cmocka_unit_test(test_reconnect),
                                     cmocka_unit_test(test_retention), cmocka_unit_test(test_migrates_version_1),
                                     cmocka_unit_test(test_callback_leases), cmocka_unit_test(test_callback_claim_skips_locked),
                                     cmocka_unit_test(test_callback_after_reclaim), cmocka_unit_test(test_migrates_version_2_callbacks),
                                     cmocka_unit_test(test_callbacks_given_up)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
