/* relay_server.h - a relay's req/rep endpoint: what its agents (and child
 * relays) ask of it, answered as a controller would (docs/protocol.md,
 * "Relays").
 *
 *   sync      entries after a seq from the relay's log (relay_log.h), bounded
 *             like a controller's reply; before the log's first seq: "take a
 *             snapshot";
 *   chunk     a slice of a bundle the log holds; any other is asked of the
 *             upstream and passed through;
 *   snapshot  passed through from the upstream unchanged (the relay cannot
 *             sign an assertion; agents verify the controller's);
 *   status    an agent's signed report, or a child relay's batch: held, and
 *             forwarded upstream with every other report that arrived
 *             within batch_ms in ONE StatusBatch; each sender gets its own
 *             ack from upstream's answer. When no upstream takes a batch
 *             the acks say PC_RELAY_UNAVAILABLE, and agents report directly.
 *
 * Local answers are made on nng's threads (LMDB reads); anything that
 * waits on the upstream is handed to a thread of its own, and the request
 * waits, parked, until its answer is there. */
#ifndef PC_RELAY_SERVER_H
#define PC_RELAY_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "metrics.h"
#include "relay_log.h"
#include "tls.h"
#include "upstream.h"

typedef struct pc_relay_server pc_relay_server;

typedef struct pc_relay_server_options {
    const char *url;
    pc_relay_log *log;
    pc_upstream *upstream;
    pc_metrics *metrics;
    const char *relay_id;
    const char *pop;
    size_t inline_max; /* bundles up to this travel inside sync replies */
    size_t max_reply;  /* bytes per sync reply */
    size_t chunk_max;  /* bytes per chunk reply */
    size_t workers;    /* requests held at once (parked reports count) */
    uint64_t batch_ms; /* reports wait this long for others to join a batch */
    nng_tls_config *tls;
} pc_relay_server_options;

int pc_relay_server_start(pc_relay_server **out, const pc_relay_server_options *opt, pc_err *err);
/* The url it listens on, with the port actually bound. */
const char *pc_relay_server_bound_url(const pc_relay_server *s);
/* Stops: waits for a forward in flight (bounded by the upstream's
 * timeouts); parked requests get no answer. */
void pc_relay_server_stop(pc_relay_server *s);

#endif
