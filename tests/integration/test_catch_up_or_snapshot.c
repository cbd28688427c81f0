/* test_catch_up_or_snapshot.c - an agent that is behind gets the entries
 * it missed while they cost less than a snapshot, and a snapshot when
 * they would cost more.
 *
 * A snapshot carries one manifest per tenant; catch-up one per entry
 * missed. The controller answers snapshot_required only past
 * snapshot_lag AND past its tenant count (docs/protocol.md): with many
 * tenants, an agent a little more than snapshot_lag behind took a whole
 * table's snapshot, fell behind again while installing it, and took
 * another. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "harness.h"

/* Tenants in the table, and snapshot_lag: well below it. */
#define TENANTS      64
#define SNAPSHOT_LAG "16"

/* Restarts the agent after it missed the writes made meanwhile, waits
 * until it holds what the controller holds, and returns how many
 * snapshots it installed to get there. */
static uint64_t restart_and_converge(pc_test_env *env, pc_test_controller *ctl,
                                     pc_test_agent *agent, uint64_t *caught_up)
{
    pc_test_agent_start_for(env, agent, "behind", ctl, NULL);
    pc_test_wait_converged(env, ctl, agent, 1);
    assert_int_equal(pc_test_agent_applied_seq(agent), pc_test_controller_head(env, ctl));
    *caught_up = pc_test_agent_metric(agent, "popcast_agent_caught_up_entries_total");
    return pc_test_agent_metric(agent, "popcast_agent_snapshots_installed_total");
}

/* A controller started with flags and an agent that holds TENANTS
 * tenants from it. */
static void start_with_tenants(pc_test_env *env, pc_test_controller *ctl, pc_test_agent *agent,
                               const char *const *ctl_flags)
{
    pc_test_env_init(env);
    pc_test_controller_start(env, ctl, ctl_flags);
    pc_test_agent_start_for(env, agent, "behind", ctl, NULL);
    pc_test_agent_wait_subscribed(agent);
    assert_int_equal(pc_test_deploy_tenants(env, ctl, 0, TENANTS, 4), 0);
    pc_test_wait_converged(env, ctl, agent, 1);
}

static void test_entries_while_cheaper_than_a_snapshot(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl = {0};
    pc_test_agent agent = {0};
    const char *ctl_flags[] = {"--snapshot-lag", SNAPSHOT_LAG, NULL};
    start_with_tenants(&env, &ctl, &agent, ctl_flags);

    /* 40 entries missed: past snapshot_lag (16), short of the 64 tenants
     * a snapshot would carry. */
    pc_test_agent_stop(&agent);
    uint64_t before = pc_test_controller_head(&env, &ctl);
    assert_int_equal(pc_test_deploy_tenants(&env, &ctl, 0, 40, 4), 0);
    uint64_t missed = pc_test_controller_head(&env, &ctl) - before;
    uint64_t caught_up = 0;
    uint64_t snapshots = restart_and_converge(&env, &ctl, &agent, &caught_up);
    print_message("missed %llu entries of %d tenants: %llu snapshots, %llu entries caught up\n",
                  (unsigned long long)missed, TENANTS, (unsigned long long)snapshots,
                  (unsigned long long)caught_up);
    assert_int_equal(missed, 40);
    assert_int_equal(snapshots, 0);
    assert_int_equal(caught_up, missed);

    /* 128 entries missed: more than the table has tenants. */
    pc_test_agent_stop(&agent);
    before = pc_test_controller_head(&env, &ctl);
    assert_int_equal(pc_test_deploy_tenants(&env, &ctl, 0, TENANTS, 4), 0);
    assert_int_equal(pc_test_deploy_tenants(&env, &ctl, 0, TENANTS, 4), 0);
    missed = pc_test_controller_head(&env, &ctl) - before;
    snapshots = restart_and_converge(&env, &ctl, &agent, &caught_up);
    print_message("missed %llu entries of %d tenants: %llu snapshots, %llu entries caught up\n",
                  (unsigned long long)missed, TENANTS, (unsigned long long)snapshots,
                  (unsigned long long)caught_up);
    assert_int_equal(missed, 2 * TENANTS);
    assert_int_equal(snapshots, 1);
    assert_int_equal(caught_up, 0);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* snapshot_lag_tenants=false: snapshot_lag alone decides, so the same
 * 40 missed entries of 64 tenants bring a snapshot. */
static void test_lag_alone_when_tenants_are_not_counted(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_controller ctl = {0};
    pc_test_agent agent = {0};
    const char *ctl_flags[] = {"--snapshot-lag", SNAPSHOT_LAG, "--snapshot-lag-tenants=false",
                               NULL};
    start_with_tenants(&env, &ctl, &agent, ctl_flags);

    pc_test_agent_stop(&agent);
    uint64_t before = pc_test_controller_head(&env, &ctl);
    assert_int_equal(pc_test_deploy_tenants(&env, &ctl, 0, 40, 4), 0);
    assert_int_equal(pc_test_controller_head(&env, &ctl) - before, 40);
    uint64_t caught_up = 0;
    assert_int_equal(restart_and_converge(&env, &ctl, &agent, &caught_up), 1);
    assert_int_equal(caught_up, 0);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* A value that is not a boolean is refused at start, before the data
 * directory is created. */
static void test_bad_value_refused(void **state)
{
    (void)state;
    const char *maybe[] = {"--snapshot-lag-tenants=maybe", NULL};
    pc_test_expect_refused_start("POPCAST_CONTROLLER_BIN", maybe,
                                 "snapshot_lag_tenants: 'maybe' is not true or false");
    const char *number[] = {"--snapshot-lag-tenants=1x", NULL};
    pc_test_expect_refused_start("POPCAST_CONTROLLER_BIN", number,
                                 "snapshot_lag_tenants: '1x' is not true or false");
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entries_while_cheaper_than_a_snapshot),
        cmocka_unit_test(test_lag_alone_when_tenants_are_not_counted),
        cmocka_unit_test(test_bad_value_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
