/* test_target.c - which agents a version goes live on (common/target.h):
 * names by agent id and PoP, a fraction that every party computes alike
 * and that only grows with its per mille, everyone, nobody, and the
 * checks that refuse a malformed target. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "target.h"

static char *agents[] = {"edge-1", "edge-7"}, *pops[] = {"ams"};

static void test_names_by_agent_and_pop(void **state)
{
    Popcast__Target t = POPCAST__TARGET__INIT;
    assert_true(pc_target_names(NULL, "app", 3, "edge-9", "fra"));
    assert_true(pc_target_is_everyone(NULL));
    assert_false(pc_target_names(&t, "app", 3, "edge-1", "ams")); /* nobody */
    assert_false(pc_target_is_everyone(&t));
    t.agents = agents;
    t.n_agents = 2;
    t.pops = pops;
    t.n_pops = 1;
    assert_true(pc_target_names(&t, "app", 3, "edge-7", "fra"));
    assert_true(pc_target_names(&t, "app", 3, "edge-9", "ams"));
    assert_false(pc_target_names(&t, "app", 3, "edge-9", "fra"));
    assert_false(pc_target_names(&t, "app", 3, "edge-", "am")); /* whole names only */
    t.permille = 1000;
    assert_true(pc_target_is_everyone(&t));
    assert_true(pc_target_names(&t, "app", 3, "edge-9", "fra"));
}

/* A fraction: the same answer every time, a superset for a larger per
 * mille of the same version, about the share asked for, and another set
 * for another version (so one tenant's canaries are not always the same
 * machines). */
static void test_fraction(void **state)
{
    Popcast__Target small = POPCAST__TARGET__INIT, large = POPCAST__TARGET__INIT;
    small.permille = 100;
    large.permille = 500;
    int n_small = 0, n_large = 0, moved = 0;
    char id[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof(id), "edge-%d", i);
        bool in_small = pc_target_names(&small, "app", 3, id, "p");
        bool in_large = pc_target_names(&large, "app", 3, id, "p");
        assert_int_equal(in_small, pc_target_names(&small, "app", 3, id, "p"));
        if (in_small && !in_large)
            fail_msg("%s is in the 10%% but not in the 50%%", id);
        n_small += in_small;
        n_large += in_large;
        moved += in_small != pc_target_names(&small, "app", 4, id, "p");
        assert_true(pc_target_rank("app", 3, id) < 1000);
    }
    /* Binomial(2000, 0.1): mean 200, sd 13.4; (2000, 0.5): 1000, sd 22. */
    if (n_small < 140 || n_small > 260 || n_large < 900 || n_large > 1100)
        fail_msg("10%% named %d of 2000, 50%% named %d", n_small, n_large);
    assert_true(moved > 100);
}

static void test_check(void **state)
{
    Popcast__Target t = POPCAST__TARGET__INIT;
    pc_err err;
    assert_int_equal(pc_target_check(NULL, &err), PC_OK);
    assert_int_equal(pc_target_check(&t, &err), PC_OK);
    t.permille = 1001;
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID);
    t.permille = 0;
    char *bad[] = {"edge 1"};
    t.agents = bad;
    t.n_agents = 1;
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID);
    t.n_agents = 0;
    t.pops = bad;
    t.n_pops = 1;
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID);
    char *many[PC_TARGET_MAX_NAMES + 1];
    for (size_t i = 0; i <= PC_TARGET_MAX_NAMES; i++)
        many[i] = "edge-1";
    t.pops = many;
    t.n_pops = PC_TARGET_MAX_NAMES;
    assert_int_equal(pc_target_check(&t, &err), PC_OK);
    t.n_pops = PC_TARGET_MAX_NAMES + 1;
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID);
}

/* Splits: which targets split, which keys are valid, and a rank every
 * party computes alike that spreads values evenly and moves with the
 * version (so one tenant's canary users are not always the same). */
static void test_split(void **state)
{
    Popcast__Target t = POPCAST__TARGET__INIT;
    pc_err err;
    assert_false(pc_target_splits(NULL));
    assert_false(pc_target_splits(&t));
    t.split_permille = 1000;
    assert_false(pc_target_splits(&t));
    t.split_permille = 300;
    assert_true(pc_target_splits(&t));
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID); /* a split needs a key */
    t.split_key = "x-user-id";
    assert_int_equal(pc_target_check(&t, &err), PC_OK);
    t.split_key = "X-User";
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID);
    t.split_permille = 1001;
    t.split_key = "x-user";
    assert_int_equal(pc_target_check(&t, &err), PC_E_INVALID);
    assert_true(pc_target_split_key_valid("cookie:session_ID.2"));
    assert_false(pc_target_split_key_valid("cookie:"));
    assert_false(pc_target_split_key_valid("cookie:a b"));
    assert_false(pc_target_split_key_valid(""));
    assert_false(pc_target_split_key_valid("x user"));
    int below = 0, moved = 0;
    char v[32];
    for (int i = 0; i < 2000; i++) {
        snprintf(v, sizeof(v), "user-%d", i);
        unsigned r = pc_target_split_rank("web", 7, v, strlen(v));
        assert_true(r < 1000);
        assert_int_equal(r, pc_target_split_rank("web", 7, v, strlen(v)));
        below += r < 300;
        moved += (r < 300) != (pc_target_split_rank("web", 8, v, strlen(v)) < 300);
    }
    if (below < 520 || below > 680) /* binomial(2000, 0.3): mean 600, sd 20.5 */
        fail_msg("%d of 2000 below 300", below);
    assert_true(moved > 200);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_by_agent_and_pop),
        cmocka_unit_test(test_fraction),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
