/* test_connect.c - the API over the Connect protocol (docs/api.md
 * "Connect") on a real controller: a call is its REST operation (same
 * answer, same checks), in JSON and in protobuf (google.protobuf.Struct);
 * errors are Connect errors with the REST message; and bad input (an
 * unknown method, another codec, a body that does not decode, an unknown
 * field, a wrong type, a missing path parameter, bad base64, a number out
 * of range) is refused with invalid_argument and changes nothing; and
 * Buf's own Connect clients, with code generated from the same .proto,
 * call every method and both streams (tests/browser/connect.test.mjs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sodium.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "google/protobuf/struct.pb-c.h"
#include "harness.h"
#include "popcast_api.pb-c.h"

static pc_test_env env;
static pc_test_controller ctl;

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "one");
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "web", src), 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* POSTs body to /popcast.v1.<method> with content type; returns the
 * status, the answer in r. token NULL: none. */
static int rpc(const char *method, const char *ctype, const void *body, size_t len,
               const char *token, pc_http_result *r)
{
    char path[160], auth[160];
    snprintf(path, sizeof(path), "/popcast.v1.%s", method);
    snprintf(auth, sizeof(auth), "Bearer %s", token ? token : "");
    const char *headers[] = {"Content-Type", ctype, token ? "Authorization" : NULL, auth, NULL};
    pc_err err;
    assert_int_equal(pc_http_call(ctl.api_url, "POST", path, headers, body, len, 10000, r, &err),
                     PC_OK);
    return r->status;
}

static json_t *rpc_json(const char *method, const char *body, int want_status)
{
    pc_http_result r;
    int status = rpc(method, "application/json", body, strlen(body), env.token, &r);
    if (status != want_status)
        fail_msg("%s %s: %d %s", method, body, status, (const char *)r.body);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_non_null(doc);
    assert_string_equal(pc_http_result_header(&r, "Content-Type"), "application/json");
    pc_http_result_free(&r);
    return doc;
}

/* A Connect call answers what its REST operation answers. */
static void test_same_answer_as_rest(void **state)
{
    (void)state;
    json_t *c = rpc_json("TenantService/GetTenant", "{\"tenant\":\"web\"}", 200);
    json_t *rest = pc_test_controller_json(&env, &ctl, "/v1/tenants/web");
    assert_non_null(rest);
    assert_true(json_equal(c, rest));
    json_decref(c);
    json_decref(rest);
    /* The JSON names protobuf writes (lowerCamelCase) and 64-bit integers
     * as strings are taken, as the proto names and numbers are. */
    json_t *h = rpc_json("TenantService/GetVersionHealth",
                         "{\"tenant\":\"web\",\"version\":\"1\",\"minRequests\":\"5\"}", 200);
    assert_string_equal(json_string_value(json_object_get(h, "tenant")), "web");
    json_decref(h);
    json_t *h2 = rpc_json("TenantService/GetVersionHealth",
                          "{\"tenant\":\"web\",\"version\":1,\"min_requests\":5}", 200);
    json_decref(h2);
}

/* An upload through Connect (the bundle in base64) is a deploy like any:
 * the version, its message, and the Idempotency-Key honoured. */
static void test_upload_and_write_checks(void **state)
{
    (void)state;
    const char *lua = "return function(req) return 'two' end";
    char b64[256];
    sodium_bin2base64(b64, sizeof(b64), (const unsigned char *)lua, strlen(lua),
                      sodium_base64_VARIANT_ORIGINAL);
    char body[512];
    snprintf(body, sizeof(body),
             "{\"tenant\":\"web\",\"message\":\"via connect\",\"bundle\":\"%s\"}", b64);
    json_t *d = rpc_json("TenantService/DeployBundle", body, 200);
    assert_int_equal(json_integer_value(json_object_get(d, "version")), 2);
    assert_string_equal(json_string_value(json_object_get(d, "message")), "via connect");
    json_decref(d);
    /* A token scoped to another tenant: the REST answer, as a Connect
     * error (not_found, as for a tenant that does not exist). */
    json_t *t = rpc_json("TokenService/CreateToken",
                         "{\"body\":{\"tenants\":[\"other\"],\"name\":\"c\"}}", 200);
    char token[128];
    snprintf(token, sizeof(token), "%s", json_string_value(json_object_get(t, "token")));
    json_decref(t);
    pc_http_result r;
    const char *get = "{\"tenant\":\"web\"}";
    assert_int_equal(
        rpc("TenantService/GetTenant", "application/json", get, strlen(get), token, &r), 404);
    json_t *e = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(e, "code")), "not_found");
    json_decref(e);
    pc_http_result_free(&r);
    /* No token: unauthenticated; a scoped token on an admin method:
     * permission_denied. */
    assert_int_equal(rpc("FleetService/GetFleet", "application/json", "{}", 2, NULL, &r), 401);
    assert_non_null(strstr((const char *)r.body, "\"unauthenticated\""));
    pc_http_result_free(&r);
    assert_int_equal(rpc("FleetService/GetFleet", "application/json", "{}", 2, token, &r), 403);
    assert_non_null(strstr((const char *)r.body, "\"permission_denied\""));
    pc_http_result_free(&r);
    /* A REST refusal keeps its message: a bundle that does not compile. */
    snprintf(body, sizeof(body), "{\"tenant\":\"web\",\"bundle\":\"%s\"}", "cmV0dXJuICgoKA==");
    assert_int_equal(
        rpc("TenantService/DeployBundle", "application/json", body, strlen(body), env.token, &r),
        400);
    assert_non_null(strstr((const char *)r.body, "\"invalid_argument\""));
    pc_http_result_free(&r);
    json_t *v = pc_test_controller_json(&env, &ctl, "/v1/tenants/web");
    assert_int_equal(json_integer_value(json_object_get(v, "last_version")), 2);
    json_decref(v);
}

/* application/proto: a GetTenantRequest in, the REST document out as a
 * google.protobuf.Struct. */
static void test_proto_codec(void **state)
{
    (void)state;
    Popcast__V1__GetTenantRequest req = POPCAST__V1__GET_TENANT_REQUEST__INIT;
    req.tenant = "web";
    uint8_t buf[64];
    size_t len = popcast__v1__get_tenant_request__pack(&req, buf);
    pc_http_result r;
    assert_int_equal(rpc("TenantService/GetTenant", "application/proto", buf, len, env.token, &r),
                     200);
    assert_string_equal(pc_http_result_header(&r, "Content-Type"), "application/proto");
    Google__Protobuf__Struct *s = google__protobuf__struct__unpack(NULL, r.body_len, r.body);
    assert_non_null(s);
    bool found = false;
    for (size_t i = 0; i < s->n_fields; i++)
        if (strcmp(s->fields[i]->key, "tenant") == 0) {
            assert_int_equal(s->fields[i]->value->kind_case,
                             GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE);
            assert_string_equal(s->fields[i]->value->string_value, "web");
            found = true;
        }
    assert_true(found);
    google__protobuf__struct__free_unpacked(s, NULL);
    pc_http_result_free(&r);
    /* A tenant that is not UTF-8: refused, never dropped. */
    req.tenant = "w\xff"
                 "b";
    len = popcast__v1__get_tenant_request__pack(&req, buf);
    assert_int_equal(rpc("TenantService/GetTenant", "application/proto", buf, len, env.token, &r),
                     400);
    assert_non_null(strstr((const char *)r.body, "not UTF-8"));
    pc_http_result_free(&r);
    /* Bytes that are not a GetTenantRequest. */
    uint8_t junk[] = {0x0a, 0xff, 0x01};
    assert_int_equal(
        rpc("TenantService/GetTenant", "application/proto", junk, sizeof(junk), env.token, &r),
        400);
    assert_non_null(strstr((const char *)r.body, "\"invalid_argument\""));
    pc_http_result_free(&r);
}

/* Each bad call is refused before anything runs, with the reason. */
static void test_bad_calls(void **state)
{
    (void)state;
    static const struct {
        const char *method, *ctype, *body;
        int status;
        const char *code, *says;
    } bad[] = {
        {"TenantService/NoSuchMethod", "application/json", "{}", 501, "unimplemented", "method"},
        {"NoService/GetTenant", "application/json", "{}", 501, "unimplemented", "method"},
        {"TenantService/GetTenant", "text/plain", "{}", 415, "invalid_argument", "Content-Type"},
        {"TenantService/GetTenant", "application/json", "[1]", 400, "invalid_argument", "object"},
        {"TenantService/GetTenant", "application/json", "{\"tenant\":", 400, "invalid_argument",
         "object"},
        {"TenantService/GetTenant", "application/json", "{\"tenant\":7}", 400, "invalid_argument",
         "wrong type"},
        {"TenantService/GetTenant", "application/json", "{\"who\":\"web\"}", 400,
         "invalid_argument", "no field who"},
        {"TenantService/GetTenant", "application/json", "{}", 400, "invalid_argument",
         "tenant is required"},
        {"TenantService/GetVersionRollout", "application/json",
         "{\"tenant\":\"web\",\"version\":\"99999999999999999999\"}", 400, "invalid_argument",
         "wrong type"},
        {"TenantService/GetVersionRollout", "application/json",
         "{\"tenant\":\"web\",\"version\":-1}", 400, "invalid_argument", "wrong type"},
        {"TenantService/DeployBundle", "application/json",
         "{\"tenant\":\"web\",\"bundle\":\"@@@\"}", 400, "invalid_argument", "wrong type"},
        {"TenantService/GetTenant", "application/json", "{\"tenant\":\"../../v1/fleet\"}", 400,
         "invalid_argument", "tenant"},
        /* 0 in a wrapper is given, not left out: the REST check sees it. */
        {"TenantService/GetVersionHealth", "application/json",
         "{\"tenant\":\"web\",\"version\":1,\"minRequests\":0}", 400, "invalid_argument",
         "min_requests must be"},
        /* Streams take Connect's streaming types, and one enveloped message. */
        {"WatchService/Watch", "application/json", "{}", 415, "invalid_argument", "connect+json"},
        {"WatchService/Watch", "application/connect+json", "{}", 400, "invalid_argument",
         "enveloped"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pc_http_result r;
        int status =
            rpc(bad[i].method, bad[i].ctype, bad[i].body, strlen(bad[i].body), env.token, &r);
        json_t *e = json_loadb((const char *)r.body, r.body_len, 0, NULL);
        const char *code = json_string_value(json_object_get(e, "code"));
        const char *msg = json_string_value(json_object_get(e, "message"));
        if (status != bad[i].status || code == NULL || strcmp(code, bad[i].code) != 0 ||
            msg == NULL || strstr(msg, bad[i].says) == NULL)
            fail_msg("%s %s: %d %s", bad[i].method, bad[i].body, status, (const char *)r.body);
        json_decref(e);
        pc_http_result_free(&r);
    }
    /* A compressed stream request (flags 0x01): not read. */
    static const char compressed[] = "\x01\x00\x00\x00\x02{}";
    pc_http_result rc;
    assert_int_equal(rpc("WatchService/Tail", "application/connect+json", compressed,
                         sizeof(compressed) - 1, env.token, &rc),
                     400);
    assert_non_null(strstr((const char *)rc.body, "compressed"));
    pc_http_result_free(&rc);
    /* Not POST. */
    pc_http_result r;
    pc_err err;
    assert_int_equal(pc_http_call(ctl.api_url, "GET", "/popcast.v1.TenantService/ListTenants", NULL,
                                  NULL, 0, 5000, &r, &err),
                     PC_OK);
    assert_int_equal(r.status, 405);
    pc_http_result_free(&r);
    /* Nothing above changed the tenant. */
    json_t *v = pc_test_controller_json(&env, &ctl, "/v1/tenants/web");
    assert_int_equal(json_integer_value(json_object_get(v, "last_version")), 2);
    json_decref(v);
}

/* Real Connect clients (@connectrpc/connect-node, code generated by
 * protoc-gen-es from proto/popcast_api.proto at test time): every method
 * of every service, both codecs, and the two server streams. */
static void test_interop_with_connect_clients(void **state)
{
    (void)state;
    const char *src = getenv("POPCAST_SOURCE_DIR");
    assert_non_null(src);
    if (!pc_test_npm_package("@connectrpc/connect-node")) {
        skip();
        return;
    }
    char script[600], log[450];
    snprintf(script, sizeof(script), "%s/tests/browser/connect.test.mjs", src);
    snprintf(log, sizeof(log), "%s/connect-interop.log", env.root);
    char *argv[] = {"/usr/bin/env", "node", script, ctl.api_url, env.token_path, NULL};
    pc_proc *p = pc_proc_spawn("connect-interop", argv, log);
    bool exited = pc_proc_wait_exit(p, 300000); /* bounded: each call is quick */
    int status = pc_proc_stop(p);
    pc_proc_free(p);
    size_t len = 0;
    char *out = pc_test_read_file(log, &len);
    if (!exited || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the Connect interop test failed: %s", out ? out : "(no output)");
    assert_non_null(strstr(out, "36 methods of 10 services called over application/proto and "
                                "application/json"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_answer_as_rest),
        cmocka_unit_test(test_upload_and_write_checks),
        cmocka_unit_test(test_proto_codec),
        cmocka_unit_test(test_bad_calls),
        cmocka_unit_test(test_interop_with_connect_clients),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
