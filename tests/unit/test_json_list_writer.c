/* test_json_list_writer.c - common/json_list_writer.h: the document is
 * exactly the one jansson would write from the whole tree (members,
 * order, escapes), for empty and long lists and an empty head; a head
 * that is not an object or already has the key is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json_list_writer.h"

/* An element with what escaping and nesting can get wrong. */
static json_t *item(int i)
{
    char name[64];
    snprintf(name, sizeof(name), "t%05d \"q\" \\ caf\xc3\xa9 \xe2\x98\x83", i);
    return json_pack("{s:s,s:I,s:b,s:[i,s,n],s:{s:f}}", "tenant", name, "version",
                     (json_int_t)i * 1000003, "deleted", i % 2, "list", i, "\n\t", "nested", "x",
                     i / 8.0);
}

/* Writes n items after head through the writer and checks the text
 * against jansson's own dump of the whole tree. */
static void expect_same_as_tree(json_t *head, int n)
{
    json_t *tree = json_deep_copy(head), *list = json_array();
    pc_json_list_writer *w = pc_json_list_writer_new();
    assert_non_null(w);
    for (int i = 0; i < n; i++) {
        json_t *it = i % 5 == 4 ? json_integer(-i) : item(i); /* any value */
        assert_int_equal(pc_json_list_writer_add(w, it), 0);
        json_array_append_new(list, it);
    }
    json_object_set_new(tree, "tenants", list);
    size_t len = 0;
    char *text = pc_json_list_writer_finish(w, head, "tenants", &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    assert_true(len >= 2 && text[len - 1] == '\n');
    for (size_t i = 0; i < len; i++)
        assert_true((unsigned char)text[i] < 0x80); /* ASCII only, as the API writes */
    json_error_t err;
    json_t *back = json_loadb(text, len, 0, &err);
    if (back == NULL)
        fail_msg("not JSON: %s at %d", err.text, err.position);
    assert_true(json_equal(back, tree));
    /* Member for member, byte for byte: the head's members first, in
     * their order, then the list. */
    char *want = json_dumps(tree, JSON_COMPACT | JSON_ENSURE_ASCII);
    assert_int_equal(len, strlen(want) + 1);
    assert_memory_equal(text, want, len - 1);
    free(want);
    json_decref(back);
    json_decref(tree);
    free(text);
}

static void test_same_document_as_the_tree(void **state)
{
    (void)state;
    json_t *head = json_pack("{s:I,s:s,s:[],s:{s:b}}", "applied_seq", (json_int_t)42, "agent_id",
                             "edge-\xc3\xa9", "nacks", "pubsub", "ok", 1);
    expect_same_as_tree(head, 3);
    expect_same_as_tree(json_pack("{s:I}", "applied_seq", (json_int_t)0), 0); /* [] */
    expect_same_as_tree(json_object(), 2);                                    /* no comma */
    /* Long enough to grow the buffer many times. */
    expect_same_as_tree(json_pack("{s:s}", "agent_id", "edge"), 20000);
}

static void test_refusals(void **state)
{
    (void)state;
    size_t len = 99;
    /* The head already names the key: two members of one name. */
    pc_json_list_writer *w = pc_json_list_writer_new();
    assert_non_null(w);
    json_t *one = item(1);
    assert_int_equal(pc_json_list_writer_add(w, one), 0);
    assert_null(pc_json_list_writer_finish(w, json_pack("{s:[]}", "tenants"), "tenants", &len));
    assert_int_equal(len, 0);
    /* A head that is not an object. */
    w = pc_json_list_writer_new();
    assert_null(pc_json_list_writer_finish(w, json_array(), "tenants", &len));
    assert_null(pc_json_list_writer_finish(pc_json_list_writer_new(), NULL, "tenants", &len));
    /* No writer (pc_json_list_writer_new failed): the head is still
     * released (LSan in the sanitize build). */
    assert_null(pc_json_list_writer_finish(NULL, json_object(), "tenants", &len));
    /* Freed without finishing. */
    w = pc_json_list_writer_new();
    assert_int_equal(pc_json_list_writer_add(w, one), 0);
    pc_json_list_writer_free(w);
    pc_json_list_writer_free(NULL);
    json_decref(one);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_document_as_the_tree),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
