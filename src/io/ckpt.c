/* PyTorch .ckpt reader: placeholder until the restricted pickle VM lands. */
#include "io/weights.h"

mp_error *mp_ckpt_open(const char *path, mp_weights **out) {
  *out = NULL;
  return mp_errorf("%s: PyTorch zip checkpoints (.ckpt) are not supported yet; convert to .safetensors", path);
}
