/* Progress of a job: which image, which pass, which step, how fast, how long to go.
 *
 * The pipeline reports through one callback (mpass_progress_fn). This module keeps the clock and
 * turns sampler steps into "image 1/4 · person 2 · step 12/30 · 1.23 s/it · ETA 0:15" lines. */
#ifndef MP_PIPELINE_PROGRESS_H
#define MP_PIPELINE_PROGRESS_H

#include <stdbool.h>
#include <stdio.h>

#include "core/clock.h"
#include "mpass/mpass.h"

typedef struct {
  mpass_progress_fn fn;
  void *user;
  mpass_progress cur;
  double job_start, pass_start;
  double steps_start; /* s/it and ETA count from here: the pass start, then the start of sampling */
  bool cancelled;
} mp_progress;

void mp_progress_init(mp_progress *p, mpass_progress_fn fn, void *user, int n_images);
/* A new pass (image index 0-based; name like "scene", "person 2", "hires fix"); n_steps may be 0. */
void mp_progress_pass(mp_progress *p, int image, const char *pass, int n_steps);
/* The same for a pass that draws an image of width x height (a diffusion pass). */
void mp_progress_pass_sized(mp_progress *p, int image, const char *pass, int n_steps, int width, int height);
/* The pass's set-up (conditioning, LoRA, image encode) is done and its sampler starts: s/it and ETA
 * count its steps from here, so the first step's figure is not inflated by the set-up. */
void mp_progress_sampling_starts(mp_progress *p);
/* The pass ran one more model (UNet) evaluation; reported with the next step. */
void mp_progress_evaluation(mp_progress *p);
/* A sampler step finished (1-based). Returns true when the caller asked to cancel. */
bool mp_progress_step(mp_progress *p, int step);
/* True once the callback asked to cancel. */
bool mp_progress_cancelled(const mp_progress *p);

/* The standard one-line rendering of a progress report (what the CLI prints). */
void mp_progress_format(const mpass_progress *p, char *buf, size_t cap);

#endif
