#include "sampling/noise.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampling/rng.h"

mp_error *mp_noise_fill(mp_noise *noise, float *out, int64_t n) {
  if (!noise) return mp_errorf("no noise source");
  return noise->fill(noise, out, n);
}

mp_error *mp_noise_interval(mp_noise *noise, double sigma, double sigma_next, float *out, int64_t n) {
  if (!noise) return mp_errorf("no noise source");
  if (noise->fill_interval) return noise->fill_interval(noise, sigma, sigma_next, out, n);
  return noise->fill(noise, out, n);
}

void mp_noise_free(mp_noise *noise) {
  if (noise) noise->destroy(noise);
}

mp_error *mp_rng_parse(const char *name, mp_rng_kind *out) {
  if (strcmp(name, "cpu") == 0) *out = MP_RNG_CPU;
  else if (strcmp(name, "cuda") == 0 || strcmp(name, "gpu") == 0) *out = MP_RNG_CUDA;
  else return mp_errorf("unknown rng '%s' (expected cpu or cuda)", name);
  return NULL;
}

/* ---- torch CPU ---- */
typedef struct {
  mp_noise base;
  mp_torch_cpu_rng rng;
} torch_cpu_noise;

static mp_error *torch_cpu_fill(mp_noise *self, float *out, int64_t n) {
  mp_torch_cpu_randn(&((torch_cpu_noise *)self)->rng, out, n);
  return NULL;
}

static void plain_destroy(mp_noise *self) { free(self); }

mp_error *mp_noise_torch_cpu(uint64_t seed, mp_noise **out) {
  torch_cpu_noise *s = calloc(1, sizeof *s);
  if (!s) return mp_errorf("out of memory");
  s->base.fill = torch_cpu_fill;
  s->base.destroy = plain_destroy;
  mp_torch_cpu_seed(&s->rng, seed);
  *out = &s->base;
  return NULL;
}

/* ---- Philox (CUDA) ---- */
typedef struct {
  mp_noise base;
  mp_philox_rng rng;
} philox_noise;

static mp_error *philox_fill(mp_noise *self, float *out, int64_t n) {
  mp_philox_randn(&((philox_noise *)self)->rng, out, n);
  return NULL;
}

mp_error *mp_noise_philox(uint64_t seed, mp_noise **out) {
  philox_noise *s = calloc(1, sizeof *s);
  if (!s) return mp_errorf("out of memory");
  s->base.fill = philox_fill;
  s->base.destroy = plain_destroy;
  mp_philox_seed(&s->rng, seed);
  *out = &s->base;
  return NULL;
}

mp_error *mp_noise_from_rng(mp_rng_kind kind, uint64_t seed, mp_noise **out) {
  return kind == MP_RNG_CPU ? mp_noise_torch_cpu(seed, out) : mp_noise_philox(seed, out);
}

/* ---- tape ---- */
typedef struct {
  mp_noise base;
  const mp_weights *w;
  char *prefix;
  int pos;
} tape_noise;

static mp_error *tape_fill(mp_noise *self, float *out, int64_t n) {
  tape_noise *s = (tape_noise *)self;
  char name[512];
  snprintf(name, sizeof name, "%s%02d", s->prefix, s->pos);
  const mp_weight *t = mp_weights_find(s->w, name);
  if (!t) return mp_errorf("noise tape: draw %d ('%s') is not in %s: the sampler drew more noise than the reference", s->pos, name,
                           mp_weights_path(s->w));
  if (t->t.dtype != MP_F32 || mp_tensor_numel(&t->t) != n)
    return mp_errorf("noise tape: '%s' has %lld values of %s, the sampler asked for %lld f32", name,
                     (long long)mp_tensor_numel(&t->t), mp_dtype_name(t->t.dtype), (long long)n);
  memcpy(out, t->t.data, (size_t)n * sizeof(float));
  s->pos++;
  return NULL;
}

static void tape_destroy(mp_noise *self) {
  free(((tape_noise *)self)->prefix);
  free(self);
}

mp_error *mp_noise_tape(const mp_weights *w, const char *prefix, mp_noise **out) {
  tape_noise *s = calloc(1, sizeof *s);
  if (!s || !(s->prefix = strdup(prefix))) {
    free(s);
    return mp_errorf("out of memory");
  }
  s->base.fill = tape_fill;
  s->base.destroy = tape_destroy;
  s->w = w;
  *out = &s->base;
  return NULL;
}

int mp_noise_tape_position(const mp_noise *tape) { return ((const tape_noise *)tape)->pos; }

/* ---- Brownian bridge tree ---- */
/* Bisection levels: the last dyadic interval is (t_max - t_min) / 2^24 wide (under 1e-6 for SD's
 * sigmas), whose bridge variance is negligible next to any sampler step; W is linear inside it. */
enum { BROWNIAN_DEPTH = 24, BROWNIAN_CACHE = 4 };

typedef struct {
  mp_noise base;
  uint64_t seed;
  double t0, t1;
  mp_philox_rng stream; /* for plain fills */
  double *wa, *wb;      /* scratch: W at the two ends of the current interval, per element */
  int64_t cap;
  /* W at the last few times asked (samplers ask for each sigma more than once) */
  double cache_t[BROWNIAN_CACHE];
  double *cache_w[BROWNIAN_CACHE];
  int64_t cache_n;
  int cache_next, cache_used;
} brownian_noise;

/* A standard normal for (node, element), double Box-Muller on one Philox block. */
static double node_normal(uint64_t seed, uint64_t node, int64_t elem) {
  uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
  uint32_t ctr[4] = {(uint32_t)elem, (uint32_t)((uint64_t)elem >> 32), (uint32_t)node, (uint32_t)(node >> 32)};
  uint32_t r[4];
  mp_philox4x32_10(ctr, key, r);
  double u1 = ((double)r[0] + 0.5) * (1.0 / 4294967296.0);
  double u2 = ((double)r[1] + 0.5) * (1.0 / 4294967296.0);
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* W(t) for every element into w. W(t0) = 0; W(t1) ~ N(0, t1 - t0) from node 1; each bisection
 * point m of [a, b] is (W(a) + W(b)) / 2 + sqrt((b - a) / 4) * z(node). Node ids are heap-numbered
 * (root interval 1, children 2k and 2k+1), so they depend only on the point, not on the query. */
static void brownian_eval(brownian_noise *s, double t, double *w, int64_t n) {
  if (t <= s->t0) {
    memset(w, 0, (size_t)n * sizeof *w);
    return;
  }
  double a = s->t0, b = s->t1;
  double *wa = s->wa, *wb = s->wb;
  double root_sd = sqrt(b - a);
  for (int64_t i = 0; i < n; i++) {
    wa[i] = 0;
    wb[i] = root_sd * node_normal(s->seed, 1, i);
  }
  if (t >= s->t1) {
    memcpy(w, wb, (size_t)n * sizeof *w);
    return;
  }
  uint64_t node = 1;
  for (int depth = 0; depth < BROWNIAN_DEPTH; depth++) {
    double m = 0.5 * (a + b), sd = sqrt((b - a) * 0.25);
    uint64_t mid_id = (UINT64_C(1) << 62) | node; /* the midpoint of interval `node` */
    bool left = t < m;
    for (int64_t i = 0; i < n; i++) {
      double wm = 0.5 * (wa[i] + wb[i]) + sd * node_normal(s->seed, mid_id, i);
      if (left) wb[i] = wm;
      else wa[i] = wm;
    }
    if (left) b = m;
    else a = m;
    node = 2 * node + (left ? 0 : 1);
    if (t == a || t == b) break;
  }
  double f = (b > a) ? (t - a) / (b - a) : 0;
  for (int64_t i = 0; i < n; i++) w[i] = wa[i] + f * (wb[i] - wa[i]);
}

static mp_error *brownian_reserve(brownian_noise *s, int64_t n) {
  if (n <= s->cap) return NULL;
  double *a = realloc(s->wa, (size_t)n * sizeof *a);
  if (a) s->wa = a;
  double *b = a ? realloc(s->wb, (size_t)n * sizeof *b) : NULL;
  if (b) s->wb = b;
  if (!a || !b) return mp_errorf("out of memory (Brownian noise for %lld values)", (long long)n);
  s->cap = n;
  return NULL;
}

/* W(t) through the cache; the pointer stays valid until the next BROWNIAN_CACHE - 1 other lookups. */
static mp_error *brownian_at(brownian_noise *s, double t, int64_t n, const double **w) {
  if (n != s->cache_n) { /* a different size: start over */
    for (int k = 0; k < BROWNIAN_CACHE; k++) {
      free(s->cache_w[k]);
      s->cache_w[k] = NULL;
    }
    s->cache_used = s->cache_next = 0;
    s->cache_n = n;
  }
  for (int k = 0; k < s->cache_used; k++)
    if (s->cache_t[k] == t) {
      *w = s->cache_w[k];
      return NULL;
    }
  int k = s->cache_next;
  if (!s->cache_w[k] && !(s->cache_w[k] = malloc((size_t)n * sizeof(double))))
    return mp_errorf("out of memory (Brownian noise for %lld values)", (long long)n);
  brownian_eval(s, t, s->cache_w[k], n);
  s->cache_t[k] = t;
  s->cache_next = (k + 1) % BROWNIAN_CACHE;
  if (s->cache_used < BROWNIAN_CACHE) s->cache_used++;
  *w = s->cache_w[k];
  return NULL;
}

static mp_error *brownian_interval(mp_noise *self, double sigma, double sigma_next, float *out, int64_t n) {
  brownian_noise *s = (brownian_noise *)self;
  MP_TRY(brownian_reserve(s, n));
  double lo = sigma < sigma_next ? sigma : sigma_next, hi = sigma < sigma_next ? sigma_next : sigma;
  double dt = hi - lo;
  if (!(dt > 0)) {
    memset(out, 0, (size_t)n * sizeof *out);
    return NULL;
  }
  const double *w_lo, *w_hi;
  MP_TRY(brownian_at(s, lo, n, &w_lo));
  MP_TRY(brownian_at(s, hi, n, &w_hi));
  /* (W(sigma_next) - W(sigma)) / sqrt(|dt|): from high sigma to low, the sign flips. */
  double sign = sigma_next >= sigma ? 1.0 : -1.0, scale = sign / sqrt(dt);
  for (int64_t i = 0; i < n; i++) out[i] = (float)((w_hi[i] - w_lo[i]) * scale);
  return NULL;
}

static mp_error *brownian_fill(mp_noise *self, float *out, int64_t n) {
  mp_philox_randn(&((brownian_noise *)self)->stream, out, n);
  return NULL;
}

static void brownian_destroy(mp_noise *self) {
  brownian_noise *s = (brownian_noise *)self;
  free(s->wa);
  free(s->wb);
  for (int k = 0; k < BROWNIAN_CACHE; k++) free(s->cache_w[k]);
  free(s);
}

mp_error *mp_noise_brownian(uint64_t seed, double t_min, double t_max, mp_noise **out) {
  if (!(t_min >= 0) || !(t_max > t_min) || !isfinite(t_max))
    return mp_errorf("Brownian noise: invalid time range [%g, %g]", t_min, t_max);
  brownian_noise *s = calloc(1, sizeof *s);
  if (!s) return mp_errorf("out of memory");
  s->base.fill = brownian_fill;
  s->base.fill_interval = brownian_interval;
  s->base.destroy = brownian_destroy;
  s->seed = seed;
  s->t0 = t_min;
  s->t1 = t_max;
  /* a stream distinct from the tree's own draws (which use counter words 2/3 = node id) */
  mp_philox_seed(&s->stream, seed ^ UINT64_C(0x5bd1e9955bd1e995));
  *out = &s->base;
  return NULL;
}

/* ---- batch of per-image sources ---- */
typedef struct {
  mp_noise base;
  mp_noise **children;
  int count;
} batch_noise;

static mp_error *batch_split(batch_noise *s, int64_t n, int64_t *per) {
  if (n % s->count != 0) return mp_errorf("noise: %lld values do not split over %d images", (long long)n, s->count);
  *per = n / s->count;
  return NULL;
}

static mp_error *batch_fill(mp_noise *self, float *out, int64_t n) {
  batch_noise *s = (batch_noise *)self;
  int64_t per = 0;
  MP_TRY(batch_split(s, n, &per));
  for (int i = 0; i < s->count; i++) MP_TRY(mp_noise_fill(s->children[i], out + i * per, per));
  return NULL;
}

static mp_error *batch_interval(mp_noise *self, double sigma, double sigma_next, float *out, int64_t n) {
  batch_noise *s = (batch_noise *)self;
  int64_t per = 0;
  MP_TRY(batch_split(s, n, &per));
  for (int i = 0; i < s->count; i++) MP_TRY(mp_noise_interval(s->children[i], sigma, sigma_next, out + i * per, per));
  return NULL;
}

static void batch_destroy(mp_noise *self) {
  batch_noise *s = (batch_noise *)self;
  for (int i = 0; i < s->count; i++) mp_noise_free(s->children[i]);
  free(s->children);
  free(s);
}

mp_error *mp_noise_batch(mp_noise **children, int count, mp_noise **out) {
  batch_noise *s = count > 0 ? calloc(1, sizeof *s) : NULL;
  mp_noise **copy = s ? malloc((size_t)count * sizeof *copy) : NULL;
  if (!s || !copy) {
    for (int i = 0; i < count; i++) mp_noise_free(children[i]);
    free(s);
    return count > 0 ? mp_errorf("out of memory") : mp_errorf("noise batch of %d sources", count);
  }
  memcpy(copy, children, (size_t)count * sizeof *copy);
  s->base.fill = batch_fill;
  s->base.fill_interval = batch_interval;
  s->base.destroy = batch_destroy;
  s->children = copy;
  s->count = count;
  *out = &s->base;
  return NULL;
}

mp_error *mp_noise_for_seeds(mp_rng_kind kind, const uint64_t *seeds, int count, mp_noise **out) {
  if (count < 1) return mp_errorf("noise for %d images", count);
  mp_noise **kids = calloc((size_t)count, sizeof *kids);
  if (!kids) return mp_errorf("out of memory");
  mp_error *e = NULL;
  for (int i = 0; !e && i < count; i++) e = mp_noise_from_rng(kind, seeds[i], &kids[i]);
  if (e) {
    for (int i = 0; i < count; i++) mp_noise_free(kids[i]);
    free(kids);
    return e;
  }
  e = mp_noise_batch(kids, count, out); /* takes the children */
  free(kids);
  return e;
}
