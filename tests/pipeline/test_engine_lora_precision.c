/* The engine merges LoRA deltas in the precision the context computes in: at f32 the patched layers of
 * an f16 checkpoint are stored in f32 (W + dW is not rounded to f16 on the fp32 path); at bf16 they keep
 * the checkpoint's dtype, since the backend packs them to bf16 anyway. */
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "pipeline/engine.h"
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
      cmocka_unit_test(test_bf16_precision_keeps_checkpoint_dtype),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
