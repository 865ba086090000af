/* mpass parse FILE [--json]: the job and its pass plan, for people or (--json) for the pipeline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/error.h"
#include "prompt/document.h"
#include "prompt/plan.h"

/* The whole of `f`, refusing more than `limit` bytes. */
static mp_error *read_all(FILE *f, const char *name, size_t limit, char **out, size_t *len) {
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  if (!buf) return mp_errorf("out of memory");
  for (;;) {
    if (n == cap) {
      if (cap > limit) {
        free(buf);
        return mp_errorf("%s: more than %zu bytes; a prompt document is at most that long", name, limit);
      }
      char *p = realloc(buf, cap * 2);
      if (!p) {
        free(buf);
        return mp_errorf("out of memory");
      }
      buf = p;
      cap *= 2;
    }
    size_t r = fread(buf + n, 1, cap - n, f);
    n += r;
    if (r == 0) break;
  }
  if (ferror(f)) {
    free(buf);
    return mp_errorf("%s: read error", name);
  }
  *out = buf;
  *len = n;
  return NULL;
}

static void usage(FILE *f) {
  fprintf(f, "usage: mpass parse FILE [--json] [--api]\n"
             "  how mpass reads a prompt document and the passes it will run; FILE - reads stdin\n"
             "  --json  the plan as JSON (docs/plan-json.md)\n"
             "  --api   read FILE as the API (JSON) form (automatic for *.json)\n");
}

int cmd_parse(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx;
  const char *file = NULL;
  bool json = false, json_input = false;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    }
    if (strcmp(argv[i], "--json") == 0) json = true;
    else if (strcmp(argv[i], "--api") == 0) json_input = true;
    else if (!file) file = argv[i];
    else return cli_fail("parse", mp_errorf("unexpected argument '%s'; usage: mpass parse FILE [--json] [--api]", argv[i]));
  }
  if (!file) return cli_fail("parse", mp_errorf("usage: mpass parse FILE [--json] [--api]   (FILE - reads stdin)"));
  size_t n = strlen(file);
  if (n >= 5 && strcmp(file + n - 5, ".json") == 0) json_input = true;

  FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
  if (!f) return cli_fail("parse", mp_errorf("%s: cannot open the file", file));
  char *doc = NULL;
  size_t len = 0;
  mp_error *e = read_all(f, file, MP_MAX_DOCUMENT_BYTES, &doc, &len);
  if (f != stdin) fclose(f);
  if (e) return cli_fail("parse", e);

  mp_job *job = NULL;
  e = json_input ? mp_job_parse_json(doc, len, &job) : mp_job_parse_text(doc, len, &job);
  free(doc);
  if (e) return cli_fail("parse", mp_error_wrap(e, "%s", file));
  mp_plan *plan = NULL;
  e = mp_plan_make(job, &plan);
  if (e) {
    mp_job_free(job);
    return cli_fail("parse", mp_error_wrap(e, "%s", file));
  }
  if (json) {
    char *text;
    e = mp_plan_to_json(plan, &text);
    if (!e) {
      printf("%s\n", text);
      free(text);
    }
    /* the JSON carries the warnings too; stderr is for the person watching */
    for (int w = 0; w < job->n_warnings; w++) fprintf(stderr, "mpass parse: warning: %s\n", job->warnings[w]);
  } else {
    mp_plan_print(plan, stdout);
  }
  mp_plan_free(plan);
  mp_job_free(job);
  if (e) return cli_fail("parse", e);
  return 0;
}
