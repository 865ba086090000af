/* A request as the routes see it, and the body parsing that does not need a socket (so the unit
 * tests and fuzz/fuzz_request.c reach it directly): form fields -> the prompt object, JSON create
 * bodies, the prompt object -> the stored document, the listen address, path matching. */
#ifndef MP_SERVER_REQUEST_H
#define MP_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "core/error.h"

/* One multipart/urlencoded field: text (value, len) or an uploaded file (path of its temp copy). */
typedef struct {
  char *name;
  char *value; /* text fields; NUL-terminated */
  size_t len;
  char *file_path; /* file fields: the upload, streamed to DATA/tmp */
  char *file_name; /* as the client named it */
  long long file_size;
  FILE *fp; /* open while the upload streams */
} ms_field;

typedef struct {
  ms_field *f;
  int n, cap;
} ms_form;

/* Text fields in a form are at most this large in all (a prompt document is at most 4 MiB). */
#define MS_MAX_FORM_TEXT (5u << 20)

void ms_form_free(ms_form *f); /* also removes uploaded temp files */
const ms_field *ms_form_get(const ms_form *f, const char *name);
/* "prompt[text]" or "text" */
const ms_field *ms_form_get_prompt(const ms_form *f, const char *key);

struct MHD_Connection;
struct MHD_PostProcessor;
typedef struct {
  struct MHD_Connection *conn;
  const char *method, *url;
  char *owner;        /* the authenticated token's name */
  char *body;         /* raw body (JSON) */
  size_t body_len, body_cap, body_limit;
  ms_form form;
  struct MHD_PostProcessor *pp;
  const char *tmp_dir;
  long long file_limit;
  unsigned fail_status; /* set while reading: 413 or 400 */
  char fail_message[256];
  bool is_form;
} ms_request;

/* The create body's prompt fields as one JSON object of the API form (values as given; a form's values are strings). */
/* JSON: {"prompt": {...}} (or a bare {"text": ...}). Returns an HTTP status: 0 ok, else 400/422 with msg. */
unsigned ms_prompt_from_json(const char *body, size_t n, cJSON **prompt, char msg[256]);
/* Form: every prompt[KEY] / KEY text field except the file fields. */
unsigned ms_prompt_from_form(const ms_form *f, cJSON **prompt, char msg[256]);

/* The document a job stores: a prompt object holding only "text" (and maybe "callback") is the
 * text form (the whole document as the CLI reads it); anything else is the JSON API form.
 * input_name / mask_name: uploaded files, named relative to the job's inputs folder (may be NULL).
 * *callback: the object's callback (NULL when none; the text form may also carry callback=). */
typedef struct {
  char *document;
  size_t len;
  int is_json;
  char *callback;
} ms_document;
unsigned ms_document_build(const cJSON *prompt, const char *input_name, const char *mask_name, ms_document *out, char msg[256]);
/* Append seed=N (text form) or set "seed" (JSON) so a retried job draws the same noise. */
mp_error *ms_document_pin_seed(ms_document *d, uint32_t seed);
void ms_document_free(ms_document *d);

/* "HOST:PORT" (HOST an IPv4 address or "localhost") or "[IPV6]:PORT"; PORT 0-65535. host gets the
 * address without brackets. */
mp_error *ms_parse_listen(const char *s, char host[64], int *port);
bool ms_host_is_ipv6(const char *host);
/* 127.x.y.z, ::1 and ::ffff:127.x.y.z */
bool ms_host_is_loopback(const char *host);

/* Match a path against a pattern like "/tunes/:id/prompts/:id"; ":id" takes a positive integer, a
 * trailing "*" one plain file name (letters, digits, '.', '-', '_'; not starting with '.').
 * Fills ids (up to 4) and *tail. */
bool ms_path_match(const char *pattern, const char *path, int64_t ids[4], const char **tail);

#endif
