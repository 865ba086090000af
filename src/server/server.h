/* `mpass serve`: the prompt API over HTTP (issue 13). One process: libmicrohttpd answers requests
 * (routes_*.c parse and validate, then call the store), worker threads claim jobs from the store and
 * run them with mpass_run (worker.c), events.c fans progress out to Server-Sent Events.
 * A route never touches the pipeline; a worker never parses HTTP. */
#ifndef MP_SERVER_SERVER_H
#define MP_SERVER_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"

typedef struct ms_config {
  const char *listen;      /* "127.0.0.1:8080"; port 0 picks a free port */
  const char *data_dir;    /* mpass.db, jobs/, owners/, inputs/, tmp/ */
  const char *models_dir;  /* NULL: $MPASS_MODELS, else ./models */
  const char *model_path;  /* NULL: the first checkpoint in <models>/checkpoints */
  const char *token_file;  /* "NAME TOKEN" per line, loaded at start; may be NULL */
  const char *public_url;  /* base of absolute URLs; NULL: from the request's Host header */
  int workers;             /* job threads (default 1) */
  int n_threads;           /* compute threads in all (<= 0: one per CPU), split between workers */
  int max_queued;          /* per token; 0: no limit */
  long long max_upload_bytes; /* a tune's weights (default 1 GiB) */
  long long max_image_bytes;  /* an input or mask image (default 20 MiB) */
  bool quiet;              /* no request log on stderr */
  bool allow_private_urls; /* input_image_url may name loopback/private addresses (tests, trusted networks) */
  int retention_days;      /* the files of jobs ended this many days ago are removed (retention.c); 0: kept forever */
  /* several machines (issue 14) */
  const char *db;          /* --db: postgres://..., a libpq conninfo or sqlite:PATH; NULL: DATA/mpass.db */
  int lease_seconds;       /* a claimed job's lease on a shared store (default 30), renewed while it runs */
  bool no_http;            /* `mpass worker`: workers only, no HTTP daemon */
} ms_config;

typedef struct ms_server ms_server;

/* Open the store, recover interrupted jobs, start the HTTP daemon and the workers. *url is the
 * address it listens on ("http://127.0.0.1:43817"). */
mp_error *ms_server_start(const ms_config *cfg, ms_server **out, char url[128]);
/* Stop accepting requests, hand a running job back to the queue (it stops at its next sampler
 * step, its attempt uncounted), join the workers, close the store. */
void ms_server_stop(ms_server *s);

/* Tokens: a new random token (43 characters of base64url, 256 bits) and its SHA-256 hex digest. */
mp_error *ms_token_new(char token[64]);
void ms_token_hash(const char *token, char hex[65]);
/* Add a token to DATA/mpass.db (creating the database when absent). */
mp_error *ms_token_add(const char *data_dir, const char *name, const char *token);
/* The same in the store named by --db (ms_store_open); db NULL: DATA/mpass.db. */
mp_error *ms_token_add_db(const char *db, const char *data_dir, const char *name, const char *token);

#endif
