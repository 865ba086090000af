/* Noise schedules: the model's training sigmas and the sigma sequences samplers walk.
 *
 * sigma(t) = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) for the training timesteps t = 0..n-1,
 * kept in float32 as k-diffusion keeps them (CompVisDenoiser). Between timesteps, sigma and t map to
 * each other by linear interpolation of log sigma, so samplers may visit fractional timesteps. */
#ifndef MP_SAMPLING_SCHEDULE_H
#define MP_SAMPLING_SCHEDULE_H

#include "core/error.h"
#include "io/weights.h"

typedef struct {
  int n;                  /* training timesteps (1000) */
  double *alphas_cumprod; /* [n] */
  float *sigmas;          /* [n], ascending */
  float *log_sigmas;      /* [n] */
} mp_schedule;

/* From alphas_cumprod [n] (n >= 2, each in (0, 1)). */
mp_error *mp_schedule_from_alphas(mp_schedule *s, const double *alphas_cumprod, int n);
/* The LDM "linear" schedule: betas = linspace(sqrt(start), sqrt(end), n)^2 (SD 1.x: 0.00085, 0.012, 1000). */
mp_error *mp_schedule_linear(mp_schedule *s, double beta_start, double beta_end, int n);
/* The checkpoint's `alphas_cumprod` buffer when it has one, else the linear schedule given. */
mp_error *mp_schedule_from_checkpoint(mp_schedule *s, const mp_weights *w, double beta_start, double beta_end, int n);
void mp_schedule_free(mp_schedule *s);

double mp_schedule_sigma_min(const mp_schedule *s);
double mp_schedule_sigma_max(const mp_schedule *s);
/* Fractional timestep of a sigma (k-diffusion sigma_to_t, not quantized), and the inverse. */
double mp_schedule_sigma_to_t(const mp_schedule *s, double sigma);
double mp_schedule_t_to_sigma(const mp_schedule *s, double t);

/* steps + 1 sigmas into out, the last 0. */
/* k-diffusion get_sigmas (AUTOMATIC1111's default): t = linspace(n-1, 0, steps), sigma(t). */
mp_error *mp_sigmas_default(const mp_schedule *s, int steps, float *out);
/* Karras et al. (2022) with rho = 7 over [sigma_min, sigma_max]. */
mp_error *mp_sigmas_karras(double sigma_min, double sigma_max, int steps, float *out);
/* DDIM "leading" spacing with steps_offset 1 (diffusers; also CompVis DDIM "uniform"):
 * t_i = (steps-1-i) * (n / steps) + 1, sigma(t_i); the last value is sigma(0), not 0, because the
 * reference steps to alphas_cumprod[0] at the end. timesteps (may be NULL) gets the steps t_i. */
mp_error *mp_sigmas_ddim(const mp_schedule *s, int steps, float *out, int *timesteps);

/* AUTOMATIC1111's LCM schedule (LCMCompVisDenoiser): the model is only ever asked at 50 "original"
 * timesteps t_j = j*k + k-1 (k = n/50: 19, 39, ..., 999). Sigmas: t = linspace(999, k-1, steps)
 * mapped by log-sigma interpolation over those 50 sigmas, then 0. */
#define MP_LCM_ORIGINAL_STEPS 50
mp_error *mp_sigmas_lcm(const mp_schedule *s, int steps, float *out);
/* The LCM denoiser's timestep for a sigma: the original timestep with the nearest log sigma. */
double mp_schedule_sigma_to_t_lcm(const mp_schedule *s, double sigma);

#endif
