/* bench_edge.c - the runtime on the request path: isolate creation, the
 * first request after activation, swap time, and requests per second for a
 * trivial handler against the same HTTP stack answering without any
 * handler (the ceiling). Real processes on loopback; run by hand or by CI
 * with tiny sizes, never as a test.
 *
 *   bench_edge [RUNS] [WRK_SECONDS] [WRK_CONNECTIONS]
 *   defaults:   15     5             32
 *
 * Figures are medians over RUNS (wrk: over 3 runs of WRK_SECONDS each):
 *   isolate     prepare of a trivial bundle in-process (create a sandboxed
 *               lua_State, load and run its top level): the cost of
 *               creating an isolate
 *   first       the first request to a tenant after its version went live
 *               (50 ms after the rollout reported it live), end to end
 *               over HTTP
 *   warm        the next request to the same tenant, after the same 50 ms
 *               idle gap (the baseline for "first")
 *   swap        deploy answered by the controller -> first response from
 *               the new version on the edge (agent: receive, verify, store,
 *               prepare, activate), polled by a client without pause
 *   commit      the controller's deploy round trip (baseline for "swap")
 *   rps         wrk against a trivial handler, and against the edge's own
 *               /_popcast/health (no handler: the ceiling), and the ratio */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "bundle.h"
#include "clock.h"
#include "crypto.h"
#include "harness.h"
#include "lua_engine.h"

static int runs = 15;
static int wrk_seconds = 5;
static int wrk_connections = 32;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

static const char *trivial = "return function(req) return 'hello' end";

static double bench_isolate_creation(void)
{
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    pc_err err;
    pc_adapter *lua = pc_lua_adapter_new(&limits, NULL, &err);
    assert_non_null(lua);
    uint8_t *bundle = NULL;
    size_t len = 0;
    assert_int_equal(pc_bundle_pack_single("main.lua", (const uint8_t *)trivial, strlen(trivial),
                                           &bundle, &len, &err),
                     PC_OK);
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, bundle, len);
    double *t = calloc((size_t)runs, sizeof(double));
    for (int i = 0; i < runs; i++) {
        pc_version_spec spec = {.tenant = "bench",
                                .version = (uint64_t)i + 1,
                                .runtime = "lua",
                                .entrypoint = "main.lua",
                                .bundle = bundle,
                                .bundle_len = len,
                                .hash = hash};
        pc_prepared *p = NULL;
        double t0 = pc_mono_ms_frac();
        assert_int_equal(lua->prepare(lua, &spec, &p, &err), PC_OK);
        t[i] = pc_mono_ms_frac() - t0;
        lua->discard(lua, p);
    }
    double m = median(t, runs);
    free(t);
    free(bundle);
    lua->destroy(lua);
    return m;
}

/* One GET; returns its latency in ms and the version that answered. */
static double timed_get(pc_test_agent *a, const char *tenant, uint64_t *version)
{
    double t0 = pc_mono_ms_frac();
    int status = pc_test_edge_get(a, tenant, "/", version, NULL, 0);
    double t = pc_mono_ms_frac() - t0;
    assert_int_equal(status, 200);
    return t;
}

static double wrk_rps(const char *url, const char *tenant)
{
    double r[3];
    for (int i = 0; i < 3; i++) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "wrk -t2 -c%d -d%ds %s%s%s %s 2>&1", wrk_connections,
                 wrk_seconds, tenant ? "-H 'X-Popcast-Tenant: " : "", tenant ? tenant : "",
                 tenant ? "'" : "", url);
        FILE *p = popen(cmd, "r");
        assert_non_null(p);
        char line[512];
        r[i] = 0;
        long non2xx = 0;
        while (fgets(line, sizeof(line), p) != NULL) {
            if (strncmp(line, "Requests/sec:", 13) == 0)
                r[i] = atof(line + 13);
            if (strstr(line, "Non-2xx") != NULL)
                non2xx = atol(strchr(line, ':') + 1);
        }
        pclose(p);
        assert_true(r[i] > 0);
        assert_int_equal(non2xx, 0);
    }
    return median(r, 3);
}

static void bench(void **state)
{
    double isolate = bench_isolate_creation();

    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, NULL);

    /* First request after activation vs warm requests, each on a fresh
     * tenant so that "first" really is its first. */
    double *first = calloc((size_t)runs, sizeof(double));
    double *warm = calloc((size_t)runs, sizeof(double));
    for (int i = 0; i < runs; i++) {
        char tenant[32];
        snprintf(tenant, sizeof(tenant), "cold%02d", i);
        uint64_t v = pc_test_deploy_lua(&env, &ctl, tenant, trivial);
        char url[128];
        snprintf(url, sizeof(url), "/v1/tenants/%s/versions/%llu/rollout?wait=30000", tenant,
                 (unsigned long long)v);
        pc_http_result r;
        assert_int_equal(pc_test_api(&env, &ctl, "GET", url, NULL, NULL, 0, &r), 200);
        pc_http_result_free(&r);
        /* Let the deploy's own aftermath (status report, logs) pass: what
         * is measured is the request, not a busy moment. */
        pc_test_sleep_ms(50);
        uint64_t got = 0;
        first[i] = timed_get(&agent, tenant, &got);
        assert_int_equal(got, v);
        /* The same idle gap before the warm one, so both start from an
         * idle edge thread: the difference is the tenant's first use. */
        pc_test_sleep_ms(50);
        warm[i] = timed_get(&agent, tenant, &got);
    }
    double mf = median(first, runs), mw = median(warm, runs);

    /* Swap: deploy answered -> first response from the new version. */
    double *swap = calloc((size_t)runs, sizeof(double));
    double *commit = calloc((size_t)runs, sizeof(double));
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "swap", trivial);
    assert_true(pc_test_wait_version(&agent, "swap", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    for (int i = 0; i < runs; i++) {
        char src[128];
        snprintf(src, sizeof(src), "return function(req) return 'swap %d' end", i);
        double t0 = pc_mono_ms_frac();
        v = pc_test_deploy_lua(&env, &ctl, "swap", src);
        double t1 = pc_mono_ms_frac();
        uint64_t got = 0;
        while (got != v) {
            pc_test_edge_get(&agent, "swap", "/", &got, NULL, 0);
            assert_true(pc_mono_ms_frac() - t1 < PC_TEST_CONVERGE_TIMEOUT_MS);
        }
        swap[i] = pc_mono_ms_frac() - t1;
        commit[i] = t1 - t0;
    }
    double ms = median(swap, runs), mc = median(commit, runs);

    /* Throughput: a trivial handler vs the same stack with no handler. */
    pc_test_deploy_lua(&env, &ctl, "hello", trivial);
    assert_true(pc_test_wait_version(&agent, "hello", 1, PC_TEST_CONVERGE_TIMEOUT_MS));
    char url[128];
    snprintf(url, sizeof(url), "%s/", agent.edge_url);
    double handler = wrk_rps(url, "hello");
    snprintf(url, sizeof(url), "%s/_popcast/health", agent.edge_url);
    double ceiling = wrk_rps(url, NULL);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    printf("isolate creation (prepare, in-process): %.3f ms (median of %d)\n", isolate, runs);
    printf("first request after activation: %.3f ms, warm request: %.3f ms (medians of %d), "
           "ratio %.2f\n",
           mf, mw, runs, mf / mw);
    printf("swap, deploy answered -> first response from the new version: %.1f ms; "
           "deploy round trip: %.1f ms (medians of %d), ratio %.2f\n",
           ms, mc, runs, ms / mc);
    printf("wrk -c%d, %d s x 3, %ld cores shared by wrk and the agent: trivial handler %.0f "
           "req/s (%.0f per core), no handler (ceiling) %.0f req/s, ratio %.2f\n",
           wrk_connections, wrk_seconds, cores, handler, handler / (double)cores, ceiling,
           handler / ceiling);
    free(first);
    free(warm);
    free(swap);
    free(commit);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        runs = atoi(argv[1]) > 0 ? atoi(argv[1]) : 1;
    if (argc > 2)
        wrk_seconds = atoi(argv[2]) > 0 ? atoi(argv[2]) : 1;
    if (argc > 3)
        wrk_connections = atoi(argv[3]) > 0 ? atoi(argv[3]) : 1;
    const struct CMUnitTest benches[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(benches, NULL, NULL);
}
