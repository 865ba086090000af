/* An engine: one Stable Diffusion checkpoint, loaded and ready to run passes.
 *
 * It owns the memory-mapped weights, the bound text encoder, UNet and VAE, the noise schedule
 * and the tokenizer it was handed. LoRAs are applied per pass as an overlay (the base weights
 * are never written, so "removing" a LoRA is dropping the overlay), and every pass — scene,
 * person, face, hires, tile — goes through mp_engine_run_pass. */
#ifndef MP_PIPELINE_ENGINE_H
#define MP_PIPELINE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/context.h"
#include "io/image.h"
#include "io/weights.h"
#include "models/clip.h"
#include "models/controlnet.h"
#include "models/lora.h"
#include "models/openclip.h"
#include "models/sd.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/progress.h"
#include "post/mask.h"
#include "prompt/conditioning.h"
#include "prompt/tokenizer.h"
#include "sampling/noise.h"
#include "sampling/sampler.h"
#include "sampling/schedule.h"

typedef struct mp_text_memo mp_text_memo; /* engine_text.h */

typedef struct {
  mpass_ctx *ctx;
  char *path;
  char *name;    /* file name without folder and extension, for the "Model:" field */
  char hash[11]; /* AUTOMATIC1111's short model hash */
  mp_weights *base;
  mp_weights *overlay; /* LoRAs of the current pass, or NULL */
  mp_page_arena lora_pages; /* the overlay's patched tensors, reused from one LoRA set to the next */
  mp_sd_config cfg;
  mp_schedule schedule;
  mp_clip *clip;       /* SD 1.x's text encoder, SDXL's first */
  mp_openclip *clip2;  /* SDXL's second text encoder; NULL for SD 1.x */
  mp_unet *unet;
  mp_vae *vae;
  const mp_tokenizer *tok; /* borrowed */
  mp_text_memo *text;      /* the last pass's text conditioning, for the next pass with the same texts */
  int text_encodes;        /* how often the text encoders ran (the tests' view of that reuse) */
  long long file_id[4];    /* the weights file as opened: device, inode, size, mtime (ns); see mp_engine_take */
} mp_engine;

mp_error *mp_engine_open(mpass_ctx *ctx, const char *path, const mp_tokenizer *tok, mp_engine **out);
void mp_engine_close(mp_engine *e);

/* Engines kept between jobs (mpass_options.keep_models): a job takes its engines with mp_engine_take
 * and gives them back with mp_engine_give instead of opening and closing them. Given back, an engine is
 * put back on its base weights, forgets its conditioning and drops its scratch and resident packs, then
 * waits in its context; the next take of the same path gets it back, unless the weights file changed on
 * disk since it was opened (device, inode, size or mtime), which opens it afresh. So a worker serving one
 * checkpoint opens it once and keeps its packed weights and oneDNN's kernels for them (the first step of
 * each job no longer pays for them). At most MP_KEPT_ENGINES wait, the one given back longest ago closed
 * first, and a take that must open closes waiting ones until the engines alive (waiting and taken) are
 * within MP_KEPT_ENGINES: a job on other checkpoints never holds its own on top of three kept ones.
 * Without keep_models, take opens and give closes. */
enum { MP_KEPT_ENGINES = 3 };
mp_error *mp_engine_take(mpass_ctx *ctx, const char *path, const mp_tokenizer *tok, mp_engine **out);
void mp_engine_give(mp_engine *e); /* NULL: nothing */
/* The i-th engine waiting in ctx (0: given back longest ago), NULL past the last. */
const mp_engine *mp_engine_kept(const mpass_ctx *ctx, int i);

/* Rebind the text encoder and UNet to base + these LoRAs (n = 0: the base alone). Modules of a LoRA
 * that match no layer are appended to `warnings` (may be NULL) as "lora NAME: MODULE matches no layer". */
mp_error *mp_engine_set_loras(mp_engine *e, const mp_lora_spec *specs, int n, char ***warnings, int *n_warnings);

/* One diffusion pass. */
typedef struct {
  const char *prompt, *negative;
  const mp_ti_set *embeddings; /* may be NULL */
  bool use_lpw;
  int clip_skip; /* 1 or 2 */
  mp_sampler_spec sampler;
  int steps;
  double cfg_scale;
  uint64_t seed;
  mp_rng_kind rng;
  int width, height; /* multiples of 8 */
  /* img2img / inpainting: init image at width×height and the denoising strength; NULL for txt2img */
  const mp_image *init;
  double strength;
  /* inpainting: repaint where mask > 0.5 (width×height); NULL repaints everything */
  const mp_mask *mask;
  /* ControlNet: the net and its control image (RGB, any size: resized to width×height), residuals
   * times control_scale on both CFG halves; NULL for none */
  mp_controlnet *controlnet;
  const mp_image *control;
  double control_scale;
} mp_pass_params;

/* How many sampler steps the pass will run (img2img runs strength × steps, as AUTOMATIC1111 does). */
int mp_engine_pass_steps(const mp_engine *e, const mp_pass_params *p);

/* Run a pass and write the result (width×height RGB) to *out. Progress steps are reported to
 * `progress` (may be NULL); a cancel request ends the pass with an error whose message starts with
 * "cancelled". `warning` (may be NULL) receives a conditioning warning (e.g. truncation) to free. */
mp_error *mp_engine_run_pass(mp_engine *e, const mp_pass_params *p, mp_progress *progress, mp_image *out, char **warning);

#endif
