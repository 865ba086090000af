/* libFuzzer target: the prompt document parser (both forms) and the plan built from what it accepts.
 * The first byte picks the form so one corpus explores both. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "prompt/document.h"
#include "prompt/plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  bool json = data[0] & 1;
  const char *doc = (const char *)data + 1;
  size_t len = size - 1;
  mp_job *job = NULL;
  mp_error *e = json ? mp_job_parse_json(doc, len, &job) : mp_job_parse_text(doc, len, &job);
  if (e) {
    (void)mp_error_message(e);
    mp_error_free(e);
    return 0;
  }
  mp_plan *plan = NULL;
  e = mp_plan_make(job, &plan);
  if (!e) {
    char *text = NULL;
    mp_error *je = mp_plan_to_json(plan, &text);
    if (je) mp_error_free(je);
    free(text);
    FILE *devnull = fopen("/dev/null", "w");
    if (devnull) {
      mp_plan_print(plan, devnull);
      fclose(devnull);
    }
    mp_plan_free(plan);
  } else mp_error_free(e);
  mp_job_free(job);
  return 0;
}
