/* A run with oneDNN's ISA capped below AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, or dnnl_set_max_cpu_isa
 * as here) takes the path of a CPU without AMX (AMD Zen 4/5) in mpass's own kernels too: the attention
 * chooses its AVX512_BF16 kernel. That is how CI's conform_sd15_bf16_avx512 tests the Zen path on an
 * Intel CPU with AMX. Its own process: oneDNN fixes the cap at its first use. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <oneapi/dnnl/dnnl.h>

#include "core/attention_bf16.h"
#include "core/cpu_kernels.h"
#include "core/matmul.h"
#include "core/threads.h"

static void capped_isa_means_no_amx_kernels(void **state) {
  (void)state;
  if (!mp_cpu_avx512_bf16()) skip(); /* no AVX512_BF16: the cap changes nothing to check */
  assert_int_equal(dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx512_core_bf16), dnnl_success);
  mp_backend *b;
  mp_pool *pool;
  mp_error *e = mp_backend_create(MP_PRECISION_BF16, 1, &b);
  if (e) fail_msg("%s", mp_error_message(e));
  e = mp_pool_create(1, &pool);
  if (e) fail_msg("%s", mp_error_message(e));
  mp_pool_set_backend(pool, b);
  assert_false(mp_backend_cpu_amx(b));
  assert_int_equal(mp_attention_kernel_for(pool, false), MP_ATTENTION_AVX512_BF16);
  mp_pool_destroy(pool);
  mp_backend_destroy(b);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(capped_isa_means_no_amx_kernels)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
