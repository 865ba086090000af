/* libFuzzer target: the PyTorch zip checkpoint reader (zip directory + restricted pickle machine) on
 * arbitrary bytes, held in memory. */
#include "fuzz_weights.h"
#include "io/ckpt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_weights_reader(mp_ckpt_parse, "fuzz.ckpt", data, size);
}
