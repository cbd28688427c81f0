/* test_tokens.c - API tokens scoped to tenants: created and revoked by the
 * admin token (and the CLI), stored only as hashes, replicated to every
 * controller; a token for tenant A can never read or change tenant B (and
 * learns nothing about it), cannot manage tokens or see the fleet, and a
 * revoked token is refused at once. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static pc_test_env env;
static pc_test_cluster cl;
static int leader, follower;

/* A call with the given token; returns the status, body in *out (JSON). */
static int call(int node, const char *token, const char *method, const char *path,
                const char *content_type, const char *body, json_t **out)
{
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", token);
    const char *headers[] = {"Authorization", auth, content_type ? "Content-Type" : NULL,
                             content_type, NULL};
    pc_http_result r;
    if (pc_http_call(cl.node[node].api_url, method, path, headers, body, body ? strlen(body) : 0,
                     30000, &r, NULL) != PC_OK)
        return 0;
    int status = r.status;
    if (out != NULL)
        *out = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return status;
}

static const char *error_code(json_t *doc)
{
    const char *c = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    return c ? c : "";
}

static int setup(void **state)
{
    pc_test_env_init(&env);
    /* A tight write limit for scoped tokens, so the limit test is exact. */
    static const char *const limits[] = {"--token-write-rate", "1", "--token-write-burst", "3",
                                         NULL};
    pc_test_cluster_init(&env, &cl, 3, 3, limits);
    leader = pc_test_cluster_leader(&cl, PC_TEST_CONVERGE_TIMEOUT_MS);
    assert_true(leader >= 0);
    follower = (leader + 1) % 3;
    return 0;
}

static int teardown(void **state)
{
    pc_test_cluster_stop(&cl);
    pc_test_env_cleanup(&env);
    return 0;
}

static void test_scoped_tokens(void **state)
{
    /* The admin creates tenants a and b, and a token for a only. */
    const char *lua = "return function(req) return 'x' end";
    assert_int_equal(
        call(leader, env.token, "POST", "/v1/tenants/alpha/bundles", "text/x-lua", lua, NULL), 201);
    assert_int_equal(
        call(leader, env.token, "POST", "/v1/tenants/beta/bundles", "text/x-lua", lua, NULL), 201);
    json_t *doc = NULL;
    assert_int_equal(call(leader, env.token, "POST", "/v1/tokens", "application/json",
                          "{\"tenants\": [\"alpha\"], \"name\": \"ci-alpha\"}", &doc),
                     201);
    char token[128], id[32];
    snprintf(token, sizeof(token), "%s", json_string_value(json_object_get(doc, "token")));
    snprintf(id, sizeof(id), "%s", json_string_value(json_object_get(doc, "id")));
    json_decref(doc);
    assert_int_equal(strncmp(token, "pct_", 4), 0);
    assert_int_equal(strlen(id), 16);

    /* It works for its tenant, on the leader and (replicated) a follower. */
    assert_int_equal(
        call(leader, token, "POST", "/v1/tenants/alpha/bundles", "text/x-lua", lua, NULL), 201);
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (call(follower, token, "GET", "/v1/tenants/alpha", NULL, NULL, NULL) != 200 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(50);
    assert_int_equal(call(follower, token, "GET", "/v1/tenants/alpha", NULL, NULL, NULL), 200);
    assert_int_equal(call(leader, token, "POST", "/v1/tenants/alpha/rollback", "application/json",
                          "{\"version\": 1}", NULL),
                     201);

    /* Tenant b: every attempt is "not found", exactly like a tenant that
     * does not exist, through the leader and a follower. */
    struct {
        const char *method, *path, *type, *body;
    } cross[] = {
        {"GET", "/v1/tenants/beta", NULL, NULL},
        {"GET", "/v1/tenants/beta/versions", NULL, NULL},
        {"GET", "/v1/tenants/beta/versions/1/rollout", NULL, NULL},
        {"POST", "/v1/tenants/beta/bundles", "text/x-lua", lua},
        {"POST", "/v1/tenants/beta/rollback", "application/json", "{\"version\": 1}"},
        {"DELETE", "/v1/tenants/beta", NULL, NULL},
        {"GET", "/v1/tenants/nosuch", NULL, NULL},
    };
    char want_beta[64], want_nosuch[64];
    for (int node = 0; node < 2; node++) {
        int n = node == 0 ? leader : follower;
        for (size_t i = 0; i < sizeof(cross) / sizeof(cross[0]); i++) {
            doc = NULL;
            int status =
                call(n, token, cross[i].method, cross[i].path, cross[i].type, cross[i].body, &doc);
            if (status != 404 || strcmp(error_code(doc), "not_found") != 0)
                fail_msg("%s %s with alpha's token: %d %s", cross[i].method, cross[i].path, status,
                         error_code(doc));
            const char *msg =
                json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
            if (i == 0)
                snprintf(want_beta, sizeof(want_beta), "%s", msg);
            if (i == 6)
                snprintf(want_nosuch, sizeof(want_nosuch), "%s", msg);
            json_decref(doc);
        }
        /* Same words for an existing and a missing tenant. */
        assert_string_equal(want_beta, "tenant beta not found");
        assert_string_equal(want_nosuch, "tenant nosuch not found");
    }
    /* Listing shows only its tenant. */
    assert_int_equal(call(leader, token, "GET", "/v1/tenants", NULL, NULL, &doc), 200);
    assert_int_equal(json_array_size(json_object_get(doc, "tenants")), 1);
    assert_string_equal(json_string_value(json_object_get(
                            json_array_get(json_object_get(doc, "tenants"), 0), "tenant")),
                        "alpha");
    json_decref(doc);
    /* Admin endpoints and token management are forbidden to it. */
    const char *admin_only[][2] = {{"GET", "/v1/fleet"},
                                   {"GET", "/v1/cluster"},
                                   {"GET", "/v1/rollout/1"},
                                   {"GET", "/v1/tokens"},
                                   {"DELETE", "/v1/tokens/0123456789abcdef"}};
    for (size_t i = 0; i < sizeof(admin_only) / sizeof(admin_only[0]); i++) {
        doc = NULL;
        int status = call(leader, token, admin_only[i][0], admin_only[i][1], NULL, NULL, &doc);
        if (status != 403 || strcmp(error_code(doc), "forbidden") != 0)
            fail_msg("%s %s with a scoped token: %d", admin_only[i][0], admin_only[i][1], status);
        json_decref(doc);
    }
    doc = NULL;
    assert_int_equal(call(leader, token, "POST", "/v1/tokens", "application/json",
                          "{\"tenants\": [\"beta\"]}", &doc),
                     403);
    json_decref(doc);

    /* Only its hash is stored: the list shows ids, never the token. */
    assert_int_equal(call(follower, env.token, "GET", "/v1/tokens", NULL, NULL, &doc), 200);
    char *dump = json_dumps(doc, JSON_COMPACT);
    assert_null(strstr(dump, token));
    assert_non_null(strstr(dump, id));
    free(dump);
    json_decref(doc);

    /* Revoked: refused at once, everywhere. */
    char path[64];
    snprintf(path, sizeof(path), "/v1/tokens/%s", id);
    assert_int_equal(call(leader, env.token, "DELETE", path, NULL, NULL, NULL), 200);
    assert_int_equal(call(leader, token, "GET", "/v1/tenants/alpha", NULL, NULL, NULL), 401);
    deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (call(follower, token, "GET", "/v1/tenants/alpha", NULL, NULL, NULL) != 401 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(50);
    assert_int_equal(call(follower, token, "GET", "/v1/tenants/alpha", NULL, NULL, NULL), 401);
    assert_int_equal(
        call(leader, env.token, "DELETE", "/v1/tokens/ffffffffffffffff", NULL, NULL, NULL), 404);

    /* Malformed token bodies. */
    const char *bad[] = {"{}",
                         "{\"tenants\": []}",
                         "{\"tenants\": [\"Bad Name\"]}",
                         "{\"tenants\": [\"a\", \"a\"]}",
                         "{\"tenants\": [\"a\"], \"admin\": true}",
                         "{\"tenants\": [\"a\"], \"name\": \"has space\"}",
                         "{\"tenants\": \"a\"}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        doc = NULL;
        int status =
            call(leader, env.token, "POST", "/v1/tokens", "application/json", bad[i], &doc);
        if (status != 400 || strcmp(error_code(doc), "invalid") != 0)
            fail_msg("token body %s: %d", bad[i], status);
        json_decref(doc);
    }
}

/* A scoped token's writes are rate limited (burst 3, 1/s here); refused
 * writes store nothing and say when to retry. The admin is not limited. */
static void test_write_rate_limit(void **state)
{
    json_t *doc = NULL;
    assert_int_equal(call(leader, env.token, "POST", "/v1/tokens", "application/json",
                          "{\"tenants\": [\"busy\"]}", &doc),
                     201);
    char token[128];
    snprintf(token, sizeof(token), "%s", json_string_value(json_object_get(doc, "token")));
    json_decref(doc);
    const char *lua = "return function(req) return 'x' end";
    int created = 0, limited = 0;
    for (int i = 0; i < 10; i++) {
        doc = NULL;
        int status =
            call(leader, token, "POST", "/v1/tenants/busy/bundles", "text/x-lua", lua, &doc);
        if (status == 201)
            created++;
        else if (status == 429 && strcmp(error_code(doc), "rate_limited") == 0)
            limited++;
        else
            fail_msg("deploy %d: unexpected status %d", i, status);
        json_decref(doc);
    }
    assert_true(created >= 3);
    assert_true(limited >= 1);
    assert_int_equal(created + limited, 10);
    assert_int_equal(call(leader, env.token, "GET", "/v1/tenants/busy/versions", NULL, NULL, &doc),
                     200);
    assert_int_equal((int)json_array_size(json_object_get(doc, "versions")), created);
    json_decref(doc);
    for (int i = 0; i < 10; i++)
        assert_int_equal(
            call(leader, env.token, "POST", "/v1/tenants/busy/bundles", "text/x-lua", lua, NULL),
            201);
}

/* Requests that name no route (404) or a method a route does not answer
 * (405) are refused before the write rate is charged: they never use up a
 * token's writes. */
static void test_refused_routes_spend_no_writes(void **state)
{
    json_t *doc = NULL;
    assert_int_equal(call(leader, env.token, "POST", "/v1/tokens", "application/json",
                          "{\"tenants\": [\"frugal\"]}", &doc),
                     201);
    char token[128];
    snprintf(token, sizeof(token), "%s", json_string_value(json_object_get(doc, "token")));
    json_decref(doc);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(
            call(leader, token, "POST", "/v1/tenants/frugal/nothing", "text/x-lua", "x", NULL),
            404);
        assert_int_equal(
            call(leader, token, "POST", "/v1/tenants/frugal/versions", "text/x-lua", "x", NULL),
            405);
    }
    /* The whole burst (3) is still there. */
    const char *lua = "return function(req) return 'x' end";
    for (int i = 0; i < 3; i++)
        assert_int_equal(
            call(leader, token, "POST", "/v1/tenants/frugal/bundles", "text/x-lua", lua, NULL),
            201);
}

static void test_cli_tokens(void **state)
{
    char out[4096];
    const char *create[] = {"token", "create", "--tenant", "gamma", "--tenant",
                            "delta", "--name", "deployer", NULL};
    int rc = pc_test_cli(&env, &cl.node[follower], create, out, sizeof(out));
    if (rc != 0 || strstr(out, "pct_") == NULL)
        fail_msg("popcast token create: exit %d:\n%s", rc, out);
    const char *list[] = {"token", "list", NULL};
    rc = pc_test_cli(&env, &cl.node[leader], list, out, sizeof(out));
    if (rc != 0 || strstr(out, "deployer") == NULL || strstr(out, "gamma,delta") == NULL)
        fail_msg("popcast token list: exit %d:\n%s", rc, out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scoped_tokens),
        cmocka_unit_test(test_write_rate_limit),
        cmocka_unit_test(test_refused_routes_spend_no_writes),
        cmocka_unit_test(test_cli_tokens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
