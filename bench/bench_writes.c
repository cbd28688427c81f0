/* bench_writes.c - how many acknowledged changes per second a controller
 * cluster takes, with and without group commit. Real processes on
 * loopback; run by hand or by CI with tiny sizes.
 *
 *   bench_writes [SECONDS] [CLIENTS,...] [NODES,...]
 *   defaults:     5         1,4,16,64     1,3
 *
 * For each cluster size and number of clients, two fresh clusters are
 * measured in turn: the baseline commits one change per raft entry
 * (--commit-batch-max 1, what popcast did before group commit), the other
 * runs the defaults. Each client deploys small Lua handlers (about 100
 * bytes) to a tenant of its own, one after the other, for SECONDS.
 *
 * Figures: acknowledged changes per second, the ratio to the baseline, and
 * each deploy's round trip (request sent -> 201 received, i.e. committed by
 * a majority and applied by the leader): median and 99th percentile. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clock.h"
#include "harness.h"

#define MAX_LIST    8
#define MAX_SAMPLES 400000

static int seconds = 5;
static int clients[MAX_LIST] = {1, 4, 16, 64}, n_clients = 4;
static int nodes[MAX_LIST] = {1, 3}, n_nodes = 2;

typedef struct run {
    pc_test_env *env;
    pc_test_controller *leader;
    double deadline_ms;
    atomic_int n;
    atomic_int errors;
    double *latency; /* MAX_SAMPLES */
} run;

typedef struct client_arg {
    run *r;
    int id;
} client_arg;

static void *client_main(void *p)
{
    client_arg *a = p;
    run *r = a->r;
    char tenant[32], src[160];
    snprintf(tenant, sizeof(tenant), "w%d", a->id);
    for (int i = 0; pc_mono_ms_frac() < r->deadline_ms; i++) {
        snprintf(src, sizeof(src), "return function(req) return 'client %d change %d' end", a->id,
                 i);
        pc_test_deployed d;
        double t0 = pc_mono_ms_frac();
        int status =
            pc_test_try_deploy(r->env, r->leader, tenant, "text/x-lua", src, strlen(src), &d);
        double t = pc_mono_ms_frac() - t0;
        if (status != 201) {
            atomic_fetch_add(&r->errors, 1);
            continue;
        }
        int k = atomic_fetch_add(&r->n, 1);
        if (k < MAX_SAMPLES)
            r->latency[k] = t;
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct figures {
    double per_second, p50, p99;
    int errors;
} figures;

static figures measure(int n_nodes_now, int n_clients_now, bool batching)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_cluster cl;
    const char *off[] = {"--commit-batch-max", "1", NULL};
    pc_test_cluster_init(&env, &cl, n_nodes_now, n_nodes_now, batching ? NULL : off);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    run r = {.env = &env, .leader = &cl.node[leader]};
    r.latency = calloc(MAX_SAMPLES, sizeof(double));
    assert_non_null(r.latency);
    pthread_t *threads = calloc((size_t)n_clients_now, sizeof(*threads));
    client_arg *args = calloc((size_t)n_clients_now, sizeof(*args));
    assert_true(threads != NULL && args != NULL);
    double start = pc_mono_ms_frac();
    r.deadline_ms = start + seconds * 1000.0;
    for (int k = 0; k < n_clients_now; k++) {
        args[k] = (client_arg){&r, k};
        assert_int_equal(pthread_create(&threads[k], NULL, client_main, &args[k]), 0);
    }
    for (int k = 0; k < n_clients_now; k++)
        pthread_join(threads[k], NULL);
    double elapsed = pc_mono_ms_frac() - start;
    int n = atomic_load(&r.n);
    if (n > MAX_SAMPLES)
        n = MAX_SAMPLES;
    figures f = {.per_second = n * 1000.0 / elapsed, .errors = atomic_load(&r.errors)};
    if (n > 0) {
        qsort(r.latency, (size_t)n, sizeof(double), cmp_double);
        f.p50 = r.latency[n / 2];
        f.p99 = r.latency[(size_t)((n - 1) * 0.99)];
    }
    free(r.latency);
    free(threads);
    free(args);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return f;
}

static void bench(void **state)
{
    (void)state;
    printf("acknowledged changes through a cluster, %d s per point; baseline: one change per "
           "raft entry (--commit-batch-max 1), same run\n",
           seconds);
    printf("%5s %7s | %12s %9s %9s | %12s %9s %9s | %6s\n", "nodes", "clients", "baseline/s",
           "p50 ms", "p99 ms", "grouped/s", "p50 ms", "p99 ms", "ratio");
    for (int a = 0; a < n_nodes; a++) {
        for (int b = 0; b < n_clients; b++) {
            figures base = measure(nodes[a], clients[b], false);
            figures group = measure(nodes[a], clients[b], true);
            printf("%5d %7d | %12.0f %9.2f %9.2f | %12.0f %9.2f %9.2f | %6.2f", nodes[a],
                   clients[b], base.per_second, base.p50, base.p99, group.per_second, group.p50,
                   group.p99, base.per_second > 0 ? group.per_second / base.per_second : 0.0);
            if (base.errors + group.errors > 0)
                printf("  (not acknowledged: %d, %d)", base.errors, group.errors);
            printf("\n");
            fflush(stdout);
        }
    }
}

static int parse_list(const char *s, int *out)
{
    int n = 0;
    while (*s != '\0' && n < MAX_LIST) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0)
            break;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        seconds = atoi(argv[1]) > 0 ? atoi(argv[1]) : 1;
    if (argc > 2 && (n_clients = parse_list(argv[2], clients)) == 0) {
        fprintf(stderr, "bench_writes: CLIENTS is a list like 1,4,16\n");
        return 2;
    }
    if (argc > 3 && (n_nodes = parse_list(argv[3], nodes)) == 0) {
        fprintf(stderr, "bench_writes: NODES is a list like 1,3\n");
        return 2;
    }
    const struct CMUnitTest benches[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(benches, NULL, NULL);
}
