/* LoRA: low-rank weight deltas applied to the UNet and text encoder(s) of an SD 1.x or SDXL checkpoint.
 *
 * Formats read (by key names, in any mix):
 *   kohya     lora_unet_<module>.{lora_down,lora_up}.weight, .alpha, LoCon .lora_mid.weight;
 *             lora_te_<module>...; <module> in diffusers naming (down_blocks_0_attentions_0_...) or
 *             CompVis naming (input_blocks_1_1_...), '.' written as '_';
 *             SDXL: lora_te1_<module> (CLIP ViT-L) and lora_te2_<module> (OpenCLIP bigG, named in the
 *             transformers layout: self_attn q/k/v_proj are row blocks of the fused in_proj_weight,
 *             out_proj, mlp fc1/fc2 are attn.out_proj, mlp.c_fc/c_proj)
 *   PEFT      unet.<module>.lora_A.weight / lora_B.weight, text_encoder.<module>..., text_encoder_2.<module>...
 *   diffusers unet.<module>.lora.down.weight / lora.up.weight (and attn processors' to_q_lora ...)
 * Linear, 1x1 and 3x3 convolution targets; a 3x3 conv LoRA has a 3x3 down and a 1x1 up; LoCon
 * adds a 3x3 mid between 1x1 down and up. Without an alpha, alpha = rank (scale 1).
 *
 * Merge rule: W' = W + multiplier * alpha / rank * up · (mid ·) down (computed in f32/double).
 *
 * Applying is non-destructive: mp_lora_apply builds an overlay mp_weights whose entries view the base
 * checkpoint except the patched ones, which are new tensors (in memory the overlay owns, or in the
 * caller's arena: mp_lora_options). Models bind to the overlay for one pass; closing the overlay
 * restores the original weights exactly (the base was never written). */
#ifndef MP_MODELS_LORA_H
#define MP_MODELS_LORA_H

#include "core/threads.h"
#include "io/weights.h"
#include "models/sd.h"

typedef struct {
  const mp_weights *lora; /* an opened LoRA file */
  const char *name;       /* for messages (e.g. the file name) */
  float unet_multiplier, te_multiplier;
} mp_lora_spec;

/* What an application did: counts, and the LoRA modules that matched no layer (by name, with the
 * LoRA's name), which the caller should show the user. */
typedef struct {
  int n_modules, n_patched_tensors;
  char **unmatched;
  int n_unmatched;
} mp_lora_report;

void mp_lora_report_free(mp_lora_report *r);

/* overlay = base with every LoRA of `specs` merged (several may patch the same tensor; deltas add).
 * cfg: the base checkpoint's config (its UNet layout maps diffusers names to CompVis keys).
 * base must outlive the overlay. A module whose shapes disagree with its target is an error naming
 * both; a module that matches no layer is listed in report->unmatched (report may be NULL). */
mp_error *mp_lora_apply(const mp_weights *base, const mp_sd_config *cfg, const mp_lora_spec *specs, int n_specs,
                        mp_weights **overlay, mp_lora_report *report);

/* f32_patches: patched tensors are stored in f32 in the overlay (the fp32 reference path) instead of
 * the checkpoint's own dtype (what merging into an f16 model gives: a reduced-precision path).
 * pool: the tensors are merged in parallel on it (NULL: on the calling thread); same bits either way.
 * arena: where the patched tensors go, owned by the caller, who must keep it until the overlay is
 * closed and may hand it to the next overlay only after that, since the next one writes over it (an
 * engine reuses one from switch to switch: see mp_alloc_pages for why); NULL: pages the overlay owns. */
typedef struct {
  bool f32_patches;
  mp_pool *pool;
  mp_page_arena *arena;
} mp_lora_options;

mp_error *mp_lora_apply_opts(const mp_weights *base, const mp_sd_config *cfg, const mp_lora_spec *specs, int n_specs,
                             const mp_lora_options *opt, mp_weights **overlay, mp_lora_report *report);

/* The kohya-style name ("lora_unet_down_blocks_0_attentions_0_proj_in") of a CompVis checkpoint key
 * ("model.diffusion_model.input_blocks.1.1.proj_in.weight"), in diffusers naming; NULL-terminated
 * into buf, false if the key is not a UNet/text-encoder weight. Exposed for tests. */
bool mp_lora_kohya_name(const char *ckpt_key, int num_res_blocks, char *buf, size_t cap);

#endif
