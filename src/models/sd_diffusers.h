/* The hyper-parameters of a diffusers folder, read from its config files instead of inferred from
 * tensor shapes: unet/config.json, vae/config.json, text_encoder/config.json, for SDXL (a
 * model_index.json naming text_encoder_2) text_encoder_2/config.json and the UNet's text_time keys,
 * and (optional) scheduler/scheduler_config.json. mp_sd_config_detect calls this for a diffusers folder. */
#ifndef MP_MODELS_SD_DIFFUSERS_H
#define MP_MODELS_SD_DIFFUSERS_H

#include "models/sd.h"

/* Fill `cfg` (whose defaults the caller has set) from the folder's configs. Errors name the file and
 * the key, with what was expected and what was found. Does not validate the result as a whole. */
mp_error *mp_sd_config_from_diffusers(const char *folder, mp_sd_config *cfg);

/* The UNet hyper-parameters of a diffusers ControlNet folder from its config.json (ControlNetModel),
 * out_channels = in_channels; refuses what the cldm hint block and mpass do not implement. */
mp_error *mp_controlnet_config_from_diffusers(const char *folder, mp_unet_config *u);

#endif
