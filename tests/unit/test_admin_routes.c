/* test_admin_routes.c - the agent's admin address answers exactly the
 * operations docs/openapi-agent.yaml (built into the agent) lists, each
 * with an operationId. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "admin.h"
#include "openapi_agent_doc.h"
#include "openapi_scan.h"

static void test_openapi_describes_every_route(void **state)
{
    (void)state;
    static const char *methods[64], *patterns[64];
    size_t n = 0;
    for (const pc_route *r; (r = pc_admin_route(n)) != NULL && n < 64; n++) {
        methods[n] = r->method;
        patterns[n] = r->pattern;
    }
    assert_true(n >= 6);
    pc_openapi_check_routes((const char *)pc_openapi_agent_yaml, "docs/openapi-agent.yaml", methods,
                            patterns, n);
    assert_int_equal(strlen((const char *)pc_openapi_agent_yaml), pc_openapi_agent_yaml_len);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openapi_describes_every_route),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
