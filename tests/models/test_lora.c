/* LoRA: name mapping, merge arithmetic for linear / 3x3 conv / LoCon, several LoRAs, PEFT names,
 * unmatched modules reported, shape errors, and the base left untouched. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "models/lora.h"
#include "testutil.h"

static void test_kohya_names(void **state) {
  (void)state;
  static const struct {
    const char *key, *kohya;
  } cases[] = {
      {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
       "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"},
      {"model.diffusion_model.input_blocks.5.1.proj_in.weight", "lora_unet_down_blocks_1_attentions_1_proj_in"},
      {"model.diffusion_model.input_blocks.3.0.op.weight", "lora_unet_down_blocks_0_downsamplers_0_conv"},
      {"model.diffusion_model.input_blocks.4.0.skip_connection.weight", "lora_unet_down_blocks_1_resnets_0_conv_shortcut"},
      {"model.diffusion_model.input_blocks.0.0.weight", "lora_unet_conv_in"},
      {"model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight",
       "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj"},
      {"model.diffusion_model.middle_block.2.emb_layers.1.weight", "lora_unet_mid_block_resnets_1_time_emb_proj"},
      {"model.diffusion_model.output_blocks.2.1.conv.weight", "lora_unet_up_blocks_0_upsamplers_0_conv"},
      {"model.diffusion_model.output_blocks.5.2.conv.weight", "lora_unet_up_blocks_1_upsamplers_0_conv"},
      {"model.diffusion_model.output_blocks.7.1.transformer_blocks.0.attn2.to_out.0.weight",
       "lora_unet_up_blocks_2_attentions_1_transformer_blocks_0_attn2_to_out_0"},
      {"model.diffusion_model.output_blocks.11.0.out_layers.3.weight", "lora_unet_up_blocks_3_resnets_2_conv2"},
      {"model.diffusion_model.time_embed.2.weight", "lora_unet_time_embedding_linear_2"},
      {"cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
       "lora_te_text_model_encoder_layers_0_self_attn_q_proj"},
  };
  char buf[256];
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    assert_true(mp_lora_kohya_name(cases[i].key, 2, buf, sizeof buf));
    assert_string_equal(buf, cases[i].kohya);
  }
  assert_false(mp_lora_kohya_name("first_stage_model.decoder.conv_in.weight", 2, buf, sizeof buf));
  assert_false(mp_lora_kohya_name("model.diffusion_model.out.2.bias", 2, buf, sizeof buf));
}

static void fill(float *x, int n, unsigned seed) {
  for (int i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    x[i] = ((float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f);
  }
}

/* in-memory weights: names and f32 data (copied) */
static mp_weights *make_weights(int n, const char *const *names, const int *ndims, const int64_t (*shapes)[4], float *const *data) {
  mp_weights *w = mp_weights_new("mem");
  for (int i = 0; i < n; i++) {
    int64_t numel = mp_shape_numel(ndims[i], shapes[i]);
    float *copy = mp_alloc(sizeof(float) * (size_t)(numel ? numel : 1));
    memcpy(copy, data[i], sizeof(float) * (size_t)numel);
    assert_ok(mp_weights_add_owned(w, names[i], MP_F32, ndims[i], shapes[i], copy));
  }
  assert_ok(mp_weights_finish(w));
  return w;
}

static const float *get(const mp_weights *w, const char *name) {
  const mp_weight *it = mp_weights_find(w, name);
  if (!it) fail_msg("no %s", name);
  return it->t.data;
}

#define LIN "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
#define CONV "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"
#define CONV2 "model.diffusion_model.output_blocks.0.0.out_layers.3.weight"
#define OTHER "model.diffusion_model.out.2.bias"

static void test_merge_arithmetic_and_restore(void **state) {
  (void)state;
  enum { O = 5, I = 3, R = 2 };
  float lin[O * I], conv[O * I * 9], conv2[O * O * 9], other[4];
  fill(lin, O * I, 1), fill(conv, O * I * 9, 2), fill(conv2, O * O * 9, 3), fill(other, 4, 4);
  const char *bn[] = {LIN, CONV, CONV2, OTHER};
  const int bd[] = {2, 4, 4, 1};
  const int64_t bs[][4] = {{O, I}, {O, I, 3, 3}, {O, O, 3, 3}, {4}};
  float *bdata[] = {lin, conv, conv2, other};
  mp_weights *base = make_weights(4, bn, bd, bs, bdata);

  /* LoRA 1 (kohya): linear TE module with alpha 1, conv 3x3 down + 1x1 up (alpha 4), an unknown module */
  float d1[R * I], u1[O * R], a1 = 1, d2[R * I * 9], u2[O * R], a2 = 4, dx[R * 2], ux[2 * R];
  fill(d1, R * I, 5), fill(u1, O * R, 6), fill(d2, R * I * 9, 7), fill(u2, O * R, 8), fill(dx, 2 * R, 9), fill(ux, 2 * R, 10);
  const char *ln[] = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                      "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
                      "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
                      "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
                      "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
                      "lora_unet_down_blocks_0_resnets_0_conv1.alpha",
                      "lora_unet_down_blocks_9_nothing.lora_down.weight",
                      "lora_unet_down_blocks_9_nothing.lora_up.weight"};
  const int ld[] = {2, 2, 0, 4, 4, 0, 2, 2};
  const int64_t ls[][4] = {{R, I}, {O, R}, {0}, {R, I, 3, 3}, {O, R, 1, 1}, {0}, {R, 2}, {2, R}};
  float *ldata[] = {d1, u1, &a1, d2, u2, &a2, dx, ux};
  mp_weights *l1 = make_weights(8, ln, ld, ls, ldata);

  /* LoRA 2 (PEFT names, no alpha -> scale 1): the same linear again, and LoCon on CONV2 in CompVis naming */
  float d3[R * I], u3[O * R], dm[R * O], mm[R * R * 9], um[O * R];
  fill(d3, R * I, 11), fill(u3, O * R, 12), fill(dm, R * O, 13), fill(mm, R * R * 9, 14), fill(um, O * R, 15);
  const char *pn[] = {"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight",
                      "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_B.weight",
                      "lora_unet_output_blocks_0_0_out_layers_3.lora_down.weight",
                      "lora_unet_output_blocks_0_0_out_layers_3.lora_mid.weight",
                      "lora_unet_output_blocks_0_0_out_layers_3.lora_up.weight"};
  const int pd[] = {2, 2, 4, 4, 4};
  const int64_t psh[][4] = {{R, I}, {O, R}, {R, O, 1, 1}, {R, R, 3, 3}, {O, R, 1, 1}};
  float *pdata[] = {d3, u3, dm, mm, um};
  mp_weights *l2 = make_weights(5, pn, pd, psh, pdata);

  mp_sd_config cfg = {0};
  cfg.unet.num_res_blocks = 2;
  mp_lora_spec specs[] = {{l1, "one", 0.8f, 0.6f}, {l2, "two", 0.5f, 2.0f}};
  mp_weights *ov;
  mp_lora_report rep;
  assert_ok(mp_lora_apply(base, &cfg, specs, 2, &ov, &rep));
  assert_int_equal(rep.n_unmatched, 1);
  assert_non_null(strstr(rep.unmatched[0], "one: lora_unet_down_blocks_9_nothing"));
  assert_int_equal(rep.n_modules, 4);
  assert_int_equal(rep.n_patched_tensors, 3);
  mp_lora_report_free(&rep);

  /* expected, by the merge rule */
  float el[O * I], ec[O * I * 9], ec2[O * O * 9];
  for (int o = 0; o < O; o++)
    for (int i = 0; i < I; i++) {
      double s1 = 0, s3 = 0;
      for (int r = 0; r < R; r++) s1 += u1[o * R + r] * d1[r * I + i], s3 += u3[o * R + r] * d3[r * I + i];
      el[o * I + i] = (float)(lin[o * I + i] + 0.6 * a1 / R * s1 + 2.0 * s3);
    }
  for (int o = 0; o < O; o++)
    for (int k = 0; k < I * 9; k++) {
      double s = 0;
      for (int r = 0; r < R; r++) s += u2[o * R + r] * d2[r * I * 9 + k];
      ec[o * I * 9 + k] = (float)(conv[o * I * 9 + k] + 0.8 * a2 / R * s);
    }
  for (int o = 0; o < O; o++)
    for (int i = 0; i < O; i++)
      for (int p = 0; p < 9; p++) {
        double s = 0;
        for (int a = 0; a < R; a++)
          for (int b = 0; b < R; b++) s += um[o * R + a] * mm[(a * R + b) * 9 + p] * dm[b * O + i];
        ec2[(o * O + i) * 9 + p] = (float)(conv2[(o * O + i) * 9 + p] + 0.5 * s);
      }
  const float *gl = get(ov, LIN), *gc = get(ov, CONV), *gc2 = get(ov, CONV2);
  for (int i = 0; i < O * I; i++) assert_true(fabsf(gl[i] - el[i]) < 1e-6f);
  for (int i = 0; i < O * I * 9; i++) assert_true(fabsf(gc[i] - ec[i]) < 1e-6f);
  for (int i = 0; i < O * O * 9; i++) assert_true(fabsf(gc2[i] - ec2[i]) < 1e-6f);
  assert_ptr_equal(get(ov, OTHER), get(base, OTHER)); /* untouched keys are views of the base */

  /* merged on a pool into the caller's arena: the same bits; a second application reuses the arena */
  mp_pool *pool;
  assert_ok(mp_pool_create(2, &pool));
  mp_page_arena arena = {0};
  mp_lora_options opt = {.pool = pool, .arena = &arena};
  for (int round = 0; round < 2; round++) {
    mp_weights *par;
    assert_ok(mp_lora_apply_opts(base, &cfg, specs, 2, &opt, &par, NULL));
    assert_memory_equal(get(par, LIN), gl, sizeof el);
    assert_memory_equal(get(par, CONV), gc, sizeof ec);
    assert_memory_equal(get(par, CONV2), gc2, sizeof ec2);
    assert_true((const void *)get(par, LIN) >= arena.p && (const void *)get(par, LIN) < (const void *)((char *)arena.p + arena.cap));
    mp_weights_close(par);
  }
  mp_page_arena_free(&arena);
  mp_pool_destroy(pool);
  mp_weights_close(ov);
  /* the base is bit-identical: dropping the overlay is the exact restore */
  assert_memory_equal(get(base, LIN), lin, sizeof lin);
  assert_memory_equal(get(base, CONV), conv, sizeof conv);
  assert_memory_equal(get(base, CONV2), conv2, sizeof conv2);

  /* a LoRA whose shapes do not fit its target is an error naming both */
  const char *bad[] = {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"};
  const int bdd[] = {2, 2};
  const int64_t bss[][4] = {{R, 7}, {O, R}};
  float d7[R * 7] = {0};
  float *bdat[] = {d7, u1};
  mp_weights *l3 = make_weights(2, bad, bdd, bss, bdat);
  mp_lora_spec bs3 = {l3, "bad", 1, 1};
  assert_err_contains(mp_lora_apply(base, &cfg, &bs3, 1, &ov, NULL), "does not fit " CONV " [5,3,3,3]");
  mp_weights_close(l3);
  mp_weights_close(l1), mp_weights_close(l2), mp_weights_close(base);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_kohya_names), cmocka_unit_test(test_merge_arithmetic_and_restore)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
