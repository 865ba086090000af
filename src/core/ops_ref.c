/* Reference twins of the fast ops: the obvious loops, in double where it matters. Tests only. */
#include <math.h>
#include <stdlib.h>

#include "core/ops.h"

void mp_ref_linear(float *y, const float *x, int64_t n, const float *W, const float *b, int64_t in, int64_t out) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t o = 0; o < out; o++) {
      double s = b ? b[o] : 0.0;
      for (int64_t j = 0; j < in; j++) s += (double)x[i * in + j] * W[o * in + j];
      y[i * out + o] = (float)s;
    }
}

void mp_ref_layer_norm(float *y, const float *x, int64_t n, int64_t dim, const float *gamma, const float *beta, float eps) {
  for (int64_t r = 0; r < n; r++) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < dim; i++) mean += x[r * dim + i];
    mean /= (double)dim;
    for (int64_t i = 0; i < dim; i++) var += (x[r * dim + i] - mean) * (x[r * dim + i] - mean);
    var /= (double)dim;
    for (int64_t i = 0; i < dim; i++)
      y[r * dim + i] = (float)((x[r * dim + i] - mean) / sqrt(var + eps) * gamma[i] + beta[i]);
  }
}

void mp_ref_attention(float *out, const float *q, const float *k, const float *v, int64_t nq, int64_t nk, int heads,
                      int head_dim, bool causal) {
  int64_t ld = (int64_t)heads * head_dim;
  double *p = malloc(sizeof(double) * (size_t)(nk > 0 ? nk : 1));
  if (!p) return;
  for (int h = 0; h < heads; h++)
    for (int64_t i = 0; i < nq; i++) {
      double mx = -INFINITY, sum = 0;
      int64_t kn = causal ? (i + 1 < nk ? i + 1 : nk) : nk;
      for (int64_t j = 0; j < kn; j++) {
        double s = 0;
        for (int d = 0; d < head_dim; d++) s += (double)q[i * ld + h * head_dim + d] * k[j * ld + h * head_dim + d];
        p[j] = s / sqrt((double)head_dim);
        mx = p[j] > mx ? p[j] : mx;
      }
      for (int64_t j = 0; j < kn; j++) sum += (p[j] = exp(p[j] - mx));
      for (int d = 0; d < head_dim; d++) {
        double o = 0;
        for (int64_t j = 0; j < kn; j++) o += p[j] * v[j * ld + h * head_dim + d];
        out[i * ld + h * head_dim + d] = (float)(o / sum);
      }
    }
  free(p);
}
