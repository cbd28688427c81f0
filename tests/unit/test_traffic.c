/* test_traffic.c - agent/traffic.h: each tenant version's requests
 * counted by outcome, the newest versions kept, and reports shown only
 * what was published. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "applier.h"
#include "traffic.h"

static void count_n(pc_traffic *t, const char *tenant, uint64_t v, pc_traffic_outcome o, int n)
{
    for (int i = 0; i < n; i++)
        pc_traffic_count(t, tenant, v, o);
}

/* Nothing shows before a publish; after one, exactly what was counted,
 * by outcome; counts after it wait for the next. */
static void test_counts_show_once_published(void **state)
{
    (void)state;
    pc_traffic *t = pc_traffic_new(1234);
    assert_non_null(t);
    assert_int_equal(pc_traffic_since_ms(t), 1234);
    pc_version_traffic got[PC_TRAFFIC_VERSIONS];
    assert_false(pc_traffic_publish(t));
    count_n(t, "app", 1, PC_TRAFFIC_OK, 7);
    count_n(t, "app", 1, PC_TRAFFIC_ERROR, 2);
    count_n(t, "app", 1, PC_TRAFFIC_LIMIT, 1);
    count_n(t, "app", 1, PC_TRAFFIC_5XX, 3);
    assert_int_equal(pc_traffic_get(t, "app", got), 0);
    /* As counted now, they show at once (the agent's own status). */
    assert_int_equal(pc_traffic_current(t, "app", got), 1);
    assert_int_equal(got[0].requests, 13);
    assert_true(pc_traffic_publish(t));
    assert_int_equal(pc_traffic_get(t, "app", got), 1);
    assert_int_equal(got[0].version, 1);
    assert_int_equal(got[0].requests, 13);
    assert_int_equal(got[0].errors, 2);
    assert_int_equal(got[0].limit_kills, 1);
    assert_int_equal(got[0].status_5xx, 3);
    count_n(t, "app", 1, PC_TRAFFIC_OK, 5);
    assert_int_equal(pc_traffic_get(t, "app", got), 1);
    assert_int_equal(got[0].requests, 13);
    assert_true(pc_traffic_publish(t));
    assert_false(pc_traffic_publish(t)); /* nothing new */
    assert_int_equal(pc_traffic_get(t, "app", got), 1);
    assert_int_equal(got[0].requests, 18);
    assert_int_equal(pc_traffic_get(t, "other", got), 0);
    pc_traffic_free(t);
}

/* Newest version first; a fourth version pushes out the oldest; a
 * request of a version older than every kept one counts nowhere. Invalid
 * tenants and version 0 count nowhere either. */
static void test_newest_versions_kept(void **state)
{
    (void)state;
    pc_traffic *t = pc_traffic_new(0);
    assert_non_null(t);
    count_n(t, "app", 2, PC_TRAFFIC_OK, 2);
    count_n(t, "app", 1, PC_TRAFFIC_OK, 1); /* an older one, still finishing */
    count_n(t, "app", 4, PC_TRAFFIC_OK, 4);
    count_n(t, "app", 5, PC_TRAFFIC_ERROR, 5);
    count_n(t, "app", 1, PC_TRAFFIC_OK, 9); /* pushed out: counted nowhere */
    count_n(t, "Bad Name", 1, PC_TRAFFIC_OK, 1);
    count_n(t, "app", 0, PC_TRAFFIC_OK, 1);
    pc_traffic_count(NULL, "app", 5, PC_TRAFFIC_OK);
    assert_true(pc_traffic_publish(t));
    pc_version_traffic got[PC_TRAFFIC_VERSIONS];
    assert_int_equal(pc_traffic_get(t, "app", got), 3);
    assert_int_equal(got[0].version, 5);
    assert_int_equal(got[0].requests, 5);
    assert_int_equal(got[0].errors, 5);
    assert_int_equal(got[1].version, 4);
    assert_int_equal(got[1].requests, 4);
    assert_int_equal(got[2].version, 2);
    assert_int_equal(got[2].requests, 2);
    assert_int_equal(pc_traffic_get(t, "Bad Name", got), 0);
    pc_traffic_free(t);
}

/* attach fills a report's tenant entry; the applier's clear frees it. */
static void test_attach_fills_the_report(void **state)
{
    (void)state;
    pc_traffic *t = pc_traffic_new(0);
    assert_non_null(t);
    count_n(t, "app", 3, PC_TRAFFIC_LIMIT, 2);
    count_n(t, "app", 2, PC_TRAFFIC_OK, 1);
    assert_true(pc_traffic_publish(t));
    Popcast__AgentStatus st = POPCAST__AGENT_STATUS__INIT;
    st.tenants = calloc(2, sizeof(*st.tenants));
    assert_non_null(st.tenants);
    const char *names[] = {"app", "idle"};
    for (size_t i = 0; i < 2; i++) {
        Popcast__TenantStatus *ts = malloc(sizeof(*ts));
        assert_non_null(ts);
        popcast__tenant_status__init(ts);
        ts->tenant = strdup(names[i]);
        st.tenants[st.n_tenants++] = ts;
        assert_int_equal(pc_traffic_attach(t, ts), 0);
    }
    assert_int_equal(st.tenants[0]->n_traffic, 2);
    assert_int_equal(st.tenants[0]->traffic[0]->version, 3);
    assert_int_equal(st.tenants[0]->traffic[0]->limit_kills, 2);
    assert_int_equal(st.tenants[0]->traffic[1]->version, 2);
    assert_int_equal(st.tenants[1]->n_traffic, 0);
    assert_null(st.tenants[1]->traffic);
    pc_applier_status_clear(&st);
    pc_traffic_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counts_show_once_published),
        cmocka_unit_test(test_newest_versions_kept),
        cmocka_unit_test(test_attach_fills_the_report),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
