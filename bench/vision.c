/* Person finding speed: detection + all masks for a 512x768 image (sample6.jpg resized), 2 threads.
 * Usage: bench_vision [IMAGE] (default models/vision/images/sample6.jpg; run from the repo root). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include "core/clock.h"
#include "core/context.h"
#include "io/image.h"
#include "models/person.h"

static double cpu_now(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return (double)u.ru_utime.tv_sec + (double)u.ru_stime.tv_sec + 1e-6 * (double)(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

/* Area-average the photo into dst, aspect kept (fit to the width, centred, grey above and below):
 * a pass-1 image of 512x768 with the group in it. */
static void resize(const mp_image *src, mp_image *dst) {
  int h = (int)((long)src->height * dst->width / src->width), top = (dst->height - h) / 2;
  for (size_t k = 0; k < (size_t)dst->width * dst->height * 3; k++) dst->pixels[k] = 128;
  for (int y = 0; y < h && y + top < dst->height; y++)
    for (int x = 0; x < dst->width; x++) {
      int x0 = x * src->width / dst->width, x1 = (x + 1) * src->width / dst->width;
      int y0 = (int)((long)y * src->height / h), y1 = (int)((long)(y + 1) * src->height / h);
      for (int c = 0; c < 3; c++) {
        double s = 0;
        for (int yy = y0; yy < y1; yy++)
          for (int xx = x0; xx < x1; xx++) s += src->pixels[((size_t)yy * src->width + xx) * 3 + c];
        dst->pixels[((size_t)(y + top) * dst->width + x) * 3 + c] = (uint8_t)lrint(s / ((x1 - x0) * (y1 - y0)));
      }
    }
}

int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : "models/vision/images/sample6.jpg";
  mpass_options opts = {.n_threads = 2};
  mpass_ctx *ctx;
  mp_error *e = mpass_ctx_create(&opts, &ctx);
  mp_image full = {0}, img = {0};
  mp_person_finder pf;
  if (!e) e = mp_image_read(path, 3, &full);
  if (!e) e = mp_image_alloc(&img, 512, 768, 3);
  if (!e) e = mp_person_finder_load(ctx->models_dir, &pf);
  if (e) {
    fprintf(stderr, "bench_vision: %s\n", mp_error_message(e));
    return 1;
  }
  resize(&full, &img);
  const char *save = getenv("BENCH_VISION_SAVE"); /* write the 512x768 input, to look at with mpass detect */
  if (save && (e = mp_image_write_png(save, &img, NULL, NULL))) {
    fprintf(stderr, "bench_vision: %s\n", mp_error_message(e));
    return 1;
  }
  mp_tflite_profile(pf.landmark, true);
  double best = INFINITY, total = 0, cpu0 = cpu_now();
  int runs = 5, n = 0;
  for (int r = 0; r < runs; r++) {
    mp_person_result res;
    double t0 = mp_now();
    e = mp_persons_find(&pf, ctx->pool, &img, &res);
    double t = mp_now() - t0;
    if (e) {
      fprintf(stderr, "bench_vision: %s\n", mp_error_message(e));
      return 1;
    }
    n = res.n;
    if (r == runs - 1)
      printf("stages (last run): pose detector %.3f, faces %.3f, selfie %.3f, landmarks %.3f, masks %.3f, face crops %.3f s\n",
             res.seconds[0], res.seconds[1], res.seconds[2], res.seconds[3], res.seconds[4], res.seconds[5]);
    mp_person_result_free(&res);
    best = t < best ? t : best;
    total += t;
  }
  double cpu = (cpu_now() - cpu0) / runs;
  printf("persons+masks 512x768 (%s, %d persons), %d threads: best %.3f s, mean %.3f s over %d runs; %.3f CPU s per run\n",
         path, n, ctx->n_threads, best, total / runs, runs, cpu);
  char *prof = mp_tflite_profile_report(pf.landmark);
  printf("pose landmark model, all runs: %s\n", prof ? prof : "");
  free(prof);
  mp_person_finder_free(&pf);
  mp_image_free(&full);
  mp_image_free(&img);
  mpass_ctx_destroy(ctx);
  return 0;
}
