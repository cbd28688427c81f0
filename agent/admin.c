/* admin.c - agent operator endpoints (see admin.h). */
#include "admin.h"

#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "openapi_agent_doc.h"

struct pc_admin {
    pc_httpd *server;
    pc_metrics *metrics;
    pc_admin_callbacks cb;
};

typedef struct admin_route {
    pc_route route;
    void (*handler)(pc_admin *a, pc_httpd_req *rq, const char *query);
} admin_route;

static void get_health(pc_admin *a, pc_httpd_req *rq, const char *query)
{
    (void)query;
    pc_httpd_reply_json(rq, 200, json_pack("{s:s}", "status", "ok"), NULL);
}

static void get_status(pc_admin *a, pc_httpd_req *rq, const char *query)
{
    (void)query;
    size_t len = 0;
    char *text = a->cb.status_cb(a->cb.arg, &len);
    if (text == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "status unavailable: out of memory");
        return;
    }
    pc_httpd_reply(rq, 200, "application/json", text, len, NULL);
    free(text);
}

static void get_metrics(pc_admin *a, pc_httpd_req *rq, const char *query)
{
    (void)query;
    char *text = pc_metrics_render_text(a->metrics);
    if (text == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        return;
    }
    pc_httpd_reply(rq, 200, "text/plain; version=0.0.4", text, strlen(text), NULL);
    free(text);
}

static void get_livez(pc_admin *a, pc_httpd_req *rq, const char *query)
{
    pc_health_report r;
    pc_health_init(&r, "livez");
    a->cb.check_cb(a->cb.arg, &r);
    pc_health_reply(rq, &r, query);
}

static void get_readyz(pc_admin *a, pc_httpd_req *rq, const char *query)
{
    pc_health_report r;
    pc_health_init(&r, "readyz");
    a->cb.check_cb(a->cb.arg, &r);
    pc_health_reply(rq, &r, query);
}

/* This API's description, as built in (docs/openapi-agent.yaml). */
static void get_openapi(pc_admin *a, pc_httpd_req *rq, const char *query)
{
    (void)a;
    (void)query;
    pc_httpd_reply(rq, 200, "application/yaml", pc_openapi_agent_yaml, pc_openapi_agent_yaml_len,
                   NULL);
}

static const admin_route routes[] = {
    {{"GET", "/v1/health"}, get_health}, {{"GET", "/livez"}, get_livez},
    {{"GET", "/readyz"}, get_readyz},    {{"GET", "/v1/status"}, get_status},
    {{"GET", "/metrics"}, get_metrics},  {{"GET", "/v1/openapi.yaml"}, get_openapi},
};

const pc_route *pc_admin_route(size_t i)
{
    return i < sizeof(routes) / sizeof(routes[0]) ? &routes[i].route : NULL;
}

static void route(pc_httpd_req *rq)
{
    pc_admin *a = pc_httpd_data(rq);
    pc_route_match m;
    int rc = pc_route_find(routes, sizeof(routes) / sizeof(routes[0]), sizeof(routes[0]),
                           pc_httpd_method(rq), pc_httpd_target(rq), &m);
    if (rc == PC_E_METHOD) {
        const char *headers[] = {"Allow", m.allow, NULL};
        pc_httpd_error_with(rq, rc, headers, "method %s not allowed here (allowed: %s)",
                            pc_httpd_method(rq), m.allow);
    } else if (rc != PC_OK) {
        pc_httpd_error(rq, PC_E_NOTFOUND, "no such resource");
    } else {
        routes[m.index].handler(a, rq, m.query);
    }
}

int pc_admin_start(pc_admin **out, const char *url, pc_metrics *metrics,
                   const pc_admin_callbacks *cb, pc_err *err)
{
    pc_admin *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    a->metrics = metrics;
    a->cb = *cb;
    pc_httpd_options h = {.url = url, .handler = route, .data = a};
    int rc = pc_httpd_start(&a->server, &h, err);
    if (rc != PC_OK) {
        free(a);
        return rc;
    }
    *out = a;
    return PC_OK;
}

const char *pc_admin_bound_url(const pc_admin *a)
{
    return pc_httpd_bound_url(a->server);
}

void pc_admin_stop(pc_admin *a)
{
    if (a == NULL)
        return;
    pc_httpd_stop(a->server);
    free(a);
}
