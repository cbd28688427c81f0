/* edge.c - end-user HTTP on libmicrohttpd (see edge.h). */
#include "edge.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "names.h"

#define MAX_REQUEST_HEADERS 128
#define EDGE_HEALTH_PATH    "/_popcast/health"

struct pc_edge {
    pc_edge_options opt;
    struct MHD_Daemon *daemon;
    pc_metric *m_requests, *m_unknown, *m_errors, *m_too_large;
};

typedef struct edge_request {
    char *uri; /* raw request target, query included */
    int started;
    int too_large;
    uint8_t *body;
    size_t body_len, body_cap;
} edge_request;

int pc_parse_host_port(const char *text, char *host, size_t host_cap, unsigned *port)
{
    const char *colon;
    size_t hlen;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            return PC_E_INVALID;
        hlen = (size_t)(close - text - 1);
        text++;
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            return PC_E_INVALID;
        hlen = (size_t)(colon - text);
    }
    if (hlen == 0 || hlen >= host_cap)
        return PC_E_INVALID;
    char *end = NULL;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (!isdigit((unsigned char)colon[1]) || *end != '\0' || p > 65535)
        return PC_E_INVALID;
    memcpy(host, text, hlen);
    host[hlen] = '\0';
    *port = (unsigned)p;
    return PC_OK;
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    edge_request *r = calloc(1, sizeof(*r));
    if (r != NULL && (r->uri = strdup(uri)) == NULL) {
        free(r);
        r = NULL;
    }
    return r;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    edge_request *r = *con_cls;
    if (r == NULL)
        return;
    free(r->uri);
    free(r->body);
    free(r);
    *con_cls = NULL;
}

static enum MHD_Result send_response(struct MHD_Connection *conn, unsigned status,
                                     const char *content_type, void *body, size_t len,
                                     const pc_header *headers, size_t n_headers, const char *tenant,
                                     uint64_t version)
{
    struct MHD_Response *res = MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (res == NULL) {
        free(body);
        return MHD_NO;
    }
    if (content_type != NULL)
        MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    for (size_t i = 0; i < n_headers; i++)
        MHD_add_response_header(res, headers[i].name, headers[i].value);
    if (tenant != NULL)
        MHD_add_response_header(res, "X-Popcast-Tenant", tenant);
    if (version != 0) {
        char v[24];
        snprintf(v, sizeof(v), "%llu", (unsigned long long)version);
        MHD_add_response_header(res, "X-Popcast-Version", v);
    }
    enum MHD_Result rc = MHD_queue_response(conn, status, res);
    MHD_destroy_response(res);
    return rc;
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, int code,
                                  const char *tenant, uint64_t version, const char *message)
{
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", pc_err_name(code), "message", message);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text == NULL)
        return MHD_NO;
    size_t len = strlen(text);
    return send_response(conn, status, "application/json", text, len, NULL, 0, tenant, version);
}

/* The tenant a request is for, or NULL (see edge.h for the rules). */
static int request_tenant(struct MHD_Connection *conn, char *out, size_t cap)
{
    const char *t = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Popcast-Tenant");
    if (t == NULL) {
        const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
        if (host == NULL)
            return PC_E_NOTFOUND;
        size_t n = strcspn(host, ".:");
        if (n == 0 || n >= cap)
            return PC_E_INVALID;
        memcpy(out, host, n);
        out[n] = '\0';
        for (size_t i = 0; i < n; i++)
            out[i] = (char)tolower((unsigned char)out[i]);
    } else {
        if (strlen(t) >= cap)
            return PC_E_INVALID;
        snprintf(out, cap, "%s", t);
    }
    return pc_tenant_name_valid(out) ? PC_OK : PC_E_INVALID;
}

typedef struct header_list {
    pc_header items[MAX_REQUEST_HEADERS];
    size_t count;
} header_list;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    header_list *l = cls;
    if (l->count == MAX_REQUEST_HEADERS)
        return MHD_NO;
    char *name = strdup(key);
    char *val = strdup(value ? value : "");
    if (name == NULL || val == NULL) {
        free(name);
        free(val);
        return MHD_NO;
    }
    for (char *p = name; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    l->items[l->count].name = name;
    l->items[l->count].value = val;
    l->count++;
    return MHD_YES;
}

static void free_headers(header_list *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free(l->items[i].name);
        free(l->items[i].value);
    }
}

static enum MHD_Result serve(pc_edge *e, struct MHD_Connection *conn, const char *method,
                             edge_request *r)
{
    /* The edge's own health check, for load balancers: answered by the
     * HTTP stack alone (it is also the ceiling in bench_edge). */
    size_t hlen = strlen(EDGE_HEALTH_PATH);
    if (strncmp(r->uri, EDGE_HEALTH_PATH, hlen) == 0 &&
        (r->uri[hlen] == '\0' || r->uri[hlen] == '?')) {
        char *ok = strdup("{\"status\":\"ok\"}");
        if (ok == NULL)
            return MHD_NO;
        return send_response(conn, 200, "application/json", ok, strlen(ok), NULL, 0, NULL, 0);
    }
    char tenant[PC_TENANT_MAX + 1];
    int rc = request_tenant(conn, tenant, sizeof(tenant));
    if (rc != PC_OK) {
        pc_metric_add(e->m_unknown, 1);
        return send_error(conn, 404, PC_E_NOTFOUND, NULL, 0,
                          "no tenant: send Host: <tenant>.<domain> or X-Popcast-Tenant");
    }
    header_list headers = {.count = 0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, &headers);
    char *query = strchr(r->uri, '?');
    if (query != NULL)
        *query++ = '\0';
    pc_request req = {.method = method,
                      .path = r->uri,
                      .query = query ? query : "",
                      .headers = headers.items,
                      .n_headers = headers.count,
                      .body = r->body ? r->body : (const uint8_t *)"",
                      .body_len = r->body_len};
    pc_response res;
    memset(&res, 0, sizeof(res));
    pc_err err;
    pc_err_clear(&err);
    rc = PC_E_NOTFOUND;
    for (size_t i = 0; i < e->opt.n_adapters && rc == PC_E_NOTFOUND; i++) {
        pc_adapter *a = e->opt.adapters[i];
        if (a->serve != NULL)
            rc = a->serve(a, tenant, &req, &res, &err);
    }
    free_headers(&headers);
    if (rc == PC_OK) {
        uint64_t version = res.version;
        enum MHD_Result mr = send_response(conn, (unsigned)res.status, NULL, res.body, res.body_len,
                                           res.headers, res.n_headers, tenant, version);
        res.body = NULL; /* owned by the MHD response now */
        pc_response_clear(&res);
        return mr;
    }
    uint64_t version = res.version;
    pc_response_clear(&res);
    if (rc == PC_E_NOTFOUND) {
        pc_metric_add(e->m_unknown, 1);
        char msg[128];
        snprintf(msg, sizeof(msg), "tenant %s is not served here", tenant);
        return send_error(conn, 404, PC_E_NOTFOUND, tenant, 0, msg);
    }
    pc_metric_add(e->m_errors, 1);
    pc_warn("edge", "%s %s %s: %s: %s", tenant, method, r->uri, pc_err_name(rc), err.msg);
    if (rc == PC_E_UNAVAILABLE)
        return send_error(conn, 503, rc, tenant, version, "tenant is busy, retry");
    return send_error(conn, 502, rc, tenant, version,
                      rc == PC_E_LIMIT ? "tenant code exceeded a limit" : "tenant code failed");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    pc_edge *e = cls;
    edge_request *r = *con_cls;
    if (r == NULL)
        return MHD_NO; /* out of memory in on_uri */
    if (!r->started) {
        r->started = 1;
        pc_metric_add(e->m_requests, 1);
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->too_large || r->body_len + n > e->opt.max_body) {
            r->too_large = 1;
            free(r->body);
            r->body = NULL;
            r->body_len = 0;
            return MHD_YES;
        }
        if (r->body_len + n > r->body_cap) {
            size_t cap = r->body_cap ? r->body_cap : 4096;
            while (cap < r->body_len + n)
                cap *= 2;
            uint8_t *grown = realloc(r->body, cap);
            if (grown == NULL)
                return MHD_NO;
            r->body = grown;
            r->body_cap = cap;
        }
        memcpy(r->body + r->body_len, upload_data, n);
        r->body_len += n;
        return MHD_YES;
    }
    if (r->too_large) {
        pc_metric_add(e->m_too_large, 1);
        return send_error(conn, 413, PC_E_TOO_LARGE, NULL, 0, "request body too large");
    }
    return serve(e, conn, method, r);
}

int pc_edge_start(pc_edge **out, const pc_edge_options *opt, pc_err *err)
{
    char host[256];
    unsigned port = 0;
    if (pc_parse_host_port(opt->listen, host, sizeof(host), &port) != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "edge_listen '%s' is not host:port", opt->listen);
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0)
        return pc_err_set(err, PC_E_INVALID, "edge_listen host '%s' is not an IP address", host);
    pc_edge *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        freeaddrinfo(ai);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    e->opt = *opt;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = opt->threads ? opt->threads : (unsigned)(ncpu > 0 ? ncpu : 1);
    e->m_requests = pc_metrics_counter(opt->metrics, "popcast_edge_requests_total", NULL,
                                       "requests received by the edge listener");
    e->m_unknown = pc_metrics_counter(opt->metrics, "popcast_edge_unknown_tenant_total", NULL,
                                      "requests for no tenant or one not served here");
    e->m_errors = pc_metrics_counter(opt->metrics, "popcast_edge_handler_errors_total", NULL,
                                     "requests answered 502/503 (handler error, limit, busy)");
    e->m_too_large = pc_metrics_counter(opt->metrics, "popcast_edge_body_too_large_total", NULL,
                                        "requests refused for their body size");
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    e->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, e, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_URI_LOG_CALLBACK, on_uri, e,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, e, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (e->daemon == NULL) {
        free(e);
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot listen on %s (port in use?)", opt->listen);
    }
    *out = e;
    return PC_OK;
}

unsigned pc_edge_bound_port(const pc_edge *e)
{
    const union MHD_DaemonInfo *i = MHD_get_daemon_info(e->daemon, MHD_DAEMON_INFO_BIND_PORT);
    return i != NULL ? i->port : 0;
}

void pc_edge_stop(pc_edge *e)
{
    if (e == NULL)
        return;
    MHD_stop_daemon(e->daemon);
    free(e);
}
