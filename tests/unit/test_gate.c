/* test_gate.c - controller/gate.h: the health gate's arithmetic, as a
 * table of cases: too few requests, a baseline without errors, a noisy
 * baseline, baselines from other agents, limit kills apart from errors,
 * and counts that restart with an agent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "gate.h"

static pc_gate_counts counts(uint64_t requests, uint64_t errors, uint64_t limit_kills,
                             uint64_t status_5xx)
{
    return (pc_gate_counts){requests, errors, limit_kills, status_5xx};
}

static pc_gate_sample both(pc_gate_counts candidate, pc_gate_counts baseline)
{
    return (pc_gate_sample){candidate, baseline, true, true};
}

static pc_gate_sample candidate_only(pc_gate_counts candidate)
{
    return (pc_gate_sample){.candidate = candidate, .has_candidate = true};
}

static pc_gate_sample baseline_only(pc_gate_counts baseline)
{
    return (pc_gate_sample){.baseline = baseline, .has_baseline = true};
}

static pc_gate_verdict judge(const pc_gate_sample *s, size_t n, pc_gate_result *r)
{
    pc_gate_rule rule = pc_gate_default_rule();
    pc_gate_judge(&rule, s, n, r);
    return r->verdict;
}

/* Fewer than min_requests: wait, even at 100 % errors; at the count, the
 * same errors fail. */
static void test_too_few_requests_wait(void **state)
{
    (void)state;
    pc_gate_result r;
    pc_gate_sample s[] = {both(counts(60, 60, 0, 0), counts(1000, 0, 0, 0)),
                          both(counts(39, 39, 0, 0), counts(1000, 0, 0, 0))};
    assert_int_equal(judge(s, 2, &r), PC_GATE_WAIT);
    assert_non_null(strstr(r.reason, "99 requests on 2 agents, fewer than the 100"));
    s[1].candidate = counts(40, 40, 0, 0);
    assert_int_equal(judge(s, 2, &r), PC_GATE_FAIL);
    assert_true(r.error_rate_failed);
    assert_false(r.limit_kill_rate_failed);
}

/* A baseline with no errors lets a candidate through up to the margin
 * (1 %) and no further. */
static void test_zero_error_baseline(void **state)
{
    (void)state;
    pc_gate_result r;
    pc_gate_sample s[] = {both(counts(1000, 10, 0, 0), counts(5000, 0, 0, 0))};
    assert_int_equal(judge(s, 1, &r), PC_GATE_PASS);
    s[0].candidate = counts(1000, 11, 0, 0);
    assert_int_equal(judge(s, 1, &r), PC_GATE_FAIL);
    /* The handler's own 5xx answers count as errors. */
    s[0].candidate = counts(1000, 6, 0, 5);
    assert_int_equal(judge(s, 1, &r), PC_GATE_FAIL);
    /* A bundle failing 30 % of its requests, as issue 13's test has it. */
    s[0].candidate = counts(200, 60, 0, 0);
    assert_int_equal(judge(s, 1, &r), PC_GATE_FAIL);
    assert_non_null(strstr(r.reason, "error rate 30.00% (baseline 0.00%)"));
    assert_non_null(strstr(r.reason, "the error rate is above the gate"));
}

/* A noisy baseline (5 %) allows up to twice it plus the margin (11 %). */
static void test_noisy_baseline(void **state)
{
    (void)state;
    pc_gate_result r;
    pc_gate_sample s[] = {both(counts(1000, 110, 0, 0), counts(1000, 50, 0, 0))};
    assert_int_equal(judge(s, 1, &r), PC_GATE_PASS);
    s[0].candidate = counts(1000, 111, 0, 0);
    assert_int_equal(judge(s, 1, &r), PC_GATE_FAIL);
}

/* The baseline is what the candidate's agents served: an agent that only
 * reports the baseline (not in the canary) changes nothing, and without
 * any baseline on those agents the margin alone judges. */
static void test_baseline_on_the_same_agents(void **state)
{
    (void)state;
    pc_gate_result r;
    pc_gate_sample s[] = {both(counts(500, 20, 0, 0), counts(500, 0, 0, 0)),
                          baseline_only(counts(100000, 50000, 0, 0))};
    assert_int_equal(judge(s, 2, &r), PC_GATE_FAIL);
    assert_int_equal(r.baseline.total.requests, 500);
    assert_int_equal(r.baseline.agents, 1);
    assert_int_equal(r.candidate.agents, 1);
    pc_gate_sample none[] = {candidate_only(counts(500, 4, 0, 0))};
    assert_int_equal(judge(none, 1, &r), PC_GATE_PASS);
    none[0].candidate = counts(500, 6, 0, 0);
    assert_int_equal(judge(none, 1, &r), PC_GATE_FAIL);
    assert_int_equal(r.baseline.total.requests, 0);
}

/* Limit kills are a rate of their own: many of them fail the gate even
 * with no errors, and errors do not hide behind a clean kill rate. */
static void test_limit_kills_apart(void **state)
{
    (void)state;
    pc_gate_result r;
    pc_gate_sample s[] = {both(counts(1000, 0, 50, 0), counts(1000, 0, 0, 0))};
    assert_int_equal(judge(s, 1, &r), PC_GATE_FAIL);
    assert_true(r.limit_kill_rate_failed);
    assert_false(r.error_rate_failed);
    assert_non_null(strstr(r.reason, "the limit-kill rate is above the gate"));
    s[0].candidate = counts(1000, 50, 50, 0);
    assert_int_equal(judge(s, 1, &r), PC_GATE_FAIL);
    assert_non_null(strstr(r.reason, "both rates"));
}

/* Counts since a moment: the difference while the agent ran on; all of
 * the new counts after it restarted (since moved) or when a count went
 * down (a reset all the same). */
static void test_counts_since(void **state)
{
    (void)state;
    pc_gate_counts then = counts(100, 10, 2, 1), now = counts(150, 12, 2, 4);
    pc_gate_counts d = pc_gate_since(&then, 5000, &now, 5000);
    assert_int_equal(d.requests, 50);
    assert_int_equal(d.errors, 2);
    assert_int_equal(d.limit_kills, 0);
    assert_int_equal(d.status_5xx, 3);
    pc_gate_counts after = counts(30, 3, 0, 0);
    d = pc_gate_since(&then, 5000, &after, 9000);
    assert_int_equal(d.requests, 30);
    assert_int_equal(d.errors, 3);
    pc_gate_counts lower = counts(120, 5, 2, 1); /* errors went down: reset */
    d = pc_gate_since(&then, 5000, &lower, 5000);
    assert_int_equal(d.requests, 120);
    assert_int_equal(d.errors, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_too_few_requests_wait),
        cmocka_unit_test(test_zero_error_baseline),
        cmocka_unit_test(test_noisy_baseline),
        cmocka_unit_test(test_baseline_on_the_same_agents),
        cmocka_unit_test(test_limit_kills_apart),
        cmocka_unit_test(test_counts_since),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
