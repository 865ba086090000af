/* A loopback file host for the server tests: every request is answered 200 with the bytes given (an
 * input_image_url to fetch, a callback to receive), after delay_ms, and counted. */
#ifndef MPASS_TESTS_SERVER_FILE_HOST_H
#define MPASS_TESTS_SERVER_FILE_HOST_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "testutil.h"

typedef struct {
  int fd, port;
  const char *body;
  size_t len;
  pthread_t th;
  atomic_int requests; /* answered so far */
  atomic_int received; /* read so far (counted before the delay) */
  atomic_int delay_ms; /* before each answer (0 from file_host_start) */
} file_host;

static inline void *file_host_main(void *arg) {
  file_host *fh = arg;
  for (;;) {
    int c = accept(fh->fd, NULL, NULL);
    if (c < 0) return NULL;
    char req[4096];
    if (recv(c, req, sizeof req, 0) > 0) {
      atomic_fetch_add(&fh->received, 1);
      const int delay = atomic_load(&fh->delay_ms);
      if (delay) usleep((useconds_t)delay * 1000);
      char h[160];
      int k = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", fh->len);
      send(c, h, (size_t)k, MSG_NOSIGNAL);
      send(c, fh->body, fh->len, MSG_NOSIGNAL);
      atomic_fetch_add(&fh->requests, 1);
    }
    close(c);
  }
}

static inline void file_host_start(file_host *fh, const char *body, size_t len) {
  fh->body = body, fh->len = len;
  atomic_init(&fh->requests, 0);
  atomic_init(&fh->received, 0);
  atomic_init(&fh->delay_ms, 0);
  fh->fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  assert_int_equal(bind(fh->fd, (struct sockaddr *)&a, sizeof a), 0);
  socklen_t al = sizeof a;
  getsockname(fh->fd, (struct sockaddr *)&a, &al);
  fh->port = ntohs(a.sin_port);
  listen(fh->fd, 8);
  pthread_create(&fh->th, NULL, file_host_main, fh);
}

static inline void file_host_stop(file_host *fh) {
  shutdown(fh->fd, SHUT_RDWR);
  close(fh->fd);
  pthread_join(fh->th, NULL);
}

#endif
