#include "io/weights.h"

#include "io/diffusers.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct mp_weights {
  char *path;
  mp_weight *items;
  size_t count, cap;
  void **owned; /* copies made for unaligned or converted data */
  size_t n_owned, cap_owned;
  void *backing;
  size_t backing_size;
  void (*release)(void *, size_t);
  char *metadata;
  int finished;
  mp_weights **parts; /* adopted readers whose tensors this one views */
  size_t n_parts;
  const mp_weights *viewed; /* not owned: the weights this one holds views of (mp_weights_set_viewed) */
};

mp_weights *mp_weights_new(const char *path) {
  mp_weights *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->path = strdup(path ? path : "");
  if (!w->path) {
    free(w);
    return NULL;
  }
  return w;
}

void mp_weights_set_backing(mp_weights *w, void *mem, size_t size, void (*release)(void *, size_t)) {
  w->backing = mem;
  w->backing_size = size;
  w->release = release;
}

mp_error *mp_weights_set_metadata(mp_weights *w, const char *json) {
  free(w->metadata);
  w->metadata = json ? strdup(json) : NULL;
  return json && !w->metadata ? mp_errorf("out of memory") : NULL;
}

static mp_error *remember_owned(mp_weights *w, void *p) {
  if (w->n_owned == w->cap_owned) {
    size_t cap = w->cap_owned ? w->cap_owned * 2 : 64;
    void **n = realloc(w->owned, cap * sizeof *n);
    if (!n) return mp_errorf("out of memory");
    w->owned = n;
    w->cap_owned = cap;
  }
  w->owned[w->n_owned++] = p;
  return NULL;
}

static mp_error *push(mp_weights *w, const char *name, mp_dtype dt, int ndim, const int64_t *shape, void *data) {
  if (w->count == w->cap) {
    size_t cap = w->cap ? w->cap * 2 : 256;
    mp_weight *n = realloc(w->items, cap * sizeof *n);
    if (!n) return mp_errorf("out of memory");
    w->items = n;
    w->cap = cap;
  }
  char *nm = strdup(name);
  if (!nm) return mp_errorf("out of memory");
  mp_weight *it = &w->items[w->count++];
  it->name = nm;
  it->source = NULL;
  mp_tensor_view(&it->t, dt, ndim, shape, data);
  return NULL;
}

mp_error *mp_weights_add_owned(mp_weights *w, const char *name, mp_dtype dt, int ndim, const int64_t *shape, void *data) {
  mp_error *e = remember_owned(w, data);
  if (e) {
    mp_free(data);
    return e;
  }
  return push(w, name, dt, ndim, shape, data);
}

mp_error *mp_weights_add(mp_weights *w, const char *name, mp_dtype dt, int ndim, const int64_t *shape, const void *data) {
  size_t es = mp_dtype_size(dt);
  if (es > 1 && ((uintptr_t)data % es) != 0) {
    /* Unaligned data (safetensors headers have arbitrary length): copy, so that typed loads are defined. */
    size_t nbytes = (size_t)mp_shape_numel(ndim, shape) * es;
    void *copy = mp_alloc(nbytes);
    if (!copy) return mp_errorf("out of memory copying tensor %s (%zu bytes)", name, nbytes);
    memcpy(copy, data, nbytes);
    return mp_weights_add_owned(w, name, dt, ndim, shape, copy);
  }
  return push(w, name, dt, ndim, shape, (void *)data);
}

mp_error *mp_weights_set_source(mp_weights *w, const char *source) {
  if (!w->count) return mp_errorf("no tensor to give a source to");
  mp_weight *it = &w->items[w->count - 1];
  free(it->source);
  it->source = strdup(source);
  return it->source ? NULL : mp_errorf("out of memory");
}

mp_error *mp_weights_adopt(mp_weights *w, mp_weights *part) {
  mp_weights **n = realloc(w->parts, (w->n_parts + 1) * sizeof *n);
  if (!n) {
    mp_weights_close(part);
    return mp_errorf("out of memory");
  }
  w->parts = n;
  w->parts[w->n_parts++] = part;
  return NULL;
}

static int cmp_weight(const void *a, const void *b) {
  return strcmp(((const mp_weight *)a)->name, ((const mp_weight *)b)->name);
}

mp_error *mp_weights_finish(mp_weights *w) {
  if (w->count > 1) qsort(w->items, w->count, sizeof *w->items, cmp_weight); /* items is NULL for a file without tensors */
  for (size_t i = 1; i < w->count; i++)
    if (strcmp(w->items[i - 1].name, w->items[i].name) == 0) return mp_errorf("duplicate tensor name '%s'", w->items[i].name);
  w->finished = 1;
  return NULL;
}

size_t mp_weights_count(const mp_weights *w) { return w ? w->count : 0; }
const mp_weight *mp_weights_at(const mp_weights *w, size_t i) { return i < w->count ? &w->items[i] : NULL; }
const char *mp_weights_path(const mp_weights *w) { return w->path; }
const char *mp_weights_metadata(const mp_weights *w) { return w->metadata; }
size_t mp_weights_n_parts(const mp_weights *w) { return w ? w->n_parts : 0; }
const mp_weights *mp_weights_part(const mp_weights *w, size_t i) { return i < w->n_parts ? w->parts[i] : NULL; }

const mp_weight *mp_weights_find(const mp_weights *w, const char *name) {
  if (!w || !w->finished) return NULL;
  size_t lo = 0, hi = w->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(w->items[mid].name, name);
    if (c == 0) return &w->items[mid];
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  return NULL;
}

void mp_weights_close(mp_weights *w) {
  if (!w) return;
  for (size_t i = 0; i < w->count; i++) free(w->items[i].name), free(w->items[i].source);
  free(w->items);
  for (size_t i = 0; i < w->n_owned; i++) mp_free(w->owned[i]);
  free(w->owned);
  if (w->release) w->release(w->backing, w->backing_size);
  for (size_t i = 0; i < w->n_parts; i++) mp_weights_close(w->parts[i]);
  free(w->parts);
  free(w->metadata);
  free(w->path);
  free(w);
}

mp_error *mp_map_file(const char *path, void **mem, size_t *size) {
  *mem = NULL;
  *size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return mp_errorf("cannot open %s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return mp_errorf("%s is not a regular file", path);
  }
  if (st.st_size == 0) {
    close(fd);
    return mp_errorf("%s is empty", path);
  }
  void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return mp_errorf("cannot map %s: %s", path, strerror(errno));
  *mem = p;
  *size = (size_t)st.st_size;
  return NULL;
}

void mp_unmap_file(void *mem, size_t size) {
  if (mem) munmap(mem, size);
}

static void release_map(void *mem, size_t size) { mp_unmap_file(mem, size); }

void mp_weights_set_viewed(mp_weights *w, const mp_weights *viewed) { w->viewed = viewed; }

/* Whether [lo, hi) lies in a file mapping made by mp_weights_open_mapped (PROT_READ, MAP_PRIVATE:
 * never written, so every page equals the file's and can be read again from it). */
static bool in_file_map(const mp_weights *w, uintptr_t lo, uintptr_t hi) {
  for (int depth = 0; w && depth < 8; depth++, w = w->viewed) {
    const uintptr_t b = (uintptr_t)w->backing;
    if (w->release == release_map && lo >= b && hi <= b + w->backing_size) return true;
    for (size_t i = 0; i < w->n_parts; i++)
      if (in_file_map(w->parts[i], lo, hi)) return true;
  }
  return false;
}

bool mp_weights_drop_pages(const mp_weights *w, const void *data, size_t bytes) {
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  /* only the pages wholly inside the tensor */
  const uintptr_t lo = ((uintptr_t)data + page - 1) & ~(page - 1), hi = ((uintptr_t)data + bytes) & ~(page - 1);
  if (!w || !data || hi <= lo || !in_file_map(w, (uintptr_t)data, (uintptr_t)data + bytes)) return false;
  /* DONTNEED on such a mapping unmaps the pages but leaves them in the page cache, so reading them
   * again is a minor fault, not I/O (PAGEOUT would evict them from the cache). */
  return madvise((void *)lo, hi - lo, MADV_DONTNEED) == 0;
}

mp_error *mp_weights_open_mapped(const char *path, mp_weights_parse_fn parse, mp_weights **out) {
  *out = NULL;
  void *mem;
  size_t size;
  MP_TRY(mp_map_file(path, &mem, &size));
  mp_weights *w = mp_weights_new(path);
  if (!w) {
    mp_unmap_file(mem, size);
    return mp_errorf("out of memory");
  }
  mp_weights_set_backing(w, mem, size, release_map);
  mp_error *e = parse(path, mem, size, w);
  if (e) {
    mp_weights_close(w);
    return e;
  }
  *out = w;
  return NULL;
}

mp_error *mp_weights_open(const char *path, mp_weights **out) {
  *out = NULL;
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return mp_diffusers_open(path, out); /* says so if not one */
  void *mem;
  size_t size;
  MP_TRY(mp_map_file(path, &mem, &size));
  /* A zip file (PyTorch >= 1.6 saves) starts with "PK\3\4"; safetensors with an 8-byte length then '{'. */
  int is_zip = size >= 4 && memcmp(mem, "PK\x03\x04", 4) == 0;
  /* torch.save before 1.6 wrote a bare pickle stream (protocol 2: 0x80 0x02) with no zip around it. */
  int is_legacy_pickle = size >= 2 && ((const unsigned char *)mem)[0] == 0x80 && ((const unsigned char *)mem)[1] <= 5;
  mp_unmap_file(mem, size);
  if (is_legacy_pickle)
    return mp_errorf("%s: a legacy (PyTorch < 1.6) pickle checkpoint, which mpass does not read; re-save it with a newer "
                     "PyTorch or convert it to .safetensors", path);
  return is_zip ? mp_ckpt_open(path, out) : mp_safetensors_open(path, out);
}
