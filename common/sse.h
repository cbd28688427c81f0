/* sse.h - reading a Server-Sent Events stream (text/event-stream) as it
 * arrives, for the clients of GET /v1/watch (the CLI, tests, benchmarks).
 *
 * Bytes go in as they come (pc_sse_feed), in pieces of any size; each
 * event, once its blank line arrived, comes out whole: its id, event type
 * and data (one "data:" line; popcast's events have one). Lines end with
 * "\n", as popcast writes them (a "\r" before it is dropped). Comment lines
 * (":"), fields without a value and unknown fields are skipped; an event
 * with no "event:" line is "message", as the SSE specification says. A
 * line longer than PC_SSE_LINE_MAX makes the stream malformed: feed
 * returns false and reads nothing more. */
#ifndef PC_SSE_H
#define PC_SSE_H

#include <stdbool.h>
#include <stddef.h>

#define PC_SSE_LINE_MAX (4u << 20)

typedef struct pc_sse_event {
    const char *id;   /* "" when the event had none */
    const char *type; /* "message" when it had none */
    const char *data; /* "" when it had none */
} pc_sse_event;

/* Returns false to stop reading (pc_sse_feed then returns false). */
typedef bool (*pc_sse_event_fn)(void *arg, const pc_sse_event *e);

typedef struct pc_sse {
    char *buf; /* bytes of the event being read */
    size_t len, cap;
    bool failed;
} pc_sse;

/* Reads data; calls on_event for each event it completes. false when
 * on_event asked to stop, the stream is malformed, or memory ran out. */
bool pc_sse_feed(pc_sse *p, const char *data, size_t len, pc_sse_event_fn on_event, void *arg);
/* Frees its buffer; p can read a new stream after. */
void pc_sse_free(pc_sse *p);

#endif
