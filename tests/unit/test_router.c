/* test_router.c - route tables: which route a method and target name, the
 * parameters, and the 404/405 distinction. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "httpd.h"
#include "router.h"

typedef struct row {
    pc_route route;
    int id;
} row;

static const row table[] = {
    {{"GET", "/v1/health"}, 1},
    {{"GET", "/v1/tenants/{tenant}"}, 2},
    {{"DELETE", "/v1/tenants/{tenant}"}, 3},
    {{"POST", "/v1/tenants/{tenant}/bundles"}, 4},
    {{"PUT", "/v1/tenants/{tenant}/bundles"}, 5},
    {{"GET", "/v1/tenants/{tenant}/versions/{version}/rollout"}, 6},
    {{"GET", "/metrics"}, 7},
};
#define N (sizeof(table) / sizeof(table[0]))

static int find(const char *method, const char *target, pc_route_match *m)
{
    return pc_route_find(table, N, sizeof(table[0]), method, target, m);
}

static void test_literal_and_params(void **state)
{
    pc_route_match m;
    assert_int_equal(find("GET", "/v1/health", &m), PC_OK);
    assert_int_equal(table[m.index].id, 1);
    assert_int_equal(m.n_params, 0);
    assert_null(pc_route_param(&m, "tenant"));

    assert_int_equal(find("GET", "/v1/tenants/acme/versions/12/rollout?wait=5&x", &m), PC_OK);
    assert_int_equal(table[m.index].id, 6);
    assert_string_equal(pc_route_param(&m, "tenant"), "acme");
    assert_string_equal(pc_route_param(&m, "version"), "12");
    assert_null(pc_route_param(&m, "vers"));
    assert_null(pc_route_param(&m, "versionx"));
    assert_string_equal(m.query, "wait=5&x");

    assert_int_equal(find("DELETE", "/v1/tenants/acme", &m), PC_OK);
    assert_int_equal(table[m.index].id, 3);
    assert_string_equal(m.query, "");
}

static void test_head_is_get_and_empty_segments(void **state)
{
    pc_route_match m;
    assert_int_equal(find("HEAD", "/metrics", &m), PC_OK);
    assert_int_equal(table[m.index].id, 7);
    assert_int_equal(find("GET", "//v1///health/", &m), PC_OK);
    assert_int_equal(table[m.index].id, 1);
    /* HEAD is not a POST. */
    assert_int_equal(find("HEAD", "/v1/tenants/a/bundles", &m), PC_E_METHOD);
}

static void test_not_found_vs_method(void **state)
{
    pc_route_match m;
    assert_int_equal(find("GET", "/v1/nope", &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "/v1/tenants", &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "/v1/tenants/a/b", &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "/", &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "", &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", NULL, &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "v1/health", &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "http://x/v1/health", &m), PC_E_NOTFOUND);

    assert_int_equal(find("GET", "/v1/tenants/a/bundles", &m), PC_E_METHOD);
    assert_string_equal(m.allow, "POST, PUT");
    assert_int_equal(find("PATCH", "/v1/tenants/a", &m), PC_E_METHOD);
    assert_string_equal(m.allow, "GET, DELETE");
    assert_int_equal(find("POST", "/v1/health", &m), PC_E_METHOD);
    assert_string_equal(m.allow, "GET");
}

static void test_hostile_targets(void **state)
{
    pc_route_match m;
    /* Too many segments, a very long target, odd bytes: no match, no
     * crash. */
    assert_int_equal(find("GET", "/a/b/c/d/e/f/g/h/i/j/k", &m), PC_E_NOTFOUND);
    char longer[PC_ROUTE_MAX_PATH + 64];
    memset(longer, 'a', sizeof(longer) - 1);
    longer[0] = '/';
    longer[sizeof(longer) - 1] = '\0';
    assert_int_equal(find("GET", longer, &m), PC_E_NOTFOUND);
    assert_int_equal(find("GET", "/v1/tenants/{tenant}", &m), PC_OK); /* a literal value */
    assert_string_equal(pc_route_param(&m, "tenant"), "{tenant}");
    assert_int_equal(find("GET", "/v1/tenants/%2e%2e", &m), PC_OK); /* no decoding */
    assert_string_equal(pc_route_param(&m, "tenant"), "%2e%2e");
    assert_int_equal(find("GET", "/v1/tenants/a?", &m), PC_OK);
    assert_string_equal(m.query, "");
    assert_int_equal(find(NULL, "/v1/health", &m), PC_E_NOTFOUND);
}

/* Free text in a query (?message=): percent-decoded, "+" a space; a
 * malformed or NUL escape, or more than cap-1 bytes, is an error, never
 * a shortened value. */
static void test_query_text(void **state)
{
    (void)state;
    char out[8];
    assert_int_equal(pc_httpd_query_text("a=1&m=x+y%2By%e2", "m", out, sizeof(out)), PC_OK);
    assert_string_equal(out, "x y+y\xe2");
    assert_int_equal(pc_httpd_query_text("mm=1&m", "m", out, sizeof(out)), PC_OK);
    assert_string_equal(out, ""); /* the key alone: empty */
    assert_int_equal(pc_httpd_query_text("mm=1&m=2&m=3", "m", out, sizeof(out)), PC_OK);
    assert_string_equal(out, "2"); /* the first one */
    assert_int_equal(pc_httpd_query_text("mm=1", "m", out, sizeof(out)), PC_E_NOTFOUND);
    assert_int_equal(pc_httpd_query_text(NULL, "m", out, sizeof(out)), PC_E_NOTFOUND);
    assert_int_equal(pc_httpd_query_text("m=1234567", "m", out, sizeof(out)), PC_OK);
    assert_int_equal(pc_httpd_query_text("m=12345678", "m", out, sizeof(out)), PC_E_INVALID);
    assert_int_equal(pc_httpd_query_text("m=%41%4", "m", out, sizeof(out)), PC_E_INVALID);
    assert_int_equal(pc_httpd_query_text("m=%4&x=1", "m", out, sizeof(out)), PC_E_INVALID);
    assert_int_equal(pc_httpd_query_text("m=%zz", "m", out, sizeof(out)), PC_E_INVALID);
    assert_int_equal(pc_httpd_query_text("m=a%00b", "m", out, sizeof(out)), PC_E_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_literal_and_params),
        cmocka_unit_test(test_head_is_get_and_empty_segments),
        cmocka_unit_test(test_not_found_vs_method),
        cmocka_unit_test(test_hostile_targets),
        cmocka_unit_test(test_query_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
