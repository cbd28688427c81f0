/* test_ratelimit.c - token buckets: burst, steady rate, independent keys,
 * a bounded table, and "unlimited". Times are given, not measured. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ratelimit.h"

static void test_burst_then_rate(void **state)
{
    pc_ratelimit *r = pc_ratelimit_new(10, 5, 16); /* 10/s, burst 5 */
    int64_t retry = 0;
    for (int i = 0; i < 5; i++)
        assert_true(pc_ratelimit_take(r, "t1", 1000, &retry));
    assert_false(pc_ratelimit_take(r, "t1", 1000, &retry));
    assert_true(retry > 0 && retry <= 101);
    /* Another key has its own bucket. */
    assert_true(pc_ratelimit_take(r, "t2", 1000, &retry));
    /* 100 ms later: exactly one more. */
    assert_true(pc_ratelimit_take(r, "t1", 1100, &retry));
    assert_false(pc_ratelimit_take(r, "t1", 1100, &retry));
    /* Long idle refills to the burst, not beyond. */
    for (int i = 0; i < 5; i++)
        assert_true(pc_ratelimit_take(r, "t1", 100000, &retry));
    assert_false(pc_ratelimit_take(r, "t1", 100000, &retry));
    /* Time going backwards (it never should) takes nothing extra. */
    assert_false(pc_ratelimit_take(r, "t1", 50000, &retry));
    pc_ratelimit_free(r);
}

/* n at once: all or none, never more than the burst; the burst is 0
 * when unlimited. */
static void test_take_n(void **state)
{
    pc_ratelimit *r = pc_ratelimit_new(10, 5, 16);
    int64_t retry = 0;
    assert_int_equal((int)pc_ratelimit_burst(r), 5);
    assert_true(pc_ratelimit_take_n(r, "t", 3, 1000, &retry));
    assert_false(pc_ratelimit_take_n(r, "t", 3, 1000, &retry)); /* 2 left: none taken */
    assert_true(retry > 0 && retry <= 101);
    assert_true(pc_ratelimit_take_n(r, "t", 2, 1000, &retry));
    assert_false(pc_ratelimit_take(r, "t", 1000, &retry));
    assert_false(pc_ratelimit_take_n(r, "t", 6, 1000000, &retry)); /* above the burst */
    assert_true(pc_ratelimit_take_n(r, "t", 5, 1000000, &retry));
    pc_ratelimit_free(r);
    pc_ratelimit *unlimited = pc_ratelimit_new(0, 5, 16);
    assert_int_equal((int)pc_ratelimit_burst(unlimited), 0);
    assert_true(pc_ratelimit_take_n(unlimited, "t", 1000, 0, &retry));
    pc_ratelimit_free(unlimited);
}

static void test_bounded_and_unlimited(void **state)
{
    pc_ratelimit *r = pc_ratelimit_new(1, 1, 2);
    int64_t retry = 0;
    assert_true(pc_ratelimit_take(r, "a", 0, &retry));
    assert_true(pc_ratelimit_take(r, "b", 1, &retry));
    /* A third key evicts the oldest ("a"), which then starts fresh. */
    assert_true(pc_ratelimit_take(r, "c", 2, &retry));
    assert_false(pc_ratelimit_take(r, "c", 2, &retry));
    pc_ratelimit_free(r);
    pc_ratelimit *none = pc_ratelimit_new(0, 0, 1);
    for (int i = 0; i < 1000; i++)
        assert_true(pc_ratelimit_take(none, "x", 0, &retry));
    pc_ratelimit_free(none);
}

/* Evicting the oldest bucket leaves every other key's bucket in place,
 * also after many evictions. */
static void test_eviction_keeps_others(void **state)
{
    pc_ratelimit *r = pc_ratelimit_new(0.001, 1, 3); /* 1 per 1000 s, burst 1 */
    int64_t retry = 0;
    char key[16];
    for (int i = 0; i < 100; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_true(pc_ratelimit_take(r, key, i, &retry));
        /* The two keys used before it are still in the table: refused. */
        for (int j = i - 2; j <= i; j++) {
            if (j < 0)
                continue;
            /* At its own first time: does not make it more recent. */
            snprintf(key, sizeof(key), "k%d", j);
            assert_false(pc_ratelimit_take(r, key, j, &retry));
        }
    }
    /* k96 was evicted by k99: it starts fresh. */
    assert_true(pc_ratelimit_take(r, "k96", 100, &retry));
    pc_ratelimit_free(r);
}

/* A long key has its bucket like any other. */
static void test_long_key(void **state)
{
    char key[300];
    memset(key, 'x', sizeof(key) - 1);
    key[sizeof(key) - 1] = '\0';
    pc_ratelimit *r = pc_ratelimit_new(1, 1, 4);
    int64_t retry = 0;
    assert_true(pc_ratelimit_take(r, key, 0, &retry));
    assert_false(pc_ratelimit_take(r, key, 0, &retry));
    pc_ratelimit_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_then_rate),
        cmocka_unit_test(test_take_n),
        cmocka_unit_test(test_bounded_and_unlimited),
        cmocka_unit_test(test_eviction_keeps_others),
        cmocka_unit_test(test_long_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
