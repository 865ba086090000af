/* The prompt object <-> JSON, in one place: the parameters of a parsed document (stored once at
 * creation), and the API's prompt object (parameters + state + the outputs from result.json). */
#include <dirent.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "prompt/document.h"
#include "server/internal.h"
#include "server/prompt_json.h"

cJSON *ms_prompt_params(const mp_job *j) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddStringToObject(o, "text", j->text ? j->text : "");
  cJSON_AddStringToObject(o, "negative_prompt", j->negative_prompt ? j->negative_prompt : "");
  cJSON_AddNumberToObject(o, "num_images", j->num_images);
  cJSON_AddNumberToObject(o, "seed", (double)j->seed);
  cJSON_AddNumberToObject(o, "steps", j->steps);
  cJSON_AddNumberToObject(o, "cfg_scale", j->cfg_scale);
  cJSON_AddStringToObject(o, "scheduler", mp_scheduler_name(j->scheduler));
  if (j->width > 0) cJSON_AddNumberToObject(o, "w", j->width), cJSON_AddNumberToObject(o, "h", j->height);
  else cJSON_AddNullToObject(o, "w"), cJSON_AddNullToObject(o, "h");
  if (j->ar != MP_AR_NONE) cJSON_AddStringToObject(o, "ar", mp_aspect_name(j->ar));
  else cJSON_AddNullToObject(o, "ar");
  cJSON_AddBoolToObject(o, "use_lpw", j->use_lpw);
  cJSON_AddNumberToObject(o, "denoising_strength", j->denoising_strength);
  cJSON_AddBoolToObject(o, "input_image", j->input_image != NULL);
  cJSON_AddBoolToObject(o, "mask_image", j->mask_image != NULL);
  if (j->input_image_url) cJSON_AddStringToObject(o, "input_image_url", j->input_image_url);
  if (j->mask_image_url) cJSON_AddStringToObject(o, "mask_image_url", j->mask_image_url);
  cJSON_AddBoolToObject(o, "super_resolution", j->super_resolution);
  cJSON_AddBoolToObject(o, "hires_fix", j->hires_fix);
  cJSON_AddBoolToObject(o, "inpaint_faces", j->inpaint_faces);
  cJSON_AddBoolToObject(o, "film_grain", j->film_grain);
  const char *g = mp_grading_name(j->color_grading);
  if (g) cJSON_AddStringToObject(o, "color_grading", g);
  else cJSON_AddNullToObject(o, "color_grading");
  cJSON_AddBoolToObject(o, "face_correct", j->face_correct);
  cJSON_AddBoolToObject(o, "face_swap", j->face_swap);
  if (j->controlnet) cJSON_AddStringToObject(o, "controlnet", j->controlnet);
  else cJSON_AddNullToObject(o, "controlnet");
  cJSON_AddNumberToObject(o, "controlnet_conditioning_scale", j->controlnet_conditioning_scale);
  cJSON_AddBoolToObject(o, "controlnet_txt2img", j->controlnet_txt2img);
  cJSON_AddBoolToObject(o, "prompt_expansion", j->prompt_expansion);
  cJSON *w = cJSON_AddArrayToObject(o, "warnings");
  for (int i = 0; i < j->n_warnings; i++) cJSON_AddItemToArray(w, cJSON_CreateString(j->warnings[i]));
  return o;
}

/* ---- what a client sees of the server's paths. result.json on disk is the library's (the CLI and
 * the server's own recovery read it); the API's JSON names files relative to what the client knows:
 * its tunes ("tunes/12/12.safetensors"), the models folder ("lora/style.safetensors"), or, for a path
 * outside both (another machine's DATA, a --model elsewhere), the file name alone. */

/* path starts with root + "/": the rest, else NULL */
static const char *under(const char *path, const char *root) {
  size_t n = root ? strlen(root) : 0;
  if (!n || strncmp(path, root, n) != 0 || path[n] != '/') return NULL;
  return path + n + 1;
}

char *ms_public_path(const char *path, const ms_path_view *v) {
  if (!path || path[0] != '/') return strdup(path ? path : "");
  const char *rest = NULL;
  if (v->owner && *v->owner) {
    /* the owner's space, on this machine or another (a worker's DATA): the last /owners/<owner>/ */
    size_t n = strlen(v->owner) + 10;
    char *mark = malloc(n);
    if (!mark) return NULL;
    snprintf(mark, n, "/owners/%s/", v->owner);
    for (const char *p = strstr(path, mark); p; p = strstr(p + 1, mark)) rest = p + strlen(mark);
    free(mark);
  }
  if (!rest) rest = under(path, v->models_dir);
  if (!rest) rest = under(path, v->data_dir);
  if (!rest) rest = strrchr(path, '/') + 1;
  return strdup(rest);
}

/* a path token in free text starts with '/' after a boundary and ends at a space, a quote, a bracket,
 * a comma or a ": " */
static bool path_start(const char *text, size_t i) {
  if (text[i] != '/' || !text[i + 1] || strchr(" \t\n/", text[i + 1])) return false;
  return i == 0 || strchr(" \t\n'\"(=[<", text[i - 1]);
}

static size_t path_len(const char *p) {
  size_t n = 0;
  while (p[n] && !strchr(" \t\n'\")],;>", p[n]) && !(p[n] == ':' && (p[n + 1] == ' ' || !p[n + 1]))) n++;
  return n;
}

char *ms_public_text(const char *text, const ms_path_view *v) {
  if (!text) return NULL;
  size_t cap = strlen(text) + 1, n = 0;
  char *out = malloc(cap);
  if (!out) return NULL;
  for (size_t i = 0; text[i];) {
    char *piece = NULL;
    size_t take = 1;
    if (path_start(text, i)) {
      take = path_len(text + i);
      char *tok = strndup(text + i, take);
      piece = tok ? ms_public_path(tok, v) : NULL;
      free(tok);
      if (!piece) return free(out), NULL;
    }
    size_t add = piece ? strlen(piece) : 1;
    if (n + add + 1 > cap) {
      char *g = realloc(out, cap = (n + add + 1) * 2);
      if (!g) return free(piece), free(out), NULL;
      out = g;
    }
    if (piece) memcpy(out + n, piece, add), free(piece);
    else out[n] = text[i];
    n += add, i += take;
  }
  out[n] = 0;
  return out;
}

/* keys whose strings are the user's own text, never paths */
static bool users_text(const char *key) {
  static const char *const KEYS[] = {"prompt", "negative_prompt", "text", "document", "id"};
  for (size_t i = 0; key && i < sizeof KEYS / sizeof *KEYS; i++)
    if (!strcmp(key, KEYS[i])) return true;
  return false;
}

void ms_public_tree(cJSON *node, const ms_path_view *v) {
  for (cJSON *c = node ? node->child : NULL; c; c = c->next) {
    if (cJSON_IsString(c) && !users_text(c->string)) {
      char *t = ms_public_text(c->valuestring, v);
      if (t && strcmp(t, c->valuestring)) cJSON_SetValuestring(c, t);
      free(t);
    } else if (cJSON_IsArray(c) || cJSON_IsObject(c)) {
      ms_public_tree(c, v);
    }
  }
}

static cJSON *read_json_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = NULL;
  size_t n = 0, cap = 0;
  for (;;) {
    if (n + 65536 > cap) {
      char *g = realloc(buf, cap = cap * 2 + 65536);
      if (!g) break;
      buf = g;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    if (!got) break;
    n += got;
    if (n > (64u << 20)) break;
  }
  fclose(f);
  cJSON *j = buf ? cJSON_ParseWithLength(buf, n) : NULL;
  free(buf);
  return j;
}

static void add_url(cJSON *arr, const char *base, int64_t id, const char *file) {
  char u[1024];
  snprintf(u, sizeof u, "%s/images/%lld/%s", base, (long long)id, file);
  cJSON_AddItemToArray(arr, cJSON_CreateString(u));
}

static void add_opt_string(cJSON *o, const char *k, const char *v) {
  if (v) cJSON_AddStringToObject(o, k, v);
  else cJSON_AddNullToObject(o, k);
}

void ms_add_fail_message(cJSON *o, const ms_job *j, const char *data_dir, const char *models_dir) {
  ms_path_view v = {.owner = j->owner, .data_dir = data_dir, .models_dir = models_dir};
  char *msg = ms_public_text(j->fail_message, &v);
  add_opt_string(o, "fail_message", msg ? msg : j->fail_message);
  free(msg);
}

cJSON *ms_result_public(const ms_job *j, const char *data_dir, const char *models_dir) {
  char p[4096];
  snprintf(p, sizeof p, "%s/jobs/%lld/result.json", data_dir, (long long)j->id);
  cJSON *res = read_json_file(p);
  ms_path_view v = {.owner = j->owner, .data_dir = data_dir, .models_dir = models_dir};
  if (res) ms_public_tree(res, &v);
  return res;
}

cJSON *ms_prompt_object(const ms_job *j, const char *base_url, const char *data_dir, const char *models_dir) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  ms_path_view v = {.owner = j->owner, .data_dir = data_dir, .models_dir = models_dir};
  cJSON_AddNumberToObject(o, "id", (double)j->id);
  if (j->tune_id) cJSON_AddNumberToObject(o, "tune_id", (double)j->tune_id);
  else cJSON_AddNullToObject(o, "tune_id");
  cJSON *params = j->params_json ? cJSON_Parse(j->params_json) : NULL;
  cJSON *warnings = NULL;
  if (params) {
    warnings = cJSON_DetachItemFromObjectCaseSensitive(params, "warnings");
    for (cJSON *it = params->child; it;) {
      cJSON *next = it->next;
      cJSON_AddItemToObject(o, it->string, cJSON_DetachItemViaPointer(params, it));
      it = next;
    }
    cJSON_Delete(params);
  }
  add_opt_string(o, "callback", j->callback);
  cJSON_AddStringToObject(o, "status", ms_status_name(j->status));
  cJSON_AddNumberToObject(o, "progress", j->status == MS_DONE ? 1.0 : j->progress);
  cJSON_AddNumberToObject(o, "attempts", j->attempts);
  cJSON *images = cJSON_AddArrayToObject(o, "images");
  cJSON *sheets = cJSON_AddArrayToObject(o, "contact_sheets");
  cJSON *passes = NULL, *skipped = NULL;
  /* expired (retention.c): the outputs and result.json are gone; the row says when */
  if (j->status == MS_DONE && !j->expired_at) {
    char p[4096];
    cJSON *res = ms_result_public(j, data_dir, models_dir);
    if (res) {
      cJSON *ims = cJSON_GetObjectItemCaseSensitive(res, "images");
      cJSON *im;
      cJSON_ArrayForEach(im, ims) {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(im, "file");
        if (cJSON_IsString(f)) add_url(images, base_url, j->id, f->valuestring);
      }
      passes = cJSON_DetachItemFromObjectCaseSensitive(res, "passes");
      skipped = cJSON_DetachItemFromObjectCaseSensitive(res, "skipped");
      cJSON *w = cJSON_DetachItemFromObjectCaseSensitive(res, "warnings");
      if (cJSON_IsArray(w)) cJSON_Delete(warnings), warnings = w;
      else cJSON_Delete(w);
      cJSON_Delete(res);
    }
    for (int i = 0; i < 8; i++) { /* contact sheets of the passes, one per image */
      char f[32];
      snprintf(f, sizeof f, "passes-%d.png", i);
      snprintf(p, sizeof p, "%s/jobs/%lld/%s", data_dir, (long long)j->id, f);
      FILE *fp = fopen(p, "rb");
      if (!fp) break;
      fclose(fp);
      add_url(sheets, base_url, j->id, f);
    }
  }
  cJSON_AddItemToObject(o, "passes", passes ? passes : cJSON_CreateArray());
  ms_public_tree(warnings, &v); /* the parser's or the run's: they may quote a file the run could not read */
  cJSON_AddItemToObject(o, "warnings", warnings ? warnings : cJSON_CreateArray());
  cJSON_AddItemToObject(o, "skipped", skipped ? skipped : cJSON_CreateArray());
  add_opt_string(o, "created_at", j->created_at);
  add_opt_string(o, "started_at", j->started_at);
  add_opt_string(o, "finished_at", j->finished_at);
  add_opt_string(o, "failed_at", j->failed_at);
  ms_add_fail_message(o, j, data_dir, models_dir);
  add_opt_string(o, "expired_at", j->expired_at);
  cJSON *cbs = j->callbacks_json ? cJSON_Parse(j->callbacks_json) : NULL;
  cJSON_AddItemToObject(o, "callback_attempts", cbs ? cbs : cJSON_CreateArray());
  return o;
}

cJSON *ms_tune_object(const ms_tune *t) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return NULL;
  cJSON_AddNumberToObject(o, "id", (double)t->id);
  add_opt_string(o, "title", t->title);
  add_opt_string(o, "name", t->name);
  add_opt_string(o, "token", t->token);
  add_opt_string(o, "model_type", t->model_type);
  add_opt_string(o, "branch", t->branch);
  add_opt_string(o, "created_at", t->created_at);
  return o;
}
