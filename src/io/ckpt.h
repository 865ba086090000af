/* PyTorch zip checkpoints (.ckpt/.pt/.pth/.bin written by torch.save since 1.6).
 *
 * The reader never runs pickle code: data.pkl is interpreted by a small pickle machine that knows only
 * the opcodes torch.save emits and a fixed list of globals, which it treats as names, never as calls.
 * mp_ckpt_open (declared in io/weights.h) maps the file and calls mp_ckpt_parse. */
#ifndef MP_IO_CKPT_H
#define MP_IO_CKPT_H

#include <stdbool.h>
#include <stddef.h>

#include "core/tensor.h"
#include "io/weights.h"

/* Parse a whole checkpoint held in memory (`buf` must outlive w: stored tensors view it in place).
 * Tensors come from the top-level dict, or from its "state_dict" entry when that is a dict. Calls
 * mp_weights_finish. `path` only names the file in error messages. */
mp_error *mp_ckpt_parse(const char *path, const void *buf, size_t size, mp_weights *w);

/* Write tensors the way torch.save writes a state dict: a protocol-2 pickle of an OrderedDict (wrapped
 * in {"state_dict": ...} when nest_state_dict), one storage per tensor under archive/data/<i>, all
 * entries STORED in a zip with the data 64-byte aligned. For tests and for converting to .ckpt. */
mp_error *mp_ckpt_write(const char *path, size_t n, const char *const *names, const mp_tensor *tensors,
                        bool nest_state_dict);

#endif
