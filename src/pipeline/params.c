#include "pipeline/params.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------- building ---------- */

mp_error *mp_infotext_init(mp_infotext *it, const char *prompt, const char *negative_prompt) {
  memset(it, 0, sizeof *it);
  it->prompt = strdup(prompt ? prompt : "");
  it->negative_prompt = strdup(negative_prompt ? negative_prompt : "");
  if (!it->prompt || !it->negative_prompt) {
    mp_infotext_free(it);
    return mp_errorf("out of memory");
  }
  return NULL;
}

void mp_infotext_free(mp_infotext *it) {
  if (!it) return;
  free(it->prompt);
  free(it->negative_prompt);
  for (size_t i = 0; i < it->n_fields; i++) free(it->fields[i].key), free(it->fields[i].value);
  free(it->fields);
  memset(it, 0, sizeof *it);
}

/* Python's \w for our purposes: ASCII letters, digits, '_' and every non-ASCII byte (UTF-8 letters). */
static bool is_word(unsigned char c) { return isalnum(c) || c == '_' || c >= 0x80; }
static bool is_key_char(unsigned char c) { return is_word(c) || c == ' ' || c == '-' || c == '/'; }
static bool is_space(unsigned char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

static bool valid_key(const char *k) {
  if (!k || !is_word((unsigned char)k[0]) || !k[1]) return false;
  for (const char *p = k + 1; *p; p++)
    if (!is_key_char((unsigned char)*p)) return false;
  return true;
}

mp_error *mp_infotext_set(mp_infotext *it, const char *key, const char *value) {
  if (!valid_key(key))
    return mp_errorf("infotext key '%s' is not readable back (letters, digits, '_', ' ', '-', '/'; 2+ characters)",
                     key ? key : "(null)");
  for (size_t i = 0; i < it->n_fields; i++) {
    if (strcmp(it->fields[i].key, key) != 0) continue;
    if (!value) { /* remove */
      free(it->fields[i].key), free(it->fields[i].value);
      memmove(it->fields + i, it->fields + i + 1, (it->n_fields - i - 1) * sizeof *it->fields);
      it->n_fields--;
      return NULL;
    }
    char *v = strdup(value);
    if (!v) return mp_errorf("out of memory");
    free(it->fields[i].value);
    it->fields[i].value = v;
    return NULL;
  }
  if (!value) return NULL;
  if (it->n_fields == it->cap) {
    size_t cap = it->cap ? it->cap * 2 : 16;
    mp_infotext_field *f = realloc(it->fields, cap * sizeof *f);
    if (!f) return mp_errorf("out of memory");
    it->fields = f, it->cap = cap;
  }
  char *k = strdup(key), *v = strdup(value);
  if (!k || !v) {
    free(k), free(v);
    return mp_errorf("out of memory");
  }
  it->fields[it->n_fields++] = (mp_infotext_field){k, v};
  return NULL;
}

mp_error *mp_infotext_setf(mp_infotext *it, const char *key, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *v = NULL;
  int n = vasprintf(&v, fmt, ap);
  va_end(ap);
  if (n < 0) return mp_errorf("out of memory");
  mp_error *e = mp_infotext_set(it, key, v);
  free(v);
  return e;
}

mp_error *mp_infotext_set_int(mp_infotext *it, const char *key, long long v) {
  return mp_infotext_setf(it, key, "%lld", v);
}

mp_error *mp_infotext_set_real(mp_infotext *it, const char *key, double v) {
  char buf[40];
  for (int prec = 1; prec <= 17; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (strtod(buf, NULL) == v) break;
  }
  return mp_infotext_set(it, key, buf);
}

const char *mp_infotext_get(const mp_infotext *it, const char *key) {
  for (size_t i = 0; i < it->n_fields; i++)
    if (strcmp(it->fields[i].key, key) == 0) return it->fields[i].value;
  return NULL;
}

mp_error *mp_infotext_get_int(const mp_infotext *it, const char *key, long long *v) {
  const char *s = mp_infotext_get(it, key);
  if (!s) return mp_errorf("infotext has no '%s'", key);
  char *end;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  if (end == s || *end || errno) return mp_errorf("infotext '%s: %s': expected an integer", key, s);
  *v = x;
  return NULL;
}

mp_error *mp_infotext_get_real(const mp_infotext *it, const char *key, double *v) {
  const char *s = mp_infotext_get(it, key);
  if (!s) return mp_errorf("infotext has no '%s'", key);
  char *end;
  double x = strtod(s, &end);
  if (end == s || *end) return mp_errorf("infotext '%s: %s': expected a number", key, s);
  *v = x;
  return NULL;
}

mp_error *mp_infotext_get_size(const mp_infotext *it, const char *key, int *w, int *h) {
  const char *s = mp_infotext_get(it, key);
  if (!s) return mp_errorf("infotext has no '%s'", key);
  int a, b, n = 0;
  if (sscanf(s, "%9d%*1[x]%9d%n", &a, &b, &n) != 2 || s[n] || a <= 0 || b <= 0 || !isdigit((unsigned char)s[0]))
    return mp_errorf("infotext '%s: %s': expected WIDTHxHEIGHT", key, s);
  *w = a, *h = b;
  return NULL;
}

/* ---------- text ---------- */

typedef struct {
  char *s;
  size_t n, cap;
  bool oom;
} buf;

static void put(buf *b, const char *s, size_t n) {
  if (b->oom) return;
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (b->n + n + 1 > cap) cap *= 2;
    char *p = realloc(b->s, cap);
    if (!p) {
      b->oom = true;
      return;
    }
    b->s = p, b->cap = cap;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}
static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

char *mp_infotext_quote(const char *v) {
  if (!strpbrk(v, ",:\n")) return strdup(v);
  buf b = {0};
  puts_(&b, "\"");
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    char esc[8];
    switch (*p) {
      case '"': puts_(&b, "\\\""); break;
      case '\\': puts_(&b, "\\\\"); break;
      case '\n': puts_(&b, "\\n"); break;
      case '\r': puts_(&b, "\\r"); break;
      case '\t': puts_(&b, "\\t"); break;
      case '\b': puts_(&b, "\\b"); break;
      case '\f': puts_(&b, "\\f"); break;
      default:
        if (*p < 0x20) {
          snprintf(esc, sizeof esc, "\\u%04x", *p);
          puts_(&b, esc);
        } else {
          put(&b, (const char *)p, 1);
        }
    }
  }
  puts_(&b, "\"");
  if (b.oom) {
    free(b.s);
    return NULL;
  }
  return b.s;
}

/* Trim ASCII white space from both ends of [*s, *e). */
static void trim(const char **s, const char **e) {
  while (*s < *e && is_space((unsigned char)**s)) (*s)++;
  while (*e > *s && is_space((unsigned char)(*e)[-1])) (*e)--;
}

mp_error *mp_infotext_format(const mp_infotext *it, char **out) {
  *out = NULL;
  buf b = {0};
  puts_(&b, it->prompt);
  if (*it->negative_prompt) {
    puts_(&b, "\nNegative prompt: ");
    puts_(&b, it->negative_prompt);
  }
  puts_(&b, "\n");
  for (size_t i = 0; i < it->n_fields; i++) {
    if (i) puts_(&b, ", ");
    const mp_infotext_field *f = &it->fields[i];
    if (strcmp(f->key, f->value) == 0) {
      puts_(&b, f->key);
      continue;
    }
    char *q = mp_infotext_quote(f->value);
    if (!q) b.oom = true;
    puts_(&b, f->key);
    puts_(&b, ": ");
    if (q) puts_(&b, q);
    free(q);
  }
  if (b.oom || !b.s) {
    free(b.s);
    return mp_errorf("out of memory");
  }
  const char *s = b.s, *e = b.s + b.n;
  trim(&s, &e);
  memmove(b.s, s, (size_t)(e - s));
  b.s[e - s] = 0;
  *out = b.s;
  return NULL;
}

/* One match of A1111's re_param  \s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)  at p (within
 * [p, end)); on success the key and value spans and the end of the match. */
typedef struct {
  const char *k, *ke, *v, *ve, *next;
} param_match;

static bool match_param(const char *p, const char *end, param_match *m) {
  while (p < end && is_space((unsigned char)*p)) p++;
  if (p >= end || !is_word((unsigned char)*p)) return false;
  const char *k = p++;
  while (p < end && is_key_char((unsigned char)*p)) p++;
  if (p - k < 2 || p >= end || *p != ':') return false;
  m->k = k, m->ke = p++;
  while (p < end && is_space((unsigned char)*p)) p++;
  if (p < end && *p == '"') { /* a quoted value, if it closes and a ',' or the end follows */
    const char *q = p + 1;
    while (q < end && *q != '"') {
      if (*q == '\\') {
        if (q + 1 >= end || q[1] == '\n') break;
        q += 2;
      } else {
        q++;
      }
    }
    if (q < end && *q == '"' && q > p + 1 && (q + 1 == end || q[1] == ',')) {
      m->v = p, m->ve = q + 1;
      m->next = q + 1 < end ? q + 2 : end;
      return true;
    }
  }
  const char *v = p;
  while (p < end && *p != ',') p++;
  m->v = v, m->ve = p;
  m->next = p < end ? p + 1 : end;
  return true;
}

static int count_params(const char *s, const char *end) {
  int n = 0;
  param_match m;
  for (const char *p = s; p < end;) {
    if (match_param(p, end, &m)) {
      n++;
      p = m.next > p ? m.next : p + 1;
    } else {
      p++;
    }
  }
  return n;
}

static void put_utf8(buf *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) u[0] = (char)cp, n = 1;
  else if (cp < 0x800) u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
  else if (cp < 0x10000)
    u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
  else
    u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F)), u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)),
    u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
  put(b, u, n);
}

static bool hex4(const char *p, const char *end, unsigned *v) {
  if (end - p < 4) return false;
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int c = (unsigned char)p[i];
    int d = isdigit(c) ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
    if (d < 0) return false;
    *v = *v * 16 + (unsigned)d;
  }
  return true;
}

/* json.loads of a whole "..." string; NULL when it is not valid JSON (the caller keeps the raw text). */
static char *json_unquote(const char *s, const char *end) {
  if (end - s < 2 || *s != '"' || end[-1] != '"') return NULL;
  buf b = {0};
  puts_(&b, "");
  const char *p = s + 1, *e = end - 1;
  while (p < e) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c < 0x20) goto bad; /* an unescaped quote ends the string early: extra data */
    if (c != '\\') {
      put(&b, p++, 1);
      continue;
    }
    if (++p >= e) goto bad;
    unsigned cp;
    switch (*p++) {
      case '"': puts_(&b, "\""); break;
      case '\\': puts_(&b, "\\"); break;
      case '/': puts_(&b, "/"); break;
      case 'b': puts_(&b, "\b"); break;
      case 'f': puts_(&b, "\f"); break;
      case 'n': puts_(&b, "\n"); break;
      case 'r': puts_(&b, "\r"); break;
      case 't': puts_(&b, "\t"); break;
      case 'u':
        if (!hex4(p, e, &cp)) goto bad;
        p += 4;
        if (cp >= 0xD800 && cp < 0xDC00 && e - p >= 6 && p[0] == '\\' && p[1] == 'u') {
          unsigned lo;
          if (hex4(p + 2, e, &lo) && lo >= 0xDC00 && lo < 0xE000) {
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            p += 6;
          }
        }
        if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD; /* a lone surrogate cannot be UTF-8 */
        put_utf8(&b, cp);
        break;
      default: goto bad;
    }
  }
  if (b.oom) goto bad;
  return b.s;
bad:
  free(b.s);
  return NULL;
}

static mp_error *append_line(char **dst, const char *s, const char *e) {
  size_t old = strlen(*dst), n = (size_t)(e - s);
  char *p = realloc(*dst, old + (old ? 1 : 0) + n + 1);
  if (!p) return mp_errorf("out of memory");
  if (old) p[old++] = '\n';
  memcpy(p + old, s, n);
  p[old + n] = 0;
  *dst = p;
  return NULL;
}

mp_error *mp_infotext_parse(const char *text, mp_infotext *out) {
  MP_TRY(mp_infotext_init(out, "", ""));
  const char *s = text, *end = text + strlen(text);
  trim(&s, &end);
  /* The last line holds the fields if at least three match in it. */
  const char *last = end;
  while (last > s && last[-1] != '\n') last--;
  const char *body_end = end;
  bool has_fields = count_params(last, end) >= 3;
  if (has_fields) body_end = last > s ? last - 1 : s;
  /* The body's lines, as Python's split("\n") gives them (a trailing empty line included). */
  mp_error *e = NULL;
  bool negative = false;
  if (!(has_fields && last == s))
    for (const char *line = s; !e;) {
      const char *nl = memchr(line, '\n', (size_t)(body_end - line));
      const char *ls = line, *le = nl ? nl : body_end;
      trim(&ls, &le);
      if ((size_t)(le - ls) >= 16 && memcmp(ls, "Negative prompt:", 16) == 0) {
        negative = true;
        ls += 16;
        trim(&ls, &le);
      }
      e = append_line(negative ? &out->negative_prompt : &out->prompt, ls, le);
      if (!nl) break;
      line = nl + 1;
    }
  param_match m;
  for (const char *p = last; has_fields && p < end && !e;) {
    if (!match_param(p, end, &m)) {
      p++;
      continue;
    }
    p = m.next;
    if (m.ve == m.v) continue; /* A1111 drops empty values */
    char *key = strndup(m.k, (size_t)(m.ke - m.k));
    char *val = json_unquote(m.v, m.ve);
    if (!val) val = strndup(m.v, (size_t)(m.ve - m.v));
    if (!key || !val)
      e = mp_errorf("out of memory");
    else
      e = mp_infotext_set(out, key, val);
    free(key), free(val);
  }
  if (e) mp_infotext_free(out);
  return e;
}

/* ---------- standard fields ---------- */

/* The plain (non-Karras) sigmas are written "Uniform": A1111 writes that name for them, and both 1.9
 * and 1.10 read it back; "Normal" does not exist before 1.10 and 1.9 reads it as "Automatic", which for
 * these samplers means Karras. Older mpass images said "Normal": still read as the plain schedule. */
static const struct {
  const char *mpass, *sampler, *schedule;
} sampler_names[] = {
    {"euler", "Euler", "Uniform"},
    {"euler_a", "Euler a", "Uniform"},
    {"dpm++2m", "DPM++ 2M", "Uniform"},
    {"dpm++2m_karras", "DPM++ 2M", "Karras"},
    {"dpm++sde", "DPM++ SDE", "Uniform"},
    {"dpm++sde_karras", "DPM++ SDE", "Karras"},
    {"lcm", "LCM", "Automatic"},
    {"tcd", "TCD", "Automatic"},
    {"ddim", "DDIM", "Automatic"},
};
#define N_SAMPLERS (sizeof sampler_names / sizeof *sampler_names)

bool mp_a1111_sampler(const char *scheduler, const char **sampler, const char **schedule_type) {
  for (size_t i = 0; scheduler && i < N_SAMPLERS; i++)
    if (strcmp(scheduler, sampler_names[i].mpass) == 0) {
      *sampler = sampler_names[i].sampler;
      *schedule_type = sampler_names[i].schedule;
      return true;
    }
  return false;
}

bool mp_scheduler_from_a1111(const char *sampler, const char *schedule_type, const char **scheduler) {
  if (!sampler) return false;
  char name[64];
  snprintf(name, sizeof name, "%s", sampler);
  bool karras = schedule_type && strcmp(schedule_type, "Karras") == 0;
  size_t n = strlen(name);
  if (n > 7 && strcmp(name + n - 7, " Karras") == 0) { /* the pre-1.9 spelling */
    name[n - 7] = 0;
    karras = true;
  }
  for (size_t i = 0; i < N_SAMPLERS; i++)
    if (strcmp(name, sampler_names[i].sampler) == 0 &&
        (strcmp(sampler_names[i].schedule, "Karras") == 0) == karras) {
      *scheduler = sampler_names[i].mpass;
      return true;
    }
  return false;
}

mp_error *mp_infotext_from_params(const mp_gen_params *p, mp_infotext *out) {
  const char *sampler, *schedule;
  if (!mp_a1111_sampler(p->scheduler, &sampler, &schedule))
    return mp_errorf("unknown scheduler '%s'", p->scheduler ? p->scheduler : "(null)");
  MP_TRY(mp_infotext_init(out, p->prompt, p->negative_prompt));
  mp_error *e = NULL;
  if (!e) e = mp_infotext_set_int(out, "Steps", p->steps);
  if (!e) e = mp_infotext_set(out, "Sampler", sampler);
  if (!e) e = mp_infotext_set(out, "Schedule type", schedule);
  if (!e) e = mp_infotext_set_real(out, "CFG scale", p->cfg_scale);
  if (!e) e = mp_infotext_set_int(out, "Seed", (long long)p->seed);
  if (!e) e = mp_infotext_setf(out, "Size", "%dx%d", p->width, p->height);
  if (!e && p->model_hash) e = mp_infotext_set(out, "Model hash", p->model_hash);
  if (!e && p->model_name) e = mp_infotext_set(out, "Model", p->model_name);
  if (!e && p->denoising_strength >= 0) e = mp_infotext_set_real(out, "Denoising strength", p->denoising_strength);
  if (!e && p->rng) e = mp_infotext_set(out, "RNG", p->rng);
  if (e) mp_infotext_free(out);
  return e;
}

/* ---------- SHA-256 (FIPS 180-4) ---------- */

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static inline uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(uint32_t h[8], const uint8_t *p) {
  uint32_t w[64];
  for (int i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
  for (int i = 16; i < 64; i++) {
    uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; i++) {
    uint32_t t1 = hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
  }
  h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

void mp_sha256_init(mp_sha256 *s) {
  static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  memcpy(s->h, iv, sizeof iv);
  s->length = 0;
  s->used = 0;
}

void mp_sha256_update(mp_sha256 *s, const void *data, size_t n) {
  const uint8_t *p = data;
  s->length += n;
  if (s->used) {
    size_t take = 64 - s->used < n ? 64 - s->used : n;
    memcpy(s->block + s->used, p, take);
    s->used += take, p += take, n -= take;
    if (s->used < 64) return;
    sha256_block(s->h, s->block);
    s->used = 0;
  }
  for (; n >= 64; p += 64, n -= 64) sha256_block(s->h, p);
  memcpy(s->block, p, n);
  s->used = n;
}

void mp_sha256_final(mp_sha256 *s, uint8_t digest[32]) {
  uint64_t bits = s->length * 8;
  s->block[s->used++] = 0x80;
  if (s->used > 56) {
    memset(s->block + s->used, 0, 64 - s->used);
    sha256_block(s->h, s->block);
    s->used = 0;
  }
  memset(s->block + s->used, 0, 56 - s->used);
  for (int i = 0; i < 8; i++) s->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
  sha256_block(s->h, s->block);
  for (int i = 0; i < 8; i++)
    for (int j = 0; j < 4; j++) digest[4 * i + j] = (uint8_t)(s->h[i] >> (24 - 8 * j));
}

void mp_sha256_hex(const uint8_t digest[32], char hex[65]) {
  for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", digest[i]);
}

mp_error *mp_file_sha256(const char *path, char hex[65]) {
  FILE *f = fopen(path, "rb");
  if (!f) return mp_errorf("%s: cannot open (%s)", path, strerror(errno));
  enum { CHUNK = 1 << 20 };
  uint8_t *chunk = malloc(CHUNK);
  if (!chunk) {
    fclose(f);
    return mp_errorf("out of memory");
  }
  mp_sha256 s;
  mp_sha256_init(&s);
  size_t n;
  while ((n = fread(chunk, 1, CHUNK, f)) > 0) mp_sha256_update(&s, chunk, n);
  bool failed = ferror(f);
  fclose(f);
  free(chunk);
  if (failed) return mp_errorf("%s: read error", path);
  uint8_t d[32];
  mp_sha256_final(&s, d);
  mp_sha256_hex(d, hex);
  return NULL;
}

mp_error *mp_model_short_hash(const char *path, char hash[11]) {
  char hex[65];
  MP_TRY(mp_file_sha256(path, hex));
  memcpy(hash, hex, 10);
  hash[10] = 0;
  return NULL;
}

/* ---- hash cache ---- */

static cJSON *read_json_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = n > 0 && n < (16 << 20) ? malloc((size_t)n + 1) : NULL;
  size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
  fclose(f);
  if (!buf) return NULL;
  buf[got] = 0;
  cJSON *j = cJSON_Parse(buf);
  free(buf);
  return j;
}

mp_error *mp_model_short_hash_cached(const char *cache_dir, const char *path, char hash[11]) {
  char abs[PATH_MAX], cache[PATH_MAX], tmp[PATH_MAX + 32];
  struct stat st;
  if (!cache_dir || !realpath(path, abs) || stat(abs, &st) != 0) return mp_model_short_hash(path, hash);
  snprintf(cache, sizeof cache, "%s/sha256.json", cache_dir);
  cJSON *root = read_json_file(cache);
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    root = cJSON_CreateObject();
  }
  const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, abs);
  const cJSON *size = cJSON_GetObjectItemCaseSensitive(e, "size"), *mtime = cJSON_GetObjectItemCaseSensitive(e, "mtime");
  const cJSON *sum = cJSON_GetObjectItemCaseSensitive(e, "sha256");
  if (cJSON_IsNumber(size) && size->valuedouble == (double)st.st_size && cJSON_IsNumber(mtime) &&
      mtime->valuedouble == (double)st.st_mtime && cJSON_IsString(sum) && strlen(sum->valuestring) == 64) {
    memcpy(hash, sum->valuestring, 10);
    hash[10] = 0;
    cJSON_Delete(root);
    return NULL;
  }
  char hex[65];
  mp_error *err = mp_file_sha256(abs, hex);
  if (!err) {
    memcpy(hash, hex, 10);
    hash[10] = 0;
    cJSON_DeleteItemFromObjectCaseSensitive(root, abs);
    cJSON *o = cJSON_AddObjectToObject(root, abs);
    cJSON_AddNumberToObject(o, "size", (double)st.st_size);
    cJSON_AddNumberToObject(o, "mtime", (double)st.st_mtime);
    cJSON_AddStringToObject(o, "sha256", hex);
    char *text = cJSON_Print(root);
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", cache, (int)getpid());
    mkdir(cache_dir, 0755);
    FILE *f = text ? fopen(tmp, "wb") : NULL;
    bool ok = f && fputs(text, f) >= 0;
    if (f && fclose(f) != 0) ok = false;
    if (ok) ok = rename(tmp, cache) == 0; /* other processes see the old or the new cache, never half */
    if (!ok) unlink(tmp);
    free(text);
  }
  cJSON_Delete(root);
  return err;
}
