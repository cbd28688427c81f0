/* test_hostile_api.c - bad input to the controller's REST API gets a 4xx
 * with a JSON error body and changes nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "bundle.h"
#include "harness.h"

static pc_test_env env;
static pc_test_controller ctl;

static int setup(void **state)
{
    pc_test_env_init(&env);
    memset(&ctl, 0, sizeof(ctl));
    /* A small bundle limit makes "oversized" cheap to send. */
    const char *extra[] = {"--max-bundle", "64KiB", NULL};
    pc_test_controller_start(&env, &ctl, extra);
    return 0;
}

static int teardown(void **state)
{
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* Sends a request with optional auth and asserts the status and that the
 * body is a JSON error naming code. */
static void expect_error(const char *method, const char *path, const char *auth,
                         const char *content_type, const void *body, size_t len, int status,
                         const char *code)
{
    const char *headers[6];
    int h = 0;
    char bearer[128];
    if (auth != NULL) {
        snprintf(bearer, sizeof(bearer), "Bearer %s", auth);
        headers[h++] = "Authorization";
        headers[h++] = bearer;
    }
    if (content_type != NULL) {
        headers[h++] = "Content-Type";
        headers[h++] = content_type;
    }
    headers[h] = NULL;
    pc_http_result r;
    pc_err err;
    assert_int_equal(pc_http_call(ctl.api_url, method, path, headers, body, len, 30000, &r, &err),
                     PC_OK);
    if (r.status != status)
        fail_msg("%s %s: expected %d, got %d: %s", method, path, status, r.status, r.body);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    if (doc == NULL)
        fail_msg("%s %s: body is not JSON: %s", method, path, r.body);
    json_t *e = json_object_get(doc, "error");
    assert_non_null(e);
    assert_non_null(json_string_value(json_object_get(e, "message")));
    const char *got = json_string_value(json_object_get(e, "code"));
    if (got == NULL || strcmp(got, code) != 0)
        fail_msg("%s %s: expected code %s, got %s", method, path, code, got ? got : "none");
    json_decref(doc);
    pc_http_result_free(&r);
}

/* Nothing is stored: no tenants, and the head seq is still 0. */
static void expect_nothing_stored(void)
{
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/tenants", NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_int_equal(json_array_size(json_object_get(doc, "tenants")), 0);
    json_decref(doc);
    pc_http_result_free(&r);
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/health", NULL, NULL, 0, &r), 200);
    doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(doc, "head_seq")), 0);
    json_decref(doc);
    pc_http_result_free(&r);
}

static const char *lua_ok = "return function(req) return 'ok' end";

static void test_auth(void **state)
{
    expect_error("POST", "/v1/tenants/acme/bundles", NULL, "text/x-lua", lua_ok, strlen(lua_ok),
                 401, "unauthorized");
    expect_error("POST", "/v1/tenants/acme/bundles", "wrong-token", "text/x-lua", lua_ok,
                 strlen(lua_ok), 401, "unauthorized");
    expect_error("GET", "/v1/tenants", NULL, NULL, NULL, 0, 401, "unauthorized");
    /* A token that is a prefix of the real one is still wrong. */
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "%.10s", env.token);
    expect_error("DELETE", "/v1/tenants/acme", prefix, NULL, NULL, 0, 401, "unauthorized");
    expect_nothing_stored();
}

static void test_bad_tenant_names(void **state)
{
    const char *names[] = {"ACME",
                           "a_b",
                           "a.b",
                           "%2e%2e",
                           "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                           "a%00b"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char path[256];
        snprintf(path, sizeof(path), "/v1/tenants/%s/bundles", names[i]);
        expect_error("POST", path, env.token, "text/x-lua", lua_ok, strlen(lua_ok), 400, "invalid");
    }
    expect_nothing_stored();
}

static void test_oversized_bundle(void **state)
{
    /* Refused from its Content-Length, before a byte of the body is read:
     * the body is never sent, and the answer still comes. (Sending the body
     * too races the server's close against the client's write.) */
    char head[512], answer[4096];
    snprintf(head, sizeof(head),
             "POST /v1/tenants/acme/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer %s\r\nContent-Type: text/x-lua\r\n"
             "Content-Length: %d\r\n\r\n",
             env.token, 100 * 1024);
    pc_test_raw_head(&ctl, head, answer, sizeof(answer));
    if (strncmp(answer, "HTTP/1.1 413", 12) != 0 || strstr(answer, "\"too_large\"") == NULL)
        fail_msg("expected 413 too_large, got: %s", answer);
    expect_nothing_stored();
}

static void test_bad_bundles(void **state)
{
    /* Not an archive. */
    expect_error("POST", "/v1/tenants/acme/bundles", env.token, "application/vnd.popcast.bundle",
                 "garbage!", 8, 400, "invalid");
    /* Empty body. */
    expect_error("POST", "/v1/tenants/acme/bundles", env.token, "application/vnd.popcast.bundle",
                 NULL, 0, 400, "invalid");
    /* Lua that does not parse. */
    const char *broken = "return function( end";
    expect_error("POST", "/v1/tenants/acme/bundles", env.token, "text/x-lua", broken,
                 strlen(broken), 422, "runtime_error");
    /* Bytecode is not Lua text. */
    const char bytecode[] = "\x1bLuaT\x00\x19\x93\r\n\x1a\n";
    expect_error("POST", "/v1/tenants/acme/bundles", env.token, "text/x-lua", bytecode,
                 sizeof(bytecode) - 1, 422, "runtime_error");
    /* Unknown content type, runtime, entrypoint. */
    expect_error("POST", "/v1/tenants/acme/bundles", env.token, "image/png", lua_ok, strlen(lua_ok),
                 415, "unsupported_media_type");
    expect_error("POST", "/v1/tenants/acme/bundles?runtime=python", env.token, "text/x-lua", lua_ok,
                 strlen(lua_ok), 400, "invalid");
    expect_error("POST", "/v1/tenants/acme/bundles?entrypoint=../x.lua", env.token, "text/x-lua",
                 lua_ok, strlen(lua_ok), 400, "invalid");
    /* An archive whose entrypoint is missing. */
    uint8_t *archive;
    size_t alen;
    assert_int_equal(pc_bundle_pack_single("main.lua", (const uint8_t *)lua_ok, strlen(lua_ok),
                                           &archive, &alen, NULL),
                     PC_OK);
    /* Corrupt the archive's entrypoint name in place ("main.lua" is the
     * first field) so it names a file that is not there. */
    assert_int_equal(archive[2], 'm');
    archive[2] = 'x';
    expect_error("POST", "/v1/tenants/acme/bundles", env.token, "application/vnd.popcast.bundle",
                 archive, alen, 400, "invalid");
    free(archive);
    expect_nothing_stored();
}

static void test_malformed_json_and_missing_fields(void **state)
{
    const char *bodies[] = {"{",
                            "[]",
                            "{\"version\": \"1\"}",
                            "{\"version\": null}",
                            "{\"version\": 0}",
                            "{\"version\": -3}",
                            "{\"version\": 1, \"version\": 2}",
                            "{\"version\": 1, \"extra\": true}",
                            "null",
                            "{\"version\": 1.5}"};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect_error("POST", "/v1/tenants/acme/rollback", env.token, "application/json", bodies[i],
                     strlen(bodies[i]), 400, "invalid");
    const char *nodes[] = {
        "{",
        "{}",
        "{\"id\": 0, \"raft_address\": \"127.0.0.1:1\", \"api_url\": \"http://x\"}",
        "{\"id\": 4, \"raft_address\": \"\", \"api_url\": \"http://x\"}",
        "{\"id\": 4, \"raft_address\": \"a:1\", \"api_url\": \"ftp://x\"}",
        "{\"id\": 4, \"raft_address\": \"a:1\", \"api_url\": \"http://x\", \"x\": 1}",
        "{\"id\": \"4\", \"raft_address\": \"a:1\", \"api_url\": \"http://x\"}"};
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++)
        expect_error("POST", "/v1/cluster/nodes", env.token, "application/json", nodes[i],
                     strlen(nodes[i]), 400, "invalid");
    /* Well formed, but nothing to roll back or delete. */
    const char *ok = "{\"version\": 1}";
    expect_error("POST", "/v1/tenants/acme/rollback", env.token, "application/json", ok, strlen(ok),
                 404, "not_found");
    /* No version named: the default target, of a tenant there is not. */
    expect_error("POST", "/v1/tenants/acme/rollback", env.token, "application/json", "{}", 2, 404,
                 "not_found");
    expect_error("DELETE", "/v1/tenants/acme", env.token, NULL, NULL, 0, 404, "not_found");
    expect_error("GET", "/v1/tenants/acme", env.token, NULL, NULL, 0, 404, "not_found");
    /* Revoking or removing what does not exist. */
    expect_error("DELETE", "/v1/agents/nobody", env.token, NULL, NULL, 0, 404, "not_found");
    expect_error("DELETE", "/v1/agents/bad%20id", env.token, NULL, NULL, 0, 400, "invalid");
    expect_error("DELETE", "/v1/cluster/nodes/99", env.token, NULL, NULL, 0, 400, "invalid");
    expect_error("DELETE", "/v1/cluster/nodes/0", env.token, NULL, NULL, 0, 400, "invalid");
    expect_error("DELETE", "/v1/tokens/0123456789abcdef", env.token, NULL, NULL, 0, 404,
                 "not_found");
    const char *rotations[] = {"{", "{}", "{\"next_public_key\": 1}",
                               "{\"next_public_key\": \"AAAA\"}",
                               "{\"next_public_key\": \"x\", \"extra\": 1}"};
    for (size_t i = 0; i < sizeof(rotations) / sizeof(rotations[0]); i++)
        expect_error("POST", "/v1/keys/rotate", env.token, "application/json", rotations[i],
                     strlen(rotations[i]), 400, "invalid");
    expect_nothing_stored();
}

static void test_routes_and_methods(void **state)
{
    expect_error("GET", "/v1/nope", env.token, NULL, NULL, 0, 404, "not_found");
    expect_error("GET", "/", env.token, NULL, NULL, 0, 404, "not_found");
    expect_error("GET", "/v1/tenants/acme/bundles", env.token, NULL, NULL, 0, 405,
                 "method_not_allowed");
    expect_error("PUT", "/v1/tenants", env.token, NULL, NULL, 0, 405, "method_not_allowed");
    expect_error("POST", "/v1/health", NULL, NULL, NULL, 0, 405, "method_not_allowed");
    expect_error("POST", "/v1/keys", env.token, NULL, NULL, 0, 405, "method_not_allowed");
    expect_error("GET", "/v1/keys/rotate", env.token, NULL, NULL, 0, 405, "method_not_allowed");
    expect_error("GET", "/v1/keys/other", env.token, NULL, NULL, 0, 404, "not_found");
    expect_error("GET", "/v1/tenants/a/b/c/d/e/f/g/h/i", env.token, NULL, NULL, 0, 404,
                 "not_found");
    expect_nothing_stored();
}

/* The API's description is public and is the document in the source
 * tree, byte for byte; writing to it is not a route. */
static void test_openapi_document_served(void **state)
{
    pc_http_result r;
    pc_err err;
    assert_int_equal(
        pc_http_call(ctl.api_url, "GET", "/v1/openapi.yaml", NULL, NULL, 0, 30000, &r, &err),
        PC_OK);
    assert_int_equal(r.status, 200);
    const char *ct = pc_http_result_header(&r, "Content-Type");
    assert_non_null(ct);
    assert_string_equal(ct, "application/yaml");
    pc_http_result_free(&r);
    pc_test_expect_serves_file(ctl.api_url, "/v1/openapi.yaml", "docs/openapi.yaml");
    expect_error("POST", "/v1/openapi.yaml", env.token, "application/yaml", "x", 1, 405,
                 "method_not_allowed");
}

/* Sends bytes on a raw connection and returns everything the server
 * answers until it closes the connection (NUL-terminated). */
static void raw_exchange(const char *bytes, char *answer, size_t cap)
{
    pc_test_raw_head(&ctl, bytes, answer, cap);
}

static int count_responses(const char *answer)
{
    int n = 0;
    for (const char *p = answer; (p = strstr(p, "HTTP/1.1 ")) != NULL; p++)
        n++;
    return n;
}

static void test_unread_bodies_never_become_requests(void **state)
{
    /* A body sent with a request that takes none is not read: it must not
     * be parsed as a second request on the same connection (CL.0 request
     * smuggling behind a connection-reusing proxy). The server answers
     * the first request and closes. */
    const char *inner = "GET /v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    char bytes[512], answer[8192];
    snprintf(bytes, sizeof(bytes),
             "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(inner), inner);
    raw_exchange(bytes, answer, sizeof(answer));
    if (count_responses(answer) != 1 || strncmp(answer, "HTTP/1.1 200", 12) != 0 ||
        strstr(answer, "Connection: close") == NULL)
        fail_msg("expected one 200 answer and a close, got: %s", answer);
    /* The same for a refused request (here: no token) with a body. */
    snprintf(bytes, sizeof(bytes),
             "DELETE /v1/tenants/acme HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
             "%zu\r\n\r\n%s",
             strlen(inner), inner);
    raw_exchange(bytes, answer, sizeof(answer));
    if (count_responses(answer) != 1 || strncmp(answer, "HTTP/1.1 401", 12) != 0)
        fail_msg("expected one 401 answer, got: %s", answer);
    /* Content-Length and Transfer-Encoding together: refused and closed. */
    snprintf(bytes, sizeof(bytes),
             "POST /v1/tenants/acme/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer %s\r\nContent-Type: text/x-lua\r\n"
             "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             env.token);
    raw_exchange(bytes, answer, sizeof(answer));
    if (count_responses(answer) != 1 || strncmp(answer, "HTTP/1.1 400", 12) != 0)
        fail_msg("expected one 400 answer, got: %s", answer);
    /* nng takes "Content-Length : N" (whitespace before the colon, which
     * RFC 9112 5.1 says to refuse) as a field named "Content-Length ", so
     * the server sees no body; a proxy that frames by it would pass the
     * inner request along. Such an answer closes its connection, so the
     * inner request is never read. */
    const char *names[] = {"Content-Length ", "content-length  ", "Transfer-Encoding "};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (names[i][0] == 'T')
            snprintf(bytes, sizeof(bytes),
                     "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n%s: chunked\r\n\r\n"
                     "%zx\r\n%s\r\n0\r\n\r\n",
                     names[i], strlen(inner), inner);
        else
            snprintf(bytes, sizeof(bytes),
                     "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n%s: %zu\r\n\r\n%s", names[i],
                     strlen(inner), inner);
        raw_exchange(bytes, answer, sizeof(answer));
        if (count_responses(answer) != 1 || strncmp(answer, "HTTP/1.1 200", 12) != 0 ||
            strstr(answer, "Connection: close") == NULL)
            fail_msg("'%s': expected one 200 answer and a close, got: %s", names[i], answer);
    }
    /* Requests whose framing leaves no doubt may share a connection
     * (keep-alive, pipelined): each is answered as itself, in order; the
     * second here is refused for its missing token. */
    snprintf(bytes, sizeof(bytes),
             "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
             "GET /v1/tenants HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    raw_exchange(bytes, answer, sizeof(answer));
    const char *second = strstr(answer + 1, "HTTP/1.1 ");
    if (count_responses(answer) != 2 || strncmp(answer, "HTTP/1.1 200", 12) != 0 ||
        second == NULL || strncmp(second, "HTTP/1.1 401", 12) != 0)
        fail_msg("pipelined: expected a 200 then a 401, got: %s", answer);
    expect_nothing_stored();
}

/* Chunked bodies (Connect's Node.js clients send them) are decoded by
 * http-parser: a malformed one is 400, another transfer coding 411, and
 * neither changes anything. */
static void test_chunked_bodies(void **state)
{
    (void)state;
    char bytes[1024], answer[4096];
    static const char *const bodies[] = {
        "zz\r\nabc\r\n0\r\n\r\n",                 /* not a chunk size */
        "3\r\nabc\r\nxyz\r\n0\r\n\r\n",           /* a second size that is not hex */
        "-1\r\nabc\r\n0\r\n\r\n",                 /* a negative size */
        "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n", /* a size that overflows */
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        snprintf(bytes, sizeof(bytes),
                 "POST /v1/tenants/acme/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Authorization: Bearer %s\r\nContent-Type: text/x-lua\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n%s",
                 env.token, bodies[i]);
        raw_exchange(bytes, answer, sizeof(answer));
        if (strncmp(answer, "HTTP/1.1 400", 12) != 0 || strstr(answer, "malformed chunked") == NULL)
            fail_msg("chunked body %zu: expected 400 malformed chunked, got: %s", i, answer);
    }
    snprintf(bytes, sizeof(bytes),
             "POST /v1/tenants/acme/bundles HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Authorization: Bearer %s\r\nContent-Type: text/x-lua\r\n"
             "Transfer-Encoding: gzip\r\n\r\n",
             env.token);
    raw_exchange(bytes, answer, sizeof(answer));
    if (strncmp(answer, "HTTP/1.1 411", 12) != 0)
        fail_msg("gzip coding: expected 411, got: %s", answer);
    expect_nothing_stored();
}

static void test_malformed_heads_are_never_served(void **state)
{
    /* nng 1.5 parses request heads itself and drops the connection on
     * what it cannot parse, before any handler runs (docs/security.md,
     * "Open"): no 400 or 431 is possible. What must hold: none of these
     * is served (no answer, or a 4xx), and the controller keeps serving. */
    static char big[16 * 1024];
    memset(big, 'a', sizeof(big) - 1);
    char bytes[20 * 1024], answer[4096];
    const char *heads[] = {
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\tb\r\n\r\n",
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A:\tb\r\n\r\n",
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: a\001b\r\n\r\n",
        "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\ngarbage\r\n\r\n",
        "GET /v1/health\r\nHost: 127.0.0.1\r\n\r\n",
        NULL, /* a 16 KiB field: over nng's 8 KiB head buffer */
    };
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        if (heads[i] != NULL)
            snprintf(bytes, sizeof(bytes), "%s", heads[i]);
        else
            snprintf(bytes, sizeof(bytes),
                     "GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: %s\r\n\r\n", big);
        raw_exchange(bytes, answer, sizeof(answer));
        if (answer[0] != '\0' && strncmp(answer, "HTTP/1.1 4", 10) != 0)
            fail_msg("head %zu: expected no answer or a 4xx, got: %.200s", i, answer);
    }
    /* A NUL cannot go through raw_exchange (a string): by hand. */
    static const char nul[] = "GET /v1/hea\0lth HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ctl.api_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    assert_int_equal(write(fd, nul, sizeof(nul) - 1), (ssize_t)(sizeof(nul) - 1));
    ssize_t got = read(fd, answer, sizeof(answer) - 1);
    answer[got > 0 ? got : 0] = '\0';
    close(fd);
    if (got > 0 && strncmp(answer, "HTTP/1.1 4", 10) != 0)
        fail_msg("NUL in the target: expected no answer or a 4xx, got: %.200s", answer);
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/health", NULL, NULL, 0, &r), 200);
    pc_http_result_free(&r);
    expect_nothing_stored();
}

static void test_error_messages_quote_any_bytes(void **state)
{
    /* The Lua error quotes the source's bytes, which are not UTF-8: the
     * answer is still the 422 with the message, bytes escaped. */
    const char bad[] = "local x = 1 \"\xff\xfe\"";
    char bearer[128];
    snprintf(bearer, sizeof(bearer), "Bearer %s", env.token);
    const char *headers[] = {"Authorization", bearer, "Content-Type", "text/x-lua", NULL};
    pc_http_result r;
    pc_err err;
    assert_int_equal(pc_http_call(ctl.api_url, "POST", "/v1/tenants/acme/bundles", headers, bad,
                                  sizeof(bad) - 1, 30000, &r, &err),
                     PC_OK);
    if (r.status != 422 || strstr((const char *)r.body, "runtime_error") == NULL ||
        strstr((const char *)r.body, "\\\\xff") == NULL)
        fail_msg("expected 422 runtime_error quoting \\xff, got %d: %s", r.status, r.body);
    pc_http_result_free(&r);
    expect_nothing_stored();
}

static void test_a_good_deploy_still_works(void **state)
{
    /* After all the abuse, the controller is healthy and accepts a deploy. */
    assert_int_equal(pc_test_deploy_lua(&env, &ctl, "acme", lua_ok), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_bad_tenant_names),
        cmocka_unit_test(test_oversized_bundle),
        cmocka_unit_test(test_bad_bundles),
        cmocka_unit_test(test_malformed_json_and_missing_fields),
        cmocka_unit_test(test_routes_and_methods),
        cmocka_unit_test(test_openapi_document_served),
        cmocka_unit_test(test_unread_bodies_never_become_requests),
        cmocka_unit_test(test_chunked_bodies),
        cmocka_unit_test(test_malformed_heads_are_never_served),
        cmocka_unit_test(test_error_messages_quote_any_bytes),
        cmocka_unit_test(test_a_good_deploy_still_works),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
