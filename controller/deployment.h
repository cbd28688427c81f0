/* deployment.h - a staged deployment's record and how it may change
 * (docs/deployments.md).
 *
 * A deployment takes one version of one tenant through the stages of its
 * plan. Its record (DeploymentRecord) lives in the controllers'
 * replicated store and changes only through raft commands, each made from
 * the committed record by one operation below, on the leader's pipeline
 * (so two operations never race) and checked again by every replica as it
 * applies it (pc_deployment_check_update).
 *
 * Invariants of a record's history:
 *  1. Events are appended, never rewritten or dropped: an update carries
 *     every event the record had, unchanged, first.
 *  2. What was asked for never changes: tenant, id, version, baseline,
 *     plan, author, creation time, immediate.
 *  3. The stage only moves forward, and a final state (complete, reverted,
 *     superseded, aborted; halted with no baseline) is never left.
 * Pure functions: no I/O, no locks. */
#ifndef PC_DEPLOYMENT_H
#define PC_DEPLOYMENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "err.h"
#include "popcast.pb-c.h"

#define PC_DEPLOYMENT_MAX_STAGES 8
#define PC_DEPLOYMENT_DETAIL_MAX 512

typedef enum pc_deployment_op_kind {
    PC_DEPLOYMENT_STAGED,     /* the current stage's STAGE entry committed at seq */
    PC_DEPLOYMENT_PASSED,     /* the current stage's gate passed: next stage, or complete */
    PC_DEPLOYMENT_FAILED,     /* the current stage's gate failed: halted, to be reverted */
    PC_DEPLOYMENT_REVERTED,   /* the revert (a rollback to the baseline) committed at seq */
    PC_DEPLOYMENT_SUPERSEDED, /* a newer change of the tenant overtook the version */
    PC_DEPLOYMENT_PAUSE,      /* an operator's: the driver stops judging */
    PC_DEPLOYMENT_RESUME,
    PC_DEPLOYMENT_ABORT,   /* halted by an operator, to be reverted (then aborted) */
    PC_DEPLOYMENT_PROMOTE, /* the current stage passes now, unjudged */
    PC_DEPLOYMENT_OP_COUNT
} pc_deployment_op_kind;

typedef struct pc_deployment_op {
    pc_deployment_op_kind kind;
    uint32_t stage; /* STAGED, PASSED, FAILED: the stage it is about */
    uint64_t seq;   /* STAGED, REVERTED: the entry */
    char detail[PC_DEPLOYMENT_DETAIL_MAX];
} pc_deployment_op;

/* "running", "paused", "halted", "complete", "reverted", "superseded",
 * "aborted" ("unknown" for anything else). */
const char *pc_deployment_state_name(Popcast__DeploymentState s);
/* "staged", "passed", ... (the op's event name). */
const char *pc_deployment_op_name(pc_deployment_op_kind k);
/* A state the record never leaves (invariant 3). */
bool pc_deployment_final(const Popcast__DeploymentRecord *d);

/* Checks a record being created (its id, state running, one "started"
 * event, 1 to PC_DEPLOYMENT_MAX_STAGES stages, each target valid). */
int pc_deployment_check_new(const Popcast__DeploymentRecord *d, pc_err *err);
/* Checks a plan: 1 to PC_DEPLOYMENT_MAX_STAGES stages, each target valid,
 * bakes and minimum requests within bounds (a deployment's, a tenant's). */
int pc_deployment_check_plan(Popcast__DeploymentStage *const *plan, size_t n, pc_err *err);
/* Checks that next may replace cur (the three invariants above);
 * PC_E_INVALID naming the broken one. */
int pc_deployment_check_update(const Popcast__DeploymentRecord *cur,
                               const Popcast__DeploymentRecord *next, pc_err *err);

/* The record op makes of cur at now_ms (*next: a new record, free with
 * popcast__deployment_record__free_unpacked). PC_E_EXISTS (a conflict:
 * answered 409) when op does not apply to cur as it is (pausing what is
 * not running, a stage already passed, a final record...); cur is never
 * changed. author names who asked, for operators' ops ("" otherwise). */
int pc_deployment_apply(const Popcast__DeploymentRecord *cur, const pc_deployment_op *op,
                        int64_t now_ms, const char *author, Popcast__DeploymentRecord **next,
                        pc_err *err);

/* Appends an event to d (strings copied). PC_E_NOMEM. */
int pc_deployment_add_event(Popcast__DeploymentRecord *d, int64_t at_ms, const char *what,
                            uint32_t stage, uint64_t seq, const char *detail);
/* Fills d's (empty) plan with a deep copy of plan. PC_E_NOMEM. */
int pc_deployment_copy_plan(Popcast__DeploymentRecord *d, Popcast__DeploymentStage *const *plan,
                            size_t n);
/* A deep copy (NULL when out of memory). */
Popcast__DeploymentRecord *pc_deployment_copy(const Popcast__DeploymentRecord *d);

/* The default plan (docs/deployments.md): canary_pop (none: skipped),
 * then 10 % and 50 % of all agents (with the canary PoP), each baking
 * bake_ms with the health gate, then everyone. Fills d's plan. */
int pc_deployment_default_plan(Popcast__DeploymentRecord *d, const char *canary_pop,
                               uint64_t bake_ms);

/* A plan's stages as the API shows them (docs/api.md "Deployments"). */
json_t *pc_deployment_plan_json(Popcast__DeploymentStage *const *plan, size_t n);

/* The record as the API shows it (docs/api.md "Deployments"). */
json_t *pc_deployment_json(const Popcast__DeploymentRecord *d);

#endif
