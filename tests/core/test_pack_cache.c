/* The backend's pack cache: only pinned memory is cached, an entry needs its weight and bias pinned,
 * releasing an owner drops its entries (so a reused address never finds an old pack). */
#include <stdlib.h>
#include <string.h>

#include "core/pack_cache.h"
#include "testutil.h"

static void test_only_pinned_memory_is_cached(void **state) {
  (void)state;
  mp_pack_cache *c;
  assert_ok(mp_pack_cache_create(&c));
  static float base[4][16], other[16];
  const void *pins[3] = {base[0], base[1], base[2]};
  int owner;
  assert_ok(mp_pack_cache_pin(c, &owner, pins, 3));
  assert_err_contains(mp_pack_cache_pin(c, &owner, pins, 3), "already pinned");

  struct mp_packed_weight *pw = NULL, *again = NULL;
  assert_ok(mp_pack_cache_entry(c, base[1], base[2], &pw));
  assert_non_null(pw);
  assert_ptr_equal(pw->w, base[1]);
  assert_ptr_equal(pw->b, base[2]);
  assert_null(pw->mm);
  assert_null(pw->conv);
  assert_ok(mp_pack_cache_entry(c, base[1], base[2], &again));
  assert_ptr_equal(pw, again);
  assert_ok(mp_pack_cache_entry(c, base[0], NULL, &pw)); /* no bias */
  assert_non_null(pw);
  assert_ptr_equal(pw->w, base[0]);

  assert_ok(mp_pack_cache_entry(c, other, NULL, &pw)); /* e.g. a LoRA-patched tensor */
  assert_null(pw);
  assert_ok(mp_pack_cache_entry(c, base[1], other, &pw)); /* pinned weight, unpinned bias */
  assert_null(pw);
  assert_ok(mp_pack_cache_entry(c, base[3], NULL, &pw)); /* inside the base's memory but not a pinned tensor */
  assert_null(pw);
  assert_int_equal(mp_pack_cache_count(c), 0); /* entries without a pack are not counted */
  mp_pack_cache_free(c);
}

static void test_release_drops_the_owners_entries(void **state) {
  (void)state;
  mp_pack_cache *c;
  assert_ok(mp_pack_cache_create(&c));
  static float a[2][8], b[8];
  int owner_a, owner_b;
  const void *pa[2] = {a[0], a[1]}, *pb[1] = {b};
  assert_ok(mp_pack_cache_pin(c, &owner_a, pa, 2));
  assert_ok(mp_pack_cache_pin(c, &owner_b, pb, 1));
  struct mp_packed_weight *pw;
  assert_ok(mp_pack_cache_entry(c, a[0], NULL, &pw));
  assert_non_null(pw);
  assert_ok(mp_pack_cache_entry(c, b, a[1], &pw)); /* weight pinned by b, bias by a */
  assert_non_null(pw);
  assert_ok(mp_pack_cache_entry(c, b, NULL, &pw));
  assert_non_null(pw);

  mp_pack_cache_release(c, &owner_a);
  /* a's memory is no longer pinned: it may be freed and reused, so nothing is found or created */
  assert_ok(mp_pack_cache_entry(c, a[0], NULL, &pw));
  assert_null(pw);
  assert_ok(mp_pack_cache_entry(c, b, a[1], &pw));
  assert_null(pw);
  assert_ok(mp_pack_cache_entry(c, b, NULL, &pw)); /* b's own entry survives */
  assert_non_null(pw);
  mp_pack_cache_release(c, &owner_a); /* twice: no-op */
  mp_pack_cache_release(c, &owner_b);
  assert_ok(mp_pack_cache_entry(c, b, NULL, &pw));
  assert_null(pw);
  /* the same owner may pin again after releasing (an engine reopened at the same address) */
  assert_ok(mp_pack_cache_pin(c, &owner_a, pa, 2));
  assert_ok(mp_pack_cache_entry(c, a[1], NULL, &pw));
  assert_non_null(pw);
  mp_pack_cache_free(c);
  mp_pack_cache_release(NULL, &owner_a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_only_pinned_memory_is_cached),
      cmocka_unit_test(test_release_drops_the_owners_entries),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
