/* Request bodies without a socket: JSON and form fields -> the prompt object -> the stored document
 * (which the document parser must accept), the listen address, path matching, and the prompt
 * object's JSON (prompt_json.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mpass/mpass.h"
#include "prompt/document.h"
#include "server/internal.h"
#include "server/prompt_json.h"
#include "server/request.h"
#include "testutil.h"

static void test_json_bodies(void **state) {
  (void)state;
  cJSON *p;
  char msg[256];
  assert_int_equal(ms_prompt_from_json("{\"prompt\": {\"text\": \"a\", \"steps\": 3}}", 37, &p, msg), 0);
  assert_int_equal(cJSON_GetObjectItem(p, "steps")->valueint, 3);
  cJSON_Delete(p);
  assert_int_equal(ms_prompt_from_json("{\"text\": \"bare\"}", 16, &p, msg), 0); /* a bare object */
  cJSON_Delete(p);
  assert_int_equal(ms_prompt_from_json("{\"prompt\": ", 11, &p, msg), 400);
  assert_non_null(strstr(msg, "malformed JSON"));
  assert_int_equal(ms_prompt_from_json("[1,2]", 5, &p, msg), 422);
  assert_int_equal(ms_prompt_from_json("{\"prompt\": 3}", 13, &p, msg), 422);
  assert_int_equal(ms_prompt_from_json(NULL, 0, &p, msg), 400);
}

static ms_form form_of(const char *const kv[][2], int n) {
  ms_form f = {0};
  f.f = calloc((size_t)n, sizeof *f.f);
  f.n = f.cap = n;
  for (int i = 0; i < n; i++) {
    f.f[i].name = strdup(kv[i][0]);
    f.f[i].value = strdup(kv[i][1]);
    f.f[i].len = strlen(kv[i][1]);
  }
  return f;
}

static void test_form_fields(void **state) {
  (void)state;
  static const char *const kv[][2] = {{"prompt[text]", "a dog"}, {"prompt[steps]", "4"}, {"w", "64"}, {"tune[title]", "x"},
                                     {"prompt[input_image]", ""}};
  ms_form f = form_of(kv, 5);
  cJSON *p;
  char msg[256];
  assert_int_equal(ms_prompt_from_form(&f, &p, msg), 0);
  assert_string_equal(cJSON_GetObjectItem(p, "text")->valuestring, "a dog");
  assert_string_equal(cJSON_GetObjectItem(p, "steps")->valuestring, "4"); /* strings: the parser converts */
  assert_string_equal(cJSON_GetObjectItem(p, "w")->valuestring, "64");
  assert_null(cJSON_GetObjectItem(p, "title"));       /* another form's field */
  assert_null(cJSON_GetObjectItem(p, "input_image")); /* file fields are not text */
  /* the document it makes parses as the JSON form */
  ms_document d;
  assert_int_equal(ms_document_build(p, NULL, NULL, &d, msg), 0);
  assert_int_equal(d.is_json, 1);
  mpass_job *job;
  assert_ok(mpass_job_parse(d.document, d.len, d.is_json, &job));
  mpass_job_free(job);
  ms_document_free(&d);
  cJSON_Delete(p);
  assert_non_null(ms_form_get_prompt(&f, "text"));
  assert_non_null(ms_form_get_prompt(&f, "w"));
  ms_form_free(&f);
  static const char *const dup[][2] = {{"prompt[text]", "a"}, {"text", "b"}};
  f = form_of(dup, 2);
  assert_int_equal(ms_prompt_from_form(&f, &p, msg), 400);
  ms_form_free(&f);
  static const char *const path[][2] = {{"prompt[text]", "a"}, {"prompt[mask_image]", "/etc/passwd"}};
  f = form_of(path, 2);
  assert_int_equal(ms_prompt_from_form(&f, &p, msg), 422); /* an image path as text is not an upload */
  ms_form_free(&f);
}

static void test_documents(void **state) {
  (void)state;
  char msg[256];
  ms_document d;
  /* "text" alone: the text form, so parameter lines inside it count */
  cJSON *p = cJSON_Parse("{\"text\": \"a cat\\nsteps=3\", \"callback\": \"http://127.0.0.1:9/x\"}");
  assert_int_equal(ms_document_build(p, NULL, NULL, &d, msg), 0);
  assert_int_equal(d.is_json, 0);
  assert_string_equal(d.document, "a cat\nsteps=3");
  assert_string_equal(d.callback, "http://127.0.0.1:9/x");
  assert_ok(ms_document_pin_seed(&d, 1234));
  mp_job *job;
  assert_ok(mp_job_parse_text(d.document, d.len, &job));
  assert_int_equal(job->steps, 3);
  assert_int_equal(job->seed, 1234);
  assert_false(job->seed_random);
  mp_job_free(job);
  ms_document_free(&d);
  cJSON_Delete(p);
  /* split fields: the JSON form; uploads named relative to the inputs folder; the seed pinned */
  p = cJSON_Parse("{\"text\": \"a cat\", \"steps\": 2}");
  assert_int_equal(ms_document_build(p, "input_image.png", NULL, &d, msg), 0);
  assert_int_equal(d.is_json, 1);
  assert_ok(ms_document_pin_seed(&d, 77));
  assert_ok(mp_job_parse_json(d.document, d.len, &job));
  assert_string_equal(job->input_image, "input_image.png");
  assert_int_equal(job->seed, 77);
  mp_job_free(job);
  ms_document_free(&d);
  cJSON_Delete(p);
  /* refused: paths on the server, odd callbacks */
  static const char *const bad[] = {"{\"text\": \"x\", \"input_image\": \"/etc/passwd\"}", "{\"text\": \"x\", \"mask_image\": \"m.png\"}",
                                    "{\"text\": \"x\", \"callback\": \"file:///etc/passwd\"}", "{\"text\": \"x\", \"callback\": 3}"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    p = cJSON_Parse(bad[i]);
    assert_int_equal(ms_document_build(p, NULL, NULL, &d, msg), 422);
    cJSON_Delete(p);
  }
}

static void test_listen_and_paths(void **state) {
  (void)state;
  char host[64];
  int port;
  assert_ok(ms_parse_listen("127.0.0.1:8080", host, &port));
  assert_string_equal(host, "127.0.0.1");
  assert_int_equal(port, 8080);
  assert_ok(ms_parse_listen("localhost:0", host, &port));
  assert_true(ms_host_is_loopback(host));
  assert_ok(ms_parse_listen("0.0.0.0:80", host, &port));
  assert_false(ms_host_is_loopback(host));
  assert_err_contains(ms_parse_listen("8080", host, &port), "HOST:PORT");
  assert_err_contains(ms_parse_listen("127.0.0.1:99999", host, &port), "port");
  assert_err_contains(ms_parse_listen("exa mple:1", host, &port), "IPv4");
  assert_err_contains(ms_parse_listen("1.2.3:1", host, &port), "IPv4");
  assert_err_contains(ms_parse_listen("::1:8080", host, &port), "IPv4"); /* IPv6 needs its brackets */
  assert_ok(ms_parse_listen("[::1]:8080", host, &port));
  assert_string_equal(host, "::1");
  assert_int_equal(port, 8080);
  assert_true(ms_host_is_ipv6(host) && ms_host_is_loopback(host));
  assert_ok(ms_parse_listen("[::]:0", host, &port));
  assert_true(ms_host_is_ipv6(host) && !ms_host_is_loopback(host));
  assert_ok(ms_parse_listen("[::ffff:127.0.0.1]:1", host, &port));
  assert_true(ms_host_is_loopback(host));
  assert_ok(ms_parse_listen("[2001:db8::7]:443", host, &port));
  assert_false(ms_host_is_loopback(host));
  assert_false(ms_host_is_ipv6("127.0.0.1"));
  assert_err_contains(ms_parse_listen("[::1]8080", host, &port), "[IPV6]:PORT");
  assert_err_contains(ms_parse_listen("[::1", host, &port), "[IPV6]:PORT");
  assert_err_contains(ms_parse_listen("[]:1", host, &port), "[IPV6]:PORT");
  assert_err_contains(ms_parse_listen("[fe80::1%eth0]:1", host, &port), "IPv6"); /* no zone ids */
  assert_err_contains(ms_parse_listen("[127.0.0.1]:1", host, &port), "IPv6");
  assert_err_contains(ms_parse_listen("[::1]:", host, &port), "port");
  int64_t ids[4];
  const char *tail;
  assert_true(ms_path_match("/tunes/:id/prompts/:id", "/tunes/12/prompts/345", ids, &tail));
  assert_int_equal(ids[0], 12);
  assert_int_equal(ids[1], 345);
  assert_true(ms_path_match("/prompts", "/prompts/", ids, &tail));
  assert_false(ms_path_match("/prompts/:id", "/prompts/0", ids, &tail));
  assert_false(ms_path_match("/prompts/:id", "/prompts/-1", ids, &tail));
  assert_false(ms_path_match("/prompts/:id", "/prompts/99999999999999999999999", ids, &tail));
  assert_false(ms_path_match("/prompts/:id", "/prompts/12x", ids, &tail));
  assert_true(ms_path_match("/images/:id/*", "/images/3/0.png", ids, &tail));
  assert_string_equal(tail, "0.png");
  assert_false(ms_path_match("/images/:id/*", "/images/3/../x", ids, &tail));
  assert_false(ms_path_match("/images/:id/*", "/images/3/.hidden", ids, &tail));
  assert_false(ms_path_match("/images/:id/*", "/images/3/a/b.png", ids, &tail));
}

static void test_prompt_object(void **state) {
  (void)state;
  mp_job *job;
  const char *doc = "a cat --frobnicate\nsteps=5\nw=64\nh=128\nseed=9\ncolor_grading=Ektar";
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  cJSON *params = ms_prompt_params(job);
  mp_job_free(job);
  char *pj = cJSON_PrintUnformatted(params);
  cJSON_Delete(params);
  /* a finished job with a result.json in DATA/jobs/<id>/ */
  char *data = test_tmpdir(), p[1024];
  snprintf(p, sizeof p, "%s/jobs", data), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/jobs/7", data), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/jobs/7/result.json", data);
  const char *res = "{\"images\": [{\"file\": \"0.png\"}], \"passes\": [{\"pass\": \"scene\"}], \"warnings\": [\"w1\"], \"skipped\": []}";
  test_write_file(p, res, strlen(res));
  ms_job j = {.id = 7, .owner = "alice", .params_json = pj, .status = MS_DONE, .attempts = 1,
              .created_at = "2026-01-01T00:00:00.000Z", .callbacks_json = "[]"};
  cJSON *o = ms_prompt_object(&j, "http://h:1", data, NULL);
  assert_int_equal(cJSON_GetObjectItem(o, "id")->valueint, 7);
  assert_int_equal(cJSON_GetObjectItem(o, "steps")->valueint, 5);
  assert_int_equal(cJSON_GetObjectItem(o, "h")->valueint, 128);
  assert_int_equal(cJSON_GetObjectItem(o, "seed")->valueint, 9);
  assert_string_equal(cJSON_GetObjectItem(o, "color_grading")->valuestring, "Ektar");
  assert_string_equal(cJSON_GetObjectItem(o, "status")->valuestring, "done");
  assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "images"), 0)->valuestring, "http://h:1/images/7/0.png");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "passes")), 1);
  assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "warnings"), 0)->valuestring, "w1");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "failed_at")));
  cJSON_Delete(o);
  /* queued: the parser's warnings (the unknown flag), no images */
  j.status = MS_QUEUED;
  o = ms_prompt_object(&j, "http://h:1", data, NULL);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "images")), 0);
  assert_non_null(strstr(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "warnings"), 0)->valuestring, "frobnicate"));
  cJSON_Delete(o);
  test_remove_tree(data);
  free(pj), free(data);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_json_bodies), cmocka_unit_test(test_form_fields),
                                     cmocka_unit_test(test_documents), cmocka_unit_test(test_listen_and_paths),
                                     cmocka_unit_test(test_prompt_object)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
