/* test_harness_tmpdir.c - the directories pc_test_tmpdir makes go with
 * the process that made them: removed, contents and all, when it exits
 * normally; kept with POPCAST_TEST_KEEP. A suite that kept them all ran
 * CI's disk full. */
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

/* Runs this program again as a child (a fresh process: under the
 * sanitizers a forked copy of a threaded process can hang at exit) that
 * makes a directory with a file and a subdirectory in it, prints its path
 * and exits normally; keep: with POPCAST_TEST_KEEP set, else unset. The
 * directory's path in out. */
static void child_makes_dir(char *out, size_t cap, bool keep)
{
    char self[512], cmd[700];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(cmd, sizeof(cmd), "%s '%s' --make-dir",
             keep ? "env POPCAST_TEST_KEEP=1" : "env -u POPCAST_TEST_KEEP", self);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(out, (int)cap, f));
    out[strcspn(out, "\n")] = '\0';
    int status = pclose(f);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_true(out[0] == '/');
}

/* The child's part (see child_makes_dir). */
static int make_dir_and_exit(void)
{
    char dir[256], path[320];
    pc_test_tmpdir(dir, sizeof(dir), "tmpdir-child");
    snprintf(path, sizeof(path), "%s/file", dir);
    pc_test_write_file(path, "x", 1);
    snprintf(path, sizeof(path), "%s/sub", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/sub/inner", dir);
    pc_test_write_file(path, "y", 1);
    printf("%s\n", dir);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* The child's part of test_forked_child_leaves_its_parents_dirs: it
 * makes a directory, forks a grandchild that makes its own and exits
 * normally, then prints "<own> <grandchild's> <own kept> <grandchild's
 * gone>". Run in the fresh child, which has no threads: a fork of the
 * threaded test process could hang at exit under the sanitizers. */
static int fork_and_check(void)
{
    char mine[256], theirs[256] = "";
    pc_test_tmpdir(mine, sizeof(mine), "tmpdir-parent");
    int link[2];
    if (pipe(link) != 0)
        return 1;
    pid_t pid = fork();
    if (pid < 0)
        return 1;
    if (pid == 0) {
        close(link[0]);
        char dir[256];
        pc_test_tmpdir(dir, sizeof(dir), "tmpdir-grandchild");
        ssize_t w = write(link[1], dir, strlen(dir) + 1);
        close(link[1]);
        exit(w > 0 ? 0 : 1); /* normally: the at-exit cleanup runs */
    }
    close(link[1]);
    ssize_t r = read(link[0], theirs, sizeof(theirs) - 1);
    close(link[0]);
    int status = 0;
    if (r <= 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return 1;
    theirs[r] = '\0';
    printf("%s %s %d %d\n", mine, theirs, exists(mine), !exists(theirs));
    return fflush(stdout) == 0 ? 0 : 1;
}

/* A forked child that made a directory and exited removed its own, and
 * left the one its parent made (the maker check); the parent's goes when
 * the parent exits. */
static void test_forked_child_leaves_its_parents_dirs(void **state)
{
    (void)state;
    char self[512], cmd[700], out[700], mine[256], theirs[256];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    assert_true(n > 0);
    self[n] = '\0';
    snprintf(cmd, sizeof(cmd), "env -u POPCAST_TEST_KEEP '%s' --fork", self);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_non_null(fgets(out, (int)sizeof(out), f));
    int status = pclose(f);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    int mine_kept = 0, theirs_gone = 0;
    assert_int_equal(sscanf(out, "%255s %255s %d %d", mine, theirs, &mine_kept, &theirs_gone), 4);
    assert_int_equal(mine_kept, 1);
    assert_int_equal(theirs_gone, 1);
    assert_false(exists(mine));
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

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--make-dir") == 0)
        return make_dir_and_exit();
    if (argc == 2 && strcmp(argv[1], "--fork") == 0)
        return fork_and_check();
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_removed_when_its_maker_exits),
        cmocka_unit_test(test_kept_with_keep_set),
        cmocka_unit_test(test_forked_child_leaves_its_parents_dirs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
