/* AUTOMATIC1111 prompt attention ("emphasis") and 75-token chunking.
 *
 * parse:  "a (red:1.3) [car] BREAK sky"  ─▶  [("a ",1) ("red",1.3) (" ",1) ("car",1/1.1) BREAK ("sky",1)]
 * chunk:  each span tokenized on its own (no BOS/EOS) ─▶ tokens laid into chunks of 75, a chunk that
 *         fills up moves the tokens after its last comma (if within `comma_backtrack` tokens) to the
 *         next chunk; BREAK starts a new chunk; a textual-inversion embedding is never split
 *         ─▶ every chunk becomes BOS + 75 + EOS (padded with EOS), one weight per position
 *         (1.0 for BOS/EOS/padding).
 *
 * Both follow modules/prompt_parser.py (parse_prompt_attention) and modules/sd_hijack_clip.py
 * (tokenize_line) of stable-diffusion-webui, including their corner cases (see docs/prompt-weighting.md). */
#ifndef MP_PROMPT_WEIGHTING_H
#define MP_PROMPT_WEIGHTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "prompt/tokenizer.h"

#define MP_CHUNK_TOKENS 75 /* prompt tokens per chunk; + BOS + EOS = MP_CLIP_MAX_LENGTH */

typedef struct {
  char *text;    /* UTF-8 */
  double weight; /* product of the bracket multipliers (double, as Python computes it) */
} mp_prompt_span;

typedef struct {
  mp_prompt_span *items;
  size_t n;
} mp_prompt_spans;

/* A1111's marker for BREAK: text "BREAK" with weight exactly -1. */
bool mp_prompt_span_is_break(const mp_prompt_span *s);

/* parse_prompt_attention. Never fails on bracket structure (unbalanced brackets are closed at the
 * end, stray closers are text); fails only on a weight that is not a number, e.g. "(x:1.2.3)"
 * (where A1111 raises), naming its byte offset. */
mp_error *mp_parse_prompt_attention(const char *text, mp_prompt_spans *out);
void mp_prompt_spans_free(mp_prompt_spans *s);

/* A textual-inversion embedding as the chunker sees it: the token ids of its name and how many
 * vectors it inserts. */
typedef struct {
  const int32_t *name_ids;
  size_t n_name_ids; /* >= 1 */
  int n_vectors;     /* 1..75 */
} mp_ti_pattern;

typedef struct {
  int comma_backtrack; /* A1111 "comma_padding_backtrack", default 20; 0 disables */
  const mp_ti_pattern *ti;
  size_t n_ti; /* tried longest name first; equal lengths in array order */
} mp_chunk_options;

/* An embedding placed in a chunk: its vectors replace positions pos .. pos+n_vectors-1 of the 77
 * (pos >= 1: after BOS). The ids there are placeholders (0). */
typedef struct {
  size_t chunk;
  int pos;
  size_t ti; /* index into mp_chunk_options.ti */
  int n_vectors;
} mp_prompt_fix;

typedef struct {
  int32_t ids[MP_CLIP_MAX_LENGTH];
  float weights[MP_CLIP_MAX_LENGTH];
} mp_prompt_chunk;

typedef struct {
  mp_prompt_chunk *chunks;
  size_t n_chunks; /* >= 1 */
  mp_prompt_fix *fixes;
  size_t n_fixes;
  size_t token_count; /* A1111's count: 75 per full chunk + tokens of the last one (shown as "N/75") */
} mp_prompt_chunks;

/* tokenize_line over parsed spans. */
mp_error *mp_prompt_chunk_spans(const mp_tokenizer *tok, const mp_prompt_spans *spans, const mp_chunk_options *opt,
                                mp_prompt_chunks *out);
/* parse + chunk. */
mp_error *mp_prompt_chunk_text(const mp_tokenizer *tok, const char *text, const mp_chunk_options *opt, mp_prompt_chunks *out);
/* A1111 empty_chunk(): BOS + 76 EOS, weights 1 (what an empty prompt gives). */
void mp_prompt_empty_chunk(const mp_tokenizer *tok, mp_prompt_chunk *out);
void mp_prompt_chunks_free(mp_prompt_chunks *c);

#endif
