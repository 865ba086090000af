/* Packed weights on disk (see pack_store.h). */
#include "core/pack_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FIXED_BYTES 64
#define PAGE 4096
#define MAX_KEY_BYTES (1u << 20)
#define BYTE_ORDER_MARK 0x01020304u

static const char MAGIC[8] = {'M', 'P', 'A', 'S', 'S', 'P', 'K', 0};

typedef struct {
  char magic[8];
  uint32_t version;
  uint32_t byte_order;
  uint64_t header_bytes; /* payload offset */
  uint64_t payload_bytes;
  uint64_t payload_sum;
  uint32_t key_bytes;
  uint32_t reserved; /* 0 */
  uint64_t key_sum;
  uint64_t header_sum; /* mp_hash64 over this header (with header_sum 0) followed by the key */
} fixed_header;
_Static_assert(sizeof(fixed_header) == FIXED_BYTES, "the fixed header is 64 bytes");

struct mp_pack_store {
  char *dir;
  char *identity;
  mp_warn_fn warn;
  void *warn_ud;
  bool save_failed; /* warned once; later saves are not tried */
  unsigned n_tmp;   /* makes temporary names unique within the process */
};

/* ---- checksum ---- */

static inline uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 33);
}

uint64_t mp_hash64(const void *data, size_t n, uint64_t seed) {
  const unsigned char *p = data;
  const uint64_t K = 0x9e3779b97f4a7c15ull;
  uint64_t h[4] = {seed ^ 0x243f6a8885a308d3ull, seed ^ 0x13198a2e03707344ull, seed ^ 0xa4093822299f31d0ull,
                   seed ^ 0x082efa98ec4e6c89ull};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int k = 0; k < 4; k++) {
      uint64_t w;
      memcpy(&w, p + i + 8 * k, 8);
      h[k] = (h[k] ^ w) * K;
      h[k] ^= h[k] >> 29;
    }
  uint64_t tail = 0, r = mix(h[0]) ^ mix(h[1] + 1) ^ mix(h[2] + 2) ^ mix(h[3] + 3);
  for (size_t j = 0; i < n; i++, j++) {
    tail |= (uint64_t)p[i] << (8 * (j % 8));
    if (j % 8 == 7 || i + 1 == n) r = mix(r ^ tail), tail = 0;
  }
  return mix(r ^ (uint64_t)n);
}

/* ---- store ---- */

mp_error *mp_pack_store_open(const char *dir, const char *identity, mp_warn_fn warn, void *warn_ud, mp_pack_store **out) {
  *out = NULL;
  if (strchr(identity, '\n')) return mp_errorf("pack store identity must be one line");
  mp_pack_store *s = calloc(1, sizeof *s);
  if (!s) return mp_errorf("out of memory");
  s->dir = strdup(dir);
  s->identity = strdup(identity);
  s->warn = warn, s->warn_ud = warn_ud;
  if (!s->dir || !s->identity) {
    mp_pack_store_close(s);
    return mp_errorf("out of memory");
  }
  *out = s;
  return NULL;
}

void mp_pack_store_close(mp_pack_store *s) {
  if (!s) return;
  free(s->dir);
  free(s->identity);
  free(s);
}

const char *mp_pack_store_dir(const mp_pack_store *s) { return s->dir; }

void mp_pack_map_release(mp_pack_map *m) {
  if (m->base) munmap(m->base, m->len);
  memset(m, 0, sizeof *m);
}

void mp_pack_map_drop_resident(mp_pack_map *m) {
  /* Private file mapping never written to (or written only with the bytes the file holds: oneDNN may
   * zero a padded layout's padding again), so dropping the pages loses nothing. */
  if (m->base && m->payload_bytes) (void)madvise(m->payload, m->payload_bytes, MADV_DONTNEED);
}

static void warnf(const mp_pack_store *s, const char *fmt, const char *path, const char *why) {
  if (!s->warn) return;
  char msg[8400];
  snprintf(msg, sizeof msg, fmt, path, why);
  s->warn(s->warn_ud, msg);
}

/* The key text; caller frees. */
static char *key_text(const mp_pack_store *s, const char *kind, const char *name, const char *layout, size_t *len) {
  if (strchr(kind, '\n') || strchr(name, '\n') || strchr(layout, '\n')) return NULL;
  size_t n = strlen(kind) + strlen(name) + strlen(layout) + strlen(s->identity) + 5;
  if (n > MAX_KEY_BYTES) return NULL;
  char *k = malloc(n);
  if (!k) return NULL;
  snprintf(k, n, "%s\n%s\n%s\n%s\n", kind, name, layout, s->identity);
  *len = n - 1;
  return k;
}

static bool record_path(const mp_pack_store *s, const char *key, size_t key_len, char *buf, size_t cap) {
  int w = snprintf(buf, cap, "%s/%016llx.pack", s->dir, (unsigned long long)mp_hash64(key, key_len, 0x7061636bu));
  return w > 0 && (size_t)w < cap;
}

const char *mp_pack_store_record_path(const mp_pack_store *s, const char *kind, const char *name, const char *layout, char *buf,
                                      size_t cap) {
  size_t kl;
  char *key = key_text(s, kind, name, layout, &kl);
  bool ok = key && record_path(s, key, kl, buf, cap);
  free(key);
  return ok ? buf : NULL;
}

static uint64_t header_checksum(const fixed_header *h, const char *key, size_t key_len) {
  fixed_header c = *h;
  c.header_sum = 0;
  return mp_hash64(key, key_len, mp_hash64(&c, sizeof c, 0x68656164u));
}

/* Why the record at fd (size `size`) is not the one for `key` with `bytes` of payload, or NULL. */
static const char *check_header(int fd, uint64_t size, const char *key, size_t key_len, size_t bytes, fixed_header *h) {
  if (size < FIXED_BYTES) return "shorter than a header (truncated?)";
  if (pread(fd, h, sizeof *h, 0) != (ssize_t)sizeof *h) return "unreadable header";
  if (memcmp(h->magic, MAGIC, sizeof MAGIC) != 0) return "not an mpass pack file (bad magic)";
  if (h->byte_order != BYTE_ORDER_MARK) return "written on a machine of the other byte order";
  if (h->version != MP_PACK_FORMAT_VERSION) return "written by another version of the pack format";
  if (h->key_bytes > MAX_KEY_BYTES || h->header_bytes % PAGE || h->header_bytes < FIXED_BYTES + (uint64_t)h->key_bytes ||
      h->header_bytes > size || h->reserved)
    return "header fields out of range";
  char *stored = malloc(h->key_bytes ? h->key_bytes : 1);
  if (!stored) return "out of memory reading its key";
  const char *why = NULL;
  if (pread(fd, stored, h->key_bytes, FIXED_BYTES) != (ssize_t)h->key_bytes) why = "unreadable key";
  else if (header_checksum(h, stored, h->key_bytes) != h->header_sum) why = "header checksum mismatch (damaged)";
  else if (h->key_bytes != key_len || memcmp(stored, key, key_len) != 0) why = "holds another tensor or layout (foreign key)";
  else if (h->payload_bytes != bytes) why = "payload size differs from the packed layout's";
  else if (size - h->header_bytes != h->payload_bytes) why = "file size does not match its header (truncated?)";
  free(stored);
  return why;
}

bool mp_pack_store_load(mp_pack_store *s, const char *kind, const char *name, const char *layout, size_t bytes, mp_pack_map *m) {
  memset(m, 0, sizeof *m);
  size_t kl;
  char *key = key_text(s, kind, name, layout, &kl);
  char path[4096];
  if (!key || !record_path(s, key, kl, path, sizeof path)) {
    free(key);
    return false;
  }
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* O_NONBLOCK: a FIFO planted there must not hang us */
  if (fd < 0) {
    free(key);
    return false; /* not cached yet */
  }
  struct stat st;
  fixed_header h;
  const char *why = fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ? "not a regular file"
                                                                 : check_header(fd, (uint64_t)st.st_size, key, kl, bytes, &h);
  free(key);
  void *base = MAP_FAILED;
  if (!why) {
    /* Writable private mapping: oneDNN may re-zero a padded layout's padding when it wraps the memory. */
    base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) why = "cannot be mapped";
  }
  close(fd);
  if (!why) {
    void *payload = (char *)base + h.header_bytes;
    (void)madvise(payload, bytes, MADV_WILLNEED); /* one readahead for the checksum pass, not a fault per page */
    if (mp_hash64(payload, bytes, 0x7061796cu) != h.payload_sum) {
      why = "payload checksum mismatch (damaged)";
      munmap(base, (size_t)st.st_size);
    } else {
      *m = (mp_pack_map){base, (size_t)st.st_size, payload, bytes};
      return true;
    }
  }
  warnf(s, "pack cache: %s: %s; packing the weight again", path, why);
  return false;
}

static bool write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n > ((size_t)1 << 30) ? (size_t)1 << 30 : n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    c += w, n -= (size_t)w;
  }
  return true;
}

/* mkdir -p */
static bool make_dirs(const char *dir) {
  char p[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof p) return false;
  memcpy(p, dir, n + 1);
  for (size_t i = 1; i <= n; i++)
    if (p[i] == '/' || p[i] == 0) {
      char c = p[i];
      p[i] = 0;
      if (mkdir(p, 0755) != 0 && errno != EEXIST) return false;
      p[i] = c;
    }
  return true;
}

bool mp_pack_store_save(mp_pack_store *s, const char *kind, const char *name, const char *layout, const void *data, size_t bytes,
                        mp_pack_map *m) {
  memset(m, 0, sizeof *m);
  if (s->save_failed) return false;
  size_t kl;
  char *key = key_text(s, kind, name, layout, &kl);
  char path[4096], tmp[4200];
  if (!key || !record_path(s, key, kl, path, sizeof path)) {
    free(key);
    return false;
  }
  const size_t header_bytes = ((size_t)FIXED_BYTES + kl + PAGE - 1) / PAGE * PAGE;
  char *header = calloc(1, header_bytes);
  const char *why = header ? NULL : "out of memory";
  if (header) {
    fixed_header h = {.version = MP_PACK_FORMAT_VERSION,
                      .byte_order = BYTE_ORDER_MARK,
                      .header_bytes = header_bytes,
                      .payload_bytes = bytes,
                      .payload_sum = mp_hash64(data, bytes, 0x7061796cu),
                      .key_bytes = (uint32_t)kl,
                      .key_sum = mp_hash64(key, kl, 0)};
    memcpy(h.magic, MAGIC, sizeof MAGIC);
    h.header_sum = header_checksum(&h, key, kl);
    memcpy(header, &h, sizeof h);
    memcpy(header + FIXED_BYTES, key, kl);
  }
  free(key);
  snprintf(tmp, sizeof tmp, "%s.%ld.%u.tmp", path, (long)getpid(), s->n_tmp++);
  int fd = -1;
  if (!why && !make_dirs(s->dir)) why = strerror(errno);
  if (!why && (fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644)) < 0) why = strerror(errno);
  errno = 0;
  if (!why && !(write_all(fd, header, header_bytes) && write_all(fd, data, bytes))) why = errno ? strerror(errno) : "short write";
  void *base = MAP_FAILED;
  if (!why && (base = mmap(NULL, header_bytes + bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)) == MAP_FAILED)
    why = strerror(errno);
  /* rename last: until here no reader can see the file */
  if (!why && rename(tmp, path) != 0) why = strerror(errno);
  if (fd >= 0) close(fd);
  free(header);
  if (why) {
    if (base != MAP_FAILED) munmap(base, header_bytes + bytes);
    if (fd >= 0) unlink(tmp);
    s->save_failed = true;
    warnf(s, "pack cache: cannot save packed weights under %s (%s); packing in memory only this time", s->dir, why);
    return false;
  }
  *m = (mp_pack_map){base, header_bytes + bytes, (char *)base + header_bytes, bytes};
  return true;
}

void mp_pack_store_sweep(mp_pack_store *s) {
  DIR *d = opendir(s->dir);
  if (!d) return;
  const time_t now = time(NULL);
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t n = strlen(de->d_name);
    if (n < 9 || strcmp(de->d_name + n - 4, ".tmp") != 0 || !strstr(de->d_name, ".pack.")) continue;
    char p[8192];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", s->dir, de->d_name);
    /* a write in progress keeps touching its file; one untouched for an hour was left by a killed process */
    if (lstat(p, &st) == 0 && S_ISREG(st.st_mode) && now - st.st_mtime > 3600) (void)unlink(p);
  }
  closedir(d);
}

bool mp_pack_store_write_note(mp_pack_store *s, const char *name, const char *text) {
  char path[4200], tmp[4300];
  if (strchr(name, '/') || snprintf(path, sizeof path, "%s/%s", s->dir, name) >= (int)sizeof path) return false;
  snprintf(tmp, sizeof tmp, "%s.%ld.%u.tmp", path, (long)getpid(), s->n_tmp++);
  if (!make_dirs(s->dir)) return false;
  FILE *f = fopen(tmp, "wb");
  bool ok = f && fputs(text, f) >= 0;
  if (f && fclose(f) != 0) ok = false;
  if (ok) ok = rename(tmp, path) == 0;
  if (!ok) (void)unlink(tmp);
  return ok;
}
