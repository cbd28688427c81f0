/* edge.c - end-user HTTP on libmicrohttpd (see edge.h). */
#include "edge.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "append_log.h"
#include "checks.h"
#include "clock.h"
#include "http_client.h"
#include "json_text.h"
#include "log.h"
#include "names.h"
#include "strmap.h"
#include "ticker.h"

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

/* File descriptors kept for the rest of the agent (LMDB, nng, logs, exec
 * hooks) beyond the edge's connections. */
#define FD_RESERVE 256
/* "v4:255.255.255.255" or "v6:<first 64 bits>::/64" */
#define CLIENT_KEY_MAX 64

/* One open connection, from libmicrohttpd's notice that it started to the
 * one that it closed (before its socket is closed). */
typedef struct edge_conn {
    struct edge_conn *prev, *next;
    int fd;
    char client[CLIENT_KEY_MAX];
    /* When its current request began: accepted, or the previous answer
     * sent (keep-alive). Written by the connection's worker, read by the
     * sweeper. */
    _Atomic int64_t started_ms;
    bool timed_out;
} edge_conn;

struct pc_edge {
    pc_edge_options opt;
    struct MHD_Daemon *daemon;
    /* Connections: lock guards open, clients and conns. Taken on
     * libmicrohttpd's worker threads (accept, connection start and end)
     * and by the sweeper; never held while calling libmicrohttpd. */
    pc_mutex lock;
    unsigned open;
    pc_strmap *clients; /* client key -> open connections (as a pointer) */
    edge_conn *conns;
    /* The sweeper closes connections past their request deadline. */
    pc_ticker *sweeper;
    pc_metric *m_open, *m_refused_limit, *m_refused_client, *m_timeouts;
    pc_metric *m_requests, *m_unknown, *m_errors, *m_too_large, *m_quarantined;
    pc_metric *m_bad_status, *m_bad_header, *m_bad_count, *m_bad_bytes, *m_dropped;
    pc_metric *m_bad_framing, *m_bad_target, *m_bad_host, *m_bad_field, *m_head_too_large;
};

typedef struct edge_request {
    char *uri;        /* raw request target, query included */
    uintptr_t uri_at; /* where libmicrohttpd holds it (compared, never read) */
    int64_t began_ns; /* for the access log */
    /* What was answered, for the access log (send_response sets it). */
    unsigned status;
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
    size_t bytes;
    char method[16];
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

/* A client's address as text ("192.0.2.1", "2001:db8::1"). */
#define CLIENT_ADDR_MAX INET6_ADDRSTRLEN
static void client_address(const struct sockaddr *sa, char *out, size_t cap)
{
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
    else
        snprintf(out, cap, "other");
}

/* The key a client's connections are counted under: its IPv4 address, or
 * its IPv6 /64 (one host usually holds a whole /64). */
static void client_key(const struct sockaddr *sa, socklen_t len, char *out, size_t cap)
{
    char text[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text));
        snprintf(out, cap, "v4:%s", text);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], text, sizeof(text));
            snprintf(out, cap, "v4:%s", text);
        } else {
            struct in6_addr prefix = in6->sin6_addr;
            memset(&prefix.s6_addr[8], 0, 8);
            inet_ntop(AF_INET6, &prefix, text, sizeof(text));
            snprintf(out, cap, "v6:%s/64", text);
        }
    } else {
        snprintf(out, cap, "other");
    }
}

static unsigned client_open(pc_edge *e, const char *key)
{
    PC_CHECK_HELD(&e->lock);
    return (unsigned)(uintptr_t)pc_strmap_get(e->clients, key);
}

/* Gives back the slot a connection of client key held. */
static void release_slot(pc_edge *e, const char *key)
{
    PC_CHECK_HELD(&e->lock);
    unsigned n = client_open(e, key);
    if (n <= 1)
        pc_strmap_remove(e->clients, key);
    else
        pc_strmap_put(e->clients, key, (void *)(uintptr_t)(n - 1)); /* present: cannot fail */
    e->open--;
    pc_metric_set(e->m_open, e->open);
}

/* A slot taken at accept, not yet claimed by the connection it was taken
 * for. libmicrohttpd accepts and starts a connection on the same worker
 * thread, one after the other; when it fails in between (out of memory),
 * the next accept on the thread gives the slot back. */
static _Thread_local struct {
    bool held;
    char client[CLIENT_KEY_MAX];
} pending;

/* libmicrohttpd's accept policy: runs before a connection exists, so a
 * refusal just closes the socket (no HTTP answer, nothing to read). */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t len)
{
    pc_edge *e = cls;
    char key[CLIENT_KEY_MAX];
    client_key(addr, len, key, sizeof(key));
    pc_mutex_lock(&e->lock);
    if (pending.held) {
        release_slot(e, pending.client);
        pending.held = false;
    }
    enum MHD_Result ok = MHD_NO;
    unsigned mine = client_open(e, key);
    if (e->open >= e->opt.max_connections) {
        pc_metric_add(e->m_refused_limit, 1);
    } else if (e->opt.max_connections_per_client != 0 &&
               mine >= e->opt.max_connections_per_client) {
        pc_metric_add(e->m_refused_client, 1);
    } else if (pc_strmap_put(e->clients, key, (void *)(uintptr_t)(mine + 1)) != PC_OK) {
        pc_metric_add(e->m_refused_limit, 1); /* out of memory */
    } else {
        e->open++;
        pc_metric_set(e->m_open, e->open);
        pending.held = true;
        memcpy(pending.client, key, sizeof(key));
        ok = MHD_YES;
    }
    pc_mutex_unlock(&e->lock);
    return ok;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    pc_edge *e = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        *socket_context = NULL;
        if (!pending.held)
            return; /* not counted: nothing to give back */
        const union MHD_ConnectionInfo *fd =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        edge_conn *c = calloc(1, sizeof(*c));
        pc_mutex_lock(&e->lock);
        pending.held = false;
        if (c == NULL || fd == NULL) {
            /* Served without a deadline rather than refused: it is
             * accepted already. */
            release_slot(e, pending.client);
            pc_mutex_unlock(&e->lock);
            free(c);
            return;
        }
        c->fd = fd->connect_fd;
        memcpy(c->client, pending.client, sizeof(c->client));
        atomic_store(&c->started_ms, pc_mono_ms());
        c->next = e->conns;
        if (e->conns != NULL)
            e->conns->prev = c;
        e->conns = c;
        pc_mutex_unlock(&e->lock);
        *socket_context = c;
        return;
    }
    /* Closed: libmicrohttpd closes the socket after this returns, so the
     * sweeper, which shuts sockets down with the lock held, never touches
     * a descriptor that was reused. */
    edge_conn *c = *socket_context;
    if (c == NULL)
        return;
    pc_mutex_lock(&e->lock);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        e->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    release_slot(e, c->client);
    pc_mutex_unlock(&e->lock);
    free(c);
    *socket_context = NULL;
}

/* Closes every connection whose current request is past the deadline,
 * however it is trickling: the client sees its connection close. */
static void sweep_once(pc_edge *e)
{
    int64_t now = pc_mono_ms();
    pc_mutex_lock(&e->lock);
    for (edge_conn *c = e->conns; c != NULL; c = c->next) {
        if (c->timed_out || now - atomic_load(&c->started_ms) <= (int64_t)e->opt.request_timeout_ms)
            continue;
        c->timed_out = true;
        /* libmicrohttpd sees the shutdown as the peer going away and
         * closes the connection on its own thread. */
        shutdown(c->fd, SHUT_RDWR);
        pc_metric_add(e->m_timeouts, 1);
        pc_debug("edge", "closed a connection of %s: its request ran past %u ms", c->client,
                 e->opt.request_timeout_ms);
    }
    pc_mutex_unlock(&e->lock);
}

static void sweep(void *arg)
{
    sweep_once(arg);
}

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    edge_request *r = calloc(1, sizeof(*r));
    if (r != NULL && (r->uri = strdup(uri)) == NULL) {
        free(r);
        r = NULL;
    }
    if (r != NULL) {
        r->uri_at = (uintptr_t)uri;
        r->began_ns = pc_mono_ns();
    }
    return r;
}

/* The request whose answer this thread is queueing: libmicrohttpd calls
 * on_request, which answers, on the connection's thread. */
static _Thread_local edge_request *answering;

/* One access log line per request answered (docs/operations.md "Edge
 * access log"). The query string is left out: it can carry secrets. */
static void log_access(pc_edge *e, struct MHD_Connection *conn, const edge_request *r,
                       enum MHD_RequestTerminationCode toe)
{
    char when[96], client[CLIENT_ADDR_MAX] = "";
    pc_json_utc_time(when, sizeof(when), pc_wall_ms());
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci != NULL && ci->client_addr != NULL)
        client_address(ci->client_addr, client, sizeof(client));
    size_t path_len = strcspn(r->uri, "?");
    json_t *o = json_object();
    if (o == NULL)
        return;
    json_object_set_new(o, "time", json_string(when));
    json_object_set_new(o, "client", json_string(client));
    pc_json_set_text(o, "method", r->method);
    /* The client's bytes: kept as text, whatever they are. */
    char *path = strndup(r->uri, path_len);
    if (path != NULL)
        pc_json_set_text(o, "path", path);
    free(path);
    json_object_set_new(o, "tenant", r->tenant[0] ? json_string(r->tenant) : json_null());
    json_object_set_new(o, "status", json_integer(r->status));
    json_object_set_new(o, "bytes", json_integer((json_int_t)r->bytes));
    json_object_set_new(o, "version", json_integer((json_int_t)r->version));
    json_object_set_new(o, "us", json_integer((pc_mono_ns() - r->began_ns) / 1000));
    json_object_set_new(o, "completed", json_boolean(toe == MHD_REQUEST_TERMINATED_COMPLETED_OK));
    pc_append_log_json(e->opt.access_log, o);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        /* Answered: the connection's next request starts its deadline
         * now. */
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        edge_conn *c = ci != NULL ? ci->socket_context : NULL;
        if (c != NULL)
            atomic_store(&c->started_ms, pc_mono_ms());
    }
    edge_request *r = *con_cls;
    if (r == NULL)
        return;
    pc_edge *e = cls;
    if (e->opt.access_log != NULL && r->status != 0)
        log_access(e, conn, r, toe);
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
    if (answering != NULL) {
        answering->status = status;
        answering->bytes = len;
        answering->version = version;
        snprintf(answering->tenant, sizeof(answering->tenant), "%s", tenant ? tenant : "");
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
    /* The message may quote tenant code's bytes: pc_json_text keeps it
     * valid JSON whatever they are. */
    json_t *o = json_pack("{s:{s:s,s:o}}", "error", "code", pc_err_name(code), "message",
                          pc_json_text(message));
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

/* What a tailed request printed, kept until the edge knows the version
 * that ran (the lines go to the buffer after the answer). */
#define TAIL_PRINTS_MAX 16

typedef struct tail_note {
    bool on; /* the tenant is tailed */
    double started_ms;
    char *prints[TAIL_PRINTS_MAX];
    size_t print_lens[TAIL_PRINTS_MAX];
    size_t n_prints;
    uint64_t prints_lost;
} tail_note;

static void tail_print(void *arg, const char *text, size_t len)
{
    tail_note *n = arg;
    char *copy = n->n_prints < TAIL_PRINTS_MAX ? malloc(len + 1) : NULL;
    if (copy == NULL) {
        n->prints_lost++;
        return;
    }
    memcpy(copy, text, len);
    copy[len] = '\0';
    n->prints[n->n_prints] = copy;
    n->print_lens[n->n_prints++] = len;
}

/* A tailed request's lines: what it printed, its error (error: NULL when
 * it did not fail), and its request line if sampled. */
static void tail_request(pc_edge *e, tail_note *n, const char *tenant, const char *method,
                         const char *path, unsigned status, uint64_t version, const char *error)
{
    if (!n->on)
        return;
    int64_t now_ms = pc_mono_ms();
    pc_tail_line l = {.tenant = tenant,
                      .version = version,
                      .time_unix_ms = pc_wall_ms(),
                      .method = method,
                      .path = path,
                      .status = status,
                      .duration_us = (uint64_t)((pc_mono_ms_frac() - n->started_ms) * 1000.0)};
    for (size_t i = 0; i < n->n_prints; i++) {
        l.kind = POPCAST__TAIL_KIND__TAIL_KIND_PRINT;
        l.message = n->prints[i];
        l.message_len = n->print_lens[i];
        pc_tail_buffer_add(e->opt.tail, &l, now_ms);
        free(n->prints[i]);
    }
    n->n_prints = 0;
    if (n->prints_lost > 0)
        pc_tail_buffer_count_dropped(e->opt.tail, tenant, n->prints_lost, now_ms);
    if (error != NULL) {
        l.kind = POPCAST__TAIL_KIND__TAIL_KIND_ERROR;
        l.message = error;
        l.message_len = strlen(error);
        pc_tail_buffer_add(e->opt.tail, &l, now_ms);
    }
    if (pc_tail_buffer_sample(e->opt.tail, tenant, now_ms)) {
        l.kind = POPCAST__TAIL_KIND__TAIL_KIND_REQUEST;
        l.message = NULL;
        l.message_len = 0;
        pc_tail_buffer_add(e->opt.tail, &l, now_ms);
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
    tail_note note = {.on = pc_tail_buffer_wanted(e->opt.tail, tenant, pc_mono_ms())};
    if (note.on) {
        note.started_ms = pc_mono_ms_frac();
        req.print = tail_print;
        req.print_arg = &note;
    }
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
    /* Requests that ran the version's code count for it (traffic.h);
     * nothing ran when none serves, it is quarantined or all its isolates
     * are busy. */
    if (rc == PC_OK || rc == PC_E_RUNTIME || rc == PC_E_LIMIT)
        pc_traffic_count(e->opt.traffic, tenant, res.version,
                         why != NULL || rc == PC_E_RUNTIME ? PC_TRAFFIC_ERROR
                         : rc == PC_E_LIMIT                ? PC_TRAFFIC_LIMIT
                         : res.status >= 500               ? PC_TRAFFIC_5XX
                                                           : PC_TRAFFIC_OK);
    if (why != NULL) {
        pc_metric_add(refused, 1);
        pc_metric_add(e->m_errors, 1);
        pc_warn("edge", "%s %s: refused the handler's answer (status %d): %s", tenant, method,
                res.status, why);
        uint64_t version = res.version;
        pc_response_clear(&res);
        tail_request(e, &note, tenant, method, r->uri, 502, version, why);
        return send_error(conn, 502, PC_E_RUNTIME, tenant, version, why);
    }
    if (rc == PC_OK) {
        uint64_t version = res.version;
        tail_request(e, &note, tenant, method, r->uri, (unsigned)res.status, version, NULL);
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
        tail_request(e, &note, tenant, method, r->uri, 404, 0, NULL);
        return send_error(conn, 404, PC_E_NOTFOUND, tenant, 0, msg);
    }
    if (rc == PC_E_QUARANTINED) {
        /* Counted, not logged per request: the engine logged the
         * quarantine once, and a busy tenant would flood the log. */
        pc_metric_add(e->m_quarantined, 1);
        tail_request(e, &note, tenant, method, r->uri, 503, version, err.msg);
        return send_error(conn, 503, rc, tenant, version, err.msg);
    }
    pc_metric_add(e->m_errors, 1);
    pc_warn("edge", "%s %s %s: %s: %s", tenant, method, r->uri, pc_err_name(rc), err.msg);
    tail_request(e, &note, tenant, method, r->uri, rc == PC_E_UNAVAILABLE ? 503 : 502, version,
                 err.msg);
    if (rc == PC_E_UNAVAILABLE)
        return send_error(conn, 503, rc, tenant, version, "tenant is busy, retry");
    return send_error(conn, 502, rc, tenant, version,
                      rc == PC_E_LIMIT ? "tenant code exceeded a limit" : "tenant code failed");
}

/* What check_request learns from the header fields. */
typedef struct field_scan {
    size_t count, bytes_extra; /* fields; cookie bytes libmicrohttpd copies */
    unsigned host, tenant, content_length, transfer_encoding;
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
    else if (strcasecmp(key, "X-Popcast-Tenant") == 0)
        f->tenant++;
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
    /* Routing must not depend on which copy a proxy in front reads. */
    if (f.tenant > 1)
        return refuse(conn, e->m_bad_host, 400, "more than one X-Popcast-Tenant");
    *refused = false;
    return MHD_YES;
}

static enum MHD_Result handle_request(pc_edge *e, struct MHD_Connection *conn, const char *method,
                                      const char *version, const char *upload_data,
                                      size_t *upload_data_size, edge_request *r)
{
    if (!r->started) {
        r->started = 1;
        snprintf(r->method, sizeof(r->method), "%s", method);
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

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    edge_request *r = *con_cls;
    if (r == NULL)
        return MHD_NO; /* out of memory in on_uri */
    answering = r;
    enum MHD_Result rc =
        handle_request(cls, conn, method, version, upload_data, upload_data_size, r);
    answering = NULL;
    return rc;
}

/* Makes room for max_connections sockets under the process's open file
 * limit, raising the soft limit up to the hard one if needed. */
static int ensure_fd_limit(unsigned max_connections, pc_err *err)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return PC_OK; /* unknown: let accept() report it */
    rlim_t need = (rlim_t)max_connections + FD_RESERVE;
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need)
            return pc_err_set(err, PC_E_INVALID,
                              "edge_max_connections %u needs %llu open files, and the limit is "
                              "%llu: raise it (ulimit -n, LimitNOFILE=) or lower "
                              "edge_max_connections",
                              max_connections, (unsigned long long)need,
                              (unsigned long long)rl.rlim_max);
        rl.rlim_cur = need;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            return pc_err_set(err, PC_E_IO, "cannot raise the open file limit to %llu",
                              (unsigned long long)need);
        pc_info("edge", "raised the open file limit to %llu for edge_max_connections",
                (unsigned long long)need);
    }
    return PC_OK;
}

static int check_options(const pc_edge_options *opt, pc_err *err)
{
    if (opt->response_headers_max == 0 || opt->response_header_bytes == 0 ||
        opt->response_header_bytes > PC_EDGE_RESPONSE_HEADER_BYTES_MAX)
        return pc_err_set(err, PC_E_INVALID,
                          "response header limits must be at least 1 (and bytes at most %d)",
                          PC_EDGE_RESPONSE_HEADER_BYTES_MAX);
    if (opt->max_connections == 0 || opt->max_connections > PC_EDGE_MAX_CONNECTIONS)
        return pc_err_set(err, PC_E_INVALID, "edge_max_connections must be 1 to %d",
                          PC_EDGE_MAX_CONNECTIONS);
    if (opt->request_timeout_ms == 0)
        return pc_err_set(err, PC_E_INVALID, "edge_request_timeout_ms must be at least 1");
    return PC_OK;
}

static void edge_free(pc_edge *e)
{
    pc_ticker_stop(e->sweeper);
    /* Closes every connection: each one's end is notified, which gives
     * its slot back and frees it. */
    if (e->daemon != NULL)
        MHD_stop_daemon(e->daemon);
    while (e->conns != NULL) { /* none left; defensive */
        edge_conn *c = e->conns;
        e->conns = c->next;
        free(c);
    }
    pc_strmap_free(e->clients);
    pc_mutex_destroy(&e->lock);
    free(e);
}

int pc_edge_start(pc_edge **out, const pc_edge_options *opt, pc_err *err)
{
    char host[256];
    unsigned port = 0;
    int rc;
    if (pc_parse_host_port(opt->listen, host, sizeof(host), &port) != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "edge_listen '%s' is not host:port", opt->listen);
    if ((rc = check_options(opt, err)) != PC_OK ||
        (rc = ensure_fd_limit(opt->max_connections, err)) != PC_OK)
        return rc;
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%u", port);
    if (getaddrinfo(host, portstr, &hints, &ai) != 0)
        return pc_err_set(err, PC_E_INVALID, "edge_listen host '%s' is not an IP address", host);
    pc_edge *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->clients = pc_strmap_new()) == NULL) {
        free(e);
        freeaddrinfo(ai);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    e->opt = *opt;
    pc_mutex_init(&e->lock);
    /* A deadline is enforced within a quarter of it (at most a second)
     * after it passed. */
    unsigned sweep_ms = opt->request_timeout_ms / 4;
    sweep_ms = sweep_ms < 10 ? 10 : sweep_ms > 1000 ? 1000 : sweep_ms;
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned threads = opt->threads ? opt->threads : (unsigned)(ncpu > 0 ? ncpu : 1);
    e->m_requests = pc_metrics_counter(opt->metrics, "popcast_edge_requests_total", NULL,
                                       "requests received by the edge listener");
    e->m_unknown = pc_metrics_counter(opt->metrics, "popcast_edge_unknown_tenant_total", NULL,
                                      "requests for no tenant or one not served here");
    e->m_quarantined =
        pc_metrics_counter(opt->metrics, "popcast_edge_quarantined_total", NULL,
                           "requests answered 503 because the tenant's version is quarantined");
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
    e->m_open =
        pc_metrics_gauge(opt->metrics, "popcast_edge_connections", NULL, "open edge connections");
    static const char *const refused_help =
        "connections closed at accept: limit (edge_max_connections), client "
        "(edge_max_connections_per_client)";
    e->m_refused_limit = pc_metrics_counter(opt->metrics, "popcast_edge_connections_refused_total",
                                            "reason=\"limit\"", refused_help);
    e->m_refused_client = pc_metrics_counter(opt->metrics, "popcast_edge_connections_refused_total",
                                             "reason=\"client\"", refused_help);
    e->m_timeouts = pc_metrics_counter(opt->metrics, "popcast_edge_request_timeouts_total", NULL,
                                       "connections closed because a request ran past "
                                       "edge_request_timeout_ms");
    if ((rc = pc_ticker_start(&e->sweeper, sweep_ms, sweep, e, err)) != PC_OK) {
        freeaddrinfo(ai);
        edge_free(e);
        return rc;
    }
    /* libmicrohttpd's own limit splits between its threads: it is set so
     * that it never refuses before the edge's count (on_accept) does. Its
     * idle timeout, in whole seconds, is a backstop for the sweeper. */
    unsigned long mhd_limit = (unsigned long)opt->max_connections * threads;
    unsigned idle_s = (opt->request_timeout_ms + 999) / 1000;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    e->daemon = MHD_start_daemon(
        flags, (uint16_t)port, on_accept, e, on_request, e, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_URI_LOG_CALLBACK, on_uri, e,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, e, MHD_OPTION_NOTIFY_CONNECTION, on_connection,
        e, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(mhd_limit > UINT32_MAX / 2 ? UINT32_MAX / 2 : mhd_limit),
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)(REQUEST_BUDGET + opt->response_header_bytes + RESPONSE_SLACK),
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (e->daemon == NULL) {
        edge_free(e);
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

int pc_edge_probe(pc_edge *e, int timeout_ms, pc_err *err)
{
    char host[256];
    unsigned port = 0;
    if (pc_parse_host_port(e->opt.listen, host, sizeof(host), &port) != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "edge_listen '%s' is not host:port", e->opt.listen);
    bool v6 = strchr(host, ':') != NULL;
    const char *to = host;
    if (strcmp(host, "0.0.0.0") == 0 || host[0] == '\0')
        to = "127.0.0.1";
    else if (strcmp(host, "::") == 0)
        to = "::1";
    char base[320];
    snprintf(base, sizeof(base), "http://%s%s%s:%u", v6 ? "[" : "", to, v6 ? "]" : "",
             pc_edge_bound_port(e));
    pc_http_result r;
    pc_err why;
    if (pc_http_call(base, "GET", EDGE_HEALTH_PATH, NULL, NULL, 0, timeout_ms, &r, &why) != PC_OK)
        return pc_err_set(err, PC_E_UNAVAILABLE, "the edge does not answer: %s", why.msg);
    int status = r.status;
    pc_http_result_free(&r);
    if (status != 200)
        return pc_err_set(err, PC_E_UNAVAILABLE, "the edge answered its health path %d", status);
    return PC_OK;
}

void pc_edge_stop(pc_edge *e)
{
    if (e == NULL)
        return;
    edge_free(e);
}
