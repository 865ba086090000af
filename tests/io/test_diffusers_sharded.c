/* diffusers folders whose weights are split into shards with an index (save_pretrained(max_shard_size=...)):
 * a copy of ../shared/golden/tiny-diffusers with its parts split into 2-3 shards must give the single-file
 * folder's tensors bit for bit, and the same UNet and VAE outputs; a hostile or broken index or shard gets
 * an error naming the file, the key, and what was expected. (SDXL's parts: tests/io/test_diffusers_xl.c;
 * a ControlNet folder: tests/models/test_controlnet_diffusers.c.) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/threads.h"
#include "io/diffusers.h"
#include "io/shard_index.h"
#include "io/weights.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"
#include "models_folder.h"
#include "pipeline/params.h"
#include "pipeline/tunes.h"
#include "shards.h"
#include "testutil.h"

#define UNET_STEM "diffusion_pytorch_model"
#define UNET_INDEX "unet/" UNET_STEM ".safetensors.index.json"
#define SHARD_1 UNET_STEM "-00001-of-00002.safetensors"
#define SHARD_2 UNET_STEM "-00002-of-00002.safetensors"

/* A writable copy of tiny-diffusers in a fresh temporary folder. Caller frees. */
static char *copy_tiny(void) {
  char *src = test_shared_path("golden/tiny-diffusers"), *dir = test_tmpdir();
  assert_int_equal(test_shell(NULL, "cp -r '%s/.' '%s/'", src, dir), 0);
  free(src);
  return dir;
}

static mp_error *open_and_detect(const char *dir) {
  mp_weights *w = NULL;
  MP_TRY(mp_weights_open(dir, &w));
  mp_sd_config cfg;
  mp_error *e = mp_sd_config_detect(w, NULL, &cfg);
  mp_weights_close(w);
  return e;
}

static void assert_same_weights(const mp_weights *a, const mp_weights *b) {
  assert_int_equal(mp_weights_count(a), mp_weights_count(b));
  for (size_t i = 0; i < mp_weights_count(a); i++) {
    const mp_weight *x = mp_weights_at(a, i), *y = mp_weights_find(b, x->name);
    if (!y) fail_msg("%s: not read from the sharded folder", x->name);
    assert_int_equal(x->t.dtype, y->t.dtype);
    assert_int_equal(x->t.ndim, y->t.ndim);
    for (int d = 0; d < x->t.ndim; d++) assert_int_equal(x->t.shape[d], y->t.shape[d]);
    if (memcmp(x->t.data, y->t.data, mp_tensor_nbytes(&x->t)) != 0) fail_msg("%s: different values", x->name);
  }
}

/* The UNet, the VAE and the text encoder split in 3, 2 and 2: the same tensors bit for bit, viewed in
 * the shards' mappings (not copied), and the same UNet and VAE outputs. */
static void test_same_as_single_file(void **state) {
  (void)state;
  char *dir = copy_tiny(), *single_dir = test_shared_path("golden/tiny-diffusers");
  test_split_shards(dir, "unet", UNET_STEM, 3, NULL, NULL);
  test_split_shards(dir, "vae", UNET_STEM, 2, NULL, NULL);
  test_split_shards(dir, "text_encoder", "model", 2, NULL, NULL);
  mp_weights *w[2];
  assert_ok(mp_weights_open(single_dir, &w[0]));
  assert_ok(mp_weights_open(dir, &w[1]));
  assert_same_weights(w[0], w[1]);
  /* one part per component, each the view of its shards */
  assert_int_equal(mp_weights_n_parts(w[1]), 3);
  assert_int_equal(mp_weights_n_parts(mp_weights_part(w[1], 0)), 3);
  assert_int_equal(mp_weights_n_parts(mp_weights_part(w[1], 1)), 2);
  const mp_weight *big = NULL;
  for (size_t i = 0; i < mp_weights_count(w[1]); i++)
    if (!big || mp_tensor_nbytes(&mp_weights_at(w[1], i)->t) > mp_tensor_nbytes(&big->t)) big = mp_weights_at(w[1], i);
  assert_true(mp_tensor_nbytes(&big->t) > 16384);
  assert_true(mp_weights_drop_pages(w[1], big->t.data, mp_tensor_nbytes(&big->t))); /* data in a shard's file mapping */

  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  enum { B = 1, H = 8, W = 8, C = 4, T = 77, D = 32 };
  static float x[B * C * H * W], ctx[B * T * D], eps[2][B * C * H * W], img[2][3 * H * 8 * W * 8];
  for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = (float)((i * 37) % 17) / 8.5f - 1.0f;
  for (size_t i = 0; i < sizeof ctx / sizeof *ctx; i++) ctx[i] = (float)((i * 13) % 11) / 5.5f - 1.0f;
  float t = 421.0f;
  for (int k = 0; k < 2; k++) {
    mp_sd_config cfg;
    assert_ok(mp_sd_config_detect(w[k], NULL, &cfg));
    mp_unet *u;
    assert_ok(mp_unet_load(w[k], MP_PREFIX_UNET, &cfg.unet, &u));
    assert_ok(mp_unet_forward(u, pool, B, H, W, x, &t, ctx, T, eps[k]));
    mp_unet_free(u);
    mp_vae *vae;
    assert_ok(mp_vae_load(w[k], MP_PREFIX_VAE, &cfg.vae, &vae));
    assert_ok(mp_vae_decode(vae, pool, H, W, x, img[k]));
    mp_vae_free(vae);
  }
  assert_memory_equal(eps[0], eps[1], sizeof eps[0]);
  assert_memory_equal(img[0], img[1], sizeof img[0]);
  mp_pool_destroy(pool);
  mp_weights_close(w[0]);
  mp_weights_close(w[1]);
  test_remove_tree(dir);
  free(dir), free(single_dir);
}

/* The f16 variant's index under each of its spellings; the files of a part, and the one that identifies it. */
static void test_variant_names_and_files(void **state) {
  (void)state;
  static const char *const names[] = {UNET_STEM ".safetensors.index.fp16.json", UNET_STEM ".safetensors.fp16.index.json",
                                      UNET_STEM ".fp16.safetensors.index.json"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    char *dir = copy_tiny(), p[1024];
    test_split_shards(dir, "unet", UNET_STEM, 2, UNET_STEM ".fp16", names[i]);
    assert_ok(open_and_detect(dir));
    char *file = NULL, **all = NULL;
    size_t n = 0;
    assert_ok(mp_diffusers_weights_file(dir, "unet", UNET_STEM, &file));
    snprintf(p, sizeof p, "%s/unet/" UNET_STEM ".fp16-00001-of-00002.safetensors", dir);
    assert_string_equal(file, p);
    assert_ok(mp_diffusers_weights_files(dir, "unet", UNET_STEM, &all, &n));
    assert_int_equal(n, 3);
    assert_string_equal(all[0], p);
    snprintf(p, sizeof p, "%s/unet/" UNET_STEM ".fp16-00002-of-00002.safetensors", dir);
    assert_string_equal(all[1], p);
    snprintf(p, sizeof p, "%s/unet/%s", dir, names[i]);
    assert_string_equal(all[2], p);
    for (size_t j = 0; j < n; j++) free(all[j]);
    free(all), free(file);
    assert_ok(mp_diffusers_weights_files(dir, "vae", UNET_STEM, &all, &n)); /* a single file: itself */
    assert_int_equal(n, 1);
    free(all[0]), free(all);
    test_remove_tree(dir);
    free(dir);
  }
}

/* A single file beside an index: the UNet takes the index (diffusers' ModelMixin does), the text encoder
 * the single file (transformers does). A broken index shows which one was read. */
static void test_single_file_beside_index(void **state) {
  (void)state;
  char *dir = copy_tiny(), *src = test_shared_path("golden/tiny-diffusers"), p[1024], q[1024];
  static const char *const single[][2] = {{"unet", UNET_STEM}, {"text_encoder", "model"}};
  for (int i = 0; i < 2; i++) {
    test_split_shards(dir, single[i][0], single[i][1], 2, NULL, NULL);
    snprintf(p, sizeof p, "%s/%s/%s.safetensors", src, single[i][0], single[i][1]);
    snprintf(q, sizeof q, "%s/%s/%s.safetensors", dir, single[i][0], single[i][1]);
    test_copy_file(p, q);
    snprintf(p, sizeof p, "%s/%s/%s-00002-of-00002.safetensors", dir, single[i][0], single[i][1]);
    assert_int_equal(unlink(p), 0);
  }
  assert_err_contains(open_and_detect(dir), "weight_map names the shard " SHARD_2 ", which is missing");
  snprintf(p, sizeof p, "%s/" UNET_INDEX, dir);
  assert_int_equal(unlink(p), 0);
  assert_ok(open_and_detect(dir)); /* the text encoder's broken index is not read */
  test_remove_tree(dir);
  free(dir), free(src);
}

/* A checkpoint tune of a sharded folder copies the shards and their index; its sha256 (the Model hash) is
 * the first shard's, and the copy reads as the original. */
static void test_tune_copies_shards(void **state) {
  (void)state;
  char *dir = copy_tiny(), *models = test_tmpdir(), p[1024];
  test_split_shards(dir, "unet", UNET_STEM, 2, NULL, NULL);
  mp_tune_spec spec = {.id = "sharded", .name = "cube", .token = "sks", .type = MP_TUNE_CHECKPOINT};
  mp_tune t;
  assert_ok(mp_tune_add(models, &spec, dir, &t));
  char sha[65], *hashed = NULL;
  assert_ok(mp_checkpoint_hash_file(dir, &hashed));
  snprintf(p, sizeof p, "%s/unet/" SHARD_1, dir);
  assert_string_equal(hashed, p);
  assert_ok(mp_file_sha256(hashed, sha));
  assert_string_equal(t.sha256, sha);
  static const char *const copied[] = {SHARD_1, SHARD_2, UNET_STEM ".safetensors.index.json"};
  for (size_t i = 0; i < sizeof copied / sizeof *copied; i++) {
    snprintf(p, sizeof p, "%s/unet/%s", t.file, copied[i]);
    assert_int_equal(access(p, R_OK), 0);
  }
  mp_weights *a, *b;
  assert_ok(mp_weights_open(dir, &a));
  assert_ok(mp_weights_open(t.file, &b));
  assert_same_weights(a, b);
  mp_weights_close(a), mp_weights_close(b);
  mp_tune_free(&t);
  free(hashed);
  test_remove_tree(models), test_remove_tree(dir);
  free(models), free(dir);
}

/* The Hugging Face hub cache: snapshots/<revision>/unet/<shard or index> are links into the repository's
 * blobs/, which the folder check lets through. */
static void test_hub_cache_links(void **state) {
  (void)state;
  char *root = test_tmpdir(), *src = test_shared_path("golden/tiny-diffusers"), snap[1024], p[1200], q[1200];
  assert_int_equal(test_shell(NULL, "mkdir -p '%s/blobs' '%s/snapshots' && cp -r '%s' '%s/snapshots/abc123'", root, root, src, root), 0);
  snprintf(snap, sizeof snap, "%s/snapshots/abc123", root);
  test_split_shards(snap, "unet", UNET_STEM, 2, NULL, NULL);
  static const char *const linked[] = {SHARD_1, SHARD_2, UNET_STEM ".safetensors.index.json"};
  for (int i = 0; i < 3; i++) {
    char target[64];
    snprintf(p, sizeof p, "%s/unet/%s", snap, linked[i]);
    snprintf(q, sizeof q, "%s/blobs/blob%d", root, i);
    assert_int_equal(rename(p, q), 0);
    snprintf(target, sizeof target, "../../../blobs/blob%d", i);
    assert_int_equal(symlink(target, p), 0);
  }
  assert_ok(open_and_detect(snap));
  test_remove_tree(root);
  free(root), free(src);
}

/* ---- hostile and broken input ---- */

static void put_text(const char *dir, const char *rel, const char *text) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  unlink(p);
  test_write_file(p, text, strlen(text));
}

/* The index text with weight_map[key] set to `shard` (NULL: the entry removed). Caller frees. */
static char *index_with(const char *dir, const char *key, const char *shard) {
  char p[1024];
  snprintf(p, sizeof p, "%s/" UNET_INDEX, dir);
  cJSON *root = test_read_json(p), *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  cJSON_DeleteItemFromObjectCaseSensitive(map, key);
  if (shard) cJSON_AddStringToObject(map, key, shard);
  char *text = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  return text;
}

static void expect_index_error(const char *dir, const char *index_text, const char *needle) {
  char p[1024], saved[1100];
  snprintf(p, sizeof p, "%s/" UNET_INDEX, dir);
  snprintf(saved, sizeof saved, "%s.saved", p);
  assert_int_equal(rename(p, saved), 0);
  put_text(dir, UNET_INDEX, index_text);
  mp_error *e = open_and_detect(dir);
  if (!e) fail_msg("index %.200s: expected an error containing '%s'", index_text, needle);
  test_assert_contains(mp_error_message(e), needle);
  test_assert_contains(mp_error_message(e), UNET_INDEX); /* every error names the index */
  mp_error_free(e);
  assert_int_equal(rename(saved, p), 0);
}

/* The index as text: not JSON, wrong types, shard names with a path, too many shards, an empty map. */
static void test_hostile_index_text(void **state) {
  (void)state;
  char *dir = copy_tiny();
  test_split_shards(dir, "unet", UNET_STEM, 2, NULL, NULL);
  assert_ok(open_and_detect(dir));
  expect_index_error(dir, "{\"weight_map\": {\"conv_in.weight\": }", "invalid JSON near line 1");
  expect_index_error(dir, "[1]", "expected a JSON object");
  expect_index_error(dir, "{\"metadata\": {\"total_size\": 1}}", "\"weight_map\" is missing, expected an object from tensor names");
  expect_index_error(dir, "{\"weight_map\": [\"" SHARD_1 "\"]}", "\"weight_map\" is a list, expected an object");
  expect_index_error(dir, "{\"weight_map\": {}}", "\"weight_map\" is empty");
  expect_index_error(dir, "{\"metadata\": 7, \"weight_map\": {\"a\": \"" SHARD_1 "\"}}", "\"metadata\" is a number, expected an object");
  expect_index_error(dir, "{\"weight_map\": {\"conv_in.weight\": 3}}",
                     "weight_map[\"conv_in.weight\"] is a number, expected a shard file name (a string)");
  expect_index_error(dir, "{\"weight_map\": {\"conv_in.weight\": null}}", "weight_map[\"conv_in.weight\"] is null");
  expect_index_error(dir, "{\"weight_map\": {\"\": \"" SHARD_1 "\"}}", "has an entry with an empty tensor name");
  static const char *const bad_names[] = {"../" SHARD_1, "/tmp/" SHARD_1, "sub/" SHARD_1, "..\\\\" SHARD_1, UNET_STEM ".bin",
                                          ".safetensors", "a\\nb.safetensors"};
  for (size_t i = 0; i < sizeof bad_names / sizeof *bad_names; i++) {
    char text[512];
    snprintf(text, sizeof text, "{\"weight_map\": {\"conv_in.weight\": \"%s\"}}", bad_names[i]);
    expect_index_error(dir, text, "expected the name of a .safetensors file beside the index (no folder, no path)");
  }
  expect_index_error(dir, "{\"weight_map\": {\"a\": \"" SHARD_1 "\", \"a\": \"" SHARD_2 "\"}}", "weight_map lists tensor \"a\" twice");
  expect_index_error(dir, "{\"weight_map\": {\"a\": \"" UNET_STEM "-00001-of-00003.safetensors\", \"b\": \"" UNET_STEM "-00003-of-00003.safetensors\"}}",
                     "weight_map names " UNET_STEM "-00001-of-00003.safetensors but no shard 2 of 3");
  expect_index_error(dir, "{\"weight_map\": {\"a\": \"" UNET_STEM "-00004-of-00003.safetensors\"}}", "is number 4 of 3");
  expect_index_error(dir, "{\"weight_map\": {\"a\": \"" SHARD_1 "\", \"b\": \"" UNET_STEM "-00002-of-00003.safetensors\"}}",
                     "expected one set");
  /* more shards than the cap */
  size_t cap = 64 * (MP_SHARD_INDEX_MAX_SHARDS + 2);
  char *text = malloc(cap), *at = text;
  at += sprintf(at, "{\"weight_map\": {");
  for (int i = 0; i <= MP_SHARD_INDEX_MAX_SHARDS; i++) at += sprintf(at, "%s\"t%d\": \"s%d.safetensors\"", i ? ", " : "", i, i);
  sprintf(at, "}}");
  expect_index_error(dir, text, "weight_map names 257 shard files, more than the 256 mpass reads");
  free(text);
  test_remove_tree(dir);
  free(dir);
}

/* The index against the shard files: a missing shard, one outside the folder, a tensor listed but absent,
 * one in two shards, one in a shard the map does not name for it, one not listed, a shard not listed. */
static void test_index_against_shards(void **state) {
  (void)state;
  char *dir = copy_tiny(), p[1024], q[1024];
  test_split_shards(dir, "unet", UNET_STEM, 2, NULL, NULL);
  char *text = index_with(dir, "ghost.weight", SHARD_1);
  expect_index_error(dir, text, "weight_map puts tensor \"ghost.weight\" in " SHARD_1 ", which has no such tensor");
  free(text);
  text = index_with(dir, "conv_in.weight", NULL);
  expect_index_error(dir, text, "shard " SHARD_1 " holds tensor \"conv_in.weight\", which weight_map does not list");
  free(text);
  text = index_with(dir, "conv_in.weight", SHARD_2);
  expect_index_error(dir, text, "tensor \"conv_in.weight\" is in shard " SHARD_1 ", but weight_map puts it in " SHARD_2);
  free(text);
  text = index_with(dir, "conv_in.weight", UNET_STEM "-00003-of-00002.safetensors");
  expect_index_error(dir, text, "is number 3 of 2");
  free(text);

  /* a shard the map does not list, beside the ones it does */
  snprintf(p, sizeof p, "%s/unet/" SHARD_1, dir);
  snprintf(q, sizeof q, "%s/unet/" UNET_STEM "-00003-of-00003.safetensors", dir);
  test_copy_file(p, q);
  assert_err_contains(open_and_detect(dir), UNET_STEM "-00003-of-00003.safetensors is named as a shard of");
  assert_int_equal(unlink(q), 0);

  /* a tensor in both shards: shard 2 rewritten with conv_in.weight of shard 1 added */
  snprintf(q, sizeof q, "%s/unet/" SHARD_2, dir);
  mp_weights *s1, *s2;
  assert_ok(mp_weights_open(p, &s1));
  assert_ok(mp_weights_open(q, &s2));
  size_t n = mp_weights_count(s2);
  const char **names = calloc(n + 1, sizeof *names);
  mp_tensor *ts = calloc(n + 1, sizeof *ts);
  for (size_t i = 0; i < n; i++) names[i] = mp_weights_at(s2, i)->name, ts[i] = mp_weights_at(s2, i)->t;
  names[n] = "conv_in.weight";
  ts[n] = mp_weights_find(s1, "conv_in.weight")->t;
  char tmp[1100];
  snprintf(tmp, sizeof tmp, "%s.new", q);
  assert_ok(mp_safetensors_write(tmp, n + 1, names, ts, NULL));
  free(names), free(ts);
  mp_weights_close(s1), mp_weights_close(s2);
  char saved[1100];
  snprintf(saved, sizeof saved, "%s.saved", q);
  assert_int_equal(rename(q, saved), 0);
  assert_int_equal(rename(tmp, q), 0);
  assert_err_contains(open_and_detect(dir), "tensor \"conv_in.weight\" is in two shards, " SHARD_1 " and " SHARD_2);
  assert_int_equal(rename(saved, q), 0);
  assert_ok(open_and_detect(dir));

  /* a shard that is not a safetensors file; a missing one; one that resolves outside the folder */
  snprintf(saved, sizeof saved, "%s.saved", q);
  assert_int_equal(rename(q, saved), 0);
  put_text(dir, "unet/" SHARD_2, "not safetensors");
  assert_err_contains(open_and_detect(dir), SHARD_2 ": header length");
  assert_int_equal(unlink(q), 0);
  assert_err_contains(open_and_detect(dir), UNET_INDEX ": weight_map names the shard " SHARD_2 ", which is missing");
  char *outside = test_tmpdir(), out_file[1100];
  snprintf(out_file, sizeof out_file, "%s/" SHARD_2, outside);
  assert_int_equal(rename(saved, out_file), 0);
  assert_int_equal(symlink(out_file, q), 0);
  assert_err_contains(open_and_detect(dir), "outside the diffusers folder");
  /* the index itself resolving outside */
  assert_int_equal(unlink(q), 0);
  assert_int_equal(rename(out_file, q), 0);
  assert_ok(open_and_detect(dir));
  snprintf(p, sizeof p, "%s/" UNET_INDEX, dir);
  snprintf(out_file, sizeof out_file, "%s/index.json", outside);
  assert_int_equal(rename(p, out_file), 0);
  assert_int_equal(symlink(out_file, p), 0);
  assert_err_contains(open_and_detect(dir), "outside the diffusers folder");
  test_remove_tree(outside);
  free(outside);
  test_remove_tree(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_as_single_file),      cmocka_unit_test(test_variant_names_and_files),
      cmocka_unit_test(test_single_file_beside_index), cmocka_unit_test(test_tune_copies_shards),
      cmocka_unit_test(test_hub_cache_links),          cmocka_unit_test(test_hostile_index_text),
      cmocka_unit_test(test_index_against_shards),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
