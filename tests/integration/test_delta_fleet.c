/* test_delta_fleet.c - delta status reports between real processes, with
 * an agent holding 20,000 tenants (POPCAST_DELTA_TENANTS overrides).
 *
 * Once the controller holds the agent's table, each report carries what
 * changed (a few hundred bytes, whatever the tenant count), a deploy still
 * shows live through them, and a controller that restarts (and so lost
 * the table) asks for and gets the whole table again. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define CLIENTS 16
/* A report of what changed: the header, a digest, a few tenants. Far below
 * the whole table (about 38 bytes per tenant). */
#define DELTA_MAX_BYTES 4096

static pc_test_env env;
static pc_test_controller ctl;
static int n_tenants = 20000;

/* The number of tenants the controller's fleet view holds for the agent
 * (-1 if it does not list it). */
static long fleet_tenants(const char *agent_id)
{
    json_t *fleet = pc_test_controller_json(&env, &ctl, "/v1/fleet");
    long n = -1;
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(fleet, "agents"), i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "agent_id")), agent_id) == 0)
            n = (long)json_integer_value(json_object_get(a, "tenants"));
    }
    json_decref(fleet);
    return n;
}

static void wait_fleet_tenants(const char *agent_id, long want)
{
    int64_t deadline = pc_test_now_ms() + 120000;
    long n;
    while ((n = fleet_tenants(agent_id)) != want && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    if (n != want)
        fail_msg("the fleet lists %ld tenants for %s, not %ld", n, agent_id, want);
}

/* Waits for a report sent after now, and returns its size. */
static uint64_t next_report_bytes(pc_test_agent *agent);

/* Reports while the agent is still making its tenants live carry those
 * that changed; once they all are, reports must be small. Returns the
 * first report below DELTA_MAX_BYTES (or the last one seen). */
static uint64_t settled_report_bytes(pc_test_agent *agent)
{
    int64_t deadline = pc_test_now_ms() + 120000;
    uint64_t bytes;
    while ((bytes = next_report_bytes(agent)) >= DELTA_MAX_BYTES && pc_test_now_ms() < deadline)
        ;
    return bytes;
}

static uint64_t next_report_bytes(pc_test_agent *agent)
{
    uint64_t sent = pc_test_agent_metric(agent, "popcast_agent_status_reports_total");
    int64_t deadline = pc_test_now_ms() + 60000;
    while (pc_test_agent_metric(agent, "popcast_agent_status_reports_total") < sent + 2 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(50);
    return pc_test_agent_metric(agent, "popcast_agent_status_report_bytes");
}

static void test_delta_reports_with_many_tenants(void **state)
{
    (void)state;
    const char *env_n = getenv("POPCAST_DELTA_TENANTS");
    if (env_n != NULL && atoi(env_n) > 0)
        n_tenants = atoi(env_n);
    print_message("tenants: %d\n", n_tenants);
    pc_test_env_init(&env);
    const char *fast[] = {"--status-interval-ms", "300", NULL};
    pc_test_controller_start(&env, &ctl, NULL);
    assert_int_equal(pc_test_deploy_tenants(&env, &ctl, 0, n_tenants, CLIENTS), 0);

    /* The agent starts after the deploys: it installs them as a snapshot. */
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge-1", &ctl, fast);
    wait_fleet_tenants("edge-1", n_tenants);
    uint64_t delta = settled_report_bytes(&agent);
    uint64_t table = pc_test_agent_metric(&agent, "popcast_agent_status_table_bytes");
    print_message("whole table %llu bytes, a report once the controller holds it %llu bytes\n",
                  (unsigned long long)table, (unsigned long long)delta);
    assert_true(table > (uint64_t)n_tenants * 10);
    assert_true(delta > 0 && delta < DELTA_MAX_BYTES);
    assert_true(pc_test_agent_metric(&agent, "popcast_agent_status_deltas_total") > 0);
    assert_true(pc_test_controller_metric(&ctl, "popcast_status_deltas_total") > 0);

    /* A deploy shows live through deltas. */
    char src[160];
    pc_test_lua_hello(src, sizeof(src), "second");
    uint64_t v = pc_test_deploy_lua(&env, &ctl, "t000017", src);
    assert_int_equal(v, 2);
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/t000017/versions/%llu/rollout",
             (unsigned long long)v);
    int64_t deadline = pc_test_now_ms() + 60000;
    long live = 0;
    while (live != 1 && pc_test_now_ms() < deadline) {
        json_t *r = pc_test_controller_json(&env, &ctl, path);
        live = (long)json_integer_value(json_object_get(json_object_get(r, "summary"), "live"));
        json_decref(r);
        if (live != 1)
            pc_test_sleep_ms(50);
    }
    assert_int_equal(live, 1);
    assert_true(settled_report_bytes(&agent) < DELTA_MAX_BYTES);
    wait_fleet_tenants("edge-1", n_tenants);

    /* A restarted controller holds no table: it asks for the whole one,
     * gets it, and deltas resume. */
    pc_test_controller_stop(&ctl);
    pc_test_controller_start(&env, &ctl, NULL);
    wait_fleet_tenants("edge-1", n_tenants);
    assert_true(pc_test_controller_metric(&ctl, "popcast_status_whole_requested_total") > 0);
    deadline = pc_test_now_ms() + 60000;
    while (pc_test_controller_metric(&ctl, "popcast_status_deltas_total") == 0 &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(100);
    assert_true(pc_test_controller_metric(&ctl, "popcast_status_deltas_total") > 0);
    assert_true(settled_report_bytes(&agent) < DELTA_MAX_BYTES);

    pc_test_agent_stop(&agent);

    /* A stop while a snapshot is being made live ends promptly and
     * cleanly (the harness checks the exit), and the next start serves
     * every tenant. The stop is sent as soon as the snapshot is stored,
     * when the agent starts making its tenants live. */
    pc_test_agent late = {0};
    pc_test_agent_start_for(&env, &late, "edge-2", &ctl, fast);
    uint64_t head = pc_test_controller_head(&env, &ctl);
    deadline = pc_test_now_ms() + 120000;
    while (pc_test_agent_metric(&late, "popcast_agent_applied_seq") < head &&
           pc_test_now_ms() < deadline)
        pc_test_sleep_ms(5);
    assert_true(pc_test_agent_metric(&late, "popcast_agent_applied_seq") >= head);
    char log_path[sizeof(late.proc->log)];
    snprintf(log_path, sizeof(log_path), "%s", late.proc->log);
    pc_test_agent_stop(&late);
    size_t log_len = 0;
    char *log = pc_test_read_file(log_path, &log_len);
    print_message("the stop came %s the snapshot was made live\n",
                  log != NULL && strstr(log, "stored but not made live") ? "while" : "after");
    free(log);
    pc_test_agent_start_for(&env, &late, "edge-2", &ctl, fast);
    for (int t = 0; t<n_tenants; t += n_tenants / 20> 0 ? n_tenants / 20 : 1) {
        char tenant[32];
        snprintf(tenant, sizeof(tenant), "t%06d", t);
        assert_true(pc_test_wait_version(&late, tenant, 1, 60000));
    }
    assert_true(pc_test_wait_version(&late, "t000017", 2, 60000));
    char last[32];
    snprintf(last, sizeof(last), "t%06d", n_tenants - 1);
    assert_true(pc_test_wait_version(&late, last, 1, 60000));
    pc_test_agent_stop(&late);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delta_reports_with_many_tenants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
