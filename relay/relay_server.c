/* relay_server.c - a relay's req/rep endpoint (relay_server.h). */
#include "relay_server.h"

#include <inttypes.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "nng_close.h"
#include "protocol_limits.h"

/* Room in a batch beside the reports (framing, the relay's own status). */
#define BATCH_SLACK (16 * 1024)

typedef enum { W_RECV, W_SEND, W_PARKED } worker_state;

typedef struct worker {
    struct pc_relay_server *s;
    nng_aio *aio;
    nng_ctx ctx;
    worker_state state;
    /* Parked: the request it answers once upstream has. */
    Popcast__SyncCall *call;
    size_t bytes;        /* its reports' size (status) */
    struct worker *next; /* in the forward or batch queue */
} worker;

struct pc_relay_server {
    pc_relay_server_options opt;
    nng_socket sock;
    worker *workers;
    size_t n_workers;
    char bound_url[300];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    worker *fwd_head, **fwd_tail;     /* snapshot and chunk requests for upstream */
    worker *batch_head, **batch_tail; /* reports waiting for a batch */
    int64_t batch_since_ms;           /* when the oldest waiting report came */
    pthread_t fwd_thread, batch_thread;
    bool fwd_started, batch_started;
    pc_metric *m_sync, *m_chunk, *m_snapshot, *m_status, *m_bad;
    pc_metric *m_batches, *m_batch_failures, *m_forwarded;
};

/* Hands a worker its reply and starts the send (any thread). */
static void answer(worker *w, const Popcast__SyncReply *reply)
{
    size_t len = popcast__sync_reply__get_packed_size(reply);
    nng_msg *msg = NULL;
    if (nng_msg_alloc(&msg, len) != 0) {
        w->state = W_RECV;
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    popcast__sync_reply__pack(reply, nng_msg_body(msg));
    w->state = W_SEND;
    nng_aio_set_msg(w->aio, msg);
    nng_ctx_send(w->ctx, w->aio);
}

static void answer_ack_error(worker *w, const char *text)
{
    Popcast__StatusAck ack = POPCAST__STATUS_ACK__INIT;
    ack.error = (char *)text;
    Popcast__SyncReply reply = POPCAST__SYNC_REPLY__INIT;
    reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
    reply.status_ack = &ack;
    answer(w, &reply);
}

static void free_entries(Popcast__Entry **entries, size_t n)
{
    for (size_t i = 0; i < n; i++)
        popcast__entry__free_unpacked(entries[i], NULL);
    free(entries);
}

/* Entries after req->after_seq from the log, bounded as a controller
 * bounds them; bundles over inline_max or the byte budget are omitted
 * (fetched in chunks from here). */
static void serve_sync(pc_relay_server *s, const Popcast__SyncRequest *req, worker *w)
{
    Popcast__SyncResponse resp = POPCAST__SYNC_RESPONSE__INIT;
    uint64_t first, head;
    pc_relay_log_bounds(s->opt.log, &first, &head);
    resp.head_seq = head;
    uint64_t after = req->after_seq;
    Popcast__Entry **entries = NULL;
    size_t n = 0;
    char why[512] = "";
    if (after < head && (after + 1 < first)) {
        resp.snapshot_required = 1;
    } else if (after < head) {
        size_t max_entries = req->max_entries ? req->max_entries : 64;
        if (max_entries > PC_SYNC_MAX_ENTRIES)
            max_entries = PC_SYNC_MAX_ENTRIES;
        size_t budget = s->opt.max_reply;
        if (req->max_bytes != 0 && req->max_bytes < budget)
            budget = (size_t)req->max_bytes;
        entries = calloc(max_entries, sizeof(*entries));
        for (uint64_t seq = after + 1; entries != NULL && seq <= head && n < max_entries; seq++) {
            if (n > 0 && budget < 1024)
                break;
            pc_err err;
            Popcast__Entry *e = NULL;
            if (pc_relay_log_get(s->opt.log, seq, &e, &err) != PC_OK) {
                if (n == 0)
                    snprintf(why, sizeof(why), "%s", err.msg); /* trimmed meanwhile: retry */
                break;
            }
            size_t mlen =
                e->signed_ ? e->signed_->manifest.len + e->signed_->signature.len + 64 : 64;
            budget = budget > mlen ? budget - mlen : 0;
            if (e->bundle.len > 0) {
                if (e->bundle.len <= s->opt.inline_max && e->bundle.len <= budget) {
                    budget -= e->bundle.len;
                } else {
                    e->bundle.len = 0; /* the data is freed with e */
                    e->bundle_omitted = 1;
                }
            }
            entries[n++] = e;
        }
        if (entries == NULL)
            snprintf(why, sizeof(why), "out of memory");
    }
    resp.entries = entries;
    resp.n_entries = n;
    resp.error = why[0] ? why : (char *)protobuf_c_empty_string;
    Popcast__SyncReply reply = POPCAST__SYNC_REPLY__INIT;
    reply.body_case = POPCAST__SYNC_REPLY__BODY_SYNC;
    reply.sync = &resp;
    answer(w, &reply);
    free_entries(entries, n);
}

/* A chunk the log holds: answered here. PC_E_NOTFOUND: ask upstream. */
static int serve_chunk(pc_relay_server *s, const Popcast__BundleChunkRequest *req, worker *w)
{
    Popcast__BundleChunkResponse resp = POPCAST__BUNDLE_CHUNK_RESPONSE__INIT;
    char why[512] = "";
    uint8_t *data = NULL;
    size_t got = 0;
    uint64_t total = 0;
    size_t len = req->length ? req->length : s->opt.chunk_max;
    if (len > s->opt.chunk_max)
        len = s->opt.chunk_max;
    if (req->bundle_hash.len != PC_HASH_LEN) {
        snprintf(why, sizeof(why), "bundle_hash must be 32 bytes");
    } else {
        pc_err err;
        int rc = pc_relay_log_read_blob(s->opt.log, req->bundle_hash.data, req->offset, len, &data,
                                        &got, &total, &err);
        if (rc == PC_E_NOTFOUND)
            return rc;
        if (rc != PC_OK)
            snprintf(why, sizeof(why), "%s", err.msg);
    }
    resp.data.data = data;
    resp.data.len = got;
    resp.total_size = total;
    resp.error = why[0] ? why : (char *)protobuf_c_empty_string;
    Popcast__SyncReply reply = POPCAST__SYNC_REPLY__INIT;
    reply.body_case = POPCAST__SYNC_REPLY__BODY_CHUNK;
    reply.chunk = &resp;
    answer(w, &reply);
    free(data);
    return PC_OK;
}

static void park(pc_relay_server *s, worker *w, Popcast__SyncCall *call, bool batch)
{
    w->call = call;
    w->state = W_PARKED;
    w->next = NULL;
    pthread_mutex_lock(&s->lock);
    if (batch) {
        if (s->batch_head == NULL)
            s->batch_since_ms = pc_mono_ms();
        *s->batch_tail = w;
        s->batch_tail = &w->next;
    } else {
        *s->fwd_tail = w;
        s->fwd_tail = &w->next;
    }
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static size_t reports_bytes(const Popcast__SyncCall *call)
{
    if (call->body_case == POPCAST__SYNC_CALL__BODY_SIGNED_STATUS)
        return popcast__signed_agent_status__get_packed_size(call->signed_status);
    size_t n = 0;
    for (size_t i = 0; i < call->status_batch->n_reports; i++)
        n += popcast__signed_agent_status__get_packed_size(call->status_batch->reports[i]) + 8;
    return n;
}

/* One request, just received (an nng thread). */
static void handle(pc_relay_server *s, worker *w, nng_msg *msg)
{
    Popcast__SyncCall *call = popcast__sync_call__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
    nng_msg_free(msg);
    if (call == NULL) {
        pc_metric_add(s->m_bad, 1);
        answer_ack_error(w, "request does not decode");
        return;
    }
    switch (call->body_case) {
    case POPCAST__SYNC_CALL__BODY_SYNC:
        pc_metric_add(s->m_sync, 1);
        serve_sync(s, call->sync, w);
        break;
    case POPCAST__SYNC_CALL__BODY_CHUNK:
        pc_metric_add(s->m_chunk, 1);
        if (serve_chunk(s, call->chunk, w) == PC_E_NOTFOUND) {
            park(s, w, call, false);
            return;
        }
        break;
    case POPCAST__SYNC_CALL__BODY_SNAPSHOT:
        pc_metric_add(s->m_snapshot, 1);
        park(s, w, call, false);
        return;
    case POPCAST__SYNC_CALL__BODY_SIGNED_STATUS:
    case POPCAST__SYNC_CALL__BODY_STATUS_BATCH:
        pc_metric_add(s->m_status, 1);
        w->bytes = reports_bytes(call);
        if (w->bytes + BATCH_SLACK > PC_STATUS_BATCH_MAX) {
            pc_metric_add(s->m_bad, 1);
            answer_ack_error(w, "reports too large to forward");
            break;
        }
        park(s, w, call, true);
        return;
    case POPCAST__SYNC_CALL__BODY_STATUS:
        pc_metric_add(s->m_bad, 1);
        answer_ack_error(w, "unsigned report: status reports must be signed");
        break;
    default:
        pc_metric_add(s->m_bad, 1);
        answer_ack_error(w, "unknown request");
        break;
    }
    popcast__sync_call__free_unpacked(call, NULL);
}

static void worker_cb(void *arg)
{
    worker *w = arg;
    pc_relay_server *s = w->s;
    int rv = nng_aio_result(w->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
        return;
    if (w->state == W_SEND) {
        if (rv != 0)
            nng_msg_free(nng_aio_get_msg(w->aio));
        w->state = W_RECV;
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    if (rv != 0) {
        nng_ctx_recv(w->ctx, w->aio);
        return;
    }
    handle(s, w, nng_aio_get_msg(w->aio));
}

/* Forwards. */

static bool reply_matches(void *arg, const Popcast__SyncReply *rep)
{
    const Popcast__SyncCall *call = arg;
    if (call->body_case == POPCAST__SYNC_CALL__BODY_SNAPSHOT)
        return rep->body_case == POPCAST__SYNC_REPLY__BODY_SNAPSHOT &&
               rep->snapshot->error[0] == '\0';
    return rep->body_case == POPCAST__SYNC_REPLY__BODY_CHUNK && rep->chunk->error[0] == '\0';
}

/* Asks upstream what the worker was asked, and passes the answer on as it
 * came (a snapshot's signed bytes unchanged). */
static void forward(pc_relay_server *s, worker *w)
{
    Popcast__SyncReply *rep = NULL;
    pc_err err;
    int rc = pc_upstream_call(s->opt.upstream, w->call, reply_matches, w->call, &rep, NULL, &err);
    if (rc == PC_OK) {
        pc_metric_add(s->m_forwarded, 1);
        answer(w, rep);
        popcast__sync_reply__free_unpacked(rep, NULL);
    } else {
        char text[512 + 64];
        snprintf(text, sizeof(text), "%s %s", PC_RELAY_UNAVAILABLE, err.msg);
        Popcast__SyncReply reply = POPCAST__SYNC_REPLY__INIT;
        Popcast__SnapshotResponse snap = POPCAST__SNAPSHOT_RESPONSE__INIT;
        Popcast__BundleChunkResponse chunk = POPCAST__BUNDLE_CHUNK_RESPONSE__INIT;
        if (w->call->body_case == POPCAST__SYNC_CALL__BODY_SNAPSHOT) {
            snap.error = text;
            reply.body_case = POPCAST__SYNC_REPLY__BODY_SNAPSHOT;
            reply.snapshot = &snap;
        } else {
            chunk.error = text;
            reply.body_case = POPCAST__SYNC_REPLY__BODY_CHUNK;
            reply.chunk = &chunk;
        }
        answer(w, &reply);
    }
}

static void *forward_run(void *arg)
{
    pc_relay_server *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        worker *w = s->fwd_head;
        if (w == NULL) {
            pthread_cond_wait(&s->cond, &s->lock);
            continue;
        }
        s->fwd_head = w->next;
        if (s->fwd_head == NULL)
            s->fwd_tail = &s->fwd_head;
        pthread_mutex_unlock(&s->lock);
        /* Once answered, the worker may take (and park) another request:
         * only this copy of the pointer is ours. */
        Popcast__SyncCall *call = w->call;
        forward(s, w);
        popcast__sync_call__free_unpacked(call, NULL);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Batches. */

/* Report idx's ack from what the upstreams answered (relay_server.h): taken
 * if any took it; resend whole if any asks; deltas only if all that took
 * it take deltas. */
static void combine(Popcast__SyncReply **acks, size_t n_slots, size_t idx, Popcast__StatusAck *out,
                    char *text, size_t cap)
{
    size_t answered = 0, took = 0;
    bool resend = false, deltas = true;
    const char *first_error = NULL;
    for (size_t j = 0; j < n_slots; j++) {
        if (acks == NULL || acks[j] == NULL)
            continue;
        const Popcast__StatusAck *a = acks[j]->status_batch_ack->acks[idx];
        answered++;
        if (a->error[0] != '\0') {
            if (first_error == NULL)
                first_error = a->error;
            continue;
        }
        took++;
        resend |= a->resend_whole;
        deltas &= a->takes_deltas;
    }
    if (answered == 0) {
        snprintf(text, cap, "%s no upstream took the report", PC_RELAY_UNAVAILABLE);
        out->error = text;
    } else if (took == 0) {
        snprintf(text, cap, "%s", first_error);
        out->error = text;
    } else if (resend) {
        out->resend_whole = true;
    } else {
        out->takes_deltas = deltas;
    }
}

/* Answers every worker of a batch from upstream's acks. */
static void answer_batch(worker *const *ws, size_t n, Popcast__SyncReply **acks, size_t n_slots)
{
    size_t idx = 0;
    for (size_t i = 0; i < n; i++) {
        worker *w = ws[i];
        Popcast__SyncReply reply = POPCAST__SYNC_REPLY__INIT;
        if (w->call->body_case == POPCAST__SYNC_CALL__BODY_SIGNED_STATUS) {
            Popcast__StatusAck ack = POPCAST__STATUS_ACK__INIT;
            char text[300];
            combine(acks, n_slots, idx++, &ack, text, sizeof(text));
            reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_ACK;
            reply.status_ack = &ack;
            answer(w, &reply);
            continue;
        }
        size_t k = w->call->status_batch->n_reports;
        Popcast__StatusBatchAck back = POPCAST__STATUS_BATCH_ACK__INIT;
        Popcast__StatusAck *a = calloc(k ? k : 1, sizeof(*a));
        Popcast__StatusAck **ap = calloc(k ? k : 1, sizeof(*ap));
        char(*texts)[300] = calloc(k ? k : 1, sizeof(*texts));
        if (a == NULL || ap == NULL || texts == NULL) {
            back.error = "relay out of memory";
        } else {
            for (size_t j = 0; j < k; j++) {
                popcast__status_ack__init(&a[j]);
                combine(acks, n_slots, idx + j, &a[j], texts[j], sizeof(texts[j]));
                ap[j] = &a[j];
            }
            back.acks = ap;
            back.n_acks = k;
        }
        idx += k;
        reply.body_case = POPCAST__SYNC_REPLY__BODY_STATUS_BATCH_ACK;
        reply.status_batch_ack = &back;
        answer(w, &reply);
        free(a);
        free(ap);
        free(texts);
    }
}

/* Sends one batch made of workers ws[0..n) and answers them. */
static void send_batch(pc_relay_server *s, worker *const *ws, size_t n)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += ws[i]->call->body_case == POPCAST__SYNC_CALL__BODY_SIGNED_STATUS
                     ? 1
                     : ws[i]->call->status_batch->n_reports;
    /* Child relays' accounts travel on: their own and what they carried. */
    size_t n_fwd = 0;
    for (size_t i = 0; i < n; i++)
        if (ws[i]->call->body_case == POPCAST__SYNC_CALL__BODY_STATUS_BATCH)
            n_fwd +=
                (ws[i]->call->status_batch->relay != NULL) + ws[i]->call->status_batch->n_forwarded;
    Popcast__RelayStatus **fwd = calloc(n_fwd ? n_fwd : 1, sizeof(*fwd));
    Popcast__SignedAgentStatus **reports = calloc(total ? total : 1, sizeof(*reports));
    Popcast__SyncReply **acks = NULL;
    size_t n_slots = 0;
    if (reports != NULL && fwd != NULL) {
        size_t k = 0, f = 0;
        for (size_t i = 0; i < n; i++) {
            const Popcast__SyncCall *c = ws[i]->call;
            if (c->body_case == POPCAST__SYNC_CALL__BODY_SIGNED_STATUS) {
                reports[k++] = c->signed_status;
                continue;
            }
            for (size_t j = 0; j < c->status_batch->n_reports; j++)
                reports[k++] = c->status_batch->reports[j];
            if (c->status_batch->relay != NULL)
                fwd[f++] = c->status_batch->relay;
            for (size_t j = 0; j < c->status_batch->n_forwarded; j++)
                fwd[f++] = c->status_batch->forwarded[j];
        }
        Popcast__RelayStatus rs = POPCAST__RELAY_STATUS__INIT;
        char upstream[PC_UPSTREAM_MAX + 1];
        pc_upstream_last(s->opt.upstream, upstream, sizeof(upstream));
        uint64_t first, head;
        pc_relay_log_bounds(s->opt.log, &first, &head);
        rs.relay_id = (char *)s->opt.relay_id;
        rs.pop = (char *)s->opt.pop;
        rs.head_seq = head;
        rs.first_seq = first;
        rs.upstream = upstream;
        rs.time_unix_ms = pc_wall_ms();
        rs.agents = total;
        Popcast__StatusBatch batch = POPCAST__STATUS_BATCH__INIT;
        batch.reports = reports;
        batch.n_reports = total;
        batch.relay = &rs;
        batch.forwarded = fwd;
        batch.n_forwarded = n_fwd;
        pc_err err;
        pc_metric_add(s->m_batches, 1);
        if (pc_upstream_report(s->opt.upstream, &batch, &acks, &n_slots, &err) != PC_OK) {
            pc_metric_add(s->m_batch_failures, 1);
            pc_warn("relay", "status batch of %zu reports: %s", total, err.msg);
        }
    }
    answer_batch(ws, n, acks, n_slots);
    pc_upstream_free_acks(acks, n_slots);
    free(reports);
    free(fwd);
}

static void *batch_run(void *arg)
{
    pc_relay_server *s = arg;
    worker **ws = calloc(s->n_workers, sizeof(*ws));
    pthread_mutex_lock(&s->lock);
    while (!s->stop && ws != NULL) {
        if (s->batch_head == NULL) {
            pthread_cond_wait(&s->cond, &s->lock);
            continue;
        }
        int64_t due = s->batch_since_ms + (int64_t)s->opt.batch_ms, now = pc_mono_ms();
        size_t bytes = 0;
        for (worker *w = s->batch_head; w != NULL; w = w->next)
            bytes += w->bytes;
        if (now < due && bytes + BATCH_SLACK < PC_STATUS_BATCH_MAX) {
            struct timespec ts;
            pc_deadline_after_ms(&ts, (uint64_t)(due - now));
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
            continue;
        }
        /* As many as fit in one batch, oldest first. */
        size_t n = 0;
        bytes = 0;
        while (s->batch_head != NULL && n < s->n_workers &&
               (n == 0 || bytes + s->batch_head->bytes + BATCH_SLACK <= PC_STATUS_BATCH_MAX)) {
            worker *w = s->batch_head;
            s->batch_head = w->next;
            bytes += w->bytes;
            ws[n++] = w;
        }
        if (s->batch_head == NULL)
            s->batch_tail = &s->batch_head;
        else
            s->batch_since_ms = pc_mono_ms() - (int64_t)s->opt.batch_ms; /* the rest at once */
        pthread_mutex_unlock(&s->lock);
        /* The calls stay the workers' until answered. */
        Popcast__SyncCall **calls = calloc(n, sizeof(*calls));
        for (size_t i = 0; calls != NULL && i < n; i++)
            calls[i] = ws[i]->call;
        send_batch(s, ws, n);
        for (size_t i = 0; calls != NULL && i < n; i++)
            popcast__sync_call__free_unpacked(calls[i], NULL);
        free(calls);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    free(ws);
    return NULL;
}

int pc_relay_server_start(pc_relay_server **out, const pc_relay_server_options *opt, pc_err *err)
{
    pc_relay_server *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->opt = *opt;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->fwd_tail = &s->fwd_head;
    s->batch_tail = &s->batch_head;
    s->n_workers = opt->workers ? opt->workers : 256;
    s->workers = calloc(s->n_workers, sizeof(*s->workers));
    int rv = s->workers ? nng_rep0_open(&s->sock) : NNG_ENOMEM;
    if (rv == 0)
        rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, PC_STATUS_BATCH_MAX);
    for (size_t i = 0; rv == 0 && i < s->n_workers; i++) {
        s->workers[i].s = s;
        rv = nng_aio_alloc(&s->workers[i].aio, worker_cb, &s->workers[i]);
        if (rv == 0)
            rv = nng_ctx_open(&s->workers[i].ctx, s->sock);
    }
    pc_err lerr;
    if (rv == 0 && pc_nng_listen_bound(s->sock, opt->url, opt->tls, s->bound_url,
                                       sizeof(s->bound_url), &lerr) != PC_OK)
        rv = NNG_EADDRINUSE;
    if (rv == 0 && pthread_create(&s->fwd_thread, NULL, forward_run, s) == 0)
        s->fwd_started = true;
    if (rv == 0 && s->fwd_started && pthread_create(&s->batch_thread, NULL, batch_run, s) == 0)
        s->batch_started = true;
    if (rv == 0 && !s->batch_started)
        rv = NNG_ENOMEM;
    if (rv != 0) {
        pc_relay_server_stop(s);
        return pc_err_set(err, PC_E_UNAVAILABLE, "cannot serve sync on %s: %s", opt->url,
                          nng_strerror(rv));
    }
    pc_metrics *mx = opt->metrics;
    s->m_sync = pc_metrics_counter(mx, "popcast_relay_requests_total", "kind=\"sync\"",
                                   "requests from agents and child relays, by kind");
    s->m_chunk = pc_metrics_counter(mx, "popcast_relay_requests_total", "kind=\"chunk\"", NULL);
    s->m_snapshot =
        pc_metrics_counter(mx, "popcast_relay_requests_total", "kind=\"snapshot\"", NULL);
    s->m_status = pc_metrics_counter(mx, "popcast_relay_requests_total", "kind=\"status\"", NULL);
    s->m_bad = pc_metrics_counter(mx, "popcast_relay_requests_refused_total", NULL,
                                  "requests that did not decode or were refused");
    s->m_forwarded = pc_metrics_counter(mx, "popcast_relay_forwarded_total", NULL,
                                        "snapshot and chunk requests answered from upstream");
    s->m_batches = pc_metrics_counter(mx, "popcast_relay_status_batches_total", NULL,
                                      "status batches sent upstream");
    s->m_batch_failures = pc_metrics_counter(mx, "popcast_relay_status_batch_failures_total", NULL,
                                             "status batches no upstream took");
    for (size_t i = 0; i < s->n_workers; i++)
        nng_ctx_recv(s->workers[i].ctx, s->workers[i].aio);
    *out = s;
    return PC_OK;
}

const char *pc_relay_server_bound_url(const pc_relay_server *s)
{
    return s->bound_url;
}

void pc_relay_server_stop(pc_relay_server *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (s->fwd_started)
        pthread_join(s->fwd_thread, NULL);
    if (s->batch_started)
        pthread_join(s->batch_thread, NULL);
    for (size_t i = 0; s->workers && i < s->n_workers; i++)
        if (s->workers[i].aio)
            nng_aio_stop(s->workers[i].aio);
    if (nng_socket_id(s->sock) > 0)
        pc_nng_close_bounded(s->sock, PC_NNG_CLOSE_MS, "the relay's sync server");
    for (size_t i = 0; s->workers && i < s->n_workers; i++) {
        if (s->workers[i].aio)
            nng_aio_free(s->workers[i].aio);
        if (s->workers[i].state == W_PARKED && s->workers[i].call != NULL)
            popcast__sync_call__free_unpacked(s->workers[i].call, NULL);
    }
    free(s->workers);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
