/* test_edge_hostile.c - hostile tenants and hostile clients against the
 * real edge. Every request of the corpus ends with its documented status
 * (docs/operations.md, "The edge's limits") within a generous bound, the
 * matching counter moves, a neighbour tenant keeps answering throughout,
 * and the agent stops cleanly afterwards. Malformed requests go over raw
 * sockets: no HTTP client would send them. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"

/* How long any single exchange may take before the test calls it a
 * stall: far beyond anything the edge needs, even under sanitizers. */
#define EXCHANGE_TIMEOUT_MS 30000

static pc_test_env env;
static pc_test_controller ctl;
static pc_test_agent agent;

/* Deploys and waits until the agent serves the version (live_version). */
static void deploy_and_wait(const char *tenant, const char *src)
{
    pc_test_wait_live(&agent, tenant, pc_test_deploy_lua(&env, &ctl, tenant, src));
}

/* ---- raw sockets ---- */

/* A TCP connection to the edge from source address src (NULL: any), or -1
 * (connect refused or reset). */
static int edge_connect(const char *src)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    if (src != NULL) {
        struct sockaddr_in from = {.sin_family = AF_INET};
        assert_int_equal(inet_pton(AF_INET, src, &from.sin_addr), 1);
        assert_int_equal(bind(fd, (struct sockaddr *)&from, sizeof(from)), 0);
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)agent.edge_port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

typedef struct raw_answer {
    char data[256 * 1024];
    size_t len;
    bool closed; /* the edge closed the connection */
} raw_answer;

/* Reads until the edge closes the connection, the buffer is full or the
 * exchange timeout passed. */
static void read_answer(int fd, raw_answer *a)
{
    a->len = 0;
    a->closed = false;
    int64_t deadline = pc_test_now_ms() + EXCHANGE_TIMEOUT_MS;
    while (a->len + 1 < sizeof(a->data)) {
        int64_t left = deadline - pc_test_now_ms();
        if (left <= 0)
            break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, (int)left) <= 0)
            break;
        ssize_t n = read(fd, a->data + a->len, sizeof(a->data) - 1 - a->len);
        if (n <= 0) {
            a->closed = true; /* EOF, or a reset: either way closed */
            break;
        }
        a->len += (size_t)n;
    }
    a->data[a->len] = '\0';
}

/* Sends bytes (which may hold NULs) on a fresh connection and reads the
 * answer. */
static void raw_exchange(const char *src, const void *bytes, size_t len, raw_answer *a)
{
    int fd = edge_connect(src);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, bytes, len), (ssize_t)len);
    read_answer(fd, a);
    close(fd);
}

/* Status lines ("HTTP/1.1 NNN ") in an answer: how many responses came. */
static int count_responses(const raw_answer *a)
{
    int n = 0;
    const char *p = a->data, *end = a->data + a->len;
    while ((p = memmem(p, (size_t)(end - p), "HTTP/1.1 ", 9)) != NULL) {
        p += 9;
        if (end - p >= 4 && p[0] >= '1' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' &&
            p[2] >= '0' && p[2] <= '9' && p[3] == ' ')
            n++;
    }
    return n;
}

static int status_of(const raw_answer *a)
{
    int status = 0;
    if (sscanf(a->data, "HTTP/1.1 %d", &status) != 1)
        return 0;
    return status;
}

/* The value of a response header (first occurrence, case-insensitive) in
 * the head of a raw answer, copied into out; false when absent. */
static bool answer_header(const raw_answer *a, const char *name, char *out, size_t cap)
{
    const char *head_end = memmem(a->data, a->len, "\r\n\r\n", 4);
    size_t nlen = strlen(name);
    for (const char *line = strstr(a->data, "\r\n"); line != NULL && line < head_end;
         line = strstr(line + 2, "\r\n")) {
        const char *l = line + 2;
        if (strncasecmp(l, name, nlen) == 0 && l[nlen] == ':') {
            const char *v = l + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = strcspn(v, "\r");
            snprintf(out, cap, "%.*s", (int)vlen, v);
            return true;
        }
    }
    return false;
}

static int count_header(const raw_answer *a, const char *name)
{
    const char *head_end = memmem(a->data, a->len, "\r\n\r\n", 4);
    size_t nlen = strlen(name);
    int n = 0;
    for (const char *line = strstr(a->data, "\r\n"); line != NULL && line < head_end;
         line = strstr(line + 2, "\r\n"))
        if (strncasecmp(line + 2, name, nlen) == 0 && line[2 + nlen] == ':')
            n++;
    return n;
}

/* A GET for tenant on a connection that closes after the answer. */
static void get_tenant(const char *tenant, raw_answer *a)
{
    char req[256];
    int n = snprintf(req, sizeof(req),
                     "GET / HTTP/1.1\r\nHost: %s.edge.test\r\nConnection: close\r\n\r\n", tenant);
    raw_exchange(NULL, req, (size_t)n, a);
}

/* The JSON error code of a raw answer's body ("" when none). */
static void error_code_of(const raw_answer *a, char *out, size_t cap)
{
    out[0] = '\0';
    const char *body = memmem(a->data, a->len, "\r\n\r\n", 4);
    if (body == NULL)
        return;
    json_t *doc = json_loads(body + 4, 0, NULL);
    const char *c = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    snprintf(out, cap, "%s", c ? c : "");
    json_decref(doc);
}

/* ---- the fleet ---- */

static uint64_t metric(const char *name)
{
    return pc_test_agent_metric(&agent, name);
}

/* ---- the neighbour: a well-behaved tenant asked without pause while the
 * corpus runs; every answer must be its own 200. ---- */

#define MAX_SAMPLES 200000

typedef struct neighbour {
    pthread_t thread;
    atomic_bool stop;
    atomic_bool paused;
    atomic_bool idle; /* paused, and no request in flight */
    double *ms;       /* latency of each request */
    size_t n;
    long errors;
    char first_error[256];
} neighbour;

static neighbour nb;

/* One request to the neighbour; its latency, or -1 (error recorded). */
static double neighbour_once(char *why, size_t cap)
{
    const char *headers[] = {"X-Popcast-Tenant", "good", NULL};
    int64_t t0 = pc_test_now_ms();
    pc_http_result r;
    if (pc_http_call(agent.edge_url, "GET", "/", headers, NULL, 0, EXCHANGE_TIMEOUT_MS, &r, NULL) !=
        PC_OK) {
        snprintf(why, cap, "transport error after %lld ms", (long long)(pc_test_now_ms() - t0));
        return -1;
    }
    double ms = (double)(pc_test_now_ms() - t0);
    bool ok = r.status == 200 && r.body_len == 4 && memcmp(r.body, "fine", 4) == 0;
    if (!ok)
        snprintf(why, cap, "status %d: %.100s", r.status, r.body ? (char *)r.body : "");
    pc_http_result_free(&r);
    return ok ? ms : -1;
}

static void *neighbour_run(void *arg)
{
    (void)arg;
    while (!atomic_load(&nb.stop)) {
        if (atomic_load(&nb.paused)) {
            atomic_store(&nb.idle, true);
            pc_test_sleep_ms(10);
            continue;
        }
        atomic_store(&nb.idle, false);
        char why[256];
        double ms = neighbour_once(why, sizeof(why));
        if (ms < 0) {
            if (nb.errors++ == 0)
                snprintf(nb.first_error, sizeof(nb.first_error), "%s", why);
        } else if (nb.n < MAX_SAMPLES) {
            nb.ms[nb.n++] = ms;
        }
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double p99(double *v, size_t n)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    return v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1];
}

static double p99_before;

static int setup(void **state)
{
    (void)state;
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    const char *extra[] = {"--edge-response-headers-max",
                           "20",
                           "--edge-response-header-bytes",
                           "48KiB",
                           "--edge-max-connections",
                           "40",
                           "--edge-max-connections-per-client",
                           "8",
                           "--edge-request-timeout-ms",
                           "5000",
                           NULL};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, extra);
    deploy_and_wait("good", "return function(req) return 'fine' end");
    /* The neighbour's latency before any abuse. */
    double before[200];
    for (size_t i = 0; i < 200; i++) {
        char why[256];
        before[i] = neighbour_once(why, sizeof(why));
        if (before[i] < 0)
            fail_msg("the neighbour fails before any abuse: %s", why);
    }
    p99_before = p99(before, 200);
    nb.ms = calloc(MAX_SAMPLES, sizeof(double));
    assert_non_null(nb.ms);
    assert_int_equal(pthread_create(&nb.thread, NULL, neighbour_run, NULL), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (!atomic_exchange(&nb.stop, true))
        pthread_join(nb.thread, NULL);
    free(nb.ms);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    return 0;
}

/* ---- hostile tenants ---- */

static void test_status_outside_200_599_is_refused(void **state)
{
    (void)state;
    /* 1xx is interim: a handler answering it would leave the client with
     * no final response (102 made the edge re-run the handler forever).
     * Only 200-599 reach a client. */
    static const int statuses[] = {100, 101, 102, 103, 199};
    uint64_t before = metric("popcast_edge_bad_responses_total{reason=\"status\"}");
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++) {
        char tenant[32], src[128];
        snprintf(tenant, sizeof(tenant), "status%d", statuses[i]);
        snprintf(src, sizeof(src), "return function(req) return {status = %d, body = 'x'} end",
                 statuses[i]);
        deploy_and_wait(tenant, src);
        raw_answer *a = malloc(sizeof(*a));
        assert_non_null(a);
        get_tenant(tenant, a);
        char code[64];
        error_code_of(a, code, sizeof(code));
        if (count_responses(a) != 1 || status_of(a) != 502 || !a->closed ||
            strcmp(code, "runtime_error") != 0 || strstr(a->data, "200-599") == NULL)
            fail_msg("status %d: expected one 502 runtime_error naming 200-599, got %zu bytes: "
                     "%.300s",
                     statuses[i], a->len, a->data);
        free(a);
    }
    assert_int_equal(metric("popcast_edge_bad_responses_total{reason=\"status\"}") - before, 5);
}

static void test_edge_owns_popcast_and_framing_headers(void **state)
{
    (void)state;
    /* X-Popcast-* say what ran; framing is the edge's: a handler cannot
     * forge the one nor break the other. */
    deploy_and_wait("forger", "return function(req) return {headers = {"
                              "['X-Popcast-Version'] = '999', ['x-popcast-tenant'] = 'victim', "
                              "['X-Popcast-Other'] = 'z', ['keep-alive'] = 'timeout=1', "
                              "['upgrade'] = 'h2c', ['proxy-connection'] = 'close', "
                              "['trailer'] = 'x-t', ['te'] = 'trailers', ['x-ok'] = 'yes'}, "
                              "body = 'forged?'} end");
    uint64_t version = 0;
    {
        json_t *s = pc_test_agent_status(&agent);
        size_t i;
        json_t *t;
        json_array_foreach(json_object_get(s, "tenants"), i, t)
        {
            if (strcmp(json_string_value(json_object_get(t, "tenant")), "forger") == 0)
                version = (uint64_t)json_integer_value(json_object_get(t, "live_version"));
        }
        json_decref(s);
    }
    assert_true(version > 0);
    uint64_t before = metric("popcast_edge_response_headers_dropped_total");
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    get_tenant("forger", a);
    char v[64], want[32];
    snprintf(want, sizeof(want), "%llu", (unsigned long long)version);
    if (status_of(a) != 200 || count_header(a, "X-Popcast-Version") != 1 ||
        !answer_header(a, "X-Popcast-Version", v, sizeof(v)) || strcmp(v, want) != 0 ||
        count_header(a, "X-Popcast-Tenant") != 1 ||
        !answer_header(a, "X-Popcast-Tenant", v, sizeof(v)) || strcmp(v, "forger") != 0 ||
        count_header(a, "X-Popcast-Other") != 0 || count_header(a, "Keep-Alive") != 0 ||
        count_header(a, "Upgrade") != 0 || count_header(a, "Proxy-Connection") != 0 ||
        count_header(a, "Trailer") != 0 || count_header(a, "TE") != 0 ||
        !answer_header(a, "x-ok", v, sizeof(v)) || strcmp(v, "yes") != 0)
        fail_msg("expected 200 with the edge's own X-Popcast-* only, got: %.600s", a->data);
    assert_int_equal(metric("popcast_edge_response_headers_dropped_total") - before, 8);
    free(a);
}

static void test_header_syntax_is_checked_byte_by_byte(void **state)
{
    (void)state;
    /* RFC 9110: a field value holds no control characters but HTAB. The
     * runtime only refuses CR, LF and NUL; the edge refuses the rest. */
    static const char *values[] = {"a\\1b", "a\\127b", "a\\27b"};
    uint64_t before = metric("popcast_edge_bad_responses_total{reason=\"header\"}");
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char tenant[32], src[512];
        snprintf(tenant, sizeof(tenant), "ctl%zu", i);
        /* Dropped and kept headers around the bad one: a refusal must
         * free each exactly once (the sanitizer build checks). */
        snprintf(src, sizeof(src),
                 "return function(req) local h = {['x-v'] = '%s'} "
                 "for i = 1, 8 do h['x-popcast-' .. i] = 'a'; h['x-' .. i] = 'b' end "
                 "return {headers = h, body = 'x'} end",
                 values[i]);
        deploy_and_wait(tenant, src);
        raw_answer *a = malloc(sizeof(*a));
        assert_non_null(a);
        get_tenant(tenant, a);
        char code[64];
        error_code_of(a, code, sizeof(code));
        if (count_responses(a) != 1 || status_of(a) != 502 || strcmp(code, "runtime_error") != 0)
            fail_msg("value %s: expected one 502, got: %.300s", values[i], a->data);
        free(a);
    }
    /* A tab inside a value is fine. */
    deploy_and_wait("tab", "return function(req) return {headers = {['x-v'] = 'a\\tb'}, "
                           "body = 'x'} end");
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    get_tenant("tab", a);
    assert_int_equal(status_of(a), 200);
    free(a);
    assert_int_equal(metric("popcast_edge_bad_responses_total{reason=\"header\"}") - before, 3);
}

/* A handler answering n headers x-hNN of vlen bytes each. */
static void deploy_headers(const char *tenant, int n, int vlen)
{
    char src[512];
    snprintf(src, sizeof(src),
             "return function(req) local h = {} for i = 1, %d do "
             "h[string.format('x-h%%02d', i)] = ('v'):rep(%d) end "
             "return {headers = h, body = 'x'} end",
             n, vlen);
    deploy_and_wait(tenant, src);
}

static void test_response_header_caps(void **state)
{
    (void)state;
    /* The agent runs with 20 headers and 48 KiB ("name: value\r\n" each),
     * more than libmicrohttpd's default 32 KiB per connection: over
     * ~32 KiB, headers used to close the connection with no answer. */
    uint64_t count0 = metric("popcast_edge_bad_responses_total{reason=\"header_count\"}");
    uint64_t bytes0 = metric("popcast_edge_bad_responses_total{reason=\"header_bytes\"}");
    /* 16 x ("x-hNN: " + 3063 + CRLF) = 16 x 3072 = 48 KiB exactly: sent. */
    deploy_headers("atcap", 16, 3063);
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    get_tenant("atcap", a);
    if (status_of(a) != 200 || count_header(a, "x-h16") != 1 || !a->closed)
        fail_msg("48 KiB of headers: expected 200 with all of them, got %zu bytes: %.200s", a->len,
                 a->data);
    /* One byte more, or one header more, or the 40 x 1000 bytes that
     * used to close the connection: a 502 saying why. */
    static const struct {
        const char *tenant;
        int n, vlen;
        const char *says;
    } over[] = {{"overbytes", 16, 3064, "more than 49152 bytes of response headers"},
                {"overcount", 21, 1, "more than 20 response headers"},
                {"fortyk", 40, 1000, "more than 20 response headers"}};
    for (size_t i = 0; i < sizeof(over) / sizeof(over[0]); i++) {
        deploy_headers(over[i].tenant, over[i].n, over[i].vlen);
        get_tenant(over[i].tenant, a);
        char code[64];
        error_code_of(a, code, sizeof(code));
        if (count_responses(a) != 1 || status_of(a) != 502 || strcmp(code, "runtime_error") != 0 ||
            strstr(a->data, over[i].says) == NULL)
            fail_msg("%s: expected one 502 naming the limit, got %zu bytes: %.300s", over[i].tenant,
                     a->len, a->data);
    }
    free(a);
    assert_int_equal(metric("popcast_edge_bad_responses_total{reason=\"header_count\"}") - count0,
                     2);
    assert_int_equal(metric("popcast_edge_bad_responses_total{reason=\"header_bytes\"}") - bytes0,
                     1);
}

/* ---- hostile clients ---- */

/* Sends a malformed request and expects exactly one answer with status,
 * then the connection closed (nothing after the refusal may be read as a
 * request). */
static void expect_refused(const char *what, const void *bytes, size_t len, int status,
                           const char *code)
{
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    raw_exchange(NULL, bytes, len, a);
    char got[64];
    error_code_of(a, got, sizeof(got));
    if (count_responses(a) != 1 || status_of(a) != status || !a->closed || strcmp(got, code) != 0)
        fail_msg("%s: expected one %d %s and a close, got %zu bytes (%s): %.400s", what, status,
                 code, a->len, a->closed ? "closed" : "open", a->data);
    free(a);
}

#define REFUSE(what, literal, status, code)                                                        \
    expect_refused(what, literal, sizeof(literal) - 1, status, code)

static void test_request_framing_is_strict(void **state)
{
    (void)state;
    uint64_t before = metric("popcast_edge_bad_requests_total{reason=\"framing\"}");
    /* RFC 9112 6.1: both lengths may smuggle a request past a proxy. The
     * inner GET must never be answered. */
    REFUSE("CL and TE",
           "POST / HTTP/1.1\r\nHost: good.x\r\nContent-Length: 3\r\n"
           "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: good.x\r\n\r\n",
           400, "invalid");
    REFUSE("TE and CL",
           "POST / HTTP/1.1\r\nHost: good.x\r\nTransfer-Encoding: chunked\r\n"
           "Content-Length: 3\r\n\r\n0\r\n\r\n",
           400, "invalid");
    REFUSE("TE gzip", "POST / HTTP/1.1\r\nHost: good.x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400,
           "invalid");
    REFUSE("TE chunked, gzip",
           "POST / HTTP/1.1\r\nHost: good.x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
           "0\r\n\r\n",
           400, "invalid");
    REFUSE("TE gzip, chunked",
           "POST / HTTP/1.1\r\nHost: good.x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           "0\r\n\r\n",
           400, "invalid");
    REFUSE("two TE",
           "POST / HTTP/1.1\r\nHost: good.x\r\nTransfer-Encoding: chunked\r\n"
           "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
           400, "invalid");
    REFUSE("two CL",
           "POST / HTTP/1.1\r\nHost: good.x\r\nContent-Length: 3\r\n"
           "Content-Length: 5\r\n\r\nabcde",
           400, "invalid");
    REFUSE("two equal CL",
           "POST / HTTP/1.1\r\nHost: good.x\r\nContent-Length: 3\r\n"
           "Content-Length: 3\r\n\r\nabc",
           400, "invalid");
    assert_int_equal(metric("popcast_edge_bad_requests_total{reason=\"framing\"}") - before, 8);

    /* What is well framed still works: chunked, and two requests on one
     * kept-alive connection. */
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    static const char chunked[] =
        "POST / HTTP/1.1\r\nHost: good.x\r\nTransfer-Encoding: chunked\r\n"
        "Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    raw_exchange(NULL, chunked, sizeof(chunked) - 1, a);
    assert_int_equal(status_of(a), 200);
    static const char two[] = "GET / HTTP/1.1\r\nHost: good.x\r\n\r\n"
                              "GET / HTTP/1.1\r\nHost: good.x\r\nConnection: close\r\n\r\n";
    raw_exchange(NULL, two, sizeof(two) - 1, a);
    if (count_responses(a) != 2 || status_of(a) != 200)
        fail_msg("two requests on one connection: expected two 200s, got: %.400s", a->data);
    free(a);
}

static void test_request_target_and_host(void **state)
{
    (void)state;
    uint64_t target0 = metric("popcast_edge_bad_requests_total{reason=\"target\"}");
    uint64_t host0 = metric("popcast_edge_bad_requests_total{reason=\"host\"}");
    /* libmicrohttpd would cut the path at the NUL ("/a"). */
    REFUSE("NUL in target", "GET /a\0b HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("NUL at end of target", "GET /a\0 HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("NUL in query", "GET /a?b\0c HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("NUL then version", "GET /a\0HTTP/1.1 HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("control in target", "GET /a\001b HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("DEL in target", "GET /a\177b HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("space in target", "GET /a b HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    REFUSE("tab in target", "GET /a\tb HTTP/1.1\r\nHost: good.x\r\n\r\n", 400, "invalid");
    assert_int_equal(metric("popcast_edge_bad_requests_total{reason=\"target\"}") - target0, 8);
    /* RFC 9112 3.2: exactly one Host in HTTP/1.1. */
    REFUSE("two Host", "GET / HTTP/1.1\r\nHost: good.x\r\nHost: evil.x\r\n\r\n", 400, "invalid");
    REFUSE("no Host", "GET / HTTP/1.1\r\nX-Popcast-Tenant: good\r\n\r\n", 400, "invalid");
    /* Nor two tenants: a proxy in front may read the other one. */
    REFUSE("two tenants",
           "GET / HTTP/1.1\r\nHost: x\r\nX-Popcast-Tenant: good\r\nX-Popcast-Tenant: evil\r\n\r\n",
           400, "invalid");
    assert_int_equal(metric("popcast_edge_bad_requests_total{reason=\"host\"}") - host0, 3);
    /* HTTP/1.0 needs none. */
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    static const char old[] = "GET / HTTP/1.0\r\nX-Popcast-Tenant: good\r\n\r\n";
    raw_exchange(NULL, old, sizeof(old) - 1, a);
    assert_int_equal(status_of(a), 200);
    free(a);
}

static void test_request_header_syntax(void **state)
{
    (void)state;
    uint64_t before = metric("popcast_edge_bad_requests_total{reason=\"header\"}");
    /* RFC 9112 5.1: no whitespace between name and colon. */
    REFUSE("space before colon", "GET / HTTP/1.1\r\nHost: good.x\r\nContent-Length : 5\r\n\r\n",
           400, "invalid");
    REFUSE("tab in name", "GET / HTTP/1.1\r\nHost: good.x\r\nX-A\tb: c\r\n\r\n", 400, "invalid");
    REFUSE("control in value", "GET / HTTP/1.1\r\nHost: good.x\r\nX-A: b\001c\r\n\r\n", 400,
           "invalid");
    REFUSE("slash in name", "GET / HTTP/1.1\r\nHost: good.x\r\nX/A: b\r\n\r\n", 400, "invalid");
    assert_int_equal(metric("popcast_edge_bad_requests_total{reason=\"header\"}") - before, 4);
}

/* A request head of about size bytes in header fields of field bytes. */
static char *big_head(const char *first_line, size_t fields, size_t field_len, size_t *len)
{
    size_t cap = strlen(first_line) + fields * (field_len + 16) + 256;
    char *h = malloc(cap);
    assert_non_null(h);
    size_t n = (size_t)snprintf(h, cap, "%s\r\nHost: atcap.x\r\nConnection: close\r\n", first_line);
    for (size_t i = 0; i < fields; i++) {
        n += (size_t)snprintf(h + n, cap - n, "X-F%04zu: ", i);
        memset(h + n, 'v', field_len);
        n += field_len;
        n += (size_t)snprintf(h + n, cap - n, "\r\n");
    }
    n += (size_t)snprintf(h + n, cap - n, "\r\n");
    *len = n;
    return h;
}

static void test_request_head_limits(void **state)
{
    (void)state;
    uint64_t before = metric("popcast_edge_bad_requests_total{reason=\"too_large\"}");
    size_t len;
    /* More than 128 fields. */
    char *h = big_head("GET / HTTP/1.1", 130, 4, &len);
    expect_refused("130 fields", h, len, 431, "too_large");
    free(h);
    /* Heads over 32 KiB, up to far beyond what fits in memory: each gets
     * an answer, never a silent close. */
    static const size_t sizes[] = {40 * 1024, 100 * 1024, 200 * 1024, 1024 * 1024};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        h = big_head("GET / HTTP/1.1", 100, sizes[i] / 100, &len);
        raw_answer *a = malloc(sizeof(*a));
        assert_non_null(a);
        raw_exchange(NULL, h, len, a);
        if (count_responses(a) != 1 || status_of(a) != 431 || !a->closed)
            fail_msg("head of %zu bytes: expected one 431, got: %.300s", len, a->data);
        free(a);
        free(h);
    }
    /* Query arguments and cookies take memory too. */
    char line[40000];
    int n = snprintf(line, sizeof(line), "GET /?");
    for (int i = 0; i < 1000; i++)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "a&");
    snprintf(line + n, sizeof(line) - (size_t)n, " HTTP/1.1");
    h = big_head(line, 0, 0, &len);
    expect_refused("1000 query arguments", h, len, 431, "too_large");
    free(h);
    assert_true(metric("popcast_edge_bad_requests_total{reason=\"too_large\"}") - before >= 2);

    /* The largest head accepted, answered with the largest response head
     * allowed: it all fits. */
    n = snprintf(line, sizeof(line), "GET /?");
    for (int i = 0; i < 100; i++)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "a%d=%d&", i, i);
    snprintf(line + n, sizeof(line) - (size_t)n, " HTTP/1.1");
    h = big_head(line, 125, 240, &len);
    assert_true(len < 32 * 1024);
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    raw_exchange(NULL, h, len, a);
    if (status_of(a) != 200 || count_header(a, "x-h16") != 1)
        fail_msg("a %zu-byte head: expected 200 with 48 KiB of headers, got %zu bytes: %.300s", len,
                 a->len, a->data);
    free(a);
    free(h);
}

/* ---- connection floods ---- */

/* Sends one more byte of a request on each connection still open, every
 * 200 ms (far faster than any idle timeout), until the edge has closed
 * them all; returns how many it closed within the exchange timeout. */
static int trickle_until_closed(int *fds, int n)
{
    static const char request[] =
        "POST / HTTP/1.1\r\nHost: good.x\r\nContent-Length: 100000\r\n\r\n";
    int closed = 0;
    size_t sent = 0;
    int64_t deadline = pc_test_now_ms() + EXCHANGE_TIMEOUT_MS;
    while (closed < n && pc_test_now_ms() < deadline) {
        /* The head, then body bytes: the deadline holds in both. */
        char byte = sent < sizeof(request) - 1 ? request[sent] : 'x';
        sent++;
        for (int i = 0; i < n; i++) {
            if (fds[i] < 0)
                continue;
            struct pollfd p = {.fd = fds[i], .events = POLLIN};
            char buf[256];
            if ((poll(&p, 1, 0) == 1 && read(fds[i], buf, sizeof(buf)) <= 0) ||
                send(fds[i], &byte, 1, MSG_NOSIGNAL) != 1) {
                close(fds[i]);
                fds[i] = -1;
                closed++;
            }
        }
        pc_test_sleep_ms(200); /* the client's pace, not a wait for an event */
    }
    return closed;
}

static void test_trickling_clients_are_cut_off(void **state)
{
    (void)state;
    /* The agent allows 8 connections per client address and 5 s per
     * request. One address opens 12: 4 are closed at once; the 8 others
     * trickle a request a byte at a time, never idle, and are closed at
     * the deadline. Meanwhile the neighbour (another address) is served. */
    uint64_t refused0 = metric("popcast_edge_connections_refused_total{reason=\"client\"}");
    uint64_t timeouts0 = metric("popcast_edge_request_timeouts_total");
    int fds[12];
    for (int i = 0; i < 12; i++)
        fds[i] = edge_connect("127.0.0.2");
    int open = 0;
    for (int i = 0; i < 12; i++)
        open += fds[i] >= 0;
    assert_int_equal(trickle_until_closed(fds, 12), open);
    assert_int_equal(metric("popcast_edge_connections_refused_total{reason=\"client\"}") - refused0,
                     4);
    assert_true(metric("popcast_edge_request_timeouts_total") - timeouts0 >= 8);
    /* The address is served again once its connections are gone. */
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    static const char get[] = "GET / HTTP/1.1\r\nHost: good.x\r\nConnection: close\r\n\r\n";
    raw_exchange("127.0.0.2", get, sizeof(get) - 1, a);
    assert_int_equal(status_of(a), 200);
    free(a);
}

static void test_a_full_edge_serves_again(void **state)
{
    (void)state;
    /* 40 connections in all: five addresses of 8 (the per-address limit)
     * fill the edge and send nothing more. A fresh client is refused
     * while they hold it, and served once the deadline (5 s) freed them,
     * without any help from them. The neighbour pauses meanwhile: it
     * would be refused too. */
    atomic_store(&nb.paused, true);
    for (int64_t until = pc_test_now_ms() + EXCHANGE_TIMEOUT_MS;
         !atomic_load(&nb.idle) && pc_test_now_ms() < until;)
        pc_test_sleep_ms(10);
    assert_true(atomic_load(&nb.idle));
    uint64_t refused0 = metric("popcast_edge_connections_refused_total{reason=\"limit\"}");
    int fds[45];
    for (int i = 0; i < 45; i++) {
        char src[32];
        snprintf(src, sizeof(src), "127.0.1.%d", 1 + i / 8);
        fds[i] = edge_connect(src);
        if (fds[i] >= 0)
            (void)!write(fds[i], "G", 1);
    }
    static const char get[] = "GET / HTTP/1.1\r\nHost: good.x\r\nConnection: close\r\n\r\n";
    raw_answer *a = malloc(sizeof(*a));
    assert_non_null(a);
    int64_t t0 = pc_test_now_ms();
    int attempts = 0;
    for (;;) {
        attempts++;
        int fd = edge_connect(NULL);
        if (fd >= 0) {
            (void)!write(fd, get, sizeof(get) - 1);
            read_answer(fd, a);
            close(fd);
            if (status_of(a) == 200)
                break;
            /* Refused: closed at once, without an answer. */
            if (a->len != 0 || !a->closed)
                fail_msg("a refused connection got %zu bytes: %.200s", a->len, a->data);
        }
        if (pc_test_now_ms() - t0 > EXCHANGE_TIMEOUT_MS)
            fail_msg("no fresh client served within %d ms (%d attempts)", EXCHANGE_TIMEOUT_MS,
                     attempts);
        pc_test_sleep_ms(100);
    }
    free(a);
    fprintf(stderr, "a fresh client was served after %d attempts\n", attempts);
    assert_true(attempts > 1); /* it was full */
    assert_true(metric("popcast_edge_connections_refused_total{reason=\"limit\"}") - refused0 >= 6);
    for (int i = 0; i < 45; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    atomic_store(&nb.paused, false);
}

/* ---- the end ---- */

static void test_neighbour_kept_answering(void **state)
{
    (void)state;
    atomic_store(&nb.stop, true);
    pthread_join(nb.thread, NULL);
    double during = p99(nb.ms, nb.n);
    fprintf(stderr, "neighbour: p99 %.0f ms before, %.0f ms during the corpus (%zu requests)\n",
            p99_before, during, nb.n);
    if (nb.errors != 0)
        fail_msg("the neighbour failed %ld times; first: %s", nb.errors, nb.first_error);
    assert_true(nb.n > 0);
    /* Generous: a stalled edge means seconds to forever, not a slower
     * p99. */
    assert_true(during < 10000);
}

static void test_agent_stops_cleanly(void **state)
{
    (void)state;
    assert_int_equal(pc_proc_stop(agent.proc), 0);
    pc_proc_free(agent.proc);
    agent.proc = NULL;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_outside_200_599_is_refused),
        cmocka_unit_test(test_edge_owns_popcast_and_framing_headers),
        cmocka_unit_test(test_header_syntax_is_checked_byte_by_byte),
        cmocka_unit_test(test_response_header_caps),
        cmocka_unit_test(test_request_framing_is_strict),
        cmocka_unit_test(test_request_target_and_host),
        cmocka_unit_test(test_request_header_syntax),
        cmocka_unit_test(test_request_head_limits),
        cmocka_unit_test(test_trickling_clients_are_cut_off),
        cmocka_unit_test(test_a_full_edge_serves_again),
        cmocka_unit_test(test_neighbour_kept_answering),
        cmocka_unit_test(test_agent_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
