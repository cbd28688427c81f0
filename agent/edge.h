/* edge.h - the agent's edge listener: HTTP requests from end users, routed
 * to a tenant's live code.
 *
 * Routing (docs/operations.md, "edge"): the tenant is the X-Popcast-Tenant
 * header if present, else the first label of the Host header
 * ("acme.edge.example.com" -> "acme"). Every answer from tenant code
 * carries X-Popcast-Tenant and X-Popcast-Version (the version that ran):
 * X-Popcast-*, framing and hop-by-hop headers set by a handler are
 * dropped, and a header that is not valid HTTP (name not a token, value
 * with a control character but HTAB) makes the answer a 502.
 * Unknown tenant: 404; handler error or sandbox limit: 502; all isolates
 * busy: 503; each with a JSON error body, the detail logged. Only statuses
 * 200-599 reach a client: a handler answering anything else gets a 502
 * (a 1xx alone is no final response).
 *
 * Requests are checked before any tenant code sees them (RFC 9112; the
 * list, with what a client sees, is docs/operations.md, "The edge's
 * limits"): a head over 32 KiB or 128 fields gets 431; ambiguous framing
 * (Content-Length with Transfer-Encoding, two lengths, a coding other than
 * chunked), a NUL, space or control character in the target, not exactly
 * one Host in HTTP/1.1, or a field that is not valid HTTP gets 400; each
 * closes the connection after the answer.
 *
 * One path is the edge's own, whatever the tenant: GET /_popcast/health
 * answers 200 {"status":"ok"} without running any tenant code (for load
 * balancers; tenants cannot use that path).
 *
 * Built on libmicrohttpd rather than nng's HTTP server: tenant code must see
 * every request header, and nng 1.5's server can only look headers up by
 * name; libmicrohttpd also gives a thread pool where each worker runs its
 * requests to completion (docs/architecture.md). */
#ifndef PC_EDGE_H
#define PC_EDGE_H

#include <stddef.h>

#include "adapter.h"
#include "append_log.h"
#include "err.h"
#include "metrics.h"
#include "tail_buffer.h"
#include "traffic.h"

typedef struct pc_edge pc_edge;

/* The largest response_header_bytes (each connection may use this much
 * memory for its answer's head). */
#define PC_EDGE_RESPONSE_HEADER_BYTES_MAX (1024 * 1024)
/* The largest max_connections. */
#define PC_EDGE_MAX_CONNECTIONS 1000000

typedef struct pc_edge_options {
    const char *listen; /* "127.0.0.1:8080" or "[::1]:8080" */
    unsigned threads;   /* worker threads (0: number of CPUs) */
    size_t max_body;    /* request body limit */
    /* Handler-set response headers (after the dropped ones): at most this
     * many, of at most this many bytes sent ("name: value\r\n" each);
     * more makes the answer a 502. Both at least 1. */
    unsigned response_headers_max;
    size_t response_header_bytes;
    /* Connections: at most max_connections open (>= 1), at most
     * max_connections_per_client from one client address (an IPv6 /64;
     * 0: no such limit); more are closed as soon as they are accepted.
     * The process's open file limit is raised to fit them, or the start
     * fails. Each request must be received and answered within
     * request_timeout_ms (>= 1), counted from the connection's accept or
     * the previous answer on it, however slowly it trickles; past it the
     * connection is closed. */
    unsigned max_connections;
    unsigned max_connections_per_client;
    unsigned request_timeout_ms;
    pc_adapter **adapters;
    size_t n_adapters;
    pc_metrics *metrics;
    /* One JSON line per request answered (docs/operations.md "Edge access
     * log"), or NULL. The caller owns it and closes it after the stop. */
    pc_append_log *access_log;
    /* Counts each request that ran a tenant version's code, by outcome
     * (NULL: none). The caller owns it and frees it after the stop. */
    pc_traffic *traffic;
    /* Tenants' log lines for popcast tail (NULL: none): for a tenant some
     * controller tails, the handler's print output, each failed request's
     * error and a sample of request lines (tail_buffer.h). */
    pc_tail_buffer *tail;
} pc_edge_options;

int pc_edge_start(pc_edge **out, const pc_edge_options *opt, pc_err *err);
void pc_edge_stop(pc_edge *e);
/* The port the edge listens on (the kernel's choice if listen named 0). */
unsigned pc_edge_bound_port(const pc_edge *e);

/* Asks the edge's own health path over the network, as a load balancer
 * would (the wildcard address as loopback): PC_OK once it answers 200
 * within timeout_ms; otherwise why (it refuses connections at
 * edge_max_connections, or does not answer). From any thread but the
 * edge's own. */
int pc_edge_probe(pc_edge *e, int timeout_ms, pc_err *err);

/* Splits "host:port" / "[v6]:port" (used by the agent's config checks). */
int pc_parse_host_port(const char *text, char *host, size_t host_cap, unsigned *port);

#endif
