/* upstream.c - a relay's req/rep links to its parents and controllers. */
#include "upstream.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nng_close.h"
#include "protocol_limits.h"

/* A send waits this long at most for a connection: an upstream that is
 * down costs this, not a whole request timeout, before the next is asked. */
#define CONNECT_MS 1000

typedef struct ulink {
    char *url;
    bool parent;
    nng_socket sock;
    bool open;
    _Atomic unsigned failures; /* in a row: the health score */
} ulink;

struct pc_upstream {
    pc_upstream_options opt;
    ulink *links; /* parents, then controllers */
    size_t n, n_parents;
    pthread_mutex_t lock;
    char last[PC_UPSTREAM_MAX + 1];
};

static int open_link(pc_upstream *u, ulink *l, const char *url, bool parent)
{
    l->parent = parent;
    if ((l->url = strdup(url)) == NULL)
        return NNG_ENOMEM;
    int rv = nng_req0_open(&l->sock);
    if (rv != 0)
        return rv;
    l->open = true;
    if (rv == 0)
        rv = nng_socket_set_size(l->sock, NNG_OPT_RECVMAXSZ, u->opt.recv_max);
    if (rv == 0)
        rv = nng_socket_set_ms(l->sock, NNG_OPT_REQ_RESENDTIME, 2000);
    if (rv == 0)
        rv = nng_socket_set_ms(l->sock, NNG_OPT_RECONNMINT, PC_REDIAL_MIN_MS);
    if (rv == 0)
        rv = nng_socket_set_ms(l->sock, NNG_OPT_RECONNMAXT, PC_REDIAL_MAX_MS);
    pc_err derr;
    if (rv == 0 && pc_nng_dial(l->sock, url, u->opt.tls, NNG_FLAG_NONBLOCK, &derr) != PC_OK)
        rv = NNG_EINVAL;
    return rv;
}

int pc_upstream_open(pc_upstream **out, const pc_upstream_options *opt, pc_err *err)
{
    pc_upstream *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    u->opt = *opt;
    pthread_mutex_init(&u->lock, NULL);
    u->n_parents = opt->parents != NULL ? opt->parents->count : 0;
    size_t total = u->n_parents + opt->controllers->count;
    u->links = calloc(total ? total : 1, sizeof(*u->links));
    if (u->links == NULL) {
        pc_upstream_close(u);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < total; i++) {
        bool parent = i < u->n_parents;
        const char *url =
            parent ? opt->parents->items[i] : opt->controllers->items[i - u->n_parents];
        u->n = i + 1;
        int rv = open_link(u, &u->links[i], url, parent);
        if (rv != 0) {
            pc_upstream_close(u);
            return pc_err_set(err, PC_E_INVALID, "cannot use upstream %s: %s", url,
                              nng_strerror(rv));
        }
    }
    *out = u;
    return PC_OK;
}

void pc_upstream_close(pc_upstream *u)
{
    if (u == NULL)
        return;
    for (size_t i = 0; i < u->n; i++) {
        if (u->links[i].open)
            pc_nng_close_bounded(u->links[i].sock, PC_NNG_CLOSE_MS, "an upstream connection");
        free(u->links[i].url);
    }
    free(u->links);
    pthread_mutex_destroy(&u->lock);
    free(u);
}

/* An in-flight request on one link: its own context and aio. */
typedef struct req {
    ulink *l;
    nng_ctx ctx;
    nng_aio *aio;
    bool ctx_open, sent, failed;
    char why[128];
} req;

static int req_start(pc_upstream *u, req *r, ulink *l, const Popcast__SyncCall *call)
{
    memset(r, 0, sizeof(*r));
    r->l = l;
    int rv = nng_ctx_open(&r->ctx, l->sock);
    r->ctx_open = rv == 0;
    if (rv == 0)
        rv = nng_aio_alloc(&r->aio, NULL, NULL);
    nng_msg *msg = NULL;
    size_t len = popcast__sync_call__get_packed_size(call);
    if (rv == 0)
        rv = nng_msg_alloc(&msg, len);
    if (rv != 0) {
        r->failed = true;
        snprintf(r->why, sizeof(r->why), "%s", nng_strerror(rv));
        return rv;
    }
    popcast__sync_call__pack(call, nng_msg_body(msg));
    uint64_t connect =
        u->opt.request_timeout_ms < CONNECT_MS ? u->opt.request_timeout_ms : CONNECT_MS;
    nng_aio_set_timeout(r->aio, (nng_duration)connect);
    nng_aio_set_msg(r->aio, msg);
    nng_ctx_send(r->ctx, r->aio);
    return 0;
}

/* Waits for the send, then asks for the reply (no wait). */
static void req_sent(pc_upstream *u, req *r)
{
    if (r->failed)
        return;
    nng_aio_wait(r->aio);
    int rv = nng_aio_result(r->aio);
    if (rv != 0) {
        nng_msg *m = nng_aio_get_msg(r->aio);
        if (m != NULL)
            nng_msg_free(m);
        r->failed = true;
        snprintf(r->why, sizeof(r->why), "%s",
                 rv == NNG_ETIMEDOUT ? "no connection" : nng_strerror(rv));
        return;
    }
    r->sent = true;
    nng_aio_set_timeout(r->aio, (nng_duration)u->opt.request_timeout_ms);
    nng_ctx_recv(r->ctx, r->aio);
}

/* Waits for the reply; NULL on failure (r->why says why). */
static Popcast__SyncReply *req_reply(req *r)
{
    Popcast__SyncReply *rep = NULL;
    if (!r->failed) {
        nng_aio_wait(r->aio);
        int rv = nng_aio_result(r->aio);
        if (rv != 0) {
            r->failed = true;
            snprintf(r->why, sizeof(r->why), "%s", nng_strerror(rv));
        } else {
            nng_msg *m = nng_aio_get_msg(r->aio);
            rep = popcast__sync_reply__unpack(NULL, nng_msg_len(m), nng_msg_body(m));
            nng_msg_free(m);
            if (rep == NULL) {
                r->failed = true;
                snprintf(r->why, sizeof(r->why), "reply does not decode");
            }
        }
    }
    if (r->aio != NULL)
        nng_aio_free(r->aio);
    if (r->ctx_open)
        nng_ctx_close(r->ctx);
    r->aio = NULL;
    r->ctx_open = false;
    return rep;
}

static void note(ulink *l, bool ok)
{
    if (ok)
        atomic_store(&l->failures, 0);
    else
        atomic_fetch_add(&l->failures, 1);
}

/* Links in the order to ask: parents before controllers, each group by
 * fewest failures in a row, then configuration order. */
static void order_links(pc_upstream *u, size_t *order)
{
    for (size_t i = 0; i < u->n; i++) {
        size_t j = i;
        while (j > 0) {
            ulink *a = &u->links[i], *b = &u->links[order[j - 1]];
            bool before = a->parent != b->parent
                              ? a->parent
                              : atomic_load(&a->failures) < atomic_load(&b->failures);
            if (!before)
                break;
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

int pc_upstream_call(pc_upstream *u, const Popcast__SyncCall *call, pc_upstream_accept accept,
                     void *arg, Popcast__SyncReply **out, const char **url, pc_err *err)
{
    size_t *order = calloc(u->n ? u->n : 1, sizeof(*order));
    if (order == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    order_links(u, order);
    char whys[512] = "";
    size_t used = 0;
    for (size_t k = 0; k < u->n; k++) {
        ulink *l = &u->links[order[k]];
        req r;
        req_start(u, &r, l, call);
        req_sent(u, &r);
        Popcast__SyncReply *rep = req_reply(&r);
        if (rep != NULL && accept != NULL && !accept(arg, rep)) {
            popcast__sync_reply__free_unpacked(rep, NULL);
            rep = NULL;
            snprintf(r.why, sizeof(r.why), "refused or behind");
        }
        note(l, rep != NULL);
        if (rep != NULL) {
            pthread_mutex_lock(&u->lock);
            snprintf(u->last, sizeof(u->last), "%s", l->url);
            pthread_mutex_unlock(&u->lock);
            if (url != NULL)
                *url = l->url;
            *out = rep;
            free(order);
            return PC_OK;
        }
        int w =
            snprintf(whys + used, sizeof(whys) - used, "%s%s: %s", used ? "; " : "", l->url, r.why);
        if (w > 0 && (size_t)w < sizeof(whys) - used)
            used += (size_t)w;
    }
    free(order);
    return pc_err_set(err, PC_E_UNAVAILABLE, "no upstream answered (%s)",
                      u->n ? whys : "none configured");
}

static bool batch_ack_fits(const Popcast__SyncReply *rep, size_t n)
{
    return rep->body_case == POPCAST__SYNC_REPLY__BODY_STATUS_BATCH_ACK &&
           rep->status_batch_ack->error[0] == '\0' && rep->status_batch_ack->n_acks == n;
}

/* Sends the batch to links [from, to) at once and collects their acks. */
static size_t report_to(pc_upstream *u, const Popcast__SyncCall *call, size_t n_reports,
                        size_t from, size_t to, Popcast__SyncReply **acks)
{
    size_t n = to - from, answered = 0;
    req *rs = calloc(n ? n : 1, sizeof(*rs));
    if (rs == NULL)
        return 0;
    for (size_t i = 0; i < n; i++)
        req_start(u, &rs[i], &u->links[from + i], call);
    for (size_t i = 0; i < n; i++)
        req_sent(u, &rs[i]);
    for (size_t i = 0; i < n; i++) {
        Popcast__SyncReply *rep = req_reply(&rs[i]);
        if (rep != NULL && !batch_ack_fits(rep, n_reports)) {
            popcast__sync_reply__free_unpacked(rep, NULL);
            rep = NULL;
        }
        note(&u->links[from + i], rep != NULL);
        acks[from + i] = rep;
        answered += rep != NULL;
    }
    free(rs);
    return answered;
}

int pc_upstream_report(pc_upstream *u, const Popcast__StatusBatch *batch,
                       Popcast__SyncReply ***acks, size_t *n, pc_err *err)
{
    Popcast__SyncCall call = POPCAST__SYNC_CALL__INIT;
    call.body_case = POPCAST__SYNC_CALL__BODY_STATUS_BATCH;
    call.status_batch = (Popcast__StatusBatch *)batch;
    *acks = calloc(u->n ? u->n : 1, sizeof(**acks));
    *n = u->n;
    if (*acks == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    /* The first parent that takes it, in health order. */
    size_t *order = calloc(u->n ? u->n : 1, sizeof(*order));
    if (order == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    order_links(u, order);
    for (size_t k = 0; k < u->n; k++) {
        size_t i = order[k];
        if (!u->links[i].parent)
            continue;
        if (report_to(u, &call, batch->n_reports, i, i + 1, *acks) == 1) {
            free(order);
            return PC_OK;
        }
    }
    free(order);
    if (report_to(u, &call, batch->n_reports, u->n_parents, u->n, *acks) > 0)
        return PC_OK;
    return pc_err_set(err, PC_E_UNAVAILABLE, "no upstream took the status batch");
}

void pc_upstream_free_acks(Popcast__SyncReply **acks, size_t n)
{
    for (size_t i = 0; acks != NULL && i < n; i++)
        if (acks[i] != NULL)
            popcast__sync_reply__free_unpacked(acks[i], NULL);
    free(acks);
}

void pc_upstream_last(pc_upstream *u, char *buf, size_t cap)
{
    pthread_mutex_lock(&u->lock);
    snprintf(buf, cap, "%s", u->last);
    pthread_mutex_unlock(&u->lock);
}
