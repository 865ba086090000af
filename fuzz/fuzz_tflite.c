/* libFuzzer target for the TFLite reader: any byte string must load to a model or a clear error,
 * never an out-of-bounds access; models that load and are cheap enough also run on zero input, so
 * the load-time shape checks are fuzzed against the kernels they guard. */
#include <stdint.h>
#include <stdlib.h>

#include "core/tensor.h"
#include "io/tflite.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  mp_tflite *m = NULL;
  mp_error *e = mp_tflite_open_memory(data, size, &m);
  if (e) {
    mp_error_free(e);
    return 0;
  }
  if (mp_tflite_work(m) < 20000000 && mp_tflite_n_inputs(m) <= 4) {
    float *in[4] = {0};
    const float *cin[4] = {0};
    int ok = 1;
    for (int i = 0; i < mp_tflite_n_inputs(m); i++) {
      in[i] = mp_calloc((size_t)mp_tflite_input_numel(m, i), sizeof(float));
      cin[i] = in[i];
      ok &= in[i] != NULL;
    }
    if (ok) mp_error_free(mp_tflite_run(m, NULL, cin));
    for (int i = 0; i < 4; i++) mp_free(in[i]);
  }
  mp_tflite_close(m);
  return 0;
}
