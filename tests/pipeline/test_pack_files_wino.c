/* Packed bf16 weights on disk (pipeline/pack_files.h) on the Winograd path (core/conv_wino_bf16.h).
 *
 * oneDNN is limited to AVX512-BF16 before it is first asked (dnnl_set_max_cpu_isa: what
 * ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 does, and what an AMD Zen 4/5 has anyway), so the bf16 3x3
 * convolutions with 256 channels at 32x32 take Winograd even on a CPU with AMX. On a checkpoint whose
 * UNet is such layers: the first engine saves their packs as records of kind wino-f2x3-bf16 beside the
 * matmul and direct-convolution ones; the second maps every record (none packed and written again); both
 * compute bit for bit what --no-cache computes, also after the trim dropped the packs from the resident
 * set; a damaged or truncated Winograd record is warned about, rebuilt, and changes nothing. */
#include <dirent.h>
#include <fcntl.h>
#include <oneapi/dnnl/dnnl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/conv_wino_bf16.h"
#include "core/context.h"
#include "models/sd_layout.h"
#include "pipeline/engine.h"
#include "pack_listing.h"
#include "testutil.h"

/* 32x32 latents and 256 channels: the smallest shapes mp_wino_bf16_pays takes */
enum { LAT = 32, CH = 256, N_CTX = 8, N = 2 * 4 * LAT * LAT };

typedef struct {
  char *tmp;
  char models[1024], ckpt[1100], packs[1100];
  float x[N], cond[2 * N_CTX * 32];
} fixture;

/* The tiny preset's text encoder and VAE, and a one-level UNet of 256 channels (no attention but the
 * middle block's): its resnets' 3x3 convolutions take Winograd at 32x32. */
static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  f->tmp = test_tmpdir();
  snprintf(f->models, sizeof f->models, "%.900s/models", f->tmp);
  snprintf(f->packs, sizeof f->packs, "%.1000s/.cache/packs", f->models);
  char dir[1100];
  snprintf(dir, sizeof dir, "%.1000s/checkpoints", f->models);
  assert_int_equal(mkdir(f->models, 0755), 0);
  assert_int_equal(mkdir(dir, 0755), 0);
  snprintf(f->ckpt, sizeof f->ckpt, "%.1000s/wide.safetensors", dir);
  mp_sd_config cfg;
  assert_ok(mp_sd_preset("tiny", &cfg));
  cfg.unet.model_channels = CH, cfg.unet.n_levels = 1, cfg.unet.num_res_blocks = 1;
  cfg.unet.channel_mult[0] = 1, cfg.unet.attention_at_level[0] = false;
  assert_ok(mp_sd_write_random(f->ckpt, &cfg, MP_F16, 21, "tiny"));
  for (size_t i = 0; i < N; i++) f->x[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
  for (size_t i = 0; i < sizeof f->cond / sizeof *f->cond; i++) f->cond[i] = (float)((i * 40503u) % 1000) / 1000.0f - 0.5f;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  test_remove_tree(f->tmp);
  free(f->tmp);
  free(f);
  return 0;
}

static void eval(fixture *f, int no_cache, test_warnings *w, float *eps) {
  pack_eval(f->models, f->ckpt, LAT, f->x, f->cond, N_CTX, no_cache, w, eps);
}

typedef pack_listing listing;

static void list(fixture *f, listing *l) { pack_list(f->packs, l); }

/* The index in l of record `name`, failing when it is not there. */
static int find(const listing *l, const char *name) {
  for (int i = 0; i < l->n; i++)
    if (!strcmp(l->name[i], name)) return i;
  fail_msg("record %s is gone", name);
  return -1;
}

static bool skip_without_avx512_bf16(void) {
  if (dnnl_get_effective_cpu_isa() == dnnl_cpu_isa_avx512_core_bf16) return false;
  print_message("oneDNN could not be limited to AVX512-BF16 on this CPU: no Winograd bf16 path\n");
  return true;
}

static void test_warm_load_maps_the_winograd_packs(void **state) {
  if (skip_without_avx512_bf16()) skip();
  fixture *f = *state;
  float *ref = malloc(sizeof(float) * N), *cold = malloc(sizeof(float) * N), *warm = malloc(sizeof(float) * N);
  test_warnings w = {0};
  listing *before = malloc(sizeof *before), *after = malloc(sizeof *after);
  eval(f, 1, &w, ref); /* --no-cache: packs in memory, nothing on disk */
  list(f, before);
  assert_int_equal(before->n_dirs, 0);
  eval(f, 0, &w, cold);
  assert_memory_equal(cold, ref, sizeof(float) * N);
  list(f, before);
  assert_int_equal(before->n_dirs, 1);
  /* in and out resnets and the middle block's two: 10 convolutions 256 (or 512) -> 256 at 32x32 */
  if (pack_count_kind(before, MP_WINO_BF16_PACK_KIND) != 10) fail_msg("%d Winograd records of %d, expected 10", pack_count_kind(before, MP_WINO_BF16_PACK_KIND), before->n);
  assert_true(before->n > pack_count_kind(before, MP_WINO_BF16_PACK_KIND)); /* and the direct convolutions' and matmuls' */
  eval(f, 0, &w, warm);
  assert_memory_equal(warm, ref, sizeof(float) * N);
  list(f, after);
  assert_int_equal(after->n, before->n);
  for (int i = 0; i < before->n; i++) { /* mapped, not packed and saved again */
    int j = find(after, before->name[i]);
    assert_int_equal(after->ino[j], before->ino[i]);
  }
  assert_int_equal(w.n, 0);
  free(ref), free(cold), free(warm), free(before), free(after);
}

static void test_damaged_winograd_records_are_rebuilt(void **state) {
  if (skip_without_avx512_bf16()) skip();
  fixture *f = *state;
  test_remove_tree(f->packs);
  float *ref = malloc(sizeof(float) * N), *out = malloc(sizeof(float) * N);
  test_warnings w = {0};
  listing *l = malloc(sizeof *l), *again = malloc(sizeof *again);
  eval(f, 0, &w, ref);
  list(f, l);
  int wino[2], k = 0;
  for (int i = 0; i < l->n && k < 2; i++)
    if (!strcmp(l->kind[i], MP_WINO_BF16_PACK_KIND)) wino[k++] = i;
  assert_int_equal(k, 2);
  char p[1400];
  snprintf(p, sizeof p, "%.1200s/%.63s", l->dir, l->name[wino[0]]);
  struct stat st;
  assert_int_equal(stat(p, &st), 0);
  const off_t full = st.st_size;
  assert_int_equal(truncate(p, full / 2), 0); /* short */
  snprintf(p, sizeof p, "%.1200s/%.63s", l->dir, l->name[wino[1]]);
  int fd = open(p, O_RDWR);
  assert_true(fd >= 0);
  assert_int_equal(fstat(fd, &st), 0);
  unsigned char b;
  assert_int_equal(pread(fd, &b, 1, st.st_size / 2 + 4096), 1);
  b ^= 0x04;
  assert_int_equal(pwrite(fd, &b, 1, st.st_size / 2 + 4096), 1); /* one payload bit */
  close(fd);
  eval(f, 0, &w, out);
  assert_memory_equal(out, ref, sizeof(float) * N);
  assert_int_equal(w.n, 2);
  assert_non_null(strstr(w.last, "packing the weight again"));
  list(f, again);
  assert_int_equal(again->n, l->n);
  assert_int_equal(pack_count_kind(again, MP_WINO_BF16_PACK_KIND), pack_count_kind(l, MP_WINO_BF16_PACK_KIND));
  snprintf(p, sizeof p, "%.1200s/%.63s", l->dir, l->name[wino[0]]);
  assert_int_equal(stat(p, &st), 0);
  assert_int_equal(st.st_size, full); /* whole again */
  w.n = 0;
  eval(f, 0, &w, out);
  assert_memory_equal(out, ref, sizeof(float) * N);
  assert_int_equal(w.n, 0);
  free(ref), free(out), free(l), free(again);
}

int main(void) {
  /* Before anything asks oneDNN for its ISA (the first query fixes it for the process). Where the CPU
   * has no AVX512-BF16 the call fails or the effective ISA stays lower, and the tests skip. */
  (void)dnnl_set_max_cpu_isa(dnnl_cpu_isa_avx512_core_bf16);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_warm_load_maps_the_winograd_packs),
      cmocka_unit_test(test_damaged_winograd_records_are_rebuilt),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
