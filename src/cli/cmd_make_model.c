/* mpass make-model: a checkpoint with random weights in the real SD 1.x layout (demo and benchmarks). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "models/sd_layout.h"

static void usage(FILE *f) {
  fprintf(f, "usage: mpass make-model [--preset tiny|sd15|tiny-xl|sdxl] [--kind checkpoint|lora|embedding|controlnet] [--vectors N]\n"
             "                        [--dtype f16|f32] [--seed N] OUT.safetensors\n"
             "  a random-weight checkpoint, LoRA or embedding (for demos, benchmarks and tests: images are noise)\n");
}

int cmd_make_model(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx;
  static const struct option longopts[] = {{"preset", required_argument, 0, 'p'},
                                           {"dtype", required_argument, 0, 'd'},
                                           {"seed", required_argument, 0, 's'},
                                           {"kind", required_argument, 0, 'k'},
                                           {"vectors", required_argument, 0, 'v'},
                                           {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  const char *preset = "tiny", *dtype = "f16", *kind = "checkpoint";
  int vectors = 2;
  unsigned long long seed = 0;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (opt == 'p') preset = optarg;
    else if (opt == 'd') dtype = optarg;
    else if (opt == 's') seed = strtoull(optarg, NULL, 10);
    else if (opt == 'k') kind = optarg;
    else if (opt == 'v') vectors = atoi(optarg);
    else if (opt == 'h') {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (optind != argc - 1 || (strcmp(dtype, "f16") && strcmp(dtype, "f32")) ||
      (strcmp(kind, "checkpoint") && strcmp(kind, "lora") && strcmp(kind, "embedding") && strcmp(kind, "controlnet"))) {
    usage(stderr);
    return 2;
  }
  mp_sd_config cfg;
  mp_error *e = mp_sd_preset(preset, &cfg);
  if (!e && !strcmp(kind, "lora")) e = mp_sd_write_random_lora(argv[optind], &cfg, 4, seed);
  else if (!e && !strcmp(kind, "embedding")) e = mp_sd_write_random_embedding(argv[optind], &cfg, vectors, seed);
  else if (!e && !strcmp(kind, "controlnet")) e = mp_sd_write_random_controlnet(argv[optind], &cfg, !strcmp(dtype, "f32") ? MP_F32 : MP_F16, seed, preset);
  else if (!e) e = mp_sd_write_random(argv[optind], &cfg, strcmp(dtype, "f16") ? MP_F32 : MP_F16, seed, preset);
  if (e) return cli_fail("make-model", e);
  fprintf(stderr, "mpass make-model: wrote %s (%s %s, random weights: images made with it are noise)\n", argv[optind], preset, kind);
  return 0;
}
