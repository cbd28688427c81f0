/* test_rollout_tracker.c - the controller's rollout tracker
 * (controller/rollout.h): agents' status reports in, per-version rollout
 * and fleet documents out, and waits that end on a report or a tick.
 *
 * Time is the now_ms parameter everywhere, so nothing sleeps. Only
 * pc_rollout_wait reads the clock itself (pc_mono_ms), so tests that wait
 * place their reports at pc_mono_ms() and deadlines far from it.
 * (tests/integration/test_rollout.c covers the same tracker end to end.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "rollout.h"

#define T0 1000000 /* an arbitrary "now" for tests that do not wait */

/* One agent's report: up to 3 tenants and 3 nacks. */
typedef struct tenant_spec {
    const char *tenant;
    uint64_t applied, live;
} tenant_spec;

typedef struct nack_spec {
    const char *tenant;
    uint64_t version;
    const char *reason, *detail;
} nack_spec;

typedef struct report_spec {
    const char *agent, *pop;
    uint64_t counter, applied_seq;
    bool stale;
    tenant_spec t[3];
    nack_spec n[3];
} report_spec;

static int send_report(pc_rollout *r, const report_spec *rs, bool verified, int64_t now,
                       pc_err *err)
{
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    Popcast__TenantStatus ts[3], *tp[3];
    Popcast__Nack ns[3], *np[3];
    st.agent_id = (char *)rs->agent;
    st.pop = (char *)(rs->pop ? rs->pop : "fra");
    st.counter = rs->counter;
    st.applied_seq = rs->applied_seq;
    st.stale = rs->stale;
    for (size_t i = 0; i < 3 && rs->t[i].tenant != NULL; i++) {
        popcast__tenant_status__init(&ts[i]);
        ts[i].tenant = (char *)rs->t[i].tenant;
        ts[i].applied_version = rs->t[i].applied;
        ts[i].live_version = rs->t[i].live;
        tp[i] = &ts[i];
        st.n_tenants = i + 1;
    }
    st.tenants = tp;
    for (size_t i = 0; i < 3 && rs->n[i].tenant != NULL; i++) {
        popcast__nack__init(&ns[i]);
        ns[i].tenant = (char *)rs->n[i].tenant;
        ns[i].version = rs->n[i].version;
        ns[i].reason = (char *)(rs->n[i].reason ? rs->n[i].reason : "runtime_error");
        ns[i].detail = (char *)(rs->n[i].detail ? rs->n[i].detail : "boom");
        np[i] = &ns[i];
        st.n_nacks = i + 1;
    }
    st.nacks = np;
    return pc_rollout_report(r, &st, verified, now, NULL, err);
}

static void report_ok(pc_rollout *r, const report_spec *rs, int64_t now)
{
    pc_err err;
    if (send_report(r, rs, true, now, &err) != PC_OK)
        fail_msg("report from %s refused: %s", rs->agent, err.msg);
}

static pc_rollout *tracker(uint64_t gone_after_ms, uint64_t report_stale_ms, size_t max_agents)
{
    pc_rollout_options opt = {.gone_after_ms = gone_after_ms,
                              .report_stale_ms = report_stale_ms,
                              .max_agents = max_agents};
    pc_rollout *r = pc_rollout_new(&opt);
    assert_non_null(r);
    return r;
}

static pc_rollout_query query(const char *tenant, uint64_t version, double fraction)
{
    pc_rollout_query q = {
        .tenant = tenant, .version = version, .seq = version + 100, .fraction = fraction};
    return q;
}

static pc_rollout_summary summary(pc_rollout *r, const pc_rollout_query *q, int64_t now)
{
    pc_rollout_summary s;
    json_t *doc = pc_rollout_version_json(r, q, now, &s);
    assert_non_null(doc);
    json_decref(doc);
    return s;
}

/* The per-agent entry of a rollout document (NULL if not listed). */
static json_t *agent_in(json_t *doc, const char *agent)
{
    json_t *agents = json_object_get(doc, "agents");
    for (size_t i = 0; i < json_array_size(agents); i++) {
        json_t *a = json_array_get(agents, i);
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), agent) == 0)
            return a;
    }
    return NULL;
}

static const char *state_of(json_t *doc, const char *agent)
{
    json_t *a = agent_in(doc, agent);
    return a ? json_string_value(json_object_get(a, "state")) : NULL;
}

static json_int_t int_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static bool bool_at(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_boolean(v))
        fail_msg("\"%s\" is not a boolean", key);
    return json_is_true(v);
}

/* Reports carry a counter that must grow: a replay (same counter) or a
 * reordered report (lower) is refused with PC_E_REPLAYED and changes
 * nothing, not even when the agent was last seen. */
static void test_counter_must_grow(void **state)
{
    (void)state;
    pc_rollout *r = tracker(10000, 5000, 0);
    pc_rollout_query v1 = query("web", 1, 1.0), v2 = query("web", 2, 1.0);
    report_spec a = {.agent = "edge-1", .counter = 5, .t = {{"web", 1, 1}}};
    report_ok(r, &a, T0);
    assert_int_equal(summary(r, &v1, T0).live, 1);

    /* The same counter claiming v2 live, and then an older one. */
    report_spec replay = {.agent = "edge-1", .counter = 5, .t = {{"web", 2, 2}}};
    report_spec older = {.agent = "edge-1", .counter = 4, .t = {{"web", 2, 2}}};
    pc_err err;
    assert_int_equal(send_report(r, &replay, true, T0 + 4000, &err), PC_E_REPLAYED);
    assert_non_null(strstr(err.msg, "not above"));
    assert_int_equal(send_report(r, &older, true, T0 + 4000, &err), PC_E_REPLAYED);
    pc_rollout_summary s = summary(r, &v2, T0 + 4000);
    assert_int_equal(s.live, 0);
    assert_int_equal(s.applied, 0);
    assert_int_equal(s.missing, 1);
    /* Last seen is still T0: 4000 ms ago, and stale after report_stale_ms
     * although replays kept arriving. */
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0 + 6000);
    json_t *e = json_array_get(json_object_get(fleet, "agents"), 0);
    assert_int_equal(int_at(e, "last_seen_ms_ago"), 6000);
    assert_true(bool_at(e, "stale"));
    json_decref(fleet);
    /* A replay cannot keep an agent from going gone either. */
    assert_int_equal(send_report(r, &replay, true, T0 + 9000, &err), PC_E_REPLAYED);
    assert_int_equal(summary(r, &v1, T0 + 10001).total, 0);

    /* The next counter is accepted, whatever time it carries. */
    report_spec next = {.agent = "edge-1", .counter = 6, .t = {{"web", 2, 2}}};
    report_ok(r, &next, T0 + 10002);
    s = summary(r, &v2, T0 + 10002);
    assert_int_equal(s.total, 1);
    assert_int_equal(s.live, 1);

    /* Counters are per agent: another agent may start at 0, once. */
    report_spec b = {.agent = "edge-2", .counter = 0, .t = {{"web", 2, 2}}};
    report_ok(r, &b, T0 + 10002);
    assert_int_equal(send_report(r, &b, true, T0 + 10003, &err), PC_E_REPLAYED);
    assert_int_equal(summary(r, &v2, T0 + 10003).live, 2);
    pc_rollout_free(r);
}

/* Malformed reports are refused with PC_E_INVALID and change nothing:
 * no agent appears, an existing agent's state and counter stay. */
static void test_bad_reports_change_nothing(void **state)
{
    (void)state;
    pc_rollout *r = tracker(10000, 5000, 0);
    char long_id[200], long_tenant[80];
    memset(long_id, 'a', 129);
    long_id[129] = '\0';
    memset(long_tenant, 'a', 64);
    long_tenant[64] = '\0';
    report_spec bad[] = {
        {.agent = "", .counter = 1},
        {.agent = "edge 1", .counter = 1},
        {.agent = long_id, .counter = 1},
        {.agent = "edge-1", .pop = "", .counter = 1},
        {.agent = "edge-1", .pop = "fra/1", .counter = 1},
        {.agent = "edge-1", .counter = 1, .t = {{"Web", 1, 1}}},
        {.agent = "edge-1", .counter = 1, .t = {{"", 1, 1}}},
        {.agent = "edge-1", .counter = 1, .t = {{"web", 1, 1}, {long_tenant, 1, 1}}},
    };
    pc_err err;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err.msg[0] = '\0';
        if (send_report(r, &bad[i], true, T0, &err) != PC_E_INVALID)
            fail_msg("bad report %zu accepted", i);
        assert_true(err.msg[0] != '\0');
    }
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0);
    assert_int_equal(json_array_size(json_object_get(fleet, "agents")), 0);
    json_decref(fleet);

    /* An agent we know: a malformed report with a higher counter neither
     * moves its state nor uses up that counter. */
    report_spec good = {.agent = "edge-1", .counter = 1, .t = {{"web", 1, 1}}};
    report_ok(r, &good, T0);
    report_spec bad_later = {.agent = "edge-1", .counter = 9, .t = {{"web", 2, 2}, {"W", 2, 2}}};
    assert_int_equal(send_report(r, &bad_later, true, T0 + 1, &err), PC_E_INVALID);
    pc_rollout_query v2 = query("web", 2, 1.0);
    assert_int_equal(summary(r, &v2, T0 + 1).live, 0);
    report_spec good_later = {.agent = "edge-1", .counter = 2, .t = {{"web", 2, 2}}};
    report_ok(r, &good_later, T0 + 2);
    assert_int_equal(summary(r, &v2, T0 + 2).live, 1);
    pc_rollout_free(r);
}

/* rollout.h's classification of agents for a version V (here web v3). */
static void test_classification(void **state)
{
    (void)state;
    pc_rollout *r = tracker(10000, 5000, 0);
    report_spec fleet[] = {
        /* live: live version == V */
        {.agent = "a-live", .pop = "fra", .t = {{"web", 3, 3}}},
        /* live and superseded: a newer version is live */
        {.agent = "b-newer", .pop = "fra", .t = {{"web", 4, 4}}},
        /* applied, not live yet, no nack: missing (but applied) */
        {.agent = "c-applied", .pop = "ams", .t = {{"web", 3, 2}}},
        /* nacked: a nack for V, V not live */
        {.agent = "d-nacked",
         .pop = "ams",
         .t = {{"web", 3, 2}},
         .n = {{"web", 3, "runtime_error", "main.lua:1: boom"}}},
        /* a nack for V but V live (loaded on a later try): live */
        {.agent = "e-nack-then-live",
         .pop = "ams",
         .t = {{"web", 3, 3}},
         .n = {{.tenant = "web", .version = 3}}},
        /* a nack for another version, or for another tenant: missing */
        {.agent = "f-other-nack",
         .pop = "lhr",
         .t = {{"web", 2, 2}},
         .n = {{.tenant = "web", .version = 2}}},
        {.agent = "g-other-tenant-nack",
         .pop = "lhr",
         .t = {{"web", 2, 2}},
         .n = {{.tenant = "api", .version = 3}}},
        /* never had the tenant; another tenant at a high version: missing */
        {.agent = "h-absent", .pop = "lhr", .t = {{"api", 9, 9}}},
        /* older version live and applied: missing */
        {.agent = "i-behind", .pop = "lhr", .t = {{"web", 2, 2}, {"api", 3, 3}}},
    };
    size_t n = sizeof(fleet) / sizeof(fleet[0]);
    for (size_t i = 0; i < n; i++) {
        fleet[i].counter = 1;
        report_ok(r, &fleet[i], T0);
    }
    pc_rollout_query q = query("web", 3, 1.0);
    pc_rollout_summary s;
    json_t *doc = pc_rollout_version_json(r, &q, T0, &s);
    assert_int_equal(s.total, n);
    assert_int_equal(s.live, 3);       /* a, b, e */
    assert_int_equal(s.superseded, 1); /* b */
    assert_int_equal(s.applied, 5);    /* a, b, c, d, e */
    assert_int_equal(s.nacked, 1);     /* d */
    assert_int_equal(s.missing, 5);    /* c, f, g, h, i */
    assert_false(s.complete);
    assert_true(s.failed);
    const char *want[][2] = {{"a-live", "live"},
                             {"b-newer", "live"},
                             {"c-applied", "missing"},
                             {"d-nacked", "nacked"},
                             {"e-nack-then-live", "live"},
                             {"f-other-nack", "missing"},
                             {"g-other-tenant-nack", "missing"},
                             {"h-absent", "missing"},
                             {"i-behind", "missing"}};
    for (size_t i = 0; i < n; i++) {
        const char *got = state_of(doc, want[i][0]);
        if (got == NULL || strcmp(got, want[i][1]) != 0)
            fail_msg("%s: state %s, expected %s", want[i][0], got ? got : "(absent)", want[i][1]);
    }
    /* Per agent: applied flag and versions; the nack's reason and detail
     * only where the state is nacked. */
    json_t *c = agent_in(doc, "c-applied");
    assert_true(bool_at(c, "applied"));
    assert_int_equal(int_at(c, "applied_version"), 3);
    assert_int_equal(int_at(c, "live_version"), 2);
    json_t *d = agent_in(doc, "d-nacked");
    assert_string_equal(json_string_value(json_object_get(d, "reason")), "runtime_error");
    assert_string_equal(json_string_value(json_object_get(d, "detail")), "main.lua:1: boom");
    assert_null(json_object_get(agent_in(doc, "e-nack-then-live"), "reason"));
    json_t *h = agent_in(doc, "h-absent");
    assert_false(bool_at(h, "applied"));
    assert_int_equal(int_at(h, "applied_version"), 0);
    assert_int_equal(int_at(h, "live_version"), 0);
    /* Per PoP. */
    json_t *pops = json_object_get(doc, "pops");
    assert_int_equal(json_object_size(pops), 3);
    json_t *fra = json_object_get(pops, "fra"), *ams = json_object_get(pops, "ams"),
           *lhr = json_object_get(pops, "lhr");
    assert_int_equal(int_at(fra, "total"), 2);
    assert_int_equal(int_at(fra, "live"), 2);
    assert_int_equal(int_at(ams, "total"), 3);
    assert_int_equal(int_at(ams, "live"), 1);
    assert_int_equal(int_at(ams, "nacked"), 1);
    assert_int_equal(int_at(ams, "missing"), 1);
    assert_int_equal(int_at(lhr, "total"), 4);
    assert_int_equal(int_at(lhr, "missing"), 4);
    /* The document names the change and repeats the summary. */
    assert_string_equal(json_string_value(json_object_get(doc, "tenant")), "web");
    assert_int_equal(int_at(doc, "version"), 3);
    assert_int_equal(int_at(doc, "seq"), 103);
    assert_string_equal(json_string_value(json_object_get(doc, "kind")), "deploy");
    json_t *sum = json_object_get(doc, "summary");
    assert_int_equal(int_at(sum, "total"), 9);
    assert_int_equal(int_at(sum, "live"), 3);
    assert_int_equal(int_at(sum, "applied"), 5);
    assert_int_equal(int_at(sum, "nacked"), 1);
    assert_int_equal(int_at(sum, "missing"), 5);
    assert_int_equal(int_at(sum, "superseded"), 1);
    assert_int_equal(int_at(sum, "stale"), 0);
    assert_false(bool_at(sum, "complete"));
    assert_true(bool_at(sum, "failed"));
    json_decref(doc);

    /* Another tenant's rollout is judged by that tenant only. */
    pc_rollout_query api = query("api", 3, 1.0);
    s = summary(r, &api, T0);
    assert_int_equal(s.live, 2);       /* h (9), i (3) */
    assert_int_equal(s.superseded, 1); /* h */
    assert_int_equal(s.nacked, 1);     /* g's nack was for api v3 */
    assert_int_equal(s.missing, 6);
    pc_rollout_free(r);
}

/* For a delete at version V, live means the delete is applied and nothing
 * older is served (rollout.h). */
static void test_delete_rollout(void **state)
{
    (void)state;
    pc_rollout *r = tracker(10000, 5000, 0);
    report_spec fleet[] = {
        {.agent = "a-deleted", .t = {{"web", 5, 0}}},
        {.agent = "b-still-serving", .t = {{"web", 5, 4}}},
        {.agent = "c-not-applied", .t = {{"web", 4, 4}}},
        {.agent = "d-redeployed", .t = {{"web", 6, 6}}},
        {.agent = "e-never-had-it", .t = {{"api", 7, 7}}},
        {.agent = "f-nacked",
         .t = {{"web", 4, 4}},
         .n = {{.tenant = "web", .version = 5, .reason = "store_error"}}},
    };
    size_t n = sizeof(fleet) / sizeof(fleet[0]);
    for (size_t i = 0; i < n; i++) {
        fleet[i].counter = 1;
        report_ok(r, &fleet[i], T0);
    }
    pc_rollout_query q = query("web", 5, 1.0);
    q.is_delete = true;
    pc_rollout_summary s;
    json_t *doc = pc_rollout_version_json(r, &q, T0, &s);
    assert_string_equal(json_string_value(json_object_get(doc, "kind")), "delete");
    const char *want[][2] = {{"a-deleted", "live"},         {"b-still-serving", "missing"},
                             {"c-not-applied", "missing"},  {"d-redeployed", "live"},
                             {"e-never-had-it", "missing"}, {"f-nacked", "nacked"}};
    for (size_t i = 0; i < n; i++) {
        const char *got = state_of(doc, want[i][0]);
        if (got == NULL || strcmp(got, want[i][1]) != 0)
            fail_msg("%s: state %s, expected %s", want[i][0], got ? got : "(absent)", want[i][1]);
    }
    assert_int_equal(s.live, 2);
    assert_int_equal(s.superseded, 1); /* d */
    assert_int_equal(s.applied, 3);    /* a, b, d */
    assert_int_equal(s.nacked, 1);
    assert_int_equal(s.missing, 3);
    json_decref(doc);
    pc_rollout_free(r);
}

/* Stale: not heard from for report_stale_ms, or says so itself. Gone: not
 * heard from for gone_after_ms: out of the rollout's denominator, still in
 * the fleet (marked gone), back when it reports again. */
static void test_stale_and_gone(void **state)
{
    (void)state;
    pc_rollout *r = tracker(1000, 500, 0);
    report_spec a = {.agent = "edge-a", .counter = 1, .t = {{"web", 1, 1}}};
    report_spec b = {.agent = "edge-b", .counter = 1, .stale = true, .t = {{"web", 1, 1}}};
    report_ok(r, &a, T0);
    report_ok(r, &b, T0);
    pc_rollout_query q = query("web", 1, 1.0);

    pc_rollout_summary s = summary(r, &q, T0 + 100);
    assert_int_equal(s.total, 2);
    assert_int_equal(s.stale, 1); /* b says so */
    json_t *doc = pc_rollout_version_json(r, &q, T0 + 100, NULL);
    assert_false(bool_at(agent_in(doc, "edge-a"), "stale"));
    assert_true(bool_at(agent_in(doc, "edge-b"), "stale"));
    json_decref(doc);
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0 + 100);
    json_t *fb = json_array_get(json_object_get(fleet, "agents"), 1);
    assert_string_equal(json_string_value(json_object_get(fb, "agent_id")), "edge-b");
    assert_true(bool_at(fb, "reports_stale"));
    assert_true(bool_at(fb, "stale"));
    json_decref(fleet);

    /* Past report_stale_ms both are stale, still counted and live. */
    s = summary(r, &q, T0 + 600);
    assert_int_equal(s.total, 2);
    assert_int_equal(s.stale, 2);
    assert_int_equal(s.live, 2);
    assert_true(s.complete);

    /* a reports again; b goes silent past gone_after_ms: gone, not
     * counted, not listed in the rollout, listed as gone in the fleet. */
    a.counter = 2;
    report_ok(r, &a, T0 + 900);
    s = summary(r, &q, T0 + 1200);
    assert_int_equal(s.total, 1);
    assert_int_equal(s.stale, 0);
    doc = pc_rollout_version_json(r, &q, T0 + 1200, NULL);
    assert_null(agent_in(doc, "edge-b"));
    assert_int_equal(int_at(json_object_get(json_object_get(doc, "pops"), "fra"), "total"), 1);
    json_decref(doc);
    fleet = pc_rollout_fleet_json(r, 0, T0 + 1200);
    json_t *counts = json_object_get(fleet, "counts");
    assert_int_equal(int_at(counts, "agents"), 1);
    assert_int_equal(int_at(counts, "stale"), 0);
    assert_int_equal(int_at(counts, "gone"), 1);
    assert_int_equal(json_array_size(json_object_get(fleet, "agents")), 2);
    assert_true(bool_at(json_array_get(json_object_get(fleet, "agents"), 1), "gone"));
    assert_false(bool_at(json_array_get(json_object_get(fleet, "agents"), 0), "gone"));
    json_decref(fleet);

    /* A missing agent that goes gone no longer holds a rollout back. */
    pc_rollout_query v2 = query("web", 2, 1.0);
    a.counter = 3;
    a.t[0].live = a.t[0].applied = 2;
    report_ok(r, &a, T0 + 1600);
    assert_true(summary(r, &v2, T0 + 1600).complete);

    /* b is back with a report: counted again (missing for v2). */
    b.counter = 2;
    b.stale = false;
    report_ok(r, &b, T0 + 1700);
    s = summary(r, &v2, T0 + 1700);
    assert_int_equal(s.total, 2);
    assert_int_equal(s.missing, 1);
    assert_false(s.complete);
    pc_rollout_free(r);
}

static void report_n(pc_rollout *r, size_t n, size_t live, uint64_t counter, int64_t now)
{
    for (size_t i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "edge-%02zu", i);
        report_spec rs = {.agent = id, .counter = counter, .t = {{"web", 1, i < live ? 1 : 0}}};
        report_ok(r, &rs, now);
    }
}

/* complete: live >= ceil(fraction * total), and at least one agent. */
static void test_fraction(void **state)
{
    (void)state;
    struct {
        size_t total, live;
        double fraction;
        bool complete;
    } cases[] = {
        /* 0.28 * 25 is 7.000000000000001 in binary floating point: 7 of 25
         * agents are 28 % of them all the same. */
        {25, 7, 0.28, true}, {25, 6, 0.28, false}, {10, 7, 0.7, true},  {10, 6, 0.7, false},
        {10, 3, 0.3, true},  {10, 2, 0.3, false},  {10, 10, 1.0, true}, {10, 9, 1.0, false},
        {3, 2, 0.5, true},   {3, 1, 0.5, false},   {3, 1, 0.1, true},   {3, 0, 0.1, false},
        {1, 1, 1.0, true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pc_rollout *r = tracker(10000, 5000, 0);
        report_n(r, cases[i].total, cases[i].live, 1, T0);
        pc_rollout_query q = query("web", 1, cases[i].fraction);
        pc_rollout_summary s = summary(r, &q, T0);
        assert_int_equal(s.total, cases[i].total);
        assert_int_equal(s.live, cases[i].live);
        if (s.complete != cases[i].complete)
            fail_msg("%zu of %zu live at fraction %g: complete is %d", cases[i].live,
                     cases[i].total, cases[i].fraction, s.complete);
        pc_rollout_free(r);
    }
    /* An empty fleet, or one whose agents are all gone, is never
     * complete: "live everywhere" would be vacuous. */
    pc_rollout *r = tracker(1000, 500, 0);
    pc_rollout_query q = query("web", 1, 0.5);
    assert_false(summary(r, &q, T0).complete);
    report_n(r, 2, 2, 1, T0);
    assert_true(summary(r, &q, T0).complete);
    assert_false(summary(r, &q, T0 + 5000).complete);
    pc_rollout_free(r);
}

/* max_agents caps the fleet: a new agent beyond it is refused with
 * PC_E_TOO_LARGE and not listed; known agents keep reporting. */
static void test_max_agents(void **state)
{
    (void)state;
    pc_rollout *r = tracker(10000, 5000, 2);
    report_spec a = {.agent = "edge-a", .counter = 1, .t = {{"web", 1, 1}}};
    report_spec b = {.agent = "edge-b", .counter = 1, .t = {{"web", 1, 1}}};
    report_spec c = {.agent = "edge-c", .counter = 1, .t = {{"web", 1, 1}}};
    report_ok(r, &a, T0);
    report_ok(r, &b, T0);
    pc_err err;
    assert_int_equal(send_report(r, &c, true, T0, &err), PC_E_TOO_LARGE);
    assert_non_null(strstr(err.msg, "2 agents"));
    json_t *fleet = pc_rollout_fleet_json(r, 0, T0);
    assert_int_equal(json_array_size(json_object_get(fleet, "agents")), 2);
    json_decref(fleet);
    a.counter = 2;
    a.t[0].live = a.t[0].applied = 2;
    report_ok(r, &a, T0 + 1);
    pc_rollout_query v2 = query("web", 2, 1.0);
    pc_rollout_summary s = summary(r, &v2, T0 + 1);
    assert_int_equal(s.total, 2);
    assert_int_equal(s.live, 1);
    pc_rollout_free(r);
}

/* GET /v1/fleet's document (docs/api.md): every agent in id order, with its
 * lag behind the head, and the counts. */
static void test_fleet_json(void **state)
{
    (void)state;
    pc_rollout *r = tracker(10000, 5000, 0);
    report_spec z = {.agent = "edge-z", .pop = "ams", .counter = 1, .applied_seq = 40};
    report_spec a = {.agent = "edge-a",
                     .pop = "fra",
                     .counter = 1,
                     .applied_seq = 17,
                     .t = {{"web", 1, 1}, {"api", 2, 2}}};
    report_spec m = {.agent = "edge-m", .pop = "fra", .counter = 1, .applied_seq = 12};
    pc_err err;
    assert_int_equal(send_report(r, &z, false, T0, &err), PC_OK);
    assert_int_equal(send_report(r, &a, true, T0 + 200, &err), PC_OK);
    assert_int_equal(send_report(r, &m, true, T0 + 300, &err), PC_OK);
    json_t *fleet = pc_rollout_fleet_json(r, 17, T0 + 1000);
    assert_int_equal(int_at(fleet, "head_seq"), 17);
    json_t *agents = json_object_get(fleet, "agents");
    assert_int_equal(json_array_size(agents), 3);
    const char *order[] = {"edge-a", "edge-m", "edge-z"};
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(agents, i), "agent_id")), order[i]);
    json_t *ea = json_array_get(agents, 0), *em = json_array_get(agents, 1),
           *ez = json_array_get(agents, 2);
    const char *keys[] = {"agent_id", "pop",           "applied_seq", "lag",     "last_seen_ms_ago",
                          "stale",    "reports_stale", "gone",        "tenants", "verified"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (json_object_get(ea, keys[i]) == NULL)
            fail_msg("fleet agent has no \"%s\"", keys[i]);
    assert_string_equal(json_string_value(json_object_get(ea, "pop")), "fra");
    assert_int_equal(int_at(ea, "applied_seq"), 17);
    assert_int_equal(int_at(ea, "lag"), 0);
    assert_int_equal(int_at(em, "lag"), 5);
    assert_int_equal(int_at(ez, "lag"), 0); /* ahead of this node's head: no lag */
    assert_int_equal(int_at(ea, "last_seen_ms_ago"), 800);
    assert_int_equal(int_at(ez, "last_seen_ms_ago"), 1000);
    assert_int_equal(int_at(ea, "tenants"), 2);
    assert_int_equal(int_at(ez, "tenants"), 0);
    assert_true(bool_at(ea, "verified"));
    assert_false(bool_at(ez, "verified"));
    assert_false(bool_at(ea, "gone"));
    json_t *counts = json_object_get(fleet, "counts");
    assert_int_equal(int_at(counts, "agents"), 3);
    assert_int_equal(int_at(counts, "stale"), 0);
    assert_int_equal(int_at(counts, "gone"), 0);
    json_decref(fleet);
    /* verified follows the last accepted report. */
    z.counter = 2;
    assert_int_equal(send_report(r, &z, true, T0 + 1100, &err), PC_OK);
    fleet = pc_rollout_fleet_json(r, 17, T0 + 1100);
    assert_true(bool_at(json_array_get(json_object_get(fleet, "agents"), 2), "verified"));
    json_decref(fleet);
    pc_rollout_free(r);
}

/* Waits. */
typedef struct wait_log {
    int calls;
    char why[32];
    char doc_wait[32];
    json_int_t live;
    pc_rollout *r; /* when set, the callback calls into the tracker */
    size_t fleet_agents;
} wait_log;

static void on_done(void *arg, json_t *doc, const char *why)
{
    wait_log *l = arg;
    l->calls++;
    snprintf(l->why, sizeof(l->why), "%s", why);
    const char *w = json_string_value(json_object_get(doc, "wait"));
    snprintf(l->doc_wait, sizeof(l->doc_wait), "%s", w ? w : "");
    json_t *sum = json_object_get(doc, "summary");
    l->live = sum ? json_integer_value(json_object_get(sum, "live")) : -1;
    if (l->r != NULL) {
        /* Callbacks run without the tracker's lock held. */
        json_t *fleet = pc_rollout_fleet_json(l->r, 0, pc_mono_ms());
        l->fleet_agents = json_array_size(json_object_get(fleet, "agents"));
        json_decref(fleet);
    }
    json_decref(doc);
}

static void expect_done(const wait_log *l, const char *why)
{
    assert_int_equal(l->calls, 1);
    assert_string_equal(l->why, why);
    assert_string_equal(l->doc_wait, why);
}

/* A wait ends on the report that completes the rollout, exactly once; a
 * refused report (a replay claiming it live) does not end it. */
static void test_wait_completes_on_report(void **state)
{
    (void)state;
    int64_t now = pc_mono_ms();
    pc_rollout *r = tracker(600000, 300000, 0);
    report_spec a = {.agent = "edge-a", .counter = 1, .t = {{"web", 1, 1}}};
    report_spec b = {.agent = "edge-b", .counter = 1, .t = {{"web", 1, 1}}};
    report_ok(r, &a, now);
    report_ok(r, &b, now);
    pc_rollout_query q = query("web", 2, 1.0);
    wait_log l = {.r = r};
    pc_err err;
    assert_int_equal(pc_rollout_wait(r, &q, now + 300000, on_done, &l, &err), PC_OK);
    assert_int_equal(l.calls, 0);
    a.counter = 2;
    a.t[0].applied = a.t[0].live = 2;
    report_ok(r, &a, now + 10);
    assert_int_equal(l.calls, 0); /* b is still on v1 */
    report_spec replay = {.agent = "edge-b", .counter = 1, .t = {{"web", 2, 2}}};
    assert_int_equal(send_report(r, &replay, true, now + 20, &err), PC_E_REPLAYED);
    assert_int_equal(l.calls, 0);
    pc_rollout_tick(r, now + 30);
    assert_int_equal(l.calls, 0);
    b.counter = 2;
    b.t[0].applied = b.t[0].live = 2;
    report_ok(r, &b, now + 40);
    expect_done(&l, "complete");
    assert_int_equal(l.live, 2);
    assert_int_equal(l.fleet_agents, 2);
    /* Ended: later reports and ticks do not call it again. */
    a.counter = 3;
    report_ok(r, &a, now + 50);
    pc_rollout_tick(r, now + 400000);
    assert_int_equal(l.calls, 1);
    pc_rollout_free(r);
}

/* The first nack ends a wait ("nacked"); a rollout already complete ends
 * it at once, inside pc_rollout_wait. */
static void test_wait_nacked_and_immediate(void **state)
{
    (void)state;
    int64_t now = pc_mono_ms();
    pc_rollout *r = tracker(600000, 300000, 0);
    report_spec a = {.agent = "edge-a", .counter = 1, .t = {{"web", 1, 1}}};
    report_spec b = {.agent = "edge-b", .counter = 1, .t = {{"web", 1, 1}}};
    report_ok(r, &a, now);
    report_ok(r, &b, now);
    pc_rollout_query v2 = query("web", 2, 0.5);
    wait_log nacked = {0};
    pc_err err;
    assert_int_equal(pc_rollout_wait(r, &v2, now + 300000, on_done, &nacked, &err), PC_OK);
    b.counter = 2;
    b.n[0] = (nack_spec){"web", 2, "runtime_error", "boom"};
    report_ok(r, &b, now + 10);
    expect_done(&nacked, "nacked");

    wait_log done_at_once = {0};
    pc_rollout_query v1 = query("web", 1, 1.0);
    assert_int_equal(pc_rollout_wait(r, &v1, now + 300000, on_done, &done_at_once, &err), PC_OK);
    expect_done(&done_at_once, "complete");
    pc_rollout_free(r);
}

/* A wait ends with "timeout" on the first tick at or past its deadline;
 * before that, ticks leave it pending. A tick also notices agents going
 * gone: a rollout only they held back completes. */
static void test_wait_times_out_on_tick(void **state)
{
    (void)state;
    int64_t now = pc_mono_ms();
    pc_rollout *r = tracker(600000, 300000, 0);
    report_spec a = {.agent = "edge-a", .counter = 1, .t = {{"web", 1, 1}}};
    report_ok(r, &a, now);
    pc_rollout_query q = query("web", 2, 1.0);
    wait_log l = {0};
    pc_err err;
    int64_t deadline = now + 5000;
    assert_int_equal(pc_rollout_wait(r, &q, deadline, on_done, &l, &err), PC_OK);
    pc_rollout_tick(r, deadline - 1);
    assert_int_equal(l.calls, 0);
    pc_rollout_tick(r, deadline);
    expect_done(&l, "timeout");
    assert_int_equal(l.live, 0);
    pc_rollout_tick(r, deadline + 1000);
    assert_int_equal(l.calls, 1);

    /* b holds v2 back; it goes gone, a does not: the next tick ends the
     * wait as complete. */
    pc_rollout *r2 = tracker(100000, 50000, 0);
    report_spec a2 = {.agent = "edge-a", .counter = 1, .t = {{"web", 2, 2}}};
    report_spec b2 = {.agent = "edge-b", .counter = 1, .t = {{"web", 1, 1}}};
    report_ok(r2, &a2, now);
    report_ok(r2, &b2, now);
    wait_log gone = {0};
    assert_int_equal(pc_rollout_wait(r2, &q, now + 500000, on_done, &gone, &err), PC_OK);
    assert_int_equal(gone.calls, 0);
    a2.counter = 2;
    report_ok(r2, &a2, now + 90000);
    pc_rollout_tick(r2, now + 99000);
    assert_int_equal(gone.calls, 0);
    pc_rollout_tick(r2, now + 100001);
    expect_done(&gone, "complete");
    assert_int_equal(gone.live, 1);
    pc_rollout_free(r);
    pc_rollout_free(r2);
}

/* An empty fleet never completes a wait: it times out. */
static void test_wait_on_empty_fleet_times_out(void **state)
{
    (void)state;
    int64_t now = pc_mono_ms();
    pc_rollout *r = tracker(600000, 300000, 0);
    pc_rollout_query q = query("web", 1, 0.5);
    wait_log l = {0};
    pc_err err;
    assert_int_equal(pc_rollout_wait(r, &q, now + 1000, on_done, &l, &err), PC_OK);
    assert_int_equal(l.calls, 0);
    pc_rollout_tick(r, now + 1000);
    expect_done(&l, "timeout");
    pc_rollout_free(r);
}

/* Cancelling (shutdown), and freeing the tracker, end every pending wait
 * with "shutdown", once. */
static void test_cancel_waits(void **state)
{
    (void)state;
    int64_t now = pc_mono_ms();
    pc_rollout *r = tracker(600000, 300000, 0);
    pc_rollout_query q = query("web", 1, 1.0);
    wait_log l1 = {0}, l2 = {0}, l3 = {0};
    pc_err err;
    assert_int_equal(pc_rollout_wait(r, &q, now + 100000, on_done, &l1, &err), PC_OK);
    assert_int_equal(pc_rollout_wait(r, &q, now + 100000, on_done, &l2, &err), PC_OK);
    pc_rollout_cancel_waits(r);
    expect_done(&l1, "shutdown");
    expect_done(&l2, "shutdown");
    pc_rollout_tick(r, now + 200000);
    assert_int_equal(l1.calls, 1);
    assert_int_equal(pc_rollout_wait(r, &q, now + 100000, on_done, &l3, &err), PC_OK);
    pc_rollout_free(r);
    expect_done(&l3, "shutdown");
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_must_grow),
        cmocka_unit_test(test_bad_reports_change_nothing),
        cmocka_unit_test(test_classification),
        cmocka_unit_test(test_delete_rollout),
        cmocka_unit_test(test_stale_and_gone),
        cmocka_unit_test(test_fraction),
        cmocka_unit_test(test_max_agents),
        cmocka_unit_test(test_fleet_json),
        cmocka_unit_test(test_wait_completes_on_report),
        cmocka_unit_test(test_wait_nacked_and_immediate),
        cmocka_unit_test(test_wait_times_out_on_tick),
        cmocka_unit_test(test_wait_on_empty_fleet_times_out),
        cmocka_unit_test(test_cancel_waits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
