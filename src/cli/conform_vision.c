/* Conformance cases of the vision models (../shared/golden/vision): the five MediaPipe TFLite
 * files run by io/tflite on the stored inputs, each output compared element by element with
 * |got - ref| <= atol + rtol*|ref| (tolerances per output from the manifest; *_photo_cases for
 * the photo inputs), plus the detectors' post-processing against expected_postprocessed. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "core/context.h"
#include "io/tflite.h"
#include "models/face.h"
#include "models/model_files.h"
#include "models/person.h"

static double jnum(const cJSON *o, const char *k, double def) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? v->valuedouble : def;
}

/* Element-wise check; sigmoid compares sigmoid(got) with sigmoid(ref). */
static bool check_elementwise(conform *c, const char *name, const char *label, const float *got, int64_t n, double atol,
                              double rtol, bool sigmoid) {
  const mp_tensor *g0 = NULL;
  mp_error *e = conform_tensor(c, name, &g0);
  if (e) {
    conform_fail(c, name, "%s", mp_error_message(e));
    mp_error_free(e);
    return false;
  }
  mp_tensor g;
  if ((e = mp_tensor_to_f32(g0, &g))) {
    conform_fail(c, name, "%s", mp_error_message(e));
    mp_error_free(e);
    return false;
  }
  c->n_checked++;
  bool pass = mp_tensor_numel(&g) == n;
  double maxabs = 0, worst = 0;
  int64_t bad = 0;
  const float *r = g.data;
  for (int64_t i = 0; pass && i < n; i++) {
    double a = got[i], b = r[i];
    if (sigmoid) a = 1 / (1 + exp(-a)), b = 1 / (1 + exp(-b));
    double d = fabs(a - b), tol = atol + rtol * fabs(b);
    if (!(d <= tol)) bad++;
    maxabs = d > maxabs ? d : maxabs;
    worst = d / tol > worst ? d / tol : worst;
  }
  pass = pass && bad == 0;
  printf("%-44s max_abs=%-10.3g worst/tol=%-8.3g tol(atol=%g, rtol=%g)%s  %s\n", label, maxabs, worst, atol, rtol,
         sigmoid ? " sigmoid" : "", pass ? "PASS" : "FAIL");
  if (!pass) c->n_failed++;
  mp_tensor_free(&g);
  return pass;
}

static mp_error *open_model(conform *c, const char *file, mp_tflite **m) {
  char *path = NULL;
  MP_TRY(mp_find_model_file(c->ctx->models_dir, "vision", file, &path));
  mp_error *e = mp_tflite_open(path, m);
  free(path);
  return e;
}

/* Compare our post-processed detections with the manifest's expected list. Tolerances: the raw
 * outputs may differ by their manifest tolerance (boxes 0.01 + 1% in 224/192-pixel units); that
 * moves a normalised coordinate by well under 2e-3, a score by under 1e-4. */
static void check_detections(conform *c, const char *label, const mp_detection *d, int n, const cJSON *expect) {
  char name[128];
  snprintf(name, sizeof name, "%s.detections", label);
  int ne = cJSON_GetArraySize(expect);
  c->n_checked++;
  if (ne != n) {
    printf("%-44s found %d, expected %d  FAIL\n", name, n, ne);
    c->n_failed++;
    return;
  }
  double worst_xy = 0, worst_s = 0;
  int merged_bad = 0;
  for (int i = 0; i < n; i++) {
    const cJSON *x = cJSON_GetArrayItem(expect, i);
    worst_s = fmax(worst_s, fabs(d[i].score - jnum(x, "score", NAN)));
    worst_xy = fmax(worst_xy, fabs(d[i].xmin - jnum(x, "xmin", NAN)));
    worst_xy = fmax(worst_xy, fabs(d[i].ymin - jnum(x, "ymin", NAN)));
    worst_xy = fmax(worst_xy, fabs(d[i].w - jnum(x, "width", NAN)));
    worst_xy = fmax(worst_xy, fabs(d[i].h - jnum(x, "height", NAN)));
    const cJSON *kps = cJSON_GetObjectItemCaseSensitive(x, "keypoints");
    for (int k = 0; k < d[i].n_kp && k < cJSON_GetArraySize(kps); k++) {
      const cJSON *kp = cJSON_GetArrayItem(kps, k);
      worst_xy = fmax(worst_xy, fabs(d[i].kp[k][0] - cJSON_GetArrayItem(kp, 0)->valuedouble));
      worst_xy = fmax(worst_xy, fabs(d[i].kp[k][1] - cJSON_GetArrayItem(kp, 1)->valuedouble));
    }
    merged_bad += d[i].merged != (int)jnum(x, "merged_candidates", -1);
  }
  bool pass = worst_xy <= 2e-3 && worst_s <= 1e-4 && merged_bad == 0;
  printf("%-44s n=%d coord_max_abs=%-9.3g score_max_abs=%-9.3g merged_mismatch=%d  %s\n", name, n, worst_xy, worst_s,
         merged_bad, pass ? "PASS" : "FAIL");
  if (!pass) c->n_failed++;
}

static void check_pose_rois(conform *c, const char *label, const mp_detection *d_tensor, int n, const cJSON *pad,
                            const cJSON *cs, const cJSON *expect) {
  char name[128];
  snprintf(name, sizeof name, "%s.rois", label);
  c->n_checked++;
  const cJSON *isz = cJSON_GetObjectItemCaseSensitive(cs, "image_size");
  double W = cJSON_GetArrayItem(isz, 0)->valuedouble, H = cJSON_GetArrayItem(isz, 1)->valuedouble;
  double pl = jnum(pad, "left", 0), pt = jnum(pad, "top", 0), pr = jnum(pad, "right", 0), pb = jnum(pad, "bottom", 0);
  double worst = 0, worst_rot = 0;
  if (cJSON_GetArraySize(expect) != n) worst = INFINITY;
  for (int i = 0; i < n && isfinite(worst); i++) {
    mp_detection d = d_tensor[i]; /* letterbox removal, then pixels */
    for (int k = 0; k < d.n_kp; k++) {
      d.kp[k][0] = (float)((d.kp[k][0] - pl) / (1 - pl - pr) * W);
      d.kp[k][1] = (float)((d.kp[k][1] - pt) / (1 - pt - pb) * H);
    }
    mp_rotated_roi r = mp_pose_roi(&d);
    const cJSON *x = cJSON_GetArrayItem(expect, i), *cp = cJSON_GetObjectItemCaseSensitive(x, "center_px");
    double side = jnum(x, "side_px", NAN);
    worst = fmax(worst, fabs(r.cx - cJSON_GetArrayItem(cp, 0)->valuedouble) / side);
    worst = fmax(worst, fabs(r.cy - cJSON_GetArrayItem(cp, 1)->valuedouble) / side);
    worst = fmax(worst, fabs(r.side - side) / side);
    worst_rot = fmax(worst_rot, fabs(r.rotation - jnum(x, "rotation_rad", NAN)));
  }
  bool pass = worst <= 5e-3 && worst_rot <= 5e-3;
  printf("%-44s rel_max=%-9.3g rotation_max_abs=%-9.3g  %s\n", name, worst, worst_rot, pass ? "PASS" : "FAIL");
  if (!pass) c->n_failed++;
}

typedef enum { POST_NONE, POST_POSE, POST_FACE } post_kind;

static mp_error *run_model_cases(conform *c, const char *file, post_kind post) {
  mp_tflite *m = NULL;
  MP_TRY(open_model(c, file, &m));
  const cJSON *cases = cJSON_GetObjectItemCaseSensitive(c->manifest, "cases");
  const cJSON *outputs = cJSON_GetObjectItemCaseSensitive(c->manifest, "outputs");
  const cJSON *tols = cJSON_GetObjectItemCaseSensitive(c->manifest, "tolerance");
  const cJSON *expected = cJSON_GetObjectItemCaseSensitive(c->manifest, "expected_postprocessed");
  mp_error *e = NULL;
  if (!cJSON_IsObject(cases) || !cJSON_IsObject(outputs) || !cJSON_IsObject(tols))
    e = mp_errorf("%s.json: cases/outputs/tolerance missing", c->case_name);
  float anchors[2304 * 4];
  mp_face_detector fd = {0};
  if (!e && post == POST_FACE) { /* anchors and decode of the face detector (model loaded once more: cheap) */
    char *path = NULL;
    e = mp_find_model_file(c->ctx->models_dir, "vision", file, &path);
    if (!e) e = mp_face_detector_load(path, &fd);
    free(path);
  }
  if (!e && post == POST_POSE && mp_pose_anchors(anchors, 2304) != 2254) e = mp_errorf("pose anchors");
  const cJSON *cs;
  cJSON_ArrayForEach(cs, cases) {
    if (e) break;
    const char *cname = cs->string;
    bool photo = strcmp(cname, "random") != 0;
    char name[256];
    snprintf(name, sizeof name, "%s.input", cname);
    mp_tensor in;
    if ((e = conform_tensor_f32(c, name, &in))) break;
    if (mp_tensor_numel(&in) != mp_tflite_input_numel(m, 0)) {
      e = mp_errorf("%s has %lld values, the model takes %lld", name, (long long)mp_tensor_numel(&in), (long long)mp_tflite_input_numel(m, 0));
      mp_tensor_free(&in);
      break;
    }
    const float *inputs[1] = {in.data};
    e = mp_tflite_run(m, c->ctx->pool, inputs);
    mp_tensor_free(&in);
    if (e) break;
    const cJSON *out;
    cJSON_ArrayForEach(out, outputs) {
      const char *oname = out->string;
      int64_t n = 0;
      const float *got = mp_tflite_output_by_name(m, oname, &n);
      snprintf(name, sizeof name, "%s.%s", cname, oname);
      if (!got) {
        conform_fail(c, name, "the model has no output named %s", oname);
        continue;
      }
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(tols, oname);
      double atol = jnum(t, photo ? "atol_photo_cases" : "atol", jnum(t, "atol", 0));
      double rtol = jnum(t, photo ? "rtol_photo_cases" : "rtol", jnum(t, "rtol", 0));
      check_elementwise(c, name, name, got, n, atol, rtol, false);
      char sname[160];
      snprintf(sname, sizeof sname, "%s_sigmoid", oname);
      const cJSON *ts = cJSON_GetObjectItemCaseSensitive(tols, sname);
      if (ts) {
        char label[300];
        snprintf(label, sizeof label, "%s.%s", cname, sname);
        check_elementwise(c, name, label, got, n, jnum(ts, "atol", 0), 0, true);
      }
    }
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(expected, cname);
    const cJSON *nms = cJSON_GetObjectItemCaseSensitive(ex, "after_nms_tensor_coords");
    if (post != POST_NONE && nms) {
      mp_detection dets[2304];
      int n;
      if (post == POST_POSE)
        n = mp_pose_postprocess(anchors, mp_tflite_output_by_name(m, "Identity", NULL), mp_tflite_output_by_name(m, "Identity_1", NULL), dets, 2304);
      else
        n = mp_face_postprocess(&fd, mp_tflite_output_by_name(m, fd.out_boxes, NULL), mp_tflite_output_by_name(m, fd.out_scores, NULL), dets, 2304);
      check_detections(c, cname, dets, n, nms);
      const cJSON *rois = cJSON_GetObjectItemCaseSensitive(ex, "rois");
      if (post == POST_POSE && rois)
        check_pose_rois(c, cname, dets, n, cJSON_GetObjectItemCaseSensitive(ex, "letterbox_padding"), cs, rois);
    }
  }
  if (fd.model) mp_face_detector_free(&fd);
  mp_tflite_close(m);
  return e;
}

mp_error *conform_case_pose_detection(conform *c) { return run_model_cases(c, "pose_solution_packed_assets.data", POST_POSE); }
mp_error *conform_case_pose_landmark_full(conform *c) { return run_model_cases(c, "pose_landmark_full.tflite", POST_NONE); }
mp_error *conform_case_selfie_segmentation(conform *c) { return run_model_cases(c, "selfie_segmentation.tflite", POST_NONE); }
mp_error *conform_case_face_detection_full_range(conform *c) {
  return run_model_cases(c, "face_detection_full_range.tflite", POST_FACE);
}
mp_error *conform_case_face_detection_full_range_sparse(conform *c) {
  return run_model_cases(c, "face_detection_full_range_sparse.tflite", POST_FACE);
}
