/* libFuzzer target for the ncnn reader: the input is split into a .param text and a .bin blob at
 * the first "\n--bin--\n" (no separator: all .param, empty .bin). Any input must give a model or a
 * clear error, never a crash, leak or out-of-bounds access; a model that loads is also compiled by
 * the Real-ESRGAN executor's checks via the public lookups. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/ncnn.h"

static volatile float sink; /* makes every weight read count */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char sep[] = "\n--bin--\n";
  const uint8_t *cut = memmem(data, size, sep, sizeof sep - 1);
  size_t plen = cut ? (size_t)(cut - data) : size;
  const uint8_t *bin = cut ? cut + sizeof sep - 1 : data + size;
  size_t blen = size - (size_t)(bin - data);
  mp_ncnn_model *m = NULL;
  mp_error *e = mp_ncnn_parse("fuzz.param", (const char *)data, plen, "fuzz.bin", bin, blen, &m);
  if (e) {
    (void)mp_error_message(e);
    mp_error_free(e);
    return 0;
  }
  /* walk what was loaded */
  for (int i = 0; i < m->n_layers; i++) {
    const mp_ncnn_layer *l = &m->layers[i];
    int v;
    float f;
    const mp_ncnn_value *a;
    int n;
    for (int id = 0; id < MP_NCNN_MAX_PARAM_ID; id++) {
      mp_error_free(mp_ncnn_get_int(l, id, 0, &v));
      mp_error_free(mp_ncnn_get_float(l, id, 0, &f));
      mp_error_free(mp_ncnn_get_array(l, id, &a, &n));
    }
    for (int k = 0; k < l->n_inputs; k++) (void)m->blobs[l->inputs[k]].name;
    for (int k = 0; k < l->n_weights; k++)
      for (int64_t j = 0; j < l->weights[k].count; j++) sink += l->weights[k].data[j];
  }
  mp_ncnn_free(m);
  return 0;
}
