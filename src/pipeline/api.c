/* The public job API (include/mpass/mpass.h) over the parser, the planner and the plan executor. */
#include <stdlib.h>
#include <string.h>

#include "pipeline/run.h"
#include "prompt/document.h"
#include "prompt/plan.h"

struct mpass_job {
  mp_job *job;
  mp_plan *plan;
  char *document; /* as given, stored in every output PNG */
};

void mpass_job_free(mpass_job *j) {
  if (!j) return;
  mp_plan_free(j->plan);
  mp_job_free(j->job);
  free(j->document);
  free(j);
}

mpass_error *mpass_job_parse(const char *document, size_t len, int is_json, mpass_job **out) {
  *out = NULL;
  mpass_job *j = calloc(1, sizeof *j);
  if (!j || !(j->document = strndup(document, len))) {
    free(j);
    return mp_errorf("out of memory");
  }
  mp_error *e = is_json ? mp_job_parse_json(document, len, &j->job) : mp_job_parse_text(document, len, &j->job);
  if (!e) e = mp_plan_make(j->job, &j->plan);
  if (e) {
    mpass_job_free(j);
    return e;
  }
  *out = j;
  return NULL;
}

int mpass_job_warning_count(const mpass_job *j) { return j->job->n_warnings; }
const char *mpass_job_warning(const mpass_job *j, int i) { return i >= 0 && i < j->job->n_warnings ? j->job->warnings[i] : NULL; }
mpass_error *mpass_job_plan_json(const mpass_job *j, char **json) { return mp_plan_to_json(j->plan, json); }

mpass_error *mpass_run(mpass_ctx *ctx, const mpass_job *j, const mpass_run_options *o, char **job_dir) {
  mp_run_options ro = {.model_path = o->model_path, .out_dir = o->out_dir ? o->out_dir : "out", .job_name = o->job_name,
                       .base_dir = o->base_dir, .document = j->document, .debug_passes = o->debug_passes != 0,
                       .rng = MP_RNG_CUDA, .clip_skip = o->clip_skip, .progress = o->progress,
                       .progress_user = o->progress_user, .input_image = o->input_image,
                       .controlnet_model = o->controlnet_model, .tunes_root = o->tunes_dir,
                       .fetch_public_only = o->fetch_public_only != 0};
  if (o->rng) MP_TRY(mp_rng_parse(o->rng, &ro.rng));
  return mp_run_plan(ctx, j->plan, &ro, job_dir);
}
