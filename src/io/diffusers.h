/* diffusers folders: a Stable Diffusion model saved by diffusers/transformers `save_pretrained`.
 *
 * A folder is recognised by its model_index.json. Each part lives in a subfolder (unet/, vae/,
 * text_encoder/, ...) with a config.json and one weights file (or that file split into shards with an
 * index). mp_diffusers_open reads every part and renames its tensors to the CompVis single-file names (model.diffusion_model.*,
 * first_stage_model.*, cond_stage_model.transformer.*), so the result binds to the same model code
 * as a single-file checkpoint: one model implementation, one mapping table (the layouts below).
 * The tensors are views into the mapped part files, which the returned mp_weights owns, except
 * SDXL's second text encoder's fused in_proj and transposed text_projection (copies it also owns).
 *
 * Which subfolders a pipeline has and where each one's tensors go is a table of components per
 * pipeline layout (diffusers.c): SD 1.x (unet/, vae/, text_encoder/) and SDXL (the same plus
 * text_encoder_2/, to the sgm names conditioner.embedders.0.transformer.* and
 * conditioner.embedders.1.model.*); the UNet and VAE mappers are shared. An SDXL folder's
 * tokenizer_2/, when present, must hold tokenizer/'s vocabulary and merges (one BPE for both encoders).
 *
 * Files are found inside the folder only: a path that resolves (through symlinks) outside it is
 * refused, except into the `blobs/` folder of a Hugging Face hub cache when the folder is one of its
 * `snapshots/<revision>/` folders (that is how the hub cache stores every file). */
#ifndef MP_IO_DIFFUSERS_H
#define MP_IO_DIFFUSERS_H

#include <cjson/cJSON.h>
#include <stdbool.h>

#include "core/error.h"
#include "io/weights.h"

/* A folder holding a model_index.json. */
bool mp_diffusers_is_folder(const char *path);

/* A folder with a config.json and no model_index.json: one diffusers model on its own, read as a
 * ControlNet (ControlNetModel.save_pretrained; mp_diffusers_open checks its _class_name). Its keys go
 * to the single-file names under "control_model.". */
bool mp_diffusers_is_controlnet(const char *path);

/* Read a diffusers folder (a pipeline, or a ControlNet) into one mp_weights with CompVis names. Tensors the table does not know
 * keep their own name under "<subfolder>/" (e.g. "unet/foo.weight"), so `mpass inspect` lists them
 * as unexpected. Fails (naming the file and what is wrong) on a missing model_index.json, subfolder,
 * config or weights file, malformed JSON, a path escaping the folder, or an unsupported pipeline. */
mp_error *mp_diffusers_open(const char *folder, mp_weights **out);

/* `rel` (e.g. "unet/config.json") parsed as a JSON object. A missing file is an error when
 * `required`, else *out is NULL. Errors name the file, and line and column for bad JSON. */
mp_error *mp_diffusers_read_json(const char *folder, const char *rel, bool required, cJSON **out);

/* <folder>/<rel> when it exists, checked to lie inside the folder; *path is NULL when it does not
 * exist. Caller frees *path. */
mp_error *mp_diffusers_file(const char *folder, const char *rel, char **path);

/* The file that identifies a part's weights ("" for the folder itself): <subfolder>/<stem>.safetensors, else
 * <stem>.fp16.safetensors, else the same with .bin (full precision first, f16 variant second); for weights
 * split into shards (<stem>.safetensors.index.json and its fp16 variants, io/shard_index.h) the first shard
 * the index names. Where a part has both a single file and a shard index, the UNet, VAE and ControlNet
 * (stem diffusion_pytorch_model) take the index, the text encoders (stem model) the single file, as
 * diffusers and transformers load them. Caller frees *path. */
mp_error *mp_diffusers_weights_file(const char *folder, const char *subfolder, const char *stem, char **path);

/* Every file a part's weights are read from, each checked to lie inside the folder: the one weights file,
 * or the shards and then their index; (*paths)[0] is mp_diffusers_weights_file's. Caller frees each
 * path and *paths. */
mp_error *mp_diffusers_weights_files(const char *folder, const char *subfolder, const char *stem, char ***paths, size_t *n);

/* The CLIP tokenizer folder of a diffusers folder (<folder>/<subfolder>, e.g. "tokenizer") when it
 * holds vocab.json and merges.txt; *path is NULL when `folder` is not a diffusers folder or has no
 * such tokenizer. Caller frees *path. */
mp_error *mp_diffusers_tokenizer(const char *folder, const char *subfolder, char **path);

/* The vocabulary a run should use for `model`: NULL (keep the usual lookup) when `explicit_vocab`
 * or MPASS_VOCAB is set or the model is not a diffusers folder with tokenizer files; else the
 * folder's tokenizer/ (or, without one, an SDXL folder's tokenizer_2/). Caller frees *path. */
mp_error *mp_diffusers_vocab_for_model(const char *model, const char *explicit_vocab, char **path);

/* The file whose SHA-256 identifies a checkpoint ("Model hash"): the path itself for a file, the
 * UNet weights file for a diffusers folder, the weights file of a diffusers ControlNet folder. Caller frees *path. */
mp_error *mp_checkpoint_hash_file(const char *checkpoint, char **path);

#endif
