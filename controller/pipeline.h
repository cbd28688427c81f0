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

#include "crypto.h"
#include "err.h"
#include "names.h"
#include "cluster.h"
#include "signer.h"
#include "store.h"

typedef enum pc_change_kind {
    PC_CHANGE_DEPLOY,
    PC_CHANGE_ROLLBACK,
    PC_CHANGE_DELETE,
    PC_CHANGE_ADD_NODE, /* membership: node_* below */
    PC_CHANGE_REMOVE_NODE,
    PC_CHANGE_TOKEN_CREATE, /* token_* below */
    PC_CHANGE_TOKEN_REVOKE, /* token_id */
    PC_CHANGE_AGENT_ENROLL, /* agent_* below */
    PC_CHANGE_AGENT_REVOKE, /* agent_id */
    PC_CHANGE_KEY_ROTATE,   /* key_* below */
} pc_change_kind;

#define PC_TOKEN_MAX_TENANTS 16
#define PC_TOKEN_NAME_MAX    64

typedef struct pc_change_result {
    int rc; /* PC_OK or an error code; err holds the message */
    pc_err err;
    const char *kind; /* "deploy", "rollback", "delete" */
    uint64_t version, seq, bundle_size, rollback_of;
    int64_t created_unix_ms;
    uint8_t hash[PC_HASH_LEN];
    char entrypoint[PC_PATH_MAX + 1];
    char runtime[33];
} pc_change_result;

typedef struct pc_change pc_change;
struct pc_change {
    pc_change_kind kind;
    char tenant[PC_TENANT_MAX + 1];
    /* DEPLOY: a validated bundle archive, owned by the change. */
    uint8_t *bundle;
    size_t bundle_len;
    char entrypoint[PC_PATH_MAX + 1];
    char runtime[33];
    /* ROLLBACK: the version whose content becomes the new version. */
    uint64_t rollback_to;
    /* ADD_NODE, REMOVE_NODE. */
    uint64_t node_id;
    char node_raft_address[128];
    char node_api_url[256];
    /* TOKEN_CREATE, TOKEN_REVOKE. */
    uint8_t token_hash[PC_HASH_LEN];
    char token_id[17];
    char token_secret[80]; /* TOKEN_CREATE: the token, for the answer only */
    char token_name[PC_TOKEN_NAME_MAX + 1];
    char token_tenants[PC_TOKEN_MAX_TENANTS][PC_TENANT_MAX + 1];
    size_t n_token_tenants;
    /* AGENT_ENROLL, AGENT_REVOKE. */
    char agent_id[PC_ID_MAX + 1];
    uint8_t agent_pk[PC_PK_LEN];
    /* KEY_ROTATE: the next signing key (this controller must hold its
     * secret); signed by the current key, or by the root key key_root. */
    uint8_t key_next[PC_PK_LEN];
    bool key_sign_with_root;
    uint8_t key_root[PC_PK_LEN];
    /* Or: a root's offline authorization (owned by the change); the
     * rotation is then signed by the next key. */
    Popcast__SignedRotationAuthorization *key_authorization;
    /* Called once, on the loop thread, after commit and publish (or on
     * failure). The pipeline frees the change (and its bundle) after. */
    void (*done)(pc_change *c, const pc_change_result *r);
    void *arg;
    pc_change *next; /* queue link: pipeline-internal */
};

typedef struct pc_pipeline pc_pipeline;

/* signer and cluster stay owned by the caller and must outlive the pipeline.
 * Changes submitted to a node that is not the leader fail with
 * PC_E_NOT_LEADER (the API redirects before submitting). */
int pc_pipeline_new(pc_pipeline **out, uv_loop_t *loop, pc_store *store, pc_signer *signer,
                    pc_cluster *cluster, size_t max_pending, pc_err *err);
/* Shutting down is two steps because the HTTP server's stop waits for
 * every handler, and a handler may wait on a queued change:
 * _shutdown fails every queued change and refuses new ones (any thread);
 * _close frees the pipeline once nothing can submit any more (loop
 * thread), after which the loop can finish. */
void pc_pipeline_shutdown(pc_pipeline *p);
void pc_pipeline_close(pc_pipeline *p);

/* From any thread. Allocates a change; fill it, then submit. */
pc_change *pc_change_new(pc_change_kind kind, const char *tenant);
void pc_change_free(pc_change *c);
/* From any thread. PC_E_UNAVAILABLE when max_pending changes are queued
 * (the caller answers 503 and still owns c). */
int pc_pipeline_submit(pc_pipeline *p, pc_change *c, pc_err *err);

#endif
