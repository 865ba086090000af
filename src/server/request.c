/* Request bodies to prompt objects and stored documents; listen addresses; path matching. */
#include "server/request.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void ms_form_free(ms_form *f) {
  for (int i = 0; i < f->n; i++) {
    ms_field *x = &f->f[i];
    if (x->fp) fclose(x->fp);
    if (x->file_path) unlink(x->file_path);
    free(x->name), free(x->value), free(x->file_path), free(x->file_name);
  }
  free(f->f);
  memset(f, 0, sizeof *f);
}

const ms_field *ms_form_get(const ms_form *f, const char *name) {
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->f[i].name, name)) return &f->f[i];
  return NULL;
}

const ms_field *ms_form_get_prompt(const ms_form *f, const char *key) {
  char b[128];
  snprintf(b, sizeof b, "prompt[%s]", key);
  const ms_field *x = ms_form_get(f, b);
  return x ? x : ms_form_get(f, key);
}

static const char *const FILE_KEYS[] = {"input_image", "mask_image"};

unsigned ms_prompt_from_json(const char *body, size_t n, cJSON **prompt, char msg[256]) {
  *prompt = NULL;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(body ? body : "", n, &end, 0);
  if (!root) {
    snprintf(msg, 256, "malformed JSON near byte %zu: expected {\"prompt\": {\"text\": ...}}",
             end && body && end >= body ? (size_t)(end - body) : (size_t)0);
    return 400;
  }
  cJSON *p = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "prompt") : NULL;
  if (!p && cJSON_IsObject(root) && cJSON_GetObjectItemCaseSensitive(root, "text")) p = root;
  if (!cJSON_IsObject(p)) {
    cJSON_Delete(root);
    snprintf(msg, 256, "expected a JSON object {\"prompt\": {\"text\": ...}}");
    return 422;
  }
  *prompt = cJSON_Duplicate(p, 1);
  cJSON_Delete(root);
  if (!*prompt) {
    snprintf(msg, 256, "out of memory");
    return 500;
  }
  return 0;
}

unsigned ms_prompt_from_form(const ms_form *f, cJSON **prompt, char msg[256]) {
  cJSON *o = cJSON_CreateObject();
  if (!o) return snprintf(msg, 256, "out of memory"), 500;
  for (int i = 0; i < f->n; i++) {
    const ms_field *x = &f->f[i];
    const char *key = x->name;
    size_t kn = strlen(key);
    char name[128];
    if (kn > 8 && !strncmp(key, "prompt[", 7) && key[kn - 1] == ']' && kn - 8 < sizeof name) {
      memcpy(name, key + 7, kn - 8);
      name[kn - 8] = 0;
    } else if (kn < sizeof name && strchr(key, '[') == NULL) {
      memcpy(name, key, kn + 1);
    } else {
      continue; /* tune[...] and other forms' fields are not the prompt's */
    }
    bool is_file_key = false;
    for (size_t j = 0; j < sizeof FILE_KEYS / sizeof *FILE_KEYS; j++) is_file_key |= !strcmp(name, FILE_KEYS[j]);
    if (is_file_key && !x->file_path && x->len) {
      cJSON_Delete(o);
      snprintf(msg, 256, "%.100s: upload the image as a file field; a path on the server is not accepted", x->name);
      return 422;
    }
    if (x->file_path || is_file_key) continue;
    if (cJSON_GetObjectItemCaseSensitive(o, name)) {
      cJSON_Delete(o);
      snprintf(msg, 256, "form field %.100s is given twice", x->name);
      return 400;
    }
    if (!cJSON_AddStringToObject(o, name, x->value ? x->value : "")) {
      cJSON_Delete(o);
      return snprintf(msg, 256, "out of memory"), 500;
    }
  }
  *prompt = o;
  return 0;
}

void ms_document_free(ms_document *d) {
  free(d->document), free(d->callback);
  memset(d, 0, sizeof *d);
}

static char *appendf(char *s, size_t *len, const char *fmt, const char *a) {
  size_t add = strlen(fmt) + strlen(a) + 32;
  char *g = realloc(s, *len + add);
  if (!g) return free(s), NULL;
  *len += (size_t)snprintf(g + *len, add, fmt, a);
  return g;
}

unsigned ms_document_build(const cJSON *prompt, const char *input_name, const char *mask_name, ms_document *out, char msg[256]) {
  memset(out, 0, sizeof *out);
  if (!cJSON_IsObject(prompt)) return snprintf(msg, 256, "expected a prompt object"), 422;
  /* Server-side paths are not for clients to name: images arrive as uploads (or, later, URLs). */
  for (size_t j = 0; j < sizeof FILE_KEYS / sizeof *FILE_KEYS; j++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(prompt, FILE_KEYS[j]);
    if (v && !(cJSON_IsString(v) && !v->valuestring[0]) && !cJSON_IsNull(v)) {
      snprintf(msg, 256, "prompt.%s: upload the image as the multipart file field %s; a path on the server is not accepted",
               FILE_KEYS[j], FILE_KEYS[j]);
      return 422;
    }
  }
  const cJSON *cb = cJSON_GetObjectItemCaseSensitive(prompt, "callback");
  if (cb && !cJSON_IsNull(cb) && !cJSON_IsString(cb)) return snprintf(msg, 256, "prompt.callback: expected a URL string"), 422;
  if (cJSON_IsString(cb) && cb->valuestring[0]) {
    if (strncmp(cb->valuestring, "http://", 7) && strncmp(cb->valuestring, "https://", 8))
      return snprintf(msg, 256, "prompt.callback: expected an http:// or https:// URL"), 422;
    out->callback = strdup(cb->valuestring);
  }
  int n_keys = 0, n_other = 0;
  for (const cJSON *it = prompt->child; it; it = it->next, n_keys++)
    if (strcmp(it->string, "text") && strcmp(it->string, "callback")) n_other++;
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(prompt, "text");
  if (!n_other && cJSON_IsString(text) && !input_name && !mask_name) {
    /* the whole document as the CLI reads it */
    out->document = strdup(text->valuestring);
    out->len = out->document ? strlen(out->document) : 0;
    out->is_json = 0;
  } else {
    cJSON *copy = cJSON_Duplicate(prompt, 1);
    cJSON *root = cJSON_CreateObject();
    if (copy && root) {
      for (size_t j = 0; j < sizeof FILE_KEYS / sizeof *FILE_KEYS; j++) cJSON_DeleteItemFromObjectCaseSensitive(copy, FILE_KEYS[j]);
      if (input_name) cJSON_AddStringToObject(copy, "input_image", input_name);
      if (mask_name) cJSON_AddStringToObject(copy, "mask_image", mask_name);
      cJSON_AddItemToObject(root, "prompt", copy), copy = NULL;
      out->document = cJSON_PrintUnformatted(root);
      out->len = out->document ? strlen(out->document) : 0;
      out->is_json = 1;
    }
    cJSON_Delete(copy), cJSON_Delete(root);
  }
  if (!out->document) {
    ms_document_free(out);
    return snprintf(msg, 256, "out of memory"), 500;
  }
  return 0;
}

mp_error *ms_document_pin_seed(ms_document *d, uint32_t seed) {
  char num[16];
  snprintf(num, sizeof num, "%" PRIu32, seed);
  if (d->is_json) {
    cJSON *root = cJSON_Parse(d->document);
    cJSON *p = root ? cJSON_GetObjectItemCaseSensitive(root, "prompt") : NULL;
    if (!p) return cJSON_Delete(root), mp_errorf("internal: the stored JSON document does not parse");
    cJSON_DeleteItemFromObjectCaseSensitive(p, "seed");
    cJSON_AddNumberToObject(p, "seed", (double)seed);
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!s) return mp_errorf("out of memory");
    free(d->document);
    d->document = s, d->len = strlen(s);
    return NULL;
  }
  /* text form: one more parameter line (after the text, parameter lines may follow in any order) */
  bool nl = d->len > 0 && d->document[d->len - 1] == '\n';
  char *s = appendf(d->document, &d->len, nl ? "seed=%s\n" : "\nseed=%s\n", num);
  if (!s) return d->document = NULL, mp_errorf("out of memory");
  d->document = s;
  return NULL;
}

mp_error *ms_parse_listen(const char *s, char host[64], int *port) {
  const char *colon = s ? strrchr(s, ':') : NULL;
  const bool bracketed = s && s[0] == '[';
  if (bracketed) { /* [IPv6]:PORT, as in URLs */
    const char *close = strchr(s, ']');
    if (!close || close[1] != ':' || close - s - 1 <= 0 || close - s - 1 >= 64)
      return mp_errorf("--listen %s: expected [IPV6]:PORT, e.g. [::1]:8080", s);
    colon = close + 1;
    memcpy(host, s + 1, (size_t)(close - s - 1));
    host[close - s - 1] = 0;
  } else {
    if (!colon || colon == s || (size_t)(colon - s) >= 64)
      return mp_errorf("--listen %s: expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080", s ? s : "(none)");
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
  }
  char *end;
  errno = 0;
  long p = strtol(colon + 1, &end, 10);
  if (!colon[1] || *end || errno || p < 0 || p > 65535)
    return mp_errorf("--listen %s: the port must be a number 0-65535 (0: pick a free one)", s);
  if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
  unsigned char addr[16];
  if (bracketed ? inet_pton(AF_INET6, host, addr) != 1 : inet_pton(AF_INET, host, addr) != 1)
    return mp_errorf("--listen %s: the host must be an IPv4 address, localhost or an IPv6 address in brackets", s);
  *port = (int)p;
  return NULL;
}

bool ms_host_is_ipv6(const char *host) { return strchr(host, ':') != NULL; }

bool ms_host_is_loopback(const char *host) {
  if (!ms_host_is_ipv6(host)) return !strncmp(host, "127.", 4);
  struct in6_addr a;
  return inet_pton(AF_INET6, host, &a) == 1 && (IN6_IS_ADDR_LOOPBACK(&a) ||
                                                (IN6_IS_ADDR_V4MAPPED(&a) && a.s6_addr[12] == 127)); /* ::1, ::ffff:127.x */
}

bool ms_path_match(const char *pattern, const char *path, int64_t ids[4], const char **tail) {
  int n = 0;
  *tail = NULL;
  const char *p = pattern, *u = path;
  while (*p) {
    if (*p == ':') { /* ":id" */
      p += 3;
      if (!isdigit((unsigned char)*u) || *u == '0') return false;
      int64_t v = 0;
      while (isdigit((unsigned char)*u)) {
        if (v > (INT64_MAX - 9) / 10) return false;
        v = v * 10 + (*u++ - '0');
      }
      if (n < 4) ids[n++] = v;
    } else if (*p == '*') {
      if (!*u || *u == '.') return false;
      for (const char *c = u; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '.' && *c != '-' && *c != '_') return false;
      *tail = u;
      return true;
    } else {
      if (*p != *u) return false;
      p++, u++;
    }
  }
  return *u == 0 || (u[0] == '/' && u[1] == 0); /* a trailing slash is forgiven */
}
