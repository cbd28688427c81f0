/* subscriber.c - nng sub socket feeding the loop (see subscriber.h). */
#include "subscriber.h"

#include <nng/protocol/pubsub0/sub.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "log.h"
#include "nng_close.h"
#include "protocol_limits.h"

typedef struct queued {
    nng_msg *msg;
    struct queued *next;
} queued;

/* A publisher connection's queue, by its dialer (one per subscribed url,
 * so they are few and fixed). The last slot takes messages whose dialer is
 * not known (a pipe already gone). The loop takes from the connections in
 * turn, so a flooding one delays another's messages by one of its own at a
 * time, not by all it has queued; each connection's own order is kept. */
typedef struct source {
    int32_t dialer; /* nng_dialer_id; -1: not assigned */
    size_t bytes;   /* queued from it */
    queued *head, *tail;
} source;

/* Messages handled per wake-up of the loop: then it looks at its other
 * events (signals) before going on. */
#define DRAIN_BATCH 64
/* ... and bytes: the messages taken stay alive while the applier unpacks
 * them (a copy of each) as one group, outside the queue's byte bound.
 * Taking 64 whatever their size let a flood of 1 MiB messages hold about
 * 128 MiB there on top of the 64 MiB queue (test_pubsub_flood: RSS grew
 * by up to 197 MiB). At least one message is always taken. */
#define DRAIN_BYTES ((size_t)4 << 20)

struct pc_subscriber {
    nng_socket sock;
    nng_aio *aio;
    uv_async_t wake;
    pc_subscriber_cb cb;
    pc_subscriber_batch_cb batch_cb;
    void *arg;
    pthread_mutex_t lock; /* guards the queues (sources) and counts */
    size_t next_source;   /* the loop takes from this one next */
    size_t queued_count, queue_max;
    size_t queued_bytes, queue_bytes;
    source *sources;
    size_t n_sources;
    _Atomic uint64_t received, dropped;
    pc_metric *m_drop_count, *m_drop_bytes, *m_dropped_bytes, *m_queued_bytes, *m_queued_max;
};

/* The source of a message (lock held). */
static size_t source_of(pc_subscriber *s, nng_msg *msg)
{
    int32_t id = (int32_t)nng_dialer_id(nng_pipe_dialer(nng_msg_get_pipe(msg)));
    size_t last = s->n_sources - 1;
    if (id < 0)
        return last;
    for (size_t i = 0; i < last; i++) {
        if (s->sources[i].dialer == id)
            return i;
        if (s->sources[i].dialer == -1) {
            s->sources[i].dialer = id;
            return i;
        }
    }
    return last;
}

static void recv_done(void *p)
{
    pc_subscriber *s = p;
    int rv = nng_aio_result(s->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
        return;
    if (rv == 0) {
        nng_msg *msg = nng_aio_get_msg(s->aio);
        size_t len = nng_msg_len(msg);
        queued *q = malloc(sizeof(*q));
        atomic_fetch_add(&s->received, 1);
        pthread_mutex_lock(&s->lock);
        size_t from = source_of(s, msg);
        source *src = &s->sources[from];
        pc_metric *full = NULL;
        if (q == NULL || s->queued_count >= s->queue_max)
            full = s->m_drop_count;
        else if (src->bytes > 0 && src->bytes + len > s->queue_bytes)
            full = s->m_drop_bytes;
        if (full != NULL || q == NULL) {
            pthread_mutex_unlock(&s->lock);
            atomic_fetch_add(&s->dropped, 1);
            pc_metric_add(full, 1);
            pc_metric_add(s->m_dropped_bytes, len);
            free(q);
            nng_msg_free(msg);
        } else {
            q->msg = msg;
            q->next = NULL;
            if (src->tail)
                src->tail->next = q;
            else
                src->head = q;
            src->tail = q;
            s->queued_count++;
            src->bytes += len;
            s->queued_bytes += len;
            pc_metric_set(s->m_queued_bytes, s->queued_bytes);
            if (s->m_queued_max != NULL && s->queued_bytes > s->m_queued_max->value)
                pc_metric_set(s->m_queued_max, s->queued_bytes);
            uv_async_send(&s->wake);
            pthread_mutex_unlock(&s->lock);
        }
    }
    nng_recv_aio(s->sock, s->aio);
}

/* The next message for the loop, taking the connections in turn (lock
 * held); NULL when none is queued. */
static queued *take(pc_subscriber *s)
{
    for (size_t k = 0; k < s->n_sources; k++) {
        size_t i = (s->next_source + k) % s->n_sources;
        source *src = &s->sources[i];
        queued *q = src->head;
        if (q == NULL)
            continue;
        src->head = q->next;
        if (src->head == NULL)
            src->tail = NULL;
        size_t len = nng_msg_len(q->msg);
        src->bytes -= len;
        s->queued_bytes -= len;
        s->queued_count--;
        pc_metric_set(s->m_queued_bytes, s->queued_bytes);
        s->next_source = (i + 1) % s->n_sources;
        return q;
    }
    return NULL;
}

static void drain(uv_async_t *h)
{
    pc_subscriber *s = h->data;
    queued *taken[DRAIN_BATCH];
    const uint8_t *data[DRAIN_BATCH];
    size_t len[DRAIN_BATCH], n = 0, bytes = 0;
    pthread_mutex_lock(&s->lock);
    while (n < DRAIN_BATCH && bytes < DRAIN_BYTES && (taken[n] = take(s)) != NULL)
        bytes += nng_msg_len(taken[n++]->msg);
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < n; i++) {
        data[i] = nng_msg_body(taken[i]->msg);
        len[i] = nng_msg_len(taken[i]->msg);
    }
    if (s->batch_cb != NULL && n > 0)
        s->batch_cb(s->arg, data, len, n);
    else
        for (size_t i = 0; i < n; i++)
            s->cb(s->arg, data[i], len[i]);
    for (size_t i = 0; i < n; i++) {
        nng_msg_free(taken[i]->msg);
        free(taken[i]);
    }
    /* More may be waiting: come back after the loop's other events. */
    if (n == DRAIN_BATCH || bytes >= DRAIN_BYTES)
        uv_async_send(&s->wake);
}

int pc_subscriber_open(pc_subscriber **out, uv_loop_t *loop, const pc_subscriber_options *opt,
                       pc_subscriber_cb cb, void *arg, pc_err *err)
{
    pc_subscriber *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->cb = cb;
    s->arg = arg;
    s->batch_cb = opt->batch_cb;
    s->queue_max = opt->queue_max;
    s->queue_bytes = opt->queue_bytes ? opt->queue_bytes : SIZE_MAX;
    s->n_sources = opt->urls->count + 1;
    s->sources = calloc(s->n_sources, sizeof(*s->sources));
    if (s->sources == NULL) {
        free(s);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < s->n_sources; i++)
        s->sources[i].dialer = -1;
    s->m_drop_count = pc_metrics_counter(opt->metrics, "popcast_agent_pubsub_dropped_total",
                                         "reason=\"queue_count\"",
                                         "pub/sub messages dropped before the apply loop saw them");
    s->m_drop_bytes = pc_metrics_counter(opt->metrics, "popcast_agent_pubsub_dropped_total",
                                         "reason=\"queue_bytes\"", NULL);
    s->m_dropped_bytes =
        pc_metrics_counter(opt->metrics, "popcast_agent_pubsub_dropped_bytes_total", NULL,
                           "bytes of the pub/sub messages dropped");
    s->m_queued_bytes = pc_metrics_gauge(opt->metrics, "popcast_agent_pubsub_queued_bytes", NULL,
                                         "pub/sub bytes waiting for the apply loop");
    s->m_queued_max =
        pc_metrics_gauge(opt->metrics, "popcast_agent_pubsub_queued_bytes_max", NULL,
                         "the most pub/sub bytes that waited for the apply loop at once");
    pthread_mutex_init(&s->lock, NULL);
    int rv = nng_sub0_open(&s->sock);
    if (rv == 0)
        rv = nng_socket_set(s->sock, NNG_OPT_SUB_SUBSCRIBE, "", 0);
    if (rv == 0)
        rv = nng_socket_set_int(s->sock, NNG_OPT_RECVBUF, opt->recvbuf);
    /* A message over this limit makes nng drop the whole connection, so it
     * is sized from the bundle limit, never left at a default. */
    if (rv == 0)
        rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ, opt->recv_max);
    if (rv == 0)
        rv = nng_socket_set_ms(s->sock, NNG_OPT_RECONNMINT, PC_REDIAL_MIN_MS);
    if (rv == 0)
        rv = nng_socket_set_ms(s->sock, NNG_OPT_RECONNMAXT, PC_REDIAL_MAX_MS);
    if (rv == 0)
        rv = nng_aio_alloc(&s->aio, recv_done, s);
    if (rv != 0) {
        nng_close(s->sock);
        pthread_mutex_destroy(&s->lock);
        free(s->sources);
        free(s);
        return pc_err_set(err, PC_E_INTERNAL, "cannot open sub socket: %s", nng_strerror(rv));
    }
    for (size_t i = 0; i < opt->urls->count; i++) {
        pc_err derr;
        rv = pc_nng_dial(s->sock, opt->urls->items[i], opt->tls, NNG_FLAG_NONBLOCK, &derr) == PC_OK
                 ? 0
                 : NNG_EINVAL;
        if (rv != 0) {
            nng_close(s->sock);
            nng_aio_free(s->aio);
            pthread_mutex_destroy(&s->lock);
            free(s->sources);
            free(s);
            return pc_err_set(err, PC_E_INVALID, "cannot subscribe to %s: %s", opt->urls->items[i],
                              nng_strerror(rv));
        }
    }
    uv_async_init(loop, &s->wake, drain);
    s->wake.data = s;
    nng_recv_aio(s->sock, s->aio);
    *out = s;
    return PC_OK;
}

static void free_after_close(uv_handle_t *h)
{
    pc_subscriber *s = h->data;
    queued *q;
    while ((q = take(s)) != NULL) {
        nng_msg_free(q->msg);
        free(q);
    }
    pthread_mutex_destroy(&s->lock);
    free(s->sources);
    free(s);
}

void pc_subscriber_close(pc_subscriber *s)
{
    if (s == NULL)
        return;
    /* Stop the receive first: nng_aio_stop waits for a running recv_done,
     * and once stopped the aio cannot be re-armed (recv_done sees
     * NNG_ECANCELED and returns). The socket then closes with no
     * operation pending on it, which makes nng 1.5.2's nng_close hang
     * rarer (nanomsg/nng#1543, #1813) but does not end it: the close is
     * bounded (nng_close.h). */
    nng_aio_stop(s->aio);
    pc_nng_close_bounded(s->sock, PC_NNG_CLOSE_MS, "the pub/sub subscription");
    nng_aio_free(s->aio);
    uv_close((uv_handle_t *)&s->wake, free_after_close);
}

void pc_subscriber_counts(pc_subscriber *s, uint64_t *received, uint64_t *dropped)
{
    *received = atomic_load(&s->received);
    *dropped = atomic_load(&s->dropped);
}
