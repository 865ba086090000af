#include "pipeline/tunes.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "io/diffusers.h"
#include "io/weights.h"
#include "models/sd.h"
#include "pipeline/params.h"

/* ---------- small helpers ---------- */

static char *pathf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *pathf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0) s = NULL;
  va_end(ap);
  return s;
}

static bool is_file(const char *path) {
  struct stat st;
  return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
static bool is_dir(const char *path) {
  struct stat st;
  return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static mp_error *mkdir_p(const char *path) {
  char *p = strdup(path);
  if (!p) return mp_errorf("out of memory");
  for (char *s = p + 1;; s++) {
    bool end = *s == 0;
    if (*s == '/' || end) {
      *s = 0;
      if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        mp_error *e = mp_errorf("cannot create folder %s (%s)", p, strerror(errno));
        free(p);
        return e;
      }
      if (end) break;
      *s = '/';
    }
  }
  free(p);
  if (!is_dir(path)) return mp_errorf("%s exists but is not a folder", path);
  return NULL;
}

/* Remove a tune folder: regular files, and the subfolders of a diffusers folder (depth <= 3); a
 * symlink or anything else is left and reported. */
static mp_error *remove_tune_dir(const char *dir, int depth) {
  DIR *d = opendir(dir);
  if (!d) return mp_errorf("cannot open folder %s (%s)", dir, strerror(errno));
  struct dirent *ent;
  mp_error *e = NULL;
  while (!e && (ent = readdir(d))) {
    if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
    char *p = pathf("%s/%s", dir, ent->d_name);
    struct stat st;
    if (!p)
      e = mp_errorf("out of memory");
    else if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode) && depth < 3)
      e = remove_tune_dir(p, depth + 1);
    else if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode))
      e = mp_errorf("%s is not a plain file; not removing %s", p, dir);
    else if (unlink(p) != 0)
      e = mp_errorf("cannot remove %s (%s)", p, strerror(errno));
    free(p);
  }
  closedir(d);
  if (!e && rmdir(dir) != 0) e = mp_errorf("cannot remove folder %s (%s)", dir, strerror(errno));
  return e;
}
static mp_error *remove_flat_dir(const char *dir) { return remove_tune_dir(dir, 0); }

/* Printable text without control characters, 1..max bytes (or empty when allowed). */
static mp_error *check_text(const char *what, const char *s, size_t max, bool allow_space) {
  if (!s || !*s) return mp_errorf("%s is empty", what);
  size_t n = strlen(s);
  if (n > max) return mp_errorf("%s is %zu characters long (at most %zu)", what, n, max);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p < 0x20 || *p == 0x7f) return mp_errorf("%s '%s' contains a control character", what, s);
    if (!allow_space && *p == ' ') return mp_errorf("%s '%s' contains a space", what, s);
  }
  return NULL;
}

mp_error *mp_tune_check_id(const char *id) {
  if (!id || !*id) return mp_errorf("tune id is empty");
  size_t n = strlen(id);
  if (n > 64) return mp_errorf("tune id '%.64s…' is longer than 64 characters", id);
  if (id[0] == '.') return mp_errorf("tune id '%s' starts with '.'", id);
  for (const char *p = id; *p; p++)
    if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
      return mp_errorf("tune id '%s' contains '%c' (allowed: letters, digits, '_', '-', '.')", id, *p);
  return NULL;
}

/* A file stem used in a prompt tag (<lora:NAME:W>, <NAME>): no folders, nothing hidden. */
static mp_error *check_stem(const char *what, const char *name) {
  if (!name || !*name) return mp_errorf("%s name is empty", what);
  if (strlen(name) > 200) return mp_errorf("%s name '%.40s…' is too long", what, name);
  if (name[0] == '.') return mp_errorf("%s name '%s' starts with '.'", what, name);
  for (const unsigned char *p = (const unsigned char *)name; *p; p++)
    if (*p < 0x20 || *p == '/' || *p == '\\' || *p == 0x7f)
      return mp_errorf("%s name '%s' contains a path separator or control character", what, name);
  return NULL;
}

mp_error *mp_tune_type_parse(const char *s, mp_tune_type *t) {
  if (s && strcmp(s, "lora") == 0) return *t = MP_TUNE_LORA, NULL;
  if (s && strcmp(s, "checkpoint") == 0) return *t = MP_TUNE_CHECKPOINT, NULL;
  return mp_errorf("tune type '%s': expected 'lora' or 'checkpoint'", s ? s : "");
}

const char *mp_tune_type_name(mp_tune_type t) { return t == MP_TUNE_CHECKPOINT ? "checkpoint" : "lora"; }

static const char *const families[] = {"sd15", "sd2", "sdxl"};

static mp_error *check_family(const char *f) {
  for (size_t i = 0; i < 3; i++)
    if (f && strcmp(f, families[i]) == 0) return NULL;
  return mp_errorf("family '%s': expected sd15, sd2 or sdxl", f ? f : "");
}

void mp_tune_free(mp_tune *t) {
  if (!t) return;
  free(t->id), free(t->title), free(t->name), free(t->token), free(t->family), free(t->file), free(t->sha256),
      free(t->created_at);
  memset(t, 0, sizeof *t);
}

/* ---------- tune.json ---------- */

static mp_error *json_string(const cJSON *obj, const char *path, const char *key, bool required, char **out) {
  *out = NULL;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v) return required ? mp_errorf("%s: key '%s' is missing", path, key) : NULL;
  if (!cJSON_IsString(v) || !v->valuestring) return mp_errorf("%s: key '%s': expected a string", path, key);
  *out = strdup(v->valuestring);
  return *out ? NULL : mp_errorf("out of memory");
}

static mp_error *read_small_file(const char *path, size_t limit, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("%s: cannot open (%s)", path, strerror(errno));
  char *buf = malloc(limit + 1);
  if (!buf) {
    fclose(f);
    return mp_errorf("out of memory");
  }
  size_t n = fread(buf, 1, limit + 1, f);
  bool err = ferror(f);
  fclose(f);
  if (err || n > limit) {
    free(buf);
    return err ? mp_errorf("%s: read error", path) : mp_errorf("%s: larger than %zu bytes", path, limit);
  }
  buf[n] = 0;
  *out = buf;
  return NULL;
}

static mp_error *parse_tune_json(const char *models_dir, const char *id, const char *json_path, mp_tune *t) {
  memset(t, 0, sizeof *t);
  char *text;
  MP_TRY(read_small_file(json_path, 1 << 20, &text));
  cJSON *root = cJSON_ParseWithLength(text, strlen(text));
  if (!root) {
    const char *at = cJSON_GetErrorPtr();
    int line = 1, col = 1;
    if (at && at >= text && at <= text + strlen(text))
      for (const char *p = text; p < at; p++) *p == '\n' ? (line++, col = 1) : col++;
    free(text);
    return mp_errorf("%s: invalid JSON near line %d, column %d", json_path, line, col);
  }
  free(text);
  mp_error *e = NULL;
  char *type = NULL, *file = NULL;
  if (!cJSON_IsObject(root)) e = mp_errorf("%s: expected a JSON object", json_path);
  if (!e) e = json_string(root, json_path, "id", true, &t->id);
  if (!e) e = json_string(root, json_path, "name", true, &t->name);
  if (!e) e = json_string(root, json_path, "token", true, &t->token);
  if (!e) e = json_string(root, json_path, "type", true, &type);
  if (!e) e = json_string(root, json_path, "family", true, &t->family);
  if (!e) e = json_string(root, json_path, "file", true, &file);
  if (!e) e = json_string(root, json_path, "title", false, &t->title);
  if (!e) e = json_string(root, json_path, "sha256", false, &t->sha256);
  if (!e) e = json_string(root, json_path, "created_at", false, &t->created_at);
  if (!e && strcmp(t->id, id) != 0)
    e = mp_errorf("%s: key 'id' is '%s' but the folder is '%s'", json_path, t->id, id);
  if (!e) e = mp_error_wrap(mp_tune_type_parse(type, &t->type), "%s: key 'type'", json_path);
  if (!e) e = mp_error_wrap(check_family(t->family), "%s: key 'family'", json_path);
  if (!e) e = mp_error_wrap(check_stem("weights file", file), "%s: key 'file'", json_path);
  if (!e && !t->title) e = (t->title = pathf("%s %s", t->token, t->name)) ? NULL : mp_errorf("out of memory");
  if (!e) {
    t->file = pathf("%s/tunes/%s/%s", models_dir, id, file);
    if (!t->file) e = mp_errorf("out of memory");
    else if (!is_file(t->file) && !mp_diffusers_is_folder(t->file))
      e = mp_errorf("%s: its weights file %s is missing", json_path, t->file);
  }
  free(type), free(file);
  cJSON_Delete(root);
  if (e) mp_tune_free(t);
  return e;
}

bool mp_tune_exists(const char *models_dir, const char *id) {
  mp_error *bad = mp_tune_check_id(id);
  if (bad) { /* an invalid id names no tune */
    mp_error_free(bad);
    return false;
  }
  char *p = pathf("%s/tunes/%s/tune.json", models_dir, id);
  bool ok = is_file(p);
  free(p);
  return ok;
}

mp_error *mp_tune_load(const char *models_dir, const char *id, mp_tune *out) {
  memset(out, 0, sizeof *out);
  MP_TRY(mp_tune_check_id(id));
  char *p = pathf("%s/tunes/%s/tune.json", models_dir, id);
  if (!p) return mp_errorf("out of memory");
  mp_error *e = is_file(p) ? parse_tune_json(models_dir, id, p, out) : mp_errorf("no tune '%s' (%s does not exist)", id, p);
  free(p);
  return e;
}

mp_error *mp_tune_remove(const char *models_dir, const char *id) {
  MP_TRY(mp_tune_check_id(id));
  char *dir = pathf("%s/tunes/%s", models_dir, id);
  if (!dir) return mp_errorf("out of memory");
  mp_error *e = is_dir(dir) ? remove_flat_dir(dir) : mp_errorf("no tune '%s' (%s does not exist)", id, dir);
  free(dir);
  return e;
}

/* ---------- adding ---------- */

static const char *weights_ext(const char *path) {
  static const char *const exts[] = {".safetensors", ".ckpt", ".pt", ".bin"};
  size_t n = strlen(path);
  for (size_t i = 0; i < 4; i++) {
    size_t k = strlen(exts[i]);
    if (n > k && strcasecmp(path + n - k, exts[i]) == 0) return exts[i];
  }
  return NULL;
}

/* Is this a LoRA (and which family do its key names say, if any)? Is this a checkpoint (which family)? */
static mp_error *inspect_weights(const char *path, mp_tune_type type, const char **family) {
  *family = NULL;
  mp_weights *w;
  MP_TRY(mp_weights_open(path, &w));
  mp_error *e = NULL;
  if (type == MP_TUNE_LORA) {
    size_t lora = 0;
    bool xl = false;
    for (size_t i = 0; i < mp_weights_count(w); i++) {
      const char *k = mp_weights_at(w, i)->name;
      if (strstr(k, "lora_down") || strstr(k, "lora_up") || strstr(k, "lora_A") || strstr(k, "lora_B") ||
          strstr(k, "lora.down") || strstr(k, "lora.up") || strstr(k, "hada_w1") || strstr(k, "lokr_w1"))
        lora++;
      if (strncmp(k, "lora_te2_", 9) == 0 || strstr(k, "text_encoder_2") || strncmp(k, "lora_unet_input_blocks", 22) == 0)
        xl = true;
    }
    if (!lora)
      e = mp_errorf("%s holds no LoRA tensors (expected kohya lora_down/lora_up, diffusers/PEFT lora_A/lora_B or "
                    "LyCORIS hada_/lokr_ keys); for a full model use --type checkpoint",
                    path);
    else if (xl)
      *family = "sdxl";
  } else {
    mp_sd_config cfg;
    e = mp_sd_config_detect(w, NULL, &cfg);
    if (e)
      e = mp_error_wrap(e, "%s is not a recognised Stable Diffusion checkpoint", path);
    else
      *family = cfg.family == MP_FAMILY_SD1 ? "sd15" : cfg.family == MP_FAMILY_SD2 ? "sd2" : "sdxl";
  }
  mp_weights_close(w);
  return e;
}

static mp_error *copy_with_hash(const char *src, const char *dst, char hex[65]) {
  FILE *in = fopen(src, "rb");
  if (!in) return mp_errorf("%s: cannot open (%s)", src, strerror(errno));
  FILE *out = fopen(dst, "wb");
  if (!out) {
    fclose(in);
    return mp_errorf("%s: cannot create (%s)", dst, strerror(errno));
  }
  enum { CHUNK = 1 << 20 };
  char *buf = malloc(CHUNK);
  mp_error *e = buf ? NULL : mp_errorf("out of memory");
  mp_sha256 s;
  mp_sha256_init(&s);
  size_t n;
  while (!e && (n = fread(buf, 1, CHUNK, in)) > 0) {
    mp_sha256_update(&s, buf, n);
    if (fwrite(buf, 1, n, out) != n) e = mp_errorf("%s: write failed (%s)", dst, strerror(errno));
  }
  if (!e && ferror(in)) e = mp_errorf("%s: read error", src);
  free(buf);
  fclose(in);
  if (fclose(out) != 0 && !e) e = mp_errorf("%s: write failed (disk full?)", dst);
  if (!e) {
    uint8_t d[32];
    mp_sha256_final(&s, d);
    mp_sha256_hex(d, hex);
  }
  return e;
}

/* Copy a diffusers folder as the files mpass reads from it (each checked to lie inside it; the
 * optional ones when present). `sha` is the UNet weights file's SHA-256, as the Model hash uses. */
static mp_error *copy_diffusers(const char *src, const char *dst, char sha[65]) {
  static const struct {
    const char *rel;
    bool required;
  } files[] = {{"model_index.json", true},          {"unet/config.json", true},
               {"vae/config.json", true},           {"text_encoder/config.json", true},
               {"scheduler/scheduler_config.json", false}, {"tokenizer/vocab.json", false},
               {"tokenizer/merges.txt", false},     {"tokenizer/tokenizer_config.json", false},
               {"tokenizer/special_tokens_map.json", false},
               /* SDXL */
               {"text_encoder_2/config.json", false}, {"tokenizer_2/vocab.json", false},
               {"tokenizer_2/merges.txt", false},     {"tokenizer_2/tokenizer_config.json", false},
               {"tokenizer_2/special_tokens_map.json", false}};
  static const char *const parts[][2] = {{"unet", "diffusion_pytorch_model"}, {"vae", "diffusion_pytorch_model"},
                                         {"text_encoder", "model"}, {"text_encoder_2", "model"}};
  static const char *const subfolders[] = {"", "/unet", "/vae", "/text_encoder", "/scheduler", "/tokenizer", "/text_encoder_2", "/tokenizer_2"};
  mp_error *e = NULL;
  for (size_t i = 0; !e && i < sizeof subfolders / sizeof *subfolders; i++) {
    char *d = pathf("%s%s", dst, subfolders[i]), *from = pathf("%s%s", src, subfolders[i]);
    struct stat st;
    bool sdxl_only = i >= 6; /* made only when the source has it */
    bool wanted = !sdxl_only || (from && stat(from, &st) == 0 && S_ISDIR(st.st_mode));
    if (!d || !from) e = mp_errorf("out of memory");
    else if (wanted && mkdir(d, 0755) != 0) e = mp_errorf("cannot create folder %s (%s)", d, strerror(errno));
    free(d), free(from);
  }
  char unused[65];
  for (size_t i = 0; !e && i < sizeof files / sizeof *files; i++) {
    char *from = NULL, *to = NULL;
    e = mp_diffusers_file(src, files[i].rel, &from);
    if (!e && !from && files[i].required) e = mp_errorf("diffusers folder %s has no %s", src, files[i].rel);
    if (!e && from && !(to = pathf("%s/%s", dst, files[i].rel))) e = mp_errorf("out of memory");
    if (!e && from) e = copy_with_hash(from, to, unused);
    free(from), free(to);
  }
  for (size_t i = 0; !e && i < sizeof parts / sizeof *parts; i++) {
    if (i == 3) { /* text_encoder_2: SDXL only */
      char *sub = pathf("%s/%s", src, parts[i][0]);
      struct stat st;
      bool has = sub && stat(sub, &st) == 0 && S_ISDIR(st.st_mode);
      free(sub);
      if (!has) continue;
    }
    char **all = NULL; /* the weights file, or the shards and their index; all[0] gives the Model hash */
    size_t n_all = 0;
    e = mp_diffusers_weights_files(src, parts[i][0], parts[i][1], &all, &n_all);
    for (size_t j = 0; !e && j < n_all; j++) {
      char *to = pathf("%s/%s/%s", dst, parts[i][0], strrchr(all[j], '/') + 1);
      e = to ? copy_with_hash(all[j], to, i == 0 && j == 0 ? sha : unused) : mp_errorf("out of memory");
      free(to);
    }
    for (size_t j = 0; j < n_all; j++) free(all[j]);
    free(all);
  }
  return e;
}

static mp_error *write_tune_json(const char *path, const mp_tune_spec *spec, const char *title, const char *family,
                                 const char *file, const char *sha256) {
  char stamp[32];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  cJSON *o = cJSON_CreateObject();
  if (!o) return mp_errorf("out of memory");
  cJSON_AddStringToObject(o, "id", spec->id);
  cJSON_AddStringToObject(o, "title", title);
  cJSON_AddStringToObject(o, "name", spec->name);
  cJSON_AddStringToObject(o, "token", spec->token);
  cJSON_AddStringToObject(o, "type", mp_tune_type_name(spec->type));
  cJSON_AddStringToObject(o, "family", family);
  cJSON_AddStringToObject(o, "file", file);
  cJSON_AddStringToObject(o, "sha256", sha256);
  cJSON_AddStringToObject(o, "created_at", stamp);
  char *text = cJSON_Print(o);
  cJSON_Delete(o);
  if (!text) return mp_errorf("out of memory");
  FILE *f = fopen(path, "wb");
  mp_error *e = NULL;
  if (!f)
    e = mp_errorf("%s: cannot create (%s)", path, strerror(errno));
  else {
    fputs(text, f);
    fputc('\n', f);
    if (fclose(f) != 0) e = mp_errorf("%s: write failed (disk full?)", path);
  }
  cJSON_free(text);
  return e;
}

mp_error *mp_tune_add(const char *models_dir, const mp_tune_spec *spec, const char *weights_path, mp_tune *out) {
  if (out) memset(out, 0, sizeof *out);
  MP_TRY(mp_tune_check_id(spec->id));
  MP_TRY(check_text("class name (--name)", spec->name, 64, true));
  MP_TRY(check_text("token (--token)", spec->token, 64, false));
  if (spec->title) MP_TRY(check_text("title (--title)", spec->title, 200, true));
  if (spec->family) MP_TRY(check_family(spec->family));
  /* A diffusers folder (checkpoints only) is copied into the tune as the files mpass reads from it. */
  bool folder = spec->type == MP_TUNE_CHECKPOINT && mp_diffusers_is_folder(weights_path);
  if (!folder && !is_file(weights_path)) return mp_errorf("%s: no such file", weights_path ? weights_path : "(none)");
  const char *ext = folder ? "" : weights_ext(weights_path);
  if (!ext)
    return mp_errorf("%s: expected a .safetensors, .ckpt, .pt or .bin file%s", weights_path,
                     spec->type == MP_TUNE_CHECKPOINT ? " or a diffusers folder" : "");

  if (mp_tune_exists(models_dir, spec->id))
    return mp_errorf("tune '%s' already exists (%s/tunes/%s); remove it first with: mpass tune remove %s", spec->id,
                     models_dir, spec->id, spec->id);
  const char *detected;
  MP_TRY(inspect_weights(weights_path, spec->type, &detected));
  if (spec->family && detected && strcmp(spec->family, detected) != 0)
    return mp_errorf("%s looks like a %s model, not %s (--family)", weights_path, detected, spec->family);
  const char *family = spec->family ? spec->family : detected ? detected : "sd15";

  char *tunes = pathf("%s/tunes", models_dir), *final = pathf("%s/tunes/%s", models_dir, spec->id);
  char *tmp = pathf("%s/tunes/.incoming-%s-%ld", models_dir, spec->id, (long)getpid());
  char *file = pathf("%s%s", spec->id, ext), *title = spec->title ? strdup(spec->title) : pathf("%s %s", spec->token, spec->name);
  char *weights_dst = tmp && file ? pathf("%s/%s", tmp, file) : NULL, *json = tmp ? pathf("%s/tune.json", tmp) : NULL;
  mp_error *e = (!tunes || !final || !tmp || !file || !title || !weights_dst || !json) ? mp_errorf("out of memory") : NULL;
  if (!e) e = mkdir_p(tunes);
  struct stat st;
  if (!e && lstat(final, &st) == 0)
    e = mp_errorf("tune '%s' already exists (%s); remove it first with: mpass tune remove %s", spec->id, final, spec->id);
  if (!e && lstat(tmp, &st) == 0) e = remove_flat_dir(tmp); /* left over from an interrupted add */
  if (!e && mkdir(tmp, 0755) != 0) e = mp_errorf("cannot create folder %s (%s)", tmp, strerror(errno));
  bool made_tmp = !e;
  char sha[65];
  if (!e) e = folder ? copy_diffusers(weights_path, weights_dst, sha) : copy_with_hash(weights_path, weights_dst, sha);
  if (!e) e = write_tune_json(json, spec, title, family, file, sha);
  if (!e && spec->type == MP_TUNE_CHECKPOINT && !folder) {
    /* A checkpoint's LDM config beside it (what small, non-standard models need) travels with it. */
    const char *dot = strrchr(weights_path, '.');
    char *src_cfg = pathf("%.*s.json", (int)(dot - weights_path), weights_path), *dst_cfg = pathf("%s/%s.json", tmp, spec->id);
    char cfg_sha[65];
    if (!src_cfg || !dst_cfg) e = mp_errorf("out of memory");
    else if (is_file(src_cfg)) e = copy_with_hash(src_cfg, dst_cfg, cfg_sha);
    free(src_cfg), free(dst_cfg);
  }
  if (!e && rename(tmp, final) != 0)
    e = mp_errorf("cannot move %s to %s (%s)", tmp, final, strerror(errno));
  if (e && made_tmp) mp_error_free(remove_flat_dir(tmp));
  if (!e && out) e = mp_tune_load(models_dir, spec->id, out);
  free(tunes), free(final), free(tmp), free(file), free(title), free(weights_dst), free(json);
  return e;
}

/* ---------- listing ---------- */

static int by_id(const void *a, const void *b) { return strcmp(((const mp_tune *)a)->id, ((const mp_tune *)b)->id); }

mp_error *mp_tunes_list(const char *models_dir, mp_tune_list *out) {
  memset(out, 0, sizeof *out);
  char *dir = pathf("%s/tunes", models_dir);
  if (!dir) return mp_errorf("out of memory");
  DIR *d = opendir(dir);
  if (!d) {
    mp_error *e = errno == ENOENT ? NULL : mp_errorf("cannot open folder %s (%s)", dir, strerror(errno));
    free(dir);
    return e; /* no tunes folder: no tunes */
  }
  mp_error *e = NULL;
  size_t cap = 0, pcap = 0;
  struct dirent *ent;
  while (!e && (ent = readdir(d))) {
    if (ent->d_name[0] == '.') continue; /* ., .., and folders of adds in progress */
    char *sub = pathf("%s/%s", dir, ent->d_name);
    bool folder = is_dir(sub);
    free(sub);
    if (!folder) continue;
    mp_tune t;
    mp_error *te = mp_tune_load(models_dir, ent->d_name, &t);
    if (te) {
      if (out->n_problems == pcap) {
        pcap = pcap ? 2 * pcap : 4;
        char **p = realloc(out->problems, pcap * sizeof *p);
        if (!p) {
          mp_error_free(te);
          e = mp_errorf("out of memory");
          break;
        }
        out->problems = p;
      }
      out->problems[out->n_problems] = strdup(mp_error_message(te));
      if (out->problems[out->n_problems]) out->n_problems++;
      mp_error_free(te);
      continue;
    }
    if (out->n == cap) {
      cap = cap ? 2 * cap : 8;
      mp_tune *p = realloc(out->tunes, cap * sizeof *p);
      if (!p) {
        mp_tune_free(&t);
        e = mp_errorf("out of memory");
        break;
      }
      out->tunes = p;
    }
    out->tunes[out->n++] = t;
  }
  closedir(d);
  free(dir);
  if (e) {
    mp_tune_list_free(out);
    return e;
  }
  if (out->n) qsort(out->tunes, out->n, sizeof *out->tunes, by_id);
  return NULL;
}

void mp_tune_list_free(mp_tune_list *l) {
  if (!l) return;
  for (size_t i = 0; i < l->n; i++) mp_tune_free(&l->tunes[i]);
  for (size_t i = 0; i < l->n_problems; i++) free(l->problems[i]);
  free(l->tunes);
  free(l->problems);
  memset(l, 0, sizeof *l);
}

/* ---------- resolving names from prompts ---------- */

void mp_lora_ref_free(mp_lora_ref *r) {
  if (!r) return;
  free(r->path);
  mp_tune_free(&r->tune);
  memset(r, 0, sizeof *r);
}

/* The first existing DIR/STEM.EXT of `exts`, else an error listing each path tried (after `first`). */
static mp_error *search_files(const char *what, const char *dir, const char *stem, const char *const *exts, size_t n,
                              const char *first, char **path) {
  *path = NULL;
  size_t cap = first ? strlen(first) + 2 : 1;
  char *tried = calloc(1, cap);
  if (!tried) return mp_errorf("out of memory");
  if (first) strcpy(tried, first);
  for (size_t i = 0; i < n; i++) {
    char *p = pathf("%s/%s%s", dir, stem, exts[i]);
    if (!p) {
      free(tried);
      return mp_errorf("out of memory");
    }
    if (is_file(p)) {
      free(tried);
      *path = p;
      return NULL;
    }
    size_t len = strlen(tried), add = strlen(p) + 2;
    char *t = realloc(tried, len + add + 1);
    if (!t) {
      free(p), free(tried);
      return mp_errorf("out of memory");
    }
    tried = t;
    snprintf(tried + len, add + 1, "%s%s", len ? ", " : "", p);
    free(p);
  }
  mp_error *e = mp_errorf("%s '%s' not found; searched: %s", what, stem, tried);
  free(tried);
  return e;
}

mp_error *mp_resolve_lora(const char *models_dir, const char *id, mp_lora_ref *out) {
  return mp_resolve_lora_in(models_dir, NULL, id, out);
}

mp_error *mp_resolve_lora_in(const char *models_dir, const char *tunes_root, const char *id, mp_lora_ref *out) {
  memset(out, 0, sizeof *out);
  if (!tunes_root) tunes_root = models_dir;
  MP_TRY(mp_error_wrap(check_stem("LoRA", id), "<lora:%s:…>", id ? id : ""));
  char *tune_json = NULL;
  mp_error *idbad = mp_tune_check_id(id);
  if (!idbad) {
    tune_json = pathf("%s/tunes/%s/tune.json", tunes_root, id);
    if (!tune_json) return mp_errorf("out of memory");
    if (is_file(tune_json)) {
      free(tune_json);
      MP_TRY(mp_tune_load(tunes_root, id, &out->tune));
      out->is_tune = true;
      out->path = strdup(out->tune.file);
      if (!out->path) {
        mp_lora_ref_free(out);
        return mp_errorf("out of memory");
      }
      return NULL;
    }
  }
  mp_error_free(idbad);
  static const char *const exts[] = {".safetensors", ".pt", ".ckpt"};
  char *dir = pathf("%s/lora", models_dir);
  mp_error *e = dir ? search_files("LoRA", dir, id, exts, 3, tune_json, &out->path) : mp_errorf("out of memory");
  free(dir);
  free(tune_json);
  return e;
}

mp_error *mp_resolve_embedding(const char *models_dir, const char *name, char **path) {
  *path = NULL;
  MP_TRY(mp_error_wrap(check_stem("embedding", name), "<%s>", name ? name : ""));
  static const char *const exts[] = {".safetensors", ".pt", ".bin"};
  char *dir = pathf("%s/embeddings", models_dir);
  if (!dir) return mp_errorf("out of memory");
  mp_error *e = search_files("embedding", dir, name, exts, 3, NULL, path);
  free(dir);
  return e;
}

mp_error *mp_default_checkpoint(const char *models_dir, char **path) {
  *path = NULL;
  char *dir = pathf("%s/checkpoints", models_dir);
  if (!dir) return mp_errorf("out of memory");
  DIR *d = opendir(dir);
  char *best = NULL;
  if (d) {
    struct dirent *ent;
    while ((ent = readdir(d))) {
      const char *ext = weights_ext(ent->d_name);
      if (ent->d_name[0] == '.') continue;
      if (!ext || strcmp(ext, ".bin") == 0) {
        char *sub = pathf("%s/%s", dir, ent->d_name); /* a diffusers folder counts as a checkpoint */
        bool folder = sub && mp_diffusers_is_folder(sub);
        free(sub);
        if (!folder) continue;
      }
      if (!best || strcmp(ent->d_name, best) < 0) {
        char *c = strdup(ent->d_name);
        if (c) free(best), best = c;
      }
    }
    closedir(d);
  }
  mp_error *e = NULL;
  if (!best)
    e = mp_errorf("no checkpoint given and none in %s (put an SD 1.5 .safetensors or a diffusers folder there, or pass --model PATH)", dir);
  else if (!(*path = pathf("%s/%s", dir, best)))
    e = mp_errorf("out of memory");
  free(best);
  free(dir);
  return e;
}
