/* httpd.h - small helpers around nng's HTTP server for popcast's JSON APIs
 * (the controller's REST API and the agent's admin endpoints).
 *
 * Handlers are registered without nng's body collection so that an
 * oversized or length-less body gets a JSON 4xx from us rather than nng's
 * HTML 400; pc_httpd_read_body reads the body itself. Every reply helper
 * finishes the handler's aio exactly once. */
#ifndef PC_HTTPD_H
#define PC_HTTPD_H

#include <jansson.h>
#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <nng/supplemental/http/http.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

/* Starts an HTTP server on url ("http://127.0.0.1:7070") with one tree
 * handler at prefix, for every method, calling cb. data is handed to the
 * handler (nng_http_handler_get_data). */
/* tls: the server's TLS configuration, required for an https:// url. */
int pc_httpd_start(const char *url, nng_tls_config *tls, const char *prefix, void (*cb)(nng_aio *),
                   void *data, nng_http_server **out, pc_err *err);
void pc_httpd_stop(nng_http_server *server);

/* The handler's request and its user data. */
nng_http_req *pc_httpd_request(nng_aio *aio);
void *pc_httpd_data(nng_aio *aio);

void pc_httpd_reply(nng_aio *aio, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *const *headers /* name, value, ..., NULL */);
/* Steals the reference to body. */
void pc_httpd_reply_json(nng_aio *aio, uint16_t status, json_t *body);
/* {"error": {"code": pc_err_name(code), "message": "..."}} */
void pc_httpd_reply_error(nng_aio *aio, uint16_t status, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Like pc_httpd_reply_error, for answers sent before the request body was
 * read: the unread body makes the connection unusable, so it is closed. */
void pc_httpd_reject(nng_aio *aio, uint16_t status, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The natural HTTP status for an error code. */
uint16_t pc_httpd_status_for(int code);

/* Headers added to every reply of this process (e.g. a controller's raft
 * role). fn fills up to cap (name, value) pairs into out and returns how
 * many; it runs on HTTP threads, and the strings must stay valid (static). */
typedef size_t (*pc_httpd_header_fn)(void *arg, const char **out, size_t cap);
void pc_httpd_set_extra_headers(pc_httpd_header_fn fn, void *arg);

/* Reads the request body (Content-Length only) of at most max bytes and
 * calls cb exactly once. rc == 0: body (malloc'd, NUL-terminated, owned by
 * cb) holds len bytes. rc != 0: the error reply has already been sent
 * (413 too large, 411 no length, 400 malformed length) or the connection
 * dropped; cb must only release arg. */
typedef void (*pc_httpd_body_cb)(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len);
void pc_httpd_read_body(nng_aio *aio, size_t max, pc_httpd_body_cb cb, void *arg);

/* Splits "/a/b/c?query" into segments. Empty segments are dropped. */
#define PC_HTTPD_MAX_SEGMENTS 8
typedef struct pc_httpd_path {
    char *buf;
    const char *seg[PC_HTTPD_MAX_SEGMENTS];
    size_t n;
    const char *query; /* "" when none */
} pc_httpd_path;
int pc_httpd_split_path(const char *uri, pc_httpd_path *out);
void pc_httpd_path_free(pc_httpd_path *p);

/* Copies the value of key from a query string ("a=1&b=2") into out.
 * Returns false when absent or longer than cap-1. No percent-decoding: the
 * values popcast accepts (numbers, names) never need it. */
bool pc_httpd_query_get(const char *query, const char *key, char *out, size_t cap);

/* Parses a JSON request body strictly (duplicate keys rejected). On error
 * replies 400 with the line and column and returns NULL. */
json_t *pc_httpd_parse_json(nng_aio *aio, const uint8_t *body, size_t len);

#endif
