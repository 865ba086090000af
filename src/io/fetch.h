/* Fetching an input image named by URL (input_image_url / mask_image_url, SPEC.md §1.1): http and
 * https only, a size cap, a timeout, the content sniffed (PNG or JPEG; WebP and anything else
 * refused by name). The server also refuses private, loopback and link-local addresses (checked on
 * the connected address, so a redirect or a DNS answer cannot reach the inside). */
#ifndef MP_IO_FETCH_H
#define MP_IO_FETCH_H

#include <stdbool.h>
#include <stddef.h>

#include "core/error.h"

typedef struct {
  size_t max_bytes;  /* 0: 20 MiB */
  long timeout_s;    /* 0: 30 s for the whole transfer */
  bool public_only;  /* refuse loopback, private (RFC 1918, fc00::/7), link-local and unspecified addresses */
} mp_fetch_limits;

/* Download url to dest_path (created or replaced). `what` names the field in messages. */
mp_error *mp_fetch_image(const char *what, const char *url, const mp_fetch_limits *lim, const char *dest_path);

#endif
