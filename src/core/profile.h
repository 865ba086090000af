/* Where a model's forward spends its time, by op class: an opt-in profile (`mpass bench --profile`).
 *
 * The counters live in an mp_profile that its owner (the bench) attaches to the thread pool the models
 * run on (mp_pool_set_profile); an operator times itself only while one is attached, so with none the
 * cost is one pointer test per operator call. Only the outermost timed operator counts: one that runs
 * another (a convolution through a matmul) is not counted twice. The operators are called from one
 * thread (they parallelise inside), so the counters need no locking.
 *
 * Timed operator entry points (a new operator on a model's path adds the same two calls):
 *   conv 3x3    mp_conv2d with a kernel larger than 1x1 (incl. the strided downsampling)
 *   dense/1x1   mp_dense, and mp_conv2d with a 1x1 kernel
 *   attention   softmax(QKᵀ)V of the UNet's attention blocks (the projections count as dense)
 *   norms       mp_group_norm (with its fused SiLU), mp_layer_norm
 *   other       everything else in the measured span: adds, transposes, GEGLU, up-sampling, sampler */
#ifndef MP_CORE_PROFILE_H
#define MP_CORE_PROFILE_H

#include <stdint.h>
#include <stdio.h>

#include "core/clock.h"
#include "core/threads.h"

typedef enum { MP_OP_CONV3X3, MP_OP_DENSE, MP_OP_ATTENTION, MP_OP_NORM, MP_OP_CLASSES } mp_op_class;

typedef struct mp_profile {
  double seconds[MP_OP_CLASSES];
  int64_t calls[MP_OP_CLASSES];
  int depth;      /* timed operators open right now (nesting) */
  double started; /* when the outermost one began */
} mp_profile;

/* "conv 3x3", "dense/1x1", "attention", "norms" */
const char *mp_op_class_name(mp_op_class c);
/* Zero the counters (between a warm-up step and the measured ones). */
void mp_profile_reset(mp_profile *p);

/* Around one operator; p may be NULL (no profile attached), then they do nothing. */
static inline void mp_profile_begin(mp_profile *p) {
  if (p && p->depth++ == 0) p->started = mp_now();
}
static inline void mp_profile_end(mp_profile *p, mp_op_class c) {
  if (p && --p->depth == 0) {
    p->seconds[c] += mp_now() - p->started;
    p->calls[c]++;
  }
}

/* The profile attached to a pool (NULL: none, or pool NULL); the pool does not own it. */
void mp_pool_set_profile(mp_pool *pool, mp_profile *profile);
mp_profile *mp_pool_profile(const mp_pool *pool);

/* The table: per class seconds per step, % of the step, calls per step; "other" is the rest of
 * `span_seconds` (the wall time of the measured span: n_steps units called `unit`, e.g. "step"). */
void mp_profile_print(const mp_profile *p, FILE *out, double span_seconds, int n_steps, const char *unit);

#endif
