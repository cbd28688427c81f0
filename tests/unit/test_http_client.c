/* test_http_client.c - the blocking HTTP client ends every call by its
 * timeout, whatever the peer does. The peer here is a tarpit: a TCP
 * listener that accepts and never says anything, so an https call waits
 * on a TLS handshake that never completes (nng 1.5 cannot cancel that
 * wait, and closing such a connection blocks: the call must give it up
 * rather than hang). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
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
#include <nng/supplemental/tls/tls.h>

#include "http_client.h"

typedef struct tarpit {
    int fd;
    int port;
    pthread_t thread;
} tarpit;

/* Accepts every connection and keeps it open, silent, until the listener
 * is shut down. */
static void *tarpit_main(void *arg)
{
    tarpit *t = arg;
    int held[64];
    int n = 0;
    for (;;) {
        int c = accept(t->fd, NULL, NULL);
        if (c < 0)
            break;
        if (n < 64)
            held[n++] = c;
        else
            close(c);
    }
    for (int i = 0; i < n; i++)
        close(held[i]);
    return NULL;
}

static void tarpit_start(tarpit *t)
{
    t->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(t->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(t->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(t->fd, 16), 0);
    socklen_t len = sizeof(sa);
    assert_int_equal(getsockname(t->fd, (struct sockaddr *)&sa, &len), 0);
    t->port = ntohs(sa.sin_port);
    assert_int_equal(pthread_create(&t->thread, NULL, tarpit_main, t), 0);
}

static void tarpit_stop(tarpit *t)
{
    shutdown(t->fd, SHUT_RDWR);
    pthread_join(t->thread, NULL);
    close(t->fd);
}

/* A tarpit, and this process set to call it over https (trusting any
 * server: it never gets as far as a certificate). */
typedef struct https_tarpit {
    tarpit t;
    nng_tls_config *cfg;
    char url[64];
} https_tarpit;

static void https_tarpit_start(https_tarpit *h)
{
    tarpit_start(&h->t);
    assert_int_equal(nng_tls_config_alloc(&h->cfg, NNG_TLS_MODE_CLIENT), 0);
    assert_int_equal(nng_tls_config_auth_mode(h->cfg, NNG_TLS_AUTH_MODE_NONE), 0);
    pc_http_set_tls(h->cfg);
    snprintf(h->url, sizeof(h->url), "https://127.0.0.1:%d", h->t.port);
}

static void https_tarpit_stop(https_tarpit *h)
{
    pc_http_set_tls(NULL);
    nng_tls_config_free(h->cfg);
    tarpit_stop(&h->t);
}

static void test_https_call_to_a_silent_peer_times_out(void **state)
{
    (void)state;
    https_tarpit h;
    https_tarpit_start(&h);
    const char *url = h.url;
    uint64_t abandoned = pc_http_abandoned_calls();

    pc_http_result r;
    pc_err err;
    assert_int_equal(pc_http_call(url, "GET", "/v1/health", NULL, NULL, 0, 300, &r, &err),
                     PC_E_TIMEOUT);
    assert_non_null(strstr(err.msg, "GET https://127.0.0.1:"));
    assert_true(r.sent); /* connected: the request may have been seen */
    assert_null(r.body);
    const char body[] = "{}";
    assert_int_equal(
        pc_http_call(url, "POST", "/v1/x", NULL, body, sizeof(body) - 1, 300, &r, &err),
        PC_E_TIMEOUT);
    /* Each was given up, not closed (closing would have blocked). */
    assert_int_equal(pc_http_abandoned_calls(), abandoned + 2);

    https_tarpit_stop(&h);
}

static void ignore_head(void *arg, int status)
{
    (void)arg;
    (void)status;
}

static bool ignore_body(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    return true;
}

static void test_https_stream_to_a_silent_peer_times_out(void **state)
{
    (void)state;
    https_tarpit h;
    https_tarpit_start(&h);
    const char *url = h.url;
    uint64_t abandoned = pc_http_abandoned_calls();
    pc_err err;
    assert_int_equal(
        pc_http_stream(url, "/v1/watch", NULL, 300, ignore_head, ignore_body, NULL, &err),
        PC_E_TIMEOUT);
    assert_int_equal(pc_http_abandoned_calls(), abandoned + 1);
    https_tarpit_stop(&h);
}

/* Over plain TCP nng cancels by itself: the call ends by its timeout and
 * its connection is closed, nothing left behind. */
static void test_http_call_to_a_silent_peer_times_out_and_closes(void **state)
{
    (void)state;
    tarpit t;
    tarpit_start(&t);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", t.port);
    uint64_t abandoned = pc_http_abandoned_calls();
    pc_http_result r;
    pc_err err;
    assert_int_equal(pc_http_call(url, "GET", "/v1/health", NULL, NULL, 0, 300, &r, &err),
                     PC_E_TIMEOUT);
    assert_int_equal(pc_http_abandoned_calls(), abandoned);
    tarpit_stop(&t);
}

static void test_bad_url_is_refused_before_any_connection(void **state)
{
    (void)state;
    pc_http_result r;
    pc_err err;
    assert_int_equal(pc_http_call("not a url", "GET", "/", NULL, NULL, 0, 300, &r, &err),
                     PC_E_INVALID);
    assert_non_null(strstr(err.msg, "bad URL"));
    assert_false(r.sent);
    /* A scheme nng does not call over HTTP: refused the same way. */
    assert_int_equal(pc_http_call("ftp://127.0.0.1:1", "GET", "/", NULL, NULL, 0, 300, &r, &err),
                     PC_E_INVALID);
    assert_non_null(strstr(err.msg, "bad URL ftp://127.0.0.1:1"));
    assert_false(r.sent);
    /* https with no TLS configuration set: refused, nothing sent. */
    assert_int_equal(pc_http_call("https://127.0.0.1:1", "GET", "/", NULL, NULL, 0, 300, &r, &err),
                     PC_E_INVALID);
    assert_non_null(strstr(err.msg, "no TLS configuration"));
    assert_false(r.sent);
    pc_http_session *s = NULL;
    assert_int_equal(pc_http_session_open("https://127.0.0.1:1", &s, &err), PC_E_INVALID);
    assert_null(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_https_call_to_a_silent_peer_times_out),
        cmocka_unit_test(test_https_stream_to_a_silent_peer_times_out),
        cmocka_unit_test(test_http_call_to_a_silent_peer_times_out_and_closes),
        cmocka_unit_test(test_bad_url_is_refused_before_any_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
