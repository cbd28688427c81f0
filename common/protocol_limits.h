/* protocol_limits.h - the fixed limits of the agent <-> controller protocol
 * (docs/protocol.md), in one place because the two sides must agree: a
 * message over an nng receive limit makes nng drop the whole connection,
 * so a limit set on one side from a value chosen on the other must be
 * derived from the same constant, never typed twice.
 *
 * Configurable bounds (max_bundle, sync_max_reply, publish_inline_max, ...)
 * stay in each daemon's configuration; the receive limits below are
 * derived from max_bundle, which operators set equal on both sides.
 * (Not "limits.h": in an include directory that name would shadow the C
 * library's.) */
#ifndef PC_PROTOCOL_LIMITS_H
#define PC_PROTOCOL_LIMITS_H

#include <stddef.h>
#include <stdint.h>

#define PC_MIB ((size_t)1 << 20)

/* Catch-up (req/rep). */

/* Bytes of a bundle per BundleChunkRequest/Response: the agent asks for
 * this much and the controller never sends more. One chunk is one round
 * trip, far below every receive limit; a 64 MiB bundle takes 64. */
#define PC_CHUNK_BYTES PC_MIB
/* Entries an agent asks for per SyncRequest: a batch is applied before the
 * next is asked for, so this bounds the work one reply carries. */
#define PC_SYNC_BATCH_ENTRIES 256
/* Entries per SyncReply whatever a request asks for (controller side). */
#define PC_SYNC_MAX_ENTRIES 1024
/* Bundle bytes an agent asks for per SyncReply; larger bundles are left
 * out and fetched in chunks. Equal to sync_max_reply's default. */
#define PC_SYNC_BATCH_BYTES (8 * PC_MIB)
/* The controller's receive limit on its rep socket. Requests are small
 * (a status report, one line per tenant, is the largest): a bigger one is
 * hostile. Agents' requests must stay below it. */
#define PC_SYNC_REQUEST_MAX PC_MIB
/* A relay's StatusBatch (its agents' reports, each below
 * PC_SYNC_REQUEST_MAX): what a controller's rep socket accepts, and what a
 * relay fills a batch up to. */
#define PC_STATUS_BATCH_MAX (4 * PC_MIB)
/* How a relay's StatusAck.error starts when it could not forward a report
 * (no upstream answered): the agent then reports elsewhere. */
#define PC_RELAY_UNAVAILABLE "relay unavailable:"
/* Longest upstream address in a report (an nng url). */
#define PC_UPSTREAM_MAX 256
/* Requests the controller serves at once (nng contexts on its rep
 * socket); each one reads LMDB on an nng thread. */
#define PC_SYNC_WORKERS 8

/* The agent's receive limit on its req sockets: above any reply, which is
 * one batch (PC_SYNC_BATCH_BYTES of bundles plus manifests), one chunk, or
 * a snapshot (the controller's sync_max_reply of bundles plus one signed
 * manifest per tenant). At least PC_SYNC_REPLY_FLOOR (the default
 * max_bundle), more with a larger max_bundle, plus PC_SYNC_REPLY_SLACK for
 * manifests and framing. */
#define PC_SYNC_REPLY_FLOOR (64 * PC_MIB)
#define PC_SYNC_REPLY_SLACK (2 * PC_MIB)
static inline size_t pc_sync_reply_max(uint64_t max_bundle)
{
    return (max_bundle > PC_SYNC_REPLY_FLOOR ? (size_t)max_bundle : PC_SYNC_REPLY_FLOOR) +
           PC_SYNC_REPLY_SLACK;
}

/* pub/sub. */

/* Room beside a bundle in one Publication: the signed manifest, its
 * signature and the protobuf framing (a few hundred bytes; 1 MiB leaves
 * room for the manifest to grow). */
#define PC_PUB_SLACK PC_MIB
/* The largest Publication: an entry with a bundle of max_bundle inline.
 * The agent's receive limit on its sub socket. */
static inline size_t pc_pub_message_max(uint64_t max_bundle)
{
    return (size_t)max_bundle + PC_PUB_SLACK;
}

/* How the agent redials a controller it lost (sub and req sockets): soon
 * after a blip, at most every 2 s while one is down. */
#define PC_REDIAL_MIN_MS 100
#define PC_REDIAL_MAX_MS 2000

_Static_assert(PC_SYNC_BATCH_ENTRIES <= PC_SYNC_MAX_ENTRIES,
               "the controller must grant the batch agents ask for");
_Static_assert(PC_SYNC_BATCH_BYTES + PC_SYNC_REPLY_SLACK <= PC_SYNC_REPLY_FLOOR,
               "a catch-up batch must fit the agent's reply limit");
_Static_assert(PC_CHUNK_BYTES + PC_SYNC_REPLY_SLACK <= PC_SYNC_REPLY_FLOOR,
               "a chunk must fit the agent's reply limit");

#endif
