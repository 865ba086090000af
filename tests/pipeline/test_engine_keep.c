/* Engines kept between jobs (mpass_options.keep_models, pipeline/engine.h): a job on a kept engine gives
 * the bytes a fresh context gives, whatever the jobs before it bound; a checkpoint changed on disk is
 * opened again; at most MP_KEPT_ENGINES wait, and no more are alive while a job opens others. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pipeline/engine.h"
#include "pipeline/run.h"
#include "prompt/document.h"
#include "prompt/plan.h"
#include "models_folder.h"
#include "testutil.h"

typedef struct {
  char *dir, *models, *vocab, *ckpt[4];
  mpass_ctx *kept, *fresh;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->dir = test_tmpdir();
  char p[1024];
  snprintf(p, sizeof p, "%s/models", f->dir);
  f->models = strdup(p);
  mkdir(f->models, 0755);
  snprintf(p, sizeof p, "%s/lora", f->models);
  mkdir(p, 0755);
  char *lora = test_shared_path("golden/tiny/lora_tiny.safetensors");
  snprintf(p, sizeof p, "%s/lora/lora_a.safetensors", f->models);
  test_copy_file(lora, p);
  free(lora);
  for (int i = 0; i < 4; i++) {
    snprintf(p, sizeof p, "%s/ckpt%d.safetensors", f->dir, i);
    f->ckpt[i] = strdup(p);
    test_write_tiny_checkpoint(f->ckpt[i], "tiny", 3 + (uint64_t)i);
  }
  f->vocab = test_shared_path("data/clip/bpe_simple_vocab_16e6.txt.gz");
  mpass_options kept = {.n_threads = 2, .models_dir = f->models, .keep_models = 1}, fresh = {.n_threads = 2, .models_dir = f->models};
  assert_ok(mpass_ctx_create(&kept, &f->kept));
  assert_ok(mpass_ctx_create(&fresh, &f->fresh));
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mpass_ctx_destroy(f->kept); /* closes the kept engines (ASan: nothing leaks) */
  mpass_ctx_destroy(f->fresh);
  for (int i = 0; i < 4; i++) free(f->ckpt[i]);
  free(f->dir), free(f->models), free(f->vocab);
  free(f);
  return 0;
}

/* Run `doc` on checkpoint `ckpt` as job `name`; returns the bytes of its 0.png (*len), caller frees. */
static unsigned char *run_job(fixture *f, mpass_ctx *ctx, const char *ckpt, const char *doc, const char *name, size_t *len) {
  mp_job *job;
  assert_ok(mp_job_parse_text(doc, strlen(doc), &job));
  mp_plan *plan;
  assert_ok(mp_plan_make(job, &plan));
  char out[1024], p[1200], *dir = NULL;
  snprintf(out, sizeof out, "%s/out", f->dir);
  mp_run_options o = {.model_path = ckpt, .out_dir = out, .job_name = name, .document = doc, .vocab = f->vocab,
                      .rng = MP_RNG_CPU, .clip_skip = 1};
  assert_ok(mp_run_plan(ctx, plan, &o, &dir));
  snprintf(p, sizeof p, "%s/0.png", dir);
  FILE *fp = fopen(p, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  *len = (size_t)ftell(fp);
  fseek(fp, 0, SEEK_SET);
  unsigned char *bytes = malloc(*len);
  assert_int_equal(fread(bytes, 1, *len, fp), *len);
  fclose(fp);
  free(dir);
  mp_plan_free(plan);
  mp_job_free(job);
  return bytes;
}

static int kept_count(const mpass_ctx *ctx) {
  int n = 0;
  while (mp_engine_kept(ctx, n)) n++;
  return n;
}

static const char *const WITH_LORA = "a red house <lora:lora_a:0.8>\nseed=5\nsteps=2\nscheduler=euler\nw=64\nh=64\n";
static const char *const PLAIN = "a blue boat\nnegative_prompt=fog\nseed=6\nsteps=2\nscheduler=euler\nw=64\nh=64\n";

static void assert_same_bytes(const unsigned char *a, size_t na, const unsigned char *b, size_t nb) {
  assert_int_equal(na, nb);
  assert_memory_equal(a, b, na);
}

/* The second job reuses the first one's engine, back on its base weights (the first bound a LoRA), and
 * draws what a fresh context draws. */
static void test_second_job_reuses_the_engine(void **state) {
  fixture *f = *state;
  size_t n1, n2, n3;
  free(run_job(f, f->kept, f->ckpt[0], WITH_LORA, "a1", &n1));
  assert_int_equal(kept_count(f->kept), 1);
  const mp_engine *e = mp_engine_kept(f->kept, 0);
  assert_string_equal(e->path, f->ckpt[0]);
  assert_null(e->overlay); /* back on the base weights */
  assert_null(e->tok);     /* the job's tokenizer is gone with the job */
  const int encodes = e->text_encodes;
  assert_true(encodes >= 1);
  unsigned char *kept = run_job(f, f->kept, f->ckpt[0], PLAIN, "b1", &n2);
  assert_int_equal(kept_count(f->kept), 1);
  assert_true(mp_engine_kept(f->kept, 0)->text_encodes > encodes); /* the same engine encoded again */
  unsigned char *fresh = run_job(f, f->fresh, f->ckpt[0], PLAIN, "b1-fresh", &n3);
  assert_same_bytes(kept, n2, fresh, n3);
  assert_int_equal(kept_count(f->fresh), 0); /* without keep_models nothing waits */
  free(kept), free(fresh);
}

/* A checkpoint rewritten on disk is opened again: the job draws with the new weights. */
static void test_changed_checkpoint_is_reopened(void **state) {
  fixture *f = *state;
  size_t n1, n2, n3;
  unsigned char *before = run_job(f, f->kept, f->ckpt[1], PLAIN, "c1", &n1);
  test_write_tiny_checkpoint(f->ckpt[1], "tiny", 99); /* same size, new weights, new mtime */
  unsigned char *after = run_job(f, f->kept, f->ckpt[1], PLAIN, "c2", &n2);
  unsigned char *fresh = run_job(f, f->fresh, f->ckpt[1], PLAIN, "c2-fresh", &n3);
  assert_same_bytes(after, n2, fresh, n3);
  assert_true(n1 != n2 || memcmp(before, after, n1) != 0);
  for (int i = 0; mp_engine_kept(f->kept, i); i++)
    if (!strcmp(mp_engine_kept(f->kept, i)->path, f->ckpt[1])) assert_int_equal(mp_engine_kept(f->kept, i)->text_encodes, 1);
  free(before), free(after), free(fresh);
}

/* At most MP_KEPT_ENGINES wait; the one given back longest ago goes first. */
static void test_at_most_three_wait(void **state) {
  fixture *f = *state;
  size_t n;
  char name[16];
  for (int i = 0; i < 4; i++) {
    snprintf(name, sizeof name, "d%d", i);
    free(run_job(f, f->kept, f->ckpt[i], PLAIN, name, &n));
  }
  assert_int_equal(kept_count(f->kept), MP_KEPT_ENGINES);
  for (int i = 0; i < MP_KEPT_ENGINES; i++) assert_string_equal(mp_engine_kept(f->kept, i)->path, f->ckpt[i + 1]);
}

/* A take that must open first closes waiting engines until those alive (waiting and taken) are within
 * MP_KEPT_ENGINES; the engines taken come back in the order given. */
static void test_engines_alive_stay_bounded(void **state) {
  fixture *f = *state;
  assert_int_equal(kept_count(f->kept), MP_KEPT_ENGINES); /* ckpt 1, 2, 3 from the test before */
  mp_engine *a, *b, *c;
  assert_ok(mp_engine_take(f->kept, f->ckpt[0], NULL, &a)); /* opens: 3 waiting + 0 taken, so ckpt1 goes */
  assert_int_equal(kept_count(f->kept), 2);
  assert_string_equal(mp_engine_kept(f->kept, 0)->path, f->ckpt[2]);
  assert_ok(mp_engine_take(f->kept, f->ckpt[1], NULL, &b)); /* opens again: ckpt2 goes */
  assert_int_equal(kept_count(f->kept), 1);
  assert_ok(mp_engine_take(f->kept, f->ckpt[3], NULL, &c)); /* waiting: taken, nothing closed */
  assert_int_equal(kept_count(f->kept), 0);
  assert_string_equal(c->path, f->ckpt[3]);
  mp_engine_give(c), mp_engine_give(a), mp_engine_give(b);
  assert_int_equal(kept_count(f->kept), 3);
  assert_string_equal(mp_engine_kept(f->kept, 0)->path, f->ckpt[3]);
  assert_string_equal(mp_engine_kept(f->kept, 1)->path, f->ckpt[0]);
  assert_string_equal(mp_engine_kept(f->kept, 2)->path, f->ckpt[1]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_second_job_reuses_the_engine),
      cmocka_unit_test(test_changed_checkpoint_is_reopened),
      cmocka_unit_test(test_at_most_three_wait),
      cmocka_unit_test(test_engines_alive_stay_bounded),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
