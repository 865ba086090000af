/* Errors: one type, a chain of context messages.
 *
 * Every function that can fail returns `mp_error *`: NULL on success, otherwise an error the caller
 * owns. Callers add context as the error travels up ("loading model.safetensors: tensor X: expected
 * [32,32], found [32,16]") with mp_error_wrap, and the outermost door (CLI, server) prints it. */
#ifndef MP_CORE_ERROR_H
#define MP_CORE_ERROR_H

#include <stdarg.h>

typedef struct mp_error mp_error;

/* A new error with a printf-style message. Never returns NULL (out of memory yields a static error). */
mp_error *mp_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
mp_error *mp_verrorf(const char *fmt, va_list ap);

/* Prefix `inner` with context: "<context>: <inner message>". Takes ownership of inner; NULL in -> NULL out. */
mp_error *mp_error_wrap(mp_error *inner, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The whole chain as one line. Valid until the error is freed. */
const char *mp_error_message(const mp_error *e);

void mp_error_free(mp_error *e);

/* Propagate an error up unchanged. */
#define MP_TRY(expr)                  \
  do {                                \
    mp_error *mp_try_err_ = (expr);   \
    if (mp_try_err_) return mp_try_err_; \
  } while (0)

#endif
