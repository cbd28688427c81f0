/* tail_shipper.c - sends tenants' log lines to controllers (see
 * tail_shipper.h). */
#include "tail_shipper.h"

#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"
#include "nng_close.h"
#include "protocol_limits.h"

#define DEFAULT_POLL_MS    2000
#define DEFAULT_FLUSH_MS   200
#define DEFAULT_TIMEOUT_MS 2000
/* A TailAck names at most a few thousand tenants. */
#define ACK_MAX (256 * 1024)

typedef struct controller {
    nng_socket sock;
    bool open;
    int64_t next_poll_ms;
} controller;

struct pc_tail_shipper {
    pc_tail_shipper_options opt;
    controller *controllers;
    size_t n;
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    _Atomic bool stop; /* set under lock, read without it between requests */
    uint64_t counter;
    pc_metric *m_batches, *m_lines, *m_lost, *m_failures, *m_dropped;
};

/* Sends one batch to controller c and applies its answer; false when the
 * controller did not answer or refused. */
static bool send_batch(pc_tail_shipper *s, size_t c, Popcast__TailBatch *batch)
{
    Popcast__SignedTailBatch signed_batch = POPCAST__SIGNED_TAIL_BATCH__INIT;
    Popcast__SyncCall call = POPCAST__SYNC_CALL__INIT;
    call.body_case = POPCAST__SYNC_CALL__BODY_TAIL;
    call.tail = &signed_batch;
    batch->counter = ++s->counter;
    batch->time_unix_ms = pc_wall_ms();
    size_t blen = popcast__tail_batch__get_packed_size(batch);
    uint8_t *bytes = malloc(blen ? blen : 1);
    if (bytes == NULL)
        return false;
    popcast__tail_batch__pack(batch, bytes);
    signed_batch.batch.data = bytes;
    signed_batch.batch.len = blen;
    uint8_t sig[PC_SIG_LEN];
    /* A poll (nothing in it) goes unsigned: it only asks which tenants are
     * tailed, and costs the controller no verification. */
    if ((batch->n_records > 0 || batch->n_drops > 0) && s->opt.identity != NULL) {
        pc_sign(s->opt.identity, PC_DOMAIN_TAIL, bytes, blen, sig);
        signed_batch.signature.data = sig;
        signed_batch.signature.len = PC_SIG_LEN;
    }
    size_t len = popcast__sync_call__get_packed_size(&call);
    nng_msg *msg = NULL;
    if (nng_msg_alloc(&msg, len) != 0) {
        free(bytes);
        return false;
    }
    popcast__sync_call__pack(&call, nng_msg_body(msg));
    free(bytes);
    int rv = nng_sendmsg(s->controllers[c].sock, msg, 0);
    if (rv != 0) {
        nng_msg_free(msg);
        return false;
    }
    if ((rv = nng_recvmsg(s->controllers[c].sock, &msg, 0)) != 0)
        return false;
    Popcast__SyncReply *rep =
        popcast__sync_reply__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
    nng_msg_free(msg);
    bool ok = rep != NULL && rep->body_case == POPCAST__SYNC_REPLY__BODY_TAIL_ACK;
    if (ok && rep->tail_ack->error[0] != '\0') {
        pc_debug("tail", "controller %s refused a tail batch: %s", s->opt.urls->items[c],
                 rep->tail_ack->error);
        ok = false;
    }
    if (rep != NULL && rep->body_case == POPCAST__SYNC_REPLY__BODY_TAIL_ACK)
        pc_tail_buffer_want(s->opt.buffer, c, rep->tail_ack->tenants, rep->tail_ack->n_tenants,
                            pc_mono_ms());
    if (rep != NULL)
        popcast__sync_reply__free_unpacked(rep, NULL);
    return ok;
}

/* One round: what the buffer holds goes to the controllers that asked for
 * it; controllers due a poll are polled. */
static void round_trip(pc_tail_shipper *s)
{
    int64_t now = pc_mono_ms();
    pc_tail_taken taken;
    bool have = pc_tail_buffer_take(s->opt.buffer, now, &taken);
    Popcast__TailRecord **records = calloc(taken.n_records + 1, sizeof(*records));
    Popcast__TailDrop **drops = calloc(taken.n_drops + 1, sizeof(*drops));
    for (size_t c = 0; c < s->n && records != NULL && drops != NULL && !atomic_load(&s->stop);
         c++) {
        Popcast__TailBatch batch = POPCAST__TAIL_BATCH__INIT;
        batch.agent_id = (char *)s->opt.agent_id;
        batch.pop = (char *)(s->opt.pop ? s->opt.pop : "");
        batch.records = records;
        batch.drops = drops;
        for (size_t i = 0; have && i < taken.n_records; i++)
            if (taken.record_masks[i] >> c & 1)
                records[batch.n_records++] = taken.records[i];
        for (size_t i = 0; have && i < taken.n_drops; i++)
            if (taken.drop_masks[i] >> c & 1)
                drops[batch.n_drops++] = taken.drops[i];
        bool due = now >= s->controllers[c].next_poll_ms;
        if (batch.n_records == 0 && batch.n_drops == 0 && !due)
            continue;
        bool ok = send_batch(s, c, &batch);
        s->controllers[c].next_poll_ms = now + (int64_t)s->opt.poll_ms;
        pc_metric_add(ok ? s->m_batches : s->m_failures, 1);
        pc_metric_add(ok ? s->m_lines : s->m_lost, batch.n_records);
    }
    free(records);
    free(drops);
    if (have)
        pc_tail_taken_clear(&taken);
    pc_metric_set(s->m_dropped, pc_tail_buffer_dropped_total(s->opt.buffer));
}

static void *run(void *arg)
{
    pc_tail_shipper *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        pthread_mutex_unlock(&s->lock);
        round_trip(s);
        pthread_mutex_lock(&s->lock);
        if (s->stop)
            break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        uint64_t wait_ms = s->opt.flush_ms;
        until.tv_sec += (time_t)(wait_ms / 1000);
        until.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cond, &s->lock, &until);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static int open_controller(pc_tail_shipper *s, controller *c, const char *url)
{
    int rv = nng_req0_open(&c->sock);
    if (rv != 0)
        return rv;
    rv = nng_socket_set_ms(c->sock, NNG_OPT_RECVTIMEO, (nng_duration)s->opt.request_timeout_ms);
    if (rv == 0)
        rv = nng_socket_set_ms(c->sock, NNG_OPT_SENDTIMEO, (nng_duration)s->opt.request_timeout_ms);
    if (rv == 0)
        rv = nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, ACK_MAX);
    if (rv == 0)
        rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, PC_REDIAL_MIN_MS);
    if (rv == 0)
        rv = nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, PC_REDIAL_MAX_MS);
    pc_err derr;
    if (rv == 0 && pc_nng_dial(c->sock, url, s->opt.tls, NNG_FLAG_NONBLOCK, &derr) != PC_OK)
        rv = NNG_EINVAL;
    if (rv != 0) {
        nng_close(c->sock);
        return rv;
    }
    c->open = true;
    return 0;
}

static void free_shipper(pc_tail_shipper *s)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->controllers[i].open)
            pc_nng_close_bounded(s->controllers[i].sock, PC_NNG_CLOSE_MS, "a tail connection");
    free(s->controllers);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int pc_tail_shipper_start(pc_tail_shipper **out, const pc_tail_shipper_options *opt, pc_err *err)
{
    pc_tail_shipper *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->opt = *opt;
    if (s->opt.poll_ms == 0)
        s->opt.poll_ms = DEFAULT_POLL_MS;
    if (s->opt.flush_ms == 0)
        s->opt.flush_ms = DEFAULT_FLUSH_MS;
    if (s->opt.request_timeout_ms == 0)
        s->opt.request_timeout_ms = DEFAULT_TIMEOUT_MS;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    /* Counters above any the agent used before it restarted. */
    s->counter = (uint64_t)pc_wall_ms() * 1000;
    s->n = opt->urls->count;
    s->controllers = calloc(s->n ? s->n : 1, sizeof(*s->controllers));
    if (s->controllers == NULL) {
        free_shipper(s);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < s->n; i++) {
        int rv = open_controller(s, &s->controllers[i], opt->urls->items[i]);
        if (rv != 0) {
            free_shipper(s);
            return pc_err_set(err, PC_E_INVALID, "tail: cannot dial %s: %s", opt->urls->items[i],
                              nng_strerror(rv));
        }
    }
    if (opt->metrics != NULL) {
        s->m_batches = pc_metrics_counter(opt->metrics, "popcast_agent_tail_batches_total", NULL,
                                          "tail batches and polls controllers answered");
        s->m_failures = pc_metrics_counter(opt->metrics, "popcast_agent_tail_failures_total", NULL,
                                           "tail batches and polls that failed");
        s->m_lines = pc_metrics_counter(opt->metrics, "popcast_agent_tail_lines_total", NULL,
                                        "tenants' log lines sent to controllers");
        s->m_lost = pc_metrics_counter(opt->metrics, "popcast_agent_tail_lost_total", NULL,
                                       "tenants' log lines a controller did not take");
        s->m_dropped =
            pc_metrics_gauge(opt->metrics, "popcast_agent_tail_dropped", NULL,
                             "tenants' log lines dropped since the start: the buffer was full");
    }
    if (pthread_create(&s->thread, NULL, run, s) != 0) {
        free_shipper(s);
        return pc_err_set(err, PC_E_NOMEM, "cannot start the tail thread");
    }
    s->started = true;
    *out = s;
    return PC_OK;
}

void pc_tail_shipper_stop(pc_tail_shipper *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    /* Closing the sockets ends a request in flight at once (a controller
     * that does not answer would hold the thread for its timeouts). */
    for (size_t i = 0; i < s->n; i++)
        if (s->controllers[i].open) {
            pc_nng_close_bounded(s->controllers[i].sock, PC_NNG_CLOSE_MS, "a tail connection");
            s->controllers[i].open = false;
        }
    if (s->started)
        pthread_join(s->thread, NULL);
    free_shipper(s);
}
