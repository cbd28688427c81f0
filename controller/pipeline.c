/* pipeline.c - versioning, signing, commit and publish (see pipeline.h). */
#include "pipeline.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "checks.h"
#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "target.h"

struct pc_pipeline {
    uv_loop_t *loop;
    uv_async_t wake;
    pc_store *store;
    pc_signer *signer;
    pc_cluster *cluster;
    pc_thread_owner loop_thread; /* everything but submit runs on it */
    pthread_mutex_t lock;        /* guards the queue below */
    pc_change *head, *tail;
    size_t pending, max_pending;
    int closing;
    /* The changes being replicated: one raft command at a time (see
     * pipeline.h); several tenant changes when they were queued together
     * (group commit), each with its own result. */
    pc_change **flight;
    pc_change_result *flight_results;
    size_t n_flight;
    bool flight_answered; /* shutdown answered them; raft's callback only frees */
    /* Closed with changes still in flight: raft's callback (which comes at
     * the latest when the cluster stops) frees the pipeline. */
    bool wake_closed;
    /* The batch being built (tenant changes only). */
    Popcast__Entry *entries;
    Popcast__Entry **entry_ptrs;
    Popcast__SignedManifest *signed_;
    /* The idempotency keys of the batch's changes that carry one. */
    Popcast__IdempotencyRecord *claims;
    Popcast__IdempotencyRecord **claim_ptrs;
    size_t n_claims;
    size_t batch_max_changes, batch_max_bytes;
    pc_metric *m_commands, *m_changes;
    pc_histogram *m_commit_latency;
    int64_t flight_started_ns; /* when the command in flight was proposed */
};

static void free_pipeline(pc_pipeline *p)
{
    pthread_mutex_destroy(&p->lock);
    free(p->flight);
    free(p->flight_results);
    free(p->entries);
    free(p->entry_ptrs);
    free(p->signed_);
    free(p->claims);
    free(p->claim_ptrs);
    free(p);
}

/* The content of an earlier version, for a rollback. */
static int load_version_content(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    uint64_t seq = 0;
    pc_change_content *to = &c->u.rollback.content;
    int rc = pc_store_version_seq(p->store, c->tenant, c->u.rollback.to, &seq, &r->err);
    if (rc == PC_E_NOTFOUND)
        return pc_err_set(&r->err, PC_E_NOTFOUND, "tenant %s has no version %llu", c->tenant,
                          (unsigned long long)c->u.rollback.to);
    if (rc != PC_OK)
        return rc;
    Popcast__Manifest *m = NULL;
    if ((rc = pc_store_get_manifest(p->store, seq, &m, &r->err)) != PC_OK)
        return rc;
    if (!pc_manifest_has_content(m)) {
        popcast__manifest__free_unpacked(m, NULL);
        return pc_err_set(&r->err, PC_E_INVALID,
                          "version %llu of %s is a delete and has no content to roll back to",
                          (unsigned long long)c->u.rollback.to, c->tenant);
    }
    rc = pc_store_get_blob(p->store, m->bundle_hash.data, &to->bundle, &to->bundle_len, &r->err);
    if (rc == PC_OK) {
        snprintf(to->entrypoint, sizeof(to->entrypoint), "%s", m->entrypoint);
        snprintf(to->runtime, sizeof(to->runtime), "%s", m->runtime);
    } else if (rc == PC_E_NOTFOUND) {
        rc = pc_err_set(&r->err, PC_E_STORE, "bundle of version %llu is missing from the store",
                        (unsigned long long)c->u.rollback.to);
    }
    popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

static void drain(uv_async_t *handle);

static void log_committed(const pc_change *c, const pc_change_result *r)
{
    const char *name = pc_change_kind_get(c->kind)->name;
    switch (c->kind) {
    case PC_CHANGE_ADD_NODE:
    case PC_CHANGE_REMOVE_NODE:
        pc_info("pipeline", "cluster membership: %s %llu done", name,
                (unsigned long long)c->u.node.id);
        break;
    case PC_CHANGE_TOKEN_CREATE:
    case PC_CHANGE_TOKEN_REVOKE: pc_info("pipeline", "%s %s", name, c->u.token.id); break;
    case PC_CHANGE_AGENT_ENROLL:
    case PC_CHANGE_AGENT_REVOKE: pc_info("pipeline", "%s %s", name, c->u.agent.id); break;
    case PC_CHANGE_DEPLOYMENT:
        pc_info("pipeline", "deployment %llu of %s version %llu: %s",
                (unsigned long long)r->deployment_id, c->tenant, (unsigned long long)r->version,
                c->u.deployment.create ? "started"
                                       : pc_deployment_op_name(c->u.deployment.op.kind));
        break;
    case PC_CHANGE_PLAN:
        pc_info("pipeline", "%s of %s: %s", name, c->tenant,
                c->u.plan.record->n_plan ? "set" : "cleared");
        break;
    default:
        pc_info("pipeline", "committed %s %s version %llu seq %llu (%llu bytes)", name, c->tenant,
                (unsigned long long)r->version, (unsigned long long)r->seq,
                (unsigned long long)r->bundle_size);
    }
}

/* The command in flight is through raft (or failed): answer each of its
 * changes, then take the next. */
static void change_done(void *arg, int rc, const pc_err *err)
{
    pc_pipeline *p = arg;
    PC_CHECK_OWNER(&p->loop_thread);
    size_t n = p->n_flight;
    bool answered = p->flight_answered;
    if (rc == PC_OK && n > 0 && p->flight_started_ns != 0)
        pc_histogram_observe_us(p->m_commit_latency,
                                (uint64_t)(pc_mono_ns() - p->flight_started_ns) / 1000);
    p->n_flight = 0;
    p->flight_answered = false;
    for (size_t i = 0; i < n; i++) {
        pc_change *c = p->flight[i];
        pc_change_result *r = &p->flight_results[i];
        p->flight[i] = NULL;
        if (!answered) {
            r->rc = rc;
            if (rc != PC_OK) {
                r->err = *err;
                r->err.code = rc;
            } else {
                log_committed(c, r);
            }
            c->done(c, r);
        }
        pc_change_free(c);
    }
    if (!p->closing)
        uv_async_send(&p->wake);
    else if (p->wake_closed)
        free_pipeline(p);
}

/* The change becomes the one in flight, alone (every kind but tenant
 * changes, which go in batches). */
static void fly_alone(pc_pipeline *p, pc_change *c)
{
    p->flight[0] = c;
    p->n_flight = 1;
    p->flight_started_ns = pc_mono_ns();
}

/* Proposes a signed entry (no bundle) as the change in flight, alone; the
 * signed manifest is cleared either way. */
static int propose_signed(pc_pipeline *p, pc_change *c, Popcast__SignedManifest *sm,
                          pc_change_result *r)
{
    Popcast__Entry e = POPCAST__ENTRY__INIT;
    e.signed_ = sm;
    fly_alone(p, c);
    int rc = pc_cluster_propose_entry(p->cluster, &e, change_done, p, &r->err);
    if (rc != PC_OK)
        p->n_flight = 0;
    pc_envelope_signed_clear(sm);
    return rc;
}

/* The tenant's state as the batch being built leaves it: the last change
 * of the batch to it (only deploys follow a change of their tenant in a
 * batch: see joins_batch), or else the store (which, on a leader ready to
 * write, holds every committed change). */
static int batch_tenant_state(pc_pipeline *p, const char *tenant, pc_tenant_state *t, pc_err *err)
{
    for (size_t i = p->n_flight; i-- > 0;) {
        if (strcmp(p->flight[i]->tenant, tenant) == 0) {
            memset(t, 0, sizeof(*t));
            t->last_version = p->flight_results[i].version;
            t->deleted = p->flight[i]->kind == PC_CHANGE_DELETE;
            return PC_OK;
        }
    }
    int rc = pc_store_get_tenant(p->store, tenant, t, err);
    if (rc == PC_E_NOTFOUND) {
        memset(t, 0, sizeof(*t));
        pc_err_clear(err);
        rc = PC_OK;
    }
    return rc;
}

/* A change whose idempotency key is kept (store.h invariant 7): the
 * result of the change that made it, if this one asks for the same
 * (r->replayed), PC_E_EXISTS if it asks for something else, PC_E_NOTFOUND
 * if the key is not kept. Only committed changes are kept, and a change
 * whose key is in the batch being built waits for the next one
 * (joins_batch), so a key never makes two entries. */
static int find_replay(pc_pipeline *p, const pc_change *c, pc_change_result *r)
{
    Popcast__IdempotencyRecord *rec = NULL;
    int rc = pc_store_get_idempotency(p->store, c->tenant, c->idempotency_key, &rec, &r->err);
    if (rc != PC_OK)
        return rc;
    Popcast__Manifest *m = NULL;
    bool same = rec->fingerprint.len == PC_HASH_LEN &&
                memcmp(rec->fingerprint.data, c->fingerprint, PC_HASH_LEN) == 0;
    rc = pc_store_get_manifest(p->store, rec->seq, &m, &r->err);
    if (rc == PC_E_NOTFOUND)
        rc = pc_err_set(&r->err, PC_E_EXISTS,
                        "idempotency key %s of %s made seq %llu, which is no longer in the log",
                        c->idempotency_key, c->tenant, (unsigned long long)rec->seq);
    else if (rc == PC_OK && !same)
        rc = pc_err_set(&r->err, PC_E_EXISTS,
                        "idempotency key %s was used for another request, which made version "
                        "%llu of %s: use a new key for a new request",
                        c->idempotency_key, (unsigned long long)m->version, c->tenant);
    if (rc == PC_OK) {
        r->replayed = true;
        r->version = m->version;
        r->seq = m->seq;
        r->created_unix_ms = m->created_unix_ms;
        r->bundle_size = m->bundle_size;
        r->rollback_of = m->rollback_of;
        snprintf(r->author, sizeof(r->author), "%s", m->author ? m->author : "");
        snprintf(r->message, sizeof(r->message), "%s", m->message ? m->message : "");
        if (pc_manifest_has_content(m) && m->bundle_hash.len == PC_HASH_LEN) {
            memcpy(r->hash, m->bundle_hash.data, PC_HASH_LEN);
            snprintf(r->entrypoint, sizeof(r->entrypoint), "%s", m->entrypoint);
            snprintf(r->runtime, sizeof(r->runtime), "%s", m->runtime);
        }
    }
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    popcast__idempotency_record__free_unpacked(rec, NULL);
    return rc;
}

/* A traffic split runs two versions of a tenant side by side in one
 * runtime: only the Lua runtime can (docs/deployments.md); for any other
 * the split would silently make the version whole. */
static int check_split_runtime(pc_pipeline *p, const char *tenant, uint64_t version,
                               const Popcast__Target *target, pc_err *err)
{
    if (!pc_target_splits(target))
        return PC_OK;
    uint64_t seq = 0;
    Popcast__Manifest *m = NULL;
    int rc = pc_store_version_seq(p->store, tenant, version, &seq, err);
    if (rc == PC_OK)
        rc = pc_store_get_manifest(p->store, seq, &m, err);
    if (rc == PC_OK && (m->runtime == NULL || strcmp(m->runtime, "lua") != 0))
        rc = pc_err_set(err, PC_E_INVALID,
                        "version %llu of %s runs on %s: a traffic split needs the lua runtime",
                        (unsigned long long)version, tenant, m->runtime ? m->runtime : "?");
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

/* Versions and signs a tenant change at seq, after the changes already in
 * the batch, and adds it to the batch (r is its result slot). Returns an
 * error only when it was not added; a replay (find_replay) returns PC_OK
 * with r->replayed set and adds nothing. */
static int batch_add(pc_pipeline *p, pc_change *c, uint64_t seq, pc_change_result *r)
{
    if (c->idempotency_key[0] != '\0') {
        int rrc = find_replay(p, c, r);
        if (rrc != PC_E_NOTFOUND)
            return rrc;
        pc_err_clear(&r->err);
    }
    pc_tenant_state t;
    int rc = batch_tenant_state(p, c->tenant, &t, &r->err);
    if (rc != PC_OK)
        return rc;
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    uint8_t hash[PC_HASH_LEN];
    const pc_change_content *content = NULL;
    switch (c->kind) {
    case PC_CHANGE_DEPLOY:
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY;
        content = &c->u.deploy;
        break;
    case PC_CHANGE_ROLLBACK:
        /* Never behind a change of the same tenant in the batch (see
         * joins_batch): it is judged on committed state only. */
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK;
        if (t.last_version == 0)
            return pc_err_set(&r->err, PC_E_NOTFOUND, "tenant %s not found", c->tenant);
        if ((rc = load_version_content(p, c, r)) != PC_OK)
            return rc;
        m.rollback_of = c->u.rollback.to;
        content = &c->u.rollback.content;
        break;
    case PC_CHANGE_DELETE:
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE;
        if (t.last_version == 0)
            return pc_err_set(&r->err, PC_E_NOTFOUND, "tenant %s not found", c->tenant);
        if (t.deleted)
            return pc_err_set(&r->err, PC_E_NOTFOUND, "tenant %s is already deleted", c->tenant);
        break;
    case PC_CHANGE_STAGE:
        /* Like a rollback, judged on committed state only (joins_batch):
         * only the active version of a tenant that is not deleted. */
        m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE;
        if (t.last_version == 0 || t.deleted)
            return pc_err_set(&r->err, PC_E_NOTFOUND, "tenant %s not found", c->tenant);
        if (c->u.stage.version != t.active_version)
            return pc_err_set(&r->err, PC_E_STALE_VERSION,
                              "version %llu of %s is not its active version (%llu is): a newer "
                              "change overtook it",
                              (unsigned long long)c->u.stage.version, c->tenant,
                              (unsigned long long)t.active_version);
        if ((rc = check_split_runtime(p, c->tenant, c->u.stage.version, c->target, &r->err)) !=
            PC_OK)
            return rc;
        break;
    default: return pc_err_set(&r->err, PC_E_INTERNAL, "not a tenant change");
    }
    m.tenant = c->tenant;
    m.target = c->kind == PC_CHANGE_DELETE ? NULL : c->target;
    m.version = c->kind == PC_CHANGE_STAGE ? c->u.stage.version : t.last_version + 1;
    m.seq = seq;
    m.created_unix_ms = pc_wall_ms();
    m.author = c->author;
    m.message = c->message;
    if (content != NULL) {
        pc_hash(hash, content->bundle, content->bundle_len);
        m.bundle_hash.data = hash;
        m.bundle_hash.len = PC_HASH_LEN;
        m.bundle_size = content->bundle_len;
        m.entrypoint = (char *)content->entrypoint;
        m.runtime = (char *)content->runtime;
    }

    const pc_signing_key *key = NULL;
    if ((rc = pc_signer_current(p->signer, &key, &r->err)) != PC_OK)
        return rc;
    size_t i = p->n_flight;
    Popcast__SignedManifest *sm = &p->signed_[i];
    if ((rc = pc_envelope_sign_manifest(key, &m, sm, &r->err)) != PC_OK)
        return rc;
    r->version = m.version;
    r->seq = m.seq;
    r->bundle_size = m.bundle_size;
    r->rollback_of = m.rollback_of;
    r->created_unix_ms = m.created_unix_ms;
    snprintf(r->author, sizeof(r->author), "%s", c->author);
    snprintf(r->message, sizeof(r->message), "%s", c->message);
    Popcast__Entry *e = &p->entries[i];
    popcast__entry__init(e);
    e->signed_ = sm;
    if (content != NULL) {
        memcpy(r->hash, hash, PC_HASH_LEN);
        snprintf(r->entrypoint, sizeof(r->entrypoint), "%s", content->entrypoint);
        snprintf(r->runtime, sizeof(r->runtime), "%s", content->runtime);
        e->bundle.data = content->bundle;
        e->bundle.len = content->bundle_len;
    }
    p->entry_ptrs[i] = e;
    if (c->idempotency_key[0] != '\0') {
        Popcast__IdempotencyRecord *k = &p->claims[p->n_claims];
        popcast__idempotency_record__init(k);
        k->tenant = c->tenant;
        k->key = c->idempotency_key;
        k->fingerprint.data = c->fingerprint;
        k->fingerprint.len = PC_HASH_LEN;
        k->seq = m.seq;
        k->created_unix_ms = m.created_unix_ms;
        p->claim_ptrs[p->n_claims++] = k;
    }
    p->flight[i] = c;
    p->n_flight = i + 1;
    return PC_OK;
}

/* A KEY_ROTATION entry: announces the key that signs every later entry.
 * Signed by the current key, or by a root key (the emergency path). */
static int start_rotation(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    uint64_t applied = 0;
    int rc = pc_store_applied_seq(p->store, &applied, &r->err);
    if (rc != PC_OK)
        return rc;
    pc_public_key cur;
    uint64_t since = 0;
    pc_err cur_err;
    int cur_rc = pc_signer_current_public(p->signer, &cur, &since, &cur_err);
    bool have_cur = cur_rc == PC_OK;
    /* Only "no held key may sign yet" leaves a way to rotate (a root's
     * authorization or signature); a chain that does not verify leaves
     * none. */
    if (!have_cur && (cur_rc != PC_E_UNAVAILABLE ||
                      (c->u.key.authorization == NULL && !c->u.key.sign_with_root))) {
        r->err = cur_err;
        return cur_err.code;
    }
    if (have_cur && memcmp(cur.pk, c->u.key.next, PC_PK_LEN) == 0)
        return pc_err_set(&r->err, PC_E_INVALID, "that key is already the signing key");
    if (pc_signer_held(p->signer, c->u.key.next) == NULL)
        return pc_err_set(&r->err, PC_E_INVALID,
                          "this controller does not hold the next key's secret: add its key "
                          "file to signing_key on every controller first");
    const pc_signing_key *key = NULL;
    if (c->u.key.authorization != NULL) {
        Popcast__RotationAuthorization *a = NULL;
        if ((rc = pc_envelope_verify_authorization(pc_signer_roots(p->signer),
                                                   c->u.key.authorization, &a, &r->err)) != PC_OK)
            return pc_err_set(&r->err, PC_E_INVALID, "authorization: %s", r->err.msg);
        int for_next = memcmp(a->next_public_key.data, c->u.key.next, PC_PK_LEN) == 0;
        /* As agents judge it (trust.h): the key in force, or before any
         * rotation, a root key. */
        int replaces_current = since != 0
                                   ? memcmp(a->replaces_key_id.data, cur.id, PC_KEY_ID_LEN) == 0
                                   : pc_signer_is_root_id(p->signer, a->replaces_key_id.data);
        popcast__rotation_authorization__free_unpacked(a, NULL);
        if (!for_next)
            return pc_err_set(&r->err, PC_E_INVALID, "the authorization is for another next key");
        if (!replaces_current)
            return pc_err_set(&r->err, PC_E_INVALID,
                              "the authorization replaces another key than the current one");
        key = pc_signer_held(p->signer, c->u.key.next);
    } else if (c->u.key.sign_with_root) {
        if (!pc_signer_is_root(p->signer, c->u.key.root))
            return pc_err_set(&r->err, PC_E_INVALID, "sign_with is not a root key");
        if ((key = pc_signer_held(p->signer, c->u.key.root)) == NULL)
            return pc_err_set(&r->err, PC_E_INVALID,
                              "this controller does not hold that root key's secret");
    } else if ((rc = pc_signer_current(p->signer, &key, &r->err)) != PC_OK) {
        return rc;
    }
    Popcast__Manifest m = POPCAST__MANIFEST__INIT;
    m.kind = POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION;
    m.seq = applied + 1;
    m.created_unix_ms = pc_wall_ms();
    m.next_public_key.data = c->u.key.next;
    m.next_public_key.len = PC_PK_LEN;
    Popcast__SignedManifest sm;
    if ((rc = pc_envelope_sign_manifest(key, &m, &sm, &r->err)) != PC_OK)
        return rc;
    sm.root_authorization = c->u.key.authorization; /* still owned by c */
    r->seq = m.seq;
    r->created_unix_ms = m.created_unix_ms;
    return propose_signed(p, c, &sm, r);
}

/* Proposes a token record as the change in flight. */
static int propose_token(pc_pipeline *p, pc_change *c, const Popcast__TokenRecord *t,
                         pc_change_result *r)
{
    fly_alone(p, c);
    int rc = pc_cluster_propose_token(p->cluster, t, change_done, p, &r->err);
    if (rc != PC_OK)
        p->n_flight = 0;
    return rc;
}

static int start_token_create(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    char *tenants[PC_TOKEN_MAX_TENANTS];
    for (size_t i = 0; i < c->u.token.n_tenants; i++)
        tenants[i] = c->u.token.tenants[i];
    Popcast__TokenRecord t = POPCAST__TOKEN_RECORD__INIT;
    t.id = c->u.token.id;
    t.hash.data = c->u.token.hash;
    t.hash.len = PC_HASH_LEN;
    t.name = c->u.token.name;
    t.tenants = tenants;
    t.n_tenants = c->u.token.n_tenants;
    t.created_unix_ms = pc_wall_ms();
    return propose_token(p, c, &t, r);
}

static int start_token_revoke(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    Popcast__TokenRecord *t = NULL;
    int rc = pc_registry_find_token(p->store, c->u.token.id, &t, &r->err);
    if (rc != PC_OK)
        return rc;
    t->revoked = 1;
    rc = propose_token(p, c, t, r);
    popcast__token_record__free_unpacked(t, NULL);
    return rc;
}

/* Proposes an agent record as the change in flight. */
static int propose_agent(pc_pipeline *p, pc_change *c, const Popcast__AgentRecord *a,
                         pc_change_result *r)
{
    fly_alone(p, c);
    int rc = pc_cluster_propose_agent(p->cluster, a, change_done, p, &r->err);
    if (rc != PC_OK)
        p->n_flight = 0;
    return rc;
}

static int start_agent_enroll(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    if (c->u.agent.first_use) {
        /* Changes start one at a time on a store holding every committed
         * one: no other binding can land between this check and the
         * proposal. */
        Popcast__AgentRecord *old = NULL;
        int rc = pc_registry_get_agent(p->store, c->u.agent.id, &old, &r->err);
        if (rc == PC_OK) {
            popcast__agent_record__free_unpacked(old, NULL);
            return pc_err_set(&r->err, PC_E_EXISTS, "agent %s already has a key", c->u.agent.id);
        }
        if (rc != PC_E_NOTFOUND)
            return rc;
    }
    Popcast__AgentRecord a = POPCAST__AGENT_RECORD__INIT;
    a.first_use = c->u.agent.first_use;
    a.agent_id = c->u.agent.id;
    a.public_key.data = c->u.agent.pk;
    a.public_key.len = PC_PK_LEN;
    a.enrolled_unix_ms = pc_wall_ms();
    return propose_agent(p, c, &a, r);
}

static int start_agent_revoke(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    Popcast__AgentRecord *old = NULL;
    int rc = pc_registry_get_agent(p->store, c->u.agent.id, &old, &r->err);
    if (rc == PC_E_NOTFOUND)
        return pc_err_set(&r->err, PC_E_NOTFOUND, "agent %s is not enrolled", c->u.agent.id);
    if (rc != PC_OK)
        return rc;
    memcpy(c->u.agent.pk, old->public_key.data, PC_PK_LEN);
    Popcast__AgentRecord a = POPCAST__AGENT_RECORD__INIT;
    a.agent_id = c->u.agent.id;
    a.public_key.data = c->u.agent.pk;
    a.public_key.len = PC_PK_LEN;
    a.enrolled_unix_ms = old->enrolled_unix_ms;
    a.revoked = 1;
    popcast__agent_record__free_unpacked(old, NULL);
    return propose_agent(p, c, &a, r);
}

static int start_add_node(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    fly_alone(p, c);
    p->flight_started_ns = 0; /* waits for the node to catch up: not a commit's latency */
    int rc = pc_cluster_add(p->cluster, c->u.node.id, c->u.node.raft_address, c->u.node.api_url,
                            change_done, p, &r->err);
    if (rc != PC_OK)
        p->n_flight = 0;
    return rc;
}

static int start_remove_node(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    fly_alone(p, c);
    p->flight_started_ns = 0; /* a configuration change: not a commit's latency */
    int rc = pc_cluster_remove(p->cluster, c->u.node.id, change_done, p, &r->err);
    if (rc != PC_OK)
        p->n_flight = 0;
    return rc;
}

typedef struct deployments_seen {
    uint64_t last_id, version;
    uint64_t running_id; /* a deployment of version not final yet (0: none) */
} deployments_seen;

static int see_deployment(void *arg, const Popcast__DeploymentRecord *d)
{
    deployments_seen *s = arg;
    if (d->id > s->last_id)
        s->last_id = d->id;
    if (d->version == s->version && !pc_deployment_final(d))
        s->running_id = d->id;
    return 0;
}

/* A new deployment: of the tenant's active version, with none of it
 * still going, the next id; judged on the store, which holds every
 * committed change (changes start one at a time). */
static int start_new_deployment(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    Popcast__DeploymentRecord *d = c->u.deployment.create;
    pc_tenant_state t;
    int rc = pc_store_get_tenant(p->store, d->tenant, &t, &r->err);
    if (rc == PC_E_NOTFOUND || (rc == PC_OK && t.deleted))
        return pc_err_set(&r->err, PC_E_NOTFOUND, "tenant %s not found", d->tenant);
    if (rc != PC_OK)
        return rc;
    if (d->version == 0)
        d->version = t.active_version;
    if (d->version != t.active_version)
        return pc_err_set(&r->err, PC_E_STALE_VERSION,
                          "version %llu of %s is not its active version (%llu is): deploy a "
                          "version as it is made, or roll back to it first",
                          (unsigned long long)d->version, d->tenant,
                          (unsigned long long)t.active_version);
    deployments_seen seen = {.version = d->version};
    if ((rc = pc_registry_foreach_deployment(p->store, d->tenant, see_deployment, &seen,
                                             &r->err)) != PC_OK)
        return rc;
    if (seen.running_id != 0)
        return pc_err_set(&r->err, PC_E_EXISTS, "deployment %llu of %s version %llu is not over",
                          (unsigned long long)seen.running_id, d->tenant,
                          (unsigned long long)d->version);
    for (size_t i = 0; i < d->n_plan; i++)
        if ((rc = check_split_runtime(p, d->tenant, d->version, d->plan[i]->target, &r->err)) !=
            PC_OK)
            return rc;
    if (d->baseline >= d->version)
        d->baseline = 0;
    d->id = seen.last_id + 1;
    if ((rc = pc_deployment_check_new(d, &r->err)) != PC_OK)
        return rc;
    fly_alone(p, c);
    r->deployment_id = d->id;
    r->version = d->version;
    rc = pc_cluster_propose_deployment(p->cluster, d, change_done, p, &r->err);
    if (rc != PC_OK)
        p->n_flight = 0;
    return rc;
}

/* A deployment's next record: the committed one, changed by the op. */
static int start_deployment(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    if (c->u.deployment.create != NULL)
        return start_new_deployment(p, c, r);
    Popcast__DeploymentRecord *cur = NULL, *next = NULL;
    int rc = pc_registry_get_deployment(p->store, c->tenant, c->u.deployment.id, &cur, &r->err);
    if (rc == PC_E_NOTFOUND)
        rc = pc_err_set(&r->err, PC_E_NOTFOUND, "%s has no deployment %llu", c->tenant,
                        (unsigned long long)c->u.deployment.id);
    if (rc == PC_OK)
        rc = pc_deployment_apply(cur, &c->u.deployment.op, pc_wall_ms(), c->author, &next, &r->err);
    if (rc == PC_OK)
        rc = pc_deployment_check_update(cur, next, &r->err);
    if (rc == PC_OK) {
        fly_alone(p, c);
        r->deployment_id = next->id;
        r->version = next->version;
        if ((rc = pc_cluster_propose_deployment(p->cluster, next, change_done, p, &r->err)) !=
            PC_OK)
            p->n_flight = 0;
    }
    if (cur != NULL)
        popcast__deployment_record__free_unpacked(cur, NULL);
    if (next != NULL)
        popcast__deployment_record__free_unpacked(next, NULL);
    return rc;
}

/* A tenant's default plan, set or cleared (no stages). */
static int start_plan(pc_pipeline *p, pc_change *c, pc_change_result *r)
{
    Popcast__TenantPlan *plan = c->u.plan.record;
    int rc =
        plan->n_plan != 0 ? pc_deployment_check_plan(plan->plan, plan->n_plan, &r->err) : PC_OK;
    if (rc != PC_OK)
        return rc;
    fly_alone(p, c);
    if ((rc = pc_cluster_propose_plan(p->cluster, plan, change_done, p, &r->err)) != PC_OK)
        p->n_flight = 0;
    return rc;
}

/* How each kind of change but tenant changes starts, alone: builds its
 * record (or signs it) and proposes it as the change in flight. Returns
 * an error only when nothing was proposed. Tenant changes go in batches
 * (start_batch). */
typedef int (*start_fn)(pc_pipeline *p, pc_change *c, pc_change_result *r);
static const start_fn start_alone[PC_CHANGE_KIND_COUNT] = {
    [PC_CHANGE_ADD_NODE] = start_add_node,
    [PC_CHANGE_REMOVE_NODE] = start_remove_node,
    [PC_CHANGE_TOKEN_CREATE] = start_token_create,
    [PC_CHANGE_TOKEN_REVOKE] = start_token_revoke,
    [PC_CHANGE_AGENT_ENROLL] = start_agent_enroll,
    [PC_CHANGE_AGENT_REVOKE] = start_agent_revoke,
    [PC_CHANGE_KEY_ROTATE] = start_rotation,
    [PC_CHANGE_DEPLOYMENT] = start_deployment,
    [PC_CHANGE_PLAN] = start_plan,
};

/* Answers a change that was not proposed (an error, or a replay's
 * result), and frees it. */
static void refuse(pc_change *c, pc_change_result *r, int rc)
{
    r->rc = rc;
    r->err.code = rc;
    c->done(c, r);
    pc_change_free(c);
}

static bool in_flight(const pc_pipeline *p, const char *tenant)
{
    for (size_t i = 0; i < p->n_flight; i++)
        if (strcmp(p->flight[i]->tenant, tenant) == 0)
            return true;
    return false;
}

static bool key_in_flight(const pc_pipeline *p, const pc_change *c)
{
    for (size_t i = 0; c->idempotency_key[0] != '\0' && i < p->n_flight; i++)
        if (strcmp(p->flight[i]->tenant, c->tenant) == 0 &&
            strcmp(p->flight[i]->idempotency_key, c->idempotency_key) == 0)
            return true;
    return false;
}

/* Whether the queued change c may join the batch being built, whose
 * bundles hold bytes so far. A rollback or a delete whose tenant is
 * already in the batch waits for the next one: each can be refused (no
 * such version, already deleted), and a refusal must rest on committed
 * state only, never on changes of this batch that might yet fail to
 * commit; a rollback also reads the version it restores from the store.
 * A deploy is never refused for its tenant's state, so it may follow
 * changes of its tenant. Nothing joins once the bytes limit is reached:
 * a bundle larger than the limit goes alone. */
static bool joins_batch(const pc_pipeline *p, const pc_change *c, size_t bytes)
{
    if ((unsigned)c->kind >= PC_CHANGE_KIND_COUNT || !pc_change_kind_get(c->kind)->tenant)
        return false;
    if (bytes >= p->batch_max_bytes)
        return false;
    /* A retry of a change in this batch waits for it to commit, then gets
     * its result (find_replay). */
    if (key_in_flight(p, c))
        return false;
    if (c->kind == PC_CHANGE_DEPLOY)
        return c->u.deploy.bundle_len <= p->batch_max_bytes - bytes;
    return !in_flight(p, c->tenant);
}

/* Takes the next queued change if it joins the batch. */
static pc_change *take_for_batch(pc_pipeline *p, size_t bytes)
{
    if (p->n_flight >= p->batch_max_changes)
        return NULL;
    pthread_mutex_lock(&p->lock);
    pc_change *c = p->head;
    if (c != NULL && !p->closing && joins_batch(p, c, bytes)) {
        p->head = c->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->pending--;
    } else {
        c = NULL;
    }
    pthread_mutex_unlock(&p->lock);
    return c;
}

/* Group commit: the tenant change c and the tenant changes queued behind
 * it (up to the batch limits) are versioned and signed in order, each at
 * its own seq, and proposed as one raft command. A change that cannot be
 * made (a rollback to a version that does not exist...) is answered at
 * once and takes no seq. Every change is answered after the command
 * commits; at low load a batch is one change, proposed at once, as
 * before. */
static void start_batch(pc_pipeline *p, pc_change *c)
{
    uint64_t applied = 0;
    pc_change_result *r = &p->flight_results[0];
    memset(r, 0, sizeof(*r));
    int rc = pc_store_applied_seq(p->store, &applied, &r->err);
    if (rc != PC_OK) {
        refuse(c, r, rc);
        return;
    }
    size_t bytes = 0;
    p->n_claims = 0;
    while (c != NULL) {
        r = &p->flight_results[p->n_flight];
        memset(r, 0, sizeof(*r));
        rc = batch_add(p, c, applied + 1 + p->n_flight, r);
        if (rc != PC_OK) {
            refuse(c, r, rc);
        } else if (r->replayed) {
            pc_info("pipeline", "idempotency key %s of %s: answered again with version %llu",
                    c->idempotency_key, c->tenant, (unsigned long long)r->version);
            refuse(c, r, PC_OK); /* answered from the committed change */
        } else {
            bytes += r->bundle_size;
        }
        c = take_for_batch(p, bytes);
    }
    size_t n = p->n_flight;
    if (n == 0)
        return;
    pc_err err;
    pc_err_clear(&err);
    p->flight_started_ns = pc_mono_ns();
    rc = pc_cluster_propose_entries(p->cluster, p->entry_ptrs, n, p->claim_ptrs, p->n_claims,
                                    change_done, p, &err);
    for (size_t i = 0; i < n; i++)
        pc_envelope_signed_clear(&p->signed_[i]);
    if (rc != PC_OK) {
        p->n_flight = 0;
        for (size_t i = 0; i < n; i++) {
            p->flight_results[i].err = err;
            refuse(p->flight[i], &p->flight_results[i], rc);
            p->flight[i] = NULL;
        }
        return;
    }
    pc_metric_add(p->m_commands, 1);
    pc_metric_add(p->m_changes, n);
}

static void resume(void *arg)
{
    pc_pipeline *p = arg;
    PC_CHECK_OWNER(&p->loop_thread);
    if (!p->closing)
        uv_async_send(&p->wake);
}

static void drain(uv_async_t *handle)
{
    pc_pipeline *p = handle->data;
    PC_CHECK_OWNER(&p->loop_thread);
    while (p->n_flight == 0) {
        pthread_mutex_lock(&p->lock);
        pc_change *c = p->head;
        if (c != NULL && !pc_cluster_ready_to_write(p->cluster) && pc_cluster_leading(p->cluster)) {
            /* Elected, but earlier terms' entries are still being
             * applied: new seqs must follow them. Wait, keep the queue. */
            pthread_mutex_unlock(&p->lock);
            pc_cluster_when_ready(p->cluster, resume, p);
            return;
        }
        if (c != NULL) {
            p->head = c->next;
            if (p->head == NULL)
                p->tail = NULL;
            p->pending--;
        }
        pthread_mutex_unlock(&p->lock);
        if (c == NULL)
            return;
        pc_change_result *r = &p->flight_results[0];
        memset(r, 0, sizeof(*r));
        if (!pc_cluster_ready_to_write(p->cluster)) {
            refuse(c, r, pc_err_set(&r->err, PC_E_NOT_LEADER, "this controller is not the leader"));
        } else if ((unsigned)c->kind >= PC_CHANGE_KIND_COUNT) {
            refuse(c, r,
                   pc_err_set(&r->err, PC_E_INTERNAL, "unknown change kind %d", (int)c->kind));
        } else if (pc_change_kind_get(c->kind)->tenant) {
            start_batch(p, c);
        } else {
            int rc = start_alone[c->kind](p, c, r);
            if (rc != PC_OK)
                refuse(c, r, rc);
        }
    }
}

int pc_pipeline_new(pc_pipeline **out, uv_loop_t *loop, pc_store *store, pc_signer *signer,
                    pc_cluster *cluster, const pc_pipeline_options *opt, pc_err *err)
{
    pc_pipeline *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    p->loop = loop;
    p->store = store;
    p->signer = signer;
    p->cluster = cluster;
    p->max_pending = opt->max_pending;
    p->batch_max_changes = opt->batch_max_changes ? opt->batch_max_changes : 1;
    p->batch_max_bytes = opt->batch_max_bytes ? opt->batch_max_bytes : SIZE_MAX;
    size_t n = p->batch_max_changes;
    p->flight = calloc(n, sizeof(*p->flight));
    p->flight_results = calloc(n, sizeof(*p->flight_results));
    p->entries = calloc(n, sizeof(*p->entries));
    p->entry_ptrs = calloc(n, sizeof(*p->entry_ptrs));
    p->signed_ = calloc(n, sizeof(*p->signed_));
    p->claims = calloc(n, sizeof(*p->claims));
    p->claim_ptrs = calloc(n, sizeof(*p->claim_ptrs));
    pthread_mutex_init(&p->lock, NULL);
    if (p->flight == NULL || p->flight_results == NULL || p->entries == NULL ||
        p->entry_ptrs == NULL || p->signed_ == NULL || p->claims == NULL || p->claim_ptrs == NULL) {
        free_pipeline(p);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    if (opt->metrics != NULL) {
        p->m_commands =
            pc_metrics_counter(opt->metrics, "popcast_controller_commit_commands_total", NULL,
                               "raft commands carrying tenant changes (a batch is one)");
        p->m_changes = pc_metrics_counter(opt->metrics, "popcast_controller_commit_changes_total",
                                          NULL, "tenant changes proposed in those commands");
        p->m_commit_latency = pc_metrics_latency(
            opt->metrics, "popcast_controller_commit_seconds", NULL,
            "from proposing a raft command to its commit and apply on this node (a batch is one)");
    }
    pc_thread_own(&p->loop_thread);
    if (uv_async_init(loop, &p->wake, drain) != 0) {
        free_pipeline(p);
        return pc_err_set(err, PC_E_INTERNAL, "uv_async_init failed");
    }
    p->wake.data = p;
    *out = p;
    return PC_OK;
}

static void free_after_close(uv_handle_t *h)
{
    pc_pipeline *p = h->data;
    p->wake_closed = true;
    if (p->n_flight == 0)
        free_pipeline(p);
}

void pc_pipeline_shutdown(pc_pipeline *p)
{
    PC_CHECK_OWNER(&p->loop_thread);
    /* The change in flight is answered now (raft's own callback may only
     * come when the cluster stops, after the API has to be quiet). */
    if (p->n_flight > 0 && !p->flight_answered) {
        for (size_t i = 0; i < p->n_flight; i++) {
            pc_change_result r;
            memset(&r, 0, sizeof(r));
            r.rc =
                pc_err_set(&r.err, PC_E_OUTCOME_UNKNOWN,
                           "controller is shutting down: the change may or may not be committed; "
                           "retry with the same Idempotency-Key, or check before retrying");
            p->flight[i]->done(p->flight[i], &r);
        }
        p->flight_answered = true;
    }
    /* A wait for readiness would otherwise call resume on a freed pipeline
     * when the cluster stops leading (at the latest, at its stop). Only
     * the first call: the cluster may be gone by a later one (pipeline.h). */
    if (!p->closing)
        pc_cluster_forget_when_ready(p->cluster, resume, p);
    pthread_mutex_lock(&p->lock);
    p->closing = 1;
    pc_change *c = p->head;
    p->head = p->tail = NULL;
    p->pending = 0;
    pthread_mutex_unlock(&p->lock);
    while (c != NULL) {
        pc_change *next = c->next;
        pc_change_result r;
        memset(&r, 0, sizeof(r));
        r.rc = pc_err_set(&r.err, PC_E_UNAVAILABLE, "controller is shutting down");
        c->done(c, &r);
        pc_change_free(c);
        c = next;
    }
}

void pc_pipeline_close(pc_pipeline *p)
{
    if (p == NULL)
        return;
    PC_CHECK_OWNER(&p->loop_thread);
    pc_pipeline_shutdown(p);
    uv_close((uv_handle_t *)&p->wake, free_after_close);
}

int pc_pipeline_submit(pc_pipeline *p, pc_change *c, pc_err *err)
{
    pthread_mutex_lock(&p->lock);
    if (p->closing) {
        pthread_mutex_unlock(&p->lock);
        return pc_err_set(err, PC_E_UNAVAILABLE, "controller is shutting down");
    }
    if (p->pending >= p->max_pending) {
        pthread_mutex_unlock(&p->lock);
        return pc_err_set(err, PC_E_UNAVAILABLE, "%zu changes are already queued; retry later",
                          p->pending);
    }
    c->next = NULL;
    if (p->tail)
        p->tail->next = c;
    else
        p->head = c;
    p->tail = c;
    p->pending++;
    /* Under the lock, so that close cannot slip in between. */
    uv_async_send(&p->wake);
    pthread_mutex_unlock(&p->lock);
    return PC_OK;
}
