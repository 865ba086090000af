/* The body of the checkpoint-reader fuzz targets: parse arbitrary bytes held in memory, and read
 * every accepted tensor end to end so that ASan sees any view that points outside the input. */
#ifndef MP_FUZZ_WEIGHTS_H
#define MP_FUZZ_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "io/weights.h"

static inline int fuzz_weights_reader(mp_weights_parse_fn parse, const char *name, const uint8_t *data, size_t size) {
  mp_weights *w = mp_weights_new(name);
  if (!w) return 0;
  mp_error *e = parse(name, data, size, w);
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

#endif
