/* api_watch.c - the API's streams (watch.h): GET /v1/watch, the event
 * stream (docs/api.md "Watch"), and GET /v1/tenants/{tenant}/tail, a
 * tenant's log lines from the agents (docs/api.md "Tail"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "watch.h"

typedef struct watch_start {
    pc_watch *watch;
    uint64_t from;
    pc_watch_scope scope;
} watch_start;

static void stream_ready(void *arg, pc_httpd_stream *st)
{
    watch_start *s = arg;
    if (st != NULL)
        pc_watch_add(s->watch, st, s->from, &s->scope);
    free(s);
}

/* Where to start: ?from=SEQ, else Last-Event-ID (a reconnecting
 * EventSource sends the last id it got), else the head now (live only). */
static int start_seq(api_call *call, uint64_t *from, pc_err *err)
{
    char text[32];
    const char *last = pc_httpd_header(call->rq, "Last-Event-ID");
    int rc = call->match->query != NULL
                 ? pc_httpd_query_text(call->match->query, "from", text, sizeof(text))
                 : PC_E_NOTFOUND;
    if (rc != PC_E_NOTFOUND) {
        if (rc != PC_OK || api_parse_u64(text, from) != 0)
            return pc_err_set(err, PC_E_INVALID, "from must be a seq: digits only");
        return PC_OK;
    }
    if (last != NULL) {
        if (api_parse_u64(last, from) != 0)
            return pc_err_set(err, PC_E_INVALID, "Last-Event-ID must be a seq: digits only");
        return PC_OK;
    }
    return pc_store_applied_seq(call->api->store, from, err);
}

/* A stream's start for call from seq `from` (UINT64_MAX - 1 for a tail,
 * which reads no entries), or NULL when call was answered: this
 * controller serves no streams, `from` is compacted, or max_watchers
 * stream already. */
static watch_start *start_for(api_call *call, uint64_t from)
{
    pc_watch *w = call->api->opt.watch;
    pc_err err;
    if (w == NULL) {
        pc_httpd_error(call->rq, PC_E_NOTFOUND, "this controller serves no event streams");
        return NULL;
    }
    if (pc_watch_check(w, from, &err) != PC_OK) {
        pc_httpd_error(call->rq, err.code, "%s", err.msg);
        return NULL;
    }
    watch_start *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return NULL;
    }
    s->watch = w;
    s->from = from;
    return s;
}

void api_get_watch(api_call *call)
{
    uint64_t from = 0;
    pc_err err;
    if (start_seq(call, &from, &err) != PC_OK) {
        pc_httpd_error(call->rq, err.code, "%s", err.msg);
        return;
    }
    watch_start *s = start_for(call, from);
    if (s == NULL)
        return;
    /* ?tenant=NAME: that tenant's events only (a scoped token's own). */
    char one[PC_TENANT_MAX + 1];
    int qrc = call->match->query != NULL
                  ? pc_httpd_query_text(call->match->query, "tenant", one, sizeof(one))
                  : PC_E_NOTFOUND;
    if (qrc != PC_E_NOTFOUND) {
        if (qrc != PC_OK || !pc_tenant_name_valid(one)) {
            free(s);
            pc_httpd_error(call->rq, PC_E_INVALID, "tenant must be a tenant name");
            return;
        }
        if (!api_may_use_tenant(call->who, one)) {
            free(s);
            pc_httpd_error(call->rq, PC_E_NOTFOUND, "tenant %s not found", one);
            return;
        }
        snprintf(s->scope.tenants[0], sizeof(s->scope.tenants[0]), "%s", one);
        s->scope.n = 1;
    } else {
        s->scope.all = call->who->admin;
        const Popcast__TokenRecord *t = call->who->token;
        for (size_t i = 0;
             !s->scope.all && t != NULL && i < t->n_tenants && i < PC_WATCH_MAX_TENANTS; i++) {
            snprintf(s->scope.tenants[i], sizeof(s->scope.tenants[i]), "%s", t->tenants[i]);
            s->scope.n++;
        }
    }
    pc_httpd_stream_start(call->rq, "text/event-stream", NULL, stream_ready, s);
}

static void tail_ready(void *arg, pc_httpd_stream *st)
{
    watch_start *s = arg;
    if (st != NULL)
        pc_watch_add_tail(s->watch, st, s->scope.tenants[0]);
    free(s);
}

void api_get_tail(api_call *call)
{
    watch_start *s = start_for(call, UINT64_MAX - 1);
    if (s == NULL)
        return;
    snprintf(s->scope.tenants[0], sizeof(s->scope.tenants[0]), "%s",
             pc_route_param(call->match, "tenant"));
    s->scope.n = 1;
    pc_httpd_stream_start(call->rq, "text/event-stream", NULL, tail_ready, s);
}
