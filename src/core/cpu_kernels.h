/* Which oneDNN kernels the bf16 path runs on this CPU, and whether it could run AMX.
 *
 * oneDNN picks its kernels at run time from what the CPU reports (cpuid) and what the OS allows: on a
 * CPU with AMX-BF16 whose Linux kernel grants the tile data state (XTILEDATA) it takes its AMX kernels
 * (implementation names ending in "avx512_core_amx"); on one with AVX512_BF16 only (AMD Zen 4/5) the
 * "avx512_core_bf16" ones. These functions ask oneDNN which implementation it chose for the bf16
 * products mpass runs (a matmul as core/matmul.c makes them, a 3x3 convolution as core/conv_dnnl.c
 * does), so a test can hold the dispatch to what the CPU offers and `mpass --version` can say. */
#ifndef MP_CORE_CPU_KERNELS_H
#define MP_CORE_CPU_KERNELS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

/* cpuid says AMX-TILE and AMX-BF16, the OS has enabled the tile state in XCR0, and (Linux) the kernel
 * grants this process the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, which oneDNN requests as well). */
bool mp_cpu_amx_usable(void);
/* cpuid says AVX-512 F/BW/VL and AVX512_BF16 (vdpbf16ps), and the OS saves the zmm state. The one place
 * mpass asks cpuid about bf16 (the bf16 attention chooses its kernel with these two). */
bool mp_cpu_avx512_bf16(void);

/* oneDNN's implementation names for a bf16 matmul (4096x320 · 320x320, f32 out) and a bf16 3x3
 * convolution (320 -> 320 channels, 64x64, batch 2), e.g. "brg:avx512_core_amx" and
 * "brgconv:avx512_core_amx", on a CPU engine of its own. */
mp_error *mp_bf16_kernel_names(char *matmul, size_t matmul_cap, char *conv, size_t conv_cap);

#endif
