/* Pages kept for reuse (core/tensor.h): an arena keeps its mapping while big enough; spare pages hand a
 * freed mapping to the next request of the same size, keep no more than their bound, and unmap on
 * release. And a large mp_alloc asks for huge pages. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/tensor.h"
#include "testutil.h"

enum { MB = 1 << 20 };

static void test_arena_keeps_its_mapping_while_big_enough(void **state) {
  (void)state;
  mp_page_arena a = {0};
  unsigned char *p = mp_page_arena_reserve(&a, 3 * MB);
  assert_non_null(p);
  memset(p, 7, 3 * MB); /* writable over the whole size */
  assert_ptr_equal(mp_page_arena_reserve(&a, 2 * MB), p);
  assert_ptr_equal(mp_page_arena_reserve(&a, 3 * MB), p);
  unsigned char *q = mp_page_arena_reserve(&a, 5 * MB);
  assert_non_null(q);
  assert_true(a.cap >= 5 * MB);
  memset(q, 1, 5 * MB);
  mp_page_arena_free(&a);
  assert_null(a.p);
  assert_int_equal(a.cap, 0);
  mp_page_arena_free(&a); /* twice is harmless */
}

static void test_spares_reuse_same_sizes_within_their_bound(void **state) {
  (void)state;
  mp_spare_pages *s = mp_spare_pages_create(4 * MB);
  assert_non_null(s);
  void *a = mp_spare_pages_take(s, 2 * MB), *b = mp_spare_pages_take(s, 1 * MB);
  assert_non_null(a);
  assert_non_null(b);
  memset(a, 1, 2 * MB), memset(b, 2, 1 * MB);
  mp_spare_pages_give(s, a, 2 * MB);
  mp_spare_pages_give(s, b, 1 * MB);
  assert_ptr_equal(mp_spare_pages_take(s, 1 * MB), b); /* by exact size */
  assert_ptr_equal(mp_spare_pages_take(s, 2 * MB), a);
  /* beyond the bound a mapping is unmapped, not kept: 2 + 2 MB fit, the third 2 MB does not */
  void *c = mp_spare_pages_take(s, 2 * MB);
  mp_spare_pages_give(s, a, 2 * MB);
  mp_spare_pages_give(s, c, 2 * MB);
  mp_spare_pages_give(s, b, 1 * MB);
  void *t1 = mp_spare_pages_take(s, 2 * MB), *t2 = mp_spare_pages_take(s, 2 * MB);
  assert_true((t1 == a && t2 == c) || (t1 == c && t2 == a));
  void *t3 = mp_spare_pages_take(s, 1 * MB); /* b was not kept: a new mapping, usable */
  assert_non_null(t3);
  memset(t3, 3, 1 * MB);
  mp_spare_pages_give(s, t1, 2 * MB);
  mp_spare_pages_give(s, t2, 2 * MB);
  mp_spare_pages_release(s); /* all unmapped: the next take maps anew */
  void *t4 = mp_spare_pages_take(s, 2 * MB);
  assert_non_null(t4);
  memset(t4, 4, 2 * MB);
  mp_spare_pages_give(s, t3, 1 * MB);
  mp_spare_pages_give(s, t4, 2 * MB);
  mp_spare_pages_free(s); /* unmaps what it keeps */
  mp_spare_pages_free(NULL);
  void *lone = mp_spare_pages_take(NULL, 1 * MB); /* no spares: a new mapping, unmapped when given */
  assert_non_null(lone);
  memset(lone, 5, 1 * MB);
  mp_spare_pages_give(NULL, lone, 1 * MB);
}

/* A model's packs may outlive its backend: mappings given back after the spares were freed are unmapped,
 * and the spares go with the last of them (ASan and LeakSanitizer check both). */
static void test_spares_freed_while_lent(void **state) {
  (void)state;
  mp_spare_pages *s = mp_spare_pages_create(8 * MB);
  void *kept = mp_spare_pages_take(s, 1 * MB), *a = mp_spare_pages_take(s, 2 * MB), *b = mp_spare_pages_take(s, 1 * MB);
  assert_non_null(kept), assert_non_null(a), assert_non_null(b);
  mp_spare_pages_give(s, kept, 1 * MB);
  mp_spare_pages_free(s); /* two still lent */
  memset(a, 1, 2 * MB), memset(b, 2, 1 * MB);
  mp_spare_pages_give(s, a, 2 * MB);
  mp_spare_pages_give(s, b, 1 * MB); /* the last: s goes */
}

/* The VmFlags of the mapping that holds address a, from /proc/self/smaps ("" when not found). */
static void vm_flags_at(uintptr_t a, char *flags, size_t cap) {
  flags[0] = 0;
  FILE *f = fopen("/proc/self/smaps", "r");
  assert_non_null(f);
  char line[512];
  int inside = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) inside = a >= lo && a < hi; /* a mapping's first line */
    else if (inside && strncmp(line, "VmFlags:", 8) == 0) {
      snprintf(flags, cap, "%s", line + 8);
      break;
    }
  }
  fclose(f);
}

static void test_large_alloc_asks_for_huge_pages(void **state) {
  (void)state;
  if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0) skip(); /* a kernel without THP */
  unsigned char *p = mp_alloc(16 * MB);
  assert_non_null(p);
  memset(p, 3, 16 * MB);
  char flags[512];
  vm_flags_at(((uintptr_t)p + 8 * MB) & ~(uintptr_t)(2 * MB - 1), flags, sizeof flags);
  assert_non_null(strstr(flags, " hg")); /* MADV_HUGEPAGE on its 2 MB-aligned inside */
  assert_int_equal(p[16 * MB - 1], 3);
  mp_free(p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_arena_keeps_its_mapping_while_big_enough),
      cmocka_unit_test(test_spares_reuse_same_sizes_within_their_bound),
      cmocka_unit_test(test_spares_freed_while_lent),
      cmocka_unit_test(test_large_alloc_asks_for_huge_pages),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
