/* Job events for Server-Sent Events: workers publish, any number of streams follow one job.
 * Only the newest event of a job is kept (a slow reader skips steps, never the end). */
#ifndef MP_SERVER_EVENTS_H
#define MP_SERVER_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ms_events ms_events;

ms_events *ms_events_new(void);
void ms_events_free(ms_events *ev);
/* name: "queued", "running", "progress", "done", "failed", "cancelled"; data: one line of JSON. */
void ms_events_publish(ms_events *ev, int64_t job, const char *name, const char *data, bool terminal);
/* A shared store: every event published here is also handed to fn (which sends it to the other
 * processes), after the local publish and outside the table's lock. Set once, before any publish. */
typedef void (*ms_events_forward_fn)(void *arg, int64_t job, const char *name, const char *data, bool terminal);
void ms_events_set_forward(ms_events *ev, ms_events_forward_fn fn, void *arg);
/* An event that came from another process: published here, not forwarded again. */
void ms_events_publish_local(ms_events *ev, int64_t job, const char *name, const char *data, bool terminal);
/* Wake every stream so it can end (shutdown). */
void ms_events_close(ms_events *ev);

/* A stream's view: the sequence number it has seen. Returns true when an event newer than *seq is
 * there (copied into name/data; *terminal set), false after timeout_ms or when closed (*closed). */
bool ms_events_wait(ms_events *ev, int64_t job, uint64_t *seq, char name[16], char *data, size_t cap, bool *terminal,
                    int timeout_ms, bool *closed);
/* The current sequence number of a job (0: nothing published yet). */
uint64_t ms_events_seq(ms_events *ev, int64_t job);

#endif
