/* bench_watch.c - how fast GET /v1/watch tells its watchers of a commit,
 * against an etcd watch of the same writes to the same number of watchers
 * in the same run. Real processes on loopback; run by hand or by CI with
 * tiny sizes.
 *
 *   bench_watch [WATCHERS] [CHANGES]
 *   default:     100        100
 *
 * One controller and WATCHERS SSE connections, read by one thread. Each
 * change is a direct deploy of a small Lua bundle (one raft commit and a
 * signed entry); per change and watcher the bench notes when the entry's
 * event arrived. Printed (milliseconds, medians over CHANGES, and the
 * distribution over every change x watcher):
 *   ack        from sending the deploy to its answer (committed)
 *   event      from sending it to a watcher's event: p50, p99
 *   after ack  from the answer to a watcher's event: p50, p99 (negative
 *              when the event came first)
 *   last       from sending it to the last watcher's event, median
 *   etcd last  an etcd PUT of as many bytes to its last watcher (curl
 *              streaming /v3/watch), median: the baseline `last` is a
 *              ratio to. Left out when etcd is not installed. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "etcd_cluster.h"
#include "sse.h"
#include "harness.h"

#define MAX_WATCHERS 1000
#define MAX_CHANGES  10000

static int n_watchers = 100, n_changes = 100;
static pc_test_env env;
static pc_test_controller ctl;

typedef struct sse_reader {
    int fd;
    char head[4096];
    size_t head_len;
    bool head_done;
    pc_sse sse;
} sse_reader;

static sse_reader *readers;
/* arrived[w * (n_changes + 1) + k]: when watcher w got change k's event
 * (ms, pc_mono_ms_frac), 0 until then. */
static double *arrived;
static uint64_t first_seq; /* the seq of change 1 */
static atomic_bool stop_reading;

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y ? 1 : 0;
}

static double pct(double *v, size_t n, double p)
{
    qsort(v, n, sizeof(*v), compare);
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static int connect_watch(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ctl.api_port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        fprintf(stderr, "bench_watch: cannot connect to the API\n");
        exit(1);
    }
    char req[512];
    int n = snprintf(
        req, sizeof(req),
        "GET /v1/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n\r\n", env.token);
    if (write(fd, req, (size_t)n) != n)
        exit(1);
    return fd;
}

typedef struct arrival {
    int watcher;
    double now;
} arrival;

/* Notes when an entry of the changes arrived at a watcher. */
static bool note_entry(void *arg, const pc_sse_event *e)
{
    const arrival *a = arg;
    unsigned long long id = strtoull(e->id, NULL, 10);
    if (strcmp(e->type, "entry") != 0 || first_seq == 0 || id < first_seq ||
        id >= first_seq + (uint64_t)n_changes)
        return true;
    double *slot = &arrived[(size_t)a->watcher * (size_t)(n_changes + 1) + (id - first_seq) + 1];
    if (*slot == 0)
        *slot = a->now;
    return true;
}

/* Reads r's new bytes: the head once, then events. */
static void scan(int w, sse_reader *r, const char *data, size_t len, double now)
{
    if (!r->head_done) {
        size_t room = sizeof(r->head) - 1 - r->head_len;
        memcpy(r->head + r->head_len, data, len < room ? len : room);
        r->head_len += len < room ? len : room;
        r->head[r->head_len] = '\0';
        char *end = strstr(r->head, "\r\n\r\n");
        if (end == NULL)
            return;
        r->head_done = true;
        data = end + 4;
        len = r->head_len - (size_t)(data - r->head);
    }
    arrival a = {.watcher = w, .now = now};
    pc_sse_feed(&r->sse, data, len, note_entry, &a);
}

static void *read_all(void *arg)
{
    (void)arg;
    struct pollfd *p = calloc((size_t)n_watchers, sizeof(*p));
    for (int i = 0; i < n_watchers; i++)
        p[i] = (struct pollfd){.fd = readers[i].fd, .events = POLLIN};
    while (!atomic_load(&stop_reading)) {
        if (poll(p, (nfds_t)n_watchers, 50) <= 0)
            continue;
        double now = pc_mono_ms_frac();
        for (int i = 0; i < n_watchers; i++) {
            if (!(p[i].revents & POLLIN))
                continue;
            char chunk[65536];
            ssize_t got = read(readers[i].fd, chunk, sizeof(chunk));
            if (got <= 0) {
                p[i].fd = -1;
                continue;
            }
            scan(i, &readers[i], chunk, (size_t)got, now);
        }
    }
    free(p);
    return NULL;
}

static bool all_arrived(int k)
{
    for (int w = 0; w < n_watchers; w++)
        if (arrived[(size_t)w * (size_t)(n_changes + 1) + (size_t)k] == 0)
            return false;
    return true;
}

static void bench(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    readers = calloc((size_t)n_watchers, sizeof(*readers));
    arrived = calloc((size_t)n_watchers * (size_t)(n_changes + 1), sizeof(*arrived));
    double *sent = calloc((size_t)n_changes + 1, sizeof(double));
    double *acked = calloc((size_t)n_changes + 1, sizeof(double));
    assert_non_null(readers);
    assert_non_null(arrived);
    for (int i = 0; i < n_watchers; i++)
        readers[i].fd = connect_watch();
    first_seq = pc_test_controller_head(&env, &ctl) + 1;
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, read_all, NULL), 0);
    /* The watchers are up once each answered its head. */
    int64_t deadline = pc_test_now_ms() + 30000;
    for (bool up = false; !up && pc_test_now_ms() < deadline; pc_test_sleep_ms(10)) {
        up = true;
        for (int i = 0; i < n_watchers && up; i++)
            up = readers[i].head_done;
    }
    char src[256];
    for (int k = 1; k <= n_changes; k++) {
        pc_test_lua_hello(src, sizeof(src), k % 2 ? "odd" : "even");
        pc_http_result r;
        sent[k] = pc_mono_ms_frac();
        int status = pc_test_api(&env, &ctl, "POST", "/v1/tenants/watched/bundles?runtime=lua",
                                 "text/x-lua", src, strlen(src), &r);
        acked[k] = pc_mono_ms_frac();
        pc_http_result_free(&r);
        assert_int_equal(status, 201);
        deadline = pc_test_now_ms() + 30000;
        while (!all_arrived(k) && pc_test_now_ms() < deadline)
            pc_test_sleep_ms(1);
        assert_true(all_arrived(k));
    }
    atomic_store(&stop_reading, true);
    pthread_join(reader, NULL);

    size_t total = (size_t)n_watchers * (size_t)n_changes;
    double *ev = calloc(total, sizeof(double)), *after = calloc(total, sizeof(double));
    double *ack = calloc((size_t)n_changes, sizeof(double)),
           *last = calloc((size_t)n_changes, sizeof(double));
    size_t m = 0;
    for (int k = 1; k <= n_changes; k++) {
        ack[k - 1] = acked[k] - sent[k];
        double latest = 0;
        for (int w = 0; w < n_watchers; w++) {
            double t = arrived[(size_t)w * (size_t)(n_changes + 1) + (size_t)k];
            ev[m] = t - sent[k];
            after[m++] = t - acked[k];
            if (t > latest)
                latest = t;
        }
        last[k - 1] = latest - sent[k];
    }
    double ack50 = pct(ack, (size_t)n_changes, 0.5);
    double ev50 = pct(ev, total, 0.5), ev99 = pct(ev, total, 0.99);
    double af50 = pct(after, total, 0.5), af99 = pct(after, total, 0.99);
    double last50 = pct(last, (size_t)n_changes, 0.5);

    /* The baseline: etcd, the same number of watchers, as many writes of
     * as many bytes (the bundle's source). */
    double etcd50 = -1;
    if (etcd_installed()) {
        etcd_cluster e;
        etcd_start(&e, 1, 0);
        etcd_watchers ew;
        etcd_watchers_start(&ew, &e, "watched", n_watchers);
        double *et = calloc((size_t)n_changes, sizeof(double));
        for (int k = 0; k < n_changes; k++) {
            pc_test_lua_hello(src, sizeof(src), k % 2 ? "odd" : "even");
            etcd_watchers_mark(&ew);
            double t0 = pc_mono_ms_frac();
            assert_true(etcd_put(&e, 0, "watched", src, strlen(src)));
            et[k] = etcd_watchers_wait(&ew, strlen(src), t0, 30000);
            assert_true(et[k] >= 0);
        }
        etcd50 = pct(et, (size_t)n_changes, 0.5);
        free(et);
        etcd_watchers_stop(&ew);
        etcd_stop(&e);
    }

    printf("bench_watch: %d watchers, %d changes (direct deploys of %zu bytes), one controller, "
           "loopback; ms\n",
           n_watchers, n_changes, strlen(src));
    printf("%-12s %10s %10s %10s\n", "", "p50", "p99", "ratio");
    printf("%-12s %10.2f %10s %10s\n", "ack", ack50, "", "");
    printf("%-12s %10.2f %10.2f %10s\n", "event", ev50, ev99, "");
    printf("%-12s %10.2f %10.2f %10s\n", "after ack", af50, af99, "");
    if (etcd50 >= 0) {
        printf("%-12s %10.2f %10s %10.2f\n", "last", last50, "", last50 / etcd50);
        printf("%-12s %10.2f %10s %10.2f\n", "etcd last", etcd50, "", 1.0);
    } else {
        printf("%-12s %10.2f %10s %10s\n", "last", last50, "", "-");
        printf("etcd last: not measured (etcd is not installed)\n");
    }
    for (int i = 0; i < n_watchers; i++) {
        close(readers[i].fd);
        pc_sse_free(&readers[i].sse);
    }
    free(readers);
    free(arrived);
    free(sent);
    free(acked);
    free(ev);
    free(after);
    free(ack);
    free(last);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        n_watchers = atoi(argv[1]);
    if (argc > 2)
        n_changes = atoi(argv[2]);
    if (n_watchers < 1 || n_watchers > MAX_WATCHERS || n_changes < 1 || n_changes > MAX_CHANGES) {
        fprintf(stderr, "usage: bench_watch [WATCHERS 1..%d] [CHANGES 1..%d]\n", MAX_WATCHERS,
                MAX_CHANGES);
        return 2;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
