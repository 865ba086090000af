/* The library context: the one owner of threads and of shared, lazily loaded resources. */
#ifndef MP_CORE_CONTEXT_H
#define MP_CORE_CONTEXT_H

#include "core/threads.h"
#include "mpass/mpass.h"

struct mpass_ctx {
  mp_pool *pool;
  int n_threads;
  char *models_dir;
  char *data_dir; /* may be NULL */
};

#endif
