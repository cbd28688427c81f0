/* httpd.c - nng HTTP servers for JSON APIs (see httpd.h). */
#include "httpd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "clock.h"
#include "json_text.h"
#include "log.h"
#include "tls.h"

/* A slow client must not hold a body read open forever. */
#define BODY_READ_TIMEOUT_MS 30000
#define MAX_SERVER_HEADERS   4

struct pc_httpd {
    nng_http_server *server;
    pc_httpd_options opt;
    char bound_url[300];
};

struct pc_httpd_req {
    nng_aio *aio;
    nng_http_req *req;
    pc_httpd *server;
    pc_httpd_done_fn done;
    void *done_arg;
    /* An inner request (pc_httpd_inner_call): the outer one's headers,
     * its own method, target and body, answered into a callback. */
    pc_httpd_req *outer;
    char *method, *target, *content_type, *content_length;
    uint8_t *body;
    size_t body_len;
    pc_httpd_answered_fn answered;
    void *answered_arg;
    pc_httpd_stream_filter filter; /* transform NULL: no stream answer */
    bool body_read;                /* every byte of the declared body was read */
};

/* Whether the request declares body bytes after its head. */
static bool declares_body(nng_http_req *req)
{
    const char *cl = nng_http_req_get_header(req, "Content-Length");
    if (nng_http_req_get_header(req, "Transfer-Encoding") != NULL)
        return true;
    if (cl == NULL)
        return false;
    return !(strspn(cl, "0") == strlen(cl) && cl[0] != '\0');
}

static void dispatch(nng_aio *aio)
{
    nng_http_handler *h = nng_aio_get_input(aio, 1);
    pc_httpd *s = nng_http_handler_get_data(h);
    pc_httpd_req *rq = calloc(1, sizeof(*rq));
    if (rq == NULL) {
        nng_aio_finish(aio, NNG_ENOMEM); /* nng closes the connection */
        return;
    }
    rq->aio = aio;
    rq->req = nng_aio_get_input(aio, 0);
    rq->server = s;
    if (nng_http_req_get_header(rq->req, "Transfer-Encoding") != NULL &&
        nng_http_req_get_header(rq->req, "Content-Length") != NULL) {
        /* RFC 9112 6.1: a request with both may be an attempt to smuggle
         * a second request past a proxy; refuse it and close. */
        pc_httpd_error(rq, PC_E_INVALID,
                       "a request must not carry both Content-Length and Transfer-Encoding");
        return;
    }
    s->opt.handler(rq);
}

int pc_httpd_start(pc_httpd **out, const pc_httpd_options *opt, pc_err *err)
{
    pc_httpd *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->opt = *opt;
    nng_url *u = NULL;
    nng_http_handler *h = NULL;
    int rv = nng_url_parse(&u, opt->url);
    if (rv != 0) {
        free(s);
        return pc_err_set(err, PC_E_INVALID, "bad listen address %s: %s", opt->url,
                          nng_strerror(rv));
    }
    if ((rv = nng_http_server_hold(&s->server, u)) != 0)
        goto fail;
    if (strcmp(u->u_scheme, "https") == 0 &&
        (rv = opt->tls == NULL ? NNG_EINVAL : nng_http_server_set_tls(s->server, opt->tls)) != 0)
        goto fail;
    if ((rv = nng_http_handler_alloc(&h, "/", dispatch)) != 0)
        goto fail;
    if ((rv = nng_http_handler_set_method(h, NULL)) != 0 ||
        (rv = nng_http_handler_set_tree(h)) != 0 ||
        (rv = nng_http_handler_collect_body(h, false, 0)) != 0 ||
        (rv = nng_http_handler_set_data(h, s, NULL)) != 0)
        goto fail;
    if ((rv = nng_http_server_add_handler(s->server, h)) != 0)
        goto fail;
    h = NULL;
    if ((rv = nng_http_server_start(s->server)) != 0)
        goto fail;
    /* The address the server is bound to (the kernel chose the port if the
     * url names port 0). */
    nng_sockaddr sa;
    if ((rv = nng_http_server_get_addr(s->server, &sa)) != 0)
        goto fail;
    int port = sa.s_family == NNG_AF_INET    ? ntohs(sa.s_in.sa_port)
               : sa.s_family == NNG_AF_INET6 ? ntohs(sa.s_in6.sa_port)
                                             : -1;
    if (port < 0 ||
        pc_url_with_port(opt->url, port, s->bound_url, sizeof(s->bound_url), err) != PC_OK) {
        rv = NNG_EADDRINVAL;
        goto fail;
    }
    nng_url_free(u);
    *out = s;
    return PC_OK;
fail:
    if (h != NULL)
        nng_http_handler_free(h);
    if (s->server != NULL)
        nng_http_server_release(s->server);
    nng_url_free(u);
    free(s);
    return pc_err_set(err, PC_E_UNAVAILABLE, "cannot serve HTTP on %s: %s", opt->url,
                      nng_strerror(rv));
}

const char *pc_httpd_bound_url(const pc_httpd *s)
{
    return s->bound_url;
}

void pc_httpd_stop(pc_httpd *s)
{
    if (s == NULL)
        return;
    nng_http_server_stop(s->server);
    nng_http_server_release(s->server);
    free(s);
}

void *pc_httpd_data(const pc_httpd_req *rq)
{
    return rq->server->opt.data;
}

const char *pc_httpd_method(const pc_httpd_req *rq)
{
    return rq->outer ? rq->method : nng_http_req_get_method(rq->req);
}

const char *pc_httpd_target(const pc_httpd_req *rq)
{
    return rq->outer ? rq->target : nng_http_req_get_uri(rq->req);
}

const char *pc_httpd_header(const pc_httpd_req *rq, const char *name)
{
    if (rq->outer == NULL)
        return nng_http_req_get_header(rq->req, name);
    /* The body's own headers are the inner request's. */
    if (strcasecmp(name, "Content-Type") == 0)
        return rq->content_type;
    if (strcasecmp(name, "Content-Length") == 0)
        return rq->content_length;
    if (strcasecmp(name, "Transfer-Encoding") == 0)
        return NULL;
    return pc_httpd_header(rq->outer, name);
}

static void free_inner(pc_httpd_req *rq)
{
    if (rq->filter.release != NULL)
        rq->filter.release(rq->filter.arg);
    free(rq->method);
    free(rq->target);
    free(rq->content_type);
    free(rq->content_length);
    free(rq->body);
    free(rq);
}

int pc_httpd_inner_call(pc_httpd_req *outer, const char *method, const char *target,
                        const char *content_type, const void *body, size_t len,
                        pc_httpd_answered_fn answered, void *arg,
                        const pc_httpd_stream_filter *filter)
{
    pc_httpd_req *rq = calloc(1, sizeof(*rq));
    char length[32];
    snprintf(length, sizeof(length), "%zu", len);
    if (rq == NULL)
        return PC_E_NOMEM;
    rq->outer = outer;
    rq->server = outer->server;
    rq->method = strdup(method);
    rq->target = strdup(target);
    rq->content_type = content_type ? strdup(content_type) : NULL;
    rq->content_length = strdup(length);
    rq->body = malloc(len + 1);
    if (rq->method == NULL || rq->target == NULL || (content_type && !rq->content_type) ||
        rq->content_length == NULL || rq->body == NULL) {
        free_inner(rq);
        return PC_E_NOMEM;
    }
    if (len > 0)
        memcpy(rq->body, body, len);
    rq->body[len] = '\0';
    rq->body_len = len;
    rq->answered = answered;
    rq->answered_arg = arg;
    if (filter != NULL)
        rq->filter = *filter;
    rq->server->opt.handler(rq);
    return PC_OK;
}

/* Finishes the request and frees rq. */
static void finish(pc_httpd_req *rq, nng_http_res *res, int rv)
{
    nng_aio *aio = rq->aio;
    if (rq->done != NULL) {
        void *body = NULL;
        size_t len = 0;
        uint16_t status = 0;
        if (rv == 0 && res != NULL) {
            status = nng_http_res_get_status(res);
            nng_http_res_get_data(res, &body, &len);
        }
        rq->done(rq->done_arg, status, body, len);
    }
    free(rq);
    if (rv != 0) {
        /* A failed aio makes nng close the connection. */
        if (res != NULL)
            nng_http_res_free(res);
        nng_aio_finish(aio, rv);
        return;
    }
    nng_aio_set_output(aio, 0, res);
    nng_aio_finish(aio, 0);
}

/* The headers the server adds to every reply (pc_httpd_options.headers). */
static int add_server_headers(pc_httpd_req *rq, nng_http_res *res)
{
    int rv = 0;
    if (rq->server->opt.headers != NULL) {
        const char *extra[2 * MAX_SERVER_HEADERS];
        size_t n = rq->server->opt.headers(rq->server->opt.data, rq, extra, MAX_SERVER_HEADERS);
        for (size_t i = 0; rv == 0 && i < n && i < MAX_SERVER_HEADERS; i++)
            rv = nng_http_res_set_header(res, extra[2 * i], extra[2 * i + 1]);
    }
    return rv;
}

struct pc_httpd_stream {
    nng_http_conn *conn;
    nng_aio *aio;
    pc_httpd_stream_filter filter; /* an inner request's (transform NULL: none) */
    uint8_t *out;                  /* the transformed bytes being written */
    bool failed;                   /* the transform failed: the write did */
    void (*cb)(void *arg, int rv);
    void *arg;
    /* Until the head is written. */
    nng_http_res *head;
    void (*ready)(void *arg, pc_httpd_stream *st);
    void *ready_arg;
};

static void head_written(void *p, int rv)
{
    pc_httpd_stream *st = p;
    nng_http_res_free(st->head);
    st->head = NULL;
    if (rv != 0) {
        st->ready(st->ready_arg, NULL);
        /* From inside the aio's own callback: reap it, not free it. */
        nng_http_conn_close(st->conn);
        nng_aio_reap(st->aio);
        if (st->filter.release != NULL)
            st->filter.release(st->filter.arg);
        free(st);
        return;
    }
    st->ready(st->ready_arg, st);
}

static void stream_written(void *p)
{
    pc_httpd_stream *st = p;
    free(st->out);
    st->out = NULL;
    int rv = st->failed ? NNG_ENOMEM : nng_aio_result(st->aio);
    st->failed = false;
    st->cb(st->arg, rv);
}

void pc_httpd_stream_start(pc_httpd_req *rq, const char *content_type, const char *const *headers,
                           void (*ready)(void *arg, pc_httpd_stream *st), void *arg)
{
    pc_httpd_stream_filter filter = {0};
    if (rq->outer != NULL) {
        if (rq->filter.transform == NULL) {
            pc_httpd_error(rq, PC_E_INTERNAL, "a stream cannot answer this inner request");
            ready(arg, NULL);
            return;
        }
        /* The stream takes the outer request's connection, and the inner
         * request is over: its filter goes with the stream. */
        pc_httpd_req *outer = rq->outer;
        filter = rq->filter;
        content_type = filter.content_type;
        headers = NULL;
        rq->filter.release = NULL;
        free_inner(rq);
        rq = outer;
    }
    nng_http_conn *conn = nng_aio_get_input(rq->aio, 2);
    pc_httpd_stream *st = calloc(1, sizeof(*st));
    nng_http_res *res = NULL;
    int rv = st == NULL ? NNG_ENOMEM : nng_http_res_alloc(&res);
    if (rv == 0)
        rv = add_server_headers(rq, res);
    if (rv == 0)
        rv = nng_http_res_set_header(res, "Content-Type", content_type);
    if (rv == 0)
        rv = nng_http_res_set_header(res, "Cache-Control", "no-cache");
    if (rv == 0)
        rv = nng_http_res_set_header(res, "Connection", "close");
    for (size_t i = 0; rv == 0 && headers != NULL && headers[i] != NULL; i += 2)
        rv = nng_http_res_set_header(res, headers[i], headers[i + 1]);
    if (rv == 0)
        rv = nng_aio_alloc(&st->aio, stream_written, st);
    if (rv != 0) {
        if (res != NULL)
            nng_http_res_free(res);
        if (st != NULL)
            nng_aio_free(st->aio);
        free(st);
        if (filter.release != NULL)
            filter.release(filter.arg);
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        ready(arg, NULL);
        return;
    }
    st->filter = filter;
    /* From here nng's server no longer owns the connection or the
     * request (nng_http_hijack): the head goes out through nng with no
     * body, so with no length (the body runs until the close), and the
     * request ends without an answer of the server's. */
    nng_http_hijack(conn);
    st->conn = conn;
    st->head = res;
    st->ready = ready;
    st->ready_arg = arg;
    st->cb = head_written;
    st->arg = st;
    nng_http_req *req = rq->req;
    nng_aio *aio = rq->aio;
    if (rq->done != NULL)
        rq->done(rq->done_arg, 200, NULL, 0);
    free(rq);
    nng_aio_finish(aio, 0);
    nng_http_req_free(req);
    nng_aio_set_timeout(st->aio, 10000);
    nng_http_conn_write_res(conn, res, st->aio);
}

void pc_httpd_stream_write(pc_httpd_stream *st, const void *buf, size_t len, int timeout_ms,
                           void (*cb)(void *arg, int rv), void *arg)
{
    st->cb = cb;
    st->arg = arg;
    if (st->filter.transform != NULL) {
        size_t out_len = 0;
        st->out = st->filter.transform(st->filter.arg, buf, len, &out_len);
        if (st->out == NULL || out_len == 0) {
            /* Nothing to write (or the transform failed): the callback
             * still comes from an nng thread, never from inside this call
             * (callers hold locks it takes). */
            st->failed = st->out == NULL;
            free(st->out);
            st->out = NULL;
            nng_sleep_aio(0, st->aio);
            return;
        }
        buf = st->out;
        len = out_len;
    }
    nng_iov iov = {.iov_buf = (void *)buf, .iov_len = len};
    nng_aio_set_iov(st->aio, 1, &iov);
    nng_aio_set_timeout(st->aio, timeout_ms);
    nng_http_conn_write_all(st->conn, st->aio);
}

void pc_httpd_stream_close(pc_httpd_stream *st)
{
    if (st == NULL)
        return;
    nng_aio_stop(st->aio); /* cancels a write in flight, waits for its callback */
    nng_http_conn_close(st->conn);
    nng_aio_free(st->aio);
    free(st->out);
    if (st->filter.release != NULL)
        st->filter.release(st->filter.arg);
    free(st);
}

void pc_httpd_on_done(pc_httpd_req *rq, pc_httpd_done_fn done, void *arg)
{
    rq->done = done;
    rq->done_arg = arg;
}

/* Whether a header line framed the message for someone else but not for
 * nng: nng 1.5 takes a header's name up to the colon, whitespace
 * included, and keeps a line that starts with whitespace as a header of
 * its own, so "Content-Length : 5" is no length to it while a lenient
 * proxy may frame the message by it. The usual spellings of that are
 * looked for (up to two blanks after the name, one before). */
#define DISGUISES (2 * 3 * 7 - 2)
static char disguises[DISGUISES][24];
static pthread_once_t disguises_once = PTHREAD_ONCE_INIT;

static void spell_disguises(void)
{
    static const char *const names[] = {"Content-Length", "Transfer-Encoding"};
    static const char *const before[] = {"", " ", "\t"};
    static const char *const after[] = {"", " ", "\t", "  ", " \t", "\t ", "\t\t"};
    size_t k = 0;
    for (size_t n = 0; n < 2; n++)
        for (size_t b = 0; b < 3; b++)
            for (size_t a = 0; a < 7; a++)
                if (b != 0 || a != 0) /* not the name itself */
                    snprintf(disguises[k++], sizeof(disguises[0]), "%s%s%s", before[b], names[n],
                             after[a]);
}

static bool framing_in_disguise(nng_http_req *req)
{
    pthread_once(&disguises_once, spell_disguises);
    for (size_t k = 0; k < DISGUISES; k++)
        if (nng_http_req_get_header(req, disguises[k]) != NULL)
            return true;
    return false;
}

/* Whether the connection can carry the client's next request: only when
 * nng will read that request from exactly where this one ended. A body
 * left unread (a refusal before reading it), a chunked body (read raw
 * here, and what follows its end is not kept) or a framing header nng did
 * not see would leave bytes nng would parse as a request of their own. */
static bool may_keep_alive(pc_httpd_req *rq)
{
    if (!rq->server->opt.keep_alive)
        return false;
    if (nng_http_req_get_header(rq->req, "Transfer-Encoding") != NULL)
        return false;
    if (declares_body(rq->req) && !rq->body_read)
        return false;
    return !framing_in_disguise(rq->req);
}

void pc_httpd_reply(pc_httpd_req *rq, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *const *headers)
{
    if (rq->outer != NULL) {
        if (rq->done != NULL)
            rq->done(rq->done_arg, status, body, len);
        rq->answered(rq->answered_arg, status, content_type, body, len, headers);
        free_inner(rq); /* releases the filter, unused */
        return;
    }
    nng_http_res *res = NULL;
    int rv = nng_http_res_alloc(&res);
    if (rv == 0)
        rv = add_server_headers(rq, res);
    if (rv == 0)
        rv = nng_http_res_set_status(res, status);
    if (rv == 0 && content_type != NULL)
        rv = nng_http_res_set_header(res, "Content-Type", content_type);
    for (size_t i = 0; rv == 0 && headers != NULL && headers[i] != NULL; i += 2)
        rv = nng_http_res_set_header(res, headers[i], headers[i + 1]);
    if (rv == 0 && !may_keep_alive(rq))
        /* nng closes the connection after a reply carrying this. */
        rv = nng_http_res_set_header(res, "Connection", "close");
    if (rv == 0 && len > 0)
        rv = nng_http_res_copy_data(res, body, len);
    finish(rq, res, rv);
}

void pc_httpd_reply_json(pc_httpd_req *rq, uint16_t status, json_t *body,
                         const char *const *headers)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(body);
    if (text == NULL) {
        static const char oom[] =
            "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of memory\"}}\n";
        pc_httpd_reply(rq, pc_httpd_status_for(PC_E_NOMEM), "application/json", oom,
                       sizeof(oom) - 1, NULL);
        return;
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: curl users get a clean prompt */
    pc_httpd_reply(rq, status, "application/json", text, len + 1, headers);
    free(text);
}

__attribute__((format(printf, 4, 0))) static void
verror(pc_httpd_req *rq, int code, const char *const *headers, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    json_t *inner = json_object();
    json_t *body = json_object();
    if (inner == NULL || body == NULL ||
        json_object_set_new(inner, "code", json_string(pc_err_name(code))) != 0 ||
        pc_json_set_text(inner, "message", msg) != 0) {
        json_decref(inner);
        json_decref(body);
        body = NULL;
    } else {
        json_object_set_new(body, "error", inner);
    }
    pc_httpd_reply_json(rq, pc_httpd_status_for(code), body, headers);
}

void pc_httpd_error(pc_httpd_req *rq, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(rq, code, NULL, fmt, ap);
    va_end(ap);
}

void pc_httpd_error_with(pc_httpd_req *rq, int code, const char *const *headers, const char *fmt,
                         ...)
{
    va_list ap;
    va_start(ap, fmt);
    verror(rq, code, headers, fmt, ap);
    va_end(ap);
}

uint16_t pc_httpd_status_for(int code)
{
    switch (code) {
    case PC_E_INVALID: return 400;
    case PC_E_AUTH: return 401;
    case PC_E_FORBIDDEN: return 403;
    case PC_E_NOTFOUND: return 404;
    case PC_E_METHOD: return 405;
    case PC_E_EXISTS: return 409;
    case PC_E_STALE_VERSION: return 409;
    case PC_E_LENGTH_REQUIRED: return 411;
    case PC_E_TOO_LARGE: return 413;
    case PC_E_MEDIA_TYPE: return 415;
    case PC_E_RUNTIME: return 422;
    case PC_E_LIMIT: return 422; /* the code cannot run within the sandbox's limits */
    case PC_E_RATE_LIMITED: return 429;
    case PC_E_NOMEM: return 503; /* transient: retry */
    case PC_E_UNAVAILABLE: return 503;
    case PC_E_OUTCOME_UNKNOWN: return 503; /* retry only with the same Idempotency-Key */
    case PC_E_UNPROVEN: return 409;
    case PC_E_COMPACTED: return 410;
    case PC_E_NOT_LEADER: return 503;
    case PC_E_QUARANTINED: return 503;
    case PC_E_TIMEOUT: return 504;
    default: return 500;
    }
}

typedef struct body_read {
    pc_httpd_req *rq;
    nng_aio *read_aio;
    uint8_t *buf;
    size_t len;
    pc_httpd_body_cb cb;
    void *arg;
} body_read;

static void body_read_done(void *p)
{
    body_read *br = p;
    int rv = nng_aio_result(br->read_aio);
    if (rv == 0 && nng_aio_count(br->read_aio) != br->len)
        rv = NNG_ECONNSHUT;
    /* Freeing an aio waits for its callback: from inside it, only reap. */
    nng_aio_reap(br->read_aio);
    if (rv != 0) {
        free(br->buf);
        finish(br->rq, NULL, rv);
        br->cb(br->arg, NULL, rv, NULL, 0);
    } else {
        br->buf[br->len] = '\0';
        br->rq->body_read = true; /* before cb: it may answer, and free rq */
        br->cb(br->arg, br->rq, 0, br->buf, br->len);
    }
    free(br);
}

static void refuse_body(pc_httpd_req *rq, pc_httpd_body_cb cb, void *arg, int code, const char *msg)
{
    pc_httpd_error(rq, code, "%s", msg);
    cb(arg, NULL, code, NULL, 0);
}

/* A chunked body (RFC 9112 7.1), as Connect's Node.js clients send every
 * request body over HTTP/1.1. nng 1.5 reads only Content-Length bodies,
 * so the bytes after the head are read from the connection as they come
 * and decoded by http-parser (Debian's libhttp-parser), fed a stand-in
 * head that declares the chunked coding: its on_body gives the decoded
 * bytes, its on_message_complete the end. What follows the end is never
 * read (every answer closes the connection). */
typedef struct chunked_read {
    pc_httpd_req *rq;
    nng_aio *aio;
    http_parser parser;
    http_parser_settings settings;
    uint8_t *buf;
    size_t len, cap, max;
    bool complete, too_large;
    int64_t deadline_ms;
    uint8_t raw[16384];
    pc_httpd_body_cb cb;
    void *arg;
} chunked_read;

static int chunk_data(http_parser *p, const char *at, size_t n)
{
    chunked_read *cr = p->data;
    if (cr->len + n > cr->max) {
        cr->too_large = true;
        return -1;
    }
    if (cr->len + n + 1 > cr->cap) {
        size_t want = (cr->len + n + 1) * 2;
        if (want > cr->max + 1)
            want = cr->max + 1;
        uint8_t *grown = realloc(cr->buf, want);
        if (grown == NULL)
            return -1;
        cr->buf = grown;
        cr->cap = want;
    }
    memcpy(cr->buf + cr->len, at, n);
    cr->len += n;
    return 0;
}

static int chunks_done(http_parser *p)
{
    ((chunked_read *)p->data)->complete = true;
    return 0;
}

static void chunked_next(chunked_read *cr);

static void chunked_fail(chunked_read *cr, int rv, int code, const char *msg)
{
    pc_httpd_req *rq = cr->rq;
    pc_httpd_body_cb cb = cr->cb;
    void *arg = cr->arg;
    nng_aio_reap(cr->aio);
    free(cr->buf);
    free(cr);
    if (code != 0) {
        pc_httpd_error(rq, code, "%s", msg);
        cb(arg, NULL, code, NULL, 0);
    } else {
        finish(rq, NULL, rv);
        cb(arg, NULL, rv, NULL, 0);
    }
}

static void chunked_got(void *p)
{
    chunked_read *cr = p;
    int rv = nng_aio_result(cr->aio);
    if (rv != 0) {
        chunked_fail(cr, rv, 0, NULL);
        return;
    }
    size_t got = nng_aio_count(cr->aio);
    size_t used = http_parser_execute(&cr->parser, &cr->settings, (const char *)cr->raw, got);
    if (cr->too_large) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body exceeds the limit of %zu bytes", cr->max);
        chunked_fail(cr, 0, PC_E_TOO_LARGE, msg);
        return;
    }
    if (!cr->complete && (used != got || HTTP_PARSER_ERRNO(&cr->parser) != HPE_OK)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "malformed chunked request body (%s)",
                 http_errno_description(HTTP_PARSER_ERRNO(&cr->parser)));
        chunked_fail(cr, 0, PC_E_INVALID, msg);
        return;
    }
    if (cr->complete) {
        pc_httpd_req *rq = cr->rq;
        uint8_t *body = cr->buf;
        size_t len = cr->len;
        pc_httpd_body_cb cb = cr->cb;
        void *arg = cr->arg;
        nng_aio_reap(cr->aio);
        free(cr);
        body[len] = '\0';
        cb(arg, rq, 0, body, len);
        return;
    }
    chunked_next(cr);
}

static void chunked_next(chunked_read *cr)
{
    int64_t left = cr->deadline_ms - pc_mono_ms();
    if (left <= 0) {
        chunked_fail(cr, NNG_ETIMEDOUT, 0, NULL);
        return;
    }
    nng_iov iov = {.iov_buf = cr->raw, .iov_len = sizeof(cr->raw)};
    nng_aio_set_iov(cr->aio, 1, &iov);
    nng_aio_set_timeout(cr->aio, (nng_duration)left);
    nng_http_conn_read(nng_aio_get_input(cr->rq->aio, 2), cr->aio);
}

static void read_chunked(pc_httpd_req *rq, size_t max, pc_httpd_body_cb cb, void *arg)
{
    chunked_read *cr = calloc(1, sizeof(*cr));
    if (cr == NULL || (cr->buf = malloc(1024)) == NULL ||
        nng_aio_alloc(&cr->aio, chunked_got, cr) != 0) {
        if (cr != NULL)
            free(cr->buf);
        free(cr);
        refuse_body(rq, cb, arg, PC_E_NOMEM, "out of memory");
        return;
    }
    cr->rq = rq;
    cr->cap = 1024;
    cr->max = max;
    cr->cb = cb;
    cr->arg = arg;
    cr->deadline_ms = pc_mono_ms() + BODY_READ_TIMEOUT_MS;
    http_parser_init(&cr->parser, HTTP_REQUEST);
    cr->parser.data = cr;
    http_parser_settings_init(&cr->settings);
    cr->settings.on_body = chunk_data;
    cr->settings.on_message_complete = chunks_done;
    static const char head[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    http_parser_execute(&cr->parser, &cr->settings, head, sizeof(head) - 1);
    chunked_next(cr);
}

void pc_httpd_read_body(pc_httpd_req *rq, size_t max, pc_httpd_body_cb cb, void *arg)
{
    if (rq->outer != NULL) {
        /* The body is in memory already: handed over, as a read would. */
        if (rq->body_len > max) {
            char msg[128];
            snprintf(msg, sizeof(msg), "request body of %zu bytes exceeds the limit of %zu bytes",
                     rq->body_len, max);
            refuse_body(rq, cb, arg, PC_E_TOO_LARGE, msg);
            return;
        }
        uint8_t *body = rq->body;
        size_t len = rq->body_len;
        rq->body = NULL;
        rq->body_len = 0;
        cb(arg, rq, 0, body, len);
        return;
    }
    nng_http_conn *conn = nng_aio_get_input(rq->aio, 2);
    const char *cl = pc_httpd_header(rq, "Content-Length");
    const char *te = pc_httpd_header(rq, "Transfer-Encoding");
    if (te != NULL) {
        /* Chunked alone; any other coding is not one this server reads. */
        if (strcasecmp(te, "chunked") == 0)
            read_chunked(rq, max, cb, arg);
        else
            refuse_body(rq, cb, arg, PC_E_LENGTH_REQUIRED,
                        "the only transfer coding read is chunked; or send Content-Length");
        return;
    }
    if (!declares_body(rq->req)) {
        uint8_t *empty = calloc(1, 1);
        if (empty == NULL) {
            refuse_body(rq, cb, arg, PC_E_NOMEM, "out of memory");
            return;
        }
        rq->body_read = true;
        cb(arg, rq, 0, empty, 0);
        return;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (!isdigit((unsigned char)cl[0]) || errno != 0 || *end != '\0') {
        refuse_body(rq, cb, arg, PC_E_INVALID, "malformed Content-Length");
        return;
    }
    if (n > max) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body of %llu bytes exceeds the limit of %zu bytes", n,
                 max);
        refuse_body(rq, cb, arg, PC_E_TOO_LARGE, msg);
        return;
    }
    body_read *br = calloc(1, sizeof(*br));
    uint8_t *buf = malloc((size_t)n + 1);
    if (br == NULL || buf == NULL || nng_aio_alloc(&br->read_aio, body_read_done, br) != 0) {
        free(br);
        free(buf);
        refuse_body(rq, cb, arg, PC_E_NOMEM, "out of memory");
        return;
    }
    br->rq = rq;
    br->buf = buf;
    br->len = (size_t)n;
    br->cb = cb;
    br->arg = arg;
    nng_iov iov = {.iov_buf = buf, .iov_len = (size_t)n};
    nng_aio_set_iov(br->read_aio, 1, &iov);
    nng_aio_set_timeout(br->read_aio, BODY_READ_TIMEOUT_MS);
    nng_http_conn_read_all(conn, br->read_aio);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int pc_httpd_query_text(const char *query, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    for (const char *p = query; p != NULL && *p != '\0';) {
        size_t plen = strcspn(p, "&");
        if (plen >= klen && strncmp(p, key, klen) == 0 && (plen == klen || p[klen] == '=')) {
            const char *v = p + klen + (plen > klen ? 1 : 0), *end = p + plen;
            size_t n = 0;
            for (; v < end; v++) {
                int c = (unsigned char)*v;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    if (end - v < 3 || hex_digit(v[1]) < 0 || hex_digit(v[2]) < 0)
                        return PC_E_INVALID;
                    c = hex_digit(v[1]) * 16 + hex_digit(v[2]);
                    v += 2;
                }
                if (c == 0 || n + 1 >= cap)
                    return PC_E_INVALID;
                out[n++] = (char)c;
            }
            if (cap == 0)
                return PC_E_INVALID;
            out[n] = '\0';
            return PC_OK;
        }
        p += plen;
        if (*p == '&')
            p++;
    }
    return PC_E_NOTFOUND;
}

bool pc_httpd_query_get(const char *query, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    const char *p = query;
    while (p != NULL && *p != '\0') {
        size_t plen = strcspn(p, "&");
        if (plen > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t vlen = plen - klen - 1;
            if (vlen + 1 > cap)
                return false;
            memcpy(out, p + klen + 1, vlen);
            out[vlen] = '\0';
            return true;
        }
        if (plen == klen && strncmp(p, key, klen) == 0) {
            if (cap == 0)
                return false;
            out[0] = '\0';
            return true;
        }
        p += plen;
        if (*p == '&')
            p++;
    }
    return false;
}
