#include "testutil.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

char *test_shared_path(const char *rel) {
  const char *shared = getenv("MPASS_SHARED");
  if (!shared || !*shared) shared = "../shared";
  size_t n = strlen(shared) + strlen(rel) + 2;
  char *p = malloc(n);
  assert_non_null(p);
  snprintf(p, n, "%s/%s", shared, rel);
  if (access(p, R_OK) != 0) fail_msg("required reference file %s is missing (is ../shared beside the checkout?)", p);
  return p;
}

/* The folders test_tmpdir made in this process, removed when it exits. Test-support state on purpose:
 * a test program is one process, and most tests end without a teardown that could remove them (a
 * full run left ~60 behind, 36 GB had piled up). Only the process that made them removes them (a
 * forked child exiting must not). */
static struct {
  char **dirs;
  int n, cap;
  pid_t owner;
} made;

static void remove_made(void) {
  const bool keep = getenv("MPASS_KEEP_TEST_DIRS") && *getenv("MPASS_KEEP_TEST_DIRS");
  for (int i = 0; i < made.n; i++) {
    if (!keep && getpid() == made.owner) {
      char cmd[1200];
      snprintf(cmd, sizeof cmd, "rm -rf '%s'", made.dirs[i]);
      if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", made.dirs[i]);
    }
    free(made.dirs[i]);
  }
  free(made.dirs);
}

char *test_tmpdir(void) {
  char tmpl[] = "/tmp/mpass-test-XXXXXX";
  char *d = mkdtemp(tmpl);
  assert_non_null(d);
  if (!made.owner) made.owner = getpid(), atexit(remove_made);
  if (made.n == made.cap) {
    char **g = realloc(made.dirs, sizeof *g * (size_t)(made.cap = made.cap ? 2 * made.cap : 16));
    assert_non_null(g);
    made.dirs = g;
  }
  assert_non_null(made.dirs[made.n++] = strdup(d));
  return strdup(d);
}

void test_write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

int test_shell(char **output, const char *fmt, ...) {
  char cmd[4096], line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  strncat(cmd, " 2>&1", sizeof cmd - strlen(cmd) - 1);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t cap = 1 << 16, len = 0;
  char *out = calloc(cap, 1);
  assert_non_null(out);
  while (fgets(line, sizeof line, p)) {
    size_t k = strlen(line);
    if (len + k + 1 < cap) memcpy(out + len, line, k + 1), len += k;
  }
  int st = pclose(p);
  if (output) *output = out;
  else free(out);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void test_assert_contains(const char *text, const char *needle) {
  if (!strstr(text, needle)) fail_msg("expected '%s' in:\n%s", needle, text);
}

void test_collect_warning(void *ud, const char *msg) {
  test_warnings *w = ud;
  w->n++;
  snprintf(w->last, sizeof w->last, "%s", msg);
}

void test_remove_tree(const char *dir) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

void test_fill(float *x, int64_t n, unsigned seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1103515245u + 12345u;
    x[i] = ((float)((seed >> 8) & 0xffff) / 65535.0f - 0.5f) * 2.0f;
  }
}

double test_rel_l2(const float *got, const float *ref, int64_t n) {
  double d = 0, r = 0;
  for (int64_t i = 0; i < n; i++) d += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]), r += (double)ref[i] * ref[i];
  return sqrt(d / (r > 0 ? r : 1));
}
