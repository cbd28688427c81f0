/* feed.c - a relay's intake: verify, store, republish (feed.h). */
#include "feed.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "trust.h"

/* Catch-up failures back off up to this. */
#define BACKOFF_MAX_MS 5000

struct pc_feed {
    pc_feed_options opt;
    /* The key chain as of the log's head, and every append: one at a time
     * (pub/sub and catch-up both append), under lock. */
    pthread_mutex_t lock;
    pc_trust trust;
    _Atomic uint64_t hb_head;
    _Atomic int64_t hb_at_ms; /* monotonic, when the last verified one came; 0: none */
    /* A verified heartbeat ahead of the log, held back until the log
     * reaches its head (lock held): agents that hear of a head from this
     * relay find it here, rather than fail over to a controller. */
    Popcast__SignedHeartbeat *held_hb;
    uint64_t held_head;
    /* The catch-up thread. */
    pthread_t thread;
    bool started;
    pthread_cond_t cond;
    bool stop, need_sync;
    pc_metric *m_pubsub, *m_caught_up, *m_refused, *m_snapshots, *m_catchups, *m_failures;
    pc_metric *m_head, *m_first, *m_hb_head;
};

static void publish_bounds(pc_feed *f)
{
    uint64_t first, head;
    pc_relay_log_bounds(f->opt.log, &first, &head);
    pc_metric_set(f->m_head, head);
    pc_metric_set(f->m_first, first);
}

static void wake(pc_feed *f)
{
    pthread_mutex_lock(&f->lock);
    f->need_sync = true;
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
}

/* Republishes a stored entry (lock held: pub/sub stays in seq order). */
static void republish(pc_feed *f, const Popcast__Entry *e)
{
    Popcast__Entry out = *e;
    if (out.bundle.len > f->opt.inline_max) {
        out.bundle.len = 0;
        out.bundle.data = NULL;
        out.bundle_omitted = true;
    }
    pc_err err;
    if (pc_publisher_send_entry(f->opt.publisher, &out, &err) != PC_OK)
        pc_debug("relay", "republish: %s", err.msg);
}

/* Verifies e (lock held), whole or, for an announcement, its manifest
 * only. */
static int verify(pc_feed *f, const Popcast__Entry *e, Popcast__Manifest **m, pc_err *err)
{
    Popcast__Entry shell = POPCAST__ENTRY__INIT;
    const Popcast__Entry *what = e;
    if (e->bundle_omitted) {
        shell.signed_ = e->signed_;
        shell.bundle_omitted = 1;
        what = &shell;
    }
    return pc_trust_verify_entry(&f->trust, what, f->opt.max_bundle, m, err);
}

/* Appends a complete, verified entry and republishes it (lock held). */
static int append(pc_feed *f, const Popcast__Entry *e, const Popcast__Manifest *m, pc_err *err)
{
    int rc = pc_relay_log_append(f->opt.log, e, m, err);
    if (rc != PC_OK)
        return rc;
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION &&
        pc_trust_advance(&f->trust, m, err) != PC_OK)
        pc_error("relay", "seq %" PRIu64 ": stored a rotation it cannot follow: %s", m->seq,
                 err->msg);
    republish(f, e);
    if (f->held_hb != NULL && f->held_head <= m->seq) {
        (void)pc_publisher_send_heartbeat(f->opt.publisher, f->held_hb, err);
        popcast__signed_heartbeat__free_unpacked(f->held_hb, NULL);
        f->held_hb = NULL;
    }
    return PC_OK;
}

/* Fetches an announced bundle in chunks (no lock held). */
static int fetch_bundle(pc_feed *f, const Popcast__Manifest *m, uint8_t **out, pc_err *err)
{
    size_t size = (size_t)m->bundle_size, got = 0;
    uint8_t *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    while (got < size) {
        Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
        Popcast__BundleChunkRequest req = POPCAST__BUNDLE_CHUNK_REQUEST__INIT;
        req.bundle_hash = m->bundle_hash;
        req.offset = got;
        req.length = f->opt.chunk_bytes;
        c.body_case = POPCAST__SYNC_CALL__BODY_CHUNK;
        c.chunk = &req;
        Popcast__SyncReply *rep = NULL;
        int rc = pc_upstream_call(f->opt.upstream, &c, NULL, NULL, &rep, NULL, err);
        if (rc != PC_OK) {
            free(buf);
            return rc;
        }
        bool ok = rep->body_case == POPCAST__SYNC_REPLY__BODY_CHUNK &&
                  rep->chunk->error[0] == '\0' && rep->chunk->total_size == size &&
                  rep->chunk->data.len > 0 && rep->chunk->data.len <= size - got;
        if (ok) {
            memcpy(buf + got, rep->chunk->data.data, rep->chunk->data.len);
            got += rep->chunk->data.len;
        }
        popcast__sync_reply__free_unpacked(rep, NULL);
        if (!ok) {
            free(buf);
            return pc_err_set(err, PC_E_UNAVAILABLE, "chunk at %zu of seq %" PRIu64 " refused", got,
                              m->seq);
        }
    }
    *out = buf;
    return PC_OK;
}

/* Takes one entry: verified, completed (may_fetch: an announced bundle is
 * fetched; else PC_E_BUNDLE_OMITTED), appended at head + 1 and
 * republished. PC_E_DUPLICATE at or below the head, PC_E_SEQ_GAP above
 * head + 1. */
static int take(pc_feed *f, const Popcast__Entry *e, bool may_fetch, pc_err *err)
{
    Popcast__Manifest *m = NULL;
    uint64_t first, head;
    pthread_mutex_lock(&f->lock);
    int rc = verify(f, e, &m, err);
    if (rc == PC_OK) {
        pc_relay_log_bounds(f->opt.log, &first, &head);
        if (m->seq <= head)
            rc = PC_E_DUPLICATE;
        else if (m->seq > head + 1)
            rc = pc_err_set(err, PC_E_SEQ_GAP, "seq %" PRIu64 " after head %" PRIu64, m->seq, head);
        else if (!e->bundle_omitted || !pc_manifest_has_content(m))
            rc = append(f, e, m, err);
        else if (!may_fetch)
            rc = PC_E_BUNDLE_OMITTED;
    }
    pthread_mutex_unlock(&f->lock);
    if (rc == PC_OK && e->bundle_omitted && pc_manifest_has_content(m)) {
        uint8_t *bundle = NULL;
        rc = fetch_bundle(f, m, &bundle, err);
        if (rc == PC_OK) {
            Popcast__Entry full = *e;
            full.bundle.data = bundle;
            full.bundle.len = (size_t)m->bundle_size;
            full.bundle_omitted = false;
            Popcast__Manifest *again = NULL;
            pthread_mutex_lock(&f->lock);
            /* The bytes against the hash the signed manifest names. */
            rc = verify(f, &full, &again, err);
            if (rc == PC_OK)
                rc = append(f, &full, again, err);
            pthread_mutex_unlock(&f->lock);
            if (again != NULL)
                popcast__manifest__free_unpacked(again, NULL);
            free(bundle);
        }
    }
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

void pc_feed_on_publication(pc_feed *f, const uint8_t *data, size_t len)
{
    Popcast__Publication *pub = popcast__publication__unpack(NULL, len, data);
    pc_err err;
    pc_err_clear(&err);
    if (pub == NULL) {
        pc_metric_add(f->m_refused, 1);
        return;
    }
    if (pub->body_case == POPCAST__PUBLICATION__BODY_ENTRY) {
        int rc = take(f, pub->entry, false, &err);
        if (rc == PC_OK) {
            pc_metric_add(f->m_pubsub, 1);
            publish_bounds(f);
        } else if (rc == PC_E_SEQ_GAP || rc == PC_E_BUNDLE_OMITTED) {
            wake(f); /* catch-up fills the gap or fetches the bundle */
        } else if (rc != PC_E_DUPLICATE) {
            pc_metric_add(f->m_refused, 1);
            pc_warn("relay", "entry from upstream refused: %s", err.msg);
        }
    } else if (pub->body_case == POPCAST__PUBLICATION__BODY_HEARTBEAT) {
        Popcast__Heartbeat *hb = NULL;
        uint64_t first, head;
        pthread_mutex_lock(&f->lock);
        int rc = pc_trust_verify_heartbeat(&f->trust, pub->heartbeat, &hb, &err);
        pc_relay_log_bounds(f->opt.log, &first, &head);
        if (rc == PC_OK && hb->head_seq <= head) {
            (void)pc_publisher_send_heartbeat(f->opt.publisher, pub->heartbeat, &err);
        } else if (rc == PC_OK) {
            /* Held (the newest only) until the log has its head. */
            if (f->held_hb != NULL)
                popcast__signed_heartbeat__free_unpacked(f->held_hb, NULL);
            f->held_hb = pub->heartbeat;
            f->held_head = hb->head_seq;
            pub->heartbeat = NULL;
            pub->body_case = POPCAST__PUBLICATION__BODY__NOT_SET;
        }
        pthread_mutex_unlock(&f->lock);
        if (rc == PC_OK) {
            uint64_t was = atomic_load(&f->hb_head);
            if (hb->head_seq > was)
                atomic_store(&f->hb_head, hb->head_seq);
            atomic_store(&f->hb_at_ms, pc_mono_ms());
            pc_metric_set(f->m_hb_head, hb->head_seq);
            if (hb->head_seq > head)
                wake(f);
            popcast__heartbeat__free_unpacked(hb, NULL);
        } else {
            pc_metric_add(f->m_refused, 1);
            pc_warn("relay", "heartbeat from upstream refused: %s", err.msg);
        }
    } else {
        pc_metric_add(f->m_refused, 1);
    }
    popcast__publication__free_unpacked(pub, NULL);
}

uint64_t pc_feed_heartbeat_head(pc_feed *f)
{
    return atomic_load(&f->hb_head);
}

int64_t pc_feed_heartbeat_age_ms(pc_feed *f)
{
    int64_t at = atomic_load(&f->hb_at_ms);
    return at == 0 ? -1 : pc_mono_ms() - at;
}

static bool sync_reply_ok(void *arg, const Popcast__SyncReply *rep)
{
    (void)arg;
    return rep->body_case == POPCAST__SYNC_REPLY__BODY_SYNC && rep->sync->error[0] == '\0';
}

static bool snapshot_reply_ok(void *arg, const Popcast__SyncReply *rep)
{
    (void)arg;
    return rep->body_case == POPCAST__SYNC_REPLY__BODY_SNAPSHOT &&
           rep->snapshot->error[0] == '\0' && rep->snapshot->assertion != NULL;
}

/* Restarts the log at an upstream snapshot's seq, once its rotations
 * verify from the root keys (extending the chain the log follows) and its
 * assertion verifies under them. */
static int take_snapshot(pc_feed *f, pc_err *err)
{
    Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
    Popcast__SnapshotRequest req = POPCAST__SNAPSHOT_REQUEST__INIT;
    req.agent_id = (char *)f->opt.relay_id;
    c.body_case = POPCAST__SYNC_CALL__BODY_SNAPSHOT;
    c.snapshot = &req;
    Popcast__SyncReply *rep = NULL;
    int rc = pc_upstream_call(f->opt.upstream, &c, snapshot_reply_ok, NULL, &rep, NULL, err);
    if (rc != PC_OK)
        return rc;
    Popcast__SnapshotResponse *snap = rep->snapshot;
    size_t n = snap->n_rotations;
    uint64_t *seqs = calloc(n ? n : 1, sizeof(*seqs));
    pc_trust cand;
    pc_trust_init(&cand, &f->trust.roots);
    pthread_mutex_lock(&f->lock);
    if (seqs == NULL)
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    for (size_t i = 0; rc == PC_OK && i < n; i++) {
        Popcast__Manifest *m = NULL;
        rc = pc_trust_verify_entry(&cand, snap->rotations[i], f->opt.max_bundle, &m, err);
        if (rc == PC_OK && m->kind != POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
            rc = pc_err_set(err, PC_E_INVALID, "snapshot rotation %zu is not a rotation", i);
        if (rc == PC_OK && m->seq > snap->seq)
            rc = pc_err_set(err, PC_E_INVALID, "snapshot rotation past its seq");
        if (rc == PC_OK) {
            seqs[i] = m->seq;
            rc = pc_trust_advance(&cand, m, err);
        }
        if (m != NULL)
            popcast__manifest__free_unpacked(m, NULL);
    }
    if (rc == PC_OK && !pc_trust_extends(&f->trust, &cand))
        rc = pc_err_set(err, PC_E_UNTRUSTED_KEY,
                        "snapshot's key rotations differ from the ones the relay follows");
    Popcast__SnapshotAssertion *sa = NULL;
    if (rc == PC_OK)
        rc = pc_trust_verify_snapshot(&cand, snap->assertion, &sa, err);
    uint8_t digest[PC_HASH_LEN];
    pc_envelope_snapshot_digest(snap->rotations, n, digest);
    uint64_t first, head;
    pc_relay_log_bounds(f->opt.log, &first, &head);
    if (rc == PC_OK && (sa->seq != snap->seq || sa->rotations_digest.len != PC_HASH_LEN ||
                        memcmp(digest, sa->rotations_digest.data, PC_HASH_LEN) != 0))
        rc = pc_err_set(err, PC_E_HASH_MISMATCH, "snapshot does not match its assertion");
    else if (rc == PC_OK && snap->seq <= head)
        rc = pc_err_set(err, PC_E_UNAVAILABLE,
                        "upstream demanded a snapshot and sent one (seq %" PRIu64
                        ") not ahead of the log's head %" PRIu64,
                        snap->seq, head);
    if (rc == PC_OK)
        rc = pc_relay_log_reset(f->opt.log, snap->seq, snap->rotations, n, seqs, err);
    if (rc == PC_OK) {
        pc_trust_free(&f->trust);
        f->trust = cand;
        pc_trust_init(&cand, NULL);
        pc_metric_add(f->m_snapshots, 1);
        pc_info("relay", "log restarts after snapshot seq %" PRIu64, snap->seq);
    }
    pthread_mutex_unlock(&f->lock);
    pc_trust_free(&cand);
    if (sa != NULL)
        popcast__snapshot_assertion__free_unpacked(sa, NULL);
    free(seqs);
    popcast__sync_reply__free_unpacked(rep, NULL);
    publish_bounds(f);
    return rc;
}

/* Catches the log up to the upstream's head (and the heartbeats'). Every
 * answer must move the head, or say we are at its head: a lying or
 * lagging upstream costs one request, never a loop. */
static int catch_up(pc_feed *f, pc_err *err)
{
    bool took_snapshot = false;
    for (;;) {
        uint64_t first, head;
        pc_relay_log_bounds(f->opt.log, &first, &head);
        Popcast__SyncCall c = POPCAST__SYNC_CALL__INIT;
        Popcast__SyncRequest req = POPCAST__SYNC_REQUEST__INIT;
        req.after_seq = head;
        req.max_entries = f->opt.batch_entries;
        req.max_bytes = f->opt.batch_bytes;
        req.agent_id = (char *)f->opt.relay_id;
        c.body_case = POPCAST__SYNC_CALL__BODY_SYNC;
        c.sync = &req;
        Popcast__SyncReply *rep = NULL;
        const char *url = NULL;
        int rc = pc_upstream_call(f->opt.upstream, &c, sync_reply_ok, NULL, &rep, &url, err);
        if (rc != PC_OK)
            return rc;
        Popcast__SyncResponse *r = rep->sync;
        if (r->snapshot_required) {
            popcast__sync_reply__free_unpacked(rep, NULL);
            if (took_snapshot)
                return pc_err_set(err, PC_E_UNAVAILABLE, "%s: a snapshot again", url);
            if ((rc = take_snapshot(f, err)) != PC_OK)
                return rc;
            took_snapshot = true;
            continue;
        }
        uint64_t up_head = r->head_seq;
        for (size_t i = 0; i < r->n_entries && rc == PC_OK; i++) {
            rc = take(f, r->entries[i], true, err);
            if (rc == PC_E_DUPLICATE)
                rc = PC_OK;
            else if (rc == PC_OK)
                pc_metric_add(f->m_caught_up, 1);
        }
        popcast__sync_reply__free_unpacked(rep, NULL);
        publish_bounds(f);
        if (rc != PC_OK) {
            pc_err_wrap(err, "catch-up from %s", url);
            return rc;
        }
        uint64_t now_first, now_head;
        pc_relay_log_bounds(f->opt.log, &now_first, &now_head);
        if (now_head >= up_head) {
            uint64_t known = atomic_load(&f->hb_head);
            if (now_head >= known)
                return PC_OK;
            if (now_head > head)
                continue;
            return pc_err_set(err, PC_E_UNAVAILABLE,
                              "%s: its head %" PRIu64 " is behind the heartbeat's %" PRIu64, url,
                              up_head, known);
        }
        if (now_head <= head)
            return pc_err_set(err, PC_E_UNAVAILABLE,
                              "%s: head is %" PRIu64 " but nothing after %" PRIu64 " came", url,
                              up_head, head);
    }
}

static void *run(void *arg)
{
    pc_feed *f = arg;
    uint64_t backoff = 100;
    int64_t next_ms = 0; /* at once */
    pthread_mutex_lock(&f->lock);
    while (!f->stop) {
        int64_t now = pc_mono_ms();
        if (!f->need_sync && now < next_ms) {
            struct timespec ts;
            pc_deadline_after_ms(&ts, (uint64_t)(next_ms - now));
            pthread_cond_timedwait(&f->cond, &f->lock, &ts);
            continue;
        }
        f->need_sync = false;
        pthread_mutex_unlock(&f->lock);
        pc_err err;
        pc_err_clear(&err);
        pc_metric_add(f->m_catchups, 1);
        int rc = catch_up(f, &err);
        pthread_mutex_lock(&f->lock);
        if (rc == PC_OK) {
            backoff = 100;
            next_ms = pc_mono_ms() + (int64_t)f->opt.sync_interval_ms;
        } else {
            pc_metric_add(f->m_failures, 1);
            if (!f->stop)
                pc_warn("relay", "catch-up failed: %s (again in %" PRIu64 " ms)", err.msg, backoff);
            next_ms = pc_mono_ms() + (int64_t)backoff;
            backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
            /* A failure is no reason to retry before the backoff. */
            f->need_sync = false;
        }
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

static int follow_rotation(void *arg, const Popcast__SignedManifest *sm)
{
    pc_feed *f = arg;
    pc_err err;
    if (pc_trust_advance_signed(&f->trust, sm, NULL, &err) != PC_OK) {
        pc_error("relay", "a kept rotation does not verify: %s", err.msg);
        return 1;
    }
    return 0;
}

int pc_feed_start(pc_feed **out, const pc_feed_options *opt, pc_err *err)
{
    pc_feed *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    f->opt = *opt;
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->cond, NULL);
    pc_trust_init(&f->trust, opt->trusted);
    int rc = pc_relay_log_foreach_rotation(opt->log, follow_rotation, f, err);
    if (rc != PC_OK) {
        pc_err_wrap(err, "the relay log's key rotations (wipe its data_dir to start over)");
        pc_feed_stop(f);
        return rc;
    }
    pc_metrics *mx = opt->metrics;
    f->m_pubsub = pc_metrics_counter(mx, "popcast_relay_entries_total", "path=\"pubsub\"",
                                     "entries verified, stored and republished, by path");
    f->m_caught_up =
        pc_metrics_counter(mx, "popcast_relay_entries_total", "path=\"catchup\"", NULL);
    f->m_refused = pc_metrics_counter(mx, "popcast_relay_refused_total", NULL,
                                      "messages from upstream that did not verify");
    f->m_snapshots = pc_metrics_counter(mx, "popcast_relay_snapshots_total", NULL,
                                        "times the log restarted from an upstream snapshot");
    f->m_catchups = pc_metrics_counter(mx, "popcast_relay_catchups_total", NULL,
                                       "catch-up rounds against upstream");
    f->m_failures = pc_metrics_counter(mx, "popcast_relay_catchup_failures_total", NULL,
                                       "catch-up rounds that did not reach the head");
    f->m_head = pc_metrics_gauge(mx, "popcast_relay_head_seq", NULL, "the log's last seq");
    f->m_first = pc_metrics_gauge(mx, "popcast_relay_first_seq", NULL,
                                  "the log's first seq (older: agents take a snapshot)");
    f->m_hb_head = pc_metrics_gauge(mx, "popcast_relay_heartbeat_head_seq", NULL,
                                    "head of the last verified heartbeat");
    publish_bounds(f);
    if (pthread_create(&f->thread, NULL, run, f) != 0) {
        pc_feed_stop(f);
        return pc_err_set(err, PC_E_INTERNAL, "cannot start the catch-up thread");
    }
    f->started = true;
    *out = f;
    return PC_OK;
}

void pc_feed_stop(pc_feed *f)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->lock);
    f->stop = true;
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
    if (f->started)
        pthread_join(f->thread, NULL);
    pc_trust_free(&f->trust);
    if (f->held_hb != NULL)
        popcast__signed_heartbeat__free_unpacked(f->held_hb, NULL);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->lock);
    free(f);
}
