/* The HTTP API end to end: the real `mpass serve` binary on a free loopback port with the tiny model
 * (random weights: pixels are noise; the service's behaviour is what is tested). */
#include <dirent.h>
#include <stdatomic.h>

#include "server_harness.h"

static server S;
/* small and fast: 64x64, 2 steps */
static const char *FAST = "{\"prompt\": {\"text\": \"a red cube\", \"steps\": 2, \"w\": 64, \"h\": 64, \"scheduler\": \"euler\"}}";
/* slow enough to catch running (about 10 s on two cores) */
static const char *SLOW = "{\"prompt\": {\"text\": \"a slow cube\", \"steps\": 150, \"w\": 512, \"h\": 512, \"scheduler\": \"euler\"}}";

static int group_setup(void **state) {
  (void)state;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  h_prepare(&S);
  h_start(&S, (const char *const[]){"--max-queued", "3", NULL});
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  int st = h_stop(&S, SIGTERM);
  h_free(&S);
  curl_global_cleanup();
  /* a clean stop exits 0 */
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* An error answer: the status, a message, and no path of the server's in it (DATA, the models folder). */
static void expect_error(reply *r, long status) {
  if (r->status != status) fail_msg("expected HTTP %ld, got %ld: %s", status, r->status, r->body);
  cJSON *j = h_json(r);
  const cJSON *e = cJSON_GetObjectItem(j, "error");
  assert_true(cJSON_IsString(e) && e->valuestring[0]);
  if (strstr(e->valuestring, S.data) || strstr(e->valuestring, S.models)) fail_msg("a server path in the answer: %s", e->valuestring);
  cJSON_Delete(j);
  reply_free(r);
}

static void test_health_and_auth(void **state) {
  (void)state;
  reply r = h_req(&S, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  r = h_req(&S, "GET", "/", NULL, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "<html"));
  reply_free(&r);
  r = h_req(&S, "GET", "/prompts", NULL, NULL, NULL, NULL, NULL);
  expect_error(&r, 401);
  r = h_req(&S, "GET", "/prompts", "not-a-token", NULL, NULL, NULL, NULL);
  expect_error(&r, 401);
  r = h_req(&S, "GET", "/metrics", NULL, NULL, NULL, NULL, NULL);
  expect_error(&r, 401);
  r = h_req(&S, "GET", "/nothing/here", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  r = h_req(&S, "PUT", "/prompts", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 405);
}

static void test_create_poll_download(void **state) {
  (void)state;
  int64_t id = h_create(&S, TOKEN_A, "/prompts", FAST);
  cJSON *o = h_wait_end(&S, TOKEN_A, id, 60);
  assert_string_equal(h_status(o), "done");
  assert_int_equal(cJSON_GetObjectItem(o, "steps")->valueint, 2);
  assert_int_equal(cJSON_GetObjectItem(o, "w")->valueint, 64);
  assert_string_equal(cJSON_GetObjectItem(o, "text")->valuestring, "a red cube");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "tune_id")));
  assert_non_null(cJSON_GetObjectItem(o, "finished_at")->valuestring);
  cJSON *passes = cJSON_GetObjectItem(o, "passes");
  assert_true(cJSON_GetArraySize(passes) >= 1);
  cJSON *images = cJSON_GetObjectItem(o, "images");
  assert_int_equal(cJSON_GetArraySize(images), 1);
  const char *url = cJSON_GetArrayItem(images, 0)->valuestring;
  assert_int_equal(strncmp(url, S.url, strlen(S.url)), 0); /* absolute, from the Host header */
  reply r = h_req(&S, "GET", url, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_true(r.len > 8 && !memcmp(r.body, "\x89PNG", 4));
  assert_true(r.etag[0]);
  char inm[200];
  snprintf(inm, sizeof inm, "If-None-Match: %s", r.etag);
  reply r2 = h_req(&S, "GET", url, TOKEN_A, NULL, NULL, NULL, inm);
  assert_int_equal(r2.status, 304);
  reply_free(&r2), reply_free(&r);
  /* the contact sheet of the passes is served too */
  cJSON *sheets = cJSON_GetObjectItem(o, "contact_sheets");
  assert_int_equal(cJSON_GetArraySize(sheets), 1);
  r = h_req(&S, "GET", cJSON_GetArrayItem(sheets, 0)->valuestring, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  cJSON_Delete(o);
}

static void test_text_form_document(void **state) {
  (void)state;
  /* "text" alone is the whole document as the CLI reads it; the server pins the drawn seed */
  int64_t id = h_create(&S, TOKEN_A, "/prompts",
                        "{\"prompt\": {\"text\": \"a blue cone\\nsteps=3\\nw=64\\nh=64\\nscheduler=euler\"}}");
  cJSON *o = h_wait_end(&S, TOKEN_A, id, 60);
  assert_string_equal(h_status(o), "done");
  assert_int_equal(cJSON_GetObjectItem(o, "steps")->valueint, 3);
  double seed = cJSON_GetObjectItem(o, "seed")->valuedouble;
  cJSON *p0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "passes"), 0);
  assert_true(cJSON_GetObjectItem(p0, "seed")->valuedouble == seed); /* the seed reported is the seed run */
  cJSON_Delete(o);
}

/* A small img2img prompt as a multipart form with its input image. */
static curl_mime *img2img_form(CURL *c) {
  curl_mime *m = curl_mime_init(c);
  static const char *const kv[][2] = {{"prompt[text]", "a green sphere"}, {"prompt[steps]", "2"}, {"prompt[w]", "64"},
                                     {"prompt[h]", "64"}, {"prompt[scheduler]", "euler"}, {"prompt[denoising_strength]", "0.5"}};
  for (size_t i = 0; i < sizeof kv / sizeof *kv; i++) {
    curl_mimepart *p = curl_mime_addpart(m);
    curl_mime_name(p, kv[i][0]);
    curl_mime_data(p, kv[i][1], CURL_ZERO_TERMINATED);
  }
  char *img = test_shared_path("golden/tiny/init_image.png");
  curl_mimepart *p = curl_mime_addpart(m);
  curl_mime_name(p, "prompt[input_image]");
  curl_mime_filedata(p, img);
  free(img);
  return m;
}

/* folders in DATA/inputs */
static int input_folders(void) {
  char p[4200];
  snprintf(p, sizeof p, "%s/inputs", S.data);
  DIR *d = opendir(p);
  int n = 0;
  for (struct dirent *de; d && (de = readdir(d));) n += de->d_name[0] != '.';
  if (d) closedir(d);
  return n;
}

static void test_multipart_with_input_image(void **state) {
  (void)state;
  CURL *c = curl_easy_init();
  curl_mime *m = img2img_form(c);
  reply r = h_req(&S, "POST", "/prompts", TOKEN_A, NULL, NULL, m, NULL);
  curl_mime_free(m);
  curl_easy_cleanup(c);
  if (r.status != 201) fail_msg("multipart create: HTTP %ld %s", r.status, r.body);
  cJSON *j = h_json(&r);
  int64_t id = (int64_t)cJSON_GetObjectItem(j, "id")->valuedouble;
  assert_true(cJSON_IsTrue(cJSON_GetObjectItem(j, "input_image")));
  cJSON_Delete(j), reply_free(&r);
  cJSON *o = h_wait_end(&S, TOKEN_A, id, 60);
  if (strcmp(h_status(o), "done")) fail_msg("img2img job: %s", cJSON_Print(o));
  cJSON_Delete(o);
}

static void test_bad_requests(void **state) {
  (void)state;
  reply r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {", NULL, NULL);
  expect_error(&r, 400);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "", NULL, NULL);
  expect_error(&r, 400);
  /* the parser's message: the key and what was expected */
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"x\", \"steps\": 0}}", NULL, NULL);
  assert_int_equal(r.status, 422);
  assert_non_null(strstr(r.body, "steps"));
  reply_free(&r);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"x\\nsteps=3\\nstepz=3\"}}", NULL, NULL);
  assert_int_equal(r.status, 422); /* after the first parameter line, every line is one: the parser names the line */
  assert_non_null(strstr(r.body, "line 3"));
  reply_free(&r);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"x\", \"w\": 65}}", NULL, NULL);
  expect_error(&r, 422);
  /* server paths are not for clients */
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"x\", \"input_image\": \"/etc/passwd\"}}", NULL, NULL);
  expect_error(&r, 422);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"x\\ninput_image=/etc/passwd\"}}", NULL, NULL);
  expect_error(&r, 422);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"x\", \"callback\": \"ftp://x\"}}", NULL, NULL);
  expect_error(&r, 422);
  r = h_req(&S, "GET", "/prompts/999999", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  r = h_req(&S, "GET", "/tunes/999999", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  r = h_req(&S, "GET", "/images/999999/0.png", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  r = h_req(&S, "GET", "/prompts?limit=121", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 400);
  r = h_req(&S, "GET", "/prompts?limit=abc", TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 400);
  /* an input image that is not PNG/JPEG */
  CURL *c = curl_easy_init();
  curl_mime *m = curl_mime_init(c);
  curl_mimepart *p = curl_mime_addpart(m);
  curl_mime_name(p, "prompt[text]"), curl_mime_data(p, "x", CURL_ZERO_TERMINATED);
  p = curl_mime_addpart(m);
  curl_mime_name(p, "prompt[input_image]"), curl_mime_filename(p, "a.webp");
  curl_mime_data(p, "RIFF\x10\0\0\0WEBPVP8 ", 16);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, NULL, NULL, m, NULL);
  assert_int_equal(r.status, 422);
  assert_non_null(strstr(r.body, "WebP"));
  reply_free(&r);
  curl_mime_free(m);
  /* 413: an image over --max-image-bytes (20 MiB by default) */
  m = curl_mime_init(c);
  p = curl_mime_addpart(m);
  curl_mime_name(p, "prompt[text]"), curl_mime_data(p, "x", CURL_ZERO_TERMINATED);
  p = curl_mime_addpart(m);
  size_t big = (21u << 20);
  char *blob = calloc(1, big);
  memcpy(blob, "\x89PNG\r\n\x1a\n", 8);
  curl_mime_name(p, "prompt[input_image]"), curl_mime_filename(p, "big.png"), curl_mime_data(p, blob, big);
  r = h_req(&S, "POST", "/prompts", TOKEN_A, NULL, NULL, m, NULL);
  free(blob);
  curl_mime_free(m);
  curl_easy_cleanup(c);
  expect_error(&r, 413);
}

static void test_isolation(void **state) {
  (void)state;
  int64_t id = h_create(&S, TOKEN_A, "/prompts", FAST);
  cJSON *o = h_wait_end(&S, TOKEN_A, id, 60);
  cJSON_Delete(o);
  char p[96];
  static const char *const fmts[][2] = {{"GET", "/prompts/%lld"}, {"DELETE", "/prompts/%lld"}, {"GET", "/prompts/%lld/events"},
                                       {"GET", "/images/%lld/0.png"}};
  for (size_t i = 0; i < sizeof fmts / sizeof *fmts; i++) {
    snprintf(p, sizeof p, fmts[i][1], (long long)id);
    reply r = h_req(&S, fmts[i][0], p, TOKEN_B, NULL, NULL, NULL, NULL);
    expect_error(&r, 404);
  }
  reply r = h_req(&S, "GET", "/prompts?limit=120", TOKEN_B, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  cJSON *list = h_json(&r);
  cJSON *it;
  cJSON_ArrayForEach(it, list) assert_true(cJSON_GetObjectItem(it, "id")->valuedouble != (double)id);
  cJSON_Delete(list), reply_free(&r);
}

static void test_list_paging(void **state) {
  (void)state;
  int64_t a = h_create(&S, TOKEN_B, "/prompts", FAST), b = h_create(&S, TOKEN_B, "/prompts", FAST);
  reply r = h_req(&S, "GET", "/prompts?limit=1", TOKEN_B, NULL, NULL, NULL, NULL);
  cJSON *l = h_json(&r);
  assert_int_equal(cJSON_GetArraySize(l), 1);
  assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(l, 0), "id")->valuedouble == (double)b); /* newest first */
  cJSON_Delete(l), reply_free(&r);
  r = h_req(&S, "GET", "/prompts?limit=1&offset=1", TOKEN_B, NULL, NULL, NULL, NULL);
  l = h_json(&r);
  assert_true(cJSON_GetObjectItem(cJSON_GetArrayItem(l, 0), "id")->valuedouble == (double)a);
  cJSON_Delete(l), reply_free(&r);
  cJSON_Delete(h_wait_end(&S, TOKEN_B, a, 60)), cJSON_Delete(h_wait_end(&S, TOKEN_B, b, 60));
}

static void test_cancel(void **state) {
  (void)state;
  int64_t slow = h_create(&S, TOKEN_A, "/prompts", SLOW);
  int64_t queued = h_create(&S, TOKEN_A, "/prompts", FAST);
  cJSON *o = h_wait_status(&S, TOKEN_A, slow, "running", 60);
  cJSON_Delete(o);
  char p[64];
  snprintf(p, sizeof p, "/prompts/%lld", (long long)queued);
  reply r = h_req(&S, "DELETE", p, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  o = h_json(&r);
  assert_string_equal(h_status(o), "cancelled"); /* a queued job is cancelled at once */
  cJSON_Delete(o), reply_free(&r);
  snprintf(p, sizeof p, "/prompts/%lld", (long long)slow);
  r = h_req(&S, "DELETE", p, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  o = h_wait_end(&S, TOKEN_A, slow, 10); /* within a step, not the 150 */
  assert_string_equal(h_status(o), "cancelled");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "images")), 0);
  cJSON_Delete(o);
}

/* ---- SSE: read the stream until it ends */
typedef struct {
  char *buf;
  size_t len;
} sink;
static size_t sink_write(char *p, size_t sz, size_t n, void *u) {
  sink *s = u;
  s->buf = realloc(s->buf, s->len + sz * n + 1);
  memcpy(s->buf + s->len, p, sz * n);
  s->len += sz * n;
  s->buf[s->len] = 0;
  return sz * n;
}

static void test_events(void **state) {
  (void)state;
  int64_t id = h_create(&S, TOKEN_A, "/prompts", "{\"prompt\": {\"text\": \"sse\", \"steps\": 4, \"w\": 64, \"h\": 64, \"scheduler\": \"euler\"}}");
  char url[256], auth[128];
  snprintf(url, sizeof url, "%s/prompts/%lld/events", S.url, (long long)id);
  snprintf(auth, sizeof auth, "Authorization: Bearer %s", TOKEN_A);
  CURL *c = curl_easy_init();
  struct curl_slist *h = curl_slist_append(NULL, auth);
  sink sk = {0};
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &sk);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 120L);
  assert_int_equal(curl_easy_perform(c), CURLE_OK); /* the stream ends after the final event */
  long status;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  assert_int_equal(status, 200);
  curl_slist_free_all(h), curl_easy_cleanup(c);
  assert_non_null(sk.buf);
  char *done = strstr(sk.buf, "event: done\n");
  assert_non_null(done);
  /* the job may have started before the stream: it began with queued or running, and it reported steps
   * with their timing unless it had ended already */
  assert_true(!strncmp(sk.buf, "event: queued", 13) || !strncmp(sk.buf, "event: running", 14) || sk.buf == done);
  if (sk.buf != done) {
    char *step = strstr(sk.buf, "event: step\n");
    if (step) assert_non_null(strstr(step, "\"sec_per_it\""));
  }
  free(sk.buf);
  /* a finished job's stream is one event */
  snprintf(url, sizeof url, "/prompts/%lld/events", (long long)id);
  reply r = h_req(&S, "GET", url, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_int_equal(strncmp(r.body, "event: done\n", 12), 0);
  reply_free(&r);
}

/* ---- callbacks: a loopback receiver counting POSTs */
typedef struct {
  int fd, port;
  int answer;   /* HTTP status it answers */
  int delay_ms; /* before answering */
  atomic_int posts, with_prompt, answered;
  pthread_t th;
} receiver;

static void *receiver_main(void *arg) {
  receiver *rc = arg;
  for (;;) {
    int c = accept(rc->fd, NULL, NULL);
    if (c < 0) return NULL;
    char buf[65536];
    h_read_request(c, buf, sizeof buf);
    if (!strncmp(buf, "POST ", 5)) {
      atomic_fetch_add(&rc->posts, 1);
      if (strstr(buf, "{\"prompt\":{")) atomic_fetch_add(&rc->with_prompt, 1);
    }
    if (rc->delay_ms) usleep((useconds_t)rc->delay_ms * 1000);
    char resp[128];
    int k = snprintf(resp, sizeof resp, "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", rc->answer);
    send(c, resp, (size_t)k, 0);
    close(c);
    atomic_fetch_add(&rc->answered, 1);
  }
}

static void receiver_start(receiver *rc, int answer) {
  rc->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(rc->fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t al = sizeof a;
  getsockname(rc->fd, (struct sockaddr *)&a, &al);
  rc->port = ntohs(a.sin_port);
  listen(rc->fd, 8);
  rc->answer = answer;
  pthread_create(&rc->th, NULL, receiver_main, rc);
}

static void receiver_stop(receiver *rc) {
  shutdown(rc->fd, SHUT_RDWR);
  close(rc->fd);
  pthread_join(rc->th, NULL);
}

static cJSON *wait_callbacks(int64_t id, int n) {
  for (int i = 0; i < 300; i++) {
    cJSON *o = h_get_prompt(&S, TOKEN_A, id);
    if (cJSON_GetArraySize(cJSON_GetObjectItem(o, "callback_attempts")) >= n) return o;
    cJSON_Delete(o);
    usleep(50000);
  }
  fail_msg("prompt %lld: fewer than %d callback attempts", (long long)id, n);
  return NULL;
}

static void test_callbacks(void **state) {
  (void)state;
  receiver ok = {0}, bad = {0};
  receiver_start(&ok, 200);
  receiver_start(&bad, 500);
  char body[512];
  snprintf(body, sizeof body,
           "{\"prompt\": {\"text\": \"cb\", \"steps\": 2, \"w\": 64, \"h\": 64, \"callback\": \"http://127.0.0.1:%d/hook\"}}", ok.port);
  int64_t a = h_create(&S, TOKEN_A, "/prompts", body);
  snprintf(body, sizeof body,
           "{\"prompt\": {\"text\": \"cb\", \"steps\": 2, \"w\": 64, \"h\": 64, \"callback\": \"http://127.0.0.1:%d/hook\"}}", bad.port);
  int64_t b = h_create(&S, TOKEN_A, "/prompts", body);
  cJSON *oa = wait_callbacks(a, 1);
  assert_string_equal(h_status(oa), "done");
  cJSON *att = cJSON_GetArrayItem(cJSON_GetObjectItem(oa, "callback_attempts"), 0);
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(att, "error")));
  assert_int_equal(cJSON_GetObjectItem(att, "http_status")->valueint, 200);
  cJSON *ob = wait_callbacks(b, 3);
  assert_string_equal(h_status(ob), "done"); /* a failed callback never fails the job */
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(ob, "callback_attempts")), 3);
  usleep(300000);
  assert_int_equal(atomic_load(&ok.posts), 1);
  assert_int_equal(atomic_load(&ok.with_prompt), 1);
  assert_int_equal(atomic_load(&bad.posts), 3);
  cJSON_Delete(oa), cJSON_Delete(ob);
  receiver_stop(&ok), receiver_stop(&bad);
}

/* A slow callback receiver holds no worker (this server has one): the next prompt runs and ends while
 * the first one's callback still waits for its answer. */
static void test_slow_callback_holds_no_worker(void **state) {
  (void)state;
  receiver slow = {0};
  slow.delay_ms = 6000;
  receiver_start(&slow, 200);
  char body[512];
  snprintf(body, sizeof body,
           "{\"prompt\": {\"text\": \"cb\", \"steps\": 2, \"w\": 64, \"h\": 64, \"callback\": \"http://127.0.0.1:%d/hook\"}}", slow.port);
  int64_t a = h_create(&S, TOKEN_A, "/prompts", body), b = h_create(&S, TOKEN_A, "/prompts", FAST);
  cJSON *ob = h_wait_end(&S, TOKEN_A, b, 60);
  assert_string_equal(h_status(ob), "done");
  assert_int_equal(atomic_load(&slow.answered), 0);
  cJSON *oa = wait_callbacks(a, 1);
  assert_int_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(oa, "callback_attempts"), 0), "http_status")->valueint,
                   200);
  assert_int_equal(atomic_load(&slow.answered), 1);
  cJSON_Delete(oa), cJSON_Delete(ob);
  receiver_stop(&slow);
}

/* A repeated Idempotency-Key answers the first job: the repeat's uploads are removed at once, not left for
 * ever in DATA/inputs (no job reads them, so no retention sweep would find them). */
static void test_idempotent_uploads_not_kept(void **state) {
  (void)state;
  const int before = input_folders();
  int64_t id[2];
  for (int k = 0; k < 2; k++) {
    CURL *c = curl_easy_init();
    curl_mime *m = img2img_form(c);
    reply r = h_req(&S, "POST", "/prompts", TOKEN_A, NULL, NULL, m, "Idempotency-Key: upload-7");
    curl_mime_free(m);
    curl_easy_cleanup(c);
    assert_int_equal(r.status, k ? 200 : 201);
    cJSON *j = h_json(&r);
    id[k] = (int64_t)cJSON_GetObjectItem(j, "id")->valuedouble;
    cJSON_Delete(j), reply_free(&r);
  }
  assert_true(id[0] == id[1]);
  assert_int_equal(input_folders(), before + 1);
  cJSON *o = h_wait_end(&S, TOKEN_A, id[0], 60);
  if (strcmp(h_status(o), "done")) fail_msg("img2img job: %s", cJSON_Print(o));
  cJSON_Delete(o);
}

static void test_idempotency(void **state) {
  (void)state;
  reply r1 = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", FAST, NULL, "Idempotency-Key: order-42");
  reply r2 = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json", FAST, NULL, "Idempotency-Key: order-42");
  assert_int_equal(r1.status, 201);
  assert_int_equal(r2.status, 200);
  cJSON *a = h_json(&r1), *b = h_json(&r2);
  assert_true(cJSON_GetObjectItem(a, "id")->valuedouble == cJSON_GetObjectItem(b, "id")->valuedouble);
  /* the key is per token: another token's same key is a new job */
  reply r3 = h_req(&S, "POST", "/prompts", TOKEN_B, "application/json", FAST, NULL, "Idempotency-Key: order-42");
  assert_int_equal(r3.status, 201);
  cJSON_Delete(h_wait_end(&S, TOKEN_A, (int64_t)cJSON_GetObjectItem(a, "id")->valuedouble, 60));
  cJSON *c3 = h_json(&r3);
  cJSON_Delete(h_wait_end(&S, TOKEN_B, (int64_t)cJSON_GetObjectItem(c3, "id")->valuedouble, 60));
  cJSON_Delete(a), cJSON_Delete(b), cJSON_Delete(c3);
  reply_free(&r1), reply_free(&r2), reply_free(&r3);
}

static void test_quota(void **state) {
  (void)state;
  /* --max-queued 3: carol's fourth queued job is refused (a slow one holds the worker) */
  int64_t ids[8];
  int n = 0, refused = 0;
  ids[n++] = h_create(&S, TOKEN_C, "/prompts", SLOW);
  cJSON_Delete(h_wait_status(&S, TOKEN_C, ids[0], "running", 60));
  for (int i = 0; i < 5; i++) {
    reply r = h_req(&S, "POST", "/prompts", TOKEN_C, "application/json", FAST, NULL, NULL);
    if (r.status == 429) refused++, expect_error(&r, 429);
    else {
      assert_int_equal(r.status, 201);
      cJSON *j = h_json(&r);
      ids[n++] = (int64_t)cJSON_GetObjectItem(j, "id")->valuedouble;
      cJSON_Delete(j), reply_free(&r);
    }
  }
  assert_int_equal(n, 4);
  assert_int_equal(refused, 2);
  for (int i = n - 1; i >= 0; i--) {
    char p[64];
    snprintf(p, sizeof p, "/prompts/%lld", (long long)ids[i]);
    reply r = h_req(&S, "DELETE", p, TOKEN_C, NULL, NULL, NULL, NULL);
    assert_int_equal(r.status, 200);
    reply_free(&r);
  }
  cJSON_Delete(h_wait_end(&S, TOKEN_C, ids[0], 20));
}

static void test_tunes(void **state) {
  (void)state;
  /* register a LoRA by upload */
  CURL *c = curl_easy_init();
  curl_mime *m = curl_mime_init(c);
  static const char *const kv[][2] = {{"tune[title]", "Jane"}, {"tune[name]", "woman"}, {"tune[token]", "sks"},
                                     {"tune[model_type]", "lora"}, {"tune[branch]", "sd15"}};
  for (size_t i = 0; i < sizeof kv / sizeof *kv; i++) {
    curl_mimepart *p = curl_mime_addpart(m);
    curl_mime_name(p, kv[i][0]), curl_mime_data(p, kv[i][1], CURL_ZERO_TERMINATED);
  }
  char *lora = test_shared_path("golden/tiny/lora_tiny.safetensors");
  curl_mimepart *p = curl_mime_addpart(m);
  curl_mime_name(p, "tune[file]"), curl_mime_filedata(p, lora);
  free(lora);
  reply r = h_req(&S, "POST", "/tunes", TOKEN_A, NULL, NULL, m, NULL);
  curl_mime_free(m), curl_easy_cleanup(c);
  if (r.status != 201) fail_msg("POST /tunes: %ld %s", r.status, r.body);
  cJSON *t = h_json(&r);
  int64_t tid = (int64_t)cJSON_GetObjectItem(t, "id")->valuedouble;
  assert_string_equal(cJSON_GetObjectItem(t, "title")->valuestring, "Jane");
  assert_string_equal(cJSON_GetObjectItem(t, "model_type")->valuestring, "lora");
  cJSON_Delete(t), reply_free(&r);

  /* a file already on the server, inside the models folder only */
  r = h_req(&S, "POST", "/tunes", TOKEN_A, "application/json",
            "{\"tune\": {\"name\": \"man\", \"token\": \"ohwx\", \"file\": \"lora/shared_lora.safetensors\"}}", NULL, NULL);
  assert_int_equal(r.status, 201);
  reply_free(&r);
  r = h_req(&S, "POST", "/tunes", TOKEN_A, "application/json",
            "{\"tune\": {\"name\": \"man\", \"token\": \"ohwx\", \"file\": \"../tokens.txt\"}}", NULL, NULL);
  expect_error(&r, 422);
  r = h_req(&S, "POST", "/tunes", TOKEN_A, "application/json",
            "{\"tune\": {\"name\": \"man\", \"token\": \"ohwx\", \"file\": \"checkpoints/tiny.json\"}}", NULL, NULL);
  expect_error(&r, 422); /* not weights */
  /* a form naming the file as text (not an upload) is the same as JSON naming it */
  c = curl_easy_init();
  m = curl_mime_init(c);
  static const char *const kv2[][2] = {{"name", "man"}, {"token", "ohwx"}, {"file", "/etc/passwd"}};
  for (size_t i = 0; i < sizeof kv2 / sizeof *kv2; i++) {
    curl_mimepart *q = curl_mime_addpart(m);
    curl_mime_name(q, kv2[i][0]), curl_mime_data(q, kv2[i][1], CURL_ZERO_TERMINATED);
  }
  r = h_req(&S, "POST", "/tunes", TOKEN_A, NULL, NULL, m, NULL);
  curl_mime_free(m), curl_easy_cleanup(c);
  expect_error(&r, 422);

  char path[96];
  snprintf(path, sizeof path, "/tunes/%lld", (long long)tid);
  r = h_req(&S, "GET", path, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  r = h_req(&S, "GET", path, TOKEN_B, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  r = h_req(&S, "GET", "/tunes", TOKEN_A, NULL, NULL, NULL, NULL);
  cJSON *l = h_json(&r);
  assert_int_equal(cJSON_GetArraySize(l), 2);
  cJSON_Delete(l), reply_free(&r);
  r = h_req(&S, "GET", "/tunes", TOKEN_B, NULL, NULL, NULL, NULL);
  l = h_json(&r);
  assert_int_equal(cJSON_GetArraySize(l), 0);
  cJSON_Delete(l), reply_free(&r);

  /* a prompt for the tune, naming it in the text */
  char body[256], tpath[96];
  snprintf(body, sizeof body, "{\"prompt\": {\"text\": \"sks woman <lora:%lld:0.7>\", \"steps\": 2, \"w\": 64, \"h\": 64}}", (long long)tid);
  snprintf(tpath, sizeof tpath, "/tunes/%lld/prompts", (long long)tid);
  int64_t id = h_create(&S, TOKEN_A, tpath, body);
  cJSON *o = h_wait_end(&S, TOKEN_A, id, 60);
  if (strcmp(h_status(o), "done")) fail_msg("tune prompt: %s", cJSON_Print(o));
  assert_true(cJSON_GetObjectItem(o, "tune_id")->valuedouble == (double)tid);
  cJSON *loras = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "passes"), 0), "loras");
  assert_int_equal(cJSON_GetArraySize(loras), 1);
  /* named as the owner knows it (its tune), not by the server's path */
  const char *lora_file = cJSON_GetObjectItem(cJSON_GetArrayItem(loras, 0), "file")->valuestring;
  char want[64];
  snprintf(want, sizeof want, "tunes/%lld/", (long long)tid);
  if (strncmp(lora_file, want, strlen(want))) fail_msg("passes[0].loras[0].file = %s, expected %s...", lora_file, want);
  cJSON_Delete(o);
  /* listed under the tune, reachable by the tune's path */
  r = h_req(&S, "GET", tpath, TOKEN_A, NULL, NULL, NULL, NULL);
  l = h_json(&r);
  assert_int_equal(cJSON_GetArraySize(l), 1);
  cJSON_Delete(l), reply_free(&r);
  snprintf(path, sizeof path, "/tunes/%lld/prompts/%lld", (long long)tid, (long long)id);
  r = h_req(&S, "GET", path, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  snprintf(path, sizeof path, "/tunes/%lld/prompts/%lld", (long long)tid + 1000, (long long)id);
  r = h_req(&S, "GET", path, TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  /* bob cannot post to alice's tune, and his <lora:ID> does not reach it: the job fails at the LoRA */
  r = h_req(&S, "POST", tpath, TOKEN_B, "application/json", body, NULL, NULL);
  expect_error(&r, 404);
  int64_t bid = h_create(&S, TOKEN_B, "/prompts", body);
  o = h_wait_end(&S, TOKEN_B, bid, 60);
  assert_string_equal(h_status(o), "failed");
  assert_non_null(strstr(cJSON_GetObjectItem(o, "fail_message")->valuestring, "lora"));
  cJSON_Delete(o);
  /* shared LoRA files in models/lora are for everyone */
  int64_t sid = h_create(&S, TOKEN_B, "/prompts", "{\"prompt\": {\"text\": \"x <lora:shared_lora:0.5>\", \"steps\": 2, \"w\": 64, \"h\": 64}}");
  o = h_wait_end(&S, TOKEN_B, sid, 60);
  assert_string_equal(h_status(o), "done");
  cJSON_Delete(o);

  snprintf(path, sizeof path, "/tunes/%lld", (long long)tid);
  r = h_req(&S, "DELETE", path, TOKEN_B, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
  r = h_req(&S, "DELETE", path, TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  r = h_req(&S, "GET", path, TOKEN_A, NULL, NULL, NULL, NULL);
  expect_error(&r, 404);
}

static void test_image_url_private_refused(void **state) {
  (void)state;
  /* this server was started without --allow-private-urls: the fetch refuses loopback, the job fails saying why */
  int64_t id = h_create(&S, TOKEN_A, "/prompts",
                        "{\"prompt\": {\"text\": \"x\", \"steps\": 2, \"w\": 64, \"h\": 64, \"input_image_url\": \"http://127.0.0.1:9/a.png\"}}");
  cJSON *o = h_wait_end(&S, TOKEN_A, id, 60);
  assert_string_equal(h_status(o), "failed");
  assert_non_null(strstr(cJSON_GetObjectItem(o, "fail_message")->valuestring, "private, loopback"));
  cJSON_Delete(o);
  reply r = h_req(&S, "POST", "/prompts", TOKEN_A, "application/json",
                  "{\"prompt\": {\"text\": \"x\", \"input_image_url\": \"file:///etc/passwd\"}}", NULL, NULL);
  expect_error(&r, 422);
}

/* Binding beyond loopback without any token is refused; `mpass token add` prints a token that works. */
static void test_public_bind_needs_token(void **state) {
  (void)state;
  char cmd[4096], err[2048];
  snprintf(err, sizeof err, "%s/bind.err", S.dir);
  snprintf(cmd, sizeof cmd, "%s/mpass --models %s serve --listen 0.0.0.0:0 --data %s/empty 2>%s", getenv("MPASS_BINARY_DIR"),
           S.models, S.dir, err);
  int st = system(cmd);
  assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
  FILE *f = fopen(err, "r");
  assert_non_null(f);
  char line[1024] = "";
  assert_non_null(fgets(line, sizeof line, f));
  fclose(f);
  assert_non_null(strstr(line, "not a loopback address and no token exists"));
  /* a token made by the CLI, on the running server's database */
  /* on PostgreSQL the token goes to the server's database (a conninfo has spaces: quoted) */
  snprintf(cmd, sizeof cmd, "%s/mpass token add dave --data %s%s%s%s 2>/dev/null", getenv("MPASS_BINARY_DIR"), S.data,
           S.db ? " --db '" : "", S.db ? S.db : "", S.db ? "'" : "");
  FILE *p = popen(cmd, "r");
  char token[128] = "";
  assert_non_null(fgets(token, sizeof token, p));
  assert_int_equal(pclose(p), 0);
  token[strcspn(token, "\n")] = 0;
  assert_int_equal(strlen(token), 43);
  reply r = h_req(&S, "GET", "/prompts", token, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
}

/* --listen [::1]:0 serves on the IPv6 loopback (no token needed) and prints a bracketed URL that works. */
static void test_ipv6_listen(void **state) {
  (void)state;
  server v6 = {.models = S.models, .token_file = S.token_file, .log = S.log, .db = NULL}; /* its own SQLite data */
  v6.data = h_strf("%s/data-ipv6%s", S.dir, NULL);
  h_start(&v6, (const char *const[]){"--listen", "[::1]:0", NULL});
  assert_int_equal(strncmp(v6.url, "http://[::1]:", 13), 0);
  reply r = h_req(&v6, "GET", "/healthz", NULL, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  r = h_req(&v6, "GET", "/prompts", TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  reply_free(&r);
  assert_int_equal(h_stop(&v6, SIGTERM) & 0x7f, 0); /* exited, not killed */
  free(v6.data);
}

static void test_plan_and_metrics(void **state) {
  (void)state;
  reply r = h_req(&S, "POST", "/prompts/plan", TOKEN_A, "application/json",
                  "{\"prompt\": {\"text\": \"a BREAK b BREAK c --frobnicate\", \"steps\": 5}}", NULL, NULL);
  assert_int_equal(r.status, 200);
  cJSON *j = h_json(&r);
  assert_true(cJSON_IsObject(cJSON_GetObjectItem(j, "plan")));
  assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(j, "warnings")) >= 1); /* the unknown flag */
  cJSON_Delete(j), reply_free(&r);
  r = h_req(&S, "POST", "/prompts/plan", TOKEN_A, "application/json", "{\"prompt\": {\"text\": \"a\", \"seed\": -1}}", NULL, NULL);
  expect_error(&r, 422);
  r = h_req(&S, "GET", "/metrics", TOKEN_A, NULL, NULL, NULL, NULL);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "mpass_queue_depth "));
  assert_non_null(strstr(r.body, "mpass_jobs{status=\"done\"}"));
  assert_non_null(strstr(r.body, "mpass_job_duration_seconds_bucket{le=\"+Inf\"}"));
  reply_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_health_and_auth),   cmocka_unit_test(test_create_poll_download),
      cmocka_unit_test(test_text_form_document), cmocka_unit_test(test_multipart_with_input_image),
      cmocka_unit_test(test_idempotent_uploads_not_kept),
      cmocka_unit_test(test_slow_callback_holds_no_worker),
      cmocka_unit_test(test_bad_requests),      cmocka_unit_test(test_isolation),
      cmocka_unit_test(test_list_paging),       cmocka_unit_test(test_cancel),
      cmocka_unit_test(test_events),            cmocka_unit_test(test_callbacks),
      cmocka_unit_test(test_idempotency),       cmocka_unit_test(test_quota),
      cmocka_unit_test(test_tunes),             cmocka_unit_test(test_image_url_private_refused),
      cmocka_unit_test(test_public_bind_needs_token), cmocka_unit_test(test_ipv6_listen),
      cmocka_unit_test(test_plan_and_metrics),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
