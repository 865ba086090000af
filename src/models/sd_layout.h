/* The tensor layout of an SD 1.x single-file checkpoint (CompVis keys), derived from its config.
 *
 * Used to write checkpoints with random weights in the real layout (the demo model, the real-size
 * benchmark model) and to tell missing from unexpected keys. The enumeration follows the module
 * order of LDM's UNetModel, AutoencoderKL and transformers' CLIPTextModel. */
#ifndef MP_MODELS_SD_LAYOUT_H
#define MP_MODELS_SD_LAYOUT_H

#include <stdint.h>

#include "core/tensor.h"
#include "models/sd.h"

/* How a tensor is initialised when we make one up. */
typedef enum {
  MP_INIT_WEIGHT,   /* N(0, 1/fan_in) scaled, like torch's default init */
  MP_INIT_BIAS,     /* small N(0, 0.02) */
  MP_INIT_ONES,     /* norm scales */
  MP_INIT_ZEROS,    /* norm shifts */
  MP_INIT_SCHEDULE, /* a DDPM schedule buffer, computed from linear_start/end */
  MP_INIT_POSITIONS /* position_ids: 0..n-1 (I64) */
} mp_init_kind;

typedef struct {
  char name[160];
  mp_dtype dtype; /* F32 for floats (a writer may store them as f16), I64 for position_ids */
  int ndim;
  int64_t shape[4];
  mp_init_kind init;
  int64_t fan_in;
} mp_layout_entry;

/* Every tensor of a checkpoint with this config, in a new array (caller frees). */
mp_error *mp_sd_layout(const mp_sd_config *cfg, mp_layout_entry **out, int *n_out);

/* Built-in configs: "tiny" (the golden test model's shape) and "sd15" (real SD 1.5). */
mp_error *mp_sd_preset(const char *name, mp_sd_config *cfg);

/* Write a checkpoint with random weights (deterministic in seed) in the real layout, streaming
 * (memory use is one tensor at most). dtype: MP_F32 or MP_F16 for the float tensors. For presets
 * other than sd15 an LDM-style JSON config is written beside it (`<stem>.json`). */
mp_error *mp_sd_write_random(const char *path, const mp_sd_config *cfg, mp_dtype dtype, uint64_t seed, const char *preset);



/* A ControlNet (single-file 1.0 layout, control_model.*) for cfg's UNet with random weights, the
 * "zero" convolutions random too; an LDM config beside it for presets other than sd15, as above. */
mp_error *mp_sd_write_random_controlnet(const char *path, const mp_sd_config *cfg, mp_dtype dtype, uint64_t seed, const char *preset);

/* A kohya-format LoRA with random weights (rank `rank`) for every attention projection of the UNet
 * and text encoder of `cfg`: what the demo registers as a person's tune. */
mp_error *mp_sd_write_random_lora(const char *path, const mp_sd_config *cfg, int rank, uint64_t seed);

/* An AUTOMATIC1111 textual-inversion file (`emb_params` [n_vectors, hidden]) with random vectors. */
mp_error *mp_sd_write_random_embedding(const char *path, const mp_sd_config *cfg, int n_vectors, uint64_t seed);

#endif
