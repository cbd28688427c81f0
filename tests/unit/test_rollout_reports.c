/* test_rollout_reports.c - controller/rollout.h's bookkeeping of who
 * reported what: refused reports are counted under the agent id they
 * claim and shown in the fleet (on the agent's entry, or in a bounded list
 * of ids never accepted), and a verified report with a new key starts a
 * new counter sequence. Times are given, not measured. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

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
    return pc_rollout_report(r, &st, verified, now, &err);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals_are_shown),
        cmocka_unit_test(test_refused_list_is_bounded),
        cmocka_unit_test(test_new_key_new_counter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
