/* The diffusion-pass glue (src/pipeline/generate.c) on a toy noise predictor whose data is a point
 * mass at X0: txt2img lands on X0; img2img starts at the strength's sigma; legacy inpainting keeps
 * the init latent outside the mask; the 9-channel path hands the model its extra channels; CFG
 * pairs the [uncond, cond] context rows with the right images. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/generate.h"
#include "sampling/rng.h"
#include "testutil.h"

#define X0 0.5f
enum { H = 2, W = 3, HW = H * W, PER = 4 * HW, NCTX = 2, DIM = 2 };

typedef struct {
  const mp_schedule *s;
  int calls, in_channels, bad_rows;
  float first_t;
  float cond_check[5 * HW]; /* expected 9-channel extras for image 0 */
  bool check_cond;
} toy_model;

/* eps such that the denoised estimate is X0: x = x_in * sqrt(1 + sigma^2), eps = (x - X0) / sigma.
 * The context rows carry their row's kind in value 0 (0 uncond, 1 cond) and the image in value 1. */
static mp_error *toy_eps(void *ctx, int rows, int h, int w, const float *x, const float *t, const float *context, int n_ctx,
                         float *eps) {
  toy_model *m = ctx;
  if (m->calls++ == 0) m->first_t = t[0];
  int per_in = m->in_channels * h * w;
  for (int r = 0; r < rows; r++) {
    double sigma = mp_schedule_t_to_sigma(m->s, t[r]);
    const float *xr = x + (int64_t)r * per_in;
    for (int k = 0; k < PER; k++) eps[(int64_t)r * PER + k] = (float)((xr[k] * sqrt(1 + sigma * sigma) - X0) / sigma);
    const float *cr = context + (int64_t)r * n_ctx * DIM;
    int images = rows == 2 ? 1 : rows / 2;
    if (rows > 1 && (cr[0] != (r >= images ? 1.0f : 0.0f) || cr[1] != (float)(r % images))) m->bad_rows++;
    if (m->check_cond && memcmp(xr + PER, m->cond_check, sizeof m->cond_check) != 0) m->bad_rows++;
  }
  return NULL;
}

static float context2[2 * 2 * NCTX * DIM]; /* up to 2 images: [u0, u1, c0, c1] */

static void make_context(int batch) {
  memset(context2, 0, sizeof context2);
  for (int r = 0; r < 2 * batch; r++) {
    context2[r * NCTX * DIM + 0] = r >= batch ? 1.0f : 0.0f;
    context2[r * NCTX * DIM + 1] = (float)(r % batch);
  }
}

static mp_generate_params base(const mp_schedule *s, toy_model *m, int batch, const char *sampler) {
  make_context(batch);
  mp_generate_params p = {.model = toy_eps,
                          .model_ctx = m,
                          .unet_in_channels = 4,
                          .schedule = s,
                          .context = context2,
                          .n_ctx = NCTX,
                          .ctx_dim = DIM,
                          .batch = batch,
                          .lat_h = H,
                          .lat_w = W,
                          .cfg_scale = 7,
                          .steps = 6};
  mp_error *e = mp_sampler_parse(sampler, &p.sampler);
  if (e) fail_msg("%s", mp_error_message(e));
  return p;
}

static void test_txt2img_lands_on_data(void **state) {
  (void)state;
  mp_schedule s;
  assert_ok(mp_schedule_linear(&s, 0.00085, 0.012, 1000));
  static const char *names[] = {"euler", "euler_a", "dpm++2m_karras", "dpm++sde", "lcm"};
  for (size_t k = 0; k < 5; k++) {
    toy_model m = {.s = &s, .in_channels = 4};
    mp_generate_params p = base(&s, &m, 2, names[k]);
    uint64_t seeds[2] = {11, 12};
    p.seeds = seeds;
    mp_noise *kids[2];
    assert_ok(mp_noise_philox(11, &kids[0]));
    assert_ok(mp_noise_philox(12, &kids[1]));
    assert_ok(mp_noise_batch(kids, 2, &p.noise));
    float latent[2 * PER];
    assert_ok(mp_generate_latents(&p, latent));
    for (int i = 0; i < 2 * PER; i++)
      if (fabsf(latent[i] - X0) > 1e-4f) fail_msg("%s: latent[%d] = %g", names[k], i, latent[i]);
    assert_int_equal(m.bad_rows, 0);
    assert_true(fabsf(m.first_t - 999.0f) < 1e-3f);
    mp_noise_free(p.noise);
  }
  /* cfg 1 runs the conditional rows only */
  toy_model m = {.s = &s, .in_channels = 4};
  mp_generate_params p = base(&s, &m, 1, "euler");
  p.cfg_scale = 1;
  assert_ok(mp_noise_torch_cpu(1, &p.noise));
  float latent[PER];
  assert_ok(mp_generate_latents(&p, latent));
  mp_noise_free(p.noise);
  mp_schedule_free(&s);
}

static void test_img2img_and_legacy_inpaint(void **state) {
  (void)state;
  mp_schedule s;
  assert_ok(mp_schedule_linear(&s, 0.00085, 0.012, 1000));
  float init[PER], mask[HW] = {1, 1, 0, 0, 1, 0}, latent[PER], sig[7];
  for (int i = 0; i < PER; i++) init[i] = -1.0f + 0.1f * i;
  for (int k = 0; k < 2; k++) {
    toy_model m = {.s = &s, .in_channels = 4};
    mp_generate_params p = base(&s, &m, 1, k == 0 ? "euler" : "ddim");
    p.init_latent = init;
    p.strength = 0.5;
    p.mask = mask;
    assert_ok(mp_noise_torch_cpu(5, &p.noise));
    int n = 0;
    assert_ok(mp_generate_sigmas(&p, sig, &n));
    assert_int_equal(n, k == 0 ? 5 : 4); /* A1111: int(0.5*6)+1 = 4 steps; diffusers DDIM: 3 */
    assert_ok(mp_generate_latents(&p, latent));
    assert_true(fabsf(m.first_t - (float)mp_schedule_sigma_to_t(&s, sig[0])) < 1e-3f);
    /* the starting noise is the first draw of the generator */
    float n0[PER];
    mp_torch_cpu_rng r;
    mp_torch_cpu_seed(&r, 5);
    mp_torch_cpu_randn(&r, n0, PER);
    for (int i = 0; i < PER; i++) {
      double want = init[i];
      if (mask[i % HW] == 1.0f) {
        /* Euler ends at sigma 0 on X0; DDIM ends at sigma(0) = sigma_min, (sigma_min/sigma_start) of the
         * way from X0 back to the start, in the DDPM variable */
        double s0 = sig[0], s1 = sig[n - 1], start = init[i] + s0 * n0[i];
        want = (X0 + s1 / s0 * (start - X0)) / sqrt(1 + s1 * s1);
      }
      if (fabs(latent[i] - want) > 1e-4) fail_msg("%s: latent[%d] = %g, expected %g", k == 0 ? "euler" : "ddim", i, latent[i], want);
    }
    mp_noise_free(p.noise);
  }
  mp_schedule_free(&s);
}

static void test_nine_channel_inpainting(void **state) {
  (void)state;
  mp_schedule s;
  assert_ok(mp_schedule_linear(&s, 0.00085, 0.012, 1000));
  toy_model m = {.s = &s, .in_channels = 9, .check_cond = true};
  for (int i = 0; i < 5 * HW; i++) m.cond_check[i] = (float)i;
  float init[PER] = {0}, latent[PER];
  mp_generate_params p = base(&s, &m, 1, "dpm++2m");
  p.unet_in_channels = 9;
  assert_err_contains(mp_generate_latents(&p, latent), "inpainting checkpoint");
  p.inpaint_cond = m.cond_check;
  p.init_latent = init;
  p.strength = 1.0;
  assert_ok(mp_noise_philox(3, &p.noise));
  assert_ok(mp_generate_latents(&p, latent));
  assert_int_equal(m.bad_rows, 0);
  for (int i = 0; i < PER; i++) assert_true(fabsf(latent[i] - X0) < 1e-4f);
  mp_noise_free(p.noise);
  mp_schedule_free(&s);
}

static void test_mask_helpers(void **state) {
  (void)state;
  mp_image img;
  assert_ok(mp_image_alloc(&img, 16, 8, 1));
  for (int i = 0; i < 16 * 8; i++) img.pixels[i] = (uint8_t)(i % 16 >= 8 ? 200 : i % 16 == 7 ? 128 : 127);
  float full[16 * 8], small[2];
  assert_ok(mp_inpaint_binarize(&img, full));
  assert_true(full[6] == 0.0f && full[7] == 1.0f && full[8] == 1.0f); /* 128/255 >= 0.5 > 127/255 */
  mp_inpaint_latent_mask(full, 8, 16, 1, 2, small);
  assert_true(small[0] == 0.0f && small[1] == 1.0f); /* nearest picks pixel (0, 0) and (0, 8) */
  mp_image_free(&img);
  float im[4] = {-2.0f, -0.003921569f, 0.0f, 1.0f};
  uint8_t u8[4];
  mp_image_to_u8_torch(im, 4, u8);
  assert_int_equal(u8[0], 0);
  assert_int_equal(u8[1], 127); /* 127.0000 */
  assert_int_equal(u8[2], 128); /* 127.5 rounds half to even */
  assert_int_equal(u8[3], 255);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_txt2img_lands_on_data),
      cmocka_unit_test(test_img2img_and_legacy_inpaint),
      cmocka_unit_test(test_nine_channel_inpainting),
      cmocka_unit_test(test_mask_helpers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
