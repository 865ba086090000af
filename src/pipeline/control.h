/* ControlNet in the pipeline (docs/controlnet.md): which file a `controlnet=` type uses, and the control
 * image a pass is guided by.
 *
 * Files live in <models>/controlnet/ under the names of the public releases (a small table per type,
 * e.g. pose -> control_v11p_sd15_openpose.{safetensors,pth}); --controlnet-model or the environment
 * variable MPASS_CONTROLNET_MODEL names a file directly. */
#ifndef MP_PIPELINE_CONTROL_H
#define MP_PIPELINE_CONTROL_H

#include "core/error.h"
#include "io/image.h"
#include "models/person.h"
#include "post/control.h"

/* The ControlNet file for `type`: `override` when given (it must exist), else the first release name
 * found in <models_dir>/controlnet/. The error for none names every path tried. Caller frees *path. */
mp_error *mp_controlnet_find(const char *models_dir, mp_control_type type, const char *override, char **path);

/* The control image for `type` from `input` (RGB, already at the pass size): canny edges (A1111's
 * 100/200), the input itself (tile), or the OpenPose skeletons of `persons` (pose; found on `input`,
 * none drawn when persons is NULL or empty). */
mp_error *mp_control_image(mp_control_type type, const mp_image *input, const mp_person_result *persons, mp_image *out);

/* A1111's "ControlNet 0" infotext value for a unit: Module, Model "name [hash]", Weight, and the
 * fixed settings mpass uses (Crop and Resize, guidance 0..1, Balanced). Caller frees. */
char *mp_controlnet_infotext(mp_control_type type, const char *model_name, const char *hash, double weight, int resolution);

#endif
