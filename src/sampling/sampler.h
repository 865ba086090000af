/* Samplers with k-diffusion's semantics, as AUTOMATIC1111 runs them.
 *
 * A sampler walks x from sigmas[0] down to sigmas[n-1] in k-diffusion's variable (x = x0 + sigma*eps;
 * the UNet sees x / sqrt(sigma^2 + 1)). It sees the model only through a denoiser callback
 * (x, sigma) -> denoised estimate of x0, and its randomness only through a noise source. */
#ifndef MP_SAMPLING_SAMPLER_H
#define MP_SAMPLING_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "sampling/noise.h"
#include "sampling/schedule.h"

typedef enum {
  MP_SAMPLER_EULER,
  MP_SAMPLER_EULER_A,
  MP_SAMPLER_DPMPP_2M,
  MP_SAMPLER_DPMPP_SDE,
  MP_SAMPLER_DDIM,
  MP_SAMPLER_LCM,
} mp_sampler_kind;

typedef struct {
  mp_sampler_kind kind;
  bool karras; /* Karras sigmas (rho 7) instead of the default discretisation */
} mp_sampler_spec;

/* "euler", "euler_a", "dpm++2m", "dpm++2m_karras", "dpm++sde", "dpm++sde_karras", "ddim", "lcm".
 * "tcd" is known but not implemented yet (an error says so); anything else lists the names. */
mp_error *mp_sampler_parse(const char *name, mp_sampler_spec *out);
/* The canonical name (as accepted by mp_sampler_parse). */
const char *mp_sampler_name(const mp_sampler_spec *spec);
/* AUTOMATIC1111's display name ("DPM++ 2M Karras"), for the PNG parameters. */
const char *mp_sampler_a1111_name(const mp_sampler_spec *spec);
/* Model evaluations for a schedule of `steps` steps (DPM++ SDE: two per step but the last). */
int mp_sampler_model_calls(const mp_sampler_spec *spec, int steps);

/* The txt2img schedule: steps + 1 sigmas. timesteps (DDIM only, may be NULL) gets the integer steps. */
mp_error *mp_sampler_sigmas(const mp_sampler_spec *spec, const mp_schedule *s, int steps, float *sigmas, int *timesteps);
/* img2img: the tail of the schedule that starts at the strength's noise level, into sigmas
 * (capacity steps + 1); *n_sigmas gets its length (steps run = n_sigmas - 1).
 * k-diffusion samplers follow AUTOMATIC1111: t_enc = int(min(strength, 0.999) * steps), run the last
 * t_enc + 1 steps of the `steps` schedule. DDIM follows diffusers: int(steps * strength) steps. */
mp_error *mp_sampler_img2img_sigmas(const mp_sampler_spec *spec, const mp_schedule *s, int steps, double strength,
                                    float *sigmas, int *n_sigmas);
/* The factor that turns unit noise into the starting x at sigma0 for txt2img: sigma0 for k-diffusion
 * samplers; sqrt(1 + sigma0^2) for DDIM, which starts from unit-variance noise in the DDPM variable. */
double mp_sampler_init_noise_scale(const mp_sampler_spec *spec, double sigma0);

/* denoised[i] = estimate of x0 given x at noise level sigma (n values, the whole batch). */
typedef mp_error *(*mp_denoise_fn)(void *ctx, const float *x, double sigma, float *denoised, int64_t n);
/* Called after step `step` (0-based) of n_steps with x now at sigma_next. May change x (inpainting
 * re-imposes the known region here). Return an error to stop (cancellation, for one). */
typedef mp_error *(*mp_step_fn)(void *ctx, int step, int n_steps, float *x, int64_t n, double sigma, double sigma_next);

typedef struct {
  mp_denoise_fn denoise;
  void *denoise_ctx;
  mp_noise *noise;  /* ancestral / SDE noise; unused by euler, dpm++2m, ddim */
  mp_step_fn on_step; /* may be NULL */
  void *step_ctx;
} mp_sampler_io;

/* Run the sampler over sigmas[0..n_sigmas) on x (n values), in place. */
mp_error *mp_sample(const mp_sampler_spec *spec, const float *sigmas, int n_sigmas, float *x, int64_t n, const mp_sampler_io *io);

#endif
