/* test_backup.c - popcast-controller backup and restore
 * (docs/operations.md "Backups and recovery"): a backup taken while the
 * controller writes holds the store as it was (0600, never overwriting);
 * restored into an empty data directory, a controller started on it serves
 * that state and takes new changes; bad input changes nothing. */
#include <dirent.h>
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

static pc_test_env env;

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_env_init(&env);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    pc_test_env_cleanup(&env);
    return 0;
}

/* Runs popcast-controller with the arguments (a shell-quoted string);
 * returns its exit status, its output in out. */
static int tool(const char *args, char *out, size_t cap)
{
    const char *bin = getenv("POPCAST_CONTROLLER_BIN");
    assert_non_null(bin);
    char out_path[400], cmd[2048];
    snprintf(out_path, sizeof(out_path), "%s/tool.out", env.root);
    snprintf(cmd, sizeof(cmd), "'%s' %s > '%s' 2>&1", bin, args, out_path);
    int status = system(cmd);
    size_t len = 0;
    char *text = pc_test_read_file(out_path, &len);
    snprintf(out, cap, "%s", text);
    free(text);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static size_t versions_of(pc_test_controller *c, const char *tenant)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/tenants/%s/versions", tenant);
    json_t *v = pc_test_controller_json(&env, c, path);
    if (v == NULL)
        return 0;
    size_t n = json_array_size(json_object_get(v, "versions"));
    json_decref(v);
    return n;
}

/* The names in dir, each NUL-terminated, one after the other. */
static char *dir_names(const char *dir, size_t *len)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    char *names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name) + 1;
        names = realloc(names, n + l);
        assert_non_null(names);
        memcpy(names + n, e->d_name, l);
        n += l;
    }
    closedir(d);
    *len = n;
    return names;
}

/* Fails unless every entry of dir other than except and except2 was in
 * before (as dir_names gave them). */
static void expect_only_new(const char *dir, const char *before, size_t before_len,
                            const char *except, const char *except2)
{
    size_t len = 0;
    char *now = dir_names(dir, &len);
    for (size_t at = 0; at < len; at += strlen(now + at) + 1) {
        const char *name = now + at;
        bool old = false;
        for (size_t b = 0; !old && b < before_len; b += strlen(before + b) + 1)
            old = strcmp(before + b, name) == 0;
        if (!old && strcmp(name, except) != 0 && strcmp(name, except2) != 0)
            fail_msg("the backup left %s/%s behind", dir, name);
    }
    free(now);
}

static void test_backup_and_restore(void **state)
{
    (void)state;
    pc_test_controller c = {0};
    pc_test_controller_start(&env, &c, NULL);
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "v");
    pc_test_deploy_lua(&env, &c, "app", src);
    pc_test_deploy_lua(&env, &c, "app", src);
    pc_test_deploy_lua(&env, &c, "other", src);

    char backup[400], args[1200], out[4096];
    snprintf(backup, sizeof(backup), "%s/store.backup", env.root);
    snprintf(args, sizeof(args), "backup --data-dir '%s' --out '%s'", c.dir, backup);
    size_t before_len = 0;
    char *before = dir_names(env.root, &before_len);
    int rc = tool(args, out, sizeof(out));
    if (rc != 0 || strstr(out, "(applied seq 3)") == NULL)
        fail_msg("backup of a running controller: exit %d: %s", rc, out);
    struct stat st;
    assert_int_equal(stat(backup, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* The copy was checked read only: nothing beside it (no lock file, no
     * scratch directory, no partial file), and the check changed none of
     * its bytes: the restore below reads the same file. */
    /* tool.out: where tool() keeps the tool's output */
    expect_only_new(env.root, before, before_len, "store.backup", "tool.out");
    free(before);
    size_t backup_len = 0;
    char *backup_bytes = pc_test_read_file(backup, &backup_len);
    /* Never over an existing file; usage errors are 2. */
    rc = tool(args, out, sizeof(out));
    if (rc != 1 || strstr(out, "never overwrites") == NULL)
        fail_msg("backup over an existing file: exit %d: %s", rc, out);
    assert_int_equal(tool("backup --data-dir /nonexistent --out /tmp/x", out, sizeof(out)), 1);
    assert_int_equal(tool("backup --data-dir /tmp", out, sizeof(out)), 2);
    assert_int_equal(tool("backup --out /tmp/y --bogus 1", out, sizeof(out)), 2);
    /* After the backup: not in it. */
    pc_test_deploy_lua(&env, &c, "app", src);
    assert_int_equal(versions_of(&c, "app"), 3);
    pc_test_controller_stop(&c);

    /* Bad backups leave the directory without a store. */
    char restored[280], garbage[400], empty[400];
    snprintf(restored, sizeof(restored), "%.256s/restored", env.root);
    snprintf(garbage, sizeof(garbage), "%s/garbage", env.root);
    snprintf(empty, sizeof(empty), "%s/empty", env.root);
    pc_test_write_file(garbage, "not an LMDB file at all, just text", 34);
    pc_test_write_file(empty, "", 0);
    snprintf(args, sizeof(args), "restore --data-dir '%s' --from '%s'", restored, garbage);
    rc = tool(args, out, sizeof(out));
    if (rc != 1 || strstr(out, "is not a popcast store backup") == NULL)
        fail_msg("restore of garbage: exit %d: %s", rc, out);
    snprintf(args, sizeof(args), "restore --data-dir '%s' --from '%s'", restored, empty);
    assert_int_equal(tool(args, out, sizeof(out)), 1);
    /* A copy cut short (a full disk, an interrupted copy): refused with a
     * reason, not a crash. */
    char truncated[400];
    snprintf(truncated, sizeof(truncated), "%s/truncated", env.root);
    pc_test_write_file(truncated, backup_bytes, backup_len / 2);
    snprintf(args, sizeof(args), "restore --data-dir '%s' --from '%s'", restored, truncated);
    rc = tool(args, out, sizeof(out));
    if (rc != 1 || strstr(out, "is truncated") == NULL)
        fail_msg("restore of a truncated backup: exit %d: %s", rc, out);
    char data[500];
    snprintf(data, sizeof(data), "%s/data.mdb", restored);
    assert_int_equal(access(data, F_OK), -1);
    assert_int_equal(tool("restore --data-dir /tmp/z", out, sizeof(out)), 2);

    /* Nothing so far changed the backup. */
    size_t after_len = 0;
    char *after = pc_test_read_file(backup, &after_len);
    assert_int_equal(after_len, backup_len);
    assert_memory_equal(after, backup_bytes, backup_len);
    free(after);

    /* The real one, then not twice into the same directory. */
    snprintf(args, sizeof(args), "restore --data-dir '%s' --from '%s'", restored, backup);
    rc = tool(args, out, sizeof(out));
    if (rc != 0 || strstr(out, "(applied seq 3)") == NULL)
        fail_msg("restore: exit %d: %s", rc, out);
    rc = tool(args, out, sizeof(out));
    if (rc != 1 || strstr(out, "already holds a store") == NULL)
        fail_msg("restore into a store: exit %d: %s", rc, out);
    after = pc_test_read_file(backup, &after_len);
    assert_int_equal(after_len, backup_len);
    assert_memory_equal(after, backup_bytes, backup_len); /* restoring does not change it */
    free(after);
    free(backup_bytes);

    /* A controller on the restored store serves the backup's state. */
    pc_test_controller r = {0};
    snprintf(r.dir, sizeof(r.dir), "%s", restored);
    pc_test_controller_start(&env, &r, NULL);
    assert_int_equal(versions_of(&r, "app"), 2);
    assert_int_equal(versions_of(&r, "other"), 1);
    assert_int_equal(pc_test_controller_head(&env, &r), 3);
    assert_int_equal(pc_test_deploy_lua(&env, &r, "app", src), 3);
    pc_test_controller_stop(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_backup_and_restore, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
