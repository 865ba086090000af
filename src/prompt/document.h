/* The prompt document (SPEC.md §1): text form and JSON API form -> one mp_job.
 *
 * The parser is a pure function of its input bytes (plus one call to the OS entropy source when no
 * seed is given). It validates everything: every error names the line and column and says what was
 * expected and what was found; recoverable oddities become warnings collected in the job. */
#ifndef MP_PROMPT_DOCUMENT_H
#define MP_PROMPT_DOCUMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define MP_MAX_PERSONS 8
#define MP_MAX_SECTIONS (2 + MP_MAX_PERSONS)
/* Documents larger than this are refused outright (a prompt is text a person wrote). */
#define MP_MAX_DOCUMENT_BYTES (4u << 20)
/* Tags (<lora>, <faceid>, <embedding>) in one section, and warnings kept (one more says "more follow"). */
#define MP_MAX_TAGS 64
#define MP_MAX_WARNINGS 32

typedef enum {
  MP_SCHED_EULER,
  MP_SCHED_EULER_A,
  MP_SCHED_DPMPP_2M,
  MP_SCHED_DPMPP_2M_KARRAS,
  MP_SCHED_DPMPP_SDE,
  MP_SCHED_DPMPP_SDE_KARRAS,
  MP_SCHED_LCM,
  MP_SCHED_TCD,
  MP_SCHED_DDIM,
  MP_SCHED_COUNT
} mp_scheduler;

typedef enum { MP_AR_NONE, MP_AR_1_1, MP_AR_PORTRAIT, MP_AR_16_9, MP_AR_LANDSCAPE } mp_aspect;
typedef enum { MP_GRADING_NONE, MP_GRADING_VELVIA, MP_GRADING_PORTRA, MP_GRADING_EKTAR } mp_grading;

/* <lora:ID:W> or <faceid:ID:W>. ID is a tune id or a LoRA file name; resolved by the pipeline. */
typedef enum { MP_ADAPTER_LORA, MP_ADAPTER_FACEID } mp_adapter_kind;
typedef struct {
  mp_adapter_kind kind;
  char *id;
  double weight;
} mp_adapter;

/* One BREAK-separated section after flags and tags are taken out.
 * `text`: trimmed, whitespace runs collapsed to one space, <lora>/<faceid> tags removed. An embedding
 * tag <name> loses its brackets: the bare name stays where it was written so the conditioning puts
 * the embedding's vectors there (AUTOMATIC1111 finds embedding names in the text the same way); the
 * names are also listed in `embeddings`. `\<` is a literal `<`. */
typedef struct {
  char *text;
  mp_adapter *adapters;
  int n_adapters;
  char **embeddings;
  int n_embeddings;
} mp_section;

/* The composed prompt of one pass (§1.2 composition, §1.3 negatives). */
typedef struct {
  char *prompt;
  char *negative;
  mp_adapter *adapters; /* own section first, then common */
  int n_adapters;
  char **embeddings; /* every <name> in prompt and negative, in order of appearance, no repeats */
  int n_embeddings;
} mp_pass_text;

typedef struct {
  /* §1.1 parameters */
  char *text;            /* as given */
  char *negative_prompt; /* as given ("" when absent) */
  int num_images;
  uint32_t seed;
  bool seed_random; /* no seed given: `seed` was drawn from the OS entropy source; report it */
  int steps;
  double cfg_scale;
  int width, height;   /* 0 and 0 when the size comes from the input image */
  bool size_given;     /* w or h given */
  mp_aspect ar;        /* as given (MP_AR_NONE when absent) */
  bool ar_used;        /* ar decided the size */
  mp_scheduler scheduler;
  bool use_lpw;
  double denoising_strength;
  char *input_image, *input_image_url, *mask_image, *mask_image_url; /* NULL when absent */
  bool super_resolution, hires_fix, inpaint_faces, film_grain;
  mp_grading color_grading;
  bool face_correct, face_swap;
  char *controlnet; /* NULL when absent */
  double controlnet_conditioning_scale;
  bool controlnet_txt2img;
  bool prompt_expansion;
  char *callback;
  char *base_model; /* SPEC §1.1: pass 1's checkpoint (file name in checkpoints/ or a checkpoint tune id); NULL: the default */

  /* §1.2 flags */
  struct {
    bool tiled_upscale;
    bool hires_cfg_scale_given;
    double hires_cfg_scale; /* 5.5 */
    bool resemblance_given;
    double resemblance; /* 0.65 */
    bool hires_denoising_strength_given;
    double hires_denoising_strength; /* 0.4 */
    bool only_upscale;
    char *mask_prompt; /* NULL when absent */
    bool mask_invert;
    bool mask_dilate_given;
    int mask_dilate;
    bool mask_dilate_percent;
    bool person_denoising_strength_given;
    double person_denoising_strength; /* 0.65 */
    bool face_denoising_strength_given;
    double face_denoising_strength; /* 0.5 */
    bool person_layout_none; /* --person_layout none: no built-in pose layout for controlnet=pose without an input */
  } flags;
  int n_flags; /* how many known flags the text carried */

  /* §1.2 sections: 1 = single pass, 2 = base + common, >= 3 = base, common, persons */
  mp_section sections[MP_MAX_SECTIONS];
  int n_sections;
  int n_persons;
  bool keep_background; /* leading BREAK BREAK with an input image */

  /* §1.3 negative sections: 1 when the negative has no BREAK */
  mp_section neg_sections[MP_MAX_SECTIONS];
  int n_neg_sections;

  /* composed: [0] = pass 1 (scene), [k] = person k (1-based) */
  mp_pass_text passes[1 + MP_MAX_PERSONS];

  char **embeddings; /* every distinct embedding name of the job */
  int n_embeddings;

  char **warnings;
  int n_warnings;
} mp_job;

/* Parse the text form (SPEC §1, "Text form"). `len` bytes, need not be NUL-terminated.
 * On success *out is a new job the caller frees with mp_job_free. */
mp_error *mp_job_parse_text(const char *doc, size_t len, mp_job **out);

/* Parse the JSON API form {"prompt": {"text": ..., ...}} (a bare {"text": ...} object is accepted too). */
mp_error *mp_job_parse_json(const char *doc, size_t len, mp_job **out);

void mp_job_free(mp_job *job);

const char *mp_scheduler_name(mp_scheduler s);
const char *mp_aspect_name(mp_aspect a);
const char *mp_grading_name(mp_grading g); /* NULL for none */

#endif
