/* LoRA merging into an overlay of the checkpoint (see lora.h). */
#include "models/lora.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static const char *const TE_PREFIX = "cond_stage_model.transformer.";

/* ---- CompVis key -> kohya name ---- */
static bool append(char *buf, size_t cap, size_t *len, const char *s) {
  size_t n = strlen(s);
  if (*len + n + 1 > cap) return false;
  memcpy(buf + *len, s, n + 1);
  *len += n;
  return true;
}

/* A ResBlock's CompVis sub-module name in diffusers naming. */
static const char *resnet_part(const char *rest) {
  static const struct {
    const char *ldm, *diffusers;
  } map[] = {{"in_layers.0", "norm1"},  {"in_layers.2", "conv1"},  {"emb_layers.1", "time_emb_proj"},
             {"out_layers.0", "norm2"}, {"out_layers.3", "conv2"}, {"skip_connection", "conv_shortcut"}};
  for (size_t i = 0; i < sizeof map / sizeof *map; i++)
    if (strcmp(rest, map[i].ldm) == 0) return map[i].diffusers;
  return NULL;
}

/* module: "input_blocks.1.1.proj_in" (no prefix, no ".weight") -> "down_blocks.0.attentions.0.proj_in". */
static bool unet_to_diffusers(const char *module, int nrb, char *out, size_t cap) {
  int n = 0, s = 0, used = 0;
  char tmp[200];
  size_t len = 0;
  out[0] = 0;
  if (strcmp(module, "input_blocks.0.0") == 0) return append(out, cap, &len, "conv_in");
  if (sscanf(module, "input_blocks.%d.%d.%n", &n, &s, &used) == 2 && used > 0) {
    const char *rest = module + used;
    if (n == 0) return append(out, cap, &len, "conv_in");
    int i = (n - 1) / (nrb + 1), j = (n - 1) % (nrb + 1);
    if (j == nrb) return snprintf(out, cap, "down_blocks.%d.downsamplers.0.conv", i) < (int)cap;
    if (s == 0) {
      const char *r = resnet_part(rest);
      return r && snprintf(out, cap, "down_blocks.%d.resnets.%d.%s", i, j, r) < (int)cap;
    }
    return snprintf(out, cap, "down_blocks.%d.attentions.%d.%s", i, j, rest) < (int)cap;
  }
  if (sscanf(module, "middle_block.%d.%n", &s, &used) == 1 && used > 0) {
    const char *rest = module + used;
    if (s == 1) return snprintf(out, cap, "mid_block.attentions.0.%s", rest) < (int)cap;
    const char *r = resnet_part(rest);
    return r && snprintf(out, cap, "mid_block.resnets.%d.%s", s / 2, r) < (int)cap;
  }
  if (sscanf(module, "output_blocks.%d.%d.%n", &n, &s, &used) == 2 && used > 0) {
    const char *rest = module + used;
    int i = n / (nrb + 1), j = n % (nrb + 1);
    if (s == 0) {
      const char *r = resnet_part(rest);
      return r && snprintf(out, cap, "up_blocks.%d.resnets.%d.%s", i, j, r) < (int)cap;
    }
    if (strcmp(rest, "conv") == 0) return snprintf(out, cap, "up_blocks.%d.upsamplers.0.conv", i) < (int)cap;
    return snprintf(out, cap, "up_blocks.%d.attentions.%d.%s", i, j, rest) < (int)cap;
  }
  static const struct {
    const char *ldm, *diffusers;
  } top[] = {{"time_embed.0", "time_embedding.linear_1"},
             {"time_embed.2", "time_embedding.linear_2"},
             {"out.0", "conv_norm_out"},
             {"out.2", "conv_out"}};
  for (size_t k = 0; k < sizeof top / sizeof *top; k++)
    if (strcmp(module, top[k].ldm) == 0) return snprintf(tmp, sizeof tmp, "%s", top[k].diffusers), append(out, cap, &len, tmp);
  return false;
}

static void dots_to_underscores(char *s) {
  for (; *s; s++)
    if (*s == '.') *s = '_';
}

/* The module part of a weight key: "<prefix><module>.weight" -> module, or false. */
static bool module_of(const char *key, const char *prefix, char *out, size_t cap) {
  size_t pl = strlen(prefix), kl = strlen(key);
  if (kl <= pl + 7 || strncmp(key, prefix, pl) != 0 || strcmp(key + kl - 7, ".weight") != 0) return false;
  size_t ml = kl - pl - 7;
  if (ml + 1 > cap) return false;
  memcpy(out, key + pl, ml);
  out[ml] = 0;
  return true;
}

bool mp_lora_kohya_name(const char *key, int nrb, char *buf, size_t cap) {
  char module[200], d[256];
  if (module_of(key, MP_PREFIX_UNET, module, sizeof module)) {
    if (!unet_to_diffusers(module, nrb, d, sizeof d)) return false;
    if (snprintf(buf, cap, "lora_unet_%s", d) >= (int)cap) return false;
  } else if (module_of(key, TE_PREFIX, module, sizeof module)) {
    if (snprintf(buf, cap, "lora_te_%s", module) >= (int)cap) return false;
  } else if (module_of(key, "conditioner.embedders.0.transformer.", module, sizeof module)) { /* SDXL's CLIP ViT-L */
    if (snprintf(buf, cap, "lora_te1_%s", module) >= (int)cap) return false;
  } else {
    return false;
  }
  dots_to_underscores(buf);
  return true;
}

/* ---- lookup table: kohya name -> base weight index ---- */
typedef struct {
  char *name;
  size_t index;
  int64_t row0, rows; /* the target is rows [row0, row0 + rows) of the weight; rows 0 = all of it */
} entry;

static int cmp_entry(const void *a, const void *b) { return strcmp(((const entry *)a)->name, ((const entry *)b)->name); }

typedef struct {
  entry *e;
  size_t n, cap;
} table;

static mp_error *table_add_rows(table *t, const char *name, size_t index, int64_t row0, int64_t rows) {
  if (t->n == t->cap) {
    size_t cap = t->cap ? 2 * t->cap : 1024;
    entry *ne = realloc(t->e, cap * sizeof *ne);
    if (!ne) return mp_errorf("out of memory");
    t->e = ne, t->cap = cap;
  }
  char *s = strdup(name);
  if (!s) return mp_errorf("out of memory");
  t->e[t->n++] = (entry){s, index, row0, rows};
  return NULL;
}

static mp_error *table_add(table *t, const char *name, size_t index) { return table_add_rows(t, name, index, 0, 0); }

/* SDXL's second text encoder: kohya and diffusers name it in the transformers layout
 * (lora_te2_text_model_encoder_layers_N_self_attn_q_proj); the checkpoint has OpenCLIP's, where q, k
 * and v are the three row blocks of one fused in_proj_weight [3d, d]. */
static mp_error *add_openclip_names(table *t, const char *key, size_t index, const mp_tensor *w) {
  const size_t pl = strlen(MP_PREFIX_XL_OPENCLIP);
  char name[300];
  int layer = 0, used = 0;
  if (strncmp(key, MP_PREFIX_XL_OPENCLIP, pl) != 0) return NULL;
  if (sscanf(key + pl, "transformer.resblocks.%d.%n", &layer, &used) != 1 || used == 0) return NULL;
  const char *rest = key + pl + used;
  static const struct {
    const char *openclip, *hf;
  } map[] = {{"attn.out_proj.weight", "self_attn_out_proj"}, {"mlp.c_fc.weight", "mlp_fc1"}, {"mlp.c_proj.weight", "mlp_fc2"}};
  for (size_t k = 0; k < sizeof map / sizeof *map; k++)
    if (strcmp(rest, map[k].openclip) == 0) {
      snprintf(name, sizeof name, "lora_te2_text_model_encoder_layers_%d_%s", layer, map[k].hf);
      return table_add(t, name, index);
    }
  if (strcmp(rest, "attn.in_proj_weight") != 0 || w->ndim != 2 || w->shape[0] % 3) return NULL;
  const int64_t d = w->shape[0] / 3;
  static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
  for (int k = 0; k < 3; k++) {
    snprintf(name, sizeof name, "lora_te2_text_model_encoder_layers_%d_self_attn_%s", layer, qkv[k]);
    MP_TRY(table_add_rows(t, name, index, k * d, d));
  }
  return NULL;
}

static void table_free(table *t) {
  for (size_t i = 0; i < t->n; i++) free(t->e[i].name);
  free(t->e);
}

static mp_error *build_table(const mp_weights *base, int nrb, table *t) {
  for (size_t i = 0; i < mp_weights_count(base); i++) {
    const char *key = mp_weights_at(base, i)->name;
    char name[300], module[200];
    if (mp_lora_kohya_name(key, nrb, name, sizeof name)) MP_TRY(table_add(t, name, i));
    /* kohya files from LDM-based trainers name UNet modules the CompVis way */
    if (module_of(key, MP_PREFIX_UNET, module, sizeof module)) {
      snprintf(name, sizeof name, "lora_unet_%s", module);
      dots_to_underscores(name);
      MP_TRY(table_add(t, name, i));
    }
    /* SDXL: the first text encoder is lora_te1_ (kohya) or lora_te_ (text_encoder. in diffusers/PEFT) */
    if (module_of(key, "conditioner.embedders.0.transformer.", module, sizeof module)) {
      snprintf(name, sizeof name, "lora_te1_%s", module);
      dots_to_underscores(name);
      MP_TRY(table_add(t, name, i));
      snprintf(name, sizeof name, "lora_te_%s", module);
      dots_to_underscores(name);
      MP_TRY(table_add(t, name, i));
    }
    MP_TRY(add_openclip_names(t, key, i, &mp_weights_at(base, i)->t));
  }
  if (t->n) qsort(t->e, t->n, sizeof *t->e, cmp_entry); /* no UNet/text weights at all: an empty table */
  return NULL;
}

static const entry *table_find(const table *t, const char *name) {
  entry k = {.name = (char *)name};
  return t->n ? bsearch(&k, t->e, t->n, sizeof *t->e, cmp_entry) : NULL;
}

/* ---- LoRA file: keys grouped into modules ---- */
enum { PART_DOWN, PART_UP, PART_MID, PART_ALPHA };

typedef struct {
  char *module; /* normalised: lora_unet_... / lora_te_... */
  int part;
  const mp_tensor *t;
  const char *key;
} part;

static int cmp_part(const void *a, const void *b) { return strcmp(((const part *)a)->module, ((const part *)b)->module); }

/* Split a LoRA key into its normalised module name and part; false if it is not a LoRA tensor. */
static bool parse_key(const char *key, char *module, size_t cap, int *which) {
  static const struct {
    const char *suffix;
    int part;
  } suffixes[] = {{".lora_down.weight", PART_DOWN},
                  {".lora_up.weight", PART_UP},
                  {".lora_mid.weight", PART_MID},
                  {".alpha", PART_ALPHA},
                  {".lora_A.weight", PART_DOWN},
                  {".lora_B.weight", PART_UP},
                  {".lora.down.weight", PART_DOWN},
                  {".lora.up.weight", PART_UP},
                  {".lora_linear_layer.down.weight", PART_DOWN},
                  {".lora_linear_layer.up.weight", PART_UP}};
  size_t kl = strlen(key);
  for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
    size_t sl = strlen(suffixes[i].suffix);
    if (kl <= sl || strcmp(key + kl - sl, suffixes[i].suffix) != 0) continue;
    char m[300];
    size_t ml = kl - sl;
    if (ml >= sizeof m) return false;
    memcpy(m, key, ml);
    m[ml] = 0;
    /* diffusers attention processors: "attn1.processor.to_q_lora" is "attn1.to_q" */
    char *p = strstr(m, ".processor.");
    if (p) memmove(p, p + 10, strlen(p + 10) + 1);
    size_t l = strlen(m);
    if (l > 5 && strcmp(m + l - 5, "_lora") == 0) m[l - 5] = 0;
    if (strncmp(m, "lora_unet_", 10) == 0 || strncmp(m, "lora_te", 7) == 0) {
      if (snprintf(module, cap, "%s", m) >= (int)cap) return false;
    } else if (strncmp(m, "unet.", 5) == 0) {
      if (snprintf(module, cap, "lora_unet_%s", m + 5) >= (int)cap) return false;
    } else if (strncmp(m, "text_encoder_2.", 15) == 0) {
      if (snprintf(module, cap, "lora_te2_%s", m + 15) >= (int)cap) return false;
    } else if (strncmp(m, "text_encoder.", 13) == 0) {
      if (snprintf(module, cap, "lora_te_%s", m + 13) >= (int)cap) return false;
    } else {
      if (snprintf(module, cap, "%s", m) >= (int)cap) return false; /* reported as unmatched */
    }
    dots_to_underscores(module);
    *which = suffixes[i].part;
    return true;
  }
  return false;
}

/* ---- merges: what each LoRA module adds to which base tensor ----
 * Collected for all LoRAs first and applied tensor by tensor afterwards (merge_patches): each patched
 * tensor built in its own f32 copy was 370 MB of fresh pages at SD 1.5 size, whose first touch
 * (zeroing, page faults) was most of a LoRA switch. */
typedef struct {
  size_t index;                             /* base tensor */
  int64_t row0, rows;                       /* the rows of it this module patches (rows 0: all) */
  const mp_tensor *down, *up, *mid, *alpha; /* the LoRA's tensors (mid, alpha may be NULL) */
  float mult;
  const char *lname; /* the LoRA's name, for errors */
  char *module;      /* owned */
} merge;

typedef struct {
  merge *m;
  size_t n, cap;
} merges;

/* Appends m with its own copy of `module`. */
static mp_error *merges_add(merges *ms, merge m, const char *module) {
  if (ms->n == ms->cap) {
    size_t cap = ms->cap ? 2 * ms->cap : 64;
    merge *nm = realloc(ms->m, cap * sizeof *nm);
    if (!nm) return mp_errorf("out of memory");
    ms->m = nm, ms->cap = cap;
  }
  if (!(m.module = strdup(module))) return mp_errorf("out of memory");
  ms->m[ms->n++] = m;
  return NULL;
}

static void merges_free(merges *ms) {
  for (size_t i = 0; i < ms->n; i++) free(ms->m[i].module);
  free(ms->m);
}

/* Ask the kernel to read a base tensor in one go: under bf16 its memory-mapped pages were handed back
 * after packing (core/conv.c), and faulting them in page by page made the first LoRA switch cost ~1 s
 * more at SD 1.5 size. Advisory only: errors are ignored. */
static void prefetch(const void *data, size_t bytes) {
#ifdef MADV_WILLNEED
  const uintptr_t page = 4096, lo = (uintptr_t)data & ~(page - 1), hi = ((uintptr_t)data + bytes + page - 1) & ~(page - 1);
  if (bytes >= 16 * page) (void)madvise((void *)lo, hi - lo, MADV_WILLNEED);
#else
  (void)data, (void)bytes;
#endif
}

static bool is_float(const mp_tensor *t) { return t->dtype == MP_F32 || t->dtype == MP_F16 || t->dtype == MP_BF16; }

/* f32 copy of a LoRA tensor. */
static float *to_f32(const mp_tensor *t) {
  size_t n = (size_t)mp_tensor_numel(t);
  float *x = mp_alloc((n ? n : 1) * sizeof(float));
  if (x) mp_convert_to_f32(x, t->data, t->dtype, n);
  return x;
}

/* One module's delta ready to add: rows [row0, row0 + out) of its target += scale · up · down_k. */
typedef struct {
  int64_t row0, out, K, r;
  float scale;
  float *up;     /* [out, r], owned */
  float *down_k; /* [r, K] (mid · down for LoCon), owned */
} delta;

static void delta_free(delta *d) { mp_free(d->up), mp_free(d->down_k), d->up = d->down_k = NULL; }

/* The delta of merge mg on `target`, checking shapes against it. */
static mp_error *prepare_delta(const merge *mg, const mp_weight *target, delta *out_d) {
  char s1[96], s2[96], s3[96];
  const char *lname = mg->lname, *module = mg->module;
  const mp_tensor *D = mg->down, *U = mg->up, *M = mg->mid, *alpha = mg->alpha;
  const int64_t row0 = mg->row0, rows = mg->rows;
  const float mult = mg->mult;
  memset(out_d, 0, sizeof *out_d);
  if (!is_float(D) || !is_float(U) || (M && !is_float(M)) || (alpha && !is_float(alpha)))
    return mp_errorf("%s: %s: LoRA tensors must be float", lname, module);
  const int64_t r = D->shape[0];
  if (D->ndim < 2 || U->ndim < 2 || r < 1 || U->shape[1] != r || mp_tensor_numel(U) != U->shape[0] * r)
    return mp_errorf("%s: %s: lora_up %s does not fit lora_down %s (rank %lld)", lname, module,
                     mp_shape_str(U->ndim, U->shape, s1, sizeof s1), mp_shape_str(D->ndim, D->shape, s2, sizeof s2),
                     (long long)r);
  const int64_t out = U->shape[0];
  int64_t K; /* columns of the delta: in * kh * kw */
  if (M) {
    if (M->ndim != 4 || M->shape[0] != r || M->shape[1] != r || mp_tensor_numel(D) != r * D->shape[1])
      return mp_errorf("%s: %s: lora_mid %s does not fit rank %lld with a 1x1 lora_down", lname, module,
                       mp_shape_str(M->ndim, M->shape, s1, sizeof s1), (long long)r);
    K = D->shape[1] * M->shape[2] * M->shape[3];
  } else {
    K = mp_tensor_numel(D) / r;
  }
  const mp_tensor *T = &target->t;
  const int64_t t_rows = rows > 0 ? rows : T->shape[0];
  if (t_rows != out || mp_tensor_numel(T) != T->shape[0] * K || row0 < 0 || row0 + t_rows > T->shape[0])
    return mp_errorf("%s: %s: a delta of %lld x %lld (lora_up %s, lora_down %s%s%s) does not fit %s %s", lname, module,
                     (long long)out, (long long)K, mp_shape_str(U->ndim, U->shape, s1, sizeof s1),
                     mp_shape_str(D->ndim, D->shape, s2, sizeof s2), M ? ", lora_mid " : "",
                     M ? mp_shape_str(M->ndim, M->shape, s3, sizeof s3) : "", target->name,
                     mp_shape_str(T->ndim, T->shape, s3, sizeof s3));
  float a = (float)r;
  if (alpha) {
    if (mp_tensor_numel(alpha) != 1) return mp_errorf("%s: %s.alpha must be a scalar", lname, module);
    mp_convert_to_f32(&a, alpha->data, alpha->dtype, 1);
  }
  delta d = {.row0 = row0, .out = out, .K = K, .r = r, .scale = (float)((double)mult * a / (double)r)};
  float *m = M ? to_f32(M) : NULL;
  d.up = to_f32(U), d.down_k = to_f32(D);
  if (!d.up || !d.down_k || (M && !m)) {
    mp_free(m), delta_free(&d);
    return mp_errorf("out of memory");
  }
  if (M) { /* (mid · down)[a, i, y, x] = sum_b mid[a, b, y, x] down[b, i] */
    const int64_t in = D->shape[1], kk = M->shape[2] * M->shape[3];
    float *dm = mp_alloc(sizeof(float) * (size_t)(r * K));
    if (!dm) {
      mp_free(m), delta_free(&d);
      return mp_errorf("out of memory");
    }
    for (int64_t ai = 0; ai < r; ai++)
      for (int64_t i = 0; i < in; i++)
        for (int64_t p = 0; p < kk; p++) {
          double sum = 0;
          for (int64_t b = 0; b < r; b++) sum += (double)m[(ai * r + b) * kk + p] * d.down_k[b * in + i];
          dm[(ai * in + i) * kk + p] = (float)sum;
        }
    mp_free(d.down_k);
    d.down_k = dm;
  }
  mp_free(m);
  *out_d = d;
  return NULL;
}

/* Rows [c0, c1) of the target, held in W ([c1 - c0, K] f32), += the delta's part of them: one sgemm
 * (f32 accumulation over the rank is exact to ~1e-7 relative, far below the f16 the patched weight is
 * stored in; the scalar double loop it replaced took ~1 s of a LoRA switch at SD 1.5 size). */
static void add_delta_rows(const delta *d, int64_t c0, int64_t c1, float *W) {
  const int64_t lo = d->row0 > c0 ? d->row0 : c0, hi = d->row0 + d->out < c1 ? d->row0 + d->out : c1;
  if (lo >= hi) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(hi - lo), (int)d->K, (int)d->r, d->scale,
              d->up + (lo - d->row0) * d->r, (int)d->r, d->down_k, (int)d->K, 1.0f, W + (lo - c0) * d->K, (int)d->K);
}

static mp_error *report_unmatched(mp_lora_report *r, const char *lname, const char *module) {
  if (!r) return NULL;
  char **nu = realloc(r->unmatched, sizeof *nu * (size_t)(r->n_unmatched + 1));
  if (!nu) return mp_errorf("out of memory");
  r->unmatched = nu;
  size_t n = strlen(lname) + strlen(module) + 4;
  if (!(nu[r->n_unmatched] = malloc(n))) return mp_errorf("out of memory");
  snprintf(nu[r->n_unmatched++], n, "%s: %s", lname, module);
  return NULL;
}

void mp_lora_report_free(mp_lora_report *r) {
  if (!r) return;
  for (int i = 0; i < r->n_unmatched; i++) free(r->unmatched[i]);
  free(r->unmatched);
  memset(r, 0, sizeof *r);
}

/* Which family a LoRA was trained for, from its names (lora_te1_/lora_te2_/text_encoder_2. are
 * SDXL's two text encoders) and from the width its cross-attention keys read (the context: 768 for
 * SD 1.x, 1024 for SD 2.x, 2048 for SDXL). A LoRA of another family than the model is an error that
 * names both, rather than a pile of shape mismatches or a silent no-op. */
static mp_error *check_family(const mp_lora_spec *spec, const char *lname, const mp_sd_config *cfg) {
  bool xl_names = false;
  int64_t context = 0;
  for (size_t i = 0; i < mp_weights_count(spec->lora); i++) {
    const mp_weight *it = mp_weights_at(spec->lora, i);
    const char *k = it->name;
    if (strncmp(k, "lora_te1_", 9) == 0 || strncmp(k, "lora_te2_", 9) == 0 || strncmp(k, "text_encoder_2.", 15) == 0) xl_names = true;
    bool to_k = strstr(k, "attn2_to_k") || strstr(k, "attn2.to_k") || strstr(k, "attn2.processor.to_k");
    bool down = strstr(k, "lora_down.weight") || strstr(k, "lora_A.weight") || strstr(k, "lora.down.weight") ||
                strstr(k, "down.weight");
    if (to_k && down && !context && it->t.ndim == 2) context = it->t.shape[1];
  }
  const bool model_xl = cfg->family == MP_FAMILY_SDXL;
  const char *model = mp_family_name(cfg->family);
  if (xl_names && !model_xl)
    return mp_errorf("LoRA %s is for SDXL (it has SDXL's two text encoders), the model is %s: a LoRA works only with the family it "
                     "was trained for", lname, model);
  if (context && context != cfg->unet.context_dim) {
    const char *lf = context == 2048 ? "SDXL" : context == 768 ? "SD 1.x" : context == 1024 ? "SD 2.x" : "another model";
    return mp_errorf("LoRA %s is for %s (its cross-attention reads a %lld-wide context), the model is %s (context %d): a LoRA "
                     "works only with the family it was trained for", lname, lf, (long long)context, model, cfg->unet.context_dim);
  }
  return NULL;
}

static mp_error *apply_one(const mp_weights *base, const table *tbl, const mp_lora_spec *spec, merges *ms,
                           mp_lora_report *report) {
  const char *lname = spec->name ? spec->name : mp_weights_path(spec->lora);
  size_t nk = mp_weights_count(spec->lora);
  part *parts = calloc(nk ? nk : 1, sizeof *parts);
  if (!parts) return mp_errorf("out of memory");
  size_t np = 0;
  mp_error *e = NULL;
  for (size_t i = 0; i < nk && !e; i++) {
    const mp_weight *it = mp_weights_at(spec->lora, i);
    char module[300];
    int which;
    if (!parse_key(it->name, module, sizeof module, &which)) {
      e = report_unmatched(report, lname, it->name); /* not a LoRA tensor we know */
      continue;
    }
    if (!(parts[np].module = strdup(module))) e = mp_errorf("out of memory");
    parts[np].part = which, parts[np].t = &it->t, parts[np].key = it->name;
    np++;
  }
  if (!e) qsort(parts, np, sizeof *parts, cmp_part);
  for (size_t i = 0; i < np && !e;) {
    size_t j = i;
    const part *by[4] = {NULL, NULL, NULL, NULL};
    for (; j < np && strcmp(parts[j].module, parts[i].module) == 0; j++) {
      if (by[parts[j].part]) {
        e = mp_errorf("%s: %s appears twice (%s and %s)", lname, parts[i].module, by[parts[j].part]->key, parts[j].key);
        break;
      }
      by[parts[j].part] = &parts[j];
    }
    if (e) break;
    const char *module = parts[i].module;
    const entry *target = table_find(tbl, module);
    if (!target || !by[PART_DOWN] || !by[PART_UP]) {
      e = report_unmatched(report, lname, !target ? module : "(module without lora_down/lora_up)");
    } else {
      float mult = strncmp(module, "lora_te", 7) == 0 ? spec->te_multiplier : spec->unet_multiplier;
      const mp_weight *tw = mp_weights_at(base, target->index);
      if (!is_float(&tw->t)) e = mp_errorf("%s: target %s is not a float tensor", lname, tw->name);
      if (!e)
        e = merges_add(ms, (merge){.index = target->index, .row0 = target->row0, .rows = target->rows, .down = by[PART_DOWN]->t,
                                   .up = by[PART_UP]->t, .mid = by[PART_MID] ? by[PART_MID]->t : NULL,
                                   .alpha = by[PART_ALPHA] ? by[PART_ALPHA]->t : NULL, .mult = mult, .lname = lname},
                       module);
      if (!e && report) report->n_modules++;
    }
    i = j;
  }
  for (size_t i = 0; i < np; i++) free(parts[i].module);
  free(parts);
  return e;
}

mp_error *mp_lora_apply(const mp_weights *base, const mp_sd_config *cfg, const mp_lora_spec *specs, int n_specs,
                        mp_weights **overlay, mp_lora_report *report) {
  return mp_lora_apply_opts(base, cfg, specs, n_specs, NULL, overlay, report);
}

/* ---- merging, tensor by tensor ----
 * Each patched tensor is merged on its own (base -> f32, every module's delta added in the order the
 * LoRAs and their modules came, rounded to the stored dtype), so the tensors are spread over the pool.
 * A tensor goes a few rows at a time through its thread's f32 buffer (cache-sized: a whole-tensor f32
 * copy was up to 52 MB of fresh pages per thread and switch), into one mapping of huge pages
 * (mp_alloc_pages) for all the patched tensors: the caller's arena, or the overlay's own. */
typedef struct {
  size_t index, first; /* the base tensor, and its first merge in ms */
  size_t offset;       /* of its data in the arena */
  mp_dtype dt;
  mp_error *err;
} patch;

/* Rows of a tensor merged at a time: the f32 chunk stays in L2 (each thread's buffer is this size). */
enum { CHUNK_FLOATS = 64 * 1024 };

typedef struct {
  const mp_weights *base;
  const merges *ms;
  patch *patches;
  unsigned char *arena;
  float **bufs; /* one per thread, CHUNK_FLOATS (or one row, where a row is longer) */
} merge_job;

static void merge_tasks(void *ctx, int64_t begin, int64_t end, int thread) {
  merge_job *j = ctx;
  float *W = j->bufs[thread];
  /* the sgemm of a merge is small: one OpenBLAS thread per pool thread (set by the caller) */
  for (int64_t p = begin; p < end; p++) {
    patch *pt = &j->patches[p];
    const mp_weight *it = mp_weights_at(j->base, pt->index);
    const mp_tensor *T = &it->t;
    const size_t n = (size_t)mp_tensor_numel(T), es = mp_dtype_size(T->dtype), os = mp_dtype_size(pt->dt);
    delta ds[16], *d = ds; /* the merges on this tensor, in the order the LoRAs and their modules came */
    size_t nd = 0, cap = sizeof ds / sizeof ds[0];
    for (size_t k = pt->first; k < j->ms->n && !pt->err; k++) {
      if (j->ms->m[k].index != pt->index) continue;
      if (nd == cap) {
        delta *grown = malloc(2 * cap * sizeof *grown);
        if (!grown) {
          pt->err = mp_errorf("out of memory");
          break;
        }
        memcpy(grown, d, nd * sizeof *d);
        if (d != ds) free(d);
        d = grown, cap *= 2;
      }
      if (!(pt->err = prepare_delta(&j->ms->m[k], it, &d[nd]))) nd++;
    }
    if (!pt->err) {
      prefetch(T->data, n * es);
      const int64_t rows = T->ndim > 0 && T->shape[0] > 0 ? T->shape[0] : 1, K = (int64_t)n / rows;
      const int64_t step = K > 0 && K < CHUNK_FLOATS ? CHUNK_FLOATS / K : 1;
      for (int64_t c0 = 0; c0 < rows; c0 += step) {
        const int64_t c1 = c0 + step < rows ? c0 + step : rows;
        const size_t m = (size_t)((c1 - c0) * K), at = (size_t)(c0 * K);
        mp_convert_to_f32(W, (const char *)T->data + at * es, T->dtype, m);
        for (size_t i = 0; i < nd; i++) add_delta_rows(&d[i], c0, c1, W);
        void *dst = j->arena + pt->offset + at * os;
        if (pt->dt == MP_F32) /* keep the stored precision, as merging into an f16 model does, unless asked for f32 */
          memcpy(dst, W, m * sizeof(float));
        else if (pt->dt == MP_F16)
          mp_convert_f32_to_f16(dst, W, m);
        else
          for (size_t k = 0; k < m; k++) ((uint16_t *)dst)[k] = mp_f32_to_bf16(W[k]);
      }
    }
    for (size_t i = 0; i < nd; i++) delta_free(&d[i]);
    if (d != ds) free(d);
  }
}

/* The patched tensors: one per base tensor that some merge targets, in base order. */
static mp_error *plan_patches(const mp_weights *base, const merges *ms, bool f32_patches, patch **out, size_t *n_out,
                              size_t *arena_bytes, size_t *max_row) {
  size_t n_base = mp_weights_count(base), n = 0, bytes = 0, max_k = 0;
  size_t *first = malloc((n_base ? n_base : 1) * sizeof *first);
  patch *ps = calloc(ms->n ? ms->n : 1, sizeof *ps);
  if (!first || !ps) {
    free(first), free(ps);
    return mp_errorf("out of memory");
  }
  for (size_t i = 0; i < n_base; i++) first[i] = SIZE_MAX;
  for (size_t k = ms->n; k-- > 0;) first[ms->m[k].index] = k;
  for (size_t i = 0; i < n_base; i++) {
    if (first[i] == SIZE_MAX) continue;
    const mp_tensor *t = &mp_weights_at(base, i)->t;
    const size_t numel = (size_t)mp_tensor_numel(t);
    const mp_dtype dt = f32_patches ? MP_F32 : t->dtype;
    ps[n] = (patch){.index = i, .first = first[i], .offset = bytes, .dt = dt};
    bytes += (numel * mp_dtype_size(dt) + 63) & ~(size_t)63;
    const size_t row = t->ndim > 0 && t->shape[0] > 0 ? numel / (size_t)t->shape[0] : numel;
    if (row > max_k) max_k = row;
    n++;
  }
  free(first);
  *out = ps, *n_out = n, *arena_bytes = bytes, *max_row = max_k;
  return NULL;
}

static mp_error *merge_patches(const mp_weights *base, const merges *ms, patch *ps, size_t n, unsigned char *arena,
                               size_t max_row, mp_pool *pool) {
  const int nt = pool ? mp_pool_size(pool) : 1;
  const size_t buf_floats = max_row > CHUNK_FLOATS ? max_row : CHUNK_FLOATS;
  float *bufs[64] = {0};
  mp_error *e = NULL;
  if (nt > 64) return mp_errorf("too many threads for merging LoRAs (%d)", nt);
  for (int t = 0; t < nt && !e; t++)
    if (!(bufs[t] = mp_alloc(buf_floats * sizeof(float)))) e = mp_errorf("out of memory merging LoRAs");
  if (!e) {
    merge_job job = {base, ms, ps, arena, bufs};
    int prev = openblas_get_num_threads();
    if (nt > 1 && prev != 1) openblas_set_num_threads(1);
    mp_pool_for(nt > 1 ? pool : NULL, (int64_t)n, 1, merge_tasks, &job);
    if (nt > 1 && prev != 1) openblas_set_num_threads(prev);
  }
  for (int t = 0; t < nt; t++) mp_free(bufs[t]);
  for (size_t p = 0; p < n; p++) { /* the first error in base order; the others are dropped */
    if (!e) e = ps[p].err;
    else mp_error_free(ps[p].err);
    ps[p].err = NULL;
  }
  return e;
}

static void release_arena(void *mem, size_t size) { mp_free_pages(mem, size); }

mp_error *mp_lora_apply_opts(const mp_weights *base, const mp_sd_config *cfg, const mp_lora_spec *specs, int n_specs,
                             const mp_lora_options *opt, mp_weights **overlay, mp_lora_report *report) {
  *overlay = NULL;
  const bool f32_patches = opt && opt->f32_patches;
  if (report) memset(report, 0, sizeof *report);
  table tbl = {0};
  merges ms = {0};
  mp_weights *ov = NULL;
  patch *ps = NULL;
  size_t n_ps = 0, arena_bytes = 0, max_row = 0;
  unsigned char *arena = NULL, *patched = NULL; /* arena: pages of our own until the overlay takes them */
  mp_error *e = build_table(base, cfg->unet.num_res_blocks, &tbl);
  for (int s = 0; s < n_specs && !e; s++) {
    e = check_family(&specs[s], specs[s].name ? specs[s].name : mp_weights_path(specs[s].lora), cfg);
    if (!e) e = apply_one(base, &tbl, &specs[s], &ms, report);
  }
  if (!e) e = plan_patches(base, &ms, f32_patches, &ps, &n_ps, &arena_bytes, &max_row);
  mp_page_arena *given = opt ? opt->arena : NULL;
  if (!e && n_ps) {
    patched = given ? mp_page_arena_reserve(given, arena_bytes) : (arena = mp_alloc_pages(arena_bytes));
    if (!patched) e = mp_errorf("out of memory (%zu MB of merged tensors)", arena_bytes >> 20);
  }
  if (!e && n_ps) e = merge_patches(base, &ms, ps, n_ps, patched, max_row, opt ? opt->pool : NULL);
  if (!e && !(ov = mp_weights_new(mp_weights_path(base)))) e = mp_errorf("out of memory");
  if (!e) {
    mp_weights_set_viewed(ov, base); /* its views are the base's memory (mp_weights_drop_pages) */
    if (arena) mp_weights_set_backing(ov, arena, arena_bytes, release_arena), arena = NULL;
  }
  if (!e && mp_weights_metadata(base)) e = mp_weights_set_metadata(ov, mp_weights_metadata(base));
  /* every base entry: a view of the base, or of its patched tensor in the arena (which the overlay keeps) */
  for (size_t i = 0, p = 0; i < mp_weights_count(base) && !e; i++) {
    const mp_weight *it = mp_weights_at(base, i);
    if (p < n_ps && ps[p].index == i) {
      e = mp_weights_add(ov, it->name, ps[p].dt, it->t.ndim, it->t.shape, patched + ps[p].offset);
      p++;
      if (report) report->n_patched_tensors++;
    } else {
      e = mp_weights_add(ov, it->name, it->t.dtype, it->t.ndim, it->t.shape, it->t.data);
    }
  }
  if (!e) e = mp_weights_finish(ov);
  if (arena) mp_free_pages(arena, arena_bytes);
  free(ps);
  merges_free(&ms);
  table_free(&tbl);
  if (e) {
    mp_weights_close(ov);
    if (report) mp_lora_report_free(report);
    return mp_error_wrap(e, "applying LoRA");
  }
  *overlay = ov;
  return NULL;
}
