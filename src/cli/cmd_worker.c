/* mpass worker: runs prompts from a job store shared by several machines (PostgreSQL), no HTTP.
 * Any number of workers and `mpass serve --workers 0` API nodes may share one database. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/context.h"
#include "server/server.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpass worker --db postgres://... [--data DIR] [--models DIR] [--model CKPT] [--workers N]\n"
          "                    [--lease-seconds N] [--public-url URL] [--retention-days N] [--quiet]\n"
          "  --data DIR          local work space (job outputs, caches); default ./data\n"
          "  --workers N         jobs run at once by this process (default 1)\n"
          "  --lease-seconds N   a job whose worker is silent this long is run again elsewhere (default 30)\n"
          "  --public-url URL    base of image URLs in callback bodies (the API nodes' address)\n"
          "  --retention-days N  remove this machine's copies and the stored files of prompts that ended more than\n"
          "                      N days ago (as `mpass serve --retention-days`); default 0: keep forever\n");
}

int cmd_worker(mpass_ctx *ctx, int argc, char **argv) {
  static const struct option longopts[] = {
      {"db", required_argument, 0, 'D'},      {"data", required_argument, 0, 'd'},
      {"model", required_argument, 0, 'm'},   {"workers", required_argument, 0, 'w'},
      {"lease-seconds", required_argument, 0, 'L'}, {"public-url", required_argument, 0, 'p'},
      {"quiet", no_argument, 0, 'Q'},         {"help", no_argument, 0, 'h'},
      {"retention-days", required_argument, 0, 'R'}, {0, 0, 0, 0}};
  ms_config cfg = {.data_dir = "data", .workers = 1, .models_dir = ctx->models_dir, .n_threads = ctx->n_threads,
                   .no_http = true, .listen = "127.0.0.1:0"};
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    bool ok = true;
    switch (opt) {
      case 'D': cfg.db = optarg; break;
      case 'd': cfg.data_dir = optarg; break;
      case 'm': cfg.model_path = optarg; break;
      case 'p': cfg.public_url = optarg; break;
      case 'Q': cfg.quiet = true; break;
      case 'w': cfg.workers = atoi(optarg), ok = cfg.workers >= 1 && cfg.workers <= 64; break;
      case 'L': cfg.lease_seconds = atoi(optarg), ok = cfg.lease_seconds >= 2; break;
      case 'R': cfg.retention_days = cli_parse_retention_days(optarg, &ok); break;
      case 'h': usage(stdout); return 0;
      default: ok = false;
    }
    if (!ok) {
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "mpass worker: unexpected argument %s\n", argv[optind]);
    return 2;
  }
  if (!cfg.db || !*cfg.db) {
    fprintf(stderr, "mpass worker: --db is required (the PostgreSQL database the API nodes use, postgres://...)\n");
    return 2;
  }
  return cli_serve_until_signal("worker", &cfg);
}
