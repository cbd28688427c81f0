/* test_health.c - /livez and /readyz on the three daemons
 * (docs/operations.md "Health"): each check a readiness names is seen to
 * pass and to fail for its reason, the verbose form names it, exclude
 * leaves it out, and bad requests are refused without effect. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <netinet/in.h>

#include "harness.h"
#include "http_client.h"

static pc_test_env env;

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_env_init(&env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_env_cleanup(&env);
    return 0;
}

/* GET base+path: the status, and the body in out. */
static int get(const char *base, const char *path, const char *method, char *out, size_t cap)
{
    pc_http_result r;
    pc_err err;
    if (pc_http_call(base, method, path, NULL, NULL, 0, 10000, &r, &err) != PC_OK) {
        snprintf(out, cap, "%s", err.msg);
        return 0;
    }
    snprintf(out, cap, "%s", r.body != NULL ? (const char *)r.body : "");
    int status = r.status;
    pc_http_result_free(&r);
    return status;
}

/* Polls until GET base+path answers want (and its body holds needle, if
 * not NULL); fails the test with the last answer after the converge
 * timeout. */
static void wait_for(const char *base, const char *path, int want, const char *needle)
{
    char body[2048] = "";
    int status = 0;
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline) {
        status = get(base, path, "GET", body, sizeof(body));
        if (status == want && (needle == NULL || strstr(body, needle) != NULL))
            return;
        pc_test_sleep_ms(50);
    }
    fail_msg("%s%s: wanted %d%s%s, last answer %d: %s", base, path, want,
             needle != NULL ? " with " : "", needle != NULL ? needle : "", status, body);
}

static void expect(const char *base, const char *path, int want, const char *needle)
{
    char body[2048];
    int status = get(base, path, "GET", body, sizeof(body));
    if (status != want || (needle != NULL && strstr(body, needle) == NULL))
        fail_msg("%s%s: wanted %d with \"%s\", got %d: %s", base, path, want,
                 needle != NULL ? needle : "", status, body);
}

/* A lone controller: alive and ready, in the short and verbose forms;
 * bad requests refused. */
static void test_controller(void **state)
{
    (void)state;
    pc_test_controller c;
    memset(&c, 0, sizeof(c));
    pc_test_controller_start(&env, &c, NULL);
    char body[2048];
    assert_int_equal(get(c.api_url, "/livez", "GET", body, sizeof(body)), 200);
    assert_string_equal(body, "ok\n");
    /* Ready once its raft node leads (it may still be electing itself). */
    wait_for(c.api_url, "/readyz", 200, NULL);
    assert_int_equal(get(c.api_url, "/readyz", "GET", body, sizeof(body)), 200);
    assert_string_equal(body, "ok\n");
    assert_int_equal(get(c.api_url, "/readyz?verbose", "GET", body, sizeof(body)), 200);
    /* A lone controller is a cluster of one. */
    assert_string_equal(body, "[+]store ok\n[+]loop ok\n[+]shutdown ok\n[+]member ok\n"
                              "[+]leader ok\n[+]applied ok\nreadyz check passed\n");
    assert_int_equal(get(c.api_url, "/livez?verbose=1", "GET", body, sizeof(body)), 200);
    assert_string_equal(body, "[+]store ok\n[+]loop ok\nlivez check passed\n");
    /* No token needed (a load balancer has none), no write accepted. */
    assert_int_equal(get(c.api_url, "/readyz", "POST", body, sizeof(body)), 405);
    assert_int_equal(get(c.api_url, "/readyz", "HEAD", body, sizeof(body)), 200);
    /* Unknown query parameters and junk are ignored, not errors. */
    expect(c.api_url, "/readyz?exclude=&verbose=%00%ff&x", 200, "readyz check passed");
    expect(c.api_url, "/readyz?exclude=,,,nothing,", 200, "ok\n");
    pc_test_controller_stop(&c);
}

/* A cluster: every node ready once it has a leader and applied what was
 * committed; a node whose peers are gone loses its leader and says so,
 * while it is still alive. */
static void test_cluster_quorum(void **state)
{
    (void)state;
    pc_test_cluster cl;
    pc_test_cluster_init(&env, &cl, 3, 3, NULL);
    assert_true(pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS) >= 0);
    for (int i = 0; i < 3; i++)
        wait_for(cl.node[i].api_url, "/readyz?verbose", 200,
                 "[+]member ok\n[+]leader ok\n[+]applied ok\nreadyz check passed\n");
    pc_test_controller_stop(&cl.node[1]);
    pc_test_controller_stop(&cl.node[2]);
    /* A leader that cannot reach a majority steps down: no leader. */
    wait_for(cl.node[0].api_url, "/readyz", 503, "[-]leader failed: no leader known\n");
    expect(cl.node[0].api_url, "/readyz", 503, "readyz check failed\n");
    expect(cl.node[0].api_url, "/livez", 200, "ok\n");
    /* What a caller chose to ignore no longer fails it. */
    expect(cl.node[0].api_url, "/readyz?exclude=leader", 200, "ok\n");
    expect(cl.node[0].api_url, "/readyz?exclude=leader&verbose", 200, "[+]leader excluded: ok\n");
    /* The peers come back: ready again. */
    pc_test_cluster_start_node(&env, &cl, 1, false, NULL);
    wait_for(cl.node[0].api_url, "/readyz", 200, "ok\n");
    pc_test_cluster_stop(&cl);
}

/* An agent with no controller to hear from is alive but not ready (it
 * never heard a heartbeat); ready once it has one; not ready again when
 * heartbeats stop for stale_after_ms. */
/* An agent whose controllers are nowhere (it never gets a heartbeat). */
static void start_lonely_agent(pc_test_agent *a, const char *id, const char *const *extra)
{
    char nowhere[64];
    snprintf(nowhere, sizeof(nowhere), "tcp://127.0.0.1:%d", pc_test_free_port());
    const char *none[] = {nowhere, NULL};
    memset(a, 0, sizeof(*a));
    pc_test_agent_start(&env, a, id, none, none, extra);
}

static void test_agent_freshness(void **state)
{
    (void)state;
    const char *extra[] = {"--stale-after-ms", "1000", NULL};
    pc_test_agent lonely;
    start_lonely_agent(&lonely, "lonely", extra);
    expect(lonely.admin_url, "/livez", 200, "ok\n");
    expect(lonely.admin_url, "/readyz?verbose", 503,
           "[+]store ok\n[+]loop ok\n[+]shutdown ok\n[+]edge ok\n"
           "[-]fresh failed: no valid heartbeat since start\nreadyz check failed\n");
    /* A load balancer that keeps agents serving their stored versions
     * through a controller outage leaves freshness out. */
    expect(lonely.admin_url, "/readyz?exclude=fresh", 200, "ok\n");
    pc_test_agent_stop(&lonely);

    pc_test_controller c;
    memset(&c, 0, sizeof(c));
    pc_test_controller_start(&env, &c, NULL);
    pc_test_agent a;
    memset(&a, 0, sizeof(a));
    pc_test_agent_start_for(&env, &a, "edge-0", &c, extra);
    wait_for(a.admin_url, "/readyz", 200, "ok\n");
    pc_test_controller_stop(&c);
    wait_for(a.admin_url, "/readyz", 503, "[-]fresh failed: last valid heartbeat ");
    expect(a.admin_url, "/livez", 200, "ok\n");
    char body[256];
    assert_int_equal(get(a.admin_url, "/readyz", "DELETE", body, sizeof(body)), 405);
    pc_test_agent_stop(&a);
}

/* The edge check asks the edge as a load balancer would: an edge at
 * edge_max_connections refuses the question, and the agent is not ready
 * until a connection frees up (seen by the next probe: wait_for). */
static void test_agent_edge(void **state)
{
    (void)state;
    const char *extra[] = {"--edge-max-connections", "2", NULL};
    pc_test_agent a;
    start_lonely_agent(&a, "full", extra);
    expect(a.admin_url, "/readyz?exclude=fresh&verbose", 200, "[+]edge ok\n");
    /* /readyz reads the answer of a prober of its own: however many ask,
     * the edge is asked about once a second (asked from each /readyz,
     * a wedged edge held an admin thread per prober for 2 s). */
    uint64_t probes0 = pc_test_agent_metric(&a, "popcast_agent_edge_probes_total");
    assert_true(probes0 >= 1); /* the one at start */
    int64_t t0 = pc_test_now_ms();
    for (int i = 0; i < 40; i++)
        expect(a.admin_url, "/readyz?exclude=fresh", 200, "ok\n");
    int64_t took = pc_test_now_ms() - t0;
    uint64_t probes = pc_test_agent_metric(&a, "popcast_agent_edge_probes_total") - probes0;
    if (probes > (uint64_t)(took / 1000 + 2))
        fail_msg("40 /readyz in %lld ms made %llu edge probes", (long long)took,
                 (unsigned long long)probes);
    int held[2];
    for (int i = 0; i < 2; i++) {
        held[i] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)a.edge_port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(connect(held[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
        /* Counted before the next: the edge's threads accept in parallel,
         * and a later connection may be counted before an earlier one. */
        int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
        while (pc_test_agent_metric(&a, "popcast_edge_connections") != (uint64_t)i + 1) {
            if (pc_test_now_ms() > deadline)
                fail_msg("the edge did not count connection %d", i + 1);
            pc_test_sleep_ms(20);
        }
    }
    wait_for(a.admin_url, "/readyz?exclude=fresh&verbose", 503,
             "[-]edge failed: the edge does not answer: ");
    expect(a.admin_url, "/livez", 200, "ok\n"); /* alive, only not ready */
    for (int i = 0; i < 2; i++)
        close(held[i]);
    wait_for(a.admin_url, "/readyz?exclude=fresh", 200, "ok\n");
    pc_test_agent_stop(&a);
}

/* From the stop signal on, readiness fails its shutdown check, so a load
 * balancer drains the agent while it stops. The hidden test_hang_on_stop
 * holds the stop where it starts, so the check is seen, not raced. */
static void test_agent_stopping(void **state)
{
    (void)state;
    const char *extra[] = {"--test-hang-on-stop", "--shutdown-timeout-ms", "60000", NULL};
    pc_test_agent a;
    start_lonely_agent(&a, "stopping", extra);
    expect(a.admin_url, "/readyz?exclude=fresh&verbose", 200, "[+]shutdown ok\n");
    assert_int_equal(kill(a.proc->pid, SIGTERM), 0);
    wait_for(a.admin_url, "/readyz?exclude=fresh&verbose", 503, "[-]shutdown failed: stopping\n");
    pc_proc_kill9(a.proc);
    pc_proc_free(a.proc);
    a.proc = NULL;
}

/* A relay is ready while verified heartbeats come from upstream. */
static void test_relay_upstream(void **state)
{
    (void)state;
    pc_test_controller c;
    memset(&c, 0, sizeof(c));
    pc_test_controller_start(&env, &c, NULL);
    pc_test_relay r;
    memset(&r, 0, sizeof(r));
    const char *subs[] = {c.pub_url, NULL};
    const char *syncs[] = {c.sync_url, NULL};
    const char *extra[] = {"--stale-after-ms", "1000", NULL};
    pc_test_relay_start(&env, &r, "relay-h", "pop-a", subs, syncs, extra);
    wait_for(r.admin_url, "/readyz?verbose", 200,
             "[+]loop ok\n[+]shutdown ok\n[+]upstream ok\nreadyz check passed\n");
    expect(r.admin_url, "/livez", 200, "ok\n");
    pc_test_controller_stop(&c);
    wait_for(r.admin_url, "/readyz", 503, "[-]upstream failed: last verified heartbeat ");
    expect(r.admin_url, "/livez", 200, "ok\n");
    expect(r.admin_url, "/readyz?exclude=upstream", 200, "ok\n");
    char body[256];
    assert_int_equal(get(r.admin_url, "/readyz", "POST", body, sizeof(body)), 405);
    pc_test_relay_stop(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_controller, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cluster_quorum, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_freshness, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_edge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_agent_stopping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relay_upstream, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
