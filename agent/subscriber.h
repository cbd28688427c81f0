/* subscriber.h - the agent's nng sub socket, bridged into its libuv loop.
 *
 * nng receives on its own threads; each message is queued and the loop is
 * woken with uv_async_send, so every message is handled on the loop thread,
 * each publisher connection's in arrival order, the connections in turn
 * (a few dozen messages per wake-up, so the loop's other events are not
 * starved). The queue is bounded, in messages (queue_max) and in bytes per
 * publisher connection (queue_bytes): when the loop falls behind, messages
 * are dropped and counted, exactly like a full pub/sub queue, and the seq
 * gap they leave is repaired by catch-up. Per connection, so that a
 * publisher flooding the agent with large messages (say, signed by keys
 * nobody trusts) fills only its own share, and the controllers' messages
 * still get in and are taken between two of its. A message larger than
 * queue_bytes is still taken when its connection has nothing queued. The
 * message count (queue_max) is shared by all connections: a publisher
 * flooding small messages can fill it, and then the controllers' messages
 * are dropped too until it drains (catch-up repairs the gap). */
#ifndef PC_SUBSCRIBER_H
#define PC_SUBSCRIBER_H

#include <nng/nng.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "err.h"
#include "metrics.h"
#include "tls.h"

typedef struct pc_subscriber pc_subscriber;

/* Called on the loop thread with one received message body; the callee
 * does not keep data after returning. */
typedef void (*pc_subscriber_cb)(void *arg, const uint8_t *data, size_t len);
/* The same for the messages taken in one wake-up (at most 64), in order:
 * for a callee that handles them together (pc_applier_on_publications). */
typedef void (*pc_subscriber_batch_cb)(void *arg, const uint8_t *const *data, const size_t *len,
                                       size_t n);

typedef struct pc_subscriber_options {
    const pc_strlist *urls;          /* pub addresses of controllers or relays */
    int recvbuf;                     /* nng receive queue, messages */
    size_t recv_max;                 /* largest message accepted (bytes) */
    size_t queue_max;                /* messages waiting for the loop */
    size_t queue_bytes;              /* bytes waiting for the loop, per connection */
    nng_tls_config *tls;             /* for tls+tcp:// urls */
    pc_metrics *metrics;             /* drops by reason, queued bytes (may be NULL) */
    pc_subscriber_batch_cb batch_cb; /* if set, called instead of cb */
} pc_subscriber_options;

/* Dials every url without waiting: an agent starts and serves with no
 * controller reachable, and nng keeps redialling in the background. */
int pc_subscriber_open(pc_subscriber **out, uv_loop_t *loop, const pc_subscriber_options *opt,
                       pc_subscriber_cb cb, void *arg, pc_err *err);
/* Loop thread. Stops receiving; the struct is freed once the loop has
 * closed its handle. */
void pc_subscriber_close(pc_subscriber *s);

/* Messages received and dropped (queue full, by count or bytes) since
 * open. Any thread. */
void pc_subscriber_counts(pc_subscriber *s, uint64_t *received, uint64_t *dropped);

#endif
