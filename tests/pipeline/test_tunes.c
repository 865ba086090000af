/* Tunes and the models folder: registering (checks, copy, atomic appearance), reading tune.json
 * strictly, listing past broken entries, and resolving <lora:…> / <embedding> names. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/weights.h"
#include "pipeline/params.h"
#include "pipeline/tunes.h"
#include "testutil.h"

static char *join(const char *a, const char *b) {
  char *p = malloc(strlen(a) + strlen(b) + 2);
  sprintf(p, "%s/%s", a, b);
  return p;
}

static bool exists(const char *dir, const char *rel) {
  char *p = join(dir, rel);
  bool ok = access(p, F_OK) == 0;
  free(p);
  return ok;
}

/* A small safetensors file with the given tensor names (2x2 f32 each). */
static void write_weights(const char *path, const char *const *names, size_t n) {
  mp_tensor *t = calloc(n, sizeof *t);
  for (size_t i = 0; i < n; i++) assert_ok(mp_tensor_alloc(&t[i], MP_F32, 2, (int64_t[]){2, 2}));
  assert_ok(mp_safetensors_write(path, n, names, t, NULL));
  for (size_t i = 0; i < n; i++) mp_tensor_free(&t[i]);
  free(t);
}

static const char *const lora_keys[] = {
    "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
};

static void test_ids(void **state) {
  (void)state;
  assert_ok(mp_tune_check_id("753945"));
  assert_ok(mp_tune_check_id("jane_doe-v2.1"));
  assert_err_contains(mp_tune_check_id(""), "empty");
  assert_err_contains(mp_tune_check_id("../etc"), "starts with '.'");
  assert_err_contains(mp_tune_check_id("a/b"), "contains '/'");
  assert_err_contains(mp_tune_check_id("a\\b"), "contains");
  assert_err_contains(mp_tune_check_id("x y"), "contains ' '");
  assert_err_contains(mp_tune_check_id("01234567890123456789012345678901234567890123456789012345678901234"), "64");
  mp_tune_type t;
  assert_ok(mp_tune_type_parse("checkpoint", &t));
  assert_int_equal(t, MP_TUNE_CHECKPOINT);
  assert_err_contains(mp_tune_type_parse("lycoris", &t), "expected 'lora' or 'checkpoint'");
}

static void test_add_load_list_remove_lora(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), *models = join(tmp, "models"), *src = join(tmp, "jane.safetensors");
  write_weights(src, lora_keys, 3);
  mp_tune_spec spec = {.id = "753945", .name = "woman", .token = "sks", .type = MP_TUNE_LORA};
  mp_tune t;
  assert_ok(mp_tune_add(models, &spec, src, &t));
  assert_string_equal(t.id, "753945");
  assert_string_equal(t.title, "sks woman");
  assert_string_equal(t.family, "sd15");
  assert_int_equal(t.type, MP_TUNE_LORA);
  assert_true(exists(models, "tunes/753945/tune.json"));
  assert_true(exists(models, "tunes/753945/753945.safetensors"));
  char *want = join(models, "tunes/753945/753945.safetensors");
  assert_string_equal(t.file, want);
  char hex[65];
  assert_ok(mp_file_sha256(src, hex));
  assert_string_equal(t.sha256, hex);
  assert_non_null(t.created_at);
  assert_true(mp_tune_exists(models, "753945"));
  assert_false(mp_tune_exists(models, "../753945"));
  mp_tune_free(&t);

  /* The same id again is refused, and nothing is left half-made. */
  assert_err_contains(mp_tune_add(models, &spec, src, NULL), "already exists");
  /* A second tune with a title; the list comes sorted by id. */
  mp_tune_spec spec2 = {.id = "101", .name = "man", .token = "ohwx", .type = MP_TUNE_LORA, .title = "John"};
  assert_ok(mp_tune_add(models, &spec2, src, NULL));
  mp_tune_list l;
  assert_ok(mp_tunes_list(models, &l));
  assert_int_equal(l.n, 2);
  assert_int_equal(l.n_problems, 0);
  assert_string_equal(l.tunes[0].id, "101");
  assert_string_equal(l.tunes[0].title, "John");
  assert_string_equal(l.tunes[1].id, "753945");
  mp_tune_list_free(&l);

  assert_ok(mp_tune_remove(models, "101"));
  assert_false(exists(models, "tunes/101"));
  assert_err_contains(mp_tune_remove(models, "101"), "no tune '101'");
  assert_err_contains(mp_tune_load(models, "101", &t), "no tune '101'");
  free(want), free(src), free(models), free(tmp);
}

static void test_add_checks_the_file(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), *models = join(tmp, "models"), *notlora = join(tmp, "x.safetensors");
  const char *const keys[] = {"model.diffusion_model.out.0.weight"};
  write_weights(notlora, keys, 1);
  mp_tune_spec spec = {.id = "t1", .name = "woman", .token = "sks", .type = MP_TUNE_LORA};
  assert_err_contains(mp_tune_add(models, &spec, notlora, NULL), "holds no LoRA tensors");
  assert_false(exists(models, "tunes/t1"));
  assert_err_contains(mp_tune_add(models, &spec, "/nonexistent/file.safetensors", NULL), "no such file");
  char *txt = join(tmp, "notes.txt");
  test_write_file(txt, "hello", 5);
  assert_err_contains(mp_tune_add(models, &spec, txt, NULL), "expected a .safetensors");
  char *garbage = join(tmp, "garbage.safetensors");
  test_write_file(garbage, "\xff\xff\xff\xff\xff\xff\xff\xff{", 9);
  mp_error *e = mp_tune_add(models, &spec, garbage, NULL);
  assert_non_null(e);
  mp_error_free(e);
  mp_tune_spec bad = spec;
  bad.token = "two words";
  assert_err_contains(mp_tune_add(models, &bad, notlora, NULL), "contains a space");
  bad = spec, bad.family = "sd3";
  assert_err_contains(mp_tune_add(models, &bad, notlora, NULL), "expected sd15, sd2 or sdxl");
  bad = spec, bad.id = "../../evil";
  assert_err_contains(mp_tune_add(models, &bad, notlora, NULL), "tune id");
  /* An SDXL LoRA (kohya te2 keys) declared as sd15 is refused. */
  char *xl = join(tmp, "xl.safetensors");
  const char *const xl_keys[] = {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"};
  write_weights(xl, xl_keys, 1);
  bad = spec, bad.family = "sd15";
  assert_err_contains(mp_tune_add(models, &bad, xl, NULL), "looks like a sdxl model");
  mp_tune t;
  assert_ok(mp_tune_add(models, &spec, xl, &t)); /* family detected */
  assert_string_equal(t.family, "sdxl");
  mp_tune_free(&t);
  free(xl), free(garbage), free(txt), free(notlora), free(models), free(tmp);
}

static void test_checkpoint_tune(void **state) {
  (void)state;
  char *tiny = test_shared_path("golden/tiny/tiny.safetensors");
  char *tmp = test_tmpdir(), *models = join(tmp, "models");
  mp_tune_spec spec = {.id = "ckpt1", .name = "woman", .token = "sks", .type = MP_TUNE_CHECKPOINT, .family = "sdxl"};
  assert_err_contains(mp_tune_add(models, &spec, tiny, NULL), "looks like a sd15 model, not sdxl");
  spec.family = NULL;
  mp_tune t;
  assert_ok(mp_tune_add(models, &spec, tiny, &t));
  assert_int_equal(t.type, MP_TUNE_CHECKPOINT);
  assert_string_equal(t.family, "sd15");
  mp_tune_free(&t);
  /* A LoRA file registered as a checkpoint is refused with the reason. */
  char *lora = join(tmp, "l.safetensors");
  write_weights(lora, lora_keys, 3);
  spec.id = "ckpt2";
  assert_err_contains(mp_tune_add(models, &spec, lora, NULL), "not a recognised Stable Diffusion checkpoint");
  free(lora), free(models), free(tmp), free(tiny);
}

static void write_text(const char *dir, const char *rel, const char *text) {
  char *p = join(dir, rel);
  test_write_file(p, text, strlen(text));
  free(p);
}

static void test_tune_json_is_read_strictly(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), *models = join(tmp, "models"), *src = join(tmp, "a.safetensors");
  write_weights(src, lora_keys, 3);
  mp_tune_spec spec = {.id = "good", .name = "woman", .token = "sks", .type = MP_TUNE_LORA};
  assert_ok(mp_tune_add(models, &spec, src, NULL));
  char *d = join(models, "tunes/broken");
  mkdir(d, 0755);
  write_text(models, "tunes/broken/tune.json", "{\n  \"id\": \"broken\",\n  \"name\": \"woman\" \"token\": 1\n}");
  mp_tune t;
  assert_err_contains(mp_tune_load(models, "broken", &t), "invalid JSON near line 3");
  /* One broken tune does not hide the others. */
  mp_tune_list l;
  assert_ok(mp_tunes_list(models, &l));
  assert_int_equal(l.n, 1);
  assert_int_equal(l.n_problems, 1);
  assert_non_null(strstr(l.problems[0], "broken/tune.json"));
  mp_tune_list_free(&l);
  write_text(models, "tunes/broken/tune.json",
             "{\"id\": \"other\", \"name\": \"w\", \"token\": \"t\", \"type\": \"lora\", \"family\": \"sd15\", \"file\": \"x\"}");
  assert_err_contains(mp_tune_load(models, "broken", &t), "key 'id' is 'other' but the folder is 'broken'");
  write_text(models, "tunes/broken/tune.json",
             "{\"id\": \"broken\", \"name\": \"w\", \"token\": \"t\", \"type\": \"vae\", \"family\": \"sd15\", \"file\": \"x\"}");
  assert_err_contains(mp_tune_load(models, "broken", &t), "key 'type'");
  write_text(models, "tunes/broken/tune.json",
             "{\"id\": \"broken\", \"name\": \"w\", \"token\": \"t\", \"type\": \"lora\", \"family\": \"sd15\", "
             "\"file\": \"../../../etc/passwd\"}");
  assert_err_contains(mp_tune_load(models, "broken", &t), "key 'file'");
  write_text(models, "tunes/broken/tune.json",
             "{\"id\": \"broken\", \"name\": \"w\", \"token\": \"t\", \"type\": \"lora\", \"family\": \"sd15\", "
             "\"file\": \"w.safetensors\"}");
  assert_err_contains(mp_tune_load(models, "broken", &t), "weights file");
  write_text(models, "tunes/broken/tune.json", "{\"id\": \"broken\", \"name\": 3}");
  assert_err_contains(mp_tune_load(models, "broken", &t), "key 'name': expected a string");
  free(d), free(src), free(models), free(tmp);
}

static void test_resolve_names(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), *models = join(tmp, "models"), *src = join(tmp, "a.safetensors");
  write_weights(src, lora_keys, 3);
  mp_tune_spec spec = {.id = "753945", .name = "woman", .token = "sks", .type = MP_TUNE_LORA};
  assert_ok(mp_tune_add(models, &spec, src, NULL));
  char *lora_dir = join(models, "lora"), *emb_dir = join(models, "embeddings");
  mkdir(lora_dir, 0755), mkdir(emb_dir, 0755);
  write_text(models, "lora/add_detail.pt", "x");
  write_text(models, "lora/753945.safetensors", "a LoRA file with a tune's id: the tune wins");
  write_text(models, "embeddings/easynegative.safetensors", "x");

  mp_lora_ref r;
  assert_ok(mp_resolve_lora(models, "753945", &r));
  assert_true(r.is_tune);
  assert_string_equal(r.tune.token, "sks");
  assert_non_null(strstr(r.path, "tunes/753945/753945.safetensors"));
  mp_lora_ref_free(&r);
  assert_ok(mp_resolve_lora(models, "add_detail", &r));
  assert_false(r.is_tune);
  assert_non_null(strstr(r.path, "lora/add_detail.pt"));
  mp_lora_ref_free(&r);
  /* Names with spaces are fine for files (not for tune ids). */
  write_text(models, "lora/my style v2.safetensors", "x");
  assert_ok(mp_resolve_lora(models, "my style v2", &r));
  mp_lora_ref_free(&r);

  char msg_tune[512];
  snprintf(msg_tune, sizeof msg_tune,
           "LoRA 'missing' not found; searched: %s/tunes/missing/tune.json, %s/lora/missing.safetensors, "
           "%s/lora/missing.pt, %s/lora/missing.ckpt",
           models, models, models, models);
  assert_err_contains(mp_resolve_lora(models, "missing", &r), msg_tune);
  assert_err_contains(mp_resolve_lora(models, "../753945", &r), "starts with");
  assert_err_contains(mp_resolve_lora(models, "x/../../753945", &r), "path separator");
  assert_err_contains(mp_resolve_lora(models, ".hidden", &r), "starts with '.'");

  char *p;
  assert_ok(mp_resolve_embedding(models, "easynegative", &p));
  assert_non_null(strstr(p, "embeddings/easynegative.safetensors"));
  free(p);
  assert_err_contains(mp_resolve_embedding(models, "nope", &p), "embeddings/nope.bin");
  assert_err_contains(mp_resolve_embedding(models, "a/b", &p), "path separator");

  assert_err_contains(mp_default_checkpoint(models, &p), "--model PATH");
  char *ck = join(models, "checkpoints");
  mkdir(ck, 0755);
  write_text(models, "checkpoints/b.safetensors", "x");
  write_text(models, "checkpoints/a.ckpt", "x");
  write_text(models, "checkpoints/readme.txt", "x");
  assert_ok(mp_default_checkpoint(models, &p));
  assert_non_null(strstr(p, "checkpoints/a.ckpt"));
  free(p);
  free(ck), free(lora_dir), free(emb_dir), free(src), free(models), free(tmp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ids),
      cmocka_unit_test(test_add_load_list_remove_lora),
      cmocka_unit_test(test_add_checks_the_file),
      cmocka_unit_test(test_checkpoint_tune),
      cmocka_unit_test(test_tune_json_is_read_strictly),
      cmocka_unit_test(test_resolve_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
