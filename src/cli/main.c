/* mpass: the command-line door into libmpass. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    {"make-model", cmd_make_model, "make-model [--preset tiny|sd15] [--dtype f16|f32] OUT   random-weight checkpoint (demo, bench)"},
    {"tune", cmd_tune, "tune add|list|show|remove ...         register person models (LoRA or checkpoint tunes)"},
    {"conform", cmd_conform, "conform GOLDEN_DIR [--cases a,b] [--dump DIR]   check numerics against reference outputs"},
    {"detect", cmd_detect, "detect IMAGE [--out DIR]             find persons and faces: persons.json, person-<k>.png, overlay.png"},
};

static void usage(FILE *f) {
  fprintf(f, "usage: mpass [--threads N] <command> [args]\n\ncommands:\n");
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) fprintf(f, "  %s\n", commands[i].usage);
  fprintf(f, "\nmpass %s\n", MPASS_VERSION);
}

int cli_fail(const char *cmd, mpass_error *e) {
  fprintf(stderr, "mpass %s: %s\n", cmd, mpass_error_message(e));
  mpass_error_free(e);
  return 1;
}

int main(int argc, char **argv) {
  mpass_options opts = {0};
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
  if (strcmp(argv[1], "--version") == 0) {
    printf("mpass %s\n", MPASS_VERSION);
    return 0;
  }
  for (size_t i = 0; i < sizeof commands / sizeof *commands; i++) {
    if (strcmp(argv[1], commands[i].name) != 0) continue;
    mpass_ctx *ctx;
    mpass_error *e = mpass_ctx_create(&opts, &ctx);
    if (e) return cli_fail(argv[1], e);
    int rc = commands[i].fn(ctx, argc - 1, argv + 1);
    mpass_ctx_destroy(ctx);
    return rc;
  }
  fprintf(stderr, "mpass: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
