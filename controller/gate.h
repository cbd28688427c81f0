/* gate.h - whether a version serves as well as the one before it: the
 * arithmetic of a health gate, from the request counts agents report
 * (TenantStatus.traffic, docs/protocol.md "Request counts").
 *
 * A candidate version is compared with a baseline version on the same
 * agents: the candidate's counts are summed over every agent that
 * reports any, the baseline's over those same agents only (what the
 * canary agents served before, not what the rest of the fleet serves).
 * Two rates are judged apart, each bad outcome over requests: the error
 * rate (errors and the handler's own 5xx answers) and the limit-kill
 * rate. A rate fails when
 *
 *     candidate > baseline * max_ratio + margin
 *
 * so a baseline with no errors at all still lets a candidate through up
 * to margin (and no further), and a noisy baseline is not a licence for
 * twice its noise plus nothing. Until the candidate has min_requests
 * requests the verdict is WAIT: too few to say, whatever they show.
 *
 * Counts restart from zero with an agent (its since_unix_ms moves): a
 * gate that counts from a moment (a stage's start) takes an agent's
 * counts since then with pc_gate_since, which treats a restart (or counts
 * that went down) as a new start. Pure functions: no I/O, no state. */
#ifndef PC_GATE_H
#define PC_GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pc_gate_counts {
    uint64_t requests, errors, limit_kills, status_5xx;
} pc_gate_counts;

/* One agent's counts for the two versions. */
typedef struct pc_gate_sample {
    pc_gate_counts candidate, baseline;
    bool has_candidate, has_baseline;
} pc_gate_sample;

typedef struct pc_gate_rule {
    uint64_t min_requests; /* the candidate's, over its agents */
    double max_ratio;      /* >= 1 */
    double margin;         /* a rate, 0..1 */
} pc_gate_rule;

/* min_requests 100, max_ratio 2, margin 0.01. */
pc_gate_rule pc_gate_default_rule(void);

typedef enum pc_gate_verdict { PC_GATE_PASS, PC_GATE_FAIL, PC_GATE_WAIT } pc_gate_verdict;

typedef struct pc_gate_rates {
    pc_gate_counts total;
    size_t agents; /* agents whose counts are in total */
    double error_rate, limit_kill_rate;
} pc_gate_rates;

typedef struct pc_gate_result {
    pc_gate_verdict verdict;
    pc_gate_rates candidate, baseline; /* baseline: on the candidate's agents */
    bool error_rate_failed, limit_kill_rate_failed;
    char reason[256]; /* why, with the numbers */
} pc_gate_result;

void pc_gate_judge(const pc_gate_rule *rule, const pc_gate_sample *samples, size_t n,
                   pc_gate_result *out);

/* The counts an agent's version gathered since a moment when it showed
 * `then` (counting since then_since_ms), now that it shows `now` (since
 * now_since_ms): the difference, or all of now when the agent restarted
 * in between (another since) or a count went down (a reset all the
 * same). */
pc_gate_counts pc_gate_since(const pc_gate_counts *then, int64_t then_since_ms,
                             const pc_gate_counts *now, int64_t now_since_ms);

const char *pc_gate_verdict_name(pc_gate_verdict v); /* "pass", "fail", "wait" */

#endif
