/* The prompt object as clients see it (src/server/prompt_json.c): server paths in result.json become
 * names the client knows (its tunes, the models folder, a file name), in the prompt object and in the
 * served result.json, while the user's own prompt text is left alone; an expired job keeps its fields
 * with no images and says when its files were removed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/internal.h"
#include "testutil.h"

static void expect_path(const ms_path_view *v, const char *path, const char *want) {
  char *got = ms_public_path(path, v);
  assert_non_null(got);
  if (strcmp(got, want)) fail_msg("ms_public_path(%s) = '%s', expected '%s'", path, got, want);
  free(got);
}

static void expect_text(const ms_path_view *v, const char *text, const char *want) {
  char *got = ms_public_text(text, v);
  assert_non_null(got);
  if (strcmp(got, want)) fail_msg("ms_public_text(%s) = '%s', expected '%s'", text, got, want);
  free(got);
}

static void test_paths(void **state) {
  (void)state;
  ms_path_view v = {.owner = "alice", .data_dir = "/srv/data", .models_dir = "/srv/models"};
  /* the owner's tunes, here or in another machine's DATA (a worker) */
  expect_path(&v, "/srv/data/owners/alice/tunes/12/12.safetensors", "tunes/12/12.safetensors");
  expect_path(&v, "/var/lib/w1/data/owners/alice/tunes/12/12.safetensors", "tunes/12/12.safetensors");
  /* shared files: relative to the models folder, as a tune body names them */
  expect_path(&v, "/srv/models/lora/style.safetensors", "lora/style.safetensors");
  expect_path(&v, "/srv/models/checkpoints/base.safetensors", "checkpoints/base.safetensors");
  expect_path(&v, "/srv/data/inputs/ab12/input_image.png", "inputs/ab12/input_image.png");
  /* elsewhere (a --model outside the models folder, another machine's models): the file name */
  expect_path(&v, "/opt/ckpt/base.safetensors", "base.safetensors");
  expect_path(&v, "/srv/models2/lora/x.safetensors", "x.safetensors"); /* a prefix is not a parent folder */
  /* relative: unchanged */
  expect_path(&v, "0.png", "0.png");
  expect_path(&v, "", "");
  /* no models folder known (NULL): still no absolute path */
  ms_path_view bare = {.owner = NULL, .data_dir = NULL, .models_dir = NULL};
  expect_path(&bare, "/a/b/c.pt", "c.pt");

  expect_text(&v, "cannot open /srv/models/lora/x.safetensors: No such file or directory",
              "cannot open lora/x.safetensors: No such file or directory");
  expect_text(&v, "<lora:12>: /srv/data/owners/alice/tunes/12/12.safetensors is missing", "<lora:12>: tunes/12/12.safetensors is missing");
  expect_text(&v, "'/opt/secret/dir/model.ckpt' (read error)", "'model.ckpt' (read error)");
  expect_text(&v, "(/srv/models/vision/face.onnx)", "(vision/face.onnx)");
  expect_text(&v, "a cat / a dog and/or 1/2", "a cat / a dog and/or 1/2"); /* not paths */
  expect_text(&v, "/srv/models/lora/x.safetensors", "lora/x.safetensors");
  expect_text(&v, "", "");
}

static char *write_result(const char *data, int id, const char *json) {
  char p[2048];
  snprintf(p, sizeof p, "%s/jobs", data), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/jobs/%d", data, id), mkdir(p, 0755);
  snprintf(p, sizeof p, "%s/jobs/%d/result.json", data, id);
  test_write_file(p, json, strlen(json));
  char *result_path = strdup(p);
  snprintf(p, sizeof p, "%s/jobs/%d/passes-0.png", data, id);
  test_write_file(p, "png", 3);
  return result_path;
}

/* result.json as the library writes it: absolute paths of the machine that ran the job */
static const char *RESULT_FMT =
    "{\"prompt\": {\"text\": \"/imagine a cat\", \"model\": \"%s/checkpoints/tiny.safetensors\","
    "  \"models\": {\"scene\": {\"path\": \"%s/checkpoints/tiny.safetensors\", \"family\": \"sd15\"}},"
    "  \"controlnet\": {\"file\": \"%s/controlnet/canny.safetensors\", \"control_image\": \"control.png\"}},"
    " \"images\": [{\"file\": \"0.png\", \"seed\": 1}],"
    " \"passes\": [{\"image\": 0, \"pass\": \"scene\", \"prompt\": \"/imagine a cat\", \"model\": \"tiny\","
    "   \"loras\": [{\"id\": \"12\", \"weight\": 0.7, \"file\": \"%s/owners/alice/tunes/12/12.safetensors\", \"type\": \"lora\"},"
    "              {\"id\": \"style\", \"weight\": 0.5, \"file\": \"%s/lora/style.safetensors\", \"type\": \"lora\"}]}],"
    " \"skipped\": [{\"step\": \"face_swap\", \"reason\": \"no model at %s/vision/swap.onnx\"}],"
    " \"warnings\": [\"cannot read %s/embeddings/x.pt: gone\"]}";

static void test_prompt_object_paths(void **state) {
  (void)state;
  char *data = test_tmpdir(), *models = test_tmpdir();
  char json[8192];
  snprintf(json, sizeof json, RESULT_FMT, models, models, models, data, models, models, models);
  char *rp = write_result(data, 7, json);
  ms_job j = {.id = 7, .owner = "alice", .params_json = "{\"text\": \"/imagine a cat\"}", .status = MS_DONE, .attempts = 1,
              .created_at = "2026-01-01T00:00:00.000Z", .callbacks_json = "[]",
              .fail_message = NULL};
  cJSON *o = ms_prompt_object(&j, "http://h:1", data, models);
  char *text = cJSON_PrintUnformatted(o);
  /* nothing of the server's folders is left */
  if (strstr(text, data) || strstr(text, models)) fail_msg("server paths in the prompt object: %s", text);
  cJSON *pass = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "passes"), 0);
  cJSON *loras = cJSON_GetObjectItem(pass, "loras");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(loras, 0), "file")->valuestring, "tunes/12/12.safetensors");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(loras, 0), "id")->valuestring, "12");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(loras, 1), "file")->valuestring, "lora/style.safetensors");
  assert_string_equal(cJSON_GetObjectItem(pass, "prompt")->valuestring, "/imagine a cat"); /* the user's text */
  assert_string_equal(cJSON_GetObjectItem(o, "text")->valuestring, "/imagine a cat");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "skipped"), 0), "reason")->valuestring,
                      "no model at vision/swap.onnx");
  assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "warnings"), 0)->valuestring, "cannot read embeddings/x.pt: gone");
  assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "images"), 0)->valuestring, "http://h:1/images/7/0.png");
  assert_true(cJSON_IsNull(cJSON_GetObjectItem(o, "expired_at")));
  free(text);
  cJSON_Delete(o);

  /* the served result.json: every path translated, the file on disk untouched (the CLI's) */
  cJSON *res = ms_result_public(&j, data, models);
  assert_non_null(res);
  text = cJSON_PrintUnformatted(res);
  if (strstr(text, data) || strstr(text, models)) fail_msg("server paths in the served result.json: %s", text);
  cJSON *p = cJSON_GetObjectItem(res, "prompt");
  assert_string_equal(cJSON_GetObjectItem(p, "model")->valuestring, "checkpoints/tiny.safetensors");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "models"), "scene"), "path")->valuestring,
                      "checkpoints/tiny.safetensors");
  assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(p, "controlnet"), "file")->valuestring, "controlnet/canny.safetensors");
  assert_string_equal(cJSON_GetObjectItem(p, "text")->valuestring, "/imagine a cat");
  free(text);
  cJSON_Delete(res);
  FILE *f = fopen(rp, "rb");
  char disk[8192];
  size_t n = fread(disk, 1, sizeof disk - 1, f);
  fclose(f);
  disk[n] = 0;
  assert_string_equal(disk, json);

  /* a failed job's message names no server folder either */
  j.status = MS_FAILED;
  char msg[2048];
  snprintf(msg, sizeof msg, "<lora:12:0.7>: cannot open %s/owners/alice/tunes/12/12.safetensors: damaged", data);
  j.fail_message = msg;
  o = ms_prompt_object(&j, "http://h:1", data, models);
  assert_string_equal(cJSON_GetObjectItem(o, "fail_message")->valuestring, "<lora:12:0.7>: cannot open tunes/12/12.safetensors: damaged");
  cJSON_Delete(o);
  test_remove_tree(data), test_remove_tree(models);
  free(rp), free(data), free(models);
}

static void test_expired_prompt_object(void **state) {
  (void)state;
  char *data = test_tmpdir();
  /* even with result.json still there (a sweep in progress), an expired job lists no outputs */
  char *rp = write_result(data, 9, "{\"images\": [{\"file\": \"0.png\"}], \"passes\": [{\"pass\": \"scene\"}], \"warnings\": [], \"skipped\": []}");
  ms_job j = {.id = 9, .owner = "alice", .params_json = "{\"text\": \"a cat\", \"steps\": 5, \"warnings\": [\"w0\"]}", .status = MS_DONE,
              .attempts = 1, .created_at = "2026-01-01T00:00:00.000Z", .finished_at = "2026-01-01T00:01:00.000Z",
              .callbacks_json = "[]", .expired_at = "2026-02-01T00:00:00.000Z"};
  cJSON *o = ms_prompt_object(&j, "http://h:1", data, NULL);
  assert_string_equal(cJSON_GetObjectItem(o, "status")->valuestring, "done");
  assert_string_equal(cJSON_GetObjectItem(o, "expired_at")->valuestring, "2026-02-01T00:00:00.000Z");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "images")), 0);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "contact_sheets")), 0);
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "passes")), 0);
  /* the parameters and the history stay */
  assert_string_equal(cJSON_GetObjectItem(o, "text")->valuestring, "a cat");
  assert_int_equal(cJSON_GetObjectItem(o, "steps")->valueint, 5);
  assert_string_equal(cJSON_GetObjectItem(o, "finished_at")->valuestring, "2026-01-01T00:01:00.000Z");
  assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "warnings"), 0)->valuestring, "w0");
  assert_int_equal(cJSON_GetObjectItem(o, "progress")->valueint, 1);
  cJSON_Delete(o);
  test_remove_tree(data);
  free(rp), free(data);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_paths), cmocka_unit_test(test_prompt_object_paths),
                                     cmocka_unit_test(test_expired_prompt_object)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
