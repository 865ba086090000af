/* CLIP tokenizer: the golden prompts of tiny/tok.json and data/clip/reference_tokens.json, unicode
 * edge cases (expected ids from tests/prompt/tokenizer_ref.py, a Python model of transformers'
 * slow CLIPTokenizer without ftfy), truncation, invalid UTF-8, the diffusers folder layout, the
 * vocabulary search order and loading speed. */
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "prompt/tokenizer.h"
#include "testutil.h"

typedef struct {
  char *vocab_path;
  mp_tokenizer *tok;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->vocab_path = test_shared_path("data/clip/" MP_CLIP_VOCAB_FILE);
  mp_error *e = mp_tokenizer_load(f->vocab_path, &f->tok);
  if (e) {
    fprintf(stderr, "%s\n", mp_error_message(e));
    mp_error_free(e);
    return -1;
  }
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_tokenizer_free(f->tok);
  free(f->vocab_path);
  free(f);
  return 0;
}

static char *slurp(const char *path) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
  buf[n] = 0;
  fclose(fp);
  return buf;
}

static void assert_ids(const int32_t *got, size_t n, const cJSON *want, const char *what) {
  if (!cJSON_IsArray(want) || (size_t)cJSON_GetArraySize(want) != n)
    fail_msg("%s: %zu ids, expected %d", what, n, cJSON_GetArraySize(want));
  size_t i = 0;
  for (const cJSON *x = want->child; x; x = x->next, i++)
    if (x->valueint != got[i]) fail_msg("%s: id %zu is %d, expected %d", what, i, got[i], x->valueint);
}

/* BOS + ids + EOS */
static int32_t *with_specials(const mp_tokenizer *tok, const int32_t *ids, size_t n) {
  int32_t *full = malloc((n + 2) * sizeof *full);
  full[0] = mp_tokenizer_bos(tok);
  if (n) memcpy(full + 1, ids, n * sizeof *ids);
  full[n + 1] = mp_tokenizer_eos(tok);
  return full;
}

static void check_golden_prompts(const mp_tokenizer *tok) {
  char *path = test_shared_path("golden/tiny/tok.json");
  char *text = slurp(path);
  cJSON *root = cJSON_Parse(text);
  assert_non_null(root);
  const cJSON *prompts = cJSON_GetObjectItem(root, "prompts");
  assert_true(cJSON_GetArraySize(prompts) >= 5);
  for (const cJSON *p = prompts->child; p; p = p->next) {
    const char *prompt = cJSON_GetObjectItem(p, "prompt")->valuestring;
    int32_t padded[MP_CLIP_MAX_LENGTH], *ids;
    size_t n, untrunc;
    assert_ok(mp_tokenize_padded(tok, prompt, padded, &untrunc));
    assert_ids(padded, MP_CLIP_MAX_LENGTH, cJSON_GetObjectItem(p, "input_ids"), prompt);
    assert_ok(mp_tokenize(tok, prompt, &ids, &n));
    assert_int_equal(untrunc, n + 2);
    int32_t *full = with_specials(tok, ids, n);
    assert_ids(full, n + 2, cJSON_GetObjectItem(p, "untruncated_ids"), prompt);
    const cJSON *toks = cJSON_GetObjectItem(p, "tokens");
    assert_int_equal(cJSON_GetArraySize(toks), n + 2);
    size_t i = 0;
    for (const cJSON *t = toks->child; t; t = t->next, i++) assert_string_equal(mp_tokenizer_token_text(tok, full[i]), t->valuestring);
    free(full);
    free(ids);
  }
  cJSON_Delete(root);
  free(text);
  free(path);
}

static void test_golden_tok_json(void **state) { check_golden_prompts(((fixture *)*state)->tok); }

static void test_reference_tokens(void **state) {
  fixture *f = *state;
  char *path = test_shared_path("data/clip/reference_tokens.json");
  char *text = slurp(path);
  cJSON *root = cJSON_Parse(text);
  assert_non_null(root);
  const cJSON *cases = cJSON_GetObjectItem(root, "cases");
  assert_true(cJSON_GetArraySize(cases) >= 8);
  for (const cJSON *c = cases->child; c; c = c->next) {
    const char *t = cJSON_GetObjectItem(c, "text")->valuestring;
    int32_t *ids;
    size_t n;
    assert_ok(mp_tokenize(f->tok, t, &ids, &n));
    int32_t *full = with_specials(f->tok, ids, n);
    assert_ids(full, n + 2, cJSON_GetObjectItem(c, "ids"), t);
    free(full);
    free(ids);
  }
  cJSON_Delete(root);
  free(text);
  free(path);
}

static const struct {
  const char *text;
  size_t n;
  int32_t ids[40];
} unicode_cases[] = {
    /* golden prompt 4 (accents, tab, digits, <lora:...>, don't) */
    {"Caf\xc3\xa9 cr\xc3\xa8me  br\xc3\xbbl\xc3\xa9" "e,\x09na\xc3\xafve   \xc3\x9c" "BER-style 1234567 <lora:x:1> don't", 34, {15304, 1075, 12138, 614, 711, 127, 119, 75, 13489, 267, 1097, 35689, 563, 6522, 1516, 268, 1844, 272, 273, 274, 275, 276, 277, 278, 283, 2179, 320, 281, 343, 281, 272, 285, 847, 713}},
    /* combining accents compose (NFC) */
    {"Cafe\xcc\x81 and e\xcc\x81le\xcc\x80ve", 6, {15304, 537, 3459, 75, 12138, 563}},
    /* emoji; ZWJ (Cf) dropped; VS16 kept */
    {"a cat \xf0\x9f\x90\xb1 with \xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x9a\x80 astronaut \xe2\x9d\xa4\xef\xb8\x8f", 8, {320, 2368, 22979, 593, 18800, 13542, 18376, 1752}},
    /* CJK ideographs become single words; kana and Hangul do not */
    {"\xe6\x9d\xb1\xe4\xba\xac\xe3\x82\xbf\xe3\x83\xaf\xe3\x83\xbc\xe3\x81\xae\xe5\xa4\x9c\xe6\x99\xaf, \xe4\xb8\xad\xe6\x96\x87\xe5\xad\x97\xe7\xac\xa6 and \xed\x95\x9c\xea\xb5\xad\xec\x96\xb4", 31, {27667, 365, 21078, 361, 34941, 2429, 107, 13457, 4813, 362, 23170, 506, 48132, 363, 267, 19759, 511, 29032, 485, 35751, 501, 163, 105, 355, 537, 15197, 250, 31871, 255, 31625, 368}},
    /* final sigma */
    {"\xce\xa3\xce\x9f\xce\xa6\xce\x9f\xce\xa3 \xce\x9f\xce\x94\xce\x9f\xce\xa3 \xcf\x83 \xce\xa3", 22, {139, 225, 138, 123, 139, 228, 138, 123, 139, 480, 138, 123, 138, 112, 138, 123, 139, 480, 139, 481, 139, 481}},
    /* dotted capital I lowers to i + U+0307 */
    {"\xc4\xb0stanbul", 3, {328, 16384, 11231}},
    /* every kind of whitespace; \v \f U+0085 are controls (dropped) */
    {"tab\x09here\x0anewline\x0d\x0bvt\x0c" "ff\xc2\xa0nbsp\xe2\x80\x83" "em\xe2\x80\xa8ls\xc2\x85nel", 11, {14724, 763, 1218, 1148, 31732, 1304, 6459, 4393, 2270, 19051, 2693}},
    /* zero-width space, soft hyphen, private use: dropped (Cf/Co) */
    {"zero\xe2\x80\x8bwidth soft\xc2\xadhyphen private\xee\x80\x80use", 8, {14867, 23571, 1571, 7804, 745, 576, 20362, 1483}},
    /* contractions, case-insensitive */
    {"it's THEY'RE we'VE I'M you'll he'd 'sam", 14, {585, 568, 889, 982, 649, 1200, 328, 880, 592, 1342, 797, 1896, 568, 687}},
    /* literal special token inside punctuation */
    {"!!!<|endoftext|>???", 3, {995, 49407, 3824}},
    /* special tokens literal and upper-case */
    {"hello<|startoftext|>world <|ENDOFTEXT|> x", 5, {3306, 49406, 1002, 49407, 343}},
    /* non-ASCII digits: one token per \p{N} */
    {"\xd9\xa3 \xd9\xa1\xd9\xa2 \xc2\xbd \xe2\x85\xab \xc2\xb2", 11, {149, 352, 149, 350, 149, 351, 33613, 158, 227, 375, 41175}},
    /* no NFKC: ligatures and full-width stay */
    {"\xef\xac\x81ne ligature \xef\xbc\xa6\xef\xbd\x95\xef\xbd\x8c\xef\xbd\x8c \xef\xbd\x97\xef\xbd\x89\xef\xbd\x84\xef\xbd\x94\xef\xbd\x88", 33, {171, 105, 223, 1422, 19915, 4490, 171, 121, 228, 171, 121, 243, 171, 121, 234, 171, 121, 490, 171, 121, 245, 171, 121, 231, 171, 121, 226, 171, 121, 242, 171, 121, 486}},
    /* titlecase letters, sharp s */
    {"\xc7\x85" "emal \xc7\x88 \xc3\x9f \xe1\xba\x9e", 10, {131, 228, 908, 566, 131, 487, 127, 509, 127, 509}},
    /* empty */
    {"", 0, {0}},
    /* only spaces */
    {"   ", 0, {0}},
    /* ASCII punctuation */
    {"a,b;c.d:e/f\\g|h", 15, {320, 267, 321, 282, 322, 269, 323, 281, 324, 270, 325, 315, 326, 347, 327}},
};

static void test_unicode_cases(void **state) {
  fixture *f = *state;
  for (size_t k = 0; k < sizeof unicode_cases / sizeof *unicode_cases; k++) {
    int32_t *ids;
    size_t n;
    assert_ok(mp_tokenize(f->tok, unicode_cases[k].text, &ids, &n));
    if (n != unicode_cases[k].n) fail_msg("case %zu (%s): %zu ids, expected %zu", k, unicode_cases[k].text, n, unicode_cases[k].n);
    for (size_t i = 0; i < n; i++)
      if (ids[i] != unicode_cases[k].ids[i])
        fail_msg("case %zu (%s): id %zu is %d, expected %d", k, unicode_cases[k].text, i, ids[i], unicode_cases[k].ids[i]);
    free(ids);
  }
}

static void test_empty_and_null(void **state) {
  fixture *f = *state;
  int32_t padded[MP_CLIP_MAX_LENGTH], *ids = (int32_t *)1;
  size_t n = 99, untrunc;
  assert_ok(mp_tokenize(f->tok, "", &ids, &n));
  assert_int_equal(n, 0);
  free(ids);
  assert_ok(mp_tokenize(f->tok, NULL, &ids, &n));
  assert_int_equal(n, 0);
  free(ids);
  assert_ok(mp_tokenize_padded(f->tok, "", padded, &untrunc));
  assert_int_equal(untrunc, 2);
  assert_int_equal(padded[0], MP_CLIP_BOS);
  for (int i = 1; i < MP_CLIP_MAX_LENGTH; i++) assert_int_equal(padded[i], MP_CLIP_EOS);
}

static void test_truncation_300_tokens(void **state) {
  fixture *f = *state;
  /* "cat" and "," are one token each: 150 x "cat," = 300 tokens */
  char text[1024] = "";
  for (int i = 0; i < 150; i++) strcat(text, "cat,");
  int32_t padded[MP_CLIP_MAX_LENGTH], *ids;
  size_t n, untrunc;
  assert_ok(mp_tokenize(f->tok, text, &ids, &n));
  assert_int_equal(n, 300);
  assert_ok(mp_tokenize_padded(f->tok, text, padded, &untrunc));
  assert_int_equal(untrunc, 302);
  assert_int_equal(padded[0], MP_CLIP_BOS);
  assert_memory_equal(padded + 1, ids, 75 * sizeof *ids);
  assert_int_equal(padded[76], MP_CLIP_EOS);
  free(ids);
}

/* Invalid UTF-8 never fails and never crashes: each bad byte is dropped (it would decode to U+FFFD,
 * which the cleaning step removes), so the result equals the text without those bytes. */
static void test_invalid_utf8(void **state) {
  fixture *f = *state;
  static const struct {
    const char *bad, *clean;
  } cases[] = {
      {"caf\xc3", "caf"},
      {"\xff\xfe" "abc", "abc"},
      {"a\x80" "b c", "ab c"},
      {"x\xed\xa0\x80y", "xy"},         /* encoded surrogate */
      {"over\xc0\xaflong", "overlong"}, /* overlong '/' */
      {"\xf4\x90\x80\x80 big", " big"}, /* beyond U+10FFFF */
      {"\xe6\x9d", ""},
  };
  for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
    int32_t *a, *b;
    size_t na, nb;
    assert_ok(mp_tokenize(f->tok, cases[k].bad, &a, &na));
    assert_ok(mp_tokenize(f->tok, cases[k].clean, &b, &nb));
    assert_int_equal(na, nb);
    if (na) assert_memory_equal(a, b, na * sizeof *a);
    free(a);
    free(b);
  }
  /* every byte value, shuffled into a long string */
  char all[1025];
  for (int i = 0; i < 1024; i++) all[i] = (char)(1 + (i * 167) % 255);
  all[1024] = 0;
  int32_t *ids;
  size_t n;
  assert_ok(mp_tokenize(f->tok, all, &ids, &n));
  for (size_t i = 0; i < n; i++) assert_true(ids[i] >= 0 && ids[i] < 49408);
  free(ids);
}

static void test_vocab_tables(void **state) {
  fixture *f = *state;
  assert_int_equal(mp_tokenizer_vocab_size(f->tok), 49408);
  assert_string_equal(mp_tokenizer_token_text(f->tok, 0), "!");
  assert_string_equal(mp_tokenizer_token_text(f->tok, 256), "!</w>");
  assert_string_equal(mp_tokenizer_token_text(f->tok, 49406), "<|startoftext|>");
  assert_string_equal(mp_tokenizer_token_text(f->tok, 49407), "<|endoftext|>");
  assert_null(mp_tokenizer_token_text(f->tok, 49408));
  assert_null(mp_tokenizer_token_text(f->tok, -1));
  assert_int_equal(mp_tokenizer_token_id(f->tok, ",</w>"), 267);
  assert_int_equal(mp_tokenizer_token_id(f->tok, "photo</w>"), 1125);
  assert_int_equal(mp_tokenizer_token_id(f->tok, "no such token"), -1);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_load_speed(void **state) {
  fixture *f = *state;
  double best = 1e9;
  for (int r = 0; r < 3; r++) {
    mp_tokenizer *t;
    double t0 = now_s();
    assert_ok(mp_tokenizer_load(f->vocab_path, &t));
    double dt = now_s() - t0;
    best = dt < best ? dt : best;
    mp_tokenizer_free(t);
  }
  /* 100 ms is the target for an optimised build; sanitizer builds get 10x. */
  fprintf(stderr, "tokenizer load: %.1f ms (best of 3)\n", 1e3 * best);
  assert_true(best < 1.0);
}

/* A diffusers tokenizer/ folder (vocab.json + merges.txt) made from the .gz gives the same ids. */
static void test_diffusers_folder(void **state) {
  fixture *f = *state;
  char *dir = test_tmpdir();
  char path[4096];
  cJSON *vocab = cJSON_CreateObject();
  for (int32_t id = 0; id < mp_tokenizer_vocab_size(f->tok); id++)
    cJSON_AddItemToObject(vocab, mp_tokenizer_token_text(f->tok, id), cJSON_CreateNumber(id));
  char *json = cJSON_PrintUnformatted(vocab);
  snprintf(path, sizeof path, "%s/vocab.json", dir);
  test_write_file(path, json, strlen(json));
  free(json);
  cJSON_Delete(vocab);
  gzFile gz = gzopen(f->vocab_path, "rb");
  assert_non_null(gz);
  size_t cap = 4 << 20, n = 0;
  char *merges = malloc(cap);
  int got;
  while ((got = gzread(gz, merges + n, (unsigned)(cap - n))) > 0) n += (size_t)got;
  gzclose(gz);
  /* header + 48894 merges, as diffusers ships it */
  size_t lines = 0, end = 0;
  while (end < n && lines < 48895) lines += merges[end++] == '\n';
  snprintf(path, sizeof path, "%s/merges.txt", dir);
  test_write_file(path, merges, end);
  free(merges);
  mp_tokenizer *t;
  assert_ok(mp_tokenizer_load(dir, &t));
  check_golden_prompts(t);
  mp_tokenizer_free(t);
  free(dir);
}

static void test_bad_files(void **state) {
  (void)state;
  mp_tokenizer *t = (mp_tokenizer *)1;
  assert_err_contains(mp_tokenizer_load("/nonexistent/vocab.txt.gz", &t), "/nonexistent/vocab.txt.gz");
  assert_null(t);
  char *dir = test_tmpdir();
  char path[4096];
  snprintf(path, sizeof path, "%s/short.txt.gz", dir);
  gzFile gz = gzopen(path, "wb");
  gzputs(gz, "#version: 0.2\ni n\nt h\n");
  gzclose(gz);
  assert_err_contains(mp_tokenizer_load(path, &t), "expected 48894 merge lines");
  snprintf(path, sizeof path, "%s/empty", dir);
  mkdir(path, 0700);
  assert_err_contains(mp_tokenizer_load(path, &t), "neither vocab.json");
  snprintf(path, sizeof path, "%s/empty/vocab.json", dir);
  test_write_file(path, "[1,2]", 5);
  snprintf(path, sizeof path, "%s/empty/merges.txt", dir);
  test_write_file(path, "#version\n", 9);
  snprintf(path, sizeof path, "%s/empty", dir);
  assert_err_contains(mp_tokenizer_load(path, &t), "not a JSON object");
  free(dir);
}

static void test_find_vocab_order(void **state) {
  (void)state;
  char *dir = test_tmpdir(), a[4096], b[4096], *p;
  snprintf(a, sizeof a, "%s/data/clip", dir);
  snprintf(b, sizeof b, "%s/models/clip", dir);
  char mk[4200];
  snprintf(mk, sizeof mk, "%s/data", dir), mkdir(mk, 0700), mkdir(a, 0700);
  snprintf(mk, sizeof mk, "%s/models", dir), mkdir(mk, 0700), mkdir(b, 0700);
  strcat(a, "/" MP_CLIP_VOCAB_FILE);
  strcat(b, "/" MP_CLIP_VOCAB_FILE);
  test_write_file(a, "x", 1);
  test_write_file(b, "x", 1);
  char data_dir[4200], models_dir[4200];
  snprintf(data_dir, sizeof data_dir, "%s/data", dir);
  snprintf(models_dir, sizeof models_dir, "%s/models", dir);
  unsetenv("MPASS_VOCAB");
  assert_ok(mp_tokenizer_find_vocab("/explicit", data_dir, models_dir, &p));
  assert_string_equal(p, "/explicit");
  free(p);
  setenv("MPASS_VOCAB", "/from/env", 1);
  assert_ok(mp_tokenizer_find_vocab(NULL, data_dir, models_dir, &p));
  assert_string_equal(p, "/from/env");
  free(p);
  unsetenv("MPASS_VOCAB");
  assert_ok(mp_tokenizer_find_vocab(NULL, data_dir, models_dir, &p));
  assert_string_equal(p, a);
  free(p);
  assert_ok(mp_tokenizer_find_vocab(NULL, NULL, models_dir, &p));
  assert_string_equal(p, b);
  free(p);
  /* nothing on disk (and no ../shared fallback any more, from any working folder): *path NULL, which
   * mp_tokenizer_load reads as the built-in copy */
  char cwd[4096];
  assert_non_null(getcwd(cwd, sizeof cwd));
  char sub[4200];
  snprintf(sub, sizeof sub, "%s/sub", dir);
  assert_int_equal(mkdir(sub, 0755), 0);
  assert_int_equal(chdir(sub), 0);
  p = (char *)"not set";
  assert_ok(mp_tokenizer_find_vocab(NULL, NULL, "/nonexistent-models", &p));
  assert_null(p);
  assert_int_equal(chdir(cwd), 0);
  free(dir);
}

/* The vocabulary compiled into the library is the same as the file: every id's text, and the ids of
 * the reference prompts. */
static void test_builtin_vocab(void **state) {
  fixture *f = *state;
  mp_tokenizer *t = NULL;
  assert_ok(mp_tokenizer_load(NULL, &t));
  assert_int_equal(mp_tokenizer_vocab_size(t), mp_tokenizer_vocab_size(f->tok));
  assert_int_equal(mp_tokenizer_bos(t), MP_CLIP_BOS);
  assert_int_equal(mp_tokenizer_eos(t), MP_CLIP_EOS);
  for (int32_t id = 0; id < mp_tokenizer_vocab_size(t); id++) {
    const char *a = mp_tokenizer_token_text(t, id), *b = mp_tokenizer_token_text(f->tok, id);
    if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0)) fail_msg("id %d: built-in '%s', file '%s'", id, a, b);
  }
  int32_t *ids = NULL;
  size_t n = 0;
  assert_ok(mp_tokenize(t, "a photo of a cat", &ids, &n));
  const int32_t want[] = {320, 1125, 539, 320, 2368};
  assert_int_equal(n, 5);
  for (size_t i = 0; i < n; i++) assert_int_equal(ids[i], want[i]);
  free(ids);
  mp_tokenizer_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_tok_json),   cmocka_unit_test(test_reference_tokens),
      cmocka_unit_test(test_unicode_cases),     cmocka_unit_test(test_empty_and_null),
      cmocka_unit_test(test_truncation_300_tokens), cmocka_unit_test(test_invalid_utf8),
      cmocka_unit_test(test_vocab_tables),      cmocka_unit_test(test_load_speed),
      cmocka_unit_test(test_diffusers_folder),  cmocka_unit_test(test_bad_files),
      cmocka_unit_test(test_find_vocab_order),  cmocka_unit_test(test_builtin_vocab),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
