/* mpass bench: how fast and how big one txt2img job is on this machine.
 *
 *   mpass [--threads N] [--precision auto|f32|bf16] bench --model CKPT [-W 512] [-H 512] [--steps N]
 *
 * Times the pieces of a txt2img pass on the models, each on its own: load (memory map, binding the
 * text encoder, UNet and VAE, and packing the weights for the backend — which happens on a weight's
 * first use, so the first step's excess over the later ones is counted as load), the text encoder (prompt and negative
 * prompt, 77 tokens each), sampling steps with classifier-free guidance (one UNet forward at
 * batch 2 plus an Euler update), and the VAE decode. Inputs are synthetic (fixed token ids, a
 * deterministic pseudo-random latent), so no vocabulary is needed and the figures depend on shapes
 * only. (mpass run/generate open the checkpoint through the pipeline engine, which also hashes the
 * file for the "Model hash" field; that is not part of load_s here.) Prints wall and CPU seconds and the load average (the machine may be shared), and ends with
 * one machine-readable line:
 *   bench: precision=f32 size=512x512 threads=2 load_s=… te_s=… step_s=… vae_decode_s=… peak_rss_mb=…
 * With --controlnet FILE the same steps run again with that ControlNet on both CFG halves (a synthetic
 * hint), and the line adds controlnet_step_s=… controlnet_overhead=… (the ratio to step_s, minus 1).
 * With --batch N (even) each step is one UNet forward of N rows, i.e. N/2 images with their CFG halves,
 * as a batched sampler would run them; the line adds batch=N and step_per_image_s=… (step_s / (N/2)).
 * With --profile the steps after the first are timed by op class (core/profile.h) and a table of
 * seconds and % per class for one step follows, and one for the VAE decode.
 * With --job FILE.prompt it runs that prompt document instead, pass by pass (bench_job.c). */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/context.h"
#include "core/profile.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/openclip.h"
#include "prompt/conditioning_xl.h"
#include "models/controlnet.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"
#include "core/pack_cache.h"
#include "pipeline/pack_files.h"

typedef struct {
  double wall, cpu;
} stamp;

static stamp now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
               1e-6 * (double)ru.ru_stime.tv_usec;
  return (stamp){(double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec, cpu};
}

static stamp since(stamp a) {
  stamp b = now();
  return (stamp){b.wall - a.wall, b.cpu - a.cpu};
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0; /* ru_maxrss is in KiB on Linux */
}

static void loadavg(char *buf, size_t cap) {
  FILE *f = fopen("/proc/loadavg", "r");
  buf[0] = 0;
  if (f) {
    if (!fgets(buf, (int)cap, f)) buf[0] = 0;
    fclose(f);
  }
  char *nl = strchr(buf, '\n');
  if (nl) *nl = 0;
}

/* A deterministic, roughly unit-variance latent. */
static void pseudo_random(float *x, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = ((float)(seed >> 9) / 8388608.0f - 0.5f) * 3.4f;
  }
}

static double rss_now_mb(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
  }
  return (double)resident * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

static void report(const char *what, stamp s) {
  printf("%-28s %8.2f s wall %8.2f s CPU   RSS %6.0f MB (peak %6.0f)\n", what, s.wall, s.cpu, rss_now_mb(), peak_rss_mb());
}

static void usage(FILE *f) {
  fprintf(f, "usage: mpass [--threads N] [--precision auto|f32|bf16] bench --model CKPT [-W 512] [-H 512] [--steps N] [--batch N] [--no-vae] [--profile]\n"
             "       mpass [--threads N] [--precision auto|f32|bf16] [--models DIR] bench --job FILE.prompt [--profile] [run's options]\n"
             "  load, text-encoder, UNet step and VAE times and peak RSS; W and H: multiples of 64 from 64 to 4096; steps 1..1000;\n"
             "  --profile: time per op class (conv 3x3, dense/1x1, attention, norms, other) for one step and the VAE decode;\n"
             "  --batch N: UNet rows per step (even, 2..16: N/2 images with their CFG halves; default 2);\n"
             "  --job: run a prompt document as `mpass run` does (same options) and time every pass\n");
}

/* bench --job FILE [--profile] [run's options]: run's argv is ours without --job and --profile, the file
 * in the place of run's PROMPT_FILE. */
static int bench_job(mpass_ctx *ctx, int argc, char **argv) {
  char **args = calloc((size_t)argc + 1, sizeof *args);
  if (!args) return cli_fail("bench", mp_errorf("out of memory"));
  const char *file = NULL;
  bool profile = false;
  int n = 0;
  args[n++] = argv[0];
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--job") && i + 1 < argc) file = argv[++i];
    else if (!strncmp(argv[i], "--job=", 6)) file = argv[i] + 6;
    else if (!strcmp(argv[i], "--profile")) profile = true;
    else args[n++] = argv[i];
  }
  int rc;
  if (!file || !*file) {
    usage(stderr);
    rc = 2;
  } else {
    args[n++] = (char *)file;
    rc = cli_bench_job(ctx, n, args, profile);
  }
  free(args);
  return rc;
}

int cmd_bench(mpass_ctx *ctx, int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--job") || !strncmp(argv[i], "--job=", 6)) return bench_job(ctx, argc, argv);
  static const struct option longopts[] = {{"model", required_argument, 0, 'm'},
                                           {"steps", required_argument, 0, 's'},
                                           {"width", required_argument, 0, 'W'},
                                           {"height", required_argument, 0, 'H'},
                                           {"no-vae", no_argument, 0, 'n'},
                                           {"help", no_argument, 0, 'h'},
                                           {"controlnet", required_argument, 0, 'c'},
                                           {"profile", no_argument, 0, 'p'},
                                           {"batch", required_argument, 0, 'b'},
                                           {0, 0, 0, 0}};
  const char *model = NULL, *controlnet_path = NULL;
  int W = 512, H = 512, steps = 3, opt, run_vae = 1, rows = 2;
  bool profile = false;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "W:H:", longopts, NULL)) != -1) {
    if (opt == 'm') model = optarg;
    else if (opt == 's') steps = atoi(optarg);
    else if (opt == 'W') W = atoi(optarg);
    else if (opt == 'H') H = atoi(optarg);
    else if (opt == 'n') run_vae = 0; /* profiling the UNet alone */
    else if (opt == 'c') controlnet_path = optarg;
    else if (opt == 'p') profile = true;
    else if (opt == 'b') rows = atoi(optarg);
    else if (opt == 'h') {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (!model || optind != argc || W < 64 || H < 64 || W % 64 || H % 64 || W > 4096 || H > 4096 || steps < 1 || steps > 1000 ||
      rows < 2 || rows > 16 || rows % 2) {
    usage(stderr);
    return 2;
  }
  char la[128];
  loadavg(la, sizeof la);
  printf("model %s, %dx%d, %d steps, %s; load average before: %s\n", model, W, H, steps, mpass_ctx_precision(ctx), la);
  cli_print_kernels(ctx);

  mp_error *e = NULL;
  mp_weights *wts = NULL;
  mp_sd_config cfgv;
  mp_clip *clip = NULL;
  mp_openclip *clip2 = NULL; /* SDXL */
  float *y = NULL, *pooled = NULL;
  mp_unet *unet = NULL;
  mp_vae *vae = NULL;
  mp_controlnet *cn = NULL;
  mp_controlnet_model cnm = {0};
  float *hint = NULL;
  stamp cn_step_s = {0, 0};
  float *ctxt = NULL, *x = NULL, *eps = NULL, *img = NULL;
  int32_t *ids = NULL;
  stamp t0 = now();
  /* pinned as the engine pins its checkpoint: packs shared by the models and kept on disk (pack_files.h) */
  if ((e = mp_weights_open(model, &wts)) || (e = mp_pin_checkpoint(ctx, wts, wts)) || (e = mp_sd_config_detect(wts, NULL, &cfgv)) ||
      (e = mp_clip_load(wts, mp_sd_clip_prefix(&cfgv), &cfgv.clip, &clip)) ||
      (cfgv.family == MP_FAMILY_SDXL && (e = mp_openclip_load(wts, MP_PREFIX_XL_OPENCLIP, &cfgv.clip2, &clip2))) ||
      (e = mp_unet_load(wts, MP_PREFIX_UNET, &cfgv.unet, &unet)) ||
      (e = mp_vae_load(wts, MP_PREFIX_VAE, &cfgv.vae, &vae))) {
    e = mp_error_wrap(e, "loading %s", model);
    goto done;
  }
  stamp open_s = since(t0);
  const mp_sd_config *cfg = &cfgv;
  const int C = cfg->unet.in_channels, D = cfg->unet.context_dim, n_ctx = 77, h = H / 8, w = W / 8;
  const size_t nx = (size_t)C * h * w;
  ctxt = malloc(sizeof(float) * rows * n_ctx * (size_t)D);
  x = malloc(sizeof(float) * rows * nx);
  eps = malloc(sizeof(float) * rows * nx);
  img = malloc(sizeof(float) * 3 * (size_t)W * H);
  ids = malloc(sizeof(int32_t) * n_ctx);
  const bool xl = cfg->family == MP_FAMILY_SDXL;
  const int Y = cfg->unet.adm_in_channels, P = cfg->clip2.projection_dim;
  if (xl) y = malloc(sizeof(float) * rows * (size_t)Y), pooled = malloc(sizeof(float) * (size_t)(P > 0 ? P : 1));
  if (!ctxt || !x || !eps || !img || !ids || (xl && (!y || !pooled))) {
    e = mp_errorf("out of memory");
    goto done;
  }
  report("load (map + bind)", open_s);

  /* Text encoder: prompt and negative prompt, BOS + 75 tokens + EOS. */
  stamp t = now();
  for (int p = 0; p < 2; p++) {
    ids[0] = 49406;
    for (int i = 1; i < n_ctx - 1; i++) ids[i] = p ? 49407 : 320 + (i * 37) % 20000;
    ids[n_ctx - 1] = 49407;
    if (xl) { /* both encoders, the pooled vector and the size conditioning (original = target = W×H) */
      int32_t ids2[77];
      memcpy(ids2, ids, sizeof ids2);
      for (int i = mp_openclip_eos_index(ids2, n_ctx, 49407) + 1; i < n_ctx; i++) ids2[i] = 0;
      if ((e = mp_xl_encode_chunk(clip, clip2, ctx->pool, ids, ids2, 49407, NULL, ctxt + (size_t)p * n_ctx * D, pooled))) goto done;
      const float time_ids[6] = {(float)H, (float)W, 0, 0, (float)H, (float)W};
      mp_xl_label_vector(pooled, P, time_ids, cfg->time_id_dim, y + (size_t)p * Y);
    } else if ((e = mp_clip_encode(clip, ctx->pool, ids, n_ctx, 1, ctxt + (size_t)p * n_ctx * D))) {
      goto done;
    }
  }
  stamp te_s = since(t);
  report("text encoder (2 prompts)", te_s);
  for (int r = 2; r < rows; r++) { /* --batch: more images, the same two prompts */
    memcpy(ctxt + (size_t)r * n_ctx * D, ctxt + (size_t)(r % 2) * n_ctx * D, sizeof(float) * n_ctx * (size_t)D);
    if (xl) memcpy(y + (size_t)r * Y, y + (size_t)(r % 2) * Y, sizeof(float) * (size_t)Y);
  }

  /* Sampling steps: eps for (cond, uncond) in one batch-2 forward (batch `rows` with --batch), guidance,
   * an Euler step. The first image's latent is the one guided and decoded; the others are copies. */
  pseudo_random(x, nx, 1);
  stamp steps_total = {0, 0}, first = {0, 0};
  mp_profile prof = {0}; /* --profile: the steps after the first (which also packs the weights) */
  if (profile) mp_pool_set_profile(ctx->pool, &prof);
  const double sigma = 1.0, dsigma = -0.05, scale = 7.5;
  for (int s = 0; s < steps; s++) {
    t = now();
    for (int r = 1; r < rows; r++) memcpy(x + (size_t)r * nx, x, sizeof(float) * nx);
    float ts[16];
    for (int r = 0; r < rows; r++) ts[r] = 999.0f - 50.0f * (float)s;
    const mp_unet_inputs in = {.batch = rows, .h = h, .w = w, .x = x, .t = ts, .context = ctxt, .n_ctx = n_ctx, .y = y};
    if ((e = mp_unet_run(unet, ctx->pool, &in, eps))) goto done;
    for (size_t i = 0; i < nx; i++) {
      float guided = eps[nx + i] + (float)scale * (eps[i] - eps[nx + i]);
      x[i] = (float)(x[i] / sqrt(sigma * sigma + 1.0)) + (float)dsigma * guided;
    }
    stamp d = since(t);
    steps_total.wall += d.wall, steps_total.cpu += d.cpu;
    if (s == 0) first = d;
    if (s == 0 && steps > 1) mp_profile_reset(&prof);
    char what[40];
    snprintf(what, sizeof what, "step %d (UNet batch %d + CFG)", s + 1, rows);
    report(what, d);
  }
  /* Weights are packed for the backend on first use, at the shape they first run at, so the first
   * step carries the packing: count its excess over the later steps as load, and the later steps as
   * the step time. */
  stamp step_s = {steps_total.wall / steps, steps_total.cpu / steps}, load_s = open_s;
  if (steps > 1) {
    step_s = (stamp){(steps_total.wall - first.wall) / (steps - 1), (steps_total.cpu - first.cpu) / (steps - 1)};
    load_s.wall += fmax(0, first.wall - step_s.wall), load_s.cpu += fmax(0, first.cpu - step_s.cpu);
  }
  report("mean step (after the first)", step_s);
  report("load (incl. packing)", load_s);
  mp_pool_set_profile(ctx->pool, NULL);
  if (profile) {
    printf("time per op class, one UNet step (batch %d + CFG, %dx%d, %s; mean of %s):\n", rows, W, H, mpass_ctx_precision(ctx),
           steps > 1 ? "the steps after the first" : "the one step, incl. packing");
    mp_profile_print(&prof, stdout, steps > 1 ? steps_total.wall - first.wall : steps_total.wall, steps > 1 ? steps - 1 : 1, "step");
  }

  if (controlnet_path) { /* the same steps with the ControlNet on both CFG halves */
    t = now();
    if ((e = mp_controlnet_open(controlnet_path, NULL, &cn))) goto done;
    report("ControlNet load (map + bind)", since(t));
    if (!(hint = malloc(sizeof(float) * 3 * (size_t)W * H))) {
      e = mp_errorf("out of memory");
      goto done;
    }
    pseudo_random(hint, (size_t)3 * W * H, 2);
    for (size_t i = 0; i < (size_t)3 * W * H; i++) hint[i] = hint[i] > 0 ? 1.0f : 0.0f; /* an edge map's values */
    cnm = (mp_controlnet_model){.unet = unet, .controlnet = cn, .pool = ctx->pool, .hint = hint, .scale = 1.0f, .x_channels = C};
    stamp total = {0, 0}, first_cn = {0, 0};
    for (int s = 0; s < steps; s++) {
      t = now();
      memcpy(x + nx, x, sizeof(float) * nx);
      float ts[2] = {999.0f - 50.0f * (float)s, 999.0f - 50.0f * (float)s};
      if ((e = mp_controlnet_model_eps(&cnm, 2, h, w, x, ts, ctxt, n_ctx, eps))) goto done;
      stamp d = since(t);
      total.wall += d.wall, total.cpu += d.cpu;
      if (s == 0) first_cn = d;
      char what[48];
      snprintf(what, sizeof what, "step %d with ControlNet", s + 1);
      report(what, d);
    }
    cn_step_s = steps > 1 ? (stamp){(total.wall - first_cn.wall) / (steps - 1), (total.cpu - first_cn.cpu) / (steps - 1)} : total;
    report("mean ControlNet step", cn_step_s);
  }

  t = now();
  mp_unet_trim(unet); /* as the engine does before its decode */
  mp_backend_trim(ctx->backend);
  mp_profile vae_prof = {0};
  if (profile) mp_pool_set_profile(ctx->pool, &vae_prof);
  if (run_vae && (e = mp_vae_decode(vae, ctx->pool, h, w, x, img))) goto done;
  mp_pool_set_profile(ctx->pool, NULL);
  stamp vae_s = since(t);
  report("VAE decode", vae_s);
  if (profile && run_vae) {
    printf("time per op class, VAE decode (%dx%d, %s, incl. packing):\n", W, H, mpass_ctx_precision(ctx));
    mp_profile_print(&vae_prof, stdout, vae_s.wall, 1, "decode");
  }
  loadavg(la, sizeof la);
  printf("load average after: %s\n", la);
  printf("bench: precision=%s size=%dx%d threads=%d load_s=%.2f te_s=%.2f step_s=%.2f vae_decode_s=%.2f peak_rss_mb=%.0f",
         mpass_ctx_precision(ctx), W, H, ctx->n_threads, load_s.wall, te_s.wall, step_s.wall, vae_s.wall, peak_rss_mb());
  if (rows != 2) printf(" batch=%d step_per_image_s=%.2f", rows, step_s.wall / (rows / 2));
  if (controlnet_path)
    printf(" controlnet_step_s=%.2f controlnet_overhead=%.2f", cn_step_s.wall, step_s.wall > 0 ? cn_step_s.wall / step_s.wall - 1 : 0);
  printf("\n");
done:
  mp_pool_set_profile(ctx->pool, NULL); /* prof lives on this stack */
  free(ctxt), free(x), free(eps), free(img), free(ids), free(y), free(pooled);
  mp_clip_free(clip);
  mp_openclip_free(clip2);
  mp_unet_free(unet);
  mp_vae_free(vae);
  mp_controlnet_model_free(&cnm);
  mp_controlnet_free(cn);
  free(hint);
  if (wts) mp_pack_cache_release(mp_backend_pack_cache(ctx->backend), wts);
  mp_weights_close(wts);
  return e ? cli_fail("bench", e) : 0;
}
