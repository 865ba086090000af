/* Callbacks: POST {"prompt": {...}} to the job's URL with libcurl. Three tries (backoff 1 s, 2 s),
 * a short timeout, http/https only, every attempt recorded on the job. A failed callback never
 * fails the job: the prompt can still be polled. */
#include <curl/curl.h>
#include <string.h>
#include <unistd.h>

#include "server/internal.h"

static size_t discard(char *p, size_t sz, size_t n, void *u) {
  (void)p, (void)u;
  return sz * n;
}

void ms_callback_deliver(ms_store *store, int64_t job_id, const char *url, const char *body, const atomic_int *stopping) {
  for (int attempt = 1; attempt <= 3; attempt++) {
    CURL *c = curl_easy_init();
    if (!c) return;
    char err[CURL_ERROR_SIZE] = "";
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "mpass-serve/" "0.1");
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    bool ok = rc == CURLE_OK && status >= 200 && status < 300;
    char msg[CURL_ERROR_SIZE + 64];
    if (rc != CURLE_OK) snprintf(msg, sizeof msg, "%s", err[0] ? err : curl_easy_strerror(rc));
    else if (!ok) snprintf(msg, sizeof msg, "the receiver answered HTTP %ld", status);
    mp_error_free(store->callback_attempt(store, job_id, attempt, status, ok ? NULL : msg));
    if (ok || attempt == 3) return;
    for (int t = 0; t < attempt * 10 && !atomic_load(stopping); t++) usleep(100 * 1000); /* 1 s, then 2 s */
    if (atomic_load(stopping)) return;
  }
}
