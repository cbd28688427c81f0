/* feed.h - how a relay keeps its log: what it takes from upstream, checks,
 * stores and republishes (docs/architecture.md "Relays").
 *
 * Entries come from the upstream's pub/sub (pc_feed_on_publication, the
 * fast path) and from catch-up over req/rep (a thread of its own, run on
 * a gap, on a heartbeat ahead of the log, and every sync_interval_ms).
 * Either way each entry is verified as an agent verifies it (signature,
 * key chain, bundle hash: trust.h) before it is stored, and appended only
 * at the log's head + 1; a bundle announced without its bytes is fetched
 * in chunks first, so the relay can serve it to its agents. Heartbeats are
 * verified and republished as they came once the log holds their head (a
 * heartbeat ahead of the log is held, the newest one, until it does: an
 * agent that learns of a head from its relay must find it there, or it
 * would fail over to a controller for it). Every stored entry is then
 * republished, in seq order, inline up to inline_max (an announcement
 * above: agents fetch the chunks from the relay).
 *
 * A relay whose log is empty, or too far behind for its upstream, takes a
 * snapshot: it verifies the rotations and the signed assertion (not the
 * tenants: it does not store them) and restarts its log at the snapshot's
 * seq. Agents further behind than the log's first seq are told to take a
 * snapshot, which the relay passes through from upstream unchanged.
 *
 * The relay holds no key: nothing it could do makes an agent apply
 * something forged, old or reordered, because agents verify it all again.
 * Verifying here keeps a lying upstream from filling the log with what
 * every agent would refuse. */
#ifndef PC_RELAY_FEED_H
#define PC_RELAY_FEED_H

#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "metrics.h"
#include "publisher.h"
#include "relay_log.h"
#include "upstream.h"

typedef struct pc_feed pc_feed;

typedef struct pc_feed_options {
    pc_relay_log *log;
    pc_upstream *upstream;
    pc_publisher *publisher;
    const pc_keyring *trusted; /* root keys, as agents have */
    pc_metrics *metrics;
    const char *relay_id; /* named in snapshot requests */
    uint64_t max_bundle;
    uint64_t inline_max; /* republished inline up to this */
    uint64_t sync_interval_ms;
    uint32_t batch_entries;
    uint64_t batch_bytes;
    uint32_t chunk_bytes;
} pc_feed_options;

int pc_feed_start(pc_feed **out, const pc_feed_options *opt, pc_err *err);
/* One pub/sub message from upstream (the loop thread). */
void pc_feed_on_publication(pc_feed *f, const uint8_t *data, size_t len);
/* The head of the last verified heartbeat (0: none yet). Any thread. */
uint64_t pc_feed_heartbeat_head(pc_feed *f);
/* Milliseconds since the last verified heartbeat came by pub/sub (-1:
 * none yet). Any thread. */
int64_t pc_feed_heartbeat_age_ms(pc_feed *f);
/* Stops the catch-up thread: waits for a request in flight to end (at
 * most the upstream's connect and request timeouts). Close the upstream
 * after this, never before. */
void pc_feed_stop(pc_feed *f);

#endif
