/* mpass run PROMPT_FILE: execute a prompt document (SPEC.md) in passes and write the images. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/commands.h"
#include "pipeline/progress.h"
#include "prompt/document.h"

/* Ctrl-C asks the running job to stop at the next sampler step. A signal handler can only talk
 * through a variable like this one; it belongs to the CLI door, not to the library. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
  signal(SIGINT, SIG_DFL); /* a second Ctrl-C ends the process at once */
}

typedef struct {
  bool quiet;
  mpass_progress_fn observe; /* mpass bench --job's clock, or NULL */
  void *observe_user;
} progress_state;

static int print_progress(const mpass_progress *p, void *user) {
  const progress_state *s = user;
  if (!s->quiet) {
    char line[256];
    mp_progress_format(p, line, sizeof line);
    fprintf(stderr, "%s\n", line);
  }
  if (s->observe && s->observe(p, s->observe_user)) return 1;
  return interrupted;
}

static mp_error *read_file(const char *path, char **out, size_t *len) {
  FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
  if (!f) return mp_errorf("cannot open %s", path);
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
    n += got;
    if (n > MP_MAX_DOCUMENT_BYTES) break;
    if (n == cap) {
      char *g = realloc(buf, cap *= 2);
      if (!g) free(buf);
      buf = g;
    }
  }
  if (f != stdin) fclose(f);
  if (!buf) return mp_errorf("out of memory reading %s", path);
  if (n > MP_MAX_DOCUMENT_BYTES) {
    free(buf);
    return mp_errorf("%s is larger than %u bytes: not a prompt document", path, MP_MAX_DOCUMENT_BYTES);
  }
  buf[n < cap ? n : cap - 1] = 0;
  *out = buf;
  *len = n;
  return NULL;
}

static void usage(FILE *f) {
  fprintf(f, "usage: mpass run PROMPT_FILE [--model CKPT] [--out DIR] [--name NAME] [--input-image IMG]\n"
             "                 [--debug-passes] [--quiet] [--rng cuda|cpu] [--clip-skip 1|2] [--controlnet-model FILE]\n"
             "  execute a prompt document (docs/prompt-document.md) in passes; PROMPT_FILE - reads stdin,\n"
             "  a .json file is the API form. Images, result.json and a contact sheet go to DIR/NAME/.\n");
}

int cmd_run(mpass_ctx *ctx, int argc, char **argv) { return cli_run_document(ctx, argc, argv, "run", NULL, NULL); }

int cli_run_document(mpass_ctx *ctx, int argc, char **argv, const char *who, mpass_progress_fn observe, void *observe_user) {
  static const struct option longopts[] = {
      {"model", required_argument, 0, 'm'},     {"out", required_argument, 0, 'o'},     {"name", required_argument, 0, 'n'},
      {"debug-passes", no_argument, 0, 'd'},    {"quiet", no_argument, 0, 'q'},         {"rng", required_argument, 0, 'r'},
      {"clip-skip", required_argument, 0, 'c'}, {"input-image", required_argument, 0, 'i'}, {"help", no_argument, 0, 'h'},
      {"controlnet-model", required_argument, 0, 'C'}, {0, 0, 0, 0}};
  mpass_run_options o = {.out_dir = "out", .rng = "cuda", .clip_skip = 1};
  progress_state ps = {false, observe, observe_user};
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "o:q", longopts, NULL)) != -1) {
    switch (opt) {
      case 'm': o.model_path = optarg; break;
      case 'o': o.out_dir = optarg; break;
      case 'n': o.job_name = optarg; break;
      case 'd': o.debug_passes = 1; break;
      case 'q': ps.quiet = true; break;
      case 'r': o.rng = optarg; break;
      case 'c':
        o.clip_skip = atoi(optarg);
        if (o.clip_skip < 1 || o.clip_skip > 2) return cli_fail(who, mp_errorf("--clip-skip expects 1 or 2, found '%s'", optarg));
        break;
      case 'i': o.input_image = optarg; break;
      case 'C': o.controlnet_model = optarg; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  const char *file = argv[optind];
  char *doc = NULL;
  size_t len = 0;
  mp_error *e = read_file(file, &doc, &len);
  if (e) return cli_fail(who, e);
  size_t flen = strlen(file);
  mpass_job *job = NULL;
  e = mpass_job_parse(doc, len, flen > 5 && !strcmp(file + flen - 5, ".json"), &job);
  free(doc);
  if (e) return cli_fail(who, mp_error_wrap(e, "%s", file));
  for (int i = 0; i < mpass_job_warning_count(job) && !ps.quiet; i++)
    fprintf(stderr, "mpass %s: warning: %s\n", who, mpass_job_warning(job, i));
  /* relative input paths in the document are relative to the document's folder */
  const char *slash = strrchr(file, '/');
  char *base = slash ? strndup(file, (size_t)(slash - file)) : NULL;
  o.base_dir = base;
  o.progress = print_progress;
  o.progress_user = &ps;
  signal(SIGINT, on_sigint);
  char *dir = NULL;
  e = mpass_run(ctx, job, &o, &dir);
  signal(SIGINT, SIG_DFL);
  if (!e) printf("%s\n", dir);
  free(dir);
  free(base);
  mpass_job_free(job);
  if (e && interrupted) {
    fprintf(stderr, "mpass %s: cancelled; no output was written\n", who);
    mp_error_free(e);
    return 130;
  }
  return e ? cli_fail(who, e) : 0;
}
