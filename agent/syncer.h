/* syncer.h - the agent's link to its controllers over req/rep: catch-up,
 * snapshots, bundle chunks and status reports. One thread, blocking calls
 * with timeouts, so the protocol reads top to bottom (docs/protocol.md,
 * "catch-up").
 *
 * Catch-up runs when the applier reports a gap or a heartbeat ahead of it,
 * at start, and every sync_interval_ms as a safety net. It asks any
 * reachable controller (trying each in turn) for the entries after the
 * applied seq, fetches bundles that were too large to travel inline in
 * chunks, applies them in order, and repeats until it reaches the head; a
 * controller that answers "snapshot required" gets a snapshot request
 * instead. Failures back off and retry; the agent never stops serving.
 *
 * Status reports go to every controller, when something changed (at most
 * every status_min_ms) and every status_interval_ms. */
#ifndef PC_SYNCER_H
#define PC_SYNCER_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"
#include "config.h"
#include "crypto.h"
#include "err.h"
#include "tls.h"
#include "metrics.h"

typedef struct pc_syncer pc_syncer;

typedef struct pc_syncer_options {
    const pc_strlist *urls; /* controllers' (or relays') sync addresses */
    pc_applier *applier;
    pc_metrics *metrics;
    const char *agent_id;
    const char *pop;
    uint64_t status_epoch;          /* grows on every start: counters never repeat */
    const pc_signing_key *identity; /* signs status reports (NULL: unsigned) */
    nng_tls_config *tls;            /* for tls+tcp:// urls */
    uint64_t request_timeout_ms;    /* one request */
    uint64_t sync_interval_ms;      /* catch-up probe even without a trigger */
    uint64_t status_interval_ms;
    uint64_t status_min_ms;
    uint32_t batch_entries;
    uint64_t batch_bytes;
    uint32_t chunk_bytes;
    size_t recv_max; /* largest reply accepted */
} pc_syncer_options;

int pc_syncer_start(pc_syncer **out, const pc_syncer_options *opt, pc_err *err);
/* Any thread: something changed; need_sync asks for a catch-up now. */
void pc_syncer_notify(pc_syncer *s, int need_sync);
/* Stops the thread: no new request is sent, a request in flight may finish
 * (at most its send and receive timeouts), then the sockets are closed. */
void pc_syncer_stop(pc_syncer *s);

#endif
