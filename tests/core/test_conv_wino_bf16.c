/* The bf16 Winograd F(2x2,3x3) convolution against the f32 reference (mp_ref_conv2d): within bf16's
 * precision (V and U rounded to bf16, f32 accumulation: rel L2 about 4e-3, twice the direct bf16
 * convolution's) over odd and tiny images, channel counts that are not a multiple of the 32-lane
 * transform blocks, rows wider than one staged strip of 16 tiles, batch > 1, bias or not, bands
 * smaller than the image, one pack reused over many shapes (primitive cache eviction); mp_conv2d
 * taking it exactly where mp_wino_bf16_pays says so; and its refusals. Its pack in the on-disk pack
 * store (core/pack_store.h): saved on the first packing of a pinned weight, mapped byte for byte by the
 * next backend, dropped from the resident set by the trim and faulted back, and damaged or short
 * records warned about and packed again. */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/conv.h"
#include "core/conv_wino_bf16.h"
#include "core/matmul.h"
#include "core/pack_cache.h"
#include "core/pack_store.h"
#include "testutil.h"

typedef struct {
  mp_pool *pool;
  mp_backend *be;
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (!f || mp_pool_create(2, &f->pool) || mp_backend_create(MP_PRECISION_BF16, 2, &f->be)) return -1;
  mp_pool_set_backend(f->pool, f->be);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  mp_pool_destroy(f->pool);
  mp_backend_destroy(f->be);
  free(f);
  return 0;
}

/* A packed [O, C, 3, 3] f16 weight (values exactly representable in f16, kept in W32 for the reference). */
typedef struct {
  int C, O;
  float *W32, *bias;
  uint16_t *W16;
  mp_tensor tw, tb;
} layer;

static void layer_make(layer *l, int C, int O, unsigned seed) {
  const int64_t nw = (int64_t)O * C * 9;
  l->C = C, l->O = O;
  l->W32 = malloc(sizeof(float) * nw), l->W16 = malloc(2 * nw), l->bias = malloc(sizeof(float) * O);
  test_fill(l->W32, nw, seed), test_fill(l->bias, O, seed + 1);
  for (int64_t i = 0; i < nw; i++) l->W16[i] = mp_f32_to_f16(l->W32[i]), l->W32[i] = mp_f16_to_f32(l->W16[i]);
  mp_tensor_view(&l->tw, MP_F16, 4, (int64_t[]){O, C, 3, 3}, l->W16);
  mp_tensor_view(&l->tb, MP_F32, 1, (int64_t[]){O}, l->bias);
}

static void layer_free(layer *l) { free(l->W32), free(l->W16), free(l->bias); }

/* rel L2 of the Winograd convolution (packed as `wc`, run with band_rows) against the reference. */
static double wino_error(fixture *f, mp_workspace *ws, mp_wino_bf16 *wc, const layer *l, int batch, int h, int w, bool bias,
                         int band_rows) {
  const int64_t nx = (int64_t)batch * l->C * h * w, ny = (int64_t)batch * l->O * h * w;
  float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * ny), *r = malloc(sizeof(float) * ny);
  test_fill(x, nx, 7u + (unsigned)(h * 31 + w));
  for (int64_t i = 0; i < ny; i++) y[i] = NAN; /* every output must be written */
  assert_ok(mp_wino_bf16_run(wc, f->pool, ws, x, batch, h, w, y, band_rows));
  const mp_pad p1 = {1, 1, 1, 1};
  for (int b = 0; b < batch; b++)
    mp_ref_conv2d(r + (int64_t)b * l->O * h * w, x + (int64_t)b * l->C * h * w, l->C, h, w, l->W32, bias ? l->bias : NULL, l->O, 3,
                  3, 1, p1);
  double e = test_rel_l2(y, r, ny);
  free(x), free(y), free(r);
  return e;
}

static void test_against_reference(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip(); /* the bf16 backend needs native bf16 (AUTO resolves to f32) */
  const struct {
    int C, O, batch, h, w;
    bool bias;
    int band_rows;
  } cases[] = {
      {32, 48, 1, 9, 11, true, 0},  /* odd height and width: half-empty edge tiles */
      {40, 24, 2, 7, 5, false, 0},  /* channel tails in both transforms, batch 2, no bias */
      {64, 32, 1, 1, 1, true, 0},   /* one pixel: only the kernel's centre sees data */
      {33, 65, 2, 3, 2, true, 1},   /* one tile row per band, bands across the images */
      {32, 32, 1, 6, 70, true, 2},  /* 35 tiles per row: several staged strips, a partial last one */
      {48, 40, 2, 16, 16, true, 3}, /* uneven bands (3, 3, 2 rows over 16 tile rows) */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    layer l;
    layer_make(&l, cases[i].C, cases[i].O, 100u + (unsigned)i);
    mp_wino_bf16 *wc;
    assert_ok(mp_wino_bf16_create(f->be, &l.tw, cases[i].bias ? &l.tb : NULL, &wc));
    mp_workspace ws = {0};
    for (int rep = 0; rep < 2; rep++) { /* the second run reuses the workspace and the primitive */
      double e = wino_error(f, &ws, wc, &l, cases[i].batch, cases[i].h, cases[i].w, cases[i].bias, cases[i].band_rows);
      if (!(e < 8e-3)) fail_msg("Winograd bf16 case %zu: rel L2 %g", i, e);
      if (e < 1e-5) fail_msg("Winograd bf16 case %zu: rel L2 %g, no bf16 rounding happened", i, e);
    }
    mp_workspace_free(&ws);
    mp_wino_bf16_free(wc);
    layer_free(&l);
  }
}

/* One pack over more image sizes than the primitive cache holds (each size is another band height). */
static void test_many_shapes(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  layer l;
  layer_make(&l, 32, 32, 200);
  mp_wino_bf16 *wc;
  assert_ok(mp_wino_bf16_create(f->be, &l.tw, &l.tb, &wc));
  mp_workspace ws = {0};
  const int sizes[][2] = {{4, 4}, {6, 8}, {8, 6}, {10, 10}, {12, 3}, {4, 4}, {5, 9}};
  for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
    double e = wino_error(f, &ws, wc, &l, 1, sizes[i][0], sizes[i][1], true, 0);
    if (!(e < 8e-3) || e < 1e-5) fail_msg("size %dx%d: rel L2 %g", sizes[i][0], sizes[i][1], e);
  }
  mp_workspace_free(&ws);
  mp_wino_bf16_free(wc);
  layer_free(&l);
}

/* mp_conv2d under the bf16 backend packs a Winograd form exactly where mp_wino_bf16_pays chooses it,
 * and is within bf16 bounds either way. */
static void test_dispatch(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  const int C = 256, O = 256, h = 32, w = 32, batch = 1;
  layer l;
  layer_make(&l, C, O, 300);
  const int64_t nx = (int64_t)batch * C * h * w, ny = (int64_t)batch * O * h * w;
  float *x = malloc(sizeof(float) * nx), *y = malloc(sizeof(float) * ny), *r = malloc(sizeof(float) * ny);
  test_fill(x, nx, 301);
  mp_workspace ws = {0};
  const mp_pad p1 = {1, 1, 1, 1};
  assert_ok(mp_conv2d(f->pool, &ws, y, x, batch, C, h, w, &l.tw, &l.tb, 1, p1));
  for (int b = 0; b < batch; b++)
    mp_ref_conv2d(r + (int64_t)b * O * h * w, x + (int64_t)b * C * h * w, C, h, w, l.W32, l.bias, O, 3, 3, 1, p1);
  const double e = test_rel_l2(y, r, ny);
  if (!(e < 8e-3) || e < 1e-5) fail_msg("mp_conv2d bf16 3x3: rel L2 %g", e);
  assert_int_equal(ws.n_packs, 1); /* the weight is not pinned: the pack is the workspace's */
  assert_int_equal(ws.packs[0].wino != NULL, mp_wino_bf16_pays(C, O, h, w, batch));
  /* few channels or small images never take it */
  assert_false(mp_wino_bf16_pays(32, 256, 64, 64, 2));
  assert_false(mp_wino_bf16_pays(256, 256, 4, 4, 2));
  assert_false(mp_wino_bf16_pays(1280, 1280, 16, 16, 2)); /* memory for too little time (see the function) */
  mp_workspace_free(&ws);
  free(x), free(y), free(r);
  layer_free(&l);
}

static void test_refusals(void **state) {
  fixture *f = *state;
  layer l;
  layer_make(&l, 8, 8, 400);
  mp_wino_bf16 *wc = NULL;
  /* not 3x3 */
  mp_tensor t1;
  mp_tensor_view(&t1, MP_F16, 4, (int64_t[]){8, 8, 1, 9}, l.W16);
  assert_err_contains(mp_wino_bf16_create(f->be, &t1, NULL, &wc), "3, 3");
  assert_null(wc);
  /* bias of the wrong length */
  mp_tensor tb;
  mp_tensor_view(&tb, MP_F32, 1, (int64_t[]){7}, l.bias);
  if (*mp_cpu_bf16_support()) assert_err_contains(mp_wino_bf16_create(f->be, &l.tw, &tb, &wc), "7 values");
  assert_null(wc);
  /* the f32 backend */
  mp_backend *b32;
  assert_ok(mp_backend_create(MP_PRECISION_F32, 1, &b32));
  assert_err_contains(mp_wino_bf16_create(b32, &l.tw, NULL, &wc), "bf16 backend");
  mp_backend_destroy(b32);
  /* an empty image */
  if (*mp_cpu_bf16_support()) {
    assert_ok(mp_wino_bf16_create(f->be, &l.tw, NULL, &wc));
    mp_workspace ws = {0};
    float x = 0, y = 0;
    assert_err_contains(mp_wino_bf16_run(wc, f->pool, &ws, &x, 1, 0, 4, &y, 0), "0x4");
    mp_workspace_free(&ws);
    mp_wino_bf16_free(wc);
  }
  layer_free(&l);
}

/* ---- the pack store ---- */

/* The one record in dir: its path and its kind (the key's first line); false when there is not exactly one. */
static bool only_record(const char *dir, char *path, size_t cap, char *kind, size_t kcap) {
  DIR *d = opendir(dir);
  if (!d) return false;
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)))
    if (strstr(de->d_name, ".pack") && !strstr(de->d_name, ".tmp")) n++, snprintf(path, cap, "%s/%s", dir, de->d_name);
  closedir(d);
  if (n != 1) return false;
  char key[512] = {0};
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  assert_int_equal(fseek(f, 64, SEEK_SET), 0); /* the key text follows the 64-byte fixed header */
  assert_true(fread(key, 1, sizeof key - 1, f) > 0);
  fclose(f);
  key[strcspn(key, "\n")] = 0;
  snprintf(kind, kcap, "%s", key);
  return true;
}

static ino_t inode_of(const char *path) {
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  return st.st_ino;
}

/* The Rss (kB) of this process's mapping that holds addr when it maps a file ending in ".pack"; -1 when
 * addr is not in such a mapping (heap memory). */
static long pack_mapping_rss_kb(const void *addr) {
  FILE *f = fopen("/proc/self/smaps", "r");
  assert_non_null(f);
  char line[4608];
  bool in = false;
  long rss = -1;
  while (fgets(line, sizeof line, f)) {
    uintptr_t lo, hi;
    char path[4096] = "";
    if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %*s %*s %*s %*s %4095s", &lo, &hi, path) >= 2) { /* a mapping's first line */
      const size_t n = strlen(path);
      in = (uintptr_t)addr >= lo && (uintptr_t)addr < hi && n > 5 && strcmp(path + n - 5, ".pack") == 0;
      continue;
    }
    if (in && sscanf(line, "Rss: %ld kB", &rss) == 1) break;
  }
  fclose(f);
  return in ? rss : -1;
}

enum { SH = 9, SW = 11 };

/* One "process": a fresh bf16 backend whose pack cache pins l's weight and bias (named) with a store
 * over dir, and the Winograd form packed through it into the cache's entry, as mp_conv2d does. */
typedef struct {
  mp_backend *be;
  mp_wino_bf16 *wc;
  mp_workspace ws;
} process;

static void process_start(fixture *f, process *p, const layer *l, const char *dir, test_warnings *w) {
  memset(p, 0, sizeof *p);
  assert_ok(mp_backend_create(MP_PRECISION_BF16, 2, &p->be));
  mp_pool_set_backend(f->pool, p->be);
  mp_pack_store *store;
  assert_ok(mp_pack_store_open(dir, "a test checkpoint", test_collect_warning, w, &store));
  const void *data[2] = {l->W16, l->bias};
  const char *names[2] = {"model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                          "model.diffusion_model.input_blocks.1.0.in_layers.2.bias"};
  mp_pack_cache *cache = mp_backend_pack_cache(p->be);
  assert_ok(mp_pack_cache_pin_named(cache, l, data, names, 2, store));
  struct mp_packed_weight *pw;
  assert_ok(mp_pack_cache_entry(cache, l->W16, l->bias, &pw));
  assert_non_null(pw);
  assert_ok(mp_wino_bf16_create(p->be, &l->tw, &l->tb, &pw->wino));
  p->wc = pw->wino; /* the cache's: freed with the backend */
  assert_int_equal(mp_pack_cache_count(cache), 1);
}

static void process_run(fixture *f, process *p, const float *x, float *y) {
  assert_ok(mp_wino_bf16_run(p->wc, f->pool, &p->ws, x, 1, SH, SW, y, 0));
}

static void process_end(fixture *f, process *p) {
  mp_workspace_free(&p->ws);
  mp_backend_destroy(p->be); /* frees the pack, releases the pins and closes the store */
  mp_pool_set_backend(f->pool, f->be);
}

/* What a weight packed in memory only (not pinned: no store) holds and computes. */
typedef struct {
  layer l;
  char *dir;
  float *x, *y;
  void *packed;
  size_t bytes;
  int64_t ny;
} store_case;

static void store_case_make(fixture *f, store_case *sc) {
  layer_make(&sc->l, 64, 96, 500);
  char *tmp = test_tmpdir();
  size_t n = strlen(tmp) + 16;
  sc->dir = malloc(n);
  snprintf(sc->dir, n, "%s/packs", tmp);
  free(tmp);
  const int64_t nx = (int64_t)sc->l.C * SH * SW;
  sc->ny = (int64_t)sc->l.O * SH * SW;
  sc->x = malloc(sizeof(float) * nx), sc->y = malloc(sizeof(float) * sc->ny);
  test_fill(sc->x, nx, 501);
  mp_wino_bf16 *wc;
  assert_ok(mp_wino_bf16_create(f->be, &sc->l.tw, &sc->l.tb, &wc));
  const void *p = mp_wino_bf16_packed(wc, &sc->bytes);
  assert_non_null(p);
  assert_true(sc->bytes >= (size_t)16 * 64 * 96 * 2);
  assert_int_equal(pack_mapping_rss_kb(p), -1); /* in memory */
  sc->packed = malloc(sc->bytes);
  memcpy(sc->packed, p, sc->bytes);
  mp_workspace ws = {0};
  assert_ok(mp_wino_bf16_run(wc, f->pool, &ws, sc->x, 1, SH, SW, sc->y, 0));
  mp_workspace_free(&ws);
  mp_wino_bf16_free(wc);
}

static void store_case_free(store_case *sc) {
  test_remove_tree(sc->dir);
  free(sc->dir), free(sc->x), free(sc->y), free(sc->packed);
  layer_free(&sc->l);
}

/* p's pack is mapped from the store and holds exactly the in-memory pack's bytes; so is its output. */
static void expect_mapped_same(fixture *f, process *p, const store_case *sc) {
  size_t bytes;
  const void *packed = mp_wino_bf16_packed(p->wc, &bytes);
  assert_int_equal(bytes, sc->bytes);
  assert_memory_equal(packed, sc->packed, bytes);
  assert_true(pack_mapping_rss_kb(packed) >= 0);
  float *y = malloc(sizeof(float) * sc->ny);
  process_run(f, p, sc->x, y);
  assert_memory_equal(y, sc->y, sizeof(float) * sc->ny);
  free(y);
}

static void test_store_round_trip(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  store_case sc;
  store_case_make(f, &sc);
  test_warnings w = {0};
  process p;
  /* first process: packs, saves its record and switches to the mapping of it */
  process_start(f, &p, &sc.l, sc.dir, &w);
  char path[4096], kind[64];
  assert_true(only_record(sc.dir, path, sizeof path, kind, sizeof kind));
  assert_string_equal(kind, MP_WINO_BF16_PACK_KIND);
  const ino_t ino = inode_of(path);
  expect_mapped_same(f, &p, &sc);
  process_end(f, &p);
  /* second process: maps the same record (not packed and written again) */
  process_start(f, &p, &sc.l, sc.dir, &w);
  assert_true(only_record(sc.dir, path, sizeof path, kind, sizeof kind));
  assert_int_equal(inode_of(path), ino);
  expect_mapped_same(f, &p, &sc);
  /* the trim takes it out of the resident set; the next run faults it back from the file */
  size_t bytes;
  const void *packed = mp_wino_bf16_packed(p.wc, &bytes);
  const long rss = pack_mapping_rss_kb(packed);
  assert_true(rss * 1024 >= (long)bytes - 4096);
  mp_pack_cache_drop_resident(mp_backend_pack_cache(p.be));
  assert_true(pack_mapping_rss_kb(packed) <= 4);
  expect_mapped_same(f, &p, &sc);
  assert_true(pack_mapping_rss_kb(packed) * 1024 >= (long)bytes - 4096);
  process_end(f, &p);
  assert_int_equal(w.n, 0);
  store_case_free(&sc);
}

static void test_store_damaged_record_is_repacked(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  store_case sc;
  store_case_make(f, &sc);
  test_warnings w = {0};
  process p;
  process_start(f, &p, &sc.l, sc.dir, &w);
  process_end(f, &p);
  char path[4096], kind[64];
  assert_true(only_record(sc.dir, path, sizeof path, kind, sizeof kind));
  struct stat st;
  assert_int_equal(stat(path, &st), 0);
  const off_t full = st.st_size;
  const struct {
    const char *why;
    off_t truncate_to; /* 0: flip the last byte instead */
  } damage[] = { /* a short payload, a flipped payload bit, a file cut inside its header */{"truncated", full - 4096}, {"payload checksum", 0}, {"out of range", 100}};
  for (size_t i = 0; i < sizeof damage / sizeof *damage; i++) {
    if (damage[i].truncate_to) {
      assert_int_equal(truncate(path, damage[i].truncate_to), 0);
    } else {
      int fd = open(path, O_RDWR);
      assert_true(fd >= 0);
      unsigned char b;
      assert_int_equal(pread(fd, &b, 1, full - 1), 1);
      b ^= 0x01;
      assert_int_equal(pwrite(fd, &b, 1, full - 1), 1);
      close(fd);
    }
    const int before = w.n;
    process_start(f, &p, &sc.l, sc.dir, &w); /* warned, packed again, the record replaced */
    assert_int_equal(w.n, before + 1);
    if (!strstr(w.last, damage[i].why) || !strstr(w.last, "packing the weight again"))
      fail_msg("damage %zu: warning '%s' does not say '%s'", i, w.last, damage[i].why);
    expect_mapped_same(f, &p, &sc);
    process_end(f, &p);
    assert_true(only_record(sc.dir, path, sizeof path, kind, sizeof kind));
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_size, full);
    process_start(f, &p, &sc.l, sc.dir, &w); /* and the rebuilt record maps without a word */
    expect_mapped_same(f, &p, &sc);
    process_end(f, &p);
    assert_int_equal(w.n, before + 1);
  }
  store_case_free(&sc);
}

/* A store that cannot be written: warned once, the pack stays in memory and computes the same. */
static void test_store_unwritable_keeps_the_pack_in_memory(void **state) {
  fixture *f = *state;
  if (!*mp_cpu_bf16_support()) skip();
  store_case sc;
  store_case_make(f, &sc);
  test_warnings w = {0};
  process p;
  process_start(f, &p, &sc.l, "/proc/no-such-folder/packs", &w);
  assert_int_equal(w.n, 1);
  assert_non_null(strstr(w.last, "cannot save"));
  size_t bytes;
  const void *packed = mp_wino_bf16_packed(p.wc, &bytes);
  assert_int_equal(bytes, sc.bytes);
  assert_memory_equal(packed, sc.packed, bytes);
  assert_int_equal(pack_mapping_rss_kb(packed), -1);
  mp_pack_cache_drop_resident(mp_backend_pack_cache(p.be)); /* nothing to drop: memory it owns stays */
  float *y = malloc(sizeof(float) * sc.ny);
  process_run(f, &p, sc.x, y);
  assert_memory_equal(y, sc.y, sizeof(float) * sc.ny);
  free(y);
  process_end(f, &p);
  store_case_free(&sc);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_against_reference), cmocka_unit_test(test_many_shapes),
                                     cmocka_unit_test(test_dispatch), cmocka_unit_test(test_refusals),
                                     cmocka_unit_test(test_store_round_trip),
                                     cmocka_unit_test(test_store_damaged_record_is_repacked),
                                     cmocka_unit_test(test_store_unwritable_keeps_the_pack_in_memory)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
