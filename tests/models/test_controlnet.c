/* ControlNet on the tiny golden ControlNet (../shared/golden/tiny-controlnet): the residuals of run a
 * from the original file, the same weights re-saved as a 1.1-style .pth (no control_model. prefix, f16)
 * through the restricted pickle reader, the config from shapes, and the errors a wrong file gets. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/ckpt.h"
#include "io/image.h"
#include "models/controlnet.h"
#include "models/sd_layout.h"
#include "testutil.h"
#include "tiny_model.h"

typedef struct {
  mp_pool *pool;
  mp_weights *golden;
  float *hint; /* [1, 3, 64, 64] */
  const float *x, *t, *ctx;
} fixture;

static const float *golden(const mp_weights *g, const char *name) {
  const mp_weight *it = mp_weights_find(g, name);
  if (!it) fail_msg("golden tensor %s missing", name);
  assert_int_equal(it->t.dtype, MP_F32);
  return it->t.data;
}

static void fixture_open(fixture *f) {
  char *gp = test_shared_path("golden/tiny-controlnet/controlnet.safetensors");
  char *hp = test_shared_path("golden/tiny-controlnet/hint.png");
  assert_ok(mp_weights_open(gp, &f->golden));
  assert_ok(mp_pool_create(2, &f->pool));
  mp_image img;
  assert_ok(mp_image_read(hp, 3, &img));
  assert_int_equal(img.width, 64);
  assert_int_equal(img.height, 64);
  f->hint = malloc(sizeof(float) * 3 * 64 * 64);
  mp_image_to_planar(&img, f->hint, 0.0f, 1.0f);
  mp_image_free(&img);
  f->x = golden(f->golden, "controlnet.a.x");
  f->t = golden(f->golden, "controlnet.a.t");
  f->ctx = golden(f->golden, "controlnet.a.context");
  free(gp);
  free(hp);
}

static void fixture_close(fixture *f) {
  free(f->hint);
  mp_pool_destroy(f->pool);
  mp_weights_close(f->golden);
}

/* Run a of the golden: residuals into `down` (9 x 8x8..2x2 values, concatenated) and `mid`. */
static void residuals(fixture *f, mp_controlnet *cn, float *down, int64_t *n_down, float *mid) {
  float emb[32 * 8 * 8];
  assert_ok(mp_controlnet_hint(cn, f->pool, 1, 64, 64, f->hint, emb));
  mp_unet_inputs in = {.batch = 1, .h = 8, .w = 8, .x = f->x, .t = f->t, .context = f->ctx, .n_ctx = 77};
  mp_unet_control out;
  assert_ok(mp_controlnet_forward(cn, f->pool, &in, emb, &out));
  assert_int_equal(out.n_down, 9);
  assert_true(out.scale == 1.0f);
  static const int64_t sizes[9] = {32 * 64, 32 * 64, 32 * 64, 32 * 16, 64 * 16, 64 * 16, 64 * 4, 64 * 4, 64 * 4};
  int64_t at = 0;
  for (int i = 0; i < 9; i++) memcpy(down + at, out.down[i], sizeof(float) * (size_t)sizes[i]), at += sizes[i];
  memcpy(mid, out.mid, sizeof(float) * 64 * 4);
  *n_down = at;
}

static void test_controlnet_golden_and_pth(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char *cp = test_shared_path("golden/tiny-controlnet/controlnet_tiny.safetensors");
  char *jp = test_shared_path("golden/tiny-controlnet/controlnet_tiny.json");
  mp_controlnet *cn;
  assert_ok(mp_controlnet_open(cp, NULL, &cn)); /* the cldm JSON beside it gives the head count */
  mp_unet_config want = tiny_unet_config();
  const mp_unet_config *got = mp_controlnet_config(cn);
  assert_int_equal(got->model_channels, want.model_channels);
  assert_int_equal(got->n_levels, want.n_levels);
  assert_int_equal(got->num_heads, want.num_heads);
  assert_int_equal(got->context_dim, want.context_dim);
  assert_true(got->attention_at_level[0] && got->attention_at_level[1] && !got->attention_at_level[2]);

  float down[32 * 64 * 3 + 32 * 16 + 64 * 16 * 2 + 64 * 4 * 3], mid[64 * 4], down16[sizeof down / sizeof *down], mid16[64 * 4];
  int64_t n_down;
  residuals(&f, cn, down, &n_down, mid);
  assert_int_equal(n_down, (int64_t)(sizeof down / sizeof *down));
  double rel;
  int64_t at = 0;
  for (int i = 0; i < 9; i++) {
    char name[64];
    snprintf(name, sizeof name, "controlnet.a.down.%02d", i);
    const mp_weight *g = mp_weights_find(f.golden, name);
    assert_non_null(g);
    int64_t n = mp_tensor_numel(&g->t);
    if (!within_fp32(down + at, g->t.data, n, &rel)) fail_msg("%s: rel l2 %g", name, rel);
    at += n;
  }
  if (!within_fp32(mid, golden(f.golden, "controlnet.a.mid"), 64 * 4, &rel)) fail_msg("mid: rel l2 %g", rel);

  /* The same weights as a ControlNet 1.1 .pth: bare names, f16, read by the restricted pickle reader. */
  mp_weights *w;
  assert_ok(mp_weights_open(cp, &w));
  size_t n = mp_weights_count(w);
  char **names = calloc(n, sizeof *names);
  mp_tensor *ts = calloc(n, sizeof *ts);
  for (size_t i = 0; i < n; i++) {
    const mp_weight *it = mp_weights_at(w, i);
    assert_true(strncmp(it->name, "control_model.", 14) == 0);
    names[i] = strdup(it->name + 14);
    assert_ok(mp_tensor_alloc(&ts[i], MP_F16, it->t.ndim, it->t.shape));
    const float *src = it->t.data;
    for (int64_t k = 0; k < mp_tensor_numel(&it->t); k++) ((uint16_t *)ts[i].data)[k] = mp_f32_to_f16(src[k]);
  }
  char *dir = test_tmpdir(), pth[4096], bare[4096];
  snprintf(pth, sizeof pth, "%s/control_v11p_sd15_tiny.pth", dir);
  assert_ok(mp_ckpt_write(pth, n, (const char *const *)names, ts, false));
  mp_controlnet *cn16;
  assert_ok(mp_controlnet_open(pth, jp, &cn16));
  residuals(&f, cn16, down16, &n_down, mid16);
  /* f16 weights are the f32 ones rounded (rel 2^-11 each): the residuals stay within 1e-2 of the f32 run */
  double d2 = 0, r2 = 0;
  for (int64_t k = 0; k < n_down; k++) d2 += (down16[k] - down[k]) * (double)(down16[k] - down[k]), r2 += (double)down[k] * down[k];
  print_message("f16 .pth vs f32: residuals rel l2 %.3g\n", sqrt(d2 / r2));
  assert_true(sqrt(d2 / r2) < 1e-2);
  mp_controlnet_free(cn16);

  /* Without a config the shapes give everything but the head count (SD 1.x's 8 heads only at 768). */
  mp_weights *pw;
  assert_ok(mp_weights_open(pth, &pw));
  mp_unet_config shapes;
  assert_ok(mp_sd_control_config(pw, "", NULL, &shapes));
  assert_int_equal(shapes.model_channels, 32);
  assert_int_equal(shapes.n_levels, 3);
  assert_int_equal(shapes.channel_mult[1], 2);
  assert_int_equal(shapes.num_res_blocks, 2);
  assert_int_equal(shapes.context_dim, 32);
  assert_int_equal(shapes.in_channels, 4);
  assert_true(shapes.attention_at_level[1] && !shapes.attention_at_level[2]);
  mp_weights_close(pw);

  /* A file missing one zero conv names it. */
  snprintf(bare, sizeof bare, "%s/broken.pth", dir);
  size_t keep = 0;
  for (size_t i = 0; i < n; i++)
    if (strcmp(names[i], "zero_convs.8.0.weight") != 0) names[keep] = names[i], ts[keep++] = ts[i];
    else free(names[i]), mp_tensor_free(&ts[i]);
  assert_ok(mp_ckpt_write(bare, keep, (const char *const *)names, ts, false));
  mp_controlnet *bad;
  assert_err_contains(mp_controlnet_open(bare, jp, &bad), "zero_convs.8.0.weight");
  for (size_t i = 0; i < keep; i++) free(names[i]), mp_tensor_free(&ts[i]);
  free(names);
  free(ts);

  /* An SD checkpoint is not a ControlNet; a hint whose size does not divide by 8 is refused. */
  char *sd = test_shared_path("golden/tiny/tiny.safetensors");
  assert_err_contains(mp_controlnet_open(sd, NULL, &bad), "is not a ControlNet");
  float small[3 * 12 * 12] = {0}, emb[32];
  assert_err_contains(mp_controlnet_hint(cn, f.pool, 1, 12, 12, small, emb), "multiples of 8");

  mp_weights_close(w);
  mp_controlnet_free(cn);
  fixture_close(&f);
  free(sd), free(dir), free(cp), free(jp);
}

/* The UNet refuses residuals that do not match its blocks, and an encoder-only copy has no eps. */
static void test_controlnet_unet_checks(void **state) {
  (void)state;
  fixture f;
  fixture_open(&f);
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *cp = test_shared_path("golden/tiny-controlnet/controlnet_tiny.safetensors");
  mp_weights *w, *cw;
  assert_ok(mp_weights_open(ck, &w));
  assert_ok(mp_weights_open(cp, &cw));
  mp_unet_config cfg = tiny_unet_config();
  mp_unet *u, *enc;
  assert_ok(mp_unet_load(w, MP_PREFIX_UNET, &cfg, &u));
  assert_ok(mp_unet_load_encoder(cw, "control_model.", &cfg, &enc));
  float eps[4 * 64];
  mp_unet_control control = {.n_down = 3, .scale = 1};
  mp_unet_inputs in = {.batch = 1, .h = 8, .w = 8, .x = f.x, .t = f.t, .context = f.ctx, .n_ctx = 77, .control = &control};
  assert_err_contains(mp_unet_run(u, f.pool, &in, eps), "ControlNet gives 3 residuals");
  in.control = NULL;
  assert_err_contains(mp_unet_run(enc, f.pool, &in, eps), "encoder-only");
  /* the full UNet's encoder runs too: 9 blocks, the middle at 2x2 */
  mp_unet_encoded e;
  assert_ok(mp_unet_encode(u, f.pool, &in, NULL, &e));
  assert_int_equal(e.n_blocks, 9);
  assert_int_equal(e.mid_channels, 64);
  assert_int_equal(e.mid_h, 2);
  mp_unet_free(enc);
  mp_unet_free(u);
  mp_weights_close(cw);
  mp_weights_close(w);
  fixture_close(&f);
  free(ck), free(cp);
}

/* make-model --kind controlnet: the same tensor names and shapes as the reference's tiny ControlNet,
 * and it loads with the plain LDM config written beside it (no control_stage_config). */
static void test_random_controlnet_layout(void **state) {
  (void)state;
  char *ref_path = test_shared_path("golden/tiny-controlnet/controlnet_tiny.safetensors"), *dir = test_tmpdir(), path[4096];
  snprintf(path, sizeof path, "%s/random_cn.safetensors", dir);
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny", &cfg));
  assert_ok(mp_sd_write_random_controlnet(path, &cfg, MP_F32, 5, "tiny"));
  mp_weights *ref, *ours;
  assert_ok(mp_weights_open(ref_path, &ref));
  assert_ok(mp_weights_open(path, &ours));
  assert_int_equal(mp_weights_count(ours), mp_weights_count(ref));
  for (size_t i = 0; i < mp_weights_count(ref); i++) {
    const mp_weight *r = mp_weights_at(ref, i), *o = mp_weights_find(ours, r->name);
    if (!o) fail_msg("%s missing from the random ControlNet", r->name);
    assert_int_equal(o->t.ndim, r->t.ndim);
    for (int d = 0; d < r->t.ndim; d++)
      if (o->t.shape[d] != r->t.shape[d]) fail_msg("%s: dimension %d is %lld, the reference's %lld", r->name, d, (long long)o->t.shape[d], (long long)r->t.shape[d]);
  }
  mp_controlnet *cn;
  assert_ok(mp_controlnet_load(ours, NULL, &cn));
  assert_int_equal(mp_controlnet_config(cn)->num_heads, 2);
  mp_controlnet_free(cn);
  mp_weights_close(ours);
  mp_weights_close(ref);
  free(ref_path), free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_controlnet_golden_and_pth),
      cmocka_unit_test(test_controlnet_unet_checks),
      cmocka_unit_test(test_random_controlnet_layout),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
