/* Looking up the fetched detection and upscaling models (see model_files.h). */
#include "models/model_files.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { MAX_PLACES = 4 };

static bool is_file(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* The folder of the program or shared library this code is linked into, from the dynamic loader. */
static bool own_folder(char *out, size_t cap) {
  Dl_info info;
  if (!dladdr((void *)&mp_find_model_file, &info) || !info.dli_fname || !*info.dli_fname) return false;
  char real[PATH_MAX];
  if (!realpath(info.dli_fname, real)) return false;
  char *slash = strrchr(real, '/');
  if (!slash) return false;
  *slash = 0;
  snprintf(out, cap, "%s", real);
  return true;
}

mp_error *mp_find_model_file(const char *models_dir, const char *kind, const char *file, char **path) {
  *path = NULL;
  char places[MAX_PLACES][PATH_MAX + 64];
  int n = 0;
  snprintf(places[n++], sizeof places[0], "%s/%s/%s", models_dir ? models_dir : "models", kind, file);
#ifdef MPASS_INSTALL_DATA_DIR
  snprintf(places[n++], sizeof places[0], "%s/%s/%s", MPASS_INSTALL_DATA_DIR, kind, file);
#endif
  char own[PATH_MAX];
  if (own_folder(own, sizeof own)) {
    /* a program in <prefix>/bin, or libmpass.so in <prefix>/lib[/<multiarch>] */
    size_t len = strlen(own);
    const char *up = len >= 4 && strcmp(own + len - 4, "/bin") == 0 ? "/.." : (strstr(own, "/lib/") ? "/../.." : "/..");
    snprintf(places[n++], sizeof places[0], "%s%s/share/mpass/%s/%s", own, up, kind, file);
  }
#ifdef MPASS_SOURCE_DIR
  snprintf(places[n++], sizeof places[0], "%s/models/%s/%s", MPASS_SOURCE_DIR, kind, file);
#endif
  for (int i = 0; i < n; i++)
    if (is_file(places[i])) {
      *path = strdup(places[i]);
      return *path ? NULL : mp_errorf("out of memory");
    }
  char tried[MAX_PLACES * (PATH_MAX + 72)] = "";
  size_t used = 0;
  for (int i = 0; i < n; i++) {
    bool repeat = false;
    for (int k = 0; k < i; k++) repeat = repeat || strcmp(places[k], places[i]) == 0;
    if (!repeat) used += (size_t)snprintf(tried + used, sizeof tried - used, "%s%s", used ? ", " : "", places[i]);
  }
  return mp_errorf("%s/%s not found: run scripts/fetch-models.sh, or point --models (or MPASS_MODELS) at a folder holding "
                   "%s/; tried %s", kind, file, kind, tried);
}
