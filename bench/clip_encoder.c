/* Text-encoder speed on a real-size CLIP ViT-L/14 (SD 1.x) with random f16 weights.
 * usage: bench_clip_encoder [--threads N] [--runs N]
 * Prints load (bind; the f16 matrices are converted block by block while encoding) and encode time
 * for one 77-token prompt. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/matmul.h"
#include "core/threads.h"
#include "models/clip.h"

#include <cblas.h>

static mp_error *add_random(mp_weights *w, const char *name, int ndim, const int64_t *shape, unsigned *seed, float scale) {
  int64_t n = mp_shape_numel(ndim, shape);
  uint16_t *d = mp_alloc((size_t)n * 2);
  if (!d) return mp_errorf("out of memory");
  for (int64_t i = 0; i < n; i++) {
    *seed = *seed * 1664525u + 1013904223u;
    d[i] = mp_f32_to_f16(scale * ((float)(*seed >> 9) / 8388608.0f - 0.5f));
  }
  return mp_weights_add_owned(w, name, MP_F16, ndim, shape, d);
}

int main(int argc, char **argv) {
  int threads = 2, runs = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
    if (!strcmp(argv[i], "--runs")) runs = atoi(argv[i + 1]);
  }
  const mp_clip_config cfg = {.vocab_size = 49408, .max_positions = 77, .hidden = 768, .intermediate = 3072, .layers = 12,
                              .heads = 12, .ln_eps = 1e-5f, .quick_gelu = true};
  mp_weights *w = mp_weights_new("random-vit-l14");
  unsigned seed = 1;
  mp_error *e = NULL;
  char name[256];
  const char *p = MP_PREFIX_CLIP;
  const int64_t D = cfg.hidden, F = cfg.intermediate;
#define ADD(nd, scale, ...)                                                       \
  do {                                                                            \
    if (!e) e = add_random(w, name, nd, (int64_t[]){__VA_ARGS__}, &seed, scale); \
  } while (0)
  snprintf(name, sizeof name, "%sembeddings.token_embedding.weight", p); ADD(2, 0.02f, cfg.vocab_size, D);
  snprintf(name, sizeof name, "%sembeddings.position_embedding.weight", p); ADD(2, 0.02f, cfg.max_positions, D);
  static const char *const lin[][2] = {{"self_attn.q_proj", "DD"}, {"self_attn.k_proj", "DD"}, {"self_attn.v_proj", "DD"},
                                       {"self_attn.out_proj", "DD"}, {"mlp.fc1", "FD"},         {"mlp.fc2", "DF"}};
  for (int l = 0; l < cfg.layers; l++) {
    for (int k = 0; k < 6; k++) {
      int64_t o = lin[k][1][0] == 'F' ? F : D, in = lin[k][1][1] == 'F' ? F : D;
      snprintf(name, sizeof name, "%sencoder.layers.%d.%s.weight", p, l, lin[k][0]); ADD(2, 0.05f, o, in);
      snprintf(name, sizeof name, "%sencoder.layers.%d.%s.bias", p, l, lin[k][0]); ADD(1, 0.01f, o);
    }
    for (int k = 1; k <= 2; k++) {
      snprintf(name, sizeof name, "%sencoder.layers.%d.layer_norm%d.weight", p, l, k); ADD(1, 0.1f, D);
      snprintf(name, sizeof name, "%sencoder.layers.%d.layer_norm%d.bias", p, l, k); ADD(1, 0.1f, D);
    }
  }
  snprintf(name, sizeof name, "%sfinal_layer_norm.weight", p); ADD(1, 0.1f, D);
  snprintf(name, sizeof name, "%sfinal_layer_norm.bias", p); ADD(1, 0.1f, D);
  if (!e) e = mp_weights_finish(w);

  mp_pool *pool = NULL;
  mp_backend *backend = NULL;
  mp_clip *clip = NULL;
  if (!e) e = mp_pool_create(threads, &pool);
  /* as the pipeline's context: the pool carries an f32 backend (the encoder's matrix products run on it) */
  if (!e) e = mp_backend_create(MP_PRECISION_F32, threads, &backend);
  if (!e) mp_pool_set_backend(pool, backend);
  openblas_set_num_threads(threads);
  double t0 = mp_now();
  if (!e) e = mp_clip_load(w, MP_PREFIX_CLIP, &cfg, &clip);
  double t_load = mp_now() - t0;
  int32_t ids[77];
  for (int i = 0; i < 77; i++) ids[i] = i == 0 ? 49406 : i == 76 ? 49407 : 320 + i * 37;
  float *out = malloc(sizeof(float) * 77 * 768);
  double best = 1e9, total = 0;
  for (int r = 0; !e && r < runs; r++) {
    t0 = mp_now();
    e = mp_clip_encode(clip, pool, ids, 77, 1, out);
    double dt = mp_now() - t0;
    best = dt < best ? dt : best;
    total += dt;
  }
  if (e) {
    fprintf(stderr, "bench_clip_encoder: %s\n", mp_error_message(e));
    return 1;
  }
  printf("clip ViT-L/14, 77 tokens, %d threads: load %.3f s, encode best %.4f s, mean %.4f s over %d runs\n", threads, t_load,
         best, total / runs, runs);
  printf("bench: model=clip-vit-l14 threads=%d load_s=%.3f te_s=%.4f\n", threads, t_load, best);
  free(out);
  mp_clip_free(clip);
  mp_pool_destroy(pool);
  mp_backend_destroy(backend);
  mp_weights_close(w);
  return 0;
}
