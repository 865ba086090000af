/* Conformance cases of the sampling side: rng (torch's CPU generator), txt2img (every k-diffusion
 * run and diffusers' DDIM, fed the reference's noise tape) and inpaint (diffusers DDIM img2img
 * and legacy 4-channel inpainting at strength 0.5). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/conform.h"
#include "sampling/rng.h"

/* ---- rng ---- */

/* rng.{randn,rand}.seed<S>.<shape>: exact below 16 values, |d| <= 5e-7 otherwise. */
mp_error *conform_case_rng(conform *c) {
  if (!c->golden) return mp_errorf("rng.safetensors is missing");
  int done = 0;
  for (size_t i = 0; i < mp_weights_count(c->golden); i++) {
    const mp_weight *g = mp_weights_at(c->golden, i);
    unsigned seed;
    char kind[8];
    if (sscanf(g->name, "rng.%7[a-z].seed%u.", kind, &seed) != 2) continue;
    int64_t n = mp_tensor_numel(&g->t);
    float *got = malloc((size_t)n * sizeof *got);
    if (!got) return mp_errorf("out of memory");
    mp_torch_cpu_rng rng;
    mp_torch_cpu_seed(&rng, seed);
    if (strcmp(kind, "randn") == 0) mp_torch_cpu_randn(&rng, got, n);
    else mp_torch_cpu_rand(&rng, got, n);
    /* conform_check scales its max-abs bound by max(1, max|golden|); undo that for an absolute 5e-7 */
    double gmax = 0;
    for (int64_t k = 0; k < n; k++) gmax = fmax(gmax, fabs(((const float *)g->t.data)[k]));
    double abs_tol = n < 16 ? 0.0 : 5e-7 / fmax(1.0, gmax);
    conform_check(c, g->name, got, n, n < 16 ? 0.0 : INFINITY, abs_tol);
    free(got);
    done++;
  }
  return done ? NULL : mp_errorf("no rng.* tensors in rng.safetensors");
}
