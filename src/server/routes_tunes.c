/* /tunes: register a person model (an upload, or a file already in the server's models folder),
 * list, show, delete. Each owner's tunes live in DATA/owners/<owner>/tunes/<id>/ (tunes.c's layout),
 * so a job resolves <lora:ID:W> only among its owner's tunes (plus the shared models/lora files). */
#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "pipeline/tunes.h"
#include "server/internal.h"

void ms_owner_dir(const ms_server *s, const char *owner, char *out, size_t cap) {
  snprintf(out, cap, "%s/owners/%s", s->data_dir, owner);
}

static const char *field(ms_request *r, cJSON *obj, const char *key) {
  if (r->is_form) {
    char b[64];
    snprintf(b, sizeof b, "tune[%s]", key);
    const ms_field *f = ms_form_get(&r->form, b);
    if (!f) f = ms_form_get(&r->form, key);
    return f && !f->file_path ? f->value : NULL;
  }
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A file named by the client must be inside the models folder (no "..", no absolute path). */
static mp_error *server_file(ms_server *s, const char *rel, char **out) {
  *out = NULL;
  if (!rel || !*rel || rel[0] == '/' || strstr(rel, ".."))
    return mp_errorf("tune.file: name a file inside the server's models folder, e.g. lora/jane.safetensors");
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", s->models_dir, rel);
  char *real = realpath(p, NULL);
  size_t n = strlen(s->models_dir);
  if (!real || strncmp(real, s->models_dir, n) != 0 || real[n] != '/') {
    free(real);
    return mp_errorf("tune.file: %s is not a file in the server's models folder", rel);
  }
  *out = real;
  return NULL;
}

static mp_error *mkdirs2(const char *a) {
  char b[4096];
  snprintf(b, sizeof b, "%s", a);
  for (char *p = b + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(b, 0755) && errno != EEXIST) return mp_errorf("cannot create folder %s (%s)", b, strerror(errno));
      *p = '/';
    }
  if (mkdir(b, 0755) && errno != EEXIST) return mp_errorf("cannot create folder %s (%s)", b, strerror(errno));
  return NULL;
}

MHD_RESULT ms_route_tune_create(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)ids, (void)tail;
  struct MHD_Connection *c = r->conn;
  cJSON *root = NULL, *obj = NULL;
  if (!r->is_form) {
    if (!r->body_len) return ms_reply_error(c, 400, "empty body: expected multipart/form-data with tune[file], or JSON {\"tune\": {...}}");
    root = cJSON_ParseWithLength(r->body, r->body_len);
    if (!root) return ms_reply_error(c, 400, "malformed JSON");
    obj = cJSON_GetObjectItemCaseSensitive(root, "tune");
    if (!obj) obj = root;
    if (!cJSON_IsObject(obj)) return cJSON_Delete(root), ms_reply_error(c, 422, "expected a JSON object {\"tune\": {...}}");
  }
  const char *type = field(r, obj, "model_type"), *branch = field(r, obj, "branch");
  mp_tune_spec spec = {.title = field(r, obj, "title"), .name = field(r, obj, "name"), .token = field(r, obj, "token"),
                       .family = branch ? branch : "sd15"};
  mp_error *e = mp_tune_type_parse(type ? type : "lora", &spec.type);
  if (!e && strcmp(spec.family, "sd15") && strcmp(spec.family, "sdxl"))
    e = mp_errorf("tune.branch: expected sd15 or sdxl, found '%s'", spec.family);
  if (!e && !spec.name) e = mp_errorf("tune.name: the class name (woman, man, dog, ...) is required");
  if (!e && !spec.token) e = mp_errorf("tune.token: the trigger token (sks, ohwx, ...) is required");
  char *weights = NULL;
  if (!e) {
    const ms_field *f = r->is_form ? ms_form_get(&r->form, "tune[file]") : NULL;
    if (r->is_form && !f) f = ms_form_get(&r->form, "file");
    if (f && f->file_path) weights = strdup(f->file_path);
    else if (f || !r->is_form) e = server_file(s, field(r, obj, "file"), &weights);
    else e = mp_errorf("tune.file: upload the weights as the file field tune[file]");
  }
  if (e) return cJSON_Delete(root), ms_reply_mp_error(s, r, 422, e);
  /* the uploaded file needs the right extension for the checks in tunes.c */
  const ms_field *f = r->is_form ? ms_form_get(&r->form, "tune[file]") : NULL;
  if (r->is_form && !f) f = ms_form_get(&r->form, "file");
  if (f && f->file_path) {
    const char *ext = f->file_name ? strrchr(f->file_name, '.') : NULL;
    if (!ext || strlen(ext) > 16 || strchr(ext, '/')) ext = ".safetensors";
    size_t n = strlen(f->file_path) + strlen(ext) + 1;
    char *renamed = malloc(n);
    if (renamed) snprintf(renamed, n, "%s%s", f->file_path, ext);
    if (renamed && rename(f->file_path, renamed) == 0) {
      free(((ms_field *)f)->file_path);
      ((ms_field *)f)->file_path = strdup(renamed); /* still removed with the form */
      free(weights), weights = renamed;
    } else {
      free(renamed);
    }
  }
  ms_tune t = {.owner = r->owner, .title = (char *)spec.title, .name = (char *)spec.name, .token = (char *)spec.token,
               .model_type = (char *)mp_tune_type_name(spec.type), .branch = (char *)spec.family};
  int64_t id = 0;
  e = s->store->tune_create(s->store, &t, &id);
  char root_dir[4096], sid[32];
  ms_owner_dir(s, r->owner, root_dir, sizeof root_dir);
  snprintf(sid, sizeof sid, "%" PRId64, id);
  spec.id = sid;
  mp_tune added = {0};
  if (!e) e = mkdirs2(root_dir);
  if (!e) {
    e = mp_tune_add(root_dir, &spec, weights, &added);
    if (e) { /* the id is spent; the row goes */
      bool found;
      int64_t in_use;
      mp_error_free(s->store->tune_delete(s->store, r->owner, id, &found, &in_use));
      free(weights), cJSON_Delete(root);
      return ms_reply_mp_error(s, r, 422, e);
    }
  }
  free(weights), cJSON_Delete(root);
  if (!e && s->store->blob_put_files) { /* a shared store keeps the tune for workers on other machines */
    char rel[4200];
    snprintf(rel, sizeof rel, "%s/tunes/%s", root_dir + strlen(s->data_dir) + 1, sid);
    e = ms_blobs_upload_dir(s, rel, 0);
  }
  if (e) return ms_reply_mp_error(s, r, 500, e);
  mp_tune_free(&added);
  ms_tune got;
  bool found;
  e = s->store->tune_get(s->store, r->owner, id, &got, &found);
  if (e || !found) return ms_reply_mp_error(s, r, 500, e ? e : mp_errorf("tune %" PRId64 " vanished", id));
  cJSON *o = ms_tune_object(&got);
  ms_tune_free(&got);
  return ms_reply_json(c, 201, o);
}

MHD_RESULT ms_route_tune_get(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  ms_tune t;
  bool found;
  mp_error *e = s->store->tune_get(s->store, r->owner, ids[0], &t, &found);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  if (!found) return ms_reply_error(r->conn, 404, "no tune %" PRId64, ids[0]);
  cJSON *o = ms_tune_object(&t);
  ms_tune_free(&t);
  return ms_reply_json(r->conn, 200, o);
}

MHD_RESULT ms_route_tune_list(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)ids, (void)tail;
  ms_tune *t;
  int n;
  mp_error *e = s->store->tune_list(s->store, r->owner, &t, &n);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  cJSON *arr = cJSON_CreateArray();
  for (int i = 0; i < n; i++) cJSON_AddItemToArray(arr, ms_tune_object(&t[i]));
  ms_tune_list_free(t, n);
  return ms_reply_json(r->conn, 200, arr);
}

MHD_RESULT ms_route_tune_delete(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)tail;
  bool found;
  int64_t in_use;
  mp_error *e = s->store->tune_delete(s->store, r->owner, ids[0], &found, &in_use);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  if (!found) return ms_reply_error(r->conn, 404, "no tune %" PRId64, ids[0]);
  if (in_use)
    return ms_reply_error(r->conn, 409, "tune %" PRId64 " is used by %" PRId64 " queued or running prompts; cancel them or wait", ids[0], in_use);
  char root_dir[4096], sid[32];
  ms_owner_dir(s, r->owner, root_dir, sizeof root_dir);
  snprintf(sid, sizeof sid, "%" PRId64, ids[0]);
  mp_error_free(mp_tune_remove(root_dir, sid)); /* the row is gone; a leftover folder is harmless */
  if (s->store->blob_delete) {
    char prefix[4200];
    snprintf(prefix, sizeof prefix, "%s/tunes/%s/", root_dir + strlen(s->data_dir) + 1, sid);
    mp_error_free(s->store->blob_delete(s->store, prefix));
  }
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "id", (double)ids[0]);
  cJSON_AddBoolToObject(o, "deleted", 1);
  return ms_reply_json(r->conn, 200, o);
}
