/* upstream.h - a relay's req/rep links to what it relays: parent relays
 * (the tier above, tried first) and controllers.
 *
 * Two kinds of call, both blocking (never call from an nng callback):
 *
 *  - pc_upstream_call asks ONE upstream and fails over: the parents first,
 *    then the controllers, each group healthiest first (fewest failures in
 *    a row), then in configuration order. Catch-up, snapshots and chunks
 *    go this way.
 *
 *  - pc_upstream_report delivers a batch of status reports. With parents
 *    it goes to the first parent that takes it (the parent forwards it on:
 *    a report sent twice would be refused as a replay by the second
 *    controller path); without a parent, or when none takes it, to every
 *    controller at once, as an agent reports (each controller keeps its
 *    own fleet view).
 *
 * Requests run concurrently (one nng context each); thread safe. */
#ifndef PC_RELAY_UPSTREAM_H
#define PC_RELAY_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "err.h"
#include "popcast.pb-c.h"
#include "tls.h"

typedef struct pc_upstream pc_upstream;

typedef struct pc_upstream_options {
    const pc_strlist *parents;     /* parent relays' sync addresses (may be NULL) */
    const pc_strlist *controllers; /* controllers' sync addresses */
    nng_tls_config *tls;
    uint64_t request_timeout_ms;
    size_t recv_max; /* largest reply accepted */
} pc_upstream_options;

int pc_upstream_open(pc_upstream **out, const pc_upstream_options *opt, pc_err *err);
/* Any call in flight ends (NNG_ECLOSED) first. */
void pc_upstream_close(pc_upstream *u);

/* One request to one upstream, failing over (see above). *out is the
 * decoded reply (free with popcast__sync_reply__free_unpacked); *url (may
 * be NULL) the address that answered, valid until close. accept (may be
 * NULL) judges a reply: false makes it count as a failure of that
 * upstream and the next one is asked. */
typedef bool (*pc_upstream_accept)(void *arg, const Popcast__SyncReply *rep);
int pc_upstream_call(pc_upstream *u, const Popcast__SyncCall *call, pc_upstream_accept accept,
                     void *arg, Popcast__SyncReply **out, const char **url, pc_err *err);

/* Delivers a batch (see above). acks gets n ack sets, one per upstream
 * that answered with a StatusBatchAck of batch->n_reports acks (a NULL
 * slot for one that did not); *n is the number of slots. Free with
 * pc_upstream_free_acks. PC_E_UNAVAILABLE when nobody answered. */
int pc_upstream_report(pc_upstream *u, const Popcast__StatusBatch *batch,
                       Popcast__SyncReply ***acks, size_t *n, pc_err *err);
void pc_upstream_free_acks(Popcast__SyncReply **acks, size_t n);

/* The address the last successful pc_upstream_call used ("" before any). */
void pc_upstream_last(pc_upstream *u, char *buf, size_t cap);

#endif
