/* bench_deployments.c - what a staged deployment costs in time, against a
 * direct deploy measured in the same run. Real processes on loopback; run
 * by hand or by CI with tiny sizes.
 *
 *   bench_deployments [AGENTS] [RUNS] [BAKE_MS]
 *   default:           8        5      300
 *
 * One controller (gate interval 100 ms, default-plan bakes of BAKE_MS)
 * and AGENTS agents, half in PoP "ams", half in "fra" (request counts
 * reported every 100 ms). Each run, from the moment the request is sent
 * (medians over RUNS, milliseconds):
 *   direct     a direct deploy for everyone, to live on every agent (the
 *              baseline: the time every figure is a ratio to)
 *   immediate  upload + a one-stage deployment, to complete and live on
 *              every agent
 *   default    upload + the default plan (ams, 10 %, 50 %, everyone;
 *              bakes of BAKE_MS, too few requests to judge), to complete
 *              and live everywhere
 *   revert     a version failing 30 % of requests staged at ams: from the
 *              first bad answer the bench sees at the canary to the
 *              revert live on every agent */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define MAX_AGENTS 64
#define MAX_RUNS   50

static int n_agents = 8, runs = 5, bake_ms = 300;
static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agents[MAX_AGENTS];
static uint64_t version; /* the tenant's newest version */

static const char flaky[] = "return function(req)\n"
                            "  if req.path == '/bad' then error('boom') end\n"
                            "  return 'flaky'\n"
                            "end\n";

static double median(double *v, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static json_t *post(const char *path, const char *ct, const char *body, int want)
{
    pc_http_result r;
    int status = pc_test_api(&env, &ctl, "POST", path, ct, body, strlen(body), &r);
    if (status != want)
        fail_msg("POST %s: %d: %.*s", path, status, (int)r.body_len, (const char *)r.body);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return doc;
}

/* A new version of web (held when hold), its content unique to the run. */
static uint64_t new_version(const char *source, bool hold)
{
    char src[256];
    if (source == NULL) {
        char text[32];
        snprintf(text, sizeof(text), "v%llu", (unsigned long long)version + 1);
        pc_test_lua_hello(src, sizeof(src), text);
        source = src;
    }
    json_t *doc = post(hold ? "/v1/tenants/web/bundles?hold=true" : "/v1/tenants/web/bundles",
                       "text/x-lua", source, 201);
    version = (uint64_t)json_integer_value(json_object_get(doc, "version"));
    json_decref(doc);
    return version;
}

static void all_serve(uint64_t v)
{
    for (int i = 0; i < n_agents; i++)
        if (!pc_test_wait_version(&agents[i], "web", v, PC_TEST_CONVERGE_TIMEOUT_MS))
            fail_msg("%s does not serve web v%llu", agents[i].id, (unsigned long long)v);
}

/* Starts a deployment and waits until it is in state `until`. */
static json_t *deploy_and_wait(const char *body, const char *until)
{
    json_t *d = post("/v1/tenants/web/deployments", "application/json", body, 201);
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%lld",
             (long long)json_integer_value(json_object_get(d, "id")));
    json_decref(d);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        d = pc_test_controller_json(&env, &ctl, path);
        const char *state = d ? json_string_value(json_object_get(d, "state")) : NULL;
        if (state != NULL && strcmp(state, until) == 0)
            return d;
        if (pc_test_now_ms() > deadline)
            fail_msg("deployment not %s: %s", until, d ? json_dumps(d, JSON_COMPACT) : "-");
        json_decref(d);
        pc_test_sleep_ms(10);
    }
}

static double timed_direct(void)
{
    int64_t t0 = pc_test_now_ms();
    all_serve(new_version(NULL, false));
    return (double)(pc_test_now_ms() - t0);
}

static double timed_deployment(const char *body)
{
    int64_t t0 = pc_test_now_ms();
    uint64_t v = new_version(NULL, true);
    json_decref(deploy_and_wait(body, "complete"));
    all_serve(v);
    return (double)(pc_test_now_ms() - t0);
}

static double timed_revert(void)
{
    new_version(flaky, true);
    json_t *d = post("/v1/tenants/web/deployments", "application/json",
                     "{\"plan\":[{\"pops\":[\"ams\"],\"bake_ms\":600000,\"min_requests\":40},"
                     "{\"everyone\":true}]}",
                     201);
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/web/deployments/%lld",
             (long long)json_integer_value(json_object_get(d, "id")));
    json_decref(d);
    int canaries = n_agents / 2;
    for (int i = 0; i < canaries; i++)
        if (!pc_test_wait_version(&agents[i], "web", version, PC_TEST_CONVERGE_TIMEOUT_MS))
            fail_msg("canary %s never served the version", agents[i].id);
    /* Traffic at the canary until the deployment halts: 3 of every 10
     * requests fail. */
    int64_t first_bad = 0, deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (int i = 0;; i++) {
        bool bad = i % 10 < 3;
        pc_test_edge_get(&agents[i % canaries], "web", bad ? "/bad" : "/", NULL, NULL, 0);
        if (bad && first_bad == 0)
            first_bad = pc_test_now_ms();
        if (i % 20 == 19) {
            d = pc_test_controller_json(&env, &ctl, path);
            const char *state = d ? json_string_value(json_object_get(d, "state")) : "";
            bool over = state != NULL && strcmp(state, "reverted") == 0;
            json_decref(d);
            if (over)
                break;
        }
        if (pc_test_now_ms() > deadline)
            fail_msg("the failing version was never reverted");
    }
    /* The revert is the newest version: wait for it everywhere. */
    json_t *t = pc_test_controller_json(&env, &ctl, "/v1/tenants/web");
    version = (uint64_t)json_integer_value(json_object_get(t, "active_version"));
    json_decref(t);
    all_serve(version);
    return (double)(pc_test_now_ms() - first_bad);
}

static void bench(void **state)
{
    (void)state;
    char bake[24];
    snprintf(bake, sizeof(bake), "%d", bake_ms);
    const char *extra[] = {"--deploy-interval-ms", "100", "--deploy-bake-ms", bake, NULL};
    const char *ams[] = {"--pop", "ams", "--traffic-interval-ms", "100", NULL};
    const char *fra[] = {"--pop", "fra", "--traffic-interval-ms", "100", NULL};
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, extra);
    for (int i = 0; i < n_agents; i++) {
        char id[32];
        snprintf(id, sizeof(id), "%s-%d", i < n_agents / 2 ? "ams" : "fra", i);
        pc_test_agent_start_for(&env, &agents[i], id, &ctl, i < n_agents / 2 ? ams : fra);
    }
    all_serve(new_version(NULL, false));
    double direct[MAX_RUNS], immediate[MAX_RUNS], staged[MAX_RUNS], revert[MAX_RUNS];
    for (int r = 0; r < runs; r++) {
        direct[r] = timed_direct();
        immediate[r] = timed_deployment("{\"immediate\":true}");
        staged[r] = timed_deployment("{}");
        revert[r] = timed_revert();
    }
    double p = median(direct, runs), i = median(immediate, runs), s = median(staged, runs),
           v = median(revert, runs);
    printf("bench_deployments: %d agents (2 PoPs), %d runs, gate interval 100 ms, bakes %d ms, "
           "counts every 100 ms; medians in ms (ratio to a direct deploy in the same run)\n",
           n_agents, runs, bake_ms);
    printf("%-10s %10s %8s\n", "what", "median_ms", "ratio");
    printf("%-10s %10.0f %8.2f\n", "direct", p, 1.0);
    printf("%-10s %10.0f %8.2f\n", "immediate", i, i / p);
    printf("%-10s %10.0f %8.2f\n", "default", s, s / p);
    printf("%-10s %10.0f %8.2f   (first bad answer at the canary to the revert everywhere)\n",
           "revert", v, v / p);
    for (int k = 0; k < n_agents; k++)
        pc_test_agent_stop(&agents[k]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        n_agents = atoi(argv[1]);
    if (argc > 2)
        runs = atoi(argv[2]);
    if (argc > 3)
        bake_ms = atoi(argv[3]);
    if (n_agents < 2 || n_agents > MAX_AGENTS || runs < 1 || runs > MAX_RUNS || bake_ms < 0) {
        fprintf(stderr, "usage: bench_deployments [AGENTS 2..%d] [RUNS 1..%d] [BAKE_MS]\n",
                MAX_AGENTS, MAX_RUNS);
        return 2;
    }
    pc_test_init();
    const struct CMUnitTest tests[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
