#include "pipeline/progress.h"

#include <string.h>

static void report(mp_progress *p) {
  p->cur.elapsed_seconds = mp_now() - p->job_start;
  if (p->fn && p->fn(&p->cur, p->user)) p->cancelled = true;
}

void mp_progress_init(mp_progress *p, mpass_progress_fn fn, void *user, int n_images) {
  memset(p, 0, sizeof *p);
  p->fn = fn;
  p->user = user;
  p->cur.n_images = n_images;
  p->cur.eta_seconds = -1;
  p->job_start = p->pass_start = p->steps_start = mp_now();
}

void mp_progress_pass(mp_progress *p, int image, const char *pass, int n_steps) {
  mp_progress_pass_sized(p, image, pass, n_steps, 0, 0);
}

void mp_progress_pass_sized(mp_progress *p, int image, const char *pass, int n_steps, int width, int height) {
  p->pass_start = p->steps_start = mp_now();
  p->cur.width = width;
  p->cur.height = height;
  p->cur.evaluations = 0;
  p->cur.image = image;
  p->cur.pass = pass;
  p->cur.step = 0;
  p->cur.n_steps = n_steps;
  p->cur.sec_per_it = 0;
  p->cur.eta_seconds = -1;
  report(p);
}

bool mp_progress_step(mp_progress *p, int step) {
  p->cur.step = step;
  p->cur.sec_per_it = step > 0 ? (mp_now() - p->steps_start) / step : 0;
  p->cur.eta_seconds = p->cur.n_steps > 0 ? p->cur.sec_per_it * (p->cur.n_steps - step) : -1;
  report(p);
  return p->cancelled;
}

void mp_progress_sampling_starts(mp_progress *p) { p->steps_start = mp_now(); }

void mp_progress_evaluation(mp_progress *p) { p->cur.evaluations++; }

bool mp_progress_cancelled(const mp_progress *p) { return p->cancelled; }

void mp_progress_format(const mpass_progress *p, char *buf, size_t cap) {
  int n = snprintf(buf, cap, "image %d/%d · %s", p->image + 1, p->n_images, p->pass ? p->pass : "");
  if (n < 0 || (size_t)n >= cap || p->n_steps <= 0) return;
  n += snprintf(buf + n, cap - (size_t)n, " · step %d/%d", p->step, p->n_steps);
  if (p->step <= 0 || (size_t)n >= cap) return;
  if (p->sec_per_it >= 1)
    n += snprintf(buf + n, cap - (size_t)n, " · %.2f s/it", p->sec_per_it);
  else
    n += snprintf(buf + n, cap - (size_t)n, " · %.2f it/s", p->sec_per_it > 0 ? 1.0 / p->sec_per_it : 0.0);
  if (p->eta_seconds >= 0 && (size_t)n < cap) {
    int eta = (int)(p->eta_seconds + 0.5);
    snprintf(buf + n, cap - (size_t)n, " · ETA %d:%02d", eta / 60, eta % 60);
  }
}
