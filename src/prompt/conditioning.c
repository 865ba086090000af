/* Prompt + negative -> cond / uncond contexts; see conditioning.h. The weighting step is
 * A1111's "Original" emphasis (sd_emphasis.EmphasisOriginal). */
#include "prompt/conditioning.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prompt/weighting.h"

mp_cond_options mp_cond_options_default(void) { return (mp_cond_options){.clip_skip = 1, .use_lpw = true, .comma_backtrack = 20}; }

mp_error *mp_ti_set_add(mp_ti_set *set, const char *name, const float *vectors, int n_vectors, int hidden) {
  return mp_ti_set_add_xl(set, name, vectors, hidden, NULL, 0, n_vectors);
}

mp_error *mp_ti_set_add_xl(mp_ti_set *set, const char *name, const float *vectors, int hidden, const float *vectors2, int hidden2,
                           int n_vectors) {
  if (!name || !*name) return mp_errorf("textual inversion: empty name");
  if (n_vectors < 1 || n_vectors > MP_CHUNK_TOKENS || hidden < 1 || hidden2 < 0 || (hidden2 > 0) != (vectors2 != NULL))
    return mp_errorf("textual inversion '%s': %d vectors of size %d, expected 1..%d vectors", name, n_vectors, hidden,
                     MP_CHUNK_TOKENS);
  size_t bytes = (size_t)n_vectors * (size_t)hidden * sizeof(float), bytes2 = (size_t)n_vectors * (size_t)hidden2 * sizeof(float);
  float *v = malloc(bytes), *v2 = hidden2 ? malloc(bytes2) : NULL;
  char *nm = strdup(name);
  if (!v || !nm || (hidden2 && !v2)) {
    free(v), free(v2), free(nm);
    return mp_errorf("out of memory");
  }
  memcpy(v, vectors, bytes);
  if (v2) memcpy(v2, vectors2, bytes2);
  const mp_ti_embedding item = {nm, n_vectors, hidden, v, hidden2, v2};
  for (size_t i = 0; i < set->n; i++)
    if (strcmp(set->items[i].name, name) == 0) {
      free(set->items[i].name);
      free(set->items[i].vectors);
      free(set->items[i].vectors2);
      set->items[i] = item;
      return NULL;
    }
  if (set->n == set->cap) {
    size_t cap = set->cap ? 2 * set->cap : 8;
    mp_ti_embedding *ni = realloc(set->items, cap * sizeof *ni);
    if (!ni) {
      free(v), free(v2), free(nm);
      return mp_errorf("out of memory");
    }
    set->items = ni;
    set->cap = cap;
  }
  set->items[set->n++] = item;
  return NULL;
}

void mp_ti_set_free(mp_ti_set *set) {
  for (size_t i = 0; i < set->n; i++) {
    free(set->items[i].name);
    free(set->items[i].vectors);
    free(set->items[i].vectors2);
  }
  free(set->items);
  memset(set, 0, sizeof *set);
}

/* Embedding names as token ids (A1111 registers each name by tokenizing it). */
typedef struct {
  mp_ti_pattern *pat;
  int32_t **ids;
  size_t n;
} ti_patterns;

static void patterns_free(ti_patterns *p) {
  for (size_t i = 0; i < p->n; i++) free(p->ids[i]);
  free(p->ids);
  free(p->pat);
}

/* hidden2: the model's second encoder width (SDXL), 0 for SD 1.x. */
static mp_error *patterns_make(const mp_tokenizer *tok, const mp_ti_set *ti, int hidden, int hidden2, ti_patterns *out) {
  memset(out, 0, sizeof *out);
  size_t n = ti ? ti->n : 0;
  if (!n) return NULL;
  out->pat = calloc(n, sizeof *out->pat);
  out->ids = calloc(n, sizeof *out->ids);
  if (!out->pat || !out->ids) {
    patterns_free(out);
    return mp_errorf("out of memory");
  }
  out->n = n;
  for (size_t i = 0; i < n; i++) {
    const mp_ti_embedding *e = &ti->items[i];
    /* An embedding of the other family is an error only where a text uses it (family_error): a mixed
     * job's set holds the SDXL scene's and the SD 1.x persons' embeddings side by side. */
    const bool other_family = (e->hidden2 != 0) != (hidden2 != 0);
    mp_error *err = NULL;
    if (!other_family && hidden2 && e->hidden2 != hidden2)
      err = mp_errorf("textual inversion '%s': clip_g vectors of size %d, the second text encoder needs %d", e->name, e->hidden2, hidden2);
    else if (!other_family && e->hidden != hidden)
      err = mp_errorf("textual inversion '%s': vectors of size %d, the text encoder needs %d", e->name, e->hidden, hidden);
    if (err) {
      patterns_free(out);
      return err;
    }
    size_t k = 0;
    err = mp_tokenize(tok, e->name, &out->ids[i], &k);
    if (!err && k == 0) err = mp_errorf("textual inversion '%s': the name gives no tokens", e->name);
    if (err) {
      patterns_free(out);
      return err;
    }
    out->pat[i] = (mp_ti_pattern){out->ids[i], k, e->n_vectors};
  }
  return NULL;
}

/* Plain CLIP: the whole text as one chunk of at most 75 tokens. Embedding names are replaced by
 * their vectors; an embedding that does not fit is dropped with the rest. */
static mp_error *plain_chunk(const mp_tokenizer *tok, const char *text, const ti_patterns *tp, mp_prompt_chunks *out,
                             char **warning) {
  memset(out, 0, sizeof *out);
  int32_t *ids;
  size_t n;
  MP_TRY(mp_tokenize(tok, text, &ids, &n));
  out->chunks = malloc(sizeof *out->chunks);
  out->fixes = malloc((n ? n : 1) * sizeof *out->fixes);
  if (!out->chunks || !out->fixes) {
    free(ids);
    mp_prompt_chunks_free(out);
    return mp_errorf("out of memory");
  }
  out->n_chunks = 1;
  mp_prompt_chunk *ch = &out->chunks[0];
  mp_prompt_empty_chunk(tok, ch);
  size_t filled = 0, pos = 0;
  while (pos < n) {
    const mp_ti_pattern *hit = NULL;
    size_t which = 0;
    for (size_t k = 0; k < tp->n; k++) {
      const mp_ti_pattern *p = &tp->pat[k];
      if (p->n_name_ids <= n - pos && memcmp(p->name_ids, ids + pos, p->n_name_ids * sizeof *ids) == 0 &&
          (!hit || p->n_name_ids > hit->n_name_ids))
        hit = p, which = k;
    }
    size_t need = hit ? (size_t)hit->n_vectors : 1;
    if (filled + need > MP_CHUNK_TOKENS) break;
    if (hit) {
      out->fixes[out->n_fixes++] = (mp_prompt_fix){.chunk = 0, .pos = (int)filled + 1, .ti = which, .n_vectors = hit->n_vectors};
      for (size_t v = 0; v < need; v++) ch->ids[1 + filled + v] = 0;
      pos += hit->n_name_ids;
    } else {
      ch->ids[1 + filled] = ids[pos++];
    }
    filled += need;
  }
  out->token_count = filled;
  if (pos < n && warning && !*warning) {
    char buf[256];
    snprintf(buf, sizeof buf,
             "prompt truncated to %d tokens (CLIP's limit): %zu of %zu tokens were dropped; enable prompt weighting "
             "(use_lpw) to keep them",
             MP_CHUNK_TOKENS, n - pos, n);
    *warning = strdup(buf);
  }
  free(ids);
  return NULL;
}

/* The error for a text that uses an embedding of the other family than the model's. */
static mp_error *family_error(const mp_ti_embedding *e, int hidden, int hidden2) {
  if (e->hidden2)
    return mp_errorf("textual inversion '%s' is an SDXL embedding (clip_l %d + clip_g %d wide); this SD 1.x model needs a "
                     "single-encoder embedding of width %d",
                     e->name, e->hidden, e->hidden2, hidden);
  return mp_errorf("textual inversion '%s' is an SD 1.x embedding (one vector set, %d wide); this SDXL model needs clip_l (%d) "
                   "and clip_g (%d) vectors",
                   e->name, e->hidden, hidden, hidden2);
}

mp_error *mp_ti_chunk_text(const mp_tokenizer *tok, const char *text, const mp_ti_set *ti, int hidden, int hidden2,
                           const mp_cond_options *o, mp_prompt_chunks *out, char **warning) {
  ti_patterns tp;
  MP_TRY(patterns_make(tok, ti, hidden, hidden2, &tp));
  mp_error *e;
  if (o->use_lpw) {
    mp_chunk_options co = {.comma_backtrack = o->comma_backtrack, .ti = tp.pat, .n_ti = tp.n};
    e = mp_prompt_chunk_text(tok, text, &co, out);
  } else {
    e = plain_chunk(tok, text, &tp, out, warning);
  }
  patterns_free(&tp);
  for (size_t f = 0; !e && f < out->n_fixes; f++) {
    const mp_ti_embedding *used = &ti->items[out->fixes[f].ti];
    if ((used->hidden2 != 0) != (hidden2 != 0)) {
      e = family_error(used, hidden, hidden2);
      mp_prompt_chunks_free(out);
    }
  }
  return e;
}

/* One chunk through CLIP, textual-inversion vectors placed, then the emphasis weights applied. */
static mp_error *encode_chunk(const mp_clip *clip, mp_pool *pool, const mp_prompt_chunk *ch, const mp_prompt_chunks *all,
                              size_t chunk_index, const mp_ti_set *ti, int clip_skip, float *emb, float *z) {
  const mp_clip_config *cfg = mp_clip_get_config(clip);
  const int D = cfg->hidden, T = MP_CLIP_MAX_LENGTH;
  MP_TRY(mp_clip_embed_tokens(clip, ch->ids, T, emb));
  for (size_t f = 0; f < all->n_fixes; f++) {
    const mp_prompt_fix *fx = &all->fixes[f];
    if (fx->chunk != chunk_index) continue;
    const mp_ti_embedding *e = &ti->items[fx->ti];
    memcpy(emb + (size_t)fx->pos * D, e->vectors, (size_t)fx->n_vectors * D * sizeof *emb);
  }
  MP_TRY(mp_clip_encode_embeds(clip, pool, emb, T, cfg->layers - (clip_skip - 1), true, z));
  mp_emphasis_original(z, ch->weights, T, D);
  return NULL;
}

void mp_emphasis_original(float *z, const float *weights, int T, int D) {
  bool weighted = false;
  for (int t = 0; t < T; t++) weighted |= weights[t] != 1.0f;
  if (!weighted) return; /* z * 1 and a mean ratio of exactly 1: nothing to do */
  /* EmphasisOriginal: z *= w; z *= mean(z before) / mean(z after). Means in double, then rounded to
   * float32 as torch's scalar tensors are. */
  size_t total = (size_t)T * D;
  double before = 0, after = 0;
  for (size_t i = 0; i < total; i++) before += z[i];
  for (int t = 0; t < T; t++)
    for (int d = 0; d < D; d++) {
      float *x = &z[(size_t)t * D + d];
      *x *= weights[t];
      after += *x;
    }
  float mean_before = (float)(before / (double)total), mean_after = (float)(after / (double)total);
  if (mean_after == 0.0f) return; /* A1111 would produce NaN; leave the weighted z */
  float scale = mean_before / mean_after;
  for (size_t i = 0; i < total; i++) z[i] *= scale;
}

mp_error *mp_conditioning_encode_one(const mp_clip *clip, mp_pool *pool, const mp_tokenizer *tok, const char *text,
                                     const mp_ti_set *ti, const mp_cond_options *opt, float **out, int *n_chunks,
                                     size_t *token_count, char **warning) {
  *out = NULL;
  *n_chunks = 0;
  mp_cond_options o = opt ? *opt : mp_cond_options_default();
  if (o.clip_skip == 0) o.clip_skip = 1;
  const mp_clip_config *cfg = mp_clip_get_config(clip);
  if (o.clip_skip < 1 || o.clip_skip > cfg->layers)
    return mp_errorf("clip skip %d is out of range 1..%d", o.clip_skip, cfg->layers);
  if (cfg->max_positions < MP_CLIP_MAX_LENGTH)
    return mp_errorf("the text encoder has %d positions, prompts need %d", cfg->max_positions, MP_CLIP_MAX_LENGTH);
  mp_prompt_chunks chunks;
  MP_TRY(mp_ti_chunk_text(tok, text, ti, cfg->hidden, 0, &o, &chunks, warning));
  mp_error *e = NULL;
  const size_t D = (size_t)cfg->hidden, T = MP_CLIP_MAX_LENGTH;
  float *z = mp_alloc(chunks.n_chunks * T * D * sizeof *z), *emb = mp_alloc(T * D * sizeof *emb);
  if (!z || !emb) e = mp_errorf("out of memory");
  for (size_t c = 0; !e && c < chunks.n_chunks; c++)
    e = encode_chunk(clip, pool, &chunks.chunks[c], &chunks, c, ti, o.clip_skip, emb, z + c * T * D);
  mp_free(emb);
  if (e) {
    mp_free(z);
  } else {
    *out = z;
    *n_chunks = (int)chunks.n_chunks;
    if (token_count) *token_count = chunks.token_count;
  }
  mp_prompt_chunks_free(&chunks);
  return e;
}

/* [1, k*77, D] from n_chunks encoded chunks, the rest filled with the empty prompt's encoding. */
static mp_error *padded_context(const float *z, int n_chunks, const float *empty, int k, size_t D, mp_tensor *out) {
  const size_t T = MP_CLIP_MAX_LENGTH;
  MP_TRY(mp_tensor_alloc(out, MP_F32, 3, (int64_t[]){1, (int64_t)k * (int64_t)T, (int64_t)D}));
  float *dst = out->data;
  memcpy(dst, z, (size_t)n_chunks * T * D * sizeof *dst);
  for (int c = n_chunks; c < k; c++) memcpy(dst + (size_t)c * T * D, empty, T * D * sizeof *dst);
  return NULL;
}

mp_error *mp_conditioning_encode(const mp_clip *clip, mp_pool *pool, const mp_tokenizer *tok, const char *prompt,
                                 const char *negative, const mp_ti_set *ti, const mp_cond_options *opt, mp_conditioning *out) {
  memset(out, 0, sizeof *out);
  mp_cond_options o = opt ? *opt : mp_cond_options_default();
  float *zc = NULL, *zu = NULL, *empty = NULL;
  int kc = 0, ku = 0;
  char *warning = NULL;
  mp_error *e = mp_conditioning_encode_one(clip, pool, tok, prompt, ti, &o, &zc, &kc, &out->prompt_tokens, &warning);
  if (e) e = mp_error_wrap(e, "prompt");
  if (!e) {
    e = mp_conditioning_encode_one(clip, pool, tok, negative, ti, &o, &zu, &ku, &out->negative_tokens, &warning);
    if (e) e = mp_error_wrap(e, "negative prompt");
  }
  if (!e && kc != ku) { /* A1111 pad_cond_uncond: append the empty prompt's encoding */
    int ke;
    e = mp_conditioning_encode_one(clip, pool, tok, "", NULL, &o, &empty, &ke, NULL, NULL);
  }
  int k = kc > ku ? kc : ku;
  size_t D = (size_t)mp_clip_get_config(clip)->hidden;
  if (!e) e = padded_context(zc, kc, empty, k, D, &out->cond);
  if (!e) e = padded_context(zu, ku, empty, k, D, &out->uncond);
  mp_free(zc);
  mp_free(zu);
  mp_free(empty);
  if (e) {
    free(warning);
    mp_conditioning_free(out);
    return e;
  }
  out->n_chunks = k;
  out->warning = warning;
  return NULL;
}

void mp_conditioning_free(mp_conditioning *c) {
  mp_tensor_free(&c->cond);
  mp_tensor_free(&c->uncond);
  free(c->warning);
  memset(c, 0, sizeof *c);
}
