#include "core/cpu_kernels.h"

#include <cblas.h>
#include <cpuid.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

enum {
  XFEATURE_XTILECFG = 17,
  XFEATURE_XTILEDATA = 18,
  ARCH_GET_XCOMP_PERM = 0x1022, /* Linux asm/prctl.h, not in every libc's headers */
  ARCH_REQ_XCOMP_PERM = 0x1023,
};

static uint64_t xcr0(void) {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return ((uint64_t)hi << 32) | lo;
}

/* cpuid leaf 7 says every AVX-512 feature in `ebx_bits` (its EBX) and the OS saves the zmm state */
static bool cpu_avx512(unsigned ebx_bits) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false; /* OSXSAVE: xgetbv is there */
  if ((xcr0() & 0xe6) != 0xe6) return false; /* the OS saves SSE, AVX and all three AVX-512 states */
  return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & ebx_bits) == ebx_bits;
}

enum { AVX512F = 1u << 16, AVX512DQ = 1u << 17, AVX512CD = 1u << 28, AVX512BW = 1u << 30, AVX512VL = 1u << 31 };

bool mp_cpu_avx512_bf16(void) {
  unsigned a, b, c, d;
  if (!cpu_avx512(AVX512F | AVX512BW | AVX512VL)) return false;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || a < 1 || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a & (1u << 5)) != 0; /* AVX512_BF16 */
}

void mp_openblas_describe(char *out, size_t cap) {
  const char *core = openblas_get_corename(), *forced = getenv("OPENBLAS_CORETYPE");
  static const char *const avx512_sets[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
  bool avx512_set = false;
  for (size_t i = 0; i < sizeof avx512_sets / sizeof *avx512_sets; i++) avx512_set |= core && !strcasecmp(core, avx512_sets[i]);
  /* the subsets OpenBLAS's SkylakeX kernels need */
  if (forced && *forced && !avx512_set && cpu_avx512(AVX512F | AVX512DQ | AVX512CD | AVX512BW | AVX512VL))
    snprintf(out, cap, "%s, held there by OPENBLAS_CORETYPE=%s on a CPU with AVX-512: unset it for OpenBLAS's AVX-512 kernels",
             core ? core : "unknown", forced);
  else
    snprintf(out, cap, "%s", core ? core : "unknown");
}

bool mp_cpu_amx_usable(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false; /* OSXSAVE: xgetbv is there */
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 22)) || !(d & (1u << 24))) return false; /* AMX-BF16, AMX-TILE */
  const uint64_t tiles = (1ull << XFEATURE_XTILECFG) | (1ull << XFEATURE_XTILEDATA);
  if ((xcr0() & tiles) != tiles) return false;
#ifdef __linux__
  /* Since Linux 5.16 a process must ask for the tile data state before using it; a kernel that is older
   * (or refuses) leaves oneDNN on its AVX-512 kernels. */
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return false;
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &granted) != 0) return false;
  return (granted & (1ul << XFEATURE_XTILEDATA)) != 0;
#else
  return true;
#endif
}

static mp_error *ck(dnnl_status_t s, const char *what) {
  return s == dnnl_success ? NULL : mp_errorf("oneDNN %s failed (status %d)", what, (int)s);
}

static mp_error *impl_name(dnnl_primitive_desc_t pd, char *out, size_t cap) {
  const char *name = NULL;
  mp_error *e = ck(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &name), "implementation query");
  if (!e) snprintf(out, cap, "%s", name ? name : "?");
  dnnl_primitive_desc_destroy(pd);
  return e;
}

static mp_error *matmul_name(dnnl_engine_t eng, char *out, size_t cap) {
  const dnnl_dim_t M = 4096, K = 320, N = 320;
  dnnl_memory_desc_t src, wei, dst;
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&src, 2, (dnnl_dims_t){M, K}, dnnl_bf16, dnnl_ab), "matmul src desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&wei, 2, (dnnl_dims_t){K, N}, dnnl_bf16, dnnl_format_tag_any), "matmul weights desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&dst, 2, (dnnl_dims_t){M, N}, dnnl_f32, dnnl_ab), "matmul dst desc"));
  dnnl_matmul_desc_t md;
  MP_TRY(ck(dnnl_matmul_desc_init(&md, &src, &wei, NULL, &dst), "matmul desc"));
  dnnl_primitive_desc_t pd;
  MP_TRY(ck(dnnl_primitive_desc_create(&pd, &md, NULL, eng, NULL), "matmul primitive desc"));
  return impl_name(pd, out, cap);
}

static mp_error *conv_name(dnnl_engine_t eng, char *out, size_t cap) {
  dnnl_memory_desc_t src, wei, dst;
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&src, 4, (dnnl_dims_t){2, 320, 64, 64}, dnnl_bf16, dnnl_format_tag_any), "conv src desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&wei, 4, (dnnl_dims_t){320, 320, 3, 3}, dnnl_bf16, dnnl_format_tag_any), "conv weights desc"));
  MP_TRY(ck(dnnl_memory_desc_init_by_tag(&dst, 4, (dnnl_dims_t){2, 320, 64, 64}, dnnl_f32, dnnl_format_tag_any), "conv dst desc"));
  dnnl_convolution_desc_t cd;
  MP_TRY(ck(dnnl_convolution_forward_desc_init(&cd, dnnl_forward_inference, dnnl_convolution_direct, &src, &wei, NULL, &dst,
                                               (dnnl_dims_t){1, 1}, (dnnl_dims_t){1, 1}, (dnnl_dims_t){1, 1}),
            "conv desc"));
  dnnl_primitive_desc_t pd;
  MP_TRY(ck(dnnl_primitive_desc_create(&pd, &cd, NULL, eng, NULL), "conv primitive desc"));
  return impl_name(pd, out, cap);
}

mp_error *mp_bf16_kernel_names(char *matmul, size_t matmul_cap, char *conv, size_t conv_cap) {
  dnnl_engine_t eng = NULL;
  MP_TRY(ck(dnnl_engine_create(&eng, dnnl_cpu, 0), "engine creation"));
  mp_error *e = matmul_name(eng, matmul, matmul_cap);
  if (!e) e = conv_name(eng, conv, conv_cap);
  dnnl_engine_destroy(eng);
  return e;
}
