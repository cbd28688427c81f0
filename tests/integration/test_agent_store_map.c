/* test_agent_store_map.c - store_map_size: the agent's store starts with
 * the map (and, writing through it, the disk reservation) asked for, and
 * grows past it as tenants come; a value out of bounds or not a size is
 * refused before anything is created. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "harness.h"

#define MIB (1024 * 1024)

static long long data_file_size(const pc_test_agent *a)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/data.mdb", a->dir);
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static void test_small_map_grows_with_tenants(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    const char *small[] = {"--store-map-size", "1MiB", NULL};
    pc_test_agent_start_for(&env, &agent, "small", &ctl, small);
    /* Written through its map, the file takes the map's size at once. */
    assert_int_equal(data_file_size(&agent), 1 * MIB);
    pc_test_agent_wait_subscribed(&agent);
    assert_int_equal(pc_test_deploy_tenants(&env, &ctl, 0, 1500, 4), 0);
    pc_test_wait_converged(&env, &ctl, &agent, 1);
    long long grown = data_file_size(&agent);
    print_message("1500 tenants: the data file grew from 1 MiB to %lld bytes\n", grown);
    assert_true(grown >= 2 * MIB);
    /* A restart opens the grown store (LMDB maps it at the size in use,
     * at least) and serves every tenant from it. */
    pc_test_agent_stop(&agent);
    pc_test_agent_start_for(&env, &agent, "small", &ctl, small);
    assert_true(data_file_size(&agent) > 1 * MIB);
    pc_test_wait_converged(&env, &ctl, &agent, 1);
    /* ... from the store, not from the controller again. */
    assert_int_equal(pc_test_agent_metric(&agent, "popcast_agent_snapshots_installed_total"), 0);
    assert_int_equal(pc_test_agent_metric(&agent, "popcast_agent_caught_up_entries_total"), 0);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static void test_bad_map_sizes_refused(void **state)
{
    (void)state;
    static const struct {
        const char *value, *message;
    } cases[] = {
        {"512KiB", "store_map_size: 524288 is outside [1048576, 68719476736]"},
        {"128GiB", "store_map_size: 137438953472 is outside [1048576, 68719476736]"},
        {"lots", "store_map_size: 'lots' is not a size"},
        {"-1MiB", "store_map_size: '-1MiB' is not a size"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *args[] = {"--store-map-size", cases[i].value, NULL};
        pc_test_expect_refused_start("POPCAST_AGENT_BIN", args, cases[i].message);
    }
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_map_grows_with_tenants),
        cmocka_unit_test(test_bad_map_sizes_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
