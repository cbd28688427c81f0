/* edge.h - the agent's edge listener: HTTP requests from end users, routed
 * to a tenant's live code.
 *
 * Routing (docs/operations.md, "edge"): the tenant is the X-Popcast-Tenant
 * header if present, else the first label of the Host header
 * ("acme.edge.example.com" -> "acme"). Every answer from tenant code
 * carries X-Popcast-Tenant and X-Popcast-Version (the version that ran).
 * Unknown tenant: 404; handler error or sandbox limit: 502; all isolates
 * busy: 503; each with a JSON error body, the detail logged.
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
#include "err.h"
#include "metrics.h"

typedef struct pc_edge pc_edge;

typedef struct pc_edge_options {
    const char *listen; /* "127.0.0.1:8080" or "[::1]:8080" */
    unsigned threads;   /* worker threads (0: number of CPUs) */
    size_t max_body;    /* request body limit */
    pc_adapter **adapters;
    size_t n_adapters;
    pc_metrics *metrics;
} pc_edge_options;

int pc_edge_start(pc_edge **out, const pc_edge_options *opt, pc_err *err);
void pc_edge_stop(pc_edge *e);
/* The port the edge listens on (the kernel's choice if listen named 0). */
unsigned pc_edge_bound_port(const pc_edge *e);

/* Splits "host:port" / "[v6]:port" (used by the agent's config checks). */
int pc_parse_host_port(const char *text, char *host, size_t host_cap, unsigned *port);

#endif
