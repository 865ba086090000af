#include <stdio.h>

#include "cli/commands.h"
#include "core/error.h"

int cmd_tokenize(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx; (void)argc; (void)argv;
  return cli_fail("tokenize", mp_errorf("not implemented yet"));
}
