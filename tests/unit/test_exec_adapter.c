/* test_exec_adapter.c - the exec adapter: versions written out completely,
 * the current symlink flipped atomically, the reload hook called after the
 * flip with the right environment, flip back when the hook fails or times
 * out, signal hooks, garbage collection, deactivation, and bundles whose
 * files cannot be written. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "adapter.h"
#include "crypto.h"
#include "exec_adapter.h"
#include "harness.h"
#include "popcast.pb-c.h"

static char dir[256], root[300], hook_log[300], control[300];

/* An archive of (path, content) pairs, NULL-terminated. */
static uint8_t *archive(const char *const *files, size_t *len)
{
    size_t n = 0;
    while (files[2 * n] != NULL)
        n++;
    Popcast__BundleFile *f = calloc(n, sizeof(*f));
    Popcast__BundleFile **fp = calloc(n, sizeof(*fp));
    for (size_t i = 0; i < n; i++) {
        popcast__bundle_file__init(&f[i]);
        f[i].path = (char *)files[2 * i];
        f[i].content.data = (uint8_t *)files[2 * i + 1];
        f[i].content.len = strlen(files[2 * i + 1]);
        fp[i] = &f[i];
    }
    Popcast__BundleArchive a = POPCAST__BUNDLE_ARCHIVE__INIT;
    a.entrypoint = (char *)files[0];
    a.files = fp;
    a.n_files = n;
    *len = popcast__bundle_archive__get_packed_size(&a);
    uint8_t *out = malloc(*len);
    popcast__bundle_archive__pack(&a, out);
    free(f);
    free(fp);
    return out;
}

static int prepare_activate(pc_adapter *a, const char *tenant, uint64_t version,
                            const char *const *files, pc_err *err)
{
    size_t len;
    uint8_t *bytes = archive(files, &len);
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, bytes, len);
    pc_version_spec spec = {.tenant = tenant,
                            .version = version,
                            .seq = version,
                            .runtime = "exec",
                            .entrypoint = files[0],
                            .bundle = bytes,
                            .bundle_len = len,
                            .hash = hash};
    pc_prepared *p = NULL;
    int rc = a->prepare(a, &spec, &p, err);
    free(bytes);
    if (rc != PC_OK)
        return rc;
    return a->activate(a, p, err);
}

static void expect_current(const char *tenant, const char *target)
{
    char link[400], got[64] = "";
    snprintf(link, sizeof(link), "%s/%s/current", root, tenant);
    ssize_t n = readlink(link, got, sizeof(got) - 1);
    if (target == NULL) {
        assert_true(n < 0);
        return;
    }
    assert_true(n > 0);
    got[n] = '\0';
    assert_string_equal(got, target);
}

static bool exists(const char *rel)
{
    char path[500];
    snprintf(path, sizeof(path), "%s/%s", root, rel);
    struct stat st;
    return lstat(path, &st) == 0;
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return strdup("");
    char *buf = calloc(1, 65536);
    size_t n = fread(buf, 1, 65535, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void set_exit(int code)
{
    char text[16];
    snprintf(text, sizeof(text), "%d\n", code);
    pc_test_write_file(control, text, strlen(text));
}

static pc_adapter *new_adapter(const char *command, const char *pidfile, uint64_t timeout_ms)
{
    pc_exec_options opt = {.root = root,
                           .reload_command = command,
                           .signal_pidfile = pidfile,
                           .signal = SIGHUP,
                           .hook_timeout_ms = timeout_ms};
    pc_err err;
    pc_adapter *a = pc_exec_adapter_new(&opt, NULL, &err);
    if (a == NULL)
        fail_msg("%s", err.msg);
    return a;
}

static int setup(void **state)
{
    pc_test_init();
    pc_test_tmpdir(dir, sizeof(dir), "exec");
    snprintf(root, sizeof(root), "%s/root", dir);
    snprintf(hook_log, sizeof(hook_log), "%s/hook.log", dir);
    snprintf(control, sizeof(control), "%s/exit", dir);
    return 0;
}

static int teardown(void **state)
{
    pc_test_rm_rf(dir);
    return 0;
}

static void test_flip_hook_and_flip_back(void **state)
{
    /* The hook records what it saw (including where current points while
     * it runs), prints something, and exits with the code in `control`. */
    char command[1200];
    snprintf(command, sizeof(command),
             "echo \"$POPCAST_ACTION $POPCAST_TENANT $POPCAST_VERSION $(readlink "
             "\"$POPCAST_CURRENT\") $(cat \"$POPCAST_DIR/app.txt\" 2>/dev/null)\" >> %s; "
             "echo 'reload failed: bad config' >&2; exit $(cat %s)",
             hook_log, control);
    pc_adapter *a = new_adapter(command, NULL, 10000);
    pc_err err;
    set_exit(0);
    const char *v1[] = {"app.txt", "one", "lib/util.txt", "util", NULL};
    assert_int_equal(prepare_activate(a, "web", 1, v1, &err), PC_OK);
    expect_current("web", "versions/1");
    char path[500];
    snprintf(path, sizeof(path), "%s/web/current/lib/util.txt", root);
    char *text = read_all(path);
    assert_string_equal(text, "util");
    free(text);
    assert_int_equal(a->live_version(a, "web"), 1);

    const char *v2[] = {"app.txt", "two", NULL};
    assert_int_equal(prepare_activate(a, "web", 2, v2, &err), PC_OK);
    expect_current("web", "versions/2");
    assert_true(exists("web/versions/1")); /* the previous one is kept */

    /* A failing hook: the error carries its exit status and output, the
     * link is back on v2, v3's directory is gone. */
    set_exit(3);
    const char *v3[] = {"app.txt", "three", NULL};
    assert_int_equal(prepare_activate(a, "web", 3, v3, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "status 3"));
    assert_non_null(strstr(err.msg, "reload failed: bad config"));
    expect_current("web", "versions/2");
    assert_false(exists("web/versions/3"));
    assert_int_equal(a->live_version(a, "web"), 2);

    set_exit(0);
    const char *v4[] = {"app.txt", "four", NULL};
    assert_int_equal(prepare_activate(a, "web", 4, v4, &err), PC_OK);
    expect_current("web", "versions/4");
    assert_true(exists("web/versions/2"));
    assert_false(exists("web/versions/1")); /* collected */

    /* The hook ran after each flip, seeing the new link and files. */
    char *log = read_all(hook_log);
    assert_non_null(strstr(log, "activate web 1 versions/1 one\n"));
    assert_non_null(strstr(log, "activate web 2 versions/2 two\n"));
    assert_non_null(strstr(log, "activate web 3 versions/3 three\n"));
    assert_non_null(strstr(log, "activate web 4 versions/4 four\n"));
    free(log);

    /* Deactivation removes the link and the tenant, and tells the hook. */
    assert_int_equal(a->deactivate(a, "web", &err), PC_OK);
    expect_current("web", NULL);
    assert_false(exists("web"));
    assert_int_equal(a->live_version(a, "web"), 0);
    log = read_all(hook_log);
    assert_non_null(strstr(log, "deactivate web 0"));
    free(log);
    a->destroy(a);
}

static void test_first_version_failing_leaves_nothing(void **state)
{
    pc_adapter *a = new_adapter("exit 1", NULL, 10000);
    pc_err err;
    const char *v1[] = {"app.txt", "one", NULL};
    assert_int_equal(prepare_activate(a, "fresh", 1, v1, &err), PC_E_RUNTIME);
    expect_current("fresh", NULL);
    assert_false(exists("fresh/versions/1"));
    assert_int_equal(a->live_version(a, "fresh"), 0);
    a->destroy(a);
}

static void test_hook_timeout(void **state)
{
    pc_adapter *a = new_adapter("sleep 30", NULL, 200);
    pc_err err;
    const char *v1[] = {"app.txt", "one", NULL};
    /* Killed at the timeout (the message says so), not waited for. */
    assert_int_equal(prepare_activate(a, "slow", 1, v1, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "timed out after 200 ms"));
    expect_current("slow", NULL);
    a->destroy(a);
}

static atomic_int got_hup;
static void on_hup(int sig)
{
    (void)sig;
    atomic_store(&got_hup, 1);
}

static void test_signal_hook(void **state)
{
    char pidfile[400];
    snprintf(pidfile, sizeof(pidfile), "%s/app.pid", dir);
    pc_adapter *a = new_adapter(NULL, pidfile, 10000);
    pc_err err;
    /* No pid file: the hook fails and nothing changes. */
    const char *v1[] = {"app.txt", "one", NULL};
    assert_int_equal(prepare_activate(a, "sig", 1, v1, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "cannot read"));
    expect_current("sig", NULL);
    /* Our own pid: we receive the SIGHUP. */
    struct sigaction sa = {.sa_handler = on_hup}, old;
    sigaction(SIGHUP, &sa, &old);
    char pid[32];
    snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
    pc_test_write_file(pidfile, pid, strlen(pid));
    assert_int_equal(prepare_activate(a, "sig", 1, v1, &err), PC_OK);
    assert_true(atomic_load(&got_hup));
    expect_current("sig", "versions/1");
    /* Garbage in the pid file is an error, not a signal to pid 0. */
    pc_test_write_file(pidfile, "nonsense", 8);
    const char *v2[] = {"app.txt", "two", NULL};
    assert_int_equal(prepare_activate(a, "sig", 2, v2, &err), PC_E_RUNTIME);
    expect_current("sig", "versions/1");
    sigaction(SIGHUP, &old, NULL);
    a->destroy(a);
}

/* A reader that keeps resolving current: it must never find it missing
 * or pointing at an incomplete directory. The adapter keeps the current and
 * the previous version on disk, so a read is only guaranteed to succeed if it
 * started after the flip before last; the writer paces its flips on the
 * reader's progress (not on time) so every read falls inside that guarantee
 * however the scheduler stalls the reader. */
static atomic_int stop_reader;
static atomic_long reads, misses;

static void *reader(void *arg)
{
    char path[500];
    snprintf(path, sizeof(path), "%s/flip/current/app.txt", root);
    while (!atomic_load(&stop_reader)) {
        char *text = read_all(path);
        if (strncmp(text, "version ", 8) != 0)
            atomic_fetch_add(&misses, 1);
        atomic_fetch_add(&reads, 1);
        free(text);
    }
    return NULL;
}

static void test_flip_is_atomic(void **state)
{
    pc_adapter *a = new_adapter(NULL, NULL, 10000);
    pc_err err;
    char content[32];
    snprintf(content, sizeof(content), "version 1");
    const char *v1[] = {"app.txt", content, NULL};
    assert_int_equal(prepare_activate(a, "flip", 1, v1, &err), PC_OK);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, reader, NULL), 0);
    for (uint64_t v = 2; v <= 200; v++) {
        snprintf(content, sizeof(content), "version %llu", (unsigned long long)v);
        assert_int_equal(prepare_activate(a, "flip", v, v1, &err), PC_OK);
        /* Two completed reads since this flip: the second one started after
         * the flip returned, so no read in flight at the next flip can have
         * resolved a version older than this one. */
        long seen = atomic_load(&reads);
        while (atomic_load(&reads) < seen + 2)
            sched_yield();
    }
    atomic_store(&stop_reader, 1);
    pthread_join(t, NULL);
    assert_true(atomic_load(&reads) > 0);
    assert_int_equal(atomic_load(&misses), 0);
    expect_current("flip", "versions/200");
    a->destroy(a);
}

static void test_bad_bundles(void **state)
{
    pc_adapter *a = new_adapter(NULL, NULL, 10000);
    pc_err err;
    /* A file and a directory with the same name cannot both be written. */
    const char *clash[] = {"a", "file", "a/b", "nested", NULL};
    assert_int_not_equal(prepare_activate(a, "bad", 1, clash, &err), PC_OK);
    assert_false(exists("bad/versions/1"));
    assert_false(exists("bad/versions/.tmp-1"));
    /* Not an archive at all. */
    pc_version_spec spec = {.tenant = "bad",
                            .version = 2,
                            .runtime = "exec",
                            .entrypoint = "x",
                            .bundle = (const uint8_t *)"garbage",
                            .bundle_len = 7};
    pc_prepared *p = NULL;
    assert_int_equal(a->prepare(a, &spec, &p, &err), PC_E_RUNTIME);
    assert_null(p);
    assert_int_not_equal(a->check(a, &spec, &err), PC_OK);
    /* A tenant name that would leave the root. */
    spec.tenant = "../etc";
    assert_int_equal(a->prepare(a, &spec, &p, &err), PC_E_INVALID);
    /* Discarding a prepared version removes what it wrote. */
    const char *ok[] = {"app.txt", "fine", NULL};
    size_t len;
    uint8_t *bytes = archive(ok, &len);
    spec.tenant = "bad";
    spec.version = 3;
    spec.bundle = bytes;
    spec.bundle_len = len;
    assert_int_equal(a->prepare(a, &spec, &p, &err), PC_OK);
    assert_true(exists("bad/versions/3"));
    a->discard(a, p);
    assert_false(exists("bad/versions/3"));
    free(bytes);
    a->destroy(a);
    /* A relative root is refused. */
    pc_exec_options opt = {.root = "relative/root"};
    assert_null(pc_exec_adapter_new(&opt, NULL, &err));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_flip_hook_and_flip_back),
        cmocka_unit_test(test_first_version_failing_leaves_nothing),
        cmocka_unit_test(test_hook_timeout),
        cmocka_unit_test(test_signal_hook),
        cmocka_unit_test(test_flip_is_atomic),
        cmocka_unit_test(test_bad_bundles),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
