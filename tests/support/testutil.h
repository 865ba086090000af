/* Helpers shared by the cmocka tests. Include after <cmocka.h>'s prerequisites. */
#ifndef MP_TESTUTIL_H
#define MP_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/error.h"

/* Absolute path of a file under ../shared (or $MPASS_SHARED). Fails the test — never skips — when
 * the file is missing: CI has ../shared, so a missing golden is a broken setup. Caller frees. */
char *test_shared_path(const char *rel);
/* A fresh temporary directory, removed with everything in it when the test program exits (set
 * MPASS_KEEP_TEST_DIRS=1 to keep them for a look). Caller frees the string. */
char *test_tmpdir(void);
/* Write bytes to a file; fails the test on error. */
void test_write_file(const char *path, const void *data, size_t n);
/* rm -rf a directory made for the test; fails the test if that fails. */
void test_remove_tree(const char *dir);
/* Run a shell command (printf-style), capturing stdout and stderr (the first 64 KiB) into *output
 * (caller frees; NULL output: discarded). Returns the exit status, -1 if it did not exit. */
int test_shell(char **output, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Warnings collected through a warning callback (e.g. mpass_ctx_set_warning_handler): how many, and
 * the last one's text. */
typedef struct {
  int n;
  char last[1024];
} test_warnings;
/* The callback: ud is a test_warnings. */
void test_collect_warning(void *ud, const char *msg);
/* Fail the test, showing the text, unless it contains needle. */
void test_assert_contains(const char *text, const char *needle);
/* n pseudo-random values in [-1, 1), the same for the same seed on every machine (an LCG). */
void test_fill(float *x, int64_t n, unsigned seed);
/* ||got - ref|| / ||ref|| in double (||ref|| = 0 counts as 1). */
double test_rel_l2(const float *got, const float *ref, int64_t n);

/* Fail the test with the error's message if e is not NULL. */
#define assert_ok(expr)                                                  \
  do {                                                                   \
    mp_error *assert_ok_e_ = (expr);                                     \
    if (assert_ok_e_) fail_msg("%s: %s", #expr, mp_error_message(assert_ok_e_)); \
  } while (0)

/* Expect an error whose message contains `needle`; frees it. */
#define assert_err_contains(expr, needle)                                                   \
  do {                                                                                      \
    mp_error *assert_err_e_ = (expr);                                                       \
    if (!assert_err_e_) fail_msg("%s: expected an error containing '%s'", #expr, needle);   \
    if (!strstr(mp_error_message(assert_err_e_), needle))                                   \
      fail_msg("%s: error '%s' does not contain '%s'", #expr, mp_error_message(assert_err_e_), needle); \
    mp_error_free(assert_err_e_);                                                           \
  } while (0)

#endif
