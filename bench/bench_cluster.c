/* bench_cluster.c - what raft costs and how fast it recovers. Real
 * processes on loopback; run by hand or by CI with tiny sizes.
 *
 *   bench_cluster [DEPLOYS] [KILLS]
 *   defaults:      200       9
 *
 * Figures:
 *   deploy     median round trip of a deploy (answered after a majority
 *              committed it and the leader applied it) through a 3-node
 *              cluster, against the same through a single-node cluster (the
 *              baseline, measured in the same run), and the ratio
 *   failover   kill -9 of the leader -> the next acknowledged deploy, with a
 *              client retrying every node without pause; median over KILLS
 *              (election timeout 1000 ms, the default) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "clock.h"
#include "harness.h"

static int deploys = 200;
static int kills = 9;

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

/* Deploys through the first node that accepts. */
static int deploy(pc_test_env *env, pc_test_cluster *cl, int i)
{
    char src[128];
    snprintf(src, sizeof(src), "return function(req) return 'deploy %d' end", i);
    for (int n = 0; n < cl->n; n++) {
        if (cl->node[n].proc == NULL)
            continue;
        pc_test_deployed d;
        if (pc_test_try_deploy(env, &cl->node[n], "bench", "text/x-lua", src, strlen(src), &d) ==
            201)
            return 1;
    }
    return 0;
}

static double deploy_latency(int nodes)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_cluster cl;
    const char *defaults[] = {"--raft-election-ms", "1000", NULL};
    pc_test_cluster_init(&env, &cl, nodes, nodes, defaults);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    double *t = calloc((size_t)deploys, sizeof(double));
    for (int i = 0; i < deploys; i++) {
        char src[128];
        snprintf(src, sizeof(src), "return function(req) return 'deploy %d' end", i);
        pc_test_deployed d;
        double t0 = pc_mono_ms_frac();
        assert_int_equal(
            pc_test_try_deploy(&env, &cl.node[leader], "bench", "text/x-lua", src, strlen(src), &d),
            201);
        t[i] = pc_mono_ms_frac() - t0;
    }
    double m = median(t, deploys);
    free(t);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return m;
}

static double failover(void)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_cluster cl;
    const char *defaults[] = {"--raft-election-ms", "1000", NULL};
    pc_test_cluster_init(&env, &cl, 3, 3, defaults);
    double *t = calloc((size_t)kills, sizeof(double));
    for (int k = 0; k < kills; k++) {
        int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
        assert_true(leader >= 0);
        assert_true(deploy(&env, &cl, k));
        pc_proc_kill9(cl.node[leader].proc);
        pc_proc_free(cl.node[leader].proc);
        cl.node[leader].proc = NULL;
        double t0 = pc_mono_ms_frac();
        while (!deploy(&env, &cl, k))
            assert_true(pc_mono_ms_frac() - t0 < PC_TEST_CONVERGE_TIMEOUT_MS);
        t[k] = pc_mono_ms_frac() - t0;
        pc_test_cluster_start_node(&env, &cl, leader, false, defaults);
    }
    double m = median(t, kills);
    free(t);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return m;
}

static void bench(void **state)
{
    double single = deploy_latency(1);
    double three = deploy_latency(3);
    printf("deploy round trip, %d deploys: 3-node cluster %.2f ms, single node %.2f ms "
           "(medians), ratio %.2f\n",
           deploys, three, single, three / single);
    double f = failover();
    printf("failover, leader kill -9 -> next acknowledged deploy: %.0f ms (median of %d)\n", f,
           kills);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        deploys = atoi(argv[1]) > 0 ? atoi(argv[1]) : 1;
    if (argc > 2)
        kills = atoi(argv[2]) > 0 ? atoi(argv[2]) : 1;
    const struct CMUnitTest benches[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(benches, NULL, NULL);
}
