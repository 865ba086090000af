/* Film grain, SPEC.md §4.5.
 *
 * noise = N(0, 0.010²) per pixel at full resolution
 *       + N(0, 0.020²) per pixel at half resolution (⌊w/2⌋ × ⌊h/2⌋), bilinearly upsampled to w × h
 *         (pixel-centre convention) — only when both half dimensions exceed 256;
 * out   = clip(round(255 · (in / 255 + noise)), 0, 255) = clip(in + round(255 · noise)) for integer `in`:
 *         the same noise, and so the same number of levels, on R, G and B.
 *
 * Bilinear upsampling averages neighbouring half-resolution samples, so the upsampled field's standard
 * deviation is below 0.020: for an exact 2× upsample every output mixes 0.75/0.25 in each axis, which
 * keeps (0.75² + 0.25²)² = 0.390625 of the variance, i.e. σ 0.0125, and the sum has σ ≈ 0.0160.
 *
 * Randomness (deterministic, documented so other implementations can reproduce it):
 *   key   = (seed << 32) ^ image_index ^ 0x6d70617373677261 ("mpassgra")
 *   state = four successive SplitMix64 outputs starting from key  (xoshiro256** state s[0..3])
 *   u     = (xoshiro256**() >> 11) · 2⁻⁵³, taken as 1 - u so that u ∈ (0, 1]
 *   gaussians come in pairs from Box–Muller: r = sqrt(-2 ln u1), z1 = r cos(2π u2), z2 = r sin(2π u2)
 *   the full-resolution field is drawn first in row-major order, then the half-resolution field. */
#ifndef MP_POST_GRAIN_H
#define MP_POST_GRAIN_H

#include <stdint.h>

#include "core/error.h"
#include "io/image.h"

#define MP_GRAIN_SIGMA_FULL 0.010
#define MP_GRAIN_SIGMA_HALF 0.020
#define MP_GRAIN_HALF_MIN 256 /* both half dimensions must exceed this */

/* The noise field (w × h floats, in units of the [0, 1] image range). `half_used` (may be NULL)
 * tells whether the half-resolution layer was added. */
mp_error *mp_grain_noise(int w, int h, uint64_t seed, uint32_t image_index, float *noise, int *half_used);

/* Add grain to an RGB or gray image in place. */
mp_error *mp_grain_apply(mp_image *img, uint64_t seed, uint32_t image_index);

/* The generator, exposed for tests and for other seeded image-space steps. */
typedef struct {
  uint64_t s[4];
  int have_spare;
  double spare;
} mp_grain_rng;
void mp_grain_rng_seed(mp_grain_rng *r, uint64_t seed, uint32_t image_index);
uint64_t mp_grain_rng_next(mp_grain_rng *r);
double mp_grain_rng_gauss(mp_grain_rng *r);

#endif
