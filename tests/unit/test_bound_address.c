/* test_bound_address.c - listeners on port 0 report the address they
 * actually bound: nng listeners (pc_nng_listen_bound) and the HTTP server
 * (pc_httpd_bound_url), and the URL rewriting both rely on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>

#include "harness.h"
#include "http_client.h"
#include "httpd.h"
#include "tls.h"

/* The port of "scheme://host:port", or -1. */
static int url_port(const char *url)
{
    nng_url *u = NULL;
    if (nng_url_parse(&u, url) != 0)
        return -1;
    int port = atoi(u->u_port);
    nng_url_free(u);
    return port;
}

static void test_url_with_port(void **state)
{
    (void)state;
    char out[128];
    pc_err err;
    assert_int_equal(pc_url_with_port("tcp://127.0.0.1:0", 41234, out, sizeof(out), &err), PC_OK);
    assert_string_equal(out, "tcp://127.0.0.1:41234");
    assert_int_equal(pc_url_with_port("http://127.0.0.1:0", 80, out, sizeof(out), &err), PC_OK);
    assert_string_equal(out, "http://127.0.0.1:80");
    assert_int_equal(pc_url_with_port("tls+tcp://[::1]:0", 7, out, sizeof(out), &err), PC_OK);
    assert_string_equal(out, "tls+tcp://[::1]:7");
    assert_int_equal(pc_url_with_port("https://localhost:0/x", 9, out, sizeof(out), &err), PC_OK);
    assert_string_equal(out, "https://localhost:9/x");
    /* A fixed port is replaced just the same. */
    assert_int_equal(pc_url_with_port("tcp://0.0.0.0:7071", 7071, out, sizeof(out), &err), PC_OK);
    assert_string_equal(out, "tcp://0.0.0.0:7071");
}

static void test_url_with_port_refuses_bad_input(void **state)
{
    (void)state;
    char out[128] = "untouched";
    pc_err err;
    assert_int_equal(pc_url_with_port("not a url", 1, out, sizeof(out), &err), PC_E_INVALID);
    assert_non_null(strstr(err.msg, "not a url"));
    /* Too small for the result: an error, never a truncated address. */
    char small[12];
    assert_int_equal(pc_url_with_port("tcp://127.0.0.1:0", 41234, small, sizeof(small), &err),
                     PC_E_INVALID);
    assert_non_null(strstr(err.msg, "too long"));
}

static void test_nng_listener_on_port_0(void **state)
{
    (void)state;
    nng_socket rep, req;
    assert_int_equal(nng_rep0_open(&rep), 0);
    char bound[128];
    pc_err err;
    assert_int_equal(
        pc_nng_listen_bound(rep, "tcp://127.0.0.1:0", NULL, bound, sizeof(bound), &err), PC_OK);
    assert_true(strncmp(bound, "tcp://127.0.0.1:", 16) == 0);
    int port = url_port(bound);
    assert_true(port > 0 && port < 65536);
    /* It is the listener's address: a request to it gets an answer. */
    assert_int_equal(nng_req0_open(&req), 0);
    assert_int_equal(nng_socket_set_ms(req, NNG_OPT_RECVTIMEO, 10000), 0);
    assert_int_equal(nng_dial(req, bound, NULL, 0), 0);
    assert_int_equal(nng_send(req, "ping", 5, 0), 0);
    char *buf = NULL;
    size_t len = 0;
    assert_int_equal(nng_recv(rep, &buf, &len, NNG_FLAG_ALLOC), 0);
    assert_string_equal(buf, "ping");
    assert_int_equal(nng_send(rep, buf, len, NNG_FLAG_ALLOC), 0);
    assert_int_equal(nng_recv(req, &buf, &len, NNG_FLAG_ALLOC), 0);
    assert_string_equal(buf, "ping");
    nng_free(buf, len);

    /* The same port again is in use: a clear error, nothing bound. */
    nng_socket other;
    assert_int_equal(nng_rep0_open(&other), 0);
    char again[128] = "";
    assert_int_equal(pc_nng_listen_bound(other, bound, NULL, again, sizeof(again), &err),
                     PC_E_UNAVAILABLE);
    assert_non_null(strstr(err.msg, bound));
    assert_string_equal(again, "");
    nng_close(other);
    nng_close(req);
    nng_close(rep);
}

static void test_nng_listener_bound_too_small(void **state)
{
    (void)state;
    nng_socket rep;
    assert_int_equal(nng_rep0_open(&rep), 0);
    char small[10];
    pc_err err;
    assert_int_equal(
        pc_nng_listen_bound(rep, "tcp://127.0.0.1:0", NULL, small, sizeof(small), &err),
        PC_E_INVALID);
    nng_close(rep);
}

static void answer_ok(pc_httpd_req *rq)
{
    pc_httpd_reply(rq, 200, "text/plain", "ok", 2, NULL);
}

static void test_http_server_on_port_0(void **state)
{
    (void)state;
    pc_httpd *s = NULL;
    pc_err err;
    pc_httpd_options opt = {.url = "http://127.0.0.1:0", .handler = answer_ok};
    assert_int_equal(pc_httpd_start(&s, &opt, &err), PC_OK);
    const char *url = pc_httpd_bound_url(s);
    assert_true(strncmp(url, "http://127.0.0.1:", 17) == 0);
    assert_true(url_port(url) > 0);
    pc_http_result r;
    assert_int_equal(pc_http_call(url, "GET", "/", NULL, NULL, 0, 10000, &r, &err), PC_OK);
    assert_int_equal(r.status, 200);
    pc_http_result_free(&r);

    /* A fixed port reads back as itself. */
    pc_httpd *same = NULL;
    char fixed[128];
    snprintf(fixed, sizeof(fixed), "http://127.0.0.1:%d", pc_test_free_port());
    opt.url = fixed;
    assert_int_equal(pc_httpd_start(&same, &opt, &err), PC_OK);
    assert_string_equal(pc_httpd_bound_url(same), fixed);
    pc_httpd_stop(same);
    pc_httpd_stop(s);
}

int main(void)
{
    pc_test_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_with_port),
        cmocka_unit_test(test_url_with_port_refuses_bad_input),
        cmocka_unit_test(test_nng_listener_on_port_0),
        cmocka_unit_test(test_nng_listener_bound_too_small),
        cmocka_unit_test(test_http_server_on_port_0),
    };
    /* No nng_fini: in nng 1.5.2 it can race a task thread still reaping
     * the HTTP server's connections and panic at exit ("pthread_mutex_lock:
     * Invalid argument", seen once under two busy loops). */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
