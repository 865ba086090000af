/* LoRA on SDXL: lora_te2_ q/k/v land in their row block of OpenCLIP's fused in_proj_weight (the
 * other blocks untouched), lora_te1_ on the first encoder, and a LoRA of the other family is an
 * error naming both families. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "models/lora.h"
#include "testutil.h"

#define IN_PROJ "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
#define TE1_FC1 "conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight"

static mp_weights *weights_of(int n, const char *const *names, const int64_t (*shapes)[2], const int *ndims, float *const *data) {
  mp_weights *w = mp_weights_new("mem");
  for (int i = 0; i < n; i++) {
    int64_t numel = mp_shape_numel(ndims[i], shapes[i]);
    float *copy = mp_alloc(sizeof(float) * (size_t)(numel ? numel : 1));
    memcpy(copy, data[i], sizeof(float) * (size_t)(numel ? numel : 1));
    assert_ok(mp_weights_add_owned(w, names[i], MP_F32, ndims[i], shapes[i], copy));
  }
  assert_ok(mp_weights_finish(w));
  return w;
}

static void test_te2_fused_qkv_and_te1(void **state) {
  (void)state;
  enum { D = 4, F = 6, R = 2 };
  float in_proj[3 * D * D], fc1[F * D];
  for (int i = 0; i < 3 * D * D; i++) in_proj[i] = 0.01f * (float)i;
  for (int i = 0; i < F * D; i++) fc1[i] = -0.02f * (float)i;
  const char *bn[] = {IN_PROJ, TE1_FC1};
  const int64_t bs[][2] = {{3 * D, D}, {F, D}};
  const int bd[] = {2, 2};
  float *bdata[] = {in_proj, fc1};
  mp_weights *base = weights_of(2, bn, bs, bd, bdata);

  float down[R * D], up[D * R], alpha = 1.0f, down1[R * D], up1[F * R];
  for (int i = 0; i < R * D; i++) down[i] = 0.1f * (float)(i + 1), down1[i] = 0.05f * (float)(i % 3);
  for (int i = 0; i < D * R; i++) up[i] = 0.2f * (float)(i - 3);
  for (int i = 0; i < F * R; i++) up1[i] = 0.3f * (float)(i % 4);
  const char *ln[] = {"lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight",
                      "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight",
                      "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.alpha",
                      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"};
  const int64_t ls[][2] = {{R, D}, {D, R}, {0, 0}, {R, D}, {F, R}};
  const int ld[] = {2, 2, 0, 2, 2};
  float *ldata[] = {down, up, &alpha, down1, up1};
  mp_weights *lora = weights_of(5, ln, ls, ld, ldata);

  mp_sd_config cfg = {0};
  cfg.family = MP_FAMILY_SDXL;
  cfg.unet.num_res_blocks = 2;
  mp_lora_spec spec = {lora, "xl", 1.0f, 0.5f};
  mp_lora_options opt = {.f32_patches = true};
  mp_weights *ov;
  mp_lora_report rep;
  assert_ok(mp_lora_apply_opts(base, &cfg, &spec, 1, &opt, &ov, &rep));
  assert_int_equal(rep.n_unmatched, 0);
  assert_int_equal(rep.n_modules, 2);
  const float *got = mp_weights_find(ov, IN_PROJ)->t.data;
  for (int r = 0; r < 3 * D; r++)
    for (int c = 0; c < D; c++) {
      double want = in_proj[r * D + c];
      if (r >= D && r < 2 * D) { /* the k block: += te_mult * alpha / rank * up @ down */
        double s = 0;
        for (int k = 0; k < R; k++) s += (double)up[(r - D) * R + k] * down[k * D + c];
        want += 0.5 * 1.0 / R * s;
      }
      assert_true(fabs(got[r * D + c] - want) < 1e-6);
    }
  const float *g1 = mp_weights_find(ov, TE1_FC1)->t.data;
  for (int r = 0; r < F; r++)
    for (int c = 0; c < D; c++) {
      double s = 0;
      for (int k = 0; k < R; k++) s += (double)up1[r * R + k] * down1[k * D + c];
      assert_true(fabs(g1[r * D + c] - (fc1[r * D + c] + 0.5 * s)) < 1e-6); /* no alpha: scale 1 */
    }
  mp_lora_report_free(&rep);
  mp_weights_close(ov);

  /* the same LoRA on an SD 1.x model: a family error, not unmatched modules */
  cfg.family = MP_FAMILY_SD1;
  assert_err_contains(mp_lora_apply(base, &cfg, &spec, 1, &ov, &rep), "is for SDXL");
  mp_weights_close(lora);
  mp_weights_close(base);
}

/* An SD 1.x LoRA (its attn2 to_k reads a 768-wide context) on an SDXL model. */
static void test_sd15_lora_on_sdxl(void **state) {
  (void)state;
  float w[4] = {1, 2, 3, 4}, down[2 * 768], up[8 * 2];
  memset(down, 0, sizeof down), memset(up, 0, sizeof up);
  const char *bn[] = {IN_PROJ};
  const int64_t bs[][2] = {{2, 2}};
  const int bd[] = {2};
  float *bdata[] = {w};
  mp_weights *base = weights_of(1, bn, bs, bd, bdata);
  const char *ln[] = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight",
                      "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight"};
  const int64_t ls[][2] = {{2, 768}, {8, 2}};
  const int ld[] = {2, 2};
  float *ldata[] = {down, up};
  mp_weights *lora = weights_of(2, ln, ls, ld, ldata);
  mp_sd_config cfg = {0};
  cfg.family = MP_FAMILY_SDXL;
  cfg.unet.context_dim = 2048;
  mp_lora_spec spec = {lora, "sd15-style", 1.0f, 1.0f};
  mp_weights *ov = NULL;
  assert_err_contains(mp_lora_apply(base, &cfg, &spec, 1, &ov, NULL), "LoRA sd15-style is for SD 1.x");
  assert_null(ov);
  mp_weights_close(lora);
  mp_weights_close(base);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_te2_fused_qkv_and_te1), cmocka_unit_test(test_sd15_lora_on_sdxl)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
