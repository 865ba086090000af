/* Jobs that mix model families (SPEC §1.1 base_model, DESIGN "Model families"): pass 1 may run on an
 * SDXL checkpoint while the person passes run on SD 1.5. Each engine holds one family; a job holds
 * the scene's engine and, when base_model chose another checkpoint, the persons' default one.
 *
 * This file answers the questions such a job asks: which file base_model=NAME names, which file is
 * the default SD 1.5 checkpoint, what size an SDXL scene gets when the document gives none, and at
 * what size a crop is rendered by a model of the other family. */
#ifndef MP_PIPELINE_FAMILIES_H
#define MP_PIPELINE_FAMILIES_H

#include "core/error.h"
#include "models/sd.h"
#include "prompt/document.h"

/* base_model=NAME: <models>/checkpoints/NAME.safetensors or .ckpt, or the diffusers folder checkpoints/NAME/, else the checkpoint tune NAME.
 * Not found (or a LoRA tune): an error naming what was searched. Caller frees *path. */
mp_error *mp_base_model_path(const char *models_dir, const char *name, char **path);

/* The family of a checkpoint file (its shapes, and a JSON config beside it). */
mp_error *mp_checkpoint_family(const char *path, mp_family *family);

/* The default checkpoint of SD 1.5 passes: the first SD 1.x file (by name) in <models>/checkpoints.
 * Caller frees *path. */
mp_error *mp_default_sd15_checkpoint(const char *models_dir, char **path);

/* The size of an SDXL scene without w/h: 1024×1024, or SDXL's bucket for the aspect ratio
 * (portrait 832×1216, 16:9 1344×768, landscape 1216×832). */
void mp_sdxl_default_size(mp_aspect ar, int *w, int *h);

/* The side of a model family's native square: 1024 for SDXL, 512 for SD 1.x. */
int mp_family_native_side(mp_family f);

#endif
