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

/* OpenBLAS's kernel set (the f32 path's sgemm), e.g. "Cooperlake", into out; where OPENBLAS_CORETYPE holds
 * an AVX-512 CPU to a set without AVX-512 it says so: some environments set OPENBLAS_CORETYPE=Haswell for
 * every program, which on an AMD Zen 5 made mpass's f32 products about 1.4x slower (bench/RESULTS.md). mpass
 * leaves the variable as it finds it (a user's choice); `mpass --version` and `mpass bench` print this. */
void mp_openblas_describe(char *out, size_t cap);

/* oneDNN's implementation names for a bf16 matmul (4096x320 · 320x320, f32 out) and a bf16 3x3
 * convolution (320 -> 320 channels, 64x64, batch 2), e.g. "brg:avx512_core_amx" and
 * "brgconv:avx512_core_amx", on a CPU engine of its own. */
mp_error *mp_bf16_kernel_names(char *matmul, size_t matmul_cap, char *conv, size_t conv_cap);

#endif
