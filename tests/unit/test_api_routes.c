/* test_api_routes.c - the controller API's route table is well formed, and
 * the decisions derived from it are the ones docs/api.md states: every
 * write is leader-only and rate limited, every route naming a tenant is
 * scoped to the caller's tenants, administration needs the admin token,
 * and only health (/v1/health, /livez, /readyz), metrics and the OpenAPI
 * document are public; and that document (as built into the controller)
 * describes every route, no route that is not, with an operationId each. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "api_internal.h"
#include "openapi_doc.h"
#include "openapi_scan.h"

static void test_table_is_well_formed(void **state)
{
    size_t n = 0;
    const api_route *r = pc_api_routes(&n);
    assert_true(n >= 20);
    for (size_t i = 0; i < n; i++) {
        assert_non_null(r[i].handler);
        assert_true(r[i].route.pattern[0] == '/');
        const char *m = r[i].route.method;
        assert_true(strcmp(m, "GET") == 0 || strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
                    strcmp(m, "DELETE") == 0);
        /* Reads never write, and everything else does. */
        assert_int_equal(r[i].write, strcmp(m, "GET") != 0);
        for (size_t j = 0; j < i; j++)
            if (strcmp(r[i].route.method, r[j].route.method) == 0 &&
                strcmp(r[i].route.pattern, r[j].route.pattern) == 0)
                fail_msg("route %s %s twice", m, r[i].route.pattern);
        /* Every route is reachable through the router. */
        char target[256];
        snprintf(target, sizeof(target), "%s", r[i].route.pattern);
        pc_route_match match;
        assert_int_equal(pc_route_find(r, n, sizeof(*r), m, target, &match), PC_OK);
        assert_int_equal(match.index, i);
    }
}

static void test_auth_is_derived_from_the_path(void **state)
{
    size_t n = 0;
    const api_route *r = pc_api_routes(&n);
    for (size_t i = 0; i < n; i++) {
        const char *p = r[i].route.pattern;
        /* /v1/changes names its tenants in the body: its handler checks
         * each against the caller (test_batch); /v1/watch shows a scoped
         * token its tenants' events only (test_watch). */
        bool tenant_path = strncmp(p, "/v1/tenants", 11) == 0 || strcmp(p, "/v1/changes") == 0 ||
                           strcmp(p, "/v1/watch") == 0;
        bool public_path = strcmp(p, "/v1/health") == 0 || strcmp(p, "/metrics") == 0 ||
                           strcmp(p, "/livez") == 0 || strcmp(p, "/readyz") == 0 ||
                           strcmp(p, "/v1/openapi.yaml") == 0 ||
                           strncmp(p, "/dashboard", 10) == 0; /* the page asks for a token */
        if (public_path)
            assert_int_equal(r[i].auth, API_PUBLIC);
        else if (tenant_path)
            assert_int_equal(r[i].auth, API_TENANT);
        else
            assert_int_equal(r[i].auth, API_ADMIN);
        /* A tenant in the path is always checked against the caller. */
        if (strstr(p, "{tenant}") != NULL)
            assert_int_equal(r[i].auth, API_TENANT);
        /* No public route writes. */
        if (r[i].auth == API_PUBLIC)
            assert_false(r[i].write);
    }
}

static void test_scoping(void **state)
{
    char *tenants[] = {"alpha", "beta"};
    Popcast__TokenRecord t = POPCAST__TOKEN_RECORD__INIT;
    t.tenants = tenants;
    t.n_tenants = 2;
    api_principal scoped = {false, &t}, admin = {true, NULL}, none = {false, NULL};
    assert_true(api_may_use_tenant(&scoped, "alpha"));
    assert_true(api_may_use_tenant(&scoped, "beta"));
    assert_false(api_may_use_tenant(&scoped, "gamma"));
    assert_false(api_may_use_tenant(&scoped, "alph"));
    assert_true(api_may_use_tenant(&admin, "gamma"));
    assert_false(api_may_use_tenant(&none, "alpha"));
}

static void test_parse_u64(void **state)
{
    uint64_t v = 0;
    assert_int_equal(api_parse_u64("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(api_parse_u64("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(api_parse_u64("18446744073709551616", &v), -1);
    assert_int_equal(api_parse_u64("-1", &v), -1);
    assert_int_equal(api_parse_u64("+1", &v), -1);
    assert_int_equal(api_parse_u64(" 1", &v), -1);
    assert_int_equal(api_parse_u64("1x", &v), -1);
    assert_int_equal(api_parse_u64("", &v), -1);
    assert_int_equal(api_parse_u64(NULL, &v), -1);
}

static void test_openapi_describes_every_route(void **state)
{
    size_t n = 0;
    const api_route *r = pc_api_routes(&n);
    static const char *methods[128], *patterns[128];
    assert_true(n <= 128);
    for (size_t i = 0; i < n; i++) {
        methods[i] = r[i].route.method;
        patterns[i] = r[i].route.pattern;
    }
    pc_openapi_check_routes((const char *)pc_openapi_yaml, "docs/openapi.yaml", methods, patterns,
                            n);
    assert_int_equal(strlen((const char *)pc_openapi_yaml), pc_openapi_yaml_len);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_is_well_formed),
        cmocka_unit_test(test_auth_is_derived_from_the_path),
        cmocka_unit_test(test_scoping),
        cmocka_unit_test(test_parse_u64),
        cmocka_unit_test(test_openapi_describes_every_route),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
