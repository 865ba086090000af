#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

char *test_tmpdir(void) {
  char tmpl[] = "/tmp/mpass-test-XXXXXX";
  char *d = mkdtemp(tmpl);
  assert_non_null(d);
  return strdup(d);
}

void test_write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}
