/* test_sd_notify.c - sd_notify.h: datagrams reach a path socket and an
 * abstract one; no or a bad NOTIFY_SOCKET sends nothing; the watchdog
 * interval is read only for this process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "sd_notify.h"

/* A datagram socket bound at name (leading '@': abstract). */
static int listen_at(const char *name)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t len = strlen(name);
    assert_true(len < sizeof(sa.sun_path));
    memcpy(sa.sun_path, name, len);
    if (name[0] == '@')
        sa.sun_path[0] = '\0';
    assert_int_equal(
        bind(fd, (struct sockaddr *)&sa, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)),
        0);
    return fd;
}

static void expect_datagram(int fd, const char *want)
{
    char buf[256];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = '\0';
    assert_string_equal(buf, want);
}

static void test_notify(void **state)
{
    (void)state;
    char dir[400], path[512];
    pc_test_tmpdir(dir, sizeof(dir), "notify");
    snprintf(path, sizeof(path), "%s/notify.sock", dir);
    int fd = listen_at(path);
    setenv("NOTIFY_SOCKET", path, 1);
    assert_true(pc_sd_notify("READY=1\nSTATUS=serving"));
    expect_datagram(fd, "READY=1\nSTATUS=serving");
    close(fd);
    unlink(path);
    /* Nobody listens there any more. */
    assert_false(pc_sd_notify("READY=1"));

    char abstract[64];
    snprintf(abstract, sizeof(abstract), "@popcast-test-%d", (int)getpid());
    fd = listen_at(abstract);
    setenv("NOTIFY_SOCKET", abstract, 1);
    assert_true(pc_sd_notify("STOPPING=1"));
    expect_datagram(fd, "STOPPING=1");
    close(fd);

    /* Not set, empty, relative, too long: nothing is sent. */
    unsetenv("NOTIFY_SOCKET");
    assert_false(pc_sd_notify("READY=1"));
    setenv("NOTIFY_SOCKET", "", 1);
    assert_false(pc_sd_notify("READY=1"));
    setenv("NOTIFY_SOCKET", "relative/notify.sock", 1);
    assert_false(pc_sd_notify("READY=1"));
    char longpath[300];
    memset(longpath, 'x', sizeof(longpath) - 1);
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longpath, 1);
    assert_false(pc_sd_notify("READY=1"));
    unsetenv("NOTIFY_SOCKET");
    rmdir(dir);
}

static void test_watchdog_usec(void **state)
{
    (void)state;
    char pid[32];
    unsetenv("WATCHDOG_PID");
    unsetenv("WATCHDOG_USEC");
    assert_int_equal(pc_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "3000000", 1);
    assert_int_equal(pc_sd_watchdog_usec(), 3000000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(pc_sd_watchdog_usec(), 3000000);
    snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1); /* another process's */
    assert_int_equal(pc_sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");
    setenv("WATCHDOG_USEC", "12ms", 1);
    assert_int_equal(pc_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "-5", 1);
    assert_int_equal(pc_sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_USEC");
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_watchdog_usec),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
