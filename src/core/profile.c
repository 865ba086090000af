#include "core/profile.h"

#include <string.h>

const char *mp_op_class_name(mp_op_class c) {
  static const char *const names[MP_OP_CLASSES] = {"conv 3x3", "dense/1x1", "attention", "norms"};
  return (unsigned)c < MP_OP_CLASSES ? names[c] : "other";
}

void mp_profile_reset(mp_profile *p) {
  if (p) memset(p, 0, sizeof *p);
}

void mp_profile_print(const mp_profile *p, FILE *out, double span_seconds, int n_steps, const char *unit) {
  if (n_steps < 1) n_steps = 1;
  const double step = span_seconds / n_steps;
  double timed = 0;
  for (int c = 0; c < MP_OP_CLASSES; c++) timed += p->seconds[c];
  char per[32], calls[32];
  snprintf(per, sizeof per, "s/%s", unit), snprintf(calls, sizeof calls, "calls/%s", unit);
  fprintf(out, "%-12s %10s %7s %10s\n", "op class", per, "%", calls);
  for (int c = 0; c < MP_OP_CLASSES; c++) {
    const double s = p->seconds[c] / n_steps;
    fprintf(out, "%-12s %10.4f %6.1f%% %10.0f\n", mp_op_class_name((mp_op_class)c), s, step > 0 ? 100 * s / step : 0,
            (double)p->calls[c] / n_steps);
  }
  const double other = (span_seconds - timed) / n_steps;
  fprintf(out, "%-12s %10.4f %6.1f%% %10s\n", "other", other, step > 0 ? 100 * other / step : 0, "-");
  fprintf(out, "%-12s %10.4f %6.1f%%   (%d %s%s measured)\n", unit, step, 100.0, n_steps, unit, n_steps == 1 ? "" : "s");
}
