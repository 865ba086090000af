#include "pipeline/control.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/diffusers.h"

/* The public SD 1.5 ControlNet releases per type, preferred first: lllyasviel's 1.1 files (and the
 * fp16 safetensors conversions of them that A1111 users keep), then the 1.0 files. */
static const char *const canny_files[] = {"control_v11p_sd15_canny", "control_v11p_sd15_canny_fp16", "control_sd15_canny", NULL};
static const char *const pose_files[] = {"control_v11p_sd15_openpose", "control_v11p_sd15_openpose_fp16", "control_sd15_openpose",
                                         NULL};
static const char *const tile_files[] = {"control_v11f1e_sd15_tile", "control_v11f1e_sd15_tile_fp16", "control_v11u_sd15_tile",
                                         NULL};
static const char *const extensions[] = {".safetensors", ".pth"};
static const int n_extensions = sizeof extensions / sizeof *extensions;

static const char *const *release_names(mp_control_type t) {
  switch (t) {
    case MP_CONTROL_CANNY: return canny_files;
    case MP_CONTROL_POSE: return pose_files;
    case MP_CONTROL_TILE: return tile_files;
  }
  return NULL;
}

mp_error *mp_controlnet_find(const char *models_dir, mp_control_type type, const char *override, char **path) {
  *path = NULL;
  if (override && *override) {
    if (access(override, R_OK) != 0) return mp_errorf("ControlNet file %s (--controlnet-model / MPASS_CONTROLNET_MODEL) cannot be read", override);
    *path = strdup(override);
    if (!*path) return mp_errorf("out of memory");
    /* a folder given as "dir/": the name in result.json and the infotext is the folder's */
    for (size_t n = strlen(*path); n > 1 && (*path)[n - 1] == '/'; n--) (*path)[n - 1] = 0;
    return NULL;
  }
  const char *const *names = release_names(type);
  char tried[4096] = "";
  size_t used = 0;
  for (int i = 0; names && names[i]; i++)
    for (int k = 0; k <= n_extensions; k++) { /* the single files, then a diffusers folder of that name */
      const bool folder = k == n_extensions;
      char p[4096];
      snprintf(p, sizeof p, "%s/controlnet/%s%s", models_dir, names[i], folder ? "" : extensions[k]);
      if (folder ? mp_diffusers_is_controlnet(p) : access(p, R_OK) == 0) {
        *path = strdup(p);
        return *path ? NULL : mp_errorf("out of memory");
      }
      int n = snprintf(tried + used, sizeof tried - used, "%s%s%s", used ? ", " : "", p, folder ? "/" : "");
      if (n > 0 && (size_t)n < sizeof tried - used) used += (size_t)n;
    }
  return mp_errorf("controlnet=%s needs a ControlNet file: none of %s exists (put the release there, or name a file with "
                   "--controlnet-model / MPASS_CONTROLNET_MODEL)",
                   mp_control_type_name(type), tried);
}

mp_error *mp_control_image(mp_control_type type, const mp_image *input, const mp_person_result *persons, mp_image *out) {
  memset(out, 0, sizeof *out);
  if (input->channels != 3) return mp_errorf("control image: the input has %d channels, expected RGB", input->channels);
  switch (type) {
    case MP_CONTROL_CANNY: return mp_canny(input, MP_CANNY_LOW, MP_CANNY_HIGH, 3, out);
    case MP_CONTROL_TILE:
      MP_TRY(mp_image_alloc(out, input->width, input->height, 3));
      memcpy(out->pixels, input->pixels, (size_t)input->width * input->height * 3);
      return NULL;
    case MP_CONTROL_POSE: {
      int n = persons ? persons->n : 0;
      mp_openpose_skeleton sk[MP_MAX_FOUND_PERSONS];
      const double sx = persons && persons->width ? (double)input->width / persons->width : 1.0;
      const double sy = persons && persons->height ? (double)input->height / persons->height : 1.0;
      for (int i = 0; i < n; i++) {
        float lm[MP_MEDIAPIPE_LANDMARKS][3];
        for (int k = 0; k < MP_MEDIAPIPE_LANDMARKS; k++)
          lm[k][0] = (float)(persons->persons[i].landmarks[k][0] * sx), lm[k][1] = (float)(persons->persons[i].landmarks[k][1] * sy),
          lm[k][2] = persons->persons[i].landmarks[k][2];
        mp_openpose_from_mediapipe(lm, 0.5f, input->width, input->height, &sk[i]);
      }
      return mp_openpose_draw(sk, n, input->width, input->height, out);
    }
  }
  return mp_errorf("control image: unknown type %d", (int)type);
}

char *mp_controlnet_infotext(mp_control_type type, const char *model_name, const char *hash, double weight, int resolution) {
  static const char *const module[] = {"canny", "openpose", "tile_resample"};
  size_t n = 512 + strlen(model_name);
  char *s = malloc(n);
  if (s)
    snprintf(s, n,
             "Module: %s, Model: %s [%s], Weight: %g, Resize Mode: Crop and Resize, Low Vram: False, Processor Res: %d, "
             "Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced",
             module[type], model_name, hash, weight, resolution);
  return s;
}
