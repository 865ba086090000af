/* mpass upscale IN [-o OUT] [--model x4fast|x4plus] [--scale 2|4] [--tile N] [--context N]
 * Real-ESRGAN super-resolution of one image, tile by tile, with a progress line per tile. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "cli/commands.h"
#include "core/context.h"
#include "io/image.h"
#include "models/esrgan.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpass upscale IN.png|IN.jpg [-o OUT.png] [--model x4fast|x4plus] [--scale 2|4] [--tile N] [--context N]\n"
          "  --model    x4fast (default: realesr-general-x4v3, fast) or x4plus (RealESRGAN_x4plus, slower, sharper)\n"
          "  --scale    4 (default) or 2 (the x4 result averaged over 2x2 blocks)\n"
          "  --tile     tile side in input pixels (default %d; smaller uses less memory)\n"
          "  --context  pixels of neighbourhood each tile sees (default: enough that seams do not show;\n"
          "             10 reproduces realesrgan-ncnn-vulkan -t N exactly)\n"
          "  -o         output file (.png, or .jpg/.jpeg); default IN_x<scale>.png\n",
          MP_ESRGAN_DEFAULT_TILE);
}

static bool parse_int_arg(const char *s, int lo, int hi, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < lo || v > hi) return false;
  *out = (int)v;
  return true;
}

typedef struct {
  struct timespec start;
} progress_ctx;

static double seconds_since(const struct timespec *t0) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static void progress(void *ctx, int done, int total) {
  progress_ctx *p = ctx;
  fprintf(stderr, "upscale: tile %d/%d  %.1f s\n", done, total, seconds_since(&p->start));
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

int cmd_upscale(mpass_ctx *ctx, int argc, char **argv) {
  static const struct option longopts[] = {{"output", required_argument, 0, 'o'}, {"model", required_argument, 0, 'm'},
                                           {"scale", required_argument, 0, 's'},  {"tile", required_argument, 0, 'T'},
                                           {"context", required_argument, 0, 'C'}, {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  const char *out_path = NULL, *model = "x4fast";
  int scale = 4, tile = MP_ESRGAN_DEFAULT_TILE, context = -1, opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "o:h", longopts, NULL)) != -1) {
    switch (opt) {
      case 'o': out_path = optarg; break;
      case 'm': model = optarg; break;
      case 's':
        if (strcmp(optarg, "2") && strcmp(optarg, "4")) {
          fprintf(stderr, "mpass upscale: --scale must be 2 or 4, found '%s'\n", optarg);
          return 2;
        }
        scale = atoi(optarg);
        break;
      case 'T':
        if (!parse_int_arg(optarg, 16, 4096, &tile)) {
          fprintf(stderr, "mpass upscale: --tile must be a number of pixels from 16 to 4096, found '%s'\n", optarg);
          return 2;
        }
        break;
      case 'C':
        if (!parse_int_arg(optarg, 0, 512, &context)) {
          fprintf(stderr, "mpass upscale: --context must be a number of pixels from 0 to 512, found '%s'\n", optarg);
          return 2;
        }
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  const char *in_path = argv[optind];
  char default_out[4096];
  if (!out_path) {
    const char *dot = strrchr(in_path, '.'), *slash = strrchr(in_path, '/');
    int stem = dot && (!slash || dot > slash) ? (int)(dot - in_path) : (int)strlen(in_path);
    snprintf(default_out, sizeof default_out, "%.*s_x%d.png", stem, in_path, scale);
    out_path = default_out;
  }

  mp_esrgan *m = NULL;
  mp_error *e = mp_esrgan_open_named(ctx->models_dir, model, &m);
  if (e) return cli_fail("upscale", e);
  mp_image in = {0}, out = {0};
  e = mp_image_read(in_path, 3, &in);
  if (!e) {
    progress_ctx pc;
    clock_gettime(CLOCK_MONOTONIC, &pc.start);
    mp_esrgan_opts o = mp_esrgan_default_opts(m);
    o.tile = tile;
    if (context >= 0) o.context = context;
    o.progress = progress;
    o.progress_ctx = &pc;
    fprintf(stderr, "upscale: %s %dx%d -> %dx%d with %s, tile %d, context %d, %d threads\n", in_path, in.width, in.height,
            in.width * scale, in.height * scale, model, o.tile, o.context, ctx->n_threads);
    e = mp_esrgan_upscale_image(m, ctx->pool, &in, scale, &o, &out);
    if (!e) {
      e = ends_with(out_path, ".jpg") || ends_with(out_path, ".jpeg") ? mp_image_write_jpeg(out_path, &out, 95)
                                                                       : mp_image_write_png(out_path, &out, NULL, NULL);
      if (!e) fprintf(stderr, "upscale: wrote %s (%.1f s)\n", out_path, seconds_since(&pc.start));
    }
  }
  mp_image_free(&in);
  mp_image_free(&out);
  mp_esrgan_free(m);
  return e ? cli_fail("upscale", e) : 0;
}
