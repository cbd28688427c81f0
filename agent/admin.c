/* admin.c - agent operator endpoints (see admin.h). */
#include "admin.h"

#include <stdlib.h>
#include <string.h>

#include "httpd.h"

struct pc_admin {
    nng_http_server *server;
    pc_metrics *metrics;
    json_t *(*status_cb)(void *arg);
    void *arg;
};

static void route(nng_aio *aio)
{
    pc_admin *a = pc_httpd_data(aio);
    nng_http_req *req = pc_httpd_request(aio);
    const char *method = nng_http_req_get_method(req);
    const char *uri = nng_http_req_get_uri(req);
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        pc_httpd_reject(aio, 405, PC_E_INVALID, "only GET is served here");
        return;
    }
    size_t plen = strcspn(uri, "?");
    if (plen == 10 && strncmp(uri, "/v1/health", plen) == 0) {
        pc_httpd_reply_json(aio, 200, json_pack("{s:s}", "status", "ok"));
    } else if (plen == 10 && strncmp(uri, "/v1/status", plen) == 0) {
        json_t *s = a->status_cb(a->arg);
        if (s == NULL)
            pc_httpd_reply_error(aio, 500, PC_E_INTERNAL, "status unavailable");
        else
            pc_httpd_reply_json(aio, 200, s);
    } else if (plen == 8 && strncmp(uri, "/metrics", plen) == 0) {
        char *text = pc_metrics_render_text(a->metrics);
        if (text == NULL) {
            pc_httpd_reply_error(aio, 500, PC_E_NOMEM, "out of memory");
            return;
        }
        pc_httpd_reply(aio, 200, "text/plain; version=0.0.4", text, strlen(text), NULL);
        free(text);
    } else {
        pc_httpd_reply_error(aio, 404, PC_E_NOTFOUND, "no such resource");
    }
}

int pc_admin_start(pc_admin **out, const char *url, pc_metrics *metrics,
                   json_t *(*status_cb)(void *arg), void *arg, pc_err *err)
{
    pc_admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    a->metrics = metrics;
    a->status_cb = status_cb;
    a->arg = arg;
    int rc = pc_httpd_start(url, NULL, "/", route, a, &a->server, err);
    if (rc != PC_OK) {
        free(a);
        return rc;
    }
    *out = a;
    return PC_OK;
}

void pc_admin_stop(pc_admin *a)
{
    if (a == NULL)
        return;
    pc_httpd_stop(a->server);
    free(a);
}
