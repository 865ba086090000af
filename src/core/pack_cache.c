/* The backend's cache of packed weights (see pack_cache.h). */
#include "core/pack_cache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv_dnnl.h"
#include "core/conv_wino_bf16.h"
#include "core/matmul.h"

typedef struct {
  const void *owner;
  uintptr_t *addr; /* sorted */
  size_t n;
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

mp_error *mp_pack_cache_create(mp_pack_cache **out) {
  *out = calloc(1, sizeof **out);
  return *out ? NULL : mp_errorf("out of memory");
}

void mp_pack_cache_free(mp_pack_cache *c) {
  if (!c) return;
  for (size_t i = 0; i < c->n; i++) mp_packed_weight_clear(&c->e[i].pw);
  for (size_t i = 0; i < c->n_pins; i++) free(c->pins[i].addr);
  free(c->pins);
  free(c->e);
  free(c);
}

static int cmp_addr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

mp_error *mp_pack_cache_pin(mp_pack_cache *c, const void *owner, const void *const *data, size_t n) {
  for (size_t i = 0; i < c->n_pins; i++)
    if (c->pins[i].owner == owner) return mp_errorf("pack cache: this owner has already pinned its weights");
  pin_set s = {owner, malloc((n ? n : 1) * sizeof(uintptr_t)), 0};
  if (!s.addr) return mp_errorf("out of memory");
  for (size_t i = 0; i < n; i++)
    if (data[i]) s.addr[s.n++] = (uintptr_t)data[i];
  qsort(s.addr, s.n, sizeof *s.addr, cmp_addr);
  pin_set *grown = realloc(c->pins, (c->n_pins + 1) * sizeof *grown);
  if (!grown) {
    free(s.addr);
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
      free(c->pins[i].addr);
      c->pins[i] = c->pins[--c->n_pins];
      break;
    }
}

/* The owner that pinned p, or NULL. */
static const void *pinned_by(const mp_pack_cache *c, const void *p) {
  uintptr_t key = (uintptr_t)p;
  for (size_t i = 0; i < c->n_pins; i++)
    if (bsearch(&key, c->pins[i].addr, c->pins[i].n, sizeof key, cmp_addr)) return c->pins[i].owner;
  return NULL;
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
  for (size_t i = 0; c && i < c->n; i++) k += c->e[i].pw.mm || c->e[i].pw.conv;
  return k;
}
