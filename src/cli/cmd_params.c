/* mpass params IMAGE.png [--json | --raw | --command]: the generation parameters stored in a PNG's
 * "parameters" text chunk (AUTOMATIC1111's infotext, as `mpass generate` and `mpass run` write it),
 * parsed; or the raw text; or an `mpass generate` command line that makes the image again. */
#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/commands.h"
#include "io/image.h"
#include "pipeline/params.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpass params IMAGE.png [--json | --raw | --command]\n"
          "  (default)  prompt, negative prompt and every field, one per line\n"
          "  --json     {\"prompt\": ..., \"negative_prompt\": ..., \"fields\": {\"Steps\": \"30\", ...}}\n"
          "  --raw      the stored text as it is\n"
          "  --command  an `mpass generate` command line with these parameters\n");
}

/* "Key: value", continuation lines of a multi-line value indented by two spaces. */
static void print_field(const char *key, const char *value) {
  printf("%s: ", key);
  for (const char *c = value; *c; c++) {
    putchar(*c);
    if (*c == '\n') fputs("  ", stdout);
  }
  putchar('\n');
}

/* A word for a POSIX shell: single-quoted, with ' written as '\''. */
static void print_quoted(const char *s) {
  putchar('\'');
  for (const char *c = s; *c; c++) {
    if (*c == '\'')
      fputs("'\\''", stdout);
    else
      putchar(*c);
  }
  putchar('\'');
}

/* Does the "Lora weights" list ("name: 0.8, name2: 1") name `name` (n bytes)? */
static bool lora_weights_name(const char *loras, const char *name, size_t n) {
  while (loras && *loras) {
    const char *sep = strstr(loras, ": ");
    if (!sep) return false;
    if ((size_t)(sep - loras) == n && strncmp(loras, name, n) == 0) return true;
    loras = strstr(sep, ", ");
    if (loras) loras += 2;
  }
  return false;
}

/* The prompt as it was given to `mpass generate`: the <lora:NAME:...> tags at its end that stand for
 * the "Lora weights" LoRAs (given with --lora, written as tags for AUTOMATIC1111) come off, since the
 * command gives those LoRAs with --lora again. Caller frees. */
static char *prompt_without_flag_tags(const mp_infotext *it) {
  char *p = strdup(it->prompt);
  const char *loras = mp_infotext_get(it, "Lora weights");
  if (!p || !loras) return p;
  for (;;) {
    size_t n = strlen(p);
    char *tag = n && p[n - 1] == '>' ? strrchr(p, '<') : NULL;
    if (!tag || strncmp(tag, "<lora:", 6) != 0) break;
    const char *name = tag + 6, *colon = strchr(name, ':');
    if (!colon || !lora_weights_name(loras, name, (size_t)(colon - name))) break;
    while (tag > p && tag[-1] == ' ') tag--;
    *tag = 0;
  }
  return p;
}

static void print_command(const mp_infotext *it) {
  fputs("mpass generate", stdout);
  const char *model = mp_infotext_get(it, "Model");
  if (model) {
    fputs(" --model ", stdout);
    char file[512];
    snprintf(file, sizeof file, "%s.safetensors", model);
    print_quoted(file);
  }
  fputs(" -p ", stdout);
  char *prompt = prompt_without_flag_tags(it);
  print_quoted(prompt ? prompt : it->prompt);
  free(prompt);
  if (*it->negative_prompt) {
    fputs(" -n ", stdout);
    print_quoted(it->negative_prompt);
  }
  const char *scheduler = NULL, *sampler = mp_infotext_get(it, "Sampler");
  if (sampler && mp_scheduler_from_a1111(sampler, mp_infotext_get(it, "Schedule type"), &scheduler))
    printf(" --sampler %s", scheduler);
  else if (sampler)
    fprintf(stderr, "mpass params: sampler '%s' has no mpass equivalent; --sampler left out\n", sampler);
  long long v;
  double r;
  mp_error *e;
  if (!(e = mp_infotext_get_int(it, "Steps", &v))) printf(" --steps %lld", v);
  mp_error_free(e);
  if (!(e = mp_infotext_get_real(it, "CFG scale", &r))) printf(" --cfg %g", r);
  mp_error_free(e);
  if (!(e = mp_infotext_get_int(it, "Seed", &v))) printf(" --seed %lld", v);
  mp_error_free(e);
  int w, h;
  if (!(e = mp_infotext_get_size(it, "Size", &w, &h))) printf(" -W %d -H %d", w, h);
  mp_error_free(e);
  if (!(e = mp_infotext_get_real(it, "Denoising strength", &r))) printf(" --init-img INIT.png --strength %g", r);
  mp_error_free(e);
  if (!(e = mp_infotext_get_int(it, "Clip skip", &v)) && v > 1) printf(" --clip-skip %lld", v);
  mp_error_free(e);
  const char *rng = mp_infotext_get(it, "RNG");
  if (rng && strcmp(rng, "CPU") == 0) fputs(" --rng cpu", stdout);
  /* "Lora weights: "name: 0.8, name2: 1"" (mpass's field beside A1111's "Lora hashes") */
  const char *loras = mp_infotext_get(it, "Lora weights");
  while (loras && *loras) {
    const char *end = strstr(loras, ", ");
    size_t n = end ? (size_t)(end - loras) : strlen(loras);
    char item[256];
    snprintf(item, sizeof item, "%.*s", (int)(n < 255 ? n : 255), loras);
    char *sep = strstr(item, ": ");
    if (sep) {
      *sep = 0;
      fputs(" --lora ", stdout);
      char arg[300];
      snprintf(arg, sizeof arg, "%s:%s", item, sep + 2);
      print_quoted(arg);
    }
    loras = end ? end + 2 : NULL;
  }
  putchar('\n');
}

int cmd_params(mpass_ctx *ctx, int argc, char **argv) {
  (void)ctx;
  static const struct option longopts[] = {{"json", no_argument, 0, 'j'}, {"raw", no_argument, 0, 'r'},
                                           {"command", no_argument, 0, 'c'}, {"help", no_argument, 0, 'h'},
                                           {0, 0, 0, 0}};
  int mode = 0, opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (opt) {
      case 'j':
      case 'r':
      case 'c': mode = opt; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    usage(stderr);
    return 2;
  }
  const char *path = argv[optind];
  char *text = NULL;
  mp_error *e = mp_image_read_png_text(path, "parameters", &text);
  if (e) return cli_fail("params", e);
  if (!text) {
    fprintf(stderr, "mpass params: %s has no \"parameters\" text (it was not written by mpass, AUTOMATIC1111 or a tool "
                    "that shares their format)\n", path);
    return 1;
  }
  if (mode == 'r') {
    printf("%s\n", text);
    free(text);
    return 0;
  }
  mp_infotext it;
  e = mp_infotext_parse(text, &it);
  free(text);
  if (e) return cli_fail("params", mp_error_wrap(e, "%s", path));
  int rc = 0;
  if (mode == 'j') {
    cJSON *root = cJSON_CreateObject(), *fields = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "prompt", it.prompt);
    cJSON_AddStringToObject(root, "negative_prompt", it.negative_prompt);
    for (size_t i = 0; i < it.n_fields; i++) cJSON_AddStringToObject(fields, it.fields[i].key, it.fields[i].value);
    cJSON_AddItemToObject(root, "fields", fields);
    char *json = cJSON_Print(root);
    if (json) printf("%s\n", json);
    else rc = cli_fail("params", mp_errorf("out of memory"));
    free(json);
    cJSON_Delete(root);
  } else if (mode == 'c') {
    print_command(&it);
  } else {
    print_field("Prompt", it.prompt);
    if (*it.negative_prompt) print_field("Negative prompt", it.negative_prompt);
    for (size_t i = 0; i < it.n_fields; i++) print_field(it.fields[i].key, it.fields[i].value);
  }
  mp_infotext_free(&it);
  return rc;
}
