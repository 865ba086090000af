/* Conformance of the Real-ESRGAN upscaler (golden/esrgan/x4fast.json, x4plus.json).
 *
 * For every case of the manifest: decode the input PNG (checked against input_u8 and input), run
 * the plain network (output, output_u8, and the intermediate blob.* tensors), the padded pipeline
 * (prepad10.*) and, where the case names a tile size, the tiled pipeline (tile<N>.*) with the
 * realesrgan-ncnn-vulkan rule (10 px of context). Tolerances are the manifest's fp32 ones. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "io/image.h"
#include "models/esrgan.h"

/* manifest "tolerances.fp32_path" */
#define OUT_REL 1e-5  /* output, prepad10.output, tileN.output: rel L2 */
#define OUT_ABS 1e-4  /* ... and max abs, in [0,1] units (not scaled by the golden's range) */
#define BLOB_REL 3e-5 /* blob.*: rel L2 */
#define BLOB_ABS 1e-4 /* ... and max abs * max(1, max|golden|) */
#define U8_FRAC 0.001 /* *_u8: within +-1, at most 0.1 % of values off by one */

/* conform_check scales max abs by max(1, max|golden|); the output bound is absolute, so undo that. */
static void check_output(conform *c, const char *name, const float *got, int64_t n) {
  mp_tensor g;
  mp_error *e = conform_tensor_f32(c, name, &g);
  if (e) {
    conform_fail(c, name, "%s", mp_error_message(e));
    mp_error_free(e);
    return;
  }
  double gmax = 0;
  const float *r = g.data;
  for (int64_t i = 0; i < mp_tensor_numel(&g); i++) gmax = fmax(gmax, fabs(r[i]));
  mp_tensor_free(&g);
  conform_check(c, name, got, n, OUT_REL, OUT_ABS / fmax(1.0, gmax));
}

static bool has_tensor(conform *c, const char *name) {
  return c->golden && mp_weights_find(c->golden, name) != NULL;
}

/* planar [3, h, w] float -> interleaved u8 as the pipeline writes it */
static uint8_t *to_u8(const float *chw, int h, int w) {
  uint8_t *u = malloc((size_t)3 * h * w);
  if (!u) return NULL;
  for (int64_t i = 0; i < (int64_t)h * w; i++)
    for (int ch = 0; ch < 3; ch++) u[i * 3 + ch] = mp_esrgan_to_u8(chw[(int64_t)ch * h * w + i]);
  return u;
}

static void check_f32_and_u8(conform *c, const char *key, const char *variant, const float *out, int oh, int ow) {
  char name[256];
  snprintf(name, sizeof name, "%s.%s%soutput", key, variant, *variant ? "." : "");
  if (has_tensor(c, name)) check_output(c, name, out, (int64_t)3 * oh * ow);
  snprintf(name, sizeof name, "%s.%s%soutput_u8", key, variant, *variant ? "." : "");
  uint8_t *u = to_u8(out, oh, ow);
  if (!u) {
    conform_fail(c, name, "out of memory");
    return;
  }
  conform_check_u8(c, name, u, (int64_t)3 * oh * ow, U8_FRAC);
  free(u);
}

/* Intermediate blobs the golden holds for this case ("<key>.blob.<name>"), captured during the
 * plain forward and compared as they come. */
typedef struct {
  conform *c;
  const char *key;
} tap_ctx;

static void tap_blob(void *ctx, const char *blob, const float *data, int ch, int h, int w) {
  tap_ctx *t = ctx;
  char name[512];
  snprintf(name, sizeof name, "%s.blob.%s", t->key, blob);
  if (has_tensor(t->c, name)) conform_check(t->c, name, data, (int64_t)ch * h * w, BLOB_REL, BLOB_ABS);
}

static mp_error *run_case(conform *c, const mp_esrgan *m, const char *key, const cJSON *spec) {
  const cJSON *png = cJSON_GetObjectItemCaseSensitive(spec, "png");
  if (!cJSON_IsString(png)) return mp_errorf("case %s: no \"png\" input named", key);
  char rel[512], name[256];
  snprintf(rel, sizeof rel, "inputs/%s", png->valuestring);
  char *path = conform_path(c, rel);
  if (!path) return mp_errorf("out of memory");
  mp_image img;
  mp_error *e = mp_image_read(path, 3, &img);
  free(path);
  if (e) return e;
  const int h = img.height, w = img.width, s = mp_esrgan_scale(m);
  snprintf(name, sizeof name, "%s.input_u8", key);
  conform_check_u8(c, name, img.pixels, (int64_t)3 * h * w, 0.0);

  float *in = malloc((size_t)3 * h * w * sizeof *in), *out = malloc((size_t)3 * h * s * w * s * sizeof *out);
  if (!in || !out) {
    free(in), free(out), mp_image_free(&img);
    return mp_errorf("out of memory");
  }
  for (int64_t i = 0; i < (int64_t)h * w; i++)
    for (int ch = 0; ch < 3; ch++) in[(int64_t)ch * h * w + i] = (float)img.pixels[i * 3 + ch] / 255.0f;
  mp_image_free(&img);
  snprintf(name, sizeof name, "%s.input", key);
  conform_check(c, name, in, (int64_t)3 * h * w, 1e-7, 1e-7);

  mp_pool *pool = c->ctx->pool;
  tap_ctx tc = {c, key};
  mp_esrgan_tap tap = {tap_blob, &tc};
  e = mp_esrgan_forward(m, pool, in, h, w, out, &tap);
  if (!e) check_f32_and_u8(c, key, "", out, h * s, w * s);

  mp_esrgan_opts o = {.tile = 0, .border = MP_ESRGAN_BORDER, .context = MP_ESRGAN_BORDER};
  if (!e) e = mp_esrgan_upscale(m, pool, in, h, w, &o, out);
  if (!e) check_f32_and_u8(c, key, "prepad10", out, h * s, w * s);

  const cJSON *tile = cJSON_GetObjectItemCaseSensitive(spec, "tile");
  if (!e && cJSON_IsNumber(tile) && tile->valueint > 0) {
    char variant[32];
    snprintf(variant, sizeof variant, "tile%d", tile->valueint);
    o.tile = tile->valueint;
    e = mp_esrgan_upscale(m, pool, in, h, w, &o, out);
    if (!e) check_f32_and_u8(c, key, variant, out, h * s, w * s);
  }
  free(in);
  free(out);
  return e;
}

static mp_error *run_model(conform *c, const char *model) {
  mp_esrgan *m = NULL;
  MP_TRY(mp_esrgan_open_named(c->ctx->models_dir, model, &m));
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(c->manifest, "cases");
  mp_error *e = cJSON_IsObject(cases) ? NULL : mp_errorf("%s.json has no \"cases\" object", c->case_name);
  for (const cJSON *it = cases ? cases->child : NULL; it && !e; it = it->next)
    e = mp_error_wrap(run_case(c, m, it->string, it), "case %s", it->string);
  mp_esrgan_free(m);
  return e;
}

mp_error *conform_case_x4fast(conform *c) { return run_model(c, "x4fast"); }
mp_error *conform_case_x4plus(conform *c) { return run_model(c, "x4plus"); }
