/* test_harness_tmpdir.c - the directories pc_test_tmpdir makes go with
 * the process that made them: removed, contents and all, when it exits
 * normally; kept with POPCAST_TEST_KEEP; never removed by a forked child
 * that exits (it inherits the list). A suite that kept them all ran CI's
 * disk full. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Forks a child that makes a directory with a file and a subdirectory in
 * it (keep: with POPCAST_TEST_KEEP set) and exits normally; the
 * directory's path in out. */
static void child_makes_dir(char *out, size_t cap, bool keep)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        if (keep)
            setenv("POPCAST_TEST_KEEP", "1", 1);
        char dir[256], path[320];
        pc_test_tmpdir(dir, sizeof(dir), "tmpdir-child");
        snprintf(path, sizeof(path), "%s/file", dir);
        pc_test_write_file(path, "x", 1);
        snprintf(path, sizeof(path), "%s/sub", dir);
        mkdir(path, 0700);
        snprintf(path, sizeof(path), "%s/sub/inner", dir);
        pc_test_write_file(path, "y", 1);
        ssize_t n = write(fds[1], dir, strlen(dir) + 1);
        exit(n == (ssize_t)strlen(dir) + 1 ? 0 : 1);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t n;
    while (got < cap && (n = read(fds[0], out + got, cap - got)) > 0)
        got += (size_t)n;
    close(fds[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(got > 0 && out[got - 1] == '\0');
}

static void test_removed_when_its_maker_exits(void **state)
{
    (void)state;
    char dir[256];
    child_makes_dir(dir, sizeof(dir), false);
    assert_false(exists(dir));
}

static void test_kept_with_keep_set(void **state)
{
    (void)state;
    char dir[256], file[320];
    child_makes_dir(dir, sizeof(dir), true);
    snprintf(file, sizeof(file), "%s/sub/inner", dir);
    assert_true(exists(file));
    pc_test_rm_rf(dir);
    assert_false(exists(dir));
}

static void test_a_childs_exit_leaves_its_parents(void **state)
{
    (void)state;
    char mine[256], childs[256];
    pc_test_tmpdir(mine, sizeof(mine), "tmpdir-parent");
    child_makes_dir(childs, sizeof(childs), false);
    assert_false(exists(childs));
    assert_true(exists(mine));
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_removed_when_its_maker_exits),
        cmocka_unit_test(test_kept_with_keep_set),
        cmocka_unit_test(test_a_childs_exit_leaves_its_parents),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
