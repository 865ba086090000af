/* LoRA switching under the bf16 backend: the base checkpoint's packed weights are kept across switches
 * (pack cache), the patched layers are packed afresh every time — also when a new overlay's patched
 * tensors land at the addresses of the previous overlay's freed ones — so every switch gives exactly
 * what a freshly opened engine with that LoRA gives. */
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "core/pack_cache.h"
#include "pipeline/engine.h"
#include "testutil.h"

enum { LAT = 8, N_CTX = 8 };

typedef struct {
  mpass_ctx *ctx;
  char *ckpt, *dir;
  mp_weights *lora;
  float x[2 * 4 * LAT * LAT], cond[2 * N_CTX * 32];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  f->ckpt = test_shared_path("golden/tiny/tiny.safetensors");
  char *lora = test_shared_path("golden/tiny/lora_tiny.safetensors");
  assert_ok(mp_weights_open(lora, &f->lora));
  free(lora);
  mpass_options o = {.n_threads = 2, .models_dir = f->dir, .precision = MPASS_PRECISION_BF16};
  assert_ok(mpass_ctx_create(&o, &f->ctx));
  for (size_t i = 0; i < sizeof f->x / sizeof *f->x; i++) f->x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  for (size_t i = 0; i < sizeof f->cond / sizeof *f->cond; i++) f->cond[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->ctx);
  mp_weights_close(f->lora);
  free(f->ckpt), free(f->dir), free(f);
  return 0;
}

static void eval(fixture *f, mp_engine *e, float *eps) {
  const float ts[2] = {500.0f, 500.0f};
  assert_ok(mp_unet_forward(e->unet, f->ctx->pool, 2, LAT, LAT, f->x, ts, f->cond, N_CTX, eps));
}

/* mult < 0: the base alone */
static void set(fixture *f, mp_engine *e, float mult) {
  mp_lora_spec spec = {f->lora, "lora_tiny", mult, mult};
  assert_ok(mp_engine_set_loras(e, &spec, mult < 0 ? 0 : 1, NULL, NULL));
}

static void fresh(fixture *f, float mult, float *eps) {
  mp_engine *e;
  assert_ok(mp_engine_open(f->ctx, f->ckpt, NULL, &e));
  if (mult >= 0) set(f, e, mult);
  eval(f, e, eps);
  mp_engine_close(e);
}

static void test_switching_equals_fresh_engines(void **state) {
  if (!*mp_cpu_bf16_support()) {
    /* not a golden comparison; the pack cache serves the bf16 backend, which needs native bf16 */
    print_message("no native bf16 on this CPU\n");
    skip();
  }
  setup(state);
  fixture *f = *state;
  enum { N = 2 * 4 * LAT * LAT };
  float base[N], a[N], b[N], again[N], ref[N];
  mp_pack_cache *pc = mp_backend_pack_cache(f->ctx->backend);
  assert_non_null(pc);
  mp_engine *e;
  assert_ok(mp_engine_open(f->ctx, f->ckpt, NULL, &e));
  eval(f, e, base);
  const size_t n_base = mp_pack_cache_count(pc);
  assert_true(n_base > 20); /* the UNet's convolutions and linear layers, packed once for the engine */

  set(f, e, 1.0f);
  eval(f, e, a);
  set(f, e, 0.5f); /* same shapes: its patched tensors may reuse the freed addresses of the 1.0 overlay */
  eval(f, e, b);
  assert_int_equal(mp_pack_cache_count(pc), n_base); /* patched layers were packed privately */
  assert_memory_not_equal(a, b, sizeof a);
  set(f, e, -1);
  eval(f, e, again);
  assert_memory_equal(again, base, sizeof base);
  set(f, e, 0.5f);
  eval(f, e, again);
  assert_memory_equal(again, b, sizeof b);
  /* trimming the scratch between passes (the engine does it before its VAE decode) changes nothing */
  mp_unet_trim(e->unet);
  mp_backend_trim(f->ctx->backend);
  eval(f, e, again);
  assert_memory_equal(again, b, sizeof b);
  mp_engine_close(e);
  assert_int_equal(mp_pack_cache_count(pc), 0); /* closing the engine released its packs */

  fresh(f, 1.0f, ref);
  assert_memory_equal(a, ref, sizeof ref);
  fresh(f, 0.5f, ref);
  assert_memory_equal(b, ref, sizeof ref);
  fresh(f, -1, ref);
  assert_memory_equal(base, ref, sizeof ref);
  teardown(state);
}

/* A LoRA that fails to apply (here a lora_up one row too tall for its layer) leaves the engine on
 * the base checkpoint, not on the overlay it closed first: the next evaluation gives the base's
 * result (and under ASan reads no freed memory), as does going back to the base explicitly. */
static void test_failed_switch_falls_back_to_base(void **state) {
  (void)state;
  mpass_ctx *ctx;
  char *dir = test_tmpdir(), *ckpt = test_shared_path("golden/tiny/tiny.safetensors"), *lpath = test_shared_path("golden/tiny/lora_tiny.safetensors");
  mpass_options o = {.n_threads = 2, .models_dir = dir, .precision = MPASS_PRECISION_F32};
  assert_ok(mpass_ctx_create(&o, &ctx));
  mp_weights *good;
  assert_ok(mp_weights_open(lpath, &good));
  mp_weights *bad = mp_weights_new("bad_lora.safetensors");
  assert_non_null(bad);
  float *tall = NULL;
  for (size_t i = 0; i < mp_weights_count(good); i++) { /* the good LoRA, its first lora_up one row taller */
    const mp_weight *w = mp_weights_at(good, i);
    if (!tall && w->t.ndim == 2 && strstr(w->name, "lora_up.weight")) {
      const int64_t shape[2] = {w->t.shape[0] + 1, w->t.shape[1]};
      tall = calloc((size_t)(shape[0] * shape[1]), sizeof *tall);
      assert_ok(mp_weights_add(bad, w->name, MP_F32, 2, shape, tall));
    } else {
      assert_ok(mp_weights_add(bad, w->name, w->t.dtype, w->t.ndim, w->t.shape, w->t.data));
    }
  }
  assert_non_null(tall);
  assert_ok(mp_weights_finish(bad));

  fixture f = {.ctx = ctx, .lora = good};
  for (size_t i = 0; i < sizeof f.x / sizeof *f.x; i++) f.x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  for (size_t i = 0; i < sizeof f.cond / sizeof *f.cond; i++) f.cond[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
  enum { N = 2 * 4 * LAT * LAT };
  float base[N], after[N];
  mp_engine *e;
  assert_ok(mp_engine_open(ctx, ckpt, NULL, &e));
  eval(&f, e, base);
  set(&f, e, 1.0f);
  mp_lora_spec spec = {bad, "bad_lora", 1.0f, 1.0f};
  mp_error *err = mp_engine_set_loras(e, &spec, 1, NULL, NULL);
  assert_non_null(err);
  assert_non_null(strstr(mp_error_message(err), "does not fit"));
  mp_error_free(err);
  eval(&f, e, after);
  assert_memory_equal(after, base, sizeof base);
  set(&f, e, -1);
  eval(&f, e, after);
  assert_memory_equal(after, base, sizeof base);
  mp_engine_close(e);
  mp_weights_close(bad);
  mp_weights_close(good);
  free(tall);
  mpass_ctx_destroy(ctx);
  free(dir), free(ckpt), free(lpath);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_switching_equals_fresh_engines),
      cmocka_unit_test(test_failed_switch_falls_back_to_base),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
