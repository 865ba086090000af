/* The API tests' harness: start the real `mpass serve` binary on a free loopback port with the tiny
 * model, talk HTTP with libcurl, stop it. Included by tests/server/test_api*.c (static functions, so
 * each test program has its own copy and the CMake glob needs no support library for libcurl). */
#ifndef MP_TEST_SERVER_HARNESS_H
#define MP_TEST_SERVER_HARNESS_H

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "testutil.h"
#include "file_host.h"

typedef struct {
  pid_t pid;
  char url[128];
  char *dir, *models, *data, *token_file, *log;
  char *db; /* --db for the server; NULL: its SQLite default */
} server;

static const char *TOKEN_A = "alice-token-0123456789abcdef";
static const char *TOKEN_B = "bob-token-0123456789abcdef";
static const char *TOKEN_C = "carol-token-0123456789abcdef";

static void h_copy(const char *from, const char *to) {
  FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
  if (!a || !b) fail_msg("copy %s -> %s failed", from, to);
  char buf[65536];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, a)) > 0) assert_int_equal(fwrite(buf, 1, n, b), n);
  fclose(a), assert_int_equal(fclose(b), 0);
}

static char *h_strf(const char *fmt, const char *a, const char *b) {
  size_t n = strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 1;
  char *s = malloc(n);
  snprintf(s, n, fmt, a, b ? b : "");
  return s;
}

/* MPASS_TEST_STORE=postgres runs the suite on the PostgreSQL store: MPASS_TEST_PG is the conninfo of
 * a throwaway server (scripts/test-pg.sh, a CTest fixture) and each call makes a fresh database in it.
 * Returns the conninfo of that database (caller frees), or NULL on the SQLite store. Without a
 * PostgreSQL install the program exits 77 (CTest: skipped), except under CI=true where it fails. */
static char *h_test_db(void) {
  const char *store = getenv("MPASS_TEST_STORE");
  if (!store || strcmp(store, "postgres")) return NULL;
  const char *base = getenv("MPASS_TEST_PG");
  bool ci = getenv("CI") && !strcmp(getenv("CI"), "true");
  PGconn *c = base && *base ? PQconnectdb(base) : NULL;
  if (!c || PQstatus(c) != CONNECTION_OK) {
    if (!ci && access("/usr/lib/postgresql", F_OK) != 0) {
      fprintf(stderr, "skipped: PostgreSQL is not installed (apt-get install postgresql)\n");
      PQfinish(c);
      exit(77);
    }
    fail_msg("MPASS_TEST_PG='%s': cannot connect: %s", base ? base : "", c ? PQerrorMessage(c) : "not set");
  }
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  char name[96], sql[160];
  snprintf(name, sizeof name, "mpass_test_%d_%ld_%ld", (int)getpid(), (long)ts.tv_sec, ts.tv_nsec);
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) fail_msg("%s: %s", sql, PQerrorMessage(c));
  PQclear(r), PQfinish(c);
  size_t n = strlen(base) + strlen(name) + 16;
  char *conninfo = malloc(n);
  snprintf(conninfo, n, "%s dbname=%s", base, name); /* a later keyword overrides an earlier one */
  return conninfo;
}

/* A models folder with the tiny checkpoint (+ its config), the CLIP vocabulary and one LoRA file. */
static void h_prepare(server *s) {
  memset(s, 0, sizeof *s);
  s->dir = test_tmpdir();
  s->models = h_strf("%s/models%s", s->dir, NULL);
  s->data = h_strf("%s/data%s", s->dir, NULL);
  mkdir(s->models, 0755);
  char p[2048];
  snprintf(p, sizeof p, "%s/checkpoints", s->models), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/lora", s->models), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/clip", s->models), mkdir(p, 0755);
  static const char *const files[][2] = {{"golden/tiny/tiny.safetensors", "checkpoints/tiny.safetensors"},
                                        {"golden/tiny/tiny.json", "checkpoints/tiny.json"},
                                        {"golden/tiny/lora_tiny.safetensors", "lora/shared_lora.safetensors"},
                                        {"data/clip/bpe_simple_vocab_16e6.txt.gz", "clip/bpe_simple_vocab_16e6.txt.gz"}};
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char *src = test_shared_path(files[i][0]);
    snprintf(p, sizeof p, "%s/%s", s->models, files[i][1]);
    h_copy(src, p);
    free(src);
  }
  s->token_file = h_strf("%s/tokens.txt%s", s->dir, NULL);
  FILE *f = fopen(s->token_file, "w");
  fprintf(f, "# NAME TOKEN\nalice %s\nbob %s\ncarol %s\n", TOKEN_A, TOKEN_B, TOKEN_C);
  fclose(f);
  s->log = h_strf("%s/server.log%s", s->dir, NULL);
  s->db = h_test_db();
}

/* Read one HTTP request from a connected socket into buf (NUL-terminated): the headers, then
 * Content-Length bytes of body. Returns its length. For the tests' loopback callback receivers. */
static inline size_t h_read_request(int c, char *buf, size_t cap) {
  size_t n = 0;
  long want = -1;
  buf[0] = 0;
  for (;;) {
    ssize_t got = recv(c, buf + n, cap - 1 - n, 0);
    if (got <= 0) break;
    n += (size_t)got;
    buf[n] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (end && want < 0) {
      char *cl = strcasestr(buf, "Content-Length:");
      want = (long)(end + 4 - buf) + (cl ? atol(cl + 15) : 0);
    }
    if ((want >= 0 && (long)n >= want) || n + 1 >= cap) break;
  }
  return n;
}

/* In a forked child: die with the test. A failed assertion ends a test without its h_free, and a
 * crash ends the whole test program; either way no server or worker is left running. */
static void h_die_with_parent(pid_t parent) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127); /* the parent was already gone */
}

/* Start the binary; returns once it printed its URL (fails the test after 10 s). */
static void h_start(server *s, const char *const *extra) {
  const char *bin_dir = getenv("MPASS_BINARY_DIR");
  if (!bin_dir) fail_msg("MPASS_BINARY_DIR is not set (CTest sets it)");
  char bin[1024];
  snprintf(bin, sizeof bin, "%s/mpass", bin_dir);
  int out[2];
  assert_int_equal(pipe(out), 0);
  const pid_t parent = getpid();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    h_die_with_parent(parent);
    dup2(out[1], 1);
    int log = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (log >= 0) dup2(log, 2);
    close(out[0]), close(out[1]);
    char *argv[32];
    int n = 0;
    argv[n++] = bin, argv[n++] = "--threads", argv[n++] = "2", argv[n++] = "--models", argv[n++] = s->models;
    argv[n++] = "serve", argv[n++] = "--listen", argv[n++] = "127.0.0.1:0", argv[n++] = "--data", argv[n++] = s->data;
    argv[n++] = "--token-file", argv[n++] = s->token_file;
    if (s->db) argv[n++] = "--db", argv[n++] = s->db;
    for (int i = 0; extra && extra[i] && n < 31; i++) argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    execv(bin, argv);
    _exit(127);
  }
  close(out[1]);
  s->pid = pid;
  char line[256] = "";
  size_t n = 0;
  time_t t0 = time(NULL);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  while (time(NULL) - t0 < 10 && !strchr(line, '\n')) {
    ssize_t got = read(out[0], line + n, sizeof line - 1 - n);
    if (got > 0) n += (size_t)got, line[n] = 0;
    else if (got == 0) break;
    else usleep(10000);
  }
  close(out[0]);
  const char *u = strstr(line, "http://");
  if (!u) fail_msg("mpass serve did not print its URL (got '%s'); see %s", line, s->log);
  snprintf(s->url, sizeof s->url, "%.*s", (int)strcspn(u, "\n"), u);
}

static int h_stop(server *s, int sig) {
  if (!s->pid) return -1;
  kill(s->pid, sig);
  int st = 0;
  waitpid(s->pid, &st, 0);
  s->pid = 0;
  return st;
}

static void h_free(server *s) {
  if (s->pid) h_stop(s, SIGKILL);
  if (s->dir) test_remove_tree(s->dir); /* the test's models, DATA and log (a failed test keeps them: it ends before) */
  free(s->dir), free(s->models), free(s->data), free(s->token_file), free(s->log), free(s->db);
}

/* ---- HTTP */

typedef struct {
  long status;
  char *body;
  size_t len;
  char etag[128];
} reply;

static size_t h_write(char *p, size_t sz, size_t n, void *u) {
  reply *r = u;
  char *g = realloc(r->body, r->len + sz * n + 1);
  if (!g) return 0;
  memcpy(g + r->len, p, sz * n);
  r->body = g, r->len += sz * n;
  g[r->len] = 0;
  return sz * n;
}

static size_t h_header(char *p, size_t sz, size_t n, void *u) {
  reply *r = u;
  if (sz * n > 6 && !strncasecmp(p, "ETag: ", 6)) snprintf(r->etag, sizeof r->etag, "%.*s", (int)strcspn(p + 6, "\r\n"), p + 6);
  return sz * n;
}

static void reply_free(reply *r) {
  free(r->body);
  memset(r, 0, sizeof *r);
}

/* One request. token NULL: no Authorization. body NULL: none. mime: multipart (body ignored). */
static reply h_req(const server *s, const char *method, const char *path, const char *token, const char *content_type,
                   const char *body, curl_mime *mime, const char *extra_header) {
  reply r = {0};
  CURL *c = curl_easy_init();
  char url[1024], auth[256], ct[256];
  snprintf(url, sizeof url, "%s%s", strncmp(path, "http", 4) ? s->url : "", path);
  struct curl_slist *h = NULL;
  if (token) snprintf(auth, sizeof auth, "Authorization: Bearer %s", token), h = curl_slist_append(h, auth);
  if (content_type) snprintf(ct, sizeof ct, "Content-Type: %s", content_type), h = curl_slist_append(h, ct);
  if (extra_header) h = curl_slist_append(h, extra_header);
  h = curl_slist_append(h, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, h_write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, h_header);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
  if (mime) curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
  else if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body), curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
  CURLcode rc = curl_easy_perform(c);
  if (rc != CURLE_OK) fail_msg("%s %s: %s", method, url, curl_easy_strerror(rc));
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  if (!r.body) r.body = calloc(1, 1);
  return r;
}

static cJSON *h_json(const reply *r) {
  cJSON *j = cJSON_Parse(r->body);
  if (!j) fail_msg("not JSON (HTTP %ld): %.300s", r->status, r->body);
  return j;
}

/* POST a JSON create body; returns the new id (fails unless 201). */
static int64_t h_create(const server *s, const char *token, const char *path, const char *body) {
  reply r = h_req(s, "POST", path, token, "application/json", body, NULL, NULL);
  if (r.status != 201) fail_msg("POST %s: HTTP %ld %s", path, r.status, r.body);
  cJSON *j = h_json(&r);
  int64_t id = (int64_t)cJSON_GetObjectItem(j, "id")->valuedouble;
  cJSON_Delete(j), reply_free(&r);
  return id;
}

/* The prompt object (caller frees). */
static cJSON *h_get_prompt(const server *s, const char *token, int64_t id) {
  char p[64];
  snprintf(p, sizeof p, "/prompts/%lld", (long long)id);
  reply r = h_req(s, "GET", p, token, NULL, NULL, NULL, NULL);
  if (r.status != 200) fail_msg("GET %s: HTTP %ld %s", p, r.status, r.body);
  cJSON *j = h_json(&r);
  reply_free(&r);
  return j;
}

static const char *h_status(const cJSON *o) { return cJSON_GetObjectItem(o, "status")->valuestring; }

/* Poll until the job leaves queued/running (fails after `seconds`). Returns the prompt object. */
static cJSON *h_wait_end(const server *s, const char *token, int64_t id, int seconds) {
  for (int i = 0; i < seconds * 20; i++) {
    cJSON *o = h_get_prompt(s, token, id);
    const char *st = h_status(o);
    if (strcmp(st, "queued") && strcmp(st, "running")) return o;
    cJSON_Delete(o);
    usleep(50000);
  }
  fail_msg("prompt %lld did not finish in %d s", (long long)id, seconds);
  return NULL;
}

static cJSON *h_wait_status(const server *s, const char *token, int64_t id, const char *want, int seconds) {
  for (int i = 0; i < seconds * 50; i++) {
    cJSON *o = h_get_prompt(s, token, id);
    if (!strcmp(h_status(o), want)) return o;
    cJSON_Delete(o);
    usleep(20000);
  }
  fail_msg("prompt %lld did not reach %s in %d s", (long long)id, want, seconds);
  return NULL;
}

#endif
