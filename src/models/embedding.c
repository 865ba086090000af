/* Textual-inversion embedding files; see embedding.h. */
#include "models/embedding.h"

#include <dirent.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "io/weights.h"
#include "prompt/weighting.h"

#define A1111_PARAM_PREFIX "string_to_param."
/* Subfolder levels searched below the embeddings folder (also stops symlink loops). */
#define MAX_SEARCH_DEPTH 8

static const char *const extensions[] = {".safetensors", ".pt", ".bin"};
#define N_EXTENSIONS (sizeof extensions / sizeof *extensions)

/* ---- which tensor of the file is the embedding ---------------------------------------------------- */

/* "a, b, c, ... (N in all)" of the file's tensor names, for error messages. */
static void list_names(const mp_weights *w, char *buf, size_t cap) {
  size_t n = mp_weights_count(w), used = 0;
  buf[0] = 0;
  for (size_t i = 0; i < n && i < 6; i++) {
    int k = snprintf(buf + used, cap - used, "%s'%s'", i ? ", " : "", mp_weights_at(w, i)->name);
    if (k < 0 || (size_t)k >= cap - used) break;
    used += (size_t)k;
  }
  if (n > 6) snprintf(buf + used, cap - used, ", ... (%zu in all)", n);
}

static mp_error *pick_tensor(const mp_weights *w, const char *path, const mp_weight **out) {
  size_t n = mp_weights_count(w), n_params = 0;
  const mp_weight *param = NULL;
  for (size_t i = 0; i < n; i++) {
    const mp_weight *t = mp_weights_at(w, i);
    if (strncmp(t->name, A1111_PARAM_PREFIX, strlen(A1111_PARAM_PREFIX)) == 0) param = t, n_params++;
  }
  char names[512];
  if (n_params > 1) {
    list_names(w, names, sizeof names);
    return mp_errorf("%s: string_to_param holds %zu terms (%s); an embedding file must hold exactly one", path, n_params, names);
  }
  if (param) {
    *out = param;
    return NULL;
  }
  if (n != 1) {
    list_names(w, names, sizeof names);
    return mp_errorf("%s: holds %zu tensors (%s); expected one embedding tensor (A1111 'emb_params' or "
                     "'string_to_param', or one diffusers '<token>')",
                     path, n, n ? names : "none");
  }
  *out = mp_weights_at(w, 0);
  return NULL;
}

/* ---- reading ------------------------------------------------------------------------------------ */

static const char *family_of_width(int64_t hidden) {
  switch (hidden) {
  case 768: return " (768 is SD 1.x)";
  case 1024: return " (1024 is SD 2.x)";
  case 1280: return " (1280 is SDXL's second encoder)";
  default: return "";
  }
}

static mp_error *convert(const char *path, const mp_weight *t, int expected_hidden, mp_embedding *out) {
  const mp_tensor *x = &t->t;
  char sb[96];
  const char *shape = mp_shape_str(x->ndim, x->shape, sb, sizeof sb);
  if (x->dtype != MP_F32 && x->dtype != MP_F16 && x->dtype != MP_BF16 && x->dtype != MP_F64)
    return mp_errorf("%s: tensor '%s' is %s; an embedding must be floating point (F32, F16, BF16)", path, t->name,
                     mp_dtype_name(x->dtype));
  if (x->ndim != 1 && x->ndim != 2)
    return mp_errorf("%s: tensor '%s' has shape %s; expected [hidden] or [vectors, hidden]", path, t->name, shape);
  int64_t n = x->ndim == 2 ? x->shape[0] : 1, hidden = x->shape[x->ndim - 1];
  if (n < 1 || n > MP_CHUNK_TOKENS)
    return mp_errorf("%s: tensor '%s' has shape %s: %" PRId64 " vectors, expected 1..%d (one 75-token chunk)", path, t->name,
                     shape, n, MP_CHUNK_TOKENS);
  if (hidden < 1 || hidden > 65536)
    return mp_errorf("%s: tensor '%s' has shape %s: width %" PRId64 " is not a text encoder width", path, t->name, shape, hidden);
  if (expected_hidden > 0 && hidden != expected_hidden)
    return mp_errorf("%s: embedding width is %" PRId64 "%s but the text encoder's is %d: the embedding was made for another "
                     "model family",
                     path, hidden, family_of_width(hidden), expected_hidden);
  size_t count = (size_t)n * (size_t)hidden;
  float *v = malloc(count * sizeof *v);
  if (!v) return mp_errorf("%s: out of memory", path);
  mp_convert_to_f32(v, x->data, x->dtype, count);
  for (size_t i = 0; i < count; i++)
    if (!isfinite(v[i])) {
      free(v);
      return mp_errorf("%s: tensor '%s' holds a non-finite value (vector %zu, element %zu): the file is corrupt", path, t->name,
                       i / (size_t)hidden, i % (size_t)hidden);
    }
  *out = (mp_embedding){(int)n, (int)hidden, v, 0, NULL};
  return NULL;
}

mp_error *mp_embedding_read(const char *path, int expected_hidden, mp_embedding *out) {
  *out = (mp_embedding){0, 0, NULL, 0, NULL};
  mp_weights *w = NULL;
  mp_error *e = mp_weights_open(path, &w);
  if (e && strstr(mp_error_message(e), "ParameterDict")) {
    /* The original textual_inversion code pickled a whole nn.ParameterDict module; the reader
     * refuses module classes, so say what the file is and how to get a readable one. */
    mp_error *hint = mp_errorf("%s (an embedding saved as a torch ParameterDict by the original textual_inversion code: "
                               "re-save its tensor as .safetensors with the key emb_params)",
                               mp_error_message(e));
    mp_error_free(e);
    e = hint;
  }
  if (e) return strstr(mp_error_message(e), path) ? e : mp_error_wrap(e, "%s", path);
  const mp_weight *clip_l = mp_weights_find(w, "clip_l"), *clip_g = mp_weights_find(w, "clip_g");
  if (clip_l && clip_g) {
    /* SDXL: one vector set per text encoder, the same number of vectors in each */
    mp_embedding g = {0};
    e = convert(path, clip_l, expected_hidden, out);
    if (!e) e = convert(path, clip_g, 0, &g);
    if (!e && g.n_vectors != out->n_vectors)
      e = mp_errorf("%s: an SDXL embedding with %d clip_l vectors but %d clip_g vectors; both must hold the same number", path,
                    out->n_vectors, g.n_vectors);
    if (e) {
      mp_embedding_free(out);
      mp_embedding_free(&g);
    } else {
      out->hidden2 = g.hidden, out->vectors2 = g.vectors;
    }
    mp_weights_close(w);
    return e;
  }
  const mp_weight *t = NULL;
  e = pick_tensor(w, path, &t);
  if (!e) e = convert(path, t, expected_hidden, out);
  mp_weights_close(w);
  return e;
}

void mp_embedding_free(mp_embedding *e) {
  free(e->vectors);
  free(e->vectors2);
  *e = (mp_embedding){0, 0, NULL, 0, NULL};
}

mp_error *mp_embedding_load_file(const char *path, const char *name, int expected_hidden, mp_ti_set *set) {
  mp_embedding emb;
  MP_TRY(mp_embedding_read(path, expected_hidden, &emb));
  mp_error *e = emb.hidden2 ? mp_ti_set_add_xl(set, name, emb.vectors, emb.hidden, emb.vectors2, emb.hidden2, emb.n_vectors)
                            : mp_ti_set_add(set, name, emb.vectors, emb.n_vectors, emb.hidden);
  mp_embedding_free(&emb);
  return e;
}

/* ---- finding ------------------------------------------------------------------------------------ */

char *mp_embeddings_dir(const char *models_dir) {
  size_t n = strlen(models_dir) + strlen(MP_EMBEDDINGS_SUBDIR) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s", models_dir, MP_EMBEDDINGS_SUBDIR);
  return p;
}

static char *join(const char *dir, const char *name, const char *ext) {
  size_t n = strlen(dir) + strlen(name) + strlen(ext) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s%s", dir, name, ext);
  return p;
}

static bool is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The best case-insensitive match so far in the folder walk: shallowest, then by extension order,
 * then by path, so the choice does not depend on the order readdir returns. */
typedef struct {
  const char *name;
  char *best;
  int best_depth, best_ext;
  bool oom;
} walk;

static void consider(walk *wk, const char *path, int depth, int ext) {
  if (wk->best && (depth > wk->best_depth || (depth == wk->best_depth && ext > wk->best_ext) ||
                   (depth == wk->best_depth && ext == wk->best_ext && strcmp(path, wk->best) >= 0)))
    return;
  char *copy = strdup(path);
  if (!copy) {
    wk->oom = true;
    return;
  }
  free(wk->best);
  wk->best = copy, wk->best_depth = depth, wk->best_ext = ext;
}

static int matching_extension(const char *file, const char *name) {
  size_t nl = strlen(name);
  if (strncasecmp(file, name, nl) != 0) return -1;
  for (size_t i = 0; i < N_EXTENSIONS; i++)
    if (strcasecmp(file + nl, extensions[i]) == 0) return (int)i;
  return -1;
}

static void search(walk *wk, const char *dir, int depth) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while (!wk->oom && (de = readdir(d))) {
    if (de->d_name[0] == '.') continue; /* ".", "..", hidden files and folders */
    char *p = join(dir, de->d_name, "");
    if (!p) {
      wk->oom = true;
      break;
    }
    struct stat st;
    if (stat(p, &st) == 0) {
      int ext = S_ISREG(st.st_mode) ? matching_extension(de->d_name, wk->name) : -1;
      if (ext >= 0) consider(wk, p, depth, ext);
      if (S_ISDIR(st.st_mode) && depth < MAX_SEARCH_DEPTH) search(wk, p, depth + 1);
    }
    free(p);
  }
  closedir(d);
}

static mp_error *check_name(const char *name) {
  if (!name || !*name) return mp_errorf("embedding name is empty");
  if (name[0] == '.' || strchr(name, '/') || strchr(name, '\\'))
    return mp_errorf("embedding name '%s' is not a plain file name (no '/', '\\' or leading '.')", name);
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    if (*p < 0x20 || *p == 0x7f) return mp_errorf("embedding name contains a control character");
  return NULL;
}

mp_error *mp_embedding_find(const char *dir, const char *name, char **path) {
  *path = NULL;
  MP_TRY(check_name(name));
  char *tried[N_EXTENSIONS] = {0};
  for (size_t i = 0; i < N_EXTENSIONS; i++) {
    char *p = join(dir, name, extensions[i]);
    if (!p) {
      for (size_t k = 0; k < i; k++) free(tried[k]);
      return mp_errorf("out of memory");
    }
    if (is_file(p)) {
      for (size_t k = 0; k < i; k++) free(tried[k]);
      *path = p;
      return NULL;
    }
    tried[i] = p;
  }
  walk wk = {name, NULL, 0, 0, false};
  struct stat st;
  bool dir_exists = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
  if (dir_exists) search(&wk, dir, 0);
  mp_error *e = NULL;
  if (wk.oom)
    e = mp_errorf("out of memory");
  else if (wk.best)
    *path = wk.best, wk.best = NULL;
  else if (!dir_exists)
    e = mp_errorf("embedding '%s' not found: the embeddings folder %s does not exist (tried %s, %s, %s)", name, dir, tried[0],
                  tried[1], tried[2]);
  else
    e = mp_errorf("embedding '%s' not found: tried %s, %s, %s, and %s/**/%s.{safetensors,pt,bin} in any letter case", name,
                  tried[0], tried[1], tried[2], dir, name);
  free(wk.best);
  for (size_t k = 0; k < N_EXTENSIONS; k++) free(tried[k]);
  return e;
}

/* ---- a job's embeddings ------------------------------------------------------------------------- */

mp_error *mp_embeddings_load(const char *dir, char *const *names, size_t n_names, int expected_hidden, mp_ti_set *set) {
  mp_error *all = NULL;
  size_t failed = 0;
  for (size_t i = 0; i < n_names; i++) {
    char *path = NULL;
    mp_error *e = mp_embedding_find(dir, names[i], &path);
    if (!e) e = mp_error_wrap(mp_embedding_load_file(path, names[i], expected_hidden, set), "embedding '%s'", names[i]);
    free(path);
    if (!e) continue;
    failed++;
    if (!all) {
      all = e;
    } else {
      /* keep every failure in one message: "<earlier>; <this one>" */
      mp_error *joined = mp_errorf("%s; %s", mp_error_message(all), mp_error_message(e));
      mp_error_free(all);
      mp_error_free(e);
      all = joined;
    }
  }
  if (failed > 1) all = mp_error_wrap(all, "%zu of %zu embeddings could not be loaded", failed, n_names);
  return all;
}
