/* admin.h - the agent's operator endpoints on nng's HTTP server, on their
 * own address so they are never exposed with the edge listener:
 *   GET /v1/health   {"status":"ok", ...}
 *   GET /v1/status   applied seq, tenants (applied and live versions),
 *                    recent nacks, counters (docs/api.md)
 *   GET /metrics     Prometheus text */
#ifndef PC_ADMIN_H
#define PC_ADMIN_H

#include <jansson.h>

#include "err.h"
#include "metrics.h"

typedef struct pc_admin pc_admin;

/* status_cb builds the /v1/status document; it is called on an HTTP thread. */
int pc_admin_start(pc_admin **out, const char *url, pc_metrics *metrics,
                   json_t *(*status_cb)(void *arg), void *arg, pc_err *err);
void pc_admin_stop(pc_admin *a);
/* The url it listens on, with the port actually bound (url may name 0). */
const char *pc_admin_bound_url(const pc_admin *a);

#endif
