/* connect.h - the API over the Connect protocol (docs/api.md "Connect"):
 * POST /popcast.v1.<Service>/<Method> for every REST operation
 * (proto/popcast_api.proto), in application/json or application/proto.
 *
 * A call is decoded into its REST operation (the request message's
 * fields are the operation's path and query parameters, its JSON body or
 * its bundle) and made as an inner request (httpd.h), so authentication,
 * scoping, rate limits, idempotency, redirects and every check are the
 * REST route's own; its JSON answer goes back as the method's
 * google.protobuf.Struct, its error as a Connect error. The two streams
 * (Watch, Tail) are not served here yet: they answer "unimplemented".
 *
 * Bad input (an unknown method, a content type other than these two, a
 * body that does not decode, an unknown field, a missing path parameter)
 * gets a Connect error and calls nothing. */
#ifndef PC_CONNECT_H
#define PC_CONNECT_H

#include <stdbool.h>
#include <stddef.h>

#include "httpd.h"

/* Whether target names a Connect method (/popcast.v1.…). */
bool pc_connect_is_rpc(const char *target);

/* Answers rq (a Connect call); max_body bounds its body. */
void pc_connect_serve(pc_httpd_req *rq, size_t max_body);

/* The Connect error code for popcast's error name (pc_err_name), e.g.
 * "not_found" -> "not_found", "invalid" -> "invalid_argument"; and the
 * HTTP status the Connect protocol gives that code. */
const char *pc_connect_code(const char *popcast_code, unsigned http_status);
unsigned pc_connect_http_status(const char *connect_code);

#endif
