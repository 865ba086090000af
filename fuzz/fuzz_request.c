/* libFuzzer target: what `mpass serve` does with a request before anything is stored. The first byte
 * picks the door: a JSON create body, form fields (NUL-separated name/value pairs), a path against
 * every route pattern, or a listen address. Accepted bodies go on through the stored document, seed
 * pinning and both parsers (the server's prompt object and mpass_job_parse with its plan). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mpass/mpass.h"
#include "prompt/document.h"
#include "server/prompt_json.h"
#include "server/request.h"

static void through_document(cJSON *prompt) {
  ms_document d;
  char msg[256];
  if (ms_document_build(prompt, NULL, NULL, &d, msg) != 0) return;
  mp_job *job = NULL;
  mp_error *e = d.is_json ? mp_job_parse_json(d.document, d.len, &job) : mp_job_parse_text(d.document, d.len, &job);
  if (!e && job->seed_random) e = ms_document_pin_seed(&d, job->seed);
  if (!e) {
    cJSON *params = ms_prompt_params(job);
    char *s = params ? cJSON_PrintUnformatted(params) : NULL;
    free(s);
    cJSON_Delete(params);
    mpass_job *mj = NULL;
    mp_error *pe = mpass_job_parse(d.document, d.len, d.is_json, &mj);
    if (!pe) {
      char *plan = NULL;
      mp_error *je = mpass_job_plan_json(mj, &plan);
      mp_error_free(je);
      free(plan);
      mpass_job_free(mj);
    }
    mp_error_free(pe);
  }
  mp_error_free(e);
  mp_job_free(job);
  ms_document_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  int door = data[0] & 3;
  const char *in = (const char *)data + 1;
  size_t n = size - 1;
  char msg[256];
  if (door == 0) {
    cJSON *p = NULL;
    if (ms_prompt_from_json(in, n, &p, msg) == 0) through_document(p);
    cJSON_Delete(p);
  } else if (door == 1) {
    ms_form f = {0};
    size_t i = 0;
    while (i < n && f.n < 64) {
      const char *name = in + i;
      size_t nl = strnlen(name, n - i);
      i += nl + 1;
      const char *val = i < n ? in + i : "";
      size_t vl = i < n ? strnlen(val, n - i) : 0;
      i += vl + 1;
      ms_field *g = realloc(f.f, sizeof *g * (size_t)(f.n + 1));
      if (!g) break;
      f.f = g;
      memset(&f.f[f.n], 0, sizeof *f.f);
      f.f[f.n].name = strndup(name, nl);
      f.f[f.n].value = strndup(val, vl);
      f.f[f.n].len = vl;
      f.n++, f.cap = f.n;
    }
    cJSON *p = NULL;
    if (ms_prompt_from_form(&f, &p, msg) == 0) through_document(p);
    cJSON_Delete(p);
    ms_form_free(&f);
  } else if (door == 2) {
    static const char *const patterns[] = {"/prompts/:id", "/tunes/:id/prompts/:id", "/images/:id/*", "/prompts"};
    char *path = strndup(in, n);
    int64_t ids[4];
    const char *tail;
    for (size_t k = 0; path && k < sizeof patterns / sizeof *patterns; k++)
      if (ms_path_match(patterns[k], path, ids, &tail) && tail && (strchr(tail, '/') || tail[0] == '.')) abort();
    free(path);
  } else {
    char *s = strndup(in, n), host[64];
    int port;
    mp_error *e = s ? ms_parse_listen(s, host, &port) : NULL;
    mp_error_free(e);
    free(s);
  }
  return 0;
}
