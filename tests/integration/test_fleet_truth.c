/* test_fleet_truth.c - what an operator reads about the fleet is true:
 * an agent whose data directory was wiped is heard again (its report
 * counters keep growing); ... */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "harness.h"

static json_t *api_json(pc_test_env *env, pc_test_controller *c, const char *path, int want)
{
    pc_http_result r;
    int status = pc_test_api(env, c, "GET", path, NULL, NULL, 0, &r);
    if (status != want)
        fail_msg("GET %s: expected %d, got %d: %s", path, want, status,
                 r.body ? (char *)r.body : "");
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_non_null(doc);
    return doc;
}

/* The rollout of tenant's version, waiting up to wait_ms for it to end;
 * returns how the wait ended. */
static void expect_rollout_end(pc_test_env *env, pc_test_controller *c, const char *tenant,
                               uint64_t version, const char *want)
{
    char url[160];
    snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%llu/rollout?wait=30000", tenant,
             (unsigned long long)version);
    json_t *doc = api_json(env, c, url, 200);
    const char *why = json_string_value(json_object_get(doc, "wait"));
    if (why == NULL || strcmp(why, want) != 0) {
        char *dump = json_dumps(doc, JSON_COMPACT);
        fail_msg("rollout of %s v%llu ended %s, expected %s: %s", tenant,
                 (unsigned long long)version, why ? why : "(none)", want, dump);
    }
    json_decref(doc);
}

/* The fleet entry of agent id (a new reference), or NULL. */
static json_t *fleet_agent(pc_test_env *env, pc_test_controller *c, const char *id)
{
    json_t *fleet = api_json(env, c, "/v1/fleet", 200);
    json_t *found = NULL;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(fleet, "agents"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), id) == 0)
            found = json_incref(a);
    }
    json_decref(fleet);
    return found;
}

/* An agent that restarted, then lost its data directory, then started
 * again (with its identity key kept outside the data directory, as
 * docs/security.md recommends): its reports are accepted again, so the
 * fleet shows it current and a new deploy's rollout completes. Before the
 * report epoch came from the clock, the wiped agent's counters started
 * over below what the controller had seen: every report was refused as a
 * replay, for good. */
static void test_wiped_agent_is_heard_again(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    char keydir[300], keypath[400];
    pc_test_tmpdir(keydir, sizeof(keydir), "identity");
    snprintf(keypath, sizeof(keypath), "%s/agent.key", keydir);
    const char *aflags[] = {"--identity-key", keypath, NULL};
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-w", &ctl, aflags);
    char src[128];
    pc_test_lua_hello(src, sizeof(src), "one");
    uint64_t v1 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v1, "complete");

    /* A restart: a new epoch from the stored one. */
    pc_test_agent_stop(&agent);
    pc_test_agent_start_for(&env, &agent, "edge-w", &ctl, aflags);
    pc_test_lua_hello(src, sizeof(src), "two");
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v2, "complete");

    /* The data directory is wiped; the agent starts from nothing. */
    pc_test_agent_stop(&agent);
    pc_test_rm_rf(agent.dir);
    assert_int_equal(mkdir(agent.dir, 0700), 0);
    pc_test_agent_start_for(&env, &agent, "edge-w", &ctl, aflags);
    assert_true(pc_test_wait_version(&agent, "app", v2, PC_TEST_CONVERGE_TIMEOUT_MS));
    assert_int_equal(pc_test_agent_metric(&agent, "popcast_agent_snapshots_installed_total"), 1);
    pc_test_lua_hello(src, sizeof(src), "three");
    uint64_t v3 = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_rollout_end(&env, &ctl, "app", v3, "complete");
    json_t *a = fleet_agent(&env, &ctl, "edge-w");
    assert_non_null(a);
    assert_int_equal(json_integer_value(json_object_get(a, "applied_seq")), 3);
    assert_int_equal(json_integer_value(json_object_get(a, "lag")), 0);
    assert_false(json_is_true(json_object_get(a, "gone")));
    json_decref(a);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_rm_rf(keydir);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wiped_agent_is_heard_again),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
