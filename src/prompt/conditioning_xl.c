/* SDXL prompt conditioning; see conditioning_xl.h. */
#include "prompt/conditioning_xl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet.h"
#include "prompt/weighting.h"

enum { T = MP_CLIP_MAX_LENGTH };

void mp_xl_label_vector(const float *pooled, int proj, const float time_ids[6], int time_id_dim, float *y) {
  memcpy(y, pooled, sizeof(float) * (size_t)proj);
  for (int k = 0; k < 6; k++) mp_unet_timestep_embedding(y + proj + k * time_id_dim, &time_ids[k], 1, time_id_dim);
}

/* One chunk; `fixes` (may be NULL) place textual-inversion vectors into each encoder's token embeddings
 * (clip_l into the first, clip_g into the second) for the fixes of chunk `chunk_index`. */
static mp_error *encode_chunk_ti(const mp_clip *clip, const mp_openclip *clip2, mp_pool *pool, const int32_t *ids1, const int32_t *ids2,
                                 int32_t eos_id, const float *weights, const mp_prompt_chunks *fixes, size_t chunk_index,
                                 const mp_ti_set *ti, float *context, float *pooled) {
  const mp_clip_config *c1 = mp_clip_get_config(clip), *c2 = mp_openclip_get_config(clip2);
  const int D1 = c1->hidden, D2 = c2->hidden, D = D1 + D2;
  float *emb = mp_alloc(sizeof(float) * T * (size_t)(D1 > D2 ? D1 : D2));
  float *z1 = mp_alloc(sizeof(float) * T * (size_t)D1), *z2 = mp_alloc(sizeof(float) * T * (size_t)D2);
  mp_error *e = emb && z1 && z2 ? NULL : mp_errorf("out of memory");
  /* encoder 1: CLIP ViT-L, hidden_states[-2] without the final LayerNorm */
  if (!e) e = mp_clip_embed_tokens(clip, ids1, T, emb);
  for (size_t f = 0; !e && fixes && f < fixes->n_fixes; f++)
    if (fixes->fixes[f].chunk == chunk_index)
      memcpy(emb + (size_t)fixes->fixes[f].pos * D1, ti->items[fixes->fixes[f].ti].vectors,
             (size_t)fixes->fixes[f].n_vectors * D1 * sizeof *emb);
  if (!e) e = mp_clip_encode_embeds(clip, pool, emb, T, c1->layers - 1, false, z1);
  /* encoder 2: OpenCLIP bigG, penultimate state, and the pooled EOS row of the last layer */
  if (!e) e = mp_openclip_embed_tokens(clip2, ids2, T, emb);
  for (size_t f = 0; !e && fixes && f < fixes->n_fixes; f++)
    if (fixes->fixes[f].chunk == chunk_index)
      memcpy(emb + (size_t)fixes->fixes[f].pos * D2, ti->items[fixes->fixes[f].ti].vectors2,
             (size_t)fixes->fixes[f].n_vectors * D2 * sizeof *emb);
  if (!e) e = mp_openclip_encode_embeds(clip2, pool, emb, T, mp_openclip_eos_index(ids2, T, eos_id), z2, NULL, pooled);
  if (!e && weights) {
    mp_emphasis_original(z1, weights, T, D1);
    mp_emphasis_original(z2, weights, T, D2);
  }
  for (int t = 0; !e && t < T; t++) {
    memcpy(context + (size_t)t * D, z1 + (size_t)t * D1, sizeof(float) * (size_t)D1);
    memcpy(context + (size_t)t * D + D1, z2 + (size_t)t * D2, sizeof(float) * (size_t)D2);
  }
  mp_free(emb), mp_free(z1), mp_free(z2);
  return e;
}

mp_error *mp_xl_encode_chunk(const mp_clip *clip, const mp_openclip *clip2, mp_pool *pool, const int32_t *ids1, const int32_t *ids2,
                             int32_t eos_id, const float *weights, float *context, float *pooled) {
  return encode_chunk_ti(clip, clip2, pool, ids1, ids2, eos_id, weights, NULL, 0, NULL, context, pooled);
}

/* One text: z [k*77, D] and the first chunk's pooled vector [proj], allocated with mp_alloc. */
static mp_error *encode_text(const mp_clip *clip, const mp_openclip *clip2, mp_pool *pool, const mp_tokenizer *tok, const char *text,
                             const mp_ti_set *ti, const mp_cond_options *o, float **z, float **pooled, int *k, size_t *tokens,
                             char **warning) {
  *z = *pooled = NULL;
  mp_prompt_chunks ch;
  MP_TRY(mp_ti_chunk_text(tok, text, ti, mp_clip_get_config(clip)->hidden, mp_openclip_get_config(clip2)->hidden, o, &ch, warning));
  const size_t D = (size_t)(mp_clip_get_config(clip)->hidden + mp_openclip_get_config(clip2)->hidden);
  const int P = mp_openclip_get_config(clip2)->projection_dim;
  const int32_t eos = mp_tokenizer_eos(tok);
  *z = mp_alloc(sizeof(float) * ch.n_chunks * T * D);
  *pooled = mp_alloc(sizeof(float) * (size_t)P);
  float *chunk_pooled = mp_alloc(sizeof(float) * (size_t)P);
  mp_error *e = *z && *pooled && chunk_pooled ? NULL : mp_errorf("out of memory");
  for (size_t c = 0; !e && c < ch.n_chunks; c++) {
    int32_t ids2[T];
    memcpy(ids2, ch.chunks[c].ids, sizeof ids2);
    int at = mp_openclip_eos_index(ids2, T, eos);
    for (int t = at + 1; t < T; t++) ids2[t] = 0; /* open_clip pads with 0 */
    e = encode_chunk_ti(clip, clip2, pool, ch.chunks[c].ids, ids2, eos, ch.chunks[c].weights, &ch, c, ti, *z + c * T * D,
                        c == 0 ? *pooled : chunk_pooled);
  }
  mp_free(chunk_pooled);
  if (e) {
    mp_free(*z), mp_free(*pooled);
    *z = *pooled = NULL;
  } else {
    *k = (int)ch.n_chunks;
    if (tokens) *tokens = ch.token_count;
  }
  mp_prompt_chunks_free(&ch);
  return e;
}

static mp_error *padded(const float *z, int k_have, const float *empty, int k, size_t D, mp_tensor *out) {
  MP_TRY(mp_tensor_alloc(out, MP_F32, 3, (int64_t[]){1, (int64_t)k * T, (int64_t)D}));
  float *dst = out->data;
  if (z) memcpy(dst, z, (size_t)k_have * T * D * sizeof *dst);
  else memset(dst, 0, (size_t)k_have * T * D * sizeof *dst);
  for (int c = k_have; c < k; c++) memcpy(dst + (size_t)c * T * D, empty, T * D * sizeof *dst);
  return NULL;
}

mp_error *mp_xl_conditioning_encode(const mp_clip *clip, const mp_openclip *clip2, mp_pool *pool, const mp_tokenizer *tok,
                                    const char *prompt, const char *negative, const mp_ti_set *ti, const mp_cond_options *opt,
                                    mp_xl_conditioning *out) {
  memset(out, 0, sizeof *out);
  mp_cond_options o = opt ? *opt : mp_cond_options_default();
  const int P = mp_openclip_get_config(clip2)->projection_dim;
  const size_t D = (size_t)(mp_clip_get_config(clip)->hidden + mp_openclip_get_config(clip2)->hidden);
  float *zc = NULL, *zu = NULL, *pc = NULL, *pu = NULL, *empty = NULL, *pe = NULL;
  int kc = 0, ku = 1, ke = 0;
  char *warning = NULL;
  mp_error *e = encode_text(clip, clip2, pool, tok, prompt, ti, &o, &zc, &pc, &kc, &out->prompt_tokens, &warning);
  if (e) e = mp_error_wrap(e, "prompt");
  const bool zero_negative = !negative || !*negative;
  if (!e && !zero_negative) {
    e = encode_text(clip, clip2, pool, tok, negative, ti, &o, &zu, &pu, &ku, &out->negative_tokens, &warning);
    if (e) e = mp_error_wrap(e, "negative prompt");
  }
  if (!e && kc != ku) e = encode_text(clip, clip2, pool, tok, "", NULL, &o, &empty, &pe, &ke, NULL, NULL);
  int k = kc > ku ? kc : ku;
  if (!e) e = padded(zc, kc, empty, k, D, &out->cond);
  if (!e) e = padded(zu, ku, empty, k, D, &out->uncond); /* zu NULL: the zeroed empty negative */
  if (!e) e = mp_tensor_alloc(&out->pooled_cond, MP_F32, 2, (int64_t[]){1, P});
  if (!e) e = mp_tensor_alloc(&out->pooled_uncond, MP_F32, 2, (int64_t[]){1, P});
  if (!e) {
    memcpy(out->pooled_cond.data, pc, sizeof(float) * (size_t)P);
    if (pu) memcpy(out->pooled_uncond.data, pu, sizeof(float) * (size_t)P);
    else memset(out->pooled_uncond.data, 0, sizeof(float) * (size_t)P);
  }
  mp_free(zc), mp_free(zu), mp_free(pc), mp_free(pu), mp_free(empty), mp_free(pe);
  if (e) {
    free(warning);
    mp_xl_conditioning_free(out);
    return e;
  }
  out->n_chunks = k;
  out->warning = warning;
  return NULL;
}

void mp_xl_conditioning_free(mp_xl_conditioning *c) {
  mp_tensor_free(&c->cond);
  mp_tensor_free(&c->uncond);
  mp_tensor_free(&c->pooled_cond);
  mp_tensor_free(&c->pooled_uncond);
  free(c->warning);
  memset(c, 0, sizeof *c);
}
