/* The pass plan (SPEC.md §4): what the pipeline executes for a job, image by image.
 *
 * The plan borrows the job's strings: free the plan before the job. Its JSON form (docs/plan-json.md)
 * is the stable contract with the pipeline, which never re-reads the prompt text. */
#ifndef MP_PROMPT_PLAN_H
#define MP_PROMPT_PLAN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/error.h"
#include "prompt/document.h"

#define MP_PLAN_SCHEMA "mpass.plan/1"

/* How pass 1 makes the scene. */
typedef enum {
  MP_SCENE_TXT2IMG,    /* from noise */
  MP_SCENE_IMG2IMG,    /* from input_image at denoising_strength */
  MP_SCENE_INPAINT,    /* input_image repainted inside the mask (mask_image or --mask_prompt) */
  MP_SCENE_BACKGROUND, /* leading BREAK BREAK: input_image kept as it is, persons painted on it */
  MP_SCENE_INPUT       /* --only_upscale: input_image goes straight to the post steps */
} mp_scene_mode;

typedef struct {
  int person;               /* 0: pass 1 (the scene); k >= 1: person k */
  const mp_pass_text *text; /* prompt, negative, adapters, embeddings (borrowed from the job) */
  uint64_t seed;            /* scene: seed+i; person k: seed+i+k */
  double strength;          /* denoising strength: 1 for txt2img, 0 when nothing is sampled */
} mp_pass;

typedef enum {
  MP_POST_SUPER_RESOLUTION,
  MP_POST_TILED_UPSCALE,
  MP_POST_HIRES_FIX,
  MP_POST_INPAINT_FACES,
  MP_POST_COLOR_GRADING,
  MP_POST_FILM_GRAIN
} mp_post_kind;

/* SPEC §4.1: Real-ESRGAN's factor for an image of w x h: 4 below 512*512 pixels, else 2. */
int mp_super_resolution_scale(int w, int h);

typedef struct {
  mp_post_kind kind;
  /* super_resolution: mp_super_resolution_scale, 0 when the input image decides at run time.
   * tiled_upscale: the one upscale of the job (SPEC §4.2): the super-resolution factor (0: the input
   * image decides) when super_resolution is on, else 2. */
  int scale;
  bool esrgan;      /* tiled: upscale with Real-ESRGAN (super_resolution on), else a plain resize */
  double strength;  /* tiled: 1 - resemblance; hires_fix: hires_denoising_strength; faces: face_denoising_strength */
  double cfg_scale; /* tiled upscale and hires_fix: --hires_cfg_scale */
} mp_post_step;

typedef struct {
  const char *what;   /* "face_swap", "face_correct", "controlnet", "prompt_expansion", "faceid", "person passes" */
  const char *reason;
} mp_skipped;

typedef struct {
  int index;     /* i, 0-based */
  uint64_t seed; /* seed + i */
  mp_pass passes[1 + MP_MAX_PERSONS];
  int n_passes;
} mp_image_plan;

typedef struct {
  const mp_job *job;
  mp_scene_mode mode;
  mp_image_plan images[8];
  int n_images;
  mp_post_step post[6]; /* the same for every image, in SPEC §4 order */
  int n_post;
  mp_skipped skipped[8];
  int n_skipped;
  int final_width, final_height; /* the size of every output image; 0 when the input image decides */
} mp_plan;

mp_error *mp_plan_make(const mp_job *job, mp_plan **out);
void mp_plan_free(mp_plan *plan);

const char *mp_scene_mode_name(mp_scene_mode m);
const char *mp_post_name(mp_post_kind k);

/* The job, its warnings and the plan for people to read. */
void mp_plan_print(const mp_plan *plan, FILE *f);
/* The stable JSON document (schema MP_PLAN_SCHEMA, docs/plan-json.md). Caller frees *out with free(). */
mp_error *mp_plan_to_json(const mp_plan *plan, char **out);

#endif
