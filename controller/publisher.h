/* publisher.h - the controller's nng pub socket: committed entries and
 * heartbeats go out here, in seq order, to agents and relays.
 *
 * pub/sub is the fast path only: a subscriber whose queue is full, that
 * connects late or reconnects silently misses messages, so every agent
 * also catches up over req/rep. The per-subscriber send queue is sized by
 * configuration (pub_sendbuf) to make drops rare, never to make them
 * impossible. Sending never blocks. */
#ifndef PC_PUBLISHER_H
#define PC_PUBLISHER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "tls.h"
#include "popcast.pb-c.h"

typedef struct pc_publisher pc_publisher;

int pc_publisher_open(pc_publisher **out, const char *url, nng_tls_config *tls, int sendbuf,
                      size_t max_msg, pc_err *err);
void pc_publisher_close(pc_publisher *p);
/* The url it listens on, with the port actually bound (url may name 0). */
const char *pc_publisher_bound_url(const pc_publisher *p);

/* Publishes one entry (the bundle inline). Errors are counted, not
 * retried: catch-up is what guarantees delivery. */
int pc_publisher_send_entry(pc_publisher *p, const Popcast__Entry *e, pc_err *err);
int pc_publisher_send_heartbeat(pc_publisher *p, const Popcast__SignedHeartbeat *hb, pc_err *err);
/* Messages sent and failed since open. */
void pc_publisher_counts(pc_publisher *p, uint64_t *sent, uint64_t *failed);

#endif
