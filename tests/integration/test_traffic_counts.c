/* test_traffic_counts.c - what each version's code did at the edges reaches the
 * controller's rollout view, exactly, per agent and summed: requests,
 * errors, limit kills and 5xx answers (agent/traffic.h), driven by real
 * requests to real agents; counts restart with an agent, and its reports
 * say since when. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static const char *const fast_counts[] = {"--traffic-interval-ms", "100", NULL};

static const char handler[] = "return function(req)\n"
                              "  if req.path == '/fail' then error('boom') end\n"
                              "  if req.path == '/busy' then return { status = 503 } end\n"
                              "  if req.path == '/spin' then while true do end end\n"
                              "  return 'ok'\n"
                              "end\n";

/* The rollout document of web's version (answered at once). */
static json_t *rollout_of(pc_test_env *env, pc_test_controller *ctl, uint64_t version,
                          const char *wait_for)
{
    char path[256];
    snprintf(path, sizeof(path), "/v1/tenants/web/versions/%llu/rollout%s",
             (unsigned long long)version, wait_for ? "?wait=20000" : "");
    pc_http_result r;
    assert_int_equal(pc_test_api(env, ctl, "GET", path, NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    if (wait_for != NULL) {
        const char *got = json_string_value(json_object_get(doc, "wait"));
        if (got == NULL || strcmp(got, wait_for) != 0)
            fail_msg("web v%llu: rollout ended %s: %.*s", (unsigned long long)version,
                     got ? got : "(none)", (int)r.body_len, (const char *)r.body);
    }
    pc_http_result_free(&r);
    return doc;
}

/* agent id's counts in doc (NULL: none reported). */
static json_t *traffic_of(json_t *doc, const char *id)
{
    json_t *agents = json_object_get(doc, "agents");
    for (size_t i = 0; i < json_array_size(agents); i++) {
        json_t *a = json_array_get(agents, i);
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), id) == 0)
            return json_object_get(a, "traffic");
    }
    return NULL;
}

static json_int_t num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* GET path on the controller: 200, and the document. */
static json_t *get_doc(pc_test_env *env, pc_test_controller *ctl, const char *path)
{
    pc_http_result r;
    assert_int_equal(pc_test_api(env, ctl, "GET", path, NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    pc_http_result_free(&r);
    return doc;
}

/* Polls path until doc[outer][inner]["requests"] (inner may be NULL) is
 * `requests`, then returns that document; more, or none in time, fails. */
static json_t *wait_requests_at(pc_test_env *env, pc_test_controller *ctl, const char *path,
                                const char *outer, const char *inner, json_int_t requests)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        json_t *doc = get_doc(env, ctl, path);
        json_t *o = json_object_get(doc, outer);
        json_int_t got = num(inner != NULL ? json_object_get(o, inner) : o, "requests");
        if (got == requests)
            return doc;
        if (got > requests || pc_test_now_ms() > deadline)
            fail_msg("%s: %lld requests shown, expected %lld: %s", path, (long long)got,
                     (long long)requests, json_dumps(doc, JSON_COMPACT));
        json_decref(doc);
        pc_test_sleep_ms(50);
    }
}

/* Waits until web's version shows `requests` requests in total, then
 * returns its rollout document. */
static json_t *wait_requests(pc_test_env *env, pc_test_controller *ctl, uint64_t version,
                             json_int_t requests)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/versions/%llu/rollout",
             (unsigned long long)version);
    return wait_requests_at(env, ctl, path, "summary", "traffic", requests);
}

static void hit(pc_test_agent *a, const char *path, int times, int want_status)
{
    for (int i = 0; i < times; i++)
        assert_int_equal(pc_test_edge_get(a, "web", path, NULL, NULL, 0), want_status);
}

static void test_counts_reach_the_rollout_view(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[2];
    pc_test_agents_start_for(&env, agents, 2, "edge-", &ctl, fast_counts);

    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", handler), 1);
    json_decref(rollout_of(&env, &ctl, 1, "complete")); /* no request sent to wait */
    hit(&agents[0], "/", 20, 200);
    hit(&agents[0], "/fail", 6, 502);
    hit(&agents[0], "/busy", 3, 503);
    hit(&agents[0], "/spin", 1, 502);
    hit(&agents[1], "/", 10, 200);

    json_t *doc = wait_requests(&env, &ctl, 1, 40);
    json_t *a = traffic_of(doc, "edge-0"), *b = traffic_of(doc, "edge-1");
    assert_int_equal(num(a, "requests"), 30);
    assert_int_equal(num(a, "errors"), 6);
    assert_int_equal(num(a, "status_5xx"), 3);
    assert_int_equal(num(a, "limit_kills"), 1);
    assert_int_equal(num(b, "requests"), 10);
    assert_int_equal(num(b, "errors") + num(b, "status_5xx") + num(b, "limit_kills"), 0);
    json_t *sum = json_object_get(json_object_get(doc, "summary"), "traffic");
    assert_int_equal(num(sum, "errors"), 6);
    assert_int_equal(num(sum, "agents"), 2);
    json_int_t since_a = num(a, "since_unix_ms");
    assert_true(since_a > 0);
    json_decref(doc);
    /* The agent's own status shows the same counts, and since when. */
    json_t *st = pc_test_agent_status(&agents[0]);
    assert_non_null(st);
    assert_int_equal(num(st, "traffic_since_unix_ms"), since_a);
    json_t *web = json_array_get(json_object_get(st, "tenants"), 0);
    json_t *v1 = json_array_get(json_object_get(web, "traffic"), 0);
    assert_int_equal(num(v1, "version"), 1);
    assert_int_equal(num(v1, "requests"), 30);
    assert_int_equal(num(v1, "errors"), 6);
    assert_int_equal(num(v1, "status_5xx"), 3);
    assert_int_equal(num(v1, "limit_kills"), 1);
    json_decref(st);
    /* Its admin address describes itself: the source tree's document. */
    pc_test_expect_serves_file(agents[0].admin_url, "/v1/openapi.yaml", "docs/openapi-agent.yaml");

    /* A new version counts apart; the old one's counts stay shown. */
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", handler), 2);
    json_decref(rollout_of(&env, &ctl, 2, "complete"));
    hit(&agents[1], "/fail", 5, 502);
    doc = wait_requests(&env, &ctl, 2, 5);
    assert_int_equal(num(traffic_of(doc, "edge-1"), "errors"), 5);
    assert_null(traffic_of(doc, "edge-0"));
    json_decref(doc);
    json_decref(wait_requests(&env, &ctl, 1, 40));

    /* A restarted agent counts from zero, and says since when. */
    pc_test_agent_stop(&agents[0]);
    pc_test_agent_start_for(&env, &agents[0], agents[0].id, &ctl, fast_counts);
    hit(&agents[0], "/", 2, 200);
    doc = wait_requests(&env, &ctl, 2, 7);
    a = traffic_of(doc, "edge-0");
    assert_int_equal(num(a, "requests"), 2);
    assert_true(num(a, "since_unix_ms") > since_a);
    json_decref(doc);
    json_decref(wait_requests(&env, &ctl, 1, 10)); /* edge-a's v1 counts are gone */

    for (int i = 0; i < 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

/* GET .../versions/V/health (query: "" or "?..."): status, document. */
static int health(pc_test_env *env, pc_test_controller *ctl, uint64_t version, const char *query,
                  json_t **doc)
{
    char path[256];
    snprintf(path, sizeof(path), "/v1/tenants/web/versions/%llu/health%s",
             (unsigned long long)version, query);
    pc_http_result r;
    int status = pc_test_api(env, ctl, "GET", path, NULL, NULL, 0, &r);
    *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(*doc);
    pc_http_result_free(&r);
    return status;
}

/* Waits until version's health shows `requests` candidate requests. */
static json_t *wait_health(pc_test_env *env, pc_test_controller *ctl, uint64_t version,
                           const char *query, json_int_t requests)
{
    char path[256];
    snprintf(path, sizeof(path), "/v1/tenants/web/versions/%llu/health%s",
             (unsigned long long)version, query);
    return wait_requests_at(env, ctl, path, "candidate", NULL, requests);
}

/* A version that fails 30 % of its requests, against one that failed
 * none on the same agent: the health gate fails it on the error rate,
 * with the numbers; a healthy one passes; too few requests wait. */
static void test_health_gate(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-h", &ctl, fast_counts);

    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", handler), 1);
    json_decref(rollout_of(&env, &ctl, 1, "complete"));
    hit(&agent, "/", 100, 200);
    json_decref(wait_requests(&env, &ctl, 1, 100));
    json_t *doc = NULL;
    assert_int_equal(health(&env, &ctl, 1, "", &doc), 200);
    assert_int_equal(num(doc, "baseline"), 0); /* nothing before it */
    json_decref(doc);

    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", handler), 2);
    json_decref(rollout_of(&env, &ctl, 2, "complete"));
    hit(&agent, "/", 35, 200);
    hit(&agent, "/fail", 15, 502);
    doc = wait_health(&env, &ctl, 2, "", 50);
    assert_string_equal(json_string_value(json_object_get(doc, "verdict")), "wait");
    json_decref(doc);
    hit(&agent, "/", 35, 200);
    hit(&agent, "/fail", 15, 502);
    doc = wait_health(&env, &ctl, 2, "", 100);
    assert_string_equal(json_string_value(json_object_get(doc, "verdict")), "fail");
    assert_int_equal(num(doc, "baseline"), 1);
    assert_int_equal(num(json_object_get(doc, "candidate"), "errors"), 30);
    assert_int_equal(num(json_object_get(doc, "baseline_on_same_agents"), "requests"), 100);
    assert_true(json_is_true(json_object_get(json_object_get(doc, "failed"), "error_rate")));
    assert_non_null(strstr(json_string_value(json_object_get(doc, "reason")),
                           "error rate 30.00% (baseline 0.00%)"));
    json_decref(doc);
    assert_int_equal(health(&env, &ctl, 2, "?min_requests=1000", &doc), 200);
    assert_string_equal(json_string_value(json_object_get(doc, "verdict")), "wait");
    json_decref(doc);
    /* The CLI says the same, and its exit status tells a script. */
    static char out[4096];
    const char *fail_args[] = {"health", "web", "2", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, fail_args, out, sizeof(out)), 8);
    assert_non_null(strstr(out, "web v2 against v1: fail"));
    assert_non_null(strstr(out, "error rate 30.00%"));
    const char *wait_args[] = {"health", "web", "2", "--min-requests", "1000", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, wait_args, out, sizeof(out)), 9);

    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", handler), 3);
    json_decref(rollout_of(&env, &ctl, 3, "complete"));
    hit(&agent, "/", 100, 200);
    doc = wait_health(&env, &ctl, 3, "?baseline=1", 100);
    assert_string_equal(json_string_value(json_object_get(doc, "verdict")), "pass");
    json_decref(doc);
    const char *pass_args[] = {"health", "web", "3", "--baseline", "1", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, pass_args, out, sizeof(out)), 0);

    /* Bad queries change nothing and say why. */
    const char *bad[] = {"?baseline=0",
                         "?baseline=3",
                         "?baseline=x",
                         "?min_requests=0",
                         "?min_requests=1000000001",
                         "?min_requests=-1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(health(&env, &ctl, 3, bad[i], &doc), 400);
        json_decref(doc);
    }
    assert_int_equal(health(&env, &ctl, 9, "", &doc), 404);
    json_decref(doc);

    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_reach_the_rollout_view),
        cmocka_unit_test(test_health_gate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
