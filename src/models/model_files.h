/* Where the fetched detection and upscaling model files are (MediaPipe .tflite, Real-ESRGAN ncnn).
 *
 * A user who keeps checkpoints in their own --models folder should not lose these: they are looked
 * for, in order, in
 *   1. <models_dir>/<kind>/<file>              (--models, $MPASS_MODELS or ./models)
 *   2. <datadir>/mpass/<kind>/<file>           (the install prefix's data folder, fixed at build time)
 *   3. <where libmpass is>/../share/mpass/...  (an install moved elsewhere, e.g. a .deb under /usr)
 *   4. <source tree>/models/<kind>/<file>      (a build used in place: scripts/fetch-models.sh)
 * and the error names every place tried. */
#ifndef MP_MODELS_MODEL_FILES_H
#define MP_MODELS_MODEL_FILES_H

#include "core/error.h"

/* kind: "vision" or "upscale". *path is newly allocated (caller frees). */
mp_error *mp_find_model_file(const char *models_dir, const char *kind, const char *file, char **path);

#endif
