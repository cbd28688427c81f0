/* test_health_report.c - health.h: the text of /livez and /readyz, the
 * exclude list, and the loop and shutdown checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clock.h"
#include "health.h"

static void test_text(void **state)
{
    (void)state;
    pc_health_report r;
    pc_health_init(&r, "readyz");
    pc_health_check(&r, "store", true, "never shown");
    char *t = pc_health_text(&r, false);
    assert_string_equal(t, "ok\n");
    free(t);
    t = pc_health_text(&r, true);
    assert_string_equal(t, "[+]store ok\nreadyz check passed\n");
    free(t);
    pc_health_check(&r, "leader", false, "no leader known (term %d)", 7);
    pc_health_check(&r, "quiet", false, NULL);
    assert_false(pc_health_ok(&r));
    /* A failure lists every check, verbose or not. */
    const char *want = "[+]store ok\n[-]leader failed: no leader known (term 7)\n"
                       "[-]quiet failed: no reason\nreadyz check failed\n";
    t = pc_health_text(&r, false);
    assert_string_equal(t, want);
    free(t);
    t = pc_health_text(&r, true);
    assert_string_equal(t, want);
    free(t);
}

static void test_limits(void **state)
{
    (void)state;
    pc_health_report r;
    pc_health_init(&r, "livez");
    for (int i = 0; i < PC_HEALTH_MAX_CHECKS + 5; i++)
        pc_health_check(&r, "a-check-name-longer-than-the-thirty-two-bytes-kept", false, "%0300d",
                        i);
    assert_int_equal(r.n, PC_HEALTH_MAX_CHECKS);
    assert_int_equal(strlen(r.checks[0].name), PC_HEALTH_NAME_MAX - 1);
    assert_int_equal(strlen(r.checks[0].detail), PC_HEALTH_DETAIL_MAX - 1);
    char *t = pc_health_text(&r, true);
    assert_non_null(strstr(t, "livez check failed\n"));
    free(t);
}

static void test_excluded(void **state)
{
    (void)state;
    assert_true(pc_health_excluded("exclude=fresh", "fresh"));
    assert_true(pc_health_excluded("verbose&exclude=loop,fresh", "fresh"));
    assert_true(pc_health_excluded("exclude=loop,fresh,", "loop"));
    assert_false(pc_health_excluded("exclude=freshness", "fresh"));
    assert_false(pc_health_excluded("exclude=fres", "fresh"));
    assert_false(pc_health_excluded("exclude=", "fresh"));
    assert_false(pc_health_excluded("exclude", "fresh"));
    assert_false(pc_health_excluded("xexclude=fresh", "fresh"));
    assert_false(pc_health_excluded("", "fresh"));
    assert_false(pc_health_excluded(NULL, "fresh"));
}

static void test_loop_and_shutdown(void **state)
{
    (void)state;
    pc_health_loop l;
    memset(&l, 0, sizeof(l));
    pc_health_report r;
    pc_health_init(&r, "livez");
    pc_health_check_loop(&r, &l);
    assert_false(r.checks[0].ok); /* never ran */
    pc_health_loop_tick(&l);
    pc_health_init(&r, "livez");
    pc_health_check_loop(&r, &l);
    pc_health_check_shutdown(&r, &l);
    assert_true(pc_health_ok(&r));
    /* A loop that has not run a timer for longer than the stall limit. */
    atomic_store(&l.tick_ms, pc_mono_ms() - PC_HEALTH_LOOP_STALL_MS - 1000);
    pc_health_init(&r, "livez");
    pc_health_check_loop(&r, &l);
    assert_false(r.checks[0].ok);
    assert_non_null(strstr(r.checks[0].detail, "the event loop last ran "));
    pc_health_loop_tick(&l);
    pc_health_loop_stopping(&l);
    pc_health_init(&r, "readyz");
    pc_health_check_loop(&r, &l);
    pc_health_check_shutdown(&r, &l);
    assert_true(r.checks[0].ok);
    assert_false(r.checks[1].ok);
    assert_string_equal(r.checks[1].detail, "stopping");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_excluded),
        cmocka_unit_test(test_loop_and_shutdown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
