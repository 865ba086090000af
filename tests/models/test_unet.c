/* The UNet on the tiny golden model: unet.a (batch 1, t=500) and unet.b (batch 2, 8x12, fractional t),
 * plus the errors a wrong checkpoint gets. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "models/unet.h"
#include "testutil.h"
#include "tiny_model.h"

static const float *golden(const mp_weights *g, const char *name, int64_t *n) {
  const mp_weight *it = mp_weights_find(g, name);
  if (!it) fail_msg("golden tensor %s missing", name);
  assert_int_equal(it->t.dtype, MP_F32);
  if (n) *n = mp_tensor_numel(&it->t);
  return it->t.data;
}

static void run_case(mp_unet *u, mp_pool *pool, const mp_weights *g, const char *c, int batch, int h, int w) {
  char k[64];
  int64_t n_eps, n_ctx;
  snprintf(k, sizeof k, "unet.%s.x", c);
  const float *x = golden(g, k, NULL);
  snprintf(k, sizeof k, "unet.%s.t", c);
  const float *t = golden(g, k, NULL);
  snprintf(k, sizeof k, "unet.%s.context", c);
  const float *ctx = golden(g, k, &n_ctx);
  snprintf(k, sizeof k, "unet.%s.eps", c);
  const float *ref = golden(g, k, &n_eps);
  float *eps = malloc(sizeof(float) * (size_t)n_eps);
  assert_ok(mp_unet_forward(u, pool, batch, h, w, x, t, ctx, (int)(n_ctx / batch / 32), eps));
  double rel;
  if (!within_fp32(eps, ref, n_eps, &rel)) fail_msg("unet.%s: rel l2 %g", c, rel);
  print_message("unet.%s: rel l2 %.3g\n", c, rel);
  free(eps);
}

static void test_unet_tiny_golden(void **state) {
  (void)state;
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *gp = test_shared_path("golden/tiny/unet.safetensors");
  mp_weights *w, *g;
  assert_ok(mp_weights_open(ck, &w));
  assert_ok(mp_weights_open(gp, &g));
  mp_unet_config cfg = tiny_unet_config();
  mp_unet *u;
  assert_ok(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u));
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  run_case(u, pool, g, "a", 1, 8, 8);
  run_case(u, pool, g, "b", 2, 8, 12);
  run_case(u, NULL, g, "b", 2, 8, 12); /* single-threaded gives the same */
  /* latent sizes that do not divide by the downsampling are refused, not mangled */
  float dummy[4 * 4 * 6];
  assert_err_contains(mp_unet_forward(u, pool, 1, 4, 6, dummy, dummy, dummy, 1, dummy), "multiples of 4");
  mp_unet_free(u);

  /* a config that disagrees with the file names the key and both shapes */
  cfg.context_dim = 768;
  assert_err_contains(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u), "attn2.to_k.weight: expected shape [32,768], found [32,32]");
  cfg = tiny_unet_config();
  assert_err_contains(mp_unet_load(w, "model.nothing.", &cfg, &u), "missing tensor model.nothing.time_embed.0.weight");
  mp_pool_destroy(pool);
  mp_weights_close(w);
  mp_weights_close(g);
  free(ck), free(gp);
}

/* SD 2.x stores proj_in/proj_out as Linear [C, C] (use_linear_in_transformer): the same numbers as
 * 1x1 convolutions must give the same eps. Also num_head_channels instead of num_heads. */
static void test_unet_linear_projections_and_head_channels(void **state) {
  (void)state;
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *gp = test_shared_path("golden/tiny/unet.safetensors");
  mp_weights *w, *g;
  assert_ok(mp_weights_open(ck, &w));
  assert_ok(mp_weights_open(gp, &g));
  /* a copy of the checkpoint's names with every proj_in/proj_out weight viewed as 2-D */
  mp_weights *lin = mp_weights_new("linear-proj");
  for (size_t i = 0; i < mp_weights_count(w); i++) {
    const mp_weight *it = mp_weights_at(w, i);
    bool proj = (strstr(it->name, ".proj_in.weight") || strstr(it->name, ".proj_out.weight")) && it->t.ndim == 4;
    assert_ok(mp_weights_add(lin, it->name, it->t.dtype, proj ? 2 : it->t.ndim, it->t.shape, it->t.data));
  }
  assert_ok(mp_weights_finish(lin));
  mp_unet_config cfg = tiny_unet_config();
  cfg.linear_in_transformer = true;
  mp_unet *u;
  assert_err_contains(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u), "proj_in.weight: expected shape [32,32], found [32,32,1,1]");
  assert_ok(mp_unet_load(lin, MP_PREFIX_UNET, &cfg, &u));
  run_case(u, NULL, g, "b", 2, 8, 12);
  mp_unet_free(u);
  /* head_dim 16 everywhere: level 0 keeps 2 heads (32 channels); level 1 and the middle get 4 */
  cfg = tiny_unet_config();
  cfg.num_heads = -1, cfg.num_head_channels = 16;
  assert_ok(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u));
  float x[4 * 64], t = 10, ctx[77 * 32], eps[4 * 64];
  for (int i = 0; i < 4 * 64; i++) x[i] = (float)(i % 7) * 0.1f;
  for (int i = 0; i < 77 * 32; i++) ctx[i] = (float)(i % 5) * 0.1f;
  assert_ok(mp_unet_forward(u, NULL, 1, 8, 8, x, &t, ctx, 77, eps));
  for (int i = 0; i < 4 * 64; i++) assert_true(isfinite(eps[i]));
  mp_unet_free(u);
  cfg.num_head_channels = 24; /* 32 channels do not split into 24-wide heads */
  assert_err_contains(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u), "do not split into attention heads");
  mp_weights_close(lin), mp_weights_close(w), mp_weights_close(g);
  free(ck), free(gp);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_unet_tiny_golden),
                                     cmocka_unit_test(test_unet_linear_projections_and_head_channels)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
