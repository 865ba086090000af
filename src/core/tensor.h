/* Tensors: a dtype, a shape (row-major, outermost first, as PyTorch prints it), strides and data.
 *
 * A tensor either owns its data (allocated with mp_tensor_alloc, 64-byte aligned) or is a view
 * into memory owned by someone else (a memory-mapped checkpoint, an arena). Model code mostly
 * works on contiguous f32 buffers; weights keep the dtype they were stored in (f32, f16, bf16)
 * and are converted where they are consumed. */
#ifndef MP_CORE_TENSOR_H
#define MP_CORE_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef enum {
  MP_F32,
  MP_F16,
  MP_BF16,
  MP_I32,
  MP_I64,
  MP_U8,
  MP_I8,
  MP_F64,
  MP_DTYPE_COUNT
} mp_dtype;

#define MP_MAX_DIMS 8

typedef struct {
  mp_dtype dtype;
  int ndim;
  int64_t shape[MP_MAX_DIMS];
  int64_t stride[MP_MAX_DIMS]; /* in elements */
  void *data;
  bool owns_data;
} mp_tensor;

size_t mp_dtype_size(mp_dtype dt);
const char *mp_dtype_name(mp_dtype dt);

/* Number of elements; -1 if the shape is invalid or the count overflows. */
int64_t mp_shape_numel(int ndim, const int64_t *shape);
int64_t mp_tensor_numel(const mp_tensor *t);
size_t mp_tensor_nbytes(const mp_tensor *t);
bool mp_tensor_is_contiguous(const mp_tensor *t);

/* "[1,77,768]" into buf. */
const char *mp_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap);

/* Allocate a contiguous zeroed tensor. Rejects absurd sizes with an error. */
mp_error *mp_tensor_alloc(mp_tensor *t, mp_dtype dt, int ndim, const int64_t *shape);
/* A contiguous view of `data` (not owned). */
void mp_tensor_view(mp_tensor *t, mp_dtype dt, int ndim, const int64_t *shape, void *data);
void mp_tensor_free(mp_tensor *t);

/* Convert any float/int dtype to a newly allocated contiguous f32 tensor. */
mp_error *mp_tensor_to_f32(const mp_tensor *src, mp_tensor *dst);
/* Convert n elements of `src` (any dtype, contiguous) to f32. */
void mp_convert_to_f32(float *dst, const void *src, mp_dtype dt, size_t n);

/* Half-precision conversions (IEEE 754 binary16 and bfloat16, round-to-nearest-even). */
float mp_f16_to_f32(uint16_t h);
uint16_t mp_f32_to_f16(float f);
/* dst[i] = mp_f32_to_f16(src[i]) for i < n, in hardware (F16C, round to nearest even) where available. */
void mp_convert_f32_to_f16(uint16_t *dst, const float *src, size_t n);
float mp_bf16_to_f32(uint16_t b);
uint16_t mp_f32_to_bf16(float f);

/* Allocation helpers for buffers that are not tensors: 64-byte aligned, NULL-safe free. From 8 MB up
 * (activations, workspaces, a VAE decode's arena) mp_alloc asks for transparent huge pages on the
 * block's 2 MB-aligned inside (madvise; where THP is "madvise" or "always"): on the virtual machines
 * this runs on, faulting in and zeroing fresh 4 KB pages costs ~2.5 ms per MB, about twice the huge
 * pages' cost, and a buffer of this size is touched whole anyway. */
void *mp_alloc(size_t nbytes);
void *mp_calloc(size_t n, size_t size);
void mp_free(void *p);
/* Large buffers written once and kept a while (a LoRA overlay's patched tensors, the packs made for
 * them): pages of their own with transparent huge pages asked for. On the virtual machines this runs on
 * a 4 KB page fault costs ~10 us, and first touching the ~380 MB a LoRA switch writes at SD 1.5 size
 * took ~1 s in 4 KB pages. Freed (returned to the kernel at once) by mp_free_pages with the same size.
 * NULL when out of memory. */
void *mp_alloc_pages(size_t nbytes);
void mp_free_pages(void *p, size_t nbytes);
/* Such pages kept for reuse: memory written again and again at the same size (a LoRA overlay's patched
 * tensors, one switch after the other) costs its first touch once. Zero-initialise; one user at a time. */
typedef struct {
  void *p;
  size_t cap;
} mp_page_arena;
/* At least nbytes of the arena (contents not kept when it grows); NULL when out of memory. */
void *mp_page_arena_reserve(mp_page_arena *a, size_t nbytes);
void mp_page_arena_free(mp_page_arena *a);
/* Mappings from mp_alloc_pages kept after use for the next request of the same size: the packs of one
 * LoRA's layers are freed at a switch and the next LoRA's, of the same layers and sizes, take their pages
 * instead of faulting new ones in. At most max_bytes are kept; one user at a time. */
typedef struct mp_spare_pages mp_spare_pages;
mp_spare_pages *mp_spare_pages_create(size_t max_bytes);
/* A kept mapping of exactly nbytes, else a new one (mp_alloc_pages); NULL when out of memory. With s NULL,
 * a new one, to be given back to NULL. */
void *mp_spare_pages_take(mp_spare_pages *s, size_t nbytes);
/* Give back p (nbytes) taken from s: kept for reuse, or unmapped when s is full (or NULL). */
void mp_spare_pages_give(mp_spare_pages *s, void *p, size_t nbytes);
/* Unmap every kept mapping (between the phases of a job, to lower the peak RSS). s may be NULL. */
void mp_spare_pages_release(mp_spare_pages *s);
/* The owner is done with s: what it keeps is unmapped at once; mappings still taken may be given back
 * afterwards (unmapped then; s goes with the last of them), as a model's packs may outlive its backend. */
void mp_spare_pages_free(mp_spare_pages *s);

#endif
