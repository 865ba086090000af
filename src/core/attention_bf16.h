/* Attention for the reduced-precision (bf16) path: QKᵀ and P·V as bf16 dot products with f32
 * accumulation (AVX-512 BF16 `vdpbf16ps`), softmax in f32 with the online (flash) recurrence.
 *
 * Same contract as mp_attention (core/ops.h): q [nq, heads*hd], k/v [nk, heads*hd] token-major
 * with heads interleaved, out [nq, heads*hd]. K and V are rounded to bf16 and packed per head once
 * per call; each task (a head and a block of query rows) walks the keys in blocks small enough that
 * the score tile, the key block and the value block stay in the core's caches.
 *
 * Two kernels: on AMX tiles (tdpbf16ps, attention_bf16.c) where the CPU has AMX, else on
 * vdpbf16ps with the vector lanes over queries (attention_avx512_bf16.c). The kernels are compiled with function-level target attributes and chosen at run time from cpuid,
 * so a portable build (-DMPASS_NATIVE=OFF) still carries it; where the CPU lacks AVX512_BF16, where
 * the backend is f32, or for causal masks (the text encoders, always f32) the f32 mp_attention runs. */
#ifndef MP_CORE_ATTENTION_BF16_H
#define MP_CORE_ATTENTION_BF16_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threads.h"

typedef enum {
  MP_ATTENTION_F32,         /* mp_attention: f32 blocked products on OpenBLAS */
  MP_ATTENTION_AVX512_BF16, /* bf16 products on vdpbf16ps, f32 softmax and accumulation */
  MP_ATTENTION_AMX_BF16,    /* the same with the products on AMX tiles (tdpbf16ps) */
} mp_attention_kernel;

/* The choice itself, pure so tests can check every case: bf16 only for a bf16 backend, a CPU that
 * has AVX512_BF16, and no causal mask; AMX where the CPU has it too. */
mp_attention_kernel mp_attention_choose(bool bf16_backend, bool cpu_avx512_bf16, bool cpu_amx_bf16, bool causal);
const char *mp_attention_kernel_name(mp_attention_kernel k);

/* Runs kernel `k`; a kernel the CPU lacks steps down (AMX -> AVX-512 BF16 -> f32), as does causal
 * (-> f32): never an illegal instruction. */
void mp_attention_with(mp_attention_kernel k, mp_pool *pool, float *out, const float *q, const float *kmat,
                       const float *v, int64_t nq, int64_t nk, int heads, int head_dim, bool causal);

/* The kernel for the pool's backend precision (core/threads.h: mp_pool_backend) and this CPU: what
 * the UNet calls. */
mp_attention_kernel mp_attention_kernel_for(const mp_pool *pool, bool causal);
void mp_attention_auto(mp_pool *pool, float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                       int heads, int head_dim, bool causal);

#endif
