/* The bf16 path takes the best kernels the CPU offers (issue 12 item 7): oneDNN's AMX kernels where
 * cpuid reports AMX and the kernel grants the tile data (Intel Sapphire Rapids and later), its
 * AVX512_BF16 kernels where there is no AMX (AMD Zen 4/5). Asserted on whichever of the two this CPU
 * is; a CPU with neither has no native bf16 path to check (skipped, saying so). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "core/cpu_kernels.h"
#include "core/matmul.h"

static void bf16_kernels_follow_the_cpu(void **state) {
  (void)state;
  char mm[128], conv[128];
  mp_error *e = mp_bf16_kernel_names(mm, sizeof mm, conv, sizeof conv);
  if (e) fail_msg("%s", mp_error_message(e));
  const bool amx = mp_cpu_amx_usable(), bf16 = mp_cpu_avx512_bf16();
  printf("cpu: amx %s, avx512_bf16 %s; oneDNN bf16 matmul: %s, 3x3 conv: %s\n", amx ? "usable" : "no", bf16 ? "yes" : "no", mm,
         conv);
  if (amx) {
    assert_non_null(strstr(mm, "avx512_core_amx"));
    assert_non_null(strstr(conv, "avx512_core_amx"));
    assert_string_equal(mp_cpu_bf16_support(), "amx_bf16"); /* what `mpass --version` reports */
  } else if (bf16) {
    assert_null(strstr(mm, "amx"));
    assert_null(strstr(conv, "amx"));
    assert_non_null(strstr(mm, "avx512_core_bf16"));
    assert_non_null(strstr(conv, "avx512_core_bf16"));
  } else {
    skip(); /* no native bf16 at all: oneDNN emulates it, nothing to hold the dispatch to */
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(bf16_kernels_follow_the_cpu)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
