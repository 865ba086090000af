#include "sampling/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

static const struct {
  const char *name, *a1111;
  mp_sampler_kind kind;
  bool karras;
} sampler_names[] = {
    {"euler", "Euler", MP_SAMPLER_EULER, false},
    {"euler_a", "Euler a", MP_SAMPLER_EULER_A, false},
    {"dpm++2m", "DPM++ 2M", MP_SAMPLER_DPMPP_2M, false},
    {"dpm++2m_karras", "DPM++ 2M Karras", MP_SAMPLER_DPMPP_2M, true},
    {"dpm++sde", "DPM++ SDE", MP_SAMPLER_DPMPP_SDE, false},
    {"dpm++sde_karras", "DPM++ SDE Karras", MP_SAMPLER_DPMPP_SDE, true},
    {"ddim", "DDIM", MP_SAMPLER_DDIM, false},
    {"lcm", "LCM", MP_SAMPLER_LCM, false},
};
#define N_SAMPLERS (sizeof sampler_names / sizeof *sampler_names)

mp_error *mp_sampler_parse(const char *name, mp_sampler_spec *out) {
  for (size_t i = 0; i < N_SAMPLERS; i++)
    if (strcmp(name, sampler_names[i].name) == 0) {
      out->kind = sampler_names[i].kind;
      out->karras = sampler_names[i].karras;
      return NULL;
    }
  if (strcmp(name, "tcd") == 0) return mp_errorf("sampler 'tcd' is not implemented yet (use lcm, or one of euler, euler_a, dpm++2m, dpm++2m_karras, dpm++sde, dpm++sde_karras, ddim)");
  return mp_errorf("unknown sampler '%s' (expected one of euler, euler_a, dpm++2m, dpm++2m_karras, dpm++sde, dpm++sde_karras, "
                   "ddim, lcm)",
                   name);
}

static int spec_index(const mp_sampler_spec *spec) {
  for (size_t i = 0; i < N_SAMPLERS; i++)
    if (sampler_names[i].kind == spec->kind && sampler_names[i].karras == spec->karras) return (int)i;
  for (size_t i = 0; i < N_SAMPLERS; i++)
    if (sampler_names[i].kind == spec->kind) return (int)i;
  return 0;
}

const char *mp_sampler_name(const mp_sampler_spec *spec) { return sampler_names[spec_index(spec)].name; }
const char *mp_sampler_a1111_name(const mp_sampler_spec *spec) { return sampler_names[spec_index(spec)].a1111; }

int mp_sampler_model_calls(const mp_sampler_spec *spec, int steps) {
  return spec->kind == MP_SAMPLER_DPMPP_SDE && steps > 0 ? 2 * steps - 1 : steps;
}

mp_error *mp_sampler_sigmas(const mp_sampler_spec *spec, const mp_schedule *s, int steps, float *sigmas, int *timesteps) {
  if (spec->kind == MP_SAMPLER_DDIM) return mp_sigmas_ddim(s, steps, sigmas, timesteps);
  if (spec->kind == MP_SAMPLER_LCM) return mp_sigmas_lcm(s, steps, sigmas);
  if (spec->karras) return mp_sigmas_karras(mp_schedule_sigma_min(s), mp_schedule_sigma_max(s), steps, sigmas);
  return mp_sigmas_default(s, steps, sigmas);
}

mp_error *mp_sampler_img2img_sigmas(const mp_sampler_spec *spec, const mp_schedule *s, int steps, double strength,
                                    float *sigmas, int *n_sigmas) {
  if (!(strength >= 0 && strength <= 1)) return mp_errorf("denoising strength %g (expected 0..1)", strength);
  MP_TRY(mp_sampler_sigmas(spec, s, steps, sigmas, NULL));
  int run; /* steps to run */
  if (spec->kind == MP_SAMPLER_DDIM) {
    run = (int)(steps * strength); /* diffusers get_timesteps */
    if (run > steps) run = steps;
  } else {
    run = (int)((strength < 0.999 ? strength : 0.999) * steps) + 1; /* A1111: t_enc + 1 */
    if (run > steps) run = steps;
  }
  if (run < 1) return mp_errorf("denoising strength %g with %d steps leaves no step to run", strength, steps);
  int start = steps - run;
  memmove(sigmas, sigmas + start, (size_t)(run + 1) * sizeof *sigmas);
  *n_sigmas = run + 1;
  return NULL;
}

double mp_sampler_init_noise_scale(const mp_sampler_spec *spec, double sigma0) {
  return spec->kind == MP_SAMPLER_DDIM ? sqrt(1.0 + sigma0 * sigma0) : sigma0;
}

/* ---- the samplers ---- */

typedef struct {
  const mp_sampler_io *io;
  int64_t n;
  float *denoised, *scratch, *noise, *old_denoised;
} run_state;

static mp_error *denoise(run_state *st, const float *x, double sigma, float *out) {
  return st->io->denoise(st->io->denoise_ctx, x, sigma, out, st->n);
}

static mp_error *after_step(run_state *st, int i, int n_steps, float *x, double sigma, double sigma_next) {
  if (!st->io->on_step) return NULL;
  return st->io->on_step(st->io->step_ctx, i, n_steps, x, st->n, sigma, sigma_next);
}

/* k-diffusion get_ancestral_step with eta = 1: split the step to sigma_to into a deterministic
 * part down to sigma_down and fresh noise of size sigma_up. */
static void ancestral_step(double sigma_from, double sigma_to, double *down, double *up) {
  double u = sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from));
  if (u > sigma_to) u = sigma_to;
  *up = u;
  *down = sqrt(sigma_to * sigma_to - u * u);
}

/* x += (x - denoised) / sigma * (sigma_to - sigma): one Euler step of the probability-flow ODE. */
static void euler_move(float *x, const float *denoised, int64_t n, double sigma, double sigma_to) {
  double ratio = (sigma_to - sigma) / sigma;
  for (int64_t k = 0; k < n; k++) {
    double d = ((double)x[k] - denoised[k]) * ratio;
    x[k] = (float)(x[k] + d);
  }
}

static mp_error *sample_euler(run_state *st, const float *sig, int steps, float *x) {
  for (int i = 0; i < steps; i++) {
    MP_TRY(denoise(st, x, sig[i], st->denoised));
    euler_move(x, st->denoised, st->n, sig[i], sig[i + 1]);
    MP_TRY(after_step(st, i, steps, x, sig[i], sig[i + 1]));
  }
  return NULL;
}

static mp_error *sample_euler_a(run_state *st, const float *sig, int steps, float *x) {
  for (int i = 0; i < steps; i++) {
    MP_TRY(denoise(st, x, sig[i], st->denoised));
    double down, up;
    ancestral_step(sig[i], sig[i + 1], &down, &up);
    euler_move(x, st->denoised, st->n, sig[i], down);
    if (sig[i + 1] > 0) {
      MP_TRY(mp_noise_interval(st->io->noise, sig[i], sig[i + 1], st->noise, st->n));
      for (int64_t k = 0; k < st->n; k++) x[k] = (float)(x[k] + (double)st->noise[k] * up);
    }
    MP_TRY(after_step(st, i, steps, x, sig[i], sig[i + 1]));
  }
  return NULL;
}

/* DPM-Solver++(2M) in log-SNR time t = -log(sigma): exponential integrator with a second-order
 * correction from the previous step's denoised; first and last steps are first order. */
static mp_error *sample_dpmpp_2m(run_state *st, const float *sig, int steps, float *x) {
  bool have_old = false;
  for (int i = 0; i < steps; i++) {
    MP_TRY(denoise(st, x, sig[i], st->denoised));
    if (sig[i + 1] == 0) {
      memcpy(x, st->denoised, (size_t)st->n * sizeof *x); /* sigma_next / sigma = 0 */
    } else {
      double t = -log(sig[i]), t_next = -log(sig[i + 1]), h = t_next - t;
      double ratio = sig[i + 1] / sig[i], coef = -expm1(-h);
      if (!have_old) {
        for (int64_t k = 0; k < st->n; k++) x[k] = (float)(ratio * x[k] + coef * st->denoised[k]);
      } else {
        double h_last = t - (-log(sig[i - 1])), r = h_last / h;
        double a = 1 + 1 / (2 * r), b = 1 / (2 * r);
        for (int64_t k = 0; k < st->n; k++) {
          double dd = a * st->denoised[k] - b * st->old_denoised[k];
          x[k] = (float)(ratio * x[k] + coef * dd);
        }
      }
    }
    memcpy(st->old_denoised, st->denoised, (size_t)st->n * sizeof(float));
    have_old = true;
    MP_TRY(after_step(st, i, steps, x, sig[i], sig[i + 1]));
  }
  return NULL;
}

/* DPM-Solver++ SDE (k-diffusion sample_dpmpp_sde, eta 1, r = 1/2): per step a stochastic half-step
 * to s = t + h/2, a second model call there, then the full step with noise; the step to sigma 0 is Euler. */
static mp_error *sample_dpmpp_sde(run_state *st, const float *sig, int steps, float *x) {
  const double r = 0.5, fac = 1 / (2 * r);
  for (int i = 0; i < steps; i++) {
    MP_TRY(denoise(st, x, sig[i], st->denoised));
    if (sig[i + 1] == 0) {
      euler_move(x, st->denoised, st->n, sig[i], sig[i + 1]);
    } else {
      double t = -log(sig[i]), t_next = -log(sig[i + 1]), h = t_next - t, s = t + h * r;
      double sigma_t = sig[i], sigma_s = exp(-s), sigma_next = sig[i + 1];
      /* step 1: to s */
      double down, up;
      ancestral_step(sigma_t, sigma_s, &down, &up);
      double s_ = -log(down);
      double ratio = exp(-s_) / sigma_t, coef = -expm1(t - s_);
      float *x2 = st->scratch;
      MP_TRY(mp_noise_interval(st->io->noise, sigma_t, sigma_s, st->noise, st->n));
      for (int64_t k = 0; k < st->n; k++) {
        double v = ratio * x[k] + coef * st->denoised[k];
        x2[k] = (float)(v + (double)st->noise[k] * up);
      }
      MP_TRY(denoise(st, x2, sigma_s, st->old_denoised)); /* denoised_2 */
      /* step 2: to t_next with the blended denoised */
      ancestral_step(sigma_t, sigma_next, &down, &up);
      double tn_ = -log(down);
      ratio = exp(-tn_) / sigma_t;
      coef = -expm1(t - tn_);
      MP_TRY(mp_noise_interval(st->io->noise, sigma_t, sigma_next, st->noise, st->n));
      for (int64_t k = 0; k < st->n; k++) {
        double dd = (1 - fac) * st->denoised[k] + fac * st->old_denoised[k];
        double v = ratio * x[k] + coef * dd;
        x[k] = (float)(v + (double)st->noise[k] * up);
      }
    }
    MP_TRY(after_step(st, i, steps, x, sig[i], sig[i + 1]));
  }
  return NULL;
}

/* LCM (AUTOMATIC1111's sample_lcm): jump to the denoised estimate, re-noise to the next sigma. The
 * consistency-model boundary condition lives in the denoiser (mp_cfg_denoiser.lcm). */
static mp_error *sample_lcm(run_state *st, const float *sig, int steps, float *x) {
  for (int i = 0; i < steps; i++) {
    MP_TRY(denoise(st, x, sig[i], st->denoised));
    memcpy(x, st->denoised, (size_t)st->n * sizeof *x);
    if (sig[i + 1] > 0) {
      MP_TRY(mp_noise_interval(st->io->noise, sig[i], sig[i + 1], st->noise, st->n));
      for (int64_t k = 0; k < st->n; k++) x[k] = (float)(x[k] + (double)sig[i + 1] * st->noise[k]);
    }
    MP_TRY(after_step(st, i, steps, x, sig[i], sig[i + 1]));
  }
  return NULL;
}

mp_error *mp_sample(const mp_sampler_spec *spec, const float *sigmas, int n_sigmas, float *x, int64_t n, const mp_sampler_io *io) {
  if (n_sigmas < 2) return mp_errorf("sampler: %d sigmas (need at least 2)", n_sigmas);
  if (!io || !io->denoise) return mp_errorf("sampler: no denoiser");
  for (int i = 0; i < n_sigmas; i++)
    if (!(sigmas[i] >= 0) || (i > 0 && !(sigmas[i] < sigmas[i - 1])))
      return mp_errorf("sampler: sigmas must be positive and strictly decreasing (index %d: %g)", i, sigmas[i]);
  for (int i = 0; i < n_sigmas - 1; i++)
    if (!(sigmas[i] > 0)) return mp_errorf("sampler: sigma %d is 0 before the last step", i);
  bool needs_noise = spec->kind == MP_SAMPLER_EULER_A || spec->kind == MP_SAMPLER_DPMPP_SDE || spec->kind == MP_SAMPLER_LCM;
  if (needs_noise && !io->noise) return mp_errorf("sampler %s needs a noise source", mp_sampler_name(spec));
  run_state st = {.io = io, .n = n};
  st.denoised = mp_alloc((size_t)n * sizeof(float));
  st.scratch = mp_alloc((size_t)n * sizeof(float));
  st.noise = mp_alloc((size_t)n * sizeof(float));
  st.old_denoised = mp_alloc((size_t)n * sizeof(float));
  mp_error *e = NULL;
  if (!st.denoised || !st.scratch || !st.noise || !st.old_denoised) e = mp_errorf("out of memory (sampler buffers)");
  int steps = n_sigmas - 1;
  if (!e) switch (spec->kind) {
      case MP_SAMPLER_EULER:
      case MP_SAMPLER_DDIM: /* DDIM with eta 0 is exactly Euler in k-diffusion's variable */
        e = sample_euler(&st, sigmas, steps, x);
        break;
      case MP_SAMPLER_EULER_A: e = sample_euler_a(&st, sigmas, steps, x); break;
      case MP_SAMPLER_DPMPP_2M: e = sample_dpmpp_2m(&st, sigmas, steps, x); break;
      case MP_SAMPLER_DPMPP_SDE: e = sample_dpmpp_sde(&st, sigmas, steps, x); break;
      case MP_SAMPLER_LCM: e = sample_lcm(&st, sigmas, steps, x); break;
      default: e = mp_errorf("sampler kind %d not implemented", (int)spec->kind);
    }
  mp_free(st.denoised);
  mp_free(st.scratch);
  mp_free(st.noise);
  mp_free(st.old_denoised);
  return e;
}
