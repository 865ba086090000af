/* Where a checkpoint's packed weights are kept on disk and how it is recognised (see pack_files.h). */
#include "pipeline/pack_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/pack_cache.h"
#include "core/pack_store.h"
#include "pipeline/params.h"

#define HEAD_DEFAULT ((size_t)1 << 20)
#define HEAD_MAX ((size_t)256 << 20)
#define TAIL_BYTES ((size_t)64 << 10)
#define SAMPLES 64
#define SAMPLE_BYTES 4096

static mp_error *hash_range(mp_sha256 *h, int fd, const char *path, uint64_t at, size_t n, char *buf, size_t cap) {
  while (n) {
    size_t want = n < cap ? n : cap;
    ssize_t got = pread(fd, buf, want, (off_t)at);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return mp_errorf("cannot read %s at byte %llu: %s", path, (unsigned long long)at, got < 0 ? strerror(errno) : "end of file");
    mp_sha256_update(h, buf, (size_t)got);
    at += (uint64_t)got, n -= (size_t)got;
  }
  return NULL;
}

/* One backing file's share of the identity (see pack_files.h). */
static mp_error *hash_file(mp_sha256 *h, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return mp_errorf("cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return mp_errorf("%s is not a regular file", path);
  }
  const uint64_t size = (uint64_t)st.st_size;
  int64_t stamp[3] = {(int64_t)size, (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec};
  mp_sha256_update(h, stamp, sizeof stamp);
  size_t head = size < HEAD_DEFAULT ? (size_t)size : HEAD_DEFAULT;
  uint64_t n = 0;
  if (size >= 8 && pread(fd, &n, 8, 0) == 8 && n > 0 && n <= HEAD_MAX && n <= size - 8) head = (size_t)n + 8; /* safetensors */
  const size_t cap = 1 << 20;
  char *buf = malloc(cap);
  mp_error *e = buf ? hash_range(h, fd, path, 0, head, buf, cap) : mp_errorf("out of memory");
  const size_t tail = size < TAIL_BYTES ? (size_t)size : TAIL_BYTES;
  if (!e) e = hash_range(h, fd, path, size - tail, tail, buf, cap);
  for (int i = 0; !e && size >= SAMPLE_BYTES && i < SAMPLES; i++) {
    uint64_t at = (size - SAMPLE_BYTES) / (SAMPLES - 1) * (uint64_t)i;
    e = hash_range(h, fd, path, at, SAMPLE_BYTES, buf, cap);
  }
  free(buf);
  close(fd);
  return e;
}

static mp_error *hash_files(mp_sha256 *h, const mp_weights *w, int *n_files) {
  struct stat st;
  const char *path = mp_weights_path(w);
  if (path && *path && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
    MP_TRY(hash_file(h, path));
    ++*n_files;
  }
  for (size_t i = 0; i < mp_weights_n_parts(w); i++) MP_TRY(hash_files(h, mp_weights_part(w, i), n_files));
  return NULL;
}

mp_error *mp_checkpoint_identity(const mp_weights *w, char hex[65]) {
  mp_sha256 h;
  mp_sha256_init(&h);
  static const char tag[] = "mpass checkpoint identity 1";
  mp_sha256_update(&h, tag, sizeof tag);
  int n_files = 0;
  MP_TRY(hash_files(&h, w, &n_files));
  if (!n_files) return mp_errorf("%s is read from no file that can identify it", mp_weights_path(w));
  for (size_t i = 0; i < mp_weights_count(w); i++) {
    const mp_weight *t = mp_weights_at(w, i);
    int32_t meta[2] = {(int32_t)t->t.dtype, t->t.ndim};
    mp_sha256_update(&h, t->name, strlen(t->name) + 1);
    mp_sha256_update(&h, meta, sizeof meta);
    mp_sha256_update(&h, t->t.shape, sizeof t->t.shape[0] * (size_t)t->t.ndim);
  }
  uint8_t d[32];
  mp_sha256_final(&h, d);
  mp_sha256_hex(d, hex);
  return NULL;
}

bool mp_pack_root(const mpass_ctx *ctx, const char *path, char *buf, size_t cap) {
  char models[PATH_MAX], ckpt[PATH_MAX];
  int w = -1;
  if (ctx->models_dir && realpath(ctx->models_dir, models) && realpath(path, ckpt)) {
    size_t n = strlen(models);
    if (strncmp(ckpt, models, n) == 0 && ckpt[n] == '/') w = snprintf(buf, cap, "%s/.cache/packs", ctx->models_dir);
  }
  if (w < 0) {
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (xdg && xdg[0] == '/') w = snprintf(buf, cap, "%s/mpass/packs", xdg);
    else if (home && home[0] == '/') w = snprintf(buf, cap, "%s/.cache/mpass/packs", home);
  }
  return w > 0 && (size_t)w < cap;
}

static void warn(const mpass_ctx *ctx, const char *fmt, const char *a, const char *b) {
  if (!ctx->warn) return;
  char msg[8400];
  snprintf(msg, sizeof msg, fmt, a, b);
  ctx->warn(ctx->warn_ud, msg);
}

/* The text of a small file (up to cap - 1 bytes) into buf; false when unreadable. */
static bool read_small(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) return false;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = 0;
  return true;
}

/* Remove a pack folder: its records, temporaries and source note, then the folder if that emptied it. */
static void remove_pack_folder(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char p[PATH_MAX + 300];
  while ((de = readdir(d))) {
    size_t n = strlen(de->d_name);
    bool ours = strcmp(de->d_name, "source") == 0 || (n > 5 && strcmp(de->d_name + n - 5, ".pack") == 0) ||
                (n > 4 && strcmp(de->d_name + n - 4, ".tmp") == 0 && strstr(de->d_name, ".pack."));
    if (!ours) continue;
    if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < (int)sizeof p) (void)unlink(p); /* a process still using a record keeps its mapping */
  }
  closedir(d);
  (void)rmdir(dir);
}

/* Whether the checkpoint a folder's source note names is gone: only "no such file" counts, so a file
 * we may not read or a mount that fails (EIO, ESTALE) keeps its packs; a drive that is not mounted
 * looks deleted, and its checkpoints pack again once. */
static bool source_gone(const char *note) {
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s", note);
  path[strcspn(path, "\n")] = 0;
  struct stat st;
  return path[0] == '/' && stat(path, &st) != 0 && errno == ENOENT;
}

/* Note in dir/source which checkpoint file the folder packs (its real path), and remove the folders
 * under root that pack the same path under another identity (the file was replaced, so their packs
 * can never be used again) or a file that no longer exists (deleted or moved: a moved checkpoint packs
 * again under its new path once). One stale folder per SD 1.5 checkpoint is 1.7 GB. */
static void claim_folder(mp_pack_store *s, const char *root, const char *dir, const char *checkpoint) {
  char real[PATH_MAX], note[PATH_MAX + 16], other[PATH_MAX + 300], seen[PATH_MAX + 16];
  if (!realpath(checkpoint, real)) return;
  snprintf(note, sizeof note, "%s\n", real);
  DIR *d = opendir(root);
  struct dirent *de;
  while (d && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    if (snprintf(other, sizeof other, "%s/%s", root, de->d_name) >= (int)sizeof other || strcmp(other, dir) == 0) continue;
    char src[PATH_MAX + 320];
    if (snprintf(src, sizeof src, "%s/source", other) >= (int)sizeof src) continue;
    if (read_small(src, seen, sizeof seen) && (strcmp(seen, note) == 0 || source_gone(seen))) remove_pack_folder(other);
  }
  if (d) closedir(d);
  char path[PATH_MAX + 320];
  if (snprintf(path, sizeof path, "%s/source", dir) >= (int)sizeof path) return;
  if (!read_small(path, seen, sizeof seen) || strcmp(seen, note) != 0) (void)mp_pack_store_write_note(s, "source", note);
}

/* The store for w, or NULL (caching off, or it cannot be set up: warned). */
static mp_pack_store *open_store(mpass_ctx *ctx, const mp_weights *w) {
  if (ctx->no_pack_cache || ctx->precision != MP_PRECISION_BF16) return NULL;
  const char *path = mp_weights_path(w);
  char root[PATH_MAX], dir[PATH_MAX + 300], hex[65];
  if (!path || !*path || !mp_pack_root(ctx, path, root, sizeof root)) {
    warn(ctx, "pack cache: no folder for the packs of %s%s (set XDG_CACHE_HOME or HOME); packing in memory only", path ? path : "", "");
    return NULL;
  }
  mp_error *e = mp_checkpoint_identity(w, hex);
  if (e) {
    warn(ctx, "pack cache: %s; packing in memory only%s", mp_error_message(e), "");
    mp_error_free(e);
    return NULL;
  }
  /* <stem>-<identity>: the stem for people clearing the cache by hand */
  size_t len = strlen(path);
  while (len > 1 && path[len - 1] == '/') len--;
  const char *base = path + len;
  while (base > path && base[-1] != '/') base--;
  const char *dot = memchr(base, '.', (size_t)(path + len - base));
  int stem = (int)((dot ? dot : path + len) - base);
  if (stem > 80) stem = 80;
  snprintf(dir, sizeof dir, "%s/%.*s-%.16s", root, stem, base, hex);
  char identity[128];
  snprintf(identity, sizeof identity, "checkpoint sha256-sampled %s, pack format %u", hex, MP_PACK_FORMAT_VERSION);
  mp_pack_store *s = NULL;
  e = mp_pack_store_open(dir, identity, ctx->warn, ctx->warn_ud, &s);
  if (e) {
    warn(ctx, "pack cache: %s%s", mp_error_message(e), "");
    mp_error_free(e);
    return NULL;
  }
  mp_pack_store_sweep(s);
  claim_folder(s, root, dir, path);
  return s;
}

mp_error *mp_pin_checkpoint(mpass_ctx *ctx, const mp_weights *w, const void *owner) {
  mp_pack_cache *pc = mp_backend_pack_cache(ctx->backend);
  if (!pc) return NULL;
  size_t n = mp_weights_count(w);
  const void **data = malloc((n ? n : 1) * sizeof *data);
  const char **names = malloc((n ? n : 1) * sizeof *names);
  if (!data || !names) {
    free(data), free(names);
    return mp_errorf("out of memory");
  }
  for (size_t i = 0; i < n; i++) data[i] = mp_weights_at(w, i)->t.data, names[i] = mp_weights_at(w, i)->name;
  mp_error *err = mp_pack_cache_pin_named(pc, owner, data, names, n, open_store(ctx, w));
  free(data), free(names);
  return err;
}
