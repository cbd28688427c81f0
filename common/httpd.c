/* httpd.c - nng HTTP server helpers (see httpd.h). */
#include "httpd.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* A slow client must not hold a body read open forever. */
#define BODY_READ_TIMEOUT_MS 30000

int pc_httpd_start(const char *url, nng_tls_config *tls, const char *prefix, void (*cb)(nng_aio *),
                   void *data, nng_http_server **out, pc_err *err)
{
    nng_url *u = NULL;
    nng_http_server *server = NULL;
    nng_http_handler *h = NULL;
    int rv = nng_url_parse(&u, url);
    if (rv != 0)
        return pc_err_set(err, PC_E_INVALID, "bad listen address %s: %s", url, nng_strerror(rv));
    if ((rv = nng_http_server_hold(&server, u)) != 0)
        goto fail;
    if (strcmp(u->u_scheme, "https") == 0 &&
        (rv = tls == NULL ? NNG_EINVAL : nng_http_server_set_tls(server, tls)) != 0)
        goto fail;
    if ((rv = nng_http_handler_alloc(&h, prefix, cb)) != 0)
        goto fail;
    if ((rv = nng_http_handler_set_method(h, NULL)) != 0 ||
        (rv = nng_http_handler_set_tree(h)) != 0 ||
        (rv = nng_http_handler_collect_body(h, false, 0)) != 0 ||
        (rv = nng_http_handler_set_data(h, data, NULL)) != 0)
        goto fail;
    if ((rv = nng_http_server_add_handler(server, h)) != 0)
        goto fail;
    h = NULL;
    if ((rv = nng_http_server_start(server)) != 0)
        goto fail;
    nng_url_free(u);
    *out = server;
    return PC_OK;
fail:
    if (h != NULL)
        nng_http_handler_free(h);
    if (server != NULL)
        nng_http_server_release(server);
    nng_url_free(u);
    return pc_err_set(err, PC_E_UNAVAILABLE, "cannot serve HTTP on %s: %s", url, nng_strerror(rv));
}

void pc_httpd_stop(nng_http_server *server)
{
    if (server == NULL)
        return;
    nng_http_server_stop(server);
    nng_http_server_release(server);
}

nng_http_req *pc_httpd_request(nng_aio *aio)
{
    return nng_aio_get_input(aio, 0);
}

void *pc_httpd_data(nng_aio *aio)
{
    return nng_http_handler_get_data(nng_aio_get_input(aio, 1));
}

static pc_httpd_header_fn extra_headers;
static void *extra_headers_arg;

void pc_httpd_set_extra_headers(pc_httpd_header_fn fn, void *arg)
{
    extra_headers_arg = arg;
    extra_headers = fn;
}

void pc_httpd_reply(nng_aio *aio, uint16_t status, const char *content_type, const void *body,
                    size_t len, const char *const *headers)
{
    nng_http_res *res = NULL;
    int rv = nng_http_res_alloc(&res);
    if (rv == 0 && extra_headers != NULL) {
        const char *extra[8];
        size_t n = extra_headers(extra_headers_arg, extra, 4);
        for (size_t i = 0; rv == 0 && i < n; i++)
            rv = nng_http_res_set_header(res, extra[2 * i], extra[2 * i + 1]);
    }
    if (rv == 0)
        rv = nng_http_res_set_status(res, status);
    if (rv == 0 && content_type != NULL)
        rv = nng_http_res_set_header(res, "Content-Type", content_type);
    for (size_t i = 0; rv == 0 && headers != NULL && headers[i] != NULL; i += 2)
        rv = nng_http_res_set_header(res, headers[i], headers[i + 1]);
    if (rv == 0 && len > 0)
        rv = nng_http_res_copy_data(res, body, len);
    if (rv != 0) {
        if (res != NULL)
            nng_http_res_free(res);
        nng_aio_finish(aio, rv);
        return;
    }
    nng_aio_set_output(aio, 0, res);
    nng_aio_finish(aio, 0);
}

void pc_httpd_reply_json(nng_aio *aio, uint16_t status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(body);
    if (text == NULL) {
        static const char oom[] = "{\"error\":{\"code\":\"out_of_memory\",\"message\":\"out of "
                                  "memory\"}}";
        pc_httpd_reply(aio, 500, "application/json", oom, sizeof(oom) - 1, NULL);
        return;
    }
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the NUL: curl users get a clean prompt */
    pc_httpd_reply(aio, status, "application/json", text, len + 1, NULL);
    free(text);
}

void pc_httpd_reply_error(nng_aio *aio, uint16_t status, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", pc_err_name(code), "message", msg);
    pc_httpd_reply_json(aio, status, body);
}

static void reply_and_close(nng_aio *aio, uint16_t status, int code, const char *msg);

void pc_httpd_reject(nng_aio *aio, uint16_t status, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_and_close(aio, status, code, msg);
}

uint16_t pc_httpd_status_for(int code)
{
    switch (code) {
    case PC_E_INVALID: return 400;
    case PC_E_AUTH: return 401;
    case PC_E_FORBIDDEN: return 403;
    case PC_E_NOTFOUND: return 404;
    case PC_E_EXISTS: return 409;
    case PC_E_STALE_VERSION: return 409;
    case PC_E_TOO_LARGE: return 413;
    case PC_E_RUNTIME: return 422;
    case PC_E_LIMIT: return 429;
    case PC_E_UNAVAILABLE: return 503;
    case PC_E_NOT_LEADER: return 503;
    case PC_E_TIMEOUT: return 504;
    default: return 500;
    }
}

typedef struct body_read {
    nng_aio *handler_aio;
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
        /* The connection is unusable: a non-zero result makes nng close it. */
        nng_aio_finish(br->handler_aio, rv);
        br->cb(br->arg, br->handler_aio, rv, NULL, 0);
    } else {
        br->buf[br->len] = '\0';
        br->cb(br->arg, br->handler_aio, 0, br->buf, br->len);
    }
    free(br);
}

static void reply_and_close(nng_aio *aio, uint16_t status, int code, const char *msg)
{
    /* The unread body is still on the wire: the connection cannot carry
     * another request, so ask nng to close it after this reply. */
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", pc_err_name(code), "message", msg);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    static const char *const close_hdr[] = {"Connection", "close", NULL};
    pc_httpd_reply(aio, status, "application/json", text ? text : "{}", text ? strlen(text) : 2,
                   close_hdr);
    free(text);
}

void pc_httpd_read_body(nng_aio *aio, size_t max, pc_httpd_body_cb cb, void *arg)
{
    nng_http_req *req = pc_httpd_request(aio);
    nng_http_conn *conn = nng_aio_get_input(aio, 2);
    const char *te = nng_http_req_get_header(req, "Transfer-Encoding");
    const char *cl = nng_http_req_get_header(req, "Content-Length");
    if (te != NULL) {
        reply_and_close(aio, 411, PC_E_INVALID,
                        "chunked request bodies are not supported; send Content-Length");
        cb(arg, aio, PC_E_INVALID, NULL, 0);
        return;
    }
    if (cl == NULL) {
        cb(arg, aio, 0, calloc(1, 1), 0);
        return;
    }
    char *end = NULL;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    if (!isdigit((unsigned char)cl[0]) || errno != 0 || *end != '\0') {
        reply_and_close(aio, 400, PC_E_INVALID, "malformed Content-Length");
        cb(arg, aio, PC_E_INVALID, NULL, 0);
        return;
    }
    if (n > max) {
        char msg[128];
        snprintf(msg, sizeof(msg), "request body of %llu bytes exceeds the limit of %zu bytes", n,
                 max);
        reply_and_close(aio, 413, PC_E_TOO_LARGE, msg);
        cb(arg, aio, PC_E_TOO_LARGE, NULL, 0);
        return;
    }
    body_read *br = calloc(1, sizeof(*br));
    uint8_t *buf = malloc((size_t)n + 1);
    if (br == NULL || buf == NULL || nng_aio_alloc(&br->read_aio, body_read_done, br) != 0) {
        free(br);
        free(buf);
        reply_and_close(aio, 503, PC_E_NOMEM, "out of memory");
        cb(arg, aio, PC_E_NOMEM, NULL, 0);
        return;
    }
    if (n == 0) {
        nng_aio_free(br->read_aio);
        free(br);
        buf[0] = '\0';
        cb(arg, aio, 0, buf, 0);
        return;
    }
    br->handler_aio = aio;
    br->buf = buf;
    br->len = (size_t)n;
    br->cb = cb;
    br->arg = arg;
    nng_iov iov = {.iov_buf = buf, .iov_len = (size_t)n};
    nng_aio_set_iov(br->read_aio, 1, &iov);
    nng_aio_set_timeout(br->read_aio, BODY_READ_TIMEOUT_MS);
    nng_http_conn_read_all(conn, br->read_aio);
}

int pc_httpd_split_path(const char *uri, pc_httpd_path *out)
{
    memset(out, 0, sizeof(*out));
    out->buf = strdup(uri ? uri : "");
    if (out->buf == NULL)
        return PC_E_NOMEM;
    char *q = strchr(out->buf, '?');
    out->query = "";
    if (q != NULL) {
        *q = '\0';
        out->query = q + 1;
    }
    char *save = NULL;
    for (char *s = strtok_r(out->buf, "/", &save); s != NULL; s = strtok_r(NULL, "/", &save)) {
        if (out->n == PC_HTTPD_MAX_SEGMENTS)
            return PC_E_INVALID;
        out->seg[out->n++] = s;
    }
    return PC_OK;
}

void pc_httpd_path_free(pc_httpd_path *p)
{
    free(p->buf);
    p->buf = NULL;
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

json_t *pc_httpd_parse_json(nng_aio *aio, const uint8_t *body, size_t len)
{
    json_error_t jerr;
    if (len == 0) {
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "request body must be a JSON object");
        return NULL;
    }
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "malformed JSON at line %d column %d: %s",
                             jerr.line, jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "request body must be a JSON object");
        return NULL;
    }
    return root;
}
