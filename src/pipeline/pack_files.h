/* A checkpoint's packed weights on disk: where they go and how a checkpoint is recognised again.
 *
 * Under `--precision bf16` every convolution and linear weight is rounded to bf16 and reordered into
 * oneDNN's blocked layout before use (core/pack_dnnl.h). mp_pin_checkpoint pins the checkpoint's
 * tensors in the backend's pack cache (core/pack_cache.h) together with a pack store (core/pack_store.h)
 * in <root>/<checkpoint stem>-<identity>/, where root is
 *   - <models>/.cache/packs when the checkpoint lies inside the models folder (--models, $MPASS_MODELS),
 *   - else $XDG_CACHE_HOME/mpass/packs (default ~/.cache/mpass/packs);
 * so the next process maps the packs instead of packing. `--no-cache` or MPASS_NO_CACHE=1 turn it off
 * (packing in memory as before). Nothing is stored for f32 (it packs nothing). Each folder holds a
 * `source` note (the checkpoint's real path); opening a folder removes the other folders noted for the
 * same path (a replaced checkpoint's packs can never match again) or for a path that no longer exists
 * (a deleted or moved checkpoint; only ENOENT counts, so an unreadable file or a failing mount keeps them).
 *
 * The identity (SHA-256 over what follows) must change whenever the tensors' bytes may have changed,
 * without reading the whole file (SHA-256 of a 2 GB checkpoint takes seconds, loading must not): for
 * every file the checkpoint was read from, its size and modification time (nanoseconds), its header
 * (a safetensors file's whole JSON header, which fixes every tensor's name, dtype, shape and offset;
 * else the first MiB), its last 64 KiB, and 64 blocks of 4 KiB spread evenly over it; then the name,
 * dtype and shape of every tensor as read. A rewritten file gets a new mtime; a different file copied
 * over with the old mtime preserved (cp -p, rsync -t) differs in the sampled blocks unless the two files
 * agree on 256 KiB at the same places, which two trainings or random draws of the same architecture do
 * not. What it does not catch is an edit of the tensor bytes away from the samples that restores size
 * and mtime on purpose; `--no-cache` (or deleting the folder) is the way out then. */
#ifndef MP_PIPELINE_PACK_FILES_H
#define MP_PIPELINE_PACK_FILES_H

#include "core/context.h"
#include "io/weights.h"

/* Pin every tensor of w for `owner` (release with mp_pack_cache_release(mp_backend_pack_cache(...),
 * owner)), with its pack store when the context packs to bf16 and caching is on. A store that cannot be
 * set up (no cache folder, unreadable file) only costs the caching: it is reported through the context's
 * warning handler and the tensors are pinned without it. */
mp_error *mp_pin_checkpoint(mpass_ctx *ctx, const mp_weights *w, const void *owner);

/* The pack folder root for checkpoint `path` (see above) into buf; false when there is none. */
bool mp_pack_root(const mpass_ctx *ctx, const char *path, char *buf, size_t cap);

/* The identity of the checkpoint w as 64 hex digits. */
mp_error *mp_checkpoint_identity(const mp_weights *w, char hex[65]);

#endif
