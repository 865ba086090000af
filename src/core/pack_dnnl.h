/* Where a oneDNN operator's packed weight lives: mapped from the on-disk pack store when the weight is a
 * pinned checkpoint tensor with a store (core/pack_cache.h, core/pack_store.h), else in memory.
 *
 * mp_pack_dnnl_weight is the one path both bf16 operators (matmul.c, conv_dnnl.c) pack through:
 * a store hit maps the record and packs nothing; a miss packs into memory (the operator's fill function
 * does the rounding and reordering), saves the record and, once saved, switches the oneDNN memory to the
 * file mapping, so that even the first run ends with clean, file-backed packs the kernel can drop. */
#ifndef MP_CORE_PACK_DNNL_H
#define MP_CORE_PACK_DNNL_H

#include <oneapi/dnnl/dnnl.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/matmul.h"
#include "core/pack_store.h"

typedef struct {
  mp_pack_map map; /* the payload mapped from the store, or */
  void *heap;      /* an in-memory copy (not pinned, no store, store disabled or save failed) */
  size_t heap_mapped; /* > 0: heap is an anonymous mapping of this many bytes, not mp_alloc'd */
  mp_spare_pages *spares; /* where that mapping goes back to when freed (NULL: unmapped) */
} mp_packed_mem;

/* Fills dst (memory of the packed layout) from the operator's stored weight. */
typedef mp_error *(*mp_pack_fill_fn)(void *ctx, dnnl_memory_t dst);

/* *out: oneDNN memory of layout md holding the packed weight whose stored data is w_data; mem: what
 * backs it (free with mp_packed_mem_free after destroying *out). kind names the packed form. */
mp_error *mp_pack_dnnl_weight(mp_backend *b, const void *w_data, const char *kind, const dnnl_memory_desc_t *md, mp_pack_fill_fn fill,
                              void *fill_ctx, dnnl_memory_t *out, mp_packed_mem *mem);
/* The same for a packed form whose bytes depend on more than md says (a transformed weight, e.g. the
 * Winograd U = G g Gᵀ): `form` (one line) describes that transform and is put before md's layout text in
 * the record's layout, so a change of transform can never map a record of the old one. */
mp_error *mp_pack_dnnl_weight_as(mp_backend *b, const void *w_data, const char *kind, const char *form,
                                 const dnnl_memory_desc_t *md, mp_pack_fill_fn fill, void *fill_ctx, dnnl_memory_t *out,
                                 mp_packed_mem *mem);
/* For fill functions: reorder `from`, the weight in a plain layout from_md, into dst (layout to_md),
 * converting its data type on the way (oneDNN's reorder, run to completion on the backend's stream). */
mp_error *mp_pack_dnnl_reorder(mp_backend *b, const dnnl_memory_desc_t *from_md, void *from, const dnnl_memory_desc_t *to_md,
                               dnnl_memory_t dst);
void mp_packed_mem_free(mp_packed_mem *m);
void mp_packed_mem_drop_resident(mp_packed_mem *m);

/* A one-line description of md complete enough that equal text means equal bytes for equal weights:
 * the oneDNN version and CPU ISA, the data type, dims, padding and blocking; false for layouts other
 * than blocked ones (not cached). */
bool mp_dnnl_layout_text(const dnnl_memory_desc_t *md, char *buf, size_t cap);

#endif
