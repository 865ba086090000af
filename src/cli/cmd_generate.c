/* mpass generate: one Stable Diffusion pass per image — txt2img, img2img (--init-img) or inpainting
 * (--init-img + --mask) — written as PNGs that carry AUTOMATIC1111's "parameters" text, so the
 * image can be read back by `mpass params`, A1111's PNG Info and the tools that share its format.
 *
 * --batch N follows A1111: N images, one seed each (seed, seed+1, ...), run one after another.
 * Every file is written under a temporary name beside the target and renamed into place when it
 * is complete, so Ctrl-C (which stops the running pass within one sampler step) never leaves a
 * partial file. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/commands.h"
#include "core/context.h"
#include "io/diffusers.h"
#include "io/image.h"
#include "models/embedding.h"
#include "models/lora.h"
#include "pipeline/engine.h"
#include "pipeline/params.h"
#include "pipeline/progress.h"
#include "pipeline/tunes.h"
#include "post/mask.h"
#include "post/resize.h"
#include "prompt/tokenizer.h"
#include "sampling/noise.h"
#include "sampling/sampler.h"

#define MAX_LORAS 16
#define MAX_BATCH 100
#define MAX_SIDE 2048
#define MAX_SEED 4294967295ULL

static void usage(FILE *f) {
  fprintf(f,
          "usage: mpass generate [--model CKPT] -p PROMPT [options] [-o OUT.png]\n"
          "  -m, --model CKPT       checkpoint (.safetensors/.ckpt, or a diffusers folder); default: the first in <models>/checkpoints\n"
          "  -p, --prompt TEXT      the prompt (A1111 weighting: (word:1.2), [word]; <lora:NAME:W> tags as --lora NAME:W)\n"
          "  -n, --negative TEXT    the negative prompt\n"
          "      --steps N          sampler steps, 1-150 (default 30)\n"
          "      --cfg F            classifier-free guidance scale, 0-30 (default 7)\n"
          "      --sampler NAME     euler, euler_a, dpm++2m, dpm++2m_karras (default), dpm++sde,\n"
          "                         dpm++sde_karras, ddim, lcm\n"
          "      --seed N           0-4294967295; -1 or absent: a random seed (printed)\n"
          "  -W, --width W          width, a multiple of 8 from 64 to 2048 (default 512, 1024 on SDXL, or the init image's)\n"
          "  -H, --height H         height, likewise\n"
          "      --batch N          N images with seeds seed, seed+1, ... (1-%d): OUT.png, OUT-1.png, OUT-2.png, ...\n"
          "      --init-img IMG     img2img: start from IMG (PNG/JPEG), scaled and centre-cropped to W x H\n"
          "      --strength S       img2img denoising strength, 0-1 (default 0.8)\n"
          "      --mask MASK        inpainting (with --init-img): one-channel image, white = repaint\n"
          "      --lora FILE[:W]    apply a LoRA at weight W (default 1); repeatable (up to %d). FILE is a\n"
          "                         path, or a name/tune id looked up in <models>/lora and <models>/tunes\n"
          "      --embeddings DIR   textual inversions (default <models>/embeddings); a file NAME.pt,\n"
          "                         .safetensors or .bin is used where NAME occurs in a prompt\n"
          "      --clip-skip 1|2    text-encoder layer: last (1, default) or penultimate (2)\n"
          "      --rng cuda|cpu     initial-noise generator: cuda (default, A1111's GPU noise) or cpu\n"
          "      --no-lpw           plain CLIP: no weighting syntax, prompts truncated to 77 tokens\n"
          "      --vocab PATH       CLIP vocabulary (default: the usual search, see docs/tokenizer.md)\n"
          "  -o, --output OUT.png   output file (default out.png; .jpg/.jpeg writes JPEG without parameters)\n"
          "  -q, --quiet            no progress lines\n"
          "A progress line per step goes to stderr; the paths written go to stdout. Ctrl-C stops within one\n"
          "step and leaves no partial file. `mpass params OUT.png` shows the stored parameters.\n",
          MAX_BATCH, MAX_LORAS);
}

/* ---- Ctrl-C ---- */

/* A signal handler can only talk through a variable like this one; it belongs to the CLI door. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  (void)sig;
  interrupted = 1;
  signal(SIGINT, SIG_DFL); /* a second Ctrl-C ends the process at once */
}

/* On a terminal the step lines overwrite each other; elsewhere (logs, pipes) each is a line. */
typedef struct {
  bool quiet, tty;
  bool line_open; /* a progress line is on the terminal without its newline */
} progress_state;

static int print_progress(const mpass_progress *p, void *user) {
  progress_state *s = user;
  if (!s->quiet) {
    char line[256];
    mp_progress_format(p, line, sizeof line);
    if (s->tty) {
      fprintf(stderr, "\r%s\033[K", line);
      s->line_open = true;
    } else {
      fprintf(stderr, "%s\n", line);
    }
  }
  return interrupted;
}

/* Before any other message on stderr: finish the progress line. */
static void end_progress_line(progress_state *s) {
  if (s->line_open) fputc('\n', stderr);
  s->line_open = false;
}

/* ---- arguments ---- */

static mp_error *parse_long(const char *flag, const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno || v < lo || v > hi) return mp_errorf("%s expects a whole number from %lld to %lld, found '%s'", flag, lo, hi, s);
  *out = v;
  return NULL;
}

static mp_error *parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
  long long v = 0;
  MP_TRY(parse_long(flag, s, lo, hi, &v));
  *out = (int)v;
  return NULL;
}

static mp_error *parse_real(const char *flag, const char *s, double lo, double hi, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (!*s || *end || !(v >= lo && v <= hi)) return mp_errorf("%s expects a number from %g to %g, found '%s'", flag, lo, hi, s);
  *out = v;
  return NULL;
}

static mp_error *parse_side(const char *flag, const char *s, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < 64 || v > MAX_SIDE || v % 8)
    return mp_errorf("%s expects a multiple of 8 from 64 to %d, found '%s'", flag, MAX_SIDE, s);
  *out = (int)v;
  return NULL;
}

/* A LoRA asked for with --lora FILE[:W], or with an A1111 tag <lora:NAME:W> in the prompt. */
typedef struct {
  char *label;      /* for messages: "--lora FILE:W" or "<lora:NAME:W>" (malloc'd) */
  char *file;       /* FILE or NAME (malloc'd) */
  float weight;      /* UNet multiplier */
  float te_weight;   /* text-encoder multiplier (the same but for tags that give both) */
  bool from_prompt; /* a tag: NAME is looked up in the models folder, never taken as a path */
} lora_arg;

static void lora_arg_free(lora_arg *a) { free(a->label), free(a->file); }

static mp_error *lora_weight(const char *label, const char *s, size_t n, float *out) {
  char buf[64], *end;
  if (n == 0 || n >= sizeof buf) return mp_errorf("%s: the weight must be a number from -10 to 10", label);
  memcpy(buf, s, n);
  buf[n] = 0;
  double w = strtod(buf, &end);
  if (*end || !(w >= -10 && w <= 10)) return mp_errorf("%s: the weight must be a number from -10 to 10, found '%s'", label, buf);
  *out = (float)w;
  return NULL;
}

/* FILE[:W]: the weight is what follows the last ':' when that parses as a number (paths may hold ':'). */
static mp_error *parse_lora_flag(const char *s, lora_arg *out) {
  *out = (lora_arg){.weight = 1.0f, .te_weight = 1.0f};
  const char *colon = strrchr(s, ':');
  size_t n = strlen(s);
  if (colon && colon[1]) {
    char *end;
    strtod(colon + 1, &end);
    if (!*end) {
      char label[64];
      snprintf(label, sizeof label, "--lora %.50s", s);
      MP_TRY(lora_weight(label, colon + 1, strlen(colon + 1), &out->weight));
      out->te_weight = out->weight;
      n = (size_t)(colon - s);
    }
  }
  if (n == 0) return mp_errorf("--lora expects FILE or FILE:WEIGHT, found '%s'", s);
  size_t cap = strlen(s) + 8;
  out->label = malloc(cap);
  out->file = strndup(s, n);
  if (out->label) snprintf(out->label, cap, "--lora %s", s);
  if (!out->label || !out->file) {
    lora_arg_free(out);
    return mp_errorf("out of memory");
  }
  return NULL;
}

/* The fields after a tag's name, as A1111 reads them: positional TE[:UNET] (UNET defaults to TE), or
 * named te=X, unet=X; other named fields (dyn=) are ignored with a warning. `sep` is the ':' before
 * the first field (NULL: none), `close` the '>'. */
static mp_error *tag_weights(const char *label, const char *sep, const char *close, lora_arg *a, bool quiet) {
  bool unet_given = false;
  for (int positional = 0; sep; positional++) {
    const char *f = sep + 1, *end = memchr(f, ':', (size_t)(close - f));
    if (!end) end = close;
    const char *eq = memchr(f, '=', (size_t)(end - f));
    if (eq && eq - f == 2 && strncmp(f, "te", 2) == 0) {
      MP_TRY(lora_weight(label, eq + 1, (size_t)(end - eq - 1), &a->te_weight));
    } else if (eq && eq - f == 4 && strncmp(f, "unet", 4) == 0) {
      MP_TRY(lora_weight(label, eq + 1, (size_t)(end - eq - 1), &a->weight));
      unet_given = true;
    } else if (eq) {
      if (!quiet) fprintf(stderr, "mpass generate: warning: %s: field '%.*s' is not supported; ignored\n", label, (int)(end - f), f);
    } else if (positional == 0) {
      MP_TRY(lora_weight(label, f, (size_t)(end - f), &a->te_weight));
    } else if (positional == 1) {
      MP_TRY(lora_weight(label, f, (size_t)(end - f), &a->weight));
      unet_given = true;
    } else {
      return mp_errorf("%s: expected <lora:NAME>, <lora:NAME:W> or <lora:NAME:TE_W:UNET_W>", label);
    }
    if (eq) positional--;
    sep = end < close ? end : NULL;
  }
  if (!unet_given) a->weight = a->te_weight;
  return NULL;
}

/* AUTOMATIC1111's extra-network tags: <TYPE:ARGS> with TYPE a word. They are cut out of the prompt
 * before it is encoded (A1111 does the same); <lora:NAME[:W]> (and the older <lyco:...>) adds a LoRA,
 * other types are not supported and say so. The stored parameters keep the prompt as given, tags
 * included, as A1111 does, so its images' prompts can be pasted here unchanged. */
static mp_error *take_prompt_tags(const char *prompt, char **clean, lora_arg *loras, int *n_loras, bool quiet) {
  size_t len = strlen(prompt);
  char *out = malloc(len + 1), *o = out;
  if (!out) return mp_errorf("out of memory");
  const char *c = prompt;
  while (*c) {
    const char *colon = NULL, *close = NULL, *t = c + 1;
    if (*c == '<') {
      while ((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z') || (*t >= '0' && *t <= '9') || *t == '_') t++;
      if (t > c + 1 && *t == ':') colon = t, close = strchr(colon + 1, '>');
      if (close && memchr(colon + 1, '<', (size_t)(close - colon - 1))) close = NULL;
    }
    if (!close || close == colon + 1) {
      *o++ = *c++;
      continue;
    }
    size_t type_len = (size_t)(colon - c - 1), tag_len = (size_t)(close - c + 1);
    char label[160];
    snprintf(label, sizeof label, "%.*s", (int)(tag_len < 150 ? tag_len : 150), c);
    bool lora = (type_len == 4 && strncmp(c + 1, "lora", 4) == 0) || (type_len == 4 && strncmp(c + 1, "lyco", 4) == 0);
    mp_error *e = NULL;
    if (!lora) {
      if (!quiet) fprintf(stderr, "mpass generate: warning: %s: only <lora:...> tags are supported; this one is ignored\n", label);
    } else if (*n_loras == MAX_LORAS) {
      e = mp_errorf("%s: at most %d LoRAs", label, MAX_LORAS);
    } else {
      const char *name = colon + 1, *sep = memchr(name, ':', (size_t)(close - name));
      lora_arg *a = &loras[*n_loras];
      *a = (lora_arg){.weight = 1.0f, .te_weight = 1.0f, .from_prompt = true};
      e = tag_weights(label, sep, close, a, quiet);
      if (!e && (sep ? sep : close) == name) e = mp_errorf("%s: no LoRA name", label);
      if (!e) {
        a->file = strndup(name, (size_t)((sep ? sep : close) - name));
        a->label = strdup(label);
        if (!a->file || !a->label) e = mp_errorf("out of memory");
        if (e) lora_arg_free(a);
        else (*n_loras)++;
      }
    }
    if (e) {
      free(out);
      return e;
    }
    c = close + 1;
  }
  *o = 0;
  *clean = out;
  return NULL;
}

typedef struct {
  const char *model, *prompt, *negative, *init_img, *mask, *embeddings, *vocab, *output;
  char *prompt_text; /* the prompt without its <lora:...> tags: what is encoded */
  int steps, width, height, batch, clip_skip;
  double cfg, strength;
  bool strength_given, seed_given, use_lpw;
  uint64_t seed;
  mp_sampler_spec sampler;
  const char *sampler_name;
  mp_rng_kind rng;
  lora_arg loras[MAX_LORAS];
  int n_loras;
} gen_options;

/* ---- outputs ---- */

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

static bool is_jpeg_path(const char *p) { return ends_with(p, ".jpg") || ends_with(p, ".jpeg"); }

/* Image k of the batch: OUT.png, then OUT-1.png, OUT-2.png, ... (the extension kept). */
static char *output_path(const char *out, int k) {
  if (k == 0) return strdup(out);
  const char *slash = strrchr(out, '/'), *dot = strrchr(out, '.');
  size_t stem = dot && (!slash || dot > slash + 1) ? (size_t)(dot - out) : strlen(out);
  size_t cap = strlen(out) + 16;
  char *p = malloc(cap);
  if (p) snprintf(p, cap, "%.*s-%d%s", (int)stem, out, k, out + stem);
  return p;
}

/* Write beside the target under a hidden temporary name, then rename into place: the target is
 * either absent/old or complete, never partial. */
static mp_error *write_output(const char *path, const mp_image *img, const char *parameters) {
  const char *slash = strrchr(path, '/');
  size_t dir = slash ? (size_t)(slash - path + 1) : 0, cap = strlen(path) + 48;
  char *tmp = malloc(cap);
  if (!tmp) return mp_errorf("out of memory");
  snprintf(tmp, cap, "%.*s.%s.%ld.tmp", (int)dir, path, path + dir, (long)getpid());
  mp_error *e = is_jpeg_path(path) ? mp_image_write_jpeg(tmp, img, 95) : mp_image_write_png(tmp, img, "parameters", parameters);
  if (!e && rename(tmp, path) != 0) e = mp_errorf("cannot rename %s to %s: %s", tmp, path, strerror(errno));
  if (e) unlink(tmp);
  free(tmp);
  return e;
}

/* ---- LoRA hashes as A1111 writes them ---- */

/* A1111 identifies a LoRA by the "addnet" hash: SHA-256 of a .safetensors file without its header
 * (so editing metadata keeps the hash), of the whole file otherwise; the infotext shows 12 digits. */
static mp_error *lora_short_hash(const char *path, char out[13]) {
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("cannot open %s: %s", path, strerror(errno));
  mp_error *e = NULL;
  if (ends_with(path, ".safetensors")) {
    uint8_t len[8];
    struct stat st;
    uint64_t n = 0;
    if (fread(len, 1, 8, f) != 8 || fstat(fileno(f), &st) != 0) e = mp_errorf("%s: cannot read the safetensors header", path);
    for (int i = 7; !e && i >= 0; i--) n = n << 8 | len[i];
    if (!e && n > (uint64_t)st.st_size - 8) e = mp_errorf("%s: header length %llu exceeds the file", path, (unsigned long long)n);
    if (!e && fseeko(f, (off_t)(n + 8), SEEK_SET) != 0) e = mp_errorf("%s: cannot seek past the header", path);
  }
  mp_sha256 s;
  mp_sha256_init(&s);
  static uint8_t buf[1 << 16];
  for (size_t got; !e && (got = fread(buf, 1, sizeof buf, f)) > 0;) mp_sha256_update(&s, buf, got);
  if (!e && ferror(f)) e = mp_errorf("reading %s failed", path);
  fclose(f);
  if (e) return e;
  uint8_t digest[32];
  char hex[65];
  mp_sha256_final(&s, digest);
  mp_sha256_hex(digest, hex);
  memcpy(out, hex, 12);
  out[12] = 0;
  return NULL;
}

/* The name A1111 shows for a LoRA: the file's stem, without ':' and ',' (they would break the field). */
static char *lora_alias(const char *path) {
  const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path, *dot = strrchr(base, '.');
  size_t n = dot && dot > base ? (size_t)(dot - base) : strlen(base);
  char *a = malloc(n + 1), *o = a;
  if (!a) return NULL;
  for (size_t i = 0; i < n; i++)
    if (base[i] != ':' && base[i] != ',') *o++ = base[i];
  *o = 0;
  return a;
}

typedef struct {
  mp_weights *files[MAX_LORAS];
  mp_lora_spec specs[MAX_LORAS];
  char *paths[MAX_LORAS];
  bool from_flag[MAX_LORAS];
  int n;
} lora_set;

static void lora_set_free(lora_set *s) {
  for (int i = 0; i < s->n; i++) {
    mp_weights_close(s->files[i]);
    free((char *)s->specs[i].name);
    free(s->paths[i]);
  }
  s->n = 0;
}

/* A file with none of the LoRA formats' low-rank tensors is something else (a checkpoint, say): every
 * key would "match no layer", which is better said once. */
static bool holds_lora_tensors(const mp_weights *w) {
  static const char *marks[] = {"lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up", "_lora."};
  for (size_t i = 0; i < mp_weights_count(w); i++)
    for (size_t m = 0; m < sizeof marks / sizeof *marks; m++)
      if (strstr(mp_weights_at(w, i)->name, marks[m])) return true;
  return false;
}

/* The file of one LoRA: for --lora a path when it names a file; otherwise (and always for tags) a
 * LoRA name or tune id in the models folder. */
static mp_error *lora_path(const mpass_ctx *ctx, const lora_arg *a, char **path) {
  struct stat st;
  if (!a->from_prompt && stat(a->file, &st) == 0) {
    *path = strdup(a->file);
  } else if (!a->from_prompt && (strchr(a->file, '/') || strchr(a->file, '.'))) {
    return mp_errorf("cannot open %s: %s", a->file, strerror(errno));
  } else {
    mp_lora_ref ref;
    MP_TRY(mp_resolve_lora(ctx->models_dir, a->file, &ref));
    bool checkpoint = ref.is_tune && ref.tune.type == MP_TUNE_CHECKPOINT;
    *path = checkpoint ? NULL : strdup(ref.path);
    mp_lora_ref_free(&ref);
    if (checkpoint) return mp_errorf("tune %s is a checkpoint tune: give it with --model", a->file);
  }
  return *path ? NULL : mp_errorf("out of memory");
}

static mp_error *open_lora(const mpass_ctx *ctx, const lora_arg *a, lora_set *set) {
  char *path = NULL;
  mp_weights *w = NULL;
  MP_TRY(lora_path(ctx, a, &path));
  mp_error *e = mp_weights_open(path, &w);
  if (!e && !holds_lora_tensors(w)) e = mp_errorf("%s holds no LoRA tensors (a checkpoint? give that with --model)", path);
  char *alias = e ? NULL : lora_alias(path);
  if (!e && !alias) e = mp_errorf("out of memory");
  if (e) {
    mp_weights_close(w);
    free(path);
    return e;
  }
  set->files[set->n] = w;
  set->paths[set->n] = path;
  set->from_flag[set->n] = !a->from_prompt;
  set->specs[set->n] = (mp_lora_spec){w, alias, a->weight, a->te_weight};
  set->n++;
  return NULL;
}

static mp_error *open_loras(const mpass_ctx *ctx, const gen_options *o, lora_set *set) {
  for (int i = 0; i < o->n_loras; i++) {
    mp_error *e = open_lora(ctx, &o->loras[i], set);
    if (e) return mp_error_wrap(e, "%s", o->loras[i].label);
  }
  return NULL;
}

/* The infotext's "Lora hashes" ("name: hash, name: hash", every LoRA) and "Lora weights" ("name: weight,
 * ...", the --lora ones: tags are in the stored prompt already). Computed once per run, as hashing reads
 * every LoRA file through. Each --lora LoRA is also written as a tag at the end of the stored prompt
 * (*prompt_out), as A1111 stores the LoRAs it applies: its "Send to txt2img" applies tags, never the
 * hashes. `<lora:NAME:W>`, or `<lora:NAME:TE:UNET>` when the two weights differ (A1111's order). */
static mp_error *lora_fields(const lora_set *set, const char *prompt, char **hashes_out, char **weights_out,
                             char **prompt_out) {
  if (set->n == 0) return NULL;
  char hashes[MAX_LORAS * 96] = "", weights[MAX_LORAS * 96] = "", tags[MAX_LORAS * 112] = "";
  size_t nh = 0, nw = 0, nt = 0;
  for (int i = 0; i < set->n; i++) {
    char h[13];
    MP_TRY(lora_short_hash(set->paths[i], h));
    const char *name = set->specs[i].name;
    float unet = set->specs[i].unet_multiplier, te = set->specs[i].te_multiplier;
    nh += (size_t)snprintf(hashes + nh, sizeof hashes - nh, "%s%.64s: %s", nh ? ", " : "", name, h);
    if (set->from_flag[i]) {
      nw += (size_t)snprintf(weights + nw, sizeof weights - nw, "%s%.64s: %g", nw ? ", " : "", name, unet);
      if (te == unet) nt += (size_t)snprintf(tags + nt, sizeof tags - nt, " <lora:%.64s:%g>", name, unet);
      else nt += (size_t)snprintf(tags + nt, sizeof tags - nt, " <lora:%.64s:%g:%g>", name, te, unet);
    }
  }
  *hashes_out = strdup(hashes);
  *weights_out = nw ? strdup(weights) : NULL;
  if (nt) {
    size_t n = strlen(prompt) + nt + 1;
    if ((*prompt_out = malloc(n))) snprintf(*prompt_out, n, "%s%s", prompt, *prompt ? tags : tags + 1);
  }
  return *hashes_out && (*weights_out || !nw) && (*prompt_out || !nt) ? NULL : mp_errorf("out of memory");
}

/* ---- textual inversions ---- */

static bool has_extension(const char *name, const char **stem_end) {
  static const char *exts[] = {".safetensors", ".pt", ".bin"};
  for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
    if (ends_with(name, exts[i]) && strlen(name) > strlen(exts[i])) {
      *stem_end = name + strlen(name) - strlen(exts[i]);
      return true;
    }
  return false;
}

/* Load every embedding file under `dir` (and its subfolders, as A1111 scans them) whose name occurs
 * in the prompt or the negative. An embedding's name can only trigger where its text occurs, so the
 * others are not read. A file that does not load (another model family, say) is a warning. */
static void load_embeddings(const char *dir, int depth, const char *prompt, const char *negative, int hidden,
                            mp_ti_set *set, bool quiet) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    size_t cap = strlen(dir) + strlen(de->d_name) + 2;
    char *path = malloc(cap);
    if (!path) break;
    snprintf(path, cap, "%s/%s", dir, de->d_name);
    struct stat st;
    const char *stem_end;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
      if (depth < 4) load_embeddings(path, depth + 1, prompt, negative, hidden, set, quiet);
    } else if (S_ISREG(st.st_mode) && has_extension(de->d_name, &stem_end)) {
      char *name = strndup(de->d_name, (size_t)(stem_end - de->d_name));
      if (name && (strcasestr(prompt, name) || strcasestr(negative, name))) {
        mp_error *e = mp_embedding_load_file(path, name, hidden, set);
        if (e && !quiet) fprintf(stderr, "mpass generate: warning: embedding %s not used: %s\n", name, mp_error_message(e));
        mp_error_free(e);
      }
      free(name);
    }
    free(path);
  }
  closedir(d);
}

/* ---- the command ---- */

static mp_error *read_image_arg(const char *flag, const char *path, int channels, mp_image *img) {
  if (access(path, R_OK) != 0) return mp_errorf("%s %s: %s", flag, path, strerror(errno));
  mp_error *e = mp_image_read(path, channels, img);
  return e ? mp_error_wrap(e, "%s", flag) : NULL;
}

static mp_error *random_seed(uint64_t *seed) {
  uint32_t v;
  if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) return mp_errorf("cannot draw a random seed: %s", strerror(errno));
  *seed = v;
  return NULL;
}

static mp_error *infotext_for(const gen_options *o, const mp_engine *eng, const char *stored_prompt,
                              const char *lora_hashes, const char *lora_weights, uint64_t seed, char **text) {
  mp_infotext it;
  mp_gen_params gp = {.prompt = stored_prompt ? stored_prompt : o->prompt, .negative_prompt = o->negative, .steps = o->steps,
                      .scheduler = mp_sampler_name(&o->sampler), .cfg_scale = o->cfg, .seed = seed,
                      .width = o->width, .height = o->height, .model_hash = eng->hash, .model_name = eng->name,
                      .denoising_strength = o->init_img ? o->strength : -1, .rng = o->rng == MP_RNG_CPU ? "CPU" : NULL};
  MP_TRY(mp_infotext_from_params(&gp, &it));
  mp_error *e = NULL;
  if (o->clip_skip > 1) e = mp_infotext_set_int(&it, "Clip skip", o->clip_skip); /* A1111 writes it only when > 1 */
  if (!e && lora_hashes) e = mp_infotext_set(&it, "Lora hashes", lora_hashes);
  if (!e && lora_weights) e = mp_infotext_set(&it, "Lora weights", lora_weights);
  if (!e) e = mp_infotext_set(&it, "Version", "mpass " MPASS_VERSION);
  if (!e) e = mp_infotext_format(&it, text);
  mp_infotext_free(&it);
  return e;
}

typedef struct {
  mp_tokenizer *tok;
  mp_engine *eng;
  lora_set loras;
  mp_ti_set ti;
  char *lora_hashes, *lora_weights; /* for the infotext; NULL without LoRAs */
  char *stored_prompt;              /* the prompt with the --lora tags; NULL without --lora */
  mp_image init, mask_img;
  mp_mask mask;
} resources;

static void resources_free(resources *r) {
  mp_engine_close(r->eng);
  lora_set_free(&r->loras);
  free(r->lora_hashes), free(r->lora_weights), free(r->stored_prompt);
  mp_ti_set_free(&r->ti);
  mp_tokenizer_free(r->tok);
  mp_image_free(&r->init), mp_image_free(&r->mask_img);
  mp_mask_free(&r->mask);
}

/* Inputs and LoRA files first (a bad file fails before the model loads), then tokenizer, model,
 * embeddings, and the LoRAs applied. */
static mp_error *prepare(mpass_ctx *ctx, gen_options *o, resources *r, bool quiet) {
  const char *slash = strrchr(o->output, '/');
  if (slash) { /* the output folder must exist before minutes go into the images */
    char *dir = strndup(o->output, slash > o->output ? (size_t)(slash - o->output) : 1);
    struct stat st;
    mp_error *e = !dir ? mp_errorf("out of memory")
                  : stat(dir, &st) != 0 ? mp_errorf("-o %s: folder %s: %s", o->output, dir, strerror(errno))
                  : !S_ISDIR(st.st_mode) ? mp_errorf("-o %s: %s is not a folder", o->output, dir)
                                         : NULL;
    free(dir);
    MP_TRY(e);
  }
  if (o->init_img) {
    mp_image src = {0};
    MP_TRY(read_image_arg("--init-img", o->init_img, 3, &src));
    if (o->width == 0 && o->height == 0) mp_size_round8(src.width, src.height, 1024, &o->width, &o->height);
    if (o->width == 0) o->width = 512;
    if (o->height == 0) o->height = 512;
    mp_error *e = mp_image_fit_crop(&src, o->width, o->height, &r->init);
    mp_image_free(&src);
    MP_TRY(e);
  }
  const bool size_defaulted = o->width == 0 && o->height == 0 && !o->mask;
  if (o->width == 0) o->width = 512;
  if (o->height == 0) o->height = 512;
  if (o->mask) {
    mp_image src = {0};
    MP_TRY(read_image_arg("--mask", o->mask, 1, &src));
    mp_error *e = mp_image_fit_crop(&src, o->width, o->height, &r->mask_img);
    mp_image_free(&src);
    MP_TRY(e);
    MP_TRY(mp_mask_from_image(&r->mask_img, &r->mask));
  }
  if (o->embeddings) {
    struct stat st;
    if (stat(o->embeddings, &st) != 0) return mp_errorf("--embeddings %s: %s", o->embeddings, strerror(errno));
    if (!S_ISDIR(st.st_mode)) return mp_errorf("--embeddings %s: not a folder", o->embeddings);
  }
  MP_TRY(open_loras(ctx, o, &r->loras));
  MP_TRY(lora_fields(&r->loras, o->prompt, &r->lora_hashes, &r->lora_weights, &r->stored_prompt));
  char *model = NULL;
  if (o->model) {
    if (access(o->model, R_OK) != 0) return mp_errorf("--model %s: %s", o->model, strerror(errno));
    model = strdup(o->model);
    if (!model) return mp_errorf("out of memory");
  } else {
    MP_TRY(mp_default_checkpoint(ctx->models_dir, &model));
  }
  char *vocab = NULL; /* a diffusers folder's own tokenizer/, unless --vocab or MPASS_VOCAB says otherwise */
  mp_error *e = mp_diffusers_vocab_for_model(model, o->vocab, &vocab);
  if (!e && !vocab) e = mp_tokenizer_find_vocab(o->vocab, ctx->data_dir, ctx->models_dir, &vocab);
  if (!e) e = mp_tokenizer_load(vocab, &r->tok);
  free(vocab);
  if (e) {
    free(model);
    return e;
  }
  e = mp_engine_open(ctx, model, r->tok, &r->eng);
  free(model);
  MP_TRY(e);
  if (size_defaulted && r->eng->cfg.family == MP_FAMILY_SDXL) o->width = o->height = 1024; /* SDXL's native size */
  if (o->embeddings) {
    load_embeddings(o->embeddings, 0, o->prompt_text, o->negative, r->eng->cfg.clip.hidden, &r->ti, quiet);
  } else {
    char *dir = mp_embeddings_dir(ctx->models_dir);
    if (dir) load_embeddings(dir, 0, o->prompt_text, o->negative, r->eng->cfg.clip.hidden, &r->ti, quiet);
    free(dir);
  }
  if (r->loras.n > 0) {
    char **warnings = NULL;
    int n_warnings = 0;
    e = mp_engine_set_loras(r->eng, r->loras.specs, r->loras.n, &warnings, &n_warnings);
    for (int i = 0; i < n_warnings; i++) {
      if (!quiet) fprintf(stderr, "mpass generate: warning: %s\n", warnings[i]);
      free(warnings[i]);
    }
    free(warnings);
    MP_TRY(e);
  }
  return NULL;
}

static mp_error *generate(mpass_ctx *ctx, gen_options *o, progress_state *ps, int *written) {
  resources r = {0};
  mp_error *e = prepare(ctx, o, &r, ps->quiet);
  mp_progress progress;
  mp_progress_init(&progress, print_progress, ps, o->batch);
  const char *pass_name = o->mask ? "inpaint" : o->init_img ? "img2img" : "txt2img";
  for (int k = 0; !e && k < o->batch; k++) {
    if (interrupted) {
      e = mp_errorf("cancelled");
      break;
    }
    uint64_t seed = o->seed + (uint64_t)k;
    mp_pass_params p = {.prompt = o->prompt_text, .negative = o->negative, .embeddings = &r.ti, .use_lpw = o->use_lpw,
                        .clip_skip = o->clip_skip, .sampler = o->sampler, .steps = o->steps, .cfg_scale = o->cfg,
                        .seed = seed, .rng = o->rng, .width = o->width, .height = o->height,
                        .init = o->init_img ? &r.init : NULL, .strength = o->strength, .mask = o->mask ? &r.mask : NULL};
    mp_progress_pass(&progress, k, pass_name, mp_engine_pass_steps(r.eng, &p));
    mp_image out = {0};
    char *warning = NULL, *text = NULL, *path = output_path(o->output, k);
    double t0 = mp_now();
    e = path ? mp_engine_run_pass(r.eng, &p, &progress, &out, &warning) : mp_errorf("out of memory");
    end_progress_line(ps);
    if (warning && k == 0 && !ps->quiet) fprintf(stderr, "mpass generate: warning: %s\n", warning);
    if (!e) e = infotext_for(o, r.eng, r.stored_prompt, r.lora_hashes, r.lora_weights, seed, &text);
    if (!e) e = write_output(path, &out, text);
    if (!e) {
      printf("%s\n", path);
      fflush(stdout);
      if (!ps->quiet) fprintf(stderr, "mpass generate: wrote %s (seed %llu, %.1f s)\n", path, (unsigned long long)seed, mp_now() - t0);
      (*written)++;
    }
    free(warning), free(text), free(path);
    mp_image_free(&out);
  }
  resources_free(&r);
  return e;
}

int cmd_generate(mpass_ctx *ctx, int argc, char **argv) {
  enum { O_STEPS = 256, O_CFG, O_SAMPLER, O_SEED, O_BATCH, O_INIT, O_STRENGTH, O_MASK, O_LORA, O_EMB, O_CLIP_SKIP, O_RNG,
         O_NO_LPW, O_VOCAB };
  static const struct option longopts[] = {
      {"model", required_argument, 0, 'm'},       {"prompt", required_argument, 0, 'p'},
      {"negative", required_argument, 0, 'n'},    {"steps", required_argument, 0, O_STEPS},
      {"cfg", required_argument, 0, O_CFG},       {"sampler", required_argument, 0, O_SAMPLER},
      {"seed", required_argument, 0, O_SEED},     {"width", required_argument, 0, 'W'},
      {"height", required_argument, 0, 'H'},      {"batch", required_argument, 0, O_BATCH},
      {"init-img", required_argument, 0, O_INIT}, {"strength", required_argument, 0, O_STRENGTH},
      {"mask", required_argument, 0, O_MASK},     {"lora", required_argument, 0, O_LORA},
      {"embeddings", required_argument, 0, O_EMB}, {"clip-skip", required_argument, 0, O_CLIP_SKIP},
      {"rng", required_argument, 0, O_RNG},       {"no-lpw", no_argument, 0, O_NO_LPW},
      {"vocab", required_argument, 0, O_VOCAB},   {"output", required_argument, 0, 'o'},
      {"quiet", no_argument, 0, 'q'},             {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  gen_options o = {.steps = 30, .cfg = 7.0, .batch = 1, .clip_skip = 1, .strength = 0.8, .use_lpw = true,
                   .sampler_name = "dpm++2m_karras", .rng = MP_RNG_CUDA, .output = "out.png", .negative = ""};
  progress_state ps = {.quiet = false, .tty = isatty(2) == 1};
  mp_error *e = NULL;
  int opt;
  optind = 1;
  while (!e && (opt = getopt_long(argc, argv, "m:p:n:W:H:o:qh", longopts, NULL)) != -1) {
    long long v = 0;
    switch (opt) {
      case 'm': o.model = optarg; break;
      case 'p': o.prompt = optarg; break;
      case 'n': o.negative = optarg; break;
      case O_STEPS: e = parse_int("--steps", optarg, 1, 150, &o.steps); break;
      case O_CFG: e = parse_real("--cfg", optarg, 0, 30, &o.cfg); break;
      case O_SAMPLER: o.sampler_name = optarg; break;
      case O_SEED:
        if (strcmp(optarg, "-1") == 0) break;
        e = parse_long("--seed", optarg, 0, (long long)MAX_SEED, &v);
        o.seed = (uint64_t)v, o.seed_given = true;
        break;
      case 'W': e = parse_side("-W/--width", optarg, &o.width); break;
      case 'H': e = parse_side("-H/--height", optarg, &o.height); break;
      case O_BATCH: e = parse_int("--batch", optarg, 1, MAX_BATCH, &o.batch); break;
      case O_INIT: o.init_img = optarg; break;
      case O_STRENGTH: e = parse_real("--strength", optarg, 0, 1, &o.strength), o.strength_given = true; break;
      case O_MASK: o.mask = optarg; break;
      case O_LORA:
        if (o.n_loras == MAX_LORAS) e = mp_errorf("at most %d --lora", MAX_LORAS);
        else if (!(e = parse_lora_flag(optarg, &o.loras[o.n_loras]))) o.n_loras++;
        break;
      case O_EMB: o.embeddings = optarg; break;
      case O_CLIP_SKIP: e = parse_int("--clip-skip", optarg, 1, 2, &o.clip_skip); break;
      case O_RNG: e = mp_rng_parse(optarg, &o.rng); break;
      case O_NO_LPW: o.use_lpw = false; break;
      case O_VOCAB: o.vocab = optarg; break;
      case 'o': o.output = optarg; break;
      case 'q': ps.quiet = true; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (!e && optind < argc) e = mp_errorf("unexpected argument '%s' (the prompt goes after -p)", argv[optind]);
  if (!e && !o.prompt) e = mp_errorf("-p PROMPT is required (it may be empty: -p \"\")");
  if (!e) e = take_prompt_tags(o.prompt, &o.prompt_text, o.loras, &o.n_loras, ps.quiet);
  if (!e) e = mp_sampler_parse(o.sampler_name, &o.sampler);
  if (!e && o.mask && !o.init_img) e = mp_errorf("--mask needs --init-img (the image to inpaint)");
  if (!e && o.strength_given && !o.init_img) e = mp_errorf("--strength applies to img2img: give --init-img too");
  if (!e && !*o.output) e = mp_errorf("-o expects a file name");
  if (!e && !ends_with(o.output, ".png") && !is_jpeg_path(o.output))
    e = mp_errorf("-o %s: the output must end in .png (or .jpg/.jpeg)", o.output);
  if (!e && !o.seed_given) e = random_seed(&o.seed);
  int rc = 0;
  if (e) {
    fprintf(stderr, "mpass generate: %s\n", mp_error_message(e));
    mp_error_free(e);
    rc = 2;
  } else {
    if (is_jpeg_path(o.output) && !ps.quiet)
      fprintf(stderr, "mpass generate: warning: %s is a JPEG: the generation parameters are stored only in PNGs\n", o.output);
    if (!o.seed_given && !ps.quiet) fprintf(stderr, "mpass generate: seed %llu\n", (unsigned long long)o.seed);
    int written = 0;
    interrupted = 0;
    signal(SIGINT, on_sigint);
    e = generate(ctx, &o, &ps, &written);
    signal(SIGINT, SIG_DFL);
    end_progress_line(&ps);
    if (e && interrupted) {
      if (written)
        fprintf(stderr, "mpass generate: cancelled after %d of %d images; the unfinished one was not written\n", written, o.batch);
      else
        fprintf(stderr, "mpass generate: cancelled; no output was written\n");
      mp_error_free(e);
      rc = 130;
    } else if (e) {
      rc = cli_fail("generate", e);
    }
  }
  for (int i = 0; i < o.n_loras; i++) lora_arg_free(&o.loras[i]);
  free(o.prompt_text);
  return rc;
}
