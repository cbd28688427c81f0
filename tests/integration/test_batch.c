/* test_batch.c - POST /v1/changes on real processes: many tenants'
 * deploys in one request, each its own version and seq, live on an agent;
 * one bad change refuses the whole batch and nothing is made; hostile
 * bodies are refused with a clear error; scoped tokens, their write
 * limits and per-change idempotency keys hold as for single deploys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "bundle.h"
#include "harness.h"

static pc_test_env env;
static pc_test_controller ctl;

/* A tight limit for scoped tokens, so the limit test is exact; bundles
 * of at most 64 KiB, so the size test stays small. */
static const char *const limits[] = {
    "--token-write-rate", "1", "--token-write-burst", "4", "--max-bundle", "64KiB", NULL};

static int setup(void **state)
{
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    pc_test_controller_start(&env, &ctl, limits);
    return 0;
}

static int teardown(void **state)
{
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* POST /v1/changes with token (and an extra header pair, or NULL). */
static int post(const char *token, const char *body, const char *h_name, const char *h_value,
                json_t **out)
{
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", token);
    const char *headers[] = {"Authorization", auth, "Content-Type", "application/json", h_name,
                             h_value,         NULL};
    pc_http_result r;
    if (pc_http_call(ctl.api_url, "POST", "/v1/changes", headers, body, strlen(body), 30000, &r,
                     NULL) != PC_OK)
        return 0;
    int status = r.status;
    *out = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    return status;
}

static const char *error_code(json_t *doc)
{
    const char *c = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    return c ? c : "";
}

/* Whether tenant exists on the controller. */
static bool exists(const char *tenant)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/%s", tenant);
    pc_http_result r;
    int status = pc_test_api(&env, &ctl, "GET", path, NULL, NULL, 0, &r);
    pc_http_result_free(&r);
    return status == 200;
}

static json_t *change_at(json_t *doc, size_t i)
{
    return json_array_get(json_object_get(doc, "changes"), i);
}

static void test_batch_goes_live(void **state)
{
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-batch", &ctl, NULL);
    /* Two single-file changes and an archive, base64. */
    const char *lua = "return function(req) return 'from the archive' end";
    uint8_t *archive = NULL;
    size_t alen = 0;
    assert_int_equal(
        pc_bundle_pack_single("main.lua", (const uint8_t *)lua, strlen(lua), &archive, &alen, NULL),
        0);
    size_t b64cap = sodium_base64_ENCODED_LEN(alen, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64cap);
    sodium_bin2base64(b64, b64cap, archive, alen, sodium_base64_VARIANT_ORIGINAL);
    free(archive);
    char body[4096];
    snprintf(body, sizeof(body),
             "{\"changes\": ["
             "{\"tenant\": \"b-one\", \"source\": \"return function(req) return 'one' end\"},"
             "{\"tenant\": \"b-two\", \"source\": \"return function(req) return 'two' end\","
             " \"message\": \"second\"},"
             "{\"tenant\": \"b-three\", \"bundle\": \"%s\"}]}",
             b64);
    free(b64);
    json_t *doc = NULL;
    assert_int_equal(post(env.token, body, NULL, NULL, &doc), 200);
    assert_int_equal(json_integer_value(json_object_get(doc, "committed")), 3);
    assert_int_equal(json_integer_value(json_object_get(doc, "failed")), 0);
    const char *names[] = {"b-one", "b-two", "b-three"};
    const char *says[] = {"one", "two", "from the archive"};
    json_int_t last_seq = 0;
    for (size_t i = 0; i < 3; i++) {
        json_t *c = change_at(doc, i);
        assert_string_equal(json_string_value(json_object_get(c, "tenant")), names[i]);
        assert_int_equal(json_integer_value(json_object_get(c, "version")), 1);
        json_int_t seq = json_integer_value(json_object_get(c, "seq"));
        assert_true(seq > last_seq); /* each its own entry, in the order sent */
        last_seq = seq;
        assert_string_equal(json_string_value(json_object_get(c, "author")), "admin");
    }
    assert_string_equal(json_string_value(json_object_get(change_at(doc, 1), "message")), "second");
    json_decref(doc);
    for (size_t i = 0; i < 3; i++) {
        assert_true(pc_test_wait_version(&agent, names[i], 1, PC_TEST_CONVERGE_TIMEOUT_MS));
        char got[64];
        assert_int_equal(pc_test_edge_get(&agent, names[i], "/", NULL, got, sizeof(got)), 200);
        assert_string_equal(got, says[i]);
    }
    pc_test_agent_stop(&agent);
}

/* One bundle over max_bundle refuses the batch: 413, nothing made. */
static void test_oversized_change_makes_nothing(void **state)
{
    size_t big = 70 * 1024;
    char *body = malloc(big + 256);
    assert_non_null(body);
    size_t n = (size_t)snprintf(body, 256,
                                "{\"changes\": [{\"tenant\": \"o-one\", \"source\": \"return 1\"},"
                                "{\"tenant\": \"o-two\", \"source\": \"return '");
    memset(body + n, 'x', big);
    n += big;
    snprintf(body + n, 256, "'\"}]}");
    json_t *doc = NULL;
    assert_int_equal(post(env.token, body, NULL, NULL, &doc), 413);
    free(body);
    assert_string_equal(error_code(doc), "too_large");
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(doc, "error"), "message")),
               "change 1 (o-two)"));
    json_decref(doc);
    assert_false(exists("o-one"));
    assert_false(exists("o-two"));
}

/* One change the runtime cannot load refuses the batch: nothing made. */
static void test_one_bad_change_makes_nothing(void **state)
{
    const char *body = "{\"changes\": ["
                       "{\"tenant\": \"n-one\", \"source\": \"return function() return 1 end\"},"
                       "{\"tenant\": \"n-two\", \"source\": \"return function( end\"}]}";
    json_t *doc = NULL;
    assert_int_equal(post(env.token, body, NULL, NULL, &doc), 422);
    assert_string_equal(error_code(doc), "runtime_error");
    const char *msg = json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
    assert_non_null(strstr(msg, "change 1 (n-two)"));
    json_decref(doc);
    assert_false(exists("n-one"));
    assert_false(exists("n-two"));
}

static void test_hostile_bodies(void **state)
{
    char many[300 * 80];
    size_t n = (size_t)snprintf(many, sizeof(many), "{\"changes\": [");
    for (int i = 0; i < 257; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n,
                              "%s{\"tenant\": \"h%d\", \"source\": \"return 1\"}", i ? "," : "", i);
    snprintf(many + n, sizeof(many) - n, "]}");
    const char *bodies[] = {
        "{",
        "[]",
        "{\"changes\": []}",
        "{\"changes\": {}}",
        "{\"changes\": [], \"extra\": 1}",
        "{\"changes\": [1]}",
        "{\"changes\": [{\"tenant\": \"h\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"x\", \"bundle\": \"eA==\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"bundle\": \"***\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"bundle\": \"eA==\"}]}",
        "{\"changes\": [{\"tenant\": \"Bad\", \"source\": \"return 1\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"return 1\", \"x\": 1}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": 5}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"return 1\", \"runtime\": \"cobol\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"return 1\", \"entrypoint\": \"../x\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"return 1\", \"message\": \"a\\u0001\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"a\\u0000b\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"source\": \"return 1\", \"idempotency_key\": \"a "
        "b\"}]}",
        "{\"changes\": [{\"tenant\": \"h\", \"tenant\": \"i\", \"source\": \"return 1\"}]}",
        many,
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        json_t *doc = NULL;
        int status = post(env.token, bodies[i], NULL, NULL, &doc);
        if (status != 400 || strcmp(error_code(doc), "invalid") != 0)
            fail_msg("body %zu: %d %s, expected 400 invalid", i, status, error_code(doc));
        json_decref(doc);
    }
    json_t *doc = NULL;
    assert_int_equal(post(env.token,
                          "{\"changes\": [{\"tenant\": \"h\", \"source\": \"return 1\"}]}",
                          "Idempotency-Key", "k1", &doc),
                     400);
    json_decref(doc);
    assert_false(exists("h"));
    assert_false(exists("h0"));
}

/* A new token scoped to s-mine, into out. */
static void scoped_token(char *out, size_t cap)
{
    pc_http_result r;
    const char *req = "{\"tenants\": [\"s-mine\"], \"name\": \"batcher\"}";
    assert_int_equal(
        pc_test_api(&env, &ctl, "POST", "/v1/tokens", "application/json", req, strlen(req), &r),
        201);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    snprintf(out, cap, "%s", json_string_value(json_object_get(doc, "token")));
    json_decref(doc);
}

/* A scoped token: its own tenants only (a stranger's is not found, and
 * nothing is made); at most its burst per batch; its rate for each
 * change. */
static void test_scoped_token(void **state)
{
    char token[128];
    json_t *doc = NULL;
    scoped_token(token, sizeof(token));
    const char *stranger = "{\"changes\": ["
                           "{\"tenant\": \"s-mine\", \"source\": \"return 1\"},"
                           "{\"tenant\": \"s-other\", \"source\": \"return 1\"}]}";
    assert_int_equal(post(token, stranger, NULL, NULL, &doc), 404);
    json_decref(doc);
    assert_false(exists("s-mine"));
    char five[1024];
    size_t n = (size_t)snprintf(five, sizeof(five), "{\"changes\": [");
    for (int i = 0; i < 5; i++)
        n += (size_t)snprintf(five + n, sizeof(five) - n,
                              "%s{\"tenant\": \"s-mine\", \"source\": \"return %d\"}", i ? "," : "",
                              i);
    snprintf(five + n, sizeof(five) - n, "]}");
    assert_int_equal(post(token, five, NULL, NULL, &doc), 400); /* its burst is 4 */
    assert_non_null(
        strstr(json_string_value(json_object_get(json_object_get(doc, "error"), "message")),
               "more than this token may make at once"));
    json_decref(doc);
    assert_false(exists("s-mine"));

    scoped_token(token, sizeof(token)); /* a fresh bucket */
    const char *three = "{\"changes\": ["
                        "{\"tenant\": \"s-mine\", \"source\": \"return 1\"},"
                        "{\"tenant\": \"s-mine\", \"source\": \"return 2\"},"
                        "{\"tenant\": \"s-mine\", \"source\": \"return 3\"}]}";
    assert_int_equal(post(token, three, NULL, NULL, &doc), 200);
    assert_int_equal(json_integer_value(json_object_get(doc, "committed")), 3);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(json_integer_value(json_object_get(change_at(doc, i), "version")),
                         (json_int_t)i + 1);
    assert_non_null(
        strstr(json_string_value(json_object_get(change_at(doc, 0), "author")), "token:"));
    json_decref(doc);
    /* 3 of its 4 are spent, at 1 per second: 4 more now is over (unless
     * 3 s passed in between). */
    const char *four = "{\"changes\": ["
                       "{\"tenant\": \"s-mine\", \"source\": \"return 4\"},"
                       "{\"tenant\": \"s-mine\", \"source\": \"return 5\"},"
                       "{\"tenant\": \"s-mine\", \"source\": \"return 6\"},"
                       "{\"tenant\": \"s-mine\", \"source\": \"return 7\"}]}";
    assert_int_equal(post(token, four, NULL, NULL, &doc), 429);
    json_decref(doc);
}

/* The same batch again with the same keys: answered with what the first
 * made, nothing new. */
static void test_idempotent_changes(void **state)
{
    const char *body =
        "{\"changes\": ["
        "{\"tenant\": \"i-one\", \"source\": \"return 1\", \"idempotency_key\": \"i-1\"},"
        "{\"tenant\": \"i-two\", \"source\": \"return 2\", \"idempotency_key\": \"i-2\"}]}";
    json_t *first = NULL, *again = NULL;
    assert_int_equal(post(env.token, body, NULL, NULL, &first), 200);
    assert_int_equal(post(env.token, body, NULL, NULL, &again), 200);
    for (size_t i = 0; i < 2; i++) {
        json_t *a = change_at(first, i), *b = change_at(again, i);
        assert_int_equal(json_integer_value(json_object_get(a, "seq")),
                         json_integer_value(json_object_get(b, "seq")));
        assert_true(json_is_true(json_object_get(b, "replayed")));
    }
    json_decref(first);
    json_decref(again);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batch_goes_live),
        cmocka_unit_test(test_one_bad_change_makes_nothing),
        cmocka_unit_test(test_oversized_change_makes_nothing),
        cmocka_unit_test(test_hostile_bodies),
        cmocka_unit_test(test_scoped_token),
        cmocka_unit_test(test_idempotent_changes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
