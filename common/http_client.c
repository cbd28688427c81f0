/* http_client.c - blocking HTTP calls over nng (see http_client.h). */
#include "http_client.h"

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static nng_tls_config *client_tls;

/* How long past its own timeout an operation may take to finish before the
 * call gives up on it (nng's timer thread can be late on a busy machine). */
#define ABANDON_GRACE_MS 2000

/* One call's nng objects, and the wait for its aio. On the heap: a call
 * whose operation nng never finishes is abandoned whole (see op_wait), and
 * its aio's callback may still run later. */
typedef struct http_op {
    nng_url *url;
    nng_http_client *client;
    nng_http_req *req;
    nng_http_res *res;
    nng_http_conn *conn;
    nng_aio *aio;
    nng_mtx *mtx;
    nng_cv *cv;
    bool done;
    char *buf; /* a stream's read buffer */
    struct http_op *next_abandoned;
} http_op;

/* The calls given up on, kept reachable (nng may still use them). */
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;
static http_op *abandoned_ops;
static uint64_t abandoned_calls;

void pc_http_set_tls(struct nng_tls_config *cfg)
{
    client_tls = cfg;
}

uint64_t pc_http_abandoned_calls(void)
{
    pthread_mutex_lock(&abandoned_lock);
    uint64_t n = abandoned_calls;
    pthread_mutex_unlock(&abandoned_lock);
    return n;
}

static void keep_abandoned(http_op *op)
{
    pthread_mutex_lock(&abandoned_lock);
    op->next_abandoned = abandoned_ops;
    abandoned_ops = op;
    abandoned_calls++;
    pthread_mutex_unlock(&abandoned_lock);
}

static void op_done(void *arg)
{
    http_op *op = arg;
    nng_mtx_lock(op->mtx);
    op->done = true;
    nng_cv_wake(op->cv);
    nng_mtx_unlock(op->mtx);
}

/* Waits for the operation started on op->aio: true once it finished
 * (its result is in the aio), false if it did not finish within its
 * timeout_ms (0: no limit) and the grace. nng 1.5's TLS layer loses an
 * operation's timeout while the handshake waits for a peer that never
 * answers (its cancel aborts the idle side of the connection, not the
 * one waiting), and nng_http_conn_close waits for that operation; so
 * such a call is left as it is, leaked, and counted, rather than hang
 * its caller. */
static bool op_wait(http_op *op, int timeout_ms)
{
    nng_time until = nng_clock() + (nng_duration)timeout_ms + ABANDON_GRACE_MS;
    nng_mtx_lock(op->mtx);
    while (!op->done)
        if (timeout_ms <= 0)
            nng_cv_wait(op->cv);
        else if (nng_cv_until(op->cv, until) == NNG_ETIMEDOUT)
            break;
    bool finished = op->done;
    op->done = false; /* for the next operation on this aio */
    nng_mtx_unlock(op->mtx);
    return finished;
}

/* Frees what op holds; a NULL op is a no-op. */
static void op_free(http_op *op)
{
    if (op == NULL)
        return;
    if (op->conn)
        nng_http_conn_close(op->conn);
    if (op->aio)
        nng_aio_free(op->aio);
    if (op->res)
        nng_http_res_free(op->res);
    if (op->req)
        nng_http_req_free(op->req);
    if (op->client)
        nng_http_client_free(op->client);
    if (op->cv)
        nng_cv_free(op->cv);
    if (op->mtx)
        nng_mtx_free(op->mtx);
    nng_url_free(op->url);
    free(op->buf);
    free(op);
}

/* Sets up op for base_url: the URL, the wait, the aio and a client
 * (https: with the TLS configuration). 0 or an nng error; *opp is set
 * either way (what was made, for op_free). */
static int op_open(const char *base_url, http_op **opp)
{
    http_op *op = calloc(1, sizeof(*op));
    *opp = op;
    if (op == NULL)
        return NNG_ENOMEM;
    int rv;
    if ((rv = nng_url_parse(&op->url, base_url)) != 0 || (rv = nng_mtx_alloc(&op->mtx)) != 0 ||
        (rv = nng_cv_alloc(&op->cv, op->mtx)) != 0 ||
        (rv = nng_aio_alloc(&op->aio, op_done, op)) != 0)
        return rv;
    if ((rv = nng_http_client_alloc(&op->client, op->url)) != 0)
        return rv;
    if (strcmp(op->url->u_scheme, "https") == 0)
        rv = client_tls == NULL ? NNG_EINVAL : nng_http_client_set_tls(op->client, client_tls);
    return rv;
}

/* op_open, with its failure said: a URL nng cannot call (unparsable, or
 * not http:// or https://) or https with no TLS configuration set is
 * PC_E_INVALID, found before any connection. *opp is NULL on failure. */
static int open_checked(const char *base_url, http_op **opp, pc_err *err)
{
    int rv = op_open(base_url, opp);
    if (rv == 0)
        return PC_OK;
    http_op *op = *opp;
    bool https = op != NULL && op->url != NULL && strcmp(op->url->u_scheme, "https") == 0;
    bool bad_url = op != NULL && (op->url == NULL || rv == NNG_EADDRINVAL || rv == NNG_ENOTSUP);
    op_free(op);
    *opp = NULL;
    if (bad_url)
        return pc_err_set(err, PC_E_INVALID, "bad URL %s: %s", base_url, nng_strerror(rv));
    if (https && client_tls == NULL)
        return pc_err_set(err, PC_E_INVALID, "%s is https, but no TLS configuration is set",
                          base_url);
    return pc_err_set(err, rv == NNG_ENOMEM ? PC_E_NOMEM : PC_E_UNAVAILABLE,
                      "cannot set up calls to %s: %s", base_url, nng_strerror(rv));
}

/* A fresh request (and response) for the next exchange on op. */
static int op_request(http_op *op, const char *method, const char *path, const char *const *headers)
{
    if (op->req != NULL)
        nng_http_req_free(op->req);
    if (op->res != NULL)
        nng_http_res_free(op->res);
    op->req = NULL;
    op->res = NULL;
    int rv;
    if ((rv = nng_http_req_alloc(&op->req, op->url)) != 0 ||
        (rv = nng_http_res_alloc(&op->res)) != 0 ||
        (rv = nng_http_req_set_method(op->req, method)) != 0 ||
        (rv = nng_http_req_set_uri(op->req, path)) != 0)
        return rv;
    for (size_t i = 0; headers != NULL && headers[i] != NULL && rv == 0; i += 2)
        rv = nng_http_req_set_header(op->req, headers[i], headers[i + 1]);
    return rv;
}

/* Runs the operation just started on op->aio to its end: its result, or
 * NNG_ETIMEDOUT with *abandoned set if nng never finished it. */
static int op_result(http_op *op, int timeout_ms, bool *abandoned)
{
    if (!op_wait(op, timeout_ms)) {
        *abandoned = true;
        return NNG_ETIMEDOUT;
    }
    int rv = nng_aio_result(op->aio);
    if (rv == NNG_ETIMEDOUT && op->conn != NULL && strcmp(op->url->u_scheme, "https") == 0) {
        /* The HTTP layer ended the step, but the TLS write or read under
         * it may be the one nng 1.5 cannot cancel, and closing the
         * connection waits for it (forever, if the peer never answers).
         * The step still points into the request and the response. */
        *abandoned = true;
    }
    return rv;
}

/* Connects op's client (with the aio's timeout); op->conn on success. */
static int connect_to(http_op *op, int timeout_ms, bool *abandoned)
{
    int rv = 0;
    if (op->client == NULL && (rv = nng_http_client_alloc(&op->client, op->url)) == 0 &&
        strcmp(op->url->u_scheme, "https") == 0)
        rv = client_tls == NULL ? NNG_EINVAL : nng_http_client_set_tls(op->client, client_tls);
    if (rv != 0)
        return rv;
    nng_http_client_connect(op->client, op->aio);
    rv = op_result(op, timeout_ms, abandoned);
    if (rv == NNG_ETIMEDOUT) {
        /* nng 1.5 (Debian 12): freeing a client whose connect timed out
         * before its dialer finished can block forever in the client's
         * teardown (fixed upstream in nng PR #2119). Leave that client:
         * a small leak per timed-out connect, never a hang. */
        op->client = NULL;
    }
    if (rv == 0)
        op->conn = nng_aio_get_output(op->aio, 0);
    return rv;
}

static int call_error(pc_err *err, int rv, const char *method, const char *base_url,
                      const char *path)
{
    return pc_err_set(err, rv == NNG_ETIMEDOUT ? PC_E_TIMEOUT : PC_E_UNAVAILABLE, "%s %s%s: %s",
                      method, base_url, path, nng_strerror(rv));
}

/* One exchange on op (connecting first if it has no connection): the
 * request made by op_request with body, the answer into out. */
static int op_exchange(http_op *op, const char *method, const void *body, size_t body_len,
                       int timeout_ms, pc_http_result *out, bool *abandoned)
{
    int rv = 0;
    if (body != NULL)
        rv = nng_http_req_set_data(op->req, body, body_len);
    else if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
        rv = nng_http_req_set_header(op->req, "Content-Length", "0");
    if (rv != 0)
        return rv;
    nng_aio_set_timeout(op->aio, timeout_ms > 0 ? timeout_ms : NNG_DURATION_INFINITE);
    /* Connect first, then send: a failure before the connection exists
     * means the server never saw the request (out->sent stays false),
     * which is what lets a caller retry a write elsewhere safely. */
    if (op->conn == NULL && (rv = connect_to(op, timeout_ms, abandoned)) != 0)
        return rv;
    out->sent = true;
    nng_http_conn_transact(op->conn, op->req, op->res, op->aio);
    if ((rv = op_result(op, timeout_ms, abandoned)) != 0)
        return rv;
    void *data = NULL;
    size_t len = 0;
    nng_http_res_get_data(op->res, &data, &len);
    if ((out->body = malloc(len + 1)) == NULL)
        return NNG_ENOMEM;
    if (len > 0)
        memcpy(out->body, data, len);
    out->body[len] = '\0';
    out->body_len = len;
    out->status = nng_http_res_get_status(op->res);
    out->res = op->res;
    op->res = NULL;
    return 0;
}

int pc_http_call(const char *base_url, const char *method, const char *path,
                 const char *const *headers, const void *body, size_t body_len, int timeout_ms,
                 pc_http_result *out, pc_err *err)
{
    memset(out, 0, sizeof(*out));
    http_op *op = NULL;
    bool abandoned = false;
    int rc = open_checked(base_url, &op, err);
    if (rc != PC_OK)
        return rc;
    /* One call, one connection: said, so that the server does not hold
     * it open for a next request that never comes. */
    int rv;
    if ((rv = op_request(op, method, path, headers)) == 0 &&
        (rv = nng_http_req_set_header(op->req, "Connection", "close")) == 0)
        rv = op_exchange(op, method, body, body_len, timeout_ms, out, &abandoned);
    if (abandoned)
        keep_abandoned(op);
    else
        op_free(op);
    if (rv != 0)
        return call_error(err, rv, method, base_url, path);
    return PC_OK;
}

struct pc_http_session {
    char *base_url;
    http_op *op; /* NULL after a call was abandoned: made again */
    uint64_t connections;
};

int pc_http_session_open(const char *base_url, pc_http_session **out, pc_err *err)
{
    pc_http_session *s = calloc(1, sizeof(*s));
    if (s == NULL || (s->base_url = strdup(base_url)) == NULL) {
        free(s);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    int rc = open_checked(base_url, &s->op, err);
    if (rc != PC_OK) {
        pc_http_session_close(s);
        return rc;
    }
    *out = s;
    return PC_OK;
}

int pc_http_session_call(pc_http_session *s, const char *method, const char *path,
                         const char *const *headers, const void *body, size_t body_len,
                         int timeout_ms, pc_http_result *out, pc_err *err)
{
    memset(out, 0, sizeof(*out));
    int rv = 0;
    if (s->op == NULL && (rv = open_checked(s->base_url, &s->op, err)) != PC_OK)
        return rv;
    http_op *op = s->op;
    bool abandoned = false;
    bool fresh = op->conn == NULL;
    if ((rv = op_request(op, method, path, headers)) == 0)
        rv = op_exchange(op, method, body, body_len, timeout_ms, out, &abandoned);
    if (fresh && op->conn != NULL)
        s->connections++;
    if (abandoned) {
        keep_abandoned(op);
        s->op = NULL;
    } else if (op->conn != NULL && (rv != 0 || (out->res != NULL && !pc_http_result_kept(out)))) {
        /* A failed exchange leaves the connection in no known state; an
         * answer saying Connection: close ends it. */
        nng_http_conn_close(op->conn);
        op->conn = NULL;
    }
    if (rv != 0)
        return call_error(err, rv, method, s->base_url, path);
    return PC_OK;
}

uint64_t pc_http_session_connections(const pc_http_session *s)
{
    return s->connections;
}

void pc_http_session_close(pc_http_session *s)
{
    if (s == NULL)
        return;
    op_free(s->op);
    free(s->base_url);
    free(s);
}

bool pc_http_result_kept(const pc_http_result *r)
{
    const char *c = pc_http_result_header(r, "Connection");
    return r->res != NULL && (c == NULL || strcasecmp(c, "close") != 0);
}

int pc_http_stream(const char *base_url, const char *path, const char *const *headers, int idle_ms,
                   void (*on_head)(void *arg, int status),
                   bool (*on_body)(void *arg, const char *data, size_t len), void *arg, pc_err *err)
{
    /* Connecting and the head take at most 10 s, or idle_ms if shorter. */
    const int SETUP_TIMEOUT_MS = idle_ms > 0 && idle_ms < 10000 ? idle_ms : 10000;
    http_op *op = NULL;
    bool abandoned = false;
    int rv = open_checked(base_url, &op, err);
    if (rv != PC_OK)
        return rv;
    if ((rv = op_request(op, "GET", path, headers)) != 0)
        goto done;
    nng_aio_set_timeout(op->aio, SETUP_TIMEOUT_MS);
    if ((rv = connect_to(op, SETUP_TIMEOUT_MS, &abandoned)) != 0)
        goto done;
    nng_http_conn_write_req(op->conn, op->req, op->aio);
    if ((rv = op_result(op, SETUP_TIMEOUT_MS, &abandoned)) != 0)
        goto done;
    /* The head; the body is read as it comes (it has no length). */
    nng_http_conn_read_res(op->conn, op->res, op->aio);
    if ((rv = op_result(op, SETUP_TIMEOUT_MS, &abandoned)) != 0)
        goto done;
    on_head(arg, nng_http_res_get_status(op->res));
    enum { READ_SIZE = 16384 };
    if ((op->buf = malloc(READ_SIZE)) == NULL) {
        rv = NNG_ENOMEM;
        goto done;
    }
    for (;;) {
        nng_iov iov = {.iov_buf = op->buf, .iov_len = READ_SIZE};
        nng_aio_set_iov(op->aio, 1, &iov);
        nng_aio_set_timeout(op->aio, idle_ms > 0 ? idle_ms : NNG_DURATION_INFINITE);
        nng_http_conn_read(op->conn, op->aio);
        rv = op_result(op, idle_ms, &abandoned);
        if (rv == NNG_ECLOSED || rv == NNG_ECONNSHUT || rv == NNG_ECONNRESET) {
            rv = 0; /* the end of the stream */
            break;
        }
        if (rv != 0 || !on_body(arg, op->buf, nng_aio_count(op->aio)))
            break;
    }
done:
    if (abandoned)
        keep_abandoned(op);
    else
        op_free(op);
    if (rv != 0)
        return call_error(err, rv, "GET", base_url, path);
    return PC_OK;
}

const char *pc_http_result_header(const pc_http_result *r, const char *name)
{
    return r->res ? nng_http_res_get_header((nng_http_res *)r->res, name) : NULL;
}

void pc_http_result_free(pc_http_result *r)
{
    free(r->body);
    if (r->res)
        nng_http_res_free((nng_http_res *)r->res);
    memset(r, 0, sizeof(*r));
}
