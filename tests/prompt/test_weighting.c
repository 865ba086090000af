/* A1111 attention parser (the docstring examples of parse_prompt_attention and more) and chunking
 * (tokenize_line): 75-token chunks, comma backtracking, BREAK, textual-inversion placement.
 * Weights are compared exactly against the doubles Python computes (its repr is given). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt/weighting.h"
#include "testutil.h"

typedef struct {
  const char *text;
  double weight;
} want_span;

static void expect_spans(const char *prompt, const want_span *want, size_t n) {
  mp_prompt_spans s;
  assert_ok(mp_parse_prompt_attention(prompt, &s));
  if (s.n != n) {
    for (size_t i = 0; i < s.n; i++) fprintf(stderr, "  [%s, %.17g]\n", s.items[i].text, s.items[i].weight);
    fail_msg("'%s': %zu spans, expected %zu", prompt, s.n, n);
  }
  for (size_t i = 0; i < n; i++) {
    if (strcmp(s.items[i].text, want[i].text) != 0 || s.items[i].weight != want[i].weight)
      fail_msg("'%s' span %zu: [%s, %.17g], expected [%s, %.17g]", prompt, i, s.items[i].text, s.items[i].weight, want[i].text,
               want[i].weight);
  }
  mp_prompt_spans_free(&s);
}

#define EXPECT(prompt, ...)                                       \
  do {                                                            \
    static const want_span w_[] = {__VA_ARGS__};                  \
    expect_spans(prompt, w_, sizeof w_ / sizeof *w_);             \
  } while (0)

static void test_docstring_examples(void **state) {
  (void)state;
  EXPECT("normal text", {"normal text", 1.0});
  EXPECT("an (important) word", {"an ", 1.0}, {"important", 1.1}, {" word", 1.0});
  EXPECT("(unbalanced", {"unbalanced", 1.1});
  EXPECT("\\(literal\\]", {"(literal]", 1.0});
  EXPECT("(unnecessary)(parens)", {"unnecessaryparens", 1.1});
  EXPECT("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", {"a ", 1.0}, {"house", 1.5730000000000004}, {" ", 1.1},
         {"on", 1.0}, {" a ", 1.1}, {"hill", 0.55}, {", sun, ", 1.1}, {"sky", 1.4641000000000006}, {".", 1.1});
}

static void test_nesting_and_weights(void **state) {
  (void)state;
  EXPECT("((a))", {"a", 1.2100000000000002});
  EXPECT("[[a]]", {"a", 0.8264462809917354});
  EXPECT("[a]", {"a", 0.9090909090909091});
  EXPECT("((a:2):3)", {"a", 6.0});
  EXPECT("(a:1.5) b", {"a", 1.5}, {" b", 1.0});
  EXPECT("(a: 1.5 ) b", {"a", 1.5}, {" b", 1.0});     /* spaces around the number */
  EXPECT("(a:-0.5)", {"a", -0.5});
  EXPECT("(a:.5)(b:1.)", {"a", 0.5}, {"b", 1.0});
  EXPECT("(a:1.5", {"a:1.5", 1.1});                   /* no ')': the colon is text */
  EXPECT("a:1.5) b", {"a:1.5) b", 1.0});              /* weight without an open '(' is text */
  EXPECT("a) b] c:", {"a) b] c:", 1.0});              /* stray closers are text */
  EXPECT("[a (b) c", {"a ", 0.9090909090909091}, {"b", 1.0}, {" c", 0.9090909090909091});
  EXPECT("", {"", 1.0});
  EXPECT("()", {"", 1.0});
}

static void test_escapes(void **state) {
  (void)state;
  EXPECT("\\(a\\) \\[b\\]", {"(a) [b]", 1.0});
  EXPECT("a\\\\b", {"a\\b", 1.0});
  EXPECT("a\\b", {"ab", 1.0});                         /* a lone backslash vanishes */
  EXPECT("(\\(x\\))", {"(x)", 1.1});
  EXPECT("smile \\(face\\):1.2", {"smile (face):1.2", 1.0});
}

static void test_break(void **state) {
  (void)state;
  EXPECT("a BREAK b", {"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0});
  EXPECT("a  BREAK\n b", {"a", 1.0}, {"BREAK", -1.0}, {"b", 1.0});
  EXPECT("aBREAK b BREAKING _BREAK", {"aBREAK b BREAKING _BREAK", 1.0}); /* only a whole word */
  EXPECT("BREAK", {"", 1.0}, {"BREAK", -1.0}, {"", 1.0});
  EXPECT("a, BREAK, b", {"a,", 1.0}, {"BREAK", -1.0}, {", b", 1.0});
  /* inside brackets the marker's -1 is multiplied too, so A1111 no longer sees a break */
  mp_prompt_spans s;
  assert_ok(mp_parse_prompt_attention("(a BREAK b)", &s));
  assert_int_equal(s.n, 3);
  assert_string_equal(s.items[1].text, "BREAK");
  assert_true(s.items[1].weight == -1.1);
  assert_false(mp_prompt_span_is_break(&s.items[1]));
  mp_prompt_spans_free(&s);
}

static void test_bad_weight(void **state) {
  (void)state;
  mp_prompt_spans s;
  assert_err_contains(mp_parse_prompt_attention("a (x:1.2.3) b", &s), "'1.2.3' at byte 5");
  assert_err_contains(mp_parse_prompt_attention("(x:.)", &s), "not a number");
}

/* ---------------------------------------------------------------- chunking */

static mp_tokenizer *load_tok(void) {
  char *p = test_shared_path("data/clip/" MP_CLIP_VOCAB_FILE);
  mp_tokenizer *t;
  assert_ok(mp_tokenizer_load(p, &t));
  free(p);
  return t;
}

static char *repeat(const char *word, int n, const char *sep) {
  size_t len = (strlen(word) + strlen(sep)) * (size_t)n + 1;
  char *s = malloc(len);
  s[0] = 0;
  for (int i = 0; i < n; i++) {
    if (i) strcat(s, sep);
    strcat(s, word);
  }
  return s;
}

static int32_t id_of(const mp_tokenizer *t, const char *word) {
  int32_t *ids;
  size_t n;
  assert_ok(mp_tokenize(t, word, &ids, &n));
  assert_int_equal(n, 1);
  int32_t id = ids[0];
  free(ids);
  return id;
}

static void test_200_tokens_three_chunks(void **state) {
  mp_tokenizer *t = *state;
  char *text = repeat("cat", 200, " ");
  mp_prompt_chunks c;
  mp_chunk_options opt = {.comma_backtrack = 20};
  assert_ok(mp_prompt_chunk_text(t, text, &opt, &c));
  assert_int_equal(c.n_chunks, 3);
  assert_int_equal(c.token_count, 200);
  int32_t cat = id_of(t, "cat");
  for (size_t k = 0; k < 3; k++) {
    assert_int_equal(c.chunks[k].ids[0], MP_CLIP_BOS);
    assert_int_equal(c.chunks[k].ids[76], MP_CLIP_EOS);
    int filled = k < 2 ? 75 : 50;
    for (int i = 1; i <= 75; i++) {
      assert_int_equal(c.chunks[k].ids[i], i <= filled ? cat : MP_CLIP_EOS);
      assert_true(c.chunks[k].weights[i] == 1.0f);
    }
  }
  mp_prompt_chunks_free(&c);
  free(text);
}

static void test_comma_backtrack(void **state) {
  mp_tokenizer *t = *state;
  char *cats = repeat("cat", 70, " "), *dogs = repeat("dog", 10, " ");
  char text[2048];
  snprintf(text, sizeof text, "%s, %s", cats, dogs);
  int32_t cat = id_of(t, "cat"), dog = id_of(t, "dog"), comma = id_of(t, ",");
  mp_prompt_chunks c;
  mp_chunk_options opt = {.comma_backtrack = 20};
  assert_ok(mp_prompt_chunk_text(t, text, &opt, &c));
  /* chunk 0: 70 cats + comma, padded; chunk 1: the 10 dogs */
  assert_int_equal(c.n_chunks, 2);
  assert_int_equal(c.chunks[0].ids[70], cat);
  assert_int_equal(c.chunks[0].ids[71], comma);
  assert_int_equal(c.chunks[0].ids[72], MP_CLIP_EOS);
  for (int i = 1; i <= 10; i++) assert_int_equal(c.chunks[1].ids[i], dog);
  assert_int_equal(c.chunks[1].ids[11], MP_CLIP_EOS);
  assert_int_equal(c.token_count, 75 + 10);
  mp_prompt_chunks_free(&c);
  /* backtracking off: the chunk is cut at 75 tokens */
  opt.comma_backtrack = 0;
  assert_ok(mp_prompt_chunk_text(t, text, &opt, &c));
  assert_int_equal(c.n_chunks, 2);
  assert_int_equal(c.chunks[0].ids[75], dog);
  assert_int_equal(c.chunks[1].ids[6], dog);
  assert_int_equal(c.chunks[1].ids[7], MP_CLIP_EOS);
  mp_prompt_chunks_free(&c);
  /* a comma further back than 20 tokens is ignored */
  free(cats);
  cats = repeat("cat", 50, " ");
  free(dogs);
  dogs = repeat("dog", 40, " ");
  snprintf(text, sizeof text, "%s, %s", cats, dogs);
  opt.comma_backtrack = 20;
  assert_ok(mp_prompt_chunk_text(t, text, &opt, &c));
  assert_int_equal(c.chunks[0].ids[75], dog);
  mp_prompt_chunks_free(&c);
  free(cats);
  free(dogs);
}

static void test_break_and_weights_in_chunks(void **state) {
  mp_tokenizer *t = *state;
  mp_prompt_chunks c;
  assert_ok(mp_prompt_chunk_text(t, "(cat:1.5) dog BREAK [cow]", NULL, &c));
  assert_int_equal(c.n_chunks, 2);
  assert_int_equal(c.chunks[0].ids[1], id_of(t, "cat"));
  assert_true(c.chunks[0].weights[0] == 1.0f);
  assert_true(c.chunks[0].weights[1] == 1.5f);
  assert_true(c.chunks[0].weights[2] == 1.0f);
  assert_int_equal(c.chunks[0].ids[3], MP_CLIP_EOS);
  assert_int_equal(c.chunks[1].ids[1], id_of(t, "cow"));
  assert_true(c.chunks[1].weights[1] == (float)(1 / 1.1));
  assert_int_equal(c.token_count, 75 + 1);
  mp_prompt_chunks_free(&c);
  /* the empty prompt: one empty chunk */
  mp_prompt_chunk empty;
  mp_prompt_empty_chunk(t, &empty);
  assert_ok(mp_prompt_chunk_text(t, "", NULL, &c));
  assert_int_equal(c.n_chunks, 1);
  assert_int_equal(c.token_count, 0);
  assert_memory_equal(c.chunks[0].ids, empty.ids, sizeof empty.ids);
  mp_prompt_chunks_free(&c);
}

static void test_embedding_placement(void **state) {
  mp_tokenizer *t = *state;
  int32_t *name_ids, *short_ids;
  size_t n_name, n_short;
  assert_ok(mp_tokenize(t, "mpasstestembedding", &name_ids, &n_name));
  assert_ok(mp_tokenize(t, "mpass", &short_ids, &n_short));
  assert_true(n_name > n_short);
  mp_ti_pattern pats[2] = {{short_ids, n_short, 1}, {name_ids, n_name, 3}};
  mp_chunk_options opt = {.comma_backtrack = 20, .ti = pats, .n_ti = 2};
  mp_prompt_chunks c;
  /* longest name wins; vectors get the span's weight */
  assert_ok(mp_prompt_chunk_text(t, "a (mpasstestembedding:1.2) mpass", &opt, &c));
  assert_int_equal(c.n_fixes, 2);
  assert_int_equal(c.fixes[0].ti, 1);
  assert_int_equal(c.fixes[0].pos, 2);
  assert_int_equal(c.fixes[1].ti, 0);
  assert_int_equal(c.fixes[1].pos, 5);
  for (int i = 2; i < 5; i++) assert_true(c.chunks[0].weights[i] == 1.2f);
  mp_prompt_chunks_free(&c);
  /* 73 tokens then a 3-vector embedding: it does not fit and starts the next chunk whole */
  char *cats = repeat("cat", 73, " ");
  char text[2048];
  snprintf(text, sizeof text, "%s mpasstestembedding dog", cats);
  assert_ok(mp_prompt_chunk_text(t, text, &opt, &c));
  assert_int_equal(c.n_chunks, 2);
  assert_int_equal(c.chunks[0].ids[74], MP_CLIP_EOS);
  assert_int_equal(c.n_fixes, 1);
  assert_int_equal(c.fixes[0].chunk, 1);
  assert_int_equal(c.fixes[0].pos, 1);
  assert_int_equal(c.chunks[1].ids[4], id_of(t, "dog"));
  mp_prompt_chunks_free(&c);
  free(cats);
  /* an embedding after the last comma moves with the comma backtrack */
  cats = repeat("cat", 70, " ");
  snprintf(text, sizeof text, "%s, mpasstestembedding dog dog", cats);
  assert_ok(mp_prompt_chunk_text(t, text, &opt, &c));
  assert_int_equal(c.n_chunks, 2);
  assert_int_equal(c.chunks[0].ids[72], MP_CLIP_EOS);
  assert_int_equal(c.n_fixes, 1);
  assert_int_equal(c.fixes[0].chunk, 1);
  assert_int_equal(c.fixes[0].pos, 1);
  assert_int_equal(c.chunks[1].ids[4], id_of(t, "dog"));
  assert_int_equal(c.chunks[1].ids[5], id_of(t, "dog"));
  mp_prompt_chunks_free(&c);
  free(cats);
  /* bad patterns are refused */
  mp_ti_pattern bad = {name_ids, n_name, 76};
  mp_chunk_options bopt = {.ti = &bad, .n_ti = 1};
  assert_err_contains(mp_prompt_chunk_text(t, "x", &bopt, &c), "1..75 vectors");
  free(name_ids);
  free(short_ids);
}

/* Hostile input: random bytes drawn mostly from the parser's special characters never crash and
 * always give well-formed chunks (ASan/UBSan check the rest). */
static void test_random_input(void **state) {
  mp_tokenizer *t = *state;
  static const char alphabet[] = "()[]:\\ ,.0123456789+-BREAKab\xc3\xa9\xe4\xb8\xad\xff\x80\t\n";
  uint32_t seed = 12345;
  char text[400];
  for (int iter = 0; iter < 3000; iter++) {
    size_t n = (size_t)(iter % 397);
    for (size_t i = 0; i < n; i++) {
      seed = seed * 1664525u + 1013904223u;
      text[i] = (seed >> 24) % 4 == 0 ? (char)(1 + (seed >> 8) % 255) : alphabet[(seed >> 8) % (sizeof alphabet - 1)];
    }
    text[n] = 0;
    mp_prompt_chunks c;
    mp_error *e = mp_prompt_chunk_text(t, text, NULL, &c);
    if (e) { /* only a malformed weight may fail */
      assert_non_null(strstr(mp_error_message(e), "not a number"));
      mp_error_free(e);
      continue;
    }
    assert_true(c.n_chunks >= 1);
    for (size_t k = 0; k < c.n_chunks; k++) {
      assert_int_equal(c.chunks[k].ids[0], MP_CLIP_BOS);
      assert_int_equal(c.chunks[k].ids[MP_CLIP_MAX_LENGTH - 1], MP_CLIP_EOS);
    }
    mp_prompt_chunks_free(&c);
  }
}

static int setup(void **state) {
  *state = load_tok();
  return 0;
}
static int teardown(void **state) {
  mp_tokenizer_free(*state);
  return 0;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_docstring_examples),
      cmocka_unit_test(test_nesting_and_weights),
      cmocka_unit_test(test_escapes),
      cmocka_unit_test(test_break),
      cmocka_unit_test(test_bad_weight),
      cmocka_unit_test(test_200_tokens_three_chunks),
      cmocka_unit_test(test_comma_backtrack),
      cmocka_unit_test(test_break_and_weights_in_chunks),
      cmocka_unit_test(test_embedding_placement),
      cmocka_unit_test(test_random_input),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
