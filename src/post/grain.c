#include "post/grain.h"

#include <math.h>
#include <string.h>

#include "core/tensor.h"
#include "post/resize.h"

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void mp_grain_rng_seed(mp_grain_rng *r, uint64_t seed, uint32_t image_index) {
  uint64_t key = (seed << 32) ^ (uint64_t)image_index ^ 0x6d70617373677261ull;
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&key);
  r->have_spare = 0;
  r->spare = 0;
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t mp_grain_rng_next(mp_grain_rng *r) { /* xoshiro256** */
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

static double uniform_open0(mp_grain_rng *r) { return 1.0 - (double)(mp_grain_rng_next(r) >> 11) * 0x1.0p-53; }

double mp_grain_rng_gauss(mp_grain_rng *r) {
  if (r->have_spare) {
    r->have_spare = 0;
    return r->spare;
  }
  double u1 = uniform_open0(r), u2 = uniform_open0(r);
  double rad = sqrt(-2.0 * log(u1));
  r->spare = rad * sin(2.0 * M_PI * u2);
  r->have_spare = 1;
  return rad * cos(2.0 * M_PI * u2);
}

mp_error *mp_grain_noise(int w, int h, uint64_t seed, uint32_t image_index, float *noise, int *half_used) {
  if (w <= 0 || h <= 0) return mp_errorf("film grain: invalid size %dx%d", w, h);
  mp_grain_rng r;
  mp_grain_rng_seed(&r, seed, image_index);
  size_t n = (size_t)w * (size_t)h;
  for (size_t i = 0; i < n; i++) noise[i] = (float)(MP_GRAIN_SIGMA_FULL * mp_grain_rng_gauss(&r));
  int hw = w / 2, hh = h / 2, use_half = hw > MP_GRAIN_HALF_MIN && hh > MP_GRAIN_HALF_MIN;
  if (half_used) *half_used = use_half;
  if (!use_half) return NULL;
  size_t hn = (size_t)hw * (size_t)hh;
  float *half = mp_alloc(hn * sizeof(float)), *up = mp_alloc(n * sizeof(float));
  if (!half || !up) {
    mp_free(half), mp_free(up);
    return mp_errorf("film grain: out of memory for %dx%d", w, h);
  }
  for (size_t i = 0; i < hn; i++) half[i] = (float)(MP_GRAIN_SIGMA_HALF * mp_grain_rng_gauss(&r));
  mp_error *e = mp_resize_f32(half, hw, hh, 1, up, w, h, MP_RESIZE_BILINEAR);
  if (!e)
    for (size_t i = 0; i < n; i++) noise[i] += up[i];
  mp_free(half), mp_free(up);
  return e;
}

mp_error *mp_grain_apply(mp_image *img, uint64_t seed, uint32_t image_index) {
  size_t n = (size_t)img->width * (size_t)img->height;
  float *noise = mp_alloc(n * sizeof(float));
  if (!noise) return mp_errorf("film grain: out of memory for %dx%d", img->width, img->height);
  mp_error *e = mp_grain_noise(img->width, img->height, seed, image_index, noise, NULL);
  if (e) {
    mp_free(noise);
    return e;
  }
  const int C = img->channels;
  for (size_t i = 0; i < n; i++) {
    /* round(255·(p/255 + noise)) = p + round(255·noise) for integer p, so every channel moves by exactly
     * the same number of levels (only exact .5 ties, which have probability 0, could differ). */
    int d = (int)lrintf(255.0f * noise[i]);
    for (int c = 0; c < C; c++) {
      uint8_t *p = img->pixels + i * (size_t)C + (size_t)c;
      int v = *p + d;
      *p = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
  }
  mp_free(noise);
  return NULL;
}
