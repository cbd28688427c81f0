/* applier.c - verify, store, make live (see applier.h). */
#include "applier.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "envelope.h"
#include "log.h"
#include "trust.h"
#include "checks.h"

#define NACK_RING 64

typedef struct nack {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version, seq;
    char reason[32];
    char detail[512];
    int64_t at_unix_ms;
} nack;

struct pc_applier {
    pc_applier_options opt;
    /* Serializes everything that writes: entries from pub/sub (loop
     * thread) and from catch-up (syncer thread) apply one at a time. */
    pc_mutex apply_lock;
    pthread_mutex_t lock; /* guards the nack ring and heartbeat state */
    nack nacks[NACK_RING];
    size_t nack_next, nack_count;
    _Atomic uint64_t applied_seq;
    _Atomic uint64_t head_seq;
    int64_t last_heartbeat_ms;      /* monotonic; start time until the first */
    int64_t last_heartbeat_time_ms; /* the controller's clock, for replays */
    uint64_t drop_state;            /* test-only drop generator */
    /* Root keys and rotations: written under apply_lock (with `current`
     * also under lock, for heartbeats, which do not take apply_lock). */
    pc_trust trust;
    pc_public_key current; /* valid when rotated */
    bool rotated;
    pc_metric *m_received, *m_applied, *m_live, *m_applied_seq, *m_heartbeats, *m_dropped,
        *m_snapshots;
};

static int64_t heartbeat_age_ms(pc_applier *a);
static uint64_t max_skew_ms(pc_applier *a);

static void changed(pc_applier *a, int need_sync)
{
    if (a->opt.on_change != NULL)
        a->opt.on_change(a->opt.on_change_arg, need_sync);
}

static void record_nack(pc_applier *a, const char *tenant, uint64_t version, uint64_t seq,
                        const char *reason, const char *detail)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    pc_metrics_inc(a->opt.metrics, "popcast_agent_nacks_total", labels);
    pthread_mutex_lock(&a->lock);
    nack *n = &a->nacks[a->nack_next];
    memset(n, 0, sizeof(*n));
    snprintf(n->tenant, sizeof(n->tenant), "%s", tenant ? tenant : "");
    n->version = version;
    n->seq = seq;
    snprintf(n->reason, sizeof(n->reason), "%s", reason);
    snprintf(n->detail, sizeof(n->detail), "%s", detail);
    n->at_unix_ms = pc_wall_ms();
    a->nack_next = (a->nack_next + 1) % NACK_RING;
    if (a->nack_count < NACK_RING)
        a->nack_count++;
    pthread_mutex_unlock(&a->lock);
    changed(a, 0);
}

/* Counts and logs a refused entry. m is the verified manifest when the
 * refusal came after verification (then the controller hears a nack). */
static void refuse(pc_applier *a, int code, const Popcast__Manifest *m, const pc_err *err)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", pc_err_name(code));
    pc_metrics_inc(a->opt.metrics, "popcast_agent_refused_total", labels);
    if (code == PC_E_DUPLICATE) {
        pc_debug("applier", "ignored seq %llu: already applied",
                 m ? (unsigned long long)m->seq : 0ULL);
        return;
    }
    if (m != NULL)
        pc_warn("applier", "refused %s version %llu seq %llu: %s (%s)", m->tenant,
                (unsigned long long)m->version, (unsigned long long)m->seq, pc_err_name(code),
                err->msg);
    else
        pc_warn("applier", "refused an entry: %s (%s)", pc_err_name(code), err->msg);
    if (code == PC_E_SEQ_GAP) {
        /* Entries are missing: fetch them now rather than at the next
         * heartbeat. Requests coalesce in the syncer. */
        changed(a, 1);
        return;
    }
    record_nack(a, m ? m->tenant : "", m ? m->version : 0, m ? m->seq : 0, pc_err_name(code),
                err->msg);
}

static pc_adapter *find_adapter(pc_applier *a, const char *runtime)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        if (strcmp(a->opt.adapters[i]->name, runtime) == 0)
            return a->opt.adapters[i];
    return NULL;
}

/* Prepares and swaps in one version; on success records it as live. */
static int make_live(pc_applier *a, const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                     pc_err *err)
{
    pc_adapter *ad = find_adapter(a, m->runtime);
    if (ad == NULL)
        return pc_err_set(err, PC_E_RUNTIME, "this agent has no runtime named '%s'", m->runtime);
    pc_version_spec spec = {.tenant = m->tenant,
                            .version = m->version,
                            .seq = m->seq,
                            .runtime = m->runtime,
                            .entrypoint = m->entrypoint,
                            .bundle = bundle,
                            .bundle_len = len,
                            .hash = m->bundle_hash.data};
    pc_prepared *p = NULL;
    int rc = ad->prepare(ad, &spec, &p, err);
    if (rc != PC_OK)
        return rc;
    /* A tenant lives in one adapter: moving runtimes retires the old one. */
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        if (a->opt.adapters[i] != ad &&
            a->opt.adapters[i]->live_version(a->opt.adapters[i], m->tenant) != 0)
            a->opt.adapters[i]->deactivate(a->opt.adapters[i], m->tenant, NULL);
    if ((rc = ad->activate(ad, p, err)) != PC_OK)
        return rc;
    pc_metric_add(a->m_live, 1);
    pc_err serr;
    if (pc_store_set_live(a->opt.store, m->tenant, m->version, &serr) != PC_OK)
        pc_warn("applier", "%s version %llu is live but not recorded as live: %s", m->tenant,
                (unsigned long long)m->version, serr.msg);
    return PC_OK;
}

static void take_down(pc_applier *a, const char *tenant)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        a->opt.adapters[i]->deactivate(a->opt.adapters[i], tenant, NULL);
    pc_err serr;
    if (pc_store_set_live(a->opt.store, tenant, 0, &serr) != PC_OK)
        pc_warn("applier", "%s: cannot record that nothing is live: %s", tenant, serr.msg);
}

/* Whether an entry claims a seq past the next one we expect. Only used to
 * decide to catch up: the claim is read from bytes not yet verified. */
static int beyond_next(pc_applier *a, const Popcast__Entry *e)
{
    if (e == NULL || e->signed_ == NULL)
        return 0;
    Popcast__Manifest *m =
        popcast__manifest__unpack(NULL, e->signed_->manifest.len, e->signed_->manifest.data);
    int ahead = m != NULL && m->seq > atomic_load(&a->applied_seq) + 1;
    if (m != NULL)
        popcast__manifest__free_unpacked(m, NULL);
    return ahead;
}

/* A rotation was stored: from now on only its key signs (apply_lock held). */
static void rotated_to(pc_applier *a, const Popcast__Manifest *m)
{
    pc_err err;
    if (pc_trust_advance(&a->trust, m, &err) != PC_OK) {
        pc_error("applier", "rotation at seq %llu stored but not in force: %s",
                 (unsigned long long)m->seq, err.msg);
        return;
    }
    pthread_mutex_lock(&a->lock);
    a->current = *pc_trust_current(&a->trust);
    a->rotated = true;
    pthread_mutex_unlock(&a->lock);
    char kid[PC_HEX_KEY_ID_LEN];
    pc_hex(kid, a->current.id, PC_KEY_ID_LEN);
    pc_metrics_inc(a->opt.metrics, "popcast_agent_key_rotations_total", NULL);
    pc_info("applier", "signing key rotated at seq %llu: entries after it must be signed by %s",
            (unsigned long long)m->seq, kid);
}

static int apply_entry_locked(pc_applier *a, const Popcast__Entry *e, pc_err *err)
{
    PC_CHECK_HELD(&a->apply_lock);
    Popcast__Manifest *m = NULL;
    pc_metric_add(a->m_received, 1);
    int rc = pc_trust_verify_entry(&a->trust, e, a->opt.max_bundle, &m, err);
    if (rc == PC_E_UNTRUSTED_KEY && beyond_next(a, e)) {
        /* Possibly signed by a key announced in an entry we have not seen
         * yet: catch up first; the entry is judged when its turn comes. */
        pc_metrics_inc(a->opt.metrics, "popcast_agent_unverified_ahead_total", NULL);
        changed(a, 1);
        return pc_err_set(err, PC_E_SEQ_GAP, "entry ahead of us signed by a key not known yet");
    }
    if (rc != PC_OK) {
        refuse(a, rc, NULL, err);
        return rc;
    }
    if (e->bundle_omitted && pc_manifest_has_content(m)) {
        /* An announcement: the bundle was too large to push. The syncer
         * fetches it in chunks and applies the entry complete. */
        rc = pc_err_set(err, PC_E_BUNDLE_OMITTED, "bundle of seq %llu must be fetched",
                        (unsigned long long)m->seq);
        if (m->seq > atomic_load(&a->applied_seq)) {
            pc_metrics_inc(a->opt.metrics, "popcast_agent_announcements_total", NULL);
            changed(a, 1);
        }
        goto out;
    }
    const uint8_t *bundle = pc_manifest_has_content(m) ? e->bundle.data : NULL;
    size_t bundle_len = pc_manifest_has_content(m) ? e->bundle.len : 0;
    rc = pc_store_apply(a->opt.store, e->signed_, m, bundle, bundle_len, err);
    if (rc != PC_OK) {
        refuse(a, rc, m, err);
        goto out;
    }
    atomic_store(&a->applied_seq, m->seq);
    pc_metric_add(a->m_applied, 1);
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
        rotated_to(a, m);
    pc_metric_set(a->m_applied_seq, m->seq);
    switch (m->kind) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK: {
        pc_err lerr;
        if (make_live(a, m, bundle, bundle_len, &lerr) != PC_OK) {
            pc_warn("applier", "%s version %llu stored but not live: %s", m->tenant,
                    (unsigned long long)m->version, lerr.msg);
            record_nack(a, m->tenant, m->version, m->seq, pc_err_name(lerr.code), lerr.msg);
        } else {
            pc_info("applier", "%s version %llu (seq %llu) is live", m->tenant,
                    (unsigned long long)m->version, (unsigned long long)m->seq);
        }
        break;
    }
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE:
        take_down(a, m->tenant);
        pc_info("applier", "%s deleted at version %llu (seq %llu)", m->tenant,
                (unsigned long long)m->version, (unsigned long long)m->seq);
        break;
    default: break;
    }
    rc = PC_OK;
out:
    popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

int pc_applier_apply_entry(pc_applier *a, const Popcast__Entry *e, pc_err *err)
{
    pc_mutex_lock(&a->apply_lock);
    int rc = apply_entry_locked(a, e, err);
    pc_mutex_unlock(&a->apply_lock);
    if (rc == PC_OK)
        changed(a, 0);
    return rc;
}

static void on_heartbeat(pc_applier *a, const Popcast__SignedHeartbeat *sh)
{
    Popcast__Heartbeat *hb = NULL;
    pc_err err;
    pc_trust view;
    pc_trust_rotation cur;
    pc_trust_init(&view, a->opt.trusted); /* immutable: no lock needed */
    pthread_mutex_lock(&a->lock);
    if (a->rotated) {
        cur.seq = 0;
        cur.next = a->current;
        view.rotations = &cur;
        view.n = view.cap = 1;
    }
    pthread_mutex_unlock(&a->lock);
    int rc = pc_trust_verify_heartbeat(&view, sh, &hb, &err);
    if (rc != PC_OK) {
        refuse(a, rc, NULL, &err);
        /* After a rotation we have not applied yet, the controller signs
         * with a key we do not know: catch up to learn it. The heartbeat's
         * content is not trusted; a catch-up asks the controller itself. */
        if (rc == PC_E_UNTRUSTED_KEY)
            changed(a, 1);
        return;
    }
    int64_t now_wall = pc_wall_ms(), skew = (int64_t)max_skew_ms(a);
    const char *reason = NULL;
    pthread_mutex_lock(&a->lock);
    if (a->last_heartbeat_time_ms > now_wall + skew) {
        /* Only possible if this agent's clock went back: the floor would
         * refuse every genuine heartbeat until a restart. */
        pc_warn("applier",
                "the last heartbeat accepted is dated %lld ms ahead of this clock: "
                "the clock went back; accepting newer heartbeats again",
                (long long)(a->last_heartbeat_time_ms - now_wall));
        a->last_heartbeat_time_ms = 0;
    }
    if (hb->time_unix_ms > now_wall + skew) {
        /* Accepting it would make it the floor every later heartbeat must
         * pass: a key holder's heartbeat dated years ahead would leave the
         * agent stale, even after that key is rotated away. */
        rc = pc_err_set(&err, PC_E_INVALID,
                        "heartbeat dated %lld ms ahead of this agent's clock (max skew %lld ms)",
                        (long long)(hb->time_unix_ms - now_wall), (long long)skew);
        reason = "future";
    } else if (hb->time_unix_ms <= a->last_heartbeat_time_ms) {
        /* Older than one already accepted: a replay (or a controller
         * whose clock went back); it proves nothing about freshness. */
        rc = pc_err_set(&err, PC_E_REPLAYED, "heartbeat from %lld is not newer than %lld",
                        (long long)hb->time_unix_ms, (long long)a->last_heartbeat_time_ms);
    } else if (hb->expires_unix_ms < now_wall) {
        rc = pc_err_set(&err, PC_E_EXPIRED, "heartbeat expired %lld ms ago",
                        (long long)(now_wall - hb->expires_unix_ms));
    } else {
        a->last_heartbeat_time_ms = hb->time_unix_ms;
        a->last_heartbeat_ms = pc_mono_ms();
        atomic_store(&a->head_seq, hb->head_seq);
    }
    pthread_mutex_unlock(&a->lock);
    if (rc != PC_OK) {
        char labels[64];
        snprintf(labels, sizeof(labels), "reason=\"%s\"", reason ? reason : pc_err_name(rc));
        pc_metrics_inc(a->opt.metrics, "popcast_agent_heartbeats_refused_total", labels);
        pc_debug("applier", "heartbeat refused: %s", err.msg);
    } else {
        pc_metric_add(a->m_heartbeats, 1);
        if (hb->head_seq > atomic_load(&a->applied_seq))
            changed(a, 1);
    }
    popcast__heartbeat__free_unpacked(hb, NULL);
}

/* splitmix64: a fixed-seed stream for the test-only drop switch. */
static int drop_this_one(pc_applier *a)
{
    if (a->opt.test_drop_permille == 0)
        return 0;
    uint64_t z = (a->drop_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return z % 1000 < a->opt.test_drop_permille;
}

void pc_applier_on_publication(pc_applier *a, const uint8_t *data, size_t len)
{
    Popcast__Publication *pub = popcast__publication__unpack(NULL, len, data);
    pc_err err;
    if (pub == NULL) {
        pc_err_set(&err, PC_E_INVALID, "undecodable message of %zu bytes", len);
        refuse(a, PC_E_INVALID, NULL, &err);
        return;
    }
    switch (pub->body_case) {
    case POPCAST__PUBLICATION__BODY_ENTRY:
        if (drop_this_one(a))
            pc_metric_add(a->m_dropped, 1);
        else
            (void)pc_applier_apply_entry(a, pub->entry, &err);
        break;
    case POPCAST__PUBLICATION__BODY_HEARTBEAT: on_heartbeat(a, pub->heartbeat); break;
    default:
        pc_err_set(&err, PC_E_INVALID, "message with no known body");
        refuse(a, PC_E_INVALID, NULL, &err);
        break;
    }
    popcast__publication__free_unpacked(pub, NULL);
}

/* Startup. */

typedef struct load_walk {
    pc_applier *a;
    size_t live;
} load_walk;

static int load_version(pc_applier *a, const char *tenant, uint64_t version, pc_err *err)
{
    uint64_t seq = 0;
    Popcast__LogRecord *rec = NULL;
    Popcast__Manifest *m = NULL;
    uint8_t *bundle = NULL;
    size_t len = 0;
    int rc = pc_store_version_seq(a->opt.store, tenant, version, &seq, err);
    if (rc == PC_OK)
        rc = pc_store_get_log(a->opt.store, seq, &rec, err);
    if (rc == PC_OK) {
        /* Verified before it was stored; the key that signed it may have
         * rotated since, so it is not verified again. */
        m = rec->signed_ ? popcast__manifest__unpack(NULL, rec->signed_->manifest.len,
                                                     rec->signed_->manifest.data)
                         : NULL;
        if (m == NULL)
            rc = pc_err_set(err, PC_E_STORE, "stored manifest of seq %llu does not decode",
                            (unsigned long long)seq);
    }
    if (rc == PC_OK)
        rc = pc_store_get_blob(a->opt.store, m->bundle_hash.data, &bundle, &len, err);
    if (rc == PC_OK)
        rc = make_live(a, m, bundle, len, err);
    free(bundle);
    if (m)
        popcast__manifest__free_unpacked(m, NULL);
    if (rec)
        popcast__log_record__free_unpacked(rec, NULL);
    return rc;
}

static int load_tenant(void *arg, const pc_tenant_state *t)
{
    load_walk *w = arg;
    pc_applier *a = w->a;
    if (t->active_version == 0)
        return 0;
    pc_err err;
    if (load_version(a, t->tenant, t->active_version, &err) == PC_OK) {
        w->live++;
        return 0;
    }
    pc_warn("applier", "%s version %llu does not load at startup: %s", t->tenant,
            (unsigned long long)t->active_version, err.msg);
    record_nack(a, t->tenant, t->active_version, t->active_seq, pc_err_name(err.code), err.msg);
    if (t->live_version != 0 && t->live_version != t->active_version) {
        if (load_version(a, t->tenant, t->live_version, &err) == PC_OK) {
            pc_info("applier", "%s serves its last live version %llu", t->tenant,
                    (unsigned long long)t->live_version);
            w->live++;
        } else {
            pc_error("applier", "%s: last live version %llu does not load either: %s", t->tenant,
                     (unsigned long long)t->live_version, err.msg);
        }
    }
    return 0;
}

size_t pc_applier_load(pc_applier *a)
{
    load_walk w = {a, 0};
    pc_err err;
    pc_mutex_lock(&a->apply_lock);
    if (pc_store_foreach_tenant(a->opt.store, load_tenant, &w, &err) != PC_OK)
        pc_error("applier", "cannot read tenants from the store: %s", err.msg);
    pc_mutex_unlock(&a->apply_lock);
    return w.live;
}

/* Verifies a snapshot's rotation chain from the root keys into cand, and
 * that it extends the chain we already follow (apply_lock held). Their
 * seqs are checked against the snapshot's once its assertion verified. */
static int snapshot_chain(pc_applier *a, Popcast__Entry *const *rotations, size_t n_rot,
                          pc_trust *cand, Popcast__Manifest **ms, pc_err *err)
{
    for (size_t i = 0; i < n_rot; i++) {
        int rc = pc_trust_verify_entry(cand, rotations[i], a->opt.max_bundle, &ms[i], err);
        if (rc == PC_OK && ms[i]->kind != POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
            rc = pc_err_set(err, PC_E_INVALID, "snapshot rotation %zu is not a rotation", i);
        if (rc == PC_OK)
            rc = pc_trust_advance(cand, ms[i], err);
        if (rc != PC_OK) {
            refuse(a, rc, NULL, err);
            pc_err_wrap(err, "snapshot refused: key rotations");
            return rc;
        }
    }
    if (!pc_trust_extends(&a->trust, cand)) {
        pc_err_set(err, PC_E_UNTRUSTED_KEY,
                   "snapshot's key rotations differ from the ones this agent applied");
        refuse(a, PC_E_UNTRUSTED_KEY, NULL, err);
        pc_err_wrap(err, "snapshot refused");
        return PC_E_UNTRUSTED_KEY;
    }
    return PC_OK;
}

static uint64_t max_skew_ms(pc_applier *a)
{
    return a->opt.max_clock_skew_ms ? a->opt.max_clock_skew_ms : PC_APPLIER_MAX_SKEW_MS;
}

/* What a snapshot asserts, checked against what it carries and what this
 * agent knows (apply_lock held; cand is its verified chain): signed by the
 * key current as of that chain, the reply's seq is the asserted one, the
 * digests match the rotations and tenants that came, no rotation is past
 * its seq, its time is within the clock skew (when fresh is set: before
 * anything is fetched), and its seq is not past the head of the last
 * heartbeat while heartbeats arrive. *seq gets the asserted seq. */
static int check_assertion(pc_applier *a, const Popcast__SnapshotResponse *snap,
                           Popcast__Entry *const *tenants, const pc_trust *cand,
                           Popcast__Manifest *const *rot_ms, bool fresh, uint64_t *seq, pc_err *err)
{
    Popcast__SnapshotAssertion *sa = NULL;
    int rc = pc_trust_verify_snapshot(cand, snap->assertion, &sa, err);
    if (rc != PC_OK)
        return rc;
    uint8_t rot[PC_HASH_LEN], ten[PC_HASH_LEN];
    pc_envelope_snapshot_digest(snap->rotations, snap->n_rotations, rot);
    pc_envelope_snapshot_digest(tenants, snap->n_tenants, ten);
    int64_t now = pc_wall_ms(), skew = (int64_t)max_skew_ms(a);
    uint64_t head = atomic_load(&a->head_seq);
    if (snap->seq != sa->seq)
        rc = pc_err_set(err, PC_E_INVALID, "the reply's seq %llu is not the asserted seq %llu",
                        (unsigned long long)snap->seq, (unsigned long long)sa->seq);
    else if (memcmp(rot, sa->rotations_digest.data, PC_HASH_LEN) != 0)
        rc = pc_err_set(err, PC_E_HASH_MISMATCH,
                        "the rotations carried are not the ones the assertion signs for");
    else if (memcmp(ten, sa->tenants_digest.data, PC_HASH_LEN) != 0)
        rc = pc_err_set(err, PC_E_HASH_MISMATCH,
                        "the tenants carried are not the ones the assertion signs for");
    else if (fresh && sa->time_unix_ms > now + skew)
        rc = pc_err_set(err, PC_E_INVALID,
                        "assertion dated %lld ms ahead of this agent's clock (max skew %lld ms)",
                        (long long)(sa->time_unix_ms - now), (long long)skew);
    else if (fresh && sa->time_unix_ms < now - 2 * skew)
        rc = pc_err_set(err, PC_E_EXPIRED, "assertion made %lld ms ago: a replay",
                        (long long)(now - sa->time_unix_ms));
    else if (head > 0 && sa->seq > head && !pc_applier_is_stale(a))
        /* A controller that holds the key could still claim any seq; the
         * heartbeats say where the log really is. A genuine snapshot newer
         * than the last heartbeat passes once the next one arrives. */
        rc = pc_err_set(err, PC_E_INVALID,
                        "seq %llu is ahead of the head %llu of the last heartbeat",
                        (unsigned long long)sa->seq, (unsigned long long)head);
    for (size_t i = 0; rc == PC_OK && i < snap->n_rotations; i++)
        if (rot_ms[i]->seq > sa->seq)
            rc = pc_err_set(err, PC_E_INVALID, "rotation seq %llu is past the snapshot's %llu",
                            (unsigned long long)rot_ms[i]->seq, (unsigned long long)sa->seq);
    *seq = sa->seq;
    popcast__snapshot_assertion__free_unpacked(sa, NULL);
    return rc;
}

/* Verifies a snapshot (apply_lock held): its rotation chain into cand (and
 * ms[n..n+n_rot)), its signed assertion (*seq gets its seq), then every
 * tenant entry (tenants: the reply's, or the same with their bundles)
 * under the chain into ms[0..n). Before the fetch (before_fetch), bundles
 * may be omitted (their declared size is still bounded by max_bundle) and
 * the assertion's time is checked; after, every bundle must be there and
 * match. */
static int verify_snapshot_locked(pc_applier *a, const Popcast__SnapshotResponse *snap,
                                  Popcast__Entry *const *tenants, bool before_fetch, pc_trust *cand,
                                  Popcast__Manifest **ms, uint64_t *seq, pc_err *err)
{
    PC_CHECK_HELD(&a->apply_lock);
    size_t n = snap->n_tenants;
    int rc = snapshot_chain(a, snap->rotations, snap->n_rotations, cand, ms + n, err);
    if (rc != PC_OK)
        return rc;
    if ((rc = check_assertion(a, snap, tenants, cand, ms + n, before_fetch, seq, err)) != PC_OK) {
        refuse(a, rc, NULL, err);
        pc_err_wrap(err, "snapshot refused: its assertion");
        return rc;
    }
    uint64_t applied = atomic_load(&a->applied_seq);
    if (*seq <= applied)
        return pc_err_set(err, PC_E_DUPLICATE, "snapshot at seq %llu is not ahead of %llu",
                          (unsigned long long)*seq, (unsigned long long)applied);
    for (size_t i = 0; i < n; i++) {
        pc_metric_add(a->m_received, 1);
        rc = pc_trust_verify_entry(cand, tenants[i], a->opt.max_bundle, &ms[i], err);
        if (rc == PC_OK && ms[i]->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
            rc = pc_err_set(err, PC_E_INVALID, "a key rotation among a snapshot's tenants");
        if (rc == PC_OK && !before_fetch && tenants[i]->bundle_omitted &&
            pc_manifest_has_content(ms[i]))
            rc = pc_err_set(err, PC_E_INVALID, "snapshot entry without its bundle");
        if (rc == PC_OK && ms[i]->seq > *seq)
            rc = pc_err_set(err, PC_E_INVALID, "snapshot entry seq %llu is past the snapshot",
                            (unsigned long long)ms[i]->seq);
        if (rc != PC_OK) {
            /* One bad entry refuses the whole snapshot: a partial one would
             * claim a seq whose state we do not have. */
            refuse(a, rc, ms[i], err);
            pc_err_wrap(err, "snapshot refused");
            return rc;
        }
    }
    return PC_OK;
}

static void free_manifests(Popcast__Manifest **ms, size_t n)
{
    for (size_t i = 0; ms != NULL && i < n; i++)
        if (ms[i] != NULL)
            popcast__manifest__free_unpacked(ms[i], NULL);
    free(ms);
}

int pc_applier_verify_snapshot(pc_applier *a, const Popcast__SnapshotResponse *snap, pc_err *err)
{
    size_t total = snap->n_tenants + snap->n_rotations;
    Popcast__Manifest **ms = calloc(total ? total : 1, sizeof(*ms));
    if (ms == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    pc_trust cand;
    pc_trust_init(&cand, &a->trust.roots);
    uint64_t seq = 0;
    pc_mutex_lock(&a->apply_lock);
    int rc = verify_snapshot_locked(a, snap, snap->tenants, true, &cand, ms, &seq, err);
    pc_mutex_unlock(&a->apply_lock);
    pc_trust_free(&cand);
    free_manifests(ms, total);
    return rc;
}

int pc_applier_verify_announced(pc_applier *a, const Popcast__Entry *e, Popcast__Manifest **out,
                                pc_err *err)
{
    *out = NULL;
    /* Only the manifest: whatever bytes came beside it are not the bundle. */
    Popcast__Entry shell = POPCAST__ENTRY__INIT;
    shell.signed_ = e != NULL ? e->signed_ : NULL;
    shell.bundle_omitted = 1;
    pc_mutex_lock(&a->apply_lock);
    pc_metric_add(a->m_received, 1);
    int rc = pc_trust_verify_entry(&a->trust, &shell, a->opt.max_bundle, out, err);
    pc_mutex_unlock(&a->apply_lock);
    if (rc != PC_OK) {
        refuse(a, rc, NULL, err);
        pc_err_wrap(err, "announcement refused before its bundle was fetched");
    }
    return rc;
}

int pc_applier_install_snapshot(pc_applier *a, const Popcast__SnapshotResponse *snap,
                                Popcast__Entry *const *entries, pc_err *err)
{
    size_t n = snap->n_tenants, n_rot = snap->n_rotations;
    Popcast__Entry *const *rotations = snap->rotations;
    uint64_t seq = 0;
    size_t total = n + n_rot;
    Popcast__Manifest **ms = calloc(total ? total : 1, sizeof(*ms));
    pc_store_item *items = calloc(total ? total : 1, sizeof(*items));
    bool *applied = calloc(total ? total : 1, sizeof(*applied));
    pc_trust cand;
    pc_trust_init(&cand, &a->trust.roots);
    int rc = PC_OK;
    pc_mutex_lock(&a->apply_lock);
    if (ms == NULL || items == NULL || applied == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        goto out;
    }
    if ((rc = verify_snapshot_locked(a, snap, entries, false, &cand, ms, &seq, err)) != PC_OK)
        goto out;
    for (size_t i = 0; i < n_rot; i++) {
        items[n + i].sm = rotations[i]->signed_;
        items[n + i].m = ms[n + i];
    }
    for (size_t i = 0; i < n; i++) {
        items[i].sm = entries[i]->signed_;
        items[i].m = ms[i];
        items[i].bundle = pc_manifest_has_content(ms[i]) ? entries[i]->bundle.data : NULL;
        items[i].bundle_len = pc_manifest_has_content(ms[i]) ? entries[i]->bundle.len : 0;
    }
    rc = pc_store_install_snapshot(a->opt.store, seq, items, total, applied, err);
    if (rc == PC_OK && cand.n > a->trust.n) {
        pc_trust_free(&a->trust);
        a->trust = cand;
        pc_trust_init(&cand, NULL);
        pthread_mutex_lock(&a->lock);
        a->current = *pc_trust_current(&a->trust);
        a->rotated = true;
        pthread_mutex_unlock(&a->lock);
        pc_info("applier", "snapshot carried %zu key rotations; %zu in force", n_rot, a->trust.n);
    }
    if (rc == PC_OK) {
        atomic_store(&a->applied_seq, seq);
        pc_metric_set(a->m_applied_seq, seq);
        pc_metric_add(a->m_snapshots, 1);
        size_t made_live = 0;
        for (size_t i = 0; i < n; i++) {
            if (!applied[i])
                continue;
            pc_err lerr;
            if (!pc_manifest_has_content(ms[i])) {
                take_down(a, ms[i]->tenant);
            } else if (make_live(a, ms[i], items[i].bundle, items[i].bundle_len, &lerr) != PC_OK) {
                record_nack(a, ms[i]->tenant, ms[i]->version, ms[i]->seq, pc_err_name(lerr.code),
                            lerr.msg);
            } else {
                made_live++;
            }
        }
        pc_info("applier", "installed a snapshot at seq %llu: %zu tenants, %zu made live",
                (unsigned long long)seq, n, made_live);
    }
out:
    pc_mutex_unlock(&a->apply_lock);
    pc_trust_free(&cand);
    if (rc == PC_OK)
        changed(a, 0);
    free_manifests(ms, total);
    free(items);
    free(applied);
    return rc;
}

typedef struct rotation_load {
    pc_applier *a;
    pc_err *err;
} rotation_load;

/* Each stored rotation is verified again, from the trusted keys: a record
 * that does not verify must stop the start, never leave a hole in the
 * chain (the agent would then refuse the real key, or accept a revoked
 * one). */
static int load_rotation(void *arg, const Popcast__SignedManifest *sm)
{
    rotation_load *l = arg;
    int rc = pc_trust_advance_signed(&l->a->trust, sm, NULL, l->err);
    if (rc != PC_OK)
        pc_err_wrap(l->err, "the key chain in the store does not verify from trusted_key (the data "
                            "directory is damaged, or trusted_key changed since it was written)");
    return rc;
}

int pc_applier_new(pc_applier **out, const pc_applier_options *opt, pc_err *err)
{
    pc_applier *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    a->opt = *opt;
    pthread_mutex_init(&a->lock, NULL);
    pc_mutex_init(&a->apply_lock);
    a->last_heartbeat_ms = pc_mono_ms();
    a->drop_state = opt->test_drop_seed;
    uint64_t applied = 0;
    pc_trust_init(&a->trust, opt->trusted);
    int rc = pc_store_applied_seq(opt->store, &applied, err);
    /* The rotations applied before a restart stay in force. */
    if (rc == PC_OK) {
        rotation_load l = {a, err};
        rc = pc_store_foreach_rotation(opt->store, load_rotation, &l, err);
    }
    if (rc != PC_OK) {
        pc_trust_free(&a->trust);
        pthread_mutex_destroy(&a->lock);
        pc_mutex_destroy(&a->apply_lock);
        free(a);
        return rc;
    }
    if (a->trust.n > 0) {
        a->current = *pc_trust_current(&a->trust);
        a->rotated = true;
    }
    atomic_store(&a->applied_seq, applied);
    a->m_received = pc_metrics_counter(opt->metrics, "popcast_agent_entries_received_total", NULL,
                                       "entries received (pub/sub and catch-up)");
    a->m_applied = pc_metrics_counter(opt->metrics, "popcast_agent_entries_applied_total", NULL,
                                      "entries stored durably");
    a->m_live = pc_metrics_counter(opt->metrics, "popcast_agent_activations_total", NULL,
                                   "versions made live");
    a->m_applied_seq =
        pc_metrics_gauge(opt->metrics, "popcast_agent_applied_seq", NULL, "last applied seq");
    pc_metric_set(a->m_applied_seq, applied);
    a->m_heartbeats = pc_metrics_counter(opt->metrics, "popcast_agent_heartbeats_total", NULL,
                                         "valid heartbeats received");
    a->m_dropped = pc_metrics_counter(opt->metrics, "popcast_agent_test_dropped_total", NULL,
                                      "entries discarded by the test-only drop switch");
    a->m_snapshots = pc_metrics_counter(opt->metrics, "popcast_agent_snapshots_installed_total",
                                        NULL, "snapshots installed");
    if (opt->test_drop_permille != 0)
        pc_warn("applier", "TEST MODE: dropping %u per mille of pub/sub entries",
                opt->test_drop_permille);
    *out = a;
    return PC_OK;
}

void pc_applier_free(pc_applier *a)
{
    if (a == NULL)
        return;
    pc_trust_free(&a->trust);
    pthread_mutex_destroy(&a->lock);
    pc_mutex_destroy(&a->apply_lock);
    free(a);
}

uint64_t pc_applier_applied_seq(pc_applier *a)
{
    return atomic_load(&a->applied_seq);
}

uint64_t pc_applier_head_seq(pc_applier *a)
{
    return atomic_load(&a->head_seq);
}

static int64_t heartbeat_age_ms(pc_applier *a)
{
    pthread_mutex_lock(&a->lock);
    int64_t age = pc_mono_ms() - a->last_heartbeat_ms;
    pthread_mutex_unlock(&a->lock);
    return age;
}

int pc_applier_is_stale(pc_applier *a)
{
    return heartbeat_age_ms(a) > (int64_t)a->opt.stale_after_ms;
}

uint64_t pc_applier_stale_after_ms(pc_applier *a)
{
    return a->opt.stale_after_ms;
}

typedef struct proto_walk {
    Popcast__TenantStatus **items;
    size_t n, cap;
} proto_walk;

static int tenant_proto(void *arg, const pc_tenant_state *t)
{
    proto_walk *w = arg;
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 16;
        Popcast__TenantStatus **grown = realloc(w->items, cap * sizeof(*grown));
        if (grown == NULL)
            return 1;
        w->items = grown;
        w->cap = cap;
    }
    Popcast__TenantStatus *ts = malloc(sizeof(*ts));
    char *name = strdup(t->tenant);
    if (ts == NULL || name == NULL) {
        free(ts);
        free(name);
        return 1;
    }
    popcast__tenant_status__init(ts);
    ts->tenant = name;
    /* last_version, not active: a delete is "applied" too (rollout.h). */
    ts->applied_version = t->last_version;
    ts->live_version = t->live_version;
    ts->applied_seq = t->active_seq;
    w->items[w->n++] = ts;
    return 0;
}

int pc_applier_status(pc_applier *a, Popcast__AgentStatus *out)
{
    popcast__agent_status__init(out);
    proto_walk w = {0};
    int rc = pc_store_foreach_tenant(a->opt.store, tenant_proto, &w, NULL);
    out->tenants = w.items;
    out->n_tenants = w.n;
    if (rc != PC_OK) {
        pc_applier_status_clear(out);
        return PC_E_STORE;
    }
    out->applied_seq = atomic_load(&a->applied_seq);
    out->stale = pc_applier_is_stale(a);
    pthread_mutex_lock(&a->lock);
    out->nacks = calloc(a->nack_count ? a->nack_count : 1, sizeof(*out->nacks));
    for (size_t i = 0; out->nacks != NULL && i < a->nack_count; i++) {
        size_t idx = (a->nack_next + NACK_RING - a->nack_count + i) % NACK_RING;
        const nack *n = &a->nacks[idx];
        Popcast__Nack *pn = malloc(sizeof(*pn));
        if (pn == NULL)
            break;
        popcast__nack__init(pn);
        pn->tenant = strdup(n->tenant);
        pn->version = n->version;
        pn->seq = n->seq;
        pn->reason = strdup(n->reason);
        pn->detail = strdup(n->detail);
        pn->at_unix_ms = n->at_unix_ms;
        out->nacks[out->n_nacks++] = pn;
    }
    pthread_mutex_unlock(&a->lock);
    return PC_OK;
}

void pc_applier_status_clear(Popcast__AgentStatus *st)
{
    for (size_t i = 0; i < st->n_tenants; i++) {
        free(st->tenants[i]->tenant);
        free(st->tenants[i]);
    }
    free(st->tenants);
    for (size_t i = 0; i < st->n_nacks; i++) {
        free(st->nacks[i]->tenant);
        free(st->nacks[i]->reason);
        free(st->nacks[i]->detail);
        free(st->nacks[i]);
    }
    free(st->nacks);
    popcast__agent_status__init(st);
}

/* Status. */

static json_t *hex_hash(const uint8_t *h)
{
    char hex[PC_HEX_HASH_LEN];
    pc_hex(hex, h, PC_HASH_LEN);
    return json_string(hex);
}

static int tenant_status(void *arg, const pc_tenant_state *t)
{
    json_t *list = arg;
    json_t *o =
        json_pack("{s:s,s:I,s:I,s:I,s:b}", "tenant", t->tenant, "applied_version",
                  (json_int_t)t->active_version, "live_version", (json_int_t)t->live_version,
                  "last_version", (json_int_t)t->last_version, "deleted", t->deleted);
    if (o != NULL && t->active_version != 0)
        json_object_set_new(o, "applied_hash", hex_hash(t->active_hash));
    if (o != NULL && t->live_version != 0)
        json_object_set_new(o, "live_hash", hex_hash(t->live_hash));
    json_array_append_new(list, o);
    return 0;
}

json_t *pc_applier_status_json(pc_applier *a)
{
    json_t *tenants = json_array();
    pc_err err;
    if (pc_store_foreach_tenant(a->opt.store, tenant_status, tenants, &err) != PC_OK)
        pc_error("applier", "status lists only part of the tenants: %s", err.msg);
    json_t *nacks = json_array();
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->nack_count; i++) {
        /* Oldest first. */
        size_t idx = (a->nack_next + NACK_RING - a->nack_count + i) % NACK_RING;
        const nack *n = &a->nacks[idx];
        json_array_append_new(nacks, json_pack("{s:s,s:I,s:I,s:s,s:s,s:I}", "tenant", n->tenant,
                                               "version", (json_int_t)n->version, "seq",
                                               (json_int_t)n->seq, "reason", n->reason, "detail",
                                               n->detail, "at_unix_ms", (json_int_t)n->at_unix_ms));
    }
    /* The key entries must now be signed with (null: any root key). */
    json_t *signing_key = json_null();
    if (a->rotated) {
        char kid[PC_HEX_KEY_ID_LEN];
        pc_hex(kid, a->current.id, PC_KEY_ID_LEN);
        signing_key = json_string(kid);
    }
    pthread_mutex_unlock(&a->lock);
    uint64_t head = atomic_load(&a->head_seq), applied = atomic_load(&a->applied_seq);
    return json_pack(
        "{s:I,s:I,s:I,s:b,s:I,s:o,s:o,s:o}", "applied_seq", (json_int_t)applied, "head_seq",
        (json_int_t)head, "lag", (json_int_t)(head > applied ? head - applied : 0), "stale",
        pc_applier_is_stale(a), "last_heartbeat_ms_ago", (json_int_t)heartbeat_age_ms(a), "tenants",
        tenants, "nacks", nacks, "signing_key", signing_key);
}
