/* Samplers on analytic denoisers.
 *
 * - Point mass (all data at x0): the ideal denoiser returns x0 whatever x is, so every sampler
 *   must land exactly on x0 at sigma 0, and DDIM at x0 + sigma_min/sigma_0 * (x_T - x0).
 * - Gaussian data N(0, s^2): denoised = x * s^2 / (s^2 + sigma^2), and the probability-flow ODE
 *   has the closed form x(sigma) = x_T * sqrt((s^2 + sigma^2) / (s^2 + sigma_T^2)). Deterministic
 *   samplers must approach it, DPM++ 2M (second order) more closely than Euler; the stochastic
 *   samplers must end with variance s^2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampling/denoiser.h"
#include "sampling/sampler.h"
#include "testutil.h"

typedef struct {
  float x0;
  double s2; /* Gaussian data variance; < 0 selects the point mass */
  int calls;
} toy;

static mp_error *toy_denoise(void *ctx, const float *x, double sigma, float *out, int64_t n) {
  toy *t = ctx;
  t->calls++;
  for (int64_t i = 0; i < n; i++) out[i] = t->s2 < 0 ? t->x0 : (float)(x[i] * t->s2 / (t->s2 + sigma * sigma));
  return NULL;
}

static const char *all_samplers[] = {"euler", "euler_a", "dpm++2m", "dpm++2m_karras", "dpm++sde", "dpm++sde_karras", "ddim", "lcm"};

static mp_schedule sd1(void) {
  mp_schedule s;
  mp_error *e = mp_schedule_linear(&s, 0.00085, 0.012, 1000);
  if (e) fail_msg("%s", mp_error_message(e));
  return s;
}

static void test_point_mass(void **state) {
  (void)state;
  mp_schedule s = sd1();
  enum { N = 64, STEPS = 10 };
  for (size_t k = 0; k < sizeof all_samplers / sizeof *all_samplers; k++) {
    mp_sampler_spec spec;
    assert_ok(mp_sampler_parse(all_samplers[k], &spec));
    float sig[STEPS + 1], x[N];
    assert_ok(mp_sampler_sigmas(&spec, &s, STEPS, sig, NULL));
    mp_noise *noise = NULL;
    assert_ok(mp_noise_brownian(5, sig[STEPS - 1] > 0 ? 0.01 : 0.01, 20, &noise));
    for (int i = 0; i < N; i++) x[i] = (float)(sig[0] * sin(i + 1.0));
    float xT[N];
    memcpy(xT, x, sizeof x);
    toy t = {.x0 = 0.75f, .s2 = -1};
    mp_sampler_io io = {.denoise = toy_denoise, .denoise_ctx = &t, .noise = noise};
    assert_ok(mp_sample(&spec, sig, STEPS + 1, x, N, &io));
    assert_int_equal(t.calls, mp_sampler_model_calls(&spec, STEPS));
    for (int i = 0; i < N; i++) {
      double want = spec.kind == MP_SAMPLER_DDIM ? 0.75 + sig[STEPS] / sig[0] * (xT[i] - 0.75) : 0.75;
      if (fabs(x[i] - want) > 1e-5) fail_msg("%s: x[%d] = %.7g, expected %.7g", all_samplers[k], i, x[i], want);
    }
    mp_noise_free(noise);
  }
  mp_schedule_free(&s);
}

static double ode_error(const char *name, int steps) {
  mp_schedule s = sd1();
  mp_sampler_spec spec;
  assert_ok(mp_sampler_parse(name, &spec));
  float *sig = malloc((size_t)(steps + 1) * sizeof *sig);
  assert_ok(mp_sampler_sigmas(&spec, &s, steps, sig, NULL));
  enum { N = 16 };
  float x[N];
  double s2 = 0.25;
  for (int i = 0; i < N; i++) x[i] = (float)(sig[0] * cos(0.3 * i));
  double scale = sqrt(s2 / (s2 + (double)sig[0] * sig[0]));
  toy t = {.s2 = s2};
  mp_sampler_io io = {.denoise = toy_denoise, .denoise_ctx = &t};
  assert_ok(mp_sample(&spec, sig, steps + 1, x, N, &io));
  double err = 0;
  for (int i = 0; i < N; i++) err = fmax(err, fabs(x[i] - sig[0] * cos(0.3 * i) * scale));
  free(sig);
  mp_schedule_free(&s);
  return err;
}

static void test_gaussian_ode(void **state) {
  (void)state;
  /* Euler is first order: 4x the steps, about 4x smaller error */
  double eu40 = ode_error("euler", 40), eu160 = ode_error("euler", 160);
  assert_true(eu40 < 0.05 && eu40 / eu160 > 3);
  /* DPM++ 2M converges faster (its last step to sigma 0 is first order, hence not 16x) */
  double d40 = ode_error("dpm++2m", 40), d160 = ode_error("dpm++2m", 160);
  assert_true(d40 / d160 > 2 * (eu40 / eu160));
  /* with Karras sigmas it is within the last step's first-order error (~1e-3) in 40 steps */
  assert_true(ode_error("dpm++2m_karras", 40) < 2e-3);
}

static void check_variance(const char *name, mp_noise *noise, int steps, double tol) {
  mp_schedule s = sd1();
  mp_sampler_spec spec;
  assert_ok(mp_sampler_parse(name, &spec));
  float sig[256];
  assert_ok(mp_sampler_sigmas(&spec, &s, steps, sig, NULL));
  enum { N = 5000 };
  float *x = malloc(N * sizeof *x);
  mp_noise *init = NULL;
  assert_ok(mp_noise_torch_cpu(1234, &init));
  assert_ok(mp_noise_fill(init, x, N));
  for (int i = 0; i < N; i++) x[i] *= sig[0];
  double s2 = 0.25;
  toy t = {.s2 = s2};
  mp_sampler_io io = {.denoise = toy_denoise, .denoise_ctx = &t, .noise = noise};
  assert_ok(mp_sample(&spec, sig, steps + 1, x, N, &io));
  double m = 0, v = 0;
  for (int i = 0; i < N; i++) m += x[i], v += (double)x[i] * x[i];
  m /= N;
  v = v / N - m * m;
  if (fabs(v - s2) > tol || fabs(m) > 0.02) fail_msg("%s: final mean %g variance %g, data variance %g", name, m, v, s2);
  free(x);
  mp_noise_free(init);
  mp_schedule_free(&s);
}

static void test_stochastic_samplers_keep_the_data_law(void **state) {
  (void)state;
  /* Euler a converges slowly (weak order); DPM++ SDE quickly. (LCM is not consistent for a
   * non-LCM denoiser: it only has the point-mass test.) */
  mp_noise *noise = NULL;
  assert_ok(mp_noise_philox(99, &noise));
  check_variance("euler_a", noise, 160, 0.035);
  mp_noise_free(noise);
  assert_ok(mp_noise_brownian(99, 0.02, 15, &noise));
  check_variance("dpm++sde_karras", noise, 40, 0.02);
  mp_noise_free(noise);
}

typedef struct {
  int seen, stop_at;
} stepper;

static mp_error *count_steps(void *ctx, int step, int n_steps, float *x, int64_t n, double sigma, double sigma_next) {
  stepper *s = ctx;
  s->seen++;
  if (!(sigma_next < sigma)) return mp_errorf("sigmas not decreasing");
  if (step == s->stop_at) return mp_errorf("cancelled at step %d of %d", step + 1, n_steps);
  return NULL;
}

static void test_step_callback_and_errors(void **state) {
  (void)state;
  mp_schedule s = sd1();
  mp_sampler_spec spec;
  assert_ok(mp_sampler_parse("euler_a", &spec));
  float sig[9], x[4] = {1, 2, 3, 4};
  assert_ok(mp_sampler_sigmas(&spec, &s, 8, sig, NULL));
  toy t = {.x0 = 0, .s2 = -1};
  stepper st = {.stop_at = 2};
  mp_sampler_io io = {.denoise = toy_denoise, .denoise_ctx = &t, .on_step = count_steps, .step_ctx = &st};
  assert_err_contains(mp_sample(&spec, sig, 9, x, 4, &io), "needs a noise source");
  assert_ok(mp_noise_philox(1, &io.noise));
  assert_err_contains(mp_sample(&spec, sig, 9, x, 4, &io), "cancelled at step 3 of 8");
  assert_int_equal(st.seen, 3);
  float bad[3] = {1, 2, 0};
  assert_err_contains(mp_sample(&spec, bad, 3, x, 4, &io), "decreasing");
  mp_noise_free(io.noise);
  mp_schedule_free(&s);
}

/* The CFG denoiser: c_in scaling, t(sigma), the [uncond, cond] layout and the guidance formula. */
typedef struct {
  double sigma;
  float t_seen;
} eps_probe;

static mp_error *probe_eps(void *ctx, int batch, const float *x, const float *t, float *eps) {
  eps_probe *p = ctx;
  p->t_seen = t[0];
  /* rows [u0, u1, c0, c1] with 2 values each; eps = x * c for uncond rows, 2x for cond rows */
  for (int r = 0; r < batch; r++)
    for (int k = 0; k < 2; k++) eps[r * 2 + k] = x[r * 2 + k] * (r < batch / 2 ? 1.0f : 2.0f);
  return NULL;
}

static void test_cfg_denoiser(void **state) {
  (void)state;
  mp_schedule s = sd1();
  eps_probe p = {0};
  mp_cfg_denoiser d;
  assert_ok(mp_cfg_denoiser_init(&d, probe_eps, &p, &s, 2, 2, 7.0));
  assert_int_equal(mp_cfg_denoiser_rows(&d), 4);
  float x[4] = {1, -2, 3, 0.5f}, out[4];
  double sigma = s.sigmas[500];
  assert_ok(mp_cfg_denoise(&d, x, sigma, out, 4));
  assert_true(p.t_seen == 500.0f);
  double c_in = 1 / sqrt(sigma * sigma + 1);
  for (int i = 0; i < 4; i++) {
    double eu = x[i] * c_in, ec = 2 * x[i] * c_in, e = eu + 7 * (ec - eu);
    assert_true(fabs(out[i] - (x[i] - sigma * e)) < 1e-4 * fabs(sigma * e) + 1e-6);
  }
  assert_err_contains(mp_cfg_denoise(&d, x, sigma, out, 3), "expected");
  /* LCM mode: nearest original timestep (sigma(500) -> t 499) and the boundary condition */
  d.lcm = true;
  assert_ok(mp_cfg_denoise(&d, x, sigma, out, 4));
  assert_true(p.t_seen == 499.0f);
  double sigma_model = sigma, st = 4990.0, c_skip = 0.25 / (st * st + 0.25), c_out = st / sqrt(st * st + 0.25);
  for (int i = 0; i < 4; i++) {
    double eu = x[i] * c_in, ec = 2 * x[i] * c_in, e = eu + 7 * (ec - eu);
    double want = c_out * (x[i] - sigma_model * e) + c_skip * x[i];
    assert_true(fabs(out[i] - want) < 1e-4 * fabs(want) + 1e-5);
  }
  mp_cfg_denoiser_free(&d);
  mp_schedule_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_point_mass),
      cmocka_unit_test(test_gaussian_ode),
      cmocka_unit_test(test_stochastic_samplers_keep_the_data_law),
      cmocka_unit_test(test_step_callback_and_errors),
      cmocka_unit_test(test_cfg_denoiser),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
