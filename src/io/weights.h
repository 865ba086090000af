/* A checkpoint as a set of named tensors, whatever file it came from.
 *
 * Readers (safetensors.c, ckpt.c, ...) fill an mp_weights; models look tensors up by name. Tensor
 * data points into the memory-mapped file where alignment allows (zero-copy), else into a copy the
 * mp_weights owns. Everything is released by mp_weights_close. */
#ifndef MP_IO_WEIGHTS_H
#define MP_IO_WEIGHTS_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"
#include "core/tensor.h"

typedef struct {
  char *name;
  mp_tensor t; /* contiguous view; data valid while the mp_weights is open */
  char *source; /* a renamed tensor's original name ("unet/conv_in.weight"), for error messages; else NULL */
} mp_weight;

typedef struct mp_weights mp_weights;

/* Open a checkpoint, choosing the reader by content: safetensors, or a PyTorch zip (.ckpt/.pt/.bin);
 * a folder with model_index.json is a diffusers folder, read by mp_diffusers_open (io/diffusers.h). */
mp_error *mp_weights_open(const char *path, mp_weights **out);
void mp_weights_close(mp_weights *w);

size_t mp_weights_count(const mp_weights *w);
const mp_weight *mp_weights_at(const mp_weights *w, size_t i);
/* NULL if absent. O(log n). */
const mp_weight *mp_weights_find(const mp_weights *w, const char *name);
const char *mp_weights_path(const mp_weights *w);
/* The readers w adopted (a diffusers folder: one per weights file), each with its own path. */
size_t mp_weights_n_parts(const mp_weights *w);
const mp_weights *mp_weights_part(const mp_weights *w, size_t i);
/* The safetensors __metadata__ object as JSON text, or NULL. */
const char *mp_weights_metadata(const mp_weights *w);
/* Let the kernel take back the resident pages of the tensor data [data, data + bytes) when it lies in
 * a read-only file mapping that w holds (its own, an adopted part's, or that of the weights it views):
 * the next read faults them in again from the page cache (or the file), unchanged, but meanwhile they
 * do not count in the process's memory. Data anywhere else (copies, merged LoRA layers) is left
 * alone. For weights used in one phase of a job (the text encoders). Returns whether it dropped. */
bool mp_weights_drop_pages(const mp_weights *w, const void *data, size_t bytes);

/* ---- for readers ---- */
mp_weights *mp_weights_new(const char *path);
/* Keep `mem` alive until close; `release(mem, size)` frees it (munmap, free, ...). */
void mp_weights_set_backing(mp_weights *w, void *mem, size_t size, void (*release)(void *, size_t));
mp_error *mp_weights_set_metadata(mp_weights *w, const char *json);
/* Add a tensor viewing `data` (which must outlive w). Copies into owned aligned memory when `data`
 * is not aligned to its element size. Rejects duplicate names after mp_weights_finish. */
mp_error *mp_weights_add(mp_weights *w, const char *name, mp_dtype dt, int ndim, const int64_t *shape, const void *data);
/* Add a tensor whose data the mp_weights takes over (allocated with mp_alloc). */
mp_error *mp_weights_add_owned(mp_weights *w, const char *name, mp_dtype dt, int ndim, const int64_t *shape, void *data);
/* Make `part` live as long as w (closed by mp_weights_close(w)), so that w can hold views into its
 * tensors: a checkpoint assembled from several files (a diffusers folder) is one mp_weights over
 * several mapped files. On error `part` is closed. */
mp_error *mp_weights_adopt(mp_weights *w, mp_weights *part);
/* Record that w holds views of `viewed`'s tensors (a LoRA overlay of its base), so that
 * mp_weights_drop_pages knows their memory too; `viewed` must outlive w. */
void mp_weights_set_viewed(mp_weights *w, const mp_weights *viewed);
/* Record the original name of the tensor added last (a reader that renames, like the diffusers one). */
mp_error *mp_weights_set_source(mp_weights *w, const char *source);
/* Sort for lookup and reject duplicate names. Call once after the last add. */
mp_error *mp_weights_finish(mp_weights *w);

/* The two readers behind mp_weights_open; callable directly. */
mp_error *mp_safetensors_open(const char *path, mp_weights **out);
mp_error *mp_safetensors_parse(const char *path, const void *buf, size_t size, mp_weights *w);
mp_error *mp_ckpt_open(const char *path, mp_weights **out);

/* Write tensors to a .safetensors file (header sorted by name, data 8-byte aligned). */
mp_error *mp_safetensors_write(const char *path, size_t n, const char *const *names, const mp_tensor *tensors,
                               const char *metadata_json);

/* Map `path` read-only and let `parse` fill a new mp_weights that keeps the mapping alive. */
typedef mp_error *(*mp_weights_parse_fn)(const char *path, const void *buf, size_t size, mp_weights *w);
mp_error *mp_weights_open_mapped(const char *path, mp_weights_parse_fn parse, mp_weights **out);

/* Map a whole file read-only. */
mp_error *mp_map_file(const char *path, void **mem, size_t *size);
void mp_unmap_file(void *mem, size_t size);

#endif
