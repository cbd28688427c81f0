/* test_httpd_keep_alive.c - a connection carries the client's next request
 * only when nng will read that request from exactly where the last one
 * ended. Raw requests over a TCP socket (answers parsed with http-parser),
 * so that what the server does with the bytes after a request is seen:
 * a kept connection answers the next request; a body left unread, a
 * chunked body, or a length hidden from nng by a blank before its colon
 * ends the connection after the answer, and the bytes behind it are never
 * taken for a request. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>
#include <http_parser.h>

#include "http_client.h"
#include "httpd.h"

/* Requests the handler saw, by path. */
static atomic_int seen_get, seen_read, seen_refuse, seen_smuggled;

static void body_done(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    (void)arg;
    if (rc != 0)
        return;
    char text[64];
    int n = snprintf(text, sizeof(text), "read %zu", len);
    free(body);
    pc_httpd_reply(rq, 200, "text/plain", text, (size_t)n, NULL);
}

static void route(pc_httpd_req *rq)
{
    const char *target = pc_httpd_target(rq);
    if (strcmp(target, "/read") == 0) {
        atomic_fetch_add(&seen_read, 1);
        pc_httpd_read_body(rq, 1 << 20, body_done, NULL);
    } else if (strcmp(target, "/refuse") == 0) {
        atomic_fetch_add(&seen_refuse, 1);
        pc_httpd_error(rq, PC_E_AUTH, "no token");
    } else if (strcmp(target, "/smuggled") == 0) {
        atomic_fetch_add(&seen_smuggled, 1);
        pc_httpd_reply(rq, 200, "text/plain", "smuggled", 8, NULL);
    } else {
        atomic_fetch_add(&seen_get, 1);
        pc_httpd_reply(rq, 200, "text/plain", "ok", 2, NULL);
    }
}

typedef struct server {
    pc_httpd *httpd;
    int port;
} server;

static void server_start(server *s, bool keep_alive)
{
    pc_httpd_options opt = {
        .url = "http://127.0.0.1:0", .handler = route, .keep_alive = keep_alive};
    pc_err err;
    assert_int_equal(pc_httpd_start(&s->httpd, &opt, &err), PC_OK);
    const char *colon = strrchr(pc_httpd_bound_url(s->httpd), ':');
    assert_non_null(colon);
    s->port = atoi(colon + 1);
}

static int connect_to(const server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)s->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    /* A read that waits this long means no answer is coming. */
    struct timeval tv = {.tv_sec = 10};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    return fd;
}

static void send_all(int fd, const char *text)
{
    size_t len = strlen(text);
    assert_int_equal(send(fd, text, len, MSG_NOSIGNAL), (ssize_t)len);
}

/* One answer read off a connection. */
typedef struct answer {
    int status;
    bool close; /* it said Connection: close */
    char body[256];
    bool complete;
    /* The header being read: http-parser gives names and values in
     * pieces (here a byte at a time). */
    char field[64], value[64];
    bool in_value;
} answer;

static void append(char *to, size_t cap, const char *at, size_t n)
{
    size_t have = strlen(to);
    snprintf(to + have, cap - have, "%.*s", (int)n, at);
}

/* The header just read in full. */
static void header_done(answer *a)
{
    if (strcasecmp(a->field, "Connection") == 0 && strcasecmp(a->value, "close") == 0)
        a->close = true;
    a->field[0] = a->value[0] = '\0';
    a->in_value = false;
}

static int on_field(http_parser *p, const char *at, size_t n)
{
    answer *a = p->data;
    if (a->in_value)
        header_done(a);
    append(a->field, sizeof(a->field), at, n);
    return 0;
}

static int on_value(http_parser *p, const char *at, size_t n)
{
    answer *a = p->data;
    a->in_value = true;
    append(a->value, sizeof(a->value), at, n);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    header_done(p->data);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    answer *a = p->data;
    append(a->body, sizeof(a->body), at, n);
    return 0;
}

static int on_complete(http_parser *p)
{
    answer *a = p->data;
    a->complete = true;
    a->status = (int)p->status_code;
    http_parser_pause(p, 1); /* what follows is the next answer */
    return 0;
}

/* Reads one answer, byte by byte (so nothing of a next one is taken);
 * false if the connection ended or nothing came first. */
static bool read_answer(int fd, answer *a)
{
    memset(a, 0, sizeof(*a));
    http_parser parser;
    http_parser_init(&parser, HTTP_RESPONSE);
    parser.data = a;
    http_parser_settings settings;
    http_parser_settings_init(&settings);
    settings.on_header_field = on_field;
    settings.on_header_value = on_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_complete;
    while (!a->complete) {
        char c;
        if (recv(fd, &c, 1, 0) != 1)
            return false;
        size_t used = http_parser_execute(&parser, &settings, &c, 1);
        assert_true(used == 1 || a->complete);
    }
    return true;
}

/* Whether the server ended the connection (rather than sent more). */
static bool server_closed(int fd)
{
    char c;
    return recv(fd, &c, 1, 0) == 0;
}

static void reset_seen(void)
{
    atomic_store(&seen_get, 0);
    atomic_store(&seen_read, 0);
    atomic_store(&seen_refuse, 0);
    atomic_store(&seen_smuggled, 0);
}

static void test_a_kept_connection_carries_the_next_requests(void **state)
{
    (void)state;
    server s;
    server_start(&s, true);
    reset_seen();
    int fd = connect_to(&s);
    answer a;
    send_all(fd, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_true(read_answer(fd, &a));
    assert_int_equal(a.status, 200);
    assert_false(a.close);
    send_all(fd, "POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_true(read_answer(fd, &a));
    assert_string_equal(a.body, "read 5");
    assert_false(a.close);
    /* Two requests sent at once are both answered, in order. */
    send_all(fd, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
                 "POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    assert_true(read_answer(fd, &a));
    assert_string_equal(a.body, "ok");
    assert_true(read_answer(fd, &a));
    assert_string_equal(a.body, "read 3");
    assert_int_equal(atomic_load(&seen_get), 2);
    assert_int_equal(atomic_load(&seen_read), 2);
    /* The client's Connection: close is honoured. */
    send_all(fd, "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_true(read_answer(fd, &a));
    assert_true(a.close);
    assert_true(server_closed(fd));
    close(fd);
    pc_httpd_stop(s.httpd);
}

/* A refusal before the body was read: the body's bytes, a request in
 * disguise here, must not be parsed as a request. */
static void test_an_unread_body_ends_the_connection(void **state)
{
    (void)state;
    server s;
    server_start(&s, true);
    reset_seen();
    int fd = connect_to(&s);
    const char smuggled[] = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    char request[256];
    snprintf(request, sizeof(request),
             "POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n%s", strlen(smuggled),
             smuggled);
    send_all(fd, request);
    answer a;
    assert_true(read_answer(fd, &a));
    assert_int_equal(a.status, 401);
    assert_true(a.close);
    assert_true(server_closed(fd));
    close(fd);
    assert_int_equal(atomic_load(&seen_smuggled), 0);
    pc_httpd_stop(s.httpd);
}

/* A length nng does not see ("Content-Length : N" is no header of that
 * name to nng 1.5) but a lenient proxy may frame by: the request is
 * answered, the connection ended, and what the proxy took for its body
 * never reaches a handler. Each usual spelling. */
static void test_a_hidden_length_ends_the_connection(void **state)
{
    (void)state;
    server s;
    server_start(&s, true);
    static const char *const spellings[] = {
        "Content-Length :",    "Content-Length\t:",  "Content-Length  :",
        " Content-Length:",    "\tContent-Length :", "Transfer-Encoding : chunked\r\nX:",
        "Transfer-Encoding\t:"};
    const char smuggled[] = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    for (size_t i = 0; i < sizeof(spellings) / sizeof(spellings[0]); i++) {
        reset_seen();
        int fd = connect_to(&s);
        char request[256];
        snprintf(request, sizeof(request), "GET /x HTTP/1.1\r\nHost: t\r\n%s %zu\r\n\r\n%s",
                 spellings[i], strlen(smuggled), smuggled);
        send_all(fd, request);
        answer a;
        /* Answered and ended, or (nng refusing the head outright) ended
         * at once: either way nothing behind the head is read. */
        if (read_answer(fd, &a)) {
            assert_int_equal(a.status, 200);
            if (!a.close)
                fail_msg("\"%s\": the connection was kept", spellings[i]);
        }
        if (!server_closed(fd))
            fail_msg("\"%s\": the connection was not ended", spellings[i]);
        close(fd);
        assert_int_equal(atomic_load(&seen_smuggled), 0);
    }
    pc_httpd_stop(s.httpd);
}

/* A chunked body is read raw off the connection: what follows its end is
 * not kept, so the connection ends after the answer. */
static void test_a_chunked_body_ends_the_connection(void **state)
{
    (void)state;
    server s;
    server_start(&s, true);
    int fd = connect_to(&s);
    send_all(fd, "POST /read HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n0\r\n\r\n");
    answer a;
    assert_true(read_answer(fd, &a));
    assert_string_equal(a.body, "read 5");
    assert_true(a.close);
    assert_true(server_closed(fd));
    close(fd);
    pc_httpd_stop(s.httpd);
}

/* keep_alive off: one request per connection, as before. */
static void test_without_keep_alive_every_answer_closes(void **state)
{
    (void)state;
    server s;
    server_start(&s, false);
    int fd = connect_to(&s);
    send_all(fd, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    answer a;
    assert_true(read_answer(fd, &a));
    assert_int_equal(a.status, 200);
    assert_true(a.close);
    assert_true(server_closed(fd));
    close(fd);
    pc_httpd_stop(s.httpd);
}

/* The client side: a session keeps its connection while the server lets
 * it, and opens one per call when the server does not. */
static void test_a_session_keeps_its_connection(void **state)
{
    (void)state;
    for (int keep = 1; keep >= 0; keep--) {
        server s;
        server_start(&s, keep);
        pc_http_session *session = NULL;
        pc_err err;
        assert_int_equal(pc_http_session_open(pc_httpd_bound_url(s.httpd), &session, &err), PC_OK);
        for (int i = 0; i < 3; i++) {
            pc_http_result r;
            assert_int_equal(
                pc_http_session_call(session, "POST", "/read", NULL, "abcd", 4, 5000, &r, &err),
                PC_OK);
            assert_int_equal(r.status, 200);
            assert_string_equal((const char *)r.body, "read 4");
            assert_true(pc_http_result_kept(&r) == (keep == 1));
            pc_http_result_free(&r);
        }
        assert_int_equal(pc_http_session_connections(session), keep ? 1 : 3);
        pc_http_session_close(session);
        pc_httpd_stop(s.httpd);
    }
    pc_err err;
    pc_http_session *bad = NULL;
    assert_int_equal(pc_http_session_open("not a url", &bad, &err), PC_E_INVALID);
    assert_null(bad);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_kept_connection_carries_the_next_requests),
        cmocka_unit_test(test_an_unread_body_ends_the_connection),
        cmocka_unit_test(test_a_hidden_length_ends_the_connection),
        cmocka_unit_test(test_a_chunked_body_ends_the_connection),
        cmocka_unit_test(test_without_keep_alive_every_answer_closes),
        cmocka_unit_test(test_a_session_keeps_its_connection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
