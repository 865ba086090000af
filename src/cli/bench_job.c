/* mpass bench --job FILE.prompt: a whole prompt document, timed pass by pass.
 *
 *   mpass [--threads N] [--precision …] [--models DIR] bench --job FILE.prompt [--profile] [run's options: --model CKPT …]
 *
 * Runs the document exactly as `mpass run` does (same options, same outputs) and times it from the
 * pipeline's own progress reports: a pass runs from its report to the next one (or the end of the job),
 * so its seconds include what follows its last step (the VAE decode, writing the image). Its steps
 * seconds run from the start of its sampler (after conditioning, LoRA and image encode) to its last
 * step's report, i.e. the model evaluations and the sampler; s/eval divides them by its model
 * evaluations (one per denoiser call, CFG halves in one batch). Each pass is
 * compared with the first pass of the same size: a whole job runs "at the speed of its steps" when
 * that ratio stays near 1. Ends with the total, the peak RSS and one machine-readable line:
 *   bench-job: passes=… evaluations=… load_s=… total_s=… peak_rss_mb=… */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli/commands.h"
#include "core/attention_bf16.h"
#include "core/clock.h"
#include "core/context.h"
#include "core/cpu_kernels.h"
#include "core/profile.h"

typedef struct {
  char *name;
  int image, width, height, evaluations;
  double start, last_step, end; /* seconds since the job started */
  double steps;                  /* seconds from the start of its sampler to its last step */
  double cpu_start, cpu_end;
} pass_time;

typedef struct {
  double t0, cpu0;
  pass_time *passes;
  int n, cap;
  bool oom;
} job_clock;

static double cpu_seconds(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
         1e-6 * (double)ru.ru_stime.tv_usec;
}

static void close_pass(job_clock *c, double now, double cpu) {
  if (c->n > 0 && c->passes[c->n - 1].end < 0) c->passes[c->n - 1].end = now, c->passes[c->n - 1].cpu_end = cpu;
}

static int on_progress(const mpass_progress *p, void *user) {
  job_clock *c = user;
  const double now = mp_now() - c->t0, cpu = cpu_seconds() - c->cpu0;
  if (p->step > 0) { /* a step of the current pass */
    if (c->n > 0) {
      pass_time *t = &c->passes[c->n - 1];
      t->last_step = now, t->evaluations = p->evaluations, t->steps = p->sec_per_it * p->step;
    }
    return 0;
  }
  close_pass(c, now, cpu);
  if (c->n == c->cap) {
    int cap = c->cap ? 2 * c->cap : 32;
    pass_time *grown = realloc(c->passes, sizeof *grown * (size_t)cap);
    if (!grown) {
      c->oom = true;
      return 0; /* the job goes on; the table says it is incomplete */
    }
    c->passes = grown, c->cap = cap;
  }
  pass_time *t = &c->passes[c->n];
  *t = (pass_time){.name = strdup(p->pass ? p->pass : ""), .image = p->image, .width = p->width, .height = p->height,
                   .start = now, .last_step = -1, .end = -1, .cpu_start = cpu, .cpu_end = -1};
  if (!t->name) c->oom = true;
  else c->n++;
  return 0;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

static void print_table(const job_clock *c, double total, double cpu_total) {
  printf("\n%-7s %-22s %10s %6s %9s %9s %9s %8s %9s\n", "image", "pass", "size", "evals", "seconds", "steps", "s/eval",
         "CPU/wall", "vs first");
  const double load = c->n > 0 ? c->passes[0].start : total;
  printf("%-7s %-22s %10s %6s %9.2f\n", "-", "load (models, tokenizer)", "-", "-", load);
  int evals = 0;
  for (int i = 0; i < c->n; i++) {
    const pass_time *t = &c->passes[i];
    char size[24] = "-", per[16] = "-", sampling[16] = "-", ratio[16] = "-";
    const double secs = t->end - t->start, cpu = t->cpu_end - t->cpu_start;
    if (t->width > 0) snprintf(size, sizeof size, "%dx%d", t->width, t->height);
    if (t->evaluations > 0 && t->last_step >= 0) {
      const double s = t->steps, spe = s / t->evaluations;
      snprintf(sampling, sizeof sampling, "%.2f", s);
      snprintf(per, sizeof per, "%.3f", spe);
      for (int j = 0; j <= i; j++) { /* the first pass of this size with evaluations */
        const pass_time *f = &c->passes[j];
        if (f->width == t->width && f->height == t->height && f->evaluations > 0 && f->last_step >= 0) {
          snprintf(ratio, sizeof ratio, "%.2f", spe / (f->steps / f->evaluations));
          break;
        }
      }
    }
    evals += t->evaluations;
    printf("%-7d %-22s %10s %6d %9.2f %9s %9s %8.2f %9s\n", t->image + 1, t->name, size, t->evaluations, secs, sampling, per,
           secs > 0 ? cpu / secs : 0, ratio);
  }
  printf("%-7s %-22s %10s %6d %9.2f %9s %9s %8.2f\n", "total", "", "", evals, total, "", "", total > 0 ? cpu_total / total : 0);
  printf("peak RSS %.0f MB%s\n", peak_rss_mb(), c->oom ? " (out of memory while timing: some passes are missing)" : "");
  printf("bench-job: passes=%d evaluations=%d load_s=%.2f total_s=%.2f peak_rss_mb=%.0f\n", c->n, evals, load, total, peak_rss_mb());
}

void cli_print_kernels(const mpass_ctx *ctx) {
  char blas[256];
  mp_openblas_describe(blas, sizeof blas);
  printf("OpenBLAS kernels: %s\n", blas); /* the f32 path's sgemm */
  if (ctx->precision != MP_PRECISION_BF16) return;
  char mm[96], conv[96];
  mp_error *e = mp_bf16_kernel_names(mm, sizeof mm, conv, sizeof conv);
  if (e) printf("bf16 kernels: unknown (%s)\n", mp_error_message(e));
  else /* the attention's products are ours (core/attention_bf16.h) */
    printf("bf16 kernels: matmul %s, 3x3 conv %s, attention %s\n", mm, conv,
           mp_attention_kernel_name(mp_attention_kernel_for(ctx->pool, false)));
  mp_error_free(e);
}

int cli_bench_job(mpass_ctx *ctx, int argc, char **argv, bool profile) {
  char la[128] = "";
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (!fgets(la, sizeof la, f)) la[0] = 0;
    fclose(f);
  }
  char *nl = strchr(la, '\n');
  if (nl) *nl = 0;
  char line[160];
  printf("bench --job: %s; load average before: %s\n", mpass_ctx_describe(ctx, line, sizeof line), la);
  cli_print_kernels(ctx);
  fflush(stdout);
  mp_profile prof = {0};
  if (profile) mp_pool_set_profile(ctx->pool, &prof);
  job_clock c = {.t0 = mp_now(), .cpu0 = cpu_seconds()};
  int rc = cli_run_document(ctx, argc, argv, "bench", on_progress, &c);
  const double total = mp_now() - c.t0, cpu_total = cpu_seconds() - c.cpu0;
  mp_pool_set_profile(ctx->pool, NULL);
  close_pass(&c, total, cpu_total);
  if (rc == 0) {
    print_table(&c, total, cpu_total);
    if (profile) {
      printf("\nop classes over the whole job (\"other\": everything else, incl. loading and image I/O):\n");
      mp_profile_print(&prof, stdout, total, 1, "job");
    }
  }
  for (int i = 0; i < c.n; i++) free(c.passes[i].name);
  free(c.passes);
  return rc;
}
