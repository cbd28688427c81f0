/* gate.c - health gate arithmetic (see gate.h). */
#include "gate.h"

#include <stdio.h>
#include <string.h>

pc_gate_rule pc_gate_default_rule(void)
{
    return (pc_gate_rule){.min_requests = 100, .max_ratio = 2.0, .margin = 0.01};
}

const char *pc_gate_verdict_name(pc_gate_verdict v)
{
    switch (v) {
    case PC_GATE_PASS: return "pass";
    case PC_GATE_FAIL: return "fail";
    default: return "wait";
    }
}

static void add(pc_gate_counts *sum, const pc_gate_counts *c)
{
    sum->requests += c->requests;
    sum->errors += c->errors;
    sum->limit_kills += c->limit_kills;
    sum->status_5xx += c->status_5xx;
}

static void rates(pc_gate_rates *r)
{
    double req = (double)r->total.requests;
    r->error_rate = req > 0 ? (double)(r->total.errors + r->total.status_5xx) / req : 0.0;
    r->limit_kill_rate = req > 0 ? (double)r->total.limit_kills / req : 0.0;
}

void pc_gate_judge(const pc_gate_rule *rule, const pc_gate_sample *samples, size_t n,
                   pc_gate_result *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        if (!samples[i].has_candidate || samples[i].candidate.requests == 0)
            continue;
        add(&out->candidate.total, &samples[i].candidate);
        out->candidate.agents++;
        if (samples[i].has_baseline && samples[i].baseline.requests > 0) {
            add(&out->baseline.total, &samples[i].baseline);
            out->baseline.agents++;
        }
    }
    rates(&out->candidate);
    rates(&out->baseline);
    const pc_gate_rates *c = &out->candidate, *b = &out->baseline;
    if (c->total.requests < rule->min_requests) {
        out->verdict = PC_GATE_WAIT;
        snprintf(out->reason, sizeof(out->reason),
                 "%llu requests on %zu agents, fewer than the %llu needed to judge",
                 (unsigned long long)c->total.requests, c->agents,
                 (unsigned long long)rule->min_requests);
        return;
    }
    out->error_rate_failed = c->error_rate > b->error_rate * rule->max_ratio + rule->margin;
    out->limit_kill_rate_failed =
        c->limit_kill_rate > b->limit_kill_rate * rule->max_ratio + rule->margin;
    out->verdict =
        out->error_rate_failed || out->limit_kill_rate_failed ? PC_GATE_FAIL : PC_GATE_PASS;
    snprintf(out->reason, sizeof(out->reason),
             "error rate %.2f%% (baseline %.2f%%), limit-kill rate %.2f%% (baseline %.2f%%) over "
             "%llu requests on %zu agents (baseline %llu requests)%s",
             100 * c->error_rate, 100 * b->error_rate, 100 * c->limit_kill_rate,
             100 * b->limit_kill_rate, (unsigned long long)c->total.requests, c->agents,
             (unsigned long long)b->total.requests,
             out->verdict == PC_GATE_PASS                            ? ""
             : out->error_rate_failed && out->limit_kill_rate_failed ? ": both rates above the gate"
             : out->error_rate_failed ? ": the error rate is above the gate"
                                      : ": the limit-kill rate is above the gate");
}

pc_gate_counts pc_gate_since(const pc_gate_counts *then, int64_t then_since_ms,
                             const pc_gate_counts *now, int64_t now_since_ms)
{
    if (then_since_ms != now_since_ms || now->requests < then->requests ||
        now->errors < then->errors || now->limit_kills < then->limit_kills ||
        now->status_5xx < then->status_5xx)
        return *now;
    return (pc_gate_counts){.requests = now->requests - then->requests,
                            .errors = now->errors - then->errors,
                            .limit_kills = now->limit_kills - then->limit_kills,
                            .status_5xx = now->status_5xx - then->status_5xx};
}
