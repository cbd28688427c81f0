/* sync_server.h - the controller's req/rep endpoint: what makes delivery a
 * guarantee rather than a hope.
 *
 * Agents (and relays) ask here for:
 *   sync      entries after a seq, bounded by count and bytes; bundles over
 *             inline_max are omitted (fetched in chunks), and an agent too
 *             far behind (or new) is told to take a snapshot instead;
 *   snapshot  every tenant's latest entry, read in one LMDB transaction,
 *             with the key rotations up to its seq and a SnapshotAssertion
 *             (seq, head, digests of what it carries, time) signed with
 *             the key current at that seq;
 *   chunk     a slice of a bundle by hash;
 *   status    the agent's signed report, verified with the key bound to
 *             its id (or binding one on first use), handed to the rollout
 *             tracker;
 *   tail      tenants' log lines from an agent, signed with its bound key,
 *             handed to the tails (watch.h); the answer names the tenants
 *             tailed now, which is all a batch with no lines asks.
 * Every reply fits in max_reply bytes, so an agent's receive limit is never
 * hit by accident. Requests are served concurrently (nng contexts) on nng
 * threads, reading LMDB directly. */
#ifndef PC_SYNC_SERVER_H
#define PC_SYNC_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tls.h"
#include "metrics.h"
#include "pipeline.h"
#include "rollout.h"
#include "signer.h"
#include "store.h"
#include "watch.h"

typedef struct pc_sync_server pc_sync_server;

typedef struct pc_sync_server_options {
    const char *url; /* tcp://127.0.0.1:7072 */
    pc_store *store;
    pc_rollout *rollout;
    pc_signer *signer; /* signs snapshot assertions */
    pc_metrics *metrics;
    size_t inline_max;     /* bundles up to this travel inside sync replies */
    size_t max_reply;      /* bytes per reply (bundles beyond go by chunk) */
    size_t chunk_max;      /* bytes per chunk reply */
    uint64_t snapshot_lag; /* further behind than this: take a snapshot */
    size_t workers;        /* concurrent requests */
    /* A snapshot only when also further behind than the store has
     * tenants: below that, catch-up moves fewer manifests. */
    bool snapshot_lag_tenants;
    /* Status reports are always signed, and verified with the key bound
     * to the agent id. With require_enrollment only an operator binds
     * keys (popcast agent enroll); without it, an id with no record is
     * bound to the key its first valid signed report carries (trust on
     * first use, committed through raft like an enrollment; reports count
     * once the binding is committed). */
    bool require_enrollment;
    nng_tls_config *tls; /* for a tls+tcp:// url */
    /* Tails (popcast tail): agents' signed batches of tenants' log lines
     * go to its tails, and each answer names the tenants tailed (NULL:
     * tail calls are refused). */
    pc_watch *tails;
} pc_sync_server_options;

int pc_sync_server_start(pc_sync_server **out, const pc_sync_server_options *opt, pc_err *err);
/* Where first-use bindings go (pipeline.h), from the time the pipeline
 * exists; NULL before it is shut down: no submission is in progress once
 * this returns. Bindings' callbacks run on the pipeline's loop thread and
 * use the server, which must outlive them (stop it after the loop ends). */
void pc_sync_server_set_pipeline(pc_sync_server *s, pc_pipeline *p);
void pc_sync_server_stop(pc_sync_server *s);
/* The url it listens on, with the port actually bound (url may name 0). */
const char *pc_sync_server_bound_url(const pc_sync_server *s);

#endif
