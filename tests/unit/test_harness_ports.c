/* test_harness_ports.c - the harness's port reservations: a reserved port
 * is refused to every other bind (port 0 included) yet a listener with
 * SO_REUSEADDR (what the daemons use) can listen on it; a process's ports
 * are reserved once it exits, for its restart. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "harness.h"

/* bind(127.0.0.1:port) with or without SO_REUSEADDR; the port bound, or
 * -errno. The socket is closed again. */
static int try_bind(int port, bool reuse)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int one = 1;
    if (reuse)
        assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    socklen_t len = sizeof(sa);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
                     getsockname(fd, (struct sockaddr *)&sa, &len) == 0
                 ? ntohs(sa.sin_port)
                 : -errno;
    close(fd);
    return rc;
}

static void test_reserved_port_is_refused_to_others(void **state)
{
    (void)state;
    int reserved[16];
    for (int i = 0; i < 16; i++) {
        reserved[i] = pc_test_free_port();
        assert_true(reserved[i] > 0);
        for (int j = 0; j < i; j++)
            assert_int_not_equal(reserved[i], reserved[j]);
        assert_int_equal(try_bind(reserved[i], false), -EADDRINUSE);
    }
    /* No bind of port 0 gets one, with or without SO_REUSEADDR. */
    for (int k = 0; k < 2000; k++) {
        int a = try_bind(0, k % 2 == 0);
        assert_true(a > 0);
        for (int i = 0; i < 16; i++)
            assert_int_not_equal(a, reserved[i]);
    }
}

static void test_listener_can_use_a_reserved_port(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", pc_test_free_port());
    nng_socket rep, req;
    assert_int_equal(nng_rep0_open(&rep), 0);
    assert_int_equal(nng_listen(rep, url, NULL, 0), 0);
    assert_int_equal(nng_req0_open(&req), 0);
    assert_int_equal(nng_dial(req, url, NULL, 0), 0);
    /* One exchange before closing: nng 1.5.2 can lose a pipe (and leak
     * it) when a socket closes while that pipe is still being set up (the
     * reference race fixed in nng 1.6.0; docs/testing.md "Sanitizers"). */
    assert_int_equal(nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_socket_set_ms(rep, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_send(req, "ping", 4, 0), 0);
    char buf[8];
    size_t len = sizeof(buf);
    assert_int_equal(nng_recv(rep, buf, &len, 0), 0);
    assert_int_equal(nng_send(rep, buf, len, 0), 0);
    len = sizeof(buf);
    assert_int_equal(nng_recv(req, buf, &len, 0), 0);
    assert_int_equal(len, 4);
    nng_close(req);
    nng_close(rep);
}

static void test_ports_of_an_exited_process_are_held(void **state)
{
    (void)state;
    /* A port some "daemon" had: free once it is gone... */
    int port = try_bind(0, true);
    assert_true(port > 0);
    char log[300], dir[256];
    pc_test_tmpdir(dir, sizeof(dir), "ports");
    snprintf(log, sizeof(log), "%s/true.log", dir);
    char *argv[] = {"/bin/sh", "-c", "exit 0", NULL};
    pc_proc *p = pc_proc_spawn("true", argv, log);
    p->ports[p->n_ports++] = port;
    int64_t deadline = pc_test_now_ms() + PC_TEST_START_TIMEOUT_MS;
    while (pc_proc_alive(p) && pc_test_now_ms() < deadline)
        pc_test_sleep_ms(5);
    assert_false(pc_proc_alive(p));
    /* ...and reserved from the moment the harness saw it exit. */
    assert_int_equal(try_bind(port, false), -EADDRINUSE);
    pc_proc_free(p);
    pc_test_rm_rf(dir);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reserved_port_is_refused_to_others),
        cmocka_unit_test(test_listener_can_use_a_reserved_port),
        cmocka_unit_test(test_ports_of_an_exited_process_are_held),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nng_fini();
    return rc;
}
