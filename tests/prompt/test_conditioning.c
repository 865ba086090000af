/* Weighted conditioning on the tiny model (CLIP hidden 32, 2 layers, random weights) with the real
 * CLIP vocabulary: plain prompts equal the plain encoding, a weight changes only its chunk and keeps
 * its mean, long prompts make several chunks, negative padding, textual inversion, use_lpw=false. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/sd.h"
#include "prompt/conditioning.h"
#include "prompt/weighting.h"
#include "testutil.h"
#include "tiny_text.h"

typedef struct {
  tiny_text text;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  mp_error *e = tiny_text_load(&f->text);
  if (e) {
    fprintf(stderr, "setup: %s\n", mp_error_message(e));
    mp_error_free(e);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  tiny_text_free(&f->text);
  free(f);
  return 0;
}

static char *repeat(const char *word, int n) {
  char *s = malloc((strlen(word) + 1) * (size_t)n + 1);
  s[0] = 0;
  for (int i = 0; i < n; i++) strcat(strcat(s, i ? " " : ""), word);
  return s;
}

/* The plain SD encoding of a text: padded/truncated ids through mp_clip_encode. */
static float *plain(fixture *f, const char *text, int clip_skip) {
  int32_t ids[MP_CLIP_MAX_LENGTH];
  assert_ok(mp_tokenize_padded(f->text.tok, text, ids, NULL));
  float *z = mp_alloc(sizeof(float) * MP_CLIP_MAX_LENGTH * (size_t)f->text.D);
  assert_ok(mp_clip_encode(f->text.clip, NULL, ids, MP_CLIP_MAX_LENGTH, clip_skip, z));
  return z;
}

static double mean(const float *z, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += z[i];
  return s / (double)n;
}

/* (a) no brackets: exactly the plain encoding, for both clip skips and both modes */
static void test_plain_prompt_is_plain_encoding(void **state) {
  fixture *f = *state;
  const size_t T = MP_CLIP_MAX_LENGTH, D = (size_t)f->text.D;
  for (int skip = 1; skip <= 2; skip++)
    for (int lpw = 0; lpw <= 1; lpw++) {
      mp_cond_options o = mp_cond_options_default();
      o.clip_skip = skip;
      o.use_lpw = lpw;
      mp_conditioning c;
      assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "a photo of an astronaut, riding a horse", "blurry", NULL, &o, &c));
      assert_int_equal(c.n_chunks, 1);
      assert_int_equal(c.cond.ndim, 3);
      assert_int_equal(c.cond.shape[0], 1);
      assert_int_equal(c.cond.shape[1], (int64_t)T);
      assert_int_equal(c.cond.shape[2], (int64_t)D);
      assert_null(c.warning);
      float *zc = plain(f, "a photo of an astronaut, riding a horse", skip), *zu = plain(f, "blurry", skip);
      assert_memory_equal(c.cond.data, zc, T * D * sizeof(float));
      assert_memory_equal(c.uncond.data, zu, T * D * sizeof(float));
      mp_free(zc);
      mp_free(zu);
      mp_conditioning_free(&c);
    }
}

/* (b) a weight changes only the chunk holding it, keeps that chunk's mean, and scales its token */
static void test_weight_changes_only_its_chunk(void **state) {
  fixture *f = *state;
  const size_t T = MP_CLIP_MAX_LENGTH, D = (size_t)f->text.D;
  char *cats = repeat("cat", 100), a[1024], b[1024];
  snprintf(a, sizeof a, "%s dog", cats);
  snprintf(b, sizeof b, "%s (dog:1.5)", cats);
  mp_cond_options o = mp_cond_options_default();
  float *za, *zb;
  int ka, kb;
  size_t ta, tb;
  assert_ok(mp_conditioning_encode_one(f->text.clip, NULL, f->text.tok, a, NULL, &o, &za, &ka, &ta, NULL));
  assert_ok(mp_conditioning_encode_one(f->text.clip, NULL, f->text.tok, b, NULL, &o, &zb, &kb, &tb, NULL));
  assert_int_equal(ka, 2);
  assert_int_equal(kb, 2);
  assert_int_equal(ta, 75 + 26);
  assert_memory_equal(za, zb, T * D * sizeof(float)); /* chunk 0 untouched */
  const float *c1a = za + T * D, *c1b = zb + T * D;
  assert_true(memcmp(c1a, c1b, T * D * sizeof(float)) != 0);
  double ma = mean(c1a, T * D), mb = mean(c1b, T * D);
  if (fabs(ma - mb) > 1e-6 * fmax(1.0, fabs(ma))) fail_msg("chunk mean %.9g, weighted %.9g", ma, mb);
  /* dog is token 26 of chunk 1 (BOS + 25 cats): z' = z * 1.5 * s, every other token z * s */
  double s = 0;
  for (size_t d = 0; d < D; d++) s += (double)c1b[d] / c1a[d];
  s /= (double)D;
  for (size_t t = 0; t < T; t++)
    for (size_t d = 0; d < D; d++) {
      double want = (double)c1a[t * D + d] * s * (t == 26 ? 1.5 : 1.0);
      if (fabs(c1b[t * D + d] - want) > 1e-5 * fmax(1.0, fabs(want))) fail_msg("token %zu dim %zu: %g, expected %g", t, d, c1b[t * D + d], want);
    }
  mp_free(za);
  mp_free(zb);
  free(cats);
}

/* (c) 200 tokens -> 3 chunks; the negative is padded with the empty prompt's encoding */
static void test_long_prompt_and_negative_padding(void **state) {
  fixture *f = *state;
  const size_t T = MP_CLIP_MAX_LENGTH, D = (size_t)f->text.D;
  char *text = repeat("cat", 200);
  mp_cond_options o = mp_cond_options_default();
  mp_conditioning c;
  assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, text, "ugly", NULL, &o, &c));
  assert_int_equal(c.n_chunks, 3);
  assert_int_equal(c.cond.shape[1], 3 * (int64_t)T);
  assert_int_equal(c.uncond.shape[1], 3 * (int64_t)T);
  assert_int_equal(c.prompt_tokens, 200);
  assert_int_equal(c.negative_tokens, 1);
  float *ugly = plain(f, "ugly", 1), *empty = plain(f, "", 1);
  const float *u = c.uncond.data;
  assert_memory_equal(u, ugly, T * D * sizeof(float));
  assert_memory_equal(u + T * D, empty, T * D * sizeof(float));
  assert_memory_equal(u + 2 * T * D, empty, T * D * sizeof(float));
  /* each prompt chunk is the plain encoding of its 75 (or 50) cats */
  char *c75 = repeat("cat", 75), *c50 = repeat("cat", 50);
  float *p75 = plain(f, c75, 1), *p50 = plain(f, c50, 1);
  const float *z = c.cond.data;
  assert_memory_equal(z, p75, T * D * sizeof(float));
  assert_memory_equal(z + T * D, p75, T * D * sizeof(float));
  assert_memory_equal(z + 2 * T * D, p50, T * D * sizeof(float));
  mp_conditioning_free(&c);
  /* the other way round: a long negative pads the prompt */
  assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "ugly", text, NULL, &o, &c));
  assert_int_equal(c.n_chunks, 3);
  assert_memory_equal((const float *)c.cond.data + 2 * T * D, empty, T * D * sizeof(float));
  mp_conditioning_free(&c);
  mp_free(ugly);
  mp_free(empty);
  mp_free(p75);
  mp_free(p50);
  free(c75);
  free(c50);
  free(text);
}

/* (d) an embedding inserted by name equals its vectors placed by hand */
static void test_textual_inversion_by_name(void **state) {
  fixture *f = *state;
  const size_t T = MP_CLIP_MAX_LENGTH, D = (size_t)f->text.D;
  float vec[2 * 64];
  for (size_t i = 0; i < 2 * D; i++) vec[i] = (float)sin(0.37 * (double)i) * 0.5f;
  mp_ti_set ti = {0};
  assert_ok(mp_ti_set_add(&ti, "mpasstestembedding", vec, 2, (int)D));
  for (int lpw = 0; lpw <= 1; lpw++) {
    mp_cond_options o = mp_cond_options_default();
    o.use_lpw = lpw;
    mp_conditioning c;
    assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "a mpasstestembedding cat", "", &ti, &o, &c));
    int32_t ids[MP_CLIP_MAX_LENGTH];
    assert_ok(mp_tokenize_padded(f->text.tok, "a x x cat", ids, NULL));
    ids[2] = ids[3] = 0;
    float *emb = mp_alloc(T * D * sizeof(float)), *z = mp_alloc(T * D * sizeof(float));
    assert_ok(mp_clip_embed_tokens(f->text.clip, ids, (int)T, emb));
    memcpy(emb + 2 * D, vec, 2 * D * sizeof(float));
    assert_ok(mp_clip_encode_embeds(f->text.clip, NULL, emb, (int)T, f->text.cfg.clip.layers, true, z));
    assert_memory_equal(c.cond.data, z, T * D * sizeof(float));
    mp_free(emb);
    mp_free(z);
    mp_conditioning_free(&c);
  }
  /* a vector size that does not match the model is refused */
  mp_ti_set bad = {0};
  assert_ok(mp_ti_set_add(&bad, "wrongsize", vec, 1, (int)D + 1));
  mp_conditioning c;
  mp_cond_options o = mp_cond_options_default();
  assert_err_contains(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "wrongsize", "", &bad, &o, &c), "needs 32");
  mp_ti_set_free(&bad);
  mp_ti_set_free(&ti);
}

/* use_lpw=false truncates to 75 tokens with a warning and ignores brackets */
static void test_plain_mode_truncates(void **state) {
  fixture *f = *state;
  const size_t T = MP_CLIP_MAX_LENGTH, D = (size_t)f->text.D;
  char *text = repeat("(cat)", 100);
  mp_cond_options o = mp_cond_options_default();
  o.use_lpw = false;
  mp_conditioning c;
  assert_ok(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, text, "", NULL, &o, &c));
  assert_int_equal(c.n_chunks, 1);
  assert_non_null(c.warning);
  assert_non_null(strstr(c.warning, "truncated"));
  float *z = plain(f, text, 1);
  assert_memory_equal(c.cond.data, z, T * D * sizeof(float));
  mp_free(z);
  mp_conditioning_free(&c);
  /* bad clip skip */
  o.clip_skip = 3;
  assert_err_contains(mp_conditioning_encode(f->text.clip, NULL, f->text.tok, "x", "", NULL, &o, &c), "clip skip 3");
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_plain_prompt_is_plain_encoding),
      cmocka_unit_test(test_weight_changes_only_its_chunk),
      cmocka_unit_test(test_long_prompt_and_negative_padding),
      cmocka_unit_test(test_textual_inversion_by_name),
      cmocka_unit_test(test_plain_mode_truncates),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
