/* test_rollout_fleet.c - controller/rollout.h's fleet bookkeeping: one
 * entry per agent id whatever order reports arrive in, documents list
 * agents sorted by id, a report replaces the agent's last one only when its
 * counter grows, bad reports and reports beyond max_agents change nothing.
 * Times are given, not measured. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "protocol_limits.h"
#include "rollout.h"

static int report(pc_rollout *r, const char *id, const char *pop, uint64_t counter,
                  uint64_t applied_seq, uint64_t live_version)
{
    Popcast__TenantStatus t = POPCAST__TENANT_STATUS__INIT;
    Popcast__TenantStatus *tenants[] = {&t};
    t.tenant = "shop";
    t.applied_version = live_version;
    t.live_version = live_version;
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = (char *)id;
    st.pop = (char *)pop;
    st.counter = counter;
    st.applied_seq = applied_seq;
    st.n_tenants = 1;
    st.tenants = tenants;
    pc_err err;
    return pc_rollout_report(r, &st, true, 1000, NULL, &err);
}

/* The "agents" array's agent ids, in order, joined by ','. */
static void ids_of(json_t *agents, char *out, size_t cap)
{
    out[0] = '\0';
    size_t i;
    json_t *a;
    json_array_foreach(agents, i, a)
    {
        size_t n = strlen(out);
        snprintf(out + n, cap - n, "%s%s", i ? "," : "",
                 json_string_value(json_object_get(a, "agent_id")));
    }
}

static void test_sorted_and_replaced(void **state)
{
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    assert_int_equal(report(r, "c", "pop2", 1, 5, 1), PC_OK);
    assert_int_equal(report(r, "a", "pop1", 1, 5, 1), PC_OK);
    assert_int_equal(report(r, "b", "pop1", 1, 5, 1), PC_OK);
    /* A newer report replaces b's; an old or equal counter is a replay. */
    assert_int_equal(report(r, "b", "pop1", 2, 7, 2), PC_OK);
    assert_int_equal(report(r, "b", "pop1", 2, 9, 3), PC_E_REPLAYED);
    assert_int_equal(report(r, "b", "pop1", 1, 9, 3), PC_E_REPLAYED);
    /* Malformed reports are refused. */
    assert_int_equal(report(r, "no spaces", "pop1", 5, 9, 3), PC_E_INVALID);
    assert_int_equal(report(r, "d", "", 5, 9, 3), PC_E_INVALID);

    json_t *fleet = pc_rollout_fleet_json(r, 10, 1000);
    char ids[256];
    ids_of(json_object_get(fleet, "agents"), ids, sizeof(ids));
    assert_string_equal(ids, "a,b,c");
    json_t *b = json_array_get(json_object_get(fleet, "agents"), 1);
    assert_int_equal(json_integer_value(json_object_get(b, "applied_seq")), 7);
    assert_int_equal(json_integer_value(json_object_get(b, "lag")), 3);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(fleet, "counts"), "agents")), 3);
    json_decref(fleet);

    /* A new agent after a document was built is listed in its place. */
    assert_int_equal(report(r, "ab", "pop2", 1, 5, 2), PC_OK);
    pc_rollout_query q = {.tenant = "shop", .version = 2, .seq = 7, .fraction = 1.0};
    pc_rollout_summary s;
    json_t *doc = pc_rollout_version_json(r, &q, 1000, &s);
    ids_of(json_object_get(doc, "agents"), ids, sizeof(ids));
    assert_string_equal(ids, "a,ab,b,c");
    assert_int_equal(s.total, 4);
    assert_int_equal(s.live, 2); /* ab and b */
    assert_int_equal(s.missing, 2);
    assert_false(s.complete);
    /* PoPs in the order their first agent is listed. */
    const char *pop;
    json_t *p;
    char pops[64] = "";
    json_object_foreach(json_object_get(doc, "pops"), pop, p)
    {
        strcat(pops, pop);
        strcat(pops, ";");
    }
    assert_string_equal(pops, "pop1;pop2;");
    json_decref(doc);
    pc_rollout_free(r);
}

static void test_many_agents_and_limit(void **state)
{
    enum { N = 3000 };
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000, .max_agents = N};
    pc_rollout *r = pc_rollout_new(&opt);
    char id[32];
    /* Reverse order, each twice. */
    for (int round = 1; round <= 2; round++)
        for (int i = N - 1; i >= 0; i--) {
            snprintf(id, sizeof(id), "agent-%05d", i);
            assert_int_equal(report(r, id, "pop", (uint64_t)round, (uint64_t)round, 1), PC_OK);
        }
    /* The fleet is full: a new agent is refused, known ones still report. */
    assert_int_equal(report(r, "agent-x", "pop", 1, 1, 1), PC_E_TOO_LARGE);
    assert_int_equal(report(r, "agent-00042", "pop", 3, 3, 1), PC_OK);
    json_t *fleet = pc_rollout_fleet_json(r, 3, 1000);
    json_t *agents = json_object_get(fleet, "agents");
    assert_int_equal(json_array_size(agents), N);
    for (int i = 0; i < N; i++) {
        snprintf(id, sizeof(id), "agent-%05d", i);
        json_t *a = json_array_get(agents, (size_t)i);
        assert_string_equal(json_string_value(json_object_get(a, "agent_id")), id);
        assert_int_equal(json_integer_value(json_object_get(a, "applied_seq")), i == 42 ? 3 : 2);
    }
    json_decref(fleet);
    pc_rollout_query q = {.tenant = "shop", .version = 1, .seq = 1, .fraction = 1.0};
    pc_rollout_summary s;
    json_decref(pc_rollout_version_json(r, &q, 1000, &s));
    assert_int_equal(s.total, N);
    assert_int_equal(s.live, N);
    assert_true(s.complete);
    pc_rollout_free(r);
}

/* What relays say of themselves is listed per relay id, sorted, with its
 * lag from the head and marked as a claim; invalid ones are ignored, and
 * relays silent past gone_after_ms drop out. An agent's upstream is shown
 * as it reported it; an overlong one is refused. */
static void test_relays_and_upstreams(void **state)
{
    (void)state;
    pc_rollout_options opt = {.gone_after_ms = 60000, .report_stale_ms = 60000};
    pc_rollout *r = pc_rollout_new(&opt);
    Popcast__RelayStatus rs = POPCAST__RELAY_STATUS__INIT;
    rs.relay_id = "relay-b";
    rs.pop = "pop1";
    rs.head_seq = 8;
    rs.first_seq = 2;
    rs.upstream = "tcp://10.0.0.1:7072";
    rs.agents = 3;
    pc_rollout_relay(r, &rs, 1000);
    rs.relay_id = "relay-a";
    rs.head_seq = 10;
    pc_rollout_relay(r, &rs, 1000);
    rs.relay_id = "bad id";
    pc_rollout_relay(r, &rs, 1000);
    rs.relay_id = "relay-c";
    rs.pop = "";
    pc_rollout_relay(r, &rs, 1000);

    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.agent_id = "e1";
    st.pop = "pop1";
    st.counter = 1;
    st.upstream = "tcp://10.0.1.1:7082";
    pc_err err;
    assert_int_equal(pc_rollout_report(r, &st, true, 1000, NULL, &err), PC_OK);
    char longest[PC_UPSTREAM_MAX + 2];
    memset(longest, 'x', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    st.upstream = longest;
    st.counter = 2;
    assert_int_equal(pc_rollout_report(r, &st, true, 1000, NULL, &err), PC_E_INVALID);

    json_t *fleet = pc_rollout_fleet_json(r, 12, 2000);
    json_t *relays = json_object_get(fleet, "relays");
    assert_int_equal(json_array_size(relays), 2);
    json_t *a = json_array_get(relays, 0), *b = json_array_get(relays, 1);
    assert_string_equal(json_string_value(json_object_get(a, "relay_id")), "relay-a");
    assert_string_equal(json_string_value(json_object_get(b, "relay_id")), "relay-b");
    assert_int_equal(json_integer_value(json_object_get(a, "lag")), 2);
    assert_int_equal(json_integer_value(json_object_get(b, "lag")), 4);
    assert_int_equal(json_integer_value(json_object_get(b, "first_seq")), 2);
    assert_int_equal(json_integer_value(json_object_get(b, "agents_in_last_batch")), 3);
    assert_true(json_is_true(json_object_get(b, "claimed")));
    json_t *e1 = json_array_get(json_object_get(fleet, "agents"), 0);
    assert_string_equal(json_string_value(json_object_get(e1, "upstream")), "tcp://10.0.1.1:7082");
    json_decref(fleet);

    fleet = pc_rollout_fleet_json(r, 12, 1000 + 60001);
    assert_int_equal(json_array_size(json_object_get(fleet, "relays")), 0);
    json_decref(fleet);
    pc_rollout_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sorted_and_replaced),
        cmocka_unit_test(test_many_agents_and_limit),
        cmocka_unit_test(test_relays_and_upstreams),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
