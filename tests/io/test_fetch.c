/* Input images by URL: a loopback HTTP server in a thread answers each path with a PNG, a WebP,
 * text, a 404, a large body, or nothing at all. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/fetch.h"
#include "io/image.h"
#include "testutil.h"

typedef struct {
  int fd, port;
  char *png;
  size_t png_len;
  pthread_t th;
} web;

static void answer(int c, const char *status, const void *body, size_t n) {
  char h[256];
  int k = snprintf(h, sizeof h, "HTTP/1.1 %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status, n);
  send(c, h, (size_t)k, MSG_NOSIGNAL);
  if (n) send(c, body, n, MSG_NOSIGNAL);
}

static void *serve(void *arg) {
  web *w = arg;
  for (;;) {
    int c = accept(w->fd, NULL, NULL);
    if (c < 0) return NULL;
    char req[2048] = "";
    ssize_t got = recv(c, req, sizeof req - 1, 0);
    if (got <= 0) { close(c); continue; }
    if (!strncmp(req, "GET /img.png ", 13)) answer(c, "200 OK", w->png, w->png_len);
    else if (!strncmp(req, "GET /img.webp ", 14)) answer(c, "200 OK", "RIFF\x10\0\0\0WEBPVP8 data", 20);
    else if (!strncmp(req, "GET /text ", 10)) answer(c, "200 OK", "hello, not an image", 19);
    else if (!strncmp(req, "GET /big ", 9)) {
      size_t n = 3u << 20;
      char *b = calloc(1, n);
      memcpy(b, "\x89PNG\r\n\x1a\n", 8);
      answer(c, "200 OK", b, n);
      free(b);
    } else if (!strncmp(req, "GET /redirect ", 14)) {
      const char *h = "HTTP/1.1 302 Found\r\nLocation: /img.png\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      send(c, h, strlen(h), MSG_NOSIGNAL);
    } else if (!strncmp(req, "GET /slow ", 10)) {
      sleep(3); /* longer than the test's timeout */
    } else answer(c, "404 Not Found", "", 0);
    close(c);
  }
}

static int setup(void **state) {
  web *w = calloc(1, sizeof *w);
  char *p = test_shared_path("golden/tiny/init_image.png");
  FILE *f = fopen(p, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  w->png_len = (size_t)ftell(f);
  rewind(f);
  w->png = malloc(w->png_len);
  assert_int_equal(fread(w->png, 1, w->png_len, f), w->png_len);
  fclose(f), free(p);
  w->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(w->fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t al = sizeof a;
  getsockname(w->fd, (struct sockaddr *)&a, &al);
  w->port = ntohs(a.sin_port);
  listen(w->fd, 16);
  pthread_create(&w->th, NULL, serve, w);
  *state = w;
  return 0;
}

static int teardown(void **state) {
  web *w = *state;
  shutdown(w->fd, SHUT_RDWR);
  close(w->fd);
  pthread_join(w->th, NULL);
  free(w->png), free(w);
  return 0;
}

static mp_error *fetch(web *w, const char *path, const mp_fetch_limits *lim, char *dest) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", w->port, path);
  char *dir = test_tmpdir();
  snprintf(dest, 512, "%s/got", dir);
  free(dir);
  return mp_fetch_image("input_image_url", url, lim, dest);
}

static void test_fetch_png(void **state) {
  web *w = *state;
  char dest[512];
  mp_fetch_limits lim = {.timeout_s = 5};
  assert_ok(fetch(w, "/img.png", &lim, dest));
  mp_image img;
  assert_ok(mp_image_read(dest, 3, &img));
  assert_true(img.width > 0);
  mp_image_free(&img);
  assert_ok(fetch(w, "/redirect", &lim, dest)); /* http redirects are followed */
}

static void test_refusals(void **state) {
  web *w = *state;
  char dest[512];
  mp_fetch_limits lim = {.timeout_s = 1, .max_bytes = 1u << 20};
  struct stat st;
  assert_err_contains(fetch(w, "/img.webp", &lim, dest), "WebP");
  assert_int_not_equal(stat(dest, &st), 0); /* nothing left behind */
  assert_err_contains(fetch(w, "/text", &lim, dest), "not a PNG or JPEG");
  assert_err_contains(fetch(w, "/missing", &lim, dest), "HTTP 404");
  assert_err_contains(fetch(w, "/big", &lim, dest), "larger than the limit");
  assert_err_contains(fetch(w, "/slow", &lim, dest), "longer than 1 s");
  mp_fetch_limits pub = {.timeout_s = 5, .public_only = true};
  assert_err_contains(fetch(w, "/img.png", &pub, dest), "private, loopback");
  assert_err_contains(mp_fetch_image("input_image_url", "file:///etc/passwd", &lim, dest), "only http:// and https://");
  assert_err_contains(mp_fetch_image("mask_image_url", "ftp://example.com/a.png", &lim, dest), "mask_image_url");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_fetch_png), cmocka_unit_test(test_refusals)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
