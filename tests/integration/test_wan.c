/* test_wan.c - the fleet over a WAN (the testbed of tests/harness/wan.h):
 * a 3-node controller cluster in the core network namespace; PoP "near"
 * 30 ms and PoP "far" 150 ms round trip from it, each with jitter and 1 %
 * packet loss each way on real packets. Each PoP has a relay and agents
 * subscribed to it only; "far" also has an agent with no relay,
 * subscribed and reporting straight to the controllers across the WAN.
 *
 * A stream of deploys with the far relay killed (-9) a third of the way in
 * and restarted two thirds in: every agent ends with exactly the cluster's
 * state, every seq applied once (none twice, none skipped, no snapshot),
 * the links really lost packets, and the leader's fleet view shows each
 * agent live with its upstream. Fixed seeds, bounded waits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"
#include "wan.h"

#define NODES   3
#define POPS    2
#define AGENTS  5 /* near: 2 behind its relay; far: 2 behind its relay, 1 direct */
#define DEPLOYS 45

static pc_test_env env;
static pc_test_cluster cluster;
static pc_wan_pop pops[POPS];
static pc_test_relay relays[POPS];
static pc_test_agent agents[AGENTS];

/* URL of a controller's port as a PoP reaches it (across its link). */
static void core_url(char *out, size_t cap, const pc_wan_pop *pop, int port)
{
    snprintf(out, cap, "tcp://%s:%d", pop->core_addr, port);
}

static char pub_urls[POPS][NODES][64], sync_urls[POPS][NODES][64];

static void start_relay(int p)
{
    const char *subs[NODES + 1], *syncs[NODES + 1];
    for (int i = 0; i < NODES; i++) {
        subs[i] = pub_urls[p][i];
        syncs[i] = sync_urls[p][i];
    }
    subs[NODES] = syncs[NODES] = NULL;
    char id[32];
    snprintf(id, sizeof(id), "relay-%s", pops[p].name);
    pc_test_place(pops[p].netns, pops[p].pop_addr);
    pc_test_relay_start(&env, &relays[p], id, pops[p].name, subs, syncs, NULL);
    pc_test_place(NULL, NULL);
}

/* Agent i of PoP p; behind_relay: subscribed to the PoP's relay only,
 * catching up and reporting through it (the controllers when it is
 * down); else straight to the controllers. */
static void start_agent(int i, int p, bool behind_relay)
{
    const char *subs[NODES + 2], *syncs[NODES + 1];
    int n = 0;
    if (behind_relay)
        subs[n++] = relays[p].pub_url;
    else
        for (int k = 0; k < NODES; k++)
            subs[n++] = pub_urls[p][k];
    subs[n] = NULL;
    for (int k = 0; k < NODES; k++)
        syncs[k] = sync_urls[p][k];
    syncs[NODES] = NULL;
    const char *with_relay[] = {"--pop",
                                pops[p].name,
                                "--relay",
                                relays[p].sync_url,
                                "--sync-interval-ms",
                                "1000",
                                "--connect-timeout-ms",
                                "10000",
                                NULL};
    const char *direct[] = {"--pop", pops[p].name, "--sync-interval-ms", "1000", NULL};
    char id[32];
    snprintf(id, sizeof(id), "edge-%s-%d", pops[p].name, i);
    pc_test_place(pops[p].netns, pops[p].pop_addr);
    pc_test_agent_start(&env, &agents[i], id, subs, syncs, behind_relay ? with_relay : direct);
    pc_test_place(NULL, NULL);
}

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&cluster, 0, sizeof(cluster));
    memset(relays, 0, sizeof(relays));
    memset(agents, 0, sizeof(agents));
    const pc_wan_spec near = {.delay_ms = 15, .jitter_ms = 3, .loss = 0.01};
    const pc_wan_spec far = {.delay_ms = 75, .jitter_ms = 10, .loss = 0.01};
    pc_wan_add_pop(&pops[0], 1, "near", &near, 11);
    pc_wan_add_pop(&pops[1], 2, "far", &far, 12);
    /* Controllers listen on every address of the core, so that each PoP
     * reaches them across its own link. */
    pc_test_place(NULL, "0.0.0.0");
    pc_test_cluster_init(&env, &cluster, NODES, NODES, NULL);
    pc_test_place(NULL, NULL);
    for (int p = 0; p < POPS; p++)
        for (int i = 0; i < NODES; i++) {
            core_url(pub_urls[p][i], sizeof(pub_urls[p][i]), &pops[p], cluster.node[i].pub_port);
            core_url(sync_urls[p][i], sizeof(sync_urls[p][i]), &pops[p], cluster.node[i].sync_port);
        }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < AGENTS; i++)
        pc_test_agent_stop(&agents[i]);
    for (int p = 0; p < POPS; p++)
        pc_test_relay_stop(&relays[p]);
    pc_test_cluster_stop(&cluster);
    for (int p = 0; p < POPS; p++)
        pc_wan_remove_pop(&pops[p]);
    pc_test_env_cleanup(&env);
    return 0;
}

/* The node that leads now (fails the test if none does). */
static pc_test_controller *leader_now(void)
{
    int l = pc_test_cluster_leader(&cluster, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(l >= 0);
    return &cluster.node[l];
}

/* Deploys through whichever node leads, asking again when leadership
 * moved (on a loaded machine an election can come in the middle): the
 * answer of the last attempt. A write whose outcome was unknown may then
 * be committed twice, which the checks below allow for: they count the
 * entries the cluster holds, not the calls. */
static int deploy(const char *tenant, int i)
{
    char src[256], body[64];
    snprintf(body, sizeof(body), "wan %d", i);
    pc_test_lua_hello(src, sizeof(src), body);
    int rc = 0;
    for (int attempt = 0; attempt < 20; attempt++) {
        pc_test_deployed d;
        rc = pc_test_try_deploy(&env, leader_now(), tenant, "text/x-lua", src, strlen(src), &d);
        if (rc != 0 && rc != 307 && rc != 503)
            break;
        pc_test_sleep_ms(100);
    }
    return rc;
}

/* The leader's fleet entry of agent id (new reference) or NULL. */
static json_t *fleet_agent(pc_test_controller *leader, const char *id)
{
    json_t *fleet = pc_test_controller_json(&env, leader, "/v1/fleet");
    json_t *found = NULL, *e;
    size_t i;
    json_array_foreach(json_object_get(fleet, "agents"), i, e)
    {
        const char *got = json_string_value(json_object_get(e, "agent_id"));
        if (got != NULL && strcmp(got, id) == 0)
            found = json_incref(e);
    }
    json_decref(fleet);
    return found;
}

static void test_wan_stream_with_relay_kill9(void **state)
{
    (void)state;
    for (int p = 0; p < POPS; p++)
        start_relay(p);
    /* A first entry, so that agents start by catching up rather than by a
     * snapshot of nothing. */
    assert_int_equal(deploy("t00", -1), 201);
    for (int p = 0; p < POPS; p++)
        pc_test_wait_relay_head(&relays[p], 1);
    start_agent(0, 0, true);
    start_agent(1, 0, true);
    start_agent(2, 1, true);
    start_agent(3, 1, true);
    start_agent(4, 1, false);
    pc_test_wait_converged(&env, leader_now(), agents, AGENTS);
    uint64_t head_before = pc_test_controller_head(&env, leader_now());
    uint64_t applied_before[AGENTS], snapshots_before[AGENTS];
    for (int i = 0; i < AGENTS; i++) {
        pc_test_agent_wait_subscribed(&agents[i]);
        applied_before[i] = pc_test_agent_metric(&agents[i], "popcast_agent_entries_applied_total");
        snapshots_before[i] =
            pc_test_agent_metric(&agents[i], "popcast_agent_snapshots_installed_total");
    }

    srand(21);
    int64_t started = pc_test_now_ms();
    for (int i = 0; i < DEPLOYS; i++) {
        if (i == DEPLOYS / 3) {
            pc_proc_kill9(relays[1].proc);
            pc_proc_free(relays[1].proc);
            relays[1].proc = NULL;
        }
        if (i == 2 * DEPLOYS / 3)
            start_relay(1);
        char tenant[32];
        snprintf(tenant, sizeof(tenant), "t%02d", rand() % 6);
        assert_int_equal(deploy(tenant, i), 201);
    }
    int64_t last_answer = pc_test_now_ms();
    pc_test_controller *leader = leader_now();
    uint64_t head = pc_test_controller_head(&env, leader);
    /* Every acknowledged deploy is there (one more only if an attempt's
     * outcome was unknown and it was asked again). */
    assert_true(head >= head_before + DEPLOYS);
    uint64_t stream = head - head_before;
    pc_test_wait_converged(&env, leader, agents, AGENTS);
    printf("wan: %d deploys in %lld ms; every agent converged %lld ms after the last answer\n",
           DEPLOYS, (long long)(last_answer - started),
           (long long)(pc_test_now_ms() - last_answer));

    /* Each agent applied every entry of the stream once, from entries
     * (an agent that started empty from a controller took the first entry
     * as a snapshot, by design: sync_server.c). */
    for (int i = 0; i < AGENTS; i++) {
        uint64_t applied = pc_test_agent_metric(&agents[i], "popcast_agent_entries_applied_total");
        uint64_t snaps =
            pc_test_agent_metric(&agents[i], "popcast_agent_snapshots_installed_total");
        printf("wan: agent %s applied %llu entries in the stream, %llu snapshots\n", agents[i].id,
               (unsigned long long)(applied - applied_before[i]),
               (unsigned long long)(snaps - snapshots_before[i]));
        assert_int_equal(pc_test_agent_applied_seq(&agents[i]), head);
        assert_int_equal(applied - applied_before[i], stream);
        assert_int_equal(snaps, snapshots_before[i]);
    }
    for (int p = 0; p < POPS; p++)
        pc_test_wait_relay_head(&relays[p], head);

    /* The links lost packets for real: TCP retransmitted underneath. */
    for (int p = 0; p < POPS; p++) {
        uint64_t passed = 0, lost = 0;
        pc_wan_pop_counts(&pops[p], &passed, &lost);
        printf("wan: link %s passed %llu packets, lost %llu\n", pops[p].name,
               (unsigned long long)passed, (unsigned long long)lost);
        assert_true(passed > 0);
        assert_true(lost > 0);
    }

    /* The leader's view, from the agents' signed reports: the agents
     * behind a relay report through it (the far ones through the
     * restarted one again); the direct far agent straight to a
     * controller, across the WAN. */
    for (int i = 0; i < AGENTS; i++) {
        int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
        for (;;) {
            json_t *a = fleet_agent(leader_now(), agents[i].id);
            const char *up = json_string_value(json_object_get(a, "upstream"));
            bool ok = false;
            if (up != NULL && i < 2)
                ok = strcmp(up, relays[0].sync_url) == 0;
            else if (up != NULL && i < 4) /* back to the restarted relay */
                ok = strcmp(up, relays[1].sync_url) == 0;
            else if (up != NULL)
                ok = strncmp(up, "tcp://10.77.2.1:", 16) == 0;
            if (ok || pc_test_now_ms() > deadline) {
                char *dump = a ? json_dumps(a, JSON_COMPACT) : NULL;
                if (!ok)
                    fprintf(stderr, "fleet entry of %s: %s\n", agents[i].id,
                            dump ? dump : "(none)");
                free(dump);
                json_decref(a);
                assert_true(ok);
                break;
            }
            json_decref(a);
            pc_test_sleep_ms(100);
        }
    }
}

/* The link refuses a bad argument with its usage, before it creates
 * anything: no device appears in the core. */
static void test_link_refuses_bad_arguments(void **state)
{
    (void)state;
    const char *bin = getenv("POPCAST_WAN_LINK_BIN");
    assert_non_null(bin);
    const char *cases[][8] = {
        {"wan9", "10.77.9.1", "10.77.9.2", "15", "20", "0.01", "0", "1"}, /* jitter > delay */
        {"wan9", "10.77.9.1", "10.77.9.2", "15", "3", "1", "0", "1"},     /* loss 1 */
        {"wan9", "10.77.9.1", "10.77.9.2", "abc", "0", "0", "0", "1"},    /* not a number */
        {"wan9", "10.77.9.1", "10.77.9.2", "15x", "0", "0", "0", "1"},    /* trailing text */
        {"wan9", "10.77.9.1", "10.77.9.2", "-5", "0", "0", "0", "1"},     /* negative */
        {"wan9", "10.77.9.1;id", "10.77.9.2", "15", "3", "0", "0", "1"},  /* not an address */
        {"wan 9", "10.77.9.1", "10.77.9.2", "15", "3", "0", "0", "1"},    /* bad device name */
        {"wan9", "10.77.9.1", "10.77.9.2", "15", "3", "0.5x", "0", "1"},  /* bad loss */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *argv[10] = {(char *)bin};
        for (int k = 0; k < 8; k++)
            argv[k + 1] = (char *)cases[i][k];
        argv[9] = NULL;
        char dir[300], log[400];
        pc_test_tmpdir(dir, sizeof(dir), "wanargs");
        snprintf(log, sizeof(log), "%s/link.log", dir);
        pc_proc *p = pc_proc_spawn("bad-link", argv, log);
        assert_true(pc_proc_wait_exit(p, PC_TEST_START_TIMEOUT_MS));
        assert_true(WIFEXITED(p->status));
        assert_int_equal(WEXITSTATUS(p->status), 2);
        assert_int_equal(pc_test_log_count(p, "pc_wan_link: bad argument"), 1);
        assert_int_equal(if_nametoindex("wan9"), 0);
        pc_proc_free(p);
    }
    /* The wrong number of arguments: the usage alone. */
    char *few[] = {(char *)bin, "wan9", NULL};
    char dir[300], log[400];
    pc_test_tmpdir(dir, sizeof(dir), "wanargs");
    snprintf(log, sizeof(log), "%s/link.log", dir);
    pc_proc *p = pc_proc_spawn("bad-link", few, log);
    assert_true(pc_proc_wait_exit(p, PC_TEST_START_TIMEOUT_MS));
    assert_int_equal(WEXITSTATUS(p->status), 2);
    assert_int_equal(pc_test_log_count(p, "usage: pc_wan_link"), 1);
    pc_proc_free(p);
}

int main(void)
{
    pc_test_init();
    /* Before anything binds: the whole test lives in its own core
     * namespace, so it changes nothing on the machine's network. */
    pc_wan_enter_core();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_link_refuses_bad_arguments),
        cmocka_unit_test_setup_teardown(test_wan_stream_with_relay_kill9, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
