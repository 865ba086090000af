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
#include "models/embedding.h"
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

/* The encoders run by hand on the ids of "a <slot> <slot> cat", each placeholder row of the token
 * embeddings overwritten with `v1` / `v2` (NULL: left as the id-0 embedding). */
static void by_hand(fixture *f, const float *v1, const float *v2, float *ctx, float *pooled) {
  const int D1 = f->cfg.clip.hidden, D2 = f->cfg.clip2.hidden, D = D1 + D2;
  int32_t *a, *cat, ids[T], ids2[T];
  size_t na, ncat;
  assert_ok(mp_tokenize(f->tok, "a", &a, &na));
  assert_ok(mp_tokenize(f->tok, "cat", &cat, &ncat));
  assert_int_equal(na, 1);
  assert_int_equal(ncat, 1);
  ids[0] = 49406, ids[1] = a[0], ids[2] = 0, ids[3] = 0, ids[4] = cat[0];
  for (int i = 5; i < T; i++) ids[i] = 49407; /* tokenizer 1 pads with EOS */
  memcpy(ids2, ids, sizeof ids);
  for (int i = 6; i < T; i++) ids2[i] = 0; /* tokenizer 2 with 0 after the EOS */
  free(a), free(cat);
  float *emb = mp_alloc(sizeof(float) * T * (size_t)(D1 > D2 ? D1 : D2));
  float *z1 = mp_alloc(sizeof(float) * T * (size_t)D1), *z2 = mp_alloc(sizeof(float) * T * (size_t)D2);
  assert_ok(mp_clip_embed_tokens(f->clip, ids, T, emb));
  if (v1) memcpy(emb + 2 * D1, v1, sizeof(float) * 2 * (size_t)D1);
  assert_ok(mp_clip_encode_embeds(f->clip, NULL, emb, T, f->cfg.clip.layers - 1, false, z1));
  assert_ok(mp_openclip_embed_tokens(f->clip2, ids2, T, emb));
  if (v2) memcpy(emb + 2 * D2, v2, sizeof(float) * 2 * (size_t)D2);
  assert_ok(mp_openclip_encode_embeds(f->clip2, NULL, emb, T, 5, z2, NULL, pooled));
  for (int t = 0; t < T; t++) {
    memcpy(ctx + (size_t)t * D, z1 + (size_t)t * D1, sizeof(float) * (size_t)D1);
    memcpy(ctx + (size_t)t * D + D1, z2 + (size_t)t * D2, sizeof(float) * (size_t)D2);
  }
  mp_free(emb), mp_free(z1), mp_free(z2);
}

/* An SDXL embedding file (clip_l + clip_g, two vectors of the tiny widths) puts clip_l into the first
 * encoder's token embeddings and clip_g into the second's, exactly where the name stood; an SD 1.x
 * embedding on SDXL is a family error naming both widths. */
static void test_sdxl_textual_inversion(void **state) {
  fixture *f = *state;
  const int D1 = f->cfg.clip.hidden, D2 = f->cfg.clip2.hidden, D = D1 + D2, P = f->cfg.clip2.projection_dim;
  float *l = malloc(sizeof(float) * 2 * (size_t)D1), *g = malloc(sizeof(float) * 2 * (size_t)D2);
  uint32_t seed = 12345;
  for (int i = 0; i < 2 * D1; i++) l[i] = (float)((seed = seed * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  for (int i = 0; i < 2 * D2; i++) g[i] = (float)((seed = seed * 1664525u + 1013904223u) >> 8) / 16777216.0f - 0.5f;
  char *dir = test_tmpdir(), path[4096];
  snprintf(path, sizeof path, "%s/mpassxl.safetensors", dir);
  mp_tensor ts[2];
  mp_tensor_view(&ts[0], MP_F32, 2, (int64_t[]){2, D1}, l);
  mp_tensor_view(&ts[1], MP_F32, 2, (int64_t[]){2, D2}, g);
  const char *names[2] = {"clip_l", "clip_g"};
  assert_ok(mp_safetensors_write(path, 2, names, ts, NULL));
  mp_ti_set set = {0};
  assert_ok(mp_embedding_load_file(path, "mpassxl", D1, &set));

  float *want = mp_alloc(sizeof(float) * T * (size_t)D), *want_pooled = mp_alloc(sizeof(float) * (size_t)P);
  float *plain = mp_alloc(sizeof(float) * T * (size_t)D), *plain_pooled = mp_alloc(sizeof(float) * (size_t)P);
  by_hand(f, l, g, want, want_pooled);
  by_hand(f, NULL, NULL, plain, plain_pooled);
  assert_true(max_diff(want, plain, (size_t)T * D) > 1e-3); /* the vectors matter */
  for (int lpw = 0; lpw < 2; lpw++) {
    mp_cond_options o = mp_cond_options_default();
    o.use_lpw = lpw;
    mp_xl_conditioning c;
    assert_ok(mp_xl_conditioning_encode(f->clip, f->clip2, NULL, f->tok, "a mpassxl cat", "", &set, &o, &c));
    assert_null(c.warning);
    assert_int_equal(c.n_chunks, 1);
    assert_true(max_diff(c.cond.data, want, (size_t)T * D) == 0);
    assert_true(max_diff(c.pooled_cond.data, want_pooled, (size_t)P) == 0);
    mp_xl_conditioning_free(&c);
  }
  mp_ti_set_free(&set);

  /* an SD 1.x embedding (one set, the first encoder's width) on SDXL */
  assert_ok(mp_ti_set_add(&set, "mpass15", l, 2, D1));
  mp_xl_conditioning c;
  char want_msg[200];
  snprintf(want_msg, sizeof want_msg, "'mpass15' is an SD 1.x embedding (one vector set, %d wide); this SDXL model needs clip_l (%d) and clip_g (%d)",
           D1, D1, D2);
  assert_err_contains(mp_xl_conditioning_encode(f->clip, f->clip2, NULL, f->tok, "a mpass15 cat", "", &set, NULL, &c), want_msg);
  /* ... but only where a text uses it: a mixed job's set also holds its SD 1.x persons' embeddings */
  assert_ok(mp_xl_conditioning_encode(f->clip, f->clip2, NULL, f->tok, "a cat", "", &set, NULL, &c));
  mp_xl_conditioning_free(&c);
  mp_ti_set_free(&set);
  mp_free(want), mp_free(want_pooled), mp_free(plain), mp_free(plain_pooled);
  free(l), free(g), free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_plain_prompt_and_zero_negative),
                                     cmocka_unit_test(test_long_prompt_weights_and_label),
                                     cmocka_unit_test(test_sdxl_textual_inversion)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
