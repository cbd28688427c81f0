/* edge_prober.h - the edge's health, asked in the background for /readyz.
 *
 * /readyz asks the edge as a load balancer would (docs/operations.md
 * "Health"). Asked from the admin server's request, a wedged or saturated
 * edge held an admin thread for the probe's whole timeout, so a few
 * concurrent probers could stall /metrics and /livez too. A thread of its
 * own asks instead, once at start and then every interval; /readyz reads
 * the last answer and never waits.
 *
 * Invariant: a result is "ok" only if the last probe completed and
 * succeeded, and it completed at most interval + timeout + 1 s ago (a
 * probe thread that stopped answering makes the agent not ready, it does
 * not leave it ready on an old answer). */
#ifndef PC_EDGE_PROBER_H
#define PC_EDGE_PROBER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "edge.h"
#include "err.h"
#include "metrics.h"

typedef struct pc_edge_prober pc_edge_prober;

/* Probes edge once now (so the result exists when this returns), then
 * every interval_ms from a thread of its own, each probe bounded by
 * timeout_ms. Counts probes in popcast_agent_edge_probes_total (metrics
 * may be NULL). edge must outlive the prober. */
int pc_edge_prober_start(pc_edge_prober **out, pc_edge *edge, uint64_t interval_ms,
                         uint64_t timeout_ms, pc_metrics *metrics, pc_err *err);

/* Any thread: whether the edge answered its last probe; if not, why (in
 * why, always terminated). */
bool pc_edge_prober_ok(pc_edge_prober *p, char *why, size_t why_len);

/* Stops and joins the thread (waits for a probe in progress, at most its
 * timeout), then frees p. NULL is a no-op. */
void pc_edge_prober_stop(pc_edge_prober *p);

#endif
