/* Input images by URL, with libcurl. */
#include "io/fetch.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
  FILE *f;
  size_t n, max;
  unsigned char head[12];
  bool too_big, refused_address;
  bool public_only;
} transfer;

static size_t on_data(char *p, size_t sz, size_t nm, void *u) {
  transfer *t = u;
  size_t k = sz * nm;
  if (t->n + k > t->max) {
    t->too_big = true;
    return 0; /* aborts the transfer */
  }
  for (size_t i = 0; i < k && t->n + i < sizeof t->head; i++) t->head[t->n + i] = (unsigned char)p[i];
  if (fwrite(p, 1, k, t->f) != k) return 0;
  t->n += k;
  return k;
}

static bool is_inside_v4(uint32_t a) { /* host order */
  return (a >> 24) == 10 || (a >> 24) == 127 || (a >> 24) == 0 || (a >> 20) == (172u << 4 | 1) ||
         (a >> 16) == (192u << 8 | 168) || (a >> 16) == (169u << 8 | 254) || (a >> 22) == (100u << 2 | 1) /* 100.64/10 */ ||
         a >= 0xE0000000u /* multicast, reserved */;
}

static bool is_inside(const struct sockaddr *sa) {
  if (sa->sa_family == AF_INET) return is_inside_v4(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
  if (sa->sa_family == AF_INET6) {
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t zero[16];
    if (!memcmp(b, zero, 15) && (b[15] == 0 || b[15] == 1)) return true;               /* :: and ::1 */
    if ((b[0] & 0xFE) == 0xFC || (b[0] == 0xFE && (b[1] & 0xC0) == 0x80)) return true; /* fc00::/7, fe80::/10 */
    if (!memcmp(b, zero, 10) && b[10] == 0xFF && b[11] == 0xFF)                         /* ::ffff:a.b.c.d */
      return is_inside_v4((uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15]);
    return false;
  }
  return true;
}

static curl_socket_t open_socket(void *u, curlsocktype purpose, struct curl_sockaddr *a) {
  transfer *t = u;
  if (purpose != CURLSOCKTYPE_IPCXN || (t->public_only && is_inside(&a->addr))) {
    t->refused_address = true;
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype, a->protocol);
}

mp_error *mp_fetch_image(const char *what, const char *url, const mp_fetch_limits *lim, const char *dest_path) {
  if (!url || (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)))
    return mp_errorf("%s: only http:// and https:// URLs are fetched, found '%.200s'", what, url ? url : "");
  mp_fetch_limits d = {0};
  if (!lim) lim = &d;
  transfer t = {.max = lim->max_bytes ? lim->max_bytes : (20u << 20), .public_only = lim->public_only};
  t.f = fopen(dest_path, "wb");
  if (!t.f) return mp_errorf("%s: cannot write %s (%s)", what, dest_path, strerror(errno));
  CURL *c = curl_easy_init();
  if (!c) {
    fclose(t.f);
    unlink(dest_path);
    return mp_errorf("%s: cannot start libcurl", what);
  }
  char err[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, lim->timeout_s > 0 ? lim->timeout_s : 30L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t.max);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, &t);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "mpass/0.1");
  CURLcode rc = curl_easy_perform(c);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  bool closed = fclose(t.f) == 0;
  mp_error *e = NULL;
  if (t.refused_address)
    e = mp_errorf("%s: %.200s resolves to a private, loopback or link-local address; this server fetches public URLs only", what, url);
  else if (t.too_big || rc == CURLE_FILESIZE_EXCEEDED)
    e = mp_errorf("%s: %.200s is larger than the limit of %zu bytes", what, url, t.max);
  else if (rc == CURLE_OPERATION_TIMEDOUT)
    e = mp_errorf("%s: fetching %.200s took longer than %ld s", what, url, lim->timeout_s > 0 ? lim->timeout_s : 30L);
  else if (rc != CURLE_OK)
    e = mp_errorf("%s: cannot fetch %.200s: %s", what, url, err[0] ? err : curl_easy_strerror(rc));
  else if (status != 200)
    e = mp_errorf("%s: %.200s answered HTTP %ld, expected 200", what, url, status);
  else if (!closed)
    e = mp_errorf("%s: cannot write %s", what, dest_path);
  else if (t.n >= 12 && !memcmp(t.head, "RIFF", 4) && !memcmp(t.head + 8, "WEBP", 4))
    e = mp_errorf("%s: %.200s is a WebP image; WebP is not supported: give a PNG or JPEG", what, url);
  else if (!(t.n >= 8 && !memcmp(t.head, "\x89PNG\r\n\x1a\n", 8)) && !(t.n >= 3 && t.head[0] == 0xFF && t.head[1] == 0xD8 && t.head[2] == 0xFF))
    e = mp_errorf("%s: %.200s is not a PNG or JPEG image", what, url);
  if (e) unlink(dest_path);
  return e;
}
