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
         * each against the caller (test_batch). */
        bool tenant_path = strncmp(p, "/v1/tenants", 11) == 0 || strcmp(p, "/v1/changes") == 0;
        bool public_path = strcmp(p, "/v1/health") == 0 || strcmp(p, "/metrics") == 0 ||
                           strcmp(p, "/livez") == 0 || strcmp(p, "/readyz") == 0 ||
                           strcmp(p, "/v1/openapi.yaml") == 0;
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

/* pattern with every {name} made {}: the document and the table may
 * name a parameter differently. */
static void shape(const char *pattern, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = pattern; *p != '\0' && n + 3 < cap; p++) {
        out[n++] = *p;
        if (*p == '{') {
            while (*p != '\0' && *p != '}')
                p++;
            out[n++] = '}';
            if (*p == '\0')
                break;
        }
    }
    out[n] = '\0';
}

typedef struct documented {
    char method[8], shape[160];
    bool has_id, routed;
} documented;

/* The operations the built-in document lists: its lines "  /path:" and,
 * under them, "    get:" etc. (the file's own layout; docs/openapi.yaml
 * keeps it), and whether each has an operationId. */
static size_t documented_operations(documented *ops, size_t cap)
{
    const char *doc = (const char *)pc_openapi_yaml;
    char path[160] = "";
    size_t n = 0;
    bool in_paths = false;
    for (const char *line = doc; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char l[256];
        snprintf(l, sizeof(l), "%.*s", (int)(len < sizeof(l) - 1 ? len : sizeof(l) - 1), line);
        if (strcmp(l, "paths:") == 0)
            in_paths = true;
        else if (l[0] != ' ' && l[0] != '\0')
            in_paths = false;
        else if (in_paths && strncmp(l, "  /", 3) == 0 && l[len - 1] == ':') {
            l[len - 1] = '\0';
            shape(l + 2, path, sizeof(path));
        } else if (in_paths && (strcmp(l, "    get:") == 0 || strcmp(l, "    post:") == 0 ||
                                strcmp(l, "    put:") == 0 || strcmp(l, "    delete:") == 0)) {
            assert_true(n < cap);
            memset(&ops[n], 0, sizeof(ops[n]));
            for (size_t i = 0; l[4 + i] != ':'; i++)
                ops[n].method[i] = (char)(l[4 + i] - 'a' + 'A');
            snprintf(ops[n].shape, sizeof(ops[n].shape), "%s", path);
            n++;
        } else if (in_paths && n > 0 && strncmp(l, "      operationId: ", 19) == 0) {
            ops[n - 1].has_id = true;
        }
        line = end ? end + 1 : line + len;
    }
    return n;
}

static void test_openapi_describes_every_route(void **state)
{
    static documented ops[128];
    size_t n_ops = documented_operations(ops, 128), n = 0;
    const api_route *r = pc_api_routes(&n);
    assert_true(n_ops >= n);
    for (size_t i = 0; i < n; i++) {
        char s[160];
        shape(r[i].route.pattern, s, sizeof(s));
        bool found = false;
        for (size_t k = 0; k < n_ops; k++)
            if (strcmp(ops[k].method, r[i].route.method) == 0 && strcmp(ops[k].shape, s) == 0) {
                ops[k].routed = found = true;
            }
        if (!found)
            fail_msg("route %s %s is not in docs/openapi.yaml", r[i].route.method,
                     r[i].route.pattern);
    }
    for (size_t k = 0; k < n_ops; k++) {
        if (!ops[k].routed)
            fail_msg("docs/openapi.yaml lists %s %s, which no route answers", ops[k].method,
                     ops[k].shape);
        if (!ops[k].has_id)
            fail_msg("docs/openapi.yaml: %s %s has no operationId", ops[k].method, ops[k].shape);
    }
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
