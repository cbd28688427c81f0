/* cluster.h - the controller cluster: canonical raft (libraft, its libuv
 * I/O and TCP transport, pre-vote on) replicating every change into each
 * controller's LMDB store.
 *
 * The replicated state machine is the store itself. A raft command is a
 * ClusterCommand: a change already versioned and signed by the leader (an
 * Entry with its bundle), a batch of them at consecutive seqs (group
 * commit), a token or agent record, or a node's API address. Applying an
 * entry runs pc_store_apply (a batch: pc_store_apply_batch, all or none),
 * whose seq and version checks are deterministic, so every replica ends in
 * the same state; then each entry is published to this controller's
 * subscribers. A raft snapshot is a compacted copy of the
 * store; restoring one replaces the store (pc_store_replace).
 *
 * Why the leader signs before proposing: Ed25519 is deterministic, so
 * replicas could re-sign during apply, but then each needs the key at
 * apply time and a follower restoring an old log would sign with whatever
 * key it has now. Signing once, on the leader, puts exactly the bytes
 * agents verify into the log.
 *
 * A single-node cluster (no peers configured) is the default: the same code
 * path, one voter.
 *
 * Threads: everything here runs on the controller's libuv loop, except
 * pc_cluster_info_json and pc_cluster_leader_api, which read a copy of the
 * state refreshed by the loop and may be called from any thread. */
#ifndef PC_CLUSTER_H
#define PC_CLUSTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "err.h"
#include "popcast.pb-c.h"
#include "metrics.h"
#include "store.h"

typedef struct pc_cluster pc_cluster;

typedef struct pc_cluster_options {
    uv_loop_t *loop;
    pc_store *store;
    const char *raft_dir;     /* raft's log and snapshots */
    const char *scratch_dir;  /* where snapshot files are written */
    uint64_t id;              /* this node's raft id (>= 1) */
    const char *raft_address; /* host:port this node listens on for raft */
    const char *api_url;      /* this node's REST API, for redirects */
    /* Initial members, "ID@HOST:PORT@API_URL" each; empty: this node alone.
     * Every member must be started with the same list. */
    const pc_strlist *peers;
    bool join; /* start empty and wait to be added (pc_cluster_add) */
    unsigned election_ms, heartbeat_ms;
    unsigned snapshot_threshold, snapshot_trailing;
    /* Called on the loop after an entry was applied to the store. */
    void (*on_applied)(void *arg, const Popcast__Entry *e);
    void *on_applied_arg;
    /* Called on the loop after a deployment record was stored (optional;
     * same arg). */
    void (*on_deployment)(void *arg, const Popcast__DeploymentRecord *d);
    /* Called on the loop when this node sees another leader than before
     * (at its 100 ms refresh; optional; same arg). */
    void (*on_leader)(void *arg, uint64_t leader, uint64_t term);
    pc_metrics *metrics; /* popcast_raft_*: term, indexes, leader changes */
} pc_cluster_options;

int pc_cluster_start(pc_cluster **out, const pc_cluster_options *opt, pc_err *err);
/* Loop thread: this node's API address once its listener is bound (the
 * api_url given at start may name port 0). As at start, what the peers
 * list or the recorded membership says about this node keeps precedence. */
void pc_cluster_set_api_url(pc_cluster *c, const char *api_url);
/* Loop thread, before a stop: hands leadership to the most up-to-date
 * other voter (raft's TimeoutNow), so that the cluster has a leader
 * without waiting for an election timeout. done(arg, new_leader) is
 * called once on the loop: when raft says the transfer ended, or after
 * timeout_ms; new_leader is the leader then, 0 if none other is known.
 * PC_E_NOT_LEADER: not leading (or a transfer is under way);
 * PC_E_NOTFOUND: no other voter; done is not called then. */
int pc_cluster_transfer_leadership(pc_cluster *c, uint64_t timeout_ms,
                                   void (*done)(void *arg, uint64_t new_leader), void *arg);
/* Loop thread. Closes raft; done is called (on the loop) once it is shut.
 * The cluster's memory stays until pc_cluster_free. */
void pc_cluster_stop(pc_cluster *c, void (*done)(void *arg), void *arg);
/* Releases a stopped cluster (NULL is a no-op). Call it only after stop's
 * done ran and the loop has run until no handle is alive: libraft 0.15 may
 * still finish closing a log segment after its own close callback. */
void pc_cluster_free(pc_cluster *c);

/* Loop thread: true when this node is the leader and has applied every
 * entry of earlier terms (a barrier of its own term went through), so its
 * store is the whole committed state and new seqs can follow it. */
bool pc_cluster_ready_to_write(pc_cluster *c);
/* Loop thread: raft's own view (pc_cluster_is_leader reads a copy). */
bool pc_cluster_leading(pc_cluster *c);
/* Loop thread: calls cb once the node becomes ready to write, or stops
 * leading (or at once if it is ready); the pipeline resumes with it. */
void pc_cluster_when_ready(pc_cluster *c, void (*cb)(void *arg), void *arg);
/* Loop thread: withdraws a when_ready registration (cb will not be called
 * with arg); whoever frees arg must call it first. */
void pc_cluster_forget_when_ready(pc_cluster *c, void (*cb)(void *arg), void *arg);

/* Loop thread. Proposes one entry (takes nothing: the command is copied).
 * done(arg, rc, err) is called once: PC_OK after the entry was committed
 * by a majority and applied to this node's store; PC_E_NOT_LEADER if this
 * node is not the leader; PC_E_OUTCOME_UNKNOWN if leadership was lost while
 * it was in flight (it may or may not be committed: the caller must say so);
 * or the store's error from applying it. */
typedef void (*pc_cluster_done)(void *arg, int rc, const pc_err *err);
int pc_cluster_propose_entry(pc_cluster *c, const Popcast__Entry *e, pc_cluster_done done,
                             void *arg, pc_err *err);

/* Loop thread. Group commit: proposes n entries at consecutive seqs as
 * one raft command, applied by every replica in one store transaction
 * (pc_store_apply_batch: all or none); done is called once for all of
 * them, as for one entry. claims (may be NULL when n_claims is 0) are the
 * idempotency keys of some of the entries, each naming its entry by seq
 * and stored with it (store.h invariant 7); an entry named twice, or a
 * key already kept, fails the whole command. Everything is copied. */
int pc_cluster_propose_entries(pc_cluster *c, Popcast__Entry **entries, size_t n,
                               Popcast__IdempotencyRecord **claims, size_t n_claims,
                               pc_cluster_done done, void *arg, pc_err *err);

/* Loop thread: writes an API token record (create, or revoke with
 * revoked set) through the log into every controller's store, under
 * "token.<hex hash>". */
int pc_cluster_propose_token(pc_cluster *c, const Popcast__TokenRecord *t, pc_cluster_done done,
                             void *arg, pc_err *err);

/* Loop thread: enrolls (or revokes, with revoked set) an agent's identity
 * key, stored under "agent.<agent_id>" on every controller. */
int pc_cluster_propose_agent(pc_cluster *c, const Popcast__AgentRecord *a, pc_cluster_done done,
                             void *arg, pc_err *err);

/* Loop thread: creates or updates a staged deployment's record, stored
 * under "deployment.<tenant>.<id>" on every controller once each checked
 * it (deployment.h: pc_deployment_check_new or _check_update against the
 * record it holds; a record that fails is refused, PC_E_INVALID). */
int pc_cluster_propose_deployment(pc_cluster *c, const Popcast__DeploymentRecord *d,
                                  pc_cluster_done done, void *arg, pc_err *err);

/* Loop thread: sets (or, with no stages, clears) a tenant's default plan,
 * stored under "plan.<tenant>" on every controller once each checked it
 * (pc_deployment_check_plan). */
int pc_cluster_propose_plan(pc_cluster *c, const Popcast__TenantPlan *p, pc_cluster_done done,
                            void *arg, pc_err *err);

/* Loop thread: membership. add: records the node's API address through the
 * log, adds it, and makes it a voter once it caught up. */
int pc_cluster_add(pc_cluster *c, uint64_t id, const char *raft_address, const char *api_url,
                   pc_cluster_done done, void *arg, pc_err *err);
int pc_cluster_remove(pc_cluster *c, uint64_t id, pc_cluster_done done, void *arg, pc_err *err);

/* Loop thread: refreshes the copy the functions below read. */
void pc_cluster_refresh(pc_cluster *c);

/* Any thread. The leader's API URL (false if none is known or it is
 * this node). */
bool pc_cluster_leader_api(pc_cluster *c, char *out, size_t cap);
bool pc_cluster_is_leader(pc_cluster *c);
/* Any thread: what /readyz checks, from the copy pc_cluster_refresh
 * made (every 100 ms on the loop). */
typedef struct pc_cluster_health {
    bool member;        /* this node is in the configuration */
    uint64_t leader_id; /* 0: no leader known */
    uint64_t commit_index, last_applied;
} pc_cluster_health;
void pc_cluster_get_health(pc_cluster *c, pc_cluster_health *out);
/* {"id","role","leader_id","leader_api","term","commit_index","last_applied",
 *  "last_index","nodes":[{"id","raft_address","api_url","role"}]} */
json_t *pc_cluster_info_json(pc_cluster *c);

#endif
