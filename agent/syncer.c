/* syncer.c - catch-up and status over req/rep (see syncer.h). */
#include "syncer.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "nng_close.h"
#include "protocol_limits.h"
#include "report_book.h"

/* Each controller's catch-up backs off on its own after a failure, an
 * error reply or an answer that does not move the agent forward (a lie:
 * "head is N" with no entries, entries it already has, a snapshot that is
 * not ahead): from BACKOFF_MIN_MS, doubling up to BACKOFF_MAX_MS, each wait
 * drawn between half and all of it (jitter: a fleet does not retry in
 * step). */
#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 5000
/* After a catch-up that found nothing to apply, the next one waits this
 * long. What asks for catch-up is not always authenticated (an entry far
 * ahead, or a heartbeat, signed by a key the agent does not know yet may
 * announce a rotation it missed): a flood of those must not turn into a
 * flood of requests to the controllers. */
#define IDLE_HOLDOFF_MS 250
/* A failure that repeats is logged at most once per this long, with the
 * count of those not logged: a dead or hostile controller must not fill
 * the log. */
#define LOG_INTERVAL_MS 10000
/* No relay answered: reports go to every controller this long before the
 * relays are tried again. */
#define RELAY_RETRY_MS 10000

/* Status acks are a few bytes; anything much larger is not one. */
#define REPORT_REPLY_MAX (64 * 1024)

/* How often the report thread looks at freshness even when nothing else
 * is due: becoming stale (or fresh again) is a change the controllers hear
 * about at once, not at the next periodic report. */
#define STALE_WATCH_MS 200

typedef struct log_gate {
    int64_t next_ms;
    unsigned suppressed;
} log_gate;

typedef struct link {
    struct pc_syncer *s;
    char *url;
    bool relay; /* a PoP relay's (opt.relays), not a controller's */
    /* Catch-up: the sync thread's socket, and what it learnt of it. */
    nng_socket sock;
    _Atomic int pipes;    /* connections (nng pipe events) */
    unsigned failures;    /* catch-up failures in a row: the health score */
    int64_t last_ok_ms;   /* the last catch-up it answered (0: never) */
    int64_t retry_at_ms;  /* backoff: not asked again before this */
    uint64_t backoff_ms;  /* the next failure's backoff */
    int unreachable;      /* the last failure was "no connection" */
    _Atomic int new_pipe; /* connected since unreachable was set */
    log_gate sync_log;
    /* Reports: a socket, context and aio of their own. Under s->lock:
     * busy (a request in flight), pending (a newer report waits). */
    nng_socket rsock;
    nng_ctx rctx;
    nng_aio *raio;
    int r_open;     /* rsock, rctx and raio exist */
    bool sock_shut; /* sock was closed (by the stop): closing it again would wait */
    int r_busy, r_pending, r_receiving;
    nng_msg *r_next; /* the report thread's: claimed, to send */
    /* Delta reports (report_book.h), under s->lock: the generation in
     * flight; the last one this controller acknowledged holding (0: none);
     * whether it takes deltas. */
    uint64_t r_counter, acked;
    bool takes_deltas;
    log_gate report_log;
} link;

struct pc_syncer {
    pc_syncer_options opt;
    link *links;
    size_t n_links;
    size_t *order; /* the sync thread's scratch: links in the order to try */
    pthread_t sync_thread, report_thread;
    int sync_started, report_started;
    pthread_mutex_t lock;
    pthread_cond_t sync_cond;   /* wakes the catch-up thread */
    pthread_cond_t report_cond; /* wakes the report thread */
    int stop, need_sync, dirty;
    int sync_exited;       /* the catch-up thread has returned (under lock) */
    _Atomic int stopping;  /* no new request once set (read without lock) */
    int64_t last_sync_ms;  /* the periodic probe runs sync_interval after it */
    int64_t idle_until_ms; /* a catch-up that found nothing: not before this */
    int64_t next_status_ms, last_status_ms;
    uint64_t counter;
    int stale; /* as last seen by the report thread */
    /* With relays: the relay link reports go to (its index), or -1 for
     * every controller until relay_retry_ms; under lock. */
    long report_via;
    int64_t relay_retry_ms;
    size_t n_relays;
    int relay_waited;      /* the catch-up thread's: the first round waited for a relay */
    _Atomic long upstream; /* the link the last catch-up came from (-1: none) */
    /* The latest status, under lock: what a sender sends next, whole or as
     * a delta on what its controller acknowledged. */
    pc_report_book *book;
    /* The report thread's: the applier's tenants generation the book's
     * tenant part was built at (book_built: valid), and when. */
    uint64_t book_gen;
    bool book_built;
    int64_t book_built_ms;
    int64_t traffic_ms; /* the report thread's: when counts were last published */
    pc_metric *m_syncs, *m_sync_failures, *m_entries, *m_chunks, *m_reports, *m_report_failures;
    pc_metric *m_report_bytes, *m_table_bytes, *m_deltas;
    pc_metric *m_stale, *m_snapshot_waits;
};

/* Logs a repeated failure at most once per LOG_INTERVAL_MS, saying how
 * many were not logged in between. */
static void gated_warn(log_gate *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gated_warn(log_gate *g, const char *fmt, ...)
{
    int64_t now = pc_mono_ms();
    if (now < g->next_ms) {
        g->suppressed++;
        return;
    }
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (g->suppressed > 0)
        pc_warn("syncer", "%s (and %u more like it in the last %d s)", msg, g->suppressed,
                LOG_INTERVAL_MS / 1000);
    else
        pc_warn("syncer", "%s", msg);
    g->suppressed = 0;
    g->next_ms = now + LOG_INTERVAL_MS;
}

static void gate_reset(log_gate *g)
{
    g->next_ms = 0;
    g->suppressed = 0;
}

/* Catch-up. */

/* One request and its reply on one link's catch-up socket. */
static int call(pc_syncer *s, link *l, const Popcast__SyncCall *req, Popcast__SyncReply **out,
                pc_err *err)
{
    if (atomic_load(&s->stopping))
        return pc_err_set(err, PC_E_UNAVAILABLE, "the agent is stopping");
    size_t len = popcast__sync_call__get_packed_size(req);
    nng_msg *msg = NULL;
    int rv = nng_msg_alloc(&msg, len);
    if (rv != 0)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    popcast__sync_call__pack(req, nng_msg_body(msg));
    if ((rv = nng_sendmsg(l->sock, msg, 0)) != 0) {
        nng_msg_free(msg);
        return pc_err_set(err, rv == NNG_ETIMEDOUT ? PC_E_TIMEOUT : PC_E_UNAVAILABLE, "%s: %s",
                          l->url, rv == NNG_ETIMEDOUT ? "no connection" : nng_strerror(rv));
    }
    nng_msg *rep = NULL;
    if ((rv = nng_recvmsg(l->sock, &rep, 0)) != 0)
        return pc_err_set(err, rv == NNG_ETIMEDOUT ? PC_E_TIMEOUT : PC_E_UNAVAILABLE, "%s: %s",
                          l->url, nng_strerror(rv));
    *out = popcast__sync_reply__unpack(NULL, nng_msg_len(rep), nng_msg_body(rep));
    nng_msg_free(rep);
    if (*out == NULL)
        return pc_err_set(err, PC_E_INVALID, "%s: reply does not decode", l->url);
    return PC_OK;
}

/* Fetches size bytes of the bundle whose hash is given, in chunks. Only
 * called with a hash and size from a verified manifest (size within
 * max_bundle): the bytes themselves are checked against it by the
 * applier. */
static int fetch_bundle(pc_syncer *s, link *l, const ProtobufCBinaryData *hash, size_t size,
                        uint8_t **out, pc_err *err)
{
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    size_t got = 0;
    int rc = PC_OK;
    while (got < size) {
        Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
        Popcast__BundleChunkRequest creq = POPCAST__BUNDLE_CHUNK_REQUEST__INIT;
        creq.bundle_hash = *hash;
        creq.offset = got;
        creq.length = s->opt.chunk_bytes;
        c.body_case = POPCAST__SYNC_CALL__BODY_CHUNK;
        c.chunk = &creq;
        Popcast__SyncReply *rep = NULL;
        if ((rc = call(s, l, &c, &rep, err)) != PC_OK)
            break;
        pc_metric_add(s->m_chunks, 1);
        if (rep->body_case != POPCAST__SYNC_REPLY__BODY_CHUNK || rep->chunk->error[0] != '\0' ||
            rep->chunk->total_size != size || rep->chunk->data.len == 0 ||
            rep->chunk->data.len > size - got) {
            rc =
                pc_err_set(err, PC_E_UNAVAILABLE, "chunk at %zu refused: %s", got,
                           rep->body_case == POPCAST__SYNC_REPLY__BODY_CHUNK && rep->chunk->error[0]
                               ? rep->chunk->error
                               : "wrong size");
            popcast__sync_reply__free_unpacked(rep, NULL);
            break;
        }
        memcpy(buf + got, rep->chunk->data.data, rep->chunk->data.len);
        got += rep->chunk->data.len;
        popcast__sync_reply__free_unpacked(rep, NULL);
    }
    if (rc != PC_OK) {
        free(buf);
        return rc;
    }
    *out = buf;
    return PC_OK;
}

/* The seq an entry's manifest names, read from bytes not verified yet
 * (0 if they do not decode): only to tell whether a group of catch-up
 * entries was applied to its end. */
static uint64_t claimed_seq(const Popcast__Entry *e)
{
    if (e == NULL || e->signed_ == NULL)
        return 0;
    Popcast__Manifest *m =
        popcast__manifest__unpack(NULL, e->signed_->manifest.len, e->signed_->manifest.data);
    uint64_t seq = m != NULL ? m->seq : 0;
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    return seq;
}

/* The entry as it must be applied: with its bundle, fetched if omitted.
 * *owned is what the caller frees after applying. m is the entry's
 * manifest, already verified; NULL makes the applier verify it first
 * (catch-up), so that nothing is fetched for an entry that is not
 * genuine or declares a bundle over max_bundle, and PC_E_DUPLICATE
 * says it was applied meanwhile. */
static int complete_entry(pc_syncer *s, link *l, const Popcast__Entry *e,
                          const Popcast__Manifest *m, Popcast__Entry *full, uint8_t **owned,
                          pc_err *err)
{
    *full = *e;
    *owned = NULL;
    if (!e->bundle_omitted)
        return PC_OK;
    Popcast__Manifest *verified = NULL;
    int rc = PC_OK;
    if (m == NULL) {
        if ((rc = pc_applier_verify_announced(s->opt.applier, e, &verified, err)) != PC_OK)
            return rc;
        m = verified;
        if (m->seq <= pc_applier_applied_seq(s->opt.applier))
            rc = PC_E_DUPLICATE; /* applied meanwhile (pub/sub): nothing to fetch */
    }
    if (rc == PC_OK && pc_manifest_has_content(m)) {
        rc = fetch_bundle(s, l, &m->bundle_hash, (size_t)m->bundle_size, owned, err);
        if (rc == PC_OK) {
            full->bundle.data = *owned;
            full->bundle.len = (size_t)m->bundle_size;
            full->bundle_omitted = 0;
        }
    }
    if (verified != NULL)
        popcast__manifest__free_unpacked(verified, NULL);
    return rc;
}

/* Longest wait for a heartbeat that reaches a snapshot's seq: several
 * heartbeats at the default heartbeat_ms (1 s), and past the default
 * stale_after_ms (5 s), after which the check no longer applies. */
#define SNAPSHOT_HEAD_WAIT_MS 10000

/* A snapshot is installed only when its seq is not past the head of the
 * last heartbeat. Under a steady stream of writes the head moves between
 * two heartbeats, so a snapshot served now is nearly always past it, and
 * a new one asked for after a refusal would be too: the agent would not
 * converge until the writes stopped. So a snapshot whose only fault is
 * that (its assertion verified) is kept, and the syncer waits (woken by
 * each heartbeat, pc_syncer_notify) until a heartbeat's head reaches
 * seq, the agent turns stale, or the wait ends. True when it was
 * reached. */
static bool wait_for_head(pc_syncer *s, uint64_t seq)
{
    pc_applier *a = s->opt.applier;
    struct timespec deadline;
    pc_deadline_after_ms(&deadline, SNAPSHOT_HEAD_WAIT_MS);
    pthread_mutex_lock(&s->lock);
    while (!s->stop && pc_applier_head_seq(a) < seq && !pc_applier_is_stale(a) &&
           pthread_cond_timedwait(&s->sync_cond, &s->lock, &deadline) == 0)
        ;
    bool reached = !s->stop && (pc_applier_head_seq(a) >= seq || pc_applier_is_stale(a));
    pthread_mutex_unlock(&s->lock);
    if (reached)
        pc_metric_add(s->m_snapshot_waits, 1);
    return reached;
}

static int take_snapshot(pc_syncer *s, link *l, pc_err *err)
{
    Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
    Popcast__SnapshotRequest sreq = POPCAST__SNAPSHOT_REQUEST__INIT;
    sreq.agent_id = (char *)s->opt.agent_id;
    c.body_case = POPCAST__SYNC_CALL__BODY_SNAPSHOT;
    c.snapshot = &sreq;
    Popcast__SyncReply *rep = NULL;
    int rc = call(s, l, &c, &rep, err);
    if (rc != PC_OK)
        return rc;
    if (rep->body_case != POPCAST__SYNC_REPLY__BODY_SNAPSHOT || rep->snapshot->error[0] != '\0') {
        rc = pc_err_set(err, PC_E_UNAVAILABLE, "snapshot refused: %s",
                        rep->body_case == POPCAST__SYNC_REPLY__BODY_SNAPSHOT ? rep->snapshot->error
                                                                             : "unexpected reply");
        popcast__sync_reply__free_unpacked(rep, NULL);
        return rc;
    }
    Popcast__SnapshotResponse *snap = rep->snapshot;
    size_t n = snap->n_tenants;
    Popcast__Entry *full = calloc(n ? n : 1, sizeof(*full));
    Popcast__Entry **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
    uint8_t **owned = calloc(n ? n : 1, sizeof(*owned));
    if (full == NULL || ptrs == NULL || owned == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    } else {
        /* All of it verified before any bundle is fetched. */
        uint64_t ahead = 0;
        rc = pc_applier_verify_snapshot(s->opt.applier, snap, &ahead, err);
        if (rc != PC_OK && ahead != 0) {
            wait_for_head(s, ahead);
            /* Reached or not, judged again; a refusal now is counted. */
            rc = pc_applier_verify_snapshot(s->opt.applier, snap, NULL, err);
        }
        for (size_t i = 0; i < n && rc == PC_OK; i++) {
            /* These exact bytes were just verified. */
            Popcast__Manifest *m =
                popcast__manifest__unpack(NULL, snap->tenants[i]->signed_->manifest.len,
                                          snap->tenants[i]->signed_->manifest.data);
            if (m == NULL)
                rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
            else
                rc = complete_entry(s, l, snap->tenants[i], m, &full[i], &owned[i], err);
            ptrs[i] = &full[i];
            if (m != NULL)
                popcast__manifest__free_unpacked(m, NULL);
        }
        if (rc == PC_OK)
            rc = pc_applier_install_snapshot(s->opt.applier, snap, ptrs, err);
        /* It demanded a snapshot and sent one that is not ahead of us:
         * asking again would get the same answer. */
        if (rc == PC_E_DUPLICATE)
            rc = pc_err_set(err, PC_E_UNAVAILABLE,
                            "%s: asked for a snapshot, sent one (seq %llu) that is not ahead "
                            "of the applied seq %llu",
                            l->url, (unsigned long long)snap->seq,
                            (unsigned long long)pc_applier_applied_seq(s->opt.applier));
        for (size_t i = 0; i < n; i++)
            free(owned[i]);
    }
    free(full);
    free(ptrs);
    free(owned);
    popcast__sync_reply__free_unpacked(rep, NULL);
    return rc;
}

/* Catches up from one link until the head it reports. Every answer must
 * move the applied seq forward (or say we are at its head): one that does
 * not is an error, so a lying or broken endpoint costs one request per
 * backoff, never a loop. */
static int catch_up_from(pc_syncer *s, link *l, pc_err *err)
{
    for (;;) {
        uint64_t applied = pc_applier_applied_seq(s->opt.applier);
        Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
        Popcast__SyncRequest req = POPCAST__SYNC_REQUEST__INIT;
        req.after_seq = applied;
        req.max_entries = s->opt.batch_entries;
        req.max_bytes = s->opt.batch_bytes;
        req.agent_id = (char *)s->opt.agent_id;
        c.body_case = POPCAST__SYNC_CALL__BODY_SYNC;
        c.sync = &req;
        Popcast__SyncReply *rep = NULL;
        int rc = call(s, l, &c, &rep, err);
        if (rc != PC_OK)
            return rc;
        if (rep->body_case != POPCAST__SYNC_REPLY__BODY_SYNC || rep->sync->error[0] != '\0') {
            rc = pc_err_set(err, PC_E_UNAVAILABLE, "sync refused: %s",
                            rep->body_case == POPCAST__SYNC_REPLY__BODY_SYNC ? rep->sync->error
                                                                             : "unexpected");
            popcast__sync_reply__free_unpacked(rep, NULL);
            return rc;
        }
        Popcast__SyncResponse *r = rep->sync;
        if (r->snapshot_required) {
            popcast__sync_reply__free_unpacked(rep, NULL);
            pc_info("syncer", "%s: too far behind (applied %llu): taking a snapshot", l->url,
                    (unsigned long long)applied);
            if ((rc = take_snapshot(s, l, err)) != PC_OK)
                return rc;
            if (pc_applier_applied_seq(s->opt.applier) <= applied)
                return pc_err_set(err, PC_E_UNAVAILABLE, "%s: its snapshot did not move us",
                                  l->url);
            continue;
        }
        uint64_t head = r->head_seq;
        size_t n = r->n_entries;
        for (size_t i = 0; i < n && rc == PC_OK; i++) {
            /* Entries that came with their bundles go in groups (one
             * store transaction each, pc_applier_apply_entries); a
             * refusal among them leaves the applied seq short of the
             * answer's, which the checks below treat as no progress. */
            size_t whole = 0;
            while (i + whole < n && whole < PC_APPLIER_GROUP_MAX &&
                   !r->entries[i + whole]->bundle_omitted)
                whole++;
            if (whole >= 2) {
                int got = pc_applier_apply_entries(s->opt.applier, r->entries + i, whole);
                pc_metric_add(s->m_entries, (uint64_t)got);
                /* One refused (the applier logged why): the entries after
                 * it cannot apply either, so stop here, as one by one
                 * did, rather than fetch the bundles of announced ones. */
                uint64_t last = claimed_seq(r->entries[i + whole - 1]);
                uint64_t now_at = pc_applier_applied_seq(s->opt.applier);
                if (now_at < last)
                    rc = pc_err_set(err, PC_E_UNAVAILABLE,
                                    "%s: an entry after seq %llu was refused (see the log)", l->url,
                                    (unsigned long long)now_at);
                i += whole - 1;
                continue;
            }
            Popcast__Entry full;
            uint8_t *owned = NULL;
            rc = complete_entry(s, l, r->entries[i], NULL, &full, &owned, err);
            if (rc == PC_E_DUPLICATE) {
                rc = PC_OK; /* pub/sub got there first */
            } else if (rc == PC_OK) {
                rc = pc_applier_apply_entry(s->opt.applier, &full, err);
                if (rc == PC_E_DUPLICATE)
                    rc = PC_OK; /* pub/sub got there first */
                else if (rc == PC_OK)
                    pc_metric_add(s->m_entries, 1);
            }
            free(owned);
        }
        popcast__sync_reply__free_unpacked(rep, NULL);
        if (rc != PC_OK)
            return rc;
        uint64_t now_applied = pc_applier_applied_seq(s->opt.applier);
        if (now_applied >= head) {
            /* At its head; but a signed heartbeat may have shown more. */
            uint64_t known = pc_applier_head_seq(s->opt.applier);
            if (now_applied >= known)
                return PC_OK;
            if (now_applied > applied)
                continue; /* commits keep coming: ask for those too */
            /* A controller that lags, or one that lies about its head. */
            return pc_err_set(err, PC_E_UNAVAILABLE,
                              "%s: its head %llu is behind the heartbeat's %llu", l->url,
                              (unsigned long long)head, (unsigned long long)known);
        }
        if (n == 0)
            return pc_err_set(err, PC_E_UNAVAILABLE, "%s: head is %llu but no entries came", l->url,
                              (unsigned long long)head);
        if (now_applied <= applied)
            return pc_err_set(err, PC_E_UNAVAILABLE,
                              "%s: head is %llu but its %zu entries are not after %llu", l->url,
                              (unsigned long long)head, n, (unsigned long long)applied);
    }
}

static int connected(const link *l)
{
    return atomic_load(&((link *)l)->pipes) > 0;
}

/* Which link to try first: a connected one, then a relay before a
 * controller (the relays are there to spare the controllers; one that
 * failed is skipped while it backs off, and asked first again after),
 * then the healthiest (fewest failures in a row), then the one that
 * answered last, then the configuration's order. */
static int better(const link *a, size_t ia, const link *b, size_t ib)
{
    int ca = connected(a), cb = connected(b);
    if (ca != cb)
        return ca > cb;
    if (a->relay != b->relay)
        return a->relay; /* the PoP's relay before the controllers */
    if (a->failures != b->failures)
        return a->failures < b->failures;
    if (a->last_ok_ms != b->last_ok_ms)
        return a->last_ok_ms > b->last_ok_ms;
    return ia < ib;
}

static void order_links(pc_syncer *s, size_t *order)
{
    for (size_t i = 0; i < s->n_links; i++) {
        size_t j = i;
        while (j > 0 && better(&s->links[i], i, &s->links[order[j - 1]], order[j - 1])) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
}

static int any_connected(pc_syncer *s)
{
    for (size_t i = 0; i < s->n_links; i++)
        if (connected(&s->links[i]))
            return 1;
    return 0;
}

static int any_relay_connected(pc_syncer *s)
{
    for (size_t i = 0; i < s->n_relays; i++)
        if (connected(&s->links[i]))
            return 1;
    return 0;
}

/* Right after start (or when every controller dropped), dials are still in
 * flight: give them connect_timeout_ms to produce a connection (enough
 * says which: any, or a relay's), so the first to connect is asked first
 * rather than the first in the configuration, which may be down. */
static void wait_for_a_connection(pc_syncer *s, int (*enough)(pc_syncer *))
{
    struct timespec deadline;
    pc_deadline_after_ms(&deadline, s->opt.connect_timeout_ms);
    pthread_mutex_lock(&s->lock);
    while (!s->stop && !enough(s) &&
           pthread_cond_timedwait(&s->sync_cond, &s->lock, &deadline) == 0)
        ;
    pthread_mutex_unlock(&s->lock);
}

/* A link's catch-up failed: it waits out its backoff (drawn between half
 * and all of it) before it is asked again, and its next one doubles. */
static void back_off(link *l, int unreachable)
{
    uint64_t half = l->backoff_ms / 2;
    l->retry_at_ms = pc_mono_ms() + (int64_t)(half + randombytes_uniform((uint32_t)half + 1));
    l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : l->backoff_ms * 2;
    l->failures++;
    l->unreachable = unreachable;
    atomic_store(&l->new_pipe, 0);
}

/* When a link may be asked again. A link that failed for want of a
 * connection may be asked as soon as it has one. */
static int64_t ready_at(link *l)
{
    if (l->unreachable && atomic_load(&l->new_pipe))
        return 0;
    return l->retry_at_ms;
}

/* The earliest time any link may be asked. */
static int64_t next_ready(pc_syncer *s)
{
    int64_t t = INT64_MAX;
    for (size_t i = 0; i < s->n_links; i++) {
        int64_t r = ready_at(&s->links[i]);
        if (r < t)
            t = r;
    }
    return t;
}

/* One round: asks each link that is not backing off, in order, until one
 * brings the agent to its head. PC_OK, or PC_E_UNAVAILABLE when none did
 * (the caller retries when the first backoff ends). */
static int catch_up(pc_syncer *s)
{
    pc_err err;
    pc_metric_add(s->m_syncs, 1);
    if (s->n_relays > 0 && !s->relay_waited && !any_relay_connected(s)) {
        /* The first round, with relays: a controller that connected
         * first must not serve what the PoP's relay is there for (a new
         * agent's snapshot, say). Once: later rounds take what is up. */
        wait_for_a_connection(s, any_relay_connected);
    } else if (!any_connected(s)) {
        wait_for_a_connection(s, any_connected);
    }
    s->relay_waited = 1;
    size_t *order = s->order;
    order_links(s, order);
    for (size_t k = 0; k < s->n_links && !atomic_load(&s->stopping); k++) {
        link *l = &s->links[order[k]];
        if (ready_at(l) > pc_mono_ms())
            continue;
        pc_err_clear(&err);
        int rc = catch_up_from(s, l, &err);
        if (rc == PC_OK) {
            l->failures = 0;
            l->backoff_ms = BACKOFF_MIN_MS;
            l->retry_at_ms = 0;
            l->unreachable = 0;
            l->last_ok_ms = pc_mono_ms();
            atomic_store(&s->upstream, (long)order[k]);
            gate_reset(&l->sync_log);
            return PC_OK;
        }
        back_off(l, rc == PC_E_TIMEOUT && !connected(l));
        gated_warn(&l->sync_log, "catch-up from %s failed: %s (next try in %lld ms or later)",
                   l->url, err.msg, (long long)(l->retry_at_ms - pc_mono_ms()));
    }
    pc_metric_add(s->m_sync_failures, 1);
    return PC_E_UNAVAILABLE;
}

static void *sync_run(void *arg)
{
    pc_syncer *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        int64_t now = pc_mono_ms();
        int64_t due =
            s->need_sync ? next_ready(s) : s->last_sync_ms + (int64_t)s->opt.sync_interval_ms;
        if (due < s->idle_until_ms)
            due = s->idle_until_ms;
        if (now < due) {
            struct timespec ts;
            pc_deadline_after_ms(&ts, (uint64_t)(due - now));
            pthread_cond_timedwait(&s->sync_cond, &s->lock, &ts);
            continue;
        }
        s->need_sync = 0;
        pthread_mutex_unlock(&s->lock);
        uint64_t before = pc_applier_applied_seq(s->opt.applier);
        int rc = catch_up(s);
        pthread_mutex_lock(&s->lock);
        s->last_sync_ms = pc_mono_ms();
        if (rc != PC_OK)
            s->need_sync = 1; /* again when the first backoff ends */
        else if (pc_applier_applied_seq(s->opt.applier) == before)
            s->idle_until_ms = s->last_sync_ms + IDLE_HOLDOFF_MS;
    }
    s->sync_exited = 1;
    pthread_cond_broadcast(&s->sync_cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* nng pipe events on a catch-up socket: counts connections, and wakes a
 * catch-up waiting for one. ADD_PRE and REM_POST come in pairs (nng runs
 * REM_POST only for pipes that ran ADD_PRE). */
static void pipe_event(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    (void)p;
    link *l = arg;
    if (ev == NNG_PIPE_EV_ADD_PRE) {
        atomic_fetch_add(&l->pipes, 1);
    } else if (ev == NNG_PIPE_EV_REM_POST) {
        atomic_fetch_sub(&l->pipes, 1);
    } else if (ev == NNG_PIPE_EV_ADD_POST) {
        atomic_store(&l->new_pipe, 1);
        pthread_mutex_lock(&l->s->lock);
        pthread_cond_broadcast(&l->s->sync_cond);
        pthread_mutex_unlock(&l->s->lock);
    }
}

/* Reports. */

/* Claims l's sender for the latest report (lock held, l not busy): the
 * message to hand to send_report once the lock is released (nng may run
 * the callback, which takes the lock, before nng_ctx_send returns), or
 * NULL. The report is a delta on what l's controller acknowledged when it
 * takes them, else whole. */
static nng_msg *claim_report(pc_syncer *s, link *l)
{
    nng_msg *msg = NULL;
    l->r_pending = 0;
    uint8_t *report = NULL;
    size_t len = 0;
    bool delta = false;
    if (pc_report_book_pack(s->book, l->takes_deltas ? l->acked : 0, s->opt.identity, &report, &len,
                            &delta) != PC_OK ||
        nng_msg_alloc(&msg, len) != 0) {
        free(report);
        pc_metric_add(s->m_report_failures, 1);
        return NULL;
    }
    memcpy(nng_msg_body(msg), report, len);
    free(report);
    pc_metric_set(s->m_report_bytes, len);
    if (delta)
        pc_metric_add(s->m_deltas, 1);
    l->r_counter = pc_report_book_counter(s->book);
    l->r_busy = 1;
    l->r_receiving = 0;
    return msg;
}

/* Whether link i gets the reports (lock held). Without relays, every
 * controller does; with them, the relay in use, or every controller while
 * no relay answers (docs/protocol.md "Relays"). */
static bool report_target(const pc_syncer *s, size_t i)
{
    if (s->n_relays == 0)
        return true;
    if (s->report_via >= 0)
        return (long)i == s->report_via;
    return !s->links[i].relay;
}

/* The relay in use did not answer (lock held): the next relay takes the
 * reports, or, after the last, every controller until RELAY_RETRY_MS has
 * passed. The new targets get the latest report now: *sends (n_links
 * slots) receives what to send once the lock is released. */
static void relay_failed(pc_syncer *s, link *l, nng_msg **sends)
{
    long was = s->report_via;
    s->report_via = was + 1 < (long)s->n_relays ? was + 1 : -1;
    if (s->report_via < 0)
        s->relay_retry_ms = pc_mono_ms() + RELAY_RETRY_MS;
    pc_warn("syncer", "relay %s does not take status reports: sending them to %s", l->url,
            s->report_via >= 0 ? s->links[s->report_via].url : "every controller");
    for (size_t i = 0; i < s->n_links; i++) {
        link *t = &s->links[i];
        if (t == l || !report_target(s, i))
            continue;
        if (t->r_busy)
            t->r_pending = 1;
        else if (sends != NULL)
            sends[i] = claim_report(s, t);
    }
}

/* Sends what claim_report gave (lock not held). */
static void send_report(link *l, nng_msg *msg)
{
    nng_aio_set_msg(l->raio, msg);
    nng_ctx_send(l->rctx, l->raio);
}

/* The report sender of one link (an nng thread): send done, then reply. */
static void report_done(void *arg)
{
    link *l = arg;
    pc_syncer *s = l->s;
    int rv = nng_aio_result(l->raio);
    int ok = 0;
    char why[256] = "";
    int acked = -1; /* -1: no ack; else whether it holds the table */
    bool resend_whole = false;
    bool relay_down = false; /* a relay that could not forward it */
    if (!l->r_receiving) {
        if (rv == 0) {
            l->r_receiving = 1;
            nng_ctx_recv(l->rctx, l->raio);
            return;
        }
        /* A send that did not happen hands its message back. */
        nng_msg *msg = nng_aio_get_msg(l->raio);
        nng_aio_set_msg(l->raio, NULL);
        if (msg != NULL)
            nng_msg_free(msg);
        snprintf(why, sizeof(why), "%s", rv == NNG_ETIMEDOUT ? "no connection" : nng_strerror(rv));
    } else if (rv != 0) {
        snprintf(why, sizeof(why), "%s", nng_strerror(rv));
    } else {
        nng_msg *msg = nng_aio_get_msg(l->raio);
        nng_aio_set_msg(l->raio, NULL);
        Popcast__SyncReply *rep =
            popcast__sync_reply__unpack(NULL, nng_msg_len(msg), nng_msg_body(msg));
        nng_msg_free(msg);
        ok = 1;
        if (rep == NULL || rep->body_case != POPCAST__SYNC_REPLY__BODY_STATUS_ACK) {
            snprintf(why, sizeof(why), "the answer is not a status ack");
        } else if (rep->status_ack->error[0] != '\0') {
            snprintf(why, sizeof(why), "refused: %s", rep->status_ack->error);
            relay_down = l->relay && strncmp(rep->status_ack->error, PC_RELAY_UNAVAILABLE,
                                             strlen(PC_RELAY_UNAVAILABLE)) == 0;
        } else if (rep->status_ack->resend_whole) {
            resend_whole = true;
        } else {
            acked = rep->status_ack->takes_deltas ? 1 : 0;
        }
        if (rep != NULL)
            popcast__sync_reply__free_unpacked(rep, NULL);
    }
    pc_metric_add(ok ? s->m_reports : s->m_report_failures, 1);
    pthread_mutex_lock(&s->lock);
    l->r_busy = 0;
    if (rv == NNG_ECANCELED || rv == NNG_ECLOSED || atomic_load(&s->stopping)) {
        pthread_mutex_unlock(&s->lock);
        return;
    }
    if (acked >= 0) {
        l->takes_deltas = acked == 1;
        l->acked = acked == 1 ? l->r_counter : 0;
    } else if (resend_whole) {
        /* Its controller lacks the base (it restarted, or lost a report):
         * the whole table goes to it now, not at the next interval. */
        l->acked = 0;
        l->takes_deltas = false;
        l->r_pending = 1;
    }
    if (why[0] != '\0')
        gated_warn(&l->report_log, "status report to %s: %s", l->url, why);
    else
        gate_reset(&l->report_log);
    size_t self = (size_t)(l - s->links);
    nng_msg **sends = NULL;
    if ((!ok || relay_down) && l->relay && (long)self == s->report_via) {
        sends = calloc(s->n_links, sizeof(*sends));
        relay_failed(s, l, sends);
    }
    if (!report_target(s, self))
        l->r_pending = 0;
    nng_msg *next = l->r_pending ? claim_report(s, l) : NULL;
    pthread_mutex_unlock(&s->lock);
    if (next != NULL)
        send_report(l, next);
    for (size_t i = 0; sends != NULL && i < s->n_links; i++)
        if (sends[i] != NULL)
            send_report(&s->links[i], sends[i]);
    free(sends);
}

/* An unchanged tenant part is built again at least this often all the
 * same: a change the generation missed would be shown no later. */
#define REBUILD_MS 30000

/* Builds the status as the latest generation and hands it to every
 * sender that is idle; a busy one sends it when its request ends. The
 * tenant part, which grows with the tenants, is built only when the
 * applier's tenants generation moved since the last build (an idle
 * agent's reports then cost nothing per tenant); else the book renews it. */
static void send_reports(pc_syncer *s)
{
    uint64_t gen = pc_applier_tenants_generation(s->opt.applier);
    int64_t now = pc_mono_ms();
    bool counts_moved = false;
    if (s->opt.traffic != NULL && now - s->traffic_ms >= (int64_t)s->opt.traffic_interval_ms) {
        s->traffic_ms = now;
        counts_moved = pc_traffic_publish(s->opt.traffic);
    }
    bool renew =
        s->book_built && gen == s->book_gen && !counts_moved && now - s->book_built_ms < REBUILD_MS;
    Popcast__AgentStatus *st = calloc(1, sizeof(*st));
    int rc = st == NULL ? PC_E_NOMEM
             : renew    ? pc_applier_status_header(s->opt.applier, st)
                        : pc_applier_status(s->opt.applier, st);
    for (size_t i = 0; rc == PC_OK && !renew && s->opt.traffic != NULL && i < st->n_tenants; i++)
        rc = pc_traffic_attach(s->opt.traffic, st->tenants[i]);
    if (rc != PC_OK && st != NULL)
        pc_applier_status_clear(st);
    if (rc != PC_OK) {
        free(st);
        s->book_built = false; /* counts published but not shown: build again */
        return;
    }
    if (s->opt.traffic != NULL)
        st->traffic_since_unix_ms = pc_traffic_since_ms(s->opt.traffic);
    char *agent_id = strdup(s->opt.agent_id), *pop = strdup(s->opt.pop);
    if (agent_id == NULL || pop == NULL) {
        free(agent_id);
        free(pop);
        pc_applier_status_clear(st);
        free(st);
        pc_metric_add(s->m_report_failures, s->n_links);
        return;
    }
    st->agent_id = agent_id;
    st->pop = pop;
    long up = atomic_load(&s->upstream);
    /* malloc'd or NULL (none yet, or out of memory: none shown). */
    st->upstream = up >= 0 ? strdup(s->links[up].url) : NULL;
    /* Wall-clock microseconds, each above the last and above this start's
     * floor: counters grow across restarts and wiped stores alike. */
    uint64_t now_us = (uint64_t)pc_wall_ms() * 1000;
    s->counter = now_us > s->counter ? now_us : s->counter + 1;
    if (s->counter < s->opt.report_floor)
        s->counter = s->opt.report_floor;
    st->counter = s->counter;
    st->time_unix_ms = pc_wall_ms();
    if (!renew)
        pc_metric_set(s->m_table_bytes, popcast__agent_status__get_packed_size(st));
    pthread_mutex_lock(&s->lock);
    if (renew && pc_report_book_renew(s->book, st) != PC_OK) {
        /* Not taken: the next report builds the whole table. */
        pthread_mutex_unlock(&s->lock);
        s->book_built = false;
        free(st->agent_id);
        free(st->pop);
        free(st->upstream);
        st->agent_id = st->pop = st->upstream = NULL;
        pc_applier_status_clear(st);
        free(st);
        return;
    }
    /* Out of memory, the book still holds st, with every base void: the
     * next reports are whole. */
    if (!renew && pc_report_book_update(s->book, st) != PC_OK) {
        s->book_built = false;
        pc_warn("syncer", "out of memory: the next status reports are whole");
    } else if (!renew) {
        s->book_built = true;
        s->book_gen = gen;
        s->book_built_ms = now;
    }
    if (s->n_relays > 0 && s->report_via < 0 && pc_mono_ms() >= s->relay_retry_ms)
        s->report_via = 0; /* the relays again */
    for (size_t i = 0; i < s->n_links; i++) {
        link *l = &s->links[i];
        l->r_next = NULL;
        if (s->stop || !report_target(s, i))
            continue;
        if (l->r_busy)
            l->r_pending = 1;
        else
            l->r_next = claim_report(s, l);
    }
    pthread_mutex_unlock(&s->lock);
    /* A claimed sender is ours until its callback runs: no lock needed. */
    for (size_t i = 0; i < s->n_links; i++)
        if (s->links[i].r_next != NULL)
            send_report(&s->links[i], s->links[i].r_next);
}

static void *report_run(void *arg)
{
    pc_syncer *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        int stale = pc_applier_is_stale(s->opt.applier) ? 1 : 0;
        pc_metric_set(s->m_stale, (uint64_t)stale);
        if (stale != s->stale) {
            s->stale = stale;
            s->dirty = 1;
            if (stale)
                pc_warn("syncer",
                        "stale: no valid heartbeat for over %llu ms; still serving the "
                        "last good versions",
                        (unsigned long long)pc_applier_stale_after_ms(s->opt.applier));
            else
                pc_info("syncer", "fresh again: heartbeats are arriving");
        }
        int64_t now = pc_mono_ms();
        int64_t due = s->next_status_ms;
        if (s->dirty && s->last_status_ms + (int64_t)s->opt.status_min_ms < due)
            due = s->last_status_ms + (int64_t)s->opt.status_min_ms;
        if (now < due) {
            int64_t wait = due - now;
            if (wait > STALE_WATCH_MS)
                wait = STALE_WATCH_MS;
            struct timespec ts;
            pc_deadline_after_ms(&ts, (uint64_t)wait);
            pthread_cond_timedwait(&s->report_cond, &s->lock, &ts);
            continue;
        }
        s->dirty = 0;
        s->last_status_ms = now;
        s->next_status_ms = now + (int64_t)s->opt.status_interval_ms;
        pthread_mutex_unlock(&s->lock);
        send_reports(s);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void pc_syncer_notify(pc_syncer *s, int need_sync)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    if (need_sync) {
        s->need_sync = 1;
        pthread_cond_signal(&s->sync_cond);
    }
    s->dirty = 1;
    pthread_cond_signal(&s->report_cond);
    pthread_mutex_unlock(&s->lock);
}

/* Start and stop. */

static int set_common(nng_socket sock, const pc_syncer_options *opt, size_t recv_max)
{
    int rv = nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, (nng_duration)opt->request_timeout_ms);
    /* nng resends a request whose connection dropped; do it soon. */
    if (rv == 0)
        rv = nng_socket_set_ms(sock, NNG_OPT_REQ_RESENDTIME, 2000);
    if (rv == 0)
        rv = nng_socket_set_size(sock, NNG_OPT_RECVMAXSZ, recv_max);
    if (rv == 0)
        rv = nng_socket_set_ms(sock, NNG_OPT_RECONNMINT, PC_REDIAL_MIN_MS);
    if (rv == 0)
        rv = nng_socket_set_ms(sock, NNG_OPT_RECONNMAXT, PC_REDIAL_MAX_MS);
    return rv;
}

static int dial(nng_socket sock, const char *url, const pc_syncer_options *opt)
{
    pc_err derr;
    return pc_nng_dial(sock, url, opt->tls, NNG_FLAG_NONBLOCK, &derr) == PC_OK ? 0 : NNG_EINVAL;
}

/* Opens a link's two sockets; on failure leaves nothing open. */
static int open_link(pc_syncer *s, link *l, const char *url)
{
    const pc_syncer_options *opt = &s->opt;
    l->s = s;
    int rv = nng_req0_open(&l->sock);
    if (rv != 0)
        return rv;
    /* A catch-up's send only waits for a connection: connect_timeout_ms,
     * so a controller that is down costs that much, not a whole request
     * timeout. */
    rv = nng_socket_set_ms(l->sock, NNG_OPT_SENDTIMEO, (nng_duration)opt->connect_timeout_ms);
    if (rv == 0)
        rv = set_common(l->sock, opt, opt->recv_max);
    if (rv == 0)
        rv = nng_pipe_notify(l->sock, NNG_PIPE_EV_ADD_PRE, pipe_event, l);
    if (rv == 0)
        rv = nng_pipe_notify(l->sock, NNG_PIPE_EV_ADD_POST, pipe_event, l);
    if (rv == 0)
        rv = nng_pipe_notify(l->sock, NNG_PIPE_EV_REM_POST, pipe_event, l);
    if (rv == 0)
        rv = dial(l->sock, url, opt);
    if (rv != 0) {
        nng_close(l->sock);
        return rv;
    }
    rv = nng_req0_open(&l->rsock);
    if (rv == 0)
        rv = set_common(l->rsock, opt, REPORT_REPLY_MAX);
    if (rv == 0)
        rv = nng_ctx_open(&l->rctx, l->rsock);
    if (rv == 0 && (rv = nng_aio_alloc(&l->raio, report_done, l)) != 0)
        nng_ctx_close(l->rctx);
    if (rv == 0)
        nng_aio_set_timeout(l->raio, (nng_duration)opt->request_timeout_ms);
    if (rv == 0 && (rv = dial(l->rsock, url, opt)) != 0) {
        nng_aio_free(l->raio);
        nng_ctx_close(l->rctx);
    }
    if (rv != 0) {
        nng_close(l->rsock);
        nng_close(l->sock);
        return rv;
    }
    if ((l->url = strdup(url)) == NULL) {
        nng_aio_free(l->raio);
        nng_ctx_close(l->rctx);
        nng_close(l->rsock);
        nng_close(l->sock);
        return NNG_ENOMEM;
    }
    l->r_open = 1;
    return 0;
}

/* Closes what open_link opened, once nothing uses it (no thread runs;
 * reports were stopped). */
static void close_link(link *l)
{
    if (!l->r_open)
        return;
    nng_aio_free(l->raio);
    nng_ctx_close(l->rctx);
    pc_nng_close_bounded(l->rsock, PC_NNG_CLOSE_MS, "a status report connection");
    if (!l->sock_shut)
        pc_nng_close_bounded(l->sock, PC_NNG_CLOSE_MS, "a catch-up connection");
    free(l->url);
    l->r_open = 0;
}

static void free_syncer(pc_syncer *s)
{
    for (size_t i = 0; i < s->n_links; i++)
        close_link(&s->links[i]);
    free(s->links);
    free(s->order);
    pc_report_book_free(s->book);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->sync_cond);
    pthread_cond_destroy(&s->report_cond);
    free(s);
}

int pc_syncer_start(pc_syncer **out, const pc_syncer_options *opt, pc_err *err)
{
    pc_syncer *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->opt = *opt;
    if (s->opt.connect_timeout_ms == 0 || s->opt.connect_timeout_ms > s->opt.request_timeout_ms)
        s->opt.connect_timeout_ms = s->opt.request_timeout_ms;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->sync_cond, NULL);
    pthread_cond_init(&s->report_cond, NULL);
    size_t n_relays = opt->relays != NULL ? opt->relays->count : 0;
    size_t total = n_relays + opt->urls->count;
    s->links = calloc(total ? total : 1, sizeof(*s->links));
    s->order = calloc(total ? total : 1, sizeof(*s->order));
    s->n_relays = n_relays;
    s->report_via = n_relays > 0 ? 0 : -1;
    atomic_store(&s->upstream, -1L);
    s->book = pc_report_book_new();
    if (s->links == NULL || s->order == NULL || s->book == NULL) {
        free_syncer(s);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < total; i++) {
        const char *url = i < n_relays ? opt->relays->items[i] : opt->urls->items[i - n_relays];
        s->links[i].relay = i < n_relays;
        int rv = open_link(s, &s->links[i], url);
        s->n_links = i + 1;
        if (rv != 0) {
            int code = pc_err_set(err, PC_E_INVALID, "cannot use sync address %s: %s", url,
                                  nng_strerror(rv));
            free_syncer(s);
            return code;
        }
    }
    s->need_sync = s->n_links > 0;
    for (size_t i = 0; i < s->n_links; i++)
        s->links[i].backoff_ms = BACKOFF_MIN_MS;
    int64_t now = pc_mono_ms();
    s->last_sync_ms = now;
    s->next_status_ms = now;
    s->m_stale = pc_metrics_gauge(opt->metrics, "popcast_agent_stale", NULL,
                                  "1 when no valid heartbeat arrived within stale_after_ms");
    s->m_syncs = pc_metrics_counter(opt->metrics, "popcast_agent_catchups_total", NULL,
                                    "catch-up rounds started");
    s->m_sync_failures = pc_metrics_counter(opt->metrics, "popcast_agent_catchup_failures_total",
                                            NULL, "catch-up rounds that reached no controller");
    s->m_entries = pc_metrics_counter(opt->metrics, "popcast_agent_caught_up_entries_total", NULL,
                                      "entries applied through catch-up");
    s->m_chunks = pc_metrics_counter(opt->metrics, "popcast_agent_bundle_chunks_total", NULL,
                                     "bundle chunks fetched");
    s->m_snapshot_waits = pc_metrics_counter(
        opt->metrics, "popcast_agent_snapshot_head_waits_total", NULL,
        "snapshots past the last heartbeat's head, kept until a heartbeat reached them");
    s->m_reports = pc_metrics_counter(opt->metrics, "popcast_agent_status_reports_total", NULL,
                                      "status reports delivered");
    s->m_report_failures =
        pc_metrics_counter(opt->metrics, "popcast_agent_status_report_failures_total", NULL,
                           "status reports that got no answer");
    s->m_report_bytes =
        pc_metrics_gauge(opt->metrics, "popcast_agent_status_report_bytes", NULL,
                         "size of the last status report sent (a delta: what changed)");
    s->m_table_bytes =
        pc_metrics_gauge(opt->metrics, "popcast_agent_status_table_bytes", NULL,
                         "size of the whole status table (what a whole report carries)");
    s->m_deltas = pc_metrics_counter(opt->metrics, "popcast_agent_status_deltas_total", NULL,
                                     "status reports sent as deltas");
    if (s->n_links > 0) {
        if (pthread_create(&s->sync_thread, NULL, sync_run, s) == 0)
            s->sync_started = 1;
        if (s->sync_started && pthread_create(&s->report_thread, NULL, report_run, s) == 0)
            s->report_started = 1;
        if (!s->report_started) {
            pc_syncer_stop(s);
            return pc_err_set(err, PC_E_INTERNAL, "cannot start the syncer threads");
        }
    }
    *out = s;
    return PC_OK;
}

void pc_syncer_stop(pc_syncer *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->stopping, 1);
    pthread_mutex_lock(&s->lock);
    s->stop = 1;
    pthread_cond_broadcast(&s->sync_cond);
    pthread_cond_broadcast(&s->report_cond);
    /* Let a catch-up request in flight end by itself (answer or timeout):
     * closing a req socket under a request in flight makes nng 1.5.2 lose
     * the message it still holds for resending. Bounded by the send and
     * the receive timeouts; after that, closing the sockets aborts the
     * call. */
    struct timespec deadline;
    pc_deadline_after_ms(&deadline, s->opt.connect_timeout_ms + s->opt.request_timeout_ms + 1000);
    while (s->sync_started && !s->sync_exited &&
           pthread_cond_timedwait(&s->sync_cond, &s->lock, &deadline) == 0)
        ;
    pthread_mutex_unlock(&s->lock);
    if (s->report_started)
        pthread_join(s->report_thread, NULL);
    /* Reports in flight are cancelled: nng hands back what it held. A
     * report a callback was about to send when the stop came is still on
     * its aio (nng refuses to start an operation on a stopped aio). */
    for (size_t i = 0; i < s->n_links; i++) {
        if (!s->links[i].r_open)
            continue;
        nng_aio_stop(s->links[i].raio);
        nng_msg *left = nng_aio_get_msg(s->links[i].raio);
        nng_aio_set_msg(s->links[i].raio, NULL);
        if (left != NULL)
            nng_msg_free(left);
    }
    for (size_t i = 0; i < s->n_links; i++) {
        if (s->links[i].r_open) {
            pc_nng_close_bounded(s->links[i].sock, PC_NNG_CLOSE_MS, "a catch-up connection");
            s->links[i].sock_shut = true;
        }
    }
    if (s->sync_started)
        pthread_join(s->sync_thread, NULL);
    free_syncer(s);
}
