#include "core/tensor.h"

#include <immintrin.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Anything above this is a corrupt header or a hostile file, not a real model tensor (16 GiB). */
#define MP_MAX_TENSOR_BYTES ((int64_t)16 << 30)

static const struct {
  const char *name;
  size_t size;
} dtype_info[MP_DTYPE_COUNT] = {
    [MP_F32] = {"F32", 4}, [MP_F16] = {"F16", 2}, [MP_BF16] = {"BF16", 2}, [MP_I32] = {"I32", 4},
    [MP_I64] = {"I64", 8}, [MP_U8] = {"U8", 1},   [MP_I8] = {"I8", 1},     [MP_F64] = {"F64", 8},
};

size_t mp_dtype_size(mp_dtype dt) { return (unsigned)dt < MP_DTYPE_COUNT ? dtype_info[dt].size : 0; }
const char *mp_dtype_name(mp_dtype dt) { return (unsigned)dt < MP_DTYPE_COUNT ? dtype_info[dt].name : "?"; }

int64_t mp_shape_numel(int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > MP_MAX_DIMS) return -1;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return -1;
    if (shape[i] != 0 && n > INT64_MAX / shape[i]) return -1;
    n *= shape[i];
  }
  return n;
}

int64_t mp_tensor_numel(const mp_tensor *t) { return mp_shape_numel(t->ndim, t->shape); }
size_t mp_tensor_nbytes(const mp_tensor *t) { return (size_t)mp_tensor_numel(t) * mp_dtype_size(t->dtype); }

bool mp_tensor_is_contiguous(const mp_tensor *t) {
  int64_t expect = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    if (t->shape[i] != 1 && t->stride[i] != expect) return false;
    expect *= t->shape[i];
  }
  return true;
}

const char *mp_shape_str(int ndim, const int64_t *shape, char *buf, size_t cap) {
  size_t n = 0;
  if (cap == 0) return buf;
  buf[0] = 0;
  n += (size_t)snprintf(buf + n, n < cap ? cap - n : 0, "[");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, i ? ",%lld" : "%lld", (long long)shape[i]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
  return buf;
}

static void set_contiguous(mp_tensor *t, mp_dtype dt, int ndim, const int64_t *shape) {
  t->dtype = dt;
  t->ndim = ndim;
  int64_t s = 1;
  for (int i = ndim - 1; i >= 0; i--) {
    t->shape[i] = shape[i];
    t->stride[i] = s;
    s *= shape[i];
  }
}

mp_error *mp_tensor_alloc(mp_tensor *t, mp_dtype dt, int ndim, const int64_t *shape) {
  memset(t, 0, sizeof *t);
  char sb[128];
  int64_t n = mp_shape_numel(ndim, shape);
  if (n < 0 || (unsigned)dt >= MP_DTYPE_COUNT)
    return mp_errorf("invalid tensor shape %s", ndim >= 0 && ndim <= MP_MAX_DIMS ? mp_shape_str(ndim, shape, sb, sizeof sb) : "(bad rank)");
  if (n > MP_MAX_TENSOR_BYTES / (int64_t)mp_dtype_size(dt))
    return mp_errorf("tensor of shape %s is too large (limit %lld bytes)", mp_shape_str(ndim, shape, sb, sizeof sb),
                     (long long)MP_MAX_TENSOR_BYTES);
  set_contiguous(t, dt, ndim, shape);
  t->data = mp_calloc((size_t)(n ? n : 1), mp_dtype_size(dt));
  if (!t->data) return mp_errorf("out of memory allocating %s tensor %s", mp_dtype_name(dt), mp_shape_str(ndim, shape, sb, sizeof sb));
  t->owns_data = true;
  return NULL;
}

void mp_tensor_view(mp_tensor *t, mp_dtype dt, int ndim, const int64_t *shape, void *data) {
  memset(t, 0, sizeof *t);
  set_contiguous(t, dt, ndim, shape);
  t->data = data;
  t->owns_data = false;
}

void mp_tensor_free(mp_tensor *t) {
  if (!t) return;
  if (t->owns_data) mp_free(t->data);
  memset(t, 0, sizeof *t);
}

/* IEEE binary16 <-> binary32, exact for every half value, round-to-nearest-even the other way. */
float mp_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { /* subnormal: renormalise */
      int e = -1;
      do {
        e++;
        mant <<= 1;
      } while (!(mant & 0x400));
      bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | mant << 13;
  } else {
    bits = sign | (exp + 112) << 23 | mant << 13;
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t mp_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t absx = x & 0x7fffffff;
  if (absx >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
  if (absx >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* overflows to inf after rounding */
  if (absx < 0x38800000) {                                   /* result is subnormal or zero */
    if (absx < 0x33000000) return (uint16_t)sign;
    uint32_t e = absx >> 23, m = (absx & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ((absx >> 13) - (112u << 10));
  uint32_t rem = absx & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
  return (uint16_t)(sign | r);
}

float mp_bf16_to_f32(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, 4);
  return f;
}

uint16_t mp_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
  x += 0x7fff + ((x >> 16) & 1);
  return (uint16_t)(x >> 16);
}

/* ---- f16 <-> f32 by the CPU's F16C, 8 at a time: loading an f16 checkpoint is dominated by this. F16C
 * is not in the baseline a portable build (MPASS_NATIVE=OFF) targets, so it is asked of the CPU at run
 * time; every CPU with AVX2 has it (and clang 14 cannot ask for f16c by name). ---- */
static bool have_f16c(void) {
#ifdef __F16C__
  return true;
#else
  return __builtin_cpu_supports("avx2");
#endif
}

__attribute__((target("avx,f16c"))) static size_t f16_to_f32_f16c(float *dst, const unsigned char *src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * i))));
  return i;
}

__attribute__((target("avx,f16c"))) static size_t f32_to_f16_f16c(uint16_t *dst, const float *src, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  return i;
}

void mp_convert_f32_to_f16(uint16_t *dst, const float *src, size_t n) {
  size_t i = have_f16c() ? f32_to_f16_f16c(dst, src, n) : 0;
  for (; i < n; i++) dst[i] = mp_f32_to_f16(src[i]);
}

void mp_convert_to_f32(float *dst, const void *src, mp_dtype dt, size_t n) {
  const unsigned char *p = src;
  switch (dt) {
    case MP_F32: memcpy(dst, src, n * 4); break;
    case MP_F16: {
      size_t i = have_f16c() ? f16_to_f32_f16c(dst, p, n) : 0;
      for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = mp_f16_to_f32(h);
      }
      break;
    }
    case MP_BF16:
      for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = mp_bf16_to_f32(h);
      }
      break;
    case MP_F64:
      for (size_t i = 0; i < n; i++) {
        double d;
        memcpy(&d, p + 8 * i, 8);
        dst[i] = (float)d;
      }
      break;
    case MP_I32:
      for (size_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        dst[i] = (float)v;
      }
      break;
    case MP_I64:
      for (size_t i = 0; i < n; i++) {
        int64_t v;
        memcpy(&v, p + 8 * i, 8);
        dst[i] = (float)v;
      }
      break;
    case MP_U8:
      for (size_t i = 0; i < n; i++) dst[i] = p[i];
      break;
    case MP_I8:
      for (size_t i = 0; i < n; i++) dst[i] = (signed char)p[i];
      break;
    default: memset(dst, 0, n * 4); break;
  }
}

mp_error *mp_tensor_to_f32(const mp_tensor *src, mp_tensor *dst) {
  if (!mp_tensor_is_contiguous(src)) return mp_errorf("mp_tensor_to_f32: tensor is not contiguous");
  MP_TRY(mp_tensor_alloc(dst, MP_F32, src->ndim, src->shape));
  mp_convert_to_f32(dst->data, src->data, src->dtype, (size_t)mp_tensor_numel(src));
  return NULL;
}

/* see mp_alloc in tensor.h: the x86-64 huge page, and the size from which a block asks for them */
enum { HUGE_PAGE = 2 << 20, HUGE_FROM = 8 << 20 };

/* Ask for transparent huge pages on the 2 MB-aligned inside of [p, p + n); advisory: without THP
 * the pages stay 4 KB. */
static void ask_huge_pages(void *p, size_t n) {
#ifdef MADV_HUGEPAGE
  uintptr_t lo = ((uintptr_t)p + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1), hi = ((uintptr_t)p + n) & ~(uintptr_t)(HUGE_PAGE - 1);
  if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
  (void)p, (void)n;
#endif
}

void *mp_alloc(size_t nbytes) {
  void *p = NULL;
  size_t rounded = (nbytes + 63) & ~(size_t)63;
  if (rounded < nbytes) return NULL;
  if (posix_memalign(&p, 64, rounded ? rounded : 64)) return NULL;
  if (rounded >= HUGE_FROM) ask_huge_pages(p, rounded);
  return p;
}

void *mp_calloc(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) return NULL;
  void *p = mp_alloc(n * size);
  if (p) memset(p, 0, n * size);
  return p;
}

void mp_free(void *p) { free(p); }

void *mp_alloc_pages(size_t nbytes) {
  void *p = mmap(NULL, nbytes ? nbytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  ask_huge_pages(p, nbytes);
  return p;
}

void mp_free_pages(void *p, size_t nbytes) {
  if (p) munmap(p, nbytes ? nbytes : 1);
}

void *mp_page_arena_reserve(mp_page_arena *a, size_t nbytes) {
  if (nbytes <= a->cap && a->p) return a->p;
  mp_page_arena_free(a);
  if ((a->p = mp_alloc_pages(nbytes))) a->cap = nbytes;
  return a->p;
}

void mp_page_arena_free(mp_page_arena *a) {
  mp_free_pages(a->p, a->cap);
  a->p = NULL, a->cap = 0;
}

struct mp_spare_pages {
  struct spare {
    void *p;
    size_t bytes;
  } *kept;
  size_t n, cap, bytes, max_bytes;
  size_t lent;   /* mappings taken and not given back */
  bool orphaned; /* freed by its owner while some were lent: goes with the last one */
};

mp_spare_pages *mp_spare_pages_create(size_t max_bytes) {
  mp_spare_pages *s = calloc(1, sizeof *s);
  if (s) s->max_bytes = max_bytes;
  return s;
}

static void spare_pages_destroy(mp_spare_pages *s) {
  free(s->kept);
  free(s);
}

void *mp_spare_pages_take(mp_spare_pages *s, size_t nbytes) {
  if (!s) return mp_alloc_pages(nbytes);
  void *p = NULL;
  for (size_t i = 0; i < s->n && !p; i++)
    if (s->kept[i].bytes == nbytes) {
      p = s->kept[i].p;
      s->kept[i] = s->kept[--s->n];
      s->bytes -= nbytes;
    }
  if (!p) p = mp_alloc_pages(nbytes);
  if (p) s->lent++;
  return p;
}

void mp_spare_pages_give(mp_spare_pages *s, void *p, size_t nbytes) {
  if (!p) return;
  if (s) s->lent--;
  if (s && !s->orphaned && s->bytes + nbytes <= s->max_bytes) {
    if (s->n == s->cap) {
      size_t cap = s->cap ? 2 * s->cap : 64;
      struct spare *grown = realloc(s->kept, cap * sizeof *grown);
      if (grown) s->kept = grown, s->cap = cap;
    }
    if (s->n < s->cap) {
      s->kept[s->n++] = (struct spare){p, nbytes};
      s->bytes += nbytes;
      return;
    }
  }
  mp_free_pages(p, nbytes);
  if (s && s->orphaned && s->lent == 0) spare_pages_destroy(s);
}

void mp_spare_pages_release(mp_spare_pages *s) {
  for (size_t i = 0; s && i < s->n; i++) mp_free_pages(s->kept[i].p, s->kept[i].bytes);
  if (s) s->n = 0, s->bytes = 0;
}

void mp_spare_pages_free(mp_spare_pages *s) {
  if (!s) return;
  mp_spare_pages_release(s);
  if (s->lent == 0) spare_pages_destroy(s);
  else s->orphaned = true;
}
