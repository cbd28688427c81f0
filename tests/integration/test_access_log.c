/* test_access_log.c - the edge's access log (docs/operations.md "Edge
 * access log"): one JSON line per request answered, served or refused,
 * with the client, method, path without its query, tenant, status, bytes,
 * version and duration; hostile bytes stay valid JSON; the file is 0640;
 * SIGHUP reopens it after a rotation. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;
static char log_path[512];

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    memset(&agent, 0, sizeof(agent));
    pc_test_controller_start(&env, &ctl, NULL);
    snprintf(log_path, sizeof(log_path), "%s/access.log", env.root);
    const char *extra[] = {"--edge-access-log", log_path, NULL};
    pc_test_agent_start_for(&env, &agent, "edge-0", &ctl, extra);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* Sends raw bytes to the edge and reads the answer's status line. */
static int raw_status(const char *request)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)agent.edge_port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(write(fd, request, strlen(request)), (ssize_t)strlen(request));
    char buf[512] = "";
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    assert_true(n > 12);
    return atoi(buf + 9);
}

static const char *str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? s : "";
}

static json_int_t num(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static void test_requests_are_logged(void **state)
{
    (void)state;
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "hello");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "acme", src);
    pc_test_wait_live(&agent, "acme", v);
    /* The agent was quiet until now: the log starts with these. */
    json_t *before = pc_test_json_lines(log_path);
    size_t base = json_array_size(before);
    json_decref(before);

    char body[64];
    uint64_t version = 0;
    /* A line is written once the response is sent, so the client may
     * see its answer first: each request waits for its line, which keeps
     * the lines in request order. */
    assert_int_equal(
        pc_test_edge_get(&agent, "acme", "/hi?token=secret", &version, body, sizeof(body)), 200);
    json_decref(pc_test_wait_json_lines(log_path, base + 1));
    assert_int_equal(pc_test_edge_get(&agent, "nobody", "/", &version, NULL, 0), 404);
    json_decref(pc_test_wait_json_lines(log_path, base + 2));
    assert_int_equal(raw_status("GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    json_decref(pc_test_wait_json_lines(log_path, base + 3));
    assert_int_equal(raw_status("GET /%ff\"\\x HTTP/1.1\r\nHost: acme.example\r\n"
                                "Connection: close\r\n\r\n"),
                     200);

    json_t *lines = pc_test_wait_json_lines(log_path, base + 4);
    assert_int_equal(json_array_size(lines), base + 4);
    json_t *l = json_array_get(lines, base);
    assert_string_equal(str(l, "client"), "127.0.0.1");
    assert_string_equal(str(l, "method"), "GET");
    assert_string_equal(str(l, "path"), "/hi"); /* no query: it can carry secrets */
    assert_string_equal(str(l, "tenant"), "acme");
    assert_int_equal(num(l, "status"), 200);
    assert_int_equal(num(l, "version"), (json_int_t)v);
    assert_int_equal(num(l, "bytes"), 5);
    assert_true(num(l, "us") >= 0);
    assert_true(json_is_true(json_object_get(l, "completed")));
    assert_int_equal(strlen(str(l, "time")), 24);
    l = json_array_get(lines, base + 1);
    assert_int_equal(num(l, "status"), 404);
    assert_string_equal(str(l, "tenant"), "nobody"); /* named, though not served here */
    l = json_array_get(lines, base + 2);
    assert_int_equal(num(l, "status"), 400);
    assert_string_equal(str(l, "path"), "/two");
    assert_true(json_is_null(json_object_get(l, "tenant"))); /* refused before any tenant */
    l = json_array_get(lines, base + 3);
    assert_int_equal(num(l, "status"), 200);
    assert_non_null(strstr(str(l, "path"), "\"\\x"));
    json_decref(lines);

    struct stat st;
    assert_int_equal(stat(log_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640);

    /* Rotation: moved, SIGHUP, and the next line is in a new file. */
    char rotated[600];
    snprintf(rotated, sizeof(rotated), "%s.1", log_path);
    assert_int_equal(rename(log_path, rotated), 0);
    assert_int_equal(kill(agent.proc->pid, SIGHUP), 0);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        size_t len = 0;
        char *log = pc_test_read_file(agent.proc->log, &len);
        bool reopened = strstr(log, "edge access log ") != NULL && strstr(log, " reopened");
        free(log);
        if (reopened)
            break;
        if (pc_test_now_ms() > deadline)
            fail_msg("the agent never said it reopened its access log");
        pc_test_sleep_ms(20);
    }
    assert_int_equal(pc_test_edge_get(&agent, "acme", "/after", &version, NULL, 0), 200);
    json_t *fresh = pc_test_wait_json_lines(log_path, 1);
    assert_int_equal(json_array_size(fresh), 1);
    assert_string_equal(str(json_array_get(fresh, 0), "path"), "/after");
    json_decref(fresh);
    json_t *old = pc_test_json_lines(rotated);
    assert_int_equal(json_array_size(old), base + 4);
    json_decref(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_requests_are_logged, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
