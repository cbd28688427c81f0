/* httpd.h - popcast's JSON HTTP servers (the controller's REST API and the
 * agent's admin endpoints) on nng's HTTP server.
 *
 * A server calls its handler once per request with a pc_httpd_req, which
 * lives until the request is answered: every request is answered exactly
 * once, through one of the reply functions below, from any thread and at
 * any later time (long polls). After the reply the pc_httpd_req is gone.
 *
 * Bodies are not collected by nng (an oversized body, or one in a coding
 * other than chunked, gets a JSON 4xx from us rather than nng's HTML 400;
 * nng 1.5 reads no chunked bodies at all): a handler that wants the
 * body calls pc_httpd_read_body. A request whose body was never read is
 * answered with "Connection: close", so bytes of an unread body can never
 * be taken for the next request on that connection (request smuggling);
 * so is every request when the server does not keep connections alive.
 *
 * Errors are answered with one writer, pc_httpd_error: the HTTP status
 * comes from the error code (pc_httpd_status_for), the body is
 * {"error": {"code": pc_err_name(code), "message": "..."}}, and a message
 * that is not valid UTF-8 is escaped rather than lost. */
#ifndef PC_HTTPD_H
#define PC_HTTPD_H

#include <jansson.h>
#include <nng/nng.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/tls/tls.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct pc_httpd pc_httpd;
typedef struct pc_httpd_req pc_httpd_req;

/* Headers a server adds to every one of its replies (e.g. a controller's
 * raft role, CORS). Fills up to cap (name, value) pairs into out (2*cap
 * strings, which must stay valid until the reply is sent: static, or the
 * request's own headers) and returns how many. Runs on HTTP threads. */
typedef size_t (*pc_httpd_header_fn)(void *data, const pc_httpd_req *rq, const char **out,
                                     size_t cap);

typedef struct pc_httpd_options {
    const char *url;     /* "http://127.0.0.1:7070" or https:// */
    nng_tls_config *tls; /* required for an https:// url */
    void (*handler)(pc_httpd_req *rq);
    void *data;                 /* pc_httpd_data() */
    pc_httpd_header_fn headers; /* optional */
    /* Keep a connection open for the client's next request (HTTP/1.1
     * persistent connections) when nng is sure to read that request from
     * where the last one ended; false: one request per connection. */
    bool keep_alive;
} pc_httpd_options;

/* A url naming port 0 gets a port chosen by the kernel (read it with
 * pc_httpd_bound_url). */
int pc_httpd_start(pc_httpd **out, const pc_httpd_options *opt, pc_err *err);
/* The url the server listens on, with the port it actually bound. */
const char *pc_httpd_bound_url(const pc_httpd *s);
/* Waits for handlers running now; requests still unanswered (long polls)
 * must be answered by their owners before or during the stop. */
void pc_httpd_stop(pc_httpd *s);

/* The request. */
void *pc_httpd_data(const pc_httpd_req *rq);
const char *pc_httpd_method(const pc_httpd_req *rq);
const char *pc_httpd_target(const pc_httpd_req *rq); /* path and query */
const char *pc_httpd_header(const pc_httpd_req *rq, const char *name);

/* Called once when the request ends, on the thread that ends it: with
 * the status and body answered, or status 0 when it ended unanswered (its
 * connection failed). For an audit of what was asked and answered. */
typedef void (*pc_httpd_done_fn)(void *arg, uint16_t status, const void *body, size_t len);
void pc_httpd_on_done(pc_httpd_req *rq, pc_httpd_done_fn done, void *arg);

/* Inner requests: a handler asks another of its server's routes, as if a
 * client had (the Connect protocol runs the REST handlers this way,
 * controller/connect.c). The inner request has its own method, target,
 * Content-Type and body; every other header is the outer request's (its
 * Authorization, Idempotency-Key, ...). The server's handler gets it like
 * any request, on this thread; it is answered once, from any thread, into
 * answered(arg, status, content_type, body, len, headers) (headers as
 * given to the reply functions, without the server's own) instead of a
 * connection; then it is gone. The outer request stays the caller's to
 * answer, unless a stream takes it (below). PC_E_NOMEM when out of memory
 * (nothing was called). */
typedef void (*pc_httpd_answered_fn)(void *arg, uint16_t status, const char *content_type,
                                     const void *body, size_t len, const char *const *headers);

/* How an inner request's stream answer reaches the outer connection (a
 * Connect server stream carries the SSE of GET /v1/watch): the head says
 * content_type, and each write's bytes go through transform (malloc'd
 * bytes in their place, *out_len of them; 0 writes nothing; NULL fails
 * the write). release(arg) once the stream is closed, or when the inner
 * request is answered instead of streamed. */
typedef struct pc_httpd_stream_filter {
    const char *content_type;
    uint8_t *(*transform)(void *arg, const void *in, size_t len, size_t *out_len);
    void (*release)(void *arg);
    void *arg;
} pc_httpd_stream_filter;

/* filter NULL: a stream answer is refused (answered 500). With a filter,
 * a stream answer takes the outer request's connection: then answered is
 * never called, and the outer request is over. */
int pc_httpd_inner_call(pc_httpd_req *outer, const char *method, const char *target,
                        const char *content_type, const void *body, size_t len,
                        pc_httpd_answered_fn answered, void *arg,
                        const pc_httpd_stream_filter *filter);

/* A stream answer (Server-Sent Events): the request's connection, taken
 * over from nng's server. pc_httpd_stream_start answers 200 with
 * content_type, "Cache-Control: no-cache", "Connection: close", the
 * server's headers and headers, and no length: the body is what the
 * stream writes until it is closed. The request is over once it returns:
 * ready(arg, st) follows on an nng thread once the head is written, with
 * NULL when it could not be (out of memory: the request was answered
 * with an error; or the peer went away). */
typedef struct pc_httpd_stream pc_httpd_stream;
void pc_httpd_stream_start(pc_httpd_req *rq, const char *content_type, const char *const *headers,
                           void (*ready)(void *arg, pc_httpd_stream *st), void *arg);
/* Writes len bytes of buf (which must stay valid until cb), one write at
 * a time; cb(arg, rv) on an nng thread when it ended, rv != 0 when the
 * peer is gone or timeout_ms passed first. */
void pc_httpd_stream_write(pc_httpd_stream *st, const void *buf, size_t len, int timeout_ms,
                           void (*cb)(void *arg, int rv), void *arg);
/* Cancels a write in flight (waiting for its cb to return), closes the
 * connection and frees the stream. Never from inside a write's cb. */
void pc_httpd_stream_close(pc_httpd_stream *st);

/* Answers. Each one finishes the request; headers are (name, value, ...,
 * NULL) pairs or NULL. An answer carries Connection: close (and nng
 * closes the connection after it) unless the server keeps connections
 * alive (keep_alive) and nng will read the next request from exactly
 * where this one ended: the declared body, if any, was read whole, the
 * request has no Transfer-Encoding, and no framing header is hidden from
 * nng by a blank before its colon (see httpd.c). */
void pc_httpd_reply(pc_httpd_req *rq, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *const *headers);
/* Steals the reference to body (NULL: answered as out of memory). */
void pc_httpd_reply_json(pc_httpd_req *rq, uint16_t status, json_t *body,
                         const char *const *headers);
void pc_httpd_error(pc_httpd_req *rq, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void pc_httpd_error_with(pc_httpd_req *rq, int code, const char *const *headers, const char *fmt,
                         ...) __attribute__((format(printf, 4, 5)));
/* The one mapping from error codes to HTTP statuses. */
uint16_t pc_httpd_status_for(int code);

/* Reads the request body (by Content-Length, or Transfer-Encoding:
 * chunked, decoded by http-parser; every byte within 30 s) of at most max
 * bytes and calls cb exactly once. rc == 0: body (malloc'd, NUL-terminated,
 * owned by cb) holds len bytes, and rq must still be answered. rc != 0:
 * the request is already answered (413 too large, 411 a transfer coding
 * other than chunked, 400 malformed length or chunks) or its connection
 * dropped or timed out; rq is gone and cb must only release arg. An inner
 * request's body is handed over as it is. */
typedef void (*pc_httpd_body_cb)(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len);
void pc_httpd_read_body(pc_httpd_req *rq, size_t max, pc_httpd_body_cb cb, void *arg);

/* Copies the value of key from a query string ("a=1&b=2") into out.
 * Returns false when absent or longer than cap-1. No percent-decoding: the
 * values popcast accepts (numbers, names) never need it. */
bool pc_httpd_query_get(const char *query, const char *key, char *out, size_t cap);
/* The value of key in a query string, percent-decoded ("+" is a space),
 * for free text: PC_OK, PC_E_NOTFOUND when absent, PC_E_INVALID for a
 * malformed escape, an encoded NUL, or more than cap-1 decoded bytes. */
int pc_httpd_query_text(const char *query, const char *key, char *out, size_t cap);

#endif
