/* rollout.h - where each version is live: the controller's view of its
 * fleet, built from the status reports agents send.
 *
 * An agent's whole report replaces its table, a delta report is merged into
 * it (pc_rollout_report); either way reports carry a counter that must
 * grow, so a delayed or replayed report never moves state backwards.
 * Agents not heard from for gone_after_ms are "gone": they leave the
 * denominator of "live everywhere". Agents not heard from for
 * report_stale_ms, or that report themselves stale (no valid heartbeat),
 * are listed as stale.
 *
 * For a tenant version V, an agent's state comes from the outcome it
 * reports for V (agents keep, per tenant, the outcome of each recent
 * version they processed; docs/protocol.md "Version outcomes"):
 *   live      V went live there (a delete: took effect), whatever came
 *             after: "superseded" when it no longer serves V;
 *   nacked    it refused V or could not load it;
 *   skipped   it never processed V, although it has a newer version (a
 *             snapshot brought that first), so V was never live there;
 *   deleted   likewise, and what came first was the tenant's delete;
 *   unknown   V is older than the outcomes it remembers;
 *   missing   it has not got to V yet (or is deciding it right now).
 * "applied" counts agents whose applied version is >= V, whatever their
 * state. Agents that report no outcomes (older agents) are judged the old
 * way: live when their live version is >= V, nacked when they list a nack
 * for V, missing otherwise.
 *
 * Thread safe: reports arrive on nng threads, queries on HTTP threads,
 * ticks on the loop. */
#ifndef PC_ROLLOUT_H
#define PC_ROLLOUT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "clock.h"
#include "err.h"
#include "gate.h"
#include "popcast.pb-c.h"

typedef struct pc_rollout pc_rollout;

typedef struct pc_rollout_options {
    uint64_t gone_after_ms;   /* default 30000 */
    uint64_t report_stale_ms; /* default 15000 */
    size_t max_agents;        /* reports from more agents are refused */
    size_t max_refused;       /* ids with refusals listed apart (default 1024) */
    /* Optional, called (outside the tracker's lock, on the reporting
     * thread) for each tenant whose applied, live or split version an
     * accepted report changed on that agent: {"agent_id", "pop",
     * "tenant", "applied_version", "live_version", "split_version"}
     * (taken). */
    void (*on_change)(void *arg, const char *tenant, json_t *change);
    void *on_change_arg;
    /* Optional, called from pc_rollout_tick (outside the lock) for each
     * agent whose standing changed: {"agent_id", "pop", "state": "ok"
     * (first heard of, or heard again), "stale" or "gone"} (taken; same
     * arg). */
    void (*on_fleet)(void *arg, json_t *change);
} pc_rollout_options;

pc_rollout *pc_rollout_new(const pc_rollout_options *opt);
void pc_rollout_free(pc_rollout *r);

/* Records an agent's report (authenticated by the caller; verified says
 * whether it was signed by the key bound to the agent id, shown in the
 * fleet). PC_E_REPLAYED if its counter is not above the last one seen from
 * that agent (a replay); PC_E_INVALID for malformed reports; PC_E_TOO_LARGE
 * when max_agents is reached. Refusals of an agent id are counted as
 * pc_rollout_refused does. One exception to the counter rule: a verified
 * report carrying another public key than the agent's last accepted one
 * starts a new counter sequence (an operator bound a new key to the id,
 * e.g. after the old one was lost; the caller has checked that the key it
 * verified with is that public key).
 *
 * A delta report (st->delta; docs/protocol.md "Delta reports") lists only
 * the tenants that changed since the report st->base_counter: it is merged
 * into the agent's table, which must be at base_counter or later and, once
 * merged, match st->tenants_digest; otherwise PC_E_BASE_UNKNOWN and nothing
 * changes (the agent then sends its whole table). *takes_deltas (may be
 * NULL) says whether the agent may send deltas based on this report: it
 * was accepted and the table's digest matches the agent's. */
int pc_rollout_report(pc_rollout *r, const Popcast__AgentStatus *st, bool verified, int64_t now_ms,
                      bool *takes_deltas, pc_err *err);

/* A report refused before it reached the tracker (unsigned, signed by
 * another key than the one bound to the id, revoked, ...), under the agent
 * id it claims (which it may not own: that is what the count is for). The
 * fleet shows it: on the agent's entry, or for ids never accepted in a
 * list bounded to max_refused ids (beyond, only the total counts).
 * reason: a short word, e.g. "wrong_key". */
void pc_rollout_refused(pc_rollout *r, const char *agent_id, const char *reason, int64_t now_ms);

/* What a relay says of itself in a status batch (unsigned: relays hold no
 * key). Kept per relay id, shown in the fleet view as the relay's claim;
 * never used to judge what is live. Invalid ids are ignored. */
void pc_rollout_relay(pc_rollout *r, const Popcast__RelayStatus *rs, int64_t now_ms);

/* {"head_seq", "agents": [{agent_id, pop, applied_seq, lag, last_seen_ms_ago, stale, gone,
 *  tenants, verified, refused_reports, upstream[, last_refusal]}], "refused": [{agent_id,
 *  count, reason, last_ms_ago}], "relays": [{relay_id, pop, head_seq, first_seq, lag,
 *  upstream, agents_in_last_batch, last_seen_ms_ago, claimed}], "counts": {...}}
 *  (docs/api.md) */
json_t *pc_rollout_fleet_json(pc_rollout *r, uint64_t head_seq, int64_t now_ms);

typedef struct pc_rollout_query {
    const char *tenant;
    uint64_t version;
    uint64_t seq;
    bool is_delete;
    double fraction;         /* of non-gone agents that must be live; 1.0 = all */
    Popcast__EntryKind kind; /* the change's kind, shown ("deploy" when unset) */
    /* Where the version goes live (target.h; NULL: every agent): agents it
     * does not name are shown "untargeted" and not counted (a waiter keeps
     * a copy, so a later stage does not move its goal). */
    const Popcast__Target *target;
} pc_rollout_query;

/* What a version's code did, summed over agents (TenantStatus.traffic:
 * each agent's counts since it started). */
typedef struct pc_rollout_traffic {
    uint64_t requests, errors, limit_kills, status_5xx;
    size_t agents; /* agents that reported any for the version */
} pc_rollout_traffic;

typedef struct pc_rollout_summary {
    pc_rollout_traffic traffic;
    size_t total, live, applied, nacked, missing, stale;
    size_t superseded; /* live, no longer served */
    size_t skipped, deleted, unknown;
    size_t untargeted; /* not named by the query's target: not in total */
    bool complete;     /* live >= ceil(fraction * total) */
    bool failed;       /* at least one nack */
    bool unreachable;  /* not complete, and live + missing < ceil(fraction * total) */
} pc_rollout_summary;

/* The rollout of one version, per agent and per PoP (docs/api.md). */
json_t *pc_rollout_version_json(pc_rollout *r, const pc_rollout_query *q, int64_t now_ms,
                                pc_rollout_summary *out);

/* Waits until the rollout of q completes, fails (a nack), can no longer
 * complete (unreachable: too many agents skipped it, saw the tenant
 * deleted first, or do not know it) or deadline_ms passes; then calls done
 * exactly once, from whichever thread noticed, with the rollout document
 * and why it ended ("complete", "nacked", "unreachable", "timeout",
 * "shutdown"; in that order of precedence). Checked on every report and
 * every tick. */
typedef void (*pc_rollout_done)(void *arg, json_t *doc, const char *why);
int pc_rollout_wait(pc_rollout *r, const pc_rollout_query *q, int64_t deadline_ms,
                    pc_rollout_done done, void *arg, pc_err *err);
/* Gate samples (gate.h) for tenant's versions candidate and baseline:
 * one per counted (not gone) agent that reports counts for either, from
 * its last report. Fills out up to cap; returns how many there are. */
size_t pc_rollout_gate_samples(pc_rollout *r, const char *tenant, uint64_t candidate,
                               uint64_t baseline, int64_t now_ms, pc_gate_sample *out, size_t cap);

/* What the fleet serves of tenant, from the agents' last reports (gone
 * agents left out): {"agents": N, "versions": [{"version", "agents"}]
 * newest first, "none": agents serving nothing of it, "stale": N}. NULL
 * when out of memory. */
json_t *pc_rollout_serving_json(pc_rollout *r, const char *tenant, int64_t now_ms);

/* The PoP agent_id named in its last accepted report to this controller,
 * gone or not, copied to pop (cap bytes); false when it has none (it never
 * reported here, e.g. to a leader elected since). */
bool pc_rollout_agent_pop(pc_rollout *r, const char *agent_id, char *pop, size_t cap);

/* Expires waits and applies "gone" (call periodically, e.g. every 100 ms). */
void pc_rollout_tick(pc_rollout *r, int64_t now_ms);
/* Ends every wait with "shutdown". */
void pc_rollout_cancel_waits(pc_rollout *r);

/* Every now_ms and deadline_ms above is monotonic milliseconds
 * (pc_mono_ms, clock.h). */

#endif
