#include <cblas.h>
#include <stdio.h>
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
  mp_precision want = opts->precision == MPASS_PRECISION_F32    ? MP_PRECISION_F32
                      : opts->precision == MPASS_PRECISION_BF16 ? MP_PRECISION_BF16
                                                                : MP_PRECISION_AUTO;
  if (want == MP_PRECISION_AUTO) want = *mp_cpu_bf16_support() ? MP_PRECISION_BF16 : MP_PRECISION_F32;
  c->precision = want;
  /* Both precisions: the f32 path also runs its large products on oneDNN's f32 matmul. */
  if ((e = mp_backend_create(want, c->n_threads, &c->backend))) {
    mpass_ctx_destroy(c);
    return mp_error_wrap(e, "%s backend", mp_precision_name(want));
  }
  mp_pool_set_backend(c->pool, c->backend);
  const char *md = opts->models_dir ? opts->models_dir : getenv("MPASS_MODELS");
  c->models_dir = strdup(md && *md ? md : "models");
  c->data_dir = opts->data_dir ? strdup(opts->data_dir) : NULL;
  const char *nc = getenv("MPASS_NO_CACHE");
  c->no_pack_cache = opts->no_cache || (nc && *nc && strcmp(nc, "0") != 0);
  c->keep_models = opts->keep_models != 0;
  if (!c->models_dir || (opts->data_dir && !c->data_dir)) {
    mpass_ctx_destroy(c);
    return mp_errorf("out of memory");
  }
  *out = c;
  return NULL;
}

void mpass_ctx_destroy(mpass_ctx *c) {
  if (!c) return;
  if (c->drop_kept) c->drop_kept(c); /* kept engines release their packs into the backend */
  mp_pool_destroy(c->pool);
  mp_backend_destroy(c->backend);
  free(c->models_dir);
  free(c->data_dir);
  free(c);
}

void mpass_ctx_set_warning_handler(mpass_ctx *ctx, void (*fn)(void *ud, const char *message), void *ud) {
  ctx->warn = fn, ctx->warn_ud = ud;
}

const char *mpass_error_message(const mpass_error *e) { return mp_error_message(e); }
void mpass_error_free(mpass_error *e) { mp_error_free(e); }

const char *mpass_ctx_precision(const mpass_ctx *c) { return mp_precision_name(c->precision); }

const char *mpass_ctx_describe(const mpass_ctx *c, char *buf, unsigned cap) {
  const char *cpu = mp_cpu_bf16_support();
  if (c->precision == MP_PRECISION_BF16)
    snprintf(buf, cap, "precision bf16 (oneDNN, CPU bf16: %s), %d threads", *cpu ? cpu : "none, emulated", c->n_threads);
  else
    snprintf(buf, cap, "precision f32 (OpenBLAS and oneDNN%s), %d threads", *cpu ? "" : "; CPU has no native bf16", c->n_threads);
  return buf;
}
