/* Packed weights on disk: one file per packed tensor, so that loading a checkpoint the second time maps
 * its bf16 packs instead of rounding and reordering every weight again (~6 s at SD 1.5 size).
 *
 * A store is a folder for one checkpoint (pipeline/pack_files.c picks it and the checkpoint's identity).
 * A record is found by its key, the text "kind \n tensor name \n layout \n identity": the kind names the
 * packed form (e.g. "dnnl-matmul-bf16", "dnnl-conv-bf16", "wino-f2x3-bf16"), the layout describes the
 * packed bytes completely (oneDNN's version and memory descriptor, which differs between CPUs: AMX and
 * AVX-512 machines get different blocked layouts), the identity names the checkpoint and the format.
 * The file is <hash of the key>.pack:
 *
 *   offset 0     fixed header (64 bytes): magic "MPASSPK\0", format version, byte-order mark,
 *                header size (= payload offset, a multiple of 4096), payload size, payload checksum,
 *                key length, key checksum, header checksum (over the fixed header and the key)
 *   offset 64    the key text (compared byte for byte on load: a hash collision is a miss, not a hit)
 *   header size  the payload: the packed bytes exactly as the operator uses them (mapped, page-aligned)
 *
 * Loading validates everything before the payload is used: size of the file, magic, version, byte
 * order, header checksum, key, payload size and the payload's checksum. A file that fails is not
 * trusted: the caller is warned (through the store's warning function) and packs again, and the new
 * record replaces the bad file. Records are written to a temporary file and renamed into place, so
 * readers see an old record, a new one or none, never half of one; no fsync is needed because a
 * record the machine lost half of fails its checksum on the next load. */
#ifndef MP_CORE_PACK_STORE_H
#define MP_CORE_PACK_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"

#define MP_PACK_FORMAT_VERSION 1u

typedef void (*mp_warn_fn)(void *ud, const char *message);

typedef struct mp_pack_store mp_pack_store;

/* A store over folder `dir` (created on the first save) whose keys end with `identity` (the checkpoint's
 * identity; any text without newlines). warn (may be NULL) receives one line per rejected file and the
 * first failed save. */
mp_error *mp_pack_store_open(const char *dir, const char *identity, mp_warn_fn warn, void *warn_ud, mp_pack_store **out);
void mp_pack_store_close(mp_pack_store *s);
/* Delete temporary record files (<record>.pack.<pid>.<n>.tmp) untouched for over an hour: left behind
 * by a process killed while saving. Nothing else in the folder is touched. */
void mp_pack_store_sweep(mp_pack_store *s);
const char *mp_pack_store_dir(const mp_pack_store *s);

/* A mapped record: the payload stays valid until mp_pack_map_release (the store may close before). */
typedef struct {
  void *base;    /* the mapping (whole file) */
  size_t len;
  void *payload; /* base + header size: page-aligned, writable copy-on-write (operators never write) */
  size_t payload_bytes;
} mp_pack_map;
void mp_pack_map_release(mp_pack_map *m);
/* Take the payload's pages out of this process's resident set; they stay in the page cache, are clean
 * and file-backed, and come back on the next touch (for between phases of a job, to lower peak RSS). */
void mp_pack_map_drop_resident(mp_pack_map *m);

/* The record (kind, name, layout) with exactly `bytes` of payload: true and *m on a valid hit, false on a
 * miss. A missing file is a silent miss; a damaged, truncated or foreign one a warned one. */
bool mp_pack_store_load(mp_pack_store *s, const char *kind, const char *name, const char *layout, size_t bytes, mp_pack_map *m);
/* Write the record atomically and map it (true, *m); false where it could not (warned once per store:
 * the caller keeps its own copy). */
bool mp_pack_store_save(mp_pack_store *s, const char *kind, const char *name, const char *layout, const void *data, size_t bytes,
                        mp_pack_map *m);

/* Write a small text file `name` into the store's folder (created if need be), atomically; false on failure. */
bool mp_pack_store_write_note(mp_pack_store *s, const char *name, const char *text);

/* The path a record has (for tests that damage one); NULL when it does not fit. */
const char *mp_pack_store_record_path(const mp_pack_store *s, const char *kind, const char *name, const char *layout, char *buf,
                                      size_t cap);

/* A fast 64-bit checksum (four independent multiply-xor lanes, then mixed); not cryptographic. */
uint64_t mp_hash64(const void *data, size_t n, uint64_t seed);

#endif
