/* ControlNet in the diffusers folder layout (ControlNetModel.save_pretrained): the tiny golden
 * ControlNet (../shared/golden/tiny-controlnet) re-saved as such a folder, its keys renamed to the
 * diffusers names by a table written here, separately from the reader's (io/diffusers.c), so that a
 * mistake in one does not hide in the other. The folder must give back every tensor bit for bit and
 * the same residuals as the single file, exactly; broken folders get errors that name what is wrong. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/tensor.h"
#include "io/diffusers.h"
#include "io/image.h"
#include "io/weights.h"
#include "models/controlnet.h"
#include "models/sd_diffusers.h"
#include "pipeline/control.h"
#include "shards.h"
#include "testutil.h"

/* cldm name prefix (after control_model.) -> diffusers name prefix, for the tiny ControlNet:
 * 3 levels of 2 ResBlocks, cross-attention at levels 0 and 1. Spelled out, not derived. */
static const char *const tiny_names[][2] = {
    {"time_embed.0.", "time_embedding.linear_1."},
    {"time_embed.2.", "time_embedding.linear_2."},
    {"input_blocks.0.0.", "conv_in."},
    {"input_blocks.1.0.", "down_blocks.0.resnets.0."},
    {"input_blocks.1.1.", "down_blocks.0.attentions.0."},
    {"input_blocks.2.0.", "down_blocks.0.resnets.1."},
    {"input_blocks.2.1.", "down_blocks.0.attentions.1."},
    {"input_blocks.3.0.op.", "down_blocks.0.downsamplers.0.conv."},
    {"input_blocks.4.0.", "down_blocks.1.resnets.0."},
    {"input_blocks.4.1.", "down_blocks.1.attentions.0."},
    {"input_blocks.5.0.", "down_blocks.1.resnets.1."},
    {"input_blocks.5.1.", "down_blocks.1.attentions.1."},
    {"input_blocks.6.0.op.", "down_blocks.1.downsamplers.0.conv."},
    {"input_blocks.7.0.", "down_blocks.2.resnets.0."},
    {"input_blocks.8.0.", "down_blocks.2.resnets.1."},
    {"middle_block.0.", "mid_block.resnets.0."},
    {"middle_block.1.", "mid_block.attentions.0."},
    {"middle_block.2.", "mid_block.resnets.1."},
    {"input_hint_block.0.", "controlnet_cond_embedding.conv_in."},
    {"input_hint_block.2.", "controlnet_cond_embedding.blocks.0."},
    {"input_hint_block.4.", "controlnet_cond_embedding.blocks.1."},
    {"input_hint_block.6.", "controlnet_cond_embedding.blocks.2."},
    {"input_hint_block.8.", "controlnet_cond_embedding.blocks.3."},
    {"input_hint_block.10.", "controlnet_cond_embedding.blocks.4."},
    {"input_hint_block.12.", "controlnet_cond_embedding.blocks.5."},
    {"input_hint_block.14.", "controlnet_cond_embedding.conv_out."},
    {"zero_convs.0.0.", "controlnet_down_blocks.0."},
    {"zero_convs.1.0.", "controlnet_down_blocks.1."},
    {"zero_convs.2.0.", "controlnet_down_blocks.2."},
    {"zero_convs.3.0.", "controlnet_down_blocks.3."},
    {"zero_convs.4.0.", "controlnet_down_blocks.4."},
    {"zero_convs.5.0.", "controlnet_down_blocks.5."},
    {"zero_convs.6.0.", "controlnet_down_blocks.6."},
    {"zero_convs.7.0.", "controlnet_down_blocks.7."},
    {"zero_convs.8.0.", "controlnet_down_blocks.8."},
    {"middle_block_out.0.", "controlnet_mid_block."},
};

/* Inside a ResBlock (a diffusers prefix with "resnets."). */
static const char *const resnet_parts[][2] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},  {"emb_layers.1.", "time_emb_proj."},
    {"out_layers.0.", "norm2."},         {"out_layers.3.", "conv2."}, {"skip_connection.", "conv_shortcut."},
};

/* "control_model.<cldm name>" -> its diffusers name; fails the test for a name the table lacks. */
static char *diffusers_name(const char *name) {
  assert_true(strncmp(name, "control_model.", 14) == 0);
  const char *rest = name + 14;
  for (size_t i = 0; i < sizeof tiny_names / sizeof *tiny_names; i++) {
    size_t n = strlen(tiny_names[i][0]);
    if (strncmp(rest, tiny_names[i][0], n) != 0) continue;
    const char *tail = rest + n, *part = "";
    if (strstr(tiny_names[i][1], "resnets.")) {
      for (size_t k = 0; k < sizeof resnet_parts / sizeof *resnet_parts && !*part; k++) {
        size_t m = strlen(resnet_parts[k][0]);
        if (strncmp(tail, resnet_parts[k][0], m) == 0) part = resnet_parts[k][1], tail += m;
      }
      if (!*part) fail_msg("%s: no ResBlock part in the test's table", name);
    }
    char *out = NULL;
    assert_true(asprintf(&out, "%s%s%s", tiny_names[i][1], part, tail) > 0);
    return out;
  }
  fail_msg("%s: not in the test's table", name);
  return NULL;
}

static void write_text(const char *dir, const char *file, const char *text) {
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", dir, file);
  test_write_file(p, text, strlen(text));
}

/* config.json: the golden's meta.diffusers_controlnet with the class name diffusers writes. */
static char *golden_config_text(void) {
  char *jp = test_shared_path("golden/tiny-controlnet/controlnet_tiny.json");
  FILE *f = fopen(jp, "rb");
  assert_non_null(f);
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  cJSON *root = cJSON_Parse(buf);
  assert_non_null(root);
  cJSON *cfg = cJSON_DetachItemFromObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "meta"), "diffusers_controlnet");
  assert_true(cJSON_IsObject(cfg));
  cJSON_AddStringToObject(cfg, "_class_name", "ControlNetModel");
  char *text = cJSON_PrintUnformatted(cfg);
  cJSON_Delete(cfg);
  cJSON_Delete(root);
  free(jp);
  return text;
}

/* Write `src`'s tensors under their diffusers names into <dir>/<weights_file>, skipping `drop`. */
static void write_weights(const mp_weights *src, const char *dir, const char *weights_file, const char *drop) {
  size_t n = mp_weights_count(src), k = 0;
  char **names = calloc(n, sizeof *names);
  mp_tensor *ts = calloc(n, sizeof *ts);
  for (size_t i = 0; i < n; i++) {
    const mp_weight *it = mp_weights_at(src, i);
    char *dn = diffusers_name(it->name);
    if (drop && strcmp(dn, drop) == 0) {
      free(dn);
      continue;
    }
    names[k] = dn;
    ts[k] = it->t; /* a view: the data stays in the mapped golden file */
    ts[k++].owns_data = false;
  }
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", dir, weights_file);
  assert_ok(mp_safetensors_write(p, k, (const char *const *)names, ts, NULL));
  for (size_t i = 0; i < k; i++) free(names[i]);
  free(names);
  free(ts);
}

static char *make_folder(const char *root, const char *name, const mp_weights *src, const char *config, const char *weights_file,
                         const char *drop) {
  char *dir = NULL;
  assert_true(asprintf(&dir, "%s/%s", root, name) > 0);
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "mkdir -p '%s'", dir);
  assert_int_equal(system(cmd), 0);
  if (config) write_text(dir, "config.json", config);
  if (weights_file) write_weights(src, dir, weights_file, drop);
  return dir;
}

/* Hint embedding and residuals of the golden's run a; `out` gets 9 down residuals + mid, concatenated. */
static size_t run_a(mp_controlnet *cn, mp_pool *pool, const mp_weights *g, const float *hint, float *emb, float *out) {
  assert_ok(mp_controlnet_hint(cn, pool, 1, 64, 64, hint, emb));
  mp_unet_inputs in = {.batch = 1, .h = 8, .w = 8, .n_ctx = 77};
  in.x = mp_weights_find(g, "controlnet.a.x")->t.data;
  in.t = mp_weights_find(g, "controlnet.a.t")->t.data;
  in.context = mp_weights_find(g, "controlnet.a.context")->t.data;
  mp_unet_control r;
  assert_ok(mp_controlnet_forward(cn, pool, &in, emb, &r));
  assert_int_equal(r.n_down, 9);
  size_t at = 0;
  for (int i = 0; i < 9; i++) {
    char name[64];
    snprintf(name, sizeof name, "controlnet.a.down.%02d", i);
    const mp_weight *gd = mp_weights_find(g, name);
    assert_non_null(gd);
    size_t n = (size_t)mp_tensor_numel(&gd->t);
    memcpy(out + at, r.down[i], n * sizeof(float));
    at += n;
  }
  memcpy(out + at, r.mid, 64 * 4 * sizeof(float));
  return at + 64 * 4;
}

static void test_controlnet_diffusers_folder(void **state) {
  (void)state;
  char *cp = test_shared_path("golden/tiny-controlnet/controlnet_tiny.safetensors");
  char *gp = test_shared_path("golden/tiny-controlnet/controlnet.safetensors");
  char *hp = test_shared_path("golden/tiny-controlnet/hint.png");
  char *root = test_tmpdir(), *config = golden_config_text();
  mp_weights *single, *g;
  assert_ok(mp_weights_open(cp, &single));
  assert_ok(mp_weights_open(gp, &g));
  char *dir = make_folder(root, "control_v11p_sd15_canny", single, config, "diffusion_pytorch_model.safetensors", NULL);

  /* Every tensor comes back under its single-file name, bit for bit, and nothing else. */
  mp_weights *folder;
  assert_ok(mp_weights_open(dir, &folder));
  assert_int_equal(mp_weights_count(folder), mp_weights_count(single));
  for (size_t i = 0; i < mp_weights_count(single); i++) {
    const mp_weight *s = mp_weights_at(single, i), *f = mp_weights_find(folder, s->name);
    if (!f) fail_msg("%s is missing from the diffusers folder's weights", s->name);
    assert_int_equal(f->t.dtype, s->t.dtype);
    assert_int_equal(f->t.ndim, s->t.ndim);
    for (int d = 0; d < s->t.ndim; d++) assert_int_equal(f->t.shape[d], s->t.shape[d]);
    assert_memory_equal(f->t.data, s->t.data, mp_tensor_nbytes(&s->t));
  }
  mp_weights_close(folder);

  /* The same configuration from config.json as from the cldm JSON, and the same residuals exactly. */
  mp_controlnet *cn_file, *cn_dir;
  assert_ok(mp_controlnet_open(cp, NULL, &cn_file));
  assert_ok(mp_controlnet_open(dir, NULL, &cn_dir));
  const mp_unet_config *a = mp_controlnet_config(cn_file), *b = mp_controlnet_config(cn_dir);
  assert_int_equal(b->model_channels, a->model_channels);
  assert_int_equal(b->n_levels, a->n_levels);
  for (int l = 0; l < a->n_levels; l++) {
    assert_int_equal(b->channel_mult[l], a->channel_mult[l]);
    assert_int_equal(b->attention_at_level[l], a->attention_at_level[l]);
  }
  assert_int_equal(b->num_res_blocks, a->num_res_blocks);
  assert_int_equal(b->num_heads, a->num_heads);
  assert_int_equal(b->num_head_channels, a->num_head_channels);
  assert_int_equal(b->context_dim, a->context_dim);
  assert_int_equal(b->in_channels, a->in_channels);
  assert_int_equal(b->transformer_depth, a->transformer_depth);
  assert_int_equal(b->linear_in_transformer, a->linear_in_transformer);

  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  mp_image img;
  assert_ok(mp_image_read(hp, 3, &img));
  float *hint = malloc(sizeof(float) * 3 * 64 * 64);
  mp_image_to_planar(&img, hint, 0.0f, 1.0f);
  mp_image_free(&img);
  enum { RES = 32 * 64 * 3 + 32 * 16 + 64 * 16 * 2 + 64 * 4 * 3 + 64 * 4 };
  static float emb_file[32 * 64], emb_dir[32 * 64], res_file[RES], res_dir[RES];
  assert_int_equal(run_a(cn_file, pool, g, hint, emb_file, res_file), RES);
  assert_int_equal(run_a(cn_dir, pool, g, hint, emb_dir, res_dir), RES);
  assert_memory_equal(emb_dir, emb_file, sizeof emb_file);
  assert_memory_equal(res_dir, res_file, sizeof res_file);
  /* and the single file's residuals are the golden's (test_controlnet checks the tolerance; here: not all zero) */
  double sum = 0;
  for (int i = 0; i < RES; i++) sum += res_dir[i] * (double)res_dir[i];
  assert_true(sum > 0);
  mp_controlnet_free(cn_dir);

  /* The ControlNet lookup finds the folder by release name; its hash is its weights file's. */
  char *models = NULL, *found = NULL, *hashed = NULL;
  assert_true(asprintf(&models, "%s/models", root) > 0);
  char *cdir = make_folder(models, "controlnet", NULL, NULL, NULL, NULL);
  char cmd[8400];
  snprintf(cmd, sizeof cmd, "ln -s '%s' '%s/control_v11p_sd15_canny'", dir, cdir);
  assert_int_equal(system(cmd), 0);
  assert_ok(mp_controlnet_find(models, MP_CONTROL_CANNY, NULL, &found));
  assert_non_null(strstr(found, "/controlnet/control_v11p_sd15_canny"));
  assert_ok(mp_checkpoint_hash_file(found, &hashed));
  assert_non_null(strstr(hashed, "diffusion_pytorch_model.safetensors"));
  free(found);
  assert_err_contains(mp_controlnet_find(models, MP_CONTROL_POSE, NULL, &found), "control_v11p_sd15_openpose/");
  char *slashed = NULL; /* --controlnet-model DIR/ names the folder */
  assert_true(asprintf(&slashed, "%s//", dir) > 0);
  assert_ok(mp_controlnet_find(models, MP_CONTROL_CANNY, slashed, &found));
  assert_string_equal(found, dir);
  free(found), free(slashed), free(hashed), free(models), free(cdir);

  /* The f16-variant name is read too (the file name picks nothing else). */
  char *v16 = make_folder(root, "variant", single, config, "diffusion_pytorch_model.fp16.safetensors", NULL);
  assert_ok(mp_controlnet_open(v16, NULL, &cn_dir));
  assert_ok(mp_controlnet_hint(cn_dir, pool, 1, 64, 64, hint, emb_dir));
  assert_memory_equal(emb_dir, emb_file, sizeof emb_file);
  mp_controlnet_free(cn_dir);
  free(v16);

  /* Split into 3 shards with an index (save_pretrained(max_shard_size=...)): the same residuals exactly;
   * the hash is the first shard's. */
  char *sharded = make_folder(root, "sharded", single, config, "diffusion_pytorch_model.safetensors", NULL);
  test_split_shards(sharded, "", "diffusion_pytorch_model", 3, NULL, NULL);
  assert_ok(mp_controlnet_open(sharded, NULL, &cn_dir));
  assert_int_equal(run_a(cn_dir, pool, g, hint, emb_dir, res_dir), RES);
  assert_memory_equal(emb_dir, emb_file, sizeof emb_file);
  assert_memory_equal(res_dir, res_file, sizeof res_file);
  mp_controlnet_free(cn_dir);
  assert_ok(mp_checkpoint_hash_file(sharded, &hashed));
  assert_non_null(strstr(hashed, "/diffusion_pytorch_model-00001-of-00003.safetensors"));
  free(hashed), free(sharded);

  mp_controlnet_free(cn_file);
  mp_pool_destroy(pool);
  free(hint);
  mp_weights_close(g);
  mp_weights_close(single);
  free(dir), free(root), free(cp), free(gp), free(hp);
  cJSON_free(config);
}

/* Replace the first `from` in `text` with `to`; the result is owned by the caller. */
static char *replaced(const char *text, const char *from, const char *to) {
  const char *at = strstr(text, from);
  if (!at) fail_msg("'%s' not in the config", from);
  char *out = NULL;
  assert_true(asprintf(&out, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from)) > 0);
  return out;
}

static void test_controlnet_diffusers_errors(void **state) {
  (void)state;
  char *cp = test_shared_path("golden/tiny-controlnet/controlnet_tiny.safetensors");
  char *root = test_tmpdir(), *config = golden_config_text();
  mp_weights *single;
  assert_ok(mp_weights_open(cp, &single));
  mp_controlnet *cn = NULL;
  const char *wf = "diffusion_pytorch_model.safetensors";

  /* malformed config.json: the file, line and column */
  char *d = make_folder(root, "bad_json", single, "{\n  \"_class_name\": \"ControlNetModel\",\n  \"in_channels\": 4,,\n}", wf, NULL);
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "config.json: invalid JSON near line 3");
  free(d);

  /* a config of another model */
  char *other = replaced(config, "\"ControlNetModel\"", "\"UNet2DConditionModel\"");
  d = make_folder(root, "other_class", single, other, wf, NULL);
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "expected \"ControlNetModel\"");
  free(d), free(other);

  /* a hyper-parameter missing, and one mpass does not implement */
  other = replaced(config, "\"layers_per_block\"", "\"layers_per_blok\"");
  d = make_folder(root, "no_layers", single, other, wf, NULL);
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "\"layers_per_block\" is missing");
  free(d), free(other);
  other = replaced(config, "\"conditioning_channels\":3", "\"conditioning_channels\":1");
  d = make_folder(root, "gray_hint", single, other, wf, NULL);
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "\"conditioning_channels\" is 1");
  free(d), free(other);

  /* no weights file */
  d = make_folder(root, "no_weights", single, config, NULL, NULL);
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "no weights file (looked for diffusion_pytorch_model.safetensors");
  free(d);

  /* a tensor missing: named by its single-file name */
  d = make_folder(root, "missing_tensor", single, config, wf, "controlnet_down_blocks.8.weight");
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "zero_convs.8.0.weight");
  free(d);

  /* weights whose shapes do not fit config.json (it says 64-wide context, the file has 32) */
  other = replaced(config, "\"cross_attention_dim\":32", "\"cross_attention_dim\":64");
  d = make_folder(root, "wrong_shapes", single, other, wf, NULL);
  mp_error *e = mp_controlnet_open(d, NULL, &cn);
  assert_non_null(e);
  const char *msg = mp_error_message(e);
  if (!strstr(msg, "attn2.to_k.weight") || !strstr(msg, "down_blocks.0.attentions.0") || !strstr(msg, "64"))
    fail_msg("shape error does not name the key both ways and the shapes: %s", msg);
  print_message("wrong shapes: %s\n", msg);
  mp_error_free(e);
  free(d), free(other);

  /* a folder that is neither kind */
  d = make_folder(root, "empty", NULL, NULL, NULL, NULL);
  assert_err_contains(mp_controlnet_open(d, NULL, &cn), "not a diffusers model folder");
  free(d);

  mp_weights_close(single);
  free(root), free(cp);
  cJSON_free(config);
}

/* The config.json of lllyasviel/control_v11p_sd15_canny (the keys diffusers 0.16 wrote) reads as SD 1.5's
 * ControlNet: 320 channels x 1/2/4/4, 2 ResBlocks per level, 8 heads, CLIP ViT-L context. */
static void test_controlnet_diffusers_sd15_config(void **state) {
  (void)state;
  static const char *canny =
      "{\"_class_name\": \"ControlNetModel\", \"_diffusers_version\": \"0.16.0.dev0\", \"act_fn\": \"silu\",\n"
      " \"attention_head_dim\": 8, \"block_out_channels\": [320, 640, 1280, 1280], \"class_embed_type\": null,\n"
      " \"conditioning_embedding_out_channels\": [16, 32, 96, 256], \"controlnet_conditioning_channel_order\": \"rgb\",\n"
      " \"cross_attention_dim\": 768, \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\",\n"
      " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1, \"flip_sin_to_cos\": true, \"freq_shift\": 0,\n"
      " \"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05,\n"
      " \"norm_num_groups\": 32, \"num_class_embeds\": null, \"only_cross_attention\": false,\n"
      " \"projection_class_embeddings_input_dim\": null, \"resnet_time_scale_shift\": \"default\",\n"
      " \"upcast_attention\": false, \"use_linear_projection\": false}\n";
  char *root = test_tmpdir();
  char *dir = make_folder(root, "control_v11p_sd15_canny", NULL, canny, NULL, NULL);
  assert_true(mp_diffusers_is_controlnet(dir));
  mp_unet_config u;
  assert_ok(mp_controlnet_config_from_diffusers(dir, &u));
  assert_int_equal(u.model_channels, 320);
  assert_int_equal(u.n_levels, 4);
  static const int mult[4] = {1, 2, 4, 4};
  for (int l = 0; l < 4; l++) {
    assert_int_equal(u.channel_mult[l], mult[l]);
    assert_int_equal(u.attention_at_level[l], l < 3);
  }
  assert_int_equal(u.num_res_blocks, 2);
  assert_int_equal(u.num_heads, 8);
  assert_int_equal(u.context_dim, 768);
  assert_int_equal(u.in_channels, 4);
  assert_int_equal(u.out_channels, 4);
  assert_false(u.linear_in_transformer);
  free(dir), free(root);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_controlnet_diffusers_folder),
      cmocka_unit_test(test_controlnet_diffusers_errors),
      cmocka_unit_test(test_controlnet_diffusers_sd15_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
