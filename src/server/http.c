/* The HTTP door: libmicrohttpd daemon (a thread per connection, so an SSE stream may block), the
 * routing table, bearer-token auth, body limits, multipart uploads streamed to DATA/tmp, and the
 * server's start and stop. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "pipeline/params.h"
#include "server/internal.h"

/* The web page's files, compiled in by cmake/embed.cmake from src/server/web/. */
extern const unsigned char mpass_web_index_html[], mpass_web_app_js[], mpass_web_style_css[];
extern const size_t mpass_web_index_html_size, mpass_web_app_js_size, mpass_web_style_css_size;

/* ---------------------------------------------------------------- replies */

MHD_RESULT ms_reply(struct MHD_Connection *c, unsigned status, const char *content_type, const void *body, size_t n) {
  struct MHD_Response *r = MHD_create_response_from_buffer(n, (void *)body, MHD_RESPMEM_MUST_COPY);
  if (!r) return MHD_NO;
  MHD_add_response_header(r, "Content-Type", content_type);
  MHD_add_response_header(r, "Cache-Control", "no-store");
  MHD_RESULT ret = MHD_queue_response(c, status, r);
  MHD_destroy_response(r);
  return ret;
}

MHD_RESULT ms_reply_json(struct MHD_Connection *c, unsigned status, cJSON *j) {
  char *s = j ? cJSON_PrintUnformatted(j) : NULL;
  cJSON_Delete(j);
  if (!s) return ms_reply(c, 500, "application/json", "{\"error\":\"out of memory\"}", 25);
  MHD_RESULT r = ms_reply(c, status, "application/json", s, strlen(s));
  free(s);
  return r;
}

MHD_RESULT ms_reply_error(struct MHD_Connection *c, unsigned status, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "error", msg);
  return ms_reply_json(c, status, j);
}

MHD_RESULT ms_reply_mp_error(const ms_server *s, const ms_request *r, unsigned status, mp_error *e) {
  const char *msg = e ? mp_error_message(e) : "unknown error";
  if (status >= 500) fprintf(stderr, "mpass serve: %s %s: HTTP %u: %s\n", r->method, r->url, status, msg);
  const ms_path_view v = {.owner = r->owner, .data_dir = s->data_dir, .models_dir = s->models_dir};
  char *shown = ms_public_text(msg, &v);
  cJSON *j = cJSON_CreateObject();
  cJSON_AddStringToObject(j, "error", shown ? shown : "out of memory");
  free(shown);
  mp_error_free(e);
  return ms_reply_json(r->conn, status, j);
}

char *ms_base_url(ms_server *s, struct MHD_Connection *c) {
  if (s->public_url) return strdup(s->public_url);
  const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Host");
  bool ok = host && *host && strlen(host) < 256;
  for (const char *h = host; ok && *h; h++) /* a Host header goes into URLs: accept host[:port] characters only */
    ok = (*h >= 'a' && *h <= 'z') || (*h >= 'A' && *h <= 'Z') || (*h >= '0' && *h <= '9') || strchr(".-:[]", *h);
  if (!ok) return strdup(s->listen_url);
  size_t n = strlen(host) + 8;
  char *u = malloc(n);
  if (u) snprintf(u, n, "http://%s", host);
  return u;
}

/* ---------------------------------------------------------------- routing */

typedef struct {
  const char *method, *pattern;
  ms_route_fn fn;
  int body; /* 0: none, 1: prompt (JSON or form with images), 2: tune upload */
} route;

static MHD_RESULT route_health(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)s, (void)ids, (void)tail;
  return ms_reply(r->conn, 200, "application/json", "{\"status\":\"ok\"}", 15);
}

static MHD_RESULT reply_static(ms_request *r, const unsigned char *data, size_t size, const char *type) {
  struct MHD_Response *resp = MHD_create_response_from_buffer(size, (void *)data, MHD_RESPMEM_PERSISTENT);
  MHD_add_response_header(resp, "Content-Type", type);
  MHD_add_response_header(resp, "Cache-Control", "no-cache");
  MHD_RESULT ret = MHD_queue_response(r->conn, 200, resp);
  MHD_destroy_response(resp);
  return ret;
}

static MHD_RESULT route_index(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)s, (void)ids, (void)tail;
  return reply_static(r, mpass_web_index_html, mpass_web_index_html_size, "text/html; charset=utf-8");
}

static MHD_RESULT route_app_js(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)s, (void)ids, (void)tail;
  return reply_static(r, mpass_web_app_js, mpass_web_app_js_size, "text/javascript; charset=utf-8");
}

static MHD_RESULT route_style_css(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)s, (void)ids, (void)tail;
  return reply_static(r, mpass_web_style_css, mpass_web_style_css_size, "text/css; charset=utf-8");
}

static const route ROUTES[] = {
    {"GET", "/healthz", route_health, 0},
    {"GET", "/", route_index, 0},
    {"GET", "/app.js", route_app_js, 0},
    {"GET", "/style.css", route_style_css, 0},
    {"GET", "/metrics", ms_route_metrics, 0},
    {"POST", "/prompts/plan", ms_route_prompt_plan, 1},
    {"POST", "/prompts", ms_route_prompt_create, 1},
    {"GET", "/prompts", ms_route_prompt_list, 0},
    {"GET", "/prompts/:id/events", ms_route_prompt_events, 0},
    {"GET", "/prompts/:id", ms_route_prompt_get, 0},
    {"DELETE", "/prompts/:id", ms_route_prompt_cancel, 0},
    {"POST", "/tunes", ms_route_tune_create, 2},
    {"GET", "/tunes", ms_route_tune_list, 0},
    {"GET", "/tunes/:id", ms_route_tune_get, 0},
    {"DELETE", "/tunes/:id", ms_route_tune_delete, 0},
    {"POST", "/tunes/:id/prompts", ms_route_prompt_create, 1},
    {"GET", "/tunes/:id/prompts", ms_route_prompt_list, 0},
    {"GET", "/tunes/:id/prompts/:id/events", ms_route_prompt_events, 0},
    {"GET", "/tunes/:id/prompts/:id", ms_route_prompt_get, 0},
    {"DELETE", "/tunes/:id/prompts/:id", ms_route_prompt_cancel, 0},
    {"GET", "/images/:id/*", ms_route_image, 0},
};
#define N_ROUTES (sizeof ROUTES / sizeof ROUTES[0])

/* The open routes: the health check, and the page's files (they hold no data; the page asks for the token). */
static bool route_is_open(const route *rt) {
  return rt->fn == route_health || rt->fn == route_index || rt->fn == route_app_js || rt->fn == route_style_css;
}

/* ---------------------------------------------------------------- bodies */

static MHD_RESULT on_post_field(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                                const char *content_type, const char *transfer_encoding, const char *data, uint64_t off,
                                size_t size) {
  (void)kind, (void)content_type, (void)transfer_encoding;
  ms_request *r = cls;
  if (r->fail_status || !key) return r->fail_status ? MHD_NO : MHD_YES;
  ms_form *f = &r->form;
  ms_field *x = f->n ? &f->f[f->n - 1] : NULL;
  /* MHD calls again with off > 0 for the next chunk of the same field */
  if (!x || off == 0 || strcmp(x->name, key) != 0) {
    if (f->n == f->cap) {
      int cap = f->cap ? f->cap * 2 : 16;
      if (cap > 256) {
        r->fail_status = 400;
        snprintf(r->fail_message, sizeof r->fail_message, "too many form fields (at most 256)");
        return MHD_NO;
      }
      ms_field *g = realloc(f->f, sizeof *g * (size_t)cap);
      if (!g) return MHD_NO;
      f->f = g, f->cap = cap;
    }
    x = &f->f[f->n++];
    memset(x, 0, sizeof *x);
    x->name = strdup(key);
    if (filename) {
      x->file_name = strdup(filename);
      size_t n = strlen(r->tmp_dir) + 40;
      x->file_path = malloc(n);
      if (x->file_path) {
        snprintf(x->file_path, n, "%s/upload-XXXXXX", r->tmp_dir);
        int fd = mkstemp(x->file_path);
        if (fd >= 0) x->fp = fdopen(fd, "wb");
        if (!x->fp) {
          if (fd >= 0) close(fd), unlink(x->file_path);
          free(x->file_path), x->file_path = NULL;
        }
      }
      if (!x->file_path) {
        r->fail_status = 500;
        snprintf(r->fail_message, sizeof r->fail_message, "cannot store the upload in %s", r->tmp_dir);
        return MHD_NO;
      }
    }
    if (!x->name) return MHD_NO;
  }
  if (x->fp) {
    x->file_size += (long long)size;
    if (x->file_size > r->file_limit) {
      r->fail_status = 413;
      snprintf(r->fail_message, sizeof r->fail_message, "the upload %s is larger than the limit of %lld bytes", key, r->file_limit);
      return MHD_NO;
    }
    if (size && fwrite(data, 1, size, x->fp) != size) {
      r->fail_status = 500;
      snprintf(r->fail_message, sizeof r->fail_message, "cannot write the upload (%s)", strerror(errno));
      return MHD_NO;
    }
  } else {
    size_t total = 0;
    for (int i = 0; i < f->n; i++) total += f->f[i].len;
    if (total + size > MS_MAX_FORM_TEXT) {
      r->fail_status = 413;
      snprintf(r->fail_message, sizeof r->fail_message, "the form's text fields are larger than %u bytes", MS_MAX_FORM_TEXT);
      return MHD_NO;
    }
    char *g = realloc(x->value, x->len + size + 1);
    if (!g) return MHD_NO;
    memcpy(g + x->len, data, size);
    x->value = g, x->len += size;
    g[x->len] = 0;
  }
  return MHD_YES;
}

static void request_free(ms_request *r) {
  if (!r) return;
  if (r->pp) MHD_destroy_post_processor(r->pp);
  ms_form_free(&r->form);
  free(r->owner), free(r->body);
  free(r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)c, (void)toe;
  request_free(*con_cls);
  *con_cls = NULL;
}

static MHD_RESULT authenticate(ms_server *s, ms_request *r) {
  const char *h = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
  if (!h || strncasecmp(h, "Bearer ", 7) != 0 || !h[7]) return MHD_NO;
  char hex[65];
  ms_token_hash(h + 7, hex);
  mp_error *e = s->store->token_lookup(s->store, hex, &r->owner);
  if (e) { /* a store failure is the server's problem, not a wrong token: say so in the log */
    fprintf(stderr, "mpass serve: %s\n", mp_error_message(e));
    mp_error_free(e);
  }
  return r->owner ? MHD_YES : MHD_NO;
}

static MHD_RESULT on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method, const char *version,
                             const char *upload_data, size_t *upload_size, void **con_cls) {
  (void)version;
  ms_server *s = cls;
  ms_request *r = *con_cls;
  const route *rt = NULL;
  int64_t ids[4] = {0};
  const char *tail = NULL;
  bool path_known = false;
  for (size_t i = 0; i < N_ROUTES; i++)
    if (ms_path_match(ROUTES[i].pattern, url, ids, &tail)) {
      path_known = true;
      if (!strcmp(ROUTES[i].method, method)) {
        rt = &ROUTES[i];
        break;
      }
    }

  if (!r) { /* first call: headers only. Refuse early what needs no body. */
    r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    *con_cls = r;
    r->conn = c, r->method = method, r->url = url;
    if (!s->cfg.quiet) fprintf(stderr, "mpass serve: %s %s\n", method, url);
    /* Refusals known from the headers are answered at once: MHD then skips the body. */
    if (!rt)
      return ms_reply_error(c, path_known ? 405 : 404, path_known ? "method %s not allowed on %s" : "no route %s %s", method, url);
    if (!route_is_open(rt) && !authenticate(s, r))
      return ms_reply_error(c, 401, "missing or unknown bearer token (Authorization: Bearer <token>)");
    if (rt->body) {
      long long limit = rt->body == 2 ? s->cfg.max_upload_bytes : s->cfg.max_image_bytes * 2 + MS_MAX_FORM_TEXT;
      const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
      if (cl && atoll(cl) > limit + 65536) return ms_reply_error(c, 413, "the body is %s bytes; the limit is %lld", cl, limit);
      r->file_limit = rt->body == 2 ? s->cfg.max_upload_bytes : s->cfg.max_image_bytes;
      r->body_limit = MS_MAX_FORM_TEXT;
      const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
      r->tmp_dir = s->tmp_dir;
      if (ct && (!strncasecmp(ct, "multipart/form-data", 19) || !strncasecmp(ct, "application/x-www-form-urlencoded", 33))) {
        r->is_form = true;
        r->pp = MHD_create_post_processor(c, 64 * 1024, on_post_field, r);
        if (!r->pp) return ms_reply_error(c, 400, "malformed multipart/form-data (is the boundary missing?)");
      }
    }
    return MHD_YES;
  }

  if (*upload_size) { /* body bytes */
    if (!r->fail_status && r->pp) {
      if (MHD_post_process(r->pp, upload_data, *upload_size) != MHD_YES && !r->fail_status) {
        r->fail_status = 400;
        snprintf(r->fail_message, sizeof r->fail_message, "malformed multipart/form-data body");
      }
    } else if (!r->fail_status && rt && rt->body) {
      if (r->body_len + *upload_size > r->body_limit) {
        r->fail_status = 413;
        snprintf(r->fail_message, sizeof r->fail_message, "the JSON body is larger than %zu bytes", r->body_limit);
      } else {
        if (r->body_len + *upload_size + 1 > r->body_cap) {
          size_t cap = (r->body_len + *upload_size + 1) * 2;
          char *g = realloc(r->body, cap);
          if (!g) return MHD_NO;
          r->body = g, r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, *upload_size);
        r->body_len += *upload_size;
        r->body[r->body_len] = 0;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }

  /* the whole request is in */
  if (r->fail_status) return ms_reply_error(c, r->fail_status, "%s", r->fail_message);
  for (int i = 0; i < r->form.n; i++)
    if (r->form.f[i].fp) {
      if (fclose(r->form.f[i].fp) != 0) {
        r->form.f[i].fp = NULL;
        return ms_reply_error(c, 500, "cannot write the upload");
      }
      r->form.f[i].fp = NULL;
    }
  if (!rt) return MHD_NO; /* answered on the first call */
  return rt->fn(s, r, ids, tail);
}

/* ---------------------------------------------------------------- tokens */

void ms_token_hash(const char *token, char hex[65]) {
  mp_sha256 h;
  uint8_t d[32];
  mp_sha256_init(&h);
  mp_sha256_update(&h, token, strlen(token));
  mp_sha256_final(&h, d);
  mp_sha256_hex(d, hex);
}

mp_error *ms_token_new(char token[64]) {
  static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  uint8_t raw[32];
  if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) return mp_errorf("cannot draw a random token: %s", strerror(errno));
  int n = 0;
  for (int i = 0; i < 32; i += 3) {
    uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < 32 ? (uint32_t)raw[i + 1] << 8 : 0) | (i + 2 < 32 ? raw[i + 2] : 0);
    int chars = i + 2 < 32 ? 4 : i + 1 < 32 ? 3 : 2;
    for (int k = 0; k < chars; k++) token[n++] = B64[(v >> (18 - 6 * k)) & 63];
  }
  token[n] = 0;
  return NULL;
}

static mp_error *mkdir_p(const char *path) {
  char b[4096];
  snprintf(b, sizeof b, "%s", path);
  for (char *p = b + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(b, 0755) && errno != EEXIST) return mp_errorf("cannot create folder %s (%s)", b, strerror(errno));
      *p = '/';
    }
  if (mkdir(b, 0755) && errno != EEXIST) return mp_errorf("cannot create folder %s (%s)", b, strerror(errno));
  return NULL;
}

static mp_error *open_store(const char *data_dir, ms_store **out) {
  MP_TRY(mkdir_p(data_dir));
  char p[4096];
  snprintf(p, sizeof p, "%s/mpass.db", data_dir);
  return ms_store_sqlite_open(p, out);
}

static mp_error *check_token_name(const char *name) {
  if (!name || !*name || strlen(name) > 64) return mp_errorf("a token name is 1-64 characters");
  for (const char *c = name; *c; c++)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || strchr("_-.", *c)))
      return mp_errorf("token name '%s': use letters, digits, '_', '-' and '.' only", name);
  if (name[0] == '.') return mp_errorf("token name '%s' may not start with '.'", name);
  return NULL;
}

mp_error *ms_token_add(const char *data_dir, const char *name, const char *token) {
  return ms_token_add_db(NULL, data_dir, name, token);
}

mp_error *ms_token_add_db(const char *db, const char *data_dir, const char *name, const char *token) {
  MP_TRY(check_token_name(name));
  ms_store *st;
  if (db && *db) MP_TRY(ms_store_open(db, data_dir, 30, &st));
  else MP_TRY(open_store(data_dir, &st));
  char hex[65];
  ms_token_hash(token, hex);
  mp_error *e = st->token_add(st, name, hex);
  st->close(st);
  return e;
}

static mp_error *load_token_file(ms_store *st, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return mp_errorf("--token-file %s: %s", path, strerror(errno));
  char line[1024];
  int n = 0;
  mp_error *e = NULL;
  while (!e && fgets(line, sizeof line, f)) {
    n++;
    char name[128], tok[512];
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    int got = sscanf(line, "%127s %511s", name, tok);
    if (got <= 0) continue;
    if (got != 2) {
      e = mp_errorf("--token-file %s line %d: expected NAME TOKEN", path, n);
      break;
    }
    if (strlen(tok) < 16) {
      e = mp_errorf("--token-file %s line %d: the token is shorter than 16 characters", path, n);
      break;
    }
    e = check_token_name(name);
    if (e) break;
    char hex[65], *have = NULL;
    ms_token_hash(tok, hex);
    e = st->token_lookup(st, hex, &have);
    if (!e && !have) e = st->token_add(st, name, hex);
    free(have);
    if (e) e = mp_error_wrap(e, "--token-file %s line %d", path, n);
  }
  fclose(f);
  return e;
}

/* ---------------------------------------------------------------- start and stop */

/* events published in this process go to the other processes sharing the store (SSE on any node);
 * a failure to send costs only latency: streams elsewhere still follow the job row */
static void forward_event(void *arg, int64_t job, const char *name, const char *data, bool terminal) {
  ms_server *s = arg;
  if (!terminal && mp_now() < atomic_load(&s->events_pause_until)) return;
  mp_error *e = s->store->event_send(s->store, job, name, data, terminal);
  if (e) atomic_store(&s->events_pause_until, mp_now() + 5.0);
  mp_error_free(e);
}

static void remote_event(void *arg, int64_t job, const char *name, const char *data, bool terminal) {
  ms_events_publish_local(arg, job, name, data, terminal);
}

static void server_free(ms_server *s) {
  if (!s) return;
  if (s->store) s->store->close(s->store);
  if (s->events) ms_events_free(s->events);
  pthread_mutex_destroy(&s->work_mu);
  pthread_cond_destroy(&s->work_cv);
  pthread_mutex_destroy(&s->metrics_mu);
  free(s->data_dir), free(s->models_dir), free(s->model_path), free(s->public_url), free(s->listen_url);
  free(s->threads), free(s->slots), free(s->workers), free(s->tmp_dir);
  free(s);
}

mp_error *ms_server_start(const ms_config *cfg, ms_server **out, char url[128]) {
  *out = NULL;
  ms_server *s = calloc(1, sizeof *s);
  if (!s) return mp_errorf("out of memory");
  s->cfg = *cfg;
  if (s->cfg.workers < 0) s->cfg.workers = 1; /* 0: an API node in front of a shared store */
  if (s->cfg.lease_seconds <= 0) s->cfg.lease_seconds = 30;
  if (s->cfg.max_upload_bytes <= 0) s->cfg.max_upload_bytes = 1LL << 30;
  if (s->cfg.max_image_bytes <= 0) s->cfg.max_image_bytes = 20LL << 20;
  pthread_mutex_init(&s->work_mu, NULL);
  pthread_cond_init(&s->work_cv, NULL);
  pthread_mutex_init(&s->metrics_mu, NULL);
  const char *models = cfg->models_dir ? cfg->models_dir : getenv("MPASS_MODELS") ? getenv("MPASS_MODELS") : "models";
  s->data_dir = realpath(cfg->data_dir ? cfg->data_dir : "data", NULL);
  mp_error *e = NULL;
  if (!s->data_dir) {
    e = mkdir_p(cfg->data_dir ? cfg->data_dir : "data");
    if (!e && !(s->data_dir = realpath(cfg->data_dir ? cfg->data_dir : "data", NULL)))
      e = mp_errorf("--data %s: %s", cfg->data_dir, strerror(errno));
  }
  s->models_dir = realpath(models, NULL);
  if (!e && !s->models_dir) e = mp_errorf("--models %s: %s", models, strerror(errno));
  if (!e && cfg->model_path && !(s->model_path = realpath(cfg->model_path, NULL)))
    e = mp_errorf("--model %s: %s", cfg->model_path, strerror(errno));
  if (!e && cfg->public_url) s->public_url = strdup(cfg->public_url);
  char host[64];
  int port = 0;
  if (!e) e = ms_parse_listen(cfg->listen ? cfg->listen : "127.0.0.1:8080", host, &port);
  if (!e) {
    char p[4096];
    snprintf(p, sizeof p, "%s/tmp", s->data_dir);
    e = mkdir_p(p);
    s->tmp_dir = strdup(p);
    DIR *d = e ? NULL : opendir(p); /* uploads a dead process left half-written */
    for (struct dirent *de; d && (de = readdir(d));)
      if (!strncmp(de->d_name, "upload-", 7)) {
        char f[4400];
        snprintf(f, sizeof f, "%s/%s", p, de->d_name);
        unlink(f);
      }
    if (d) closedir(d);
    snprintf(p, sizeof p, "%s/jobs", s->data_dir);
    if (!e) e = mkdir_p(p);
  }
  if (!e) e = ms_store_open(cfg->db, s->data_dir, s->cfg.lease_seconds, &s->store);
  /* split roles share the queue through the database; with SQLite the recovery at start of one
   * process would take the running jobs of another */
  if (!e && (s->cfg.workers == 0 || cfg->no_http) && !s->store->shared)
    e = mp_errorf("%s needs a job store shared between processes: pass --db postgres://...",
                  cfg->no_http ? "a worker" : "--workers 0 (an API node without workers)");
  if (!e && cfg->token_file) e = load_token_file(s->store, cfg->token_file);
  if (!e && !cfg->no_http && !ms_host_is_loopback(host)) {
    int64_t n = 0;
    e = s->store->token_count(s->store, &n);
    if (!e && n == 0)
      e = mp_errorf("--listen %s is not a loopback address and no token exists: make one first with "
                    "`mpass token add NAME --data %s` or pass --token-file",
                    cfg->listen, s->data_dir);
  }
  if (!e && !(s->events = ms_events_new())) e = mp_errorf("out of memory");
  /* a shared store: events cross processes; the listener (API nodes only) stops in store->close,
   * which server_free calls before it frees the events table */
  if (!e && s->store->event_send) ms_events_set_forward(s->events, forward_event, s);
  if (!e && !cfg->no_http && s->store->event_listen) e = s->store->event_listen(s->store, remote_event, s->events);
  if (!e) e = ms_recover_interrupted(s);
  if (!e) e = ms_retention_start(s);
  if (!e) e = ms_callbacks_start(s->store, &s->stopping, MS_CALLBACK_STOP_BUDGET, &s->callbacks);
  if (!e && cfg->no_http) {
    snprintf(url, 128, "%s", "");
    s->listen_url = strdup("");
    e = ms_recover_callbacks(s); /* its bodies name listen_url */
    if (!e) e = ms_workers_start(s);
  } else if (!e) {
    /* IPv6 binds dual-stack: [::] also takes IPv4 clients, as 0.0.0.0 would */
    const bool v6 = ms_host_is_ipv6(host);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct sockaddr_in6 sa6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    if (v6 ? inet_pton(AF_INET6, host, &sa6.sin6_addr) != 1 : inet_pton(AF_INET, host, &sa.sin_addr) != 1)
      e = mp_errorf("--listen: %s is not an IP address", host);
    if (!e) {
      s->daemon = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
                                       (v6 ? MHD_USE_DUAL_STACK : 0),
                                   0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR,
                                   v6 ? (struct sockaddr *)&sa6 : (struct sockaddr *)&sa,
                                   MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT,
                                   (unsigned)120, MHD_OPTION_CONNECTION_LIMIT, (unsigned)256, MHD_OPTION_END);
      if (!s->daemon)
        e = mp_errorf("cannot listen on %s%s%s:%d (in use, or not an address of this machine?)", v6 ? "[" : "", host, v6 ? "]" : "",
                      port);
    }
  }
  if (!e && !cfg->no_http) {
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (di) port = di->port;
    const bool v6 = ms_host_is_ipv6(host);
    snprintf(url, 128, "http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
    s->listen_url = strdup(url);
    e = ms_recover_callbacks(s); /* its bodies name listen_url */
    if (!e) e = ms_workers_start(s);
  }
  if (e) {
    if (s->daemon) MHD_stop_daemon(s->daemon);
    ms_retention_stop(s);
    ms_callbacks_stop(s->callbacks), s->callbacks = NULL;
    server_free(s);
    return e;
  }
  *out = s;
  return NULL;
}

void ms_server_stop(ms_server *s) {
  if (!s) return;
  atomic_store(&s->stopping, 1);
  ms_events_close(s->events); /* SSE streams end */
  pthread_mutex_lock(&s->work_mu);
  pthread_cond_broadcast(&s->work_cv);
  pthread_mutex_unlock(&s->work_mu);
  if (s->daemon) MHD_stop_daemon(s->daemon);
  ms_workers_join(s);
  ms_callbacks_stop(s->callbacks), s->callbacks = NULL; /* after the workers: the last jobs' callbacks */
  ms_retention_stop(s);
  server_free(s);
}
