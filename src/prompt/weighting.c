/* AUTOMATIC1111 attention parsing and chunking; see weighting.h. The regexes of prompt_parser.py
 * are matched by hand here; each helper names the alternative it stands for. */
#include "prompt/weighting.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---------------------------------------------------------------- Python regex character classes */

static int32_t decode_at(const char *s, size_t len, size_t i, size_t *k) {
  utf8proc_int32_t cp;
  utf8proc_ssize_t n = utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
  if (n < 1) { /* invalid byte: a non-space, non-word character of its own */
    *k = 1;
    return 0xFFFD;
  }
  *k = (size_t)n;
  return cp;
}

/* \s of Python's re on str (str.isspace) */
static bool py_space(int32_t cp) {
  return (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* \w of Python's re on str: alphanumeric (categories L*, N*) or '_' */
static bool py_word(int32_t cp) {
  if (cp == '_') return true;
  utf8proc_category_t c = utf8proc_category(cp);
  return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

/* The code point that ends right before byte i (0 if i == 0). */
static int32_t decode_before(const char *s, size_t i) {
  if (i == 0) return 0;
  size_t j = i - 1;
  while (j > 0 && ((uint8_t)s[j] & 0xC0) == 0x80 && i - j < 4) j--;
  size_t k;
  int32_t cp = decode_at(s, i, j, &k);
  return j + k == i ? cp : 0xFFFD;
}

static size_t skip_space(const char *s, size_t len, size_t i) {
  while (i < len) {
    size_t k;
    if (!py_space(decode_at(s, len, i, &k))) break;
    i += k;
  }
  return i;
}

/* ---------------------------------------------------------------- span list */

typedef struct {
  mp_prompt_span *v;
  size_t n, cap;
} spanvec;

static mp_error *push_span(spanvec *a, const char *text, size_t n, double weight) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? 2 * a->cap : 16;
    mp_prompt_span *nv = realloc(a->v, cap * sizeof *nv);
    if (!nv) return mp_errorf("out of memory");
    a->v = nv;
    a->cap = cap;
  }
  char *t = strndup(text, n);
  if (!t) return mp_errorf("out of memory");
  a->v[a->n++] = (mp_prompt_span){t, weight};
  return NULL;
}

bool mp_prompt_span_is_break(const mp_prompt_span *s) { return s->weight == -1.0 && strcmp(s->text, "BREAK") == 0; }

/* re.split(r"\s*\bBREAK\b\s*", text): each part appended with weight 1, a ["BREAK", -1] between parts. */
static mp_error *push_text_split_on_break(spanvec *res, const char *s, size_t len) {
  size_t part = 0;
  for (size_t p = 0; p < len;) {
    size_t q = skip_space(s, len, p);
    bool hit = q + 5 <= len && memcmp(s + q, "BREAK", 5) == 0 && !py_word(decode_before(s, q));
    if (hit && q + 5 < len) {
      size_t k;
      hit = !py_word(decode_at(s, len, q + 5, &k));
    }
    if (hit) {
      MP_TRY(push_span(res, s + part, p - part, 1.0));
      MP_TRY(push_span(res, "BREAK", 5, -1.0));
      part = p = skip_space(s, len, q + 5);
      continue;
    }
    size_t k;
    decode_at(s, len, p, &k);
    p += k;
  }
  return push_span(res, s + part, len - part, 1.0);
}

/* The ":\s*([+-]?[.\d]+)\s*\)" alternative at s[i] == ':'. Returns the match length (0: no match)
 * and the number's bytes. Digits are ASCII only (Python's \d would also take other scripts' digits). */
static size_t match_weight(const char *s, size_t len, size_t i, size_t *num_at, size_t *num_len) {
  size_t j = skip_space(s, len, i + 1);
  size_t start = j;
  if (j < len && (s[j] == '+' || s[j] == '-')) j++;
  size_t digits_at = j;
  while (j < len && (s[j] == '.' || (s[j] >= '0' && s[j] <= '9'))) j++;
  if (j == digits_at) return 0;
  size_t end_num = j;
  j = skip_space(s, len, j);
  if (j >= len || s[j] != ')') return 0;
  *num_at = start;
  *num_len = end_num - start;
  return j + 1 - i;
}

/* Python float() of "[+-]?[.0-9]+": at most one '.', at least one digit. */
static bool parse_weight(const char *s, size_t n, double *out) {
  char buf[64];
  if (n >= sizeof buf) return false;
  int dots = 0, digits = 0;
  for (size_t i = 0; i < n; i++) dots += s[i] == '.', digits += s[i] >= '0' && s[i] <= '9';
  if (dots > 1 || digits == 0) return false;
  memcpy(buf, s, n);
  buf[n] = 0;
  char *end;
  *out = strtod(buf, &end);
  return *end == 0;
}

static void multiply_range(spanvec *res, size_t start, double m) {
  for (size_t p = start; p < res->n; p++) res->v[p].weight *= m;
}

typedef struct {
  size_t *v;
  size_t n, cap;
} stack;

static bool push_pos(stack *s, size_t x) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 16;
    size_t *nv = realloc(s->v, cap * sizeof *nv);
    if (!nv) return false;
    s->v = nv;
    s->cap = cap;
  }
  s->v[s->n++] = x;
  return true;
}

static mp_error *parse(const char *text, spanvec *res) {
  const double round_mult = 1.1, square_mult = 1 / 1.1;
  stack round = {0}, square = {0};
  size_t len = strlen(text);
  mp_error *e = NULL;
  for (size_t i = 0; !e && i < len;) {
    char c = text[i];
    size_t num_at = 0, num_len = 0, wlen;
    if (c == '\\') {
      /* \( \) \[ \] \\ : the literal character; a lone backslash: nothing */
      char nx = i + 1 < len ? text[i + 1] : 0;
      if (nx == '(' || nx == ')' || nx == '[' || nx == ']' || nx == '\\') {
        e = push_span(res, text + i + 1, 1, 1.0);
        i += 2;
      } else {
        e = push_span(res, "", 0, 1.0);
        i += 1;
      }
    } else if (c == '(') {
      if (!push_pos(&round, res->n)) e = mp_errorf("out of memory");
      i++;
    } else if (c == '[') {
      if (!push_pos(&square, res->n)) e = mp_errorf("out of memory");
      i++;
    } else if (c == ':' && (wlen = match_weight(text, len, i, &num_at, &num_len)) > 0) {
      if (round.n) {
        double w;
        if (!parse_weight(text + num_at, num_len, &w))
          e = mp_errorf("prompt: weight '%.*s' at byte %zu is not a number", (int)num_len, text + num_at, num_at);
        else multiply_range(res, round.v[--round.n], w);
      } else {
        e = push_text_split_on_break(res, text + i, wlen);
      }
      i += wlen;
    } else if (c == ')' && round.n) {
      multiply_range(res, round.v[--round.n], round_mult);
      i++;
    } else if (c == ']' && square.n) {
      multiply_range(res, square.v[--square.n], square_mult);
      i++;
    } else if (c == ')' || c == ']' || c == ':') {
      e = push_text_split_on_break(res, text + i, 1);
      i++;
    } else {
      /* [^\\()\[\]:]+ */
      size_t j = i;
      while (j < len && !strchr("\\()[]:", text[j])) j++;
      e = push_text_split_on_break(res, text + i, j - i);
      i = j;
    }
  }
  for (size_t k = 0; !e && k < round.n; k++) multiply_range(res, round.v[k], round_mult);
  for (size_t k = 0; !e && k < square.n; k++) multiply_range(res, square.v[k], square_mult);
  free(round.v);
  free(square.v);
  if (!e && res->n == 0) e = push_span(res, "", 0, 1.0);
  /* merge runs of identical weights */
  for (size_t k = 0; !e && k + 1 < res->n;) {
    if (res->v[k].weight == res->v[k + 1].weight) {
      size_t a = strlen(res->v[k].text), b = strlen(res->v[k + 1].text);
      char *t = realloc(res->v[k].text, a + b + 1);
      if (!t) {
        e = mp_errorf("out of memory");
        break;
      }
      memcpy(t + a, res->v[k + 1].text, b + 1);
      res->v[k].text = t;
      free(res->v[k + 1].text);
      memmove(res->v + k + 1, res->v + k + 2, (res->n - k - 2) * sizeof *res->v);
      res->n--;
    } else {
      k++;
    }
  }
  return e;
}

mp_error *mp_parse_prompt_attention(const char *text, mp_prompt_spans *out) {
  out->items = NULL;
  out->n = 0;
  spanvec res = {0};
  mp_error *e = parse(text ? text : "", &res);
  if (e) {
    mp_prompt_spans s = {res.v, res.n};
    mp_prompt_spans_free(&s);
    return e;
  }
  out->items = res.v;
  out->n = res.n;
  return NULL;
}

void mp_prompt_spans_free(mp_prompt_spans *s) {
  for (size_t i = 0; i < s->n; i++) free(s->items[i].text);
  free(s->items);
  s->items = NULL;
  s->n = 0;
}

/* ---------------------------------------------------------------- chunking (tokenize_line) */

typedef struct {
  /* the chunk being filled: up to 75 tokens (more only transiently, never emitted) */
  int32_t ids[MP_CHUNK_TOKENS];
  float w[MP_CHUNK_TOKENS];
  size_t n;
  int last_comma;
  mp_prompt_chunks out;
  size_t cap_chunks, cap_fixes;
  size_t first_fix_of_current; /* fixes >= this belong to the chunk being filled */
  int32_t bos, eos;
} chunker;

static mp_error *next_chunk(chunker *c, bool is_last) {
  c->out.token_count += is_last ? c->n : MP_CHUNK_TOKENS;
  if (c->out.n_chunks == c->cap_chunks) {
    size_t cap = c->cap_chunks ? 2 * c->cap_chunks : 4;
    mp_prompt_chunk *nc = realloc(c->out.chunks, cap * sizeof *nc);
    if (!nc) return mp_errorf("out of memory");
    c->out.chunks = nc;
    c->cap_chunks = cap;
  }
  mp_prompt_chunk *ch = &c->out.chunks[c->out.n_chunks];
  ch->ids[0] = c->bos;
  ch->weights[0] = 1.0f;
  for (size_t i = 0; i < MP_CHUNK_TOKENS; i++) {
    ch->ids[i + 1] = i < c->n ? c->ids[i] : c->eos;
    ch->weights[i + 1] = i < c->n ? c->w[i] : 1.0f;
  }
  ch->ids[MP_CLIP_MAX_LENGTH - 1] = c->eos;
  ch->weights[MP_CLIP_MAX_LENGTH - 1] = 1.0f;
  for (size_t f = c->first_fix_of_current; f < c->out.n_fixes; f++) c->out.fixes[f].chunk = c->out.n_chunks;
  c->first_fix_of_current = c->out.n_fixes;
  c->out.n_chunks++;
  c->n = 0;
  c->last_comma = -1;
  return NULL;
}

static mp_error *add_fix(chunker *c, size_t ti, int n_vectors) {
  if (c->out.n_fixes == c->cap_fixes) {
    size_t cap = c->cap_fixes ? 2 * c->cap_fixes : 8;
    mp_prompt_fix *nf = realloc(c->out.fixes, cap * sizeof *nf);
    if (!nf) return mp_errorf("out of memory");
    c->out.fixes = nf;
    c->cap_fixes = cap;
  }
  c->out.fixes[c->out.n_fixes++] = (mp_prompt_fix){.chunk = 0, .pos = (int)c->n + 1, .ti = ti, .n_vectors = n_vectors};
  return NULL;
}

/* find_embedding_at_position: the longest embedding name whose ids start at tokens[pos]. */
static const mp_ti_pattern *find_embedding(const mp_chunk_options *opt, const size_t *order, const int32_t *tokens, size_t n,
                                           size_t pos, size_t *which) {
  for (size_t k = 0; opt && k < opt->n_ti; k++) {
    const mp_ti_pattern *p = &opt->ti[order[k]];
    if (p->n_name_ids > n - pos) continue; /* Python's slice would be shorter: no match */
    if (memcmp(p->name_ids, tokens + pos, p->n_name_ids * sizeof *tokens) == 0) {
      *which = order[k];
      return p;
    }
  }
  return NULL;
}

static mp_error *chunk_tokens(chunker *c, const mp_chunk_options *opt, const size_t *order, int32_t comma, const int32_t *tokens,
                              size_t n, float weight) {
  int backtrack = opt ? opt->comma_backtrack : 20;
  for (size_t pos = 0; pos < n;) {
    int32_t token = tokens[pos];
    if (token == comma) {
      c->last_comma = (int)c->n;
    } else if (backtrack != 0 && c->n == MP_CHUNK_TOKENS && c->last_comma != -1 &&
               (int)c->n - c->last_comma <= backtrack) {
      /* move what follows the last comma into the next chunk */
      size_t at = (size_t)c->last_comma + 1, nmove = c->n - at;
      int32_t ids[MP_CHUNK_TOKENS];
      float w[MP_CHUNK_TOKENS];
      memcpy(ids, c->ids + at, nmove * sizeof *ids);
      memcpy(w, c->w + at, nmove * sizeof *w);
      /* embeddings that sat in the moved tail move with it */
      size_t keep_fixes = c->out.n_fixes, moved_from = c->out.n_fixes;
      for (size_t f = c->first_fix_of_current; f < c->out.n_fixes; f++)
        if ((size_t)c->out.fixes[f].pos - 1 >= at) {
          moved_from = f;
          break;
        }
      c->n = at;
      c->out.n_fixes = moved_from;
      mp_error *e = next_chunk(c, false);
      c->out.n_fixes = keep_fixes;
      if (e) return e;
      for (size_t f = moved_from; f < keep_fixes; f++) c->out.fixes[f].pos -= (int)at;
      memcpy(c->ids, ids, nmove * sizeof *ids);
      memcpy(c->w, w, nmove * sizeof *w);
      c->n = nmove;
    }
    if (c->n == MP_CHUNK_TOKENS) MP_TRY(next_chunk(c, false));
    size_t which = 0;
    const mp_ti_pattern *emb = find_embedding(opt, order, tokens, n, pos, &which);
    if (!emb) {
      c->ids[c->n] = token;
      c->w[c->n++] = weight;
      pos++;
      continue;
    }
    if (c->n + (size_t)emb->n_vectors > MP_CHUNK_TOKENS) MP_TRY(next_chunk(c, false));
    MP_TRY(add_fix(c, which, emb->n_vectors));
    for (int v = 0; v < emb->n_vectors; v++) {
      c->ids[c->n] = 0;
      c->w[c->n++] = weight;
    }
    pos += emb->n_name_ids;
  }
  return NULL;
}

mp_error *mp_prompt_chunk_spans(const mp_tokenizer *tok, const mp_prompt_spans *spans, const mp_chunk_options *opt,
                                mp_prompt_chunks *out) {
  memset(out, 0, sizeof *out);
  size_t n_ti = opt ? opt->n_ti : 0;
  for (size_t k = 0; k < n_ti; k++)
    if (opt->ti[k].n_name_ids < 1 || opt->ti[k].n_vectors < 1 || opt->ti[k].n_vectors > MP_CHUNK_TOKENS)
      return mp_errorf("textual inversion #%zu: needs a name of at least one token and 1..%d vectors (has %d)", k,
                       MP_CHUNK_TOKENS, opt->ti[k].n_vectors);
  /* longest name first, ties in array order (A1111 sorts each first-token list stably by length) */
  size_t *order = malloc((n_ti ? n_ti : 1) * sizeof *order);
  if (!order) return mp_errorf("out of memory");
  for (size_t k = 0; k < n_ti; k++) order[k] = k;
  for (size_t a = 1; a < n_ti; a++)
    for (size_t b = a; b > 0 && opt->ti[order[b]].n_name_ids > opt->ti[order[b - 1]].n_name_ids; b--) {
      size_t t = order[b];
      order[b] = order[b - 1];
      order[b - 1] = t;
    }
  chunker c = {.last_comma = -1, .bos = mp_tokenizer_bos(tok), .eos = mp_tokenizer_eos(tok)};
  int32_t comma = mp_tokenizer_token_id(tok, ",</w>");
  mp_error *e = NULL;
  for (size_t s = 0; !e && s < spans->n; s++) {
    if (mp_prompt_span_is_break(&spans->items[s])) {
      e = next_chunk(&c, false);
      continue;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    e = mp_tokenize(tok, spans->items[s].text, &ids, &n);
    /* torch.asarray(multipliers) makes float32 of the Python doubles */
    if (!e) e = chunk_tokens(&c, opt, order, comma, ids, n, (float)spans->items[s].weight);
    free(ids);
  }
  if (!e && (c.n || c.out.n_chunks == 0)) e = next_chunk(&c, true);
  free(order);
  if (e) {
    mp_prompt_chunks_free(&c.out);
    return e;
  }
  *out = c.out;
  return NULL;
}

mp_error *mp_prompt_chunk_text(const mp_tokenizer *tok, const char *text, const mp_chunk_options *opt, mp_prompt_chunks *out) {
  mp_prompt_spans spans;
  memset(out, 0, sizeof *out);
  MP_TRY(mp_parse_prompt_attention(text, &spans));
  mp_error *e = mp_prompt_chunk_spans(tok, &spans, opt, out);
  mp_prompt_spans_free(&spans);
  return e;
}

void mp_prompt_empty_chunk(const mp_tokenizer *tok, mp_prompt_chunk *out) {
  out->ids[0] = mp_tokenizer_bos(tok);
  out->weights[0] = 1.0f;
  for (int i = 1; i < MP_CLIP_MAX_LENGTH; i++) {
    out->ids[i] = mp_tokenizer_eos(tok);
    out->weights[i] = 1.0f;
  }
}

void mp_prompt_chunks_free(mp_prompt_chunks *c) {
  free(c->chunks);
  free(c->fixes);
  memset(c, 0, sizeof *c);
}
