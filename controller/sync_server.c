/* sync_server.c - catch-up, snapshots, chunks and status (see
 * sync_server.h). */
#include "sync_server.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "change.h"
#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "nng_close.h"
#include "protocol_limits.h"
#include "registry.h"
#include "names.h"
#include "strmap.h"
#include "tail_lines.h"

/* Agent ids whose first-use binding may be in the pipeline at once. */
#define BINDINGS_MAX 256

typedef struct worker {
    struct pc_sync_server *server;
    nng_aio *aio;
    nng_ctx ctx;
    int sending;
} worker;

struct pc_sync_server {
    pc_sync_server_options opt;
    nng_socket sock;
    worker *workers;
    size_t n_workers;
    pc_metric *m_sync, *m_snapshot, *m_chunk, *m_status, *m_bad, *m_bindings;
    pc_metric *m_deltas, *m_resend_whole, *m_batches;
    char bound_url[300];
    /* Trust on first use: where bindings are submitted (NULL while the
     * controller starts or stops), and the ids whose binding is queued or
     * in flight (each submitted once). */
    pthread_mutex_t bind_lock;
    pc_pipeline *pipeline;
    pc_strmap *binding;
    /* Tails: per agent id, the counter of the last batch taken (a boxed
     * uint64_t), so a batch replayed is refused. */
    pthread_mutex_t tail_lock;
    pc_strmap *tail_counters;
    pc_metric *m_tail_lines, *m_tail_refused;
};

/* Builds an Entry for seq from the store. The bundle goes inline when it is
 * small enough and fits in *budget; otherwise it is omitted. */
static int load_entry(pc_sync_server *s, uint64_t seq, size_t *budget, Popcast__Entry **out,
                      pc_err *err)
{
    Popcast__LogRecord *rec = NULL;
    int rc = pc_store_get_log(s->opt.store, seq, &rec, err);
    if (rc != PC_OK)
        return rc;
    Popcast__Manifest *m = rec->signed_
                               ? popcast__manifest__unpack(NULL, rec->signed_->manifest.len,
                                                           rec->signed_->manifest.data)
                               : NULL;
    if (m == NULL) {
        popcast__log_record__free_unpacked(rec, NULL);
        return pc_err_set(err, PC_E_STORE, "stored manifest of seq %llu does not decode",
                          (unsigned long long)seq);
    }
    Popcast__Entry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        goto out;
    }
    popcast__entry__init(e);
    size_t mlen = rec->signed_->manifest.len + rec->signed_->signature.len + 64;
    *budget = *budget > mlen ? *budget - mlen : 0;
    /* Take the signed manifest over from the record. */
    e->signed_ = rec->signed_;
    rec->signed_ = NULL;
    if (pc_manifest_has_content(m)) {
        if (m->bundle_size <= s->opt.inline_max && m->bundle_size <= *budget) {
            rc = pc_store_get_blob(s->opt.store, m->bundle_hash.data, &e->bundle.data,
                                   &e->bundle.len, err);
            if (rc != PC_OK) {
                popcast__signed_manifest__free_unpacked(e->signed_, NULL);
                free(e);
                goto out;
            }
            *budget -= e->bundle.len;
        } else {
            e->bundle_omitted = 1;
        }
    }
    *out = e;
out:
    popcast__manifest__free_unpacked(m, NULL);
    popcast__log_record__free_unpacked(rec, NULL);
    return rc;
}

/* protobuf-c initialises proto3 strings to a shared static empty string:
 * only the ones a handler replaced were allocated. */
static void free_string(char *text)
{
    if (text != protobuf_c_empty_string)
        free(text);
}

static void free_entries(Popcast__Entry **entries, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (entries[i]->signed_)
            popcast__signed_manifest__free_unpacked(entries[i]->signed_, NULL);
        free(entries[i]->bundle.data);
        free(entries[i]);
    }
    free(entries);
}

/* Entries behind beyond which an agent is sent a snapshot rather than
 * the entries: snapshot_lag, or (snapshot_lag_tenants) the number of
 * tenants when that is more. A snapshot carries one manifest per tenant
 * and catch-up one per entry, so below the tenant count catch-up moves
 * less; with 100,000 tenants an agent 1,025 entries behind during a burst
 * took a 100,000-tenant snapshot, fell behind again while installing it,
 * and took another. */
static uint64_t snapshot_threshold(pc_sync_server *s)
{
    pc_store_stats stats;
    if (!s->opt.snapshot_lag_tenants || pc_store_stats_get(s->opt.store, &stats, NULL) != PC_OK)
        return s->opt.snapshot_lag;
    return stats.tenants > s->opt.snapshot_lag ? stats.tenants : s->opt.snapshot_lag;
}

static void handle_sync(pc_sync_server *s, const Popcast__SyncRequest *req,
                        Popcast__SyncResponse *resp, Popcast__Entry ***entries_out)
{
    pc_err err;
    uint64_t head = 0, first = 0, last = 0;
    if (pc_store_applied_seq(s->opt.store, &head, &err) != PC_OK ||
        pc_store_log_bounds(s->opt.store, &first, &last, &err) != PC_OK) {
        resp->error = strdup(err.msg);
        return;
    }
    resp->head_seq = head;
    uint64_t after = req->after_seq;
    if (after >= head)
        return;
    if ((after == 0 && head > 0) || head - after > snapshot_threshold(s) ||
        (first > 0 && after + 1 < first)) {
        resp->snapshot_required = 1;
        return;
    }
    size_t max_entries = req->max_entries ? req->max_entries : 64;
    if (max_entries > PC_SYNC_MAX_ENTRIES)
        max_entries = PC_SYNC_MAX_ENTRIES;
    size_t budget = s->opt.max_reply;
    if (req->max_bytes != 0 && req->max_bytes < budget)
        budget = (size_t)req->max_bytes;
    Popcast__Entry **entries = calloc(max_entries, sizeof(*entries));
    if (entries == NULL) {
        resp->error = strdup("out of memory");
        return;
    }
    size_t n = 0;
    for (uint64_t seq = after + 1; seq <= head && n < max_entries; seq++) {
        if (n > 0 && budget < 1024)
            break;
        if (load_entry(s, seq, &budget, &entries[n], &err) != PC_OK) {
            if (n == 0)
                resp->error = strdup(err.msg);
            break;
        }
        n++;
    }
    resp->entries = entries;
    resp->n_entries = n;
    *entries_out = entries;
}

typedef struct snapshot_walk {
    pc_sync_server *s;
    Popcast__Entry **entries;
    size_t n, cap;
    size_t budget;
    int rc;
    pc_err err;
} snapshot_walk;

static int snapshot_add(snapshot_walk *w, uint64_t seq)
{
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 64;
        Popcast__Entry **grown = realloc(w->entries, cap * sizeof(*grown));
        if (grown == NULL) {
            w->rc = pc_err_set(&w->err, PC_E_NOMEM, "out of memory");
            return 1;
        }
        w->entries = grown;
        w->cap = cap;
    }
    w->rc = load_entry(w->s, seq, &w->budget, &w->entries[w->n], &w->err);
    if (w->rc != PC_OK)
        return 1;
    w->n++;
    return 0;
}

/* A tenant's latest entry, then the last STAGE of it; while that version
 * is not targeted at everyone, the version the other agents serve first:
 * an agent that joins in the middle of a deployment serves exactly what
 * its place in it says (docs/deployments.md). */
static int snapshot_item(void *arg, const pc_tenant_state *t, uint64_t seq)
{
    snapshot_walk *w = arg;
    if (t->active_targeted && t->base_seq != 0 && t->base_seq < seq &&
        snapshot_add(w, t->base_seq) != 0)
        return 1;
    if (snapshot_add(w, seq) != 0)
        return 1;
    return t->stage_seq != 0 ? snapshot_add(w, t->stage_seq) : 0;
}

typedef struct rotation_walk {
    uint64_t up_to;
    Popcast__Entry **entries;
    size_t n, cap;
} rotation_walk;

/* Copies one stored rotation into the reply (a copy: the store's record is
 * freed after the callback). */
static int rotation_item(void *arg, const Popcast__SignedManifest *sm)
{
    rotation_walk *w = arg;
    Popcast__Manifest *m = popcast__manifest__unpack(NULL, sm->manifest.len, sm->manifest.data);
    uint64_t seq = m != NULL ? m->seq : 0;
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    if (seq == 0)
        return PC_E_STORE;
    if (seq > w->up_to)
        return 0; /* committed after the snapshot's read */
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        Popcast__Entry **grown = realloc(w->entries, cap * sizeof(*grown));
        if (grown == NULL)
            return PC_E_NOMEM;
        w->entries = grown;
        w->cap = cap;
    }
    size_t len = popcast__signed_manifest__get_packed_size(sm);
    uint8_t *buf = malloc(len ? len : 1);
    Popcast__Entry *e = calloc(1, sizeof(*e));
    if (buf == NULL || e == NULL) {
        free(buf);
        free(e);
        return PC_E_NOMEM;
    }
    popcast__signed_manifest__pack(sm, buf);
    popcast__entry__init(e);
    e->signed_ = popcast__signed_manifest__unpack(NULL, len, buf);
    free(buf);
    if (e->signed_ == NULL) {
        free(e);
        return PC_E_NOMEM;
    }
    w->entries[w->n++] = e;
    return 0;
}

/* The held key that was current at the snapshot's seq: the one the last
 * carried rotation announced, or a held root key before any. (Not simply
 * the signer's current key: a rotation committed after the snapshot was
 * read is not in it.) */
static const pc_signing_key *snapshot_key(pc_sync_server *s, Popcast__Entry *const *rotations,
                                          size_t n_rot, pc_err *err)
{
    if (n_rot > 0) {
        Popcast__SignedManifest *sm = rotations[n_rot - 1]->signed_;
        Popcast__Manifest *m = popcast__manifest__unpack(NULL, sm->manifest.len, sm->manifest.data);
        const pc_signing_key *key = NULL;
        if (m != NULL && m->next_public_key.len == PC_PK_LEN)
            key = pc_signer_held(s->opt.signer, m->next_public_key.data);
        if (m != NULL)
            popcast__manifest__free_unpacked(m, NULL);
        if (key == NULL)
            pc_err_set(err, PC_E_UNAVAILABLE,
                       "this controller does not hold the key current at the snapshot's seq");
        return key;
    }
    const pc_keyring *roots = pc_signer_roots(s->opt.signer);
    for (size_t i = 0; i < roots->count; i++) {
        const pc_signing_key *key = pc_signer_held(s->opt.signer, roots->keys[i].pk);
        if (key != NULL)
            return key;
    }
    pc_err_set(err, PC_E_UNAVAILABLE, "this controller holds none of the root keys");
    return NULL;
}

/* Signs what the snapshot in resp asserts into *out (its buffers are
 * malloc'd: free them with free_assertion). */
static int sign_snapshot(pc_sync_server *s, const Popcast__SnapshotResponse *resp,
                         Popcast__SignedSnapshotAssertion *out, pc_err *err)
{
    const pc_signing_key *key = snapshot_key(s, resp->rotations, resp->n_rotations, err);
    if (key == NULL)
        return err->code;
    uint8_t rot[PC_HASH_LEN], ten[PC_HASH_LEN];
    pc_envelope_snapshot_digest(resp->rotations, resp->n_rotations, rot);
    pc_envelope_snapshot_digest(resp->tenants, resp->n_tenants, ten);
    uint64_t head = resp->seq;
    if (pc_store_applied_seq(s->opt.store, &head, NULL) != PC_OK || head < resp->seq)
        head = resp->seq;
    Popcast__SnapshotAssertion a = POPCAST__SNAPSHOT_ASSERTION__INIT;
    a.seq = resp->seq;
    a.head_seq = head;
    a.rotations_digest = (ProtobufCBinaryData){PC_HASH_LEN, rot};
    a.tenants_digest = (ProtobufCBinaryData){PC_HASH_LEN, ten};
    a.time_unix_ms = pc_wall_ms();
    return pc_envelope_sign_snapshot(key, &a, out, err);
}

static void free_assertion(Popcast__SignedSnapshotAssertion *sa)
{
    free(sa->assertion.data);
    free(sa->signature.data);
    free(sa->key_id.data);
    popcast__signed_snapshot_assertion__init(sa);
}

static void handle_snapshot(pc_sync_server *s, Popcast__SnapshotResponse *resp,
                            Popcast__SignedSnapshotAssertion *assertion,
                            Popcast__Entry ***entries_out, size_t *n_out,
                            Popcast__Entry ***rotations_out, size_t *n_rot_out)
{
    snapshot_walk w = {.s = s, .budget = s->opt.max_reply};
    uint64_t seq = 0;
    int rc = pc_store_snapshot_read(s->opt.store, &seq, snapshot_item, &w, &w.err);
    if (rc != PC_OK || w.rc != PC_OK) {
        free_entries(w.entries, w.n);
        resp->error = strdup(w.err.msg);
        return;
    }
    /* Rotations are never removed, so reading them after the tenants and
     * keeping those up to seq gives exactly the chain as of seq. */
    rotation_walk rw = {.up_to = seq};
    pc_err err;
    if (pc_store_foreach_rotation(s->opt.store, rotation_item, &rw, &err) != PC_OK) {
        free_entries(w.entries, w.n);
        free_entries(rw.entries, rw.n);
        resp->error = strdup("cannot read key rotations");
        return;
    }
    resp->rotations = rw.entries;
    resp->n_rotations = rw.n;
    *rotations_out = rw.entries;
    *n_rot_out = rw.n;
    resp->seq = seq;
    resp->tenants = w.entries;
    resp->n_tenants = w.n;
    *entries_out = w.entries;
    *n_out = w.n;
    /* Agents install nothing a controller did not sign for. */
    if (seq > 0 && sign_snapshot(s, resp, assertion, &err) != PC_OK) {
        pc_warn("sync", "cannot sign a snapshot: %s", err.msg);
        resp->error = strdup(err.msg);
        resp->tenants = resp->rotations = NULL;
        resp->n_tenants = resp->n_rotations = 0;
        return;
    }
    if (seq > 0)
        resp->assertion = assertion;
}

static void handle_chunk(pc_sync_server *s, const Popcast__BundleChunkRequest *req,
                         Popcast__BundleChunkResponse *resp)
{
    if (req->bundle_hash.len != PC_HASH_LEN) {
        resp->error = strdup("bundle_hash must be 32 bytes");
        return;
    }
    size_t len = req->length ? req->length : s->opt.chunk_max;
    if (len > s->opt.chunk_max)
        len = s->opt.chunk_max;
    uint8_t *buf = malloc(len ? len : 1);
    size_t got = 0;
    uint64_t total = 0;
    pc_err err;
    if (buf == NULL) {
        resp->error = strdup("out of memory");
        return;
    }
    if (pc_store_read_blob(s->opt.store, req->bundle_hash.data, req->offset, buf, len, &got, &total,
                           &err) != PC_OK) {
        free(buf);
        resp->error = strdup(err.msg);
        return;
    }
    resp->data.data = buf;
    resp->data.len = got;
    resp->total_size = total;
}

/* The key bound to an agent id: PC_OK with *pk filled, PC_E_NOTFOUND when
 * the id has no record, PC_E_FORBIDDEN when its key was revoked, PC_E_STORE
 * when the record cannot be read. */
static int bound_key(pc_sync_server *s, const char *agent_id, pc_public_key *pk)
{
    Popcast__AgentRecord *a = NULL;
    pc_err err;
    int rc = pc_registry_get_agent(s->opt.store, agent_id, &a, &err);
    if (rc != PC_OK && rc != PC_E_NOTFOUND)
        pc_warn("sync", "cannot read the record of agent %s: %s", agent_id, err.msg);
    if (rc != PC_OK)
        return rc == PC_E_NOTFOUND ? rc : PC_E_STORE;
    rc = a->revoked ? PC_E_FORBIDDEN : PC_OK;
    memcpy(pk->pk, a->public_key.data, PC_PK_LEN);
    pc_key_id(pk->id, pk->pk);
    popcast__agent_record__free_unpacked(a, NULL);
    return rc;
}

/* Refuses a report: counted by reason (popcast_status_refused_total),
 * shown under the agent id it claims in the fleet, logged, and the reason
 * goes back to the sender. */
static void refuse_status(pc_sync_server *s, Popcast__StatusAck *ack, const char *agent,
                          const char *reason, const char *why)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    pc_metric_add(s->m_bad, 1);
    pc_metrics_inc(s->opt.metrics, "popcast_status_refused_total", labels);
    pc_rollout_refused(s->opt.rollout, agent, reason, pc_mono_ms());
    pc_warn("sync", "status report from %s refused (%s): %s", agent, reason, why);
    ack->error = strdup(why);
}

static void record_status(pc_sync_server *s, const Popcast__AgentStatus *st, bool verified,
                          Popcast__StatusAck *ack)
{
    pc_err err;
    bool takes_deltas = false;
    int rc = pc_rollout_report(s->opt.rollout, st, verified, pc_mono_ms(), &takes_deltas, &err);
    ack->takes_deltas = takes_deltas;
    if (rc == PC_E_BASE_UNKNOWN) {
        /* Not the agent's fault (this controller restarted, or a report
         * was lost): it sends its whole table next. */
        pc_metric_add(s->m_resend_whole, 1);
        pc_debug("sync", "status from %s: %s; asking for the whole table", st->agent_id, err.msg);
        ack->resend_whole = true;
    } else if (rc != PC_OK) {
        /* The tracker counted it under the agent id already. */
        char labels[64];
        snprintf(labels, sizeof(labels), "reason=\"%s\"",
                 rc == PC_E_REPLAYED    ? "replayed"
                 : rc == PC_E_INVALID   ? "invalid"
                 : rc == PC_E_TOO_LARGE ? "fleet_full"
                                        : "internal");
        pc_metric_add(s->m_bad, 1);
        pc_metrics_inc(s->opt.metrics, "popcast_status_refused_total", labels);
        pc_debug("sync", "status from %s refused: %s", st->agent_id, err.msg);
        ack->error = strdup(err.msg);
    } else if (st->delta) {
        pc_metric_add(s->m_deltas, 1);
    }
}

/* Called once per binding, on the controller's loop thread, when the
 * pipeline has committed or refused it. */
static void binding_done(pc_change *c, const pc_change_result *r)
{
    pc_sync_server *s = c->arg;
    pthread_mutex_lock(&s->bind_lock);
    pc_strmap_remove(s->binding, c->u.agent.id);
    pthread_mutex_unlock(&s->bind_lock);
    pc_public_key pk;
    memcpy(pk.pk, c->u.agent.pk, PC_PK_LEN);
    pc_key_id(pk.id, pk.pk);
    char kid[PC_HEX_KEY_ID_LEN];
    pc_hex(kid, pk.id, PC_KEY_ID_LEN);
    if (r->rc == PC_OK)
        pc_info("sync", "agent %s bound to its key %s on first use", c->u.agent.id, kid);
    else if (r->rc == PC_E_NOT_LEADER || r->rc == PC_E_EXISTS)
        pc_debug("sync", "agent %s not bound here: %s", c->u.agent.id, r->err.msg);
    else
        pc_warn("sync", "agent %s: binding its key %s failed: %s", c->u.agent.id, kid, r->err.msg);
}

/* Trust on first use: submits the binding of agent_id to pk (once while
 * it is pending) and tells the agent its reports count once the binding
 * is committed. Followers' submissions fail harmlessly (not the leader):
 * the agent reports to every controller, and the leader's binding reaches
 * all of them through raft. */
static void bind_first_use(pc_sync_server *s, const char *agent_id, const uint8_t *pk,
                           Popcast__StatusAck *ack)
{
    char why[PC_ID_MAX + 256];
    snprintf(why, sizeof(why),
             "agent %s is not known yet: its key is being bound on first use; its reports count "
             "once the binding is committed (docs/security.md)",
             agent_id);
    pthread_mutex_lock(&s->bind_lock);
    if (s->pipeline == NULL) {
        snprintf(why, sizeof(why), "controller is starting or stopping: report again later");
    } else if (pc_strmap_get(s->binding, agent_id) != NULL) {
        /* Pending: nothing more to do. */
    } else if (pc_strmap_count(s->binding) >= BINDINGS_MAX) {
        snprintf(why, sizeof(why), "%d agents are being bound already: report again later",
                 BINDINGS_MAX);
    } else {
        pc_change *c = pc_change_new(PC_CHANGE_AGENT_ENROLL, NULL);
        pc_err err;
        if (c == NULL || pc_strmap_put(s->binding, agent_id, s) != PC_OK) {
            pc_change_free(c);
            snprintf(why, sizeof(why), "out of memory");
        } else {
            snprintf(c->u.agent.id, sizeof(c->u.agent.id), "%s", agent_id);
            memcpy(c->u.agent.pk, pk, PC_PK_LEN);
            c->u.agent.first_use = true;
            c->done = binding_done;
            c->arg = s;
            if (pc_pipeline_submit(s->pipeline, c, &err) != PC_OK) {
                pc_strmap_remove(s->binding, agent_id);
                pc_change_free(c);
                snprintf(why, sizeof(why), "cannot bind the agent's key now: %.200s", err.msg);
            } else {
                pc_metric_add(s->m_bindings, 1);
            }
        }
    }
    pthread_mutex_unlock(&s->bind_lock);
    ack->error = strdup(why);
}

void pc_sync_server_set_pipeline(pc_sync_server *s, pc_pipeline *p)
{
    pthread_mutex_lock(&s->bind_lock);
    s->pipeline = p;
    pthread_mutex_unlock(&s->bind_lock);
}

/* An unsigned report: never trusted. Anyone able to reach the sync port
 * could otherwise claim any agent id's state (and raise its counter so
 * that the real agent's reports are refused as replays). */
static void handle_status(pc_sync_server *s, const Popcast__AgentStatus *st,
                          Popcast__StatusAck *ack)
{
    refuse_status(s, ack, st->agent_id, "unsigned",
                  "unsigned report: status reports must be signed with the agent's key");
}

static bool verifies(const pc_public_key *pk, const Popcast__SignedAgentStatus *ss)
{
    return pc_verify(pk, PC_DOMAIN_STATUS, ss->status.data, ss->status.len, ss->signature.data,
                     ss->signature.len) == PC_OK;
}

/* A signed report: verified with the key bound to its agent id; an id
 * without a key is bound to the key the report carries (trust on first
 * use) unless enrollment is required. */
static void handle_signed_status(pc_sync_server *s, const Popcast__SignedAgentStatus *ss,
                                 Popcast__StatusAck *ack)
{
    Popcast__AgentStatus *st = popcast__agent_status__unpack(NULL, ss->status.len, ss->status.data);
    if (st == NULL) {
        refuse_status(s, ack, "?", "undecodable", "signed report does not decode");
        return;
    }
    const char *id = st->agent_id;
    char why[512];
    pc_public_key bound, carried;
    bool has_key = st->public_key.len == PC_PK_LEN;
    if (has_key) {
        memcpy(carried.pk, st->public_key.data, PC_PK_LEN);
        pc_key_id(carried.id, carried.pk);
    }
    int rc = pc_id_valid(id) ? bound_key(s, id, &bound) : PC_E_INVALID;
    if (rc == PC_E_INVALID || (st->public_key.len != 0 && !has_key)) {
        refuse_status(s, ack, id, "invalid", "status report with an invalid agent id or key");
    } else if (rc == PC_E_STORE) {
        refuse_status(s, ack, id, "store_error", "controller cannot read its agent records");
    } else if (rc == PC_E_FORBIDDEN) {
        refuse_status(s, ack, id, "revoked", "agent's key was revoked");
    } else if (rc == PC_E_NOTFOUND && s->opt.require_enrollment) {
        refuse_status(s, ack, id, "not_enrolled", "agent is not enrolled");
    } else if (rc == PC_E_NOTFOUND && !has_key) {
        refuse_status(s, ack, id, "not_enrolled",
                      "agent is not enrolled and its report carries no key to bind");
    } else if (rc == PC_E_NOTFOUND && !verifies(&carried, ss)) {
        refuse_status(s, ack, id, "bad_signature", "signature does not match the report's key");
    } else if (rc == PC_E_NOTFOUND) {
        bind_first_use(s, id, carried.pk, ack);
    } else if (!verifies(&bound, ss) || (has_key && memcmp(carried.pk, bound.pk, PC_PK_LEN) != 0)) {
        char bound_id[PC_HEX_KEY_ID_LEN], carried_id[PC_HEX_KEY_ID_LEN] = "none";
        pc_hex(bound_id, bound.id, PC_KEY_ID_LEN);
        if (has_key)
            pc_hex(carried_id, carried.id, PC_KEY_ID_LEN);
        bool other = has_key && verifies(&carried, ss);
        snprintf(
            why, sizeof(why),
            "%s: the key bound to agent %s is %s, the report's is %s (a lost key needs `popcast "
            "agent enroll` of the new one, docs/security.md)",
            other ? "signed by another key than the one bound to the agent"
                  : "signature does not match the key bound to the agent",
            id, bound_id, carried_id);
        refuse_status(s, ack, id, other ? "wrong_key" : "bad_signature", why);
    } else {
        record_status(s, st, true, ack);
    }
    popcast__agent_status__free_unpacked(st, NULL);
}

/* A relay's batch: each report verified and recorded alone, as if its
 * agent had sent it (the relay vouches for nothing). */
static void handle_status_batch(pc_sync_server *s, const Popcast__StatusBatch *b,
                                Popcast__StatusBatchAck *back)
{
    pc_metric_add(s->m_batches, 1);
    back->acks = calloc(b->n_reports ? b->n_reports : 1, sizeof(*back->acks));
    Popcast__StatusAck *acks = calloc(b->n_reports ? b->n_reports : 1, sizeof(*acks));
    if (back->acks == NULL || acks == NULL) {
        free(back->acks);
        free(acks);
        back->acks = NULL;
        back->error = strdup("out of memory");
        return;
    }
    for (size_t i = 0; i < b->n_reports; i++) {
        popcast__status_ack__init(&acks[i]);
        pc_metric_add(s->m_status, 1);
        handle_signed_status(s, b->reports[i], &acks[i]);
        back->acks[i] = &acks[i];
    }
    back->n_acks = b->n_reports;
    if (b->relay != NULL && s->opt.rollout != NULL)
        pc_rollout_relay(s->opt.rollout, b->relay, pc_mono_ms());
    for (size_t i = 0; i < b->n_forwarded && s->opt.rollout != NULL; i++)
        pc_rollout_relay(s->opt.rollout, b->forwarded[i], pc_mono_ms());
}

static void free_batch_ack(Popcast__StatusBatchAck *back)
{
    if (back->acks != NULL) {
        for (size_t i = 0; i < back->n_acks; i++)
            free_string(back->acks[i]->error);
        free(back->acks[0]);
    }
    free(back->acks);
    free_string(back->error);
}

/* Tails. */

/* The most tenants one TailAck names. */
#define TAIL_TENANTS_MAX 1024
/* Agents whose last batch counter is kept (beyond, the oldest are not
 * forgotten: new agents' batches are refused until a restart). */
#define TAIL_AGENTS_MAX 1000000

/* Whether counter is above the last one taken from agent; records it. */
static bool tail_fresh(pc_sync_server *s, const char *agent, uint64_t counter)
{
    pthread_mutex_lock(&s->tail_lock);
    uint64_t *last = pc_strmap_get(s->tail_counters, agent);
    bool fresh = last == NULL || counter > *last;
    if (fresh && last != NULL) {
        *last = counter;
    } else if (fresh && pc_strmap_count(s->tail_counters) < TAIL_AGENTS_MAX &&
               (last = malloc(sizeof(*last))) != NULL) {
        *last = counter;
        if (pc_strmap_put(s->tail_counters, agent, last) != PC_OK) {
            free(last);
            fresh = false;
        }
    } else {
        fresh = false;
    }
    pthread_mutex_unlock(&s->tail_lock);
    return fresh;
}

static void refuse_tail(pc_sync_server *s, Popcast__TailAck *ack, const char *agent,
                        const char *why)
{
    pc_metric_add(s->m_tail_refused, 1);
    pc_debug("sync", "tail batch from %s refused: %s", agent, why);
    ack->error = strdup(why);
}

/* Checks and publishes a batch's lines. A poll (no lines, no drops) needs
 * no signature: it only asks which tenants are tailed. */
static void handle_tail(pc_sync_server *s, const Popcast__SignedTailBatch *sb,
                        Popcast__TailAck *ack)
{
    if (s->opt.tails == NULL) {
        ack->error = strdup("this controller serves no tails");
        return;
    }
    Popcast__TailBatch *b = popcast__tail_batch__unpack(NULL, sb->batch.len, sb->batch.data);
    if (b == NULL) {
        refuse_tail(s, ack, "?", "tail batch does not decode");
        return;
    }
    const char *id = b->agent_id;
    if (b->n_records > 0 || b->n_drops > 0) {
        pc_public_key bound;
        bool named = pc_id_valid(id);
        int rc = named ? bound_key(s, id, &bound) : PC_E_INVALID;
        const char *why = NULL;
        if (rc != PC_OK)
            why = !named ? "tail batch with an invalid agent id"
                         : "agent has no bound key (it is not enrolled, or revoked)";
        else if (pc_verify(&bound, PC_DOMAIN_TAIL, sb->batch.data, sb->batch.len,
                           sb->signature.data, sb->signature.len) != PC_OK)
            why = "tail batch signature does not match the key bound to the agent";
        if (why == NULL)
            why = pc_tail_batch_invalid(b);
        if (why == NULL && !tail_fresh(s, id, b->counter))
            why = "tail batch replayed (its counter is not above the last one taken)";
        if (why != NULL) {
            refuse_tail(s, ack, named ? id : "?", why);
            popcast__tail_batch__free_unpacked(b, NULL);
            return;
        }
        for (size_t i = 0; i < b->n_records; i++)
            pc_watch_tail_event(s->opt.tails, b->records[i]->tenant, "line",
                                pc_tail_line_json(b, b->records[i]));
        pc_metric_add(s->m_tail_lines, b->n_records);
        for (size_t i = 0; i < b->n_drops; i++)
            pc_watch_tail_event(s->opt.tails, b->drops[i]->tenant, "dropped",
                                pc_tail_drop_json(b, b->drops[i]));
    }
    popcast__tail_batch__free_unpacked(b, NULL);
    char(*names)[PC_TENANT_MAX + 1] = malloc(TAIL_TENANTS_MAX * sizeof(*names));
    size_t n = names ? pc_watch_tailed(s->opt.tails, names, TAIL_TENANTS_MAX) : 0;
    ack->tenants = calloc(n ? n : 1, sizeof(*ack->tenants));
    for (size_t i = 0; ack->tenants != NULL && i < n; i++)
        if ((ack->tenants[ack->n_tenants] = strdup(names[i])) != NULL)
            ack->n_tenants++;
    free(names);
}

static void free_tail_ack(Popcast__TailAck *ack)
{
    for (size_t i = 0; i < ack->n_tenants; i++)
        free(ack->tenants[i]);
    free(ack->tenants);
    free_string(ack->error);
}

/* Answers one request; returns the reply message (NULL: no reply). */
static nng_msg *handle(pc_sync_server *s, const uint8_t *data, size_t len)
{
    Popcast__SyncCall *call = popcast__sync_call__unpack(NULL, len, data);
    Popcast__SyncReply reply = POPCAST__SYNC_REPLY__INIT;
    Popcast__SyncResponse sync = POPCAST__SYNC_RESPONSE__INIT;
    Popcast__SnapshotResponse snap = POPCAST__SNAPSHOT_RESPONSE__INIT;
    Popcast__BundleChunkResponse chunk = POPCAST__BUNDLE_CHUNK_RESPONSE__INIT;
    Popcast__StatusAck ack = POPCAST__STATUS_ACK__INIT;
    Popcast__StatusBatchAck batch_ack = POPCAST__STATUS_BATCH_ACK__INIT;
    Popcast__TailAck tail_ack = POPCAST__TAIL_ACK__INIT;
    Popcast__SignedSnapshotAssertion assertion = POPCAST__SIGNED_SNAPSHOT_ASSERTION__INIT;
    Popcast__Entry **entries = NULL, **rotations = NULL;
    size_t n_entries = 0, n_rotations = 0;
    if (call == NULL) {
        pc_metric_add(s->m_bad, 1);
        ack.error = strdup("request does not decode");
        reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
        reply.status_ack = &ack;
    } else {
        switch (call->body_case) {
        case POPCAST__SYNC_CALL__BODY_SYNC:
            pc_metric_add(s->m_sync, 1);
            handle_sync(s, call->sync, &sync, &entries);
            n_entries = sync.n_entries;
            reply.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
            reply.sync = &sync;
            break;
        case POPCAST__SYNC_CALL__BODY_SNAPSHOT:
            pc_metric_add(s->m_snapshot, 1);
            handle_snapshot(s, &snap, &assertion, &entries, &n_entries, &rotations, &n_rotations);
            reply.body_case = POPCAST__SYNC_REPLY__BODY_SNAPSHOT;
            reply.snapshot = &snap;
            break;
        case POPCAST__SYNC_CALL__BODY_CHUNK:
            pc_metric_add(s->m_chunk, 1);
            handle_chunk(s, call->chunk, &chunk);
            reply.body_case = POPCAST__SYNC_REPLY__BODY_CHUNK;
            reply.chunk = &chunk;
            break;
        case POPCAST__SYNC_CALL__BODY_STATUS:
            pc_metric_add(s->m_status, 1);
            handle_status(s, call->status, &ack);
            reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
            reply.status_ack = &ack;
            break;
        case POPCAST__SYNC_CALL__BODY_SIGNED_STATUS:
            pc_metric_add(s->m_status, 1);
            handle_signed_status(s, call->signed_status, &ack);
            reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
            reply.status_ack = &ack;
            break;
        case POPCAST__SYNC_CALL__BODY_STATUS_BATCH:
            handle_status_batch(s, call->status_batch, &batch_ack);
            reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_BATCH_ACK;
            reply.status_batch_ack = &batch_ack;
            break;
        case POPCAST__SYNC_CALL__BODY_TAIL:
            handle_tail(s, call->tail, &tail_ack);
            reply.body_case = POPCAST__SYNC_REPLY__BODY_TAIL_ACK;
            reply.tail_ack = &tail_ack;
            break;
        default:
            pc_metric_add(s->m_bad, 1);
            ack.error = strdup("unknown request");
            reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
            reply.status_ack = &ack;
            break;
        }
        popcast__sync_call__free_unpacked(call, NULL);
    }
    size_t plen = popcast__sync_reply__get_packed_size(&reply);
    nng_msg *msg = NULL;
    if (nng_msg_alloc(&msg, plen) == 0)
        popcast__sync_reply__pack(&reply, nng_msg_body(msg));
    free_entries(entries, n_entries);
    free_entries(rotations, n_rotations);
    free_assertion(&assertion);
    free_string(sync.error);
    free_string(snap.error);
    free_string(chunk.error);
    free(chunk.data.data);
    free_string(ack.error);
    free_batch_ack(&batch_ack);
    free_tail_ack(&tail_ack);
    return msg;
}

static void worker_cb(void *arg)
{
    worker *w = arg;
    pc_sync_server *s = w->server;
    int rv = nng_aio_result(w->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
        return;
    if (w->sending) {
        w->sending = 0;
        if (rv != 0)
            nng_msg_free(nng_aio_get_msg(w->aio));
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    if (rv != 0) {
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    nng_msg *req = nng_aio_get_msg(w->aio);
    nng_msg *rep = handle(s, nng_msg_body(req), nng_msg_len(req));
    nng_msg_free(req);
    if (rep == NULL) {
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    w->sending = 1;
    nng_aio_set_msg(w->aio, rep);
    nng_ctx_send(w->ctx, w->aio);
}

int pc_sync_server_start(pc_sync_server **out, const pc_sync_server_options *opt, pc_err *err)
{
    pc_sync_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->opt = *opt;
    pthread_mutex_init(&s->bind_lock, NULL);
    s->binding = pc_strmap_new();
    pthread_mutex_init(&s->tail_lock, NULL);
    s->tail_counters = pc_strmap_new();
    s->n_workers = opt->workers ? opt->workers : PC_SYNC_WORKERS;
    s->workers = calloc(s->n_workers, sizeof(*s->workers));
    int rv = s->workers && s->binding && s->tail_counters ? nng_rep0_open(&s->sock) : NNG_ENOMEM;
    /* Requests are small (a relay's batch of reports is the largest): a
     * larger one is hostile. */
    if (rv == 0)
        rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, PC_STATUS_BATCH_MAX);
    for (size_t i = 0; rv == 0 && i < s->n_workers; i++) {
        s->workers[i].server = s;
        rv = nng_aio_alloc(&s->workers[i].aio, worker_cb, &s->workers[i]);
        if (rv == 0)
            rv = nng_ctx_open(&s->workers[i].ctx, s->sock);
    }
    pc_err lerr;
    if (rv == 0 && pc_nng_listen_bound(s->sock, opt->url, opt->tls, s->bound_url,
                                       sizeof(s->bound_url), &lerr) != PC_OK)
        rv = NNG_EADDRINUSE;
    if (rv != 0) {
        pc_sync_server_stop(s);
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot serve sync on %s: %s", opt->url,
                          nng_strerror(rv));
    }
    s->m_sync = pc_metrics_counter(opt->metrics, "popcast_sync_requests_total", "kind=\"sync\"",
                                   "catch-up requests served");
    s->m_snapshot =
        pc_metrics_counter(opt->metrics, "popcast_sync_requests_total", "kind=\"snapshot\"", NULL);
    s->m_chunk =
        pc_metrics_counter(opt->metrics, "popcast_sync_requests_total", "kind=\"chunk\"", NULL);
    s->m_status =
        pc_metrics_counter(opt->metrics, "popcast_sync_requests_total", "kind=\"status\"", NULL);
    s->m_bad = pc_metrics_counter(opt->metrics, "popcast_sync_refused_total", NULL,
                                  "requests that did not decode or were refused");
    /* Every reason a report can be refused for, at 0 from the start. */
    static const char *const refusals[] = {
        "unsigned",  "undecodable",   "invalid",  "store_error", "revoked",  "not_enrolled",
        "wrong_key", "bad_signature", "replayed", "fleet_full",  "internal",
    };
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "reason=\"%s\"", refusals[i]);
        pc_metrics_counter(opt->metrics, "popcast_status_refused_total", labels,
                           "status reports refused, by reason (docs/operations.md)");
    }
    s->m_bindings = pc_metrics_counter(opt->metrics, "popcast_status_first_use_bindings_total",
                                       NULL, "agent keys submitted for binding on first use");
    s->m_batches = pc_metrics_counter(opt->metrics, "popcast_status_batches_total", NULL,
                                      "status batches relays forwarded (each report counted in "
                                      "popcast_sync_requests_total{kind=\"status\"})");
    s->m_deltas = pc_metrics_counter(opt->metrics, "popcast_status_deltas_total", NULL,
                                     "delta status reports merged into an agent's table");
    s->m_resend_whole = pc_metrics_counter(
        opt->metrics, "popcast_status_whole_requested_total", NULL,
        "delta reports whose base this controller lacks (asked to resend whole)");
    s->m_tail_lines = pc_metrics_counter(opt->metrics, "popcast_tail_lines_total", NULL,
                                         "tenants' log lines agents sent for tails");
    s->m_tail_refused = pc_metrics_counter(opt->metrics, "popcast_tail_refused_total", NULL,
                                           "agents' tail batches refused (signature, replay, "
                                           "malformed)");
    for (size_t i = 0; i < s->n_workers; i++)
        nng_ctx_recv(s->workers[i].ctx, s->workers[i].aio);
    *out = s;
    return PC_OK;
}

const char *pc_sync_server_bound_url(const pc_sync_server *s)
{
    return s->bound_url;
}

void pc_sync_server_stop(pc_sync_server *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; s->workers && i < s->n_workers; i++)
        if (s->workers[i].aio)
            nng_aio_stop(s->workers[i].aio);
    /* Bounded: nng 1.5.2's close can hang (nng_close.h); seen in a
     * cluster test's stop under load. */
    pc_nng_close_bounded(s->sock, PC_NNG_CLOSE_MS, "the sync server");
    for (size_t i = 0; s->workers && i < s->n_workers; i++)
        if (s->workers[i].aio)
            nng_aio_free(s->workers[i].aio);
    free(s->workers);
    pc_strmap_free(s->binding);
    pthread_mutex_destroy(&s->bind_lock);
    size_t pos = 0;
    const char *key;
    void *value;
    while (s->tail_counters != NULL && pc_strmap_next(s->tail_counters, &pos, &key, &value))
        free(value);
    pc_strmap_free(s->tail_counters);
    pthread_mutex_destroy(&s->tail_lock);
    free(s);
}
