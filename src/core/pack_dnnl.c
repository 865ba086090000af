/* Packed oneDNN weights from the pack store or memory (see pack_dnnl.h). */
#include "core/pack_dnnl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "core/pack_cache.h"
#include "core/tensor.h"

typedef struct {
  char *p;
  size_t left;
  bool ok;
} text;

static void put(text *t, const char *fmt, ...) {
  if (!t->ok) return;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(t->p, t->left, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= t->left) {
    t->ok = false;
    return;
  }
  t->p += n, t->left -= (size_t)n;
}

static void put_dims(text *t, const char *what, const dnnl_dim_t *d, int n) {
  put(t, " %s=", what);
  for (int i = 0; i < n; i++) put(t, i ? ",%lld" : "%lld", (long long)d[i]);
}

bool mp_dnnl_layout_text(const dnnl_memory_desc_t *md, char *buf, size_t cap) {
  if (md->format_kind != dnnl_blocked || md->ndims < 1 || md->ndims > DNNL_MAX_NDIMS) return false;
  const dnnl_blocking_desc_t *bd = &md->format_desc.blocking;
  if (bd->inner_nblks < 0 || bd->inner_nblks > DNNL_MAX_NDIMS) return false;
  const dnnl_version_t *v = dnnl_version();
  text t = {buf, cap, cap > 0};
  put(&t, "onednn %d.%d.%d %s isa=%d type=%d", v->major, v->minor, v->patch, v->hash ? v->hash : "", (int)dnnl_get_effective_cpu_isa(),
      (int)md->data_type);
  put_dims(&t, "dims", md->dims, md->ndims);
  put_dims(&t, "padded", md->padded_dims, md->ndims);
  put_dims(&t, "offsets", md->padded_offsets, md->ndims);
  put(&t, " offset0=%lld", (long long)md->offset0);
  put_dims(&t, "strides", bd->strides, md->ndims);
  put_dims(&t, "blocks", bd->inner_blks, bd->inner_nblks);
  put_dims(&t, "block_dims", bd->inner_idxs, bd->inner_nblks);
  put(&t, " extra=%llu,%d,%a,%d", (unsigned long long)md->extra.flags, md->extra.compensation_mask, (double)md->extra.scale_adjust,
      md->extra.asymm_compensation_mask);
  return t.ok;
}

static void free_heap(mp_packed_mem *m) {
  if (m->heap_mapped) mp_spare_pages_give(m->spares, m->heap, m->heap_mapped);
  else mp_free(m->heap);
  m->heap = NULL, m->heap_mapped = 0;
}

void mp_packed_mem_free(mp_packed_mem *m) {
  mp_pack_map_release(&m->map);
  free_heap(m);
}

void mp_packed_mem_drop_resident(mp_packed_mem *m) { mp_pack_map_drop_resident(&m->map); }

static mp_error *ck(dnnl_status_t s, const char *what) {
  return s == dnnl_success ? NULL : mp_errorf("oneDNN %s failed (status %d)", what, (int)s);
}

mp_error *mp_pack_dnnl_reorder(mp_backend *b, const dnnl_memory_desc_t *from_md, void *from, const dnnl_memory_desc_t *to_md,
                               dnnl_memory_t dst) {
  dnnl_engine_t eng = mp_backend_dnnl_engine(b);
  dnnl_memory_t user = NULL;
  dnnl_primitive_desc_t rpd = NULL;
  dnnl_primitive_t reorder = NULL;
  mp_error *e = ck(dnnl_memory_create(&user, from_md, eng, from), "weight memory");
  if (!e) e = ck(dnnl_reorder_primitive_desc_create(&rpd, from_md, eng, to_md, eng, NULL), "weight reorder");
  if (!e) e = ck(dnnl_primitive_create(&reorder, rpd), "weight reorder");
  if (!e) {
    dnnl_stream_t st = mp_backend_dnnl_stream(b);
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, user}, {DNNL_ARG_TO, dst}};
    e = ck(dnnl_primitive_execute(reorder, st, 2, args), "weight reorder");
    if (!e) e = ck(dnnl_stream_wait(st), "stream wait");
  }
  if (reorder) dnnl_primitive_destroy(reorder);
  if (rpd) dnnl_primitive_desc_destroy(rpd);
  if (user) dnnl_memory_destroy(user);
  return e;
}

mp_error *mp_pack_dnnl_weight(mp_backend *b, const void *w_data, const char *kind, const dnnl_memory_desc_t *md, mp_pack_fill_fn fill,
                              void *fill_ctx, dnnl_memory_t *out, mp_packed_mem *mem) {
  return mp_pack_dnnl_weight_as(b, w_data, kind, NULL, md, fill, fill_ctx, out, mem);
}

mp_error *mp_pack_dnnl_weight_as(mp_backend *b, const void *w_data, const char *kind, const char *form,
                                 const dnnl_memory_desc_t *md, mp_pack_fill_fn fill, void *fill_ctx, dnnl_memory_t *out,
                                 mp_packed_mem *mem) {
  *out = NULL;
  memset(mem, 0, sizeof *mem);
  dnnl_engine_t eng = mp_backend_dnnl_engine(b);
  const size_t bytes = dnnl_memory_desc_get_size(md);
  mp_pack_store *store = NULL;
  const char *name = NULL;
  char layout[1536];
  const int lead = form ? snprintf(layout, sizeof layout, "%s | ", form) : 0;
  if (lead < 0 || (size_t)lead >= sizeof layout / 2 ||
      !mp_pack_cache_source(mp_backend_pack_cache(b), w_data, &store, &name) ||
      !mp_dnnl_layout_text(md, layout + lead, sizeof layout - (size_t)lead))
    store = NULL;
  if (store && mp_pack_store_load(store, kind, name, layout, bytes, &mem->map)) {
    mp_error *e = ck(dnnl_memory_create(out, md, eng, mem->map.payload), "packed weights memory");
    if (e) mp_packed_mem_free(mem);
    return e;
  }
  /* A pack of some size gets pages of its own (huge pages where the kernel gives them). One bound for
   * the store lives in memory only until it is saved, and freed from malloc's heap its pages tend to
   * stay with the process (+58 MB of peak RSS at the first load at SD 1.5 size). One private to a model
   * (a LoRA-patched layer) is made at every switch: its pages come from the backend's spares, where the
   * previous LoRA's packs of the same layers went, instead of being faulted in anew (see mp_alloc_pages). */
  if (bytes >= 65536) {
    mem->spares = store ? NULL : mp_backend_spare_pages(b);
    if ((mem->heap = mp_spare_pages_take(mem->spares, bytes))) mem->heap_mapped = bytes;
  }
  if (!mem->heap && !(mem->heap = mp_alloc(bytes ? bytes : 1)))
    return mp_errorf("out of memory packing a weight (%zu MB)", bytes >> 20);
  mp_error *e = ck(dnnl_memory_create(out, md, eng, mem->heap), "packed weights memory");
  if (!e) e = fill(fill_ctx, *out);
  if (!e && store && mp_pack_store_save(store, kind, name, layout, mem->heap, bytes, &mem->map)) {
    /* the same bytes, now clean and file-backed */
    e = ck(dnnl_memory_set_data_handle(*out, mem->map.payload), "packed weights handle");
    if (!e) free_heap(mem);
  }
  if (e) {
    if (*out) dnnl_memory_destroy(*out);
    *out = NULL;
    mp_packed_mem_free(mem);
  }
  return e;
}
