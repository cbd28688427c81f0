/* http_client.c - blocking HTTP calls over nng (see http_client.h). */
#include "http_client.h"

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>
#include <nng/supplemental/http/http.h>
#include <stdlib.h>
#include <string.h>

static nng_tls_config *client_tls;

void pc_http_set_tls(struct nng_tls_config *cfg)
{
    client_tls = cfg;
}

/* What one call needs: a client for url (https: with the TLS
 * configuration), the request with its method, path and headers, a
 * response and an aio. 0 or an nng error (what was made is set, for the
 * caller to free). */
static int prepare(const char *method, const char *path, const char *const *headers, nng_url *url,
                   nng_http_client **client, nng_http_req **req, nng_http_res **res, nng_aio **aio)
{
    int rv;
    if ((rv = nng_http_client_alloc(client, url)) != 0 ||
        (strcmp(url->u_scheme, "https") == 0 &&
         (rv = client_tls == NULL ? NNG_EINVAL : nng_http_client_set_tls(*client, client_tls)) !=
             0) ||
        (rv = nng_http_req_alloc(req, url)) != 0 || (rv = nng_http_res_alloc(res)) != 0 ||
        (rv = nng_aio_alloc(aio, NULL, NULL)) != 0 ||
        (rv = nng_http_req_set_method(*req, method)) != 0 ||
        (rv = nng_http_req_set_uri(*req, path)) != 0)
        return rv;
    for (size_t i = 0; headers != NULL && headers[i] != NULL && rv == 0; i += 2)
        rv = nng_http_req_set_header(*req, headers[i], headers[i + 1]);
    return rv;
}

/* Connects client (with aio's timeout); *conn on success. */
static int connect_to(nng_http_client **client, nng_aio *aio, nng_http_conn **conn)
{
    nng_http_client_connect(*client, aio);
    nng_aio_wait(aio);
    int rv = nng_aio_result(aio);
    if (rv == NNG_ETIMEDOUT) {
        /* nng 1.5 (Debian 12): freeing a client whose connect timed out
         * before its dialer finished can block forever in the client's
         * teardown (fixed upstream in nng PR #2119). Leave that client:
         * a small leak per timed-out connect, never a hang. */
        *client = NULL;
    }
    if (rv == 0)
        *conn = nng_aio_get_output(aio, 0);
    return rv;
}

int pc_http_call(const char *base_url, const char *method, const char *path,
                 const char *const *headers, const void *body, size_t body_len, int timeout_ms,
                 pc_http_result *out, pc_err *err)
{
    memset(out, 0, sizeof(*out));
    nng_url *url = NULL;
    nng_http_client *client = NULL;
    nng_http_req *req = NULL;
    nng_http_res *res = NULL;
    nng_aio *aio = NULL;
    int rv = nng_url_parse(&url, base_url);
    if (rv != 0)
        return pc_err_set(err, PC_E_INVALID, "bad URL %s: %s", base_url, nng_strerror(rv));
    if ((rv = prepare(method, path, headers, url, &client, &req, &res, &aio)) != 0)
        goto done;
    if (rv == 0 && body != NULL)
        rv = nng_http_req_set_data(req, body, body_len);
    else if (rv == 0 && (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0))
        rv = nng_http_req_set_header(req, "Content-Length", "0");
    if (rv != 0)
        goto done;
    nng_aio_set_timeout(aio, timeout_ms > 0 ? timeout_ms : NNG_DURATION_INFINITE);
    /* Connect first, then send: a failure before the connection exists
     * means the server never saw the request (out->sent stays false),
     * which is what lets a caller retry a write elsewhere safely. */
    nng_http_conn *conn = NULL;
    if ((rv = connect_to(&client, aio, &conn)) != 0)
        goto done;
    out->sent = true;
    nng_http_conn_transact(conn, req, res, aio);
    nng_aio_wait(aio);
    rv = nng_aio_result(aio);
    nng_http_conn_close(conn);
    if (rv != 0)
        goto done;
    void *data = NULL;
    size_t len = 0;
    nng_http_res_get_data(res, &data, &len);
    out->body = malloc(len + 1);
    if (out->body == NULL) {
        rv = NNG_ENOMEM;
        goto done;
    }
    if (len > 0)
        memcpy(out->body, data, len);
    out->body[len] = '\0';
    out->body_len = len;
    out->status = nng_http_res_get_status(res);
    out->res = res;
    res = NULL;
done:
    if (aio)
        nng_aio_free(aio);
    if (res)
        nng_http_res_free(res);
    if (req)
        nng_http_req_free(req);
    if (client)
        nng_http_client_free(client);
    nng_url_free(url);
    if (rv != 0)
        return pc_err_set(err, rv == NNG_ETIMEDOUT ? PC_E_TIMEOUT : PC_E_UNAVAILABLE, "%s %s%s: %s",
                          method, base_url, path, nng_strerror(rv));
    return PC_OK;
}

int pc_http_stream(const char *base_url, const char *path, const char *const *headers, int idle_ms,
                   void (*on_head)(void *arg, int status),
                   bool (*on_body)(void *arg, const char *data, size_t len), void *arg, pc_err *err)
{
    nng_url *url = NULL;
    nng_http_client *client = NULL;
    nng_http_req *req = NULL;
    nng_http_res *res = NULL;
    nng_http_conn *conn = NULL;
    nng_aio *aio = NULL;
    int rv = nng_url_parse(&url, base_url);
    if (rv != 0)
        return pc_err_set(err, PC_E_INVALID, "bad URL %s: %s", base_url, nng_strerror(rv));
    if ((rv = prepare("GET", path, headers, url, &client, &req, &res, &aio)) != 0)
        goto done;
    nng_aio_set_timeout(aio, 10000);
    if ((rv = connect_to(&client, aio, &conn)) != 0)
        goto done;
    nng_http_conn_write_req(conn, req, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0)
        goto done;
    /* The head; the body is read as it comes (it has no length). */
    nng_http_conn_read_res(conn, res, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0)
        goto done;
    on_head(arg, nng_http_res_get_status(res));
    char buf[16384];
    for (;;) {
        nng_iov iov = {.iov_buf = buf, .iov_len = sizeof(buf)};
        nng_aio_set_iov(aio, 1, &iov);
        nng_aio_set_timeout(aio, idle_ms > 0 ? idle_ms : NNG_DURATION_INFINITE);
        nng_http_conn_read(conn, aio);
        nng_aio_wait(aio);
        rv = nng_aio_result(aio);
        if (rv == NNG_ECLOSED || rv == NNG_ECONNSHUT || rv == NNG_ECONNRESET) {
            rv = 0; /* the end of the stream */
            break;
        }
        if (rv != 0 || !on_body(arg, buf, nng_aio_count(aio)))
            break;
    }
done:
    if (conn != NULL)
        nng_http_conn_close(conn);
    if (aio)
        nng_aio_free(aio);
    if (res)
        nng_http_res_free(res);
    if (req)
        nng_http_req_free(req);
    if (client)
        nng_http_client_free(client);
    nng_url_free(url);
    if (rv != 0)
        return pc_err_set(err, rv == NNG_ETIMEDOUT ? PC_E_TIMEOUT : PC_E_UNAVAILABLE,
                          "GET %s%s: %s", base_url, path, nng_strerror(rv));
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
