/* test_cors.c - the controller's CORS allow-list (cors_origins): a
 * browser page from an allowed origin may call the API (its preflight is
 * answered, its answers carry Access-Control-Allow-Origin); any other
 * origin gets nothing it could read, and a controller without the list
 * answers no browser at all. Real controller, real HTTP. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

static const char *const allow_dash[] = {"--cors-origins", "https://dash.example", NULL};

/* method path with Origin origin (NULL: none) and, for a preflight, the
 * method it asks about; the bearer token when authed. */
static int call(pc_test_env *env, pc_test_controller *ctl, const char *method, const char *path,
                const char *origin, const char *asks, bool authed, pc_http_result *r)
{
    char auth[128];
    snprintf(auth, sizeof(auth), "Bearer %s", env->token);
    const char *headers[9];
    int h = 0;
    if (origin != NULL) {
        headers[h++] = "Origin";
        headers[h++] = origin;
    }
    if (asks != NULL) {
        headers[h++] = "Access-Control-Request-Method";
        headers[h++] = asks;
    }
    if (authed) {
        headers[h++] = "Authorization";
        headers[h++] = auth;
    }
    headers[h] = NULL;
    assert_int_equal(pc_http_call(ctl->api_url, method, path, headers, NULL, 0, 10000, r, NULL),
                     PC_OK);
    return r->status;
}

static const char *header(pc_http_result *r, const char *name)
{
    const char *v = pc_http_result_header(r, name);
    return v ? v : "";
}

static void test_allowed_origin(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, allow_dash);
    pc_http_result r;

    /* An authenticated read from the allowed origin: readable. */
    assert_int_equal(call(&env, &ctl, "GET", "/v1/tenants", "https://dash.example", NULL, true, &r),
                     200);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "https://dash.example");
    assert_string_equal(header(&r, "Vary"), "Origin");
    assert_non_null(strstr(header(&r, "Access-Control-Expose-Headers"), "X-Popcast-Read"));
    pc_http_result_free(&r);
    /* Errors carry it too, so the page can read why. */
    assert_int_equal(
        call(&env, &ctl, "GET", "/v1/tenants", "https://dash.example", NULL, false, &r), 401);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "https://dash.example");
    pc_http_result_free(&r);

    /* The preflight of a deploy. */
    assert_int_equal(call(&env, &ctl, "OPTIONS", "/v1/tenants/web/bundles", "https://dash.example",
                          "POST", false, &r),
                     204);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "https://dash.example");
    assert_string_equal(header(&r, "Access-Control-Allow-Methods"), "POST");
    assert_non_null(strstr(header(&r, "Access-Control-Allow-Headers"), "Authorization"));
    assert_non_null(strstr(header(&r, "Access-Control-Allow-Headers"), "Idempotency-Key"));
    pc_http_result_free(&r);
    /* The preflight of a Connect call: POST, with Connect's headers. */
    assert_int_equal(call(&env, &ctl, "OPTIONS", "/popcast.v1.TenantService/GetTenant",
                          "https://dash.example", "POST", false, &r),
                     204);
    assert_string_equal(header(&r, "Access-Control-Allow-Methods"), "POST");
    assert_non_null(strstr(header(&r, "Access-Control-Allow-Headers"), "Connect-Protocol-Version"));
    pc_http_result_free(&r);
    assert_int_equal(call(&env, &ctl, "OPTIONS", "/popcast.v1.TenantService/GetTenant",
                          "https://dash.example", "GET", false, &r),
                     405);
    pc_http_result_free(&r);
    /* A method the route does not answer, a path nothing answers. */
    assert_int_equal(call(&env, &ctl, "OPTIONS", "/v1/tenants/web/bundles", "https://dash.example",
                          "PATCH", false, &r),
                     405);
    pc_http_result_free(&r);
    assert_int_equal(
        call(&env, &ctl, "OPTIONS", "/v1/nothing", "https://dash.example", "GET", false, &r), 404);
    pc_http_result_free(&r);

    /* Another origin: nothing a browser would let it read. */
    assert_int_equal(call(&env, &ctl, "GET", "/v1/tenants", "https://evil.example", NULL, true, &r),
                     200);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "");
    pc_http_result_free(&r);
    assert_int_equal(call(&env, &ctl, "OPTIONS", "/v1/tenants/web/bundles", "https://evil.example",
                          "POST", false, &r),
                     403);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "");
    pc_http_result_free(&r);
    /* No Origin at all (curl, the CLI): as before. */
    assert_int_equal(call(&env, &ctl, "GET", "/v1/tenants", NULL, NULL, true, &r), 200);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "");
    pc_http_result_free(&r);

    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static void test_no_list_no_browser(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_http_result r;
    assert_int_equal(
        call(&env, &ctl, "OPTIONS", "/v1/tenants", "https://dash.example", "GET", false, &r), 403);
    pc_http_result_free(&r);
    assert_int_equal(call(&env, &ctl, "GET", "/v1/tenants", "https://dash.example", NULL, true, &r),
                     200);
    assert_string_equal(header(&r, "Access-Control-Allow-Origin"), "");
    pc_http_result_free(&r);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allowed_origin),
        cmocka_unit_test(test_no_list_no_browser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
