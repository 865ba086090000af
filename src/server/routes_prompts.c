/* /prompts and /tunes/:id/prompts: create (parse and validate, then enqueue), plan, get, list,
 * cancel, and the Server-Sent Events stream of one job. */
#include <errno.h>
#include <stdio.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mpass/mpass.h"
#include "pipeline/tunes.h"
#include "prompt/document.h"
#include "core/clock.h"
#include "server/internal.h"
#include "server/prompt_json.h"
#include "server/retention.h"

static bool on_tune_route(const ms_request *r) { return !strncmp(r->url, "/tunes/", 7); }

/* PNG or JPEG by their first bytes; anything else is refused by name. */
static const char *sniff_image(const char *path, char why[128]) {
  unsigned char b[12] = {0};
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(b, 1, sizeof b, f) : 0;
  if (f) fclose(f);
  if (n >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8)) return "png";
  if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return "jpg";
  if (n >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4)) snprintf(why, 128, "WebP is not supported: send a PNG or JPEG");
  else snprintf(why, 128, "expected a PNG or JPEG file");
  return NULL;
}

typedef struct {
  ms_tune tune;
  bool have_tune;
  ms_document doc;
  mpass_job *job;       /* the validated job (plan made) */
  char *params_json;
  const ms_field *input, *mask;
  const char *input_ext, *mask_ext;
} prepared;

static void prepared_free(prepared *p) {
  if (p->have_tune) ms_tune_free(&p->tune);
  ms_document_free(&p->doc);
  mpass_job_free(p->job);
  free(p->params_json);
}

/* Everything a create needs, checked; on failure the reply is queued and *ret holds its result. */
static bool prepare(ms_server *s, ms_request *r, const int64_t *ids, prepared *p, MHD_RESULT *ret) {
  memset(p, 0, sizeof *p);
  struct MHD_Connection *c = r->conn;
  if (on_tune_route(r)) {
    mp_error *e = s->store->tune_get(s->store, r->owner, ids[0], &p->tune, &p->have_tune);
    if (e) return *ret = ms_reply_mp_error(s, r, 500, e), false;
    if (!p->have_tune) return *ret = ms_reply_error(c, 404, "no tune %" PRId64, ids[0]), false;
  }
  cJSON *prompt = NULL;
  char msg[256];
  unsigned st;
  if (r->is_form) st = ms_prompt_from_form(&r->form, &prompt, msg);
  else if (!r->body_len) st = 400, snprintf(msg, sizeof msg, "empty body: expected JSON {\"prompt\": {\"text\": ...}} or multipart/form-data");
  else st = ms_prompt_from_json(r->body, r->body_len, &prompt, msg);
  if (st) return *ret = ms_reply_error(c, st, "%s", msg), false;
  if (r->is_form) {
    p->input = ms_form_get_prompt(&r->form, "input_image");
    p->mask = ms_form_get_prompt(&r->form, "mask_image");
    if (p->input && !p->input->file_path) p->input = NULL;
    if (p->mask && !p->mask->file_path) p->mask = NULL;
    char why[128];
    if (p->input && !(p->input_ext = sniff_image(p->input->file_path, why))) {
      cJSON_Delete(prompt);
      return *ret = ms_reply_error(c, 422, "input_image: %s", why), false;
    }
    if (p->mask && !(p->mask_ext = sniff_image(p->mask->file_path, why))) {
      cJSON_Delete(prompt);
      return *ret = ms_reply_error(c, 422, "mask_image: %s", why), false;
    }
  }
  char in_name[32], mask_name[32];
  snprintf(in_name, sizeof in_name, "input_image.%s", p->input_ext ? p->input_ext : "png");
  snprintf(mask_name, sizeof mask_name, "mask_image.%s", p->mask_ext ? p->mask_ext : "png");
  st = ms_document_build(prompt, p->input ? in_name : NULL, p->mask ? mask_name : NULL, &p->doc, msg);
  cJSON_Delete(prompt);
  if (st) return *ret = ms_reply_error(c, st, "%s", msg), false;

  /* the parser's own words for a bad document (line, column, key, expected vs found) */
  mp_job *job = NULL;
  mp_error *e = p->doc.is_json ? mp_job_parse_json(p->doc.document, p->doc.len, &job)
                               : mp_job_parse_text(p->doc.document, p->doc.len, &job);
  if (!e && !p->doc.is_json && (job->input_image || job->mask_image))
    e = mp_errorf("%s: upload the image as the multipart file field %s; a path on the server is not accepted",
                  job->input_image ? "input_image" : "mask_image", job->input_image ? "input_image" : "mask_image");
  for (int k = 0; k < 2 && !e; k++) { /* fetched when the job runs; the scheme is checked now */
    const char *u = k ? job->mask_image_url : job->input_image_url;
    if (u && strncmp(u, "http://", 7) && strncmp(u, "https://", 8))
      e = mp_errorf("%s: expected an http:// or https:// URL", k ? "mask_image_url" : "input_image_url");
  }
  if (!e && job->callback && !p->doc.callback) {
    if (strncmp(job->callback, "http://", 7) && strncmp(job->callback, "https://", 8))
      e = mp_errorf("callback: expected an http:// or https:// URL");
    else if (!(p->doc.callback = strdup(job->callback)))
      e = mp_errorf("out of memory");
  }
  if (!e && job->seed_random) e = ms_document_pin_seed(&p->doc, job->seed); /* a retry draws the same noise */
  if (!e) {
    cJSON *params = ms_prompt_params(job);
    p->params_json = params ? cJSON_PrintUnformatted(params) : NULL;
    cJSON_Delete(params);
    if (!p->params_json) e = mp_errorf("out of memory");
  }
  mp_job_free(job);
  if (!e) e = mpass_job_parse(p->doc.document, p->doc.len, p->doc.is_json, &p->job); /* the plan, too */
  if (e) return *ret = ms_reply_mp_error(s, r, 422, e), false;
  return true;
}

MHD_RESULT ms_route_prompt_plan(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  prepared p;
  MHD_RESULT ret;
  if (!prepare(s, r, ids, &p, &ret)) return prepared_free(&p), ret;
  char *plan = NULL;
  mp_error *e = mpass_job_plan_json(p.job, &plan);
  if (e) return prepared_free(&p), ms_reply_mp_error(s, r, 422, e);
  cJSON *o = cJSON_CreateObject();
  cJSON *pj = cJSON_Parse(plan);
  free(plan);
  cJSON_AddItemToObject(o, "plan", pj ? pj : cJSON_CreateNull());
  cJSON *w = cJSON_AddArrayToObject(o, "warnings");
  for (int i = 0; i < mpass_job_warning_count(p.job); i++) cJSON_AddItemToArray(w, cJSON_CreateString(mpass_job_warning(p.job, i)));
  cJSON *params = cJSON_Parse(p.params_json);
  if (params) cJSON_DeleteItemFromObjectCaseSensitive(params, "warnings");
  cJSON_AddItemToObject(o, "prompt", params ? params : cJSON_CreateNull());
  prepared_free(&p);
  return ms_reply_json(r->conn, 200, o);
}

static mp_error *mkdir_one(const char *p) {
  if (mkdir(p, 0755) && errno != EEXIST) return mp_errorf("cannot create folder %s (%s)", p, strerror(errno));
  return NULL;
}

/* Removes DATA/inputs/<name> (and its stored copy on a shared store) that no job will read: the request
 * failed after the uploads were kept, ran over the quota, or repeated an Idempotency-Key. Left behind,
 * nothing would ever remove it (the retention sweep follows jobs). A failure here only logs. */
static void drop_uploads(ms_server *s, const char *dir) {
  const size_t n = strlen(s->data_dir);
  if (strncmp(dir, s->data_dir, n) || dir[n] != '/') return;
  const char *rel = dir + n + 1; /* inputs/<name> */
  bool removed = false;
  mp_error *e = ms_remove_in_data(s->data_dir, rel, &removed);
  if (!e && s->store->blob_delete) {
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s/", rel);
    e = s->store->blob_delete(s->store, prefix);
  }
  if (e) fprintf(stderr, "mpass serve: removing unused uploads %s: %s\n", dir, mp_error_message(e));
  mp_error_free(e);
}

/* Uploaded images move to DATA/inputs/<random>/ (the job's base_dir); on failure the folder goes again. */
static mp_error *keep_uploads(ms_server *s, prepared *p, char **inputs_dir) {
  *inputs_dir = NULL;
  if (!p->input && !p->mask) return NULL;
  uint8_t rnd[8];
  if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) return mp_errorf("cannot draw a random name");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/inputs", s->data_dir);
  MP_TRY(mkdir_one(dir));
  size_t n = strlen(dir);
  snprintf(dir + n, sizeof dir - n, "/%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
  MP_TRY(mkdir_one(dir));
  mp_error *e = NULL;
  for (int k = 0; k < 2 && !e; k++) {
    ms_field *f = (ms_field *)(k ? p->mask : p->input);
    if (!f) continue;
    char to[4200];
    snprintf(to, sizeof to, "%s/%s_image.%s", dir, k ? "mask" : "input", k ? p->mask_ext : p->input_ext);
    if (rename(f->file_path, to) != 0) e = mp_errorf("cannot move the upload to %s (%s)", to, strerror(errno));
    else free(f->file_path), f->file_path = NULL; /* kept: no longer a temp file */
  }
  /* a shared store keeps them too: the worker may be on another machine */
  if (!e) e = ms_blobs_upload_dir(s, dir + strlen(s->data_dir) + 1, 0);
  if (!e && !(*inputs_dir = strdup(dir))) e = mp_errorf("out of memory");
  if (e) drop_uploads(s, dir);
  return e;
}

static MHD_RESULT reply_job(ms_server *s, ms_request *r, unsigned status, int64_t id) {
  ms_job j;
  bool found;
  mp_error *e = s->store->job_get(s->store, r->owner, id, &j, &found);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  if (!found) return ms_reply_error(r->conn, 404, "no prompt %" PRId64, id);
  char *base = ms_base_url(s, r->conn);
  ms_outputs_local(s, &j);
  cJSON *o = ms_prompt_object(&j, base ? base : "", s->data_dir, s->models_dir);
  free(base);
  ms_job_free(&j);
  return ms_reply_json(r->conn, status, o);
}

MHD_RESULT ms_route_prompt_create(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  prepared p;
  MHD_RESULT ret;
  if (!prepare(s, r, ids, &p, &ret)) return prepared_free(&p), ret;
  const char *idem = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
  if (idem && (strlen(idem) > 200 || !*idem))
    return prepared_free(&p), ms_reply_error(r->conn, 400, "Idempotency-Key: expected 1-200 characters");
  ms_job j = {0};
  j.owner = r->owner, j.document = p.doc.document, j.is_json = p.doc.is_json, j.params_json = p.params_json;
  j.callback = p.doc.callback, j.idempotency_key = (char *)idem;
  mp_error *e = NULL;
  mp_tune tf = {0};
  if (p.have_tune) {
    j.tune_id = p.tune.id;
    if (!strcmp(p.tune.model_type, "checkpoint")) { /* the job runs on the tune's checkpoint */
      char root[4096], sid[32];
      ms_owner_dir(s, r->owner, root, sizeof root);
      snprintf(sid, sizeof sid, "%" PRId64, p.tune.id);
      e = mp_tune_load(root, sid, &tf);
      j.model_path = tf.file;
    }
  }
  if (!e) e = keep_uploads(s, &p, &j.inputs_dir);
  int64_t id = 0;
  ms_enqueue_result res = MS_ENQUEUED;
  if (!e) e = s->store->job_enqueue(s->store, &j, s->cfg.max_queued, &id, &res);
  if (j.inputs_dir && (e || res != MS_ENQUEUED)) drop_uploads(s, j.inputs_dir);
  free(j.inputs_dir);
  mp_tune_free(&tf);
  prepared_free(&p);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  if (res == MS_OVER_QUOTA)
    return ms_reply_error(r->conn, 429, "this token already has %d queued prompts (the limit); wait for some to finish", s->cfg.max_queued);
  if (res == MS_ENQUEUED) {
    char data[96];
    snprintf(data, sizeof data, "{\"id\":%" PRId64 ",\"status\":\"queued\"}", id);
    ms_events_publish(s->events, id, "queued", data, false);
    pthread_mutex_lock(&s->work_mu);
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->work_mu);
  }
  /* a repeated Idempotency-Key answers the first job, 200 instead of 201 */
  return reply_job(s, r, res == MS_DUPLICATE ? 200 : 201, id);
}

/* The job, if it is this owner's and (on /tunes/:id/...) that tune's. */
static bool own_job(ms_server *s, ms_request *r, const int64_t *ids, int64_t *pid, MHD_RESULT *ret, ms_job *out) {
  bool tune = on_tune_route(r);
  *pid = tune ? ids[1] : ids[0];
  bool found = false;
  mp_error *e = s->store->job_get(s->store, r->owner, *pid, out, &found);
  if (e) return *ret = ms_reply_mp_error(s, r, 500, e), false;
  if (found && tune && out->tune_id != ids[0]) ms_job_free(out), found = false;
  if (!found) return *ret = ms_reply_error(r->conn, 404, "no prompt %" PRId64, *pid), false;
  return true;
}

MHD_RESULT ms_route_prompt_get(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  int64_t pid;
  MHD_RESULT ret;
  ms_job j;
  if (!own_job(s, r, ids, &pid, &ret, &j)) return ret;
  char *base = ms_base_url(s, r->conn);
  ms_outputs_local(s, &j);
  cJSON *o = ms_prompt_object(&j, base ? base : "", s->data_dir, s->models_dir);
  free(base);
  ms_job_free(&j);
  return ms_reply_json(r->conn, 200, o);
}

static bool query_int(ms_request *r, const char *key, int def, int lo, int hi, int *out) {
  const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
  if (!v) return *out = def, true;
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (!*v || *end || errno || x < lo || x > hi) return false;
  *out = (int)x;
  return true;
}

MHD_RESULT ms_route_prompt_list(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  int limit, offset;
  if (!query_int(r, "limit", 20, 1, 120, &limit)) return ms_reply_error(r->conn, 400, "limit: expected a whole number 1-120");
  if (!query_int(r, "offset", 0, 0, 1 << 30, &offset)) return ms_reply_error(r->conn, 400, "offset: expected a whole number >= 0");
  int64_t tune = -1;
  if (on_tune_route(r)) {
    ms_tune t;
    bool found;
    mp_error *e = s->store->tune_get(s->store, r->owner, ids[0], &t, &found);
    if (e) return ms_reply_mp_error(s, r, 500, e);
    if (!found) return ms_reply_error(r->conn, 404, "no tune %" PRId64, ids[0]);
    ms_tune_free(&t);
    tune = ids[0];
  }
  ms_job *jobs;
  int n;
  mp_error *e = s->store->job_list(s->store, r->owner, tune, limit, offset, &jobs, &n);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  char *base = ms_base_url(s, r->conn);
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; i < n; i++) ms_outputs_local(s, &jobs[i]);
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, ms_prompt_object(&jobs[i], base ? base : "", s->data_dir, s->models_dir));
  free(base);
  ms_job_list_free(jobs, n);
  return ms_reply_json(r->conn, 200, arr);
}

MHD_RESULT ms_route_prompt_cancel(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  int64_t pid;
  MHD_RESULT ret;
  ms_job j;
  if (!own_job(s, r, ids, &pid, &ret, &j)) return ret;
  ms_job_free(&j);
  bool found;
  ms_status now;
  mp_error *e = s->store->job_cancel(s->store, r->owner, pid, &found, &now);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  if (now == MS_RUNNING) ms_workers_cancel(s, pid);
  else if (now == MS_CANCELLED) {
    char data[96];
    snprintf(data, sizeof data, "{\"id\":%" PRId64 ",\"status\":\"cancelled\"}", pid);
    ms_events_publish(s->events, pid, "cancelled", data, true);
  }
  return reply_job(s, r, 200, pid);
}

/* ---------------------------------------------------------------- Server-Sent Events */

typedef struct {
  ms_server *s;
  int64_t job;
  uint64_t seq;
  char buf[4096];
  size_t len, pos;
  bool done;
  /* a shared store: events from workers on other machines arrive through the store's listener
   * (LISTEN mpass_events); the stream also follows the job row (progress written at most once a
   * second) as a fallback: every 3 s while the listener is up, every 0.5 s while it is down */
  int row_status;
  double row_progress, last_write;
} sse_state;

static void sse_put(sse_state *st, const char *name, const char *data) {
  st->len = (size_t)snprintf(st->buf, sizeof st->buf, "event: %s\ndata: %s\n\n", name, data);
  if (st->len >= sizeof st->buf) st->len = sizeof st->buf - 1;
  st->pos = 0;
}

/* the job's row changed since the stream last said: one event for it. False when unchanged. */
static bool sse_follow_row(sse_state *st) {
  ms_job j;
  bool found = false;
  mp_error *e = st->s->store->job_get(st->s->store, NULL, st->job, &j, &found);
  if (e || !found) return mp_error_free(e), false;
  bool changed = (int)j.status != st->row_status || j.progress > st->row_progress + 1e-6;
  if (changed) {
    st->row_status = (int)j.status, st->row_progress = j.progress;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)st->job);
    cJSON_AddStringToObject(o, "status", ms_status_name(j.status));
    bool terminal = j.status != MS_QUEUED && j.status != MS_RUNNING;
    if (!terminal) cJSON_AddNumberToObject(o, "progress", j.progress);
    if (j.fail_message) ms_add_fail_message(o, &j, st->s->data_dir, st->s->models_dir);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    sse_put(st, j.status == MS_RUNNING && j.progress > 0 ? "progress" : ms_status_name(j.status), t ? t : "{}");
    free(t);
    st->done = terminal;
  }
  ms_job_free(&j);
  return changed;
}


static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max) {
  (void)pos;
  sse_state *st = cls;
  if (st->pos >= st->len) {
    if (st->done) return MHD_CONTENT_READER_END_OF_STREAM;
    char name[16], data[2048];
    bool terminal = false, closed = false, shared = st->s->store->shared;
    for (;;) {
      ms_store *store = st->s->store;
      int wait_ms = !shared ? 15000 : store->event_listening && store->event_listening(store) ? 3000 : 500;
      if (ms_events_wait(st->s->events, st->job, &st->seq, name, data, sizeof data, &terminal, wait_ms, &closed)) {
        sse_put(st, name, data);
        st->done = terminal;
      } else if (closed) {
        return MHD_CONTENT_READER_END_OF_STREAM;
      } else if (shared && !sse_follow_row(st) && mp_now() - st->last_write < 15) {
        continue;
      } else if (!shared || st->len == 0 || st->pos >= st->len) {
        st->len = (size_t)snprintf(st->buf, sizeof st->buf, ": keep-alive\n\n"), st->pos = 0;
      }
      break;
    }
    st->last_write = mp_now();
  }
  size_t n = st->len - st->pos < max ? st->len - st->pos : max;
  memcpy(out, st->buf + st->pos, n);
  st->pos += n;
  return (ssize_t)n;
}

static void sse_free(void *cls) { free(cls); }

MHD_RESULT ms_route_prompt_events(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  sse_state *st = calloc(1, sizeof *st);
  if (!st) return MHD_NO;
  st->s = s;
  int64_t pid;
  /* the sequence number first, then the state: an event between the two is not lost */
  st->seq = ms_events_seq(s->events, on_tune_route(r) ? ids[1] : ids[0]);
  MHD_RESULT ret;
  ms_job j;
  if (!own_job(s, r, ids, &pid, &ret, &j)) return free(st), ret;
  st->job = pid;
  char data[1200];
  if (j.status == MS_QUEUED || j.status == MS_RUNNING)
    snprintf(data, sizeof data, "{\"id\":%" PRId64 ",\"status\":\"%s\",\"progress\":%.4f}", pid, ms_status_name(j.status), j.progress);
  else {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "id", (double)pid);
    cJSON_AddStringToObject(o, "status", ms_status_name(j.status));
    if (j.fail_message) ms_add_fail_message(o, &j, s->data_dir, s->models_dir);
    char *t = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    snprintf(data, sizeof data, "%s", t ? t : "{}");
    free(t);
    st->done = true;
  }
  sse_put(st, ms_status_name(j.status), data);
  st->row_status = (int)j.status, st->row_progress = j.progress, st->last_write = mp_now();
  ms_job_free(&j);
  struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_read, st, sse_free);
  if (!resp) return free(st), MHD_NO;
  MHD_add_response_header(resp, "Content-Type", "text/event-stream");
  MHD_add_response_header(resp, "Cache-Control", "no-store");
  ret = MHD_queue_response(r->conn, 200, resp);
  MHD_destroy_response(resp);
  return ret;
}
