/* test_convergence.c - pub/sub may drop messages, agents join late, lose
 * their store or restart, controllers restart, bundles are too large for
 * one message: agents still converge to exactly the controller's state.
 * Fixed seeds, bounded waits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "bundle.h"
#include "harness.h"

#define TENANTS 20
#define DEPLOYS 200

static void test_dropped_messages_converge(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[2];
    memset(agents, 0, sizeof(agents));
    /* One agent loses 30 % of pub/sub entries, one loses none. */
    const char *lossy[] = {"--test-drop-permille", "300", "--test-drop-seed", "42", NULL};
    pc_test_agent_start_for(&env, &agents[0], "lossy", &ctl, lossy);
    pc_test_agent_start_for(&env, &agents[1], "clean", &ctl, NULL);

    srand(42);
    for (int i = 0; i < DEPLOYS; i++) {
        char tenant[32], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "t%02d", rand() % TENANTS);
        snprintf(body, sizeof(body), "deploy %d", i);
        pc_test_lua_hello(src, sizeof(src), body);
        pc_test_deploy_lua(&env, &ctl, tenant, src);
    }
    pc_test_wait_converged(&env, &ctl, agents, 2);
    /* The lossy agent really lost entries and recovered them by catch-up. */
    assert_true(pc_test_agent_metric(&agents[0], "popcast_agent_test_dropped_total") > 20);
    assert_true(pc_test_agent_metric(&agents[0], "popcast_agent_caught_up_entries_total") > 20);
    /* No seq was applied twice or skipped: applied == head on both. */
    for (int i = 0; i < 2; i++) {
        json_t *s = pc_test_agent_status(&agents[i]);
        assert_int_equal(json_integer_value(json_object_get(s, "applied_seq")), DEPLOYS);
        json_decref(s);
    }
    for (int i = 0; i < 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static void deploy_n(pc_test_env *env, pc_test_controller *c, int n, int tenants, int salt)
{
    for (int i = 0; i < n; i++) {
        char tenant[32], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "t%02d", rand() % tenants);
        snprintf(body, sizeof(body), "deploy %d.%d", salt, i);
        pc_test_lua_hello(src, sizeof(src), body);
        pc_test_deploy_lua(env, c, tenant, src);
    }
}

/* An agent started after 100 deploys converges (it has nothing: it gets a
 * snapshot); an agent that was down for 40 deploys catches up entry by
 * entry; an agent whose data directory was deleted converges through a
 * snapshot. */
static void test_late_joiner_restart_and_wiped_store(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[3];
    memset(agents, 0, sizeof(agents));
    pc_test_agent_start_for(&env, &agents[1], "restarted", &ctl, NULL);
    pc_test_agent_start_for(&env, &agents[2], "wiped", &ctl, NULL);
    srand(7);
    deploy_n(&env, &ctl, 60, 10, 1);
    pc_test_wait_converged(&env, &ctl, &agents[1], 2);

    pc_test_agent_stop(&agents[1]);
    pc_test_agent_stop(&agents[2]);
    pc_test_rm_rf(agents[2].dir);
    deploy_n(&env, &ctl, 40, 10, 2);
    assert_int_equal(pc_test_controller_head(&env, &ctl), 100);

    pc_test_agent_start_for(&env, &agents[0], "late", &ctl, NULL);
    pc_test_agent_start_for(&env, &agents[1], "restarted", &ctl, NULL);
    pc_test_agent_start_for(&env, &agents[2], "wiped", &ctl, NULL);
    pc_test_wait_converged(&env, &ctl, agents, 3);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pc_test_agent_applied_seq(&agents[i]), 100);
    /* The restarted agent fetched exactly the 40 entries it missed. */
    assert_int_equal(pc_test_agent_metric(&agents[1], "popcast_agent_snapshots_installed_total"),
                     0);
    assert_int_equal(pc_test_agent_metric(&agents[1], "popcast_agent_caught_up_entries_total"), 40);
    assert_int_equal(pc_test_agent_metric(&agents[1], "popcast_agent_entries_applied_total"), 40);
    /* In groups, a store transaction for several (tenants repeat within
     * the 40, which ends a group, so there are several). */
    uint64_t groups = pc_test_agent_metric(&agents[1], "popcast_agent_apply_batches_total");
    print_message("the restarted agent applied its 40 entries in %llu groups and the rest alone\n",
                  (unsigned long long)groups);
    assert_true(groups >= 1 && groups < 40);
    /* The late and the wiped agents came in through a snapshot. */
    assert_int_equal(pc_test_agent_metric(&agents[0], "popcast_agent_snapshots_installed_total"),
                     1);
    assert_int_equal(pc_test_agent_metric(&agents[2], "popcast_agent_snapshots_installed_total"),
                     1);
    /* What installing freed goes back to the system: the heap is trimmed
     * after the tenants changed (within the trim interval, 10 s). */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_metric(&agents[0], "popcast_agent_heap_trims_total") < 1 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_true(pc_test_agent_metric(&agents[0], "popcast_agent_heap_trims_total") >= 1);
    /* And all follow the stream afterwards. */
    deploy_n(&env, &ctl, 5, 10, 3);
    pc_test_wait_converged(&env, &ctl, agents, 3);
    for (int i = 0; i < 3; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* The controller is killed (-9) and restarted in the middle of a stream of
 * deploys. Deploys that got no answer may or may not have happened; the
 * agents still end with exactly the controller's state, and no seq was
 * applied twice or skipped. */
static void test_controller_restart_during_stream(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[2];
    memset(agents, 0, sizeof(agents));
    pc_test_agent_start_for(&env, &agents[0], "a", &ctl, NULL);
    pc_test_agent_start_for(&env, &agents[1], "b", &ctl, NULL);
    /* Counted below: every entry applied one by one, none by snapshot. */
    for (int i = 0; i < 2; i++)
        pc_test_agent_wait_subscribed(&agents[i]);
    srand(11);
    int ok = 0;
    for (int i = 0; i < 90; i++) {
        if (i == 30 || i == 60) {
            pc_proc_kill9(ctl.proc);
            pc_proc_free(ctl.proc);
            ctl.proc = NULL;
            /* A deploy while it is down gets no answer. */
            char src[128];
            pc_test_lua_hello(src, sizeof(src), "lost");
            pc_test_deployed d;
            assert_int_equal(
                pc_test_try_deploy(&env, &ctl, "t00", "text/x-lua", src, strlen(src), &d), 0);
            pc_test_controller_start(&env, &ctl, NULL);
        }
        char tenant[32], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "t%02d", rand() % 8);
        snprintf(body, sizeof(body), "stream %d", i);
        pc_test_lua_hello(src, sizeof(src), body);
        pc_test_deployed d;
        if (pc_test_try_deploy(&env, &ctl, tenant, "text/x-lua", src, strlen(src), &d) == 201)
            ok++;
    }
    assert_int_equal(ok, 90);
    uint64_t head = pc_test_controller_head(&env, &ctl);
    assert_int_equal(head, 90);
    pc_test_wait_converged(&env, &ctl, agents, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pc_test_agent_applied_seq(&agents[i]), head);
        /* Every seq applied exactly once by this agent process. */
        assert_int_equal(pc_test_agent_metric(&agents[i], "popcast_agent_entries_applied_total"),
                         head);
        assert_int_equal(
            pc_test_agent_metric(&agents[i], "popcast_agent_snapshots_installed_total"), 0);
    }
    for (int i = 0; i < 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* A 20 MiB bundle is over the pub/sub inline limit (1 MiB): it is
 * announced, every agent fetches it in chunks, and serves it. */
static void test_large_bundle_reaches_every_agent(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[3];
    memset(agents, 0, sizeof(agents));
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "big%d", i);
        pc_test_agent_start_for(&env, &agents[i], id, &ctl, NULL);
    }
    char dir[300], path[400];
    pc_test_tmpdir(dir, sizeof(dir), "bundle");
    const char *main_lua = "return function(req) return 'big bundle' end";
    snprintf(path, sizeof(path), "%s/main.lua", dir);
    pc_test_write_file(path, main_lua, strlen(main_lua));
    size_t big_len = 20u << 20;
    uint8_t *big = malloc(big_len);
    assert_non_null(big);
    pc_test_fill_random(big, big_len, 0x9e3779b97f4a7c15ULL);
    snprintf(path, sizeof(path), "%s/assets.bin", dir);
    pc_test_write_file(path, big, big_len);
    free(big);
    uint8_t *archive = NULL;
    size_t alen = 0;
    assert_int_equal(pc_bundle_pack_dir(dir, "main.lua", 64u << 20, &archive, &alen, NULL), PC_OK);
    assert_true(alen > big_len);
    pc_test_deployed d;
    assert_int_equal(
        pc_test_try_deploy(&env, &ctl, "big", "application/vnd.popcast.bundle", archive, alen, &d),
        201);
    free(archive);
    pc_test_wait_converged(&env, &ctl, agents, 3);
    for (int i = 0; i < 3; i++) {
        uint64_t version = 0;
        char body[64];
        assert_int_equal(pc_test_edge_get(&agents[i], "big", "/", &version, body, sizeof(body)),
                         200);
        assert_int_equal(version, d.version);
        assert_string_equal(body, "big bundle");
        /* It came in chunks (1 MiB each), not on pub/sub. */
        assert_true(pc_test_agent_metric(&agents[i], "popcast_agent_bundle_chunks_total") >= 20);
        pc_test_agent_stop(&agents[i]);
    }
    pc_test_rm_rf(dir);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropped_messages_converge),
        cmocka_unit_test(test_late_joiner_restart_and_wiped_store),
        cmocka_unit_test(test_controller_restart_during_stream),
        cmocka_unit_test(test_large_bundle_reaches_every_agent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
