/* test_watch.c - GET /v1/watch (docs/api.md "Watch") on a real
 * controller and agent: every committed entry once and in seq order,
 * resumable from ?from= and Last-Event-ID; rollout and deployment events
 * as they happen; a scoped token sees its tenants only; bad requests are
 * refused before any stream starts; a watcher that stops reading is cut
 * and never slows the controller. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "harness.h"
#include "sse.h"

#define MAX_EVENTS 512

typedef struct sse_event {
    unsigned long long id;
    char type[32];
    json_t *data;
} sse_event;

/* A watch connection and what it read so far. */
typedef struct watcher {
    int fd;
    int status;
    char head[65536 * 2]; /* the answer's head, until it is whole */
    size_t head_len;
    pc_sse sse;
    bool head_done, closed;
    sse_event events[MAX_EVENTS];
    size_t n;
} watcher;

static pc_test_env env;
static pc_test_controller ctl;

static int connect_api(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/* Sends a GET of path to the controller on port with token (NULL: none)
 * and extra header lines. */
static void open_watch_on(watcher *w, int port, const char *path, const char *token,
                          const char *extra, int rcvbuf)
{
    memset(w, 0, sizeof(*w));
    w->fd = connect_api(port, rcvbuf);
    char req[1024];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%s%s%s\r\n", path,
                     token ? "Authorization: Bearer " : "", token ? token : "", token ? "\r\n" : "",
                     extra ? extra : "");
    assert_int_equal(write(w->fd, req, (size_t)n), n);
}

static void open_watch(watcher *w, const char *path, const char *token, const char *extra,
                       int rcvbuf)
{
    open_watch_on(w, ctl.api_port, path, token, extra, rcvbuf);
}

static bool keep_event(void *arg, const pc_sse_event *e)
{
    watcher *w = arg;
    json_t *data = json_loads(e->data, 0, NULL);
    assert_non_null(data);
    if (w->n == MAX_EVENTS) {
        json_decref(data);
        return true;
    }
    sse_event *k = &w->events[w->n++];
    k->id = strtoull(e->id, NULL, 10);
    snprintf(k->type, sizeof(k->type), "%s", e->type);
    k->data = data;
    return true;
}

/* Reads what is there within timeout_ms; false once the peer closed. */
static bool pump(watcher *w, int timeout_ms)
{
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    if (w->closed || poll(&p, 1, timeout_ms) <= 0)
        return !w->closed;
    char chunk[65536];
    ssize_t got = read(w->fd, chunk, sizeof(chunk));
    if (got <= 0) {
        w->closed = true;
        return false;
    }
    const char *body = chunk;
    size_t len = (size_t)got;
    if (!w->head_done) {
        /* The head: gathered until its blank line, for the status. */
        assert_true(w->head_len + len < sizeof(w->head));
        memcpy(w->head + w->head_len, chunk, len);
        w->head_len += len;
        w->head[w->head_len] = '\0';
        char *end = strstr(w->head, "\r\n\r\n");
        if (end == NULL)
            return true;
        assert_int_equal(sscanf(w->head, "HTTP/1.1 %d", &w->status), 1);
        w->head_done = true;
        body = end + 4;
        len = w->head_len - (size_t)(body - w->head);
    }
    if (w->status == 200)
        assert_true(pc_sse_feed(&w->sse, body, len, keep_event, w));
    return true;
}

static void close_watch(watcher *w)
{
    close(w->fd);
    for (size_t i = 0; i < w->n; i++)
        json_decref(w->events[i].data);
    pc_sse_free(&w->sse);
}

/* The index of the first event of type (and, unless NULL, tenant) at or
 * after from, waiting for it up to the converge timeout; fails if none. */
static size_t wait_event(watcher *w, size_t from, const char *type, const char *tenant,
                         unsigned long long seq)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        for (size_t i = from; i < w->n; i++) {
            const sse_event *e = &w->events[i];
            const char *t = json_string_value(json_object_get(e->data, "tenant"));
            if (strcmp(e->type, type) == 0 && (tenant == NULL || (t && strcmp(t, tenant) == 0)) &&
                (seq == 0 || e->id == seq))
                return i;
        }
        if (pc_test_now_ms() > deadline || !pump(w, 100))
            fail_msg("no %s event%s%s (seq %llu) in %zu events", type, tenant ? " of " : "",
                     tenant ? tenant : "", seq, w->n);
    }
}

/* The entries among w's events, as their seqs in order. */
static size_t entry_seqs(const watcher *w, unsigned long long *out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < w->n && n < cap; i++)
        if (strcmp(w->events[i].type, "entry") == 0)
            out[n++] = w->events[i].id;
    return n;
}

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* Entries once each, in seq order, from where the watcher asked; the
 * agent's progress as rollout events; resumption from Last-Event-ID. */
static void test_entries_and_rollout(void **state)
{
    (void)state;
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    watcher w;
    open_watch(&w, "/v1/watch?from=0", env.token, NULL, 0);
    char src[256];
    for (int i = 1; i <= 3; i++) {
        char answer[32];
        snprintf(answer, sizeof(answer), "a%d", i);
        pc_test_lua_hello(src, sizeof(src), answer);
        assert_int_equal(pc_test_deploy_lua(&env, &ctl, "wa", src), (uint64_t)i);
    }
    pc_test_lua_hello(src, sizeof(src), "b1");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "wb", src), 1);
    size_t last = wait_event(&w, 0, "entry", "wb", 0);
    assert_int_equal(w.status, 200);
    unsigned long long seqs[16];
    size_t n = entry_seqs(&w, seqs, 16);
    assert_int_equal(n, 4);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(seqs[i], i + 1);
    json_t *d = w.events[last].data;
    assert_string_equal(json_string_value(json_object_get(d, "kind")), "deploy");
    assert_int_equal(json_integer_value(json_object_get(d, "version")), 1);
    /* The agent makes wb v1 live: a rollout event says so. */
    for (size_t from = 0;;) {
        size_t i = wait_event(&w, from, "rollout", "wb", 0);
        json_t *r = w.events[i].data;
        if (json_integer_value(json_object_get(r, "live_version")) == 1) {
            assert_string_equal(json_string_value(json_object_get(r, "agent_id")), "edge-1");
            break;
        }
        from = i + 1;
    }
    close_watch(&w);

    /* Reconnecting with the last id it got: the entries after it. */
    open_watch(&w, "/v1/watch", env.token, "Last-Event-ID: 2\r\n", 0);
    wait_event(&w, 0, "entry", "wb", 4);
    n = entry_seqs(&w, seqs, 16);
    assert_int_equal(n, 2);
    assert_int_equal(seqs[0], 3);
    assert_int_equal(seqs[1], 4);
    /* ... and new ones as they come. */
    pc_test_lua_hello(src, sizeof(src), "a4");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "wa", src), 4);
    wait_event(&w, 0, "entry", "wa", 5);
    close_watch(&w);
    pc_test_agent_stop(&agent);
}

/* A token scoped to a tenant watches that tenant's events only. */
static void test_scoped_token(void **state)
{
    (void)state;
    pc_http_result r;
    const char *req = "{\"tenants\": [\"wb\"], \"name\": \"wb-dashboard\"}";
    assert_int_equal(
        pc_test_api(&env, &ctl, "POST", "/v1/tokens", "application/json", req, strlen(req), &r),
        201);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    char token[128];
    snprintf(token, sizeof(token), "%s", json_string_value(json_object_get(doc, "token")));
    json_decref(doc);
    watcher w;
    open_watch(&w, "/v1/watch?from=0", token, NULL, 0);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "b2");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "wb", src);
    uint64_t head = pc_test_controller_head(&env, &ctl);
    wait_event(&w, 0, "entry", "wb", head);
    (void)v;
    for (size_t i = 0; i < w.n; i++) {
        const char *t = json_string_value(json_object_get(w.events[i].data, "tenant"));
        if (t == NULL || strcmp(t, "wb") != 0)
            fail_msg("a token scoped to wb saw a %s event of %s", w.events[i].type,
                     t ? t : "(none)");
    }
    close_watch(&w);
    /* It may not ask for another tenant's: as if that one did not exist. */
    open_watch(&w, "/v1/watch?tenant=wa", token, NULL, 0);
    while (!w.head_done && pump(&w, 1000))
        ;
    assert_int_equal(w.status, 404);
    close_watch(&w);
}

/* ?tenant=: one tenant's events only, for an admin too; a scoped token
 * may name only its own (test_scoped_token). */
static void test_one_tenant(void **state)
{
    (void)state;
    watcher w;
    open_watch(&w, "/v1/watch?from=0&tenant=wb", env.token, NULL, 0);
    uint64_t head = pc_test_controller_head(&env, &ctl);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "a-again");
    pc_test_deploy_lua(&env, &ctl, "wa", src);
    pc_test_lua_hello(src, sizeof(src), "b-again");
    pc_test_deploy_lua(&env, &ctl, "wb", src);
    wait_event(&w, 0, "entry", "wb", head + 2);
    for (size_t i = 0; i < w.n; i++) {
        const char *t = json_string_value(json_object_get(w.events[i].data, "tenant"));
        if (t == NULL || strcmp(t, "wb") != 0)
            fail_msg("a watch of wb saw a %s event of %s", w.events[i].type, t ? t : "(none)");
    }
    close_watch(&w);
    struct {
        const char *path;
        int status;
    } bad[] = {
        {"/v1/watch?tenant=Not_A_Tenant", 400},
        {"/v1/watch?tenant=", 400},
        {"/v1/"
         "watch?tenant=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
         400},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        open_watch(&w, bad[i].path, env.token, NULL, 0);
        while (!w.head_done && pump(&w, 1000))
            ;
        if (w.status != bad[i].status)
            fail_msg("GET %s: %d, expected %d", bad[i].path, w.status, bad[i].status);
        close_watch(&w);
    }
}

/* Refused before any stream: no token, a bad from, a bad Last-Event-ID,
 * a write method. */
static void test_bad_requests(void **state)
{
    (void)state;
    struct {
        const char *path, *token, *extra;
        int status;
    } cases[] = {
        {"/v1/watch", NULL, NULL, 401},
        {"/v1/watch?from=abc", env.token, NULL, 400},
        {"/v1/watch?from=-1", env.token, NULL, 400},
        {"/v1/watch?from=99999999999999999999999", env.token, NULL, 400},
        {"/v1/watch", env.token, "Last-Event-ID: x1\r\n", 400},
        {"/v1/watch?from=%zz", env.token, NULL, 400},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        watcher w;
        open_watch(&w, cases[i].path, cases[i].token, cases[i].extra, 0);
        while (!w.head_done && pump(&w, 1000))
            ;
        if (w.status != cases[i].status)
            fail_msg("GET %s: %d, expected %d", cases[i].path, w.status, cases[i].status);
        close_watch(&w);
    }
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/watch", "application/json", "{}", 2, &r),
                     405);
    pc_http_result_free(&r);
}

/* Reads a watcher on its own thread until told to stop, counting its
 * deployment events, so that it keeps up however the test thread is
 * scheduled. */
typedef struct reader {
    watcher *w;
    atomic_bool stop;
    atomic_size_t deployments;
} reader;

static void *read_on(void *arg)
{
    reader *r = arg;
    while (!atomic_load(&r->stop) && pump(r->w, 50)) {
        size_t n = 0;
        for (size_t i = 0; i < r->w->n; i++)
            n += strcmp(r->w->events[i].type, "deployment") == 0;
        atomic_store(&r->deployments, n);
    }
    return NULL;
}

/* A watcher that stops reading is cut once its queue (1 MiB) is
 * full; the controller answers as before meanwhile, and a reading
 * watcher gets every event. */
static void test_slow_watcher_is_cut(void **state)
{
    (void)state;
    watcher slow, quick;
    open_watch(&slow, "/v1/watch", env.token, NULL, 1024);
    open_watch(&quick, "/v1/watch", env.token, NULL, 0);
    reader quick_reader = {.w = &quick};
    pthread_t quick_thread;
    assert_int_equal(pthread_create(&quick_thread, NULL, read_on, &quick_reader), 0);
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/metrics", NULL, NULL, 0, &r), 200);
    pc_http_result_free(&r);
    /* Big deployment events: a held version and a deployment whose first
     * stage names 64 long agent ids, edge-1 (stopped) and 63 that do not
     * exist, so it never passes; paused and resumed again and again. */
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "held");
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/wc/bundles?hold=true");
    assert_int_equal(pc_test_api(&env, &ctl, "POST", path, "text/x-lua", src, strlen(src), &r),
                     201);
    pc_http_result_free(&r);
    char plan[8192];
    size_t n = (size_t)snprintf(plan, sizeof(plan), "{\"plan\":[{\"agents\":[");
    for (int i = 0; i < 64; i++)
        n += (size_t)snprintf(plan + n, sizeof(plan) - n,
                              i ? ",\"agent-that-does-not-exist-anywhere-%02d\"" : "\"edge-1\"", i);
    snprintf(plan + n, sizeof(plan) - n, "]},{\"everyone\":true}]}");
    assert_int_equal(pc_test_api(&env, &ctl, "POST", "/v1/tenants/wc/deployments",
                                 "application/json", plan, strlen(plan), &r),
                     201);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    long long id = (long long)json_integer_value(json_object_get(doc, "id"));
    json_decref(doc);
    int ops = 0;
    for (; ops < 400; ops++) {
        snprintf(path, sizeof(path), "/v1/tenants/wc/deployments/%lld/%s", id,
                 ops % 2 ? "resume" : "pause");
        assert_int_equal(pc_test_api(&env, &ctl, "POST", path, NULL, NULL, 0, &r), 200);
        pc_http_result_free(&r);
    }
    /* The quick one got every change of the record: one event each (the
     * operations, and the driver's own, such as its first stage). */
    snprintf(path, sizeof(path), "/v1/tenants/wc/deployments/%lld", id);
    doc = pc_test_controller_json(&env, &ctl, path);
    assert_non_null(doc);
    size_t changes = json_array_size(json_object_get(doc, "events"));
    json_decref(doc);
    assert_true(changes >= (size_t)ops + 1);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    size_t seen = 0;
    while ((seen = atomic_load(&quick_reader.deployments)) < changes && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    atomic_store(&quick_reader.stop, true);
    pthread_join(quick_thread, NULL);
    assert_int_equal(seen, changes);
    /* The slow one was cut: its stream ends with "cut". */
    deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (!slow.closed && pc_test_now_ms() < deadline)
        pump(&slow, 200);
    assert_true(slow.closed);
    assert_true(slow.n > 0);
    assert_string_equal(slow.events[slow.n - 1].type, "cut");
    assert_true(slow.n < quick.n);
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/metrics", NULL, NULL, 0, &r), 200);
    assert_non_null(strstr((const char *)r.body, "popcast_controller_watch_cut_total 1"));
    pc_http_result_free(&r);
    close_watch(&slow);
    close_watch(&quick);
}

/* popcast watch: a line per event, --from, --count, a tenant's only,
 * --json; usage errors before any request. */
static void test_cli_watch(void **state)
{
    (void)state;
    char out[16384];
    const char *two[] = {"watch", "--from", "0", "--count", "2", NULL};
    if (pc_test_cli(&env, &ctl, two, out, sizeof(out)) != 0)
        fail_msg("popcast watch --from 0 --count 2: %s", out);
    assert_non_null(strstr(out, "seq 1  deploy wa v1 by admin"));
    assert_non_null(strstr(out, "seq 2  deploy wa v2 by admin"));
    assert_null(strstr(out, "seq 3 "));
    const char *json[] = {"watch", "wb", "--from", "0", "--count", "1", "--json", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, json, out, sizeof(out)), 0);
    json_t *doc = json_loads(out, JSON_DISABLE_EOF_CHECK, NULL);
    assert_non_null(doc);
    assert_string_equal(json_string_value(json_object_get(doc, "event")), "entry");
    assert_int_equal(json_integer_value(json_object_get(doc, "id")), 4);
    assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "data"), "tenant")),
                        "wb");
    json_decref(doc);
    const char *bad_from[] = {"watch", "--from", "x", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad_from, out, sizeof(out)), 2);
    const char *bad_count[] = {"watch", "--count", "0", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad_count, out, sizeof(out)), 2);
    const char *bad_tenant[] = {"watch", "Not-A-Tenant", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, bad_tenant, out, sizeof(out)), 2);
}

/* A new agent is announced ("fleet", admin watchers); on a follower of
 * a 3-node cluster, entries committed through the leader come in order,
 * and the leader's kill -9 is a "cluster" event naming the next one. */
static void test_fleet_and_cluster_events(void **state)
{
    (void)state;
    watcher w;
    open_watch(&w, "/v1/watch", env.token, NULL, 0);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-2", &ctl, NULL);
    for (size_t from = 0;;) {
        size_t i = wait_event(&w, from, "fleet", NULL, 0);
        json_t *d = w.events[i].data;
        if (strcmp(json_string_value(json_object_get(d, "agent_id")), "edge-2") == 0) {
            assert_string_equal(json_string_value(json_object_get(d, "state")), "ok");
            break;
        }
        from = i + 1;
    }
    pc_test_agent_stop(&agent);
    close_watch(&w);

    pc_test_cluster cl;
    pc_test_cluster_init(&env, &cl, 3, 3, NULL);
    int leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    int follower = (leader + 1) % 3;
    open_watch_on(&w, cl.node[follower].api_port, "/v1/watch?from=0", env.token, NULL, 0);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "c1");
    assert_int_equal(pc_test_deploy_lua(&env, &cl.node[leader], "wc", src), 1);
    wait_event(&w, 0, "entry", "wc", 1);
    pc_proc_kill9(cl.node[leader].proc);
    size_t i = wait_event(&w, 0, "cluster", NULL, 0);
    json_t *d = w.events[i].data;
    assert_int_not_equal(json_integer_value(json_object_get(d, "leader")),
                         strtoll(cl.id[leader], NULL, 10));
    close_watch(&w);
    pc_proc_free(cl.node[leader].proc);
    cl.node[leader].proc = NULL;
    pc_test_cluster_stop(&cl);
}

/* A controller stops cleanly (exit 0, in time) with watchers connected,
 * and their streams end. */
static void test_stop_with_watchers(void **state)
{
    (void)state;
    watcher a, b;
    open_watch(&a, "/v1/watch?from=0", env.token, NULL, 0);
    open_watch(&b, "/v1/watch", env.token, NULL, 1024);
    wait_event(&a, 0, "entry", NULL, 1);
    pc_test_controller_stop(&ctl); /* fails the test unless it exits 0 */
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (!(a.closed && b.closed) && pc_test_now_ms() < deadline) {
        pump(&a, 100);
        pump(&b, 100);
    }
    assert_true(a.closed && b.closed);
    close_watch(&a);
    close_watch(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_entries_and_rollout),
        cmocka_unit_test(test_scoped_token),
        cmocka_unit_test(test_one_tenant),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_slow_watcher_is_cut),
        cmocka_unit_test(test_cli_watch),
        cmocka_unit_test(test_fleet_and_cluster_events),
        cmocka_unit_test(test_stop_with_watchers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
