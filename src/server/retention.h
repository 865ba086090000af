/* Retention (`mpass serve --retention-days N`): the files of jobs that ended more than N days ago are
 * removed; their rows stay, marked expired_at, so the API can say what happened (docs/api.md). */
#ifndef MP_SERVER_RETENTION_H
#define MP_SERVER_RETENTION_H

#include <stdbool.h>
#include <time.h>

#include "server/store.h"

typedef struct {
  int jobs_expired;    /* jobs this sweep marked expired (their folders and stored files removed) */
  int folders_removed; /* folders removed from this machine's DATA (jobs/<id>, inputs/<name>) */
  int refused;         /* paths left alone because they were not safely inside DATA (each logged) */
  int errors;          /* removals that failed (each logged); their jobs are tried again next sweep */
} ms_sweep_stats;

/* One sweep at time `now` over jobs that ended (done, failed, cancelled) before now - days:
 * DATA/jobs/<id>/ and the job's DATA/inputs/<name>/ are removed, with the stored files under the same
 * keys on a shared store, then the job is marked expired. Queued and running jobs are never touched.
 * Then copies on this machine of jobs expired elsewhere (another node of a shared store marked them)
 * are removed too. Problems with single paths are logged on stderr and counted, not returned (that
 * job stays unmarked and is tried again next sweep); the error is the store's, or DATA/jobs or
 * DATA/inputs being a link (then nothing is removed). days <= 0: nothing is done. quiet: no summary. */
mp_error *ms_retention_sweep(ms_store *st, const char *data_dir, int days, time_t now, bool quiet, ms_sweep_stats *stats);

/* Removes DATA/rel (a file, a link or a whole folder) without ever following a symbolic link: rel is
 * relative, its components neither empty nor "." nor ".."; each folder on the way is opened with
 * O_NOFOLLOW (a link there is refused, not followed), and links inside the tree are unlinked, never
 * entered. *removed: something was there and is gone. Absent: no error. */
mp_error *ms_remove_in_data(const char *data_dir, const char *rel, bool *removed);

/* The folder name <name> of DATA/inputs/<name> in a job's inputs_dir (as recorded by the node that took
 * the upload: an absolute path whose last "/inputs/" part counts); false when there is none or it is
 * not a single plain name. */
bool ms_inputs_name(const char *inputs_dir, char *name, size_t cap);

#endif
