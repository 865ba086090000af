#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "core/error.h"

mpass_error *mpass_ctx_create(const mpass_options *opts, mpass_ctx **out) {
  *out = NULL;
  mpass_options def = {0};
  if (!opts) opts = &def;
  mpass_ctx *c = calloc(1, sizeof *c);
  if (!c) return mp_errorf("out of memory");
  mp_error *e = mp_pool_create(opts->n_threads, &c->pool);
  if (e) {
    free(c);
    return e;
  }
  c->n_threads = mp_pool_size(c->pool);
  /* OpenBLAS keeps its own threads for large GEMMs; give it the same budget as our pool. */
  openblas_set_num_threads(c->n_threads);
  const char *md = opts->models_dir ? opts->models_dir : getenv("MPASS_MODELS");
  c->models_dir = strdup(md && *md ? md : "models");
  c->data_dir = opts->data_dir ? strdup(opts->data_dir) : NULL;
  if (!c->models_dir || (opts->data_dir && !c->data_dir)) {
    mpass_ctx_destroy(c);
    return mp_errorf("out of memory");
  }
  *out = c;
  return NULL;
}

void mpass_ctx_destroy(mpass_ctx *c) {
  if (!c) return;
  mp_pool_destroy(c->pool);
  free(c->models_dir);
  free(c->data_dir);
  free(c);
}

const char *mpass_error_message(const mpass_error *e) { return mp_error_message(e); }
void mpass_error_free(mpass_error *e) { mp_error_free(e); }
