/* libFuzzer target: the PyTorch zip checkpoint reader (zip directory + restricted pickle machine) on
 * arbitrary bytes, held in memory. Accepted tensors are read end to end so ASan sees any bad view. */
#include <stddef.h>
#include <stdint.h>

#include "io/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mp_weights *w = mp_weights_new("fuzz.ckpt");
  if (!w) return 0;
  mp_error *e = mp_ckpt_parse("fuzz.ckpt", data, size, w);
  if (e) {
    mp_error_free(e);
  } else {
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < mp_weights_count(w); i++) {
      const mp_weight *t = mp_weights_at(w, i);
      const unsigned char *p = t->t.data;
      size_t n = mp_tensor_nbytes(&t->t);
      for (size_t k = 0; k < n; k++) sink ^= p[k];
      (void)mp_weights_find(w, t->name);
    }
    (void)sink;
  }
  mp_weights_close(w);
  return 0;
}
