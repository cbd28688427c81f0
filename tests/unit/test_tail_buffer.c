/* test_tail_buffer.c - the agent's buffer of tailed tenants' log lines
 * (agent/tail_buffer.h): lines only for tenants a controller asks for,
 * each marked for the controllers that asked; an ask lapses unless
 * renewed; a full buffer drops and counts; request lines are rated per
 * tenant; what is taken leaves the buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "tail_buffer.h"

static void add(pc_tail_buffer *b, const char *tenant, const char *msg, int64_t now)
{
    pc_tail_line l = {.tenant = tenant,
                      .version = 3,
                      .kind = POPCAST__TAIL_KIND__TAIL_KIND_PRINT,
                      .message = msg,
                      .message_len = strlen(msg),
                      .method = "GET",
                      .path = "/p"};
    pc_tail_buffer_add(b, &l, now);
}

static void test_only_asked_tenants(void **state)
{
    (void)state;
    pc_tail_buffer_options o = {.controllers = 2, .want_ttl_ms = 1000};
    pc_tail_buffer *b = pc_tail_buffer_new(&o);
    assert_non_null(b);
    assert_false(pc_tail_buffer_wanted(b, "a", 0));
    add(b, "a", "nobody asked", 0);
    pc_tail_taken t;
    assert_false(pc_tail_buffer_take(b, 0, &t));
    char *c0[] = {"a", "b"};
    char *c1[] = {"b"};
    pc_tail_buffer_want(b, 0, c0, 2, 0);
    pc_tail_buffer_want(b, 1, c1, 1, 0);
    assert_true(pc_tail_buffer_wanted(b, "a", 10));
    assert_false(pc_tail_buffer_wanted(b, "c", 10));
    add(b, "a", "one", 10);
    add(b, "b", "two", 10);
    add(b, "c", "not asked", 10);
    assert_true(pc_tail_buffer_take(b, 10, &t));
    assert_int_equal(t.n_records, 2);
    assert_string_equal(t.records[0]->message, "one");
    assert_string_equal(t.records[0]->path, "/p");
    assert_int_equal(t.records[0]->version, 3);
    assert_int_equal(t.record_masks[0], 1); /* a: controller 0 only */
    assert_int_equal(t.record_masks[1], 3); /* b: both */
    assert_int_equal(t.n_drops, 0);
    pc_tail_taken_clear(&t);
    assert_false(pc_tail_buffer_take(b, 10, &t));
    /* Controller 0 asks again without a: only b stays asked for. */
    char *again[] = {"b"};
    pc_tail_buffer_want(b, 0, again, 1, 20);
    assert_false(pc_tail_buffer_wanted(b, "a", 20));
    /* Past the ttl with no new ask, nothing is wanted. */
    assert_true(pc_tail_buffer_wanted(b, "b", 900));
    assert_false(pc_tail_buffer_wanted(b, "b", 1100));
    add(b, "b", "too late", 1100);
    assert_false(pc_tail_buffer_take(b, 1100, &t));
    /* Names that are not tenants are never asked for. */
    char *bad[] = {"Not-A-Tenant", ""};
    pc_tail_buffer_want(b, 1, bad, 2, 1200);
    assert_false(pc_tail_buffer_wanted(b, "Not-A-Tenant", 1200));
    pc_tail_buffer_want(b, 5, c0, 2, 1200); /* no such controller: ignored */
    assert_false(pc_tail_buffer_wanted(b, "a", 1200));
    pc_tail_buffer_free(b);
}

static void test_full_buffer_drops_and_counts(void **state)
{
    (void)state;
    pc_tail_buffer_options o = {.controllers = 1, .max_lines = 3};
    pc_tail_buffer *b = pc_tail_buffer_new(&o);
    char *a[] = {"a"};
    pc_tail_buffer_want(b, 0, a, 1, 0);
    for (int i = 0; i < 5; i++)
        add(b, "a", "x", 0);
    pc_tail_buffer_count_dropped(b, "a", 7, 0);
    pc_tail_taken t;
    assert_true(pc_tail_buffer_take(b, 0, &t));
    assert_int_equal(t.n_records, 3);
    assert_int_equal(t.n_drops, 1);
    assert_string_equal(t.drops[0]->tenant, "a");
    assert_int_equal(t.drops[0]->dropped, 9);
    assert_int_equal(t.drop_masks[0], 1);
    pc_tail_taken_clear(&t);
    assert_int_equal(pc_tail_buffer_dropped_total(b), 9);
    /* Counts are sent once. */
    add(b, "a", "y", 0);
    assert_true(pc_tail_buffer_take(b, 0, &t));
    assert_int_equal(t.n_records, 1);
    assert_int_equal(t.n_drops, 0);
    pc_tail_taken_clear(&t);
    pc_tail_buffer_free(b);
}

static void test_bytes_bound_and_long_lines(void **state)
{
    (void)state;
    pc_tail_buffer_options o = {.controllers = 1, .max_bytes = 4096};
    pc_tail_buffer *b = pc_tail_buffer_new(&o);
    char *a[] = {"a"};
    pc_tail_buffer_want(b, 0, a, 1, 0);
    char big[3000];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    add(b, "a", big, 0); /* cut to PC_PRINT_LINE_MAX */
    add(b, "a", big, 0);
    add(b, "a", big, 0);
    add(b, "a", big, 0); /* over 4096 bytes held: dropped */
    pc_tail_taken t;
    assert_true(pc_tail_buffer_take(b, 0, &t));
    assert_int_equal(t.n_records, 3);
    assert_int_equal(strlen(t.records[0]->message), PC_PRINT_LINE_MAX);
    assert_int_equal(t.drops[0]->dropped, 1);
    pc_tail_taken_clear(&t);
    pc_tail_buffer_free(b);
}

static void test_request_lines_rated(void **state)
{
    (void)state;
    pc_tail_buffer_options o = {.controllers = 1, .request_lines_per_s = 2};
    pc_tail_buffer *b = pc_tail_buffer_new(&o);
    assert_false(pc_tail_buffer_sample(b, "a", 0)); /* not tailed */
    char *a[] = {"a"};
    pc_tail_buffer_want(b, 0, a, 1, 0);
    assert_true(pc_tail_buffer_sample(b, "a", 100));
    assert_true(pc_tail_buffer_sample(b, "a", 200));
    assert_false(pc_tail_buffer_sample(b, "a", 300));
    assert_false(pc_tail_buffer_sample(b, "a", 400));
    assert_true(pc_tail_buffer_sample(b, "a", 1100)); /* the next second */
    pc_tail_taken t;
    assert_true(pc_tail_buffer_take(b, 1100, &t));
    assert_int_equal(t.n_records, 0);
    assert_int_equal(t.n_drops, 1);
    assert_int_equal(t.drops[0]->sampled_out, 2);
    assert_int_equal(t.drops[0]->dropped, 0);
    pc_tail_taken_clear(&t);
    pc_tail_buffer_free(b);
}

static void test_bad_options(void **state)
{
    (void)state;
    pc_tail_buffer_options none = {.controllers = 0};
    assert_null(pc_tail_buffer_new(&none));
    pc_tail_buffer_options many = {.controllers = PC_TAIL_CONTROLLERS_MAX + 1};
    assert_null(pc_tail_buffer_new(&many));
    assert_false(pc_tail_buffer_wanted(NULL, "a", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_only_asked_tenants),
        cmocka_unit_test(test_full_buffer_drops_and_counts),
        cmocka_unit_test(test_bytes_bound_and_long_lines),
        cmocka_unit_test(test_request_lines_rated),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
