/* mpass: the command-line door into libmpass. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/about.h"
#include "cli/commands.h"
#include "core/error.h"

static const struct {
  const char *name;
  mp_command_fn fn;
  const char *usage;
} commands[] = {
    {"run", cmd_run, "run PROMPT_FILE [--model CKPT] [--out DIR] [--debug-passes]   execute a prompt document in passes"},
    {"generate", cmd_generate, "generate -p PROMPT [--model CKPT] [-o OUT.png] ...   one image per seed: txt2img, img2img, inpaint"},
    {"params", cmd_params, "params IMAGE.png [--json|--raw|--command]   the generation parameters stored in a PNG"},
    {"tokenize", cmd_tokenize, "tokenize [--vocab PATH] TEXT        print CLIP token ids"},
    {"parse", cmd_parse, "parse FILE [--json] [--api]           the prompt document's job and pass plan (FILE - = stdin)"},
    {"inspect", cmd_inspect, "inspect CKPT                         model family, dtypes, parameter counts, key check"},
    {"upscale", cmd_upscale, "upscale IN [-o OUT.png] [--model x4fast|x4plus] [--scale 2|4] [--tile N]   Real-ESRGAN x4/x2"},
    {"make-model", cmd_make_model, "make-model [--preset tiny|sd15|tiny-xl|sdxl] [--dtype f16|f32] OUT   random-weight checkpoint (demo, bench)"},
    {"tune", cmd_tune, "tune add|list|show|remove ...         register person models (LoRA or checkpoint tunes)"},
    {"conform", cmd_conform, "conform GOLDEN_DIR [--cases a,b] [--dump DIR]   check numerics against reference outputs"},
    {"detect", cmd_detect, "detect IMAGE [--out DIR]             find persons and faces: persons.json, person-<k>.png, overlay.png"},
    {"serve", cmd_serve, "serve [--listen 127.0.0.1:8080] [--data DIR] [--model CKPT] [--workers N] [--token-file F]   the prompt API over HTTP"},
    {"worker", cmd_worker, "worker --db postgres://... [--data DIR] [--model CKPT] [--workers N]   run prompts from a shared queue"},
    {"token", cmd_token, "token add NAME [--data DIR]          a new API token for serve (printed once)"},
    {"bench", cmd_bench, "bench --model CKPT [-W 512] [-H 512] [--steps N] [--profile] | --job FILE.prompt   step/VAE times, op classes, per-pass job times, peak RSS"},
};

/* Commands that run models say once, at start, which precision/backend does the arithmetic. */
static bool runs_models(const char *cmd) {
  static const char *const names[] = {"run", "generate", "bench", "conform", "upscale", "detect"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strcmp(cmd, names[i]) == 0) return true;
  return false;
}

static void usage(FILE *f) {
  fprintf(f, "usage: mpass [--threads N] [--precision auto|f32|bf16] [--models DIR] [--no-cache] <command> [args]\n"
             "       mpass --version | <command> --help\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) fprintf(f, "  %s\n", commands[i].usage);
  fprintf(f, "\nmpass %s\n", MPASS_VERSION);
}

int cli_fail(const char *cmd, mpass_error *e) {
  fprintf(stderr, "mpass %s: %s\n", cmd, mpass_error_message(e));
  mpass_error_free(e);
  return 1;
}

static void print_warning(void *ud, const char *message) {
  (void)ud;
  fprintf(stderr, "mpass: warning: %s\n", message);
}

int main(int argc, char **argv) {
  /* The bf16 backend (oneDNN) runs on OpenMP, whose idle threads spin by default for a while after
   * every parallel region; on a small, shared machine that burnt a third of the CPU time of a UNet
   * step. The policy is read when libgomp loads, before main, so set it and start again once. */
  if (!getenv("OMP_WAIT_POLICY")) {
    setenv("OMP_WAIT_POLICY", "passive", 1);
    execv("/proc/self/exe", argv);
    /* exec failed (no /proc): carry on with the default policy */
  }
  mpass_options opts = {0};
  bool precision_given = false;
  /* Global options may appear anywhere; take them out before the subcommand sees argv. */
  int out = 1;
  for (int i = 1; i < argc; i++) {
    if ((strcmp(argv[i], "--threads") == 0 || strcmp(argv[i], "-t") == 0) && i + 1 < argc) {
      char *end;
      long n = strtol(argv[i + 1], &end, 10);
      if (*end || n < 1 || n > 1024) {
        fprintf(stderr, "mpass: --threads expects a number from 1 to 1024, found '%s'\n", argv[i + 1]);
        return 2;
      }
      opts.n_threads = (int)n;
      i++;
    } else if (strncmp(argv[i], "--threads=", 10) == 0) {
      opts.n_threads = atoi(argv[i] + 10);
    } else if ((strcmp(argv[i], "--precision") == 0 && i + 1 < argc) || strncmp(argv[i], "--precision=", 12) == 0) {
      const char *v = argv[i][11] == '=' ? argv[i] + 12 : argv[++i];
      precision_given = true;
      if (strcmp(v, "auto") == 0) opts.precision = MPASS_PRECISION_AUTO;
      else if (strcmp(v, "f32") == 0) opts.precision = MPASS_PRECISION_F32;
      else if (strcmp(v, "bf16") == 0) opts.precision = MPASS_PRECISION_BF16;
      else {
        fprintf(stderr, "mpass: --precision expects auto, f32 or bf16, found '%s'\n", v);
        return 2;
      }
    } else if (strcmp(argv[i], "--no-cache") == 0) {
      opts.no_cache = 1;
    } else if (strcmp(argv[i], "--models") == 0 && i + 1 < argc) {
      opts.models_dir = argv[++i];
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  argv[argc] = NULL;
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "--version") == 0) return cli_version(&opts);
  if (strcmp(argv[1], "help-man") == 0) { /* hidden: the build makes mpass.1 with it */
    enum { N = sizeof commands / sizeof *commands };
    const char *names[N], *usages[N];
    for (size_t i = 0; i < N; i++) names[i] = commands[i].name, usages[i] = commands[i].usage;
    return cli_help_man(stdout, N, names, usages);
  }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    if (strcmp(argv[1], commands[i].name) != 0) continue;
    /* Conformance checks the f32 reference path unless a precision is asked for explicitly. */
    if (!precision_given && strcmp(argv[1], "conform") == 0) opts.precision = MPASS_PRECISION_F32;
    mpass_ctx *ctx;
    mpass_error *e = mpass_ctx_create(&opts, &ctx);
    if (e) return cli_fail(argv[1], e);
    mpass_ctx_set_warning_handler(ctx, print_warning, NULL);
    bool help = argc > 2 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0);
    if (runs_models(argv[1]) && !help) {
      char line[160];
      fprintf(stderr, "mpass: %s\n", mpass_ctx_describe(ctx, line, sizeof line));
    }
    int rc = commands[i].fn(ctx, argc - 1, argv + 1);
    mpass_ctx_destroy(ctx);
    return rc;
  }
  fprintf(stderr, "mpass: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
