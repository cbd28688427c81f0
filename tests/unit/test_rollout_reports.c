/* test_rollout_reports.c - controller/rollout.h's bookkeeping of who
 * reported what: refused reports are counted under the agent id they
 * claim and shown in the fleet (on the agent's entry, or in a bounded list
 * of ids never accepted), a verified report with a new key starts a new
 * counter sequence, versions are judged by the outcomes agents report,
 * waits end when a rollout can no longer complete, and the serving view
 * counts what agents serve. Times are given, not measured (waits read the
 * clock themselves: reports there are placed at pc_mono_ms()). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clock.h"
#include "crypto.h"
#include "rollout.h"

#define T0 1000000

static int report(pc_rollout *r, const char *id, uint64_t counter, uint8_t key, bool verified,
                  int64_t now)
{
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    uint8_t pk[PC_PK_LEN];
    memset(pk, key, sizeof(pk));
    st.agent_id = (char *)id;
    st.pop = "fra";
    st.counter = counter;
    st.applied_seq = counter;
    if (key != 0) {
        st.public_key.data = pk;
        st.public_key.len = PC_PK_LEN;
    }
    pc_err err;
    return pc_rollout_report(r, &st, verified, now, NULL, &err);
}

static json_t *entry_of(json_t *fleet, const char *id)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(fleet, "agents"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), id) == 0)
            return a;
    }
    return NULL;
}

static json_int_t int_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static const char *str_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("\"%s\" is not a string", key);
    return json_string_value(v);
}

/* Refusals under a known id land on its entry; under an id never accepted
 * in the "refused" list, which moves onto the entry when the id is first
 * accepted; replays count as refusals; ids that are not ids count only in
 * the total. */
static void test_refusals_are_shown(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    assert_int_equal(report(r, "edge-a", 5, 1, true, T0), PC_OK);
    pc_rollout_refused(r, "edge-a", "unsigned", T0 + 10);
    pc_rollout_refused(r, "edge-a", "wrong_key", T0 + 20);
    assert_int_equal(report(r, "edge-a", 5, 1, true, T0 + 30), PC_E_REPLAYED);
    pc_rollout_refused(r, "ghost", "unsigned", T0 + 40);
    pc_rollout_refused(r, "ghost", "bad_signature", T0 + 50);
    pc_rollout_refused(r, "not an id", "unsigned", T0 + 60);

    json_t *fleet = pc_rollout_fleet_json(r, 5, T0 + 100);
    json_t *a = entry_of(fleet, "edge-a");
    assert_int_equal(int_at(a, "refused_reports"), 3);
    json_t *last = json_object_get(a, "last_refusal");
    assert_string_equal(str_at(last, "reason"), "replayed");
    assert_int_equal(int_at(last, "ms_ago"), 70);
    /* The refusals did not move the agent: seen at T0. */
    assert_int_equal(int_at(a, "last_seen_ms_ago"), 100);
    json_t *refused = json_object_get(fleet, "refused");
    assert_int_equal(json_array_size(refused), 1);
    json_t *g = json_array_get(refused, 0);
    assert_string_equal(str_at(g, "agent_id"), "ghost");
    assert_int_equal(int_at(g, "count"), 2);
    assert_string_equal(str_at(g, "reason"), "bad_signature");
    assert_int_equal(int_at(g, "last_ms_ago"), 50);
    assert_int_equal(int_at(json_object_get(fleet, "counts"), "refused_reports"), 6);
    json_decref(fleet);

    /* ghost reports for real: its refusals move onto its entry. */
    assert_int_equal(report(r, "ghost", 1, 2, true, T0 + 200), PC_OK);
    fleet = pc_rollout_fleet_json(r, 5, T0 + 200);
    assert_int_equal(json_array_size(json_object_get(fleet, "refused")), 0);
    assert_int_equal(int_at(entry_of(fleet, "ghost"), "refused_reports"), 2);
    assert_int_equal(int_at(entry_of(fleet, "edge-a"), "refused_reports"), 3);
    json_decref(fleet);
    pc_rollout_free(r);
}

/* The list of ids never accepted is bounded: beyond max_refused ids only
 * the total counts. */
static void test_refused_list_is_bounded(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000, .max_refused = 3};
    pc_rollout *r = pc_rollout_new(&opt);
    char id[32];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "ghost-%d", i);
        pc_rollout_refused(r, id, "unsigned", T0);
    }
    pc_rollout_refused(r, "ghost-1", "unsigned", T0);
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0);
    json_t *refused = json_object_get(fleet, "refused");
    assert_int_equal(json_array_size(refused), 3);
    assert_string_equal(str_at(json_array_get(refused, 0), "agent_id"), "ghost-0");
    assert_int_equal(int_at(json_array_get(refused, 1), "count"), 2);
    assert_int_equal(int_at(json_object_get(fleet, "counts"), "refused_reports"), 11);
    json_decref(fleet);
    pc_rollout_free(r);
}

/* A verified report with another key than the last accepted one starts a
 * new counter sequence (a new key was bound to the id); after it, counters
 * must grow again. Without verification, or with the same key, a lower
 * counter is a replay. */
static void test_new_key_new_counter(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    assert_int_equal(report(r, "edge-a", (uint64_t)7 << 32 | 9, 1, true, T0), PC_OK);
    assert_int_equal(report(r, "edge-a", 3, 1, true, T0 + 1), PC_E_REPLAYED);
    assert_int_equal(report(r, "edge-a", 3, 2, false, T0 + 2), PC_E_REPLAYED);
    assert_int_equal(report(r, "edge-a", 3, 2, true, T0 + 3), PC_OK);
    assert_int_equal(report(r, "edge-a", 3, 2, true, T0 + 4), PC_E_REPLAYED);
    assert_int_equal(report(r, "edge-a", 2, 2, true, T0 + 5), PC_E_REPLAYED);
    assert_int_equal(report(r, "edge-a", 4, 2, true, T0 + 6), PC_OK);
    /* A report without a key is no key change. */
    assert_int_equal(report(r, "edge-a", 1, 0, true, T0 + 7), PC_E_REPLAYED);
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0 + 10);
    json_t *a = entry_of(fleet, "edge-a");
    assert_int_equal(int_at(a, "applied_seq"), 4);
    assert_int_equal(int_at(a, "refused_reports"), 5);
    json_decref(fleet);
    pc_rollout_free(r);
}

typedef struct wait_log {
    int calls;
    char why[32], kind[32];
} wait_log;

static void on_wait_done(void *arg, json_t *doc, const char *why)
{
    wait_log *l = arg;
    l->calls++;
    snprintf(l->why, sizeof(l->why), "%s", why);
    snprintf(l->kind, sizeof(l->kind), "%s", json_string_value(json_object_get(doc, "kind")));
    json_decref(doc);
}

/* One tenant's report with outcomes: (version, state, is_delete) triples,
 * state 'L' live or 'N' nacked. */
typedef struct outcome_spec {
    uint64_t version;
    char state;
    bool is_delete;
} outcome_spec;

static int report_outcomes(pc_rollout *r, const char *id, uint64_t counter, uint64_t applied,
                           uint64_t live, uint64_t from, const outcome_spec *os, size_t n,
                           int64_t now)
{
    Popcast__VersionOutcome items[8], *ptrs[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        popcast__version_outcome__init(&items[i]);
        items[i].version = os[i].version;
        items[i].seq = os[i].version + 100;
        items[i].state = os[i].state == 'L' ? POPCAST__VERSION_STATE__VERSION_STATE_LIVE
                                            : POPCAST__VERSION_STATE__VERSION_STATE_NACKED;
        items[i].is_delete = os[i].is_delete;
        if (os[i].state == 'N') {
            items[i].reason = "runtime_error";
            items[i].detail = "boom";
        }
        ptrs[i] = &items[i];
    }
    Popcast__TenantStatus t = POPCAST__TENANT_STATUS__INIT, *tenants[] = {&t};
    t.tenant = "web";
    t.applied_version = applied;
    t.live_version = live;
    t.outcomes = ptrs;
    t.n_outcomes = n;
    t.outcomes_from = from;
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = (char *)id;
    st.pop = "fra";
    st.counter = counter;
    st.tenants = tenants;
    st.n_tenants = 1;
    pc_err err;
    return pc_rollout_report(r, &st, true, now, NULL, &err);
}

static const char *state_in(json_t *doc, const char *id)
{
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "agents"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), id) == 0)
            return json_string_value(json_object_get(a, "state"));
    }
    return NULL;
}

/* Each version is judged by its own outcome on each agent, never by what
 * came after it. */
static void test_judged_by_outcomes(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    /* v3 nacked, then v4 live: v3 stays nacked (it used to count as live,
     * since 4 >= 3). */
    outcome_spec a[] = {{2, 'L', false}, {3, 'N', false}, {4, 'L', false}};
    assert_int_equal(report_outcomes(r, "a-nacked", 1, 4, 4, 1, a, 3, T0), PC_OK);
    /* v3 live, then replaced by v4: live, superseded. */
    outcome_spec b[] = {{3, 'L', false}, {4, 'L', false}};
    assert_int_equal(report_outcomes(r, "b-replaced", 1, 4, 4, 3, b, 2, T0), PC_OK);
    /* v3 live and still served. */
    outcome_spec c[] = {{3, 'L', false}};
    assert_int_equal(report_outcomes(r, "c-serving", 1, 3, 3, 3, c, 1, T0), PC_OK);
    /* A snapshot took it from v2 to v5: v3 never processed, skipped. */
    outcome_spec d[] = {{2, 'L', false}, {5, 'L', false}};
    assert_int_equal(report_outcomes(r, "d-skipped", 1, 5, 5, 1, d, 2, T0), PC_OK);
    /* ... to the delete at v4: deleted before v3 went live. */
    outcome_spec e[] = {{2, 'L', false}, {4, 'L', true}};
    assert_int_equal(report_outcomes(r, "e-deleted", 1, 4, 0, 1, e, 2, T0), PC_OK);
    /* It remembers only from v4 on: v3 is unknown there. */
    outcome_spec f[] = {{4, 'L', false}};
    assert_int_equal(report_outcomes(r, "f-unknown", 1, 4, 4, 4, f, 1, T0), PC_OK);
    /* v3 applied, its outcome not decided yet: missing, not skipped. */
    outcome_spec g[] = {{2, 'L', false}};
    assert_int_equal(report_outcomes(r, "g-deciding", 1, 3, 2, 1, g, 1, T0), PC_OK);
    /* Not there yet. */
    assert_int_equal(report_outcomes(r, "h-behind", 1, 2, 2, 1, g, 1, T0), PC_OK);
    /* A nacked v3 that loaded after all (at a restart): live. */
    outcome_spec i[] = {{3, 'L', false}};
    assert_int_equal(report_outcomes(r, "i-retried", 1, 3, 3, 1, i, 1, T0), PC_OK);

    pc_rollout_query q = {.tenant = "web", .version = 3, .seq = 103, .fraction = 1.0};
    pc_rollout_summary s;
    json_t *doc = pc_rollout_version_json(r, &q, T0, &s);
    const char *want[][2] = {
        {"a-nacked", "nacked"},    {"b-replaced", "live"},   {"c-serving", "live"},
        {"d-skipped", "skipped"},  {"e-deleted", "deleted"}, {"f-unknown", "unknown"},
        {"g-deciding", "missing"}, {"h-behind", "missing"},  {"i-retried", "live"}};
    for (size_t k = 0; k < sizeof(want) / sizeof(want[0]); k++) {
        const char *got = state_in(doc, want[k][0]);
        if (got == NULL || strcmp(got, want[k][1]) != 0)
            fail_msg("%s: %s, expected %s", want[k][0], got ? got : "(absent)", want[k][1]);
    }
    assert_int_equal(s.total, 9);
    assert_int_equal(s.live, 3);
    assert_int_equal(s.superseded, 1);
    assert_int_equal(s.nacked, 1);
    assert_int_equal(s.skipped, 1);
    assert_int_equal(s.deleted, 1);
    assert_int_equal(s.unknown, 1);
    assert_int_equal(s.missing, 2);
    assert_int_equal(s.applied, 8);
    assert_true(s.failed);
    assert_false(s.complete);
    /* 3 live + 2 missing cannot reach 9. */
    assert_true(s.unreachable);
    json_t *sum = json_object_get(doc, "summary");
    assert_int_equal(json_integer_value(json_object_get(sum, "skipped")), 1);
    assert_true(json_is_true(json_object_get(sum, "unreachable")));
    json_t *pop = json_object_get(json_object_get(doc, "pops"), "fra");
    assert_int_equal(json_integer_value(json_object_get(pop, "deleted")), 1);
    json_decref(doc);

    /* For the delete at v4 on e-deleted: live (in effect), not superseded;
     * d-skipped never saw it. */
    pc_rollout_query del = {
        .tenant = "web", .version = 4, .seq = 104, .is_delete = true, .fraction = 1.0};
    doc = pc_rollout_version_json(r, &del, T0, &s);
    assert_string_equal(state_in(doc, "e-deleted"), "live");
    assert_string_equal(state_in(doc, "d-skipped"), "skipped");
    assert_string_equal(json_string_value(json_object_get(doc, "kind")), "delete");
    json_decref(doc);
    pc_rollout_free(r);
}

/* A wait ends "unreachable" as soon as too few agents can still make a
 * version live; the kind shown is the change's (a rollback). */
static void test_wait_unreachable(void **state)
{
    (void)state;
    int64_t now = pc_mono_ms();
    pc_rollout_options opt = {.gone_after_ms = 600000, .report_stale_ms = 300000};
    pc_rollout *r = pc_rollout_new(&opt);
    outcome_spec v2[] = {{2, 'L', false}};
    assert_int_equal(report_outcomes(r, "a", 1, 2, 2, 1, v2, 1, now), PC_OK);
    assert_int_equal(report_outcomes(r, "b", 1, 2, 2, 1, v2, 1, now), PC_OK);
    pc_rollout_query q = {.tenant = "web",
                          .version = 3,
                          .seq = 103,
                          .fraction = 0.5,
                          .kind = POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK};
    wait_log log = {0};
    pc_err err;
    assert_int_equal(pc_rollout_wait(r, &q, now + 300000, on_wait_done, &log, &err), PC_OK);
    assert_int_equal(log.calls, 0);
    /* a skips v3 (a snapshot to v4): b can still make it 1/2. */
    outcome_spec a4[] = {{2, 'L', false}, {4, 'L', false}};
    assert_int_equal(report_outcomes(r, "a", 2, 4, 4, 1, a4, 2, now + 1), PC_OK);
    assert_int_equal(log.calls, 0);
    /* b too: nobody can. */
    assert_int_equal(report_outcomes(r, "b", 2, 4, 4, 1, a4, 2, now + 2), PC_OK);
    assert_int_equal(log.calls, 1);
    assert_string_equal(log.why, "unreachable");
    assert_string_equal(log.kind, "rollback");
    pc_rollout_free(r);
}

/* What agents serve of a tenant, newest version first. */
static void test_serving(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    outcome_spec o[] = {{1, 'L', false}};
    assert_int_equal(report_outcomes(r, "a", 1, 2, 1, 1, o, 1, T0), PC_OK);
    assert_int_equal(report_outcomes(r, "b", 1, 3, 3, 1, o, 1, T0), PC_OK);
    assert_int_equal(report_outcomes(r, "c", 1, 2, 1, 1, o, 1, T0), PC_OK);
    assert_int_equal(report_outcomes(r, "d", 1, 4, 0, 1, o, 1, T0), PC_OK);
    assert_int_equal(report_outcomes(r, "gone", 1, 3, 3, 1, o, 1, T0 - 70000), PC_OK);
    json_t *sv = pc_rollout_serving_json(r, "web", T0);
    assert_int_equal(int_at(sv, "agents"), 4);
    assert_int_equal(int_at(sv, "none"), 1);
    json_t *versions = json_object_get(sv, "versions");
    assert_int_equal(json_array_size(versions), 2);
    assert_int_equal(int_at(json_array_get(versions, 0), "version"), 3);
    assert_int_equal(int_at(json_array_get(versions, 0), "agents"), 1);
    assert_int_equal(int_at(json_array_get(versions, 1), "version"), 1);
    assert_int_equal(int_at(json_array_get(versions, 1), "agents"), 2);
    json_decref(sv);
    sv = pc_rollout_serving_json(r, "other", T0);
    assert_int_equal(int_at(sv, "none"), 4);
    assert_int_equal(json_array_size(json_object_get(sv, "versions")), 0);
    json_decref(sv);
    pc_rollout_free(r);
}

/* An agent that could not record what it serves (a full store) says so;
 * the fleet shows it. */
static void test_unrecorded_shown(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    Popcast__TenantStatus t1 = POPCAST__TENANT_STATUS__INIT, t2 = POPCAST__TENANT_STATUS__INIT;
    Popcast__TenantStatus *tenants[] = {&t1, &t2};
    t1.tenant = "web";
    t1.applied_version = t1.live_version = 2;
    t1.live_unrecorded = true;
    t2.tenant = "api";
    t2.applied_version = t2.live_version = 1;
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = "edge-full";
    st.pop = "fra";
    st.counter = 1;
    st.tenants = tenants;
    st.n_tenants = 2;
    st.record_failures = 3;
    pc_err err;
    assert_int_equal(pc_rollout_report(r, &st, true, T0, NULL, &err), PC_OK);
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0);
    json_t *a = entry_of(fleet, "edge-full");
    assert_int_equal(int_at(a, "record_failures"), 3);
    assert_int_equal(int_at(a, "tenants_unrecorded"), 1);
    json_decref(fleet);
    pc_rollout_query q = {.tenant = "web", .version = 2, .seq = 2, .fraction = 1.0};
    json_t *doc = pc_rollout_version_json(r, &q, T0, NULL);
    json_t *e = json_array_get(json_object_get(doc, "agents"), 0);
    assert_true(json_is_true(json_object_get(e, "live_unrecorded")));
    json_decref(doc);
    pc_rollout_free(r);
}

/* An agent's report of tenant web with the given counts for versions 2
 * and 1 (n: how many of them). */
static int report_traffic(pc_rollout *r, const char *id, uint64_t counter,
                          Popcast__VersionTraffic *counts, size_t n)
{
    Popcast__VersionTraffic *ptrs[16];
    for (size_t i = 0; i < n; i++)
        ptrs[i] = &counts[i];
    Popcast__TenantStatus t = POPCAST__TENANT_STATUS__INIT;
    Popcast__TenantStatus *tenants[] = {&t};
    t.tenant = "web";
    t.applied_version = t.live_version = 2;
    t.traffic = ptrs;
    t.n_traffic = n;
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = (char *)id;
    st.pop = "fra";
    st.counter = counter;
    st.tenants = tenants;
    st.n_tenants = 1;
    st.traffic_since_unix_ms = 777;
    pc_err err;
    return pc_rollout_report(r, &st, true, T0, NULL, &err);
}

static Popcast__VersionTraffic counts_of(uint64_t version, uint64_t requests, uint64_t errors,
                                         uint64_t limit_kills, uint64_t status_5xx)
{
    Popcast__VersionTraffic v = POPCAST__VERSION_TRAFFIC__INIT;
    v.version = version;
    v.requests = requests;
    v.errors = errors;
    v.limit_kills = limit_kills;
    v.status_5xx = status_5xx;
    return v;
}

/* A version's request counts: per agent as reported, summed in the
 * summary; reports with impossible counts are refused and change nothing. */
static void test_traffic_per_version(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    Popcast__VersionTraffic a[] = {counts_of(2, 100, 30, 1, 4), counts_of(1, 50, 0, 0, 0)};
    Popcast__VersionTraffic b[] = {counts_of(2, 10, 0, 0, 10)};
    assert_int_equal(report_traffic(r, "edge-a", 1, a, 2), PC_OK);
    assert_int_equal(report_traffic(r, "edge-b", 1, b, 1), PC_OK);
    assert_int_equal(report_traffic(r, "edge-c", 1, NULL, 0), PC_OK);

    pc_rollout_query q = {.tenant = "web", .version = 2, .seq = 2, .fraction = 1.0};
    pc_rollout_summary sum;
    json_t *doc = pc_rollout_version_json(r, &q, T0, &sum);
    assert_int_equal(sum.traffic.requests, 110);
    assert_int_equal(sum.traffic.errors, 30);
    assert_int_equal(sum.traffic.limit_kills, 1);
    assert_int_equal(sum.traffic.status_5xx, 14);
    assert_int_equal(sum.traffic.agents, 2);
    json_t *tj = json_object_get(json_object_get(doc, "summary"), "traffic");
    assert_int_equal(int_at(tj, "requests"), 110);
    assert_int_equal(int_at(tj, "agents"), 2);
    size_t shown = 0;
    json_t *agents = json_object_get(doc, "agents");
    for (size_t i = 0; i < json_array_size(agents); i++) {
        json_t *e = json_array_get(agents, i);
        json_t *t = json_object_get(e, "traffic");
        if (strcmp(str_at(e, "agent_id"), "edge-a") == 0) {
            assert_int_equal(int_at(t, "requests"), 100);
            assert_int_equal(int_at(t, "errors"), 30);
            assert_int_equal(int_at(t, "since_unix_ms"), 777);
            shown++;
        } else if (strcmp(str_at(e, "agent_id"), "edge-c") == 0) {
            assert_null(t);
        }
    }
    assert_int_equal(shown, 1);
    json_decref(doc);

    /* Impossible counts, duplicates, too many versions: refused. */
    Popcast__VersionTraffic bad[][2] = {
        {counts_of(2, 5, 6, 0, 0), counts_of(1, 1, 0, 0, 0)},
        {counts_of(2, 5, 3, 3, 0), counts_of(1, 1, 0, 0, 0)},
        {counts_of(2, 5, 1, 1, 4), counts_of(1, 1, 0, 0, 0)},
        {counts_of(2, UINT64_MAX, UINT64_MAX / 2 + 1, UINT64_MAX / 2 + 1, 0),
         counts_of(1, 1, 0, 0, 0)},
        {counts_of(0, 5, 0, 0, 0), counts_of(1, 1, 0, 0, 0)},
        {counts_of(2, 5, 0, 0, 0), counts_of(2, 1, 0, 0, 0)},
    };
    uint64_t counter = 2;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(report_traffic(r, "edge-a", counter++, bad[i], 2), PC_E_INVALID);
    Popcast__VersionTraffic many[9];
    for (size_t i = 0; i < 9; i++)
        many[i] = counts_of(i + 1, 1, 0, 0, 0);
    assert_int_equal(report_traffic(r, "edge-a", counter++, many, 9), PC_E_INVALID);
    doc = pc_rollout_version_json(r, &q, T0, &sum);
    assert_int_equal(sum.traffic.requests, 110);
    json_decref(doc);
    pc_rollout_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals_are_shown),  cmocka_unit_test(test_refused_list_is_bounded),
        cmocka_unit_test(test_new_key_new_counter), cmocka_unit_test(test_judged_by_outcomes),
        cmocka_unit_test(test_wait_unreachable),    cmocka_unit_test(test_serving),
        cmocka_unit_test(test_unrecorded_shown),    cmocka_unit_test(test_traffic_per_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
