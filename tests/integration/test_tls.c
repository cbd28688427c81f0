/* test_tls.c - TLS on every controller link: the API over https, pub/sub
 * and sync over tls+tcp. An agent trusting the right CA converges; one
 * trusting another CA never accepts the controller; plaintext to the https
 * API fails; plaintext listen addresses are refused unless allowed. The
 * certificates are made here with openssl. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"
#include "tls.h"

static char dir[300];

/* A CA and a server certificate for "localhost" signed by it; the server's
 * certificate and key go into one PEM file. */
static void make_pki(const char *name)
{
    char cmd[4096];
    snprintf(cmd, sizeof(cmd),
             "cd %s && "
             "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=%s-ca "
             "-keyout %s-ca.key -out %s-ca.pem >/dev/null 2>&1 && "
             "openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout %s-srv.key "
             "-out %s-srv.csr >/dev/null 2>&1 && "
             "printf 'subjectAltName=DNS:localhost\\n' > %s-ext.cnf && "
             "openssl x509 -req -in %s-srv.csr -CA %s-ca.pem -CAkey %s-ca.key -CAcreateserial "
             "-days 2 -extfile %s-ext.cnf -out %s-srv.crt >/dev/null 2>&1 && "
             "cat %s-srv.crt %s-srv.key > %s-server.pem",
             dir, name, name, name, name, name, name, name, name, name, name, name, name, name,
             name);
    if (system(cmd) != 0)
        fail_msg("openssl could not make the test certificates");
}

/* What a stream brought, up to its first entry event. */
typedef struct stream_seen {
    int status;
    char text[8192];
    size_t len;
} stream_seen;

static void stream_head(void *arg, int status)
{
    ((stream_seen *)arg)->status = status;
}

static bool stream_body(void *arg, const char *data, size_t len)
{
    stream_seen *s = arg;
    size_t room = sizeof(s->text) - 1 - s->len;
    memcpy(s->text + s->len, data, len < room ? len : room);
    s->len += len < room ? len : room;
    s->text[s->len] = '\0';
    return strstr(s->text, "event: entry\n") == NULL && s->len < sizeof(s->text) - 1;
}

static void test_tls_links(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_tmpdir(dir, sizeof(dir), "pki");
    make_pki("good");
    make_pki("evil");
    char good_ca[400], good_pem[400], evil_ca[400];
    snprintf(good_ca, sizeof(good_ca), "%s/good-ca.pem", dir);
    snprintf(good_pem, sizeof(good_pem), "%s/good-server.pem", dir);
    snprintf(evil_ca, sizeof(evil_ca), "%s/evil-ca.pem", dir);

    /* This process talks to the API over https with the good CA. */
    nng_tls_config *client = NULL;
    pc_err err;
    assert_int_equal(pc_tls_client_config(good_ca, "localhost", &client, &err), PC_OK);
    pc_http_set_tls(client);

    pc_test_controller ctl = {0};
    /* TLS listeners on port 0: the harness reads back what they bound. */
    snprintf(ctl.api_url, sizeof(ctl.api_url), "https://127.0.0.1:0");
    snprintf(ctl.pub_url, sizeof(ctl.pub_url), "tls+tcp://127.0.0.1:0");
    snprintf(ctl.sync_url, sizeof(ctl.sync_url), "tls+tcp://127.0.0.1:0");
    const char *cflags[] = {"--tls-cert-key", good_pem, NULL};
    pc_test_controller_start(&env, &ctl, cflags);

    pc_test_agent trusting = {0}, other = {0};
    const char *good_flags[] = {"--tls-ca", good_ca, "--tls-server-name", "localhost", NULL};
    const char *evil_flags[] = {"--tls-ca", evil_ca, "--tls-server-name", "localhost", NULL};
    pc_test_agent_start_for(&env, &trusting, "trusting", &ctl, good_flags);
    pc_test_agent_start_for(&env, &other, "other-ca", &ctl, evil_flags);

    char src[256];
    pc_test_lua_hello(src, sizeof(src), "over tls");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&trusting, "app", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    /* The agent that trusts another CA never accepted the controller:
     * nothing applied, no report reached it. Looked at once it has tried
     * (and failed) to report twice more since the version went live. */
    uint64_t failed = pc_test_agent_metric(&other, "popcast_agent_status_report_failures_total");
    int64_t tried_by = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_agent_metric(&other, "popcast_agent_status_report_failures_total") <
               failed + 2 &&
           pc_test_now_ms() < tried_by)
        pc_test_sleep_ms(50);
    assert_true(pc_test_agent_metric(&other, "popcast_agent_status_report_failures_total") >=
                failed + 2);
    json_t *s = pc_test_agent_status(&other);
    assert_int_equal(json_integer_value(json_object_get(s, "applied_seq")), 0);
    json_decref(s);
    assert_int_equal(pc_test_agent_metric(&other, "popcast_agent_status_reports_total"), 0);

    /* Plaintext HTTP to the https API gets no answer. */
    char plain[64];
    snprintf(plain, sizeof(plain), "http://127.0.0.1:%d", ctl.api_port);
    pc_http_result r;
    int rc = pc_http_call(plain, "GET", "/v1/health", NULL, NULL, 0, 5000, &r, NULL);
    if (rc == PC_OK) {
        assert_int_not_equal(r.status, 200);
        pc_http_result_free(&r);
    }

    /* SIGHUP: the certificate and the CA are read at start only (nng
     * cannot change a TLS configuration in use); the daemons say whether
     * the files changed since, and keep serving with what they loaded. */
    assert_int_equal(kill(ctl.proc->pid, SIGHUP), 0);
    pc_test_wait_log(ctl.proc, "SIGHUP: TLS certificate ", 1);
    pc_test_wait_log(ctl.proc, "-server.pem unchanged", 1);
    assert_int_equal(kill(trusting.proc->pid, SIGHUP), 0);
    pc_test_wait_log(trusting.proc, "-ca.pem unchanged", 1);
    char evil_pem[400];
    snprintf(evil_pem, sizeof(evil_pem), "%s/evil-server.pem", dir);
    size_t pem_len = 0;
    char *pem = pc_test_read_file(evil_pem, &pem_len);
    pc_test_write_file(good_pem, pem, pem_len);
    free(pem);
    assert_int_equal(kill(ctl.proc->pid, SIGHUP), 0);
    pc_test_wait_log(ctl.proc, "changed since start and is NOT reloaded", 1);
    pc_test_lua_hello(src, sizeof(src), "still over tls");
    uint64_t v2 = pc_test_deploy_lua(&env, &ctl, "app", src); /* https, the good CA */
    assert_true(pc_test_wait_version(&trusting, "app", v2, PC_TEST_CONVERGE_TIMEOUT_MS));
    /* A CA file gone (a botched rotation): said, with the reason, and the
     * agent goes on with what it loaded. */
    char moved[450];
    snprintf(moved, sizeof(moved), "%s.moved", good_ca);
    assert_int_equal(rename(good_ca, moved), 0);
    assert_int_equal(kill(trusting.proc->pid, SIGHUP), 0);
    pc_test_wait_log(trusting.proc, "-ca.pem cannot be read now (No such file or directory)", 1);
    pc_test_lua_hello(src, sizeof(src), "after a lost CA file");
    uint64_t v3 = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&trusting, "app", v3, PC_TEST_CONVERGE_TIMEOUT_MS));
    assert_int_equal(rename(moved, good_ca), 0);
    /* The event stream (GET /v1/watch) over https: the first entry comes. */
    char bearer[128];
    snprintf(bearer, sizeof(bearer), "Bearer %s", env.token);
    const char *headers[] = {"Authorization", bearer, NULL};
    stream_seen seen = {0};
    assert_int_equal(pc_http_stream(ctl.api_url, "/v1/watch?from=0", headers, 30000, stream_head,
                                    stream_body, &seen, &err),
                     PC_OK);
    assert_int_equal(seen.status, 200);
    assert_non_null(strstr(seen.text, "id: 1\nevent: entry\n"));

    pc_test_agent_stop(&trusting);
    pc_test_agent_stop(&other);
    pc_test_controller_stop(&ctl);

    /* A controller with plaintext addresses and no allow_plaintext refuses
     * to start, saying why. */
    char log[400], ddir[400];
    snprintf(log, sizeof(log), "%s/refused.log", dir);
    snprintf(ddir, sizeof(ddir), "%s/refused-data", dir);
    char *argv[] = {getenv("POPCAST_CONTROLLER_BIN"),
                    "--data-dir",
                    ddir,
                    "--signing-key",
                    env.key_path,
                    "--api-listen",
                    "http://127.0.0.1:1",
                    NULL};
    pc_proc *p = pc_proc_spawn("refused", argv, log);
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (pc_proc_alive(p) && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(20);
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
    FILE *f = fopen(log, "r");
    assert_non_null(f);
    char line[512];
    bool said = false;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strstr(line, "plaintext") != NULL)
            said = true;
    fclose(f);
    assert_true(said);

    pc_http_set_tls(NULL);
    nng_tls_config_free(client);
    pc_test_rm_rf(dir);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_links),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
