/* For the pack-store tests (test_pack_files*.c): the pack folders under a root and the records of the
 * (last) one, sorted by name, each with its inode and kind (the first line of its key). */
#ifndef MPASS_TESTS_PACK_LISTING_H
#define MPASS_TESTS_PACK_LISTING_H

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

enum { PACK_LISTING_MAX = 512 };

typedef struct {
  int n_dirs, n;
  char dir[1200];
  char name[PACK_LISTING_MAX][64], kind[PACK_LISTING_MAX][32];
  ino_t ino[PACK_LISTING_MAX];
} pack_listing;

static inline void pack_list(const char *packs, pack_listing *l) {
  memset(l, 0, sizeof *l);
  DIR *d = opendir(packs);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d)))
    if (de->d_name[0] != '.') {
      l->n_dirs++;
      snprintf(l->dir, sizeof l->dir, "%.900s/%.255s", packs, de->d_name);
    }
  closedir(d);
  if (!(d = opendir(l->dir))) return;
  while ((de = readdir(d)) && l->n < PACK_LISTING_MAX) {
    if (!strstr(de->d_name, ".pack")) continue;
    assert_null(strstr(de->d_name, ".tmp")); /* no temporary file left behind */
    char p[1400], key[64] = {0};
    snprintf(p, sizeof p, "%.1100s/%.255s", l->dir, de->d_name);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    int fd = open(p, O_RDONLY);
    assert_true(fd >= 0);
    if (pread(fd, key, sizeof key - 1, 64) < 0) key[0] = 0; /* the key follows the 64-byte fixed header */
    close(fd);
    key[strcspn(key, "\n")] = 0;
    snprintf(l->name[l->n], sizeof l->name[0], "%.63s", de->d_name);
    snprintf(l->kind[l->n], sizeof l->kind[0], "%.31s", key);
    l->ino[l->n++] = st.st_ino;
  }
  closedir(d);
  for (int i = 1; i < l->n; i++) /* by name: directory order is not guaranteed */
    for (int j = i; j > 0 && strcmp(l->name[j - 1], l->name[j]) > 0; j--) {
      char t[64], k[32];
      memcpy(t, l->name[j], sizeof t), memcpy(l->name[j], l->name[j - 1], sizeof t), memcpy(l->name[j - 1], t, sizeof t);
      memcpy(k, l->kind[j], sizeof k), memcpy(l->kind[j], l->kind[j - 1], sizeof k), memcpy(l->kind[j - 1], k, sizeof k);
      ino_t ti = l->ino[j];
      l->ino[j] = l->ino[j - 1], l->ino[j - 1] = ti;
    }
}

static inline int pack_count_kind(const pack_listing *l, const char *kind) {
  int n = 0;
  for (int i = 0; i < l->n; i++) n += strcmp(l->kind[i], kind) == 0;
  return n;
}

#endif
