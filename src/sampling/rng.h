/* Random number generators that reproduce other tools' noise bit for bit (or as close as their
 * floating point allows), so a seed means the same initial latent here as there.
 *
 * - torch CPU: torch.manual_seed(s) + torch.randn / torch.rand on the CPU. mt19937 seeded with
 *   the low 32 bits of s; torch.rand(float) = (draw & 0xFFFFFF) * 2^-24. torch.randn(float) of
 *   n >= 16 values draws n such uniforms, turns blocks of 16 into normals with Box-Muller
 *   (u1 = 1 - data[j], u2 = data[j+8], cos half into j, sin half into j+8) and, when n is not a
 *   multiple of 16, draws 16 fresh uniforms for the last 16 positions and transforms them again.
 *   For n < 16 each value is a double Box-Muller normal from two 53-bit uniforms, the sine half
 *   cached for the next value.
 * - Philox4x32-10 (Salmon et al., SC'11): torch.randn on an NVIDIA GPU as AUTOMATIC1111 uses it.
 *   Element i of a call uses counter (offset, 0, i, 0) and key (seed lo, seed hi); the first two
 *   output words go through curand's Box-Muller and the sine half is kept. `offset` counts calls. */
#ifndef MP_SAMPLING_RNG_H
#define MP_SAMPLING_RNG_H

#include <stdbool.h>
#include <stdint.h>

/* ---- torch's CPU generator ---- */
typedef struct {
  uint32_t state[624];
  int next;
  bool has_cached_normal; /* the sine half of the last double Box-Muller pair */
  double cached_normal;
} mp_torch_cpu_rng;

void mp_torch_cpu_seed(mp_torch_cpu_rng *g, uint64_t seed);
uint32_t mp_torch_cpu_u32(mp_torch_cpu_rng *g);
/* torch.randn(n) (float32) and torch.rand(n) (float32), continuing the generator's stream. */
void mp_torch_cpu_randn(mp_torch_cpu_rng *g, float *out, int64_t n);
void mp_torch_cpu_rand(mp_torch_cpu_rng *g, float *out, int64_t n);

/* ---- Philox4x32-10 ---- */
void mp_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* curand's Box-Muller on two 32-bit words: returns the sine half (curand_normal's .x). */
float mp_curand_box_muller_sin(uint32_t x, uint32_t y);

typedef struct {
  uint64_t seed;
  uint64_t offset; /* Philox counter word 0/1: one per randn call, as torch advances it for small tensors */
} mp_philox_rng;

void mp_philox_seed(mp_philox_rng *g, uint64_t seed);
/* torch.randn(n, device="cuda") after torch.manual_seed(seed), for n up to the GPU's resident
 * thread count (see docs/samplers.md); advances the offset by one call. */
void mp_philox_randn(mp_philox_rng *g, float *out, int64_t n);

#endif
