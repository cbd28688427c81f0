/* admin.h - the agent's operator endpoints on nng's HTTP server, on their
 * own address so they are never exposed with the edge listener:
 *   GET /v1/health   {"status":"ok", ...}
 *   GET /livez, /readyz   health.h's checks, which check_cb adds
 *   GET /v1/status   applied seq, tenants (applied and live versions),
 *                    recent nacks, counters (docs/api.md)
 *   GET /metrics     Prometheus text */
#ifndef PC_ADMIN_H
#define PC_ADMIN_H

#include <jansson.h>

#include "err.h"
#include "health.h"
#include "metrics.h"
#include "router.h"

typedef struct pc_admin pc_admin;

/* status_cb writes the /v1/status document: JSON text, malloc'd, its
 * length in *len (NULL: out of memory); check_cb adds the checks of
 * r->endpoint ("livez" or "readyz") to r. Both are called on an HTTP
 * thread. */
typedef struct pc_admin_callbacks {
    char *(*status_cb)(void *arg, size_t *len);
    void (*check_cb)(void *arg, pc_health_report *r);
    void *arg;
} pc_admin_callbacks;
int pc_admin_start(pc_admin **out, const char *url, pc_metrics *metrics,
                   const pc_admin_callbacks *cb, pc_err *err);
void pc_admin_stop(pc_admin *a);
/* The url it listens on, with the port actually bound (url may name 0). */
const char *pc_admin_bound_url(const pc_admin *a);

/* The i-th route the admin server answers, NULL past the last (tests
 * hold the table against docs/openapi-agent.yaml). */
const pc_route *pc_admin_route(size_t i);

#endif
