/* A1111 infotext: the exact text we write, reading A1111's own texts, quoting, round trips, hostile
 * input; SHA-256 against the FIPS 180-4 examples; the short model hash. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/params.h"
#include "testutil.h"

static void test_format_standard_fields(void **state) {
  (void)state;
  mp_gen_params p = {.prompt = "a photo of sks woman, smiling",
                     .negative_prompt = "blurry, lowres",
                     .steps = 30,
                     .scheduler = "dpm++sde_karras",
                     .cfg_scale = 7,
                     .seed = 33504,
                     .width = 512,
                     .height = 768,
                     .model_hash = "abcdef1234",
                     .model_name = "v1-5-pruned-emaonly",
                     .denoising_strength = -1};
  mp_infotext it;
  assert_ok(mp_infotext_from_params(&p, &it));
  assert_ok(mp_infotext_set_real(&it, "Person denoising strength", 0.65));
  assert_ok(mp_infotext_set(&it, "Color grading", "Film Velvia"));
  char *s;
  assert_ok(mp_infotext_format(&it, &s));
  assert_string_equal(s,
                      "a photo of sks woman, smiling\n"
                      "Negative prompt: blurry, lowres\n"
                      "Steps: 30, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 7, Seed: 33504, "
                      "Size: 512x768, Model hash: abcdef1234, Model: v1-5-pruned-emaonly, "
                      "Person denoising strength: 0.65, Color grading: Film Velvia");
  mp_infotext back;
  assert_ok(mp_infotext_parse(s, &back));
  assert_string_equal(back.prompt, it.prompt);
  assert_string_equal(back.negative_prompt, it.negative_prompt);
  assert_int_equal(back.n_fields, it.n_fields);
  for (size_t i = 0; i < it.n_fields; i++) {
    assert_string_equal(back.fields[i].key, it.fields[i].key);
    assert_string_equal(back.fields[i].value, it.fields[i].value);
  }
  long long steps;
  double cfg;
  int w, h;
  assert_ok(mp_infotext_get_int(&back, "Steps", &steps));
  assert_ok(mp_infotext_get_real(&back, "CFG scale", &cfg));
  assert_ok(mp_infotext_get_size(&back, "Size", &w, &h));
  assert_int_equal(steps, 30);
  assert_true(cfg == 7.0);
  assert_int_equal(w, 512), assert_int_equal(h, 768);
  assert_err_contains(mp_infotext_get_int(&back, "Sampler", &steps), "expected an integer");
  assert_err_contains(mp_infotext_get_size(&back, "Seed", &w, &h), "WIDTHxHEIGHT");
  assert_null(mp_infotext_get(&back, "Denoising strength"));
  free(s);
  mp_infotext_free(&it);
  mp_infotext_free(&back);
}

static void test_reads_a1111_text(void **state) {
  (void)state;
  /* The example in A1111's parse_generation_parameters docstring, with an older 8-digit hash. */
  const char *t =
      "girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by "
      "Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
      "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn "
      "face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
      "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b";
  mp_infotext it;
  assert_ok(mp_infotext_parse(t, &it));
  assert_true(strncmp(it.prompt, "girl with an artist's beret", 27) == 0);
  assert_true(strncmp(it.negative_prompt, "ugly, fat", 9) == 0);
  assert_string_equal(mp_infotext_get(&it, "Sampler"), "Euler a");
  assert_string_equal(mp_infotext_get(&it, "Model hash"), "45dee52b");
  assert_string_equal(mp_infotext_get(&it, "Seed"), "965400086");
  const char *sched;
  assert_true(mp_scheduler_from_a1111(mp_infotext_get(&it, "Sampler"), mp_infotext_get(&it, "Schedule type"), &sched));
  assert_string_equal(sched, "euler_a");
  mp_infotext_free(&it);
}

static void test_quoting_round_trip(void **state) {
  (void)state;
  char *q = mp_infotext_quote("plain value");
  assert_string_equal(q, "plain value");
  free(q);
  q = mp_infotext_quote("a, b: \"c\" \\ d\ne\x01");
  assert_string_equal(q, "\"a, b: \\\"c\\\" \\\\ d\\ne\\u0001\"");
  free(q);
  mp_infotext it, back;
  assert_ok(mp_infotext_init(&it, "line one\nline two (x:1.2) <lora:753945:0.8>\nBREAK three", "neg one\nneg two"));
  assert_ok(mp_infotext_set(&it, "Steps", "30"));
  assert_ok(mp_infotext_set(&it, "Lora hashes", "753945: 0123456789ab, add_detail: ba9876543210"));
  assert_ok(mp_infotext_set(&it, "Prompt document", "text=a, b\nnum_images=2\n\"quoted\" \\ slash"));
  assert_ok(mp_infotext_set(&it, "Tiling", "Tiling")); /* written bare, and (as in A1111) not read back */
  assert_ok(mp_infotext_set(&it, "Unicode", "café – ✓"));
  char *s;
  assert_ok(mp_infotext_format(&it, &s));
  assert_non_null(strstr(s, ", Tiling, Unicode: café – ✓"));
  assert_ok(mp_infotext_parse(s, &back));
  assert_string_equal(back.prompt, it.prompt);
  assert_string_equal(back.negative_prompt, it.negative_prompt);
  assert_string_equal(mp_infotext_get(&back, "Lora hashes"), mp_infotext_get(&it, "Lora hashes"));
  assert_string_equal(mp_infotext_get(&back, "Prompt document"), mp_infotext_get(&it, "Prompt document"));
  assert_string_equal(mp_infotext_get(&back, "Unicode"), "café – ✓");
  assert_null(mp_infotext_get(&back, "Tiling"));
  free(s);
  mp_infotext_free(&back);
  /* Replacing and removing keep the order of the rest. */
  assert_ok(mp_infotext_set(&it, "Steps", "31"));
  assert_ok(mp_infotext_set(&it, "Lora hashes", NULL));
  assert_string_equal(it.fields[0].value, "31");
  assert_string_equal(it.fields[1].key, "Prompt document");
  assert_err_contains(mp_infotext_set(&it, "x", "1"), "not readable back");
  assert_err_contains(mp_infotext_set(&it, "Bad:key", "1"), "not readable back");
  mp_infotext_free(&it);
}

static void test_parse_edge_cases(void **state) {
  (void)state;
  mp_infotext it;
  /* Fewer than three fields on the last line: it is prompt text. */
  assert_ok(mp_infotext_parse("a cat\nSteps: 20, Seed: 1", &it));
  assert_string_equal(it.prompt, "a cat\nSteps: 20, Seed: 1");
  assert_int_equal(it.n_fields, 0);
  mp_infotext_free(&it);
  /* No prompt at all; an empty value is dropped; surrounding white space goes. */
  assert_ok(mp_infotext_parse("  \n Steps: 20, Sampler: , Seed: 5, Size: 64x64 \n", &it));
  assert_string_equal(it.prompt, "");
  assert_null(mp_infotext_get(&it, "Sampler"));
  assert_string_equal(mp_infotext_get(&it, "Seed"), "5");
  assert_string_equal(mp_infotext_get(&it, "Size"), "64x64");
  mp_infotext_free(&it);
  /* An empty line before the field line stays in the prompt, as Python's split keeps it. */
  assert_ok(mp_infotext_parse("p\n\nAa: 1, Bb: 2, Cc: 3", &it));
  assert_string_equal(it.prompt, "p\n");
  mp_infotext_free(&it);
  /* Negative prompt across lines; a quoted value that is not valid JSON stays as written. */
  assert_ok(mp_infotext_parse("p\nNegative prompt:\nn1\n  n2  \nAa: 1, Bb: \"x\\q\", Cc: 3", &it));
  assert_string_equal(it.negative_prompt, "n1\nn2");
  assert_string_equal(mp_infotext_get(&it, "Bb"), "\"x\\q\"");
  mp_infotext_free(&it);
  /* Sampler names both ways, including the pre-1.9 "DPM++ 2M Karras". */
  const char *a, *b, *m;
  assert_true(mp_a1111_sampler("dpm++2m_karras", &a, &b));
  assert_string_equal(a, "DPM++ 2M"), assert_string_equal(b, "Karras");
  assert_true(mp_scheduler_from_a1111("DPM++ 2M Karras", NULL, &m));
  assert_string_equal(m, "dpm++2m_karras");
  assert_true(mp_scheduler_from_a1111("DPM++ 2M", "Normal", &m));
  assert_string_equal(m, "dpm++2m");
  assert_false(mp_scheduler_from_a1111("UniPC", "Automatic", &m));
  assert_false(mp_a1111_sampler("heun", &a, &b));
}

/* The exact text per sampler, as AUTOMATIC1111 1.9 and 1.10 need it to pick the same sampler and
 * sigmas (checked there with its own parse_generation_parameters): the plain schedule is "Uniform",
 * never "Normal" (which 1.9 reads as Automatic = Karras). The fixture is the expectation; no Python. */
static const struct {
  const char *scheduler, *fields;
} a1111_fixture[] = {
    {"euler", "Sampler: Euler, Schedule type: Uniform"},
    {"euler_a", "Sampler: Euler a, Schedule type: Uniform"},
    {"dpm++2m", "Sampler: DPM++ 2M, Schedule type: Uniform"},
    {"dpm++2m_karras", "Sampler: DPM++ 2M, Schedule type: Karras"},
    {"dpm++sde", "Sampler: DPM++ SDE, Schedule type: Uniform"},
    {"dpm++sde_karras", "Sampler: DPM++ SDE, Schedule type: Karras"},
    {"lcm", "Sampler: LCM, Schedule type: Automatic"},
    {"tcd", "Sampler: TCD, Schedule type: Automatic"},
    {"ddim", "Sampler: DDIM, Schedule type: Automatic"},
};

static void test_a1111_text_per_sampler(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof a1111_fixture / sizeof *a1111_fixture; i++) {
    mp_gen_params p = {.prompt = "a cat", .negative_prompt = "blurry", .steps = 20,
                       .scheduler = a1111_fixture[i].scheduler, .cfg_scale = 7, .seed = 1, .width = 512,
                       .height = 512, .denoising_strength = -1};
    mp_infotext it, back;
    char *s, expected[512];
    assert_ok(mp_infotext_from_params(&p, &it));
    assert_ok(mp_infotext_format(&it, &s));
    snprintf(expected, sizeof expected, "a cat\nNegative prompt: blurry\nSteps: 20, %s, CFG scale: 7, Seed: 1, Size: 512x512",
             a1111_fixture[i].fields);
    assert_string_equal(s, expected);
    /* and mpass reads its own text back to the same scheduler */
    const char *m = NULL;
    assert_ok(mp_infotext_parse(s, &back));
    assert_true(mp_scheduler_from_a1111(mp_infotext_get(&back, "Sampler"), mp_infotext_get(&back, "Schedule type"), &m));
    assert_string_equal(m, a1111_fixture[i].scheduler);
    free(s);
    mp_infotext_free(&it);
    mp_infotext_free(&back);
  }
  /* images written before the change said "Normal": still the plain schedule */
  const char *m = NULL;
  assert_true(mp_scheduler_from_a1111("Euler a", "Normal", &m));
  assert_string_equal(m, "euler_a");
  assert_true(mp_scheduler_from_a1111("DPM++ SDE", "Uniform", &m));
  assert_string_equal(m, "dpm++sde");
}

static void test_hostile_input(void **state) {
  (void)state;
  /* Random bytes, unterminated quotes, lone escapes: never crash, always a result or a clean error. */
  unsigned s = 1;
  const char alphabet[] = "ab: ,\"\\\n\tNegative prompt:u0x\xc3\xa9";
  char text[200];
  for (int round = 0; round < 3000; round++) {
    int n = (int)(s % 199);
    for (int i = 0; i < n; i++) {
      s = s * 1664525u + 1013904223u;
      text[i] = alphabet[(s >> 16) % (sizeof alphabet - 1)];
    }
    text[n] = 0;
    mp_infotext it;
    mp_error *e = mp_infotext_parse(text, &it);
    if (e)
      mp_error_free(e);
    else {
      char *out;
      assert_ok(mp_infotext_format(&it, &out));
      free(out);
      mp_infotext_free(&it);
    }
    s = s * 1664525u + 1013904223u;
  }
  mp_infotext it;
  assert_ok(mp_infotext_parse("Aa: \"\\u00e9\\ud83d\\ude00\\ud800\", Bb: 1, Cc: 2", &it));
  assert_string_equal(mp_infotext_get(&it, "Aa"), "é😀\xef\xbf\xbd");
  mp_infotext_free(&it);
}

static void hex_of(const char *msg, size_t n, char hex[65]) {
  mp_sha256 s;
  uint8_t d[32];
  mp_sha256_init(&s);
  mp_sha256_update(&s, msg, n);
  mp_sha256_final(&s, d);
  mp_sha256_hex(d, hex);
}

static void test_sha256_fips_vectors(void **state) {
  (void)state;
  char hex[65];
  hex_of("abc", 3, hex);
  assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  hex_of("", 0, hex);
  assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  hex_of(m448, strlen(m448), hex);
  assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const char *m896 = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
  hex_of(m896, strlen(m896), hex);
  assert_string_equal(hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  /* One million 'a', fed in uneven pieces to exercise the buffering. */
  char *a = malloc(1000000);
  memset(a, 'a', 1000000);
  mp_sha256 s;
  uint8_t d[32];
  mp_sha256_init(&s);
  for (size_t off = 0, step = 1; off < 1000000; off += step, step = step * 7 % 1000 + 1)
    mp_sha256_update(&s, a + off, off + step > 1000000 ? 1000000 - off : step);
  mp_sha256_final(&s, d);
  mp_sha256_hex(d, hex);
  assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  /* A file of the same bytes, and its A1111 short hash. */
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  test_write_file(path, a, 1000000);
  assert_ok(mp_file_sha256(path, hex));
  assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  char shorth[11];
  assert_ok(mp_model_short_hash(path, shorth));
  assert_string_equal(shorth, "cdc76e5c99");
  remove(path);
  assert_err_contains(mp_model_short_hash(path, shorth), "cannot open");
  free(a);
  free(dir);
}

/* The hash cache answers from its file while size and mtime hold, and rehashes when they change. */
static void test_hash_cache(void **state) {
  (void)state;
  char *dir = test_tmpdir(), file[512], cache_dir[512], cache[600], hash[11], plain[11];
  snprintf(file, sizeof file, "%s/model.safetensors", dir);
  snprintf(cache_dir, sizeof cache_dir, "%s/.cache", dir);
  snprintf(cache, sizeof cache, "%s/sha256.json", cache_dir);
  test_write_file(file, "abc", 3);
  assert_ok(mp_model_short_hash_cached(cache_dir, file, hash));
  assert_ok(mp_model_short_hash(file, plain));
  assert_string_equal(hash, plain);
  assert_string_equal(hash, "ba7816bf8f"); /* sha256("abc") */
  /* the cache is what answers: plant another sum for the same size and mtime */
  FILE *f = fopen(cache, "rb");
  assert_non_null(f);
  char buf[4096] = {0};
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  char *at = strstr(buf, "ba7816bf8f");
  assert_non_null(at);
  memcpy(at, "0123456789", 10);
  test_write_file(cache, buf, n);
  assert_ok(mp_model_short_hash_cached(cache_dir, file, hash));
  assert_string_equal(hash, "0123456789");
  /* a changed file is hashed again */
  test_write_file(file, "abcd", 4);
  assert_ok(mp_model_short_hash_cached(cache_dir, file, hash));
  assert_string_equal(hash, "88d4266fd4"); /* sha256("abcd") */
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_format_standard_fields), cmocka_unit_test(test_reads_a1111_text),
      cmocka_unit_test(test_quoting_round_trip),     cmocka_unit_test(test_parse_edge_cases),
      cmocka_unit_test(test_hostile_input),          cmocka_unit_test(test_sha256_fips_vectors),
      cmocka_unit_test(test_hash_cache),             cmocka_unit_test(test_a1111_text_per_sampler),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
