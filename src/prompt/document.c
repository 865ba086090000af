/* The prompt document parser (SPEC.md §1).
 *
 * Both encodings end in the same place: parameters are applied one at a time from (key, value text)
 * pairs, then the prompt text and the negative prompt are processed in the order §1.2 fixes:
 * flags out, sections split, tags out, passes composed. The text is processed on a same-length copy
 * in which taken-out flags and tags are overwritten by spaces, so a byte offset in the copy is the
 * byte offset in the source and every error can name its line and column. */
#include "prompt/document.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <cjson/cJSON.h>

/* ---------------------------------------------------------------- small helpers */

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
/* Word characters for the whole-word BREAK rule; bytes of multi-byte UTF-8 count as letters. */
static bool is_word(char c) {
  unsigned char u = (unsigned char)c;
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || u >= 0x80;
}

static char *dup_n(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

/* A growing string. On allocation failure `oom` is set and later appends do nothing. */
typedef struct {
  char *s;
  size_t n, cap;
  bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n + 1) cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->s = p;
    b->cap = cap;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}

/* Take the string out of the buffer ("" when nothing was added); NULL when out of memory. */
static char *sb_take(sbuf *b) {
  if (b->oom) {
    free(b->s);
    return NULL;
  }
  if (!b->s) return dup_n("", 0);
  return b->s;
}

/* `s` quoted for an error message: at most 48 bytes (cut on a character boundary), control
 * characters, quotes and backslashes escaped. */
static void quote(const char *s, size_t n, char out[256]) {
  size_t o = 0, lim = 48;
  bool cut = false;
  if (n > lim) {
    n = lim;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    cut = true;
  }
  out[o++] = '"';
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f) o += (size_t)snprintf(out + o, 8, "\\x%02X", c);
    else if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else out[o++] = (char)c;
  }
  out[o++] = '"';
  if (cut) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o] = 0;
}

/* ---------------------------------------------------------------- positions */

/* A piece of source text errors point into: the whole text-form document, or one JSON string. */
typedef struct {
  const char *doc;
  size_t len;
  const char *where; /* prefix for messages: "" or "prompt.text: " */
} source;

/* 1-based line and column (in characters) of byte offset `off`. */
static void line_col(const source *src, size_t off, int *line, int *col) {
  int l = 1, c = 1;
  if (off > src->len) off = src->len;
  for (size_t i = 0; i < off; i++) {
    unsigned char u = (unsigned char)src->doc[i];
    if (u == '\n') {
      l++;
      c = 1;
    } else if ((u & 0xC0) != 0x80) c++;
  }
  *line = l;
  *col = c;
}

static mp_error *err_at(const source *src, size_t off, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static mp_error *err_at(const source *src, size_t off, const char *fmt, ...) {
  int line, col;
  line_col(src, off, &line, &col);
  va_list ap;
  va_start(ap, fmt);
  mp_error *e = mp_verrorf(fmt, ap);
  va_end(ap);
  return mp_error_wrap(e, "%sline %d, column %d", src->where, line, col);
}

/* The first byte that is not valid UTF-8 text (a NUL, a bad sequence, an overlong form, a surrogate
 * or a code point past U+10FFFF); returns len when all is well. *why says what is wrong. */
static size_t first_bad_byte(const char *s, size_t len, const char **why) {
  size_t i = 0;
  while (i < len) {
    unsigned char c = (unsigned char)s[i];
    if (c == 0) {
      *why = "a NUL byte";
      return i;
    }
    if (c < 0x80) {
      i++;
      continue;
    }
    int n;
    unsigned cp;
    if (c >= 0xC2 && c <= 0xDF) n = 1, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 2, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 3, cp = c & 0x07;
    else {
      *why = "invalid UTF-8";
      return i;
    }
    if ((size_t)n > len - i - 1) {
      *why = "a UTF-8 character cut off at the end";
      return i;
    }
    for (int k = 1; k <= n; k++) {
      unsigned char d = (unsigned char)s[i + (size_t)k];
      if ((d & 0xC0) != 0x80) {
        *why = "invalid UTF-8";
        return i;
      }
      cp = (cp << 6) | (d & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      *why = "invalid UTF-8";
      return i;
    }
    i += (size_t)n + 1;
  }
  return len;
}

static mp_error *check_text(const source *src) {
  const char *why = NULL;
  size_t bad = first_bad_byte(src->doc, src->len, &why);
  if (bad < src->len) return err_at(src, bad, "expected UTF-8 text, found %s (byte 0x%02X)", why, (unsigned char)src->doc[bad]);
  return NULL;
}

/* ---------------------------------------------------------------- the job */

static void section_clear(mp_section *s) {
  free(s->text);
  for (int i = 0; i < s->n_adapters; i++) free(s->adapters[i].id);
  free(s->adapters);
  for (int i = 0; i < s->n_embeddings; i++) free(s->embeddings[i]);
  free(s->embeddings);
  memset(s, 0, sizeof *s);
}

static void pass_clear(mp_pass_text *p) {
  free(p->prompt);
  free(p->negative);
  for (int i = 0; i < p->n_adapters; i++) free(p->adapters[i].id);
  free(p->adapters);
  for (int i = 0; i < p->n_embeddings; i++) free(p->embeddings[i]);
  free(p->embeddings);
  memset(p, 0, sizeof *p);
}

void mp_job_free(mp_job *job) {
  if (!job) return;
  free(job->text);
  free(job->negative_prompt);
  free(job->input_image);
  free(job->input_image_url);
  free(job->mask_image);
  free(job->mask_image_url);
  free(job->controlnet);
  free(job->callback);
  free(job->base_model);
  free(job->flags.mask_prompt);
  for (int i = 0; i < MP_MAX_SECTIONS; i++) {
    section_clear(&job->sections[i]);
    section_clear(&job->neg_sections[i]);
  }
  for (int i = 0; i < 1 + MP_MAX_PERSONS; i++) pass_clear(&job->passes[i]);
  for (int i = 0; i < job->n_embeddings; i++) free(job->embeddings[i]);
  free(job->embeddings);
  for (int i = 0; i < job->n_warnings; i++) free(job->warnings[i]);
  free(job->warnings);
  free(job);
}

static mp_job *job_new(void) {
  mp_job *j = calloc(1, sizeof *j);
  if (!j) return NULL;
  j->num_images = 1;
  j->steps = 30;
  j->cfg_scale = 7.0;
  j->width = j->height = 512;
  j->scheduler = MP_SCHED_DPMPP_2M_KARRAS;
  j->denoising_strength = 0.8;
  j->controlnet_conditioning_scale = 1.0;
  j->flags.hires_cfg_scale = 5.5;
  j->flags.resemblance = 0.65;
  j->flags.hires_denoising_strength = 0.4;
  j->flags.person_denoising_strength = 0.65;
  j->flags.face_denoising_strength = 0.5;
  return j;
}

static mp_error *warn(mp_job *job, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static mp_error *warn(mp_job *job, const char *fmt, ...) {
  if (job->n_warnings > MP_MAX_WARNINGS) return NULL;
  bool last = job->n_warnings == MP_MAX_WARNINGS;
  va_list ap;
  va_start(ap, fmt);
  int n = last ? 0 : vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  const char *more = "more warnings follow; only the first ones are shown";
  char *msg = malloc(last ? strlen(more) + 1 : (size_t)n + 1);
  char **w = realloc(job->warnings, (size_t)(job->n_warnings + 1) * sizeof *w);
  if (w) job->warnings = w;
  if (!msg || !w) {
    free(msg);
    return mp_errorf("out of memory");
  }
  if (last) strcpy(msg, more);
  else {
    va_start(ap, fmt);
    vsnprintf(msg, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  job->warnings[job->n_warnings++] = msg;
  return NULL;
}

static mp_error *warn_at(mp_job *job, const source *src, size_t off, const char *msg) {
  if (job->n_warnings > MP_MAX_WARNINGS) return NULL; /* (and spare the line count) */
  int line, col;
  line_col(src, off, &line, &col);
  return warn(job, "%sline %d, column %d: %s", src->where, line, col, msg);
}

/* ---------------------------------------------------------------- names */

static const char *const scheduler_names[MP_SCHED_COUNT] = {
    "euler", "euler_a", "dpm++2m", "dpm++2m_karras", "dpm++sde", "dpm++sde_karras", "lcm", "tcd", "ddim"};

const char *mp_scheduler_name(mp_scheduler s) { return (unsigned)s < MP_SCHED_COUNT ? scheduler_names[s] : "?"; }

const char *mp_aspect_name(mp_aspect a) {
  switch (a) {
    case MP_AR_1_1: return "1:1";
    case MP_AR_PORTRAIT: return "portrait";
    case MP_AR_16_9: return "16:9";
    case MP_AR_LANDSCAPE: return "landscape";
    default: return NULL;
  }
}

const char *mp_grading_name(mp_grading g) {
  switch (g) {
    case MP_GRADING_VELVIA: return "Film Velvia";
    case MP_GRADING_PORTRA: return "Film Portra";
    case MP_GRADING_EKTAR: return "Ektar";
    default: return NULL;
  }
}

/* ---------------------------------------------------------------- values */

static bool eq_n(const char *s, size_t n, const char *lit) { return strlen(lit) == n && memcmp(s, lit, n) == 0; }

static bool eq_n_nocase(const char *s, size_t n, const char *lit) {
  if (strlen(lit) != n) return false;
  for (size_t i = 0; i < n; i++) {
    char a = s[i], b = lit[i];
    if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
    if (b >= 'A' && b <= 'Z') b = (char)(b - 'A' + 'a');
    if (a != b) return false;
  }
  return true;
}

/* A decimal integer with an optional sign; false when malformed or beyond 18 digits. */
static bool parse_int(const char *s, size_t n, long long *out) {
  size_t i = 0;
  bool neg = false;
  if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i == n || n - i > 18) return false;
  long long v = 0;
  for (; i < n; i++) {
    if (!is_digit(s[i])) return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = neg ? -v : v;
  return true;
}

/* A decimal number: [+-] digits [. digits] | [+-] . digits, optional exponent. No inf, nan, hex. */
static bool parse_float(const char *s, size_t n, double *out) {
  size_t i = 0, digits = 0;
  if (n == 0 || n > 64) return false;
  if (s[i] == '+' || s[i] == '-') i++;
  while (i < n && is_digit(s[i])) i++, digits++;
  if (i < n && s[i] == '.') {
    i++;
    while (i < n && is_digit(s[i])) i++, digits++;
  }
  if (!digits) return false;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t ed = 0;
    while (i < n && is_digit(s[i])) i++, ed++;
    if (!ed) return false;
  }
  if (i != n) return false;
  char buf[72];
  memcpy(buf, s, n);
  buf[n] = 0;
  double v = strtod(buf, NULL);
  if (!isfinite(v)) return false;
  *out = v;
  return true;
}

/* A tag weight: plain decimal, no sign, no exponent. */
static bool parse_weight(const char *s, size_t n, double *out) {
  size_t digits = 0;
  for (size_t i = 0; i < n; i++) {
    if (is_digit(s[i])) digits++;
    else if (s[i] != '.') return false;
  }
  const char *dot = memchr(s, '.', n);
  if (dot && memchr(dot + 1, '.', n - (size_t)(dot - s) - 1)) return false;
  return digits > 0 && parse_float(s, n, out);
}

enum key_id {
  K_TEXT, K_NEGATIVE, K_NUM_IMAGES, K_SEED, K_STEPS, K_CFG, K_W, K_H, K_AR, K_SCHEDULER, K_LPW, K_DENOISE,
  K_INPUT, K_INPUT_URL, K_MASK, K_MASK_URL, K_SR, K_HIRES, K_FACES, K_GRAIN, K_GRADING, K_FACE_CORRECT,
  K_FACE_SWAP, K_CN, K_CN_SCALE, K_CN_TXT2IMG, K_EXPANSION, K_CALLBACK, K_BASE_MODEL, K_COUNT
};

static const char *const key_names[K_COUNT] = {
    "text", "negative_prompt", "num_images", "seed", "steps", "cfg_scale", "w", "h", "ar", "scheduler", "use_lpw",
    "denoising_strength", "input_image", "input_image_url", "mask_image", "mask_image_url", "super_resolution",
    "hires_fix", "inpaint_faces", "film_grain", "color_grading", "face_correct", "face_swap", "controlnet",
    "controlnet_conditioning_scale", "controlnet_txt2img", "prompt_expansion", "callback", "base_model"};

/* Edit distance (insert, delete, substitute) between s[0..n) and `lit`, for "did you mean". Keys are
 * short; longer inputs are cut, which only makes the distance larger. */
static size_t edit_distance(const char *s, size_t n, const char *lit) {
  enum { MAXK = 48 };
  size_t m = strlen(lit);
  if (n > MAXK) n = MAXK;
  if (m > MAXK) m = MAXK;
  size_t row[MAXK + 1];
  for (size_t j = 0; j <= m; j++) row[j] = j;
  for (size_t i = 1; i <= n; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= m; j++) {
      size_t up = row[j];
      size_t best = diag + (s[i - 1] != lit[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[m];
}

/* The known key nearest to an unknown one, or NULL when none is near enough to be a likely typo
 * (distance at most 2, or at most half the longer name), or the key it begins ("negative" ->
 * "negative_prompt"). */
static const char *nearest_key(const char *s, size_t n) {
  const char *best = NULL;
  size_t best_d = (size_t)-1;
  for (int k = 0; k < K_COUNT; k++) {
    size_t d = edit_distance(s, n, key_names[k]);
    if (n >= 3 && strncmp(key_names[k], s, n) == 0) d = 1; /* a key cut short: "negative", "cfg" */
    if (d < best_d) best_d = d, best = key_names[k];
  }
  size_t longer = best && strlen(best) > n ? strlen(best) : n;
  return best && (best_d <= 2 || 2 * best_d <= longer) ? best : NULL;
}

/* ": did you mean steps?" for an unknown key, or "" when no key is near. */
static void suggestion(const char *s, size_t n, char out[64]) {
  const char *near = nearest_key(s, n);
  if (near) snprintf(out, 64, ": did you mean %s?", near);
  else out[0] = 0;
}

static int key_lookup(const char *s, size_t n) {
  for (int k = 0; k < K_COUNT; k++)
    if (eq_n(s, n, key_names[k])) return k;
  return -1;
}

/* Where each key was given, for cross-checks after all keys are read. */
typedef struct {
  bool given[K_COUNT];   /* present with a non-empty value */
  bool present[K_COUNT]; /* present at all (duplicate detection) */
  int line[K_COUNT];     /* text form: line of the key; 0 in the JSON form */
} key_seen;

static bool take_string(char **field, const char *v, size_t n) {
  free(*field);
  *field = dup_n(v, n);
  return *field != NULL;
}

/* Apply one parameter value (already trimmed; n == 0 means "default"). Returns NULL on success, else
 * what was expected (a static string). Sets *oom on allocation failure. */
static const char *apply_value(mp_job *job, int key, const char *v, size_t n, bool *oom) {
  long long i;
  double f;
  if (n == 0 && key != K_TEXT) return NULL;
  switch (key) {
    case K_NUM_IMAGES:
      if (!parse_int(v, n, &i) || i < 1 || i > 8) return "expected an integer from 1 to 8";
      job->num_images = (int)i;
      return NULL;
    case K_SEED:
      if (!parse_int(v, n, &i) || i < 0 || i > 4294967295LL) return "expected an integer from 0 to 4294967295";
      job->seed = (uint32_t)i;
      return NULL;
    case K_STEPS:
      if (!parse_int(v, n, &i) || i < 1 || i > 150) return "expected an integer from 1 to 150";
      job->steps = (int)i;
      return NULL;
    case K_CFG:
      if (!parse_float(v, n, &f) || f < 0 || f > 30) return "expected a number from 0 to 30";
      job->cfg_scale = f;
      return NULL;
    case K_W:
    case K_H:
      if (!parse_int(v, n, &i) || i < 64 || i > 2048 || i % 8) return "expected a multiple of 8 from 64 to 2048";
      if (key == K_W) job->width = (int)i;
      else job->height = (int)i;
      return NULL;
    case K_AR:
      if (eq_n(v, n, "1:1")) job->ar = MP_AR_1_1;
      else if (eq_n(v, n, "portrait") || eq_n(v, n, "2:3")) job->ar = MP_AR_PORTRAIT;
      else if (eq_n(v, n, "16:9")) job->ar = MP_AR_16_9;
      else if (eq_n(v, n, "landscape") || eq_n(v, n, "3:2")) job->ar = MP_AR_LANDSCAPE;
      else return "expected one of 1:1, portrait, 16:9, landscape";
      return NULL;
    case K_SCHEDULER:
      for (int s = 0; s < MP_SCHED_COUNT; s++)
        if (eq_n(v, n, scheduler_names[s])) {
          job->scheduler = (mp_scheduler)s;
          return NULL;
        }
      return "expected one of euler, euler_a, dpm++2m, dpm++2m_karras, dpm++sde, dpm++sde_karras, lcm, tcd, ddim";
    case K_DENOISE:
      if (!parse_float(v, n, &f) || f < 0 || f > 1) return "expected a number from 0 to 1";
      job->denoising_strength = f;
      return NULL;
    case K_CN_SCALE:
      if (!parse_float(v, n, &f) || f < 0 || f > 2) return "expected a number from 0 to 2";
      job->controlnet_conditioning_scale = f;
      return NULL;
    case K_GRADING:
      if (eq_n_nocase(v, n, "Film Velvia")) job->color_grading = MP_GRADING_VELVIA;
      else if (eq_n_nocase(v, n, "Film Portra")) job->color_grading = MP_GRADING_PORTRA;
      else if (eq_n_nocase(v, n, "Ektar")) job->color_grading = MP_GRADING_EKTAR;
      else return "expected one of Film Velvia, Film Portra, Ektar (or nothing)";
      return NULL;
    case K_LPW: case K_SR: case K_HIRES: case K_FACES: case K_GRAIN: case K_FACE_CORRECT: case K_FACE_SWAP:
    case K_CN_TXT2IMG: case K_EXPANSION: {
      bool b;
      if (eq_n(v, n, "true")) b = true;
      else if (eq_n(v, n, "false")) b = false;
      else return "expected true or false";
      bool *field = key == K_LPW ? &job->use_lpw : key == K_SR ? &job->super_resolution : key == K_HIRES ? &job->hires_fix
                  : key == K_FACES ? &job->inpaint_faces : key == K_GRAIN ? &job->film_grain
                  : key == K_FACE_CORRECT ? &job->face_correct : key == K_FACE_SWAP ? &job->face_swap
                  : key == K_CN_TXT2IMG ? &job->controlnet_txt2img : &job->prompt_expansion;
      *field = b;
      return NULL;
    }
    case K_TEXT: *oom = !take_string(&job->text, v, n); return NULL;
    case K_NEGATIVE: *oom = !take_string(&job->negative_prompt, v, n); return NULL;
    case K_INPUT: *oom = !take_string(&job->input_image, v, n); return NULL;
    case K_INPUT_URL: *oom = !take_string(&job->input_image_url, v, n); return NULL;
    case K_MASK: *oom = !take_string(&job->mask_image, v, n); return NULL;
    case K_MASK_URL: *oom = !take_string(&job->mask_image_url, v, n); return NULL;
    case K_CN: *oom = !take_string(&job->controlnet, v, n); return NULL;
    case K_CALLBACK: *oom = !take_string(&job->callback, v, n); return NULL;
    case K_BASE_MODEL: *oom = !take_string(&job->base_model, v, n); return NULL;
  }
  return "an unknown key";
}

/* ---------------------------------------------------------------- flags (§1.2 step 1) */

enum flag_kind { F_SWITCH, F_NUMBER, F_WORD, F_DILATE };
enum flag_id {
  FL_TILED_UPSCALE, FL_HIRES_CFG_SCALE, FL_RESEMBLANCE, FL_HIRES_DENOISE, FL_ONLY_UPSCALE, FL_MASK_PROMPT, FL_MASK_INVERT,
  FL_MASK_DILATE, FL_PERSON_DENOISE, FL_FACE_DENOISE, FL_PERSON_LAYOUT
};
static const struct {
  const char *name;
  enum flag_kind kind;
  double lo, hi;
  const char *expected;
} flag_defs[] = {
    [FL_TILED_UPSCALE] = {"tiled_upscale", F_SWITCH, 0, 0, NULL},
    [FL_HIRES_CFG_SCALE] = {"hires_cfg_scale", F_NUMBER, 0, 30, "a number from 0 to 30"},
    [FL_RESEMBLANCE] = {"resemblance", F_NUMBER, 0, 1, "a number from 0 to 1"},
    [FL_HIRES_DENOISE] = {"hires_denoising_strength", F_NUMBER, 0, 1, "a number from 0 to 1"},
    [FL_ONLY_UPSCALE] = {"only_upscale", F_SWITCH, 0, 0, NULL},
    [FL_MASK_PROMPT] = {"mask_prompt", F_WORD, 0, 0, "a word"},
    [FL_MASK_INVERT] = {"mask_invert", F_SWITCH, 0, 0, NULL},
    [FL_MASK_DILATE] = {"mask_dilate", F_DILATE, 0, 0, "a pixel count N (0 to 512) or a percentage N% (0 to 100)"},
    [FL_PERSON_DENOISE] = {"person_denoising_strength", F_NUMBER, 0, 1, "a number from 0 to 1"},
    [FL_FACE_DENOISE] = {"face_denoising_strength", F_NUMBER, 0, 1, "a number from 0 to 1"},
    [FL_PERSON_LAYOUT] = {"person_layout", F_WORD, 0, 0, "auto or none"},
};
#define N_FLAGS (int)(sizeof flag_defs / sizeof *flag_defs)

/* Take the known flags out of buf[0..n) (overwriting them with spaces); unknown flags stay and warn. */
static mp_error *take_flags(mp_job *job, const source *src, size_t base, char *buf, size_t n) {
  bool seen[N_FLAGS] = {0};
  for (size_t i = 0; i + 2 < n; i++) {
    if (buf[i] != '-' || buf[i + 1] != '-' || !(is_lower(buf[i + 2]) || buf[i + 2] == '_')) continue;
    if (i > 0 && !is_space(buf[i - 1])) continue;
    size_t j = i + 2;
    while (j < n && (is_lower(buf[j]) || is_digit(buf[j]) || buf[j] == '_')) j++;
    int f = -1;
    for (int k = 0; k < N_FLAGS; k++)
      if (eq_n(buf + i + 2, j - i - 2, flag_defs[k].name)) f = k;
    if (f < 0) {
      char q[256], msg[400];
      size_t e = j;
      while (e < n && !is_space(buf[e])) e++;
      quote(buf + i, e - i, q);
      snprintf(msg, sizeof msg, "unknown flag %s left in the prompt text", q);
      MP_TRY(warn_at(job, src, base + i, msg));
      i = e;
      continue;
    }
    const char *name = flag_defs[f].name;
    if (j < n && !is_space(buf[j])) {
      char q[256];
      quote(buf + j, 1, q);
      return err_at(src, base + j, "--%s: expected a space or the end of the line after the flag, found %s", name, q);
    }
    if (seen[f]) return err_at(src, base + i, "--%s: the flag is given twice", name);
    seen[f] = true;
    job->n_flags++;
    size_t end = j;
    if (flag_defs[f].kind != F_SWITCH) {
      size_t v = j;
      while (v < n && (buf[v] == ' ' || buf[v] == '\t')) v++;
      size_t ve = v;
      while (ve < n && !is_space(buf[ve])) ve++;
      const char *expected = flag_defs[f].expected;
      if (v == ve) return err_at(src, base + j, "--%s: expected %s after the flag, found the end of the line", name, expected);
      const char *val = buf + v;
      size_t vn = ve - v;
      char q[256];
      quote(val, vn, q);
      double d;
      long long iv;
      switch (flag_defs[f].kind) {
        case F_NUMBER:
          if (!parse_float(val, vn, &d) || d < flag_defs[f].lo || d > flag_defs[f].hi)
            return err_at(src, base + v, "--%s: expected %s, found %s", name, expected, q);
          if (f == FL_HIRES_CFG_SCALE) job->flags.hires_cfg_scale = d, job->flags.hires_cfg_scale_given = true;
          else if (f == FL_RESEMBLANCE) job->flags.resemblance = d, job->flags.resemblance_given = true;
          else if (f == FL_HIRES_DENOISE) job->flags.hires_denoising_strength = d, job->flags.hires_denoising_strength_given = true;
          else if (f == FL_PERSON_DENOISE) job->flags.person_denoising_strength = d, job->flags.person_denoising_strength_given = true;
          else job->flags.face_denoising_strength = d, job->flags.face_denoising_strength_given = true;
          break;
        case F_WORD:
          if (f == FL_PERSON_LAYOUT) {
            if (!eq_n(val, vn, "auto") && !eq_n(val, vn, "none")) return err_at(src, base + v, "--%s: expected %s, found %s", name, expected, q);
            job->flags.person_layout_none = eq_n(val, vn, "none");
            break;
          }
          if (!(job->flags.mask_prompt = dup_n(val, vn))) return mp_errorf("out of memory");
          break;
        case F_DILATE: {
          bool pct = val[vn - 1] == '%';
          if (!parse_int(val, vn - pct, &iv) || iv < 0 || iv > (pct ? 100 : 512))
            return err_at(src, base + v, "--%s: expected %s, found %s", name, expected, q);
          job->flags.mask_dilate = (int)iv;
          job->flags.mask_dilate_percent = pct;
          job->flags.mask_dilate_given = true;
          break;
        }
        case F_SWITCH: break;
      }
      end = ve;
    } else if (f == FL_TILED_UPSCALE) job->flags.tiled_upscale = true;
    else if (f == FL_ONLY_UPSCALE) job->flags.only_upscale = true;
    else job->flags.mask_invert = true;
    memset(buf + i, ' ', end - i);
    i = end;
  }
  return NULL;
}

/* ---------------------------------------------------------------- sections and tags (§1.2 steps 2-3) */

/* Split buf[0..n) on the whole word BREAK. starts/ends get each section's range; *breaks the offset
 * of each BREAK. Errors when there would be more than max sections. */
static mp_error *split_sections(const source *src, size_t base, const char *buf, size_t n, int max, const char *what,
                                size_t *starts, size_t *ends, size_t *breaks, int *count) {
  int c = 0;
  starts[0] = 0;
  for (size_t i = 0; i + 5 <= n; i++) {
    if (memcmp(buf + i, "BREAK", 5) != 0) continue;
    if (i > 0 && is_word(buf[i - 1])) continue;
    if (i + 5 < n && is_word(buf[i + 5])) continue;
    if (c + 1 >= max)
      return err_at(src, base + i, "%s: at most %d person sections (%d BREAKs) are allowed, this BREAK starts person section %d",
                    what, MP_MAX_PERSONS, max - 1, c);
    ends[c] = i;
    breaks[c] = i;
    c++;
    starts[c] = i + 5;
    i += 4;
  }
  ends[c] = n;
  *count = c + 1;
  return NULL;
}

static bool valid_embedding_char(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-' || c == '.' || c == '+';
}

static bool push_name(char ***list, int *n, const char *s, size_t len) {
  for (int i = 0; i < *n; i++)
    if (strlen((*list)[i]) == len && memcmp((*list)[i], s, len) == 0) return true;
  char **p = realloc(*list, (size_t)(*n + 1) * sizeof *p);
  if (!p) return false;
  *list = p;
  if (!(p[*n] = dup_n(s, len))) return false;
  (*n)++;
  return true;
}

static bool push_adapter(mp_adapter **list, int *n, mp_adapter_kind kind, const char *id, size_t len, double w) {
  mp_adapter *p = realloc(*list, (size_t)(*n + 1) * sizeof *p);
  if (!p) return false;
  *list = p;
  p[*n].kind = kind;
  p[*n].weight = w;
  if (!(p[*n].id = dup_n(id, len))) return false;
  (*n)++;
  return true;
}

/* Take the tags out of section buf[s..e): <lora:ID:W> and <faceid:ID:W> are blanked out and recorded,
 * <name> is recorded and its brackets are dropped, so the bare name stays where it was written (as in
 * AUTOMATIC1111, the conditioning finds embedding names in the text). `\<` becomes a literal `<`.
 * Dropped bytes are set to NUL, which the text cannot contain; collapse() skips them.
 * `negative`: adapters are not allowed. */
static mp_error *take_tags(mp_job *job, const source *src, size_t base, char *buf, size_t s, size_t e, bool negative,
                           mp_section *sec) {
  const char *forms = "<lora:ID:WEIGHT>, <faceid:ID:WEIGHT> or <embedding-name>";
  int tags = 0;
  for (size_t i = s; i < e; i++) {
    if (buf[i] != '<') continue;
    if (i > s && buf[i - 1] == '\\') {
      buf[i - 1] = 0;
      continue;
    }
    if (++tags > MP_MAX_TAGS) return err_at(src, base + i, "too many tags: a section holds at most %d", MP_MAX_TAGS);
    size_t j = i + 1;
    while (j < e && buf[j] != '>' && buf[j] != '<' && buf[j] != '\n') j++;
    if (j >= e || buf[j] != '>')
      return err_at(src, base + i, "unterminated tag: expected %s closed by '>' on the same line (write \\< for a literal <)", forms);
    const char *c = buf + i + 1;
    size_t cn = j - i - 1;
    const char *colon = memchr(c, ':', cn);
    char q[256];
    quote(buf + i, j - i + 1, q);
    if (!colon) {
      if (cn == 0) return err_at(src, base + i, "empty tag <>: expected %s", forms);
      for (size_t k = 0; k < cn; k++)
        if (!valid_embedding_char(c[k]))
          return err_at(src, base + i + 1 + k, "tag %s: expected an embedding name of letters, digits, '_', '-', '.', '+'", q);
      if (!push_name(&sec->embeddings, &sec->n_embeddings, c, cn)) return mp_errorf("out of memory");
      buf[i] = buf[j] = 0;
      i = j;
      continue;
    }
    size_t tn = (size_t)(colon - c);
    mp_adapter_kind kind;
    if (eq_n(c, tn, "lora")) kind = MP_ADAPTER_LORA;
    else if (eq_n(c, tn, "faceid")) kind = MP_ADAPTER_FACEID;
    else {
      char tq[256];
      quote(c, tn, tq);
      return err_at(src, base + i + 1, "unknown tag type %s: expected %s", tq, forms);
    }
    const char *tname = kind == MP_ADAPTER_LORA ? "lora" : "faceid";
    if (negative)
      return err_at(src, base + i, "negative_prompt: tag %s: <%s:...> tags belong in the prompt text, not the negative prompt", q, tname);
    const char *id = colon + 1;
    const char *c2 = memchr(id, ':', cn - tn - 1);
    if (!c2) return err_at(src, base + i, "tag %s: expected <%s:ID:WEIGHT>", q, tname);
    size_t idn = (size_t)(c2 - id);
    size_t id0 = 0;
    while (id0 < idn && is_space(id[id0])) id0++;
    while (idn > id0 && is_space(id[idn - 1])) idn--;
    if (idn == id0) return err_at(src, base + (size_t)(id - buf), "tag %s: expected an ID (a tune id or a LoRA file name)", q);
    const char *w = c2 + 1;
    size_t wn = (size_t)(buf + j - w);
    double weight;
    if (!parse_weight(w, wn, &weight) || weight > 100) {
      char wq[256];
      quote(w, wn, wq);
      return err_at(src, base + (size_t)(w - buf), "tag %s: weight: expected a decimal number from 0 to 100, found %s", q, wq);
    }
    if (!push_adapter(&sec->adapters, &sec->n_adapters, kind, id + id0, idn - id0, weight)) return mp_errorf("out of memory");
    if (kind == MP_ADAPTER_FACEID)
      MP_TRY(warn_at(job, src, base + i, "faceid adapters are accepted but not supported: the pipeline will report this tag as unsupported"));
    memset(buf + i, ' ', j - i + 1);
    i = j;
  }
  return NULL;
}

/* buf[s..e) trimmed, whitespace runs collapsed to one space, NUL bytes (dropped characters) left out. */
static char *collapse(const char *buf, size_t s, size_t e) {
  sbuf b = {0};
  bool pending = false;
  for (size_t i = s; i < e; i++) {
    if (!buf[i]) continue;
    if (is_space(buf[i])) {
      pending = b.n > 0;
      continue;
    }
    if (pending) sb_add(&b, " ", 1);
    pending = false;
    sb_add(&b, buf + i, 1);
  }
  return sb_take(&b);
}

/* Sections of one text (the prompt or the negative): each section's tags taken out, text collapsed.
 * On return out[0..*count) are filled, breaks[] hold the offsets of the BREAKs. */
static mp_error *parse_sections(mp_job *job, const source *src, size_t base, char *buf, size_t n, bool negative,
                                mp_section *out, int *count, size_t *breaks) {
  size_t starts[MP_MAX_SECTIONS], ends[MP_MAX_SECTIONS];
  MP_TRY(split_sections(src, base, buf, n, MP_MAX_SECTIONS, negative ? "negative_prompt" : "text", starts, ends, breaks, count));
  for (int k = 0; k < *count; k++) {
    MP_TRY(take_tags(job, src, base, buf, starts[k], ends[k], negative, &out[k]));
    if (!(out[k].text = collapse(buf, starts[k], ends[k]))) return mp_errorf("out of memory");
  }
  return NULL;
}

/* ---------------------------------------------------------------- composition (§1.2 step 4, §1.3) */

static char *join2(const char *a, const char *b) {
  sbuf s = {0};
  if (a && *a) sb_add(&s, a, strlen(a));
  if (b && *b) {
    if (s.n) sb_add(&s, ", ", 2);
    sb_add(&s, b, strlen(b));
  }
  return sb_take(&s);
}

static bool add_section_refs(mp_pass_text *p, const mp_section *s, bool adapters) {
  if (!s) return true;
  if (adapters)
    for (int i = 0; i < s->n_adapters; i++)
      if (!push_adapter(&p->adapters, &p->n_adapters, s->adapters[i].kind, s->adapters[i].id, strlen(s->adapters[i].id),
                        s->adapters[i].weight))
        return false;
  for (int i = 0; i < s->n_embeddings; i++)
    if (!push_name(&p->embeddings, &p->n_embeddings, s->embeddings[i], strlen(s->embeddings[i]))) return false;
  return true;
}

static mp_error *compose(mp_job *job) {
  const mp_section *common = job->n_sections >= 2 ? &job->sections[1] : NULL;
  int n_passes = 1 + job->n_persons;
  for (int k = 0; k < n_passes; k++) {
    mp_pass_text *p = &job->passes[k];
    const mp_section *own = k == 0 ? &job->sections[0] : &job->sections[1 + k];
    const mp_section *nown, *ncommon;
    if (job->n_neg_sections == 1) {
      nown = &job->neg_sections[0];
      ncommon = NULL;
    } else {
      ncommon = &job->neg_sections[1];
      nown = k == 0 ? &job->neg_sections[0] : (1 + k < job->n_neg_sections ? &job->neg_sections[1 + k] : NULL);
    }
    p->prompt = join2(own->text, common ? common->text : NULL);
    p->negative = join2(nown ? nown->text : NULL, ncommon ? ncommon->text : NULL);
    if (!p->prompt || !p->negative || !add_section_refs(p, own, true) || !add_section_refs(p, common, true) ||
        !add_section_refs(p, nown, false) || !add_section_refs(p, ncommon, false))
      return mp_errorf("out of memory");
  }
  for (int k = 0; k < job->n_sections; k++)
    for (int i = 0; i < job->sections[k].n_embeddings; i++)
      if (!push_name(&job->embeddings, &job->n_embeddings, job->sections[k].embeddings[i], strlen(job->sections[k].embeddings[i])))
        return mp_errorf("out of memory");
  for (int k = 0; k < job->n_neg_sections; k++)
    for (int i = 0; i < job->neg_sections[k].n_embeddings; i++)
      if (!push_name(&job->embeddings, &job->n_embeddings, job->neg_sections[k].embeddings[i],
                     strlen(job->neg_sections[k].embeddings[i])))
        return mp_errorf("out of memory");
  return NULL;
}

/* ---------------------------------------------------------------- the common tail of both forms */

static mp_error *random_seed(uint32_t *out) {
  uint32_t v;
  if (getrandom(&v, sizeof v, 0) == (ssize_t)sizeof v) {
    *out = v;
    return NULL;
  }
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t r = read(fd, &v, sizeof v);
    close(fd);
    if (r == (ssize_t)sizeof v) {
      *out = v;
      return NULL;
    }
  }
  return mp_errorf("seed: no seed given and no random seed could be read from the system (%s)", strerror(errno));
}

/* Where a key was given: "line N, column 1: KEY" in the text form, "prompt.KEY" in the JSON form. */
static void key_where(const key_seen *ks, int key, bool json, char out[64]) {
  if (json) snprintf(out, 64, "prompt.%s", key_names[key]);
  else snprintf(out, 64, "line %d, column 1: %s", ks->line[key], key_names[key]);
}

/* Text form: a prompt line written \name=value (a line that would otherwise read as a parameter) is
 * the text name=value. The backslash becomes a space, which the section trimming then drops, so byte
 * offsets (and the line and column of later errors) stay those of the source. */
static void unescape_name_value_lines(char *buf, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if ((i > 0 && buf[i - 1] != '\n') || buf[i] != '\\') continue;
    size_t k = i + 1;
    while (k < n && (is_lower(buf[k]) || buf[k] == '_' || (k > i + 1 && is_digit(buf[k])))) k++;
    if (k > i + 1 && k < n && buf[k] == '=') buf[i] = ' ';
  }
}

static mp_error *finish(mp_job *job, const key_seen *ks, bool json, const source *tsrc, size_t tbase, size_t tlen,
                        const source *nsrc, size_t nbase, size_t nlen) {
  char where[64];
  bool has_input = job->input_image || job->input_image_url;
  if (job->input_image && job->input_image_url) {
    key_where(ks, K_INPUT_URL, json, where);
    return mp_errorf("%s: give input_image or input_image_url, not both", where);
  }
  if (job->mask_image && job->mask_image_url) {
    key_where(ks, K_MASK_URL, json, where);
    return mp_errorf("%s: give mask_image or mask_image_url, not both", where);
  }
  if ((job->mask_image || job->mask_image_url) && !has_input) {
    key_where(ks, job->mask_image ? K_MASK : K_MASK_URL, json, where);
    return mp_errorf("%s: a mask needs an image to repaint: expected input_image or input_image_url too", where);
  }
  if (!ks->given[K_SEED]) {
    MP_TRY(random_seed(&job->seed));
    job->seed_random = true;
  }

  /* size: w/h > ar > the input image's own size > 512x512 */
  if (ks->given[K_W] || ks->given[K_H]) {
    job->size_given = true;
    if (job->ar != MP_AR_NONE) {
      key_where(ks, K_AR, json, where);
      MP_TRY(warn(job, "%s: ar=%s ignored because w/h are given (%dx%d)", where, mp_aspect_name(job->ar), job->width, job->height));
    }
  } else if (has_input) {
    job->width = job->height = 0;
    if (job->ar != MP_AR_NONE) {
      key_where(ks, K_AR, json, where);
      MP_TRY(warn(job, "%s: ar=%s ignored: the size comes from the input image", where, mp_aspect_name(job->ar)));
    }
  } else if (job->ar != MP_AR_NONE) {
    static const int sizes[][2] = {{0, 0}, {768, 768}, {512, 768}, {768, 432}, {768, 512}};
    job->width = sizes[job->ar][0];
    job->height = sizes[job->ar][1];
    job->ar_used = true;
  }
  if (ks->given[K_DENOISE] && !has_input) {
    key_where(ks, K_DENOISE, json, where);
    MP_TRY(warn(job, "%s: has no effect without input_image", where));
  }
  if (job->prompt_expansion) {
    key_where(ks, K_EXPANSION, json, where);
    MP_TRY(warn(job, "%s: accepted but has no effect locally (no prompt-expansion model); the prompt is used as written", where));
  }

  /* the text: flags, sections, tags */
  char *buf = dup_n(tsrc->doc + tbase, tlen);
  if (!buf) return mp_errorf("out of memory");
  size_t breaks[MP_MAX_SECTIONS];
  if (!json) unescape_name_value_lines(buf, tlen);
  mp_error *e = take_flags(job, tsrc, tbase, buf, tlen);
  if (!e) e = parse_sections(job, tsrc, tbase, buf, tlen, false, job->sections, &job->n_sections, breaks);
  free(buf);
  MP_TRY(e);
  job->n_persons = job->n_sections >= 3 ? job->n_sections - 2 : 0;
  if (job->flags.only_upscale && !has_input)
    return err_at(tsrc, tbase, "--only_upscale: expected input_image or input_image_url, the image to upscale");
  if (job->flags.mask_prompt && !has_input)
    return err_at(tsrc, tbase, "--mask_prompt: expected input_image or input_image_url, the image to mask");

  if ((job->flags.mask_invert || job->flags.mask_dilate_given) && !job->flags.mask_prompt && !job->mask_image && !job->mask_image_url)
    MP_TRY(warn(job, "%s--mask_invert and --mask_dilate have no effect without a mask (mask_image or --mask_prompt)", tsrc->where));

  const mp_section *s = job->sections;
  bool scene_empty = !s[0].text[0] && (job->n_sections < 2 || !s[1].text[0]);
  if (job->n_persons > 0) {
    for (int k = 0; k < job->n_persons; k++) {
      const mp_section *p = &s[2 + k];
      if (!p->text[0] && !p->n_adapters)
        return err_at(tsrc, tbase + breaks[1 + k] + 5, "text: person section %d is empty: expected a description of person %d", k + 1, k + 1);
    }
    if (scene_empty) {
      if (!has_input)
        return err_at(tsrc, tbase + breaks[0],
                      "text: the base and common sections are empty (leading BREAK BREAK): this form expects input_image or "
                      "input_image_url, the background the persons are painted on");
      job->keep_background = true;
    }
  } else if (scene_empty && !job->flags.only_upscale) {
    return err_at(tsrc, tbase, "text: expected a prompt, found %s", tlen ? "no words (only flags, tags or BREAKs)" : "nothing");
  }

  /* the negative */
  if (nlen) {
    MP_TRY(check_text(nsrc));
    char *nb = dup_n(nsrc->doc + nbase, nlen);
    if (!nb) return mp_errorf("out of memory");
    e = parse_sections(job, nsrc, nbase, nb, nlen, true, job->neg_sections, &job->n_neg_sections, breaks);
    free(nb);
    MP_TRY(e);
  } else {
    job->n_neg_sections = 1;
    if (!(job->neg_sections[0].text = dup_n("", 0))) return mp_errorf("out of memory");
  }
  if (job->n_neg_sections > 1 && job->n_neg_sections > job->n_sections && job->n_neg_sections > 2) {
    key_where(ks, K_NEGATIVE, json, where);
    MP_TRY(warn(job, "%s: %d person sections, the text has %d: the extra negative sections are not used", where,
                job->n_neg_sections - 2, job->n_persons));
  }
  return compose(job);
}

/* ---------------------------------------------------------------- text form */

static mp_error *parse_text(const char *doc, size_t len, mp_job *job) {
  source src = {doc, len, ""};
  if (len > MP_MAX_DOCUMENT_BYTES)
    return mp_errorf("the document is %zu bytes; at most %u bytes are accepted", len, MP_MAX_DOCUMENT_BYTES);
  MP_TRY(check_text(&src));
  key_seen ks = {0};
  size_t text_end = len, neg_base = 0, neg_len = 0;
  bool in_params = false;
  int line = 0, params_line = 0;
  for (size_t ls = 0; ls <= len;) {
    line++;
    const char *nl = memchr(doc + ls, '\n', len - ls);
    size_t le = nl ? (size_t)(nl - doc) : len;
    size_t next = nl ? le + 1 : len + 1;
    size_t ce = le;
    if (ce > ls && doc[ce - 1] == '\r') ce--;
    /* ^[a-z_]+= in SPEC §1; digits are allowed after the first letter (controlnet_txt2img) */
    size_t k = ls;
    while (k < ce && (is_lower(doc[k]) || doc[k] == '_' || (k > ls && is_digit(doc[k])))) k++;
    bool name_value = k > ls && k < ce && doc[k] == '=';
    int key = name_value ? key_lookup(doc + ls, k - ls) : -1;
    bool unknown = name_value && key < 0;
    if (key == K_TEXT) { /* the text form's text is the leading lines */
      if (in_params) return err_at(&src, ls, "key text: in the text form the prompt text is the lines before the parameters");
      key = -1;
    }
    char q[256], hint[64];
    if (!in_params) {
      if (unknown) {
        /* name=value with an unknown name: a mistyped parameter, not prompt text (write \name=value
         * for a prompt line of that form) */
        quote(doc + ls, k - ls, q);
        suggestion(doc + ls, k - ls, hint);
        return err_at(&src, ls, "unknown key %s%s (a prompt line of the form name=value is written \\name=value)", q, hint);
      }
      if (key < 0) {
        ls = next;
        continue;
      }
      in_params = true;
      params_line = line;
      text_end = ls > 0 ? ls - 1 : 0;
      if (text_end > 0 && doc[text_end - 1] == '\r') text_end--;
    }
    /* a parameter line */
    size_t b = ls;
    while (b < ce && is_space(doc[b])) b++;
    if (b == ce) {
      ls = next;
      continue; /* blank lines between parameters are fine */
    }
    if (key < 0) {
      if (unknown) {
        quote(doc + ls, k - ls, q);
        suggestion(doc + ls, k - ls, hint);
        return err_at(&src, ls, "unknown key %s%s (the parameters are those of SPEC §1.1: num_images, seed, steps, cfg_scale, w, h, ...)", q, hint);
      }
      quote(doc + ls, ce - ls, q);
      return err_at(&src, ls, "expected a key=value parameter line (the parameters start on line %d and every later line must be one), found %s",
                    params_line, q);
    }
    if (ks.present[key])
      return err_at(&src, ls, "%s: the key is given twice (first on line %d)", key_names[key], ks.line[key]);
    ks.present[key] = true;
    ks.line[key] = line;
    size_t v = k + 1, ve = ce;
    while (v < ve && (doc[v] == ' ' || doc[v] == '\t')) v++;
    while (ve > v && (doc[ve - 1] == ' ' || doc[ve - 1] == '\t')) ve--;
    if (key == K_NEGATIVE) {
      neg_base = v;
      neg_len = ve - v;
    }
    ks.given[key] = ve > v;
    bool oom = false;
    const char *expected = apply_value(job, key, doc + v, ve - v, &oom);
    if (oom) return mp_errorf("out of memory");
    if (expected) {
      quote(doc + v, ve - v, q);
      return err_at(&src, k + 1, "%s: %s, found %s", key_names[key], expected, q);
    }
    ls = next;
  }
  free(job->text); /* never set by a key in this form, but own it either way */
  if (!(job->text = dup_n(doc, text_end))) return mp_errorf("out of memory");
  if (!job->negative_prompt && !(job->negative_prompt = dup_n("", 0))) return mp_errorf("out of memory");
  return finish(job, &ks, false, &src, 0, text_end, &src, neg_base, neg_len);
}

mp_error *mp_job_parse_text(const char *doc, size_t len, mp_job **out) {
  *out = NULL;
  mp_job *job = job_new();
  if (!job) return mp_errorf("out of memory");
  if (!doc) len = 0;
  if (len >= 3 && memcmp(doc, "\xEF\xBB\xBF", 3) == 0) doc += 3, len -= 3; /* a UTF-8 byte-order mark is not text */
  mp_error *e = parse_text(doc ? doc : "", len, job);
  if (e) {
    mp_job_free(job);
    return e;
  }
  *out = job;
  return NULL;
}

/* ---------------------------------------------------------------- JSON form */

static mp_error *parse_json(const char *doc, size_t len, mp_job *job) {
  source whole = {doc, len, ""};
  if (len > MP_MAX_DOCUMENT_BYTES)
    return mp_errorf("the document is %zu bytes; at most %u bytes are accepted", len, MP_MAX_DOCUMENT_BYTES);
  MP_TRY(check_text(&whole));
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(doc, len, &end, 0);
  if (!root) {
    size_t off = end && end >= doc && end <= doc + len ? (size_t)(end - doc) : 0;
    return err_at(&whole, off, "expected JSON ({\"prompt\": {\"text\": ...}}), found invalid JSON here");
  }
  size_t off = end && end >= doc && end <= doc + len ? (size_t)(end - doc) : len;
  while (off < len && is_space(doc[off])) off++;
  mp_error *e = NULL;
  if (off < len) {
    e = err_at(&whole, off, "expected the end of the JSON document, found more text");
    goto done;
  }
  cJSON *obj = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "prompt") : NULL;
  if (!obj && cJSON_IsObject(root) && cJSON_GetObjectItemCaseSensitive(root, "text")) obj = root;
  if (!cJSON_IsObject(obj)) {
    e = mp_errorf("expected a JSON object {\"prompt\": {\"text\": ..., ...}}");
    goto done;
  }
  key_seen ks = {0};
  for (cJSON *it = obj->child; it; it = it->next) {
    const char *name = it->string ? it->string : "";
    char q[256];
    int key = key_lookup(name, strlen(name));
    if (key < 0) {
      char hint[64];
      quote(name, strlen(name), q);
      suggestion(name, strlen(name), hint);
      e = mp_errorf("prompt: unknown key %s%s (the parameters are those of SPEC §1.1: text, negative_prompt, num_images, seed, ...)", q, hint);
      goto done;
    }
    if (ks.present[key]) {
      e = mp_errorf("prompt.%s: the key is given twice", name);
      goto done;
    }
    ks.present[key] = true;
    char num[64];
    const char *v;
    size_t vn;
    if (cJSON_IsString(it)) v = it->valuestring, vn = strlen(v);
    else if (cJSON_IsNull(it)) v = "", vn = 0;
    else if (cJSON_IsBool(it)) v = cJSON_IsTrue(it) ? "true" : "false", vn = strlen(v);
    else if (cJSON_IsNumber(it)) {
      snprintf(num, sizeof num, "%.15g", it->valuedouble);
      v = num;
      vn = strlen(num);
    } else {
      e = mp_errorf("prompt.%s: expected a string, a number, true, false or null, found an %s", name,
                    cJSON_IsArray(it) ? "array" : "object");
      goto done;
    }
    if ((key == K_TEXT || key == K_NEGATIVE) && !cJSON_IsString(it) && !cJSON_IsNull(it)) {
      e = mp_errorf("prompt.%s: expected a string", name);
      goto done;
    }
    /* trim like the text form does, except for the texts (trimmed per section later) */
    if (key != K_TEXT && key != K_NEGATIVE) {
      while (vn && is_space(v[0])) v++, vn--;
      while (vn && is_space(v[vn - 1])) vn--;
    }
    ks.given[key] = vn > 0;
    bool oom = false;
    const char *expected = apply_value(job, key, v, vn, &oom);
    if (oom) {
      e = mp_errorf("out of memory");
      goto done;
    }
    if (expected) {
      quote(v, vn, q);
      e = mp_errorf("prompt.%s: %s, found %s", name, expected, q);
      goto done;
    }
  }
  if (!job->text) {
    e = mp_errorf("prompt.text: expected the prompt text, found no text key");
    goto done;
  }
  if (!job->negative_prompt && !(job->negative_prompt = dup_n("", 0))) {
    e = mp_errorf("out of memory");
    goto done;
  }
  {
    source tsrc = {job->text, strlen(job->text), "prompt.text: "};
    source nsrc = {job->negative_prompt, strlen(job->negative_prompt), "prompt.negative_prompt: "};
    e = check_text(&tsrc);
    if (!e) e = finish(job, &ks, true, &tsrc, 0, tsrc.len, &nsrc, 0, nsrc.len);
  }
done:
  cJSON_Delete(root);
  return e;
}

mp_error *mp_job_parse_json(const char *doc, size_t len, mp_job **out) {
  *out = NULL;
  mp_job *job = job_new();
  if (!job) return mp_errorf("out of memory");
  if (!doc) len = 0;
  if (len >= 3 && memcmp(doc, "\xEF\xBB\xBF", 3) == 0) doc += 3, len -= 3; /* a UTF-8 byte-order mark is not text */
  mp_error *e = parse_json(doc ? doc : "", len, job);
  if (e) {
    mp_job_free(job);
    return e;
  }
  *out = job;
  return NULL;
}
