/* pipeline.h - the controller's write path: every change (deploy,
 * rollback, delete, key rotation, membership, tokens, agents) is versioned,
 * signed and replicated here, on the controller's event loop, by the
 * cluster's leader.
 *
 * One raft command in flight at a time is what makes seq gap-free and each
 * tenant's versions strictly increasing without locks: the changes of a
 * command read the applied seq and their tenant's last version from the
 * leader's store (which holds every committed change: see
 * pc_cluster_ready_to_write) and from the changes before them in the same
 * command, build and sign their manifests, propose them through raft, and
 * are answered only after a majority committed them and this node applied
 * them (and published them to its subscribers, cluster.c). The next
 * command starts after that.
 *
 * Group commit: tenant changes queued while a command is in flight go
 * together in the next one (up to batch_max_changes and batch_max_bytes),
 * each still with its own seq, version and signature, and are applied by
 * every replica in one store transaction (all or none). A rollback or a
 * delete of a tenant already in the batch waits for the next one, so that
 * every refusal rests on committed state. A lone change is
 * proposed at once, so latency at low load is that of one change. Other
 * kinds (tokens, agents, membership, key rotation) go alone: a rotation
 * changes the key that signs every later entry.
 *
 * Idempotency keys (change.h): a tenant change whose key the store
 * keeps is answered from the change that key made (or refused, if it asks
 * for something else) and makes nothing; a key rides to the store with
 * its entry (store.h invariant 7). A change whose key is in the batch
 * being built waits for the next batch, so it is judged on committed
 * state too.
 *
 * The expensive, parallel part of a deploy (reading the body, decoding the
 * archive, checking that the runtime can parse it, hashing) happens before
 * submission, on the API's threads. */
#ifndef PC_PIPELINE_H
#define PC_PIPELINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "change.h"
#include "cluster.h"
#include "err.h"
#include "metrics.h"
#include "signer.h"
#include "store.h"

typedef struct pc_pipeline pc_pipeline;

typedef struct pc_pipeline_options {
    size_t max_pending; /* changes queued before _submit refuses */
    /* Group commit: tenant changes per raft command (0 or 1: one at a
     * time), and the bundle bytes they may carry together (0: no limit; a
     * change larger than that still goes, alone). */
    size_t batch_max_changes, batch_max_bytes;
    pc_metrics *metrics; /* NULL: none */
} pc_pipeline_options;

/* signer and cluster stay owned by the caller. signer must outlive the
 * pipeline; cluster must outlive its first pc_pipeline_shutdown (or its
 * close, without one): a cluster's stop completes raft's callbacks, so the
 * pipeline can be closed once it has stopped.
 * Changes submitted to a node that is not the leader fail with
 * PC_E_NOT_LEADER (the API redirects before submitting). */
int pc_pipeline_new(pc_pipeline **out, uv_loop_t *loop, pc_store *store, pc_signer *signer,
                    pc_cluster *cluster, const pc_pipeline_options *opt, pc_err *err);
/* Shutting down is two steps because the HTTP server's stop waits for
 * every handler, and a handler may wait on a queued change:
 * _shutdown answers the change in flight, fails every queued change and
 * refuses new ones (loop thread, as everything here but _submit);
 * _close frees the pipeline once nothing can submit any more (loop
 * thread), after which the loop can finish. */
void pc_pipeline_shutdown(pc_pipeline *p);
void pc_pipeline_close(pc_pipeline *p);

/* From any thread (pc_change_new allocates a change: fill it, submit it). PC_E_UNAVAILABLE when
 * max_pending changes are queued (the caller answers 503 and still owns c). */
int pc_pipeline_submit(pc_pipeline *p, pc_change *c, pc_err *err);

#endif
