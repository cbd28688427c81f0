/* test_relay.c - the relay tier (docs/architecture.md "Relays"): agents
 * fed by their PoP's relays converge exactly as if fed by a controller,
 * survive a relay's kill -9 in the middle of a deploy stream through the
 * other upstreams, fail over in their configured order, and their reports
 * reach the controller in the relays' batches. Fixed seeds, bounded
 * waits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define AGENTS 4

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_relay relays[2];
static pc_test_agent agents[AGENTS + 1];

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    memset(relays, 0, sizeof(relays));
    memset(agents, 0, sizeof(agents));
    pc_test_controller_start(&env, &ctl, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < AGENTS + 1; i++)
        pc_test_agent_stop(&agents[i]);
    for (int i = 0; i < 2; i++)
        pc_test_relay_stop(&relays[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

static void start_relay(int i)
{
    char id[32];
    snprintf(id, sizeof(id), "relay-%d", i);
    const char *subs[] = {ctl.pub_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    pc_test_relay_start(&env, &relays[i], id, "pop-a", subs, syncs, NULL);
}

/* An agent of pop-a: subscribed to both relays only, catching up from
 * them before the controller. */
static void start_agent(pc_test_agent *a, const char *id)
{
    const char *subs[] = {relays[0].pub_url, relays[1].pub_url, NULL};
    const char *syncs[] = {ctl.sync_url, NULL};
    const char *extra[] = {"--pop", "pop-a", "--relay", relays[0].sync_url, "--relay",
                           relays[1].sync_url, "--sync-interval-ms", "1000",
                           /* The first round waits this long for a relay's
                            * connection before the controller may serve
                            * it: ample on a loaded machine (CI saw a
                            * second pass, and a snapshot come from the
                            * controller). */
                           "--connect-timeout-ms", "10000", NULL};
    pc_test_agent_start(&env, a, id, subs, syncs, extra);
}

static uint64_t metric(pc_test_agent *a, const char *name)
{
    return pc_test_agent_metric(a, name);
}

/* The controller's fleet entry for agent id (new reference) or NULL. */
static json_t *fleet_entry(const char *key, const char *list, const char *id)
{
    json_t *fleet = pc_test_controller_json(&env, &ctl, "/v1/fleet");
    json_t *found = NULL, *e;
    size_t i;
    json_array_foreach(json_object_get(fleet, list), i, e)
    {
        const char *got = json_string_value(json_object_get(e, key));
        if (got != NULL && strcmp(got, id) == 0)
            found = json_incref(e);
    }
    json_decref(fleet);
    return found;
}

/* Polls the fleet until agent id reports upstream url. */
static void wait_upstream(const char *id, const char *url)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *a = fleet_entry("agent_id", "agents", id);
        const char *up = json_string_value(json_object_get(a, "upstream"));
        bool ok = up != NULL && strcmp(up, url) == 0;
        if (!ok && pc_test_now_ms() > deadline) {
            char *dump = a ? json_dumps(a, JSON_COMPACT) : NULL;
            fprintf(stderr, "fleet entry of %s: %s\n", id, dump ? dump : "(none)");
            free(dump);
            json_decref(a);
            fail_msg("agent %s never showed upstream %s", id, url);
        }
        json_decref(a);
        if (ok)
            return;
        pc_test_sleep_ms(100);
    }
}

static int deploy(const char *tenant, int i)
{
    char src[256], body[64];
    snprintf(body, sizeof(body), "stream %d", i);
    pc_test_lua_hello(src, sizeof(src), body);
    pc_test_deployed d;
    return pc_test_try_deploy(&env, &ctl, tenant, "text/x-lua", src, strlen(src), &d);
}

/* Agents behind two relays, one relay killed (-9) a third of the way into
 * a stream of deploys and brought back two thirds in: every agent ends
 * with exactly the controller's state, every seq applied once (none
 * twice, none skipped, no snapshot), reports reached the controller in
 * batches, and the restarted relay caught up. */
static void test_relay_kill9_under_stream(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        start_relay(i);
    /* A first entry, so that agents start by catching up from a relay
     * rather than by a snapshot of nothing. */
    assert_int_equal(deploy("t00", -1), 201);
    for (int i = 0; i < 2; i++)
        pc_test_wait_relay_head(&relays[i], 1);
    char id[AGENTS][32];
    for (int i = 0; i < AGENTS; i++) {
        snprintf(id[i], sizeof(id[i]), "edge-%d", i);
        start_agent(&agents[i], id[i]);
    }
    pc_test_wait_converged(&env, &ctl, agents, AGENTS);
    for (int i = 0; i < AGENTS; i++)
        pc_test_agent_wait_subscribed(&agents[i]);
    srand(5);
    for (int i = 0; i < 60; i++) {
        if (i == 20) {
            pc_proc_kill9(relays[0].proc);
            pc_proc_free(relays[0].proc);
            relays[0].proc = NULL;
        }
        if (i == 40)
            start_relay(0);
        char tenant[32];
        snprintf(tenant, sizeof(tenant), "t%02d", rand() % 6);
        assert_int_equal(deploy(tenant, i), 201);
    }
    uint64_t head = pc_test_controller_head(&env, &ctl);
    assert_int_equal(head, 61);
    pc_test_wait_converged(&env, &ctl, agents, AGENTS);
    for (int i = 0; i < AGENTS; i++) {
        assert_int_equal(pc_test_agent_applied_seq(&agents[i]), head);
        assert_int_equal(metric(&agents[i], "popcast_agent_entries_applied_total"), head);
        assert_int_equal(metric(&agents[i], "popcast_agent_snapshots_installed_total"), 0);
    }
    /* Both relays hold the log to the head (the restarted one caught up). */
    for (int i = 0; i < 2; i++)
        pc_test_wait_relay_head(&relays[i], head);
    /* Reports came through the relays, in batches, and say so. */
    assert_true(pc_test_controller_metric(&ctl, "popcast_status_batches_total") > 0);
    /* The relay the agents report through lists itself, as its claim. */
    json_t *listed = NULL;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while ((listed = fleet_entry("relay_id", "relays", "relay-0")) == NULL &&
           (listed = fleet_entry("relay_id", "relays", "relay-1")) == NULL &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_non_null(listed);
    assert_string_equal(json_string_value(json_object_get(listed, "pop")), "pop-a");
    assert_true(json_is_true(json_object_get(listed, "claimed")));
    json_decref(listed);
    for (int i = 0; i < AGENTS; i++) {
        json_t *a = fleet_entry("agent_id", "agents", id[i]);
        assert_non_null(a);
        const char *up = json_string_value(json_object_get(a, "upstream"));
        assert_non_null(up);
        /* Whichever relay it last caught up from, never the controller
         * while a relay answered. */
        assert_true(strcmp(up, relays[0].sync_url) == 0 || strcmp(up, relays[1].sync_url) == 0);
        json_decref(a);
    }
}

/* Failover order: an agent whose first relay is down catches up from the
 * second relay, not from the controller; with both relays down, from the
 * controller, and its reports go there directly. */
static void test_failover_order(void **state)
{
    (void)state;
    for (int i = 0; i < 2; i++)
        start_relay(i);
    for (int i = 0; i < 5; i++)
        assert_int_equal(deploy("app", i), 201);
    for (int i = 0; i < 2; i++)
        pc_test_wait_relay_head(&relays[i], 5);
    pc_test_relay_stop(&relays[0]);
    start_agent(&agents[0], "order");
    pc_test_wait_converged(&env, &ctl, agents, 1);
    wait_upstream("order", relays[1].sync_url);
    uint64_t batches = pc_test_controller_metric(&ctl, "popcast_status_batches_total");
    assert_true(batches > 0);

    pc_test_relay_stop(&relays[1]);
    for (int i = 5; i < 8; i++)
        assert_int_equal(deploy("app", i), 201);
    /* No relay: catch-up (the 1 s probe) from the controller, reports
     * directly to it. */
    pc_test_wait_converged(&env, &ctl, agents, 1);
    wait_upstream("order", ctl.sync_url);
    assert_int_equal(pc_test_agent_applied_seq(&agents[0]), 8);
    uint64_t applied = metric(&agents[0], "popcast_agent_entries_applied_total");
    uint64_t snaps = metric(&agents[0], "popcast_agent_snapshots_installed_total");
    fprintf(stderr, "order: applied %llu entries, %llu snapshots\n", (unsigned long long)applied,
            (unsigned long long)snaps);
    assert_int_equal(applied, 8);
}

/* Depth 2: a PoP relay fed only by a regional relay (its parent), which
 * alone talks to the controller. Entries (a large one in chunks among
 * them), snapshots, catch-up and reports all pass both tiers. */
static void test_relay_chain(void **state)
{
    (void)state;
    /* The log began before either relay: the regional one starts from a
     * controller's snapshot, the leaf from one passed through it. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(deploy("early", i), 201);
    start_relay(0); /* the regional tier: relay-0 */
    pc_test_wait_relay_head(&relays[0], 3);
    const char *subs[] = {relays[0].pub_url, NULL};
    const char *extra[] = {"--parent", relays[0].sync_url, NULL};
    pc_test_relay_start(&env, &relays[1], "relay-leaf", "pop-a", subs, NULL, extra);
    pc_test_wait_relay_head(&relays[1], 3);
    for (int i = 0; i < 2; i++) {
        json_t *st = pc_test_relay_status(&relays[i]);
        json_t *m = json_object_get(st, "metrics");
        assert_int_equal(json_integer_value(json_object_get(m, "popcast_relay_snapshots_total")),
                         1);
        assert_int_equal(json_integer_value(json_object_get(st, "first_seq")), 4);
        json_decref(st);
    }
    /* The agent talks to the leaf only (and to the controller as the last
     * resort, which the test shows it did not need). */
    const char *asubs[] = {relays[1].pub_url, NULL};
    const char *asyncs[] = {ctl.sync_url, NULL};
    const char *aextra[] = {"--pop", "pop-a", "--relay", relays[1].sync_url, NULL};
    pc_test_agent_start(&env, &agents[0], "deep", asubs, asyncs, aextra);
    pc_test_agent_wait_subscribed(&agents[0]);
    for (int i = 0; i < 10; i++)
        assert_int_equal(deploy("app", i), 201);
    size_t big = 1536 * 1024;
    char *lua = malloc(big + 1);
    assert_non_null(lua);
    int n = snprintf(lua, 128, "return function(req) return {status=200, body=\"big\"} end\n--");
    memset(lua + n, 'x', big - (size_t)n);
    lua[big] = '\0';
    pc_test_deploy_lua(&env, &ctl, "big", lua);
    free(lua);
    uint64_t head = pc_test_controller_head(&env, &ctl);
    pc_test_wait_converged(&env, &ctl, agents, 1);
    assert_int_equal(pc_test_agent_applied_seq(&agents[0]), head);
    wait_upstream("deep", relays[1].sync_url);
    /* Reports reached the controller through both tiers: the regional
     * relay's batches, which carried the leaf's. */
    assert_true(pc_test_controller_metric(&ctl, "popcast_status_batches_total") > 0);
    json_t *top = NULL;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while ((top = fleet_entry("relay_id", "relays", "relay-0")) == NULL &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_non_null(top);
    json_decref(top);
    /* The leaf's own account came along in the regional relay's batches. */
    json_t *leaf = fleet_entry("relay_id", "relays", "relay-leaf");
    assert_non_null(leaf);
    assert_string_equal(json_string_value(json_object_get(leaf, "upstream")), relays[0].sync_url);
    json_decref(leaf);
    json_t *st = pc_test_relay_status(&relays[1]);
    assert_non_null(st);
    assert_string_equal(json_string_value(json_object_get(st, "upstream")), relays[0].sync_url);
    json_decref(st);
    /* The large bundle came to the agent in chunks from the leaf: the
     * controller served its two chunks once, to the regional relay. */
    assert_true(metric(&agents[0], "popcast_agent_bundle_chunks_total") > 0);
    assert_int_equal(pc_test_controller_metric(&ctl, "popcast_sync_requests_total{kind=\"chunk\"}"),
                     2);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_relay_kill9_under_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failover_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_chain, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
