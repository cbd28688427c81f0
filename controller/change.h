/* change.h - the changes a controller commits, and what each kind is.
 *
 * Every write the API accepts becomes one pc_change, queued to the
 * pipeline (pipeline.h), which commits it through raft and then calls its
 * done callback once. A change's kind says which member of its payload
 * union is in use; pc_change_kind_info gives each kind's facts in one
 * table shared by the pipeline (logging, dispatch) and the API (answers),
 * so adding a kind is one row, not a new branch in several switches. */
#ifndef PC_CHANGE_H
#define PC_CHANGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "crypto.h"
#include "deployment.h"
#include "err.h"
#include "names.h"
#include "popcast.pb-c.h"

typedef enum pc_change_kind {
    PC_CHANGE_DEPLOY,
    PC_CHANGE_ROLLBACK,
    PC_CHANGE_DELETE,
    PC_CHANGE_ADD_NODE,
    PC_CHANGE_REMOVE_NODE,
    PC_CHANGE_TOKEN_CREATE,
    PC_CHANGE_TOKEN_REVOKE,
    PC_CHANGE_AGENT_ENROLL,
    PC_CHANGE_AGENT_REVOKE,
    PC_CHANGE_KEY_ROTATE,
    PC_CHANGE_STAGE,
    PC_CHANGE_DEPLOYMENT,
    PC_CHANGE_PLAN,
    PC_CHANGE_KIND_COUNT
} pc_change_kind;

typedef struct pc_change_kind_info {
    const char *name; /* "deploy", "token_create", ...: logs and answers */
    /* A tenant change: versioned, signed, published to agents, part of
     * the tenant's history (c->tenant is set). */
    bool tenant;
    uint16_t success_status; /* HTTP status of the API's answer: 201 or 200 */
} pc_change_kind_info;

/* Never NULL for a kind below PC_CHANGE_KIND_COUNT. */
const pc_change_kind_info *pc_change_kind_get(pc_change_kind kind);

#define PC_TOKEN_MAX_TENANTS 16
#define PC_TOKEN_NAME_MAX    64
#define PC_RUNTIME_NAME_MAX  32

/* What a deploy or rollback makes live. */
typedef struct pc_change_content {
    uint8_t *bundle; /* a validated bundle archive, owned by the change */
    size_t bundle_len;
    char entrypoint[PC_PATH_MAX + 1];
    char runtime[PC_RUNTIME_NAME_MAX + 1];
} pc_change_content;

/* What a committed change came to (the API answers from it). */
typedef struct pc_change_result {
    int rc; /* PC_OK or an error code; err holds the message */
    pc_err err;
    uint64_t seq; /* signed log entries: tenant changes, key rotations */
    int64_t created_unix_ms;
    /* Tenant changes. */
    uint64_t version, bundle_size, rollback_of;
    /* The change's idempotency key named an entry made before: this is
     * that entry's result, and nothing new was made. */
    bool replayed;
    uint8_t hash[PC_HASH_LEN];
    char entrypoint[PC_PATH_MAX + 1];
    char runtime[PC_RUNTIME_NAME_MAX + 1];
    char author[PC_CHANGE_AUTHOR_MAX + 1]; /* as signed */
    char message[PC_CHANGE_MESSAGE_MAX + 1];
    uint64_t deployment_id; /* DEPLOYMENT: the record made or changed */
} pc_change_result;

typedef struct pc_change pc_change;
struct pc_change {
    pc_change_kind kind;
    char tenant[PC_TENANT_MAX + 1]; /* tenant changes */
    /* Tenant changes, optional (docs/api.md "Idempotent writes"): the
     * client's key, and the fingerprint of what it asked for. While the
     * key is kept, the first change that carried it is the only one it
     * makes: a later one with the same fingerprint gets that change's
     * result (replayed), one with another fingerprint is refused. */
    char idempotency_key[PC_IDEMPOTENCY_KEY_MAX + 1];
    uint8_t fingerprint[PC_HASH_LEN];
    /* Tenant changes: who asked (set by the API from the credential) and
     * the client's message (pc_change_message_valid), signed into the
     * entry's manifest. Set both before pc_change_set_idempotency: the
     * message is part of what a key identifies. */
    char author[PC_CHANGE_AUTHOR_MAX + 1];
    char message[PC_CHANGE_MESSAGE_MAX + 1];
    /* DEPLOY, ROLLBACK, STAGE: where the version goes live (target.h;
     * NULL: every agent), owned by the change. Set it before
     * pc_change_set_idempotency: it is part of what a key identifies. */
    Popcast__Target *target;
    union {
        pc_change_content deploy; /* DEPLOY */
        struct {
            uint64_t to; /* the version whose content comes back */
            /* What the request named: to, or 0 when it named none and the
             * API chose to (rollback_target.h). Idempotency fingerprints
             * it, so a retry is the same request whatever the fleet shows
             * by then. */
            uint64_t asked;
            pc_change_content content; /* filled by the pipeline */
        } rollback;                    /* ROLLBACK */
        struct {
            uint64_t version; /* the tenant's active version, widened */
        } stage;              /* STAGE */
        struct {
            /* Creating: the new record (its id is the pipeline's to give,
             * owned by the change); else the record id and what to do. */
            Popcast__DeploymentRecord *create;
            uint64_t id;
            pc_deployment_op op;
        } deployment; /* DEPLOYMENT (c->tenant is the record's) */
        struct {
            /* The tenant's plan to set (no stages: clear it), owned. */
            Popcast__TenantPlan *record;
        } plan; /* PLAN (c->tenant is the record's) */
        struct {
            uint64_t id;
            char raft_address[128];
            char api_url[256];
        } node; /* ADD_NODE (all), REMOVE_NODE (id) */
        struct {
            uint8_t hash[PC_HASH_LEN];
            char id[17];
            char secret[80]; /* the token itself, for the answer only */
            char name[PC_TOKEN_NAME_MAX + 1];
            char tenants[PC_TOKEN_MAX_TENANTS][PC_TENANT_MAX + 1];
            size_t n_tenants;
        } token; /* TOKEN_CREATE (all), TOKEN_REVOKE (id) */
        struct {
            char id[PC_ID_MAX + 1];
            uint8_t pk[PC_PK_LEN];
            /* AGENT_ENROLL by a controller on the agent's first signed
             * report (trust on first use): binds only an id that has no
             * record at all (PC_E_EXISTS otherwise), where an operator's
             * enrollment replaces any record. */
            bool first_use;
        } agent; /* AGENT_ENROLL (all), AGENT_REVOKE (id) */
        struct {
            /* The next signing key (this controller must hold its
             * secret); signed by the current key, by the root key
             * root (sign_with_root), or, given a root's offline
             * authorization (owned by the change), by the next key. */
            uint8_t next[PC_PK_LEN];
            bool sign_with_root;
            uint8_t root[PC_PK_LEN];
            Popcast__SignedRotationAuthorization *authorization;
        } key; /* KEY_ROTATE */
    } u;
    /* Called once, on the loop thread, after commit and publish (or on
     * failure). The pipeline frees the change after. */
    void (*done)(pc_change *c, const pc_change_result *r);
    void *arg;
    pc_change *next; /* queue link: pipeline-internal */
};

/* From any thread. tenant may be NULL for changes of no tenant. */
pc_change *pc_change_new(pc_change_kind kind, const char *tenant);
/* Frees the change and everything it owns; secrets are wiped. */
void pc_change_free(pc_change *c);

/* Sets a tenant change's idempotency key and fingerprint, once its
 * content is filled in. PC_E_INVALID (c unchanged) for a key that is not
 * valid (names.h) or a change that is not a tenant change. */
int pc_change_set_idempotency(pc_change *c, const char *key, pc_err *err);

#endif
