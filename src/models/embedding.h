/* Textual-inversion embedding files -> the in-memory set the conditioning uses (prompt/conditioning.h).
 *
 * What a file holds is decided by its content, as AUTOMATIC1111's create_embedding_from_data does:
 *   A1111 .pt            torch.save({"string_to_param": {"*": [n, hidden]}, "string_to_token": ..., "name": ...,
 *                        "step": ...}); the ckpt reader names the tensor "string_to_param.*"
 *   A1111 .safetensors   {"emb_params": [n, hidden]}
 *   diffusers            learned_embeds.bin / .safetensors: {"<token>": [hidden] or [n, hidden]}
 *   older .pt            {token: tensor}
 * i.e. the one tensor under "string_to_param." if there is one, else the file's only tensor. SDXL
 * embeddings (A1111/kohya: {"clip_l": [n, 768], "clip_g": [n, 1280]}) are read as a pair, clip_l for
 * the first text encoder and clip_g for the second; the conditioning refuses a pair on SD 1.x and a
 * single set on SDXL. The word that triggers an embedding in a prompt is
 * the name it is loaded under (the file's stem when found by name), never the token stored inside.
 *
 * Files are looked up in <models>/embeddings/: "<name>.safetensors", "<name>.pt", "<name>.bin" in that
 * order, then (as A1111 scans the whole folder) in subfolders and in any letter case. */
#ifndef MP_MODELS_EMBEDDING_H
#define MP_MODELS_EMBEDDING_H

#include <stddef.h>

#include "core/error.h"
#include "prompt/conditioning.h"

#define MP_EMBEDDINGS_SUBDIR "embeddings"

/* One embedding as read from a file: vectors [n_vectors, hidden] f32, allocated with malloc. */
typedef struct {
  int n_vectors;
  int hidden;
  float *vectors;
  /* SDXL: clip_g [n_vectors, hidden2] beside clip_l in `vectors`; 0 / NULL for a single set */
  int hidden2;
  float *vectors2;
} mp_embedding;

/* Read the embedding in `path`. expected_hidden: the (first) text encoder's width (0 accepts any); a
 * file of another width is an error naming the file, the width found and the one expected. */
mp_error *mp_embedding_read(const char *path, int expected_hidden, mp_embedding *out);
void mp_embedding_free(mp_embedding *e);

/* Read `path` and add it to `set` under `name`. */
mp_error *mp_embedding_load_file(const char *path, const char *name, int expected_hidden, mp_ti_set *set);

/* "<models_dir>/embeddings" (malloc'd; NULL when out of memory). */
char *mp_embeddings_dir(const char *models_dir);

/* The file of embedding `name` in `dir` (see the search order above); *path is malloc'd. A name that
 * is not a plain file name (empty, '/', '\', a leading '.') is refused. Not found: an error naming
 * every path tried. */
mp_error *mp_embedding_find(const char *dir, const char *name, char **path);

/* Find and load every name (a job's embeddings) into `set`. Every failure is reported in the one error
 * (joined by "; "), not only the first; the names that did load stay in the set. */
mp_error *mp_embeddings_load(const char *dir, char *const *names, size_t n_names, int expected_hidden, mp_ti_set *set);

#endif
