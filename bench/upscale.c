/* Benchmark: Real-ESRGAN x4 of a 768x512 photo (the "512x768 in 30 s on 2 cores, f32").
 *
 *   bench_upscale [--model x4fast|x4plus] [--tile N] [--context N] [--threads N] [--size WxH] [IMAGE]
 *
 * IMAGE defaults to ../shared/golden/vision/images/sample1.jpg; the centre WxH (default 768x512)
 * is cut from it. Prints the wall time of the whole upscale (model already loaded). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/threads.h"
#include "io/image.h"
#include "models/esrgan.h"

#include <cblas.h>

static void progress(void *ctx, int done, int total) {
  fprintf(stderr, "  tile %d/%d  %.1f s\n", done, total, mp_now() - *(double *)ctx);
}

int main(int argc, char **argv) {
  const char *model = "x4fast", *path = NULL, *models = getenv("MPASS_MODELS");
  int tile = MP_ESRGAN_DEFAULT_TILE, context = -1, threads = 2, W = 768, H = 512;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
    else if (!strcmp(argv[i], "--tile") && i + 1 < argc) tile = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--context") && i + 1 < argc) context = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--size") && i + 1 < argc) sscanf(argv[++i], "%dx%d", &W, &H);
    else path = argv[i];
  }
  char def[4096];
  if (!path) {
    const char *shared = getenv("MPASS_SHARED");
    snprintf(def, sizeof def, "%s/golden/vision/images/sample1.jpg", shared && *shared ? shared : "../shared");
    path = def;
  }
  mp_pool *pool = NULL;
  mp_esrgan *m = NULL;
  mp_image img = {0}, crop = {0}, out = {0};
  mp_error *e = mp_pool_create(threads, &pool);
  if (!e) openblas_set_num_threads(threads);
  if (!e) e = mp_esrgan_open_named(models && *models ? models : "models", model, &m);
  if (!e) e = mp_image_read(path, 3, &img);
  if (!e && (img.width < W || img.height < H)) e = mp_errorf("%s is smaller than %dx%d", path, W, H);
  if (!e) e = mp_image_alloc(&crop, W, H, 3);
  if (!e) {
    int x0 = (img.width - W) / 2, y0 = (img.height - H) / 2;
    for (int y = 0; y < H; y++)
      memcpy(crop.pixels + (size_t)y * W * 3, img.pixels + ((size_t)(y0 + y) * img.width + x0) * 3, (size_t)W * 3);
    mp_esrgan_opts o = mp_esrgan_default_opts(m);
    o.tile = tile;
    if (context >= 0) o.context = context;
    double t0 = mp_now();
    o.progress = progress;
    o.progress_ctx = &t0;
    printf("bench_upscale: %s %dx%d x%d, tile %d, context %d, %d threads\n", model, W, H, mp_esrgan_scale(m), o.tile,
           o.context, threads);
    e = mp_esrgan_upscale_image(m, pool, &crop, mp_esrgan_scale(m), &o, &out);
    double t = mp_now() - t0;
    if (!e) printf("bench_upscale: %.2f s  (%.2f Mpx/s of input)\n", t, (double)W * H / t / 1e6);
  }
  if (!e && getenv("BENCH_UPSCALE_OUT")) e = mp_image_write_png(getenv("BENCH_UPSCALE_OUT"), &out, NULL, NULL);
  int rc = 0;
  if (e) {
    fprintf(stderr, "bench_upscale: %s\n", mp_error_message(e));
    mp_error_free(e);
    rc = 1;
  }
  mp_image_free(&img);
  mp_image_free(&crop);
  mp_image_free(&out);
  mp_esrgan_free(m);
  mp_pool_destroy(pool);
  return rc;
}
