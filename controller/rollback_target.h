/* rollback_target.h - what a rollback that names no version goes back to:
 * the newest earlier version the fleet proved fully live and healthy.
 *
 * A candidate is an earlier version of the tenant, with content (not a
 * delete), that no later rollback went back past (versions a rollback
 * stepped over were abandoned: a second rollback steps further back
 * instead of returning to them), and whose bundle differs from the
 * current one (a redeploy of the same bundle goes nowhere). Only the
 * PC_ROLLBACK_LOOKBACK versions below the newest are looked at.
 *
 * A candidate qualifies only on the agents' own reports (rollout.h): at
 * least one agent counts, every agent that counts (not gone) reports it
 * live there (superseded since counts: it went live), none nacked or
 * quarantined it. An agent that never processed it (skipped, or too old
 * for the outcomes it keeps) proves nothing, so the version does not
 * qualify: nothing is claimed that no agent showed. A version that went
 * out through staged deployments (deployment.h) qualifies only if one of
 * them completed: the others were reverted by a failed gate, aborted, or
 * ended before the version took every agent's whole traffic. */
#ifndef PC_ROLLBACK_TARGET_H
#define PC_ROLLBACK_TARGET_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "rollout.h"
#include "store.h"

/* Agents keep the outcomes of their 8 most recent versions per tenant, so
 * versions much older can seldom be proven anyway. */
#define PC_ROLLBACK_LOOKBACK 32

/* Sets *version to the target. PC_E_NOTFOUND: no such tenant, or it has
 * no version to go back to. PC_E_UNPROVEN: candidates exist but none
 * qualifies; err says, per candidate (newest first), why. */
int pc_rollback_target(pc_store *store, pc_rollout *rollout, const char *tenant, int64_t now_ms,
                       uint64_t *version, pc_err *err);

#endif
