/* The engine keeps the last pass's text conditioning for the next pass with the same texts (the tiles
 * of an upscale, the scenes of num_images): that pass runs the text encoder no more and gives the same
 * bits as a freshly opened engine; other texts, options, embeddings or LoRAs encode anew. On the tiny
 * golden models (SD 1.x and SDXL), which must be there. */
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "pipeline/engine.h"
#include "testutil.h"

typedef struct {
  mpass_ctx *ctx;
  mp_tokenizer *tok;
  char *dir;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  char *vocab = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  assert_ok(mp_tokenizer_load(vocab, &f->tok));
  free(vocab);
  mpass_options o = {.n_threads = 2, .models_dir = f->dir, .precision = MPASS_PRECISION_F32};
  assert_ok(mpass_ctx_create(&o, &f->ctx));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->ctx);
  mp_tokenizer_free(f->tok);
  test_remove_tree(f->dir);
  free(f->dir), free(f);
  return 0;
}

static mp_pass_params pass(uint64_t seed) {
  mp_pass_params p = {.prompt = "a red house by the sea, (golden hour:1.2)", .negative = "blurry, low quality",
                      .use_lpw = true, .clip_skip = 1, .steps = 2, .cfg_scale = 7.0, .seed = seed, .rng = MP_RNG_CPU,
                      .width = 64, .height = 64};
  assert_ok(mp_sampler_parse("euler", &p.sampler));
  return p;
}

static void run(mp_engine *e, const mp_pass_params *p, mp_image *out) {
  char *warning = NULL;
  assert_ok(mp_engine_run_pass(e, p, NULL, out, &warning));
  free(warning);
}

static void assert_same_image(const mp_image *a, const mp_image *b) {
  assert_int_equal(a->width, b->width);
  assert_int_equal(a->height, b->height);
  assert_memory_equal(a->pixels, b->pixels, (size_t)a->width * a->height * 3);
}

/* A pass of seed 2 after one of seed 1 with the same texts, on one engine, against seed 2 on a fresh one. */
static void check_reuse_equals_fresh(fixture *f, const char *ckpt_rel) {
  char *ckpt = test_shared_path(ckpt_rel);
  mp_engine *e, *fresh;
  assert_ok(mp_engine_open(f->ctx, ckpt, f->tok, &e));
  mp_image first = {0}, second = {0}, ref = {0};
  mp_pass_params p1 = pass(1), p2 = pass(2);
  run(e, &p1, &first);
  assert_int_equal(e->text_encodes, 1);
  run(e, &p2, &second);
  assert_int_equal(e->text_encodes, 1); /* the texts were encoded once for both passes */
  assert_memory_not_equal(first.pixels, second.pixels, (size_t)64 * 64 * 3); /* the seeds still differ */
  assert_ok(mp_engine_open(f->ctx, ckpt, f->tok, &fresh));
  run(fresh, &p2, &ref);
  assert_int_equal(fresh->text_encodes, 1);
  assert_same_image(&second, &ref);
  mp_engine_close(fresh);
  mp_engine_close(e);
  mp_image_free(&first), mp_image_free(&second), mp_image_free(&ref);
  free(ckpt);
}

static void test_same_texts_encode_once_sd(void **state) { check_reuse_equals_fresh(*state, "golden/tiny/tiny.safetensors"); }

static void test_same_texts_encode_once_xl(void **state) { check_reuse_equals_fresh(*state, "golden/tiny-xl/tinyxl.safetensors"); }

/* Whatever the encoding depends on makes the next pass encode again; only the last encoding is kept. */
static void test_what_encodes_again(void **state) {
  fixture *f = *state;
  char *ckpt = test_shared_path("golden/tiny/tiny.safetensors");
  mp_engine *e;
  assert_ok(mp_engine_open(f->ctx, ckpt, f->tok, &e));
  mp_image img = {0}, base = {0}, ref = {0};
  mp_pass_params p = pass(3);
  run(e, &p, &base);
  int n = e->text_encodes;
  assert_int_equal(n, 1);

  mp_pass_params q = p;
  q.negative = "blurry, low quality, watermark";
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, ++n);
  q = p, q.prompt = "a red house by the lake, (golden hour:1.2)";
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, ++n);
  q = p, q.clip_skip = 2;
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, ++n);
  q = p, q.use_lpw = false;
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, ++n);
  mp_ti_set ti = {0}; /* another embeddings set (here an empty one) */
  q = p, q.embeddings = &ti;
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, ++n);
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, n); /* the same set again */
  float *vec = calloc((size_t)e->cfg.clip.hidden, sizeof *vec);
  vec[0] = 0.5f;
  assert_ok(mp_ti_set_add(&ti, "shiny", vec, 1, e->cfg.clip.hidden)); /* the set grew */
  free(vec);
  run(e, &q, &img), mp_image_free(&img);
  assert_int_equal(e->text_encodes, ++n);
  mp_ti_set_free(&ti);
  /* p's texts were replaced meanwhile: encoded again, with the same result as the first time */
  run(e, &p, &img);
  assert_int_equal(e->text_encodes, ++n);
  assert_same_image(&img, &base);
  mp_image_free(&img);

  /* a LoRA patches the text encoder too: binding one (or dropping it) forgets the encoding */
  char *lora_path = test_shared_path("golden/tiny/lora_tiny.safetensors");
  mp_weights *lora;
  assert_ok(mp_weights_open(lora_path, &lora));
  mp_lora_spec spec = {lora, "lora_tiny", 1.0f, 1.0f};
  assert_ok(mp_engine_set_loras(e, &spec, 1, NULL, NULL));
  assert_null(e->text);
  run(e, &p, &img);
  assert_int_equal(e->text_encodes, ++n);
  mp_engine *fresh;
  assert_ok(mp_engine_open(f->ctx, ckpt, f->tok, &fresh));
  assert_ok(mp_engine_set_loras(fresh, &spec, 1, NULL, NULL));
  run(fresh, &p, &ref);
  assert_same_image(&img, &ref);
  mp_image_free(&img), mp_image_free(&ref);
  mp_engine_close(fresh);
  assert_ok(mp_engine_set_loras(e, NULL, 0, NULL, NULL));
  run(e, &p, &img);
  assert_int_equal(e->text_encodes, ++n);
  assert_same_image(&img, &base);
  assert_ok(mp_engine_set_loras(e, NULL, 0, NULL, NULL)); /* already the base: nothing rebound, nothing forgotten */
  run(e, &p, &ref);
  assert_int_equal(e->text_encodes, n);
  assert_same_image(&ref, &base);

  mp_image_free(&img), mp_image_free(&base), mp_image_free(&ref);
  mp_weights_close(lora);
  mp_engine_close(e);
  free(ckpt), free(lora_path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_same_texts_encode_once_sd, setup, teardown),
      cmocka_unit_test_setup_teardown(test_same_texts_encode_once_xl, setup, teardown),
      cmocka_unit_test_setup_teardown(test_what_encodes_again, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
