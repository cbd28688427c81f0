/* test_strmap.c - common/strmap.h: put/get/replace/remove/iterate, bad
 * input, growth through many keys, and removal inside probe runs made of
 * forced collisions (checked against a plain array after every step). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "strmap.h"

static int values[100000];

static void test_basic(void **state)
{
    pc_strmap *m = pc_strmap_new();
    assert_non_null(m);
    /* Empty map. */
    assert_null(pc_strmap_get(m, "a"));
    assert_null(pc_strmap_remove(m, "a"));
    size_t pos = 0;
    assert_false(pc_strmap_next(m, &pos, NULL, NULL));
    /* Bad input changes nothing. */
    assert_int_equal(pc_strmap_put(m, NULL, &values[0]), PC_E_INVALID);
    assert_int_equal(pc_strmap_put(m, "a", NULL), PC_E_INVALID);
    assert_null(pc_strmap_get(m, NULL));
    assert_null(pc_strmap_remove(m, NULL));
    assert_int_equal(pc_strmap_count(m), 0);

    char key[8] = "a";
    assert_int_equal(pc_strmap_put(m, key, &values[1]), PC_OK);
    key[0] = 'z'; /* the map kept its own copy */
    assert_ptr_equal(pc_strmap_get(m, "a"), &values[1]);
    assert_null(pc_strmap_get(m, "z"));
    assert_int_equal(pc_strmap_put(m, "", &values[2]), PC_OK); /* the empty key is a key */
    assert_int_equal(pc_strmap_put(m, "ab", &values[3]), PC_OK);
    assert_int_equal(pc_strmap_count(m), 3);
    /* Replacing keeps the count. */
    assert_int_equal(pc_strmap_put(m, "a", &values[4]), PC_OK);
    assert_int_equal(pc_strmap_count(m), 3);
    assert_ptr_equal(pc_strmap_get(m, "a"), &values[4]);
    assert_ptr_equal(pc_strmap_get(m, ""), &values[2]);
    assert_ptr_equal(pc_strmap_get(m, "ab"), &values[3]);

    assert_ptr_equal(pc_strmap_remove(m, "a"), &values[4]);
    assert_null(pc_strmap_remove(m, "a"));
    assert_null(pc_strmap_get(m, "a"));
    assert_int_equal(pc_strmap_count(m), 2);

    int seen = 0;
    const char *k;
    void *v;
    pos = 0;
    while (pc_strmap_next(m, &pos, &k, &v)) {
        if (strcmp(k, "") == 0)
            assert_ptr_equal(v, &values[2]);
        else if (strcmp(k, "ab") == 0)
            assert_ptr_equal(v, &values[3]);
        else
            fail_msg("unexpected key %s", k);
        seen++;
    }
    assert_int_equal(seen, 2);
    assert_false(pc_strmap_next(m, &pos, &k, &v)); /* stays finished */
    pc_strmap_free(m);
    pc_strmap_free(NULL);
}

static void test_many_keys(void **state)
{
    const int n = 100000;
    pc_strmap *m = pc_strmap_new();
    char key[32];
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "tenant-%d", i);
        assert_int_equal(pc_strmap_put(m, key, &values[i]), PC_OK);
    }
    assert_int_equal(pc_strmap_count(m), (size_t)n);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "tenant-%d", i);
        assert_ptr_equal(pc_strmap_get(m, key), &values[i]);
    }
    /* Remove every odd key: the even ones stay reachable. */
    for (int i = 1; i < n; i += 2) {
        snprintf(key, sizeof(key), "tenant-%d", i);
        assert_ptr_equal(pc_strmap_remove(m, key), &values[i]);
    }
    assert_int_equal(pc_strmap_count(m), (size_t)n / 2);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "tenant-%d", i);
        if (i % 2)
            assert_null(pc_strmap_get(m, key));
        else
            assert_ptr_equal(pc_strmap_get(m, key), &values[i]);
    }
    /* Iteration yields every remaining entry exactly once. */
    unsigned char *seen = calloc((size_t)n, 1);
    size_t pos = 0, count = 0;
    const char *k;
    void *v;
    while (pc_strmap_next(m, &pos, &k, &v)) {
        int i = (int)((int *)v - values);
        assert_true(i >= 0 && i < n && i % 2 == 0);
        snprintf(key, sizeof(key), "tenant-%d", i);
        assert_string_equal(k, key);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
        count++;
    }
    assert_int_equal(count, (size_t)n / 2);
    free(seen);
    pc_strmap_free(m);
}

static uint64_t same_hash(const char *key, size_t len)
{
    return UINT64_MAX; /* every key's home is the last slot: runs wrap around */
}

static uint64_t first_char_hash(const char *key, size_t len)
{
    return len ? (uint64_t)(unsigned char)key[0] % 5 : 0;
}

/* Every key collides: removal from the front, the middle and the end of
 * one long probe run (wrapping past the end of the table). */
static void test_all_collide(void **state)
{
    pc_strmap *m = pc_strmap_new_with_hash(same_hash);
    char key[16];
    const int n = 200;
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(pc_strmap_put(m, key, &values[i]), PC_OK);
    }
    int order[] = {0, 100, 199, 1, 198, 50, 51, 52};
    for (size_t r = 0; r < sizeof(order) / sizeof(order[0]); r++) {
        snprintf(key, sizeof(key), "k%d", order[r]);
        assert_ptr_equal(pc_strmap_remove(m, key), &values[order[r]]);
        for (int i = 0; i < n; i++) {
            int removed = 0;
            for (size_t q = 0; q <= r; q++)
                removed |= order[q] == i;
            snprintf(key, sizeof(key), "k%d", i);
            if (removed)
                assert_null(pc_strmap_get(m, key));
            else
                assert_ptr_equal(pc_strmap_get(m, key), &values[i]);
        }
    }
    assert_int_equal(pc_strmap_count(m), (size_t)n - sizeof(order) / sizeof(order[0]));
    pc_strmap_free(m);
}

/* Random puts and removes over a few interleaved probe runs, compared with
 * a plain array after every step. */
static void test_against_model(void **state)
{
    pc_strmap *m = pc_strmap_new_with_hash(first_char_hash);
    enum { KEYS = 300 };
    int *model[KEYS] = {0};
    char key[16];
    uint32_t rng = 12345;
    for (int step = 0; step < 20000; step++) {
        rng = rng * 1103515245u + 12345u;
        int i = (int)((rng >> 8) % KEYS);
        snprintf(key, sizeof(key), "%c%d", 'a' + i % 26, i);
        if ((rng >> 20) % 3 == 0) {
            assert_ptr_equal(pc_strmap_remove(m, key), model[i]);
            model[i] = NULL;
        } else {
            assert_int_equal(pc_strmap_put(m, key, &values[step]), PC_OK);
            model[i] = &values[step];
        }
        if (step % 97 == 0 || step > 19700) {
            size_t count = 0;
            for (int j = 0; j < KEYS; j++) {
                snprintf(key, sizeof(key), "%c%d", 'a' + j % 26, j);
                assert_ptr_equal(pc_strmap_get(m, key), model[j]);
                count += model[j] != NULL;
            }
            assert_int_equal(pc_strmap_count(m), count);
        }
    }
    pc_strmap_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_basic),
        cmocka_unit_test(test_many_keys),
        cmocka_unit_test(test_all_collide),
        cmocka_unit_test(test_against_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
