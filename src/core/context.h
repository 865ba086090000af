/* The library context: the one owner of threads and of shared, lazily loaded resources. */
#ifndef MP_CORE_CONTEXT_H
#define MP_CORE_CONTEXT_H

#include "core/matmul.h"
#include "core/threads.h"
#include "mpass/mpass.h"

struct mpass_ctx {
  mp_pool *pool;
  int n_threads;
  char *models_dir;
  char *data_dir; /* may be NULL */
  mp_backend *backend; /* bf16: attached to pool; f32: NULL (the f32 operators need none) */
  mp_precision precision; /* resolved: F32 or BF16 */
};

#endif
