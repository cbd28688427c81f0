/* test_ready_file.c - the daemons' ready file: written whole and
 * atomically, mode 0644 whatever the umask, replacing an older one; bad
 * paths get a clear error and leave nothing behind. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon.h"
#include "harness.h"

static char dir[300];

static int setup(void **state)
{
    (void)state;
    pc_test_tmpdir(dir, sizeof(dir), "ready");
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_rm_rf(dir);
    return 0;
}

/* How many entries the directory holds (no temporary files left over). */
static int entries(const char *path)
{
    DIR *d = opendir(path);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static void test_written_whole_with_mode_0644(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof(path), "%s/ready.json", dir);
    json_t *doc = json_pack("{s:I,s:s}", "pid", (json_int_t)42, "api", "http://127.0.0.1:41234");
    mode_t old = umask(077);
    pc_err err;
    int rc = pc_daemon_write_ready(path, doc, &err);
    umask(old);
    assert_int_equal(rc, PC_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0644);
    json_error_t jerr;
    json_t *back = json_load_file(path, 0, &jerr);
    assert_non_null(back);
    assert_true(json_equal(back, doc));
    json_decref(back);
    assert_int_equal(entries(dir), 1);

    /* A second write replaces the first. */
    json_object_set_new(doc, "api", json_string("http://127.0.0.1:1"));
    assert_int_equal(pc_daemon_write_ready(path, doc, &err), PC_OK);
    back = json_load_file(path, 0, &jerr);
    assert_non_null(back);
    assert_string_equal(json_string_value(json_object_get(back, "api")), "http://127.0.0.1:1");
    json_decref(back);
    assert_int_equal(entries(dir), 1);
    json_decref(doc);

    /* Removing it, and removing it again (already gone), both succeed. */
    assert_int_equal(pc_daemon_remove_ready(path, &err), PC_OK);
    assert_int_equal(access(path, F_OK), -1);
    assert_int_equal(pc_daemon_remove_ready(path, &err), PC_OK);
}

static void test_bad_paths(void **state)
{
    (void)state;
    char path[400];
    snprintf(path, sizeof(path), "%s/no-such-dir/ready.json", dir);
    json_t *doc = json_pack("{s:I}", "pid", (json_int_t)1);
    pc_err err;
    assert_int_equal(pc_daemon_write_ready(path, doc, &err), PC_E_IO);
    assert_non_null(strstr(err.msg, "ready_file"));
    assert_non_null(strstr(err.msg, "no-such-dir"));

    /* A directory where the file should be: the rename fails, the
     * directory stays, and no temporary file is left beside it. */
    snprintf(path, sizeof(path), "%s/taken", dir);
    assert_int_equal(mkdir(path, 0700), 0);
    char inside[500];
    snprintf(inside, sizeof(inside), "%s/keep", path);
    pc_test_write_file(inside, "x", 1);
    assert_int_equal(pc_daemon_write_ready(path, doc, &err), PC_E_IO);
    assert_non_null(strstr(err.msg, "taken"));
    assert_int_equal(access(inside, F_OK), 0);
    assert_int_equal(entries(dir), 1);
    assert_int_equal(pc_daemon_remove_ready(path, &err), PC_E_IO);
    assert_int_equal(access(inside, F_OK), 0);
    json_decref(doc);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_written_whole_with_mode_0644, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_paths, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
