/* Overlapping tiles with linear-ramp blending (see tile.h). */
#include "core/tile.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/tensor.h"

/* Tile origins along an axis of n cells: tiles of `t` cells overlapping by `ov`, the last flush with the end. */
static int tile_starts(int n, int t, int ov, int *starts, int cap) {
  if (n <= t) return starts[0] = 0, 1;
  int stride = t - ov, k = 0;
  for (int p = 0;; p += stride) {
    if (k == cap) return -1;
    if (p + t >= n) {
      starts[k++] = n - t;
      break;
    }
    starts[k++] = p;
  }
  return k;
}

/* Blend weight of cell i (0 <= i < len) of a tile whose low/high edges are interior (overlapping a
 * neighbour) when lo/hi: a linear ramp over `ramp` cells at interior edges, 1 elsewhere. */
static float edge_weight(int i, int len, int ramp, bool lo, bool hi) {
  float wgt = 1.0f;
  if (lo && i < ramp) wgt = fminf(wgt, (i + 0.5f) / (float)ramp);
  if (hi && len - 1 - i < ramp) wgt = fminf(wgt, (len - 1 - i + 0.5f) / (float)ramp);
  return wgt;
}

mp_error *mp_tiled_apply(mp_tile_fn one, void *ctx, int n_h, int n_w, int t_h, int t_w, int ov, int in_scale, int out_scale,
                         int c_in, int c_out, const float *in, float *out) {
  if (t_h < 1 || t_w < 1 || ov < 0 || ov >= t_h || ov >= t_w)
    return mp_errorf("tile %dx%d with overlap %d: the overlap must be below the tile size", t_w, t_h, ov);
  int ys[1024], xs[1024];
  int ny = tile_starts(n_h, t_h, ov, ys, 1024), nx = tile_starts(n_w, t_w, ov, xs, 1024);
  if (ny < 0 || nx < 0) return mp_errorf("image too large for %dx%d-cell tiles", t_w, t_h);
  const int th = n_h < t_h ? n_h : t_h, tw = n_w < t_w ? n_w : t_w;
  const int64_t IH = (int64_t)n_h * in_scale, IW = (int64_t)n_w * in_scale, OH = (int64_t)n_h * out_scale,
                OW = (int64_t)n_w * out_scale;
  const int64_t tih = (int64_t)th * in_scale, tiw = (int64_t)tw * in_scale, toh = (int64_t)th * out_scale,
                tow = (int64_t)tw * out_scale;
  float *tin = mp_alloc(sizeof(float) * (size_t)(c_in * tih * tiw)), *tout = mp_alloc(sizeof(float) * (size_t)(c_out * toh * tow));
  float *wsum = mp_calloc((size_t)(OH * OW), sizeof(float));
  mp_error *e = NULL;
  if (!tin || !tout || !wsum) {
    e = mp_errorf("out of memory for tiles");
    goto done;
  }
  memset(out, 0, sizeof(float) * (size_t)(c_out * OH * OW));
  const int ramp = ov * out_scale;
  for (int a = 0; a < ny && !e; a++)
    for (int b = 0; b < nx && !e; b++) {
      const int64_t y0 = (int64_t)ys[a] * in_scale, x0 = (int64_t)xs[b] * in_scale;
      for (int c = 0; c < c_in; c++)
        for (int64_t i = 0; i < tih; i++)
          memcpy(tin + (c * tih + i) * tiw, in + (c * IH + y0 + i) * IW + x0, sizeof(float) * (size_t)tiw);
      if ((e = one(ctx, th * in_scale, tw * in_scale, tin, tout))) break;
      const int64_t oy0 = (int64_t)ys[a] * out_scale, ox0 = (int64_t)xs[b] * out_scale;
      const bool top = a > 0, bottom = a + 1 < ny, left = b > 0, right = b + 1 < nx;
      for (int64_t i = 0; i < toh; i++) {
        float wy = edge_weight((int)i, (int)toh, ramp, top, bottom);
        for (int64_t j = 0; j < tow; j++) {
          float wgt = wy * edge_weight((int)j, (int)tow, ramp, left, right);
          wsum[(oy0 + i) * OW + ox0 + j] += wgt;
          for (int c = 0; c < c_out; c++) out[(c * OH + oy0 + i) * OW + ox0 + j] += wgt * tout[(c * toh + i) * tow + j];
        }
      }
    }
  if (!e)
    for (int c = 0; c < c_out; c++)
      for (int64_t p = 0; p < OH * OW; p++) out[c * OH * OW + p] /= wsum[p];
done:
  mp_free(tin), mp_free(tout), mp_free(wsum);
  return e;
}

