#include "pipeline/families.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "io/diffusers.h"
#include "io/weights.h"
#include "pipeline/tunes.h"

static char *pathf(const char *a, const char *b, const char *c) {
  size_t n = strlen(a) + strlen(b) + strlen(c) + 2;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%s%s", a, b, c);
  return p;
}

static bool exists(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f) fclose(f);
  return f != NULL;
}

mp_error *mp_base_model_path(const char *models_dir, const char *name, char **path) {
  *path = NULL;
  if (!name || !*name || strchr(name, '/') || name[0] == '.')
    return mp_errorf("base_model '%s': expected a checkpoint name (no folder) or a checkpoint tune id", name ? name : "");
  char *dir = pathf(models_dir, "checkpoints", "");
  if (!dir) return mp_errorf("out of memory");
  static const char *const exts[] = {".safetensors", ".ckpt"};
  for (size_t i = 0; i < sizeof exts / sizeof *exts; i++) {
    char *p = pathf(dir, name, exts[i]);
    if (p && exists(p)) {
      free(dir);
      *path = p;
      return NULL;
    }
    free(p);
  }
  char *folder = pathf(dir, name, ""); /* a diffusers folder checkpoints/NAME/ */
  if (folder && mp_diffusers_is_folder(folder)) {
    free(dir);
    *path = folder;
    return NULL;
  }
  free(folder);
  mp_error *e = NULL;
  if (mp_tune_exists(models_dir, name)) {
    mp_tune t;
    e = mp_tune_load(models_dir, name, &t);
    if (!e && t.type != MP_TUNE_CHECKPOINT)
      e = mp_errorf("base_model '%s' is a LoRA tune: base_model needs a checkpoint (a LoRA goes in the prompt as <lora:%s:1>)", name, name);
    if (!e && !(*path = strdup(t.file))) e = mp_errorf("out of memory");
    mp_tune_free(&t);
  } else {
    e = mp_errorf("base_model '%s': no %s/%s.safetensors or .ckpt, no diffusers folder %s/%s/, and no checkpoint tune with that id",
                  name, dir, name, dir, name);
  }
  free(dir);
  return e;
}

mp_error *mp_checkpoint_family(const char *path, mp_family *family) {
  *family = MP_FAMILY_UNKNOWN;
  mp_weights *w;
  MP_TRY(mp_weights_open(path, &w));
  mp_sd_config cfg;
  mp_error *e = mp_sd_config_detect(w, NULL, &cfg);
  *family = cfg.family;
  mp_weights_close(w);
  return e;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

mp_error *mp_default_sd15_checkpoint(const char *models_dir, char **path) {
  *path = NULL;
  char *dir = pathf(models_dir, "checkpoints", "");
  if (!dir) return mp_errorf("out of memory");
  DIR *d = opendir(dir);
  char **names = NULL;
  size_t n = 0;
  for (struct dirent *ent; d && (ent = readdir(d));) {
    size_t len = strlen(ent->d_name);
    bool weights = (len > 12 && !strcasecmp(ent->d_name + len - 12, ".safetensors")) || (len > 5 && !strcasecmp(ent->d_name + len - 5, ".ckpt"));
    if (!weights && ent->d_name[0] != '.') { /* a diffusers folder counts too */
      char *sub = pathf(dir, ent->d_name, "");
      weights = sub && mp_diffusers_is_folder(sub);
      free(sub);
    }
    if (ent->d_name[0] == '.' || !weights) continue;
    char **nn = realloc(names, (n + 1) * sizeof *nn);
    if (!nn || !(nn[n] = strdup(ent->d_name))) {
      names = nn ? nn : names;
      break;
    }
    names = nn, n++;
  }
  if (d) closedir(d);
  qsort(names, n, sizeof *names, cmp_str);
  mp_error *e = NULL;
  for (size_t i = 0; i < n && !*path && !e; i++) {
    char *p = pathf(dir, names[i], "");
    mp_family f = MP_FAMILY_UNKNOWN;
    mp_error *fe = p ? mp_checkpoint_family(p, &f) : mp_errorf("out of memory");
    mp_error_free(fe); /* a file that is not a model is no candidate */
    if (p && f == MP_FAMILY_SD1) *path = p;
    else free(p);
  }
  if (!*path) e = mp_errorf("no SD 1.x checkpoint in %s for the person passes (put an SD 1.5 .safetensors there, or pass --model PATH)", dir);
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  free(dir);
  return e;
}

void mp_sdxl_default_size(mp_aspect ar, int *w, int *h) {
  switch (ar) {
    case MP_AR_PORTRAIT: *w = 832, *h = 1216; return;
    case MP_AR_16_9: *w = 1344, *h = 768; return;
    case MP_AR_LANDSCAPE: *w = 1216, *h = 832; return;
    default: *w = *h = 1024; return;
  }
}

int mp_family_native_side(mp_family f) { return f == MP_FAMILY_SDXL ? 1024 : 512; }
