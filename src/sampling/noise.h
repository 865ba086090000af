/* Noise sources: where a sampler's Gaussian draws come from.
 *
 * One interface for every source, so a sampler never knows whether its noise is torch's CPU
 * generator, Philox as on an NVIDIA GPU, a Brownian tree, or a recorded tape of another
 * implementation's draws (which is how the conformance tests replay the reference samplers).
 *
 * A source is a stream: each fill is the next draw. Samplers that need the noise of an interval
 * of the diffusion (DPM++ SDE) call mp_noise_interval; sources without a notion of time answer it
 * with their next draw. */
#ifndef MP_SAMPLING_NOISE_H
#define MP_SAMPLING_NOISE_H

#include <stdint.h>

#include "core/error.h"
#include "io/weights.h"

typedef struct mp_noise mp_noise;
struct mp_noise {
  /* The next n unit normals. */
  mp_error *(*fill)(mp_noise *self, float *out, int64_t n);
  /* Unit normals for the step sigma -> sigma_next; NULL means "same as fill". */
  mp_error *(*fill_interval)(mp_noise *self, double sigma, double sigma_next, float *out, int64_t n);
  void (*destroy)(mp_noise *self);
};

mp_error *mp_noise_fill(mp_noise *noise, float *out, int64_t n);
mp_error *mp_noise_interval(mp_noise *noise, double sigma, double sigma_next, float *out, int64_t n);
void mp_noise_free(mp_noise *noise); /* NULL-safe */

typedef enum { MP_RNG_CPU, MP_RNG_CUDA } mp_rng_kind;
/* "cpu" or "cuda"; error names the accepted values. */
mp_error *mp_rng_parse(const char *name, mp_rng_kind *out);

/* torch.randn on the CPU with torch.manual_seed(seed): each fill is one torch.randn call. */
mp_error *mp_noise_torch_cpu(uint64_t seed, mp_noise **out);
/* torch.randn on an NVIDIA GPU (Philox4x32-10) with torch.manual_seed(seed), one call per fill. */
mp_error *mp_noise_philox(uint64_t seed, mp_noise **out);
mp_error *mp_noise_from_rng(mp_rng_kind kind, uint64_t seed, mp_noise **out);

/* A recorded tape: fill k returns tensor "<prefix>%02d" (k = 0, 1, ...) of `w`, which must hold
 * exactly n f32 values. Running past the end of the tape is an error. w must outlive the source. */
mp_error *mp_noise_tape(const mp_weights *w, const char *prefix, mp_noise **out);
/* How many draws a tape source has handed out. */
int mp_noise_tape_position(const mp_noise *tape);

/* Brownian motion W(t) over t in [t_min, t_max] (t = sigma), one independent path per element,
 * fixed by `seed`: fill_interval(s, s_next) = (W(s_next) - W(s)) / sqrt(|s_next - s|), as
 * k-diffusion's BrownianTreeNoiseSampler defines it. Built as a Brownian bridge refined by
 * bisection (about 30 levels, then linear between the two nearest dyadic points), with the
 * normal of each bisection point drawn from Philox keyed by the seed, the point and the element:
 * the same (seed, s, s_next) always gives the same noise, whatever was asked before. Not
 * torchsde's tree: the same law, different numbers. Plain fill draws from a Philox stream. */
mp_error *mp_noise_brownian(uint64_t seed, double t_min, double t_max, mp_noise **out);

/* A batch of independent sources, one per image: a fill of n values gives each child n/count
 * consecutive values (n must divide). Takes ownership of the children (also on error). */
mp_error *mp_noise_batch(mp_noise **children, int count, mp_noise **out);

/* One generator per image, seeded seeds[0..count), as a batch source: what a job with num_images
 * images and seeds seed, seed+1, ... uses for its starting and ancestral noise. */
mp_error *mp_noise_for_seeds(mp_rng_kind kind, const uint64_t *seeds, int count, mp_noise **out);

#endif
