/* The library context: the one owner of threads and of shared, lazily loaded resources. */
#ifndef MP_CORE_CONTEXT_H
#define MP_CORE_CONTEXT_H

#include <stdbool.h>

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
  bool no_pack_cache;     /* --no-cache / MPASS_NO_CACHE: packed weights are not kept on disk */
  /* mpass_options.keep_models: engines kept between jobs (pipeline/engine.h owns what is kept and sets
   * drop_kept, which mpass_ctx_destroy calls before the backend goes) */
  bool keep_models;
  struct mp_engine_keep *kept;
  void (*drop_kept)(struct mpass_ctx *ctx);
  void (*warn)(void *ud, const char *message); /* mpass_ctx_set_warning_handler; NULL: dropped */
  void *warn_ud;
};

#endif
