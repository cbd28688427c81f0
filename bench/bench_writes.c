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
 * a majority and applied by the leader): median and 99th percentile; and,
 * with group commit, the changes each raft command carried on average on
 * the leader (its popcast_controller_commit_changes_total over
 * popcast_controller_commit_commands_total).
 *
 * A third fresh cluster (defaults) is measured with each client sending
 * BATCH changes per request through POST /v1/changes (each still its own
 * deploy, of a tenant of its own): "batched/s" counts acknowledged
 * changes, its p50/p99 are the batch's round trip. That cluster's write
 * queue (max_pending) is sized so every client's whole batch fits in it.
 *
 * A second table measures one change per request again (group commit on)
 * with each client keeping one connection for all its requests (HTTP/1.1
 * keep-alive, pc_http_session), as deploy tools' HTTP libraries do; its
 * "conns" column counts the connections the clients opened (one each when
 * the controller kept them all), and etcd is measured the same way.
 *
 * When etcd is installed (Debian's etcd-server; ETCD_BIN overrides
 * /usr/bin/etcd), an etcd cluster of the same size is measured the same
 * way in the same run: each client puts values of the same size to a key
 * of its own through etcd's HTTP gateway (POST /v3/kv/put, a new
 * connection per request, as for popcast), and the last column is
 * popcast's grouped figure over etcd's. Without etcd that column says so. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "etcd_cluster.h"
#include "harness.h"
#include "http_client.h"

#define MAX_LIST    8
#define MAX_SAMPLES 400000
#define BATCH       32

static int seconds = 5;
static int clients[MAX_LIST] = {1, 4, 16, 64}, n_clients = 4;
static int nodes[MAX_LIST] = {1, 3}, n_nodes = 2;

/* One measured point: what its clients share. */
typedef struct run {
    pc_test_env *env;
    pc_test_controller *leader; /* popcast */
    etcd_cluster *etcd;         /* or etcd */
    double deadline_ms;
    atomic_int n;
    atomic_int errors;
    atomic_int connections; /* opened by kept clients */
    double *latency;        /* MAX_SAMPLES */
} run;

typedef struct client_arg {
    run *r;
    int id;
} client_arg;

/* One write took t ms, acknowledged or not. */
static void sample(run *r, bool ok, double t)
{
    if (!ok) {
        atomic_fetch_add(&r->errors, 1);
        return;
    }
    int k = atomic_fetch_add(&r->n, 1);
    if (k < MAX_SAMPLES)
        r->latency[k] = t;
}

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
        sample(r, status == 201, pc_mono_ms_frac() - t0);
    }
    return NULL;
}

/* Like client_main, over one kept connection (HTTP/1.1 keep-alive, as
 * deploy tools' HTTP libraries do): counts the connections it opened. */
static void *kept_client_main(void *p)
{
    client_arg *a = p;
    run *r = a->r;
    char tenant[32], src[160], path[64], auth[160];
    snprintf(tenant, sizeof(tenant), "w%d", a->id);
    snprintf(path, sizeof(path), "/v1/tenants/%s/bundles", tenant);
    snprintf(auth, sizeof(auth), "Bearer %s", r->env->token);
    const char *headers[] = {"Authorization", auth, "Content-Type", "text/x-lua", NULL};
    pc_http_session *s = NULL;
    pc_err err;
    assert_int_equal(pc_http_session_open(r->leader->api_url, &s, &err), PC_OK);
    for (int i = 0; pc_mono_ms_frac() < r->deadline_ms; i++) {
        snprintf(src, sizeof(src), "return function(req) return 'client %d change %d' end", a->id,
                 i);
        double t0 = pc_mono_ms_frac();
        pc_http_result res;
        int status = 0;
        if (pc_http_session_call(s, "POST", path, headers, src, strlen(src), 30000, &res, &err) ==
            PC_OK) {
            status = res.status;
            pc_http_result_free(&res);
        }
        sample(r, status == 201, pc_mono_ms_frac() - t0);
    }
    atomic_fetch_add(&r->connections, (int)pc_http_session_connections(s));
    pc_http_session_close(s);
    return NULL;
}

static void *etcd_kept_client_main(void *p)
{
    client_arg *a = p;
    run *r = a->r;
    char key[32], value[160];
    snprintf(key, sizeof(key), "w%d", a->id);
    pc_http_session *s = NULL;
    pc_err err;
    assert_int_equal(pc_http_session_open(r->etcd->client_url[a->id % r->etcd->n], &s, &err),
                     PC_OK);
    for (int i = 0; pc_mono_ms_frac() < r->deadline_ms; i++) {
        int len = snprintf(value, sizeof(value),
                           "return function(req) return 'client %d change %d' end", a->id, i);
        double t0 = pc_mono_ms_frac();
        bool ok = etcd_put_kept(s, key, value, (size_t)len);
        sample(r, ok, pc_mono_ms_frac() - t0);
    }
    atomic_fetch_add(&r->connections, (int)pc_http_session_connections(s));
    pc_http_session_close(s);
    return NULL;
}

/* Like client_main, BATCH changes per request (POST /v1/changes). */
static void *batch_client_main(void *p)
{
    client_arg *a = p;
    run *r = a->r;
    static const size_t cap = BATCH * 160 + 64;
    char *body = malloc(cap);
    assert_non_null(body);
    char auth[160];
    snprintf(auth, sizeof(auth), "Bearer %s", r->env->token);
    const char *headers[] = {"Authorization", auth, "Content-Type", "application/json", NULL};
    for (int i = 0; pc_mono_ms_frac() < r->deadline_ms; i++) {
        size_t n = (size_t)snprintf(body, cap, "{\"changes\":[");
        for (int j = 0; j < BATCH; j++)
            n += (size_t)snprintf(body + n, cap - n,
                                  "%s{\"tenant\":\"w%dx%d\",\"source\":\"return function(req) "
                                  "return 'change %d' end\"}",
                                  j ? "," : "", a->id, j, i);
        n += (size_t)snprintf(body + n, cap - n, "]}");
        double t0 = pc_mono_ms_frac();
        pc_http_result res;
        int committed = 0;
        if (pc_http_call(r->leader->api_url, "POST", "/v1/changes", headers, body, n, 30000, &res,
                         NULL) == PC_OK) {
            json_t *doc = res.status == 200
                              ? json_loadb((const char *)res.body, res.body_len, 0, NULL)
                              : NULL;
            committed = (int)json_integer_value(json_object_get(doc, "committed"));
            json_decref(doc);
            pc_http_result_free(&res);
        }
        double t = pc_mono_ms_frac() - t0;
        for (int j = 0; j < BATCH; j++)
            sample(r, j < committed, t);
    }
    free(body);
    return NULL;
}

static void *etcd_client_main(void *p)
{
    client_arg *a = p;
    run *r = a->r;
    char key[32], value[160];
    snprintf(key, sizeof(key), "w%d", a->id);
    for (int i = 0; pc_mono_ms_frac() < r->deadline_ms; i++) {
        int len = snprintf(value, sizeof(value),
                           "return function(req) return 'client %d change %d' end", a->id, i);
        double t0 = pc_mono_ms_frac();
        bool ok = etcd_put(r->etcd, a->id, key, value, (size_t)len);
        sample(r, ok, pc_mono_ms_frac() - t0);
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
    double batch; /* popcast: changes per raft command, on the leader */
    int errors;
    int connections; /* kept clients: connections they opened */
} figures;

/* Runs n clients (fn) against r for the configured time; the figures. */
static figures drive(run *r, int n, void *(*fn)(void *))
{
    r->latency = calloc(MAX_SAMPLES, sizeof(double));
    pthread_t *threads = calloc((size_t)n, sizeof(*threads));
    client_arg *args = calloc((size_t)n, sizeof(*args));
    assert_true(r->latency != NULL && threads != NULL && args != NULL);
    double start = pc_mono_ms_frac();
    r->deadline_ms = start + seconds * 1000.0;
    for (int k = 0; k < n; k++) {
        args[k] = (client_arg){r, k};
        assert_int_equal(pthread_create(&threads[k], NULL, fn, &args[k]), 0);
    }
    for (int k = 0; k < n; k++)
        pthread_join(threads[k], NULL);
    double elapsed = pc_mono_ms_frac() - start;
    int got = atomic_load(&r->n);
    if (got > MAX_SAMPLES)
        got = MAX_SAMPLES;
    figures f = {.per_second = got * 1000.0 / elapsed,
                 .errors = atomic_load(&r->errors),
                 .connections = atomic_load(&r->connections)};
    if (got > 0) {
        qsort(r->latency, (size_t)got, sizeof(double), cmp_double);
        f.p50 = r->latency[got / 2];
        f.p99 = r->latency[(size_t)((got - 1) * 0.99)];
    }
    free(r->latency);
    free(threads);
    free(args);
    return f;
}

/* How the clients of a point write. */
typedef enum mode { ONE_PER_CONNECTION, KEPT_CONNECTION, BATCH_REQUESTS } mode;

static figures measure(int n_nodes_now, int n_clients_now, bool batching, mode how)
{
    bool batch_requests = how == BATCH_REQUESTS;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_cluster cl;
    const char *off[] = {"--commit-batch-max", "1", NULL};
    /* Every client's whole batch fits in the write queue (max_pending,
     * default 1024), so none of it is refused as "queue full". */
    char pending[32];
    snprintf(pending, sizeof(pending), "%d", n_clients_now * BATCH + 1024);
    const char *room[] = {"--max-pending", pending, NULL};
    pc_test_cluster_init(&env, &cl, n_nodes_now, n_nodes_now,
                         !batching        ? off
                         : batch_requests ? room
                                          : NULL);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    run r = {.env = &env, .leader = &cl.node[leader]};
    figures f = drive(&r, n_clients_now,
                      batch_requests           ? batch_client_main
                      : how == KEPT_CONNECTION ? kept_client_main
                                               : client_main);
    uint64_t commands =
        pc_test_controller_metric(r.leader, "popcast_controller_commit_commands_total");
    uint64_t changes =
        pc_test_controller_metric(r.leader, "popcast_controller_commit_changes_total");
    f.batch = commands > 0 ? (double)changes / (double)commands : 0.0;
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return f;
}

static figures measure_etcd(int n_nodes_now, int n_clients_now, mode how)
{
    etcd_cluster e;
    etcd_start(&e, n_nodes_now, 0);
    run r = {.etcd = &e};
    figures f =
        drive(&r, n_clients_now, how == KEPT_CONNECTION ? etcd_kept_client_main : etcd_client_main);
    etcd_stop(&e);
    return f;
}

static void bench(void **state)
{
    (void)state;
    bool etcd = etcd_installed();
    printf("acknowledged changes through a cluster, %d s per point; baseline: one change per "
           "raft entry (--commit-batch-max 1), same run\n",
           seconds);
    if (!etcd)
        printf("etcd: %s is not installed (Debian: etcd-server): no etcd column\n", etcd_bin());
    printf("%5s %7s | %10s %7s %7s | %10s %7s %7s %6s | %6s | %10s %7s %7s | %10s %7s %7s | "
           "%7s %7s\n",
           "nodes", "clients", "baseline/s", "p50 ms", "p99 ms", "grouped/s", "p50 ms", "p99 ms",
           "batch", "ratio", "batched/s", "p50 ms", "p99 ms", "etcd/s", "p50 ms", "p99 ms",
           "vs etcd", "batched");
    for (int a = 0; a < n_nodes; a++) {
        for (int b = 0; b < n_clients; b++) {
            figures base = measure(nodes[a], clients[b], false, ONE_PER_CONNECTION);
            figures group = measure(nodes[a], clients[b], true, ONE_PER_CONNECTION);
            figures many = measure(nodes[a], clients[b], true, BATCH_REQUESTS);
            printf("%5d %7d | %10.0f %7.2f %7.2f | %10.0f %7.2f %7.2f %6.1f | %6.2f", nodes[a],
                   clients[b], base.per_second, base.p50, base.p99, group.per_second, group.p50,
                   group.p99, group.batch,
                   base.per_second > 0 ? group.per_second / base.per_second : 0.0);
            printf(" | %10.0f %7.2f %7.2f", many.per_second, many.p50, many.p99);
            figures ref = {0};
            if (etcd && nodes[a] <= 3) {
                ref = measure_etcd(nodes[a], clients[b], ONE_PER_CONNECTION);
                printf(" | %10.0f %7.2f %7.2f | %7.2f %7.2f", ref.per_second, ref.p50, ref.p99,
                       ref.per_second > 0 ? group.per_second / ref.per_second : 0.0,
                       ref.per_second > 0 ? many.per_second / ref.per_second : 0.0);
            } else {
                printf(" | %10s %7s %7s | %7s %7s", "-", "-", "-", "-", "-");
            }
            if (base.errors + group.errors + many.errors + ref.errors > 0)
                printf("  (not acknowledged: %d, %d, %d, %d)", base.errors, group.errors,
                       many.errors, ref.errors);
            printf("\n");
            fflush(stdout);
        }
    }
    printf("\none change per request over kept connections (HTTP/1.1 keep-alive), group "
           "commit; etcd the same way; conns: connections the clients opened\n");
    printf("%5s %7s | %10s %7s %7s %6s %6s | %10s %7s %7s %6s | %7s\n", "nodes", "clients",
           "kept/s", "p50 ms", "p99 ms", "batch", "conns", "etcd/s", "p50 ms", "p99 ms", "conns",
           "vs etcd");
    for (int a = 0; a < n_nodes; a++) {
        for (int b = 0; b < n_clients; b++) {
            figures kept = measure(nodes[a], clients[b], true, KEPT_CONNECTION);
            printf("%5d %7d | %10.0f %7.2f %7.2f %6.1f %6d", nodes[a], clients[b], kept.per_second,
                   kept.p50, kept.p99, kept.batch, kept.connections);
            figures ref = {0};
            if (etcd && nodes[a] <= 3) {
                ref = measure_etcd(nodes[a], clients[b], KEPT_CONNECTION);
                printf(" | %10.0f %7.2f %7.2f %6d | %7.2f", ref.per_second, ref.p50, ref.p99,
                       ref.connections,
                       ref.per_second > 0 ? kept.per_second / ref.per_second : 0.0);
            } else {
                printf(" | %10s %7s %7s %6s | %7s", "-", "-", "-", "-", "-");
            }
            if (kept.errors + ref.errors > 0)
                printf("  (not acknowledged: %d, %d)", kept.errors, ref.errors);
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
