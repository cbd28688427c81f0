/* registry.h - the store's meta key space, and typed access to the
 * records kept in it.
 *
 * Every key of the meta table is named here, one prefix per kind of
 * record; no other module builds meta keys. Records are protobuf messages
 * (proto/popcast.proto); a read returns the decoded message (free with its
 * protobuf-c __free_unpacked), whatever its size, and a record that does
 * not decode is an error (PC_E_STORE naming the key), never skipped: the
 * store is written by popcast alone, so a record it cannot read means the
 * store is damaged, and a damaged access record must not silently vanish
 * from a listing or a check.
 *
 *   "applied_seq", "log_base"      u64 BE      store.c (the log)
 *   "rotation/<seq, 20 digits>"    LogRecord   store.c (invariant 6)
 *   "token.<hex BLAKE2b of token>" TokenRecord controller: API tokens
 *   "agent.<agent id>"             AgentRecord controller: enrolled agents
 *   "cluster.node.<raft id>"       ClusterNode controller: members added at run time
 *   "status_epoch"                 u64 BE      agent: report counter floor (µs)
 *   "outcome.<tenant>"             TenantOutcomes agent: what became of its versions
 *   "deployment.<tenant>.<id, 20 digits>" DeploymentRecord controller: staged deployments
 *   "deployment_open.<tenant>.<id>"  ""         controller: the ones not over (an index)
 *
 * Walks follow store.h: cb returning non-zero stops the walk and that
 * value is returned. Writes here are for the cluster's FSM (controller)
 * and the agent's start-up; each is one LMDB transaction. Thread safe as
 * the store is. */
#ifndef PC_REGISTRY_H
#define PC_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "crypto.h"
#include "err.h"
#include "popcast.pb-c.h"
#include "store.h"

/* API tokens, by the hash of the token. */
int pc_registry_put_token(pc_store *s, const Popcast__TokenRecord *t, pc_err *err);
/* PC_E_NOTFOUND when no token has that hash. */
int pc_registry_get_token(pc_store *s, const uint8_t hash[PC_HASH_LEN], Popcast__TokenRecord **out,
                          pc_err *err);
/* By the token's public id; PC_E_NOTFOUND when none has it. */
int pc_registry_find_token(pc_store *s, const char *id, Popcast__TokenRecord **out, pc_err *err);
int pc_registry_foreach_token(pc_store *s, int (*cb)(void *arg, const Popcast__TokenRecord *t),
                              void *arg, pc_err *err);

/* Enrolled agents, by agent id. */
int pc_registry_put_agent(pc_store *s, const Popcast__AgentRecord *a, pc_err *err);
/* PC_E_NOTFOUND when not enrolled (or the id is not a valid id). */
int pc_registry_get_agent(pc_store *s, const char *agent_id, Popcast__AgentRecord **out,
                          pc_err *err);
int pc_registry_foreach_agent(pc_store *s, int (*cb)(void *arg, const Popcast__AgentRecord *a),
                              void *arg, pc_err *err);

/* Cluster members added at run time, by raft id (any id >= 1). */
int pc_registry_put_node(pc_store *s, const Popcast__ClusterNode *n, pc_err *err);
int pc_registry_foreach_node(pc_store *s, int (*cb)(void *arg, const Popcast__ClusterNode *n),
                             void *arg, pc_err *err);

/* Controller: staged deployments, by tenant and id (replaced whole; the
 * rules of an update are controller/deployment.h's; open: the record is
 * not over, and is listed in the index of open ones). PC_E_NOTFOUND when
 * absent. The walk goes in id order, one tenant's (tenant non-NULL) or
 * every tenant's. */
int pc_registry_put_deployment(pc_store *s, const Popcast__DeploymentRecord *d, bool open,
                               pc_err *err);
/* The deployments put with open set, in tenant and id order (the index
 * "deployment_open.<tenant>.<id>" is written with each record, in the
 * same transaction). */
int pc_registry_foreach_open_deployment(pc_store *s,
                                        int (*cb)(void *arg, const Popcast__DeploymentRecord *d),
                                        void *arg, pc_err *err);
int pc_registry_get_deployment(pc_store *s, const char *tenant, uint64_t id,
                               Popcast__DeploymentRecord **out, pc_err *err);
int pc_registry_foreach_deployment(pc_store *s, const char *tenant,
                                   int (*cb)(void *arg, const Popcast__DeploymentRecord *d),
                                   void *arg, pc_err *err);

/* Controller: a tenant's own default deployment plan, under
 * "plan.<tenant>" (replaced whole; a plan of no stages deletes it).
 * PC_E_NOTFOUND when the tenant has none. */
int pc_registry_put_plan(pc_store *s, const Popcast__TenantPlan *p, pc_err *err);
int pc_registry_get_plan(pc_store *s, const char *tenant, Popcast__TenantPlan **out, pc_err *err);

/* Agent: the outcomes of a tenant's recent versions (replaced whole). */
int pc_registry_put_outcomes(pc_store *s, const char *tenant, const Popcast__TenantOutcomes *o,
                             pc_err *err);
/* The same write, for pc_store_write_many: fills w (its key in key, its
 * value malloc'd in *val: the caller frees it after the write). */
#define PC_REGISTRY_OUTCOMES_KEY_MAX (sizeof("outcome.") + PC_TENANT_MAX)
int pc_registry_outcomes_write(const char *tenant, const Popcast__TenantOutcomes *o,
                               char key[PC_REGISTRY_OUTCOMES_KEY_MAX], pc_store_write *w,
                               uint8_t **val, pc_err *err);
/* Every tenant's outcomes, in tenant name order. */
int pc_registry_foreach_outcomes(pc_store *s,
                                 int (*cb)(void *arg, const char *tenant,
                                           const Popcast__TenantOutcomes *o),
                                 void *arg, pc_err *err);

/* Agent: the floor of this start's status report counters, stored
 * before use: max(stored + 1, now_us). Report counters are wall-clock
 * microseconds (each above the last), so they keep growing across
 * restarts and across a wiped store, as long as the clock does not step
 * back; the stored floor covers a clock that does, within one store. */
int pc_registry_next_report_floor(pc_store *s, uint64_t now_us, uint64_t *floor, pc_err *err);

#endif
