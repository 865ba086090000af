/* The VAE on the tiny golden model (decode_a, non-square decode_b, encode moments), and tiled ≈ untiled. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/matmul.h"
#include "core/tensor.h"
#include "models/vae.h"
#include "testutil.h"
#include "tiny_model.h"

static const float *golden(const mp_weights *g, const char *name, int64_t *n) {
  const mp_weight *it = mp_weights_find(g, name);
  if (!it) fail_msg("golden tensor %s missing", name);
  if (n) *n = mp_tensor_numel(&it->t);
  return it->t.data;
}

static void check(const char *what, const float *got, const float *ref, int64_t n) {
  double rel;
  if (!within_fp32(got, ref, n, &rel)) fail_msg("%s: rel l2 %g", what, rel);
  print_message("%s: rel l2 %.3g\n", what, rel);
}

typedef struct {
  mp_weights *w, *g;
  mp_vae *vae;
  mp_pool *pool;
  char *paths[2];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->paths[0] = test_shared_path("golden/tiny/tiny.safetensors");
  f->paths[1] = test_shared_path("golden/tiny/vae.safetensors");
  assert_ok(mp_weights_open(f->paths[0], &f->w));
  assert_ok(mp_weights_open(f->paths[1], &f->g));
  mp_vae_config cfg = tiny_vae_config();
  assert_ok(mp_vae_load(f->w, MP_PREFIX_VAE, &cfg, &f->vae));
  assert_ok(mp_pool_create(2, &f->pool));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_vae_free(f->vae);
  mp_pool_destroy(f->pool);
  mp_weights_close(f->w), mp_weights_close(f->g);
  free(f->paths[0]), free(f->paths[1]), free(f);
  return 0;
}

static void test_vae_decode_golden(void **state) {
  fixture *f = *state;
  int64_t n;
  float *img = malloc(sizeof(float) * 3 * 64 * 96);
  assert_ok(mp_vae_decode(f->vae, f->pool, 8, 8, golden(f->g, "vae.decode_a.z", NULL), img));
  const float *ref = golden(f->g, "vae.decode_a.image", &n);
  check("decode_a", img, ref, n);
  assert_ok(mp_vae_decode(f->vae, f->pool, 8, 12, golden(f->g, "vae.decode_b.z", NULL), img));
  ref = golden(f->g, "vae.decode_b.image", &n);
  check("decode_b", img, ref, n);
  free(img);
}

static void test_vae_encode_golden(void **state) {
  fixture *f = *state;
  int64_t n;
  float m[8 * 8 * 8];
  assert_ok(mp_vae_encode(f->vae, f->pool, 64, 64, golden(f->g, "vae.encode.image", NULL), m));
  const float *ref = golden(f->g, "vae.encode.moments", &n);
  assert_int_equal(n, 8 * 8 * 8);
  check("encode.moments", m, ref, n);
  assert_err_contains(mp_vae_encode(f->vae, f->pool, 60, 64, m, m), "multiple of 8");
}

/* Under the bf16 backend the bf16 levels of the decoder and the encoder run on NHWC activations. Kept NCHW (the same
 * roundings, other summation orders in the norms) both must meet the golden reduced-precision
 * bound and differ (the NHWC levels ran) by less: the tiny model's random weights turn the odd
 * flipped bf16 rounding into 3.8e-3 (at SD 1.5 size the decode's error is unchanged, 3.84e-3). */
static void test_vae_bf16_nhwc(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) return; /* no bf16 backend here: the NHWC levels never run */
  mp_backend *be;
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &be));
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  mp_pool_set_backend(pool, be);
  mp_vae_config cfg = tiny_vae_config();
  mp_vae *vae;
  assert_ok(mp_vae_load(f->w, MP_PREFIX_VAE, &cfg, &vae));
  int64_t n;
  const float *z = golden(f->g, "vae.decode_b.z", NULL), *ref = golden(f->g, "vae.decode_b.image", &n);
  float *nhwc = malloc(sizeof(float) * (size_t)n), *nchw = malloc(sizeof(float) * (size_t)n);
  assert_non_null(nhwc), assert_non_null(nchw);
  assert_ok(mp_vae_decode(vae, pool, 8, 12, z, nhwc));
  mp_vae_set_nhwc(vae, false);
  assert_ok(mp_vae_decode(vae, pool, 8, 12, z, nchw));
  const double e_nhwc = test_rel_l2(nhwc, ref, n), e_nchw = test_rel_l2(nchw, ref, n), apart = test_rel_l2(nhwc, nchw, n);
  print_message("bf16 decode_b: NHWC rel l2 %.3g, NCHW %.3g, apart %.3g\n", e_nhwc, e_nchw, apart);
  assert_true(e_nhwc <= 1e-2 && e_nchw <= 1e-2);
  assert_true(apart > 0 && apart <= 5e-3);
  /* the encoder likewise (its bf16 levels 1 and 2 and the downsample between them) */
  float m_nhwc[8 * 8 * 8], m_nchw[8 * 8 * 8];
  const float *image = golden(f->g, "vae.encode.image", NULL), *mref = golden(f->g, "vae.encode.moments", &n);
  assert_ok(mp_vae_encode(vae, pool, 64, 64, image, m_nchw)); /* still NCHW from above */
  mp_vae_set_nhwc(vae, true);
  assert_ok(mp_vae_encode(vae, pool, 64, 64, image, m_nhwc));
  const double m1 = test_rel_l2(m_nhwc, mref, n), m2 = test_rel_l2(m_nchw, mref, n), mapart = test_rel_l2(m_nhwc, m_nchw, n);
  print_message("bf16 encode: NHWC rel l2 %.3g, NCHW %.3g, apart %.3g\n", m1, m2, mapart);
  assert_true(m1 <= 1e-2 && m2 <= 1e-2);
  assert_true(mapart > 0 && mapart <= 5e-3);
  free(nhwc), free(nchw);
  mp_vae_free(vae);
  mp_pool_set_backend(pool, NULL);
  mp_pool_destroy(pool);
  mp_backend_destroy(be);
}

/* The tiling mechanics are exact for local functions (tests/core/test_tile.c). The tiny golden VAE has
 * random weights and is strongly non-local (its corner pixel moves by ~10% when the image grows from
 * 32 to 48 latent cells), so here tiled output is only required to be the same picture at a coarse
 * level, and to approach the untiled one as the overlap grows. */
static void test_vae_tiled_close_to_untiled(void **state) {
  fixture *f = *state;
  enum { H = 16, W = 24 };
  const int64_t npx = 3 * 64 * H * W;
  float *z = malloc(sizeof(float) * 4 * H * W), *a = malloc(sizeof(float) * npx), *b = malloc(sizeof(float) * npx);
  for (int k = 0; k < 4; k++)
    for (int i = 0; i < H * W; i++) z[k * H * W + i] = 0.5f * sinf(0.7f * k) + 0.05f * sinf(0.3f * (i / W) + 0.2f * (i % W) + k);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, H, W, z, a));
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_ON, 12, 4});
  assert_ok(mp_vae_decode(f->vae, f->pool, H, W, z, b));
  double small = test_rel_l2(b, a, npx);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_ON, 15, 14});
  assert_ok(mp_vae_decode(f->vae, f->pool, H, W, z, b));
  double large = test_rel_l2(b, a, npx);
  print_message("tiled decode vs untiled: rel l2 %.3g (tile 12, overlap 4), %.3g (tile 15, overlap 14)\n", small, large);
  assert_true(small < 1.0 && large < small);

  float *m1 = malloc(sizeof(float) * 8 * H * W), *m2 = malloc(sizeof(float) * 8 * H * W);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  assert_ok(mp_vae_encode(f->vae, f->pool, 8 * H, 8 * W, a, m1));
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_ON, 15, 14});
  assert_ok(mp_vae_encode(f->vae, f->pool, 8 * H, 8 * W, a, m2));
  double enc = test_rel_l2(m2, m1, 4 * H * W); /* the means */
  print_message("tiled encode vs untiled (mean): rel l2 %.3g\n", enc);
  assert_true(enc < 1.0);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_ON, 16, 16});
  assert_err_contains(mp_vae_decode(f->vae, f->pool, H + 8, W, z, b), "overlap");
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0});
  free(z), free(a), free(b), free(m1), free(m2);
}

/* AUTO decodes up to 80x80 latent cells whole (512x512, 576x512), and larger latents in the split of
 * least work among tiles of at most 128 cells a side and 10240 in all: 1024x512 whole, 1024x1024 in
 * two 128x72 tiles (the fixed 64-cell tile took 3x3), 1536x1024 in three 128x75. */
static void test_vae_auto_tiles_above_512(void **state) {
  fixture *f = *state;
  enum { S = 64, W2 = 72, W3 = 128 };
  const int64_t n_big = 3 * 64 * (int64_t)S * W3;
  float *z = malloc(sizeof(float) * 4 * S * W3), *a = malloc(sizeof(float) * n_big), *b = malloc(sizeof(float) * n_big);
  assert_non_null(z), assert_non_null(a), assert_non_null(b);
  for (int i = 0; i < 4 * S * W3; i++) z[i] = 0.5f * sinf(0.05f * (float)i);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, S, S, z, a));
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, S, S, z, b));
  assert_memory_equal(a, b, sizeof(float) * 3 * 64 * S * S); /* 512x512: whole */
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, S, W2, z, a));
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, S, W2, z, b));
  assert_memory_equal(a, b, sizeof(float) * 3 * 64 * S * W2); /* 576x512: whole */
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, S, W3, z, a));
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_OFF, 0, 0});
  assert_ok(mp_vae_decode(f->vae, f->pool, S, W3, z, b));
  assert_memory_equal(a, b, sizeof(float) * n_big); /* 1024x512: whole */
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0});
  int th, tw;
  assert_false(mp_vae_decode_tiles(f->vae, S, W3, &th, &tw));
  assert_true(mp_vae_decode_tiles(f->vae, 128, 128, &th, &tw));
  assert_true(th == 128 && tw == 72);
  assert_true(mp_vae_decode_tiles(f->vae, 128, 192, &th, &tw));
  assert_true(th == 128 && tw == 75);
  assert_true(mp_vae_decode_tiles(f->vae, 192, 128, &th, &tw));
  assert_true(th == 75 && tw == 128);
  assert_true(mp_vae_decode_tiles(f->vae, 300, 300, &th, &tw)); /* 2048x2048 and over: within the bounds */
  assert_true(th <= 128 && tw <= 128 && th * tw <= 10240);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_ON, MP_VAE_DEFAULT_TILE, 0});
  assert_true(mp_vae_decode_tiles(f->vae, 128, 128, &th, &tw));
  assert_true(th == 64 && tw == 64);
  mp_vae_set_tiling(f->vae, (mp_vae_tiling){MP_VAE_TILE_AUTO, 0, 0});
  free(z), free(a), free(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vae_decode_golden),
      cmocka_unit_test(test_vae_encode_golden),
      cmocka_unit_test(test_vae_tiled_close_to_untiled),
      cmocka_unit_test(test_vae_bf16_nhwc),
      cmocka_unit_test(test_vae_auto_tiles_above_512),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
