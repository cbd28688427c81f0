/* test_sandbox_edge.c - hostile tenant code through the real edge: CPU
 * loops, memory bombs, huge responses, deep recursion, catastrophic
 * patterns and escape attempts are each answered with an error, the agent
 * keeps serving the other tenants, and the per-tenant counters show what
 * happened. */
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

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;

/* Deploys and waits until the agent serves the version (live_version). */
static void deploy_and_wait(const char *tenant, const char *src)
{
    pc_test_wait_live(&agent, tenant, pc_test_deploy_lua(&env, &ctl, tenant, src));
}

/* GET / on tenant; returns the status, the error code in code (if JSON). */
static int get(const char *tenant, char *code, size_t cap, char *body, size_t body_cap)
{
    const char *headers[] = {"X-Popcast-Tenant", tenant, NULL};
    pc_http_result r;
    if (pc_http_call(agent.edge_url, "GET", "/", headers, NULL, 0, 30000, &r, NULL) != PC_OK)
        return 0;
    int status = r.status;
    if (code != NULL) {
        code[0] = '\0';
        json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
        const char *c = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
        snprintf(code, cap, "%s", c ? c : "");
        json_decref(doc);
    }
    if (body != NULL)
        snprintf(body, body_cap, "%.*s", (int)r.body_len, r.body ? (char *)r.body : "");
    pc_http_result_free(&r);
    return status;
}

static void expect_good(void)
{
    char body[64];
    assert_int_equal(get("good", NULL, 0, body, sizeof(body)), 200);
    assert_string_equal(body, "fine");
}

static int setup(void **state)
{
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    const char *limits[] = {"--lua-instructions",
                            "2000000",
                            "--lua-memory",
                            "8MiB",
                            "--lua-response-max",
                            "64KiB",
                            "--lua-wall-ms",
                            "2000",
                            NULL};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, limits);
    return 0;
}

static int teardown(void **state)
{
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

static void test_hostile_handlers(void **state)
{
    deploy_and_wait("good", "return function(req) return 'fine' end");

    static const struct {
        const char *tenant, *src, *code, *limit;
    } cases[] = {
        {"spin", "return function(req) while true do end end", "limit_exceeded", "cpu"},
        {"bomb",
         "return function(req) local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(1024) .. i end end",
         "limit_exceeded", "memory"},
        {"huge", "return function(req) return ('x'):rep(1024 * 1024) end", "limit_exceeded",
         "response"},
        {"deep", "local function f(n) return 1 + f(n + 1) end return function() return f(1) end",
         NULL, NULL},
        {"regex",
         "return function(req) return tostring(('a'):rep(30000):find(('a*'):rep(9) .. 'b')) end",
         "limit_exceeded", "cpu"},
        {"escape", "return function(req) return io.open('/etc/passwd'):read('a') end",
         "runtime_error", NULL},
        {"escape2", "return function(req) return load(string.dump(print))() end", "runtime_error",
         NULL},
        {"escape3", "return function(req) return require('os').execute('id') end", "runtime_error",
         NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        deploy_and_wait(cases[i].tenant, cases[i].src);
        for (int round = 0; round < 2; round++) {
            char code[64];
            int status = get(cases[i].tenant, code, sizeof(code), NULL, 0);
            if (status != 502)
                fail_msg("%s: expected 502, got %d", cases[i].tenant, status);
            if (cases[i].code != NULL && strcmp(code, cases[i].code) != 0)
                fail_msg("%s: expected %s, got %s", cases[i].tenant, cases[i].code, code);
            expect_good();
        }
        if (cases[i].limit != NULL) {
            char name[160];
            snprintf(name, sizeof(name),
                     "popcast_lua_limit_exceeded_total{tenant=\"%s\",limit=\"%s\"}",
                     cases[i].tenant, cases[i].limit);
            uint64_t n = pc_test_agent_metric(&agent, name);
            if (strcmp(cases[i].limit, "cpu") == 0) {
                snprintf(name, sizeof(name),
                         "popcast_lua_limit_exceeded_total{tenant=\"%s\",limit=\"time\"}",
                         cases[i].tenant);
                n += pc_test_agent_metric(&agent, name);
            }
            if (n < 2)
                fail_msg("%s: %s limit counted %llu times", cases[i].tenant, cases[i].limit,
                         (unsigned long long)n);
        }
        char errors[160];
        snprintf(errors, sizeof(errors), "popcast_lua_errors_total{tenant=\"%s\"}",
                 cases[i].tenant);
        assert_true(pc_test_agent_metric(&agent, errors) >= 2);
    }
    /* The good tenant never had an error; the edge's own health check
     * answers whatever the tenants do. */
    assert_int_equal(pc_test_agent_metric(&agent, "popcast_lua_errors_total{tenant=\"good\"}"), 0);
    pc_http_result r;
    assert_int_equal(
        pc_http_call(agent.edge_url, "GET", "/_popcast/health", NULL, NULL, 0, 10000, &r, NULL),
        PC_OK);
    assert_int_equal(r.status, 200);
    pc_http_result_free(&r);
}

/* The examples in examples/ deploy and answer as their comments say. */
static void deploy_example(const char *tenant, const char *dir)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/examples/%s", getenv("POPCAST_SOURCE_DIR"), dir);
    uint8_t *archive = NULL;
    size_t len = 0;
    assert_int_equal(pc_bundle_pack_dir(path, NULL, 1 << 20, &archive, &len, NULL), PC_OK);
    pc_test_deployed d;
    assert_int_equal(
        pc_test_try_deploy(&env, &ctl, tenant, "application/vnd.popcast.bundle", archive, len, &d),
        201);
    free(archive);
    assert_true(pc_test_wait_version(&agent, tenant, d.version, PC_TEST_CONVERGE_TIMEOUT_MS));
}

static void expect_get(const char *tenant, const char *path, int status, const char *needle)
{
    const char *headers[] = {"X-Popcast-Tenant", tenant, NULL};
    pc_http_result r;
    assert_int_equal(pc_http_call(agent.edge_url, "GET", path, headers, NULL, 0, 10000, &r, NULL),
                     PC_OK);
    if (r.status != status || strstr(r.body ? (char *)r.body : "", needle) == NULL)
        fail_msg("%s %s: expected %d with '%s', got %d: %s", tenant, path, status, needle, r.status,
                 r.body ? (char *)r.body : "");
    pc_http_result_free(&r);
}

static void test_examples(void **state)
{
    deploy_example("hello", "hello");
    expect_get("hello", "/x", 200, "Hello from popcast (GET /x)");
    deploy_example("echo", "echo");
    expect_get("echo", "/some/path?x=1", 200, "\"query\": \"x=1\"");
    expect_get("echo", "/some/path?x=1", 200, "\"x-popcast-tenant\": \"echo\"");
    deploy_example("shop", "router");
    expect_get("shop", "/price?item=apple", 200, "apple: 3");
    expect_get("shop", "/price?item=kiwi", 404, "no such item");
    expect_get("shop", "/items", 200, "pear");
    expect_get("shop", "/nowhere", 404, "not found");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostile_handlers),
        cmocka_unit_test(test_examples),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
