/* mpass token add NAME --data DIR: a new API token for `mpass serve`, printed once. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "server/server.h"

static void usage(FILE *f) {
  fprintf(f, "usage: mpass token add NAME [--data DIR] [--db postgres://...]\n"
             "  a new API token for mpass serve, printed once (DIR/mpass.db keeps only its SHA-256)\n");
}

int cmd_token(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx;
  static const struct option longopts[] = {{"data", required_argument, 0, 'd'}, {"db", required_argument, 0, 'D'},
                                           {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *data = "data", *db = NULL;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (opt == 'd') data = optarg;
    else if (opt == 'D') db = optarg;
    else if (opt == 'h') {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (argc - optind != 2 || strcmp(argv[optind], "add") != 0) {
    usage(stderr);
    return 2;
  }
  char token[64];
  mpass_error *e = ms_token_new(token);
  if (!e) e = ms_token_add_db(db, data, argv[optind + 1], token);
  if (e) return cli_fail("token", e);
  /* the only time the token is shown: the database keeps its SHA-256 */
  printf("%s\n", token);
  if (db) fprintf(stderr, "mpass token: added '%s' to the --db store; keep the token above, it is not stored\n", argv[optind + 1]);
  else fprintf(stderr, "mpass token: added '%s' to %s/mpass.db; keep the token above, it is not stored\n", argv[optind + 1], data);
  return 0;
}
