/* mpass serve: the prompt API over HTTP (docs/api.md). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "core/context.h"
#include "server/server.h"

static long long parse_size(const char *s, bool *ok) {
  char *end;
  long long v = strtoll(s, &end, 10);
  *ok = *s && *end == 0 && v > 0;
  return v;
}

static void usage(FILE *f) {
  fprintf(f, "usage: mpass serve [--listen 127.0.0.1:8080] [--data DIR] [--models DIR] [--model CKPT] [--workers N]\n"
             "                   [--token-file F] [--max-queued N] [--max-upload-bytes N] [--max-image-bytes N]\n"
             "                   [--public-url URL] [--allow-private-urls] [--quiet] [--db postgres://...|sqlite:PATH]\n"
             "                   [--lease-seconds N] [--retention-days N]\n"
             "                   (--models DIR and --threads N are global options; --workers 0: an API node only)\n"
             "  --listen HOST:PORT, or [IPV6]:PORT ([::] takes IPv4 clients too)\n"
             "  --retention-days N  remove the images, uploads and stored files of prompts that ended (done, failed,\n"
             "                      cancelled) more than N days ago, at start and then hourly; the prompt stays\n"
             "                      listed with expired_at and its image URLs answer 410. Default 0: keep forever\n"
             "  the prompt API over HTTP (docs/api.md): jobs in DIR/mpass.db, images under DIR/jobs/, the web page at /\n");
}

int cmd_serve(mpass_ctx *ctx, int argc, char **argv) {
  static const struct option longopts[] = {
      {"listen", required_argument, 0, 'l'},        {"data", required_argument, 0, 'd'},
      {"model", required_argument, 0, 'm'},
      {"workers", required_argument, 0, 'w'},       {"token-file", required_argument, 0, 't'},
      {"max-queued", required_argument, 0, 'q'},    {"max-upload-bytes", required_argument, 0, 'u'},
      {"max-image-bytes", required_argument, 0, 'i'}, {"public-url", required_argument, 0, 'p'},
      {"quiet", no_argument, 0, 'Q'},       {"allow-private-urls", no_argument, 0, 'P'},
      {"db", required_argument, 0, 'D'},    {"lease-seconds", required_argument, 0, 'L'},
      {"retention-days", required_argument, 0, 'R'},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
  /* --models and --threads are global options (main.c): the context carries them */
  ms_config cfg = {.listen = "127.0.0.1:8080", .data_dir = "data", .workers = 1, .max_queued = 100,
                   .models_dir = ctx->models_dir, .n_threads = ctx->n_threads};
  int opt;
  bool ok = true;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    switch (opt) {
      case 'l': cfg.listen = optarg; break;
      case 'd': cfg.data_dir = optarg; break;
      case 'm': cfg.model_path = optarg; break;
      case 't': cfg.token_file = optarg; break;
      case 'p': cfg.public_url = optarg; break;
      case 'Q': cfg.quiet = true; break;
      case 'P': cfg.allow_private_urls = true; break;
      case 'w': cfg.workers = atoi(optarg), ok = optarg[strspn(optarg, "0123456789")] == 0 && *optarg; break;
      case 'D': cfg.db = optarg; break;
      case 'L': cfg.lease_seconds = (int)parse_size(optarg, &ok); break;
      case 'q': cfg.max_queued = atoi(optarg), ok = cfg.max_queued >= 0; break;
      case 'R': cfg.retention_days = cli_parse_retention_days(optarg, &ok); break;
      case 'u': cfg.max_upload_bytes = parse_size(optarg, &ok); break;
      case 'i': cfg.max_image_bytes = parse_size(optarg, &ok); break;
      case 'h': usage(stdout); return 0;
      default: ok = false;
    }
    if (!ok || cfg.workers > 64) {
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "mpass serve: unexpected argument %s\n", argv[optind]);
    return 2;
  }
  return cli_serve_until_signal("serve", &cfg);
}

/* --retention-days N: 0 (keep forever) to 100000 days, digits only */
int cli_parse_retention_days(const char *s, bool *ok) {
  *ok = *s && s[strspn(s, "0123456789")] == 0 && strlen(s) <= 6 && atoi(s) <= 100000;
  return *ok ? atoi(s) : 0;
}

/* Start the server (HTTP and/or workers), say so on stdout, and run until SIGTERM or SIGINT.
 * Signals are taken synchronously by this thread (sigwait): every other thread starts with them
 * blocked, so no handler runs inside the server. Shared by `serve` and `worker`. */
int cli_serve_until_signal(const char *cmd, const ms_config *cfg) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  ms_server *s;
  char url[128];
  mpass_error *e = ms_server_start(cfg, &s, url);
  if (e) return cli_fail(cmd, e);
  if (cfg->no_http) printf("mpass %s: running %d job thread(s)\n", cmd, cfg->workers);
  else printf("mpass %s: listening on %s\n", cmd, url);
  fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  fprintf(stderr, "mpass %s: %s: stopping (a running prompt goes back to the queue)\n", cmd, sig == SIGTERM ? "SIGTERM" : "SIGINT");
  ms_server_stop(s);
  return 0;
}
