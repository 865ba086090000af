/* CLIP byte-level BPE tokenizer. See tokenizer.h for the pipeline; the comments here say where
 * each step mirrors transformers' slow CLIPTokenizer + BasicTokenizer (the path taken without ftfy). */
#include "prompt/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>
#include <zlib.h>

/* CLIP's vocabulary uses the first 49152 - 256 - 2 merges of the file (OpenAI's simple_tokenizer and
 * transformers both cut there), giving 256 + 256 + 48894 + 2 = 49408 ids. */
#define CLIP_N_MERGES (49152 - 256 - 2)
#define SOT "<|startoftext|>"
#define EOT "<|endoftext|>"

struct mp_tokenizer {
  int32_t n_vocab;
  uint32_t *text_off; /* id -> offset into arena, UINT32_MAX for an id vocab.json leaves out */
  char *arena;
  size_t arena_len, arena_cap;
  /* string -> id, open addressing; -1 = empty */
  int32_t *str_slot;
  uint32_t str_mask;
  /* (left id, right id) -> (rank, merged id), open addressing; rank -1 = empty */
  uint64_t *pair_key;
  int32_t *pair_rank, *pair_merged;
  uint32_t pair_mask;
  int32_t byte_id[256];   /* byte-level symbol of each byte */
  int32_t byte_id_w[256]; /* the same with "</w>" (end of word) */
  int32_t bos, eos;
};

/* ---------------------------------------------------------------- small growable buffers */

typedef struct {
  int32_t *v;
  size_t n, cap;
} i32vec;

static bool i32_push(i32vec *a, int32_t x) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? 2 * a->cap : 64;
    int32_t *nv = realloc(a->v, cap * sizeof *nv);
    if (!nv) return false;
    a->v = nv;
    a->cap = cap;
  }
  a->v[a->n++] = x;
  return true;
}

/* ---------------------------------------------------------------- byte-level alphabet */

/* GPT-2/CLIP bytes_to_unicode: printable Latin-1 bytes map to themselves, the 68 others to
 * U+0100.. in byte order. The symbol order (and so ids 0..255) is: the printable ones ascending,
 * then the others ascending. */
static bool byte_is_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }

static void byte_alphabet(int32_t cp_of_byte[256], int order[256]) {
  int n = 0, extra = 0;
  for (int b = 0; b < 256; b++)
    if (byte_is_printable(b)) {
      cp_of_byte[b] = b;
      order[n++] = b;
    }
  for (int b = 0; b < 256; b++)
    if (!byte_is_printable(b)) {
      cp_of_byte[b] = 256 + extra++;
      order[n++] = b;
    }
}

/* ---------------------------------------------------------------- vocabulary tables */

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
  return h;
}

static uint64_t hash_pair(uint64_t key) { return (key * 0x9E3779B97F4A7C15ull) >> 17; }

static uint32_t pow2_at_least(size_t n) {
  uint32_t c = 1024;
  while (c < n) c *= 2;
  return c;
}

static const char *tok_str(const mp_tokenizer *t, int32_t id) {
  return (id >= 0 && id < t->n_vocab && t->text_off[id] != UINT32_MAX) ? t->arena + t->text_off[id] : NULL;
}

static int32_t lookup_str(const mp_tokenizer *t, const char *s, size_t n) {
  for (uint32_t i = (uint32_t)hash_bytes(s, n) & t->str_mask;; i = (i + 1) & t->str_mask) {
    int32_t id = t->str_slot[i];
    if (id < 0) return -1;
    const char *k = t->arena + t->text_off[id];
    if (strncmp(k, s, n) == 0 && k[n] == 0) return id;
  }
}

/* Give `id` the text s[0..n) (copied into the arena). A repeated string maps to the last id that
 * had it, as a Python dict built from the vocabulary list does. */
static mp_error *set_token(mp_tokenizer *t, int32_t id, const char *s, size_t n) {
  if (t->arena_len + n + 1 > t->arena_cap) {
    size_t cap = t->arena_cap ? t->arena_cap : 1 << 20;
    while (cap < t->arena_len + n + 1) cap *= 2;
    if (cap > UINT32_MAX) return mp_errorf("vocabulary strings exceed 4 GiB");
    char *na = realloc(t->arena, cap);
    if (!na) return mp_errorf("out of memory");
    t->arena = na;
    t->arena_cap = cap;
  }
  t->text_off[id] = (uint32_t)t->arena_len;
  memcpy(t->arena + t->arena_len, s, n);
  t->arena[t->arena_len + n] = 0;
  t->arena_len += n + 1;
  for (uint32_t i = (uint32_t)hash_bytes(s, n) & t->str_mask;; i = (i + 1) & t->str_mask) {
    int32_t old = t->str_slot[i];
    if (old < 0 || (strncmp(t->arena + t->text_off[old], s, n) == 0 && t->arena[t->text_off[old] + n] == 0)) {
      t->str_slot[i] = id;
      return NULL;
    }
  }
}

static mp_error *alloc_tables(mp_tokenizer *t, int32_t n_vocab, size_t n_merges) {
  t->n_vocab = n_vocab;
  t->text_off = malloc((size_t)n_vocab * sizeof *t->text_off);
  uint32_t sc = pow2_at_least(2 * (size_t)n_vocab), pc = pow2_at_least(2 * n_merges);
  t->str_slot = malloc(sc * sizeof *t->str_slot);
  t->pair_key = malloc(pc * sizeof *t->pair_key);
  t->pair_rank = malloc(pc * sizeof *t->pair_rank);
  t->pair_merged = malloc(pc * sizeof *t->pair_merged);
  if (!t->text_off || !t->str_slot || !t->pair_key || !t->pair_rank || !t->pair_merged) return mp_errorf("out of memory");
  memset(t->text_off, 0xff, (size_t)n_vocab * sizeof *t->text_off);
  memset(t->str_slot, 0xff, sc * sizeof *t->str_slot);
  memset(t->pair_rank, 0xff, pc * sizeof *t->pair_rank);
  t->str_mask = sc - 1;
  t->pair_mask = pc - 1;
  return NULL;
}

static void add_merge(mp_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t merged) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  for (uint32_t i = (uint32_t)hash_pair(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
    if (t->pair_rank[i] < 0 || t->pair_key[i] == key) { /* a repeated pair keeps its last rank */
      t->pair_key[i] = key;
      t->pair_rank[i] = rank;
      t->pair_merged[i] = merged;
      return;
    }
  }
}

static int32_t find_merge(const mp_tokenizer *t, int32_t a, int32_t b, int32_t *merged) {
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
  for (uint32_t i = (uint32_t)hash_pair(key) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
    if (t->pair_rank[i] < 0) return -1;
    if (t->pair_key[i] == key) {
      *merged = t->pair_merged[i];
      return t->pair_rank[i];
    }
  }
}

/* One merge line "left right": the two symbols. Returns false unless there are exactly two. */
static bool split_merge_line(const char *s, size_t n, const char **a, size_t *na, const char **b, size_t *nb) {
  size_t i = 0;
  const char *part[3];
  size_t len[3];
  int k = 0;
  while (i < n) {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\v' || s[i] == '\f')) i++;
    if (i >= n) break;
    size_t j = i;
    while (j < n && !(s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\v' || s[j] == '\f')) j++;
    if (k == 2) return false;
    part[k] = s + i;
    len[k++] = j - i;
    i = j;
  }
  if (k != 2) return false;
  *a = part[0], *na = len[0], *b = part[1], *nb = len[1];
  return true;
}

/* The merge lines 1..CLIP_N_MERGES of `text` (line 0 is the "#version" header). */
typedef struct {
  const char *s;
  size_t n;
} span;

static mp_error *merge_lines(const char *path, char *text, size_t len, span *lines, size_t *n_lines) {
  size_t n = 0, line = 0, i = 0;
  while (i < len && n < CLIP_N_MERGES) {
    size_t j = i;
    while (j < len && text[j] != '\n') j++;
    if (line > 0) lines[n++] = (span){text + i, j - i};
    line++;
    i = j + 1;
  }
  *n_lines = n;
  if (n < CLIP_N_MERGES)
    return mp_errorf("%s: expected %d merge lines after the header, found %zu (truncated or not a CLIP vocabulary?)", path,
                     CLIP_N_MERGES, n);
  return NULL;
}

static mp_error *add_merges(mp_tokenizer *t, const char *path, const span *lines, size_t n) {
  for (size_t r = 0; r < n; r++) {
    const char *a, *b;
    size_t na, nb;
    if (!split_merge_line(lines[r].s, lines[r].n, &a, &na, &b, &nb))
      return mp_errorf("%s: line %zu: expected two symbols separated by a space", path, r + 2);
    int32_t ia = lookup_str(t, a, na), ib = lookup_str(t, b, nb);
    char buf[512];
    if (na + nb >= sizeof buf) return mp_errorf("%s: line %zu: merge symbols too long", path, r + 2);
    memcpy(buf, a, na);
    memcpy(buf + na, b, nb);
    int32_t im = lookup_str(t, buf, na + nb);
    /* A pair whose parts or result are not in the vocabulary can never fire; skip it. */
    if (ia >= 0 && ib >= 0 && im >= 0) add_merge(t, ia, ib, (int32_t)r, im);
  }
  return NULL;
}

/* Decompress `path` (plain text also works: zlib passes it through) up to and including line
 * `max_lines` (0-based count of '\n' seen), so the unused tail of the merges file is never inflated. */
static mp_error *read_gz(const char *path, size_t max_lines, char **out, size_t *len) {
  gzFile f = gzopen(path, "rb");
  if (!f) return mp_errorf("cannot open %s: %s", path, strerror(errno ? errno : ENOENT));
  size_t cap = 1 << 21, n = 0, lines = 0;
  char *buf = malloc(cap + 1);
  while (buf) {
    if (n == cap) {
      char *nb = cap < ((size_t)1 << 30) ? realloc(buf, 2 * cap + 1) : NULL;
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    size_t want = cap - n < (1 << 16) ? cap - n : (1 << 16);
    int got = gzread(f, buf + n, (unsigned)want);
    if (got < 0) {
      int errnum;
      mp_error *e = mp_errorf("%s: %s", path, gzerror(f, &errnum));
      free(buf);
      gzclose(f);
      return e;
    }
    if (got == 0) break;
    for (int i = 0; i < got; i++) lines += buf[n + (size_t)i] == '\n';
    n += (size_t)got;
    if (lines > max_lines) break;
  }
  gzclose(f);
  if (!buf) return mp_errorf("%s: out of memory (or larger than 1 GiB)", path);
  buf[n] = 0;
  *out = buf;
  *len = n;
  return NULL;
}

static void utf8_append(char *dst, size_t *n, int32_t cp) { *n += (size_t)utf8proc_encode_char(cp, (uint8_t *)dst + *n); }

/* The vocabulary compiled into the library (data/clip/bpe_simple_vocab_16e6.txt.gz, embedded by
 * cmake/embed.cmake), inflated up to the last merge line the tokenizer uses. */
extern const unsigned char mp_clip_vocab_gz[];
extern const size_t mp_clip_vocab_gz_size;

static mp_error *inflate_builtin(size_t max_lines, char **out, size_t *len) {
  z_stream z = {0};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return mp_errorf("built-in CLIP vocabulary: zlib could not start");
  size_t cap = (size_t)1 << 21, n = 0, lines = 0;
  char *buf = malloc(cap + 1);
  z.next_in = (unsigned char *)mp_clip_vocab_gz; /* zlib does not write through next_in */
  z.avail_in = (uInt)mp_clip_vocab_gz_size;
  int rc = Z_OK;
  while (buf && rc == Z_OK && lines <= max_lines) {
    if (n == cap) {
      char *nb = realloc(buf, 2 * cap + 1);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    z.next_out = (unsigned char *)buf + n;
    z.avail_out = (uInt)(cap - n);
    rc = inflate(&z, Z_NO_FLUSH);
    size_t got = cap - n - z.avail_out;
    for (size_t i = 0; i < got; i++) lines += buf[n + i] == '\n';
    n += got;
  }
  inflateEnd(&z);
  if (!buf) return mp_errorf("built-in CLIP vocabulary: out of memory");
  if (rc != Z_OK && rc != Z_STREAM_END) {
    free(buf);
    return mp_errorf("built-in CLIP vocabulary: corrupt gzip data (zlib error %d)", rc);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return NULL;
}

/* OpenAI's layout: 256 byte symbols, the same with "</w>", one id per merge, then SOT and EOT.
 * `path` NULL: the built-in copy. */
static mp_error *load_merges_file(mp_tokenizer *t, const char *path) {
  char *text = NULL;
  size_t len = 0;
  if (path) {
    MP_TRY(read_gz(path, CLIP_N_MERGES, &text, &len));
  } else {
    MP_TRY(inflate_builtin(CLIP_N_MERGES, &text, &len));
    path = "built-in " MP_CLIP_VOCAB_FILE;
  }
  span *lines = malloc(CLIP_N_MERGES * sizeof *lines);
  size_t n = 0;
  mp_error *e = lines ? merge_lines(path, text, len, lines, &n) : mp_errorf("out of memory");
  if (!e) e = alloc_tables(t, 512 + CLIP_N_MERGES + 2, CLIP_N_MERGES);
  int32_t cp_of_byte[256];
  int order[256];
  byte_alphabet(cp_of_byte, order);
  for (int i = 0; !e && i < 256; i++) {
    char s[16];
    size_t k = 0;
    utf8_append(s, &k, cp_of_byte[order[i]]);
    e = set_token(t, i, s, k);
    memcpy(s + k, "</w>", 4);
    if (!e) e = set_token(t, 256 + i, s, k + 4);
    t->byte_id[order[i]] = i;
    t->byte_id_w[order[i]] = 256 + i;
  }
  for (size_t r = 0; !e && r < n; r++) {
    const char *a, *b;
    size_t na, nb;
    if (!split_merge_line(lines[r].s, lines[r].n, &a, &na, &b, &nb)) {
      e = mp_errorf("%s: line %zu: expected two symbols separated by a space", path, r + 2);
      break;
    }
    char buf[512];
    if (na + nb >= sizeof buf) {
      e = mp_errorf("%s: line %zu: merge symbols too long", path, r + 2);
      break;
    }
    memcpy(buf, a, na);
    memcpy(buf + na, b, nb);
    e = set_token(t, 512 + (int32_t)r, buf, na + nb);
  }
  if (!e) e = set_token(t, 512 + CLIP_N_MERGES, SOT, strlen(SOT));
  if (!e) e = set_token(t, 512 + CLIP_N_MERGES + 1, EOT, strlen(EOT));
  if (!e) e = add_merges(t, path, lines, n);
  t->bos = 512 + CLIP_N_MERGES;
  t->eos = 512 + CLIP_N_MERGES + 1;
  free(lines);
  free(text);
  return e;
}

static mp_error *read_file(const char *path, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot open %s: %s", path, strerror(errno));
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 65536 + 1 > cap) {
      cap = cap ? 2 * cap : 1 << 20;
      char *nb = cap <= ((size_t)1 << 30) ? realloc(buf, cap) : NULL;
      if (!nb) {
        free(buf);
        fclose(f);
        return mp_errorf("%s: out of memory (or larger than 1 GiB)", path);
      }
      buf = nb;
    }
    size_t got = fread(buf + n, 1, 65536, f);
    n += got;
    if (got < 65536) break;
  }
  bool bad = ferror(f);
  fclose(f);
  if (bad) {
    free(buf);
    return mp_errorf("%s: read error", path);
  }
  buf[n] = 0;
  *out = buf;
  *len = n;
  return NULL;
}

/* diffusers / transformers layout: vocab.json (token -> id) and merges.txt. */
static mp_error *load_hf_folder(mp_tokenizer *t, const char *vocab_path, const char *merges_path) {
  char *json_text = NULL;
  size_t json_len = 0;
  MP_TRY(read_file(vocab_path, &json_text, &json_len));
  cJSON *root = cJSON_ParseWithLength(json_text, json_len);
  free(json_text);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return mp_errorf("%s: not a JSON object of token -> id", vocab_path);
  }
  int32_t max_id = -1;
  size_t count = 0;
  for (const cJSON *it = root->child; it; it = it->next) {
    if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble >= 10000000 || it->valuedouble != (int)it->valuedouble) {
      mp_error *e = mp_errorf("%s: token \"%.40s\": id must be an integer in [0, 10000000)", vocab_path, it->string);
      cJSON_Delete(root);
      return e;
    }
    if (it->valueint > max_id) max_id = it->valueint;
    count++;
  }
  if (max_id < 0) {
    cJSON_Delete(root);
    return mp_errorf("%s: empty vocabulary", vocab_path);
  }
  char *merges_text = NULL;
  size_t merges_len = 0;
  mp_error *e = alloc_tables(t, max_id + 1, CLIP_N_MERGES);
  for (const cJSON *it = root->child; !e && it; it = it->next) e = set_token(t, it->valueint, it->string, strlen(it->string));
  cJSON_Delete(root);
  (void)count;
  int32_t cp_of_byte[256];
  int order[256];
  byte_alphabet(cp_of_byte, order);
  for (int b = 0; !e && b < 256; b++) {
    char s[16];
    size_t k = 0;
    utf8_append(s, &k, cp_of_byte[b]);
    t->byte_id[b] = lookup_str(t, s, k);
    memcpy(s + k, "</w>", 4);
    t->byte_id_w[b] = lookup_str(t, s, k + 4);
    if (t->byte_id[b] < 0 || t->byte_id_w[b] < 0)
      e = mp_errorf("%s: the byte-level symbol of byte 0x%02x (\"%.*s\", with and without </w>) is missing", vocab_path, b, (int)k, s);
  }
  if (!e) {
    t->bos = lookup_str(t, SOT, strlen(SOT));
    t->eos = lookup_str(t, EOT, strlen(EOT));
    if (t->bos < 0 || t->eos < 0) e = mp_errorf("%s: %s or %s is missing", vocab_path, SOT, EOT);
  }
  if (!e) e = read_file(merges_path, &merges_text, &merges_len);
  if (!e) {
    /* transformers: read().strip().split("\n")[1 : 48895] */
    char *s = merges_text;
    size_t n = merges_len;
    while (n && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t')) n--;
    span *lines = malloc(CLIP_N_MERGES * sizeof *lines);
    size_t nl = 0, line = 0, i = 0;
    while (lines && i < n && nl < CLIP_N_MERGES) {
      size_t j = i;
      while (j < n && s[j] != '\n') j++;
      if (line > 0) lines[nl++] = (span){s + i, j - i};
      line++;
      i = j + 1;
    }
    e = lines ? add_merges(t, merges_path, lines, nl) : mp_errorf("out of memory");
    free(lines);
  }
  free(merges_text);
  return e;
}

static bool is_dir(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static char *join_path(const char *a, const char *b) {
  size_t n = strlen(a) + 1 + strlen(b) + 1;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", a, b);
  return p;
}

mp_error *mp_tokenizer_load(const char *path, mp_tokenizer **out) {
  *out = NULL;
  mp_tokenizer *t = calloc(1, sizeof *t);
  if (!t) return mp_errorf("out of memory");
  mp_error *e = NULL;
  if (!path) {
    e = load_merges_file(t, NULL);
  } else if (is_dir(path)) {
    char *vj = join_path(path, "vocab.json"), *mt = join_path(path, "merges.txt"), *gz = join_path(path, MP_CLIP_VOCAB_FILE);
    if (!vj || !mt || !gz) e = mp_errorf("out of memory");
    else if (is_file(vj) && is_file(mt)) e = load_hf_folder(t, vj, mt);
    else if (is_file(gz)) e = load_merges_file(t, gz);
    else e = mp_errorf("%s: folder has neither vocab.json + merges.txt nor %s", path, MP_CLIP_VOCAB_FILE);
    free(vj);
    free(mt);
    free(gz);
  } else {
    e = load_merges_file(t, path);
  }
  if (e) {
    mp_tokenizer_free(t);
    return mp_error_wrap(e, "loading the CLIP tokenizer");
  }
  *out = t;
  return NULL;
}

void mp_tokenizer_free(mp_tokenizer *t) {
  if (!t) return;
  free(t->text_off);
  free(t->arena);
  free(t->str_slot);
  free(t->pair_key);
  free(t->pair_rank);
  free(t->pair_merged);
  free(t);
}

mp_error *mp_tokenizer_find_vocab(const char *explicit_path, const char *data_dir, const char *models_dir, char **path) {
  *path = NULL;
  if (explicit_path) {
    *path = strdup(explicit_path);
    return *path ? NULL : mp_errorf("out of memory");
  }
  const char *env = getenv("MPASS_VOCAB");
  if (env && *env) {
    *path = strdup(env);
    return *path ? NULL : mp_errorf("out of memory");
  }
  /* on disk: <data_dir>/clip/, then <models>/clip/; else the copy built into the library (*path NULL) */
  const char *dirs[2] = {data_dir, models_dir ? models_dir : "models"};
  for (int i = 0; i < 2; i++) {
    if (!dirs[i]) continue;
    char *cand = join_path(dirs[i], "clip/" MP_CLIP_VOCAB_FILE);
    if (!cand) return mp_errorf("out of memory");
    if (is_file(cand)) {
      *path = cand;
      return NULL;
    }
    free(cand);
  }
  return NULL;
}

/* ---------------------------------------------------------------- text cleaning (BasicTokenizer) */

static utf8proc_category_t cat(int32_t cp) { return utf8proc_category(cp); }
static bool is_letter(int32_t cp) {
  utf8proc_category_t c = cat(cp);
  return c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO;
}
static bool is_number(int32_t cp) {
  utf8proc_category_t c = cat(cp);
  return c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO;
}

/* Python's str.isspace(), which str.split() uses. */
static bool py_isspace(int32_t cp) {
  if ((cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
      (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000)
    return true;
  return false;
}

/* BasicTokenizer._is_control: category C* except \t \n \r. */
static bool bt_is_control(int32_t cp) {
  if (cp == '\t' || cp == '\n' || cp == '\r') return false;
  utf8proc_category_t c = cat(cp);
  return c == UTF8PROC_CATEGORY_CN || c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CS ||
         c == UTF8PROC_CATEGORY_CO;
}

/* BasicTokenizer._is_whitespace: space, \t, \n, \r, or category Zs. */
static bool bt_is_whitespace(int32_t cp) {
  return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' || cat(cp) == UTF8PROC_CATEGORY_ZS;
}

/* BasicTokenizer._is_chinese_char: the CJK Unified Ideographs blocks (not Hangul, kana, ...). */
static bool is_cjk(int32_t cp) {
  return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x20000 && cp <= 0x2A6DF) ||
         (cp >= 0x2A700 && cp <= 0x2B73F) || (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B820 && cp <= 0x2CEAF) ||
         (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* Unicode Cased and Case_Ignorable, for Python's final-sigma rule in str.lower(). */
static bool is_cased(int32_t cp) {
  return utf8proc_islower(cp) || utf8proc_isupper(cp) || cat(cp) == UTF8PROC_CATEGORY_LT;
}
static bool is_case_ignorable(int32_t cp) {
  utf8proc_category_t c = cat(cp);
  if (c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_ME || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_LM ||
      c == UTF8PROC_CATEGORY_SK)
    return true;
  switch (cp) { /* Word_Break MidLetter / MidNumLet / Single_Quote */
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018: case 0x2019:
    case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default:
      return false;
  }
}

/* Python str.lower() of one word: simple lower-case mapping, plus U+0130 -> "i\u0307" and the
 * final-sigma rule (capital sigma at the end of a word becomes U+03C2). */
static bool lower_word(const int32_t *w, size_t n, i32vec *out) {
  for (size_t i = 0; i < n; i++) {
    int32_t cp = w[i];
    if (cp == 0x130) {
      if (!i32_push(out, 'i') || !i32_push(out, 0x307)) return false;
      continue;
    }
    if (cp == 0x3A3) {
      size_t j = i;
      while (j > 0 && is_case_ignorable(w[j - 1])) j--;
      bool final = j > 0 && is_cased(w[j - 1]);
      if (final) {
        size_t k = i + 1;
        while (k < n && is_case_ignorable(w[k])) k++;
        final = k == n || !is_cased(w[k]);
      }
      if (!i32_push(out, final ? 0x3C2 : 0x3C3)) return false;
      continue;
    }
    if (!i32_push(out, utf8proc_tolower(cp))) return false;
  }
  return true;
}

/* ---------------------------------------------------------------- BPE */

/* Byte-level BPE of one piece: repeatedly take the lowest-ranked adjacent pair and merge every
 * occurrence of it, left to right (exactly the reference loop). rank[i]/merged[i] cache the pair
 * (w[i], w[i+1]) so only pairs next to a merge are looked up again. */
static bool bpe_piece(const mp_tokenizer *t, const uint8_t *bytes, size_t n, i32vec *word, i32vec *out) {
  if (n == 0) return true;
  word->n = 0;
  for (size_t i = 0; i < n; i++)
    if (!i32_push(word, i + 1 < n ? t->byte_id[bytes[i]] : t->byte_id_w[bytes[i]])) return false;
  int32_t *w = word->v;
  size_t len = word->n;
  int32_t small[4 * 64], *heap = NULL, *rank = small;
  if (len > 64) {
    heap = malloc(4 * len * sizeof *heap);
    if (!heap) return false;
    rank = heap;
  }
  int32_t *merged = rank + len, *src = merged + len, *fresh = src + len;
  for (size_t i = 0; i + 1 < len; i++) {
    rank[i] = find_merge(t, w[i], w[i + 1], &merged[i]);
    if (rank[i] < 0) rank[i] = INT32_MAX;
  }
  while (len > 1) {
    size_t at = 0;
    for (size_t i = 1; i + 1 < len; i++)
      if (rank[i] < rank[at]) at = i;
    if (rank[at] == INT32_MAX) break;
    int32_t a = w[at], b = w[at + 1], ab = merged[at];
    size_t o = 0;
    for (size_t i = 0; i < len; o++) {
      src[o] = (int32_t)i;
      if (i + 1 < len && w[i] == a && w[i + 1] == b) {
        w[o] = ab;
        fresh[o] = 1;
        i += 2;
      } else {
        w[o] = w[i++];
        fresh[o] = 0;
      }
    }
    /* src[k] >= k, so rank[src[k]] is still the old value when rank[k] is written */
    for (size_t k = 0; k + 1 < o; k++) {
      if (!fresh[k] && !fresh[k + 1]) {
        rank[k] = rank[src[k]];
        merged[k] = merged[src[k]];
      } else {
        rank[k] = find_merge(t, w[k], w[k + 1], &merged[k]);
        if (rank[k] < 0) rank[k] = INT32_MAX;
      }
    }
    len = o;
  }
  free(heap);
  for (size_t i = 0; i < len; i++)
    if (!i32_push(out, w[i])) return false;
  return true;
}

/* ---------------------------------------------------------------- pre-tokenizer */

/* Does the special-token string `lit` start at w[i]? The pattern is compiled with IGNORECASE:
 * 's' also matches U+017F (long s), 'k' U+212A (Kelvin). */
static bool ci_char(int32_t cp, char c) {
  if (cp == c) return true;
  if (c >= 'a' && c <= 'z' && cp == c - 'a' + 'A') return true;
  return (c == 's' && cp == 0x17F) || (c == 'k' && cp == 0x212A);
}

static size_t match_lit(const int32_t *w, size_t n, size_t i, const char *lit) {
  size_t k = 0;
  for (; lit[k]; k++)
    if (i + k >= n || !ci_char(w[i + k], lit[k])) return 0;
  return k;
}

typedef struct {
  i32vec cps, norm, lower, word, ids;
  uint8_t *bytes;
  size_t bytes_cap;
} scratch;

static bool emit_piece(const mp_tokenizer *t, const int32_t *w, size_t n, scratch *s) {
  if (4 * n > s->bytes_cap) {
    size_t cap = 4 * n + 64;
    uint8_t *nb = realloc(s->bytes, cap);
    if (!nb) return false;
    s->bytes = nb;
    s->bytes_cap = cap;
  }
  size_t nb = 0;
  for (size_t i = 0; i < n; i++) nb += (size_t)utf8proc_encode_char(w[i], s->bytes + nb);
  return bpe_piece(t, s->bytes, nb, &s->word, &s->ids);
}

/* The CLIP regex over one lower-cased word (no whitespace inside):
 * <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+ */
static bool pretokenize_word(const mp_tokenizer *t, const int32_t *w, size_t n, scratch *s) {
  static const char *const contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  size_t i = 0;
  while (i < n) {
    size_t k;
    if ((k = match_lit(w, n, i, SOT))) {
      if (!i32_push(&s->ids, t->bos)) return false;
      i += k;
      continue;
    }
    if ((k = match_lit(w, n, i, EOT))) {
      if (!i32_push(&s->ids, t->eos)) return false;
      i += k;
      continue;
    }
    k = 0;
    for (size_t c = 0; !k && c < sizeof contractions / sizeof *contractions; c++) k = match_lit(w, n, i, contractions[c]);
    if (!k) {
      if (is_letter(w[i])) {
        k = 1;
        while (i + k < n && is_letter(w[i + k])) k++;
      } else if (is_number(w[i])) {
        k = 1;
      } else if (py_isspace(w[i])) {
        i++; /* not reached: words hold no whitespace */
        continue;
      } else {
        k = 1;
        while (i + k < n && !is_letter(w[i + k]) && !is_number(w[i + k]) && !py_isspace(w[i + k])) k++;
      }
    }
    if (!emit_piece(t, w + i, k, s)) return false;
    i += k;
  }
  return true;
}

/* One stretch of text without literal special tokens: BasicTokenizer, then regex + BPE per word. */
static mp_error *tokenize_text(const mp_tokenizer *t, const uint8_t *text, size_t len, scratch *s) {
  /* decode + _clean_text + _tokenize_chinese_chars */
  s->cps.n = 0;
  for (size_t i = 0; i < len;) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate(text + i, (utf8proc_ssize_t)(len - i), &cp);
    if (k < 1) { /* invalid UTF-8: one byte becomes U+FFFD, which cleaning drops */
      i++;
      continue;
    }
    i += (size_t)k;
    if (cp == 0 || cp == 0xFFFD || bt_is_control(cp)) continue;
    bool ok;
    if (bt_is_whitespace(cp)) ok = i32_push(&s->cps, ' ');
    else if (is_cjk(cp)) ok = i32_push(&s->cps, ' ') && i32_push(&s->cps, cp) && i32_push(&s->cps, ' ');
    else ok = i32_push(&s->cps, cp);
    if (!ok) return mp_errorf("out of memory");
  }
  if (s->cps.n == 0) return NULL;
  /* NFC (utf8proc works on UTF-8) */
  size_t cap = 4 * s->cps.n + 1, nb = 0;
  if (cap > s->bytes_cap) {
    uint8_t *b = realloc(s->bytes, cap);
    if (!b) return mp_errorf("out of memory");
    s->bytes = b;
    s->bytes_cap = cap;
  }
  for (size_t i = 0; i < s->cps.n; i++) nb += (size_t)utf8proc_encode_char(s->cps.v[i], s->bytes + nb);
  utf8proc_uint8_t *nfc = NULL;
  utf8proc_ssize_t nn = utf8proc_map(s->bytes, (utf8proc_ssize_t)nb, &nfc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
  if (nn < 0) return mp_errorf("Unicode normalisation failed: %s", utf8proc_errmsg(nn));
  s->norm.n = 0;
  for (utf8proc_ssize_t i = 0; i < nn;) {
    utf8proc_int32_t cp;
    utf8proc_ssize_t k = utf8proc_iterate(nfc + i, nn - i, &cp);
    if (k < 1) break; /* cannot happen: utf8proc's own output */
    i += k;
    if (!i32_push(&s->norm, cp)) {
      free(nfc);
      return mp_errorf("out of memory");
    }
  }
  free(nfc);
  /* whitespace_tokenize, lower-case each word, then the CLIP regex per word */
  const int32_t *w = s->norm.v;
  size_t n = s->norm.n;
  for (size_t i = 0; i < n;) {
    if (py_isspace(w[i])) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < n && !py_isspace(w[j])) j++;
    s->lower.n = 0;
    if (!lower_word(w + i, j - i, &s->lower) || !pretokenize_word(t, s->lower.v, s->lower.n, s))
      return mp_errorf("out of memory");
    i = j;
  }
  return NULL;
}

mp_error *mp_tokenize(const mp_tokenizer *t, const char *text, int32_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  if (!text) text = "";
  scratch s = {0};
  mp_error *e = NULL;
  const char *p = text;
  /* Literal special tokens are split out first, before any cleaning (transformers' added-tokens trie). */
  while (!e && *p) {
    const char *a = strstr(p, SOT), *b = strstr(p, EOT);
    const char *hit = a && (!b || a < b) ? a : b;
    size_t stop = hit ? (size_t)(hit - p) : strlen(p);
    if (stop) e = tokenize_text(t, (const uint8_t *)p, stop, &s);
    if (!hit || e) break;
    if (!i32_push(&s.ids, hit == a ? t->bos : t->eos)) e = mp_errorf("out of memory");
    p = hit + strlen(hit == a ? SOT : EOT);
  }
  free(s.cps.v);
  free(s.norm.v);
  free(s.lower.v);
  free(s.word.v);
  free(s.bytes);
  if (e) {
    free(s.ids.v);
    return mp_error_wrap(e, "tokenizing");
  }
  *ids = s.ids.v;
  *n = s.ids.n;
  return NULL;
}

mp_error *mp_tokenize_padded(const mp_tokenizer *t, const char *text, int32_t out[MP_CLIP_MAX_LENGTH], size_t *n_untruncated) {
  int32_t *ids;
  size_t n;
  MP_TRY(mp_tokenize(t, text, &ids, &n));
  size_t keep = n < MP_CLIP_MAX_LENGTH - 2 ? n : MP_CLIP_MAX_LENGTH - 2;
  out[0] = t->bos;
  if (keep) memcpy(out + 1, ids, keep * sizeof *ids);
  for (size_t i = keep + 1; i < MP_CLIP_MAX_LENGTH; i++) out[i] = t->eos;
  free(ids);
  if (n_untruncated) *n_untruncated = n + 2;
  return NULL;
}

const char *mp_tokenizer_token_text(const mp_tokenizer *t, int32_t id) { return tok_str(t, id); }
int32_t mp_tokenizer_token_id(const mp_tokenizer *t, const char *text) { return lookup_str(t, text, strlen(text)); }
int32_t mp_tokenizer_vocab_size(const mp_tokenizer *t) { return t->n_vocab; }
int32_t mp_tokenizer_bos(const mp_tokenizer *t) { return t->bos; }
int32_t mp_tokenizer_eos(const mp_tokenizer *t) { return t->eos; }
