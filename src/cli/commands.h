/* The CLI's subcommands. Each returns the process exit code and prints its own errors. */
#ifndef MP_CLI_COMMANDS_H
#define MP_CLI_COMMANDS_H

#include <stdbool.h>

#include "mpass/mpass.h"

typedef int (*mp_command_fn)(mpass_ctx *ctx, int argc, char **argv);

int cmd_run(mpass_ctx *ctx, int argc, char **argv);
int cmd_inspect(mpass_ctx *ctx, int argc, char **argv);
int cmd_conform(mpass_ctx *ctx, int argc, char **argv);
int cmd_tokenize(mpass_ctx *ctx, int argc, char **argv);
int cmd_upscale(mpass_ctx *ctx, int argc, char **argv);
int cmd_parse(mpass_ctx *ctx, int argc, char **argv);
int cmd_make_model(mpass_ctx *ctx, int argc, char **argv);
int cmd_tune(mpass_ctx *ctx, int argc, char **argv);
int cmd_detect(mpass_ctx *ctx, int argc, char **argv);
int cmd_generate(mpass_ctx *ctx, int argc, char **argv);
int cmd_params(mpass_ctx *ctx, int argc, char **argv);
int cmd_bench(mpass_ctx *ctx, int argc, char **argv);
int cmd_serve(mpass_ctx *ctx, int argc, char **argv);
int cmd_worker(mpass_ctx *ctx, int argc, char **argv);
int cmd_token(mpass_ctx *ctx, int argc, char **argv);

/* `mpass run`'s work, shared with `mpass bench --job` (cmd_run.c): run's options and the prompt file
 * from argv, the job run, the output folder printed. `observe` (may be NULL) sees every progress report
 * after run has printed it; `who` names the command in messages. */
int cli_run_document(mpass_ctx *ctx, int argc, char **argv, const char *who, mpass_progress_fn observe, void *observe_user);
/* `mpass bench --job` (bench_job.c): argv as for run, plus whether to print the op-class profile. */
int cli_bench_job(mpass_ctx *ctx, int argc, char **argv, bool profile);
/* The kernels the products run on: OpenBLAS's kernel set (f32 sgemm), and under bf16 the oneDNN and attention
 * kernels (AMX or AVX512_BF16; bench_job.c). */
void cli_print_kernels(const mpass_ctx *ctx);

/* Print "mpass <cmd>: <message>" to stderr, free the error, return 1. */
int cli_fail(const char *cmd, mpass_error *e);

/* `serve` and `worker`: start the server with this configuration and run until SIGTERM/SIGINT
 * (cmd_serve.c). The configuration type comes from server/server.h. */
struct ms_config;
int cli_serve_until_signal(const char *cmd, const struct ms_config *cfg);
int cli_parse_retention_days(const char *s, bool *ok); /* --retention-days N of serve and worker */

#endif
