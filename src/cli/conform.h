/* The conformance runner: compares mpass outputs with the reference outputs of a golden folder.
 *
 * A golden folder holds manifests `<case>.json` and tensors `<case>.safetensors`. Each case has a
 * handler here that reads its inputs from the golden tensors, runs mpass, and calls
 * conform_check* for every output; those print one line per tensor and record failures. */
#ifndef MP_CLI_CONFORM_H
#define MP_CLI_CONFORM_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/context.h"
#include "core/error.h"
#include "core/tensor.h"
#include "io/weights.h"

typedef struct conform {
  mpass_ctx *ctx;
  const char *dir;       /* the golden folder */
  const char *case_name; /* e.g. "te" */
  cJSON *manifest;       /* <case>.json */
  mp_weights *golden;    /* <case>.safetensors, NULL if the case has none */
  const char *dump_dir;  /* --dump: write our outputs here */
  const char *precision; /* --precision: "f32" (default) or "bf16" */
  const char *ckpt_override; /* --ckpt: replaces every manifest's "ckpt" (a file or a diffusers folder) */
  cJSON *bf16_floor;     /* bf16_floor.json's "rel_l2" (bf16 runs of a folder that has one): per-output bounds */
  int n_checked, n_failed;
  /* outputs kept for --dump */
  char **dump_names;
  mp_tensor *dump_tensors;
  size_t n_dump, cap_dump;
  /* the checkpoint the manifests name, loaded once per run */
  char *ckpt_path;
  mp_weights *ckpt;
} conform;

/* A golden tensor by name (error naming the file if absent). The view is valid for the case. */
mp_error *conform_tensor(conform *c, const char *name, const mp_tensor **out);
/* The golden tensor as a newly allocated f32 tensor. */
mp_error *conform_tensor_f32(conform *c, const char *name, mp_tensor *out);
/* A golden tensor that must be F32: its data and/or (for the shape) the tensor; either may be NULL. */
mp_error *conform_golden_f32(conform *c, const char *name, const float **data, const mp_tensor **t);
/* The LoRA file the manifest's lora.file names, opened (close it with mp_weights_close); *file is
 * that name as written, valid while the manifest is. */
mp_error *conform_open_lora(conform *c, mp_weights **lora, const char **file);
/* Path of a file named relative to the golden folder; caller frees. */
char *conform_path(const conform *c, const char *rel);
/* The checkpoint named by the manifest's "ckpt" field (or --ckpt), opened once and cached. */
mp_error *conform_checkpoint(conform *c, mp_weights **out);

/* The ControlNet the manifest's "controlnet_ckpt" names, and the folder's hint.png as [1, 3, H, W] u8/255
 * (conform_controlnet.c; the caller frees with mp_controlnet_free / mp_free). */
struct mp_controlnet;
mp_error *conform_controlnet_open(conform *c, struct mp_controlnet **out);
mp_error *conform_controlnet_hint(conform *c, float **hint, int *H, int *W);

/* Compare `got` (n floats) with golden tensor `name`: rel L2 <= tol_rel and
 * max abs <= tol_abs * max(1, max|golden|). Prints a line; returns true on PASS. */
bool conform_check(conform *c, const char *name, const float *got, int64_t n, double tol_rel, double tol_abs);
/* Exact comparison of integer outputs (token ids). */
bool conform_check_ids(conform *c, const char *name, const int32_t *got, int64_t n);
/* u8 images: exact except |Δ| <= 1 on at most frac_off_by_one of values. */
bool conform_check_u8(conform *c, const char *name, const uint8_t *got, int64_t n, double frac_off_by_one);
/* Record a failure that is not a tensor comparison (prints "name: FAIL (why)"). */
void conform_fail(conform *c, const char *name, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* fp32 tolerances of ../shared/golden/README.md */
#define CONFORM_FP32_REL 1e-4
#define CONFORM_FP32_ABS 1e-3

/* Case handlers (src/cli/conform_<family>.c). */
typedef mp_error *(*conform_case_fn)(conform *c);
mp_error *conform_case_tok(conform *c);
mp_error *conform_case_te(conform *c);
mp_error *conform_case_rng(conform *c);
mp_error *conform_case_txt2img(conform *c);
mp_error *conform_case_inpaint(conform *c);
mp_error *conform_case_unet(conform *c);
mp_error *conform_case_vae(conform *c);
mp_error *conform_case_lora(conform *c);
mp_error *conform_case_controlnet(conform *c);
mp_error *conform_case_x4fast(conform *c);
mp_error *conform_case_x4plus(conform *c);
mp_error *conform_case_pose_detection(conform *c);
mp_error *conform_case_pose_landmark_full(conform *c);
mp_error *conform_case_selfie_segmentation(conform *c);
mp_error *conform_case_face_detection_full_range(conform *c);
mp_error *conform_case_face_detection_full_range_sparse(conform *c);
/* SDXL checkpoints (src/cli/conform_xl.c); the vae and txt2img handlers serve both families. */
mp_error *conform_xl_case_te(conform *c);
mp_error *conform_xl_case_unet(conform *c);
mp_error *conform_xl_case_lora(conform *c);
/* Whether the checkpoint the case's manifest names is an SDXL one (false when it names none). */
bool conform_is_sdxl(conform *c);

#endif
