/* test_config.c - configuration: defaults, JSON file, flags, and clear
 * errors for anything malformed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "harness.h"

typedef struct cfg {
    char *name;
    uint64_t count;
    uint64_t size;
    bool flag;
    pc_strlist list;
} cfg;

static const pc_cfg_option opts[] = {
    {"name", PC_CFG_STRING, offsetof(cfg, name), "dflt", 0, 0, "a name"},
    {"count", PC_CFG_U64, offsetof(cfg, count), "5", 1, 100, "a count"},
    {"size", PC_CFG_SIZE, offsetof(cfg, size), "1KiB", 0, 0, "a size"},
    {"flag", PC_CFG_BOOL, offsetof(cfg, flag), "false", 0, 0, "a flag"},
    {"list", PC_CFG_LIST, offsetof(cfg, list), "dflt-item", 0, 0, "a list"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static int load_args(cfg *c, int argc, char **argv, pc_err *err)
{
    memset(c, 0, sizeof(*c));
    return pc_config_load(opts, c, argc, argv, err);
}

static void test_defaults_and_flags(void **state)
{
    cfg c;
    pc_err err;
    char *argv[] = {"prog",   "--name", "x", "--count=7", "--size", "64MiB",
                    "--flag", "--list", "a", "--list",    "b",      NULL};
    assert_int_equal(load_args(&c, 11, argv, &err), PC_OK);
    assert_string_equal(c.name, "x");
    assert_int_equal(c.count, 7);
    assert_int_equal(c.size, 64u << 20);
    assert_true(c.flag);
    /* The first --list replaces the default instead of adding to it. */
    assert_int_equal(c.list.count, 2);
    assert_string_equal(c.list.items[0], "a");
    assert_string_equal(c.list.items[1], "b");
    pc_config_free(opts, &c);

    char *none[] = {"prog", NULL};
    assert_int_equal(load_args(&c, 1, none, &err), PC_OK);
    assert_string_equal(c.name, "dflt");
    assert_int_equal(c.count, 5);
    assert_int_equal(c.size, 1024);
    assert_false(c.flag);
    assert_int_equal(c.list.count, 1);
    assert_string_equal(c.list.items[0], "dflt-item");
    pc_config_free(opts, &c);
}

static void expect_flag_error(const char *const *args, const char *needle)
{
    char *argv[8] = {"prog"};
    int argc = 1;
    for (; args[argc - 1] != NULL; argc++)
        argv[argc] = (char *)args[argc - 1];
    cfg c;
    pc_err err;
    assert_int_equal(load_args(&c, argc, argv, &err), PC_E_INVALID);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("error '%s' does not mention '%s'", err.msg, needle);
    pc_config_free(opts, &c);
}

static void test_bad_flags(void **state)
{
    expect_flag_error((const char *[]){"--nope", "1", NULL}, "unknown option --nope");
    expect_flag_error((const char *[]){"--count", "abc", NULL}, "count");
    expect_flag_error((const char *[]){"--count", "0", NULL}, "outside");
    expect_flag_error((const char *[]){"--count", "101", NULL}, "outside");
    expect_flag_error((const char *[]){"--count", "-1", NULL}, "count");
    expect_flag_error((const char *[]){"--count", "99999999999999999999999", NULL}, "count");
    expect_flag_error((const char *[]){"--size", "12XB", NULL}, "size");
    expect_flag_error((const char *[]){"--flag=maybe", NULL}, "true or false");
    expect_flag_error((const char *[]){"--name", NULL}, "needs a value");
    expect_flag_error((const char *[]){"stray", NULL}, "unexpected argument");
    expect_flag_error((const char *[]){"--config", "/nonexistent.json", NULL}, "cannot open");
}

static void expect_json_error(const char *json, const char *needle)
{
    cfg c;
    memset(&c, 0, sizeof(c));
    pc_err err;
    assert_int_equal(pc_config_load_json(opts, &c, json, strlen(json), &err), PC_E_INVALID);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("error '%s' does not mention '%s'", err.msg, needle);
    pc_config_free(opts, &c);
}

static void test_json(void **state)
{
    cfg c;
    memset(&c, 0, sizeof(c));
    pc_err err;
    const char *good = "{\"name\":\"n\",\"count\":9,\"size\":\"2MiB\",\"flag\":true,"
                       "\"list\":[\"x\",\"y\",\"z\"]}";
    assert_int_equal(pc_config_load_json(opts, &c, good, strlen(good), &err), PC_OK);
    assert_string_equal(c.name, "n");
    assert_int_equal(c.count, 9);
    assert_int_equal(c.size, 2u << 20);
    assert_int_equal(c.list.count, 3);
    pc_config_free(opts, &c);

    expect_json_error("{", "line 1");
    expect_json_error("[]", "JSON object");
    expect_json_error("{\"nope\":1}", "unknown setting 'nope'");
    expect_json_error("{\"count\":\"9\"}", "expected a number");
    expect_json_error("{\"count\":-4}", "negative");
    expect_json_error("{\"count\":1000}", "outside");
    expect_json_error("{\"flag\":1}", "true or false");
    expect_json_error("{\"list\":[1]}", "list[0]");
    expect_json_error("{\"name\":\"a\",\"name\":\"b\"}", "duplicate");
}

static void test_file_then_flags(void **state)
{
    pc_test_init();
    char dir[256], path[300];
    pc_test_tmpdir(dir, sizeof(dir), "cfg");
    snprintf(path, sizeof(path), "%s/c.json", dir);
    const char *json = "{\"name\":\"from-file\",\"count\":3}";
    pc_test_write_file(path, json, strlen(json));
    cfg c;
    pc_err err;
    /* Flags win over the file wherever --config appears. */
    char *argv[] = {"prog", "--count", "4", "--config", path, NULL};
    assert_int_equal(load_args(&c, 5, argv, &err), PC_OK);
    assert_string_equal(c.name, "from-file");
    assert_int_equal(c.count, 4);
    pc_config_free(opts, &c);
    pc_test_rm_rf(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_and_flags),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_file_then_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
