#include "sampling/schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"

mp_error *mp_schedule_from_alphas(mp_schedule *s, const double *ac, int n) {
  memset(s, 0, sizeof *s);
  if (n < 2) return mp_errorf("noise schedule: %d timesteps (need at least 2)", n);
  for (int i = 0; i < n; i++)
    if (!(ac[i] > 0 && ac[i] < 1)) return mp_errorf("noise schedule: alphas_cumprod[%d] = %g is not in (0, 1)", i, ac[i]);
  s->alphas_cumprod = malloc((size_t)n * sizeof *s->alphas_cumprod);
  s->sigmas = malloc((size_t)n * sizeof *s->sigmas);
  s->log_sigmas = malloc((size_t)n * sizeof *s->log_sigmas);
  if (!s->alphas_cumprod || !s->sigmas || !s->log_sigmas) {
    mp_schedule_free(s);
    return mp_errorf("out of memory");
  }
  s->n = n;
  for (int i = 0; i < n; i++) {
    s->alphas_cumprod[i] = ac[i];
    /* float32 arithmetic, as k-diffusion computes its buffers from the float32 model buffer */
    float a = (float)ac[i];
    s->sigmas[i] = sqrtf((1.0f - a) / a);
    s->log_sigmas[i] = logf(s->sigmas[i]);
  }
  for (int i = 1; i < n; i++)
    if (!(s->sigmas[i] > s->sigmas[i - 1])) {
      mp_schedule_free(s);
      return mp_errorf("noise schedule: alphas_cumprod must decrease strictly (index %d)", i);
    }
  return NULL;
}

mp_error *mp_schedule_linear(mp_schedule *s, double beta_start, double beta_end, int n) {
  if (n < 2 || !(beta_start > 0) || !(beta_end > beta_start) || !(beta_end < 1))
    return mp_errorf("noise schedule: invalid linear betas %g..%g over %d steps", beta_start, beta_end, n);
  double *ac = malloc((size_t)n * sizeof *ac);
  if (!ac) return mp_errorf("out of memory");
  double a = sqrt(beta_start), b = sqrt(beta_end), prod = 1;
  for (int i = 0; i < n; i++) {
    double r = a + (b - a) * i / (n - 1);
    prod *= 1 - r * r;
    ac[i] = prod;
  }
  mp_error *e = mp_schedule_from_alphas(s, ac, n);
  free(ac);
  return e;
}

mp_error *mp_schedule_from_checkpoint(mp_schedule *s, const mp_weights *w, double beta_start, double beta_end, int n) {
  const mp_weight *ac = w ? mp_weights_find(w, "alphas_cumprod") : NULL;
  if (!ac) return mp_schedule_linear(s, beta_start, beta_end, n);
  int64_t count = mp_tensor_numel(&ac->t);
  if (ac->t.dtype != MP_F32 && ac->t.dtype != MP_F64 && ac->t.dtype != MP_F16 && ac->t.dtype != MP_BF16)
    return mp_errorf("%s: alphas_cumprod has dtype %s, expected a float type", mp_weights_path(w), mp_dtype_name(ac->t.dtype));
  if (count < 2 || count > 100000)
    return mp_errorf("%s: alphas_cumprod has %lld values", mp_weights_path(w), (long long)count);
  double *v = malloc((size_t)count * sizeof *v);
  if (!v) return mp_errorf("out of memory");
  if (ac->t.dtype == MP_F64) memcpy(v, ac->t.data, (size_t)count * sizeof *v);
  else {
    float *f = malloc((size_t)count * sizeof *f);
    if (!f) {
      free(v);
      return mp_errorf("out of memory");
    }
    mp_convert_to_f32(f, ac->t.data, ac->t.dtype, (size_t)count);
    for (int64_t i = 0; i < count; i++) v[i] = f[i];
    free(f);
  }
  mp_error *e = mp_schedule_from_alphas(s, v, (int)count);
  free(v);
  return mp_error_wrap(e, "%s: alphas_cumprod", mp_weights_path(w));
}

void mp_schedule_free(mp_schedule *s) {
  free(s->alphas_cumprod);
  free(s->sigmas);
  free(s->log_sigmas);
  memset(s, 0, sizeof *s);
}

double mp_schedule_sigma_min(const mp_schedule *s) { return s->sigmas[0]; }
double mp_schedule_sigma_max(const mp_schedule *s) { return s->sigmas[s->n - 1]; }

double mp_schedule_sigma_to_t(const mp_schedule *s, double sigma) {
  /* float32 throughout, as k-diffusion does it on float32 tensors: a training sigma maps back to
   * its integer timestep exactly */
  float ls = logf((float)sigma);
  /* low = the last index whose log sigma is <= ls (0 if none), at most n-2 */
  int lo = 0;
  if (ls >= s->log_sigmas[0]) {
    int a = 0, b = s->n - 1; /* invariant: log_sigmas[a] <= ls */
    if (ls >= s->log_sigmas[b]) a = b;
    else
      while (b - a > 1) {
        int m = (a + b) / 2;
        if (s->log_sigmas[m] <= ls) a = m;
        else b = m;
      }
    lo = a;
  }
  if (lo > s->n - 2) lo = s->n - 2;
  int hi = lo + 1;
  float low = s->log_sigmas[lo], high = s->log_sigmas[hi];
  float w = (low - ls) / (low - high);
  if (w < 0) w = 0;
  if (w > 1) w = 1;
  return (1.0f - w) * (float)lo + w * (float)hi;
}

double mp_schedule_t_to_sigma(const mp_schedule *s, double t) {
  if (t < 0) t = 0;
  if (t > s->n - 1) t = s->n - 1;
  int lo = (int)floor(t), hi = (int)ceil(t);
  double w = t - lo;
  return exp((1 - w) * s->log_sigmas[lo] + w * s->log_sigmas[hi]);
}

static mp_error *check_steps(int steps) {
  if (steps < 1 || steps > 10000) return mp_errorf("steps = %d (expected 1..10000)", steps);
  return NULL;
}

mp_error *mp_sigmas_default(const mp_schedule *s, int steps, float *out) {
  MP_TRY(check_steps(steps));
  double t_max = s->n - 1;
  for (int i = 0; i < steps; i++) {
    /* torch.linspace(t_max, 0, steps) in float32: start + i*step for the first half, end - (steps-1-i)*step after */
    float step = steps > 1 ? (float)(-t_max / (steps - 1)) : 0.0f;
    float t = i < steps / 2 ? (float)t_max + (float)i * step : 0.0f - (float)(steps - 1 - i) * step;
    if (steps == 1) t = (float)t_max;
    out[i] = (float)mp_schedule_t_to_sigma(s, t);
  }
  out[steps] = 0;
  return NULL;
}

mp_error *mp_sigmas_karras(double sigma_min, double sigma_max, int steps, float *out) {
  MP_TRY(check_steps(steps));
  if (!(sigma_min > 0) || !(sigma_max > sigma_min)) return mp_errorf("Karras sigmas: invalid range %g..%g", sigma_min, sigma_max);
  const double rho = 7.0;
  double min_inv = pow(sigma_min, 1 / rho), max_inv = pow(sigma_max, 1 / rho);
  for (int i = 0; i < steps; i++) {
    double ramp = steps > 1 ? (double)i / (steps - 1) : 0.0;
    out[i] = (float)pow(max_inv + ramp * (min_inv - max_inv), rho);
  }
  out[steps] = 0;
  return NULL;
}

mp_error *mp_sigmas_ddim(const mp_schedule *s, int steps, float *out, int *timesteps) {
  MP_TRY(check_steps(steps));
  int ratio = s->n / steps;
  if (ratio < 1) return mp_errorf("DDIM: %d steps exceed the model's %d timesteps", steps, s->n);
  for (int i = 0; i < steps; i++) {
    int t = (steps - 1 - i) * ratio + 1;
    if (t > s->n - 1) t = s->n - 1;
    if (timesteps) timesteps[i] = t;
    out[i] = s->sigmas[t];
  }
  out[steps] = s->sigmas[0];
  return NULL;
}

static int lcm_skip(const mp_schedule *s) { return s->n / MP_LCM_ORIGINAL_STEPS; }

double mp_schedule_sigma_to_t_lcm(const mp_schedule *s, double sigma) {
  int k = lcm_skip(s), best = 0;
  float ls = logf((float)sigma), best_d = INFINITY;
  for (int j = 0; j < MP_LCM_ORIGINAL_STEPS; j++) {
    float d = fabsf(ls - s->log_sigmas[j * k + k - 1]);
    if (d < best_d) { /* first minimum, as argmin */
      best_d = d;
      best = j;
    }
  }
  return (double)best * k + (k - 1);
}

mp_error *mp_sigmas_lcm(const mp_schedule *s, int steps, float *out) {
  MP_TRY(check_steps(steps));
  int k = lcm_skip(s);
  if (k < 1) return mp_errorf("LCM: the model has %d timesteps (need at least %d)", s->n, MP_LCM_ORIGINAL_STEPS);
  float start = (float)((MP_LCM_ORIGINAL_STEPS - 1) * k + k - 1), end = (float)(k - 1);
  for (int i = 0; i < steps; i++) {
    float step = steps > 1 ? (end - start) / (float)(steps - 1) : 0.0f;
    float t = steps == 1 ? start : i < steps / 2 ? start + (float)i * step : end - (float)(steps - 1 - i) * step;
    /* index into the 50 original sigmas, then log-sigma interpolation between them */
    float u = (t - (float)(k - 1)) / (float)k;
    if (u < 0) u = 0;
    if (u > MP_LCM_ORIGINAL_STEPS - 1) u = MP_LCM_ORIGINAL_STEPS - 1;
    int lo = (int)floorf(u), hi = (int)ceilf(u);
    double w = u - lo;
    out[i] = (float)exp((1 - w) * s->log_sigmas[lo * k + k - 1] + w * s->log_sigmas[hi * k + k - 1]);
  }
  out[steps] = 0;
  return NULL;
}
