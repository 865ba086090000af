#include "core/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mp_error {
  char *message; /* NULL only for the static out-of-memory error */
};

/* Returned when an error cannot be allocated. Immutable, never freed. */
static struct mp_error oom_error = {NULL};

mp_error *mp_verrorf(const char *fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap2);
  va_end(ap2);
  if (n < 0) n = 0;
  mp_error *e = malloc(sizeof *e);
  char *msg = malloc((size_t)n + 1);
  if (!e || !msg) {
    free(e);
    free(msg);
    return &oom_error;
  }
  vsnprintf(msg, (size_t)n + 1, fmt, ap);
  e->message = msg;
  return e;
}

mp_error *mp_errorf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  mp_error *e = mp_verrorf(fmt, ap);
  va_end(ap);
  return e;
}

mp_error *mp_error_wrap(mp_error *inner, const char *fmt, ...) {
  if (!inner) return NULL;
  if (inner == &oom_error) return inner;
  va_list ap;
  va_start(ap, fmt);
  mp_error *ctx = mp_verrorf(fmt, ap);
  va_end(ap);
  if (ctx == &oom_error) return inner;
  size_t a = strlen(ctx->message), b = strlen(inner->message);
  char *msg = malloc(a + 2 + b + 1);
  if (!msg) {
    mp_error_free(ctx);
    return inner;
  }
  memcpy(msg, ctx->message, a);
  memcpy(msg + a, ": ", 2);
  memcpy(msg + a + 2, inner->message, b + 1);
  free(inner->message);
  inner->message = msg;
  mp_error_free(ctx);
  return inner;
}

const char *mp_error_message(const mp_error *e) {
  if (!e) return "no error";
  return e->message ? e->message : "out of memory";
}

void mp_error_free(mp_error *e) {
  if (!e || e == &oom_error) return;
  free(e->message);
  free(e);
}
