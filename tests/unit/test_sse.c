/* test_sse.c - the Server-Sent Events reader (common/sse.h): events whole
 * whatever the pieces, comments and unknown fields skipped, defaults,
 * stopping, and a stream that never ends its line refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "sse.h"

typedef struct seen {
    char text[1024];
    int n, stop_after;
} seen;

static bool note(void *arg, const pc_sse_event *e)
{
    seen *s = arg;
    size_t len = strlen(s->text);
    snprintf(s->text + len, sizeof(s->text) - len, "[%s|%s|%s]", e->id, e->type, e->data);
    return ++s->n != s->stop_after;
}

static const char stream[] = ": popcast watch\n\n"
                             "id: 1\nevent: entry\ndata: {\"seq\":1}\n\n"
                             ": keepalive\n\n"
                             "id: 2\nretry: 10\nevent:rollout\ndata:{\"x\":2}\r\n\n"
                             "data: plain\n\n";
static const char want[] = "[1|entry|{\"seq\":1}][2|rollout|{\"x\":2}][|message|plain]";

static void test_whole_and_in_pieces(void **state)
{
    (void)state;
    for (size_t piece = 1; piece <= sizeof(stream); piece++) {
        pc_sse p = {0};
        seen s = {0};
        for (size_t at = 0; at < sizeof(stream) - 1; at += piece) {
            size_t n = sizeof(stream) - 1 - at < piece ? sizeof(stream) - 1 - at : piece;
            assert_true(pc_sse_feed(&p, stream + at, n, note, &s));
        }
        if (strcmp(s.text, want) != 0)
            fail_msg("in pieces of %zu: %s", piece, s.text);
        pc_sse_free(&p);
    }
}

static void test_stop_and_half_event(void **state)
{
    (void)state;
    pc_sse p = {0};
    seen s = {.stop_after = 1};
    assert_false(pc_sse_feed(&p, stream, sizeof(stream) - 1, note, &s));
    assert_int_equal(s.n, 1);
    assert_false(pc_sse_feed(&p, "data: x\n\n", 9, note, &s)); /* stopped for good */
    pc_sse_free(&p);
    seen t = {0};
    assert_true(pc_sse_feed(&p, "id: 3\nevent: entry\ndata: {}\n", 28, note, &t));
    assert_int_equal(t.n, 0); /* no blank line yet: nothing */
    assert_true(pc_sse_feed(&p, "\n", 1, note, &t));
    assert_string_equal(t.text, "[3|entry|{}]");
    pc_sse_free(&p);
}

static void test_line_that_never_ends(void **state)
{
    (void)state;
    pc_sse p = {0};
    seen s = {0};
    char *junk = malloc(1 << 20);
    assert_non_null(junk);
    memset(junk, 'x', 1 << 20);
    bool ok = true;
    for (int i = 0; ok && i < 8; i++)
        ok = pc_sse_feed(&p, junk, 1 << 20, note, &s);
    assert_false(ok);
    assert_int_equal(s.n, 0);
    free(junk);
    pc_sse_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole_and_in_pieces),
        cmocka_unit_test(test_stop_and_half_event),
        cmocka_unit_test(test_line_that_never_ends),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
