/* subscriber.c - nng sub socket feeding the loop (see subscriber.h). */
#include "subscriber.h"

#include <nng/protocol/pubsub0/sub.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "log.h"
#include "protocol_limits.h"

typedef struct queued {
    nng_msg *msg;
    struct queued *next;
} queued;

struct pc_subscriber {
    nng_socket sock;
    nng_aio *aio;
    uv_async_t wake;
    pc_subscriber_cb cb;
    void *arg;
    pthread_mutex_t lock; /* guards the queue */
    queued *head, *tail;
    size_t queued_count, queue_max;
    _Atomic uint64_t received, dropped;
};

static void recv_done(void *p)
{
    pc_subscriber *s = p;
    int rv = nng_aio_result(s->aio);
    if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
        return;
    if (rv == 0) {
        nng_msg *msg = nng_aio_get_msg(s->aio);
        queued *q = malloc(sizeof(*q));
        atomic_fetch_add(&s->received, 1);
        pthread_mutex_lock(&s->lock);
        if (q == NULL || s->queued_count >= s->queue_max) {
            pthread_mutex_unlock(&s->lock);
            atomic_fetch_add(&s->dropped, 1);
            free(q);
            nng_msg_free(msg);
        } else {
            q->msg = msg;
            q->next = NULL;
            if (s->tail)
                s->tail->next = q;
            else
                s->head = q;
            s->tail = q;
            s->queued_count++;
            uv_async_send(&s->wake);
            pthread_mutex_unlock(&s->lock);
        }
    }
    nng_recv_aio(s->sock, s->aio);
}

static void drain(uv_async_t *h)
{
    pc_subscriber *s = h->data;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        queued *q = s->head;
        if (q != NULL) {
            s->head = q->next;
            if (s->head == NULL)
                s->tail = NULL;
            s->queued_count--;
        }
        pthread_mutex_unlock(&s->lock);
        if (q == NULL)
            return;
        s->cb(s->arg, nng_msg_body(q->msg), nng_msg_len(q->msg));
        nng_msg_free(q->msg);
        free(q);
    }
}

int pc_subscriber_open(pc_subscriber **out, uv_loop_t *loop, const pc_subscriber_options *opt,
                       pc_subscriber_cb cb, void *arg, pc_err *err)
{
    pc_subscriber *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->cb = cb;
    s->arg = arg;
    s->queue_max = opt->queue_max;
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
    queued *q = s->head;
    while (q != NULL) {
        queued *next = q->next;
        nng_msg_free(q->msg);
        free(q);
        q = next;
    }
    pthread_mutex_destroy(&s->lock);
    free(s);
}

void pc_subscriber_close(pc_subscriber *s)
{
    if (s == NULL)
        return;
    /* Closing the socket first guarantees recv_done never runs again
     * (nng_aio_stop waits for a running callback). */
    nng_close(s->sock);
    nng_aio_stop(s->aio);
    nng_aio_free(s->aio);
    uv_close((uv_handle_t *)&s->wake, free_after_close);
}

void pc_subscriber_counts(pc_subscriber *s, uint64_t *received, uint64_t *dropped)
{
    *received = atomic_load(&s->received);
    *dropped = atomic_load(&s->dropped);
}
