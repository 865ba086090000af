/* mpass tune add|list|show|remove: register person models (tunes) in the models folder. */
#include <stdio.h>
#include <string.h>

#include "cli/commands.h"
#include "core/context.h"
#include "core/error.h"
#include "pipeline/tunes.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpass [--models DIR] tune add --id ID --name CLASS --token TOKEN --type lora|checkpoint\n"
          "                                     [--title TITLE] [--family sd15|sd2|sdxl] FILE\n"
          "       mpass [--models DIR] tune list\n"
          "       mpass [--models DIR] tune show ID\n"
          "       mpass [--models DIR] tune remove ID\n");
}

static void print_tune(const mp_tune *t) {
  printf("id:         %s\n", t->id);
  printf("title:      %s\n", t->title);
  printf("class:      %s\n", t->name);
  printf("token:      %s\n", t->token);
  printf("type:       %s\n", mp_tune_type_name(t->type));
  printf("family:     %s\n", t->family);
  printf("file:       %s\n", t->file);
  if (t->sha256) printf("sha256:     %s\n", t->sha256);
  if (t->created_at) printf("created at: %s\n", t->created_at);
  printf("use it as:  <lora:%s:1> ... %s %s\n", t->id, t->token, t->name);
}

static int tune_add(mpass_ctx *ctx, int argc, char **argv) {
  mp_tune_spec spec = {0};
  const char *type = NULL, *file = NULL;
  for (int i = 2; i < argc; i++) {
    const char **slot = NULL;
    if (strcmp(argv[i], "--id") == 0) slot = &spec.id;
    else if (strcmp(argv[i], "--name") == 0) slot = &spec.name;
    else if (strcmp(argv[i], "--token") == 0) slot = &spec.token;
    else if (strcmp(argv[i], "--type") == 0) slot = &type;
    else if (strcmp(argv[i], "--title") == 0) slot = &spec.title;
    else if (strcmp(argv[i], "--family") == 0) slot = &spec.family;
    if (slot) {
      if (i + 1 >= argc) {
        fprintf(stderr, "mpass tune add: %s needs a value\n", argv[i]);
        return 2;
      }
      *slot = argv[++i];
    } else if (strncmp(argv[i], "--", 2) == 0) {
      fprintf(stderr, "mpass tune add: unknown option %s\n", argv[i]);
      usage(stderr);
      return 2;
    } else if (file) {
      fprintf(stderr, "mpass tune add: one FILE expected, found '%s' and '%s'\n", file, argv[i]);
      return 2;
    } else {
      file = argv[i];
    }
  }
  const char *missing = !spec.id ? "--id" : !spec.name ? "--name" : !spec.token ? "--token" : !type ? "--type" : !file ? "FILE" : NULL;
  if (missing) {
    fprintf(stderr, "mpass tune add: %s is required\n", missing);
    usage(stderr);
    return 2;
  }
  mp_error *e = mp_tune_type_parse(type, &spec.type);
  if (e) return cli_fail("tune add", e);
  mp_tune t;
  e = mp_tune_add(ctx->models_dir, &spec, file, &t);
  if (e) return cli_fail("tune add", e);
  printf("added tune %s\n", t.id);
  print_tune(&t);
  mp_tune_free(&t);
  return 0;
}

static int tune_list(mpass_ctx *ctx) {
  mp_tune_list l;
  mp_error *e = mp_tunes_list(ctx->models_dir, &l);
  if (e) return cli_fail("tune list", e);
  if (!l.n && !l.n_problems) printf("no tunes in %s/tunes (add one with: mpass tune add ...)\n", ctx->models_dir);
  if (l.n) printf("%-16s %-10s %-6s %-10s %-8s %-12s %s\n", "ID", "TYPE", "FAMILY", "CLASS", "TOKEN", "SHA256", "TITLE");
  for (size_t i = 0; i < l.n; i++) {
    const mp_tune *t = &l.tunes[i];
    printf("%-16s %-10s %-6s %-10s %-8s %-12.10s %s\n", t->id, mp_tune_type_name(t->type), t->family, t->name, t->token,
           t->sha256 ? t->sha256 : "-", t->title);
  }
  for (size_t i = 0; i < l.n_problems; i++) fprintf(stderr, "mpass tune list: skipped: %s\n", l.problems[i]);
  int rc = l.n_problems ? 1 : 0;
  mp_tune_list_free(&l);
  return rc;
}

int cmd_tune(mpass_ctx *ctx, int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (strcmp(argv[1], "add") == 0) return tune_add(ctx, argc, argv);
  if (strcmp(argv[1], "list") == 0 && argc == 2) return tune_list(ctx);
  if ((strcmp(argv[1], "show") == 0 || strcmp(argv[1], "remove") == 0) && argc == 3) {
    if (argv[1][0] == 'r') {
      mp_error *e = mp_tune_remove(ctx->models_dir, argv[2]);
      if (e) return cli_fail("tune remove", e);
      printf("removed tune %s\n", argv[2]);
      return 0;
    }
    mp_tune t;
    mp_error *e = mp_tune_load(ctx->models_dir, argv[2], &t);
    if (e) return cli_fail("tune show", e);
    print_tune(&t);
    mp_tune_free(&t);
    return 0;
  }
  usage(stderr);
  return 2;
}
