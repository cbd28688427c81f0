/* test_change_messages.c - who asked for a change and why: every tenant
 * change records its author (the admin token, or a scoped token's id,
 * from the credential) and an optional message (?message= on deploys and
 * deletes, "message" in a rollback's body, --message in the CLI), both
 * signed into the entry's manifest, shown with the answer and by
 * /v1/tenants/{tenant}/versions. A message that is not one line of valid
 * UTF-8 of at most 512 bytes is refused and changes nothing. */
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
static pc_test_controller ctl;

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
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

/* A call with token (NULL: the admin token) and optional headers; the
 * status, and the answer parsed into *out when out is not NULL. */
static int call(const char *token, const char *method, const char *path, const char *key,
                const char *content_type, const char *body, json_t **out)
{
    char auth[200];
    snprintf(auth, sizeof(auth), "Bearer %s", token != NULL ? token : env.token);
    const char *headers[7] = {"Authorization", auth};
    int h = 2;
    if (content_type != NULL) {
        headers[h++] = "Content-Type";
        headers[h++] = content_type;
    }
    if (key != NULL) {
        headers[h++] = "Idempotency-Key";
        headers[h++] = key;
    }
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

static const char *text(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? s : "";
}

/* Version v of tenant as /versions lists it (a new reference), or NULL. */
static json_t *listed_version(const char *tenant, uint64_t v)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/%s/versions", tenant);
    json_t *doc = NULL;
    assert_int_equal(call(NULL, "GET", path, NULL, NULL, NULL, &doc), 200);
    json_t *found = NULL, *item;
    size_t i;
    json_array_foreach(json_object_get(doc, "versions"), i, item)
    {
        if ((uint64_t)json_integer_value(json_object_get(item, "version")) == v)
            found = json_incref(item);
    }
    json_decref(doc);
    return found;
}

static size_t n_versions(const char *tenant)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/%s/versions", tenant);
    json_t *doc = NULL;
    if (call(NULL, "GET", path, NULL, NULL, NULL, &doc) != 200) {
        json_decref(doc);
        return 0;
    }
    size_t n = json_array_size(json_object_get(doc, "versions"));
    json_decref(doc);
    return n;
}

static const char *const SRC = "return function(req) return 'hi' end";

static void expect_change(json_t *answer, uint64_t version, const char *author, const char *message)
{
    assert_int_equal(json_integer_value(json_object_get(answer, "version")), version);
    assert_string_equal(text(answer, "author"), author);
    assert_string_equal(text(answer, "message"), message);
}

/* The message and author are in the answer and the listing, through
 * every kind of tenant change, and the version goes live on an agent
 * (which verified the signature over them). */
static void test_messages_recorded(void **state)
{
    (void)state;
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, NULL);
    json_t *doc = NULL;
    /* "Fix login ✓" percent-encoded, "+" a space */
    assert_int_equal(call(NULL, "POST", "/v1/tenants/app/bundles?message=Fix+login%20%E2%9C%93",
                          NULL, "text/x-lua", SRC, &doc),
                     201);
    expect_change(doc, 1, "admin", "Fix login \xe2\x9c\x93");
    json_decref(doc);
    json_t *v = listed_version("app", 1);
    assert_non_null(v);
    expect_change(v, 1, "admin", "Fix login \xe2\x9c\x93");
    json_decref(v);
    pc_test_wait_converged(&env, &ctl, &agent, 1);

    /* none: no fields */
    assert_int_equal(call(NULL, "POST", "/v1/tenants/app/bundles", NULL, "text/x-lua", SRC, &doc),
                     201);
    assert_null(json_object_get(doc, "message"));
    assert_string_equal(text(doc, "author"), "admin");
    json_decref(doc);

    assert_int_equal(call(NULL, "POST", "/v1/tenants/app/rollback", NULL, "application/json",
                          "{\"version\": 1, \"message\": \"back to v1: v2 broke logins\"}", &doc),
                     201);
    expect_change(doc, 3, "admin", "back to v1: v2 broke logins");
    json_decref(doc);
    v = listed_version("app", 3);
    expect_change(v, 3, "admin", "back to v1: v2 broke logins");
    assert_int_equal(json_integer_value(json_object_get(v, "rollback_of")), 1);
    json_decref(v);

    /* A scoped token is named by its id. */
    json_t *tok = NULL;
    assert_int_equal(call(NULL, "POST", "/v1/tokens", NULL, "application/json",
                          "{\"name\": \"ci\", \"tenants\": [\"app\"]}", &tok),
                     201);
    const char *secret = text(tok, "token"), *id = text(tok, "id");
    char author[96];
    snprintf(author, sizeof(author), "token:%s", id);
    assert_int_equal(
        call(secret, "DELETE", "/v1/tenants/app?message=retired", NULL, NULL, NULL, &doc), 200);
    expect_change(doc, 4, author, "retired");
    json_decref(doc);
    v = listed_version("app", 4);
    expect_change(v, 4, author, "retired");
    json_decref(v);
    json_decref(tok);
    pc_test_wait_converged(&env, &ctl, &agent, 1);
    pc_test_agent_stop(&agent);
}

/* Refused before anything is made: the tenant keeps its versions. */
static void test_bad_messages_refused(void **state)
{
    (void)state;
    assert_int_equal(call(NULL, "POST", "/v1/tenants/web/bundles", NULL, "text/x-lua", SRC, NULL),
                     201);
    char long_query[700];
    int n = snprintf(long_query, sizeof(long_query), "/v1/tenants/web/bundles?message=");
    memset(long_query + n, 'a', 513);
    long_query[n + 513] = '\0';
    const char *bad_queries[] = {
        "/v1/tenants/web/bundles?message=two%0Alines", /* a control character */
        "/v1/tenants/web/bundles?message=%FF%FE",      /* not UTF-8 */
        "/v1/tenants/web/bundles?message=%C0%AF",      /* an overlong form */
        "/v1/tenants/web/bundles?message=%C2%85",      /* U+0085, a C1 control */
        "/v1/tenants/web/bundles?message=nul%00here",  /* an encoded NUL */
        "/v1/tenants/web/bundles?message=%G1",         /* a malformed escape */
        "/v1/tenants/web/bundles?message=%4",          /* a cut escape */
        long_query,                                    /* 513 bytes */
    };
    for (size_t i = 0; i < sizeof(bad_queries) / sizeof(bad_queries[0]); i++) {
        json_t *doc = NULL;
        int status = call(NULL, "POST", bad_queries[i], NULL, "text/x-lua", SRC, &doc);
        if (status != 400 || strstr(text(json_object_get(doc, "error"), "message"),
                                    "at most 512 bytes of UTF-8") == NULL)
            fail_msg("%.80s: %d %s", bad_queries[i], status,
                     text(json_object_get(doc, "error"), "message"));
        json_decref(doc);
    }
    assert_int_equal(call(NULL, "DELETE", "/v1/tenants/web?message=%0D", NULL, NULL, NULL, NULL),
                     400);
    const char *bad_bodies[] = {
        "{\"version\": 1, \"message\": 5}",
        "{\"version\": 1, \"message\": \"a\\u0007b\"}",
        "{\"version\": 1, \"message\": \"nul\\u0000inside\"}",
        "{\"version\": 1, \"message\": null}",
    };
    for (size_t i = 0; i < sizeof(bad_bodies) / sizeof(bad_bodies[0]); i++)
        if (call(NULL, "POST", "/v1/tenants/web/rollback", NULL, "application/json", bad_bodies[i],
                 NULL) != 400)
            fail_msg("rollback body %s was not refused", bad_bodies[i]);
    assert_int_equal(n_versions("web"), 1);
    /* 512 bytes exactly is a message */
    long_query[n + 512] = '\0';
    json_t *doc = NULL;
    assert_int_equal(call(NULL, "POST", long_query, NULL, "text/x-lua", SRC, &doc), 201);
    assert_int_equal(strlen(text(doc, "message")), 512);
    json_decref(doc);
}

/* The message is part of what an idempotency key identifies. */
static void test_message_and_idempotency(void **state)
{
    (void)state;
    json_t *doc = NULL;
    const char *path = "/v1/tenants/keyed/bundles?message=first";
    assert_int_equal(call(NULL, "POST", path, "k-1", "text/x-lua", SRC, &doc), 201);
    uint64_t v = (uint64_t)json_integer_value(json_object_get(doc, "version"));
    json_decref(doc);
    /* the same request again: the same answer, message included */
    assert_int_equal(call(NULL, "POST", path, "k-1", "text/x-lua", SRC, &doc), 201);
    expect_change(doc, v, "admin", "first");
    json_decref(doc);
    /* another message under the key: another request */
    assert_int_equal(call(NULL, "POST", "/v1/tenants/keyed/bundles?message=second", "k-1",
                          "text/x-lua", SRC, NULL),
                     409);
    assert_int_equal(n_versions("keyed"), 1);
}

/* The CLI's --message, shown by `popcast versions`; a bad one is a usage
 * error before any request. */
static void test_cli_message(void **state)
{
    (void)state;
    char file[400], out[8192];
    snprintf(file, sizeof(file), "%s/main.lua", env.root);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fputs(SRC, f);
    fclose(f);
    const char *deploy[] = {"deploy", "cli-app", file, "--message", "ship it: 50% faster", NULL};
    int rc = pc_test_cli(&env, &ctl, deploy, out, sizeof(out));
    if (rc != 0)
        fail_msg("deploy --message: exit %d: %s", rc, out);
    json_t *v = listed_version("cli-app", 1);
    expect_change(v, 1, "admin", "ship it: 50% faster");
    json_decref(v);
    const char *versions[] = {"versions", "cli-app", NULL};
    assert_int_equal(pc_test_cli(&env, &ctl, versions, out, sizeof(out)), 0);
    if (strstr(out, "admin: ship it: 50% faster") == NULL)
        fail_msg("popcast versions does not show the message: %s", out);
    const char *bad[] = {"deploy", "cli-app", file, "--message", "two\nlines", NULL};
    rc = pc_test_cli(&env, &ctl, bad, out, sizeof(out));
    if (rc != 2 || strstr(out, "--message must be") == NULL)
        fail_msg("a bad --message: exit %d: %s", rc, out);
    assert_int_equal(n_versions("cli-app"), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_messages_recorded),
        cmocka_unit_test(test_bad_messages_refused),
        cmocka_unit_test(test_message_and_idempotency),
        cmocka_unit_test(test_cli_message),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
