/* test_shutdown.c - a daemon told to stop ends within shutdown_timeout_ms
 * whatever its orderly stop does. nng 1.5.2 rarely blocks nng_close for
 * good (about one agent stop in 200 under churn); a test cannot make it
 * do so on demand, so the daemons' hidden test_hang_on_stop option blocks
 * the stop in its place. The watchdog then logs that it gives up and
 * exits with status 124. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cmocka.h>

#include "harness.h"

#define STOP_TIMEOUT_STATUS 124

static bool log_has(pc_proc *p, const char *text)
{
    FILE *f = fopen(p->log, "r");
    if (f == NULL)
        return false;
    char line[2048];
    bool found = false;
    while (!found && fgets(line, sizeof(line), f) != NULL)
        found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

/* SIGTERM, then the daemon must end by itself with status 124, having
 * said why; the bound here is only the harness's generous start timeout,
 * far above the 500 ms the daemon is given. */
static void expect_bounded_stop(pc_proc *p)
{
    assert_int_equal(kill(p->pid, SIGTERM), 0);
    if (!pc_proc_wait_exit(p, PC_TEST_START_TIMEOUT_MS)) {
        pc_proc_dump_log(p);
        pc_proc_kill9(p);
        fail_msg("%s did not end after SIGTERM although its stop hung", p->name);
    }
    if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != STOP_TIMEOUT_STATUS) {
        pc_proc_dump_log(p);
        fail_msg("%s ended with status %d, not exit %d", p->name, p->status, STOP_TIMEOUT_STATUS);
    }
    /* The stop really hung (the hook ran), and the watchdog said so. */
    if (!log_has(p, "test_hang_on_stop: the stop hangs here") ||
        !log_has(p, "did not finish within 500 ms (shutdown_timeout_ms): giving up")) {
        pc_proc_dump_log(p);
        fail_msg("%s's log does not show the hung stop and the watchdog", p->name);
    }
}

static const char *const hang[] = {"--test-hang-on-stop", "--shutdown-timeout-ms", "500", NULL};

static void test_agent_stop_is_bounded(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, hang);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "before the stop");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    assert_true(pc_test_wait_version(&agent, "app", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    expect_bounded_stop(agent.proc);
    pc_proc_free(agent.proc);
    agent.proc = NULL;

    /* The forced exit lost nothing: restarted normally, it serves what it
     * had applied, at once, and stops cleanly. */
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, NULL);
    assert_true(pc_test_wait_version(&agent, "app", v, PC_TEST_CONVERGE_TIMEOUT_MS));
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static void test_controller_stop_is_bounded(void **state)
{
    (void)state;
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_controller_start(&env, &ctl, hang);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "committed");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "app", src);
    expect_bounded_stop(ctl.proc);
    pc_proc_free(ctl.proc);
    ctl.proc = NULL;

    /* Its store survived the forced exit: the deploy is still there. */
    pc_test_controller_start(&env, &ctl, NULL);
    pc_http_result r;
    assert_int_equal(pc_test_api(&env, &ctl, "GET", "/v1/tenants/app", NULL, NULL, 0, &r), 200);
    json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
    pc_http_result_free(&r);
    assert_int_equal(json_integer_value(json_object_get(doc, "last_version")), (json_int_t)v);
    json_decref(doc);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_stop_is_bounded),
        cmocka_unit_test(test_controller_stop_is_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
