/* libmpass — multi-pass Stable Diffusion inference.
 *
 * The public API is small: a context that owns threads, loaded models and caches; and calls that
 * run work on it. Every call that can fail returns an mpass_error (NULL = success) that the
 * caller frees with mpass_error_free after reading mpass_error_message. */
#ifndef MPASS_H
#define MPASS_H

#ifdef __cplusplus
extern "C" {
#endif

#include <stddef.h>

#define MPASS_VERSION "0.1.0"

typedef struct mp_error mpass_error;
typedef struct mpass_ctx mpass_ctx;

/* Arithmetic of the models' convolutions and linear layers. AUTO: bf16 where the CPU has native
 * bf16 arithmetic (AVX-512 BF16 or AMX), else f32. Accumulation and norm statistics are f32 in both. */
typedef enum { MPASS_PRECISION_AUTO = 0, MPASS_PRECISION_F32, MPASS_PRECISION_BF16 } mpass_precision;

typedef struct {
  int n_threads;          /* <= 0: one per CPU */
  const char *models_dir; /* NULL: $MPASS_MODELS, else ./models */
  const char *data_dir;   /* where the CLIP vocabulary lives; NULL: search (see README) */
  mpass_precision precision; /* AUTO (0) by default */
  int no_cache;              /* nonzero: do not keep packed bf16 weights on disk (also $MPASS_NO_CACHE=1) */
  int keep_models;           /* nonzero: keep a job's checkpoints loaded for the next job on this context (a server's
                                workers); they are reopened only when the files change. 0: each job loads its own */
} mpass_options;

mpass_error *mpass_ctx_create(const mpass_options *opts, mpass_ctx **out);
void mpass_ctx_destroy(mpass_ctx *ctx);
/* The precision the context resolved AUTO to: "f32" or "bf16". */
const char *mpass_ctx_precision(const mpass_ctx *ctx);
/* Where warnings that belong to no job go (e.g. a damaged pack-cache file that is being rebuilt); by
 * default they are dropped. */
void mpass_ctx_set_warning_handler(mpass_ctx *ctx, void (*fn)(void *ud, const char *message), void *ud);
/* One line saying what runs the arithmetic, e.g. "precision bf16 (oneDNN, CPU: avx512_bf16), 2 threads". */
const char *mpass_ctx_describe(const mpass_ctx *ctx, char *buf, unsigned cap);

/* ---- Progress and cancellation ---- */

/* One progress report: sent at the start of every pass and after every sampler step. */
typedef struct {
  int image, n_images;   /* 0-based image index, images in the job */
  const char *pass;      /* "scene", "person 1", "faces", "hires fix", "tiled upscale", ... */
  int step, n_steps;     /* 0 at the start of a pass; n_steps is 0 for passes without sampler steps */
  double sec_per_it;     /* seconds per step so far in this pass (0 until known) */
  double eta_seconds;    /* to the end of this pass (negative when unknown) */
  double elapsed_seconds; /* since the job started */
  int width, height;     /* the pass's image size; 0 for passes that draw nothing (finding persons, grading) */
  int evaluations;       /* model (UNet) evaluations so far in this pass: one per denoiser call, CFG halves together */
} mpass_progress;

/* Return non-zero to cancel: the job stops within one sampler step and leaves no partial outputs. */
typedef int (*mpass_progress_fn)(const mpass_progress *p, void *user);

/* ---- Jobs: a prompt document, parsed and planned, then run ---- */

typedef struct mpass_job mpass_job;

/* Parse a prompt document (SPEC.md §1): the text form, or the JSON API form when is_json.
 * Errors name the line and column. Warnings (ignored keys, unknown flags) are in the job. */
mpass_error *mpass_job_parse(const char *document, size_t len, int is_json, mpass_job **out);
void mpass_job_free(mpass_job *job);
int mpass_job_warning_count(const mpass_job *job);
const char *mpass_job_warning(const mpass_job *job, int i);
/* The pass plan as the stable JSON document of docs/plan-json.md (caller frees with free()). */
mpass_error *mpass_job_plan_json(const mpass_job *job, char **json);

typedef struct {
  const char *model_path; /* NULL: the first checkpoint in <models>/checkpoints */
  const char *out_dir;    /* NULL: "out"; the job writes <out_dir>/<job_name>/ */
  const char *job_name;   /* NULL: "<seed>-<UTC time>" */
  const char *base_dir;   /* relative input_image / mask_image paths resolve here; NULL: the working folder */
  const char *input_image; /* overrides the document's input_image; NULL: keep it */
  const char *rng;        /* "cuda" (default, as AUTOMATIC1111 on NVIDIA) or "cpu" */
  int clip_skip;          /* 0 or 1: last layer; 2: penultimate */
  int debug_passes;       /* also write every intermediate image and a contact sheet */
  mpass_progress_fn progress; /* may be NULL */
  void *progress_user;
  const char *controlnet_model; /* controlnet=: this ControlNet file; NULL: $MPASS_CONTROLNET_MODEL, else found by type */
  const char *tunes_dir;  /* the folder holding tunes/<id>/ that <lora:ID:W> may name; NULL: the models folder.
                             LoRA files are still looked up in <models>/lora (the server: one folder per token) */
  int fetch_public_only;  /* input_image_url / mask_image_url may not reach private, loopback or link-local addresses */
} mpass_run_options;

/* Run a job: every image, every pass, the outputs and result.json. On success *job_dir (may be
 * NULL) is the output folder (free()). A failed or cancelled job leaves no output behind. */
mpass_error *mpass_run(mpass_ctx *ctx, const mpass_job *job, const mpass_run_options *opts, char **job_dir);

const char *mpass_error_message(const mpass_error *e);
void mpass_error_free(mpass_error *e);

#ifdef __cplusplus
}
#endif
#endif
