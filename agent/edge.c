/* edge.c - end-user HTTP on libmicrohttpd (see edge.h). */
#include "edge.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"
#include "names.h"

#define MAX_REQUEST_HEADERS 128
#define REQUEST_HEAD_MAX    (32 * 1024)
#define EDGE_HEALTH_PATH    "/_popcast/health"

/* libmicrohttpd builds a response's head in the connection's memory pool,
 * next to what is left of the request, and closes the connection without
 * an answer when it does not fit. The pool is sized so that a request
 * within REQUEST_BUDGET always leaves room for the largest response head
 * the options allow plus the edge's own fields (RESPONSE_SLACK). */
#define REQUEST_BUDGET (64 * 1024)
#define RESPONSE_SLACK (8 * 1024)
/* What libmicrohttpd spends per header field, query argument or cookie
 * besides its bytes (a list entry, rounded up to its alignment). */
#define ENTRY_COST 64

struct pc_edge {
    pc_edge_options opt;
    struct MHD_Daemon *daemon;
    pc_metric *m_requests, *m_unknown, *m_errors, *m_too_large;
    pc_metric *m_bad_status, *m_bad_header, *m_bad_count, *m_bad_bytes, *m_dropped;
    pc_metric *m_bad_framing, *m_bad_target, *m_bad_host, *m_bad_field, *m_head_too_large;
};

typedef struct edge_request {
    char *uri;        /* raw request target, query included */
    uintptr_t uri_at; /* where libmicrohttpd holds it (compared, never read) */
    int started;
    int refused; /* answered by check_request */
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
    if (r != NULL)
        r->uri_at = (uintptr_t)uri;
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
                                     uint64_t version, bool close)
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
    if (close)
        MHD_add_response_header(res, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(conn, status, res);
    MHD_destroy_response(res);
    return rc;
}

static enum MHD_Result send_error_close(struct MHD_Connection *conn, unsigned status, int code,
                                        const char *tenant, uint64_t version, const char *message,
                                        bool close)
{
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", pc_err_name(code), "message", message);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text == NULL)
        return MHD_NO;
    size_t len = strlen(text);
    return send_response(conn, status, "application/json", text, len, NULL, 0, tenant, version,
                         close);
}

static enum MHD_Result send_error(struct MHD_Connection *conn, unsigned status, int code,
                                  const char *tenant, uint64_t version, const char *message)
{
    return send_error_close(conn, status, code, tenant, version, message, false);
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

/* RFC 9110 5.6.2: tchar. */
static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool field_name_valid(const char *name)
{
    if (name[0] == '\0')
        return false;
    for (const unsigned char *p = (const unsigned char *)name; *p != '\0'; p++)
        if (!is_tchar(*p))
            return false;
    return true;
}

/* RFC 9110 5.5: no control character but HTAB (obs-text is allowed). */
static bool field_value_valid(const char *value, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)value[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* Response headers the edge owns: its own X-Popcast-*, and framing and
 * hop-by-hop fields (RFC 9110 7.6.1), which describe the connection the
 * edge manages, not the tenant's answer. */
static bool header_owned_by_edge(const char *name)
{
    static const char *const owned[] = {
        "content-length", "transfer-encoding", "connection", "keep-alive",
        "upgrade",        "proxy-connection",  "te",         "trailer"};
    if (strncasecmp(name, "x-popcast-", 10) == 0)
        return true;
    for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++)
        if (strcasecmp(name, owned[i]) == 0)
            return true;
    return false;
}

/* Checks a handler's answer before any of it reaches the client. Drops
 * (frees) the headers the edge owns from res; returns NULL when the rest
 * may be sent, else why not (for the client) with *counter to count it. */
static const char *check_response(pc_edge *e, pc_response *res, pc_metric **counter, char *msg,
                                  size_t cap)
{
    if (res->status < 200 || res->status > 599) {
        /* 1xx are interim answers: sent alone they leave the client
         * without a final response (and libmicrohttpd calls the handler
         * again after a 102, forever). Nothing else is HTTP. */
        *counter = e->m_bad_status;
        return "tenant code answered a status outside 200-599";
    }
    /* Every header is checked before any is dropped: res stays whole for
     * pc_response_clear on a refusal. */
    for (size_t i = 0; i < res->n_headers; i++) {
        pc_header *h = &res->headers[i];
        if (!field_name_valid(h->name) || !field_value_valid(h->value, strlen(h->value))) {
            *counter = e->m_bad_header;
            return "tenant code set a response header that is not valid HTTP (a name that is "
                   "not a token, or a value with a control character)";
        }
    }
    size_t kept = 0;
    for (size_t i = 0; i < res->n_headers; i++) {
        pc_header *h = &res->headers[i];
        if (header_owned_by_edge(h->name)) {
            pc_metric_add(e->m_dropped, 1);
            free(h->name);
            free(h->value);
            continue;
        }
        res->headers[kept++] = *h;
    }
    res->n_headers = kept;
    if (kept > e->opt.response_headers_max) {
        *counter = e->m_bad_count;
        snprintf(msg, cap, "tenant code set more than %u response headers",
                 e->opt.response_headers_max);
        return msg;
    }
    size_t bytes = 0;
    for (size_t i = 0; i < kept; i++)
        bytes += strlen(res->headers[i].name) + strlen(res->headers[i].value) + 4;
    if (bytes > e->opt.response_header_bytes) {
        *counter = e->m_bad_bytes;
        snprintf(msg, cap, "tenant code set more than %zu bytes of response headers",
                 e->opt.response_header_bytes);
        return msg;
    }
    return NULL;
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
        return send_response(conn, 200, "application/json", ok, strlen(ok), NULL, 0, NULL, 0,
                             false);
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
    pc_metric *refused = NULL;
    char msg[160];
    const char *why = rc == PC_OK ? check_response(e, &res, &refused, msg, sizeof(msg)) : NULL;
    if (why != NULL) {
        pc_metric_add(refused, 1);
        pc_metric_add(e->m_errors, 1);
        pc_warn("edge", "%s %s: refused the handler's answer (status %d): %s", tenant, method,
                res.status, why);
        uint64_t version = res.version;
        pc_response_clear(&res);
        return send_error(conn, 502, PC_E_RUNTIME, tenant, version, why);
    }
    if (rc == PC_OK) {
        uint64_t version = res.version;
        enum MHD_Result mr = send_response(conn, (unsigned)res.status, NULL, res.body, res.body_len,
                                           res.headers, res.n_headers, tenant, version, false);
        res.body = NULL; /* owned by the MHD response now */
        pc_response_clear(&res);
        return mr;
    }
    uint64_t version = res.version;
    pc_response_clear(&res);
    if (rc == PC_E_NOTFOUND) {
        pc_metric_add(e->m_unknown, 1);
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

/* What check_request learns from the header fields. */
typedef struct field_scan {
    size_t count, bytes_extra; /* fields; cookie bytes libmicrohttpd copies */
    unsigned host, content_length, transfer_encoding;
    const char *te;
    bool invalid;
} field_scan;

static enum MHD_Result scan_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                  size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    field_scan *f = cls;
    f->count++;
    /* Sizes, not strlen: a NUL inside a name or value is refused, never
     * cut short. */
    bool name_ok = key_size > 0;
    for (size_t i = 0; i < key_size && name_ok; i++)
        name_ok = is_tchar((unsigned char)key[i]);
    if (!name_ok || value == NULL || !field_value_valid(value, value_size)) {
        f->invalid = true;
        return MHD_NO;
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_HOST) == 0)
        f->host++;
    else if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        f->content_length++;
    else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->transfer_encoding++;
        f->te = value;
    } else if (strcasecmp(key, MHD_HTTP_HEADER_COOKIE) == 0)
        f->bytes_extra += value_size + 1;
    return MHD_YES;
}

static enum MHD_Result refuse(struct MHD_Connection *conn, pc_metric *counter, unsigned status,
                              const char *message)
{
    pc_metric_add(counter, 1);
    pc_debug("edge", "refused a request: %u %s", status, message);
    /* The rest of the connection cannot be trusted to be framed as the
     * edge reads it: close it after the answer. */
    return send_error_close(conn, status, status == 431 ? PC_E_TOO_LARGE : PC_E_INVALID, NULL, 0,
                            message, true);
}

/* Checks a request's head before anything else looks at it (RFC 9112):
 * MHD_YES to go on, else the answer is queued (or MHD_NO to drop the
 * connection). libmicrohttpd 0.9.75 accepts what follows, so the edge
 * refuses it itself. */
static enum MHD_Result check_request(pc_edge *e, struct MHD_Connection *conn, const char *version,
                                     edge_request *r, bool *refused)
{
    *refused = true;
    /* libmicrohttpd parses the request line in place and hands out the
     * target and the version as pointers into it: the version starts one
     * byte (the space) after the target's last byte. A NUL in the target
     * makes the string end earlier, and the target would be cut short. */
    if ((uintptr_t)version != r->uri_at + strlen(r->uri) + 1)
        return refuse(conn, e->m_bad_target, 400, "the request target holds a NUL byte");
    for (const unsigned char *p = (const unsigned char *)r->uri; *p != '\0'; p++)
        if (*p <= 0x20 || *p == 0x7f)
            return refuse(conn, e->m_bad_target, 400,
                          "the request target holds a space or a control character");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    size_t head = ci != NULL ? ci->header_size : 0;
    if (head > REQUEST_HEAD_MAX)
        return refuse(conn, e->m_head_too_large, 431, "the request head is over 32 KiB");
    field_scan f = {.count = 0};
    MHD_get_connection_values_n(conn, MHD_HEADER_KIND, scan_field, &f);
    if (f.invalid)
        return refuse(conn, e->m_bad_field, 400,
                      "a header field name is not a token, or a value holds a control character");
    if (f.count > MAX_REQUEST_HEADERS)
        return refuse(conn, e->m_head_too_large, 431, "more than 128 header fields");
    int args = MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, NULL, NULL);
    int cookies = MHD_get_connection_values(conn, MHD_COOKIE_KIND, NULL, NULL);
    size_t entries = f.count + (size_t)(args > 0 ? args : 0) + (size_t)(cookies > 0 ? cookies : 0);
    if (head + f.bytes_extra + ENTRY_COST * entries > REQUEST_BUDGET)
        return refuse(conn, e->m_head_too_large, 431,
                      "the request head has too many query arguments, cookies or fields");
    /* RFC 9112 6.1 and 6.3: one way to frame a body, or none. */
    if (f.content_length > 0 && f.transfer_encoding > 0)
        return refuse(conn, e->m_bad_framing, 400,
                      "a request must not carry both Content-Length and Transfer-Encoding");
    if (f.content_length > 1)
        return refuse(conn, e->m_bad_framing, 400, "more than one Content-Length");
    if (f.transfer_encoding > 1 || (f.transfer_encoding == 1 && strcasecmp(f.te, "chunked") != 0))
        return refuse(conn, e->m_bad_framing, 400,
                      "the only Transfer-Encoding accepted is a single \"chunked\"");
    /* RFC 9112 3.2: exactly one Host in HTTP/1.1, at most one before. */
    if (f.host > 1 || (f.host == 0 && strcmp(version, MHD_HTTP_VERSION_1_1) == 0))
        return refuse(conn, e->m_bad_host, 400, "an HTTP/1.1 request needs exactly one Host");
    *refused = false;
    return MHD_YES;
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
        bool refused;
        enum MHD_Result rc = check_request(e, conn, version, r, &refused);
        if (refused)
            r->refused = 1;
        return rc;
    }
    if (r->refused) {
        *upload_data_size = 0; /* answered already; nothing is read */
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
    if (opt->response_headers_max == 0 || opt->response_header_bytes == 0 ||
        opt->response_header_bytes > PC_EDGE_RESPONSE_HEADER_BYTES_MAX)
        return pc_err_set(err, PC_E_INVALID,
                          "response header limits must be at least 1 (and bytes at most %d)",
                          PC_EDGE_RESPONSE_HEADER_BYTES_MAX);
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
    e->m_bad_status =
        pc_metrics_counter(opt->metrics, "popcast_edge_bad_responses_total", "reason=\"status\"",
                           "handler answers refused with 502 (status, header, header count or "
                           "bytes)");
    e->m_bad_header = pc_metrics_counter(opt->metrics, "popcast_edge_bad_responses_total",
                                         "reason=\"header\"", NULL);
    e->m_bad_count = pc_metrics_counter(opt->metrics, "popcast_edge_bad_responses_total",
                                        "reason=\"header_count\"", NULL);
    e->m_bad_bytes = pc_metrics_counter(opt->metrics, "popcast_edge_bad_responses_total",
                                        "reason=\"header_bytes\"", NULL);
    static const char *const bad_requests_help =
        "requests refused before any tenant code: framing (Content-Length, Transfer-Encoding), "
        "target, host, header (field syntax), too_large (431)";
    e->m_bad_framing = pc_metrics_counter(opt->metrics, "popcast_edge_bad_requests_total",
                                          "reason=\"framing\"", bad_requests_help);
    e->m_bad_target = pc_metrics_counter(opt->metrics, "popcast_edge_bad_requests_total",
                                         "reason=\"target\"", bad_requests_help);
    e->m_bad_host = pc_metrics_counter(opt->metrics, "popcast_edge_bad_requests_total",
                                       "reason=\"host\"", bad_requests_help);
    e->m_bad_field = pc_metrics_counter(opt->metrics, "popcast_edge_bad_requests_total",
                                        "reason=\"header\"", bad_requests_help);
    e->m_head_too_large = pc_metrics_counter(opt->metrics, "popcast_edge_bad_requests_total",
                                             "reason=\"too_large\"", bad_requests_help);
    e->m_dropped =
        pc_metrics_counter(opt->metrics, "popcast_edge_response_headers_dropped_total", NULL,
                           "handler-set X-Popcast-*, framing and hop-by-hop headers dropped");
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    e->daemon = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_request, e, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_URI_LOG_CALLBACK, on_uri, e,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, e, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(REQUEST_BUDGET + opt->response_header_bytes + RESPONSE_SLACK),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (e->daemon == NULL) {
        free(e);
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot listen on %s (port in use?)", opt->listen);
    }
    *out = e;
    return PC_OK;
}

void pc_edge_stop(pc_edge *e)
{
    if (e == NULL)
        return;
    MHD_stop_daemon(e->daemon);
    free(e);
}
