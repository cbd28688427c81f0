/* http_client.h - blocking HTTP requests over nng's HTTP client, for the
 * popcast CLI, the benchmarks and the tests: one call per connection, or
 * many over a kept one (a session). */
#ifndef PC_HTTP_CLIENT_H
#define PC_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

typedef struct pc_http_result {
    int status;
    uint8_t *body; /* NUL-terminated copy */
    size_t body_len;
    void *res; /* the nng_http_res, for header lookups */
    /* Set once a connection carried the request: after a failure, false
     * means the server cannot have acted on it (safe to send elsewhere),
     * true that it may have. */
    bool sent;
} pc_http_result;

/* base_url: "http://127.0.0.1:7070"; path: "/v1/health?x=1". headers:
 * name, value, ..., NULL (may be NULL). A transport failure or timeout is
 * an error (PC_E_UNAVAILABLE / PC_E_TIMEOUT); any HTTP status is success.
 * The request says Connection: close (one call, one connection).
 * timeout_ms > 0 bounds each step (connect, then the exchange); the call
 * returns at most 2 s after a step's timeout even when nng does not end
 * the step (an https peer that never answers the TLS handshake), leaving
 * that call's memory and connection behind (pc_http_abandoned_calls). */
int pc_http_call(const char *base_url, const char *method, const char *path,
                 const char *const *headers, const void *body, size_t body_len, int timeout_ms,
                 pc_http_result *out, pc_err *err);
const char *pc_http_result_header(const pc_http_result *r, const char *name);
/* Whether the server let the connection carry another request (its
 * answer has no Connection: close). */
bool pc_http_result_kept(const pc_http_result *r);

/* A session: calls to one server over one kept connection (HTTP/1.1
 * keep-alive), for a client making many. A call connects when the session
 * has no connection; the connection is closed after a failed call or an
 * answer with Connection: close, and the next call connects again. A
 * failed call is not repeated (it may have been acted on: out->sent).
 * Calls as pc_http_call (timeouts, abandoned https calls, results); one
 * thread at a time per session. */
typedef struct pc_http_session pc_http_session;
int pc_http_session_open(const char *base_url, pc_http_session **out, pc_err *err);
int pc_http_session_call(pc_http_session *s, const char *method, const char *path,
                         const char *const *headers, const void *body, size_t body_len,
                         int timeout_ms, pc_http_result *out, pc_err *err);
/* How many connections the session's calls opened. */
uint64_t pc_http_session_connections(const pc_http_session *s);
void pc_http_session_close(pc_http_session *s); /* NULL: no-op */

/* A GET whose answer is a stream (Server-Sent Events): on_head(arg,
 * status) once the head is in, then on_body(arg, data, len) with each
 * piece of the body as it comes, until the server closes (PC_OK), on_body
 * returns false (PC_OK), or nothing came for idle_ms (PC_E_TIMEOUT; 0:
 * wait forever). Connecting and the head take at most 10 s (or idle_ms if
 * shorter). Transport failures and timeouts as pc_http_call. */
int pc_http_stream(const char *base_url, const char *path, const char *const *headers, int idle_ms,
                   void (*on_head)(void *arg, int status),
                   bool (*on_body)(void *arg, const char *data, size_t len), void *arg,
                   pc_err *err);

/* The TLS client configuration for https:// calls from this process (the
 * CA to trust, see tls.h); NULL: https calls fail. Not thread safe: set it
 * before calling. */
struct nng_tls_config;
void pc_http_set_tls(struct nng_tls_config *cfg);
/* How many calls this process gave up on because nng never ended one of
 * their steps (each left its memory and connection behind). */
uint64_t pc_http_abandoned_calls(void);
void pc_http_result_free(pc_http_result *r);

#endif
