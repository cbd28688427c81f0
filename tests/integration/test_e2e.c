/* test_e2e.c - one deploy end to end, on real processes: a controller and
 * three agents on loopback. Deploys, a second version, a rollback, and an
 * agent restarted with no controller reachable serving from LMDB; the
 * target a rollback that names no version goes back to. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define AGENTS 3

static void expect_everywhere(pc_test_agent *agents, const char *tenant, uint64_t version,
                              const char *body)
{
    for (int i = 0; i < AGENTS; i++) {
        if (!pc_test_wait_version(&agents[i], tenant, version, PC_TEST_CONVERGE_TIMEOUT_MS)) {
            pc_proc_dump_log(agents[i].proc);
            fail_msg("agent %s does not serve %s version %llu", agents[i].id, tenant,
                     (unsigned long long)version);
        }
        char got[256];
        uint64_t v = 0;
        assert_int_equal(pc_test_edge_get(&agents[i], tenant, "/", &v, got, sizeof(got)), 200);
        assert_int_equal(v, version);
        assert_string_equal(got, body);
    }
}

static void test_deploy_update_rollback_restart(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[AGENTS];
    memset(agents, 0, sizeof(agents));
    for (int i = 0; i < AGENTS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "agent-%d", i);
        pc_test_agent_start_for(&env, &agents[i], id, &ctl, NULL);
    }

    /* Before any deploy the tenant is unknown everywhere: 404, no version. */
    uint64_t v = 99;
    assert_int_equal(pc_test_edge_get(&agents[0], "acme", "/", &v, NULL, 0), 404);
    assert_int_equal(v, 0);

    char src[512];
    pc_test_lua_hello(src, sizeof(src), "hello from v1");
    uint64_t v1 = pc_test_deploy_lua(&env, &ctl, "acme", src);
    assert_int_equal(v1, 1);
    expect_everywhere(agents, "acme", 1, "hello from v1");

    pc_test_lua_hello(src, sizeof(src), "hello from v2");
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "acme", src);
    assert_int_equal(v2, 2);
    expect_everywhere(agents, "acme", 2, "hello from v2");

    /* A second tenant is independent of the first. */
    pc_test_lua_hello(src, sizeof(src), "other tenant");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "other", src), 1);
    expect_everywhere(agents, "other", 1, "other tenant");
    expect_everywhere(agents, "acme", 2, "hello from v2");

    /* Rollback: a new version (3) whose content is version 1's. */
    pc_http_result r;
    const char *body = "{\"version\": 1}";
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/tenants/acme/rollback",
                                 "application/json", body, strlen(body), &r),
                     201);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(json_integer_value(json_object_get(doc, "version")), 3);
    assert_int_equal(json_integer_value(json_object_get(doc, "rollback_of")), 1);
    json_decref(doc);
    pc_http_result_free(&r);
    expect_everywhere(agents, "acme", 3, "hello from v1");

    /* The controller's view: three versions, the active one is 3. */
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/tenants/acme", NULL, NULL, 0, &r), 200);
    doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(json_integer_value(json_object_get(doc, "active_version")), 3);
    assert_int_equal(json_array_size(json_object_get(doc, "versions")), 3);
    json_decref(doc);
    pc_http_result_free(&r);

    /* Static stability: with no controller, a restarted agent serves the
     * latest version from its own LMDB at once. */
    pc_test_controller_stop(&ctl);
    pc_test_agent_stop(&agents[1]);
    pc_test_agent_start_for(&env, &agents[1], agents[1].id, &ctl, NULL);
    char got[256];
    assert_int_equal(pc_test_edge_get(&agents[1], "acme", "/", &v, got, sizeof(got)), 200);
    assert_int_equal(v, 3);
    assert_string_equal(got, "hello from v1");
    assert_int_equal(pc_test_edge_get(&agents[1], "other", "/", &v, got, sizeof(got)), 200);
    assert_int_equal(v, 1);

    /* Same after kill -9. */
    pc_proc_kill9(agents[2].proc);
    pc_proc_free(agents[2].proc);
    pc_test_agent_start_for(&env, &agents[2], agents[2].id, &ctl, NULL);
    assert_int_equal(pc_test_edge_get(&agents[2], "acme", "/", &v, got, sizeof(got)), 200);
    assert_int_equal(v, 3);

    for (int i = 0; i < AGENTS; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_env_cleanup(&env);
}

static void test_delete_stops_serving(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "agent-del", &ctl, NULL);

    char src[512];
    pc_test_lua_hello(src, sizeof(src), "soon gone");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "gone", src), 1);
    assert_true(pc_test_wait_version(&agent, "gone", 1, PC_TEST_CONVERGE_TIMEOUT_MS));

    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "DELETE", "/v1/tenants/gone", NULL, NULL, 0, &r), 200);
    pc_http_result_free(&r);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    int status = 200;
    while (status != 404 && pc_test_now_ms() < deadline) {
        status = pc_test_edge_get(&agent, "gone", "/", NULL, NULL, 0);
        pc_test_sleep_ms(25);
    }
    assert_int_equal(status, 404);

    /* Versions are never reused: a new deploy after a delete is version 3. */
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "gone", src), 3);
    assert_true(pc_test_wait_version(&agent, "gone", 3, PC_TEST_CONVERGE_TIMEOUT_MS));

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* Waits (through the API) until the rollout of tenant's version ends, and
 * checks how: "complete" or "nacked". */
static void expect_rollout(pc_test_env *env, pc_test_controller *ctl, const char *tenant,
                           uint64_t version, const char *want)
{
    char path[256];
    snprintf(path, sizeof(path), "/v1/tenants/%s/versions/%llu/rollout?wait=%d", tenant,
             (unsigned long long)version, PC_TEST_CONVERGE_TIMEOUT_MS);
    pc_http_result r;
    assert_int_equal(pc_test_api(env, ctl, "GET", path, NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    const char *got = json_string_value(json_object_get(doc, "wait"));
    if (got == NULL || strcmp(got, want) != 0)
        fail_msg("%s v%llu: rollout ended \"%s\", expected \"%s\": %.*s", tenant,
                 (unsigned long long)version, got ? got : "(none)", want, (int)r.body_len,
                 (const char *)r.body);
    json_decref(doc);
    pc_http_result_free(&r);
}

/* POST /v1/tenants/TENANT/rollback with body; returns the status, and the
 * answer in *doc (caller frees). */
static int rollback(pc_test_env *env, pc_test_controller *ctl, const char *tenant, const char *body,
                    json_t **doc)
{
    char path[256];
    snprintf(path, sizeof(path), "/v1/tenants/%s/rollback", tenant);
    pc_http_result r;
    int status = pc_test_api(env, ctl, "POST", path, "application/json", body, strlen(body), &r);
    *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(*doc);
    pc_http_result_free(&r);
    return status;
}

/* A rollback that names no version goes back to the newest earlier
 * version every agent showed live and none nacked: past a nacked one, not
 * back to versions a rollback stepped over, and never to one no agent
 * proved. */
static void test_rollback_default_target(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[2];
    pc_test_agents_start_for(&env, agents, 2, "agent-", &ctl, NULL);
    const char *bad = "error('boom at load')\n";
    char src[512];

    /* v1 good, v2 fails to load on every agent, v3 good. */
    pc_test_lua_hello(src, sizeof(src), "one");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "pick", src), 1);
    expect_rollout(&env, &ctl, "pick", 1, "complete");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "pick", bad), 2);
    expect_rollout(&env, &ctl, "pick", 2, "nacked");
    pc_test_lua_hello(src, sizeof(src), "three");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "pick", src), 3);
    expect_rollout(&env, &ctl, "pick", 3, "complete");

    json_t *doc = NULL;
    assert_int_equal(rollback(&env, &ctl, "pick", "{}", &doc), 201);
    assert_int_equal(json_integer_value(json_object_get(doc, "version")), 4);
    assert_int_equal(json_integer_value(json_object_get(doc, "rollback_of")), 1);
    json_decref(doc);
    for (int i = 0; i < 2; i++) {
        assert_true(pc_test_wait_version(&agents[i], "pick", 4, PC_TEST_CONVERGE_TIMEOUT_MS));
        char got[64];
        uint64_t v = 0;
        assert_int_equal(pc_test_edge_get(&agents[i], "pick", "/", &v, got, sizeof(got)), 200);
        assert_string_equal(got, "one");
    }
    /* Again: v3 and v2 were rolled back over and v1's content is current,
     * so there is nowhere further back to go. */
    assert_int_equal(rollback(&env, &ctl, "pick", "{\"message\": \"again\"}", &doc), 404);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "error"), "code")),
                        "not_found");
    json_decref(doc);

    /* The only earlier version was nacked: nothing is proven, nothing is
     * made, and the answer says why. */
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "unproven", bad), 1);
    expect_rollout(&env, &ctl, "unproven", 1, "nacked");
    pc_test_lua_hello(src, sizeof(src), "two");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "unproven", src), 2);
    expect_rollout(&env, &ctl, "unproven", 2, "complete");
    assert_int_equal(rollback(&env, &ctl, "unproven", "{}", &doc), 409);
    json_t *err = json_object_get(doc, "error");
    assert_string_equal(json_string_value(json_object_get(err, "code")), "unproven");
    const char *msg = json_string_value(json_object_get(err, "message"));
    assert_non_null(strstr(msg, "v1: nacked or quarantined on 2 of 2 agents"));
    json_decref(doc);
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/tenants/unproven", NULL, NULL, 0, &r),
                     200);
    doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(doc, "active_version")), 2);
    assert_int_equal(json_array_size(json_object_get(doc, "versions")), 2);
    json_decref(doc);
    pc_http_result_free(&r);
    /* Named, the version is rolled back to all the same: the operator's call. */
    assert_int_equal(rollback(&env, &ctl, "unproven", "{\"version\": 2}", &doc), 201);
    json_decref(doc);

    for (int i = 0; i < 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deploy_update_rollback_restart),
        cmocka_unit_test(test_delete_stops_serving),
        cmocka_unit_test(test_rollback_default_target),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
