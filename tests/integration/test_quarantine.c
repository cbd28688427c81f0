/* test_quarantine.c - a tenant whose code runs past the watchdog's hard
 * ceiling is quarantined: its requests are answered 503 "quarantined"
 * without running it, the neighbour keeps answering, the agent's status
 * and the controller's fleet view name the quarantined version, and the
 * tenant's next version ends the quarantine. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;

static int get(const char *tenant, char *code, size_t cap)
{
    const char *headers[] = {"X-Popcast-Tenant", tenant, NULL};
    pc_http_result r;
    if (pc_http_call(agent.edge_url, "GET", "/", headers, NULL, 0, 60000, &r, NULL) != PC_OK)
        return 0;
    int status = r.status;
    code[0] = '\0';
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    snprintf(code, cap, "%s", c ? c : "");
    json_decref(doc);
    pc_http_result_free(&r);
    return status;
}

/* Waits until the agent's status says tenant's version is live (without a
 * request: the stuck handler would run). */
/* The quarantine list of agent a in the controller's fleet view (NULL
 * until the agent reported). */
static json_t *fleet_quarantines(void)
{
    pc_http_result r;
    if (pc_test_api(&env, &ctl, "GET", "/v1/fleet", NULL, NULL, 0, &r) != 200) {
        pc_http_result_free(&r);
        return NULL;
    }
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    json_t *found = NULL;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(doc, "agents"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), "edge-q") == 0)
            found = json_incref(json_object_get(a, "quarantined"));
    }
    json_decref(doc);
    return found;
}

static size_t wait_fleet_quarantines(size_t want)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *q = fleet_quarantines();
        size_t n = q != NULL ? json_array_size(q) : (size_t)-1;
        if (n == want) {
            if (want == 1) {
                json_t *e = json_array_get(q, 0);
                assert_string_equal(json_string_value(json_object_get(e, "tenant")), "stuck");
                assert_non_null(strstr(json_string_value(json_object_get(e, "reason")), "ceiling"));
            }
            json_decref(q);
            return n;
        }
        json_decref(q);
        if (pc_test_now_ms() > deadline)
            fail_msg("the fleet view never showed %zu quarantined versions", want);
        pc_test_sleep_ms(50);
    }
}

static void test_quarantine_and_release(void **state)
{
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    /* A wall limit the loop would never reach before the watchdog. */
    const char *limits[] = {"--lua-wall-ms",
                            "600000",
                            "--lua-instructions",
                            "1000000000000",
                            "--lua-watchdog-ms",
                            "300",
                            "--status-interval-ms",
                            "200",
                            NULL};
    pc_test_agent_start_for(&env, &agent, "edge-q", &ctl, limits);
    uint64_t good = pc_test_deploy_lua(&env, &ctl, "good", "return function(req) return 'ok' end");
    uint64_t stuck =
        pc_test_deploy_lua(&env, &ctl, "stuck", "return function(req) while true do end end");
    pc_test_wait_live(&agent, "good", good);
    pc_test_wait_live(&agent, "stuck", stuck);

    char code[64];
    /* The run the watchdog stops is a limit error; the ones after are
     * refused without running. */
    assert_int_equal(get("stuck", code, sizeof(code)), 502);
    assert_string_equal(code, "limit_exceeded");
    for (int i = 0; i < 3; i++) {
        assert_int_equal(get("stuck", code, sizeof(code)), 503);
        assert_string_equal(code, "quarantined");
        assert_int_equal(get("good", code, sizeof(code)), 200);
    }
    assert_true(pc_test_agent_metric(&agent, "popcast_edge_quarantined_total") >= 3);
    json_t *s = pc_test_agent_status(&agent);
    json_t *q = json_object_get(s, "quarantined");
    assert_int_equal(json_array_size(q), 1);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(q, 0), "version")), stuck);
    json_decref(s);
    assert_int_equal(wait_fleet_quarantines(1), 1);
    /* Once the controller knows, the quarantined version is not claimed
     * live: its rollout says nacked (quarantined), and the tenant's
     * serving view counts the agent as serving nothing. */
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/stuck/versions/%llu/rollout",
             (unsigned long long)stuck);
    json_t *ro = pc_test_controller_json(&env, &ctl, path);
    assert_non_null(ro);
    json_t *ra = json_array_get(json_object_get(ro, "agents"), 0);
    assert_string_equal(json_string_value(json_object_get(ra, "state")), "nacked");
    assert_string_equal(json_string_value(json_object_get(ra, "reason")), "quarantined");
    json_decref(ro);
    json_t *tj = pc_test_controller_json(&env, &ctl, "/v1/tenants/stuck");
    assert_non_null(tj);
    json_t *serving = json_object_get(tj, "serving");
    assert_int_equal(json_integer_value(json_object_get(serving, "none")), 1);
    assert_int_equal(json_array_size(json_object_get(serving, "versions")), 0);
    json_decref(tj);

    /* The next version ends it. */
    uint64_t fixed = pc_test_deploy_lua(&env, &ctl, "stuck", "return function(req) return 'x' end");
    pc_test_wait_live(&agent, "stuck", fixed);
    assert_int_equal(get("stuck", code, sizeof(code)), 200);
    assert_int_equal(wait_fleet_quarantines(0), 0);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quarantine_and_release),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
