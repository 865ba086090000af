/* --db: which job store backs the server (store.h). */
#include <stdio.h>
#include <string.h>

#include "server/store.h"

mp_error *ms_store_open(const char *db, const char *data_dir, int lease_seconds, ms_store **out) {
  if (db && (!strncmp(db, "postgres://", 11) || !strncmp(db, "postgresql://", 13) || strchr(db, '=')))
    return ms_store_pg_open(db, lease_seconds, out);
  if (db && !strncmp(db, "sqlite:", 7) && db[7]) return ms_store_sqlite_open(db + 7, out);
  if (db && *db)
    return mp_errorf("--db %s: expected postgres://..., postgresql://..., a libpq conninfo (host=... dbname=...) or sqlite:PATH", db);
  char p[4096];
  snprintf(p, sizeof p, "%s/mpass.db", data_dir);
  return ms_store_sqlite_open(p, out);
}
