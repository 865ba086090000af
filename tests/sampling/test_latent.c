/* The model side of a pass (src/pipeline/latent.c) on the tiny golden checkpoint: VAE encoding to a
 * scaled latent (posterior mean, and mean + std * noise), decoding with the scale undone, and the
 * 9-channel inpainting condition's layout. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "models/sd.h"
#include "pipeline/generate.h"
#include "testutil.h"

typedef struct {
  mp_weights *ckpt, *golden;
  mp_sd_config cfg;
  mp_vae *vae;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *g = test_shared_path("golden/tiny/vae.safetensors");
  assert_ok(mp_weights_open(ck, &f->ckpt));
  assert_ok(mp_weights_open(g, &f->golden));
  free(ck);
  free(g);
  assert_ok(mp_sd_config_detect(f->ckpt, NULL, &f->cfg));
  assert_ok(mp_vae_load(f->ckpt, MP_PREFIX_VAE, &f->cfg.vae, &f->vae));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_vae_free(f->vae);
  mp_weights_close(f->ckpt);
  mp_weights_close(f->golden);
  free(f);
  return 0;
}

static const float *golden(fixture *f, const char *name, int64_t n) {
  const mp_weight *w = mp_weights_find(f->golden, name);
  if (!w || mp_tensor_numel(&w->t) != n) fail_msg("golden %s missing or of another size", name);
  return w->t.data;
}

/* A "noise source" that always returns the same constant, to check mean + std * noise. */
typedef struct {
  mp_noise base;
  float value;
} const_noise;
static mp_error *const_fill(mp_noise *self, float *out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = ((const_noise *)self)->value;
  return NULL;
}
static void const_destroy(mp_noise *self) { (void)self; }

static void test_encode_mean_and_sample(void **state) {
  fixture *f = *state;
  enum { N = 4 * 8 * 8 };
  const float *image = golden(f, "vae.encode.image", 3 * 64 * 64), *mean = golden(f, "vae.encode.mean", N),
              *std = golden(f, "vae.encode.std", N);
  float lat[N], want[N];
  assert_ok(mp_encode_latent(f->vae, NULL, image, 64, 64, NULL, 1.0f, lat));
  assert_true(test_rel_l2(lat, mean, N) < 1e-4);
  const_noise cn = {.base = {.fill = const_fill, .destroy = const_destroy}, .value = 0.5f};
  assert_ok(mp_encode_latent(f->vae, NULL, image, 64, 64, &cn.base, 0.18215f, lat));
  for (int i = 0; i < N; i++) want[i] = (mean[i] + std[i] * 0.5f) * 0.18215f;
  assert_true(test_rel_l2(lat, want, N) < 1e-4);
  assert_err_contains(mp_encode_latent(f->vae, NULL, image, 60, 64, NULL, 1.0f, lat), "multiples of 8");
}

static void test_decode_undoes_the_scale(void **state) {
  fixture *f = *state;
  enum { N = 4 * 8 * 8 };
  const float *z = golden(f, "vae.decode_a.z", N), *ref = golden(f, "vae.decode_a.image", 3 * 64 * 64);
  float scaled[N];
  for (int i = 0; i < N; i++) scaled[i] = z[i] * 0.18215f;
  float *img = malloc(3 * 64 * 64 * sizeof *img);
  assert_ok(mp_decode_latent(f->vae, NULL, scaled, 8, 8, 0.18215f, img));
  assert_true(test_rel_l2(img, ref, 3 * 64 * 64) < 1e-4);
  free(img);
}

static void test_inpaint_condition_layout(void **state) {
  fixture *f = *state;
  enum { HW = 64 * 64, LHW = 8 * 8 };
  const float *image = golden(f, "vae.encode.image", 3 * HW);
  float *mask = malloc(HW * sizeof *mask), *masked = malloc(3 * HW * sizeof *masked);
  for (int i = 0; i < HW; i++) mask[i] = (i % 64) >= 32 ? 1.0f : 0.0f; /* repaint the right half */
  for (int c = 0; c < 3; c++)
    for (int i = 0; i < HW; i++) masked[c * HW + i] = mask[i] ? 0.0f : image[c * HW + i];
  float cond[5 * LHW], want[4 * LHW];
  assert_ok(mp_inpaint_condition(f->vae, NULL, image, mask, 64, 64, 0.18215f, cond));
  for (int i = 0; i < LHW; i++) assert_true(cond[i] == ((i % 8) >= 4 ? 1.0f : 0.0f));
  assert_ok(mp_encode_latent(f->vae, NULL, masked, 64, 64, NULL, 0.18215f, want));
  assert_memory_equal(cond + LHW, want, sizeof want);
  free(mask);
  free(masked);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_encode_mean_and_sample, setup, teardown),
      cmocka_unit_test_setup_teardown(test_decode_undoes_the_scale, setup, teardown),
      cmocka_unit_test_setup_teardown(test_inpaint_condition_layout, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
