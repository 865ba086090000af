/* The `mpass tune` door: exit codes and messages of add / list / show / remove. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static char out_path[512];

/* Run `mpass ARGS` with stdout+stderr into a file; returns the exit code, fills `out`. */
static int run(const char *args, char *out, size_t cap) {
  const char *bin = getenv("MPASS_BINARY_DIR");
  if (!bin) bin = "build";
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s/mpass %s > %s 2>&1", bin, args, out_path);
  int rc = system(cmd);
  FILE *f = fopen(out_path, "rb");
  assert_non_null(f);
  size_t n = fread(out, 1, cap - 1, f);
  out[n] = 0;
  fclose(f);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void test_tune_commands(void **state) {
  (void)state;
  char *tiny = test_shared_path("golden/tiny/tiny.safetensors");
  char *dir = test_tmpdir(), args[2048], out[8192];
  snprintf(out_path, sizeof out_path, "%s/out.txt", dir);

  snprintf(args, sizeof args, "--models %s/m tune list", dir);
  assert_int_equal(run(args, out, sizeof out), 0);
  assert_non_null(strstr(out, "no tunes"));

  snprintf(args, sizeof args, "--models %s/m tune add --id 753945 --name woman --token sks --type checkpoint %s", dir, tiny);
  assert_int_equal(run(args, out, sizeof out), 0);
  assert_non_null(strstr(out, "added tune 753945"));
  assert_non_null(strstr(out, "family:     sd15"));

  snprintf(args, sizeof args, "tune list --models %s/m", dir); /* the global flag may come anywhere */
  assert_int_equal(run(args, out, sizeof out), 0);
  assert_non_null(strstr(out, "753945"));
  assert_non_null(strstr(out, "checkpoint"));

  snprintf(args, sizeof args, "--models %s/m tune add --id 753945 --name woman --token sks --type checkpoint %s", dir, tiny);
  assert_int_equal(run(args, out, sizeof out), 1);
  assert_non_null(strstr(out, "already exists"));

  snprintf(args, sizeof args, "--models %s/m tune add --id x --name woman --type lora %s", dir, tiny);
  assert_int_equal(run(args, out, sizeof out), 2);
  assert_non_null(strstr(out, "--token is required"));

  snprintf(args, sizeof args, "--models %s/m tune add --id x --name woman --token t --type lora %s", dir, tiny);
  assert_int_equal(run(args, out, sizeof out), 1);
  assert_non_null(strstr(out, "holds no LoRA tensors"));

  snprintf(args, sizeof args, "--models %s/m tune show 753945", dir);
  assert_int_equal(run(args, out, sizeof out), 0);
  assert_non_null(strstr(out, "token:      sks"));

  snprintf(args, sizeof args, "--models %s/m tune remove 753945", dir);
  assert_int_equal(run(args, out, sizeof out), 0);
  snprintf(args, sizeof args, "--models %s/m tune show 753945", dir);
  assert_int_equal(run(args, out, sizeof out), 1);
  assert_non_null(strstr(out, "no tune '753945'"));
  free(dir);
  free(tiny);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_tune_commands)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
