/* Packed weights that outlive a model: the bf16 backend's cache of weights already rounded and
 * reordered for oneDNN, keyed by the identity (data address) of the stored tensor.
 *
 * Why: a LoRA switch rebinds the UNet and text encoder to an overlay whose untouched entries view the
 * same base checkpoint memory. With packs owned by each model's workspace every switch re-packed all
 * of the UNet (~20-30 s at SD 1.5 size); with this cache only the layers the LoRA patched are packed.
 *
 * Correctness rests on pinning: an address is looked up here only if an owner has pinned it, i.e.
 * promised that the bytes there stay valid and unchanged until it calls mp_pack_cache_release (the
 * engine pins its base checkpoint's tensors for as long as it is open). Memory that comes and goes
 * (a LoRA overlay's patched tensors, freed when the LoRA changes and possibly reused by the next
 * overlay's allocation) is never pinned, so its packs stay private to the model's workspace and die
 * with it: a stale pack cannot be found through a reused address. Releasing an owner frees every
 * pack whose weight or bias it pinned. Not thread-safe: models using one backend run one at a time. */
#ifndef MP_CORE_PACK_CACHE_H
#define MP_CORE_PACK_CACHE_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

struct mp_matmul;
struct mp_dnnl_conv;
struct mp_wino_bf16;
struct mp_pack_store;

/* One packed weight (and bias) as the bf16 operators use it (core/conv.c). */
struct mp_packed_weight {
  const void *w, *b;          /* the stored weight and bias data: the key */
  struct mp_matmul *mm;       /* dense layers, and convolutions oneDNN's primitive declined */
  struct mp_dnnl_conv *conv;  /* convolutions */
  struct mp_wino_bf16 *wino;  /* 3x3 convolutions by Winograd (core/conv_wino_bf16.h), where chosen */
  bool stored_released;       /* the stored weight's pages were handed back once packed (core/conv.c) */
};
/* Frees what the entry holds (not the entry). */
void mp_packed_weight_clear(struct mp_packed_weight *pw);

typedef struct mp_pack_cache mp_pack_cache;

mp_error *mp_pack_cache_create(mp_pack_cache **out);
/* Frees every pack (call before the backend the packs were made for goes). */
void mp_pack_cache_free(mp_pack_cache *c);

/* Pin n data addresses for `owner` (any unique address, e.g. the mp_weights they belong to). An
 * owner may pin once; NULL entries are skipped. */
mp_error *mp_pack_cache_pin(mp_pack_cache *c, const void *owner, const void *const *data, size_t n);
/* The same with the tensors' names (names[i] for data[i]; copied) and the on-disk store their packs are
 * saved to and loaded from (core/pack_store.h; taken over, closed on release; may be NULL). On error the
 * store is closed. */
mp_error *mp_pack_cache_pin_named(mp_pack_cache *c, const void *owner, const void *const *data, const char *const *names,
                                  size_t n, struct mp_pack_store *store);
/* Where the pack of pinned data may be kept on disk: true with its store and tensor name, false when
 * the data is not pinned or its owner gave no names or store (the operator packs in memory only). The
 * results are valid while the owner stays pinned. c may be NULL. */
bool mp_pack_cache_source(const mp_pack_cache *c, const void *data, struct mp_pack_store **store, const char **name);
/* Take every cached pack that is mapped from disk out of the resident set (mp_backend_trim, between
 * the phases of a job: the UNet's packs need not be resident while the VAE decodes). */
void mp_pack_cache_drop_resident(mp_pack_cache *c);
/* Unpin the owner's addresses and free the packs that used them. Unknown owners are a no-op. */
void mp_pack_cache_release(mp_pack_cache *c, const void *owner);

/* The entry for weight data w with bias data b (b may be NULL) when both are pinned, creating an
 * empty one ({w, b, NULL, NULL}) on first use; *out = NULL when they are not pinned (the caller packs
 * privately). The pointer is valid until the next call on c. */
mp_error *mp_pack_cache_entry(mp_pack_cache *c, const void *w, const void *b, struct mp_packed_weight **out);

/* Entries holding a pack (for tests and figures). */
size_t mp_pack_cache_count(const mp_pack_cache *c);

#endif
