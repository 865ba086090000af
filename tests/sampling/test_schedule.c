/* Sigma schedules: k-diffusion's discretisations against the sigmas the reference samplers used,
 * the DDIM timesteps, the sigma <-> t interpolation, and A1111's img2img start step. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/weights.h"
#include "sampling/sampler.h"
#include "sampling/schedule.h"
#include "testutil.h"

typedef struct {
  mp_weights *ckpt, *golden;
  mp_schedule s;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char *ck = test_shared_path("golden/tiny/tiny.safetensors"), *g = test_shared_path("golden/tiny/txt2img.safetensors");
  assert_ok(mp_weights_open(ck, &f->ckpt));
  assert_ok(mp_weights_open(g, &f->golden));
  free(ck);
  free(g);
  assert_ok(mp_schedule_from_checkpoint(&f->s, f->ckpt, 0.00085, 0.012, 1000));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_schedule_free(&f->s);
  mp_weights_close(f->ckpt);
  mp_weights_close(f->golden);
  free(f);
  return 0;
}

static void expect_sigmas(fixture *f, const char *name, const float *got, int n, double rel) {
  const mp_weight *g = mp_weights_find(f->golden, name);
  if (!g) fail_msg("golden %s missing", name);
  assert_int_equal(mp_tensor_numel(&g->t), n);
  const float *r = g->t.data;
  for (int i = 0; i < n; i++)
    if (fabs((double)got[i] - r[i]) > rel * fabs(r[i])) fail_msg("%s[%d]: %.9g, reference %.9g", name, i, got[i], r[i]);
}

static void test_kdiff_sigmas_match_reference(void **state) {
  fixture *f = *state;
  float sig[9];
  assert_ok(mp_sigmas_default(&f->s, 8, sig));
  expect_sigmas(f, "kdiff.euler.sigmas", sig, 9, 2e-6);
  assert_ok(mp_sigmas_karras(mp_schedule_sigma_min(&f->s), mp_schedule_sigma_max(&f->s), 8, sig));
  expect_sigmas(f, "kdiff.dpmpp_2m_karras.sigmas", sig, 9, 2e-6);
  mp_sampler_spec spec;
  assert_ok(mp_sampler_parse("dpm++sde_karras", &spec));
  assert_ok(mp_sampler_sigmas(&spec, &f->s, 8, sig, NULL));
  expect_sigmas(f, "kdiff.dpmpp_sde_karras.sigmas", sig, 9, 2e-6);
}

/* The checkpoint's buffer and the SD 1.x linear schedule agree (the tiny model was made with it). */
static void test_linear_schedule_matches_checkpoint(void **state) {
  fixture *f = *state;
  mp_schedule lin;
  assert_ok(mp_schedule_linear(&lin, 0.00085, 0.012, 1000));
  for (int i = 0; i < 1000; i++) assert_true(fabs(lin.sigmas[i] - f->s.sigmas[i]) <= 1e-5 * f->s.sigmas[i]);
  assert_true(fabs(mp_schedule_sigma_max(&lin) - 14.614643) < 1e-4);
  assert_true(fabs(mp_schedule_sigma_min(&lin) - 0.0291675) < 1e-6);
  mp_schedule_free(&lin);
  mp_schedule none;
  assert_ok(mp_schedule_from_checkpoint(&none, NULL, 0.00085, 0.012, 1000)); /* no buffer: linear */
  assert_int_equal(none.n, 1000);
  mp_schedule_free(&none);
}

static void test_sigma_t_roundtrip(void **state) {
  fixture *f = *state;
  for (int t = 0; t < 1000; t++) assert_true(mp_schedule_sigma_to_t(&f->s, f->s.sigmas[t]) == (double)t);
  for (double t = 0; t <= 999; t += 12.345) {
    double back = mp_schedule_sigma_to_t(&f->s, mp_schedule_t_to_sigma(&f->s, t));
    if (fabs(back - t) > 2e-3) fail_msg("t %g -> sigma -> t %g", t, back); /* float32 log sigma */
  }
  /* outside the training range: clamped */
  assert_true(mp_schedule_sigma_to_t(&f->s, 100.0) == 999.0);
  assert_true(mp_schedule_sigma_to_t(&f->s, 1e-4) == 0.0);
}

static void test_ddim_timesteps(void **state) {
  fixture *f = *state;
  float sig[9];
  int ts[8];
  assert_ok(mp_sigmas_ddim(&f->s, 8, sig, ts));
  static const int want[8] = {876, 751, 626, 501, 376, 251, 126, 1};
  for (int i = 0; i < 8; i++) {
    assert_int_equal(ts[i], want[i]);
    assert_true(mp_schedule_sigma_to_t(&f->s, sig[i]) == want[i]);
  }
  assert_true(sig[8] == f->s.sigmas[0]);
}

/* AUTOMATIC1111's LCM: sigmas between the 50 original timesteps 999..19, model at the nearest one. */
static void test_lcm_schedule(void **state) {
  fixture *f = *state;
  float sig[5];
  mp_sampler_spec lcm;
  assert_ok(mp_sampler_parse("lcm", &lcm));
  assert_ok(mp_sampler_sigmas(&lcm, &f->s, 4, sig, NULL));
  assert_true(fabsf(sig[0] - f->s.sigmas[999]) <= 1e-6f * f->s.sigmas[999]);
  assert_true(fabsf(sig[3] - f->s.sigmas[19]) <= 1e-6f * f->s.sigmas[19]);
  assert_true(sig[4] == 0.0f);
  /* t = 999 - 980/3 = 672.33: 32.62 original steps, between t 659 and 679 in log sigma */
  double lo = log(f->s.sigmas[659]), hi = log(f->s.sigmas[679]), u = (672.3333 - 19) / 20 - 32;
  assert_true(fabs(log(sig[1]) - ((1 - u) * lo + u * hi)) < 1e-4);
  assert_true(mp_schedule_sigma_to_t_lcm(&f->s, sig[1]) == 679.0 || mp_schedule_sigma_to_t_lcm(&f->s, sig[1]) == 659.0);
  assert_true(mp_schedule_sigma_to_t_lcm(&f->s, f->s.sigmas[500]) == 499.0);
  assert_true(mp_schedule_sigma_to_t_lcm(&f->s, 0.001) == 19.0);
}

static void test_img2img_start(void **state) {
  fixture *f = *state;
  mp_sampler_spec euler, ddim;
  assert_ok(mp_sampler_parse("euler", &euler));
  assert_ok(mp_sampler_parse("ddim", &ddim));
  float full[9], sig[9];
  int n = 0;
  assert_ok(mp_sigmas_default(&f->s, 8, full));
  /* A1111: t_enc = int(0.5 * 8) = 4, run the last 5 of 8 steps */
  assert_ok(mp_sampler_img2img_sigmas(&euler, &f->s, 8, 0.5, sig, &n));
  assert_int_equal(n, 6);
  assert_memory_equal(sig, full + 3, 6 * sizeof(float));
  /* strength 1 is capped at 0.999: t_enc = 7, all 8 steps */
  assert_ok(mp_sampler_img2img_sigmas(&euler, &f->s, 8, 1.0, sig, &n));
  assert_int_equal(n, 9);
  /* diffusers DDIM: int(8 * 0.5) = 4 steps from t = 376 */
  assert_ok(mp_sampler_img2img_sigmas(&ddim, &f->s, 8, 0.5, sig, &n));
  assert_int_equal(n, 5);
  assert_true(mp_schedule_sigma_to_t(&f->s, sig[0]) == 376.0);
  assert_err_contains(mp_sampler_img2img_sigmas(&ddim, &f->s, 8, 0.1, sig, &n), "no step");
  assert_err_contains(mp_sampler_img2img_sigmas(&ddim, &f->s, 8, 1.5, sig, &n), "strength");
}

static void test_sampler_names(void **state) {
  (void)state;
  static const char *names[] = {"euler", "euler_a", "dpm++2m", "dpm++2m_karras", "dpm++sde", "dpm++sde_karras", "ddim", "lcm"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    mp_sampler_spec s;
    assert_ok(mp_sampler_parse(names[i], &s));
    assert_string_equal(mp_sampler_name(&s), names[i]);
  }
  mp_sampler_spec s;
  assert_err_contains(mp_sampler_parse("tcd", &s), "not implemented yet");
  assert_err_contains(mp_sampler_parse("plms", &s), "unknown sampler");
  assert_ok(mp_sampler_parse("dpm++2m_karras", &s));
  assert_string_equal(mp_sampler_a1111_name(&s), "DPM++ 2M Karras");
  assert_ok(mp_sampler_parse("dpm++sde", &s));
  assert_int_equal(mp_sampler_model_calls(&s, 8), 15);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_kdiff_sigmas_match_reference, setup, teardown),
      cmocka_unit_test_setup_teardown(test_linear_schedule_matches_checkpoint, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sigma_t_roundtrip, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ddim_timesteps, setup, teardown),
      cmocka_unit_test_setup_teardown(test_img2img_start, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lcm_schedule, setup, teardown),
      cmocka_unit_test(test_sampler_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
