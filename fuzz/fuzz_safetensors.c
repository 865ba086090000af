/* libFuzzer target: the safetensors header parser on arbitrary bytes, held in memory. */
#include "fuzz_weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  return fuzz_weights_reader(mp_safetensors_parse, "fuzz.safetensors", data, size);
}
