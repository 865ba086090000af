/* Executing a pass plan (SPEC.md §4): scene, persons, post steps, outputs.
 *
 *   plan ─▶ for each image i:
 *             scene      txt2img / img2img / inpaint / the input image as background
 *             persons    find persons; person k repainted in its own crop through its blurred mask
 *             post       super resolution → tiled upscale → hires fix → faces → grading → grain
 *             write      <out>/<job>/<i>.png with AUTOMATIC1111 "parameters" (+ the whole document)
 *         ─▶ <out>/<job>/result.json
 *
 * Outputs are built in a hidden folder beside the final one and renamed into place when the job
 * is done, so a failed or cancelled job leaves no partial output. */
#ifndef MP_PIPELINE_RUN_H
#define MP_PIPELINE_RUN_H

#include <stdbool.h>

#include "core/context.h"
#include "prompt/plan.h"
#include "sampling/noise.h"

typedef struct {
  const char *model_path; /* NULL: the first checkpoint in <models>/checkpoints */
  const char *out_dir;    /* the job's folder is <out_dir>/<job_name> */
  const char *job_name;   /* NULL: "<seed>-<UTC time>" */
  const char *base_dir;   /* relative input_image / mask_image paths resolve here (the prompt file's folder) */
  const char *input_image; /* replaces the document's input_image (not resolved against base_dir); may be NULL */
  const char *document;   /* the prompt document as given, stored in every PNG */
  const char *vocab;      /* NULL: the usual search (docs/tokenizer.md) */
  const char *controlnet_model; /* controlnet=: this ControlNet file instead of the one found by type (NULL: search) */
  bool debug_passes;      /* also write every intermediate image and a contact sheet per image */
  mp_rng_kind rng;
  int clip_skip; /* 0 or 1: last layer; 2: penultimate */
  mpass_progress_fn progress;
  void *progress_user;
  const char *tunes_root; /* holds tunes/<id>/ for <lora:ID>; NULL: the models folder */
  bool fetch_public_only; /* input_image_url / mask_image_url may not name private or loopback addresses */
} mp_run_options;

/* Run the plan. On success *job_dir (may be NULL) gets the output folder (caller frees). */
mp_error *mp_run_plan(mpass_ctx *ctx, const mp_plan *plan, const mp_run_options *opts, char **job_dir);

#endif
