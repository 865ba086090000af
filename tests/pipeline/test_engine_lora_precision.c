/* The engine merges LoRA deltas in the precision the context computes in: at f32 the patched layers of
 * an f16 checkpoint are stored in f32 (W + dW is not rounded to f16 on the fp32 path); at bf16 they keep
 * the checkpoint's dtype, since the backend packs them to bf16 anyway. At f32 the engine's UNet with
 * the golden LoRA meets the fp32 bound of the golden's lora.unet.a.eps_m1 (golden/README.md: an f16
 * merge is the reduced-precision path). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "pipeline/engine.h"
#include "prompt/conditioning_xl.h"
#include "testutil.h"

/* Counts the overlay entries that are patched (their data is not the base's) and checks their dtype. */
static void check_patched(mpass_precision precision, mp_dtype want_patched) {
  char *dir = test_tmpdir();
  char *ckpt = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  char *lora_path = test_shared_path("golden/tiny-xl/lora_tinyxl.safetensors");
  mp_weights *lora;
  assert_ok(mp_weights_open(lora_path, &lora));
  mpass_options o = {.n_threads = 2, .models_dir = dir, .precision = precision};
  mpass_ctx *ctx;
  assert_ok(mpass_ctx_create(&o, &ctx));
  mp_engine *e;
  assert_ok(mp_engine_open(ctx, ckpt, NULL, &e));
  mp_lora_spec spec = {lora, "lora_tinyxl", 1.0f, 1.0f};
  assert_ok(mp_engine_set_loras(e, &spec, 1, NULL, NULL));
  assert_non_null(e->overlay);
  size_t patched = 0, f16_base = 0;
  for (size_t i = 0; i < mp_weights_count(e->overlay); i++) {
    const mp_weight *ow = mp_weights_at(e->overlay, i);
    const mp_weight *bw = mp_weights_find(e->base, ow->name);
    assert_non_null(bw);
    if (bw->t.dtype == MP_F16) f16_base++;
    if (ow->t.data == bw->t.data) continue;
    patched++;
    assert_int_equal(bw->t.dtype, MP_F16); /* the golden checkpoint is stored in f16 */
    assert_int_equal(ow->t.dtype, want_patched);
  }
  assert_true(f16_base > 0);
  assert_true(patched > 10); /* UNet, TE1 and TE2 layers of the golden LoRA */
  mp_engine_close(e);
  mpass_ctx_destroy(ctx);
  mp_weights_close(lora);
  free(ckpt), free(lora_path), free(dir);
}

static void test_f32_precision_patches_in_f32(void **state) {
  (void)state;
  check_patched(MPASS_PRECISION_F32, MP_F32);
}

static const float *golden(const mp_weights *g, const char *name, int64_t numel) {
  const mp_weight *w = mp_weights_find(g, name);
  assert_non_null(w);
  assert_int_equal(w->t.dtype, MP_F32);
  assert_int_equal(mp_tensor_numel(&w->t), numel);
  return w->t.data;
}

/* The fp32 bound of golden/README.md: rel L2 <= 1e-4 and max abs <= 1e-3 * max(1, max|golden|). */
static void test_f32_engine_lora_meets_fp32_bound(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char *ckpt = test_shared_path("golden/tiny-xl/tinyxl.safetensors");
  char *lora_path = test_shared_path("golden/tiny-xl/lora_tinyxl.safetensors");
  char *golden_path = test_shared_path("golden/tiny-xl/lora.safetensors");
  mp_weights *lora, *g;
  assert_ok(mp_weights_open(lora_path, &lora));
  assert_ok(mp_weights_open(golden_path, &g));
  mpass_options o = {.n_threads = 2, .models_dir = dir, .precision = MPASS_PRECISION_F32};
  mpass_ctx *ctx;
  assert_ok(mpass_ctx_create(&o, &ctx));
  mp_engine *e;
  assert_ok(mp_engine_open(ctx, ckpt, NULL, &e));
  mp_lora_spec spec = {lora, "lora_tinyxl", 1.0f, 1.0f};
  assert_ok(mp_engine_set_loras(e, &spec, 1, NULL, NULL));
  const mp_sd_config *cfg = &e->cfg;
  enum { N = 4 * 8 * 8, N_CTX = 77 };
  const int P = cfg->clip2.projection_dim, Y = cfg->unet.adm_in_channels;
  const float *x = golden(g, "lora.unet.a.x", N), *t = golden(g, "lora.unet.a.t", 1);
  const float *context = golden(g, "lora.unet.a.context", (int64_t)N_CTX * cfg->unet.context_dim);
  const float *pooled = golden(g, "lora.unet.a.text_embeds", P), *time_ids = golden(g, "lora.unet.a.time_ids", 6);
  const float *want = golden(g, "lora.unet.a.eps_m1", N);
  float *y = malloc(sizeof(float) * (size_t)Y), eps[N];
  mp_xl_label_vector(pooled, P, time_ids, cfg->time_id_dim, y);
  mp_unet_inputs in = {.batch = 1, .h = 8, .w = 8, .x = x, .t = t, .context = context, .n_ctx = N_CTX, .y = y};
  assert_ok(mp_unet_run(e->unet, ctx->pool, &in, eps));
  double diff2 = 0, ref2 = 0, max_abs = 0, max_ref = 0;
  for (int i = 0; i < N; i++) {
    double d = (double)eps[i] - want[i];
    diff2 += d * d, ref2 += (double)want[i] * want[i];
    max_abs = fmax(max_abs, fabs(d)), max_ref = fmax(max_ref, fabs((double)want[i]));
  }
  const double rel = sqrt(diff2 / ref2);
  print_message("engine f32 + LoRA m1: lora.unet.a.eps_m1 rel_l2 %.3g max_abs %.3g\n", rel, max_abs);
  assert_true(rel <= 1e-4);
  assert_true(max_abs <= 1e-3 * fmax(1.0, max_ref));
  free(y);
  mp_engine_close(e);
  mpass_ctx_destroy(ctx);
  mp_weights_close(lora), mp_weights_close(g);
  free(ckpt), free(lora_path), free(golden_path), free(dir);
}

static void test_bf16_precision_keeps_checkpoint_dtype(void **state) {
  (void)state;
  if (!*mp_cpu_bf16_support()) {
    print_message("no native bf16 on this CPU\n");
    skip();
  }
  check_patched(MPASS_PRECISION_BF16, MP_F16);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f32_precision_patches_in_f32),
      cmocka_unit_test(test_f32_engine_lora_meets_fp32_bound),
      cmocka_unit_test(test_bf16_precision_keeps_checkpoint_dtype),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
