/* The enumerated CompVis layout must be exactly the tiny golden checkpoint's (shapes included), and
 * a random checkpoint written from it must load back as the same model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/clip.h"
#include "models/sd_layout.h"
#include "testutil.h"

static bool extra_in_real_files(const char *name) {
  return strncmp(name, "model_ema.", 10) == 0 || strncmp(name, "posterior_", 10) == 0;
}

/* Every tensor of the layout is in the checkpoint with the layout's shape. */
static void assert_layout_in_checkpoint(const mp_layout_entry *L, int n, const mp_weights *w) {
  for (int i = 0; i < n; i++) {
    const mp_weight *t = mp_weights_find(w, L[i].name);
    if (!t) fail_msg("layout has %s, the golden checkpoint does not", L[i].name);
    assert_int_equal(t->t.ndim, L[i].ndim);
    for (int d = 0; d < L[i].ndim; d++)
      if (t->t.shape[d] != L[i].shape[d]) fail_msg("%s: dim %d is %lld in the golden file, %lld in the layout", L[i].name, d,
                                                  (long long)t->t.shape[d], (long long)L[i].shape[d]);
  }
}

static void test_tiny_layout_matches_golden_checkpoint(void **state) {
  (void)state;
  char *path = test_shared_path("golden/tiny/tiny.safetensors");
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny", &cfg));
  mp_layout_entry *L;
  int n;
  assert_ok(mp_sd_layout(&cfg, &L, &n));
  assert_layout_in_checkpoint(L, n, w);
  int extras = 0;
  for (size_t i = 0; i < mp_weights_count(w); i++) {
    const char *name = mp_weights_at(w, i)->name;
    bool found = false;
    for (int k = 0; k < n && !found; k++) found = strcmp(L[k].name, name) == 0;
    if (!found && !extra_in_real_files(name)) fail_msg("golden checkpoint has %s, the layout does not", name);
    extras += !found;
  }
  assert_int_equal((int)mp_weights_count(w), n + extras);
  free(L);
  mp_weights_close(w);
  free(path);
}

/* The tiny-xl preset is exactly the golden SDXL checkpoint's layout (it lacks only OpenCLIP's unused
 * logit_scale), and the sdxl preset has the parameter counts of sd_xl_base_1.0.safetensors. */
static void test_sdxl_layouts(void **state) {
  (void)state;
  char *path = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny-xl", &cfg));
  mp_layout_entry *L;
  int n;
  assert_ok(mp_sd_layout(&cfg, &L, &n));
  assert_layout_in_checkpoint(L, n, w);
  assert_int_equal((int)mp_weights_count(w), n + 1);
  assert_non_null(mp_weights_find(w, "conditioner.embedders.1.model.logit_scale"));
  free(L);
  mp_weights_close(w);
  free(path);

  assert_ok(mp_sd_preset("sdxl", &cfg));
  assert_ok(mp_sd_layout(&cfg, &L, &n));
  long long unet = 0, vae = 0, te1 = 0, te2 = 0;
  for (int i = 0; i < n; i++) {
    long long k = mp_shape_numel(L[i].ndim, L[i].shape);
    if (L[i].dtype != MP_F32) continue; /* position_ids */
    if (!strncmp(L[i].name, "model.diffusion_model.", 22)) unet += k;
    else if (!strncmp(L[i].name, "first_stage_model.", 18)) vae += k;
    else if (!strncmp(L[i].name, "conditioner.embedders.0.", 24)) te1 += k;
    else if (!strncmp(L[i].name, "conditioner.embedders.1.", 24)) te2 += k;
    else fail_msg("%s belongs to no part", L[i].name);
  }
  printf("sdxl preset: UNet %lld, VAE %lld, TE1 %lld, TE2 %lld\n", unet, vae, te1, te2);
  assert_int_equal(unet, 2567463684LL);
  assert_int_equal(vae, 83653863LL);
  assert_int_equal(te1, 123060480LL);
  assert_int_equal(te2, 694659840LL);
  free(L);
}

static void test_random_checkpoint_round_trips(void **state) {
  (void)state;
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/demo.safetensors", dir);
  mp_sd_config cfg, got;
  assert_ok(mp_sd_preset("tiny", &cfg));
  assert_ok(mp_sd_write_random(path, &cfg, MP_F16, 7, "tiny"));
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  assert_ok(mp_sd_config_detect(w, NULL, &got)); /* reads demo.json beside it */
  assert_int_equal(got.unet.model_channels, 32);
  assert_int_equal(got.unet.num_heads, 2);
  assert_int_equal(got.clip.hidden, 32);
  const mp_weight *b = mp_weights_find(w, "alphas_cumprod");
  assert_non_null(b);
  /* SD 1.x schedule: alphas_cumprod[999] = 0.0046... */
  float last = ((const float *)b->t.data)[999];
  assert_true(last > 0.0046f && last < 0.0047f);
  mp_clip *clip;
  assert_ok(mp_clip_load(w, MP_PREFIX_CLIP, &got.clip, &clip));
  mp_clip_free(clip);
  mp_weights_close(w);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tiny_layout_matches_golden_checkpoint),
      cmocka_unit_test(test_random_checkpoint_round_trips), cmocka_unit_test(test_sdxl_layouts),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
