/* A program that uses the installed libmpass as an outside user would: built by tests/cli/sh/install.sh
 * with `pkg-config --cflags --libs mpass`, against the installed header and library only. */
#include <mpass/mpass.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void) {
  mpass_options opts = {.n_threads = 1, .precision = MPASS_PRECISION_F32};
  mpass_ctx *ctx = NULL;
  mpass_error *e = mpass_ctx_create(&opts, &ctx);
  if (e) {
    fprintf(stderr, "mpass_ctx_create: %s\n", mpass_error_message(e));
    mpass_error_free(e);
    return 1;
  }
  const char *doc = "a lighthouse at dusk\nseed=7\nsteps=20\nw=512\nh=768\nsuper_resolution=true\n";
  mpass_job *job = NULL;
  char *plan = NULL;
  e = mpass_job_parse(doc, strlen(doc), 0, &job);
  if (!e) e = mpass_job_plan_json(job, &plan);
  int rc = 0;
  if (e) {
    fprintf(stderr, "mpass: %s\n", mpass_error_message(e));
    mpass_error_free(e);
    rc = 1;
  } else if (!strstr(plan, "\"schema\":\t\"mpass.plan/1\"") && !strstr(plan, "\"schema\": \"mpass.plan/1\"")) {
    fprintf(stderr, "unexpected plan:\n%s\n", plan);
    rc = 1;
  } else {
    char line[160];
    printf("ok: %s; plan of %zu bytes\n", mpass_ctx_describe(ctx, line, sizeof line), strlen(plan));
  }
  free(plan);
  mpass_job_free(job);
  mpass_ctx_destroy(ctx);
  return rc;
}
