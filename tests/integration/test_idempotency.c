/* test_idempotency.c - idempotent writes (docs/api.md "Idempotent
 * writes"): a deploy, rollback or delete sent again with the same
 * Idempotency-Key is answered with what the first one made, never a second
 * change: on the same leader, from many clients at once, after the
 * leader's kill -9 (the key is replicated with its entry), and from the
 * CLI when an answer is lost on the way back. A key used for another
 * request, a key that is not valid, or a key on a write that does not
 * honour one is refused and changes nothing. */
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

static pc_test_env env;
static pc_test_cluster cl;
static int leader;

typedef struct answer {
    int status;
    uint64_t version, seq;
    bool replayed;      /* the Idempotent-Replayed header */
    bool replayed_body; /* "replayed": true in the answer */
    char code[32];
} answer;

/* A write with the admin token and an Idempotency-Key (NULL: none). */
static answer write_keyed(int node, const char *method, const char *path, const char *content_type,
                          const char *body, const char *key)
{
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", env.token);
    const char *headers[7];
    int h = 0;
    headers[h++] = "Authorization";
    headers[h++] = auth;
    if (key != NULL) {
        headers[h++] = "Idempotency-Key";
        headers[h++] = key;
    }
    if (content_type != NULL) {
        headers[h++] = "Content-Type";
        headers[h++] = content_type;
    }
    headers[h] = NULL;
    answer a = {0};
    pc_http_result r;
    if (pc_http_call(cl.node[node].api_url, method, path, headers, body, body ? strlen(body) : 0,
                     60000, &r, NULL) != PC_OK)
        return a;
    a.status = r.status;
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    a.version = (uint64_t)json_integer_value(json_object_get(doc, "version"));
    a.seq = (uint64_t)json_integer_value(json_object_get(doc, "seq"));
    const char *code = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    snprintf(a.code, sizeof(a.code), "%s", code ? code : "");
    const char *replayed = pc_http_result_header(&r, "Idempotent-Replayed");
    a.replayed = replayed != NULL && strcmp(replayed, "true") == 0;
    a.replayed_body = json_is_true(json_object_get(doc, "replayed"));
    json_decref(doc);
    pc_http_result_free(&r);
    return a;
}

static answer deploy(int node, const char *tenant, const char *text, const char *key)
{
    char path[128], src[256];
    snprintf(path, sizeof(path), "/v1/tenants/%s/bundles", tenant);
    pc_test_lua_hello(src, sizeof(src), text);
    return write_keyed(node, "POST", path, "text/x-lua", src, key);
}

/* How many versions the tenant has on node (deletes included). */
static size_t versions_on(int node, const char *tenant)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/%s/versions", tenant);
    json_t *doc = pc_test_controller_json(&env, &cl.node[node], path);
    size_t n = doc ? json_array_size(json_object_get(doc, "versions")) : 0;
    json_decref(doc);
    return n;
}

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_cluster_init(&env, &cl, 3, 3, NULL);
    leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return 0;
}

static void test_same_key_same_answer(void **state)
{
    (void)state;
    /* Without a key, the same upload twice is two versions. */
    assert_int_equal(deploy(leader, "plain", "same", NULL).version, 1);
    assert_int_equal(deploy(leader, "plain", "same", NULL).version, 2);

    answer first = deploy(leader, "idem-a", "one", "deploy-1");
    assert_int_equal(first.status, 201);
    assert_int_equal(first.version, 1);
    assert_false(first.replayed);
    answer again = deploy(leader, "idem-a", "one", "deploy-1");
    assert_int_equal(again.status, 201);
    assert_int_equal(again.version, 1);
    assert_int_equal(again.seq, first.seq);
    assert_true(again.replayed);
    assert_true(again.replayed_body);
    assert_false(first.replayed_body);
    assert_int_equal(versions_on(leader, "idem-a"), 1);

    /* The same key for something else: refused, nothing made. */
    answer other = deploy(leader, "idem-a", "two", "deploy-1");
    assert_int_equal(other.status, 409);
    assert_string_equal(other.code, "exists");
    assert_int_equal(versions_on(leader, "idem-a"), 1);
    /* Keys are per tenant. */
    answer b = deploy(leader, "idem-b", "one", "deploy-1");
    assert_int_equal(b.status, 201);
    assert_false(b.replayed);

    /* Rollbacks and deletes. */
    const char *rb = "{\"version\": 1}";
    answer r1 =
        write_keyed(leader, "POST", "/v1/tenants/idem-a/rollback", "application/json", rb, "rb-1");
    assert_int_equal(r1.status, 201);
    assert_int_equal(r1.version, 2);
    answer r2 =
        write_keyed(leader, "POST", "/v1/tenants/idem-a/rollback", "application/json", rb, "rb-1");
    assert_int_equal(r2.status, 201);
    assert_int_equal(r2.version, 2);
    assert_true(r2.replayed);
    answer r3 = write_keyed(leader, "POST", "/v1/tenants/idem-a/rollback", "application/json",
                            "{\"version\": 2}", "rb-1");
    assert_int_equal(r3.status, 409);
    answer d1 = write_keyed(leader, "DELETE", "/v1/tenants/idem-a", NULL, NULL, "del-1");
    assert_int_equal(d1.status, 200);
    assert_int_equal(d1.version, 3);
    /* Without the key, a second delete is refused (already deleted);
     * with it, the retry gets the first one's answer. */
    answer d2 = write_keyed(leader, "DELETE", "/v1/tenants/idem-a", NULL, NULL, "del-1");
    assert_int_equal(d2.status, 200);
    assert_int_equal(d2.version, 3);
    assert_true(d2.replayed);
    assert_int_equal(write_keyed(leader, "DELETE", "/v1/tenants/idem-a", NULL, NULL, NULL).status,
                     404);
    assert_int_equal(versions_on(leader, "idem-a"), 3);

    /* Keys that are not valid, and a key where none is honoured: 400,
     * nothing made. */
    char long_key[80];
    memset(long_key, 'k', 65);
    long_key[65] = '\0';
    const char *bad[] = {"has space", long_key, "", "k*y", "a/b", "k\"1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        answer a = deploy(leader, "idem-c", "x", bad[i]);
        if (a.status != 400 || strcmp(a.code, "invalid") != 0)
            fail_msg("key '%s': %d %s", bad[i], a.status, a.code);
    }
    assert_int_equal(versions_on(leader, "idem-c"), 0);
    answer t = write_keyed(leader, "POST", "/v1/tokens", "application/json",
                           "{\"tenants\": [\"idem-c\"], \"name\": \"k\"}", "token-1");
    assert_int_equal(t.status, 400);
    json_t *tokens = pc_test_controller_json(&env, &cl.node[leader], "/v1/tokens");
    assert_non_null(tokens);
    assert_int_equal(json_array_size(json_object_get(tokens, "tokens")), 0);
    json_decref(tokens);
}

/* Many clients send the same keyed deploy at once, while others deploy
 * other tenants: the keyed ones queue behind each other and may meet in
 * one group commit (where a retry waits for the change it repeats); one
 * change is made, and every client gets its answer. */
#define SAME_KEY_CLIENTS 8
#define BUSY_CLIENTS     4
static answer same_key_answers[SAME_KEY_CLIENTS];
static pthread_barrier_t same_key_go;

static void *same_key_client(void *arg)
{
    int k = (int)(intptr_t)arg;
    pthread_barrier_wait(&same_key_go);
    if (k >= SAME_KEY_CLIENTS) {
        char tenant[32];
        snprintf(tenant, sizeof(tenant), "idem-busy-%d", k);
        for (int i = 0; i < 5; i++)
            deploy(leader, tenant, "busy", NULL);
        return NULL;
    }
    same_key_answers[k] = deploy(leader, "idem-race", "raced", "race-1");
    return NULL;
}

static void test_same_key_at_once(void **state)
{
    (void)state;
    enum { N = SAME_KEY_CLIENTS + BUSY_CLIENTS };
    pthread_t threads[N];
    assert_int_equal(pthread_barrier_init(&same_key_go, NULL, N), 0);
    for (int k = 0; k < N; k++)
        assert_int_equal(pthread_create(&threads[k], NULL, same_key_client, (void *)(intptr_t)k),
                         0);
    for (int k = 0; k < N; k++)
        pthread_join(threads[k], NULL);
    pthread_barrier_destroy(&same_key_go);
    int made = 0;
    for (int k = 0; k < SAME_KEY_CLIENTS; k++) {
        if (same_key_answers[k].status != 201 || same_key_answers[k].version != 1)
            fail_msg("client %d: %d version %llu", k, same_key_answers[k].status,
                     (unsigned long long)same_key_answers[k].version);
        made += same_key_answers[k].replayed ? 0 : 1;
    }
    assert_int_equal(made, 1);
    assert_int_equal(versions_on(leader, "idem-race"), 1);
}

/* A TCP relay to the leader's API that passes requests on but drops the
 * answers of the first `drop` connections: the request is acted on and
 * the client hears nothing, or (canned) hears what a controller says when
 * it lost leadership with the write in flight. */
typedef struct lossy {
    int listen_fd, port, upstream_port;
    const char *canned;
    atomic_int drop, connections;
    pthread_t thread;
    atomic_bool stop;
} lossy;

static void lossy_serve(lossy *l, int client)
{
    bool drop = atomic_fetch_add(&l->connections, 1) < atomic_load(&l->drop);
    int up = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)l->upstream_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (up < 0 || connect(up, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        if (up >= 0)
            close(up);
        close(client);
        return;
    }
    struct pollfd p[2] = {{.fd = client, .events = POLLIN}, {.fd = up, .events = POLLIN}};
    char buf[65536];
    int64_t deadline = pc_test_now_ms() + 60000;
    while (pc_test_now_ms() < deadline) {
        if (poll(p, 2, 200) < 0)
            break;
        if (p[0].revents & (POLLIN | POLLHUP)) {
            ssize_t n = read(client, buf, sizeof(buf));
            if (n <= 0)
                p[0].fd = -1; /* the client sent it all: wait for the answer */
            else if (write(up, buf, (size_t)n) != n)
                break;
        }
        if (p[1].revents & (POLLIN | POLLHUP)) {
            ssize_t n = read(up, buf, sizeof(buf));
            if (n <= 0)
                break; /* the controller answered and closed */
            if (!drop && write(client, buf, (size_t)n) != n)
                break;
        }
    }
    if (drop && l->canned != NULL && write(client, l->canned, strlen(l->canned)) < 0)
        fprintf(stderr, "lossy relay: the canned answer was not written\n");
    close(up);
    close(client);
}

static void *lossy_run(void *arg)
{
    lossy *l = arg;
    while (!atomic_load(&l->stop)) {
        struct pollfd p = {.fd = l->listen_fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        int client = accept(l->listen_fd, NULL, NULL);
        if (client >= 0)
            lossy_serve(l, client); /* one at a time: the CLI sends one */
    }
    return NULL;
}

static void lossy_start(lossy *l, int upstream_port, int drop, const char *canned)
{
    memset(l, 0, sizeof(*l));
    l->upstream_port = upstream_port;
    l->canned = canned;
    atomic_store(&l->drop, drop);
    l->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l->listen_fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(l->listen_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(l->listen_fd, 8), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(l->listen_fd, (struct sockaddr *)&sa, &len), 0);
    l->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&l->thread, NULL, lossy_run, l), 0);
}

static void lossy_stop(lossy *l)
{
    atomic_store(&l->stop, true);
    pthread_join(l->thread, NULL);
    close(l->listen_fd);
}

static void test_cli_retries_a_lost_answer(void **state)
{
    (void)state;
    char dir[256], file[300];
    pc_test_tmpdir(dir, sizeof(dir), "idem-cli");
    snprintf(file, sizeof(file), "%s/main.lua", dir);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "from the cli");
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs(src, f);
    fclose(f);

    lossy l;
    lossy_start(&l, cl.node[leader].api_port, 1, NULL);
    pc_test_controller via = cl.node[leader];
    snprintf(via.api_url, sizeof(via.api_url), "http://127.0.0.1:%d", l.port);
    char out[8192];
    const char *args[] = {"deploy", "idem-cli", file, "--direct", NULL};
    int rc = pc_test_cli(&env, &via, args, out, sizeof(out));
    lossy_stop(&l);
    if (rc != 0 || strstr(out, "sending it again with the same idempotency key") == NULL ||
        strstr(out, "deployed idem-cli version 1 ") == NULL)
        fail_msg("popcast deploy through a lossy relay: exit %d:\n%s", rc, out);
    assert_int_equal(atomic_load(&l.connections), 2);
    assert_int_equal(versions_on(leader, "idem-cli"), 1);

    /* A run that gives up (no retries) says how to find out, safely; the
     * same command with that key then answers what the first made. */
    lossy_start(&l, cl.node[leader].api_port, 1, NULL);
    snprintf(via.api_url, sizeof(via.api_url), "http://127.0.0.1:%d", l.port);
    pc_test_lua_hello(src, sizeof(src), "second");
    f = fopen(file, "w");
    assert_non_null(f);
    fputs(src, f);
    fclose(f);
    const char *once[] = {"deploy",    "idem-cli", file, "--retry-for", "0", "--idempotency-key",
                          "cli-run-2", "--direct", NULL};
    rc = pc_test_cli(&env, &via, once, out, sizeof(out));
    lossy_stop(&l);
    if (rc != 7 || strstr(out, "--idempotency-key cli-run-2") == NULL)
        fail_msg("popcast deploy --retry-for 0 through a lossy relay: exit %d:\n%s", rc, out);
    rc = pc_test_cli(&env, &cl.node[leader], once, out, sizeof(out));
    if (rc != 0 || strstr(out, "deployed idem-cli version 2 ") == NULL)
        fail_msg("popcast deploy again with the key: exit %d:\n%s", rc, out);
    assert_int_equal(versions_on(leader, "idem-cli"), 2);

    /* "503 outcome_unknown" (leadership lost with the write in flight):
     * a keyed write is sent again and made once; an unkeyed one is not
     * sent again, and exits 7. */
    static const char unknown[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Connection: close\r\nContent-Length: 90\r\n\r\n"
        "{\"error\":{\"code\":\"outcome_unknown\",\"message\":\"leadership was lost; it may or may "
        "not be\"}}";
    assert_int_equal(strlen(strstr(unknown, "\r\n\r\n") + 4), 90);
    lossy_start(&l, cl.node[leader].api_port, 1, unknown);
    snprintf(via.api_url, sizeof(via.api_url), "http://127.0.0.1:%d", l.port);
    const char *third[] = {"deploy", "idem-unknown", file, "--direct", NULL};
    rc = pc_test_cli(&env, &via, third, out, sizeof(out));
    lossy_stop(&l);
    if (rc != 0 || strstr(out, "deployed idem-unknown version 1 ") == NULL ||
        atomic_load(&l.connections) != 2)
        fail_msg("popcast deploy after 503 outcome_unknown: exit %d:\n%s", rc, out);
    assert_int_equal(versions_on(leader, "idem-unknown"), 1);
    lossy_start(&l, cl.node[leader].api_port, 1, unknown);
    snprintf(via.api_url, sizeof(via.api_url), "http://127.0.0.1:%d", l.port);
    const char *token[] = {"token", "create", "--tenant", "idem-unknown", "--name", "once", NULL};
    rc = pc_test_cli(&env, &via, token, out, sizeof(out));
    lossy_stop(&l);
    if (rc != 7 || strstr(out, "may or may not have been done") == NULL ||
        atomic_load(&l.connections) != 1)
        fail_msg("popcast token create after 503 outcome_unknown: exit %d:\n%s", rc, out);
    json_t *tokens = pc_test_controller_json(&env, &cl.node[leader], "/v1/tokens");
    assert_non_null(tokens);
    assert_int_equal(json_array_size(json_object_get(tokens, "tokens")), 1); /* made, once */
    json_decref(tokens);

    /* A key that is not valid is a usage error: nothing is sent. */
    const char *bad[] = {"deploy", "idem-cli", file, "--idempotency-key", "a b", NULL};
    rc = pc_test_cli(&env, &cl.node[leader], bad, out, sizeof(out));
    if (rc != 2)
        fail_msg("popcast deploy --idempotency-key 'a b': exit %d:\n%s", rc, out);
    assert_int_equal(versions_on(leader, "idem-cli"), 2);
}

/* The key is replicated with its entry: after the leader's kill -9, the
 * new leader answers a retry with the first change. */
static void test_key_survives_failover(void **state)
{
    (void)state;
    answer first = deploy(leader, "idem-failover", "before", "failover-1");
    assert_int_equal(first.status, 201);
    int old = leader;
    pc_proc_kill9(cl.node[old].proc);
    pc_proc_free(cl.node[old].proc);
    cl.node[old].proc = NULL;
    leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0 && leader != old);
    answer again;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        again = deploy(leader, "idem-failover", "before", "failover-1");
        /* 503 while the new leader applies its predecessors' entries;
         * 307 if leadership moved again. */
        if ((again.status != 503 && again.status != 307) || pc_test_now_ms() > deadline)
            break;
        pc_test_sleep_ms(50);
        leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
        assert_true(leader >= 0);
    }
    assert_int_equal(again.status, 201);
    assert_true(again.replayed);
    assert_int_equal(again.version, first.version);
    assert_int_equal(again.seq, first.seq);
    assert_int_equal(versions_on(leader, "idem-failover"), 1);
    pc_test_cluster_start_node(&env, &cl, old, false, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_key_same_answer),
        cmocka_unit_test(test_same_key_at_once),
        cmocka_unit_test(test_cli_retries_a_lost_answer),
        cmocka_unit_test(test_key_survives_failover),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
