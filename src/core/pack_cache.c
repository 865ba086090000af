/* The backend's cache of packed weights (see pack_cache.h). */
#include "core/pack_cache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv_dnnl.h"
#include "core/conv_wino_bf16.h"
#include "core/matmul.h"
#include "core/pack_store.h"

typedef struct {
  uintptr_t addr;
  const char *name; /* in the set's names, or NULL */
} pin;

typedef struct {
  const void *owner;
  pin *pins; /* sorted by address */
  size_t n;
  char *names;          /* the pinned tensors' names, one block */
  mp_pack_store *store; /* where their packs are kept on disk, or NULL */
} pin_set;

typedef struct {
  struct mp_packed_weight pw;
  const void *owner_w, *owner_b; /* who pinned the weight and the bias (NULL: no bias) */
} cache_entry;

struct mp_pack_cache {
  pin_set *pins;
  size_t n_pins;
  cache_entry *e;
  size_t n, cap;
};

void mp_packed_weight_clear(struct mp_packed_weight *pw) {
  mp_matmul_free(pw->mm);
  mp_dnnl_conv_free(pw->conv);
  mp_wino_bf16_free(pw->wino);
  pw->mm = NULL, pw->conv = NULL, pw->wino = NULL;
}

static void free_pin_set(pin_set *s) {
  free(s->pins);
  free(s->names);
  mp_pack_store_close(s->store);
}

mp_error *mp_pack_cache_create(mp_pack_cache **out) {
  *out = calloc(1, sizeof **out);
  return *out ? NULL : mp_errorf("out of memory");
}

void mp_pack_cache_free(mp_pack_cache *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n; i++) mp_packed_weight_clear(&c->e[i].pw);
  for (size_t i = 0; i < c->n_pins; i++) free_pin_set(&c->pins[i]);
  free(c->pins);
  free(c->e);
  free(c);
}

static int cmp_pin(const void *a, const void *b) {
  uintptr_t x = ((const pin *)a)->addr, y = ((const pin *)b)->addr;
  return x < y ? -1 : x > y;
}

mp_error *mp_pack_cache_pin(mp_pack_cache *c, const void *owner, const void *const *data, size_t n) {
  return mp_pack_cache_pin_named(c, owner, data, NULL, n, NULL);
}

mp_error *mp_pack_cache_pin_named(mp_pack_cache *c, const void *owner, const void *const *data, const char *const *names,
                                  size_t n, mp_pack_store *store) {
  for (size_t i = 0; i < c->n_pins; i++)
    if (c->pins[i].owner == owner) {
      mp_pack_store_close(store);
      return mp_errorf("pack cache: this owner has already pinned its weights");
    }
  pin_set s = {owner, malloc((n ? n : 1) * sizeof(pin)), 0, NULL, store};
  size_t name_bytes = 1;
  for (size_t i = 0; names && i < n; i++) name_bytes += names[i] ? strlen(names[i]) + 1 : 0;
  if (s.pins && names) s.names = malloc(name_bytes);
  if (!s.pins || (names && !s.names)) {
    free_pin_set(&s);
    return mp_errorf("out of memory");
  }
  char *at = s.names;
  for (size_t i = 0; i < n; i++) {
    if (!data[i]) continue;
    const char *nm = NULL;
    if (names && names[i]) {
      size_t len = strlen(names[i]) + 1;
      memcpy(at, names[i], len);
      nm = at, at += len;
    }
    s.pins[s.n++] = (pin){(uintptr_t)data[i], nm};
  }
  qsort(s.pins, s.n, sizeof *s.pins, cmp_pin);
  pin_set *grown = realloc(c->pins, (c->n_pins + 1) * sizeof *grown);
  if (!grown) {
    free_pin_set(&s);
    return mp_errorf("out of memory");
  }
  c->pins = grown;
  c->pins[c->n_pins++] = s;
  return NULL;
}

void mp_pack_cache_release(mp_pack_cache *c, const void *owner) {
  if (!c) return;
  size_t k = 0;
  for (size_t i = 0; i < c->n; i++) {
    if (c->e[i].owner_w == owner || c->e[i].owner_b == owner)
      mp_packed_weight_clear(&c->e[i].pw);
    else
      c->e[k++] = c->e[i];
  }
  c->n = k;
  for (size_t i = 0; i < c->n_pins; i++)
    if (c->pins[i].owner == owner) {
      free_pin_set(&c->pins[i]);
      c->pins[i] = c->pins[--c->n_pins];
      break;
    }
}

/* The pin of p and its set, or NULL. */
static const pin *find_pin(const mp_pack_cache *c, const void *p, const pin_set **set) {
  const pin key = {(uintptr_t)p, NULL};
  for (size_t i = 0; i < c->n_pins; i++) {
    const pin *hit = bsearch(&key, c->pins[i].pins, c->pins[i].n, sizeof key, cmp_pin);
    if (hit) {
      if (set) *set = &c->pins[i];
      return hit;
    }
  }
  return NULL;
}

/* The owner that pinned p, or NULL. */
static const void *pinned_by(const mp_pack_cache *c, const void *p) {
  const pin_set *set;
  return find_pin(c, p, &set) ? set->owner : NULL;
}

bool mp_pack_cache_source(const mp_pack_cache *c, const void *data, mp_pack_store **store, const char **name) {
  const pin_set *set = NULL;
  const pin *hit = c ? find_pin(c, data, &set) : NULL;
  if (!hit || !hit->name || !set->store) return false;
  *store = set->store, *name = hit->name;
  return true;
}

mp_error *mp_pack_cache_entry(mp_pack_cache *c, const void *w, const void *b, struct mp_packed_weight **out) {
  *out = NULL;
  for (size_t i = 0; i < c->n; i++)
    if (c->e[i].pw.w == w && c->e[i].pw.b == b) {
      *out = &c->e[i].pw;
      return NULL;
    }
  const void *ow = pinned_by(c, w), *ob = b ? pinned_by(c, b) : NULL;
  if (!ow || (b && !ob)) return NULL;
  if (c->n == c->cap) {
    size_t cap = c->cap ? 2 * c->cap : 256;
    cache_entry *grown = realloc(c->e, cap * sizeof *grown);
    if (!grown) return mp_errorf("out of memory");
    c->e = grown, c->cap = cap;
  }
  c->e[c->n] = (cache_entry){{.w = w, .b = b}, ow, ob};
  *out = &c->e[c->n++].pw;
  return NULL;
}

size_t mp_pack_cache_count(const mp_pack_cache *c) {
  size_t k = 0;
  for (size_t i = 0; c && i < c->n; i++) k += c->e[i].pw.mm || c->e[i].pw.conv || c->e[i].pw.wino;
  return k;
}

void mp_pack_cache_drop_resident(mp_pack_cache *c) {
  for (size_t i = 0; c && i < c->n; i++) {
    mp_matmul_drop_resident(c->e[i].pw.mm);
    mp_dnnl_conv_drop_resident(c->e[i].pw.conv);
    mp_wino_bf16_drop_resident(c->e[i].pw.wino);
  }
}
