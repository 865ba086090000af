/* Real-ESRGAN: an executor for the ncnn graph of the Real-ESRGAN models, and the padded, tiled
 * upscale pipeline around it (see esrgan.h).
 *
 * Each .param layer is compiled once into an `op` (its parameters checked and its weights found);
 * a forward walks the ops in file order. Blob buffers are reference counted: a buffer is freed as
 * soon as its last reader has run, Split shares one buffer between its outputs, and element-wise
 * layers write into their input when nobody else reads it, so the memory in use is a few feature
 * maps of the current tile. */
#include "models/esrgan.h"
#include "models/model_files.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/conv_nchw.h"
#include "core/tensor.h"

typedef enum {
  OP_INPUT,
  OP_SPLIT,
  OP_CONCAT,
  OP_CONV,
  OP_PRELU,
  OP_ACT, /* ReLU, Clip, Sigmoid as layers of their own */
  OP_ELTWISE,
  OP_BINARY,
  OP_INTERP,
  OP_PIXELSHUFFLE,
} op_kind;

typedef enum { ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_CLIP, ACT_SIGMOID } act_kind;
typedef enum { ELT_PROD = 0, ELT_SUM = 1, ELT_MAX = 2 } elt_kind;
typedef enum { BIN_ADD = 0, BIN_SUB, BIN_MUL, BIN_DIV, BIN_MAX, BIN_MIN, BIN_POW, BIN_RSUB, BIN_RDIV } bin_kind;

typedef struct {
  op_kind kind;
  const mp_ncnn_layer *l;
  /* Convolution */
  mp_conv2d_desc conv;
  const float *weight, *bias;
  /* activation of Convolution / ReLU / Clip / Sigmoid: y = act(x), a and b its parameters */
  act_kind act;
  float act_a, act_b;
  /* PReLU */
  const float *slope;
  int n_slope;
  /* Eltwise */
  elt_kind elt;
  const mp_ncnn_value *coeffs;
  int n_coeffs;
  /* BinaryOp */
  bin_kind bin;
  int with_scalar;
  float scalar;
  /* Interp (nearest, integer factors) and PixelShuffle */
  int scale_h, scale_w;
  int shuffle_r, shuffle_mode;
} op;

struct mp_esrgan {
  mp_ncnn_model *net;
  op *ops;
  int input_blob, output_blob;
  int scale;
  int receptive_radius; /* input pixels that can influence an output pixel, on each side */
};

typedef struct {
  int c, h, w;
} shape3;

/* ---- compiling the graph ---- */

#define LAYER_FMT "layer '%s' (%s, line %d)"
#define LAYER_ARGS(l) (l)->name, (l)->type, (l)->line

static mp_error *want_io(const mp_ncnn_layer *l, int min_in, int max_in, int min_out, int max_out) {
  if (l->n_inputs < min_in || l->n_inputs > max_in || l->n_outputs < min_out || l->n_outputs > max_out)
    return mp_errorf(LAYER_FMT ": has %d inputs and %d outputs; expected %d..%d inputs and %d..%d outputs", LAYER_ARGS(l),
                     l->n_inputs, l->n_outputs, min_in, max_in, min_out, max_out);
  return NULL;
}

/* ncnn's fused activation: 9=activation_type, -23310=activation_params */
static mp_error *compile_activation(const mp_ncnn_layer *l, int type, op *o) {
  const mp_ncnn_value *p = NULL;
  int np = 0;
  MP_TRY(mp_ncnn_get_array(l, 10, &p, &np));
  switch (type) {
    case 0: o->act = ACT_NONE; return NULL;
    case 1: o->act = ACT_RELU; return NULL;
    case 4: o->act = ACT_SIGMOID; return NULL;
    case 2:
      if (np < 1) return mp_errorf(LAYER_FMT ": LeakyReLU activation needs its slope in -23310", LAYER_ARGS(l));
      o->act = ACT_LEAKY, o->act_a = p[0].f;
      return NULL;
    case 3:
      if (np < 2) return mp_errorf(LAYER_FMT ": Clip activation needs min,max in -23310", LAYER_ARGS(l));
      o->act = ACT_CLIP, o->act_a = p[0].f, o->act_b = p[1].f;
      return NULL;
    default:
      return mp_errorf(LAYER_FMT ": activation_type %d is not supported (0 none, 1 ReLU, 2 LeakyReLU, 3 Clip, 4 Sigmoid)",
                       LAYER_ARGS(l), type);
  }
}

static mp_error *compile_conv(const mp_ncnn_layer *l, op *o) {
  MP_TRY(want_io(l, 1, 1, 1, 1));
  int num_output = 0, kw = 0, kh = 0, dw = 0, dh = 0, sw = 0, sh = 0, pl = 0, pr = 0, pt = 0, pb = 0, wsize = 0, act = 0;
  float pad_value = 0;
  MP_TRY(mp_ncnn_get_int(l, 0, 0, &num_output));
  MP_TRY(mp_ncnn_get_int(l, 1, 0, &kw));
  MP_TRY(mp_ncnn_get_int(l, 11, kw, &kh));
  MP_TRY(mp_ncnn_get_int(l, 2, 1, &dw));
  MP_TRY(mp_ncnn_get_int(l, 12, dw, &dh));
  MP_TRY(mp_ncnn_get_int(l, 3, 1, &sw));
  MP_TRY(mp_ncnn_get_int(l, 13, sw, &sh));
  MP_TRY(mp_ncnn_get_int(l, 4, 0, &pl));
  MP_TRY(mp_ncnn_get_int(l, 15, pl, &pr));
  MP_TRY(mp_ncnn_get_int(l, 14, pl, &pt));
  MP_TRY(mp_ncnn_get_int(l, 16, pt, &pb));
  MP_TRY(mp_ncnn_get_float(l, 18, 0.0f, &pad_value));
  MP_TRY(mp_ncnn_get_int(l, 6, 0, &wsize));
  MP_TRY(mp_ncnn_get_int(l, 9, 0, &act));
  if (kw < 1 || kh < 1 || kw > 64 || kh > 64 || dw < 1 || dh < 1 || dw > 64 || dh > 64 || sw < 1 || sh < 1 || sw > 64 ||
      sh > 64)
    return mp_errorf(LAYER_FMT ": kernel %dx%d, dilation %dx%d, stride %dx%d: each must be 1..64", LAYER_ARGS(l), kw, kh, dw,
                     dh, sw, sh);
  if (pl < 0 || pr < 0 || pt < 0 || pb < 0 || pl > 1024 || pr > 1024 || pt > 1024 || pb > 1024)
    return mp_errorf(LAYER_FMT ": padding %d,%d,%d,%d: automatic (negative) or huge padding is not supported", LAYER_ARGS(l),
                     pl, pr, pt, pb);
  if (pad_value != 0.0f) return mp_errorf(LAYER_FMT ": pad_value %g is not supported (only 0)", LAYER_ARGS(l), pad_value);
  const mp_ncnn_weight *w = mp_ncnn_weight_find(l, "weight");
  if (!w || num_output < 1 || w->count % ((int64_t)num_output * kw * kh) != 0)
    return mp_errorf(LAYER_FMT ": weight_data_size %d is not a multiple of num_output*kernel_h*kernel_w = %d*%d*%d",
                     LAYER_ARGS(l), wsize, num_output, kh, kw);
  o->kind = OP_CONV;
  o->conv = (mp_conv2d_desc){.c_in = (int)(w->count / ((int64_t)num_output * kw * kh)),
                             .c_out = num_output,
                             .kh = kh,
                             .kw = kw,
                             .stride_h = sh,
                             .stride_w = sw,
                             .dil_h = dh,
                             .dil_w = dw,
                             .pad_top = pt,
                             .pad_left = pl,
                             .pad_bottom = pb,
                             .pad_right = pr};
  o->weight = w->data;
  const mp_ncnn_weight *b = mp_ncnn_weight_find(l, "bias");
  o->bias = b ? b->data : NULL;
  return compile_activation(l, act, o);
}

static mp_error *compile_op(const mp_ncnn_layer *l, op *o) {
  memset(o, 0, sizeof *o);
  o->l = l;
  const char *t = l->type;
  if (strcmp(t, "Input") == 0) {
    o->kind = OP_INPUT;
    return want_io(l, 0, 0, 1, 1);
  }
  if (strcmp(t, "Split") == 0) {
    o->kind = OP_SPLIT;
    return want_io(l, 1, 1, 1, 1 << 16);
  }
  if (strcmp(t, "Concat") == 0) {
    int axis = 0;
    MP_TRY(want_io(l, 1, 1 << 16, 1, 1));
    MP_TRY(mp_ncnn_get_int(l, 0, 0, &axis));
    if (axis != 0 && axis != -3)
      return mp_errorf(LAYER_FMT ": Concat on axis %d is not supported (only channels, axis 0)", LAYER_ARGS(l), axis);
    o->kind = OP_CONCAT;
    return NULL;
  }
  if (strcmp(t, "Convolution") == 0) return compile_conv(l, o);
  if (strcmp(t, "PReLU") == 0) {
    MP_TRY(want_io(l, 1, 1, 1, 1));
    const mp_ncnn_weight *s = mp_ncnn_weight_find(l, "slope");
    if (!s) return mp_errorf(LAYER_FMT ": no slope weights", LAYER_ARGS(l));
    o->kind = OP_PRELU;
    o->slope = s->data;
    o->n_slope = (int)s->count;
    return NULL;
  }
  if (strcmp(t, "ReLU") == 0) {
    MP_TRY(want_io(l, 1, 1, 1, 1));
    o->kind = OP_ACT;
    MP_TRY(mp_ncnn_get_float(l, 0, 0.0f, &o->act_a));
    o->act = o->act_a == 0.0f ? ACT_RELU : ACT_LEAKY;
    return NULL;
  }
  if (strcmp(t, "Clip") == 0) {
    MP_TRY(want_io(l, 1, 1, 1, 1));
    o->kind = OP_ACT;
    o->act = ACT_CLIP;
    MP_TRY(mp_ncnn_get_float(l, 0, -INFINITY, &o->act_a));
    return mp_ncnn_get_float(l, 1, INFINITY, &o->act_b);
  }
  if (strcmp(t, "Sigmoid") == 0) {
    o->kind = OP_ACT;
    o->act = ACT_SIGMOID;
    return want_io(l, 1, 1, 1, 1);
  }
  if (strcmp(t, "Eltwise") == 0) {
    int type = 0;
    MP_TRY(want_io(l, 2, 1 << 16, 1, 1));
    MP_TRY(mp_ncnn_get_int(l, 0, 0, &type));
    MP_TRY(mp_ncnn_get_array(l, 1, &o->coeffs, &o->n_coeffs));
    if (type < 0 || type > 2)
      return mp_errorf(LAYER_FMT ": Eltwise op_type %d is not supported (0 prod, 1 sum, 2 max)", LAYER_ARGS(l), type);
    if (o->n_coeffs && o->n_coeffs != l->n_inputs)
      return mp_errorf(LAYER_FMT ": %d coefficients for %d inputs", LAYER_ARGS(l), o->n_coeffs, l->n_inputs);
    o->kind = OP_ELTWISE;
    o->elt = (elt_kind)type;
    return NULL;
  }
  if (strcmp(t, "BinaryOp") == 0) {
    int type = 0;
    MP_TRY(mp_ncnn_get_int(l, 0, 0, &type));
    MP_TRY(mp_ncnn_get_int(l, 1, 0, &o->with_scalar));
    MP_TRY(mp_ncnn_get_float(l, 2, 0.0f, &o->scalar));
    if (type < 0 || type > 8)
      return mp_errorf(LAYER_FMT ": BinaryOp op_type %d is not supported (0..8: add sub mul div max min pow rsub rdiv)",
                       LAYER_ARGS(l), type);
    o->kind = OP_BINARY;
    o->bin = (bin_kind)type;
    return o->with_scalar ? want_io(l, 1, 1, 1, 1) : want_io(l, 2, 2, 1, 1);
  }
  if (strcmp(t, "Interp") == 0) {
    int type = 0, oh = 0, ow = 0, dynamic = 0;
    float fh = 1, fw = 1;
    MP_TRY(want_io(l, 1, 1, 1, 1));
    MP_TRY(mp_ncnn_get_int(l, 0, 0, &type));
    MP_TRY(mp_ncnn_get_float(l, 1, 1.0f, &fh));
    MP_TRY(mp_ncnn_get_float(l, 2, 1.0f, &fw));
    MP_TRY(mp_ncnn_get_int(l, 3, 0, &oh));
    MP_TRY(mp_ncnn_get_int(l, 4, 0, &ow));
    MP_TRY(mp_ncnn_get_int(l, 5, 0, &dynamic));
    if (type != 1) return mp_errorf(LAYER_FMT ": Interp resize_type %d is not supported (only 1, nearest)", LAYER_ARGS(l), type);
    if (oh || ow || dynamic)
      return mp_errorf(LAYER_FMT ": Interp to a fixed or dynamic output size is not supported (only scale factors)",
                       LAYER_ARGS(l));
    if (!(fh >= 1 && fh <= 16 && fw >= 1 && fw <= 16) || fh != floorf(fh) || fw != floorf(fw))
      return mp_errorf(LAYER_FMT ": Interp scale %gx%g is not supported (whole factors 1..16 only)", LAYER_ARGS(l), fh, fw);
    o->kind = OP_INTERP;
    o->scale_h = (int)fh, o->scale_w = (int)fw;
    return NULL;
  }
  if (strcmp(t, "PixelShuffle") == 0) {
    MP_TRY(want_io(l, 1, 1, 1, 1));
    MP_TRY(mp_ncnn_get_int(l, 0, 1, &o->shuffle_r));
    MP_TRY(mp_ncnn_get_int(l, 1, 0, &o->shuffle_mode));
    if (o->shuffle_r < 1 || o->shuffle_r > 16 || (o->shuffle_mode != 0 && o->shuffle_mode != 1))
      return mp_errorf(LAYER_FMT ": PixelShuffle factor %d / mode %d not supported (1..16, mode 0 or 1)", LAYER_ARGS(l),
                       o->shuffle_r, o->shuffle_mode);
    o->kind = OP_PIXELSHUFFLE;
    return NULL;
  }
  return mp_errorf(LAYER_FMT ": layer type '%s' is not supported by the Real-ESRGAN executor", LAYER_ARGS(l), t);
}

/* ---- shapes ---- */

#define MAX_BLOB_ELEMS ((int64_t)1 << 31)

static mp_error *check_size(const mp_ncnn_layer *l, shape3 s) {
  if (s.c < 1 || s.h < 1 || s.w < 1 || (int64_t)s.c * s.h * s.w > MAX_BLOB_ELEMS)
    return mp_errorf(LAYER_FMT ": output shape [%d,%d,%d] is empty or too large (use smaller tiles)", LAYER_ARGS(l), s.c,
                     s.h, s.w);
  return NULL;
}

/* Output shapes of op o from its input shapes; the error names the layer and what disagrees. */
static mp_error *infer(const op *o, const shape3 *in, shape3 *out) {
  const mp_ncnn_layer *l = o->l;
  switch (o->kind) {
    case OP_INPUT: out[0] = in[0]; break;
    case OP_SPLIT:
      for (int i = 0; i < l->n_outputs; i++) out[i] = in[0];
      break;
    case OP_CONCAT: {
      out[0] = in[0];
      for (int i = 1; i < l->n_inputs; i++) {
        if (in[i].h != in[0].h || in[i].w != in[0].w)
          return mp_errorf(LAYER_FMT ": input %d is %dx%d but input 0 is %dx%d", LAYER_ARGS(l), i, in[i].h, in[i].w, in[0].h,
                           in[0].w);
        out[0].c += in[i].c;
      }
      break;
    }
    case OP_CONV: {
      if (in[0].c != o->conv.c_in)
        return mp_errorf(LAYER_FMT ": input has %d channels but the weights are for %d", LAYER_ARGS(l), in[0].c, o->conv.c_in);
      out[0].c = o->conv.c_out;
      mp_conv2d_out_size(&o->conv, in[0].h, in[0].w, &out[0].h, &out[0].w);
      break;
    }
    case OP_PRELU:
      if (o->n_slope != 1 && o->n_slope != in[0].c)
        return mp_errorf(LAYER_FMT ": %d slopes for %d channels", LAYER_ARGS(l), o->n_slope, in[0].c);
      out[0] = in[0];
      break;
    case OP_ACT: out[0] = in[0]; break;
    case OP_ELTWISE:
    case OP_BINARY:
      for (int i = 1; i < l->n_inputs; i++)
        if (in[i].c != in[0].c || in[i].h != in[0].h || in[i].w != in[0].w)
          return mp_errorf(LAYER_FMT ": input %d is [%d,%d,%d] but input 0 is [%d,%d,%d] (broadcasting is not supported)",
                           LAYER_ARGS(l), i, in[i].c, in[i].h, in[i].w, in[0].c, in[0].h, in[0].w);
      out[0] = in[0];
      break;
    case OP_INTERP:
      out[0] = (shape3){in[0].c, in[0].h * o->scale_h, in[0].w * o->scale_w};
      if ((int64_t)in[0].h * o->scale_h > 1 << 20 || (int64_t)in[0].w * o->scale_w > 1 << 20) out[0].h = 0;
      break;
    case OP_PIXELSHUFFLE: {
      int rr = o->shuffle_r * o->shuffle_r;
      if (in[0].c % rr)
        return mp_errorf(LAYER_FMT ": %d channels do not divide by %d (factor %d squared)", LAYER_ARGS(l), in[0].c, rr,
                         o->shuffle_r);
      out[0] = (shape3){in[0].c / rr, in[0].h * o->shuffle_r, in[0].w * o->shuffle_r};
      if ((int64_t)in[0].h * o->shuffle_r > 1 << 20 || (int64_t)in[0].w * o->shuffle_r > 1 << 20) out[0].h = 0;
      break;
    }
  }
  for (int i = 0; i < l->n_outputs; i++) MP_TRY(check_size(l, out[i]));
  return NULL;
}

/* Shapes of every blob for an input of c x h x w. `shapes` has n_blobs entries. */
static mp_error *infer_all(const mp_esrgan *m, shape3 input, shape3 *shapes) {
  const mp_ncnn_model *g = m->net;
  int max_io = 1;
  for (int i = 0; i < g->n_layers; i++) {
    if (g->layers[i].n_inputs > max_io) max_io = g->layers[i].n_inputs;
    if (g->layers[i].n_outputs > max_io) max_io = g->layers[i].n_outputs;
  }
  shape3 *in = calloc((size_t)max_io, sizeof *in), *out = calloc((size_t)max_io, sizeof *out);
  mp_error *e = in && out ? NULL : mp_errorf("out of memory");
  for (int i = 0; i < g->n_layers && !e; i++) {
    const mp_ncnn_layer *l = &g->layers[i];
    if (m->ops[i].kind == OP_INPUT) in[0] = input;
    for (int k = 0; k < l->n_inputs; k++) in[k] = shapes[l->inputs[k]];
    e = infer(&m->ops[i], in, out);
    for (int k = 0; k < l->n_outputs && !e; k++) shapes[l->outputs[k]] = out[k];
  }
  free(in);
  free(out);
  return e;
}

/* How far (in input pixels) an output pixel can see, following the graph: a k x k convolution at
 * a blob of f pixels per input pixel widens the reach by dilation*(k-1)/2 / f. */
static int receptive_radius(const mp_esrgan *m) {
  const mp_ncnn_model *g = m->net;
  double *reach = calloc((size_t)g->n_blobs, sizeof *reach), *res = calloc((size_t)g->n_blobs, sizeof *res);
  int radius = 0;
  if (!reach || !res) goto done;
  for (int i = 0; i < g->n_layers; i++) {
    const mp_ncnn_layer *l = &g->layers[i];
    const op *o = &m->ops[i];
    double r = 0, f = 1;
    for (int k = 0; k < l->n_inputs; k++) {
      if (reach[l->inputs[k]] > r) r = reach[l->inputs[k]];
      if (k == 0) f = res[l->inputs[0]];
    }
    if (o->kind == OP_INPUT) r = 0, f = 1;
    if (o->kind == OP_CONV) {
      int ext = o->conv.dil_h * (o->conv.kh - 1) > o->conv.dil_w * (o->conv.kw - 1) ? o->conv.dil_h * (o->conv.kh - 1)
                                                                                     : o->conv.dil_w * (o->conv.kw - 1);
      r += (ext + 1) / 2 / f;
      f /= o->conv.stride_h;
    }
    if (o->kind == OP_INTERP) f *= o->scale_h, r += 1 / f; /* nearest: up to one source pixel */
    if (o->kind == OP_PIXELSHUFFLE) f *= o->shuffle_r;
    for (int k = 0; k < l->n_outputs; k++) reach[l->outputs[k]] = r, res[l->outputs[k]] = f;
  }
  radius = (int)ceil(reach[m->output_blob] - 1e-9);
done:
  free(reach);
  free(res);
  return radius;
}

static mp_error *compile(mp_esrgan *m) {
  const mp_ncnn_model *g = m->net;
  m->ops = calloc((size_t)g->n_layers, sizeof *m->ops);
  if (!m->ops) return mp_errorf("out of memory");
  m->input_blob = -1;
  for (int i = 0; i < g->n_layers; i++) {
    MP_TRY(compile_op(&g->layers[i], &m->ops[i]));
    if (m->ops[i].kind == OP_INPUT) {
      if (m->input_blob >= 0)
        return mp_errorf(LAYER_FMT ": a second Input layer (only one image input is supported)", LAYER_ARGS(&g->layers[i]));
      m->input_blob = g->layers[i].outputs[0];
    }
  }
  if (m->input_blob < 0) return mp_errorf("the graph has no Input layer");
  m->output_blob = mp_ncnn_find_blob(g, "output");
  if (m->output_blob < 0) {
    const mp_ncnn_layer *last = &g->layers[g->n_layers - 1];
    if (last->n_outputs != 1) return mp_errorf("the graph has no blob named 'output' and its last layer has %d outputs", last->n_outputs);
    m->output_blob = last->outputs[0];
  }
  /* the scale, from the shapes of a probe image (not square, to catch transposed sizes) */
  shape3 *shapes = calloc((size_t)g->n_blobs, sizeof *shapes);
  if (!shapes) return mp_errorf("out of memory");
  mp_error *e = infer_all(m, (shape3){3, 12, 20}, shapes);
  if (!e) {
    shape3 o = shapes[m->output_blob];
    int s = o.h / 12;
    if (o.c != 3 || s < 1 || o.h != 12 * s || o.w != 20 * s)
      e = mp_errorf("for a 3x12x20 input the graph gives [%d,%d,%d]; expected an RGB image larger by a whole factor", o.c,
                    o.h, o.w);
    m->scale = s;
  }
  free(shapes);
  if (e) return mp_error_wrap(e, "checking the graph on a 12x20 RGB input");
  m->receptive_radius = receptive_radius(m);
  return NULL;
}

mp_error *mp_esrgan_open(const char *param_path, const char *bin_path, mp_esrgan **out) {
  *out = NULL;
  mp_esrgan *m = calloc(1, sizeof *m);
  if (!m) return mp_errorf("out of memory");
  mp_error *e = mp_ncnn_open(param_path, bin_path, &m->net);
  if (!e) e = mp_error_wrap(compile(m), "%s", param_path);
  if (e) {
    mp_esrgan_free(m);
    return e;
  }
  *out = m;
  return NULL;
}

mp_error *mp_esrgan_open_named(const char *models_dir, const char *name, mp_esrgan **out) {
  *out = NULL;
  if (strcmp(name, "x4fast") != 0 && strcmp(name, "x4plus") != 0)
    return mp_errorf("unknown upscale model '%s' (expected x4fast or x4plus)", name);
  char file[64], *param = NULL;
  snprintf(file, sizeof file, "realesrgan-%s.param", name);
  MP_TRY(mp_find_model_file(models_dir, "upscale", file, &param));
  /* the weights sit beside the graph */
  size_t n = strlen(param);
  char *bin = malloc(n + 1);
  if (!bin) {
    free(param);
    return mp_errorf("out of memory");
  }
  memcpy(bin, param, n - strlen(".param"));
  strcpy(bin + n - strlen(".param"), ".bin");
  mp_error *e = mp_esrgan_open(param, bin, out);
  free(param);
  free(bin);
  return e;
}

void mp_esrgan_free(mp_esrgan *m) {
  if (!m) return;
  mp_ncnn_free(m->net);
  free(m->ops);
  free(m);
}

int mp_esrgan_scale(const mp_esrgan *m) { return m->scale; }
const mp_ncnn_model *mp_esrgan_graph(const mp_esrgan *m) { return m->net; }

/* ---- running the graph ---- */

typedef struct {
  float *data;
  int refs;   /* blobs that hold this buffer */
  bool owned; /* false for the caller's input */
} buffer;

typedef struct {
  buffer *buf;
  shape3 s;
  int pending; /* layers that still have to read it */
} value;

static void buf_release(buffer *b) {
  if (!b || --b->refs > 0) return;
  if (b->owned) mp_free(b->data);
  free(b);
}

static buffer *buf_new(int64_t n) {
  buffer *b = malloc(sizeof *b);
  if (!b) return NULL;
  b->data = mp_alloc((size_t)n * sizeof(float));
  if (!b->data) {
    free(b);
    return NULL;
  }
  b->refs = 1;
  b->owned = true;
  return b;
}

static int64_t numel(shape3 s) { return (int64_t)s.c * s.h * s.w; }

/* The buffer for an element-wise result: the input's own when this layer is its last reader and
 * nobody shares it, else a new one. */
static buffer *result_buffer(value *in, int64_t n) {
  if (in->buf->owned && in->buf->refs == 1 && in->pending == 1) {
    in->buf->refs++;
    return in->buf;
  }
  return buf_new(n);
}

static void activate(float *x, int64_t n, act_kind act, float a, float b) {
  switch (act) {
    case ACT_NONE: break;
    case ACT_RELU:
      for (int64_t i = 0; i < n; i++) x[i] = x[i] < 0 ? 0 : x[i];
      break;
    case ACT_LEAKY:
      for (int64_t i = 0; i < n; i++) x[i] = x[i] < 0 ? x[i] * a : x[i];
      break;
    case ACT_CLIP:
      for (int64_t i = 0; i < n; i++) x[i] = x[i] < a ? a : x[i] > b ? b : x[i];
      break;
    case ACT_SIGMOID:
      for (int64_t i = 0; i < n; i++) x[i] = 1.0f / (1.0f + expf(-x[i]));
      break;
  }
}

static float binary(bin_kind k, float a, float b) {
  switch (k) {
    case BIN_ADD: return a + b;
    case BIN_SUB: return a - b;
    case BIN_MUL: return a * b;
    case BIN_DIV: return a / b;
    case BIN_MAX: return a > b ? a : b;
    case BIN_MIN: return a < b ? a : b;
    case BIN_POW: return powf(a, b);
    case BIN_RSUB: return b - a;
    case BIN_RDIV: return b / a;
  }
  return 0;
}

/* Run one op: inputs in[], outputs written to out[] (buffers allocated here). */
static mp_error *run_op(const op *o, mp_pool *pool, value **in, value **out) {
  const mp_ncnn_layer *l = o->l;
  shape3 s = out[0]->s;
  int64_t n = numel(s);
  if (o->kind == OP_SPLIT) {
    for (int k = 0; k < l->n_outputs; k++) {
      out[k]->buf = in[0]->buf;
      in[0]->buf->refs++;
    }
    return NULL;
  }
  bool elementwise = o->kind == OP_PRELU || o->kind == OP_ACT || o->kind == OP_ELTWISE || o->kind == OP_BINARY;
  buffer *b = elementwise ? result_buffer(in[0], n) : buf_new(n);
  if (!b) return mp_errorf(LAYER_FMT ": out of memory for a [%d,%d,%d] output", LAYER_ARGS(l), s.c, s.h, s.w);
  out[0]->buf = b;
  float *y = b->data;
  const float *x = in[0]->buf->data;
  const shape3 is = in[0]->s;
  const int64_t plane = (int64_t)is.h * is.w;
  switch (o->kind) {
    case OP_CONV:
      MP_TRY(mp_error_wrap(mp_conv2d_nchw(pool, &o->conv, x, is.h, is.w, o->weight, o->bias, y), LAYER_FMT, LAYER_ARGS(l)));
      activate(y, n, o->act, o->act_a, o->act_b);
      break;
    case OP_PRELU:
      for (int c = 0; c < is.c; c++) {
        float a = o->slope[o->n_slope == 1 ? 0 : c];
        const float *xc = x + c * plane;
        float *yc = y + c * plane;
        for (int64_t i = 0; i < plane; i++) yc[i] = xc[i] < 0 ? xc[i] * a : xc[i];
      }
      break;
    case OP_ACT:
      if (y != x) memcpy(y, x, (size_t)n * sizeof *y);
      activate(y, n, o->act, o->act_a, o->act_b);
      break;
    case OP_CONCAT: {
      float *dst = y;
      for (int k = 0; k < l->n_inputs; k++) {
        int64_t nk = numel(in[k]->s);
        memcpy(dst, in[k]->buf->data, (size_t)nk * sizeof *dst);
        dst += nk;
      }
      break;
    }
    case OP_ELTWISE: {
      /* as ncnn: y = x0*c0 + x1*c1, then y += xk*ck for further inputs */
      const float *x1 = in[1]->buf->data;
      if (o->elt == ELT_SUM && o->n_coeffs) {
        float c0 = o->coeffs[0].f, c1 = o->coeffs[1].f;
        for (int64_t i = 0; i < n; i++) y[i] = x[i] * c0 + x1[i] * c1;
        for (int k = 2; k < l->n_inputs; k++) {
          const float *xk = in[k]->buf->data;
          float ck = o->coeffs[k].f;
          for (int64_t i = 0; i < n; i++) y[i] += xk[i] * ck;
        }
      } else {
        for (int k = 1; k < l->n_inputs; k++) {
          const float *xk = in[k]->buf->data, *acc = k == 1 ? x : y;
          for (int64_t i = 0; i < n; i++)
            y[i] = o->elt == ELT_SUM ? acc[i] + xk[i] : o->elt == ELT_PROD ? acc[i] * xk[i] : acc[i] > xk[i] ? acc[i] : xk[i];
        }
      }
      break;
    }
    case OP_BINARY:
      if (o->with_scalar)
        for (int64_t i = 0; i < n; i++) y[i] = binary(o->bin, x[i], o->scalar);
      else {
        const float *x1 = in[1]->buf->data;
        for (int64_t i = 0; i < n; i++) y[i] = binary(o->bin, x[i], x1[i]);
      }
      break;
    case OP_INTERP:
      for (int c = 0; c < s.c; c++)
        for (int oy = 0; oy < s.h; oy++) {
          const float *src = x + c * plane + (int64_t)(oy / o->scale_h) * is.w;
          float *dst = y + ((int64_t)c * s.h + oy) * s.w;
          for (int ox = 0; ox < s.w; ox++) dst[ox] = src[ox / o->scale_w];
        }
      break;
    case OP_PIXELSHUFFLE: {
      /* mode 0 (PyTorch, CRD): out[c, y*r+i, x*r+j] = in[c*r*r + i*r + j, y, x]; mode 1 (DCR): in[(i*r + j)*C + c] */
      const int r = o->shuffle_r;
      for (int c = 0; c < s.c; c++)
        for (int i = 0; i < r; i++)
          for (int j = 0; j < r; j++) {
            int ci = o->shuffle_mode == 0 ? (c * r + i) * r + j : (i * r + j) * s.c + c;
            const float *src = x + ci * plane;
            for (int yy = 0; yy < is.h; yy++) {
              float *dst = y + ((int64_t)c * s.h + yy * r + i) * s.w + j;
              const float *sr = src + (int64_t)yy * is.w;
              for (int xx = 0; xx < is.w; xx++) dst[(int64_t)xx * r] = sr[xx];
            }
          }
      break;
    }
    case OP_INPUT:
    case OP_SPLIT: break;
  }
  return NULL;
}

mp_error *mp_esrgan_forward(const mp_esrgan *m, mp_pool *pool, const float *in, int h, int w, float *out,
                            const mp_esrgan_tap *tap) {
  const mp_ncnn_model *g = m->net;
  if (h < 1 || w < 1) return mp_errorf("upscale: empty input %dx%d", h, w);
  value *vals = calloc((size_t)g->n_blobs, sizeof *vals);
  shape3 *shapes = calloc((size_t)g->n_blobs, sizeof *shapes);
  int max_io = 1;
  for (int i = 0; i < g->n_layers; i++) {
    if (g->layers[i].n_inputs > max_io) max_io = g->layers[i].n_inputs;
    if (g->layers[i].n_outputs > max_io) max_io = g->layers[i].n_outputs;
  }
  value **vin = calloc((size_t)max_io, sizeof *vin), **vout = calloc((size_t)max_io, sizeof *vout);
  mp_error *e = vals && shapes && vin && vout ? NULL : mp_errorf("out of memory");
  if (!e) e = infer_all(m, (shape3){3, h, w}, shapes);
  for (int b = 0; b < g->n_blobs && !e; b++) {
    vals[b].s = shapes[b];
    vals[b].pending = g->blobs[b].n_consumers + (b == m->output_blob);
  }
  for (int i = 0; i < g->n_layers && !e; i++) {
    const mp_ncnn_layer *l = &g->layers[i];
    const op *o = &m->ops[i];
    if (o->kind == OP_INPUT) {
      buffer *b = malloc(sizeof *b);
      if (!b) {
        e = mp_errorf("out of memory");
        break;
      }
      *b = (buffer){(float *)in, 1, false};
      vals[l->outputs[0]].buf = b;
    } else {
      for (int k = 0; k < l->n_inputs; k++) vin[k] = &vals[l->inputs[k]];
      for (int k = 0; k < l->n_outputs; k++) vout[k] = &vals[l->outputs[k]];
      e = run_op(o, pool, vin, vout);
      for (int k = 0; k < l->n_inputs; k++) {
        value *v = &vals[l->inputs[k]];
        if (--v->pending == 0) {
          buf_release(v->buf);
          v->buf = NULL;
        }
      }
    }
    for (int k = 0; k < l->n_outputs && !e; k++) {
      value *v = &vals[l->outputs[k]];
      if (tap && tap->fn) tap->fn(tap->ctx, g->blobs[l->outputs[k]].name, v->buf->data, v->s.c, v->s.h, v->s.w);
      if (v->pending == 0) {
        buf_release(v->buf);
        v->buf = NULL;
      }
    }
  }
  if (!e) {
    value *v = &vals[m->output_blob];
    memcpy(out, v->buf->data, (size_t)numel(v->s) * sizeof *out);
  }
  for (int b = 0; vals && b < g->n_blobs; b++)
    if (vals[b].buf) {
      buffer *buf = vals[b].buf;
      vals[b].buf = NULL;
      /* a buffer shared by several blobs is released once per blob */
      buf_release(buf);
    }
  free(vals);
  free(shapes);
  free(vin);
  free(vout);
  return e;
}

/* ---- the pipeline: border, tiles ---- */

uint8_t mp_esrgan_to_u8(float v) {
  float t = floorf(v * 255.0f + 0.5f);
  if (!(t >= 0.0f)) return 0;
  if (t >= 255.0f) return 255;
  return (uint8_t)t;
}

int mp_esrgan_default_context(const mp_esrgan *m) {
  /* Enough real neighbourhood that tiles join without visible seams. x4fast: its whole receptive
   * field (34 px), so a tiled result equals the untiled one. x4plus (RRDBNet) reaches ~350 px in
   * theory; measured on photo crops (tiled vs untiled, 8-bit), the largest difference is 28 levels
   * with 10 px of context (realesrgan-ncnn-vulkan's rule), 7 at 32, 9 at 48 and 1 at 64 (0.9 % of
   * values off by one), so it is capped at 64 (docs/upscale.md). */
  int r = m->receptive_radius;
  return r < MP_ESRGAN_BORDER ? MP_ESRGAN_BORDER : r > 64 ? 64 : r;
}

mp_esrgan_opts mp_esrgan_default_opts(const mp_esrgan *m) {
  return (mp_esrgan_opts){.tile = MP_ESRGAN_DEFAULT_TILE, .border = MP_ESRGAN_BORDER, .context = mp_esrgan_default_context(m)};
}

/* Mirror an index into [0, n) without repeating the edge (PyTorch "reflect"), folding again for
 * pads wider than the image. */
static int reflect(int i, int n) {
  if (n == 1) return 0;
  int period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

/* Where one tile's result goes. */
typedef struct {
  const float *net_out; /* [3, oh, ow] network output for the tile's window */
  int oh, ow;
  int crop_y, crop_x;   /* first kept pixel in net_out */
  int y, x;             /* where the kept block starts in the full output */
  int h, w;             /* kept block size */
} tile_result;

typedef void (*tile_sink)(void *ctx, const tile_result *t);

static mp_error *run_tiles(const mp_esrgan *m, mp_pool *pool, const float *in, int h, int w, const mp_esrgan_opts *o,
                           tile_sink sink, void *sink_ctx) {
  const mp_esrgan_opts defaults = mp_esrgan_default_opts(m);
  if (!o) o = &defaults;
  if (h < 1 || w < 1) return mp_errorf("upscale: empty image %dx%d", h, w);
  const int s = m->scale;
  const int border = o->border < 0 ? 0 : o->border;
  int context = o->context < 0 ? mp_esrgan_default_context(m) : o->context;
  if (context < 0) context = 0;
  const int tile = o->tile > 0 ? o->tile : (h > w ? h : w);
  const int ny = (h + tile - 1) / tile, nx = (w + tile - 1) / tile, total = ny * nx;
  const int max_win = tile + 2 * (context > border ? context : border);
  if ((int64_t)max_win * s > (1 << 20)) return mp_errorf("upscale: tile %d is too large", tile);
  float *win = mp_alloc((size_t)3 * max_win * max_win * sizeof(float));
  float *res = mp_alloc((size_t)3 * max_win * s * max_win * s * sizeof(float));
  mp_error *e = win && res ? NULL : mp_errorf("upscale: out of memory for a %d px tile", tile);
  int done = 0;
  for (int ty = 0; ty < ny && !e; ty++)
    for (int tx = 0; tx < nx && !e; tx++) {
      int y0 = ty * tile, x0 = tx * tile, y1 = y0 + tile < h ? y0 + tile : h, x1 = x0 + tile < w ? x0 + tile : w;
      /* the window: the tile plus `context` pixels each side, inside the image padded by `border`;
       * a side on the image edge always takes the whole border, as the untiled pipeline does */
      int wy0 = y0 == 0 ? -border : y0 - context, wx0 = x0 == 0 ? -border : x0 - context;
      int wy1 = y1 == h ? h + border : y1 + context, wx1 = x1 == w ? w + border : x1 + context;
      if (wy0 < -border) wy0 = -border;
      if (wx0 < -border) wx0 = -border;
      if (wy1 > h + border) wy1 = h + border;
      if (wx1 > w + border) wx1 = w + border;
      int wh = wy1 - wy0, ww = wx1 - wx0;
      for (int c = 0; c < 3; c++)
        for (int yy = 0; yy < wh; yy++) {
          const float *src = in + ((int64_t)c * h + reflect(wy0 + yy, h)) * w;
          float *dst = win + ((int64_t)c * wh + yy) * ww;
          for (int xx = 0; xx < ww; xx++) dst[xx] = src[reflect(wx0 + xx, w)];
        }
      e = mp_esrgan_forward(m, pool, win, wh, ww, res, NULL);
      if (e) {
        e = mp_error_wrap(e, "tile %d of %d (pixels %d..%d x %d..%d)", done + 1, total, x0, x1 - 1, y0, y1 - 1);
        break;
      }
      tile_result t = {res, wh * s, ww * s, (y0 - wy0) * s, (x0 - wx0) * s, y0 * s, x0 * s, (y1 - y0) * s, (x1 - x0) * s};
      sink(sink_ctx, &t);
      done++;
      if (o->progress) o->progress(o->progress_ctx, done, total);
    }
  mp_free(win);
  mp_free(res);
  return e;
}

typedef struct {
  float *out;
  int oh, ow; /* full output */
} float_sink_ctx;

static void float_sink(void *ctx, const tile_result *t) {
  float_sink_ctx *f = ctx;
  for (int c = 0; c < 3; c++)
    for (int y = 0; y < t->h; y++)
      memcpy(f->out + ((int64_t)c * f->oh + t->y + y) * f->ow + t->x,
             t->net_out + ((int64_t)c * t->oh + t->crop_y + y) * t->ow + t->crop_x, (size_t)t->w * sizeof(float));
}

mp_error *mp_esrgan_upscale(const mp_esrgan *m, mp_pool *pool, const float *in, int h, int w, const mp_esrgan_opts *o,
                            float *out) {
  float_sink_ctx f = {out, h * m->scale, w * m->scale};
  return run_tiles(m, pool, in, h, w, o, float_sink, &f);
}

typedef struct {
  mp_image *img;
  int down; /* model scale / output scale */
} image_sink_ctx;

static void image_sink(void *ctx, const tile_result *t) {
  image_sink_ctx *k = ctx;
  const int d = k->down, W = k->img->width;
  const float inv = 1.0f / (float)(d * d);
  for (int y = 0; y < t->h / d; y++)
    for (int x = 0; x < t->w / d; x++) {
      uint8_t *px = k->img->pixels + ((int64_t)(t->y / d + y) * W + t->x / d + x) * 3;
      for (int c = 0; c < 3; c++) {
        const float *src = t->net_out + ((int64_t)c * t->oh + t->crop_y + y * d) * t->ow + t->crop_x + x * d;
        float acc = 0;
        for (int i = 0; i < d; i++)
          for (int j = 0; j < d; j++) acc += src[(int64_t)i * t->ow + j];
        px[c] = mp_esrgan_to_u8(d == 1 ? acc : acc * inv);
      }
    }
}

mp_error *mp_esrgan_upscale_image(const mp_esrgan *m, mp_pool *pool, const mp_image *in, int out_scale,
                                  const mp_esrgan_opts *o, mp_image *out) {
  memset(out, 0, sizeof *out);
  if (in->channels != 3) return mp_errorf("upscale: expected an RGB image, got %d channels", in->channels);
  if (out_scale < 1 || m->scale % out_scale != 0)
    return mp_errorf("upscale: scale %d is not available from a x%d model (use %d or a divisor of it)", out_scale, m->scale,
                     m->scale);
  if ((int64_t)in->width * out_scale > MP_IMAGE_MAX_SIDE || (int64_t)in->height * out_scale > MP_IMAGE_MAX_SIDE)
    return mp_errorf("upscale: a %dx%d image x%d would exceed %d px per side", in->width, in->height, out_scale,
                     MP_IMAGE_MAX_SIDE);
  const int h = in->height, w = in->width;
  float *planar = mp_alloc((size_t)3 * h * w * sizeof(float));
  if (!planar) return mp_errorf("upscale: out of memory for a %dx%d image", w, h);
  /* u8 / 255 exactly as the reference (IEEE division) */
  for (int64_t i = 0; i < (int64_t)h * w; i++)
    for (int c = 0; c < 3; c++) planar[(int64_t)c * h * w + i] = (float)in->pixels[i * 3 + c] / 255.0f;
  mp_error *e = mp_image_alloc(out, w * out_scale, h * out_scale, 3);
  if (!e) {
    image_sink_ctx k = {out, m->scale / out_scale};
    e = run_tiles(m, pool, planar, h, w, o, image_sink, &k);
    if (e) mp_image_free(out);
  }
  mp_free(planar);
  return e;
}
