/* mpass detect IMAGE [--out DIR]: find every person (and face) and write
 *   persons.json    boxes, scores, mask file names, faces
 *   person-<k>.png  8-bit soft mask at image size, k = 1.. left to right
 *   overlay.png     the image with coloured masks, boxes and index numbers */
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/commands.h"
#include "core/context.h"
#include "core/tensor.h"
#include "io/image.h"
#include "models/person.h"

static const uint8_t palette[][3] = {{230, 25, 75}, {60, 180, 75}, {0, 130, 200}, {245, 130, 48}, {145, 30, 180},
                                     {70, 240, 240}, {240, 50, 230}, {210, 245, 60}, {255, 225, 25}, {0, 128, 128}};
#define N_PALETTE (int)(sizeof palette / sizeof *palette)

/* 3x5 digits, one row per 3 bits (MSB left). */
static const uint8_t digits[10][5] = {{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7}, {5, 5, 7, 1, 1},
                                      {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1}, {7, 5, 7, 5, 7}, {7, 5, 7, 1, 7}};

static void put(mp_image *im, int x, int y, const uint8_t *c) {
  if (x < 0 || y < 0 || x >= im->width || y >= im->height) return;
  memcpy(im->pixels + ((size_t)y * im->width + x) * 3, c, 3);
}

static void rect(mp_image *im, int x0, int y0, int x1, int y1, int t, const uint8_t *c) {
  for (int k = 0; k < t; k++)
    for (int x = x0; x <= x1; x++) put(im, x, y0 + k, c), put(im, x, y1 - k, c);
  for (int k = 0; k < t; k++)
    for (int y = y0; y <= y1; y++) put(im, x0 + k, y, c), put(im, x1 - k, y, c);
}

static void fill(mp_image *im, int x0, int y0, int x1, int y1, const uint8_t *c) {
  for (int y = y0; y < y1; y++)
    for (int x = x0; x < x1; x++) put(im, x, y, c);
}

static void number(mp_image *im, int x, int y, int value, int scale, const uint8_t *fg) {
  char s[16];
  int n = snprintf(s, sizeof s, "%d", value);
  static const uint8_t black[3] = {0, 0, 0};
  fill(im, x, y, x + (n * 4 + 1) * scale, y + 7 * scale, black);
  for (int i = 0; i < n; i++)
    for (int r = 0; r < 5; r++)
      for (int b = 0; b < 3; b++)
        if (digits[s[i] - '0'][r] & (4 >> b))
          fill(im, x + (1 + i * 4 + b) * scale, y + (1 + r) * scale, x + (2 + i * 4 + b) * scale, y + (2 + r) * scale, fg);
}

static mp_error *write_outputs(const char *dir, const char *image_path, const mp_image *img, const mp_person_result *r) {
  char path[4096];
  mp_image m = {0}, ov = {0};
  MP_TRY(mp_image_alloc(&m, img->width, img->height, 1));
  mp_error *e = mp_image_alloc(&ov, img->width, img->height, 3);
  size_t npix = (size_t)img->width * img->height;
  if (!e) memcpy(ov.pixels, img->pixels, npix * 3);
  cJSON *root = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(root, "persons");
  cJSON_AddStringToObject(root, "image", image_path);
  cJSON_AddNumberToObject(root, "width", img->width);
  cJSON_AddNumberToObject(root, "height", img->height);
  for (int i = 0; !e && i < r->n; i++) {
    const mp_person *p = &r->persons[i];
    for (size_t k = 0; k < npix; k++) m.pixels[k] = (uint8_t)lrintf(fminf(fmaxf(p->mask[k], 0.0f), 1.0f) * 255.0f);
    snprintf(path, sizeof path, "%s/person-%d.png", dir, i + 1);
    e = mp_image_write_png(path, &m, NULL, NULL);
    const uint8_t *c = palette[i % N_PALETTE];
    for (size_t k = 0; k < npix; k++) {
      float a = 0.5f * p->mask[k];
      for (int ch = 0; ch < 3; ch++) ov.pixels[k * 3 + ch] = (uint8_t)lrintf(ov.pixels[k * 3 + ch] * (1 - a) + c[ch] * a);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "index", i + 1);
    cJSON *box = cJSON_AddArrayToObject(o, "box");
    float b[4] = {p->x0, p->y0, p->x1, p->y1};
    for (int k = 0; k < 4; k++) cJSON_AddItemToArray(box, cJSON_CreateNumber(b[k]));
    cJSON_AddNumberToObject(o, "score", p->score);
    cJSON_AddNumberToObject(o, "pose_presence", p->presence);
    cJSON_AddStringToObject(o, "found_by", p->source == MP_PERSON_FROM_POSE ? "pose_detector" : "face");
    snprintf(path, sizeof path, "person-%d.png", i + 1);
    cJSON_AddStringToObject(o, "mask", path);
    cJSON_AddItemToArray(arr, o);
  }
  int t = img->width / 400 + 2, scale = img->width / 160 + 3;
  for (int i = 0; !e && i < r->n; i++) {
    const mp_person *p = &r->persons[i];
    rect(&ov, (int)p->x0, (int)p->y0, (int)p->x1 - 1, (int)p->y1 - 1, t, palette[i % N_PALETTE]);
    number(&ov, (int)p->x0 + t, (int)p->y0 + t, i + 1, scale, palette[i % N_PALETTE]);
  }
  cJSON *faces = cJSON_AddArrayToObject(root, "faces");
  static const uint8_t white[3] = {255, 255, 255};
  for (int f = 0; !e && f < r->n_faces; f++) {
    const mp_detection *d = &r->faces[f];
    cJSON *o = cJSON_CreateObject(), *box = cJSON_AddArrayToObject(o, "box");
    float b[4] = {d->xmin, d->ymin, d->xmin + d->w, d->ymin + d->h};
    for (int k = 0; k < 4; k++) cJSON_AddItemToArray(box, cJSON_CreateNumber(b[k]));
    cJSON_AddNumberToObject(o, "score", d->score);
    cJSON *kps = cJSON_AddArrayToObject(o, "keypoints");
    for (int k = 0; k < d->n_kp; k++) {
      cJSON *kp = cJSON_CreateArray();
      cJSON_AddItemToArray(kp, cJSON_CreateNumber(d->kp[k][0]));
      cJSON_AddItemToArray(kp, cJSON_CreateNumber(d->kp[k][1]));
      cJSON_AddItemToArray(kps, kp);
    }
    cJSON_AddNumberToObject(o, "person", r->face_person[f] >= 0 ? r->face_person[f] + 1 : 0);
    cJSON_AddItemToArray(faces, o);
    rect(&ov, (int)b[0], (int)b[1], (int)b[2], (int)b[3], t / 2 + 1, white);
  }
  if (!e) {
    snprintf(path, sizeof path, "%s/overlay.png", dir);
    e = mp_image_write_png(path, &ov, NULL, NULL);
  }
  if (!e) {
    snprintf(path, sizeof path, "%s/persons.json", dir);
    char *txt = cJSON_Print(root);
    FILE *f = fopen(path, "wb");
    if (!f || !txt || fputs(txt, f) < 0) e = mp_errorf("cannot write %s: %s", path, strerror(errno));
    if (f) fclose(f);
    free(txt);
  }
  cJSON_Delete(root);
  mp_image_free(&m);
  mp_image_free(&ov);
  return e;
}

static void usage(FILE *f) {
  fprintf(f, "usage: mpass detect IMAGE [--out DIR]\n"
             "  find persons and faces (MediaPipe): writes persons.json, person-<k>.png masks and overlay.png to DIR\n");
}

int cmd_detect(mpass_ctx *ctx, int argc, char **argv) {
  static const struct option longopts[] = {{"out", required_argument, 0, 'o'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *out = ".";
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    if (opt == 'o') out = optarg;
    else if (opt == 'h') {
      usage(stdout);
      return 0;
    } else {
      usage(stderr);
      return 2;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  const char *image_path = argv[optind];
  if (mkdir(out, 0755) != 0 && errno != EEXIST) return cli_fail("detect", mp_errorf("cannot create %s: %s", out, strerror(errno)));
  mp_image img = {0};
  mp_error *e = mp_image_read(image_path, 3, &img);
  mp_person_finder pf;
  if (!e) e = mp_person_finder_load(ctx->models_dir, &pf);
  else return cli_fail("detect", e);
  if (e) {
    mp_image_free(&img);
    return cli_fail("detect", e);
  }
  mp_person_result r;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  e = mp_persons_find(&pf, ctx->pool, &img, &r);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (!e) {
    e = write_outputs(out, image_path, &img, &r);
    printf("%d persons, %d faces in %.2f s -> %s/persons.json\n", r.n, r.n_faces,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec), out);
    mp_person_result_free(&r);
  }
  mp_person_finder_free(&pf);
  mp_image_free(&img);
  return e ? cli_fail("detect", e) : 0;
}
