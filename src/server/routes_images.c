/* /images/:id/<file>: a job's PNGs (and contact sheets), with ETag; /metrics. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/internal.h"

MHD_RESULT ms_route_image(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  ms_job j;
  bool found;
  mp_error *e = s->store->job_get(s->store, r->owner, ids[0], &j, &found);
  if (e) return ms_reply_mp_error(s, r, 500, e);
  if (!found) return ms_reply_error(r->conn, 404, "no prompt %" PRId64, ids[0]);
  if (j.expired_at) { /* retention.c removed its files: gone for good, not "not found" */
    MHD_RESULT ret = ms_reply_error(r->conn, 410, "prompt %" PRId64 "'s images and files were removed at %s (the server's retention period)",
                                    ids[0], j.expired_at);
    ms_job_free(&j);
    return ret;
  }
  bool done = j.status == MS_DONE;
  if (done) ms_outputs_local(s, &j); /* finished on another machine: its outputs come from the store */
  if (!done) {
    ms_job_free(&j);
    return ms_reply_error(r->conn, 404, "prompt %" PRId64 " has no images yet", ids[0]);
  }
  const char *ext = strrchr(tail, '.');
  const char *type = !ext ? NULL : !strcmp(ext, ".png") ? "image/png" : !strcmp(ext, ".jpg") ? "image/jpeg"
                                 : !strcmp(ext, ".json") ? "application/json" : NULL;
  if (!type) {
    ms_job_free(&j);
    return ms_reply_error(r->conn, 404, "no image %s", tail);
  }
  char dir[4096], path[4400];
  ms_job_dir(s, ids[0], dir, sizeof dir);
  snprintf(path, sizeof path, "%s/%s", dir, tail);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    if (fd >= 0) close(fd);
    ms_job_free(&j);
    return ms_reply_error(r->conn, 404, "no image %s in prompt %" PRId64, tail, ids[0]);
  }
  /* result.json as a client sees it: the library's file names server paths (prompt_json.c) */
  char *public_json = NULL;
  if (!strcmp(tail, "result.json")) {
    cJSON *res = ms_result_public(&j, s->data_dir, s->models_dir);
    public_json = res ? cJSON_Print(res) : NULL;
    cJSON_Delete(res);
    if (!public_json) {
      close(fd);
      ms_job_free(&j);
      return ms_reply_error(r->conn, 500, "cannot read result.json of prompt %" PRId64, ids[0]);
    }
  }
  ms_job_free(&j);
  /* outputs never change once written: size and modification time name the version */
  char etag[96];
  /* the translated result.json is another representation of the file: its own tag */
  snprintf(etag, sizeof etag, "\"%" PRId64 "-%lld-%lld%s\"", ids[0], (long long)st.st_size, (long long)st.st_mtime,
           public_json ? "-public" : "");
  const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "If-None-Match");
  struct MHD_Response *resp;
  unsigned status = 200;
  if (inm && strstr(inm, etag)) {
    close(fd);
    resp = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    status = 304;
  } else if (public_json) {
    close(fd);
    resp = MHD_create_response_from_buffer(strlen(public_json), public_json, MHD_RESPMEM_MUST_COPY);
  } else {
    resp = MHD_create_response_from_fd((uint64_t)st.st_size, fd);
  }
  free(public_json);
  if (!resp) return MHD_NO;
  MHD_add_response_header(resp, "ETag", etag);
  MHD_add_response_header(resp, "Cache-Control", "private, max-age=31536000, immutable");
  if (status == 200) MHD_add_response_header(resp, "Content-Type", type);
  MHD_RESULT ret = MHD_queue_response(r->conn, status, resp);
  MHD_destroy_response(resp);
  return ret;
}

MHD_RESULT ms_route_metrics(ms_server *s, ms_request *r, const int64_t *ids, const char *tail) {
  (void)ids, (void)tail;
  char *text = ms_metrics_render(s);
  if (!text) return ms_reply_error(r->conn, 500, "cannot read the job counts");
  MHD_RESULT ret = ms_reply(r->conn, 200, "text/plain; version=0.0.4", text, strlen(text));
  free(text);
  return ret;
}
