/* mp_weights_drop_pages: the pages of a tensor in the read-only file mapping go back to the kernel
 * (the resident file memory falls) and read back unchanged; copies and merged (owned) tensors are
 * never touched; an overlay that views its base knows the base's mapping. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tensor.h"
#include "io/weights.h"
#include "testutil.h"

#define N_BIG (4 * 1024 * 1024) /* 8 MB of f16 */

/* RssFile of this process in kB (the file pages mapped and resident). */
static long rss_file_kb(void) {
  FILE *f = fopen("/proc/self/status", "r");
  assert_non_null(f);
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "RssFile: %ld kB", &kb) == 1) break;
  fclose(f);
  assert_true(kb >= 0);
  return kb;
}

static uint16_t value_at(size_t i) { return (uint16_t)(0x3c00u + (i * 2654435761u >> 20) % 0x300u); }

static unsigned long checksum(const uint16_t *d, size_t n) {
  unsigned long s = 0;
  for (size_t i = 0; i < n; i++) s = s * 31u + d[i];
  return s;
}

/* A safetensors file with one big f16 tensor "big" and a small one "small". */
static char *write_model(void) {
  char *dir = test_tmpdir();
  char *path = malloc(strlen(dir) + 32);
  sprintf(path, "%s/pages.safetensors", dir);
  free(dir);
  uint16_t *big = malloc((size_t)N_BIG * 2), small[8] = {0};
  assert_non_null(big);
  for (size_t i = 0; i < N_BIG; i++) big[i] = value_at(i);
  mp_tensor t[2];
  mp_tensor_view(&t[0], MP_F16, 1, (int64_t[]){N_BIG}, big);
  mp_tensor_view(&t[1], MP_F16, 1, (int64_t[]){8}, small);
  const char *names[2] = {"big", "small"};
  assert_ok(mp_safetensors_write(path, 2, names, t, NULL));
  free(big);
  return path;
}

static void test_mapped_tensor_pages_dropped_and_read_back(void **state) {
  (void)state;
  char *path = write_model();
  mp_weights *w;
  assert_ok(mp_weights_open(path, &w));
  const mp_weight *big = mp_weights_find(w, "big");
  assert_non_null(big);
  const uint16_t *d = big->t.data;
  unsigned long want = 0;
  {
    uint16_t *ref = malloc((size_t)N_BIG * 2);
    for (size_t i = 0; i < N_BIG; i++) ref[i] = value_at(i);
    want = checksum(ref, N_BIG);
    free(ref);
  }
  assert_true(checksum(d, N_BIG) == want); /* every page touched: resident */
  long before = rss_file_kb();
  assert_true(mp_weights_drop_pages(w, d, mp_tensor_nbytes(&big->t)));
  long after = rss_file_kb();
  /* 8 MB = 8192 kB mapped from the file; at least most of it must have left the RSS */
  assert_true(before - after >= 6 * 1024);
  assert_true(checksum(d, N_BIG) == want); /* read back from the page cache, unchanged */

  /* a range that is not whole pages drops nothing and says so */
  const mp_weight *small = mp_weights_find(w, "small");
  assert_false(mp_weights_drop_pages(w, small->t.data, mp_tensor_nbytes(&small->t)));
  /* memory outside the mapping is refused */
  uint16_t *heap = malloc((size_t)N_BIG * 2);
  for (size_t i = 0; i < N_BIG; i++) heap[i] = value_at(i);
  assert_false(mp_weights_drop_pages(w, heap, (size_t)N_BIG * 2));
  assert_true(checksum(heap, N_BIG) == want);
  free(heap);
  mp_weights_close(w);
  remove(path);
  free(path);
}

static void test_overlay_views_and_owned_copies(void **state) {
  (void)state;
  char *path = write_model();
  mp_weights *base;
  assert_ok(mp_weights_open(path, &base));
  const mp_weight *big = mp_weights_find(base, "big");
  const size_t bytes = mp_tensor_nbytes(&big->t);
  unsigned long want = checksum(big->t.data, N_BIG);

  /* an overlay: "big" a view of the base, "merged" its own copy (as a LoRA overlay holds them) */
  mp_weights *ov = mp_weights_new(path);
  assert_non_null(ov);
  assert_ok(mp_weights_add(ov, "big", MP_F16, 1, (int64_t[]){N_BIG}, big->t.data));
  uint16_t *merged = mp_alloc(bytes);
  memcpy(merged, big->t.data, bytes);
  assert_ok(mp_weights_add_owned(ov, "merged", MP_F16, 1, (int64_t[]){N_BIG}, merged));
  assert_ok(mp_weights_finish(ov));
  const void *view = mp_weights_find(ov, "big")->t.data, *copy = mp_weights_find(ov, "merged")->t.data;

  /* without knowing its base, the overlay cannot tell the view is file-backed: it leaves it */
  assert_false(mp_weights_drop_pages(ov, view, bytes));
  mp_weights_set_viewed(ov, base);
  assert_true(mp_weights_drop_pages(ov, view, bytes));
  assert_true(checksum(view, N_BIG) == want);
  /* an owned copy is never dropped (MADV_DONTNEED would zero anonymous memory) */
  assert_false(mp_weights_drop_pages(ov, copy, bytes));
  assert_true(checksum(copy, N_BIG) == want);
  assert_false(mp_weights_drop_pages(NULL, view, bytes));

  mp_weights_close(ov);
  mp_weights_close(base);
  remove(path);
  free(path);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mapped_tensor_pages_dropped_and_read_back),
      cmocka_unit_test(test_overlay_views_and_owned_copies),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
