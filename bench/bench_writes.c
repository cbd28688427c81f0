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
 * a majority and applied by the leader): median and 99th percentile.
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
#include "http_client.h"
#include "harness.h"

#define MAX_LIST    8
#define MAX_SAMPLES 400000

static int seconds = 5;
static int clients[MAX_LIST] = {1, 4, 16, 64}, n_clients = 4;
static int nodes[MAX_LIST] = {1, 3}, n_nodes = 2;

/* One measured point: what its clients share. */
typedef struct etcd_cluster etcd_cluster;
typedef struct run {
    pc_test_env *env;
    pc_test_controller *leader; /* popcast */
    etcd_cluster *etcd;         /* or etcd */
    double deadline_ms;
    atomic_int n;
    atomic_int errors;
    double *latency; /* MAX_SAMPLES */
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

/* etcd: a cluster of n members on loopback, each with its own ports. */
struct etcd_cluster {
    int n;
    char client_url[3][64];
    pc_proc *proc[3];
    char dir[256];
};

static const char *etcd_bin(void)
{
    const char *bin = getenv("ETCD_BIN");
    return bin != NULL ? bin : "/usr/bin/etcd";
}

static bool etcd_healthy(const char *url)
{
    pc_http_result r;
    pc_err err;
    if (pc_http_call(url, "GET", "/health", NULL, NULL, 0, 2000, &r, &err) != PC_OK)
        return false;
    bool ok = r.status == 200 && r.body != NULL && strstr((char *)r.body, "true") != NULL;
    pc_http_result_free(&r);
    return ok;
}

static void etcd_start(etcd_cluster *e, int n)
{
    memset(e, 0, sizeof(*e));
    e->n = n;
    pc_test_tmpdir(e->dir, sizeof(e->dir), "etcd");
    int peer_port[3];
    char initial[512] = "";
    for (int i = 0; i < n; i++) {
        peer_port[i] = pc_test_free_port();
        snprintf(e->client_url[i], sizeof(e->client_url[i]), "http://127.0.0.1:%d",
                 pc_test_free_port());
        char member[96];
        snprintf(member, sizeof(member), "%se%d=http://127.0.0.1:%d", i ? "," : "", i,
                 peer_port[i]);
        strncat(initial, member, sizeof(initial) - strlen(initial) - 1);
    }
    for (int i = 0; i < n; i++) {
        char name[16], data[320], peer[64], log[340];
        snprintf(name, sizeof(name), "e%d", i);
        snprintf(data, sizeof(data), "%s/%s", e->dir, name);
        snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", peer_port[i]);
        snprintf(log, sizeof(log), "%s/%s.log", e->dir, name);
        char *argv[] = {(char *)etcd_bin(),
                        "--name",
                        name,
                        "--data-dir",
                        data,
                        "--listen-client-urls",
                        e->client_url[i],
                        "--advertise-client-urls",
                        e->client_url[i],
                        "--listen-peer-urls",
                        peer,
                        "--initial-advertise-peer-urls",
                        peer,
                        "--initial-cluster",
                        initial,
                        "--initial-cluster-state",
                        "new",
                        "--log-level",
                        "error",
                        NULL};
        e->proc[i] = pc_proc_spawn(name, argv, log);
        assert_non_null(e->proc[i]);
    }
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (int i = 0; i < n; i++)
        while (!etcd_healthy(e->client_url[i])) {
            if (pc_test_now_ms() > deadline) {
                pc_proc_dump_log(e->proc[i]);
                fail_msg("etcd member %d did not become healthy", i);
            }
            pc_test_sleep_ms(50);
        }
}

static void etcd_stop(etcd_cluster *e)
{
    for (int i = 0; i < e->n; i++) {
        pc_proc_stop(e->proc[i]);
        pc_proc_free(e->proc[i]);
    }
    pc_test_rm_rf(e->dir);
}

/* base64 of "w<id>" style keys and ~100-byte values, as JSON. */
static void b64(const char *in, char *out, size_t cap)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(in), o = 0;
    for (size_t i = 0; i < n && o + 5 < cap; i += 3) {
        uint32_t v = (uint32_t)(uint8_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)(uint8_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= (uint8_t)in[i + 2];
        out[o++] = tbl[(v >> 18) & 63];
        out[o++] = tbl[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
}

static void *etcd_client_main(void *p)
{
    client_arg *a = p;
    run *r = a->r;
    const char *url = r->etcd->client_url[a->id % r->etcd->n];
    char key[32], value[160], k64[64], v64[256], body[400];
    snprintf(key, sizeof(key), "w%d", a->id);
    b64(key, k64, sizeof(k64));
    for (int i = 0; pc_mono_ms_frac() < r->deadline_ms; i++) {
        snprintf(value, sizeof(value), "return function(req) return 'client %d change %d' end",
                 a->id, i);
        b64(value, v64, sizeof(v64));
        int len = snprintf(body, sizeof(body), "{\"key\":\"%s\",\"value\":\"%s\"}", k64, v64);
        pc_http_result res;
        pc_err err;
        double t0 = pc_mono_ms_frac();
        int rc =
            pc_http_call(url, "POST", "/v3/kv/put", NULL, body, (size_t)len, 10000, &res, &err);
        double t = pc_mono_ms_frac() - t0;
        bool ok = rc == PC_OK && res.status == 200;
        if (rc == PC_OK)
            pc_http_result_free(&res);
        sample(r, ok, t);
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
    figures f = {.per_second = got * 1000.0 / elapsed, .errors = atomic_load(&r->errors)};
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
    figures f = drive(&r, n_clients_now, client_main);
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return f;
}

static figures measure_etcd(int n_nodes_now, int n_clients_now)
{
    etcd_cluster e;
    etcd_start(&e, n_nodes_now);
    run r = {.etcd = &e};
    figures f = drive(&r, n_clients_now, etcd_client_main);
    etcd_stop(&e);
    return f;
}

static void bench(void **state)
{
    (void)state;
    bool etcd = access(etcd_bin(), X_OK) == 0;
    printf("acknowledged changes through a cluster, %d s per point; baseline: one change per "
           "raft entry (--commit-batch-max 1), same run\n",
           seconds);
    if (!etcd)
        printf("etcd: %s is not installed (Debian: etcd-server): no etcd column\n", etcd_bin());
    printf("%5s %7s | %10s %7s %7s | %10s %7s %7s | %6s | %10s %7s %7s | %7s\n", "nodes", "clients",
           "baseline/s", "p50 ms", "p99 ms", "grouped/s", "p50 ms", "p99 ms", "ratio", "etcd/s",
           "p50 ms", "p99 ms", "vs etcd");
    for (int a = 0; a < n_nodes; a++) {
        for (int b = 0; b < n_clients; b++) {
            figures base = measure(nodes[a], clients[b], false);
            figures group = measure(nodes[a], clients[b], true);
            printf("%5d %7d | %10.0f %7.2f %7.2f | %10.0f %7.2f %7.2f | %6.2f", nodes[a],
                   clients[b], base.per_second, base.p50, base.p99, group.per_second, group.p50,
                   group.p99, base.per_second > 0 ? group.per_second / base.per_second : 0.0);
            figures ref = {0};
            if (etcd && nodes[a] <= 3) {
                ref = measure_etcd(nodes[a], clients[b]);
                printf(" | %10.0f %7.2f %7.2f | %7.2f", ref.per_second, ref.p50, ref.p99,
                       ref.per_second > 0 ? group.per_second / ref.per_second : 0.0);
            } else {
                printf(" | %10s %7s %7s | %7s", "-", "-", "-", "-");
            }
            if (base.errors + group.errors + ref.errors > 0)
                printf("  (not acknowledged: %d, %d, %d)", base.errors, group.errors, ref.errors);
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
