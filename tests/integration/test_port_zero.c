/* test_port_zero.c - daemons started with port 0 on every listen option
 * write a ready file naming the addresses they actually bound, log the
 * same addresses on their "ready" line, and serve on them; raft_listen
 * refuses port 0 with a reason. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "harness.h"

/* Polls until path holds a ready file written by p (its pid), or p exits,
 * or the start timeout passes. */
static json_t *wait_ready_file(pc_proc *p, const char *path)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline && pc_proc_alive(p)) {
        json_t *doc = json_load_file(path, 0, NULL);
        if (doc != NULL && json_integer_value(json_object_get(doc, "pid")) == p->pid)
            return doc;
        json_decref(doc);
        pc_test_sleep_ms(20);
    }
    pc_proc_dump_log(p);
    fail_msg("%s wrote no ready file %s", p->name, path);
    return NULL;
}

static const char *field(json_t *doc, const char *name)
{
    const char *v = json_string_value(json_object_get(doc, name));
    if (v == NULL)
        fail_msg("the ready file has no \"%s\"", name);
    return v;
}

/* A listen address with a real port: "PREFIXdigits", port > 0. */
static void expect_bound(const char *addr, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strncmp(addr, prefix, n) != 0)
        fail_msg("%s does not start with %s", addr, prefix);
    char *end = NULL;
    long port = strtol(addr + n, &end, 10);
    if (end == addr + n || *end != '\0' || port <= 0 || port > 65535)
        fail_msg("%s does not name a bound port", addr);
}

/* The log line that says "ready", which must name every address. */
static void expect_ready_line(const char *log, const char *const *addrs)
{
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL) {
        if (strstr(line, " ready: ") == NULL)
            continue;
        found = true;
        for (size_t i = 0; addrs[i] != NULL; i++)
            if (strstr(line, addrs[i]) == NULL)
                fail_msg("the ready line does not name %s: %s", addrs[i], line);
    }
    fclose(f);
    if (!found)
        fail_msg("no ready line in %s", log);
}

static void expect_mode_0644(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
}

static int stop(pc_proc *p)
{
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    return status;
}

static void test_controller_on_port_0(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    char dir[400], ready[450], log[450], raft[64];
    snprintf(dir, sizeof(dir), "%s/ctl", env.root);
    snprintf(ready, sizeof(ready), "%s/ctl.ready", env.root);
    snprintf(log, sizeof(log), "%s/ctl.log", env.root);
    snprintf(raft, sizeof(raft), "127.0.0.1:%d", pc_test_free_port());
    /* A stale file from an earlier run is replaced, never read. */
    pc_test_write_file(ready, "{\"pid\": 1}", 10);
    char *argv[] = {getenv("POPCAST_CONTROLLER_BIN"),
                    "--data-dir",
                    dir,
                    "--signing-key",
                    env.key_path,
                    "--admin-token-file",
                    env.token_path,
                    "--allow-plaintext",
                    "--api-listen",
                    "http://127.0.0.1:0",
                    "--pub-listen",
                    "tcp://127.0.0.1:0",
                    "--sync-listen",
                    "tcp://127.0.0.1:0",
                    "--raft-listen",
                    raft,
                    "--ready-file",
                    ready,
                    NULL};
    pc_proc *p = pc_proc_spawn("controller", argv, log);
    json_t *doc = wait_ready_file(p, ready);
    expect_mode_0644(ready);
    const char *api = field(doc, "api"), *pub = field(doc, "pub"), *sync = field(doc, "sync");
    expect_bound(api, "http://127.0.0.1:");
    expect_bound(pub, "tcp://127.0.0.1:");
    expect_bound(sync, "tcp://127.0.0.1:");
    assert_string_equal(field(doc, "raft"), raft);
    const char *addrs[] = {api, pub, sync, raft, NULL};
    expect_ready_line(log, addrs);

    /* The API answers there and names itself with the bound address. */
    pc_test_controller c = {0};
    snprintf(c.api_url, sizeof(c.api_url), "%s", api);
    pc_http_result r;
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    json_t *cluster = NULL;
    while (cluster == NULL && pc_test_now_ms() < deadline) {
        if (pc_test_api(&env, &c, "GET", "/v1/cluster", NULL, NULL, 0, &r) == 200) {
            json_t *d = json_loadb((const char *)r.body, r.body_len, 0, NULL);
            if (json_integer_value(json_object_get(d, "leader_id")) == 1)
                cluster = d;
            else
                json_decref(d);
        }
        pc_http_result_free(&r);
        if (cluster == NULL)
            pc_test_sleep_ms(50);
    }
    assert_non_null(cluster);
    assert_string_equal(json_string_value(json_object_get(cluster, "leader_api")), api);
    json_t *self = json_array_get(json_object_get(cluster, "nodes"), 0);
    assert_string_equal(json_string_value(json_object_get(self, "api_url")), api);
    json_decref(cluster);

    /* The sync address is a rep socket: a req dial completes nng's
     * protocol handshake with it. */
    nng_socket req;
    assert_int_equal(nng_req0_open(&req), 0);
    assert_int_equal(nng_dial(req, sync, NULL, 0), 0);
    nng_close(req);

    /* An agent given the pub and sync addresses converges. */
    pc_test_controller ctl = {0};
    snprintf(ctl.api_url, sizeof(ctl.api_url), "%s", api);
    snprintf(ctl.pub_url, sizeof(ctl.pub_url), "%s", pub);
    snprintf(ctl.sync_url, sizeof(ctl.sync_url), "%s", sync);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, NULL);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "port zero");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&agent, "app", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    pc_test_agent_stop(&agent);
    json_decref(doc);

    /* Stopping: the file goes with the addresses. */
    int status = stop(p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(access(ready, F_OK), -1);
    pc_test_env_cleanup(&env);
}

static void test_agent_on_port_0(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    char dir[400], ready[450], log[450], nowhere[64];
    snprintf(dir, sizeof(dir), "%s/agent", env.root);
    snprintf(ready, sizeof(ready), "%s/agent.ready", env.root);
    snprintf(log, sizeof(log), "%s/agent.log", env.root);
    /* A reserved port nothing listens on: the agent serves without any
     * controller. */
    snprintf(nowhere, sizeof(nowhere), "tcp://127.0.0.1:%d", pc_test_free_port());
    char *argv[] = {getenv("POPCAST_AGENT_BIN"),
                    "--data-dir",
                    dir,
                    "--agent-id",
                    "edge",
                    "--trusted-key",
                    env.pub_path,
                    "--allow-plaintext",
                    "--subscribe",
                    nowhere,
                    "--sync",
                    nowhere,
                    "--edge-listen",
                    "127.0.0.1:0",
                    "--admin-listen",
                    "http://127.0.0.1:0",
                    "--ready-file",
                    ready,
                    NULL};
    pc_proc *p = pc_proc_spawn("agent", argv, log);
    json_t *doc = wait_ready_file(p, ready);
    expect_mode_0644(ready);
    const char *edge = field(doc, "edge"), *admin = field(doc, "admin");
    expect_bound(edge, "127.0.0.1:");
    expect_bound(admin, "http://127.0.0.1:");
    const char *addrs[] = {edge, admin, NULL};
    expect_ready_line(log, addrs);

    /* Both answer where the file says. */
    char edge_url[128];
    snprintf(edge_url, sizeof(edge_url), "http://%s", edge);
    pc_http_result r;
    pc_err err;
    assert_int_equal(
        pc_http_call(edge_url, "GET", "/_popcast/health", NULL, NULL, 0, 10000, &r, &err), PC_OK);
    assert_int_equal(r.status, 200);
    pc_http_result_free(&r);
    assert_int_equal(pc_http_call(admin, "GET", "/v1/health", NULL, NULL, 0, 10000, &r, &err),
                     PC_OK);
    assert_int_equal(r.status, 200);
    pc_http_result_free(&r);
    json_decref(doc);

    int status = stop(p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(access(ready, F_OK), -1);
    pc_test_env_cleanup(&env);
}

/* The controller refuses raft_listen = raft and says `reason`, before it
 * creates anything. */
static void expect_raft_listen_refused(pc_test_env *env, const char *raft, const char *reason)
{
    char dir[400], log[450];
    snprintf(dir, sizeof(dir), "%s/ctl", env->root);
    snprintf(log, sizeof(log), "%s/refused.log", env->root);
    unlink(log);
    char *argv[] = {getenv("POPCAST_CONTROLLER_BIN"),
                    "--data-dir",
                    dir,
                    "--signing-key",
                    env->key_path,
                    "--allow-plaintext",
                    "--api-listen",
                    "http://127.0.0.1:0",
                    "--raft-listen",
                    (char *)raft,
                    NULL};
    pc_proc *p = pc_proc_spawn("controller", argv, log);
    if (!pc_proc_wait_exit(p, PC_TEST_START_TIMEOUT_MS))
        fail_msg("a controller with raft_listen %s did not stop", raft);
    int status = stop(p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 1);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char text[4096];
    size_t len = fread(text, 1, sizeof(text) - 1, f);
    text[len] = '\0';
    fclose(f);
    if (strstr(text, reason) == NULL)
        fail_msg("raft_listen %s: expected \"%s\" in: %s", raft, reason, text);
    assert_int_equal(access(dir, F_OK), -1);
}

static void test_raft_listen_refuses_port_0(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    expect_raft_listen_refused(&env, "127.0.0.1:0",
                               "raft_listen '127.0.0.1:0' needs a port other than 0");
    expect_raft_listen_refused(&env, "127.0.0.1:00",
                               "raft_listen '127.0.0.1:00' needs a port other than 0");
    expect_raft_listen_refused(&env, "127.0.0.1", "raft_listen '127.0.0.1' is not HOST:PORT");
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_controller_on_port_0),
        cmocka_unit_test(test_agent_on_port_0),
        cmocka_unit_test(test_raft_listen_refuses_port_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
