/* The AVX-512 BF16 attention kernel for CPUs without AMX (core/attention_bf16.h chooses it): the
 * contract of mp_attention (core/ops.h) for head dims up to 512, without causal masks. Returns
 * false (nothing written) when its buffers cannot be had or the head dim is larger; the caller
 * then runs the f32 kernel. Only call it where the CPU has AVX512_BF16. */
#ifndef MP_CORE_ATTENTION_AVX512_BF16_H
#define MP_CORE_ATTENTION_AVX512_BF16_H

#include <stdbool.h>
#include <stdint.h>

#include "core/threads.h"

bool mp_attention_avx512_bf16(mp_pool *pool, float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk,
                              int heads, int head_dim);

#endif
