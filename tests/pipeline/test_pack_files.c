/* Packed bf16 weights kept on disk (pipeline/pack_files.h): a checkpoint inside the models folder gets
 * its packs under <models>/.cache/packs; a second engine maps them (no file rewritten) and computes
 * bit for bit what a cold pack and the in-memory path (--no-cache) compute; damaged, truncated and
 * foreign records are warned about, rebuilt, and change nothing in the result; a checkpoint whose
 * modification time changed gets a new pack folder, and its old one is removed. */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/context.h"
#include "pipeline/engine.h"
#include "pipeline/pack_files.h"
#include "pack_listing.h"
#include "testutil.h"

enum { LAT = 8, N_CTX = 8, N = 2 * 4 * LAT * LAT };

typedef struct {
  char models[1024], ckpt[1100], packs[1100];
  float x[N], cond[2 * N_CTX * 32];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char *tmp = test_tmpdir();
  snprintf(f->models, sizeof f->models, "%.900s/models", tmp);
  snprintf(f->packs, sizeof f->packs, "%.1000s/.cache/packs", f->models);
  char dir[1100];
  snprintf(dir, sizeof dir, "%.1000s/checkpoints", f->models);
  assert_int_equal(mkdir(f->models, 0755), 0);
  assert_int_equal(mkdir(dir, 0755), 0);
  snprintf(f->ckpt, sizeof f->ckpt, "%.1000s/tiny.safetensors", dir);
  free(tmp);
  char *src = test_shared_path("golden/tiny/tiny.safetensors");
  void *mem;
  size_t size;
  assert_ok(mp_map_file(src, &mem, &size));
  test_write_file(f->ckpt, mem, size);
  mp_unmap_file(mem, size);
  free(src);
  src = test_shared_path("golden/tiny/tiny.json"); /* its config, found beside it */
  assert_ok(mp_map_file(src, &mem, &size));
  char cfg[1200];
  snprintf(cfg, sizeof cfg, "%.1100s/tiny.json", dir);
  test_write_file(cfg, mem, size);
  mp_unmap_file(mem, size);
  free(src);
  for (size_t i = 0; i < N; i++) f->x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  for (size_t i = 0; i < sizeof f->cond / sizeof *f->cond; i++) f->cond[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  free(*state);
  return 0;
}

static void eval(fixture *f, int no_cache, test_warnings *w, float *eps) {
  pack_eval(f->models, f->ckpt, LAT, f->x, f->cond, N_CTX, no_cache, w, eps);
}

typedef pack_listing listing;

static void list(fixture *f, listing *l) { pack_list(f->packs, l); }

static const char *record(const listing *l, int i, char *buf) {
  snprintf(buf, 1400, "%.1200s/%.63s", l->dir, l->name[i]);
  return buf;
}

static bool skip_without_bf16(void) {
  if (*mp_cpu_bf16_support()) return false;
  print_message("no native bf16 on this CPU: the pack cache serves the bf16 backend\n");
  return true;
}

static void test_warm_load_maps_the_same_packs(void **state) {
  if (skip_without_bf16()) skip();
  fixture *f = *state;
  float ref[N], cold[N], warm[N];
  test_warnings w = {0};
  listing before, after;
  eval(f, 1, &w, ref); /* --no-cache: packs in memory, nothing on disk */
  list(f, &before);
  assert_int_equal(before.n_dirs, 0);
  eval(f, 0, &w, cold);
  assert_memory_equal(cold, ref, sizeof ref);
  list(f, &before);
  assert_int_equal(before.n_dirs, 1);
  assert_true(before.n > 20); /* the UNet's convolutions and linear layers */
  eval(f, 0, &w, warm);
  assert_memory_equal(warm, ref, sizeof ref);
  list(f, &after);
  assert_int_equal(after.n, before.n);
  for (int i = 0; i < before.n; i++) { /* mapped, not packed and saved again */
    assert_string_equal(after.name[i], before.name[i]);
    assert_int_equal(after.ino[i], before.ino[i]);
  }
  assert_int_equal(w.n, 0);
}

static void test_damaged_records_are_rebuilt(void **state) {
  if (skip_without_bf16()) skip();
  fixture *f = *state;
  float ref[N], out[N];
  test_warnings w = {0};
  listing l;
  eval(f, 0, &w, ref);
  list(f, &l);
  assert_true(l.n > 6);
  char p[1400], q[1400];
  assert_int_equal(truncate(record(&l, 0, p), 5000), 0);
  int fd = open(record(&l, 1, p), O_RDWR);
  assert_true(fd >= 0);
  struct stat st;
  assert_int_equal(fstat(fd, &st), 0);
  unsigned char b;
  assert_int_equal(pread(fd, &b, 1, st.st_size - 1), 1);
  b ^= 0x10;
  assert_int_equal(pwrite(fd, &b, 1, st.st_size - 1), 1); /* one payload bit */
  close(fd);
  assert_int_equal(rename(record(&l, 2, p), record(&l, 3, q)), 0); /* a foreign record (2 is now missing) */
  test_write_file(record(&l, 4, p), "not a pack", 10);
  fd = open(record(&l, 5, p), O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(pwrite(fd, "JUNK", 4, 0), 4);
  close(fd);
  eval(f, 0, &w, out);
  assert_memory_equal(out, ref, sizeof ref);
  assert_int_equal(w.n, 5); /* 0 truncated, 1 payload bit, 3 foreign, 4 garbage, 5 bad magic; 2 a silent miss */
  listing again;
  list(f, &again);
  assert_int_equal(again.n, l.n); /* every record is back */
  w.n = 0;
  eval(f, 0, &w, out);
  assert_memory_equal(out, ref, sizeof ref);
  assert_int_equal(w.n, 0);
}

static void test_changed_checkpoint_misses(void **state) {
  if (skip_without_bf16()) skip();
  fixture *f = *state;
  float ref[N], out[N];
  test_warnings w = {0};
  listing l;
  eval(f, 0, &w, ref);
  list(f, &l);
  assert_int_equal(l.n_dirs, 1);
  struct timespec ts[2] = {{0, UTIME_OMIT}, {1700000000, 123}}; /* same bytes, another mtime */
  assert_int_equal(utimensat(AT_FDCWD, f->ckpt, ts, 0), 0);
  char old_dir[1200], keep[1200], gone[1200], note[1300], text[1300], other[1200];
  snprintf(old_dir, sizeof old_dir, "%s", l.dir);
  snprintf(other, sizeof other, "%.1100s/checkpoints/tiny.json", f->models); /* stands in for another checkpoint */
  char real[PATH_MAX];
  assert_non_null(realpath(other, real));
  snprintf(keep, sizeof keep, "%.900s/other-0123456789abcdef", f->packs); /* another checkpoint's folder */
  assert_int_equal(mkdir(keep, 0755), 0);
  snprintf(note, sizeof note, "%.1200s/source", keep);
  int n = snprintf(text, sizeof text, "%.1200s\n", real);
  test_write_file(note, text, (size_t)n);
  snprintf(gone, sizeof gone, "%.900s/deleted-0123456789abcdef", f->packs); /* a deleted checkpoint's folder */
  assert_int_equal(mkdir(gone, 0755), 0);
  snprintf(note, sizeof note, "%.1200s/source", gone);
  test_write_file(note, "/elsewhere/deleted.safetensors\n", 31);
  eval(f, 0, &w, out);
  assert_memory_equal(out, ref, sizeof ref);
  list(f, &l);
  /* a new identity: packed again into its own folder; the replaced file's folder and the deleted
   * file's are gone, another existing checkpoint's stays */
  assert_int_equal(l.n_dirs, 2);
  struct stat st;
  assert_int_equal(stat(old_dir, &st), -1);
  assert_int_equal(stat(gone, &st), -1);
  assert_int_equal(stat(keep, &st), 0);
  assert_int_equal(w.n, 0);
}

static void test_identity(void **state) {
  fixture *f = *state;
  mp_weights *wts;
  char a[65], b[65];
  assert_ok(mp_weights_open(f->ckpt, &wts));
  assert_ok(mp_checkpoint_identity(wts, a));
  assert_ok(mp_checkpoint_identity(wts, b));
  assert_string_equal(a, b);
  mp_weights_close(wts);
  /* one byte of tensor data (in the hashed tail), with size and mtime kept */
  struct stat st;
  assert_int_equal(stat(f->ckpt, &st), 0);
  int fd = open(f->ckpt, O_RDWR);
  unsigned char c;
  assert_int_equal(pread(fd, &c, 1, st.st_size - 1), 1);
  c ^= 1;
  assert_int_equal(pwrite(fd, &c, 1, st.st_size - 1), 1);
  close(fd);
  struct timespec ts[2] = {st.st_atim, st.st_mtim};
  assert_int_equal(utimensat(AT_FDCWD, f->ckpt, ts, 0), 0);
  assert_ok(mp_weights_open(f->ckpt, &wts));
  assert_ok(mp_checkpoint_identity(wts, b));
  assert_string_not_equal(a, b);
  mp_weights_close(wts);
  /* where the packs go: inside the models folder, else the user's cache folder */
  mpass_options o = {.n_threads = 1, .models_dir = f->models};
  mpass_ctx *ctx;
  assert_ok(mpass_ctx_create(&o, &ctx));
  char root[4096];
  assert_true(mp_pack_root(ctx, f->ckpt, root, sizeof root));
  assert_string_equal(root, f->packs);
  char *outside = test_shared_path("golden/tiny/tiny.safetensors");
  setenv("XDG_CACHE_HOME", "/some/cache", 1);
  assert_true(mp_pack_root(ctx, outside, root, sizeof root));
  assert_string_equal(root, "/some/cache/mpass/packs");
  unsetenv("XDG_CACHE_HOME");
  free(outside);
  mpass_ctx_destroy(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_warm_load_maps_the_same_packs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_records_are_rebuilt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_changed_checkpoint_misses, setup, teardown),
      cmocka_unit_test_setup_teardown(test_identity, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
