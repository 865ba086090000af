/* SDXL conditioning on the tiny-xl golden model (random weights) with the real CLIP vocabulary:
 * a plain prompt equals the two encoders run by hand; the empty negative is zeros (context and
 * pooled); a long prompt makes two chunks whose pooled vector is the first chunk's; a weight changes
 * the context but not the pooled vector; the label vector is pooled + the six size embeddings. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/openclip.h"
#include "models/sd.h"
#include "prompt/conditioning_xl.h"
#include "testutil.h"

typedef struct {
  mp_weights *w;
  mp_sd_config cfg;
  mp_clip *clip;
  mp_openclip *clip2;
  mp_tokenizer *tok;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char *ck = test_shared_path("golden/tiny-xl/tinyxl.safetensors"), *vocab = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  mp_error *e = mp_weights_open(ck, &f->w);
  if (!e) e = mp_sd_config_detect(f->w, NULL, &f->cfg);
  if (!e) e = mp_clip_load(f->w, MP_PREFIX_XL_CLIP, &f->cfg.clip, &f->clip);
  if (!e) e = mp_openclip_load(f->w, MP_PREFIX_XL_OPENCLIP, &f->cfg.clip2, &f->clip2);
  if (!e) e = mp_tokenizer_load(vocab, &f->tok);
  free(ck), free(vocab);
  if (e) {
    fprintf(stderr, "setup (the golden tiny-xl model is needed): %s\n", mp_error_message(e));
    mp_error_free(e);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_clip_free(f->clip);
  mp_openclip_free(f->clip2);
  mp_tokenizer_free(f->tok);
  mp_weights_close(f->w);
  free(f);
  return 0;
}

enum { T = MP_CLIP_MAX_LENGTH };

static void encode(fixture *f, const char *prompt, const char *negative, bool lpw, mp_xl_conditioning *out) {
  mp_cond_options o = mp_cond_options_default();
  o.use_lpw = lpw;
  assert_ok(mp_xl_conditioning_encode(f->clip, f->clip2, NULL, f->tok, prompt, negative, NULL, &o, out));
}

static double max_diff(const float *a, const float *b, size_t n) {
  double m = 0;
  for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
  return m;
}

static void test_plain_prompt_and_zero_negative(void **state) {
  fixture *f = *state;
  const int D = f->cfg.unet.context_dim, P = f->cfg.clip2.projection_dim;
  mp_xl_conditioning c;
  encode(f, "a photo of a cat", "", true, &c);
  assert_int_equal(c.n_chunks, 1);
  assert_int_equal(c.cond.shape[1], T);
  assert_int_equal(c.cond.shape[2], D);
  /* by hand: tokenizer 1 pads with EOS, tokenizer 2 with 0 after the EOS */
  int32_t ids[T], ids2[T];
  assert_ok(mp_tokenize_padded(f->tok, "a photo of a cat", ids, NULL));
  memcpy(ids2, ids, sizeof ids);
  for (int i = mp_openclip_eos_index(ids, T, 49407) + 1; i < T; i++) ids2[i] = 0;
  float *ctx = mp_alloc(sizeof(float) * T * (size_t)D), *pooled = mp_alloc(sizeof(float) * (size_t)P);
  assert_ok(mp_xl_encode_chunk(f->clip, f->clip2, NULL, ids, ids2, 49407, NULL, ctx, pooled));
  assert_true(max_diff(ctx, c.cond.data, (size_t)T * D) == 0);
  assert_true(max_diff(pooled, c.pooled_cond.data, (size_t)P) == 0);
  /* the empty negative: zeros */
  const float *u = c.uncond.data, *pu = c.pooled_uncond.data;
  for (int i = 0; i < T * D; i++) assert_true(u[i] == 0.0f);
  for (int i = 0; i < P; i++) assert_true(pu[i] == 0.0f);
  mp_xl_conditioning_free(&c);
  /* a real negative is encoded */
  encode(f, "a photo of a cat", "blurry", true, &c);
  double s = 0;
  for (int i = 0; i < P; i++) s += fabs(((const float *)c.pooled_uncond.data)[i]);
  assert_true(s > 0);
  mp_xl_conditioning_free(&c);
  mp_free(ctx), mp_free(pooled);
}

static void test_long_prompt_weights_and_label(void **state) {
  fixture *f = *state;
  const int D = f->cfg.unet.context_dim, P = f->cfg.clip2.projection_dim;
  char text[2048] = "";
  for (int i = 0; i < 100; i++) strcat(text, i ? " cat" : "cat");
  mp_xl_conditioning c, first;
  encode(f, text, "", true, &c);
  assert_int_equal(c.n_chunks, 2);
  assert_int_equal(c.uncond.shape[1], 2 * T); /* the zeroed negative padded with the encoding of "" */
  /* the pooled vector is the first chunk's: 75 cats */
  char head[1024] = "";
  for (int i = 0; i < 75; i++) strcat(head, i ? " cat" : "cat");
  encode(f, head, "", true, &first);
  assert_int_equal(first.n_chunks, 1);
  assert_true(max_diff(c.pooled_cond.data, first.pooled_cond.data, (size_t)P) == 0);
  assert_true(max_diff(c.cond.data, first.cond.data, (size_t)T * D) == 0);
  mp_xl_conditioning_free(&c), mp_xl_conditioning_free(&first);

  /* emphasis: the context changes, the pooled vector does not */
  mp_xl_conditioning plain, weighted;
  encode(f, "a red car", "", true, &plain);
  encode(f, "a (red:1.5) car", "", true, &weighted);
  assert_true(max_diff(plain.cond.data, weighted.cond.data, (size_t)T * D) > 1e-4);
  assert_true(max_diff(plain.pooled_cond.data, weighted.pooled_cond.data, (size_t)P) == 0);

  /* y = pooled, then cos/sin embeddings of (orig_h, orig_w, crop_top, crop_left, target_h, target_w) */
  const int E = f->cfg.time_id_dim, Y = f->cfg.unet.adm_in_channels;
  assert_int_equal(Y, P + 6 * E);
  float *y = mp_alloc(sizeof(float) * (size_t)Y);
  const float ids[6] = {1024, 768, 0, 0, 1024, 768};
  mp_xl_label_vector(plain.pooled_cond.data, P, ids, E, y);
  assert_true(max_diff(y, plain.pooled_cond.data, (size_t)P) == 0);
  assert_true(fabs(y[P] - cos(1024.0)) < 1e-4);             /* frequency 1, cos half first */
  assert_true(fabs(y[P + E / 2] - sin(1024.0)) < 1e-4);
  assert_true(y[P + 2 * E] == 1.0f && y[P + 2 * E + E / 2] == 0.0f); /* crop 0: cos 0, sin 0 */
  mp_free(y);
  mp_xl_conditioning_free(&plain), mp_xl_conditioning_free(&weighted);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_plain_prompt_and_zero_negative),
                                     cmocka_unit_test(test_long_prompt_weights_and_label)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
