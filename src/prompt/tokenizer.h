/* The CLIP tokenizer: byte-level BPE exactly as transformers' slow CLIPTokenizer (without ftfy).
 *
 *   raw text ─▶ split out literal "<|startoftext|>" / "<|endoftext|>" (special tokens)
 *            ─▶ clean: drop NUL, U+FFFD and control/format/unassigned chars (category C*, except
 *               \t \n \r), every whitespace (incl. Zs) becomes ' '
 *            ─▶ put spaces around CJK ideographs ─▶ NFC ─▶ split on whitespace, lower-case each word
 *            ─▶ CLIP pre-tokenizer regex per word:
 *               <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+
 *            ─▶ UTF-8 bytes of each piece mapped to byte-level symbols, last one with "</w>"
 *            ─▶ merge adjacent pairs by rank until none applies ─▶ vocabulary ids
 *
 * Invalid UTF-8 bytes in the input are dropped (each one decodes to U+FFFD, which the cleaning
 * step removes, as transformers does with a string decoded with errors="replace").
 *
 * Vocabulary: OpenAI's bpe_simple_vocab_16e6.txt.gz (read through zlib; the first 48,894 merges
 * form the 49,408-id vocabulary), or a diffusers/transformers `tokenizer/` folder (vocab.json +
 * merges.txt). A loaded tokenizer is read-only and may be shared between threads. */
#ifndef MP_PROMPT_TOKENIZER_H
#define MP_PROMPT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define MP_CLIP_MAX_LENGTH 77 /* BOS + 75 tokens + EOS */
#define MP_CLIP_BOS 49406
#define MP_CLIP_EOS 49407
#define MP_CLIP_VOCAB_FILE "bpe_simple_vocab_16e6.txt.gz"

typedef struct mp_tokenizer mp_tokenizer;

/* Load from a .txt.gz merges file, or from a folder holding vocab.json + merges.txt (diffusers
 * `tokenizer/`) or bpe_simple_vocab_16e6.txt.gz. `path` NULL: the copy of bpe_simple_vocab_16e6.txt.gz
 * compiled into the library (data/clip/, MIT-licensed, see NOTICE). */
mp_error *mp_tokenizer_load(const char *path, mp_tokenizer **out);
void mp_tokenizer_free(mp_tokenizer *tok);

/* Where the vocabulary is, first hit wins:
 *   1. `explicit_path` (--vocab) when not NULL — used as is, even if missing (the load then fails);
 *   2. $MPASS_VOCAB (likewise used as is);
 *   3. <data_dir>/clip/bpe_simple_vocab_16e6.txt.gz when data_dir is not NULL;
 *   4. <models_dir or "models">/clip/bpe_simple_vocab_16e6.txt.gz;
 *   5. none of these: *path = NULL, which mp_tokenizer_load reads as the built-in copy.
 * *path is newly allocated (caller frees) or NULL. Fails only when out of memory. */
mp_error *mp_tokenizer_find_vocab(const char *explicit_path, const char *data_dir, const char *models_dir, char **path);

/* Token ids of `text` without BOS/EOS and without truncation. *ids is malloc'ed (caller frees;
 * may be NULL when *n == 0). */
mp_error *mp_tokenize(const mp_tokenizer *tok, const char *text, int32_t **ids, size_t *n);

/* BOS + the first 75 tokens + EOS, padded with EOS to 77 (SD 1.x conditioning input).
 * *n_untruncated (may be NULL) = token count + 2, i.e. the length before truncation/padding;
 * more than 77 means the text was truncated. */
mp_error *mp_tokenize_padded(const mp_tokenizer *tok, const char *text, int32_t out[MP_CLIP_MAX_LENGTH],
                             size_t *n_untruncated);

/* The vocabulary string of an id ("photo</w>", "cafÃ©</w>", "<|endoftext|>"), NULL if out of range. */
const char *mp_tokenizer_token_text(const mp_tokenizer *tok, int32_t id);
/* The id of a vocabulary string, -1 if absent. */
int32_t mp_tokenizer_token_id(const mp_tokenizer *tok, const char *text);
int32_t mp_tokenizer_vocab_size(const mp_tokenizer *tok);
int32_t mp_tokenizer_bos(const mp_tokenizer *tok);
int32_t mp_tokenizer_eos(const mp_tokenizer *tok);

#endif
