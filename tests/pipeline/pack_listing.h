/* For the pack-store tests (test_pack_files*.c): a UNet forward in a fresh context and engine, and
 * the pack folders under a root with the records of the (last) one, sorted by name, each with its
 * inode and kind (the first line of its key). */
#ifndef MPASS_TESTS_PACK_LISTING_H
#define MPASS_TESTS_PACK_LISTING_H

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/context.h"
#include "pipeline/engine.h"
#include "testutil.h"

/* eps [2, 4, lat, lat] = the UNet of the checkpoint at ckpt (inside models) on x, at t = 500 with cond
 * [2, n_ctx, C], in a fresh context and engine: a new process as far as packing is concerned. Dropping
 * the mapped packs from the resident set (the trim) and running again must not change a bit. */
static inline void pack_eval(const char *models, const char *ckpt, int lat, const float *x, const float *cond, int n_ctx,
                             int no_cache, test_warnings *w, float *eps) {
  mpass_options o = {.n_threads = 2, .models_dir = models, .precision = MPASS_PRECISION_BF16, .no_cache = no_cache};
  mpass_ctx *ctx;
  assert_ok(mpass_ctx_create(&o, &ctx));
  mpass_ctx_set_warning_handler(ctx, test_collect_warning, w);
  mp_engine *e;
  assert_ok(mp_engine_open(ctx, ckpt, NULL, &e));
  const float ts[2] = {500.0f, 500.0f};
  const size_t n = (size_t)2 * 4 * lat * lat;
  assert_ok(mp_unet_forward(e->unet, ctx->pool, 2, lat, lat, x, ts, cond, n_ctx, eps));
  mp_unet_trim(e->unet);
  mp_backend_trim(ctx->backend);
  float *again = malloc(sizeof(float) * n);
  assert_non_null(again);
  assert_ok(mp_unet_forward(e->unet, ctx->pool, 2, lat, lat, x, ts, cond, n_ctx, again));
  assert_memory_equal(again, eps, sizeof(float) * n);
  free(again);
  mp_engine_close(e);
  mpass_ctx_destroy(ctx);
}

enum { PACK_LISTING_MAX = 512 };

typedef struct {
  int n_dirs, n;
  char dir[1200];
  char name[PACK_LISTING_MAX][64], kind[PACK_LISTING_MAX][32];
  ino_t ino[PACK_LISTING_MAX];
} pack_listing;

static inline void pack_list(const char *packs, pack_listing *l) {
  memset(l, 0, sizeof *l);
  DIR *d = opendir(packs);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d)))
    if (de->d_name[0] != '.') {
      l->n_dirs++;
      snprintf(l->dir, sizeof l->dir, "%.900s/%.255s", packs, de->d_name);
    }
  closedir(d);
  if (!(d = opendir(l->dir))) return;
  while ((de = readdir(d)) && l->n < PACK_LISTING_MAX) {
    if (!strstr(de->d_name, ".pack")) continue;
    assert_null(strstr(de->d_name, ".tmp")); /* no temporary file left behind */
    char p[1400], key[64] = {0};
    snprintf(p, sizeof p, "%.1100s/%.255s", l->dir, de->d_name);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    if (pread(fd, key, sizeof key - 1, 64) < 0) key[0] = 0; /* the key follows the 64-byte fixed header */
    close(fd);
    key[strcspn(key, "\n")] = 0;
    snprintf(l->name[l->n], sizeof l->name[0], "%.63s", de->d_name);
    snprintf(l->kind[l->n], sizeof l->kind[0], "%.31s", key);
    l->ino[l->n++] = st.st_ino;
  }
  closedir(d);
  for (int i = 1; i < l->n; i++) /* by name: directory order is not guaranteed */
    for (int j = i; j > 0 && strcmp(l->name[j - 1], l->name[j]) > 0; j--) {
      char t[64], k[32];
      memcpy(t, l->name[j], sizeof t), memcpy(l->name[j], l->name[j - 1], sizeof t), memcpy(l->name[j - 1], t, sizeof t);
      memcpy(k, l->kind[j], sizeof k), memcpy(l->kind[j], l->kind[j - 1], sizeof k), memcpy(l->kind[j - 1], k, sizeof k);
      ino_t ti = l->ino[j];
      l->ino[j] = l->ino[j - 1], l->ino[j - 1] = ti;
    }
}

static inline int pack_count_kind(const pack_listing *l, const char *kind) {
  int n = 0;
  for (int i = 0; i < l->n; i++) n += strcmp(l->kind[i], kind) == 0;
  return n;
}

#endif
