/* test_systemd_notify.c - the daemons under systemd's Type=notify and
 * WatchdogSec= (docs/operations.md "Running under systemd"): each sends
 * READY=1 once it serves, WATCHDOG=1 while its loop runs, and STOPPING=1
 * when asked to stop. The test stands in for systemd: it sets
 * NOTIFY_SOCKET and WATCHDOG_USEC and reads the datagrams. */
#include <poll.h>
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

static pc_test_env env;
static int notify_fd = -1;
static char notify_dir[400], notify_path[512];

static int setup(void **state)
{
    (void)state;
    pc_test_init();
    pc_test_env_init(&env);
    pc_test_tmpdir(notify_dir, sizeof(notify_dir), "systemd");
    snprintf(notify_path, sizeof(notify_path), "%s/notify.sock", notify_dir);
    notify_fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    assert_true(notify_fd >= 0);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    assert_true(strlen(notify_path) < sizeof(sa.sun_path)); /* a unix socket's limit */
    memcpy(sa.sun_path, notify_path, strlen(notify_path) + 1);
    assert_int_equal(bind(notify_fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    /* Inherited by every daemon started from here on. 3 s: the agent's
     * and the relay's loops tick every second, and ping every other. */
    setenv("NOTIFY_SOCKET", notify_path, 1);
    setenv("WATCHDOG_USEC", "3000000", 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    close(notify_fd);
    unlink(notify_path);
    rmdir(notify_dir);
    pc_test_env_cleanup(&env);
    return 0;
}

/* Reads datagrams until one equals want (or starts with it, up to a
 * newline); fails after the converge timeout. */
static void expect_message(const char *want)
{
    int64_t deadline = pc_test_now_ms() + PC_TEST_CONVERGE_TIMEOUT_MS;
    while (pc_test_now_ms() < deadline) {
        struct pollfd p = {.fd = notify_fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0)
            continue;
        char buf[512];
        ssize_t n = recv(notify_fd, buf, sizeof(buf) - 1, 0);
        assert_true(n >= 0);
        buf[n] = '\0';
        size_t wl = strlen(want);
        if (strncmp(buf, want, wl) == 0 && (buf[wl] == '\0' || buf[wl] == '\n'))
            return;
    }
    fail_msg("no \"%s\" from the daemon", want);
}

/* Drops what is queued (messages of an earlier daemon). */
static void drain(void)
{
    char buf[512];
    while (recv(notify_fd, buf, sizeof(buf), MSG_DONTWAIT) > 0)
        ;
}

static void test_controller_agent_relay(void **state)
{
    (void)state;
    drain();
    pc_test_controller c;
    memset(&c, 0, sizeof(c));
    pc_test_controller_start(&env, &c, NULL);
    expect_message("READY=1");
    expect_message("WATCHDOG=1");
    expect_message("WATCHDOG=1");

    pc_test_agent a;
    memset(&a, 0, sizeof(a));
    pc_test_agent_start_for(&env, &a, "edge-0", &c, NULL);
    expect_message("READY=1");
    pc_test_relay r;
    memset(&r, 0, sizeof(r));
    const char *subs[] = {c.pub_url, NULL};
    const char *syncs[] = {c.sync_url, NULL};
    pc_test_relay_start(&env, &r, "relay-s", "pop-a", subs, syncs, NULL);
    expect_message("READY=1");

    /* Each daemon on its own: the others stopped, their pings drained. */
    pc_test_controller_stop(&c);
    expect_message("STOPPING=1");
    pc_test_relay_stop(&r);
    expect_message("STOPPING=1");
    drain();
    /* The agent alone is left: its loop keeps pinging. */
    expect_message("WATCHDOG=1");
    expect_message("WATCHDOG=1");
    pc_test_agent_stop(&a);
    expect_message("STOPPING=1");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_controller_agent_relay, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
