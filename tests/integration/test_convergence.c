/* test_convergence.c - pub/sub may drop messages; agents still converge to
 * exactly the controller's state. Fixed seeds, bounded waits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define TENANTS 20
#define DEPLOYS 200

/* The controller's state: tenant -> active version and hash. */
static json_t *controller_state(pc_test_env *env, pc_test_controller *c)
{
    pc_http_result r;
    assert_int_equal(pc_test_api(env, c, "GET", "/v1/tenants", NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_non_null(doc);
    return doc;
}

/* True when the agent holds exactly the controller's tenants, versions and
 * hashes, and has them live. */
static bool agent_matches(pc_test_agent *a, json_t *want)
{
    json_t *s = pc_test_agent_status(a);
    if (s == NULL)
        return false;
    json_t *tenants = json_object_get(s, "tenants");
    json_t *wanted = json_object_get(want, "tenants");
    bool ok = json_array_size(tenants) == json_array_size(wanted);
    size_t i;
    json_t *w;
    json_array_foreach(wanted, i, w)
    {
        if (!ok)
            break;
        const char *name = json_string_value(json_object_get(w, "tenant"));
        json_int_t version = json_integer_value(json_object_get(w, "active_version"));
        const char *hash = json_string_value(json_object_get(w, "active_hash"));
        bool found = false;
        size_t j;
        json_t *t;
        json_array_foreach(tenants, j, t)
        {
            if (strcmp(json_string_value(json_object_get(t, "tenant")), name) != 0)
                continue;
            found = json_integer_value(json_object_get(t, "applied_version")) == version &&
                    json_integer_value(json_object_get(t, "live_version")) == version &&
                    hash != NULL && json_object_get(t, "applied_hash") != NULL &&
                    strcmp(json_string_value(json_object_get(t, "applied_hash")), hash) == 0;
        }
        ok = found;
    }
    json_decref(s);
    return ok;
}

static void wait_converged(pc_test_env *env, pc_test_controller *c, pc_test_agent *agents, int n)
{
    json_t *want = controller_state(env, c);
    for (int i = 0; i < n; i++) {
        int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
        while (!agent_matches(&agents[i], want) && pc_test_now_ms() < deadline)
            pc_test_sleep_ms(100);
        if (!agent_matches(&agents[i], want)) {
            pc_proc_dump_log(agents[i].proc);
            json_t *s = pc_test_agent_status(&agents[i]);
            char *dump = s ? json_dumps(s, JSON_COMPACT) : NULL;
            fprintf(stderr, "agent %s status: %s\n", agents[i].id, dump ? dump : "(none)");
            free(dump);
            json_decref(s);
            fail_msg("agent %s did not converge", agents[i].id);
        }
    }
    json_decref(want);
}

static void test_dropped_messages_converge(void **state)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agents[2];
    memset(agents, 0, sizeof(agents));
    /* One agent loses 30 % of pub/sub entries, one loses none. */
    const char *lossy[] = {"--test-drop-permille", "300", "--test-drop-seed", "42", NULL};
    pc_test_agent_start_for(&env, &agents[0], "lossy", &ctl, lossy);
    pc_test_agent_start_for(&env, &agents[1], "clean", &ctl, NULL);

    srand(42);
    for (int i = 0; i < DEPLOYS; i++) {
        char tenant[32], src[256], body[64];
        snprintf(tenant, sizeof(tenant), "t%02d", rand() % TENANTS);
        snprintf(body, sizeof(body), "deploy %d", i);
        pc_test_lua_hello(src, sizeof(src), body);
        pc_test_deploy_lua(&env, &ctl, tenant, src);
    }
    wait_converged(&env, &ctl, agents, 2);
    /* The lossy agent really lost entries and recovered them by catch-up. */
    assert_true(pc_test_agent_metric(&agents[0], "popcast_agent_test_dropped_total") > 20);
    assert_true(pc_test_agent_metric(&agents[0], "popcast_agent_caught_up_entries_total") > 20);
    /* No seq was applied twice or skipped: applied == head on both. */
    for (int i = 0; i < 2; i++) {
        json_t *s = pc_test_agent_status(&agents[i]);
        assert_int_equal(json_integer_value(json_object_get(s, "applied_seq")), DEPLOYS);
        json_decref(s);
    }
    for (int i = 0; i < 2; i++)
        pc_test_agent_stop(&agents[i]);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropped_messages_converge),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
