/* Tunes (SPEC.md §1.4) and the models folder.
 *
 * The models folder (`--models DIR`, else $MPASS_MODELS, else ./models):
 *   checkpoints/         base models (*.safetensors, *.ckpt)
 *   lora/                LoRA files, named in prompts as <lora:NAME:W> (NAME.safetensors/.pt/.ckpt)
 *   embeddings/          textual inversions, named in prompts as <NAME> (NAME.safetensors/.pt/.bin)
 *   tunes/<id>/tune.json a registered person model, with its weights file beside it:
 *       {"id": "753945", "title": "Jane", "name": "woman", "token": "sks", "type": "lora",
 *        "family": "sd15", "file": "753945.safetensors", "sha256": "…", "created_at": "…Z"}
 *
 * <lora:ID:W> resolves the tune ID when one exists, else the LoRA file ID in lora/. */
#ifndef MP_PIPELINE_TUNES_H
#define MP_PIPELINE_TUNES_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

typedef enum { MP_TUNE_LORA, MP_TUNE_CHECKPOINT } mp_tune_type;

typedef struct {
  char *id, *title, *name, *token, *family; /* name = the class ("woman"); family: sd15, sd2, sdxl */
  mp_tune_type type;
  char *file;       /* full path of the weights file */
  char *sha256;     /* of the weights file, 64 hex digits */
  char *created_at; /* ISO 8601, UTC */
} mp_tune;

/* What `tune add` is given. title and family may be NULL (title: "<token> <name>"; family: detected
 * from the file where possible, else sd15). */
typedef struct {
  const char *id, *title, *name, *token, *family;
  mp_tune_type type;
} mp_tune_spec;

/* Ids: 1–64 characters of A–Z a–z 0–9 '_' '-' '.', not starting with '.' (no path can be built from one). */
mp_error *mp_tune_check_id(const char *id);
mp_error *mp_tune_type_parse(const char *s, mp_tune_type *t);
const char *mp_tune_type_name(mp_tune_type t);

/* Register a tune: checks the spec and the weights file (a LoRA must hold LoRA tensors; a checkpoint
 * must be a recognised Stable Diffusion model of the given family), copies the file into
 * tunes/<id>/ and writes tune.json. The tune appears atomically (built in a hidden folder, then
 * renamed); an existing id is an error. `out` may be NULL. */
mp_error *mp_tune_add(const char *models_dir, const mp_tune_spec *spec, const char *weights_path, mp_tune *out);

/* Read tunes/<id>/tune.json; an absent tune is an error naming the path. */
mp_error *mp_tune_load(const char *models_dir, const char *id, mp_tune *out);
bool mp_tune_exists(const char *models_dir, const char *id);
mp_error *mp_tune_remove(const char *models_dir, const char *id);
void mp_tune_free(mp_tune *t);

/* Every tune, sorted by id. A tune folder that cannot be read does not hide the others: it is
 * reported in `problems` (one message each). */
typedef struct {
  mp_tune *tunes;
  size_t n;
  char **problems;
  size_t n_problems;
} mp_tune_list;
mp_error *mp_tunes_list(const char *models_dir, mp_tune_list *out);
void mp_tune_list_free(mp_tune_list *l);

/* <lora:ID:W>: the tune ID (a LoRA tune, or a checkpoint tune that replaces the model for that pass),
 * else lora/ID.safetensors, .pt, .ckpt. Not found: an error naming every path searched. */
typedef struct {
  char *path;   /* the weights file */
  bool is_tune; /* then `tune` is filled */
  mp_tune tune;
} mp_lora_ref;
mp_error *mp_resolve_lora(const char *models_dir, const char *id, mp_lora_ref *out);
/* The same with the tunes taken from tunes_root/tunes/ (NULL: models_dir) and LoRA files from
 * models_dir/lora: the server gives each token its own tunes_root. */
mp_error *mp_resolve_lora_in(const char *models_dir, const char *tunes_root, const char *id, mp_lora_ref *out);
void mp_lora_ref_free(mp_lora_ref *r);

/* <name>: embeddings/name.safetensors, .pt, .bin (caller frees the path). */
mp_error *mp_resolve_embedding(const char *models_dir, const char *name, char **path);

/* The first checkpoint (by name) in checkpoints/, for runs without --model; an error says where to put one. */
mp_error *mp_default_checkpoint(const char *models_dir, char **path);

#endif
