/* The on-disk pack store: a saved record maps back byte for byte; a missing record is a silent miss;
 * damaged, truncated, foreign and garbage files are misses with a warning (never trusted, never a
 * crash), and saving again replaces them. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/pack_store.h"
#include "testutil.h"

enum { BYTES = 3 * 4096 + 100 };

typedef struct {
  char *dir;
  mp_pack_store *s;
  test_warnings w;
  unsigned char data[BYTES];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  char *tmp = test_tmpdir();
  size_t n = strlen(tmp) + 32;
  f->dir = malloc(n);
  snprintf(f->dir, n, "%s/packs/ckpt-1", tmp); /* not there yet: the first save makes it */
  free(tmp);
  assert_ok(mp_pack_store_open(f->dir, "checkpoint 1", test_collect_warning, &f->w, &f->s));
  for (size_t i = 0; i < BYTES; i++) f->data[i] = (unsigned char)(i * 131u + 7u);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_pack_store_close(f->s);
  free(f->dir);
  free(f);
  return 0;
}

static void save(fixture *f, const char *name) {
  mp_pack_map m;
  assert_true(mp_pack_store_save(f->s, "kind-a", name, "layout 1", f->data, BYTES, &m));
  assert_int_equal(m.payload_bytes, BYTES);
  assert_memory_equal(m.payload, f->data, BYTES);
  assert_int_equal((uintptr_t)m.payload % 4096, 0);
  mp_pack_map_release(&m);
}

static const char *path_of(fixture *f, const char *name, char *buf) {
  const char *p = mp_pack_store_record_path(f->s, "kind-a", name, "layout 1", buf, 4096);
  assert_non_null(p);
  return p;
}

static bool load(fixture *f, const char *name) {
  mp_pack_map m;
  bool hit = mp_pack_store_load(f->s, "kind-a", name, "layout 1", BYTES, &m);
  if (hit) {
    assert_memory_equal(m.payload, f->data, BYTES);
    mp_pack_map_drop_resident(&m); /* and the pages come back from the file */
    assert_memory_equal(m.payload, f->data, BYTES);
    mp_pack_map_release(&m);
  }
  return hit;
}

static void test_round_trip_and_misses(void **state) {
  fixture *f = *state;
  assert_false(load(f, "w")); /* nothing saved: a silent miss */
  assert_int_equal(f->w.n, 0);
  save(f, "w");
  assert_true(load(f, "w"));
  assert_int_equal(f->w.n, 0);
  mp_pack_map m;
  /* another size, kind, layout or checkpoint is another key: a miss, not this record */
  assert_false(mp_pack_store_load(f->s, "kind-a", "w", "layout 2", BYTES, &m));
  assert_false(mp_pack_store_load(f->s, "kind-b", "w", "layout 1", BYTES, &m));
  assert_false(mp_pack_store_load(f->s, "kind-a", "w", "layout 1", BYTES - 2, &m));
  assert_int_equal(f->w.n, 1); /* the wrong size names the same file: warned about, not trusted */
  mp_pack_store *other;
  assert_ok(mp_pack_store_open(f->dir, "checkpoint 2", NULL, NULL, &other));
  assert_false(mp_pack_store_load(other, "kind-a", "w", "layout 1", BYTES, &m));
  mp_pack_store_close(other);
  assert_err_contains(mp_pack_store_open(f->dir, "two\nlines", NULL, NULL, &other), "one line");
}

/* Overwrite n bytes at `at` of the file (at < 0: from the end). */
static void poke(const char *path, long at, const void *bytes, size_t n) {
  int fd = open(path, O_RDWR);
  assert_true(fd >= 0);
  if (at < 0) at += (long)lseek(fd, 0, SEEK_END);
  assert_int_equal(pwrite(fd, bytes, n, at), (ssize_t)n);
  close(fd);
}

static void expect_rejected(fixture *f, const char *name, const char *why) {
  int before = f->w.n;
  assert_false(load(f, name));
  assert_int_equal(f->w.n, before + 1);
  if (!strstr(f->w.last, why)) fail_msg("warning '%s' does not say '%s'", f->w.last, why);
  save(f, name); /* rebuilt: the new record replaces the bad file */
  assert_true(load(f, name));
  assert_int_equal(f->w.n, before + 1);
}

static void test_damaged_files_are_rejected_and_rebuilt(void **state) {
  fixture *f = *state;
  char p[4096];
  save(f, "w");
  const unsigned char flip = 0xff;
  poke(path_of(f, "w", p), -1, &flip, 1); /* last payload byte */
  expect_rejected(f, "w", "payload checksum");
  poke(path_of(f, "w", p), 70, &flip, 1); /* inside the key text */
  expect_rejected(f, "w", "header checksum");
  poke(path_of(f, "w", p), 0, "XXXX", 4);
  expect_rejected(f, "w", "bad magic");
  const uint32_t version = 99;
  poke(path_of(f, "w", p), 8, &version, 4);
  expect_rejected(f, "w", "version");
  const uint64_t huge = ~0ull;
  poke(path_of(f, "w", p), 16, &huge, 8); /* header size */
  expect_rejected(f, "w", "out of range");
  assert_int_equal(truncate(path_of(f, "w", p), 4096 + 10), 0);
  expect_rejected(f, "w", "truncated");
  assert_int_equal(truncate(path_of(f, "w", p), 10), 0);
  expect_rejected(f, "w", "truncated");
  assert_int_equal(truncate(path_of(f, "w", p), 0), 0);
  expect_rejected(f, "w", "truncated");
  /* foreign: another tensor's valid record under this one's name */
  save(f, "v");
  char pv[4096];
  assert_int_equal(rename(path_of(f, "v", pv), path_of(f, "w", p)), 0);
  expect_rejected(f, "w", "foreign");
  /* a FIFO where the file should be: rejected without blocking */
  assert_int_equal(unlink(path_of(f, "w", p)), 0);
  assert_int_equal(mkfifo(p, 0644), 0);
  assert_false(load(f, "w"));
  assert_int_equal(unlink(p), 0);
  save(f, "w");
  /* a directory where the file should be */
  assert_int_equal(unlink(path_of(f, "w", p)), 0);
  assert_int_equal(mkdir(p, 0755), 0);
  assert_false(load(f, "w"));
  assert_int_equal(rmdir(p), 0);
}

static void test_garbage_never_crashes(void **state) {
  fixture *f = *state;
  char p[4096];
  save(f, "w");
  unsigned char junk[8192 + 64];
  unsigned seed = 12345;
  for (int round = 0; round < 64; round++) {
    size_t n = (size_t)(seed % sizeof junk);
    for (size_t i = 0; i < n; i++) junk[i] = (unsigned char)((seed = seed * 1103515245u + 12345u) >> 16);
    if (round % 2 && n >= 8) memcpy(junk, "MPASSPK", 8); /* past the magic, into the fields */
    test_write_file(path_of(f, "w", p), junk, n);
    assert_false(load(f, "w"));
    seed = seed * 1103515245u + 12345u;
  }
  assert_int_equal(f->w.n, 64);
}

static void test_unwritable_folder_warns_once(void **state) {
  fixture *f = *state;
  mp_pack_store *s;
  test_warnings w = {0};
  assert_ok(mp_pack_store_open("/proc/no-such-folder/packs", "checkpoint 1", test_collect_warning, &w, &s));
  mp_pack_map m;
  assert_false(mp_pack_store_save(s, "kind-a", "w", "layout 1", f->data, BYTES, &m));
  assert_false(mp_pack_store_save(s, "kind-a", "v", "layout 1", f->data, BYTES, &m));
  assert_int_equal(w.n, 1);
  assert_non_null(strstr(w.last, "cannot save"));
  mp_pack_store_close(s);
}

static void test_sweep_removes_only_stale_temporaries(void **state) {
  fixture *f = *state;
  char p[4096], stale[4200], fresh[4200], other[4200];
  save(f, "w");
  path_of(f, "w", p);
  snprintf(stale, sizeof stale, "%s.4242.0.tmp", p);
  snprintf(fresh, sizeof fresh, "%s.4242.1.tmp", p);
  snprintf(other, sizeof other, "%s/notes.tmp", f->dir);
  test_write_file(stale, "x", 1);
  test_write_file(fresh, "x", 1);
  test_write_file(other, "x", 1);
  struct timespec old[2] = {{0, UTIME_OMIT}, {time(NULL) - 7200, 0}};
  assert_int_equal(utimensat(AT_FDCWD, stale, old, 0), 0);
  assert_int_equal(utimensat(AT_FDCWD, other, old, 0), 0);
  mp_pack_store_sweep(f->s);
  assert_int_equal(access(stale, F_OK), -1);
  assert_int_equal(access(fresh, F_OK), 0); /* may still be being written */
  assert_int_equal(access(other, F_OK), 0); /* not ours */
  assert_true(load(f, "w"));
}

static void test_hash64_sees_every_byte(void **state) {
  (void)state;
  unsigned char b[100] = {0};
  uint64_t h0 = mp_hash64(b, sizeof b, 1);
  for (size_t i = 0; i < sizeof b; i++) {
    b[i] ^= 1;
    assert_true(mp_hash64(b, sizeof b, 1) != h0);
    b[i] ^= 1;
  }
  assert_true(mp_hash64(b, 99, 1) != h0);
  assert_true(mp_hash64(b, sizeof b, 2) != h0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_round_trip_and_misses, setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_files_are_rejected_and_rebuilt, setup, teardown),
      cmocka_unit_test_setup_teardown(test_garbage_never_crashes, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unwritable_folder_warns_once, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sweep_removes_only_stale_temporaries, setup, teardown),
      cmocka_unit_test(test_hash64_sees_every_byte),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
