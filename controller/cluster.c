/* cluster.c - raft replication of the controller's store (see cluster.h). */
#include "cluster.h"
#include "deployment.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "byteorder.h"
#include "checks.h"
#include "envelope.h"
#include "log.h"
#include "names.h"
#include "registry.h"

#define MAX_NODES   64
#define MAX_WAITERS 8
#define TICK_MS     50

typedef struct node {
    uint64_t id;
    char raft_address[128];
    char api_url[256];
} node;

typedef struct waiter {
    void (*cb)(void *arg);
    void *arg;
} waiter;

/* A copy of raft's state for other threads. */
typedef struct info {
    int state;
    uint64_t leader_id;
    uint64_t term, commit_index, last_applied, last_index;
    struct {
        uint64_t id;
        int role;
        char address[128];
    } members[MAX_NODES];
    unsigned n_members;
} info;

struct pc_cluster {
    pc_cluster_options opt;
    char raft_address[128], api_url[256], raft_dir[1024], scratch_dir[1024];
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    struct raft_fsm fsm;
    uv_timer_t tick;
    pc_metric *m_term, *m_commit, *m_applied, *m_last_index, *m_leader, *m_leader_changes;
    uint64_t seen_leader; /* for m_leader_changes (loop thread) */
    uint64_t won_term;    /* last term this node was seen leading (loop thread) */
    /* A leadership transfer before a stop (loop thread). */
    struct raft_transfer transfer;
    uv_timer_t transfer_timer;
    bool transfer_timer_open;
    void (*transfer_done)(void *arg, uint64_t new_leader);
    void *transfer_arg;
    /* Leadership: writes wait until a barrier of the current term applied. */
    raft_term ready_term;
    bool barrier_pending;
    struct raft_barrier barrier;
    waiter waiters[MAX_WAITERS];
    unsigned n_waiters;
    pc_err last_apply_err; /* the message of the last refused apply */
    /* Guarded by lock: nodes' API addresses and the info copy. */
    pc_thread_owner loop_thread; /* raft and everything marked "loop thread" */
    pthread_mutex_t lock;
    node nodes[MAX_NODES];
    unsigned n_nodes;
    info info;
    void (*stop_done)(void *arg);
    void *stop_arg;
    int closing_handles;
    /* libraft 0.15 can call its io close callback a second time, from a
     * segment writer that finishes closing after the first call (uvAppendClose
     * takes the segment off the queue uvMaybeFireCloseCb checks before its
     * writer has closed). io.data points here once raft is closed, so that
     * second call frees nothing twice; a zeroed raft has nothing to free. */
    struct raft closed_raft;
};

/* Nodes. */

static void remember_node(pc_cluster *c, uint64_t id, const char *raft_address, const char *api)
{
    pthread_mutex_lock(&c->lock);
    unsigned i = 0;
    while (i < c->n_nodes && c->nodes[i].id != id)
        i++;
    if (i == c->n_nodes && c->n_nodes < MAX_NODES)
        c->n_nodes++;
    if (i < c->n_nodes) {
        c->nodes[i].id = id;
        snprintf(c->nodes[i].raft_address, sizeof(c->nodes[i].raft_address), "%s", raft_address);
        snprintf(c->nodes[i].api_url, sizeof(c->nodes[i].api_url), "%s", api);
    }
    pthread_mutex_unlock(&c->lock);
}

/* "ID@HOST:PORT@API_URL" */
static int parse_peer(const char *text, uint64_t *id, char *addr, size_t addr_cap, char *api,
                      size_t api_cap)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '@' || v == 0)
        return PC_E_INVALID;
    const char *a = end + 1;
    const char *at = strchr(a, '@');
    if (at == NULL || at == a || (size_t)(at - a) >= addr_cap || strlen(at + 1) >= api_cap ||
        at[1] == '\0')
        return PC_E_INVALID;
    memcpy(addr, a, (size_t)(at - a));
    addr[at - a] = '\0';
    snprintf(api, api_cap, "%s", at + 1);
    *id = v;
    return PC_OK;
}

static int remember_stored_node(void *arg, const Popcast__ClusterNode *n)
{
    remember_node(arg, n->id, n->raft_address, n->api_url);
    return 0;
}

/* Nodes added at run time are recorded in the store (registry.h). */
static void reload_nodes_from_store(pc_cluster *c)
{
    pc_err err;
    if (pc_registry_foreach_node(c->opt.store, remember_stored_node, c, &err) != PC_OK)
        pc_warn("cluster", "cannot read the recorded cluster members: %s", err.msg);
}

/* The FSM. */

/* True when the store's log holds exactly this signed manifest at its
 * seq: raft replaying an entry the store already applied. */
static bool already_applied(pc_cluster *c, const Popcast__SignedManifest *sm, uint64_t seq)
{
    Popcast__LogRecord *rec = NULL;
    pc_err gerr;
    bool same = pc_store_get_log(c->opt.store, seq, &rec, &gerr) == PC_OK && rec->signed_ &&
                rec->signed_->manifest.len == sm->manifest.len &&
                memcmp(rec->signed_->manifest.data, sm->manifest.data, sm->manifest.len) == 0;
    if (rec != NULL)
        popcast__log_record__free_unpacked(rec, NULL);
    return same;
}

/* A group commit: every entry in one store transaction. A replayed batch
 * was applied whole (one transaction), so it is a replay only if every
 * entry is already in the log, byte for byte. */
static int apply_batch(pc_cluster *c, Popcast__Entry *const *entries, size_t n_entries,
                       Popcast__IdempotencyRecord *const *claims, size_t n_claims, bool *replayed,
                       pc_err *err)
{
    *replayed = false;
    size_t n = n_entries;
    if (n == 0)
        return pc_err_set(err, PC_E_INVALID, "an empty cluster batch");
    pc_store_item *items = calloc(n, sizeof(*items));
    Popcast__Manifest **ms = calloc(n, sizeof(*ms));
    int rc = PC_OK;
    if (items == NULL || ms == NULL)
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    for (size_t i = 0; rc == PC_OK && i < n; i++) {
        const Popcast__Entry *e = entries[i];
        if (e->signed_ == NULL) {
            rc = pc_err_set(err, PC_E_INVALID, "cluster batch entry %zu without a manifest", i);
            break;
        }
        ms[i] =
            popcast__manifest__unpack(NULL, e->signed_->manifest.len, e->signed_->manifest.data);
        if (ms[i] == NULL) {
            rc = pc_err_set(err, PC_E_INVALID, "cluster batch entry %zu does not decode", i);
            break;
        }
        bool content = pc_manifest_has_content(ms[i]);
        items[i] = (pc_store_item){
            e->signed_, ms[i], content ? e->bundle.data : NULL, content ? e->bundle.len : 0,
            NULL,       false};
    }
    /* Each key goes with the entry it names, into the same transaction. */
    for (size_t k = 0; rc == PC_OK && k < n_claims; k++) {
        size_t i = 0;
        while (i < n && ms[i]->seq != claims[k]->seq)
            i++;
        if (i == n || items[i].idempotency != NULL)
            rc = pc_err_set(err, PC_E_INVALID, "idempotency key for seq %llu names no entry",
                            (unsigned long long)claims[k]->seq);
        else
            items[i].idempotency = claims[k];
    }
    if (rc == PC_OK)
        rc = pc_store_apply_batch(c->opt.store, items, n, err);
    if (rc == PC_E_DUPLICATE) {
        bool all = true;
        for (size_t i = 0; all && i < n; i++)
            all = already_applied(c, entries[i]->signed_, ms[i]->seq);
        if (all) {
            rc = PC_OK;
            *replayed = true;
        }
    }
    for (size_t i = 0; ms != NULL && i < n; i++)
        if (ms[i] != NULL)
            popcast__manifest__free_unpacked(ms[i], NULL);
    free(ms);
    free(items);
    return rc;
}

/* A deployment record, checked against the one this store holds: every
 * replica refuses the same records (deployment.h). */
static int apply_deployment(pc_cluster *c, const Popcast__DeploymentRecord *d, pc_err *err)
{
    if (d == NULL || d->tenant == NULL)
        return pc_err_set(err, PC_E_INVALID, "deployment record without a tenant");
    Popcast__DeploymentRecord *cur = NULL;
    int rc = pc_registry_get_deployment(c->opt.store, d->tenant, d->id, &cur, err);
    if (rc == PC_E_NOTFOUND)
        rc = pc_deployment_check_new(d, err);
    else if (rc == PC_OK)
        rc = pc_deployment_check_update(cur, d, err);
    if (cur != NULL)
        popcast__deployment_record__free_unpacked(cur, NULL);
    return rc == PC_OK ? pc_registry_put_deployment(c->opt.store, d, !pc_deployment_final(d), err)
                       : rc;
}

/* A tenant's default plan, set (checked as a deployment's plan is, by
 * every replica alike) or cleared (no stages). */
static int apply_plan(pc_cluster *c, const Popcast__TenantPlan *p, pc_err *err)
{
    if (p == NULL || p->tenant == NULL || !pc_tenant_name_valid(p->tenant))
        return pc_err_set(err, PC_E_INVALID, "plan record without a valid tenant");
    if (p->n_plan != 0) {
        int rc = pc_deployment_check_plan(p->plan, p->n_plan, err);
        if (rc != PC_OK)
            return rc;
    }
    return pc_registry_put_plan(c->opt.store, p, err);
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    pc_cluster *c = fsm->data;
    pc_err err;
    pc_err_clear(&err);
    int rc;
    /* [u64 little-endian length][ClusterCommand][zero padding to 8] */
    Popcast__ClusterCommand *cmd = NULL;
    uint64_t len = 0;
    if (buf->len >= 8) {
        const uint8_t *b = buf->base;
        len = pc_le64_get(b);
        if (len <= buf->len - 8)
            cmd = popcast__cluster_command__unpack(NULL, (size_t)len, b + 8);
    }
    if (cmd == NULL) {
        rc = pc_err_set(&err, PC_E_INVALID, "raft command does not decode");
    } else if (cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_ENTRY ||
               cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_BATCH) {
        /* One entry is a batch of one (the same checks, one transaction). */
        bool one = cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_ENTRY;
        Popcast__Entry *const *entries = one ? &cmd->entry : cmd->batch->entries;
        size_t n = one ? 1 : cmd->batch->n_entries;
        bool replayed = false;
        rc = entries[0] == NULL && one ? pc_err_set(&err, PC_E_INVALID, "cluster entry is empty")
                                       : apply_batch(c, entries, n, cmd->idempotency,
                                                     cmd->n_idempotency, &replayed, &err);
        for (size_t i = 0; rc == PC_OK && !replayed && c->opt.on_applied != NULL && i < n; i++)
            c->opt.on_applied(c->opt.on_applied_arg, entries[i]);
    } else if (cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_NODE) {
        rc = pc_registry_put_node(c->opt.store, cmd->node, &err);
        if (rc == PC_OK)
            remember_node(c, cmd->node->id, cmd->node->raft_address, cmd->node->api_url);
    } else if (cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_TOKEN) {
        rc = pc_registry_put_token(c->opt.store, cmd->token, &err);
    } else if (cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_AGENT) {
        rc = pc_registry_put_agent(c->opt.store, cmd->agent, &err);
    } else if (cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_DEPLOYMENT) {
        rc = apply_deployment(c, cmd->deployment, &err);
        if (rc == PC_OK && c->opt.on_deployment != NULL)
            c->opt.on_deployment(c->opt.on_applied_arg, cmd->deployment);
    } else if (cmd->body_case == POPCAST__CLUSTER_COMMAND__BODY_PLAN) {
        rc = apply_plan(c, cmd->plan, &err);
    } else {
        rc = pc_err_set(&err, PC_E_INVALID, "raft command has no valid body");
    }
    if (cmd != NULL)
        popcast__cluster_command__free_unpacked(cmd, NULL);
    if (rc == PC_E_STORE || rc == PC_E_NOMEM || rc == PC_E_IO) {
        /* Not a property of the entry but of this machine (disk full...):
         * refuse to apply, so raft keeps it and tries again, instead of
         * letting this replica silently diverge. */
        pc_error("cluster", "cannot apply a committed entry: %s", err.msg);
        return RAFT_IOERR;
    }
    if (rc == PC_E_SEQ_GAP) {
        /* The leader only proposes applied+1, so a gap here means this
         * store lacks history that the raft log does not carry (a store
         * older than its raft log): stop rather than diverge. */
        pc_error("cluster",
                 "committed entry does not follow this store (%s): this controller needs a "
                 "snapshot; stop it, empty its data directory and restart it (docs/operations.md)",
                 err.msg);
        return RAFT_IOERR;
    }
    if (rc != PC_OK) {
        pc_warn("cluster", "committed entry refused by the store: %s", err.msg);
        c->last_apply_err = err;
    }
    *result = (void *)(intptr_t)rc;
    return 0;
}

static int read_file(const char *path, struct raft_buffer *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return -1;
    }
    out->len = (size_t)st.st_size;
    out->base = raft_malloc(out->len ? out->len : 1);
    if (out->base == NULL) {
        close(fd);
        return -1;
    }
    size_t done = 0;
    while (done < out->len) {
        ssize_t n = read(fd, (char *)out->base + done, out->len - done);
        if (n <= 0) {
            close(fd);
            raft_free(out->base);
            return -1;
        }
        done += (size_t)n;
    }
    close(fd);
    return 0;
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    pc_cluster *c = fsm->data;
    char path[1100];
    snprintf(path, sizeof(path), "%s/raft-snapshot.mdb", c->scratch_dir);
    pc_err err;
    if (pc_store_copy(c->opt.store, path, &err) != PC_OK) {
        pc_error("cluster", "snapshot: %s", err.msg);
        return RAFT_IOERR;
    }
    struct raft_buffer *b = raft_malloc(sizeof(*b));
    if (b == NULL || read_file(path, b) != 0) {
        raft_free(b);
        unlink(path);
        return RAFT_NOMEM;
    }
    unlink(path);
    *bufs = b;
    *n_bufs = 1;
    pc_info("cluster", "snapshot taken (%zu bytes)", b->len);
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    (void)fsm;
    if (*bufs != NULL) {
        for (unsigned i = 0; i < *n_bufs; i++)
            raft_free((*bufs)[i].base);
        raft_free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    pc_cluster *c = fsm->data;
    char path[1100];
    snprintf(path, sizeof(path), "%s/raft-restore.mdb", c->scratch_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t done = 0;
    while (fd >= 0 && done < buf->len) {
        ssize_t n = write(fd, (char *)buf->base + done, buf->len - done);
        if (n <= 0)
            break;
        done += (size_t)n;
    }
    int ok = fd >= 0 && done == buf->len && fsync(fd) == 0;
    if (fd >= 0)
        close(fd);
    pc_err err;
    if (!ok || pc_store_replace(c->opt.store, path, &err) != PC_OK) {
        pc_error("cluster", "cannot restore a snapshot of %zu bytes%s%s", buf->len, ok ? ": " : "",
                 ok ? err.msg : "");
        unlink(path);
        return RAFT_IOERR;
    }
    raft_free(buf->base);
    reload_nodes_from_store(c);
    uint64_t seq = 0;
    pc_store_applied_seq(c->opt.store, &seq, &err);
    pc_info("cluster", "restored a snapshot: store at seq %llu", (unsigned long long)seq);
    return 0;
}

/* Leadership and the info copy. */

static void run_waiters(pc_cluster *c)
{
    unsigned n = c->n_waiters;
    waiter w[MAX_WAITERS];
    memcpy(w, c->waiters, n * sizeof(w[0]));
    c->n_waiters = 0;
    for (unsigned i = 0; i < n; i++)
        w[i].cb(w[i].arg);
}

static void barrier_done(struct raft_barrier *req, int status)
{
    pc_cluster *c = req->data;
    c->barrier_pending = false;
    if (status == 0 && raft_state(&c->raft) == RAFT_LEADER) {
        c->ready_term = c->raft.current_term;
        pc_info("cluster", "node %llu leads term %llu and has applied the whole log",
                (unsigned long long)c->opt.id, (unsigned long long)c->ready_term);
        run_waiters(c);
    }
}

void pc_cluster_refresh(pc_cluster *c)
{
    PC_CHECK_OWNER(&c->loop_thread);
    int state = raft_state(&c->raft);
    if (state != RAFT_LEADER) {
        c->ready_term = 0;
        /* Whoever waits to write here must hear that it never will. */
        if (c->n_waiters > 0)
            run_waiters(c);
    } else if (c->won_term != c->raft.current_term) {
        /* Said apart from "leads term" (which waits for the barrier): a
         * leader that loses the term before its barrier commits still led. */
        c->won_term = c->raft.current_term;
        pc_info("cluster", "node %llu won the election for term %llu",
                (unsigned long long)c->opt.id, (unsigned long long)c->won_term);
    }
    if (state == RAFT_LEADER && c->ready_term != c->raft.current_term && !c->barrier_pending) {
        c->barrier.data = c;
        if (raft_barrier(&c->raft, &c->barrier, barrier_done) == 0)
            c->barrier_pending = true;
    }
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&c->raft, &leader, &address);
    pthread_mutex_lock(&c->lock);
    c->info.state = state;
    c->info.leader_id = leader;
    c->info.term = c->raft.current_term;
    c->info.commit_index = c->raft.commit_index;
    c->info.last_applied = raft_last_applied(&c->raft);
    c->info.last_index = raft_last_index(&c->raft);
    c->info.n_members = 0;
    for (unsigned i = 0; i < c->raft.configuration.n && i < MAX_NODES; i++) {
        const struct raft_server *s = &c->raft.configuration.servers[i];
        c->info.members[i].id = s->id;
        c->info.members[i].role = s->role;
        snprintf(c->info.members[i].address, sizeof(c->info.members[i].address), "%s", s->address);
        c->info.n_members++;
    }
    pthread_mutex_unlock(&c->lock);
    pc_metric_set(c->m_term, c->raft.current_term);
    pc_metric_set(c->m_commit, c->raft.commit_index);
    pc_metric_set(c->m_applied, raft_last_applied(&c->raft));
    pc_metric_set(c->m_last_index, raft_last_index(&c->raft));
    pc_metric_set(c->m_leader, state == RAFT_LEADER ? 1 : 0);
    if (leader != 0 && leader != c->seen_leader) {
        /* Seen from this node, at 100 ms ticks: a leader that came and
         * went between two ticks is not counted. */
        if (c->seen_leader != 0)
            pc_metric_add(c->m_leader_changes, 1);
        c->seen_leader = leader;
        if (c->opt.on_leader != NULL)
            c->opt.on_leader(c->opt.on_applied_arg, leader, c->raft.current_term);
    }
}

static void on_tick(uv_timer_t *t)
{
    pc_cluster_refresh(t->data);
}

void pc_cluster_get_health(pc_cluster *c, pc_cluster_health *out)
{
    pthread_mutex_lock(&c->lock);
    out->member = false;
    for (unsigned i = 0; i < c->info.n_members; i++)
        if (c->info.members[i].id == c->opt.id)
            out->member = true;
    out->leader_id = c->info.leader_id;
    out->commit_index = c->info.commit_index;
    out->last_applied = c->info.last_applied;
    pthread_mutex_unlock(&c->lock);
}

bool pc_cluster_leading(pc_cluster *c)
{
    PC_CHECK_OWNER(&c->loop_thread);
    return raft_state(&c->raft) == RAFT_LEADER;
}

bool pc_cluster_ready_to_write(pc_cluster *c)
{
    PC_CHECK_OWNER(&c->loop_thread);
    return raft_state(&c->raft) == RAFT_LEADER && c->ready_term == c->raft.current_term;
}

void pc_cluster_when_ready(pc_cluster *c, void (*cb)(void *arg), void *arg)
{
    PC_CHECK_OWNER(&c->loop_thread);
    if (pc_cluster_ready_to_write(c)) {
        cb(arg);
        return;
    }
    for (unsigned i = 0; i < c->n_waiters; i++)
        if (c->waiters[i].cb == cb && c->waiters[i].arg == arg)
            return;
    if (c->n_waiters < MAX_WAITERS)
        c->waiters[c->n_waiters++] = (waiter){cb, arg};
    pc_cluster_refresh(c);
}

void pc_cluster_forget_when_ready(pc_cluster *c, void (*cb)(void *arg), void *arg)
{
    PC_CHECK_OWNER(&c->loop_thread);
    unsigned kept = 0;
    for (unsigned i = 0; i < c->n_waiters; i++)
        if (c->waiters[i].cb != cb || c->waiters[i].arg != arg)
            c->waiters[kept++] = c->waiters[i];
    c->n_waiters = kept;
}

/* Proposals. */

typedef struct proposal {
    struct raft_apply apply;
    struct raft_change change;
    pc_cluster *c;
    pc_cluster_done done;
    void *arg;
    /* membership: what is still to do after the node record applied */
    uint64_t node_id;
    char raft_address[128];
    int step;
} proposal;

static void finish(proposal *p, int rc, const pc_err *err)
{
    p->done(p->arg, rc, err);
    free(p);
}

static void apply_done(struct raft_apply *req, int status, void *result)
{
    proposal *p = req->data;
    pc_err err;
    pc_err_clear(&err);
    int rc;
    if (status == RAFT_NOTLEADER) {
        rc = pc_err_set(&err, PC_E_NOT_LEADER, "this controller is not the leader");
    } else if (status != 0) {
        rc = pc_err_set(&err, PC_E_OUTCOME_UNKNOWN,
                        "leadership was lost before the change was confirmed (%s): it may or may "
                        "not be committed; retry with the same Idempotency-Key, or check before "
                        "retrying",
                        raft_strerror(status));
    } else {
        rc = (int)(intptr_t)result;
        if (rc != PC_OK)
            err = p->c->last_apply_err;
    }
    finish(p, rc, &err);
}

static int propose(pc_cluster *c, const Popcast__ClusterCommand *cmd, proposal *p, pc_err *err)
{
    if (raft_state(&c->raft) != RAFT_LEADER)
        return pc_err_set(err, PC_E_NOT_LEADER, "this controller is not the leader");
    /* libraft's segment files need entry payloads whose length is a
     * multiple of 8 (an unaligned one corrupts the closed segment it ends
     * up in): frame the command with its length and pad it. */
    size_t len = popcast__cluster_command__get_packed_size(cmd);
    struct raft_buffer buf;
    buf.len = 8 + ((len + 7) & ~(size_t)7);
    buf.base = raft_calloc(1, buf.len);
    if (buf.base == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    uint8_t *b = buf.base;
    pc_le64_put(b, (uint64_t)len);
    popcast__cluster_command__pack(cmd, b + 8);
    p->apply.data = p;
    int rv = raft_apply(&c->raft, &p->apply, &buf, 1, apply_done);
    if (rv != 0) {
        raft_free(buf.base);
        return pc_err_set(err, rv == RAFT_NOTLEADER ? PC_E_NOT_LEADER : PC_E_UNAVAILABLE,
                          "cannot propose: %s", raft_strerror(rv));
    }
    return PC_OK;
}

/* Proposes one command; done(arg, ...) is called once, as for entries. */
static int propose_command(pc_cluster *c, const Popcast__ClusterCommand *cmd, pc_cluster_done done,
                           void *arg, pc_err *err)
{
    proposal *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    p->c = c;
    p->done = done;
    p->arg = arg;
    int rc = propose(c, cmd, p, err);
    if (rc != PC_OK)
        free(p);
    return rc;
}

int pc_cluster_propose_entry(pc_cluster *c, const Popcast__Entry *e, pc_cluster_done done,
                             void *arg, pc_err *err)
{
    Popcast__Entry *one = (Popcast__Entry *)e;
    return pc_cluster_propose_entries(c, &one, 1, NULL, 0, done, arg, err);
}

int pc_cluster_propose_entries(pc_cluster *c, Popcast__Entry **entries, size_t n,
                               Popcast__IdempotencyRecord **claims, size_t n_claims,
                               pc_cluster_done done, void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    if (n == 0)
        return pc_err_set(err, PC_E_INVALID, "nothing to propose");
    Popcast__EntryBatch b = POPCAST__ENTRY_BATCH__INIT;
    Popcast__ClusterCommand cmd = POPCAST__CLUSTER_COMMAND__INIT;
    cmd.idempotency = claims;
    cmd.n_idempotency = n_claims;
    if (n == 1) {
        /* One entry goes as before, so that a lone change reads the same
         * to a controller that does not know batches. */
        cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_ENTRY;
        cmd.entry = entries[0];
    } else {
        b.entries = entries;
        b.n_entries = n;
        cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_BATCH;
        cmd.batch = &b;
    }
    return propose_command(c, &cmd, done, arg, err);
}

int pc_cluster_propose_token(pc_cluster *c, const Popcast__TokenRecord *t, pc_cluster_done done,
                             void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    Popcast__ClusterCommand cmd = POPCAST__CLUSTER_COMMAND__INIT;
    cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_TOKEN;
    cmd.token = (Popcast__TokenRecord *)t;
    return propose_command(c, &cmd, done, arg, err);
}

int pc_cluster_propose_deployment(pc_cluster *c, const Popcast__DeploymentRecord *d,
                                  pc_cluster_done done, void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    Popcast__ClusterCommand cmd = POPCAST__CLUSTER_COMMAND__INIT;
    cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_DEPLOYMENT;
    cmd.deployment = (Popcast__DeploymentRecord *)d;
    return propose_command(c, &cmd, done, arg, err);
}

int pc_cluster_propose_plan(pc_cluster *c, const Popcast__TenantPlan *p, pc_cluster_done done,
                            void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    Popcast__ClusterCommand cmd = POPCAST__CLUSTER_COMMAND__INIT;
    cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_PLAN;
    cmd.plan = (Popcast__TenantPlan *)p;
    return propose_command(c, &cmd, done, arg, err);
}

int pc_cluster_propose_agent(pc_cluster *c, const Popcast__AgentRecord *a, pc_cluster_done done,
                             void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    Popcast__ClusterCommand cmd = POPCAST__CLUSTER_COMMAND__INIT;
    cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_AGENT;
    cmd.agent = (Popcast__AgentRecord *)a;
    return propose_command(c, &cmd, done, arg, err);
}

/* Membership: record the node (through the log), add it as a spare, then
 * promote it to voter (raft catches it up first). */

static void change_done(struct raft_change *req, int status);

static void membership_step(proposal *p, int rc, const pc_err *err)
{
    pc_err e;
    pc_err_clear(&e);
    if (rc != PC_OK) {
        finish(p, rc, err);
        return;
    }
    int rv = 0;
    p->change.data = p;
    switch (p->step++) {
    case 0: rv = raft_add(&p->c->raft, &p->change, p->node_id, p->raft_address, change_done); break;
    case 1: rv = raft_assign(&p->c->raft, &p->change, p->node_id, RAFT_VOTER, change_done); break;
    default: finish(p, PC_OK, &e); return;
    }
    if (rv != 0) {
        rc = pc_err_set(&e, rv == RAFT_NOTLEADER ? PC_E_NOT_LEADER : PC_E_INVALID,
                        "membership change refused: %s", raft_strerror(rv));
        finish(p, rc, &e);
    }
}

static void node_recorded(void *arg, int rc, const pc_err *err)
{
    membership_step(arg, rc, err);
}

static void change_done(struct raft_change *req, int status)
{
    proposal *p = req->data;
    pc_err err;
    pc_err_clear(&err);
    if (status != 0) {
        int rc = pc_err_set(&err, status == RAFT_NOTLEADER ? PC_E_NOT_LEADER : PC_E_UNAVAILABLE,
                            "membership change failed: %s", raft_strerror(status));
        finish(p, rc, &err);
        return;
    }
    membership_step(p, PC_OK, &err);
}

int pc_cluster_add(pc_cluster *c, uint64_t id, const char *raft_address, const char *api_url,
                   pc_cluster_done done, void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    if (id == 0 || raft_address == NULL || raft_address[0] == '\0' || strlen(raft_address) >= 128 ||
        api_url == NULL || strlen(api_url) >= 256)
        return pc_err_set(err, PC_E_INVALID,
                          "a node needs an id >= 1, a raft address and an "
                          "API URL");
    proposal *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    p->c = c;
    p->done = done;
    p->arg = arg;
    p->node_id = id;
    snprintf(p->raft_address, sizeof(p->raft_address), "%s", raft_address);
    /* The record goes through the log first, so every node can redirect
     * writes to the new one once it leads. */
    proposal *record = calloc(1, sizeof(*record));
    if (record == NULL) {
        free(p);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    record->c = c;
    record->done = node_recorded;
    record->arg = p;
    Popcast__ClusterNode n = POPCAST__CLUSTER_NODE__INIT;
    n.id = id;
    n.raft_address = (char *)raft_address;
    n.api_url = (char *)api_url;
    Popcast__ClusterCommand cmd = POPCAST__CLUSTER_COMMAND__INIT;
    cmd.body_case = POPCAST__CLUSTER_COMMAND__BODY_NODE;
    cmd.node = &n;
    int rc = propose(c, &cmd, record, err);
    if (rc != PC_OK) {
        free(record);
        free(p);
    }
    return rc;
}

int pc_cluster_remove(pc_cluster *c, uint64_t id, pc_cluster_done done, void *arg, pc_err *err)
{
    PC_CHECK_OWNER(&c->loop_thread);
    proposal *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    p->c = c;
    p->done = done;
    p->arg = arg;
    p->step = 2; /* after the change, finish */
    p->change.data = p;
    int rv = raft_remove(&c->raft, &p->change, id, change_done);
    if (rv != 0) {
        free(p);
        return pc_err_set(err, rv == RAFT_NOTLEADER ? PC_E_NOT_LEADER : PC_E_INVALID,
                          "cannot remove node %llu: %s", (unsigned long long)id, raft_strerror(rv));
    }
    return PC_OK;
}

/* Queries from any thread. */

bool pc_cluster_is_leader(pc_cluster *c)
{
    pthread_mutex_lock(&c->lock);
    bool leader = c->info.state == RAFT_LEADER;
    pthread_mutex_unlock(&c->lock);
    return leader;
}

bool pc_cluster_leader_api(pc_cluster *c, char *out, size_t cap)
{
    bool found = false;
    pthread_mutex_lock(&c->lock);
    uint64_t leader = c->info.leader_id;
    if (leader != 0 && leader != c->opt.id) {
        for (unsigned i = 0; i < c->n_nodes; i++) {
            if (c->nodes[i].id == leader && c->nodes[i].api_url[0] != '\0') {
                snprintf(out, cap, "%s", c->nodes[i].api_url);
                found = true;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static const char *state_name(int s)
{
    switch (s) {
    case RAFT_FOLLOWER: return "follower";
    case RAFT_CANDIDATE: return "candidate";
    case RAFT_LEADER: return "leader";
    default: return "unavailable";
    }
}

static const char *role_name(int r)
{
    switch (r) {
    case RAFT_VOTER: return "voter";
    case RAFT_STANDBY: return "standby";
    case RAFT_SPARE: return "spare";
    default: return "unknown";
    }
}

json_t *pc_cluster_info_json(pc_cluster *c)
{
    pthread_mutex_lock(&c->lock);
    json_t *nodes = json_array();
    for (unsigned i = 0; i < c->info.n_members; i++) {
        const char *api = "";
        for (unsigned j = 0; j < c->n_nodes; j++)
            if (c->nodes[j].id == c->info.members[i].id)
                api = c->nodes[j].api_url;
        json_array_append_new(nodes, json_pack("{s:I,s:s,s:s,s:s,s:b}", "id",
                                               (json_int_t)c->info.members[i].id, "raft_address",
                                               c->info.members[i].address, "api_url", api, "role",
                                               role_name(c->info.members[i].role), "leader",
                                               c->info.members[i].id == c->info.leader_id));
    }
    const char *leader_api = "";
    for (unsigned j = 0; j < c->n_nodes; j++)
        if (c->nodes[j].id == c->info.leader_id)
            leader_api = c->nodes[j].api_url;
    json_t *o = json_pack(
        "{s:I,s:s,s:I,s:s,s:I,s:I,s:I,s:I,s:o}", "id", (json_int_t)c->opt.id, "role",
        state_name(c->info.state), "leader_id", (json_int_t)c->info.leader_id, "leader_api",
        leader_api, "term", (json_int_t)c->info.term, "commit_index",
        (json_int_t)c->info.commit_index, "last_applied", (json_int_t)c->info.last_applied,
        "last_index", (json_int_t)c->info.last_index, "nodes", nodes);
    pthread_mutex_unlock(&c->lock);
    return o;
}

/* Life cycle. */

int pc_cluster_start(pc_cluster **out, const pc_cluster_options *opt, pc_err *err)
{
    *out = NULL;
    if (opt->id == 0)
        return pc_err_set(err, PC_E_INVALID, "raft_id must be at least 1");
    pc_cluster *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    c->opt = *opt;
    pc_metrics *mx = opt->metrics;
    c->m_term = pc_metrics_gauge(mx, "popcast_raft_term", NULL, "this node's current raft term");
    c->m_commit = pc_metrics_gauge(mx, "popcast_raft_commit_index", NULL,
                                   "highest raft index known committed");
    c->m_applied = pc_metrics_gauge(mx, "popcast_raft_applied_index", NULL,
                                    "highest raft index applied to this node's store");
    c->m_last_index =
        pc_metrics_gauge(mx, "popcast_raft_last_index", NULL, "last index in this node's raft log");
    c->m_leader = pc_metrics_gauge(mx, "popcast_raft_leader", NULL, "1 while this node leads");
    c->m_leader_changes = pc_metrics_counter(
        mx, "popcast_raft_leader_changes_total", NULL,
        "times this node saw the leader change to another node (after the first)");
    snprintf(c->raft_address, sizeof(c->raft_address), "%s", opt->raft_address);
    snprintf(c->api_url, sizeof(c->api_url), "%s", opt->api_url);
    snprintf(c->raft_dir, sizeof(c->raft_dir), "%s", opt->raft_dir);
    snprintf(c->scratch_dir, sizeof(c->scratch_dir), "%s", opt->scratch_dir);
    pthread_mutex_init(&c->lock, NULL);
    pc_thread_own(&c->loop_thread);
    remember_node(c, opt->id, c->raft_address, c->api_url);

    struct raft_configuration conf;
    raft_configuration_init(&conf);
    int rc = PC_OK;
    bool self_listed = false;
    for (size_t i = 0; opt->peers != NULL && i < opt->peers->count; i++) {
        uint64_t id;
        char addr[128], api[256];
        if (parse_peer(opt->peers->items[i], &id, addr, sizeof(addr), api, sizeof(api)) != PC_OK) {
            rc = pc_err_set(err, PC_E_INVALID, "peer '%s' is not ID@HOST:PORT@API_URL",
                            opt->peers->items[i]);
            goto fail_conf;
        }
        if (raft_configuration_add(&conf, id, addr, RAFT_VOTER) != 0) {
            rc = pc_err_set(err, PC_E_INVALID, "peer %llu is listed twice", (unsigned long long)id);
            goto fail_conf;
        }
        if (id == opt->id) {
            self_listed = true;
            if (strcmp(addr, c->raft_address) != 0) {
                rc = pc_err_set(err, PC_E_INVALID,
                                "peer %llu's address %s is not this node's raft_listen %s",
                                (unsigned long long)id, addr, c->raft_address);
                goto fail_conf;
            }
        }
        remember_node(c, id, addr, api);
    }
    if (opt->peers == NULL || opt->peers->count == 0) {
        raft_configuration_add(&conf, opt->id, c->raft_address, RAFT_VOTER);
        self_listed = true;
    }
    if (!self_listed && !opt->join) {
        rc = pc_err_set(err, PC_E_INVALID,
                        "this node (raft_id %llu) is not among the peers; use raft_join to "
                        "start a node that will be added later",
                        (unsigned long long)opt->id);
        goto fail_conf;
    }
    reload_nodes_from_store(c);

    int rv = raft_uv_tcp_init(&c->transport, opt->loop);
    if (rv == 0)
        rv = raft_uv_init(&c->io, opt->loop, c->raft_dir, &c->transport);
    if (rv != 0) {
        rc = pc_err_set(err, PC_E_IO, "cannot initialise raft storage in %s: %s", c->raft_dir,
                        raft_strerror(rv));
        goto fail_conf;
    }
    c->fsm.version = 2;
    c->fsm.data = c;
    c->fsm.apply = fsm_apply;
    c->fsm.snapshot = fsm_snapshot;
    c->fsm.snapshot_finalize = fsm_snapshot_finalize;
    c->fsm.restore = fsm_restore;
    rv = raft_init(&c->raft, &c->io, &c->fsm, opt->id, c->raft_address);
    if (rv != 0) {
        rc = pc_err_set(err, PC_E_INVALID, "raft: %s", raft_errmsg(&c->raft));
        goto fail_conf;
    }
    /* Pre-vote (raft thesis 9.6): a node that lost contact, e.g. a follower
     * restarted before the leader's transport reconnected to it, first
     * asks whether it could win, and bumps its term only if so. Without
     * it such a follower deposes a healthy leader: an election, the term
     * jumping, seconds of 503s (tests/integration/test_prevote.c). */
    raft_set_pre_vote(&c->raft, true);
    if (opt->election_ms)
        raft_set_election_timeout(&c->raft, opt->election_ms);
    if (opt->heartbeat_ms)
        raft_set_heartbeat_timeout(&c->raft, opt->heartbeat_ms);
    if (opt->snapshot_threshold)
        raft_set_snapshot_threshold(&c->raft, opt->snapshot_threshold);
    if (opt->snapshot_trailing)
        raft_set_snapshot_trailing(&c->raft, opt->snapshot_trailing);
    if (!opt->join) {
        rv = raft_bootstrap(&c->raft, &conf);
        if (rv != 0 && rv != RAFT_CANTBOOTSTRAP) {
            rc = pc_err_set(err, PC_E_IO, "raft bootstrap: %s", raft_strerror(rv));
            goto fail_conf;
        }
    }
    raft_configuration_close(&conf);
    rv = raft_start(&c->raft);
    if (rv != 0) {
        rc = pc_err_set(err, PC_E_IO, "raft start: %s", raft_errmsg(&c->raft));
        goto fail_started;
    }
    uv_timer_init(opt->loop, &c->tick);
    c->tick.data = c;
    uv_timer_start(&c->tick, on_tick, TICK_MS, TICK_MS);
    pc_cluster_refresh(c);
    *out = c;
    return PC_OK;
fail_conf:
    raft_configuration_close(&conf);
fail_started:
    /* raft's handles are on the loop: a failed start ends the process,
     * which is what the caller does next. */
    pthread_mutex_destroy(&c->lock);
    free(c);
    return rc;
}

void pc_cluster_set_api_url(pc_cluster *c, const char *api_url)
{
    PC_CHECK_OWNER(&c->loop_thread);
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < c->n_nodes; i++)
        if (c->nodes[i].id == c->opt.id && strcmp(c->nodes[i].api_url, c->api_url) == 0)
            snprintf(c->nodes[i].api_url, sizeof(c->nodes[i].api_url), "%s", api_url);
    pthread_mutex_unlock(&c->lock);
    snprintf(c->api_url, sizeof(c->api_url), "%s", api_url);
}

static void handle_closed(uv_handle_t *h)
{
    pc_cluster *c = h->data;
    if (--c->closing_handles > 0)
        return;
    if (c->stop_done != NULL)
        c->stop_done(c->stop_arg);
}

static void raft_closed(struct raft *r)
{
    pc_cluster *c = r->data;
    memset(&c->closed_raft, 0, sizeof(c->closed_raft));
    c->io.data = &c->closed_raft;
    handle_closed((uv_handle_t *)&c->tick);
}

void pc_cluster_free(pc_cluster *c)
{
    if (c == NULL)
        return;
    /* Only now: raft's io and transport may still have had callbacks
     * queued on the loop after raft_close's callback (see closed_raft). */
    raft_uv_close(&c->io);
    raft_uv_tcp_close(&c->transport);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

/* Ends a transfer once: from raft's callback or from the timer. */
static void transfer_finish(pc_cluster *c)
{
    void (*done)(void *, uint64_t) = c->transfer_done;
    if (done == NULL)
        return;
    c->transfer_done = NULL;
    uv_timer_stop(&c->transfer_timer);
    raft_id leader = 0;
    const char *address = NULL;
    raft_leader(&c->raft, &leader, &address);
    done(c->transfer_arg, leader != c->opt.id ? (uint64_t)leader : 0);
}

static void transfer_cb(struct raft_transfer *req)
{
    transfer_finish(req->data);
}

static void transfer_timeout(uv_timer_t *t)
{
    transfer_finish(t->data);
}

int pc_cluster_transfer_leadership(pc_cluster *c, uint64_t timeout_ms,
                                   void (*done)(void *arg, uint64_t new_leader), void *arg)
{
    PC_CHECK_OWNER(&c->loop_thread);
    /* Once per life: raft may hold the request after a timeout. */
    if (raft_state(&c->raft) != RAFT_LEADER || c->transfer_timer_open)
        return PC_E_NOT_LEADER;
    unsigned voters = 0;
    for (unsigned i = 0; i < c->raft.configuration.n; i++)
        if (c->raft.configuration.servers[i].role == RAFT_VOTER &&
            c->raft.configuration.servers[i].id != c->opt.id)
            voters++;
    if (voters == 0)
        return PC_E_NOTFOUND; /* alone: nobody to hand it to */
    memset(&c->transfer, 0, sizeof(c->transfer));
    c->transfer.data = c;
    /* 0: raft picks the voter whose log is the most up to date. */
    if (raft_transfer(&c->raft, &c->transfer, 0, transfer_cb) != 0)
        return PC_E_UNAVAILABLE;
    c->transfer_done = done;
    c->transfer_arg = arg;
    if (!c->transfer_timer_open) {
        uv_timer_init(c->opt.loop, &c->transfer_timer);
        c->transfer_timer.data = c;
        c->transfer_timer_open = true;
    }
    uv_timer_start(&c->transfer_timer, transfer_timeout, timeout_ms, 0);
    return PC_OK;
}

void pc_cluster_stop(pc_cluster *c, void (*done)(void *arg), void *arg)
{
    if (c == NULL) {
        if (done != NULL)
            done(arg);
        return;
    }
    PC_CHECK_OWNER(&c->loop_thread);
    c->stop_done = done;
    c->stop_arg = arg;
    /* Waiters will never be ready now; nor does a transfer's caller hear
     * more (raft may still call transfer_cb while it closes). */
    c->n_waiters = 0;
    c->transfer_done = NULL;
    c->closing_handles = 2; /* the tick timer and raft */
    if (c->transfer_timer_open) {
        c->closing_handles++;
        uv_timer_stop(&c->transfer_timer);
        uv_close((uv_handle_t *)&c->transfer_timer, handle_closed);
    }
    uv_timer_stop(&c->tick);
    uv_close((uv_handle_t *)&c->tick, handle_closed);
    c->raft.data = c;
    raft_close(&c->raft, raft_closed);
}
