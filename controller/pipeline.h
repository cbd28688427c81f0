/* pipeline.h - the controller's write path: every change (deploy,
 * rollback, delete, key rotation, membership, tokens, agents) is versioned, signed and replicated
 * here, one at a time, on the controller's event loop, by the cluster's leader.
 *
 * One change at a time is what makes seq gap-free and each tenant's
 * versions strictly increasing without locks: a change reads the applied
 * seq and the tenant's last version from the leader's store (which holds
 * every committed change: see pc_cluster_ready_to_write), builds and signs
 * the manifest, proposes it through raft, and answers only after a
 * majority committed it and this node applied it (and published it to its
 * subscribers, cluster.c). The next change starts after that.
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
#include "signer.h"
#include "store.h"

typedef struct pc_pipeline pc_pipeline;

/* signer and cluster stay owned by the caller and must outlive the pipeline.
 * Changes submitted to a node that is not the leader fail with
 * PC_E_NOT_LEADER (the API redirects before submitting). */
int pc_pipeline_new(pc_pipeline **out, uv_loop_t *loop, pc_store *store, pc_signer *signer,
                    pc_cluster *cluster, size_t max_pending, pc_err *err);
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
