/* Checkpoint recognition and CLIP binding: real layouts recognised, wrong ones named precisely. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/ops.h"
#include "models/clip.h"
#include "models/sd.h"
#include "testutil.h"

static void test_tiny_config_from_json(void **state) {
  (void)state;
  char *path = test_shared_path("golden/tiny/tiny.safetensors");
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  mp_sd_config cfg;
  assert_ok(mp_sd_config_detect(w, NULL, &cfg));
  assert_int_equal(cfg.family, MP_FAMILY_SD1);
  assert_int_equal(cfg.unet.model_channels, 32);
  assert_int_equal(cfg.unet.n_levels, 3);
  assert_int_equal(cfg.unet.channel_mult[1], 2);
  assert_true(cfg.unet.attention_at_level[0] && cfg.unet.attention_at_level[1] && !cfg.unet.attention_at_level[2]);
  assert_int_equal(cfg.unet.num_heads, 2);
  assert_int_equal(cfg.unet.context_dim, 32);
  assert_int_equal(cfg.vae.n_levels, 4);
  assert_int_equal(cfg.vae.ch_mult[3], 2);
  assert_int_equal(cfg.clip.hidden, 32);
  assert_int_equal(cfg.clip.layers, 2);
  assert_int_equal(cfg.clip.heads, 4);
  assert_false(cfg.inpainting);
  mp_weights_close(w);
  free(path);
}

/* A copy of tiny.safetensors' entries with one tensor replaced by a wrong shape. */
static mp_weights *tiny_with_bad_tensor(const char *bad_name, int64_t d0, int64_t d1) {
  char *path = test_shared_path("golden/tiny/tiny.safetensors");
  mp_weights *src, *w = mp_weights_new(path);
  assert_ok(mp_weights_open(path, &src));
  for (size_t i = 0; i < mp_weights_count(src); i++) {
    const mp_weight *t = mp_weights_at(src, i);
    if (strcmp(t->name, bad_name) == 0) {
      float *d = mp_calloc((size_t)(d0 * d1), sizeof(float));
      assert_ok(mp_weights_add_owned(w, t->name, MP_F32, 2, (int64_t[]){d0, d1}, d));
    } else {
      void *copy = mp_alloc(mp_tensor_nbytes(&t->t));
      memcpy(copy, t->t.data, mp_tensor_nbytes(&t->t));
      assert_ok(mp_weights_add_owned(w, t->name, t->t.dtype, t->t.ndim, t->t.shape, copy));
    }
  }
  assert_ok(mp_weights_finish(w));
  mp_weights_close(src);
  free(path);
  return w;
}

static void test_wrong_shape_error_message(void **state) {
  (void)state;
  const char *key = "cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight";
  mp_weights *w = tiny_with_bad_tensor(key, 32, 16);
  char *cfgpath = test_shared_path("golden/tiny/tiny.json");
  mp_sd_config cfg;
  assert_ok(mp_sd_config_detect(w, cfgpath, &cfg));
  mp_clip *clip = NULL;
  mp_error *e = mp_clip_load(w, MP_PREFIX_CLIP, &cfg.clip, &clip);
  assert_non_null(e);
  const char *msg = mp_error_message(e);
  assert_non_null(strstr(msg, key));
  assert_non_null(strstr(msg, "expected shape [32,32], found [32,16]"));
  mp_error_free(e);
  assert_null(clip);
  mp_weights_close(w);
  free(cfgpath);
}

static void test_not_a_checkpoint(void **state) {
  (void)state;
  mp_weights *w = mp_weights_new("x.safetensors");
  float *d = mp_calloc(4, sizeof(float));
  assert_ok(mp_weights_add_owned(w, "foo", MP_F32, 1, (int64_t[]){4}, d));
  assert_ok(mp_weights_finish(w));
  mp_sd_config cfg;
  assert_err_contains(mp_sd_config_detect(w, NULL, &cfg), "not a Stable Diffusion checkpoint");
  mp_weights_close(w);

  w = mp_weights_new("xl.safetensors");
  d = mp_calloc(4, sizeof(float));
  assert_ok(mp_weights_add_owned(w, "conditioner.embedders.0.x", MP_F32, 1, (int64_t[]){4}, d));
  assert_ok(mp_weights_finish(w));
  /* recognised as SDXL by its conditioner; the error names what it lacks */
  assert_err_contains(mp_sd_config_detect(w, NULL, &cfg), "no model.diffusion_model.");
  assert_int_equal(cfg.family, MP_FAMILY_SDXL);
  mp_weights_close(w);
}

/* Clip skip 2 is the penultimate layer plus the final LayerNorm. */
static void test_clip_skip(void **state) {
  (void)state;
  char *path = test_shared_path("golden/tiny/tiny.safetensors");
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  mp_sd_config cfg;
  assert_ok(mp_sd_config_detect(w, NULL, &cfg));
  mp_clip *clip;
  assert_ok(mp_clip_load(w, MP_PREFIX_CLIP, &cfg.clip, &clip));
  int32_t ids[5] = {49406, 320, 1125, 539, 49407};
  float a[5 * 32], b[5 * 32], emb[5 * 32];
  assert_ok(mp_clip_encode(clip, NULL, ids, 5, 2, a));
  assert_ok(mp_clip_embed_tokens(clip, ids, 5, emb));
  assert_ok(mp_clip_encode_embeds(clip, NULL, emb, 5, 1, true, b));
  assert_memory_equal(a, b, sizeof a);
  assert_err_contains(mp_clip_encode(clip, NULL, ids, 5, 3, a), "clip skip 3 is out of range");
  assert_err_contains(mp_clip_encode(clip, NULL, ids, 0, 1, a), "0 tokens");
  int32_t bad[2] = {49406, 60000};
  assert_err_contains(mp_clip_encode(clip, NULL, bad, 2, 1, a), "outside the embedding table");
  mp_clip_free(clip);
  mp_weights_close(w);
  free(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tiny_config_from_json),
      cmocka_unit_test(test_wrong_shape_error_message),
      cmocka_unit_test(test_not_a_checkpoint),
      cmocka_unit_test(test_clip_skip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
