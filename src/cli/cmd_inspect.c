#include <stdio.h>

#include "cli/commands.h"
#include "io/weights.h"

int cmd_inspect(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx;
  if (argc != 2) {
    fprintf(stderr, "usage: mpass inspect CKPT\n");
    return 2;
  }
  mp_weights *w;
  mp_error *e = mp_weights_open(argv[1], &w);
  if (e) return cli_fail("inspect", e);
  for (size_t i = 0; i < mp_weights_count(w); i++) {
    const mp_weight *t = mp_weights_at(w, i);
    char sb[128];
    printf("%s %s %s\n", t->name, mp_dtype_name(t->t.dtype), mp_shape_str(t->t.ndim, t->t.shape, sb, sizeof sb));
  }
  mp_weights_close(w);
  return 0;
}
