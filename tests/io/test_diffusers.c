/* diffusers folders: ../shared/golden/tiny-diffusers (the tiny model saved by diffusers/transformers)
 * must give the single file's tensors bit for bit under the CompVis names, the same configuration,
 * the same UNet and text-encoder outputs; broken folders get errors that name the problem. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/threads.h"
#include "io/ckpt.h"
#include "io/diffusers.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"
#include "models_folder.h"
#include "testutil.h"

static bool is_model_tensor(const char *name) {
  return (strncmp(name, MP_PREFIX_UNET, strlen(MP_PREFIX_UNET)) == 0 || strncmp(name, MP_PREFIX_VAE, strlen(MP_PREFIX_VAE)) == 0 ||
          strncmp(name, MP_PREFIX_CLIP, strlen(MP_PREFIX_CLIP)) == 0) &&
         strcmp(name, MP_PREFIX_CLIP "embeddings.position_ids") != 0;
}

static void open_both(mp_weights **file, mp_weights **folder) {
  char *f = test_shared_path("golden/tiny/tiny.safetensors"), *d = test_shared_path("golden/tiny-diffusers");
  assert_ok(mp_weights_open(f, file));
  assert_ok(mp_weights_open(d, folder));
  free(f), free(d);
}

/* Every model tensor of the single file, found in the folder under the same name with the same dtype,
 * shape and bytes; and nothing else in the folder. */
static void test_same_tensors_bit_exact(void **state) {
  (void)state;
  mp_weights *file, *folder;
  open_both(&file, &folder);
  size_t n_model = 0;
  for (size_t i = 0; i < mp_weights_count(file); i++) {
    const mp_weight *a = mp_weights_at(file, i);
    if (!is_model_tensor(a->name)) continue;
    n_model++;
    const mp_weight *b = mp_weights_find(folder, a->name);
    if (!b) fail_msg("%s: not in the diffusers folder", a->name);
    assert_int_equal(a->t.dtype, b->t.dtype);
    assert_int_equal(a->t.ndim, b->t.ndim);
    for (int d = 0; d < a->t.ndim; d++) assert_int_equal(a->t.shape[d], b->t.shape[d]);
    size_t bytes = (size_t)mp_tensor_numel(&a->t) * mp_dtype_size(a->t.dtype);
    if (memcmp(a->t.data, b->t.data, bytes) != 0) fail_msg("%s: different values", a->name);
  }
  assert_true(n_model > 700);
  assert_int_equal(mp_weights_count(folder), n_model);
  mp_weights_close(file);
  mp_weights_close(folder);
}

/* The configs give what shape inference plus tiny.json give. */
static void test_same_config(void **state) {
  (void)state;
  mp_weights *file, *folder;
  open_both(&file, &folder);
  mp_sd_config a, b;
  assert_ok(mp_sd_config_detect(file, NULL, &a));
  assert_ok(mp_sd_config_detect(folder, NULL, &b));
  assert_int_equal(b.family, MP_FAMILY_SD1);
  assert_int_equal(a.family, b.family);
  assert_int_equal(a.inpainting, b.inpainting);
  assert_true(a.scale_factor == b.scale_factor && a.linear_start == b.linear_start && a.linear_end == b.linear_end);
  assert_int_equal(a.timesteps, b.timesteps);
  const mp_clip_config *ca = &a.clip, *cb = &b.clip;
  assert_int_equal(ca->vocab_size, cb->vocab_size), assert_int_equal(ca->max_positions, cb->max_positions);
  assert_int_equal(ca->hidden, cb->hidden), assert_int_equal(ca->intermediate, cb->intermediate);
  assert_int_equal(ca->layers, cb->layers), assert_int_equal(ca->heads, cb->heads);
  assert_true(ca->ln_eps == cb->ln_eps && ca->quick_gelu == cb->quick_gelu);
  const mp_unet_config *ua = &a.unet, *ub = &b.unet;
  assert_int_equal(ua->in_channels, ub->in_channels), assert_int_equal(ua->out_channels, ub->out_channels);
  assert_int_equal(ua->model_channels, ub->model_channels), assert_int_equal(ua->n_levels, ub->n_levels);
  for (int l = 0; l < ua->n_levels; l++) {
    assert_int_equal(ua->channel_mult[l], ub->channel_mult[l]);
    assert_int_equal(ua->attention_at_level[l], ub->attention_at_level[l]);
  }
  assert_int_equal(ua->num_res_blocks, ub->num_res_blocks), assert_int_equal(ua->num_heads, ub->num_heads);
  assert_int_equal(ua->num_head_channels, ub->num_head_channels), assert_int_equal(ua->context_dim, ub->context_dim);
  assert_int_equal(ua->transformer_depth, ub->transformer_depth);
  assert_int_equal(ua->linear_in_transformer, ub->linear_in_transformer);
  const mp_vae_config *va = &a.vae, *vb = &b.vae;
  assert_int_equal(va->in_channels, vb->in_channels), assert_int_equal(va->out_channels, vb->out_channels);
  assert_int_equal(va->ch, vb->ch), assert_int_equal(va->n_levels, vb->n_levels);
  for (int l = 0; l < va->n_levels; l++) assert_int_equal(va->ch_mult[l], vb->ch_mult[l]);
  assert_int_equal(va->num_res_blocks, vb->num_res_blocks), assert_int_equal(va->z_channels, vb->z_channels);
  assert_int_equal(va->embed_dim, vb->embed_dim);
  mp_weights_close(file);
  mp_weights_close(folder);
}

/* One UNet forward, one text-encoder forward and one VAE decode: identical floats from both. */
static void test_same_outputs(void **state) {
  (void)state;
  mp_weights *w[2];
  open_both(&w[0], &w[1]);
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  enum { B = 1, H = 8, W = 8, C = 4, T = 77, D = 32 };
  static float x[B * C * H * W], ctx[B * T * D], emb[T * D], eps[2][B * C * H * W], text[2][T * D], img[2][3 * H * 8 * W * 8];
  for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = (float)((i * 37) % 17) / 8.5f - 1.0f;
  for (size_t i = 0; i < sizeof ctx / sizeof *ctx; i++) ctx[i] = (float)((i * 13) % 11) / 5.5f - 1.0f;
  int32_t ids[T];
  for (int i = 0; i < T; i++) ids[i] = i == 0 ? 49406 : i < 6 ? 320 + 7 * i : 49407;
  float t = 421.0f;
  for (int k = 0; k < 2; k++) {
    mp_sd_config cfg;
    assert_ok(mp_sd_config_detect(w[k], NULL, &cfg));
    mp_unet *u;
    assert_ok(mp_unet_load(w[k], MP_PREFIX_UNET, &cfg.unet, &u));
    assert_ok(mp_unet_forward(u, pool, B, H, W, x, &t, ctx, T, eps[k]));
    mp_unet_free(u);
    mp_clip *clip;
    assert_ok(mp_clip_load(w[k], MP_PREFIX_CLIP, &cfg.clip, &clip));
    assert_ok(mp_clip_embed_tokens(clip, ids, T, emb));
    assert_ok(mp_clip_encode_embeds(clip, pool, emb, T, cfg.clip.layers, true, text[k]));
    mp_clip_free(clip);
    mp_vae *vae;
    assert_ok(mp_vae_load(w[k], MP_PREFIX_VAE, &cfg.vae, &vae));
    assert_ok(mp_vae_decode(vae, pool, H, W, x, img[k]));
    mp_vae_free(vae);
  }
  assert_memory_equal(eps[0], eps[1], sizeof eps[0]);
  assert_memory_equal(text[0], text[1], sizeof text[0]);
  assert_memory_equal(img[0], img[1], sizeof img[0]);
  mp_pool_destroy(pool);
  mp_weights_close(w[0]);
  mp_weights_close(w[1]);
}

/* ---- broken folders ---- */

static const char *const parts[] = {"unet", "vae", "text_encoder", "tokenizer", "scheduler"};
static const char *const files[] = {"model_index.json",
                                    "unet/config.json",
                                    "unet/diffusion_pytorch_model.safetensors",
                                    "vae/config.json",
                                    "vae/diffusion_pytorch_model.safetensors",
                                    "text_encoder/config.json",
                                    "text_encoder/model.safetensors",
                                    "tokenizer/vocab.json",
                                    "tokenizer/merges.txt",
                                    "scheduler/scheduler_config.json"};

/* A writable copy of tiny-diffusers in a fresh temporary folder. Caller frees. */
static char *copy_tiny(void) {
  char *src = test_shared_path("golden/tiny-diffusers"), *dir = test_tmpdir(), p[1024], q[1024];
  for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, parts[i]);
    assert_int_equal(mkdir(p, 0755), 0);
  }
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    snprintf(p, sizeof p, "%s/%s", src, files[i]);
    snprintf(q, sizeof q, "%s/%s", dir, files[i]);
    test_copy_file(p, q);
  }
  free(src);
  return dir;
}

static void put_text(const char *dir, const char *rel, const char *text) {
  char p[1024];
  snprintf(p, sizeof p, "%s/%s", dir, rel);
  unlink(p);
  test_write_file(p, text, strlen(text));
}

static mp_error *open_and_detect(const char *dir) {
  mp_weights *w = NULL;
  MP_TRY(mp_weights_open(dir, &w));
  mp_sd_config cfg;
  mp_error *e = mp_sd_config_detect(w, NULL, &cfg);
  mp_weights_close(w);
  return e;
}

static void test_copy_opens(void **state) {
  (void)state;
  char *dir = copy_tiny();
  assert_true(mp_diffusers_is_folder(dir));
  assert_ok(open_and_detect(dir));
  char *tok = NULL;
  assert_ok(mp_diffusers_tokenizer(dir, "tokenizer", &tok));
  assert_non_null(tok);
  free(tok);
  test_remove_tree(dir);
  free(dir);
}

static void test_malformed_config(void **state) {
  (void)state;
  char *dir = copy_tiny();
  put_text(dir, "unet/config.json", "{\n  \"in_channels\": 4,\n  \"layers_per_block\": ,\n}\n");
  assert_err_contains(open_and_detect(dir), "unet/config.json: invalid JSON near line 3");
  put_text(dir, "unet/config.json", "[1, 2]");
  assert_err_contains(open_and_detect(dir), "unet/config.json: expected a JSON object");
  put_text(dir, "unet/config.json",
           "{\"block_out_channels\": [32, 64, 64], \"layers_per_block\": \"two\", \"up_block_types\": [\"a\", \"b\", \"c\"]}");
  assert_err_contains(open_and_detect(dir), "unet/config.json: \"layers_per_block\" is missing or not a number");
  put_text(dir, "model_index.json", "{\"_class_name\": \"StableDiffusionXLPipeline\", \"text_encoder_2\": [\"transformers\", \"x\"]}");
  assert_err_contains(open_and_detect(dir), "model_index.json names no \"unet\" part"); /* read as SDXL (tests/io/test_diffusers_xl.c) */
  put_text(dir, "model_index.json", "{\"_class_name\": \"KandinskyPipeline\"}");
  assert_err_contains(open_and_detect(dir), "is not a Stable Diffusion pipeline");
  test_remove_tree(dir);
  free(dir);
}

/* Values the models cannot use are named with the file and the key. */
static void test_unsupported_values(void **state) {
  (void)state;
  char *dir = copy_tiny();
  put_text(dir, "scheduler/scheduler_config.json", "{\"beta_schedule\": \"scaled_linear\", \"prediction_type\": \"v_prediction\"}");
  assert_err_contains(open_and_detect(dir), "scheduler/scheduler_config.json: \"prediction_type\" is \"v_prediction\"");
  put_text(dir, "scheduler/scheduler_config.json", "{\"beta_start\": \"x\"}");
  assert_err_contains(open_and_detect(dir), "\"beta_start\" should be a number");
  test_remove_tree(dir);
  free(dir);
}

static void test_missing_parts(void **state) {
  (void)state;
  char *dir = copy_tiny(), p[1024];
  snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.safetensors", dir);
  assert_int_equal(unlink(p), 0);
  assert_err_contains(open_and_detect(dir), "vae: no weights file (looked for diffusion_pytorch_model.safetensors");
  assert_int_equal(mkdir(p, 0755), 0); /* a folder where the weights file should be */
  assert_err_contains(open_and_detect(dir), "diffusion_pytorch_model.safetensors is not a regular file");
  test_remove_tree(dir);
  free(dir);
  dir = copy_tiny();
  snprintf(p, sizeof p, "rm -rf '%s/text_encoder'", dir);
  assert_int_equal(system(p), 0);
  assert_err_contains(open_and_detect(dir), "has no text_encoder/ subfolder");
  test_remove_tree(dir);
  free(dir);
  /* a folder without model_index.json is not taken for a model */
  dir = test_tmpdir();
  mp_weights *w = NULL;
  assert_false(mp_diffusers_is_folder(dir));
  assert_err_contains(mp_weights_open(dir, &w), "has no model_index.json");
  assert_int_equal(rmdir(dir), 0);
  free(dir);
}

/* The f16 variant is taken when the full-precision file is absent. */
static void test_fp16_variant_name(void **state) {
  (void)state;
  char *dir = copy_tiny(), p[1024], q[1024];
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
  snprintf(q, sizeof q, "%s/unet/diffusion_pytorch_model.fp16.safetensors", dir);
  assert_int_equal(rename(p, q), 0);
  char *file = NULL;
  assert_ok(mp_diffusers_weights_file(dir, "unet", "diffusion_pytorch_model", &file));
  assert_string_equal(file, q);
  free(file);
  assert_ok(open_and_detect(dir));
  test_remove_tree(dir);
  free(dir);
}

/* transformers' older pytorch_model.bin / diffusers' .bin: read by the pickle-free .ckpt reader. */
static void test_bin_part(void **state) {
  (void)state;
  char *dir = copy_tiny(), p[1024], q[1024];
  snprintf(p, sizeof p, "%s/text_encoder/model.safetensors", dir);
  snprintf(q, sizeof q, "%s/text_encoder/model.bin", dir);
  mp_weights *te;
  assert_ok(mp_weights_open(p, &te));
  size_t n = mp_weights_count(te);
  const char **names = calloc(n, sizeof *names);
  mp_tensor *ts = calloc(n, sizeof *ts);
  assert_non_null(names);
  assert_non_null(ts);
  for (size_t i = 0; i < n; i++) names[i] = mp_weights_at(te, i)->name, ts[i] = mp_weights_at(te, i)->t;
  assert_ok(mp_ckpt_write(q, n, names, ts, false));
  free(names), free(ts);
  mp_weights_close(te);
  assert_int_equal(unlink(p), 0);
  mp_weights *file, *folder;
  char *f = test_shared_path("golden/tiny/tiny.safetensors");
  assert_ok(mp_weights_open(f, &file));
  assert_ok(mp_weights_open(dir, &folder));
  const mp_weight *a = mp_weights_find(file, MP_PREFIX_CLIP "encoder.layers.1.mlp.fc2.weight");
  const mp_weight *b = mp_weights_find(folder, MP_PREFIX_CLIP "encoder.layers.1.mlp.fc2.weight");
  assert_non_null(a);
  assert_non_null(b);
  assert_memory_equal(a->t.data, b->t.data, mp_tensor_nbytes(&a->t));
  mp_weights_close(file);
  mp_weights_close(folder);
  free(f);
  test_remove_tree(dir);
  free(dir);
}

/* A tensor of the wrong shape: binding the model names the CompVis key and both shapes. */
static void test_wrong_shape(void **state) {
  (void)state;
  char *dir = copy_tiny(), p[1024];
  snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
  mp_weights *unet;
  assert_ok(mp_weights_open(p, &unet));
  size_t n = mp_weights_count(unet);
  const char **names = calloc(n, sizeof *names);
  mp_tensor *ts = calloc(n, sizeof *ts);
  assert_non_null(names);
  assert_non_null(ts);
  for (size_t i = 0; i < n; i++) {
    const mp_weight *t = mp_weights_at(unet, i);
    names[i] = t->name;
    ts[i] = t->t;
    if (strcmp(t->name, "conv_in.weight") == 0) ts[i].shape[0] = 16; /* [32,4,3,3] -> [16,4,3,3]: half the data */
  }
  char tmp[1100];
  snprintf(tmp, sizeof tmp, "%s.new", p);
  assert_ok(mp_safetensors_write(tmp, n, names, ts, NULL));
  free(names), free(ts);
  mp_weights_close(unet);
  assert_int_equal(rename(tmp, p), 0);
  mp_weights *w;
  assert_ok(mp_weights_open(dir, &w));
  mp_sd_config cfg;
  assert_ok(mp_sd_config_detect(w, NULL, &cfg));
  mp_unet *u = NULL;
  assert_err_contains(mp_unet_load(w, MP_PREFIX_UNET, &cfg.unet, &u),
                      "model.diffusion_model.input_blocks.0.0.weight (unet/conv_in.weight in the diffusers folder): "
                      "expected shape [32,4,3,3], found [16,4,3,3]");
  mp_vae *vae = NULL;
  mp_vae_config vc = cfg.vae;
  vc.num_res_blocks = 3; /* asks for encoder.down.0.block.2, which no diffusers key maps to */
  assert_err_contains(mp_vae_load(w, MP_PREFIX_VAE, &vc, &vae), "no key of the diffusers folder maps to it");
  mp_weights_close(w);
  test_remove_tree(dir);
  free(dir);
}

/* A symlink out of the folder is refused; the Hugging Face hub cache's snapshots -> blobs links are not. */
static void test_symlinks(void **state) {
  (void)state;
  char *dir = copy_tiny(), p[1024], q[1024];
  snprintf(p, sizeof p, "%s/unet/config.json", dir);
  assert_int_equal(unlink(p), 0);
  char *outside = test_shared_path("golden/tiny-diffusers/unet/config.json");
  assert_int_equal(symlink(outside, p), 0);
  assert_err_contains(open_and_detect(dir), "outside the diffusers folder");
  free(outside);
  test_remove_tree(dir);
  free(dir);

  /* hub cache: <repo>/snapshots/<rev>/<file> -> ../../blobs/<name> */
  char *root = test_tmpdir(), *model = copy_tiny();
  snprintf(p, sizeof p, "%s/blobs", root);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/snapshots", root);
  assert_int_equal(mkdir(p, 0755), 0);
  snprintf(p, sizeof p, "%s/snapshots/abc123", root);
  assert_int_equal(mkdir(p, 0755), 0);
  for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
    snprintf(p, sizeof p, "%s/snapshots/abc123/%s", root, parts[i]);
    assert_int_equal(mkdir(p, 0755), 0);
  }
  for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
    char blob[64], target[128];
    snprintf(blob, sizeof blob, "blob%zu", i);
    snprintf(p, sizeof p, "%s/%s", model, files[i]);
    snprintf(q, sizeof q, "%s/blobs/%s", root, blob);
    assert_int_equal(rename(p, q), 0);
    snprintf(target, sizeof target, "%s../../blobs/%s", strchr(files[i], '/') ? "../" : "", blob);
    snprintf(p, sizeof p, "%s/snapshots/abc123/%s", root, files[i]);
    assert_int_equal(symlink(target, p), 0);
  }
  snprintf(p, sizeof p, "%s/snapshots/abc123", root);
  assert_ok(open_and_detect(p));
  test_remove_tree(root);
  test_remove_tree(model);
  free(root), free(model);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_same_tensors_bit_exact),
      cmocka_unit_test(test_same_config),
      cmocka_unit_test(test_same_outputs),
      cmocka_unit_test(test_copy_opens),
      cmocka_unit_test(test_malformed_config),
      cmocka_unit_test(test_unsupported_values),
      cmocka_unit_test(test_missing_parts),
      cmocka_unit_test(test_fp16_variant_name),
      cmocka_unit_test(test_bin_part),
      cmocka_unit_test(test_wrong_shape),
      cmocka_unit_test(test_symlinks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
