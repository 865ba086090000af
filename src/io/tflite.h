/* TFLite models: a FlatBuffers reader for the TFLite schema and a small f32 interpreter.
 *
 * Loading reads the whole file, checks every offset and length against it (a corrupt or hostile
 * file is an error, never an out-of-bounds read), turns constants into f32 (fp16 dequantised,
 * sparse tensors densified), folds DEQUANTIZE/DENSIFY of constants away, checks every operator's
 * shapes, and names any operator it cannot run. Running fills the activations op by op, NHWC,
 * batch 1, in float32; a buffer is freed after its last reader. */
#ifndef MP_IO_TFLITE_H
#define MP_IO_TFLITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/threads.h"

typedef struct mp_tflite mp_tflite;

mp_error *mp_tflite_open(const char *path, mp_tflite **out);
/* Parse from memory (the bytes are copied). */
mp_error *mp_tflite_open_memory(const uint8_t *data, size_t n, mp_tflite **out);
void mp_tflite_close(mp_tflite *m);

/* Graph inputs/outputs. Shapes are the file's (int32, outermost first). */
int mp_tflite_n_inputs(const mp_tflite *m);
int mp_tflite_n_outputs(const mp_tflite *m);
const char *mp_tflite_output_name(const mp_tflite *m, int i);
/* Shape of input/output i: returns ndim and fills shape (up to 8 dims). */
int mp_tflite_input_shape(const mp_tflite *m, int i, int32_t *shape);
int mp_tflite_output_shape(const mp_tflite *m, int i, int32_t *shape);
int64_t mp_tflite_input_numel(const mp_tflite *m, int i);

/* Run the graph on the inputs (one f32 buffer per input, n = its element count). */
mp_error *mp_tflite_run(mp_tflite *m, mp_pool *pool, const float *const *inputs);
/* Output i (or by tensor name, NULL if absent) of the last run; valid until the next run/close. */
const float *mp_tflite_output(const mp_tflite *m, int i, int64_t *numel);
const float *mp_tflite_output_by_name(const mp_tflite *m, const char *name, int64_t *numel);

/* Rough multiply-add count of one run (for callers that must bound the work, e.g. the fuzzer). */
int64_t mp_tflite_work(const mp_tflite *m);

/* Time each operator type over the following runs; the report is "CONV_2D 0.120 s, ..." (caller
 * frees; NULL when not profiling). */
void mp_tflite_profile(mp_tflite *m, bool on);
char *mp_tflite_profile_report(const mp_tflite *m);

/* "CONV_2D x12, DEPTHWISE_CONV_2D x10, ..." — the operators the model uses (caller frees). */
char *mp_tflite_op_summary(const mp_tflite *m);

#endif
