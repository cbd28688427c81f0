/* deployer.h - the leader's driver of staged deployments
 * (docs/deployments.md, "the driver").
 *
 * Every gate interval the leader looks at each deployment that is not
 * over and moves it one step, through the pipeline like any write:
 *   - running, its stage not started: commits the stage's STAGE entry,
 *     then records it (staged);
 *   - running, its stage started: judges it from the fleet view (the
 *     agents the stage targets): more nacks than the stage allows, or the
 *     health gate (gate.h: error and limit-kill rates against the baseline
 *     on the same agents) failing, halts it (failed) at once; live on
 *     every targeted agent, baked, and the gate passed (or, with
 *     min_requests 0, not judged for want of requests: said so), passes
 *     it (passed: the next stage, or complete);
 *   - halted: commits the revert, a rollback to the baseline for every
 *     agent, then records it (reverted, or aborted when an operator asked);
 *   - any, when a newer change of the tenant came: superseded.
 * Every decision lives in the replicated record, so a new leader goes on
 * from the stage the record names; a step that was committed but not
 * recorded when a leader died is done again, and doing it again is
 * harmless (the same STAGE, or a revert found already made). One step per
 * deployment is in flight at a time.
 *
 * Loop thread only. */
#ifndef PC_DEPLOYER_H
#define PC_DEPLOYER_H

#include <stdint.h>

#include "cluster.h"
#include "metrics.h"
#include "pipeline.h"
#include "rollout.h"
#include "store.h"

typedef struct pc_deployer pc_deployer;

typedef struct pc_deployer_options {
    pc_store *store;
    pc_pipeline *pipeline;
    pc_rollout *rollout;
    pc_cluster *cluster;
    uint64_t interval_ms; /* the gate interval (0: 1000) */
} pc_deployer_options;

pc_deployer *pc_deployer_new(const pc_deployer_options *opt);
/* Call often (every loop tick): acts every interval_ms while this node is
 * ready to write. now_ms is the wall clock (stages' start times are). */
void pc_deployer_tick(pc_deployer *d, int64_t now_ms);
/* No new steps from now on (steps in flight are answered by the
 * pipeline's shutdown). */
void pc_deployer_stop(pc_deployer *d);
/* After the pipeline is closed (no step can be answered any more). */
void pc_deployer_free(pc_deployer *d);

#endif
