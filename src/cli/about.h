/* `mpass --version` and the man page. */
#ifndef MP_CLI_ABOUT_H
#define MP_CLI_ABOUT_H

#include <stddef.h>
#include <stdio.h>

#include "mpass/mpass.h"

/* Where the installed models are, as the man page names it. */
#ifdef MPASS_INSTALL_DATA_DIR
#define MPASS_DATA_DIR_DOC MPASS_INSTALL_DATA_DIR
#else
#define MPASS_DATA_DIR_DOC "/usr/local/share/mpass"
#endif

/* Version, git commit, and the compute path mpass_ctx_create takes with `opts` on this CPU. */
int cli_version(const mpass_options *opts);

/* A roff man page: the global options and each command's own --help text (from running this program). */
int cli_help_man(FILE *out, size_t n, const char *const names[], const char *const usages[]);

#endif
