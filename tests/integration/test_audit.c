/* test_audit.c - the controller's audit log (docs/operations.md "Audit
 * log"): one JSON line per request to a write route, answered or refused,
 * naming the token (admin, a token id, or null) and carrying the answer;
 * reads are not in it; hostile paths stay valid JSON; the file is 0600;
 * SIGHUP reopens it after a rotation. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "harness.h"
#include "http_client.h"

static pc_test_env env;
static pc_test_controller ctl;
static char audit_path[512];

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    snprintf(audit_path, sizeof(audit_path), "%s/audit.log", env.root);
    const char *extra[] = {"--audit-log", audit_path, NULL};
    pc_test_controller_start(&env, &ctl, extra);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

static int call(const char *token, const char *method, const char *path, const char *type,
                const char *body, json_t **out)
{
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", token);
    const char *headers[] = {"Authorization", auth, type ? "Content-Type" : NULL, type, NULL};
    pc_http_result r;
    if (pc_http_call(ctl.api_url, method, path, headers, body, body ? strlen(body) : 0, 30000, &r,
                     NULL) != PC_OK)
        return 0;
    int status = r.status;
    if (out != NULL)
        *out = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return status;
}

static const char *str(json_t *line, const char *key)
{
    const char *s = json_string_value(json_object_get(line, key));
    return s != NULL ? s : "";
}

/* A line is written once its answer is sent, so a client may see its
 * answer (and send the next request) first: each audited request waits
 * for its line, which keeps the lines in request order. */
static void wait_lines(size_t n)
{
    json_decref(pc_test_wait_json_lines(audit_path, n));
}

static void test_writes_are_audited(void **state)
{
    (void)state;
    const char *lua = "return function(req) return 'x' end";
    /* 1: a deploy by the admin. */
    assert_int_equal(call(env.token, "POST", "/v1/tenants/acme/bundles", "text/x-lua", lua, NULL),
                     201);
    wait_lines(1);
    /* Reads are not audited. */
    assert_int_equal(call(env.token, "GET", "/v1/tenants", NULL, NULL, NULL), 200);
    assert_int_equal(call(env.token, "GET", "/v1/tenants/acme/versions", NULL, NULL, NULL), 200);
    /* 2: a token for acme only. */
    json_t *doc = NULL;
    assert_int_equal(call(env.token, "POST", "/v1/tokens", "application/json",
                          "{\"tenants\": [\"acme\"], \"name\": \"ci\"}", &doc),
                     201);
    wait_lines(2);
    char token[128], id[32];
    snprintf(token, sizeof(token), "%s", json_string_value(json_object_get(doc, "token")));
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(doc, "id")));
    json_decref(doc);
    /* 3: it deploys acme; 4: it is refused another tenant. */
    assert_int_equal(call(token, "POST", "/v1/tenants/acme/bundles", "text/x-lua", lua, NULL), 201);
    wait_lines(3);
    assert_int_equal(call(token, "POST", "/v1/tenants/other/bundles", "text/x-lua", lua, NULL),
                     404);
    wait_lines(4);
    /* 5: no valid token. */
    assert_int_equal(call("pct_wrong", "DELETE", "/v1/tenants/acme", NULL, NULL, NULL), 401);
    wait_lines(5);
    /* 6: a malformed upload (refused before any change). */
    assert_int_equal(
        call(env.token, "POST", "/v1/tenants/acme/bundles", "text/x-lua", "not lua (", NULL), 422);
    wait_lines(6);
    /* 7: a hostile path: still one valid line. */
    assert_int_equal(call(env.token, "DELETE", "/v1/tenants/%22%0a%ff", NULL, NULL, NULL), 400);

    json_t *lines = pc_test_wait_json_lines(audit_path, 7);
    assert_int_equal(json_array_size(lines), 7);
    json_t *l = json_array_get(lines, 0);
    assert_string_equal(str(l, "token"), "admin");
    assert_string_equal(str(l, "method"), "POST");
    assert_string_equal(str(l, "path"), "/v1/tenants/acme/bundles");
    assert_int_equal(json_integer_value(json_object_get(l, "status")), 201);
    json_t *answer = json_object_get(l, "answer");
    assert_int_equal(json_integer_value(json_object_get(answer, "version")), 1);
    assert_true(json_integer_value(json_object_get(answer, "seq")) >= 1);
    assert_int_equal(strlen(str(l, "time")), 24); /* 2026-12-03T06:31:11.401Z */
    l = json_array_get(lines, 1);
    assert_string_equal(str(l, "path"), "/v1/tokens");
    /* The token's secret is in the answer the admin got, never logged. */
    assert_null(json_object_get(json_object_get(l, "answer"), "token"));
    assert_string_equal(str(json_object_get(l, "answer"), "id"), id);
    l = json_array_get(lines, 2);
    assert_string_equal(str(l, "token"), id);
    assert_int_equal(json_integer_value(json_object_get(l, "status")), 201);
    l = json_array_get(lines, 3);
    assert_string_equal(str(l, "token"), id);
    assert_int_equal(json_integer_value(json_object_get(l, "status")), 404);
    l = json_array_get(lines, 4);
    assert_true(json_is_null(json_object_get(l, "token")));
    assert_string_equal(str(l, "method"), "DELETE");
    assert_int_equal(json_integer_value(json_object_get(l, "status")), 401);
    assert_string_equal(str(json_object_get(json_object_get(l, "answer"), "error"), "code"),
                        "unauthorized");
    l = json_array_get(lines, 5);
    assert_int_equal(json_integer_value(json_object_get(l, "status")), 422);
    l = json_array_get(lines, 6);
    assert_string_equal(str(l, "path"), "/v1/tenants/%22%0a%ff");
    json_decref(lines);

    struct stat st;
    assert_int_equal(stat(audit_path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

/* A keyed write and its repeat: both lines carry the key; the repeat's
 * answer is the first one's, marked replayed. */
static void test_keyed_writes_are_audited(void **state)
{
    (void)state;
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", env.token);
    const char *headers[] = {"Authorization", auth, "Content-Type", "text/x-lua", "Idempotency-Key",
                             "audit-1",       NULL};
    const char *lua = "return function(req) return 'keyed' end";
    for (int i = 0; i < 2; i++) {
        pc_http_result r;
        assert_int_equal(pc_http_call(ctl.api_url, "POST", "/v1/tenants/keyed/bundles", headers,
                                      lua, strlen(lua), 30000, &r, NULL),
                         PC_OK);
        assert_int_equal(r.status, 201);
        pc_http_result_free(&r);
        wait_lines((size_t)i + 1);
    }
    json_t *lines = pc_test_json_lines(audit_path);
    assert_int_equal(json_array_size(lines), 2);
    json_t *first = json_array_get(lines, 0), *again = json_array_get(lines, 1);
    assert_string_equal(str(first, "idempotency_key"), "audit-1");
    assert_string_equal(str(again, "idempotency_key"), "audit-1");
    json_t *a1 = json_object_get(first, "answer"), *a2 = json_object_get(again, "answer");
    assert_null(json_object_get(a1, "replayed"));
    assert_true(json_is_true(json_object_get(a2, "replayed")));
    assert_int_equal(json_integer_value(json_object_get(a2, "seq")),
                     json_integer_value(json_object_get(a1, "seq")));
    assert_int_equal(json_integer_value(json_object_get(a2, "version")),
                     json_integer_value(json_object_get(a1, "version")));
    json_decref(lines);
}

/* logrotate: the file is moved, SIGHUP, and the next lines go to a new
 * file at the path; the moved one keeps what it had. */
static void test_sighup_reopens(void **state)
{
    (void)state;
    const char *lua = "return function(req) return 'x' end";
    assert_int_equal(call(env.token, "POST", "/v1/tenants/acme/bundles", "text/x-lua", lua, NULL),
                     201);
    json_decref(pc_test_wait_json_lines(audit_path, 1));
    char rotated[600];
    snprintf(rotated, sizeof(rotated), "%s.1", audit_path);
    assert_int_equal(rename(audit_path, rotated), 0);
    assert_int_equal(kill(ctl.proc->pid, SIGHUP), 0);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    for (;;) {
        size_t len = 0;
        char *log = pc_test_read_file(ctl.proc->log, &len);
        bool reopened = strstr(log, "audit log ") != NULL && strstr(log, " reopened") != NULL;
        free(log);
        if (reopened)
            break;
        if (pc_test_now_ms() > deadline)
            fail_msg("the controller never said it reopened the audit log");
        pc_test_sleep_ms(20);
    }
    assert_int_equal(call(env.token, "POST", "/v1/tenants/acme/bundles", "text/x-lua", lua, NULL),
                     201);
    json_t *fresh = pc_test_wait_json_lines(audit_path, 1);
    assert_int_equal(json_array_size(fresh), 1);
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_array_get(fresh, 0), "answer"), "version")),
                     2);
    json_decref(fresh);
    json_t *old = pc_test_json_lines(rotated);
    assert_int_equal(json_array_size(old), 1);
    json_decref(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_writes_are_audited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keyed_writes_are_audited, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sighup_reopens, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
