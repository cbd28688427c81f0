/* syncer.c - catch-up and status over req/rep (see syncer.h). */
#include "syncer.h"

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "protocol_limits.h"

#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 5000

typedef struct link {
    char *url;
    nng_socket sock;
} link;

struct pc_syncer {
    pc_syncer_options opt;
    link *links;
    size_t n_links;
    size_t preferred; /* the link that last answered */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop, need_sync, dirty;
    int exited;           /* the thread has returned (under lock) */
    _Atomic int stopping; /* no new request once set (read without lock) */
    int64_t next_sync_ms; /* a requested sync waits for this (backoff) */
    int64_t last_sync_ms; /* the periodic probe runs sync_interval after it */
    int64_t next_status_ms, last_status_ms;
    uint64_t backoff_ms;
    uint64_t counter;
    int stale; /* as last seen by the watch below */
    pc_metric *m_syncs, *m_sync_failures, *m_entries, *m_chunks, *m_reports, *m_report_failures;
    pc_metric *m_stale;
};

/* How often the thread looks at freshness even when nothing else is due:
 * becoming stale (or fresh again) is a change the controllers hear about
 * at once, not at the next periodic report. */
#define STALE_WATCH_MS 200

/* One request and its reply on one link. */
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
        return pc_err_set(err, PC_E_UNAVAILABLE, "%s: send: %s", l->url, nng_strerror(rv));
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

/* Fetches a bundle announced without its bytes, in chunks. The bytes are
 * checked against the signed manifest by the applier, not here. */
static int fetch_bundle(pc_syncer *s, link *l, const Popcast__Entry *e, uint8_t **out,
                        size_t *out_len, pc_err *err)
{
    Popcast__Manifest *m = NULL;
    /* Decode (not verify) just to learn hash and size; the applier verifies
     * the whole entry once the bytes are here. */
    if (e->signed_ == NULL || (m = popcast__manifest__unpack(NULL, e->signed_->manifest.len,
                                                             e->signed_->manifest.data)) == NULL)
        return pc_err_set(err, PC_E_INVALID, "announced entry has no readable manifest");
    size_t size = (size_t)m->bundle_size;
    int rc = PC_OK;
    if (m->bundle_hash.len != PC_HASH_LEN || m->bundle_size > s->opt.recv_max * 64) {
        rc = pc_err_set(err, PC_E_INVALID, "announced bundle is malformed or too large");
        goto out;
    }
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
        Popcast__BundleChunkRequest creq = POPCAST__BUNDLE_CHUNK_REQUEST__INIT;
        creq.bundle_hash = m->bundle_hash;
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
        goto out;
    }
    *out = buf;
    *out_len = size;
out:
    popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

/* The entry as it must be applied: with its bundle, fetched if omitted.
 * *owned is what the caller frees after applying. */
static int complete_entry(pc_syncer *s, link *l, const Popcast__Entry *e, Popcast__Entry *full,
                          uint8_t **owned, pc_err *err)
{
    *full = *e;
    *owned = NULL;
    if (!e->bundle_omitted)
        return PC_OK;
    size_t len = 0;
    int rc = fetch_bundle(s, l, e, owned, &len, err);
    if (rc != PC_OK)
        return rc;
    full->bundle.data = *owned;
    full->bundle.len = len;
    full->bundle_omitted = 0;
    return PC_OK;
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
        for (size_t i = 0; i < n && rc == PC_OK; i++) {
            rc = complete_entry(s, l, snap->tenants[i], &full[i], &owned[i], err);
            ptrs[i] = &full[i];
        }
        if (rc == PC_OK) {
            rc = pc_applier_install_snapshot(s->opt.applier, snap->seq, ptrs, n, snap->rotations,
                                             snap->n_rotations, err);
            if (rc == PC_E_DUPLICATE)
                rc = PC_OK; /* we were already there: nothing to do */
        }
        for (size_t i = 0; i < n; i++)
            free(owned[i]);
    }
    free(full);
    free(ptrs);
    free(owned);
    popcast__sync_reply__free_unpacked(rep, NULL);
    return rc;
}

/* Catches up from one link until the head it reports. */
static int catch_up_from(pc_syncer *s, link *l, pc_err *err)
{
    for (int rounds = 0; rounds < 100000; rounds++) {
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
            continue;
        }
        uint64_t head = r->head_seq;
        size_t n = r->n_entries;
        for (size_t i = 0; i < n && rc == PC_OK; i++) {
            Popcast__Entry full;
            uint8_t *owned = NULL;
            rc = complete_entry(s, l, r->entries[i], &full, &owned, err);
            if (rc == PC_OK) {
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
        if (pc_applier_applied_seq(s->opt.applier) >= head)
            return PC_OK;
        if (n == 0)
            return pc_err_set(err, PC_E_UNAVAILABLE, "%s: head is %llu but no entries came", l->url,
                              (unsigned long long)head);
    }
    return pc_err_set(err, PC_E_INTERNAL, "catch-up did not finish");
}

static int catch_up(pc_syncer *s)
{
    pc_err err;
    pc_metric_add(s->m_syncs, 1);
    for (size_t k = 0; k < s->n_links; k++) {
        size_t i = (s->preferred + k) % s->n_links;
        pc_err_clear(&err);
        int rc = catch_up_from(s, &s->links[i], &err);
        if (rc == PC_OK) {
            s->preferred = i;
            return PC_OK;
        }
        pc_warn("syncer", "catch-up from %s failed: %s", s->links[i].url, err.msg);
    }
    pc_metric_add(s->m_sync_failures, 1);
    return PC_E_UNAVAILABLE;
}

static void report_status(pc_syncer *s)
{
    Popcast__AgentStatus st;
    if (pc_applier_status(s->opt.applier, &st) != PC_OK)
        return;
    st.agent_id = (char *)s->opt.agent_id;
    st.pop = (char *)s->opt.pop;
    st.counter = (s->opt.status_epoch << 32) | ++s->counter;
    st.time_unix_ms = pc_wall_ms();
    Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
    c.body_case = POPCAST__SYNC_CALL__BODY_STATUS;
    c.status = &st;
    /* Signed with the agent's own key: the counter inside the signed bytes
     * makes a replayed report useless, the key makes a forged one. */
    Popcast__SignedAgentStatus ss = POPCAST__SIGNED_AGENT_STATUS__INIT;
    uint8_t sig[PC_SIG_LEN];
    uint8_t *packed = NULL;
    if (s->opt.identity != NULL) {
        size_t len = popcast__agent_status__get_packed_size(&st);
        packed = malloc(len ? len : 1);
        if (packed != NULL) {
            popcast__agent_status__pack(&st, packed);
            pc_sign(s->opt.identity, PC_DOMAIN_STATUS, packed, len, sig);
            ss.status.data = packed;
            ss.status.len = len;
            ss.signature.data = sig;
            ss.signature.len = PC_SIG_LEN;
            ss.key_id.data = (uint8_t *)s->opt.identity->pub.id;
            ss.key_id.len = PC_KEY_ID_LEN;
            c.body_case = POPCAST__SYNC_CALL__BODY_SIGNED_STATUS;
            c.signed_status = &ss;
        }
    }
    for (size_t i = 0; i < s->n_links; i++) {
        Popcast__SyncReply *rep = NULL;
        pc_err err;
        if (call(s, &s->links[i], &c, &rep, &err) != PC_OK) {
            pc_metric_add(s->m_report_failures, 1);
            pc_debug("syncer", "status to %s: %s", s->links[i].url, err.msg);
            continue;
        }
        pc_metric_add(s->m_reports, 1);
        if (rep->body_case == POPCAST__SYNC_REPLY__BODY_STATUS_ACK &&
            rep->status_ack->error[0] != '\0')
            pc_warn("syncer", "status refused by %s: %s", s->links[i].url, rep->status_ack->error);
        popcast__sync_reply__free_unpacked(rep, NULL);
    }
    free(packed);
    st.agent_id = NULL;
    st.pop = NULL;
    pc_applier_status_clear(&st);
}

static void *run(void *arg)
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
        int64_t sync_due =
            s->need_sync ? s->next_sync_ms : s->last_sync_ms + (int64_t)s->opt.sync_interval_ms;
        int64_t status_due = s->next_status_ms;
        if (s->dirty && s->last_status_ms + (int64_t)s->opt.status_min_ms < status_due)
            status_due = s->last_status_ms + (int64_t)s->opt.status_min_ms;
        int do_sync = now >= sync_due, do_status = now >= status_due;
        if (!do_sync && !do_status) {
            int64_t wait = (sync_due < status_due ? sync_due : status_due) - now;
            if (wait > STALE_WATCH_MS)
                wait = STALE_WATCH_MS;
            struct timespec ts;
            pc_deadline_after_ms(&ts, (uint64_t)wait);
            pthread_cond_timedwait(&s->cond, &s->lock, &ts);
            continue;
        }
        if (do_sync)
            s->need_sync = 0;
        if (do_status) {
            s->dirty = 0;
            s->last_status_ms = now;
            s->next_status_ms = now + (int64_t)s->opt.status_interval_ms;
        }
        pthread_mutex_unlock(&s->lock);
        int sync_rc = do_sync ? catch_up(s) : PC_OK;
        if (do_status)
            report_status(s);
        pthread_mutex_lock(&s->lock);
        if (do_sync) {
            now = pc_mono_ms();
            s->last_sync_ms = now;
            if (sync_rc == PC_OK) {
                s->backoff_ms = BACKOFF_MIN_MS;
            } else {
                /* Keep asking, backing off, until a controller answers. */
                s->need_sync = 1;
                s->next_sync_ms = now + (int64_t)s->backoff_ms;
                s->backoff_ms =
                    s->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : s->backoff_ms * 2;
            }
        }
    }
    s->exited = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

void pc_syncer_notify(pc_syncer *s, int need_sync)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->lock);
    if (need_sync)
        s->need_sync = 1;
    s->dirty = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static void close_links(pc_syncer *s)
{
    for (size_t i = 0; i < s->n_links; i++) {
        if (s->links[i].url != NULL) {
            nng_close(s->links[i].sock);
            free(s->links[i].url);
        }
    }
    free(s->links);
}

int pc_syncer_start(pc_syncer **out, const pc_syncer_options *opt, pc_err *err)
{
    pc_syncer *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    s->opt = *opt;
    s->n_links = opt->urls->count;
    s->links = calloc(s->n_links ? s->n_links : 1, sizeof(*s->links));
    if (s->links == NULL) {
        free(s);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < s->n_links; i++) {
        link *l = &s->links[i];
        int rv = nng_req0_open(&l->sock);
        if (rv == 0)
            rv = nng_socket_set_ms(l->sock, NNG_OPT_SENDTIMEO,
                                   (nng_duration)opt->request_timeout_ms);
        if (rv == 0)
            rv = nng_socket_set_ms(l->sock, NNG_OPT_RECVTIMEO,
                                   (nng_duration)opt->request_timeout_ms);
        /* nng resends a request whose connection dropped; do it soon. */
        if (rv == 0)
            rv = nng_socket_set_ms(l->sock, NNG_OPT_REQ_RESENDTIME, 2000);
        if (rv == 0)
            rv = nng_socket_set_size(l->sock, NNG_OPT_RECVMAXSZ, opt->recv_max);
        if (rv == 0)
            rv = nng_socket_set_ms(l->sock, NNG_OPT_RECONNMINT, PC_REDIAL_MIN_MS);
        if (rv == 0)
            rv = nng_socket_set_ms(l->sock, NNG_OPT_RECONNMAXT, PC_REDIAL_MAX_MS);
        if (rv == 0) {
            pc_err derr;
            if (pc_nng_dial(l->sock, opt->urls->items[i], opt->tls, NNG_FLAG_NONBLOCK, &derr) !=
                PC_OK)
                rv = NNG_EINVAL;
        }
        if (rv != 0 || (l->url = strdup(opt->urls->items[i])) == NULL) {
            if (rv == 0)
                nng_close(l->sock);
            int code = pc_err_set(err, PC_E_INVALID, "cannot use sync address %s: %s",
                                  opt->urls->items[i], rv ? nng_strerror(rv) : "out of memory");
            s->n_links = i;
            close_links(s);
            free(s);
            return code;
        }
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->need_sync = s->n_links > 0;
    s->backoff_ms = BACKOFF_MIN_MS;
    int64_t now = pc_mono_ms();
    s->next_sync_ms = now;
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
    s->m_reports = pc_metrics_counter(opt->metrics, "popcast_agent_status_reports_total", NULL,
                                      "status reports delivered");
    s->m_report_failures =
        pc_metrics_counter(opt->metrics, "popcast_agent_status_report_failures_total", NULL,
                           "status reports that got no answer");
    if (s->n_links > 0 && pthread_create(&s->thread, NULL, run, s) != 0) {
        close_links(s);
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        free(s);
        return pc_err_set(err, PC_E_INTERNAL, "cannot start the syncer thread");
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
    pthread_cond_broadcast(&s->cond);
    /* Let a request in flight end by itself (answer or timeout): closing a
     * req socket under a request in flight makes nng 1.5.2 lose the
     * message it still holds for resending. Bounded by the send and the
     * receive timeouts; after that, closing the sockets aborts the call. */
    struct timespec deadline;
    pc_deadline_after_ms(&deadline, 2 * s->opt.request_timeout_ms + 1000);
    while (s->n_links > 0 && !s->exited &&
           pthread_cond_timedwait(&s->cond, &s->lock, &deadline) == 0)
        ;
    pthread_mutex_unlock(&s->lock);
    for (size_t i = 0; i < s->n_links; i++)
        nng_close(s->links[i].sock);
    if (s->n_links > 0)
        pthread_join(s->thread, NULL);
    for (size_t i = 0; i < s->n_links; i++)
        free(s->links[i].url);
    free(s->links);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    free(s);
}
