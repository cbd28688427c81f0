/* test_ticker.c - common/ticker.h: the function runs again and again
 * until the stop, never after it returns, and a stop does not wait out a
 * long interval. No timing is asserted: waits are bounded polls. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <cmocka.h>

#include "clock.h"
#include "ticker.h"

static void count(void *arg)
{
    atomic_fetch_add((atomic_int *)arg, 1);
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_runs_until_stopped(void **state)
{
    (void)state;
    atomic_int n = 0;
    pc_ticker *t = NULL;
    pc_err err;
    assert_int_equal(pc_ticker_start(&t, 1, count, &n, &err), PC_OK);
    int64_t give_up = pc_mono_ms() + 30000;
    while (atomic_load(&n) < 5 && pc_mono_ms() < give_up)
        nap_ms(1);
    assert_true(atomic_load(&n) >= 5);
    pc_ticker_stop(t);
    int after = atomic_load(&n);
    nap_ms(20);
    assert_int_equal(atomic_load(&n), after);
}

/* A stop wakes a ticker sleeping through an hour: the test would hang
 * (and ctest's timeout fail it) if it waited. */
static void test_stop_does_not_wait_the_interval(void **state)
{
    (void)state;
    atomic_int n = 0;
    pc_ticker *t = NULL;
    pc_err err;
    assert_int_equal(pc_ticker_start(&t, 3600 * 1000, count, &n, &err), PC_OK);
    pc_ticker_stop(t);
    assert_int_equal(atomic_load(&n), 0);
    pc_ticker_stop(NULL);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    pc_ticker *t = (pc_ticker *)1;
    pc_err err;
    assert_int_equal(pc_ticker_start(&t, 0, count, NULL, &err), PC_E_INVALID);
    assert_null(t);
    assert_int_equal(pc_ticker_start(&t, 10, NULL, NULL, &err), PC_E_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_runs_until_stopped),
        cmocka_unit_test(test_stop_does_not_wait_the_interval),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
