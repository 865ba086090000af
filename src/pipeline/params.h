/* AUTOMATIC1111-style generation parameters ("infotext"), the text stored in a PNG's `parameters`
 * chunk, so that images made by mpass can be read by A1111-compatible tools and vice versa:
 *
 *   <prompt, any number of lines>
 *   Negative prompt: <negative, any number of lines>          (only when there is a negative)
 *   Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 33504, Size: 512x768, ...
 *
 * The format follows modules/processing.py create_infotext and modules/infotext_utils.py
 * (quote / parse_generation_parameters):
 *   - fields are "Key: value" joined by ", "; a field whose value equals its key is written bare;
 *   - a value containing ',', ':' or a newline is written as a JSON string ("…" with \" \\ \n escapes);
 *   - the whole text is stripped of surrounding white space;
 *   - reading: the last line is the field line only if at least 3 fields match in it, otherwise it is
 *     part of the prompt; the other lines are stripped; the first line starting with "Negative prompt:"
 *     and every line after it form the negative; a field with an empty value is dropped, as A1111 does.
 * Round trip holds for prompts whose lines have no surrounding white space, none of which starts with
 * "Negative prompt:", and whose last line does not itself look like a field line.
 *
 * Also: the model hash A1111 shows ("Model hash: <first 10 hex digits of the file's SHA-256>"). */
#ifndef MP_PIPELINE_PARAMS_H
#define MP_PIPELINE_PARAMS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

typedef struct {
  char *key, *value;
} mp_infotext_field;

typedef struct {
  char *prompt, *negative_prompt; /* never NULL after init or parse */
  mp_infotext_field *fields;      /* in order */
  size_t n_fields, cap;
} mp_infotext;

mp_error *mp_infotext_init(mp_infotext *it, const char *prompt, const char *negative_prompt);
void mp_infotext_free(mp_infotext *it);

/* Add a field (copied), or replace the value of an existing key in place. NULL value = remove.
 * Keys must be at least two characters of letters, digits, '_', ' ', '-' or '/', starting with a
 * letter, digit or '_' (what the reader accepts). */
mp_error *mp_infotext_set(mp_infotext *it, const char *key, const char *value);
mp_error *mp_infotext_setf(mp_infotext *it, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Numbers: integers as digits; reals in the shortest form that reads back exactly (7 -> "7", 0.65). */
mp_error *mp_infotext_set_int(mp_infotext *it, const char *key, long long v);
mp_error *mp_infotext_set_real(mp_infotext *it, const char *key, double v);

const char *mp_infotext_get(const mp_infotext *it, const char *key); /* NULL when absent */
mp_error *mp_infotext_get_int(const mp_infotext *it, const char *key, long long *v);
mp_error *mp_infotext_get_real(const mp_infotext *it, const char *key, double *v);
/* "512x768" -> 512, 768 */
mp_error *mp_infotext_get_size(const mp_infotext *it, const char *key, int *w, int *h);

/* The text (caller frees). */
mp_error *mp_infotext_format(const mp_infotext *it, char **out);
/* Parse a text (any input: nothing in it is trusted). */
mp_error *mp_infotext_parse(const char *text, mp_infotext *out);

/* A1111's quote(): the value itself, or a JSON string when it holds ',', ':' or a newline. Caller frees. */
char *mp_infotext_quote(const char *value);

/* The standard fields, in A1111's order. Optional ones: NULL / negative values are left out. */
typedef struct {
  const char *prompt, *negative_prompt;
  int steps;
  const char *scheduler; /* mpass name (SPEC.md §3), written as A1111's Sampler + Schedule type */
  double cfg_scale;
  uint64_t seed;
  int width, height;
  const char *model_hash, *model_name;
  double denoising_strength; /* < 0: absent (txt2img) */
  const char *rng;           /* "CPU" for the torch-CPU generator; NULL for the GPU (A1111's default) */
} mp_gen_params;
mp_error *mp_infotext_from_params(const mp_gen_params *p, mp_infotext *out);

/* mpass scheduler <-> A1111 sampler + schedule type ("dpm++2m_karras" <-> "DPM++ 2M" + "Karras").
 * The reverse also takes the pre-1.9 names with the schedule in the sampler ("DPM++ 2M Karras");
 * false when there is no equivalent. */
bool mp_a1111_sampler(const char *scheduler, const char **sampler, const char **schedule_type);
bool mp_scheduler_from_a1111(const char *sampler, const char *schedule_type, const char **scheduler);

/* SHA-256 (FIPS 180-4). mpass links no crypto library (OpenSSL is not a dependency), and a model
 * hash is all it needs, so this small implementation is tested against the FIPS example vectors. */
typedef struct {
  uint32_t h[8];
  uint64_t length; /* bytes */
  uint8_t block[64];
  size_t used;
} mp_sha256;
void mp_sha256_init(mp_sha256 *s);
void mp_sha256_update(mp_sha256 *s, const void *data, size_t n);
void mp_sha256_final(mp_sha256 *s, uint8_t digest[32]);
void mp_sha256_hex(const uint8_t digest[32], char hex[65]);

/* SHA-256 of a file as 64 lower-case hex digits, and A1111's short model hash (its first 10). */
mp_error *mp_file_sha256(const char *path, char hex[65]);
mp_error *mp_model_short_hash(const char *path, char hash[11]);
/* The same, remembered in <cache_dir>/sha256.json by absolute path, size and modification time, as
 * AUTOMATIC1111 keeps its hash cache: hashing a 2 GB checkpoint takes seconds, every job needs it.
 * A cache that cannot be read or written only costs the hashing. */
mp_error *mp_model_short_hash_cached(const char *cache_dir, const char *path, char hash[11]);

#endif
