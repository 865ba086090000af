/* What the program says about itself: `mpass --version` and the man page (`mpass help-man`, run at
 * build time to make mpass.1 from the commands' own --help, so the two never disagree). */
#include "cli/about.h"

#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "core/cpu_kernels.h"
#include "mpass_commit.h" /* MPASS_GIT_COMMIT, written at build time by cmake/git_commit.cmake */

int cli_version(const mpass_options *opts) {
  printf("mpass %s\ncommit %s\n", MPASS_VERSION, MPASS_GIT_COMMIT);
  /* the path the arithmetic would take here, with these options: what mpass_ctx_create decides */
  mpass_ctx *ctx = NULL;
  mpass_error *e = mpass_ctx_create(opts, &ctx);
  if (e) {
    printf("compute: unavailable (%s)\n", mpass_error_message(e));
    mpass_error_free(e);
    return 1;
  }
  char line[160];
  printf("compute: %s\n", mpass_ctx_describe(ctx, line, sizeof line));
  printf("cpu: %s%s%s\n", __builtin_cpu_supports("avx512f") ? "AVX-512" : __builtin_cpu_supports("avx2") ? "AVX2" : "no AVX2",
         __builtin_cpu_supports("fma") ? ", FMA" : "",
#ifdef MPASS_NATIVE_BUILD
         " (built with -march=native)"
#else
         ""
#endif
  );
  char mm[96], conv[96]; /* what oneDNN dispatches the bf16 products to here (AMX, AVX512_BF16, ...) */
  mp_error *ke = mp_bf16_kernel_names(mm, sizeof mm, conv, sizeof conv);
  if (ke) printf("bf16 kernels: unknown (%s)\n", mp_error_message(ke));
  else printf("bf16 kernels: matmul %s, 3x3 conv %s%s\n", mm, conv, mp_cpu_amx_usable() ? " (AMX usable)" : "");
  mp_error_free(ke);
  char blas[256];
  mp_openblas_describe(blas, sizeof blas);
  printf("OpenBLAS kernels: %s\n", blas); /* the f32 path's sgemm */
  mpass_ctx_destroy(ctx);
  return 0;
}

/* One line of text for roff: backslashes doubled as \e, a leading '.' or '\'' protected. */
static void roff_line(FILE *out, const char *s, size_t n) {
  if (n && (s[0] == '.' || s[0] == '\'')) fputs("\\&", out);
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '\\') fputs("\\e", out);
    else if (s[i] == '-') fputs("\\-", out);
    else fputc(s[i], out);
  }
  fputc('\n', out);
}

static void roff_text(FILE *out, const char *s) {
  while (*s) {
    const char *nl = strchr(s, '\n');
    size_t n = nl ? (size_t)(nl - s) : strlen(s);
    roff_line(out, s, n);
    s += n + (nl != NULL);
  }
}

/* The --help text of one command, from a run of this same program. NULL when it cannot be had. */
static char *command_help(const char *name) {
  /* the path of this program (in the shell popen starts, /proc/self/exe would be the shell) */
  char self[PATH_MAX], cmd[PATH_MAX + 128];
  ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
  if (len <= 0 || strchr(name, '\'') || memchr(self, '\'', (size_t)len)) return NULL;
  self[len] = 0;
  snprintf(cmd, sizeof cmd, "'%s' %s --help 2>/dev/null", self, name);
  FILE *p = popen(cmd, "r");
  if (!p) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, p)) > 0;) {
    n += got;
    if (n + 1 == cap) {
      char *nb = realloc(buf, cap *= 2);
      if (!nb) free(buf);
      buf = nb;
    }
  }
  int rc = pclose(p);
  if (buf) buf[n] = 0;
  if (rc != 0 || !buf || !n) {
    free(buf);
    return NULL;
  }
  return buf;
}

int cli_help_man(FILE *out, size_t n, const char *const names[], const char *const usages[]) {
  fprintf(out, ".TH MPASS 1 \"\" \"mpass %s\" \"User Commands\"\n", MPASS_VERSION);
  fputs(".SH NAME\nmpass \\- multi\\-pass Stable Diffusion inference on the CPU\n", out);
  fputs(".SH SYNOPSIS\n.B mpass\n[\\fB\\-\\-threads\\fR \\fIN\\fR] [\\fB\\-\\-precision\\fR auto|f32|bf16] "
        "[\\fB\\-\\-models\\fR \\fIDIR\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]\n.br\n.B mpass \\-\\-version\n.br\n"
        ".B mpass\n\\fICOMMAND\\fR \\fB\\-\\-help\\fR\n", out);
  fputs(".SH DESCRIPTION\nmpass runs Stable Diffusion 1.x on the CPU in passes: a scene, then each person "
        "repainted with its own prompt and LoRA, then upscaling, face inpainting, colour grading and grain, "
        "as a prompt document describes. One checkpoint file is enough: the CLIP vocabulary is built in.\n", out);
  fputs(".SH GLOBAL OPTIONS\n"
        ".TP\n\\fB\\-\\-threads\\fR \\fIN\\fR, \\fB\\-t\\fR \\fIN\\fR\nworker threads (1 to 1024; default: the CPUs available)\n"
        ".TP\n\\fB\\-\\-precision\\fR auto|f32|bf16\nthe arithmetic: bf16 where the CPU has it natively (auto), or as asked\n"
        ".TP\n\\fB\\-\\-models\\fR \\fIDIR\\fR\nthe models folder (checkpoints/, lora/, embeddings/, tunes/, vision/, upscale/, clip/); "
        "default $MPASS_MODELS or ./models\n"
        ".TP\n\\fB\\-\\-version\\fR\nversion, git commit and the compute path this machine would take\n", out);
  fputs(".SH COMMANDS\n", out);
  for (size_t i = 0; i < n; i++) {
    fprintf(out, ".SS %s\n", names[i]);
    char *help = command_help(names[i]);
    fputs(".nf\n", out);
    roff_text(out, help ? help : usages[i]);
    fputs(".fi\n", out);
    free(help);
  }
  fputs(".SH ENVIRONMENT\n"
        ".TP\n.B MPASS_MODELS\nthe models folder when \\fB\\-\\-models\\fR is not given\n"
        ".TP\n.B MPASS_VOCAB\na CLIP vocabulary file or tokenizer folder to use instead of the built-in one\n"
        ".SH FILES\n"
        ".TP\n.I " MPASS_DATA_DIR_DOC "\nthe detection (vision/) and upscaling (upscale/) models installed with mpass, "
        "looked up after \\fIDIR\\fR/vision and \\fIDIR\\fR/upscale\n"
        ".SH SEE ALSO\nThe documentation in the source tree: README.md and docs/.\n", out);
  return ferror(out) ? 1 : 0;
}
