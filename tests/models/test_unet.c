/* The UNet on the tiny golden model: unet.a (batch 1, t=500) and unet.b (batch 2, 8x12, fractional t),
 * plus the errors a wrong checkpoint gets. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/matmul.h"
#include "core/profile.h"
#include "core/tensor.h"
#include "core/threads.h"
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

/* The tiny checkpoint (*w) and its UNet goldens (*g). */
static void open_tiny(mp_weights **w, mp_weights **g) {
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *gp = test_shared_path("golden/tiny/unet.safetensors");
  assert_ok(mp_weights_open(ck, w));
  assert_ok(mp_weights_open(gp, g));
  free(ck), free(gp);
}

static void test_unet_tiny_golden(void **state) {
  (void)state;
  mp_weights *w, *g;
  open_tiny(&w, &g);
  mp_unet_config cfg = tiny_unet_config();
  mp_unet *u;
  assert_ok(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u));
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  run_case(u, pool, g, "a", 1, 8, 8);
  run_case(u, pool, g, "b", 2, 8, 12);
  run_case(u, NULL, g, "b", 2, 8, 12); /* single-threaded gives the same */
  /* a UNet bound anew takes over the buffers of the one it replaces; both still compute the goldens */
  mp_unet *u2;
  assert_ok(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u2));
  mp_unet_adopt_buffers(u2, u);
  run_case(u2, pool, g, "b", 2, 8, 12);
  run_case(u, pool, g, "a", 1, 8, 8);
  mp_unet_adopt_buffers(u2, NULL), mp_unet_adopt_buffers(NULL, u);
  mp_unet_free(u2);
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
}

/* SD 2.x stores proj_in/proj_out as Linear [C, C] (use_linear_in_transformer): the same numbers as
 * 1x1 convolutions must give the same eps. Also num_head_channels instead of num_heads. */
static void test_unet_linear_projections_and_head_channels(void **state) {
  (void)state;
  mp_weights *w, *g;
  open_tiny(&w, &g);
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
}

/* Classifier-free guidance's batch: rows b and b + 2 share x and t, each row has its own text. The UNet
 * computes what comes before the first cross-attention once per pair (one self-attention fewer per
 * pair), and every row's eps is what that row alone gives: within the fp32 bound in f32 (a batch of 4
 * and a batch of 1 round differently in the matrix products, ~1e-6, shared or not), and under the bf16
 * backend (its NHWC ResBlocks) within the reduced-precision one. */
static void cfg_pairs_case(mp_unet *u, const mp_weights *g, mp_backend *be) {
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  mp_pool_set_backend(pool, be);
  mp_profile prof = {0};
  mp_pool_set_profile(pool, &prof);
  enum { B = 4, H = 8, W = 12, N_CTX = 5, CTX_DIM = 32, PER = 4 * H * W };
  const float *xb = golden(g, "unet.b.x", NULL), *tb = golden(g, "unet.b.t", NULL); /* two latents, two times */
  float x[B * PER], t[B], ctx[B * N_CTX * CTX_DIM], eps[B * PER], one[PER];
  for (int b = 0; b < B; b++) {
    memcpy(x + b * PER, xb + (b % 2) * PER, sizeof(float) * PER);
    t[b] = tb[b % 2];
  }
  for (int i = 0; i < B * N_CTX * CTX_DIM; i++) ctx[i] = sinf(0.37f * (float)i);
  int64_t calls[2];
  for (int alike = 1; alike >= 0; alike--) {
    if (!alike) x[2 * PER + 5] += 0.25f; /* row 2 no longer row 0's latent: no pair is shared */
    mp_profile_reset(&prof);
    assert_ok(mp_unet_forward(u, pool, B, H, W, x, t, ctx, N_CTX, eps));
    calls[alike] = prof.calls[MP_OP_ATTENTION];
    for (int b = 0; b < B; b++) {
      assert_ok(mp_unet_forward(u, pool, 1, H, W, x + b * PER, t + b, ctx + b * N_CTX * CTX_DIM, N_CTX, one));
      double rel;
      bool ok = be ? (rel = test_rel_l2(eps + b * PER, one, PER)) <= 1e-2 : within_fp32(eps + b * PER, one, PER, &rel);
      if (!ok) fail_msg("%s, row %d (halves %salike): rel l2 %g from the row alone", be ? "bf16" : "f32", b, alike ? "" : "not ", rel);
    }
  }
  assert_int_equal(calls[1], calls[0] - 2);
  mp_pool_set_profile(pool, NULL);
  mp_pool_set_backend(pool, NULL);
  mp_pool_destroy(pool);
}

static void test_unet_cfg_pairs_share_their_start(void **state) {
  (void)state;
  mp_weights *w, *g;
  open_tiny(&w, &g);
  mp_unet_config cfg = tiny_unet_config();
  mp_unet *u;
  assert_ok(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u));
  cfg_pairs_case(u, g, NULL);
  if (*mp_cpu_bf16_support()) {
    mp_backend *be;
    assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
    cfg_pairs_case(u, g, be);
    mp_backend_destroy(be);
  }
  mp_unet_free(u);
  mp_weights_close(w), mp_weights_close(g);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_unet_tiny_golden),
                                     cmocka_unit_test(test_unet_linear_projections_and_head_channels),
                                     cmocka_unit_test(test_unet_cfg_pairs_share_their_start)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
