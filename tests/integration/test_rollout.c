/* test_rollout.c - "where is it live": status reports, the rollout and
 * fleet APIs, waits, nacks with the runtime's error, `popcast deploy
 * --wait`, agents that go away, and staleness when heartbeats stop. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static long long summary(json_t *doc, const char *key)
{
    return (long long)json_integer_value(json_object_get(json_object_get(doc, "summary"), key));
}

/* The fleet entry of agent id, or NULL. Borrowed from doc. */
static json_t *fleet_agent(json_t *fleet, const char *id)
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

/* Polls the fleet until agent id's field is true (or false). */
static bool wait_fleet_flag(pc_test_env *env, pc_test_controller *c, const char *id,
                            const char *field, bool want)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline) {
        json_t *fleet = api_json(env, c, "/v1/fleet", 200);
        json_t *a = fleet_agent(fleet, id);
        bool ok = a != NULL && json_is_true(json_object_get(a, field)) == want;
        json_decref(fleet);
        if (ok)
            return true;
        pc_test_sleep_ms(100);
    }
    return false;
}

static void test_rollout_nack_fleet_and_gone(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    const char *cflags[] = {"--gone-after-ms", "3000", "--report-stale-ms", "1500", NULL};
    pc_test_controller_start(&env, &ctl, cflags);
    pc_test_agent agents[3];
    memset(agents, 0, sizeof(agents));
    const char *fra[] = {"--pop", "fra", NULL};
    const char *ams[] = {"--pop", "ams", NULL};
    pc_test_agent_start_for(&env, &agents[0], "fra-1", &ctl, fra);
    pc_test_agent_start_for(&env, &agents[1], "fra-2", &ctl, fra);
    pc_test_agent_start_for(&env, &agents[2], "ams-1", &ctl, ams);

    /* Every agent reports before anything is deployed. */
    for (int i = 0; i < 3; i++)
        assert_true(wait_fleet_flag(&env, &ctl, agents[i].id, "gone", false));

    /* popcast deploy --wait: waits, shows progress, says where it is live. */
    char dir[300], path[400], out[8192];
    pc_test_tmpdir(dir, sizeof(dir), "cli");
    snprintf(path, sizeof(path), "%s/good.lua", dir);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "good one");
    pc_test_write_file(path, src, strlen(src));
    const char *deploy_good[] = {"deploy", "app",       path, "--direct",
                                 "--wait", "--timeout", "60", NULL};
    int rc = pc_test_cli(&env, &ctl, deploy_good, out, sizeof(out));
    if (rc != 0 || strstr(out, "live: app v1 is live on 3/3 agents") == NULL)
        fail_msg("deploy --wait: exit %d:\n%s", rc, out);
    for (int i = 0; i < 3; i++)
        assert_true(pc_test_wait_version(&agents[i], "app", 1, PC_TEST_CONVERGE_TIMEOUT_MS));

    json_t *doc = api_json(&env, &ctl, "/v1/tenants/app/versions/1/rollout", 200);
    assert_int_equal(summary(doc, "total"), 3);
    assert_int_equal(summary(doc, "live"), 3);
    assert_true(json_is_true(json_object_get(json_object_get(doc, "summary"), "complete")));
    json_t *pops = json_object_get(doc, "pops");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(pops, "fra"), "live")), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(pops, "ams"), "live")), 1);
    json_decref(doc);
    /* The same rollout by seq. */
    doc = api_json(&env, &ctl, "/v1/rollout/1", 200);
    assert_int_equal(summary(doc, "live"), 3);
    json_decref(doc);

    /* A bundle Lua parses but cannot run: every agent keeps v1 live and
     * nacks v2 with the Lua error; the CLI and the API say so. */
    snprintf(path, sizeof(path), "%s/bad.lua", dir);
    const char *bad = "error('boom at top level')\nreturn function() end\n";
    pc_test_write_file(path, bad, strlen(bad));
    const char *deploy_bad[] = {"deploy", "app",       path, "--direct",
                                "--wait", "--timeout", "60", NULL};
    rc = pc_test_cli(&env, &ctl, deploy_bad, out, sizeof(out));
    /* The wait ends at the first nack: one agent's refusal is enough to
     * know the version will not be live everywhere. Exit 3: refused. */
    if (rc != 3 || strstr(out, "refused: app v2 was nacked by") == NULL ||
        strstr(out, "boom at top level") == NULL || strstr(out, "runtime_error") == NULL)
        fail_msg("deploy --wait of a bad bundle: exit %d:\n%s", rc, out);
    doc = api_json(&env, &ctl, "/v1/tenants/app/versions/2/rollout?wait=30000", 200);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "nacked");
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (summary(doc, "nacked") < 3 && pc_test_now_ms() < deadline) {
        json_decref(doc);
        pc_test_sleep_ms(100);
        doc = api_json(&env, &ctl, "/v1/tenants/app/versions/2/rollout", 200);
    }
    assert_int_equal(summary(doc, "nacked"), 3);
    assert_int_equal(summary(doc, "live"), 0);
    assert_int_equal(summary(doc, "applied"), 3);
    assert_true(json_is_true(json_object_get(json_object_get(doc, "summary"), "failed")));
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "agents"), i, a)
    {
        assert_string_equal(json_string_value(json_object_get(a, "state")), "nacked");
        assert_string_equal(json_string_value(json_object_get(a, "reason")), "runtime_error");
        assert_non_null(
            strstr(json_string_value(json_object_get(a, "detail")), "boom at top level"));
        assert_int_equal(json_integer_value(json_object_get(a, "live_version")), 1);
    }
    json_decref(doc);
    for (int k = 0; k < 3; k++) {
        uint64_t version = 0;
        char body[64];
        assert_int_equal(pc_test_edge_get(&agents[k], "app", "/", &version, body, sizeof(body)),
                         200);
        assert_int_equal(version, 1);
        assert_string_equal(body, "good one");
    }

    /* The CLI's rollout and fleet views. */
    const char *rollout_cmd[] = {"rollout", "app", "2", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, rollout_cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "nacked"));
    assert_non_null(strstr(out, "ams-1"));
    const char *fleet_cmd[] = {"fleet", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, fleet_cmd, out, sizeof(out)), 0);
    assert_non_null(strstr(out, "fra-2"));

    /* An agent that goes away: stale, then gone, then out of the count. */
    pc_test_agent_stop(&agents[2]);
    assert_true(wait_fleet_flag(&env, &ctl, "ams-1", "stale", true));
    assert_true(wait_fleet_flag(&env, &ctl, "ams-1", "gone", true));
    json_t *fleet = api_json(&env, &ctl, "/v1/fleet", 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(fleet, "counts"), "gone")),
                     1);
    json_decref(fleet);
    pc_test_lua_hello(src, sizeof(src), "third");
    uint64_t v3 = pc_test_deploy_lua(&env, &ctl, "app", src);
    char url[128];
    snprintf(url, sizeof(url), "/v1/tenants/app/versions/%llu/rollout?wait=30000",
             (unsigned long long)v3);
    doc = api_json(&env, &ctl, url, 200);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "complete");
    assert_int_equal(summary(doc, "total"), 2);
    assert_int_equal(summary(doc, "live"), 2);
    json_decref(doc);

    /* Bad wait parameters are 400s; unknown versions 404. */
    json_decref(api_json(&env, &ctl, "/v1/tenants/app/versions/1/rollout?wait=abc", 400));
    json_decref(api_json(&env, &ctl, "/v1/tenants/app/versions/1/rollout?fraction=0", 400));
    json_decref(api_json(&env, &ctl, "/v1/tenants/app/versions/1/rollout?fraction=1.5", 400));
    json_decref(api_json(&env, &ctl, "/v1/tenants/app/versions/99/rollout", 404));
    json_decref(api_json(&env, &ctl, "/v1/rollout/999", 404));

    for (int k = 0; k < 2; k++)
        pc_test_agent_stop(&agents[k]);
    pc_test_rm_rf(dir);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static bool wait_agent_stale(pc_test_agent *a, bool want)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline) {
        json_t *s = pc_test_agent_status(a);
        bool ok = s != NULL && json_is_true(json_object_get(s, "stale")) == want &&
                  pc_test_agent_metric(a, "popcast_agent_stale") == (want ? 1u : 0u);
        json_decref(s);
        if (ok)
            return true;
        pc_test_sleep_ms(100);
    }
    return false;
}

/* Heartbeats stop (the controller is frozen, then runs without them): the
 * agent reports itself stale, locally and to the controller, and keeps
 * serving its last good version throughout. */
static void test_stale_when_heartbeats_stop(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    const char *fast[] = {"--heartbeat-ms", "200", NULL};
    pc_test_controller_start(&env, &ctl, fast);
    pc_test_agent agent = {0};
    const char *aflags[] = {"--stale-after-ms", "1500", NULL};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, aflags);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "still here");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&agent, "app", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    assert_true(wait_agent_stale(&agent, false));

    /* Frozen controller: no heartbeats. */
    assert_int_equal(kill(ctl.proc->pid, SIGSTOP), 0);
    assert_true(wait_agent_stale(&agent, true));
    uint64_t served = 0;
    assert_int_equal(pc_test_edge_get(&agent, "app", "/", &served, NULL, 0), 200);
    assert_int_equal(served, v);
    assert_int_equal(kill(ctl.proc->pid, SIGCONT), 0);
    assert_true(wait_agent_stale(&agent, false));

    /* A controller that sends no heartbeats at all: the agent goes stale
     * and the controller's fleet view shows it, while deploys still go
     * live. */
    pc_test_controller_stop(&ctl);
    const char *none[] = {"--heartbeat-ms", "0", NULL};
    pc_test_controller_start(&env, &ctl, none);
    assert_true(wait_agent_stale(&agent, true));
    assert_true(wait_fleet_flag(&env, &ctl, "edge", "stale", true));
    pc_test_lua_hello(src, sizeof(src), "stale but live");
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&agent, "app", v2, PC_TEST_CONVERGE_TIMEOUT_MS));

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* The exec runtime through the whole pipeline: an upload naming it is
 * written out on the agent and the hook runs; a failing hook is a nack
 * with the hook's output, and the previous version stays current. */
static void test_exec_runtime(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    const char *cflags[] = {"--runtimes", "lua", "--runtimes", "exec", NULL};
    pc_test_controller_start(&env, &ctl, cflags);
    char control[400], hook[600];
    snprintf(control, sizeof(control), "%s/hook-exit", env.root);
    pc_test_write_file(control, "0\n", 2);
    snprintf(hook, sizeof(hook), "echo hook says no >&2; exit $(cat %s)", control);
    pc_test_agent agent = {0};
    const char *aflags[] = {"--exec-reload-command", hook, NULL};
    pc_test_agent_start_for(&env, &agent, "exec-edge", &ctl, aflags);

    const char *site = "<h1>v1</h1>";
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/site/bundles?runtime=exec&entrypoint=index.html");
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "POST", path, "text/plain", site, strlen(site), &r),
                     201);
    pc_http_result_free(&r);
    json_t *doc = api_json(&env, &ctl, "/v1/tenants/site/versions/1/rollout?wait=30000", 200);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "complete");
    json_decref(doc);
    char file[600];
    snprintf(file, sizeof(file), "%s/exec/site/current/index.html", agent.dir);
    FILE *f = fopen(file, "r");
    assert_non_null(f);
    char got[64] = "";
    assert_non_null(fgets(got, sizeof(got), f));
    fclose(f);
    assert_string_equal(got, site);
    /* A traffic split needs two versions side by side in one runtime:
     * refused for exec, by the stage and by a deployment, nothing made. */
    uint64_t head = pc_test_controller_head(&env, &ctl);
    const char *split = "{\"everyone\":true,\"split_permille\":100,\"split_key\":\"x-user\"}";
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/tenants/site/versions/1/stage",
                                 "application/json", split, strlen(split), &r),
                     400);
    assert_non_null(strstr((const char *)r.body, "a traffic split needs the lua runtime"));
    pc_http_result_free(&r);
    const char *plan = "{\"plan\":[{\"everyone\":true,\"split_permille\":100,\"split_key\":"
                       "\"x-user\"}]}";
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/tenants/site/deployments",
                                 "application/json", plan, strlen(plan), &r),
                     400);
    assert_non_null(strstr((const char *)r.body, "a traffic split needs the lua runtime"));
    pc_http_result_free(&r);
    assert_int_equal(pc_test_controller_head(&env, &ctl), head);
    doc = api_json(&env, &ctl, "/v1/tenants/site/deployments", 200);
    assert_int_equal(json_array_size(json_object_get(doc, "deployments")), 0);
    json_decref(doc);

    pc_test_write_file(control, "4\n", 2);
    const char *site2 = "<h1>v2</h1>";
    assert_int_equal(pc_test_api(&env, &ctl, "POST", path, "text/plain", site2, strlen(site2), &r),
                     201);
    pc_http_result_free(&r);
    doc = api_json(&env, &ctl, "/v1/tenants/site/versions/2/rollout?wait=30000", 200);
    assert_string_equal(json_string_value(json_object_get(doc, "wait")), "nacked");
    json_t *a = json_array_get(json_object_get(doc, "agents"), 0);
    assert_string_equal(json_string_value(json_object_get(a, "reason")), "runtime_error");
    assert_non_null(strstr(json_string_value(json_object_get(a, "detail")), "hook says no"));
    assert_int_equal(json_integer_value(json_object_get(a, "live_version")), 1);
    json_decref(doc);
    f = fopen(file, "r");
    assert_non_null(f);
    assert_non_null(fgets(got, sizeof(got), f));
    fclose(f);
    assert_string_equal(got, site); /* still v1 */
    /* The edge does not serve exec tenants: the external runtime does. */
    uint64_t version = 0;
    assert_int_equal(pc_test_edge_get(&agent, "site", "/", &version, NULL, 0), 404);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rollout_nack_fleet_and_gone),
        cmocka_unit_test(test_stale_when_heartbeats_stop),
        cmocka_unit_test(test_exec_runtime),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
