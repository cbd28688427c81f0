/* syncer.h - the agent's link to its controllers over req/rep: catch-up,
 * snapshots, bundle chunks and status reports (docs/protocol.md,
 * "catch-up" and "status reports").
 *
 * Catch-up and reports never wait for each other, and a dead or slow
 * controller delays neither:
 *
 *  - Catch-up runs on its own thread, with blocking calls so the protocol
 *    reads top to bottom, on one req socket per controller used by nothing
 *    else. It runs when the applier reports a gap or a heartbeat ahead of
 *    it, at start, and every sync_interval_ms as a safety net. It asks one
 *    controller at a time for the entries after the applied seq, fetches
 *    bundles that were too large to travel inline in chunks, applies them
 *    in order, and repeats until it reaches the head; a controller that
 *    answers "snapshot required" gets a snapshot request instead. The
 *    controllers are tried connected ones first (nng pipe events tell),
 *    then by health (fewest failures in a row), then the one that answered
 *    last; a controller with no connection is given connect_timeout_ms to
 *    get one, never request_timeout_ms. Failures back off and retry; the
 *    agent never stops serving.
 *
 *  - With relays (opt.relays), catch-up asks a healthy relay before any
 *    controller, and reports go to one relay (the first that answers),
 *    which forwards them in batches; while no relay answers they go to
 *    every controller, and the relays are tried again after 10 s.
 *
 *  - Status reports go to every controller, when something changed (at
 *    most every status_min_ms), when the agent becomes stale or fresh, and
 *    every status_interval_ms. A report thread builds and signs each report
 *    once and hands it to one asynchronous sender per controller (its own
 *    req socket and nng aio): a controller that does not answer holds only
 *    its own sender, which sends the latest report when its request ends.
 *
 * pc_syncer_notify may be called from any thread. */
#ifndef PC_SYNCER_H
#define PC_SYNCER_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"
#include "traffic.h"
#include "config.h"
#include "crypto.h"
#include "err.h"
#include "tls.h"
#include "metrics.h"

typedef struct pc_syncer pc_syncer;

typedef struct pc_syncer_options {
    const pc_strlist *urls;   /* controllers' sync addresses */
    const pc_strlist *relays; /* PoP relays' sync addresses (may be NULL): tried first */
    pc_applier *applier;
    pc_metrics *metrics;
    const char *agent_id;
    const char *pop;
    uint64_t report_floor;          /* counters start above it (pc_registry_next_report_floor) */
    const pc_signing_key *identity; /* signs status reports (NULL: unsigned) */
    nng_tls_config *tls;            /* for tls+tcp:// urls */
    uint64_t request_timeout_ms;    /* one request's answer */
    uint64_t connect_timeout_ms;    /* catch-up: wait this long for a connection */
    uint64_t sync_interval_ms;      /* catch-up probe even without a trigger */
    uint64_t status_interval_ms;
    uint64_t status_min_ms;
    /* Request counts per tenant version (NULL: none): published every
     * traffic_interval_ms and shown in the reports built after. */
    pc_traffic *traffic;
    uint64_t traffic_interval_ms;
    uint32_t batch_entries;
    uint64_t batch_bytes;
    uint32_t chunk_bytes;
    size_t recv_max; /* largest reply accepted */
} pc_syncer_options;

int pc_syncer_start(pc_syncer **out, const pc_syncer_options *opt, pc_err *err);
/* Any thread: something changed; need_sync asks for a catch-up now. */
void pc_syncer_notify(pc_syncer *s, int need_sync);
/* Stops both threads: no new request is sent; a catch-up request in
 * flight may finish (at most its send and receive timeouts); reports in
 * flight are cancelled. Then the sockets are closed. */
void pc_syncer_stop(pc_syncer *s);

#endif
