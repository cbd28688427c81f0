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
#include "json_text.h"
#include "log.h"
#include "names.h"
#include "registry.h"
#include "strmap.h"
#include "target.h"
#include "trust.h"
#include "checks.h"

/* Versions of one tenant whose outcome is kept (the most recent ones). */
#define VERSIONS_KEPT 8

/* What became of one version of a tenant on this agent (a VersionOutcome):
 * LIVE (a delete: took effect) or NACKED. Decided once; only a NACKED
 * version that later loads after all (at a restart) becomes LIVE. */
typedef struct version_record {
    uint64_t version, seq, decided_seq;
    Popcast__VersionState state;
    bool is_delete;
    char reason[32];
    char *detail; /* NACKED: malloc'd */
    int64_t at_unix_ms;
} version_record;

/* The outcomes of one tenant's versions, by version ascending. Only
 * versions that verified (signed by a trusted key, so their tenant,
 * version and seq are real) ever get here: garbage cannot push a real
 * record out. Every version >= from that this agent processed is here
 * (older ones were evicted, or processed before records were kept).
 * Sized to what it holds (room grows to VERSIONS_KEPT): most of an
 * agent's tens of thousands of tenants hold one version. */
typedef struct tenant_record {
    uint64_t from;
    /* The version that went live but could not be recorded as live in the
     * store (0: none); cleared when a later recording succeeds. */
    uint64_t live_unrecorded;
    uint32_t n, room;
    version_record v[];
} tenant_record;

/* Nacks that are not a version's outcome: a verified entry refused for a
 * version that already has one (e.g. a validly signed entry reusing a
 * live version's number: stale_version; or a live version that no longer
 * loads at start). Only verified entries get here, so nothing on the wire
 * can push these out either; the most recent ones are kept. */
#define OTHER_NACKS 16

typedef struct other_nack {
    char tenant[PC_TENANT_MAX + 1];
    version_record v;
} other_nack;

typedef struct deferred_live {
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
} deferred_live;

struct pc_applier {
    pc_applier_options opt;
    /* Serializes everything that writes: entries from pub/sub (loop
     * thread) and from catch-up (syncer thread) apply one at a time. */
    pc_mutex apply_lock;
    pthread_mutex_t lock;           /* guards the records and heartbeat state */
    pc_strmap *records;             /* tenant -> tenant_record; changed under apply_lock too */
    other_nack others[OTHER_NACKS]; /* ring, under lock */
    size_t others_next, others_count;
    _Atomic uint64_t applied_seq;
    _Atomic uint64_t head_seq;
    int64_t last_heartbeat_ms;      /* monotonic; start time until the first */
    bool heard_heartbeat;           /* a valid one came since start */
    int64_t last_heartbeat_time_ms; /* the controller's clock, for replays */
    uint64_t drop_state;            /* test-only drop generator */
    /* Root keys and rotations: written under apply_lock (with `current`
     * also under lock, for heartbeats, which do not take apply_lock). */
    pc_trust trust;
    pc_public_key current; /* valid when rotated */
    bool rotated;
    pc_metric *m_received, *m_applied, *m_live, *m_applied_seq, *m_heartbeats, *m_dropped,
        *m_snapshots;
    uint8_t identity[PC_PK_LEN]; /* the key reports carry, when has_identity */
    bool has_identity;
    pc_metric *m_record_failures;
    pc_metric *m_rotations, *m_unverified_ahead, *m_announcements;
    pc_histogram *m_apply_latency, *m_deploy_to_live;
    pc_metric *m_batches, *m_verifications;
    _Atomic uint64_t record_failures; /* as m_record_failures, for reports */
    /* While an entry or a snapshot's tenants are made live (apply_lock
     * held), live versions and outcomes are collected here and written in
     * one transaction at the end: one flush instead of two per tenant. */
    atomic_bool interrupted; /* pc_applier_interrupt */
    bool deferring;
    deferred_live *dlive;
    size_t n_dlive, cap_dlive;
    pc_strmap *douts; /* tenants whose outcomes changed meanwhile */
    /* pc_applier_tenants_generation: moves after every change of what the
     * tenant part of a report is built from (store, records, runtimes). */
    _Atomic uint64_t tenants_gen;
};

static int64_t heartbeat_age_ms(pc_applier *a);
static uint64_t max_skew_ms(pc_applier *a);

/* Every writer of what tenant_proto and collect_nacks read calls this
 * after its change is visible: under apply_lock (whose holders are the
 * only writers of the store and the runtimes), on leaving it, and the
 * writers of records outside it, through changed(). */
static void tenants_moved(pc_applier *a)
{
    atomic_fetch_add(&a->tenants_gen, 1);
}

static void apply_unlock(pc_applier *a)
{
    tenants_moved(a);
    pc_mutex_unlock(&a->apply_lock);
}

static void changed(pc_applier *a, int need_sync)
{
    tenants_moved(a);
    if (a->opt.on_change != NULL)
        a->opt.on_change(a->opt.on_change_arg, need_sync);
}

static void count_record_failure(pc_applier *a)
{
    pc_metric_add(a->m_record_failures, 1);
    atomic_fetch_add(&a->record_failures, 1);
}

static void record_free(tenant_record *t)
{
    if (t == NULL)
        return;
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].detail);
    free(t);
}

static tenant_record *record_alloc(uint32_t room)
{
    tenant_record *t = calloc(1, sizeof(*t) + room * sizeof(version_record));
    if (t != NULL)
        t->room = room;
    return t;
}

/* tenant's record (lock held), created with from when absent; NULL when
 * out of memory. */
static tenant_record *tenant_record_get(pc_applier *a, const char *tenant, uint64_t from)
{
    tenant_record *t = pc_strmap_get(a->records, tenant);
    if (t != NULL)
        return t;
    if ((t = record_alloc(1)) == NULL)
        return NULL;
    t->from = from;
    if (pc_strmap_put(a->records, tenant, t) != PC_OK) {
        free(t);
        return NULL;
    }
    return t;
}

/* The record of version in tenant's record *tp (lock held): the existing
 * one, or a new one in its place by version; NULL when the version is
 * older than every kept one and there is no room, or when out of memory.
 * The oldest version makes room for a newer one (from then moves past
 * it). *tp may move (a record grows up to VERSIONS_KEPT versions). */
static version_record *record_slot(pc_applier *a, const char *tenant, tenant_record **tp,
                                   uint64_t version, bool *created)
{
    *created = false;
    tenant_record *t = *tp;
    size_t i = 0;
    while (i < t->n && t->v[i].version < version)
        i++;
    if (i < t->n && t->v[i].version == version)
        return &t->v[i];
    if (t->n == t->room && t->room < VERSIONS_KEPT) {
        uint32_t room = t->room * 2 < VERSIONS_KEPT ? t->room * 2 : VERSIONS_KEPT;
        tenant_record *grown = realloc(t, sizeof(*t) + room * sizeof(version_record));
        if (grown == NULL) {
            count_record_failure(a);
            return NULL;
        }
        grown->room = room;
        /* Replacing a present key's value allocates nothing: cannot fail. */
        pc_strmap_put(a->records, tenant, grown);
        *tp = t = grown;
    }
    if (t->n == VERSIONS_KEPT) {
        if (i == 0)
            return NULL;
        if (t->from <= t->v[0].version)
            t->from = t->v[0].version + 1;
        free(t->v[0].detail);
        memmove(&t->v[0], &t->v[1], (VERSIONS_KEPT - 1) * sizeof(t->v[0]));
        t->n--;
        i--;
    }
    memmove(&t->v[i + 1], &t->v[i], (t->n - i) * sizeof(t->v[0]));
    t->n++;
    memset(&t->v[i], 0, sizeof(t->v[i]));
    t->v[i].version = version;
    *created = true;
    return &t->v[i];
}

/* A copy of a record that needs no lock (details duplicated), NULL when
 * out of memory; free with record_free. */
static tenant_record *record_copy(const tenant_record *src)
{
    tenant_record *dst = record_alloc(src->n);
    if (dst == NULL)
        return NULL;
    dst->from = src->from;
    dst->live_unrecorded = src->live_unrecorded;
    dst->n = src->n;
    for (size_t i = 0; i < src->n; i++) {
        dst->v[i] = src->v[i];
        dst->v[i].detail = src->v[i].detail ? strdup(src->v[i].detail) : NULL;
    }
    return dst;
}

/* The outcomes of t as protobuf, pointing into t (items: VERSIONS_KEPT
 * slots). */
static void outcomes_proto(const tenant_record *t, Popcast__VersionOutcome *items,
                           Popcast__VersionOutcome **ptrs, size_t *n)
{
    for (size_t i = 0; i < t->n; i++) {
        const version_record *v = &t->v[i];
        popcast__version_outcome__init(&items[i]);
        items[i].version = v->version;
        items[i].seq = v->seq;
        items[i].state = v->state;
        items[i].is_delete = v->is_delete;
        items[i].decided_seq = v->decided_seq;
        items[i].reason =
            (char *)(v->state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED ? v->reason : "");
        items[i].detail = v->detail ? v->detail : (char *)"";
        items[i].at_unix_ms = v->at_unix_ms;
        ptrs[i] = &items[i];
    }
    *n = t->n;
}

/* Writes tenant's outcomes to the store, so they survive restarts
 * (apply_lock held: writes of one tenant's record happen in order). A
 * failure is counted and logged; the report still says what happened. */
static void persist_outcomes(pc_applier *a, const char *tenant, const tenant_record *t)
{
    PC_CHECK_HELD(&a->apply_lock);
    /* Written with the rest of a snapshot, from the record as it is then. */
    if (a->deferring && pc_strmap_put(a->douts, tenant, (void *)1) == PC_OK)
        return;
    Popcast__VersionOutcome items[VERSIONS_KEPT], *ptrs[VERSIONS_KEPT];
    Popcast__TenantOutcomes o = POPCAST__TENANT_OUTCOMES__INIT;
    outcomes_proto(t, items, ptrs, &o.n_outcomes);
    o.outcomes = ptrs;
    o.outcomes_from = t->from;
    pc_err err;
    if (pc_registry_put_outcomes(a->opt.store, tenant, &o, &err) != PC_OK) {
        count_record_failure(a);
        pc_warn("applier", "%s: cannot record its versions' outcomes (%s: %s)", tenant,
                pc_err_name(err.code), err.msg);
    }
}

/* Records what became of a version that verified (apply_lock held): a
 * new outcome, NACKED turning LIVE (the version loaded after all), or
 * HELD turning LIVE or NACKED (a stage reached this agent). A version's
 * outcome is otherwise never rewritten. */
typedef enum { OUTCOME_RECORDED, OUTCOME_KNOWN, OUTCOME_CONFLICT } outcome_result;

static outcome_result record_outcome(pc_applier *a, const char *tenant, uint64_t version,
                                     uint64_t seq, Popcast__VersionState state, bool is_delete,
                                     const char *reason, const char *detail)
{
    PC_CHECK_HELD(&a->apply_lock);
    if (tenant == NULL || !pc_tenant_name_valid(tenant) || version == 0)
        return OUTCOME_KNOWN;
    bool changed_now = false, created = false;
    outcome_result result = OUTCOME_KNOWN;
    tenant_record *copy = NULL;
    pthread_mutex_lock(&a->lock);
    tenant_record *t = tenant_record_get(a, tenant, version);
    version_record *v = t ? record_slot(a, tenant, &t, version, &created) : NULL;
    bool nacked_loads = v != NULL && v->state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED &&
                        state == POPCAST__VERSION_STATE__VERSION_STATE_LIVE;
    bool held_decided = v != NULL && v->state == POPCAST__VERSION_STATE__VERSION_STATE_HELD &&
                        state != POPCAST__VERSION_STATE__VERSION_STATE_HELD;
    if (v != NULL && (created || nacked_loads || held_decided)) {
        v->seq = seq;
        v->state = state;
        v->is_delete = is_delete;
        v->decided_seq = atomic_load(&a->applied_seq);
        v->at_unix_ms = pc_wall_ms();
        free(v->detail);
        v->detail = NULL;
        v->reason[0] = '\0';
        if (state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED) {
            snprintf(v->reason, sizeof(v->reason), "%s", reason ? reason : "");
            v->detail = strdup(detail ? detail : "");
        }
        changed_now = true;
        copy = record_copy(t);
    } else if (v != NULL && (v->state != state || v->seq != seq)) {
        result = OUTCOME_CONFLICT;
    }
    pthread_mutex_unlock(&a->lock);
    if (!changed_now)
        return result;
    if (copy != NULL)
        persist_outcomes(a, tenant, copy);
    else if (!(a->deferring && pc_strmap_put(a->douts, tenant, (void *)1) == PC_OK))
        count_record_failure(a); /* deferred, the flush copies it again */
    record_free(copy);
    changed(a, 0);
    return OUTCOME_RECORDED;
}

/* The outcome recorded for tenant's version (UNSPECIFIED: none kept). */
static Popcast__VersionState outcome_of(pc_applier *a, const char *tenant, uint64_t version)
{
    Popcast__VersionState state = POPCAST__VERSION_STATE__VERSION_STATE_UNSPECIFIED;
    pthread_mutex_lock(&a->lock);
    const tenant_record *t = pc_strmap_get(a->records, tenant);
    for (size_t i = 0; t != NULL && i < t->n; i++)
        if (t->v[i].version == version)
            state = t->v[i].state;
    pthread_mutex_unlock(&a->lock);
    return state;
}

/* A nack that is not its version's outcome (OTHER_NACKS); the same one
 * again is kept once. */
static void record_other_nack(pc_applier *a, const char *tenant, uint64_t version, uint64_t seq,
                              const char *reason, const char *detail)
{
    pthread_mutex_lock(&a->lock);
    for (size_t i = 0; i < a->others_count; i++) {
        const other_nack *o = &a->others[i];
        if (o->v.version == version && o->v.seq == seq && strcmp(o->tenant, tenant) == 0 &&
            strcmp(o->v.reason, reason) == 0) {
            pthread_mutex_unlock(&a->lock);
            return;
        }
    }
    other_nack *o = &a->others[a->others_next];
    free(o->v.detail);
    memset(o, 0, sizeof(*o));
    snprintf(o->tenant, sizeof(o->tenant), "%s", tenant);
    o->v.version = version;
    o->v.seq = seq;
    o->v.state = POPCAST__VERSION_STATE__VERSION_STATE_NACKED;
    o->v.decided_seq = atomic_load(&a->applied_seq);
    o->v.at_unix_ms = pc_wall_ms();
    snprintf(o->v.reason, sizeof(o->v.reason), "%s", reason);
    o->v.detail = strdup(detail ? detail : "");
    a->others_next = (a->others_next + 1) % OTHER_NACKS;
    if (a->others_count < OTHER_NACKS)
        a->others_count++;
    pthread_mutex_unlock(&a->lock);
    changed(a, 0);
}

/* A nack: a version that verified (so tenant, version and seq are real)
 * and was refused or could not be made live. The first reason given for
 * a version is kept. */
static void record_nack(pc_applier *a, const char *tenant, uint64_t version, uint64_t seq,
                        const char *reason, const char *detail)
{
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    pc_metrics_inc(a->opt.metrics, "popcast_agent_nacks_total", labels);
    if (record_outcome(a, tenant, version, seq, POPCAST__VERSION_STATE__VERSION_STATE_NACKED, false,
                       reason, detail) == OUTCOME_CONFLICT)
        record_other_nack(a, tenant, version, seq, reason, detail);
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
    /* Only an entry that verified names a real tenant version: anything
     * else (garbage, a forgery, an unknown key) is counted above and
     * never becomes a nack, which would speak for a version it is not. */
    if (m != NULL)
        record_nack(a, m->tenant, m->version, m->seq, pc_err_name(code), err->msg);
}

static pc_adapter *find_adapter(pc_applier *a, const char *runtime)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        if (strcmp(a->opt.adapters[i]->name, runtime) == 0)
            return a->opt.adapters[i];
    return NULL;
}

/* Records in the store that tenant's version is live (0: nothing is), so
 * that a restart serves it. Serving does not wait for it: when the write
 * fails (a full store), the runtime serves the version all the same, and
 * reports say so (they read what serves from the runtimes), flag it
 * unrecorded and count the failure. */
/* The outcome of recording tenant's live version (rc from the store). */
static void live_recorded(pc_applier *a, const char *tenant, uint64_t version, int rc,
                          const pc_err *serr)
{
    pthread_mutex_lock(&a->lock);
    tenant_record *r =
        version != 0 ? tenant_record_get(a, tenant, version) : pc_strmap_get(a->records, tenant);
    if (r != NULL)
        r->live_unrecorded = rc == PC_OK ? 0 : version;
    pthread_mutex_unlock(&a->lock);
    if (rc == PC_OK)
        return;
    count_record_failure(a);
    if (version != 0)
        pc_warn("applier",
                "%s version %llu is live but could not be recorded as live (%s: %s): reports show "
                "it live, flagged unrecorded; a restart would serve the version recorded before",
                tenant, (unsigned long long)version, pc_err_name(serr->code), serr->msg);
    else
        pc_warn("applier", "%s: cannot record that nothing is live (%s: %s)", tenant,
                pc_err_name(serr->code), serr->msg);
}

static void record_live(pc_applier *a, const char *tenant, uint64_t version)
{
    pc_tenant_state t;
    pc_err serr;
    int rc = PC_OK;
    /* At start the store already records what is being made live again. */
    if (pc_store_get_tenant(a->opt.store, tenant, &t, NULL) == PC_OK && t.live_version == version) {
        live_recorded(a, tenant, version, PC_OK, NULL);
        return;
    }
    if (a->deferring) {
        if (a->n_dlive == a->cap_dlive) {
            size_t cap = a->cap_dlive ? a->cap_dlive * 2 : 256;
            deferred_live *grown = realloc(a->dlive, cap * sizeof(*grown));
            if (grown != NULL) {
                a->dlive = grown;
                a->cap_dlive = cap;
            }
        }
        if (a->n_dlive < a->cap_dlive) {
            deferred_live *d = &a->dlive[a->n_dlive++];
            snprintf(d->tenant, sizeof(d->tenant), "%s", tenant);
            d->version = version;
            return;
        }
    }
    rc = pc_store_set_live(a->opt.store, tenant, version, &serr);
    live_recorded(a, tenant, version, rc, &serr);
}

/* A copy of tenant's record (taken under lock); NULL when it has none
 * (or out of memory). Free with record_free. */
static tenant_record *copy_record(pc_applier *a, const char *tenant)
{
    pthread_mutex_lock(&a->lock);
    tenant_record *t = pc_strmap_get(a->records, tenant);
    tenant_record *copy = t != NULL ? record_copy(t) : NULL;
    pthread_mutex_unlock(&a->lock);
    return copy;
}

/* Starts collecting live versions and outcomes (apply_lock held). */
static void defer_records(pc_applier *a)
{
    PC_CHECK_HELD(&a->apply_lock);
    a->n_dlive = 0;
    a->douts = pc_strmap_new();
    a->deferring = a->douts != NULL;
}

/* Writes what was collected in one transaction (apply_lock held). When
 * that fails, each is written alone, so one bad record costs only itself. */
static void flush_records(pc_applier *a)
{
    PC_CHECK_HELD(&a->apply_lock);
    if (!a->deferring)
        return;
    a->deferring = false;
    size_t n_outs = pc_strmap_count(a->douts), n = a->n_dlive + n_outs;
    pc_store_write *w = calloc(n ? n : 1, sizeof(*w));
    uint8_t **vals = calloc(n_outs ? n_outs : 1, sizeof(*vals));
    char(*keys)[PC_REGISTRY_OUTCOMES_KEY_MAX] = calloc(n_outs ? n_outs : 1, sizeof(*keys));
    const char **out_tenants = calloc(n_outs ? n_outs : 1, sizeof(*out_tenants));
    pc_err err;
    int rc =
        w && vals && keys && out_tenants ? PC_OK : pc_err_set(&err, PC_E_NOMEM, "out of memory");
    for (size_t i = 0; rc == PC_OK && i < a->n_dlive; i++) {
        w[i].tenant = a->dlive[i].tenant;
        w[i].live_version = a->dlive[i].version;
    }
    size_t pos = 0, k = 0;
    const char *tenant;
    void *unused;
    while (rc == PC_OK && pc_strmap_next(a->douts, &pos, &tenant, &unused)) {
        tenant_record *copy = copy_record(a, tenant);
        if (copy == NULL) {
            count_record_failure(a);
            continue;
        }
        Popcast__VersionOutcome items[VERSIONS_KEPT], *ptrs[VERSIONS_KEPT];
        Popcast__TenantOutcomes o = POPCAST__TENANT_OUTCOMES__INIT;
        outcomes_proto(copy, items, ptrs, &o.n_outcomes);
        o.outcomes = ptrs;
        o.outcomes_from = copy->from;
        rc = pc_registry_outcomes_write(tenant, &o, keys[k], &w[a->n_dlive + k], &vals[k], &err);
        record_free(copy);
        out_tenants[k++] = tenant;
    }
    if (rc == PC_OK)
        rc = pc_store_write_many(a->opt.store, w, a->n_dlive + k, &err);
    if (rc == PC_OK) {
        for (size_t i = 0; i < a->n_dlive; i++)
            live_recorded(a, a->dlive[i].tenant, a->dlive[i].version, PC_OK, NULL);
    } else {
        pc_warn("applier",
                "cannot record a snapshot's %zu live versions and %zu outcomes at once "
                "(%s: %s): writing each alone",
                a->n_dlive, n_outs, pc_err_name(err.code), err.msg);
        for (size_t i = 0; i < a->n_dlive; i++)
            record_live(a, a->dlive[i].tenant, a->dlive[i].version);
        pos = 0;
        while (pc_strmap_next(a->douts, &pos, &tenant, &unused)) {
            tenant_record *copy = copy_record(a, tenant);
            if (copy != NULL) {
                persist_outcomes(a, tenant, copy);
                record_free(copy);
            }
        }
    }
    for (size_t i = 0; vals != NULL && i < n_outs; i++)
        free(vals[i]);
    free(vals);
    free(keys);
    free(out_tenants);
    free(w);
    pc_strmap_free(a->douts);
    a->douts = NULL;
    a->n_dlive = 0;
}

/* What the runtimes serve of tenant now (0: nothing): the truth reports
 * give, whatever the store could record. */
static uint64_t serving_version(pc_applier *a, const char *tenant)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++) {
        uint64_t v = a->opt.adapters[i]->live_version(a->opt.adapters[i], tenant);
        if (v != 0)
            return v;
    }
    return 0;
}

/* The version a traffic split runs part of tenant's requests on (0:
 * none). */
static uint64_t split_serving(pc_applier *a, const char *tenant)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++) {
        pc_adapter *ad = a->opt.adapters[i];
        uint64_t v = ad->split_version != NULL ? ad->split_version(ad, tenant) : 0;
        if (v != 0)
            return v;
    }
    return 0;
}

/* What an adapter is told of the version m (pointers into m and bundle). */
static pc_version_spec spec_of(const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                               bool deferred)
{
    return (pc_version_spec){.tenant = m->tenant,
                             .version = m->version,
                             .seq = m->seq,
                             .runtime = m->runtime,
                             .entrypoint = m->entrypoint,
                             .bundle = bundle,
                             .bundle_len = len,
                             .hash = m->bundle_hash.data,
                             .deferred = deferred};
}

/* Prepares and swaps in one version; on success records it as live. */
static int make_live(pc_applier *a, const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                     bool deferred, pc_err *err)
{
    pc_adapter *ad = find_adapter(a, m->runtime);
    if (ad == NULL)
        return pc_err_set(err, PC_E_RUNTIME, "this agent has no runtime named '%s'", m->runtime);
    pc_version_spec spec = spec_of(m, bundle, len, deferred);
    pc_prepared *p = NULL;
    int rc = ad->prepare(ad, &spec, &p, err);
    if (rc != PC_OK)
        return rc;
    if ((rc = ad->activate(ad, p, err)) != PC_OK)
        return rc;
    /* A tenant lives in one adapter: moving runtimes retires the old one,
     * only once the new one is active (a failed activation leaves the old
     * version serving, and the new one nacked). */
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        if (a->opt.adapters[i] != ad &&
            a->opt.adapters[i]->live_version(a->opt.adapters[i], m->tenant) != 0)
            a->opt.adapters[i]->deactivate(a->opt.adapters[i], m->tenant, NULL);
    pc_metric_add(a->m_live, 1);
    record_live(a, m->tenant, m->version);
    record_outcome(a, m->tenant, m->version, m->seq, POPCAST__VERSION_STATE__VERSION_STATE_LIVE,
                   false, NULL, NULL);
    return PC_OK;
}

/* A split (target.h): the version runs its share of the tenant's
 * requests beside the one serving the rest. It went live here (its
 * outcome), but the store's live version stays the other one: the one a
 * restart starts from, before it splits again. An adapter that cannot
 * split, or a tenant with nothing live in it to split with, gets the
 * version wholly. */
static int make_split(pc_applier *a, const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                      const Popcast__Target *target, pc_err *err)
{
    pc_adapter *ad = find_adapter(a, m->runtime);
    if (ad == NULL || ad->activate_split == NULL || ad->live_version(ad, m->tenant) == 0)
        return make_live(a, m, bundle, len, false, err);
    pc_version_spec spec = spec_of(m, bundle, len, false);
    pc_prepared *p = NULL;
    int rc = ad->prepare(ad, &spec, &p, err);
    if (rc == PC_OK)
        rc = ad->activate_split(ad, p, target->split_permille, target->split_key, err);
    if (rc != PC_OK)
        return rc;
    pc_metric_add(a->m_live, 1);
    record_outcome(a, m->tenant, m->version, m->seq, POPCAST__VERSION_STATE__VERSION_STATE_LIVE,
                   false, NULL, NULL);
    pc_info("applier", "%s version %llu runs %u per mille of the requests (split by %s)", m->tenant,
            (unsigned long long)m->version, target->split_permille, target->split_key);
    return PC_OK;
}

/* Makes a version live as its target says: wholly, or as a split. */
static int go_live(pc_applier *a, const Popcast__Manifest *m, const uint8_t *bundle, size_t len,
                   const Popcast__Target *target, bool deferred, pc_err *err)
{
    if (pc_target_splits(target))
        return make_split(a, m, bundle, len, target, err);
    return make_live(a, m, bundle, len, deferred, err);
}

/* The outcome of tenant's delete, once the store holds it: in effect. */
static void record_delete(pc_applier *a, const char *tenant)
{
    pc_tenant_state t;
    uint64_t seq = 0;
    pc_err err;
    if (pc_store_get_tenant(a->opt.store, tenant, &t, &err) != PC_OK || !t.deleted ||
        pc_store_version_seq(a->opt.store, tenant, t.last_version, &seq, &err) != PC_OK)
        return;
    record_outcome(a, tenant, t.last_version, seq, POPCAST__VERSION_STATE__VERSION_STATE_LIVE, true,
                   NULL, NULL);
}

/* Whether target (NULL: everyone) names this agent for tenant's version. */
static bool names_me(pc_applier *a, const Popcast__Target *target, const char *tenant,
                     uint64_t version)
{
    return pc_target_names(target, tenant, version, a->opt.agent_id ? a->opt.agent_id : "",
                           a->opt.pop ? a->opt.pop : "");
}

/* A version stored here whose target does not name this agent (yet):
 * whatever served before keeps serving. */
static void hold(pc_applier *a, const Popcast__Manifest *m)
{
    record_outcome(a, m->tenant, m->version, m->seq, POPCAST__VERSION_STATE__VERSION_STATE_HELD,
                   false, NULL, NULL);
    pc_info("applier",
            "%s version %llu (seq %llu) is stored and held: its target does not name "
            "this agent",
            m->tenant, (unsigned long long)m->version, (unsigned long long)m->seq);
}

static int load_version(pc_applier *a, const char *tenant, uint64_t version, bool deferred,
                        const Popcast__Target *split, pc_err *err);

/* A STAGE (stored): if it names this agent and its version is still the
 * tenant's active one, held here, that version goes live from the store.
 * A STAGE that a newer change overtook does nothing. */
static void stage_reached(pc_applier *a, const Popcast__Manifest *stage)
{
    pc_tenant_state t;
    pc_err err;
    if (pc_store_get_tenant(a->opt.store, stage->tenant, &t, &err) != PC_OK || t.deleted ||
        t.active_version != stage->version) {
        pc_info("applier", "%s: stage seq %llu of version %llu was overtaken by a newer change",
                stage->tenant, (unsigned long long)stage->seq, (unsigned long long)stage->version);
        return;
    }
    if (!names_me(a, stage->target, stage->tenant, stage->version))
        return;
    /* Wholly live already, or refused here: a stage never narrows it to
     * a split, nor retries it. A split becomes whole, or another split. */
    Popcast__VersionState st = outcome_of(a, stage->tenant, stage->version);
    if (st == POPCAST__VERSION_STATE__VERSION_STATE_NACKED ||
        serving_version(a, stage->tenant) == stage->version)
        return;
    if (load_version(a, stage->tenant, stage->version, false, stage->target, &err) != PC_OK) {
        pc_warn("applier", "%s version %llu reached by stage seq %llu but not live: %s",
                stage->tenant, (unsigned long long)stage->version, (unsigned long long)stage->seq,
                err.msg);
        record_nack(a, stage->tenant, stage->version, t.active_seq, pc_err_name(err.code), err.msg);
        return;
    }
    pc_info("applier", "%s version %llu is live: stage seq %llu names this agent", stage->tenant,
            (unsigned long long)stage->version, (unsigned long long)stage->seq);
}

/* A delete: the tenant leaves every runtime (called once the delete is
 * stored). */
static void take_down(pc_applier *a, const char *tenant)
{
    for (size_t i = 0; i < a->opt.n_adapters; i++)
        a->opt.adapters[i]->deactivate(a->opt.adapters[i], tenant, NULL);
    record_live(a, tenant, 0);
    record_delete(a, tenant);
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
    pc_metric_add(a->m_rotations, 1);
    pc_info("applier", "signing key rotated at seq %llu: entries after it must be signed by %s",
            (unsigned long long)m->seq, kid);
}

/* What a stored entry does (apply_lock held, records deferred): the
 * applied seq moves to it, and its version goes live, is held, staged or
 * taken down. */
static void entry_stored_locked(pc_applier *a, const Popcast__Manifest *m, const uint8_t *bundle,
                                size_t bundle_len)
{
    PC_CHECK_HELD(&a->apply_lock);
    atomic_store(&a->applied_seq, m->seq);
    pc_metric_add(a->m_applied, 1);
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION)
        rotated_to(a, m);
    pc_metric_set(a->m_applied_seq, m->seq);
    switch (m->kind) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK: {
        pc_err lerr;
        if (!names_me(a, m->target, m->tenant, m->version)) {
            hold(a, m);
        } else if (go_live(a, m, bundle, bundle_len, m->target, false, &lerr) != PC_OK) {
            pc_warn("applier", "%s version %llu stored but not live: %s", m->tenant,
                    (unsigned long long)m->version, lerr.msg);
            record_nack(a, m->tenant, m->version, m->seq, pc_err_name(lerr.code), lerr.msg);
        } else {
            /* From the signing controller's clock to this one's: skew
             * shifts it (docs/operations.md "Metrics"). */
            int64_t since = pc_wall_ms() - m->created_unix_ms;
            pc_histogram_observe_us(a->m_deploy_to_live, since > 0 ? (uint64_t)since * 1000 : 0);
            pc_info("applier", "%s version %llu (seq %llu) is live", m->tenant,
                    (unsigned long long)m->version, (unsigned long long)m->seq);
        }
        break;
    }
    case POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE: stage_reached(a, m); break;
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE:
        take_down(a, m->tenant);
        pc_info("applier", "%s deleted at version %llu (seq %llu)", m->tenant,
                (unsigned long long)m->version, (unsigned long long)m->seq);
        break;
    default: break;
    }
}

/* pc_trust_verify_entry, counted: the checks are the agent's main CPU
 * cost per entry, and how often an entry is checked again is a cost of
 * how entries are grouped (apply_group_locked). */
static int verify_entry(pc_applier *a, const pc_trust *trust, const Popcast__Entry *e,
                        Popcast__Manifest **out, pc_err *err)
{
    pc_metric_add(a->m_verifications, 1);
    return pc_trust_verify_entry(trust, e, a->opt.max_bundle, out, err);
}

static int apply_entry_locked(pc_applier *a, const Popcast__Entry *e, pc_err *err)
{
    PC_CHECK_HELD(&a->apply_lock);
    Popcast__Manifest *m = NULL;
    pc_metric_add(a->m_received, 1);
    int rc = verify_entry(a, &a->trust, e, &m, err);
    if (rc == PC_E_UNTRUSTED_KEY && beyond_next(a, e)) {
        /* Possibly signed by a key announced in an entry we have not seen
         * yet: catch up first; the entry is judged when its turn comes. */
        pc_metric_add(a->m_unverified_ahead, 1);
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
            pc_metric_add(a->m_announcements, 1);
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
    /* What went live and its outcome: one transaction, not one each. */
    defer_records(a);
    entry_stored_locked(a, m, bundle, bundle_len);
    flush_records(a);
    rc = PC_OK;
out:
    popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

/* Group apply: entries that arrived together go into the store in one
 * transaction (one fsync), and what they make live into one more. */

/* Whether the verified entry m may join a group of n (ms) expected at seq
 * next: the next seq, complete, of a kind that changes no key (a rotation
 * changes what verifies the entries after it), and of a tenant not in
 * the group yet. One entry per tenant, because what a version does is
 * recorded after the whole group is stored: the store keeps a version's
 * bundle once it is recorded live, and records it live only while it is
 * the active one. A version made live and then followed, in the same
 * group, by one that fails would not be recorded, and a restart could
 * not serve it. */
static bool may_group(const Popcast__Entry *e, const Popcast__Manifest *m, uint64_t next,
                      Popcast__Manifest *const *ms, size_t n)
{
    if (m->seq != next || (e->bundle_omitted && pc_manifest_has_content(m)))
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(ms[i]->tenant, m->tenant) == 0)
            return false;
    switch (m->kind) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE:
    case POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE: return true;
    default: return false;
    }
}

/* Stores es[0..n) as one batch when at least two of them, from the
 * first, verify, follow the applied seq and may group (apply_lock held);
 * then makes them live with their records in one transaction. An entry
 * that verifies with a seq the run already holds, or that was applied,
 * is a duplicate (every controller publishes every entry, so an agent
 * subscribed to three gets each three times, interleaved): it does not
 * end the run, and is refused as one once the run is stored. Returns how
 * many of es the run covered (stored and duplicates): 0 when there is no
 * such run or the store refused it (nothing changed). *looked: how many
 * of es it verified before the run ended, which then go alone: a run
 * tried again from the second of them would end at the same entry
 * (verifying them all again: a wake-up of copies alone cost n^2/2
 * verifications). */
static size_t apply_run_locked(pc_applier *a, Popcast__Entry *const *es, size_t n, int64_t started,
                               size_t *looked)
{
    Popcast__Manifest *ms[PC_APPLIER_GROUP_MAX] = {0};
    pc_store_item items[PC_APPLIER_GROUP_MAX];
    memset(items, 0, sizeof(items));
    Popcast__Manifest *batch[PC_APPLIER_GROUP_MAX];
    bool duplicate[PC_APPLIER_GROUP_MAX] = {0};
    uint64_t next = atomic_load(&a->applied_seq) + 1;
    size_t i = 0, g = 0;
    pc_err err;
    for (; i < n && i < PC_APPLIER_GROUP_MAX; i++) {
        if (verify_entry(a, &a->trust, es[i], &ms[i], &err) != PC_OK)
            break;
        if (ms[i]->seq < next + g) {
            duplicate[i] = true;
            continue;
        }
        if (!may_group(es[i], ms[i], next + g, batch, g))
            break;
        bool content = pc_manifest_has_content(ms[i]);
        items[g] = (pc_store_item){.sm = es[i]->signed_,
                                   .m = ms[i],
                                   .bundle = content ? es[i]->bundle.data : NULL,
                                   .bundle_len = content ? es[i]->bundle.len : 0};
        batch[g++] = ms[i];
    }
    size_t covered = 0;
    if (g >= 2 && pc_store_apply_batch(a->opt.store, items, g, &err) == PC_OK) {
        pc_metric_add(a->m_received, i);
        pc_metric_add(a->m_batches, 1);
        defer_records(a);
        for (size_t k = 0; k < g; k++) {
            entry_stored_locked(a, batch[k], items[k].bundle, items[k].bundle_len);
            pc_histogram_observe_us(a->m_apply_latency, (uint64_t)(pc_mono_ns() - started) / 1000);
        }
        flush_records(a);
        pc_err dup;
        for (size_t k = 0; k < i; k++)
            if (duplicate[k]) {
                pc_err_set(&dup, PC_E_DUPLICATE, "seq %llu is already applied",
                           (unsigned long long)ms[k]->seq);
                refuse(a, PC_E_DUPLICATE, ms[k], &dup);
            }
        covered = i;
    }
    *looked = i;
    for (size_t k = 0; k < n && k < PC_APPLIER_GROUP_MAX; k++)
        if (ms[k] != NULL)
            popcast__manifest__free_unpacked(ms[k], NULL);
    return covered;
}

/* Applies es[0..n) in order (apply_lock held): each run that can go as
 * one batch does; the entries a run looked at when it could not (fewer
 * than two new ones, or the store refused it) go alone, so each refusal
 * is exactly the one it would be alone. Returns how many were applied. */
static size_t apply_group_locked(pc_applier *a, Popcast__Entry *const *es, size_t n)
{
    PC_CHECK_HELD(&a->apply_lock);
    size_t done = 0, applied = 0;
    while (done < n) {
        int64_t started = pc_mono_ns();
        uint64_t before = atomic_load(&a->applied_seq);
        size_t looked = 0;
        size_t run = n - done >= 2 ? apply_run_locked(a, es + done, n - done, started, &looked) : 0;
        if (run > 0) {
            done += run;
            applied += (size_t)(atomic_load(&a->applied_seq) - before);
            continue;
        }
        size_t alone = looked > 1 ? looked : 1;
        for (size_t k = 0; k < alone; k++, done++) {
            pc_err err;
            started = pc_mono_ns();
            if (apply_entry_locked(a, es[done], &err) == PC_OK) {
                pc_histogram_observe_us(a->m_apply_latency,
                                        (uint64_t)(pc_mono_ns() - started) / 1000);
                applied++;
            }
        }
    }
    return applied;
}

int pc_applier_apply_entries(pc_applier *a, Popcast__Entry *const *es, size_t n)
{
    size_t applied = 0;
    for (size_t at = 0; at < n; at += PC_APPLIER_GROUP_MAX) {
        size_t k = n - at < PC_APPLIER_GROUP_MAX ? n - at : PC_APPLIER_GROUP_MAX;
        pc_mutex_lock(&a->apply_lock);
        size_t got = apply_group_locked(a, es + at, k);
        apply_unlock(a);
        if (got > 0)
            changed(a, 0);
        applied += got;
    }
    return (int)applied;
}

int pc_applier_apply_entry(pc_applier *a, const Popcast__Entry *e, pc_err *err)
{
    pc_mutex_lock(&a->apply_lock);
    int64_t started = pc_mono_ns();
    int rc = apply_entry_locked(a, e, err);
    if (rc == PC_OK)
        pc_histogram_observe_us(a->m_apply_latency, (uint64_t)(pc_mono_ns() - started) / 1000);
    apply_unlock(a);
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
        a->heard_heartbeat = true;
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

void pc_applier_on_publications(pc_applier *a, const uint8_t *const *data, const size_t *len,
                                size_t n)
{
    Popcast__Publication *pubs[PC_APPLIER_GROUP_MAX];
    Popcast__Entry *run[PC_APPLIER_GROUP_MAX];
    size_t k = 0;
    for (size_t i = 0; i <= n; i++) {
        Popcast__Publication *pub =
            i < n ? popcast__publication__unpack(NULL, len[i], data[i]) : NULL;
        bool joins = pub != NULL && pub->body_case == POPCAST__PUBLICATION__BODY_ENTRY;
        if (joins && drop_this_one(a)) {
            pc_metric_add(a->m_dropped, 1);
            popcast__publication__free_unpacked(pub, NULL);
            continue;
        }
        if (joins) {
            pubs[k] = pub;
            run[k++] = pub->entry;
        }
        /* The run goes in before anything else is handled (heartbeats in
         * their order), when full, and at the end. */
        if (k > 0 && (!joins || k == PC_APPLIER_GROUP_MAX || i == n)) {
            pc_applier_apply_entries(a, run, k);
            for (size_t j = 0; j < k; j++)
                popcast__publication__free_unpacked(pubs[j], NULL);
            k = 0;
        }
        if (i < n && !joins) {
            if (pub != NULL)
                popcast__publication__free_unpacked(pub, NULL);
            pc_applier_on_publication(a, data[i], len[i]);
        }
    }
}

/* Startup. */

typedef struct load_walk {
    pc_applier *a;
    size_t live;
} load_walk;

/* deferred: the version was live before this start (pc_version_spec). */
static int load_version(pc_applier *a, const char *tenant, uint64_t version, bool deferred,
                        const Popcast__Target *split, pc_err *err)
{
    uint64_t seq = 0;
    Popcast__Manifest *m = NULL;
    uint8_t *bundle = NULL;
    size_t len = 0;
    int rc = pc_store_version_seq(a->opt.store, tenant, version, &seq, err);
    /* Verified before it was stored; the key that signed it may have
     * rotated since, so it is not verified again. */
    if (rc == PC_OK)
        rc = pc_store_get_manifest(a->opt.store, seq, &m, err);
    if (rc == PC_OK)
        rc = pc_store_get_blob(a->opt.store, m->bundle_hash.data, &bundle, &len, err);
    if (rc == PC_OK)
        rc = go_live(a, m, bundle, len, split, deferred, err);
    free(bundle);
    if (m)
        popcast__manifest__free_unpacked(m, NULL);
    return rc;
}

/* At start: whether the tenant's active version is targeted at this
 * agent, by its own entry or by the last STAGE of it (either makes it
 * live here: a stage never takes it back); *split: a copy of the target
 * of the last of them that named it, when that one splits (free with
 * popcast__target__free_unpacked). A version decided here (nacked, or
 * wholly live: the store's live one) is not read again. */
static bool active_names_me(pc_applier *a, const pc_tenant_state *t, Popcast__Target **split)
{
    *split = NULL;
    Popcast__VersionState st = outcome_of(a, t->tenant, t->active_version);
    if (st == POPCAST__VERSION_STATE__VERSION_STATE_NACKED ||
        (st == POPCAST__VERSION_STATE__VERSION_STATE_LIVE && t->live_version == t->active_version))
        return true;
    bool named = false;
    uint64_t seqs[2] = {t->active_seq, t->stage_seq};
    for (size_t i = 0; i < 2 && seqs[i] != 0; i++) {
        Popcast__Manifest *m = NULL;
        pc_err err;
        if (pc_store_get_manifest(a->opt.store, seqs[i], &m, &err) != PC_OK)
            return true; /* loading it fails, and says why */
        if (names_me(a, m->target, t->tenant, t->active_version)) {
            named = true;
            if (*split != NULL)
                popcast__target__free_unpacked(*split, NULL);
            *split = pc_target_splits(m->target) ? pc_target_copy(m->target) : NULL;
        }
        popcast__manifest__free_unpacked(m, NULL);
    }
    return named || st == POPCAST__VERSION_STATE__VERSION_STATE_LIVE;
}

static int load_tenant(void *arg, const pc_tenant_state *t)
{
    load_walk *w = arg;
    pc_applier *a = w->a;
    /* A tenant without outcomes (a store from before they were kept):
     * they start at its newest version; what came before is unknown. */
    pthread_mutex_lock(&a->lock);
    tenant_record_get(a, t->tenant, t->last_version);
    pthread_mutex_unlock(&a->lock);
    if (t->active_version == 0) {
        if (t->deleted)
            record_delete(a, t->tenant);
        return 0;
    }
    pc_err err;
    Popcast__Target *split = NULL;
    bool named = active_names_me(a, t, &split);
    if (named && split != NULL && t->live_version != 0 && t->live_version != t->active_version) {
        /* A split: the version serving the rest first, then the split. */
        if (load_version(a, t->tenant, t->live_version, true, NULL, &err) == PC_OK)
            w->live++;
        else
            pc_error("applier", "%s: live version %llu does not load: %s", t->tenant,
                     (unsigned long long)t->live_version, err.msg);
        if (load_version(a, t->tenant, t->active_version, false, split, &err) != PC_OK)
            record_nack(a, t->tenant, t->active_version, t->active_seq, pc_err_name(err.code),
                        err.msg);
        popcast__target__free_unpacked(split, NULL);
        return 0;
    }
    if (split != NULL)
        popcast__target__free_unpacked(split, NULL);
    if (!named) {
        /* Held here: what served before serves again. */
        record_outcome(a, t->tenant, t->active_version, t->active_seq,
                       POPCAST__VERSION_STATE__VERSION_STATE_HELD, false, NULL, NULL);
        if (t->live_version != 0 && t->live_version != t->active_version) {
            if (load_version(a, t->tenant, t->live_version, true, NULL, &err) == PC_OK)
                w->live++;
            else
                pc_error("applier", "%s: live version %llu does not load: %s", t->tenant,
                         (unsigned long long)t->live_version, err.msg);
        }
        return 0;
    }
    /* A version that was live before (it loaded then) is not built again
     * before serving: the start stays short with many tenants. */
    if (load_version(a, t->tenant, t->active_version, t->live_version == t->active_version, NULL,
                     &err) == PC_OK) {
        w->live++;
        return 0;
    }
    pc_warn("applier", "%s version %llu does not load at startup: %s", t->tenant,
            (unsigned long long)t->active_version, err.msg);
    record_nack(a, t->tenant, t->active_version, t->active_seq, pc_err_name(err.code), err.msg);
    if (t->live_version != 0 && t->live_version != t->active_version) {
        if (load_version(a, t->tenant, t->live_version, true, NULL, &err) == PC_OK) {
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
    /* What goes live for the first time here (a snapshot interrupted by
     * a stop) is recorded in one transaction, as a snapshot is. */
    defer_records(a);
    if (pc_store_foreach_tenant(a->opt.store, load_tenant, &w, &err) != PC_OK)
        pc_error("applier", "cannot read tenants from the store: %s", err.msg);
    flush_records(a);
    apply_unlock(a);
    return w.live;
}

/* Verifies a snapshot's rotation chain from the root keys into cand, and
 * that it extends the chain we already follow (apply_lock held). Their
 * seqs are checked against the snapshot's once its assertion verified. */
static int snapshot_chain(pc_applier *a, Popcast__Entry *const *rotations, size_t n_rot,
                          pc_trust *cand, Popcast__Manifest **ms, pc_err *err)
{
    for (size_t i = 0; i < n_rot; i++) {
        int rc = verify_entry(a, cand, rotations[i], &ms[i], err);
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
 * heartbeat while heartbeats arrive. *seq gets the asserted seq; *ahead
 * gets it too when that last check is the only one that failed (0
 * otherwise). */
static int check_assertion(pc_applier *a, const Popcast__SnapshotResponse *snap,
                           Popcast__Entry *const *tenants, const pc_trust *cand,
                           Popcast__Manifest *const *rot_ms, bool fresh, uint64_t *seq,
                           uint64_t *ahead, pc_err *err)
{
    *ahead = 0;
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
    for (size_t i = 0; rc == PC_OK && i < snap->n_rotations; i++)
        if (rot_ms[i]->seq > sa->seq)
            rc = pc_err_set(err, PC_E_INVALID, "rotation seq %llu is past the snapshot's %llu",
                            (unsigned long long)rot_ms[i]->seq, (unsigned long long)sa->seq);
    if (rc == PC_OK && head > 0 && sa->seq > head && !pc_applier_is_stale(a)) {
        /* A controller that holds the key could still claim any seq; the
         * heartbeats say where the log really is. A genuine snapshot newer
         * than the last heartbeat passes once a heartbeat reaches it. */
        rc = pc_err_set(err, PC_E_INVALID,
                        "seq %llu is ahead of the head %llu of the last heartbeat",
                        (unsigned long long)sa->seq, (unsigned long long)head);
        *ahead = sa->seq;
    }
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
                                  Popcast__Manifest **ms, uint64_t *seq, uint64_t *ahead,
                                  pc_err *err)
{
    PC_CHECK_HELD(&a->apply_lock);
    size_t n = snap->n_tenants;
    uint64_t past_head = 0;
    int rc = snapshot_chain(a, snap->rotations, snap->n_rotations, cand, ms + n, err);
    if (rc != PC_OK)
        return rc;
    rc = check_assertion(a, snap, tenants, cand, ms + n, before_fetch, seq, &past_head, err);
    if (rc != PC_OK && past_head != 0 && ahead != NULL) {
        /* Not a refusal yet: the caller may wait for a heartbeat. */
        *ahead = past_head;
        pc_err_wrap(err, "snapshot not installed yet: its assertion");
        return rc;
    }
    if (rc != PC_OK) {
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
        rc = verify_entry(a, cand, tenants[i], &ms[i], err);
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

int pc_applier_verify_snapshot(pc_applier *a, const Popcast__SnapshotResponse *snap,
                               uint64_t *ahead, pc_err *err)
{
    if (ahead != NULL)
        *ahead = 0;
    size_t total = snap->n_tenants + snap->n_rotations;
    Popcast__Manifest **ms = calloc(total ? total : 1, sizeof(*ms));
    if (ms == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    pc_trust cand;
    pc_trust_init(&cand, &a->trust.roots);
    uint64_t seq = 0;
    pc_mutex_lock(&a->apply_lock);
    int rc = verify_snapshot_locked(a, snap, snap->tenants, true, &cand, ms, &seq, ahead, err);
    apply_unlock(a);
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
    int rc = verify_entry(a, &a->trust, &shell, out, err);
    apply_unlock(a);
    if (rc != PC_OK) {
        refuse(a, rc, NULL, err);
        pc_err_wrap(err, "announcement refused before its bundle was fetched");
    }
    return rc;
}

static bool same_tenant(const Popcast__Manifest *x, const Popcast__Manifest *y)
{
    return x->tenant != NULL && y->tenant != NULL && strcmp(x->tenant, y->tenant) == 0;
}

/* A snapshot's item i is a base: the version the agents a deployment has
 * not reached serve, carried before its tenant's newer active entry. */
static bool is_base(Popcast__Manifest *const *ms, size_t n, size_t i)
{
    return i + 1 < n && pc_manifest_has_content(ms[i]) && pc_manifest_has_content(ms[i + 1]) &&
           same_tenant(ms[i], ms[i + 1]) && ms[i + 1]->version > ms[i]->version;
}

/* Whether the active entry at i, or the STAGE of it that follows, names
 * this agent (either makes it live here: a stage never takes it back);
 * *how: the target of the last of them that does (the stage's first). */
static bool snapshot_names_me(pc_applier *a, Popcast__Manifest *const *ms, size_t n, size_t i,
                              const Popcast__Target **how)
{
    *how = NULL;
    if (i + 1 < n && ms[i + 1]->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE &&
        same_tenant(ms[i], ms[i + 1]) && ms[i + 1]->version == ms[i]->version &&
        names_me(a, ms[i + 1]->target, ms[i]->tenant, ms[i]->version)) {
        *how = ms[i + 1]->target;
        return true;
    }
    *how = ms[i]->target;
    return names_me(a, ms[i]->target, ms[i]->tenant, ms[i]->version);
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
    if ((rc = verify_snapshot_locked(a, snap, entries, false, &cand, ms, &seq, NULL, err)) != PC_OK)
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
    /* A deployment under way that does not name this agent: the version
     * before it goes live here, in the same transaction (so its bundle
     * stays), and the held one after it does not. */
    for (size_t i = 0; i < n; i++) {
        const Popcast__Target *how = NULL;
        /* ... and it serves the rest of a split. */
        items[i].live = is_base(ms, n, i) &&
                        (!snapshot_names_me(a, ms, n, i + 1, &how) || pc_target_splits(how));
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
        defer_records(a);
        for (size_t i = 0; i < n; i++) {
            if (atomic_load(&a->interrupted)) {
                pc_warn("applier",
                        "stopping: %zu tenants of the snapshot are stored but not made live; the "
                        "next start makes them live",
                        n - i);
                break;
            }
            if (!applied[i] || (is_base(ms, n, i) && !items[i].live))
                continue; /* a base this agent does not serve: the version after it does */
            pc_err lerr;
            const Popcast__Target *how = NULL;
            if (ms[i]->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_STAGE) {
                stage_reached(a, ms[i]); /* follows its version's entry */
            } else if (!pc_manifest_has_content(ms[i])) {
                take_down(a, ms[i]->tenant);
            } else if (!is_base(ms, n, i) && !snapshot_names_me(a, ms, n, i, &how)) {
                hold(a, ms[i]);
            } else if (go_live(a, ms[i], items[i].bundle, items[i].bundle_len,
                               is_base(ms, n, i) ? NULL : how, false, &lerr) != PC_OK) {
                record_nack(a, ms[i]->tenant, ms[i]->version, ms[i]->seq, pc_err_name(lerr.code),
                            lerr.msg);
            } else {
                made_live++;
            }
        }
        flush_records(a);
        pc_info("applier", "installed a snapshot at seq %llu: %zu tenants, %zu made live",
                (unsigned long long)seq, n, made_live);
    }
out:
    apply_unlock(a);
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

static void records_free(pc_applier *a)
{
    size_t pos = 0;
    const char *tenant;
    void *val;
    while (pc_strmap_next(a->records, &pos, &tenant, &val))
        record_free(val);
    pc_strmap_free(a->records);
}

/* One tenant's stored outcomes into memory (before anything runs: no
 * lock needed, none taken). */
static int load_outcomes(void *arg, const char *tenant, const Popcast__TenantOutcomes *o)
{
    pc_applier *a = arg;
    if (!pc_tenant_name_valid(tenant))
        return 0;
    tenant_record *t = tenant_record_get(a, tenant, o->outcomes_from);
    if (t == NULL)
        return PC_E_NOMEM;
    for (size_t i = 0; i < o->n_outcomes; i++) {
        const Popcast__VersionOutcome *po = o->outcomes[i];
        bool created;
        version_record *v =
            po->version != 0 ? record_slot(a, tenant, &t, po->version, &created) : NULL;
        if (v == NULL)
            continue;
        v->seq = po->seq;
        v->state = po->state;
        v->is_delete = po->is_delete;
        v->decided_seq = po->decided_seq;
        v->at_unix_ms = po->at_unix_ms;
        snprintf(v->reason, sizeof(v->reason), "%s", po->reason);
        free(v->detail);
        v->detail =
            po->state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED ? strdup(po->detail) : NULL;
    }
    return 0;
}

int pc_applier_new(pc_applier **out, const pc_applier_options *opt, pc_err *err)
{
    pc_applier *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    a->opt = *opt;
    if ((a->records = pc_strmap_new()) == NULL) {
        free(a);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
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
    /* So do the outcomes of versions processed before. */
    if (rc == PC_OK)
        rc = pc_registry_foreach_outcomes(opt->store, load_outcomes, a, err);
    if (rc != PC_OK) {
        pc_trust_free(&a->trust);
        records_free(a);
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
    a->m_batches =
        pc_metrics_counter(opt->metrics, "popcast_agent_apply_batches_total", NULL,
                           "store transactions that applied several entries that arrived together");
    a->m_verifications =
        pc_metrics_counter(opt->metrics, "popcast_agent_entry_verifications_total", NULL,
                           "entry signature and bundle checks (Ed25519, BLAKE2b), each counted");
    a->m_record_failures =
        pc_metrics_counter(opt->metrics, "popcast_agent_record_failures_total", NULL,
                           "writes of what happened (live versions, outcomes) that failed");
    a->m_rotations = pc_metrics_counter(opt->metrics, "popcast_agent_key_rotations_total", NULL,
                                        "signing key rotations applied");
    a->m_unverified_ahead = pc_metrics_counter(
        opt->metrics, "popcast_agent_unverified_ahead_total", NULL,
        "entries ahead of the log signed by a key not known yet (caught up first)");
    a->m_announcements =
        pc_metrics_counter(opt->metrics, "popcast_agent_announcements_total", NULL,
                           "entries announced without their bundle (fetched in chunks)");
    a->m_apply_latency =
        pc_metrics_latency(opt->metrics, "popcast_agent_apply_seconds", NULL,
                           "applying one entry: verify, store, make live (for an entry "
                           "applied with others, from the start of their batch)");
    a->m_deploy_to_live =
        pc_metrics_latency(opt->metrics, "popcast_agent_deploy_to_live_seconds", NULL,
                           "from the controller signing a version to it going live here (wall "
                           "clocks: skew shifts it)");
    pc_metrics_describe(opt->metrics, "popcast_agent_nacks_total",
                        "versions this agent refused or could not make live, by reason");
    pc_metrics_describe(opt->metrics, "popcast_agent_refused_total",
                        "entries refused, by reason (duplicates included)");
    pc_metrics_describe(opt->metrics, "popcast_agent_heartbeats_refused_total",
                        "heartbeats refused, by reason");
    if (opt->test_drop_permille != 0)
        pc_warn("applier", "TEST MODE: dropping %u per mille of pub/sub entries",
                opt->test_drop_permille);
    *out = a;
    return PC_OK;
}

void pc_applier_interrupt(pc_applier *a)
{
    if (a != NULL)
        atomic_store(&a->interrupted, true);
}

void pc_applier_free(pc_applier *a)
{
    if (a == NULL)
        return;
    pc_trust_free(&a->trust);
    records_free(a);
    for (size_t i = 0; i < OTHER_NACKS; i++)
        free(a->others[i].v.detail);
    free(a->dlive);
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

int64_t pc_applier_heartbeat_age_ms(pc_applier *a)
{
    pthread_mutex_lock(&a->lock);
    int64_t age = a->heard_heartbeat ? pc_mono_ms() - a->last_heartbeat_ms : -1;
    pthread_mutex_unlock(&a->lock);
    return age;
}

uint64_t pc_applier_stale_after_ms(pc_applier *a)
{
    return a->opt.stale_after_ms;
}

typedef struct proto_walk {
    pc_applier *a;
    Popcast__TenantStatus **items;
    size_t n, cap;
} proto_walk;

static void free_outcome(Popcast__VersionOutcome *o)
{
    if (o->reason != protobuf_c_empty_string)
        free(o->reason);
    if (o->detail != protobuf_c_empty_string)
        free(o->detail);
    free(o);
}

/* The outcomes of a tenant's versions into its report entry (copies:
 * the report outlives the lock). Read after the store's view of the
 * tenant, so a version the store shows as applied and has no outcome yet
 * is one being decided now, never one skipped (rollout.h). */
static int tenant_outcomes(pc_applier *a, const pc_tenant_state *t, Popcast__TenantStatus *ts)
{
    tenant_record none = {.from = t->last_version ? t->last_version : 1};
    pthread_mutex_lock(&a->lock);
    const tenant_record *rec = pc_strmap_get(a->records, t->tenant);
    tenant_record *copy = rec != NULL ? record_copy(rec) : NULL;
    pthread_mutex_unlock(&a->lock);
    int rc = rec != NULL && copy == NULL ? PC_E_NOMEM : PC_OK;
    const tenant_record *use = copy != NULL ? copy : &none;
    ts->outcomes_from = use->from;
    ts->live_unrecorded = use->live_unrecorded != 0 && use->live_unrecorded == ts->live_version;
    if (use->n > 0 && (ts->outcomes = calloc(use->n, sizeof(*ts->outcomes))) == NULL)
        rc = PC_E_NOMEM;
    Popcast__VersionOutcome items[VERSIONS_KEPT], *ptrs[VERSIONS_KEPT];
    size_t n = 0;
    outcomes_proto(use, items, ptrs, &n);
    for (size_t i = 0; rc == PC_OK && i < n; i++) {
        Popcast__VersionOutcome *o = malloc(sizeof(*o));
        if (o == NULL) {
            rc = PC_E_NOMEM;
            break;
        }
        *o = items[i];
        o->reason = strdup(items[i].reason);
        o->detail = strdup(items[i].detail);
        ts->outcomes[ts->n_outcomes++] = o;
        if (o->reason == NULL || o->detail == NULL)
            rc = PC_E_NOMEM;
    }
    record_free(copy);
    return rc;
}

static void free_tenant_status(Popcast__TenantStatus *ts)
{
    for (size_t i = 0; i < ts->n_outcomes; i++)
        free_outcome(ts->outcomes[i]);
    free(ts->outcomes);
    for (size_t i = 0; i < ts->n_traffic; i++) /* the syncer's (traffic.h) */
        free(ts->traffic[i]);
    free(ts->traffic);
    free(ts->tenant);
    free(ts);
}

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
    ts->live_version = serving_version(w->a, t->tenant);
    ts->split_version = split_serving(w->a, t->tenant);
    ts->applied_seq = t->active_seq;
    w->items[w->n++] = ts;
    return tenant_outcomes(w->a, t, ts) == PC_OK ? 0 : 1;
}

static void free_nack(Popcast__Nack *pn)
{
    free(pn->tenant);
    free(pn->reason);
    free(pn->detail);
    free(pn);
}

static int by_nack_time(const void *x, const void *y)
{
    const Popcast__Nack *a = *(Popcast__Nack *const *)x, *b = *(Popcast__Nack *const *)y;
    if (a->at_unix_ms != b->at_unix_ms)
        return a->at_unix_ms < b->at_unix_ms ? -1 : 1;
    int c = strcmp(a->tenant, b->tenant);
    return c != 0 ? c : (a->version < b->version ? -1 : a->version > b->version);
}

/* Appends a copy of v as a Nack of tenant (lock held). */
static int add_nack(Popcast__Nack ***list, size_t *n, size_t *cap, const char *tenant,
                    const version_record *v)
{
    if (*n == *cap) {
        size_t grown_cap = *cap ? *cap * 2 : 16;
        Popcast__Nack **grown = realloc(*list, grown_cap * sizeof(*grown));
        if (grown == NULL)
            return PC_E_NOMEM;
        *list = grown;
        *cap = grown_cap;
    }
    Popcast__Nack *pn = malloc(sizeof(*pn));
    if (pn == NULL)
        return PC_E_NOMEM;
    popcast__nack__init(pn);
    pn->tenant = strdup(tenant);
    pn->version = v->version;
    pn->seq = v->seq;
    pn->reason = strdup(v->reason);
    pn->detail = strdup(v->detail ? v->detail : "");
    pn->at_unix_ms = v->at_unix_ms;
    (*list)[(*n)++] = pn;
    return pn->tenant == NULL || pn->reason == NULL || pn->detail == NULL ? PC_E_NOMEM : PC_OK;
}

/* Every nack kept, oldest first (the report's and /v1/status's list). */
static int collect_nacks(pc_applier *a, Popcast__Nack ***out, size_t *n_out)
{
    size_t n = 0, cap = 0;
    Popcast__Nack **list = NULL;
    int rc = PC_OK;
    pthread_mutex_lock(&a->lock);
    size_t pos = 0;
    const char *tenant;
    void *val;
    while (rc == PC_OK && pc_strmap_next(a->records, &pos, &tenant, &val)) {
        const tenant_record *t = val;
        for (size_t i = 0; rc == PC_OK && i < t->n; i++)
            if (t->v[i].state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED)
                rc = add_nack(&list, &n, &cap, tenant, &t->v[i]);
    }
    for (size_t i = 0; rc == PC_OK && i < a->others_count; i++)
        rc = add_nack(&list, &n, &cap, a->others[i].tenant, &a->others[i].v);
    pthread_mutex_unlock(&a->lock);
    if (list != NULL)
        qsort(list, n, sizeof(*list), by_nack_time);
    *out = list;
    *n_out = n;
    return rc;
}

void pc_applier_set_identity(pc_applier *a, const pc_public_key *pk)
{
    memcpy(a->identity, pk->pk, PC_PK_LEN);
    a->has_identity = true;
}

/* The runtimes' quarantined live versions (adapter.h), at most max. */
#define MAX_QUARANTINES 256
static size_t collect_quarantines(pc_applier *a, pc_quarantine *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < a->opt.n_adapters && n < max; i++) {
        pc_adapter *ad = a->opt.adapters[i];
        if (ad->quarantined != NULL) {
            size_t got = ad->quarantined(ad, out + n, max - n);
            n += got < max - n ? got : max - n;
        }
    }
    return n;
}

static int quarantines_proto(pc_applier *a, Popcast__AgentStatus *out)
{
    pc_quarantine *q = calloc(MAX_QUARANTINES, sizeof(*q));
    if (q == NULL)
        return PC_E_NOMEM;
    size_t n = collect_quarantines(a, q, MAX_QUARANTINES);
    int rc = PC_OK;
    if (n > 0 && (out->quarantined = calloc(n, sizeof(*out->quarantined))) == NULL)
        rc = PC_E_NOMEM;
    for (size_t i = 0; rc == PC_OK && i < n; i++) {
        Popcast__Quarantine *p = malloc(sizeof(*p));
        char *tenant = strdup(q[i].tenant), *reason = strdup(q[i].reason);
        if (p == NULL || tenant == NULL || reason == NULL) {
            free(p);
            free(tenant);
            free(reason);
            rc = PC_E_NOMEM;
            break;
        }
        popcast__quarantine__init(p);
        p->tenant = tenant;
        p->version = q[i].version;
        p->reason = reason;
        out->quarantined[out->n_quarantined++] = p;
    }
    free(q);
    return rc;
}

static json_t *quarantines_json(pc_applier *a)
{
    json_t *list = json_array();
    pc_quarantine *q = calloc(MAX_QUARANTINES, sizeof(*q));
    size_t n = q != NULL ? collect_quarantines(a, q, MAX_QUARANTINES) : 0;
    for (size_t i = 0; i < n; i++)
        json_array_append_new(list, json_pack("{s:s,s:I,s:o}", "tenant", q[i].tenant, "version",
                                              (json_int_t)q[i].version, "reason",
                                              pc_json_text(q[i].reason)));
    free(q);
    return list;
}

uint64_t pc_applier_tenants_generation(pc_applier *a)
{
    return atomic_load(&a->tenants_gen);
}

int pc_applier_status_header(pc_applier *a, Popcast__AgentStatus *out)
{
    popcast__agent_status__init(out);
    if (a->has_identity && (out->public_key.data = malloc(PC_PK_LEN)) != NULL) {
        memcpy(out->public_key.data, a->identity, PC_PK_LEN);
        out->public_key.len = PC_PK_LEN;
    }
    out->applied_seq = atomic_load(&a->applied_seq);
    out->stale = pc_applier_is_stale(a);
    out->record_failures = atomic_load(&a->record_failures);
    if (quarantines_proto(a, out) != PC_OK) {
        pc_applier_status_clear(out);
        return PC_E_NOMEM;
    }
    return PC_OK;
}

int pc_applier_status(pc_applier *a, Popcast__AgentStatus *out)
{
    /* The tenants first, the header (applied_seq) after: an entry applied
     * while the tenants are read moves applied_seq before its version
     * serves, so a report that shows a version live never shows an
     * applied_seq below that version's entry. */
    proto_walk w = {.a = a};
    int walked = pc_store_foreach_tenant(a->opt.store, tenant_proto, &w, NULL);
    Popcast__Nack **nacks = NULL;
    size_t n_nacks = 0;
    int collected = walked == PC_OK ? collect_nacks(a, &nacks, &n_nacks) : PC_OK;
    int rc = pc_applier_status_header(a, out);
    if (rc == PC_OK) {
        out->tenants = w.items;
        out->n_tenants = w.n;
        out->nacks = nacks;
        out->n_nacks = n_nacks;
    } else {
        Popcast__AgentStatus rest;
        popcast__agent_status__init(&rest);
        rest.tenants = w.items;
        rest.n_tenants = w.n;
        rest.nacks = nacks;
        rest.n_nacks = n_nacks;
        pc_applier_status_clear(&rest);
        return rc;
    }
    if (walked != PC_OK || collected != PC_OK) {
        pc_applier_status_clear(out);
        return walked != PC_OK ? PC_E_STORE : PC_E_NOMEM;
    }
    return PC_OK;
}

void pc_applier_status_clear(Popcast__AgentStatus *st)
{
    for (size_t i = 0; i < st->n_tenants; i++)
        free_tenant_status(st->tenants[i]);
    free(st->tenants);
    for (size_t i = 0; i < st->n_nacks; i++)
        free_nack(st->nacks[i]);
    free(st->nacks);
    free(st->public_key.data);
    for (size_t i = 0; i < st->n_quarantined; i++) {
        free(st->quarantined[i]->tenant);
        free(st->quarantined[i]->reason);
        free(st->quarantined[i]);
    }
    free(st->quarantined);
    popcast__agent_status__init(st);
}

/* Status. */

static json_t *hex_hash(const uint8_t *h)
{
    char hex[PC_HEX_HASH_LEN];
    pc_hex(hex, h, PC_HASH_LEN);
    return json_string(hex);
}

typedef struct json_walk {
    pc_applier *a;
    int (*each)(void *arg, json_t *tenant);
    void *arg;
} json_walk;

static const char *state_name(Popcast__VersionState s)
{
    switch (s) {
    case POPCAST__VERSION_STATE__VERSION_STATE_LIVE: return "live";
    case POPCAST__VERSION_STATE__VERSION_STATE_NACKED: return "nacked";
    case POPCAST__VERSION_STATE__VERSION_STATE_HELD: return "held";
    default: return "unknown";
    }
}

static json_t *outcomes_json(const Popcast__TenantStatus *ts)
{
    json_t *list = json_array();
    for (size_t i = 0; i < ts->n_outcomes; i++) {
        const Popcast__VersionOutcome *o = ts->outcomes[i];
        json_t *j = json_pack("{s:I,s:I,s:s,s:b,s:I,s:I}", "version", (json_int_t)o->version, "seq",
                              (json_int_t)o->seq, "state", state_name(o->state), "is_delete",
                              o->is_delete, "decided_seq", (json_int_t)o->decided_seq, "at_unix_ms",
                              (json_int_t)o->at_unix_ms);
        if (j != NULL && o->state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED) {
            json_object_set_new(j, "reason", json_string(o->reason));
            json_object_set_new(j, "detail", json_string(o->detail));
        }
        json_array_append_new(list, j);
    }
    return list;
}

static int tenant_status(void *arg, const pc_tenant_state *t)
{
    json_walk *w = arg;
    /* live_version: what the runtime serves; the store's record of it may
     * lag when it could not be written (live_unrecorded). */
    uint64_t live = serving_version(w->a, t->tenant);
    json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:b}", "tenant", t->tenant, "applied_version",
                          (json_int_t)t->active_version, "live_version", (json_int_t)live,
                          "recorded_live_version", (json_int_t)t->live_version, "last_version",
                          (json_int_t)t->last_version, "deleted", t->deleted);
    if (o != NULL && t->active_version != 0)
        json_object_set_new(o, "applied_hash", hex_hash(t->active_hash));
    uint64_t split = split_serving(w->a, t->tenant);
    if (o != NULL && split != 0)
        json_object_set_new(o, "split_version", json_integer((json_int_t)split));
    if (o != NULL && live != 0 && live == t->live_version)
        json_object_set_new(o, "live_hash", hex_hash(t->live_hash));
    else if (o != NULL && live != 0 && live == t->active_version)
        json_object_set_new(o, "live_hash", hex_hash(t->active_hash));
    Popcast__TenantStatus ts = POPCAST__TENANT_STATUS__INIT;
    ts.live_version = live;
    if (o != NULL && tenant_outcomes(w->a, t, &ts) == PC_OK) {
        json_object_set_new(o, "outcomes", outcomes_json(&ts));
        json_object_set_new(o, "outcomes_from", json_integer((json_int_t)ts.outcomes_from));
        json_object_set_new(o, "live_unrecorded", json_boolean(ts.live_unrecorded));
    }
    for (size_t i = 0; i < ts.n_outcomes; i++)
        free_outcome(ts.outcomes[i]);
    free(ts.outcomes);
    if (o == NULL)
        return PC_E_NOMEM;
    int stop = w->each(w->arg, o);
    json_decref(o);
    return stop;
}

int pc_applier_foreach_tenant_json(pc_applier *a, int (*each)(void *arg, json_t *tenant), void *arg)
{
    json_walk jw = {a, each, arg};
    pc_err err;
    int rc = pc_store_foreach_tenant(a->opt.store, tenant_status, &jw, &err);
    if (rc != PC_OK)
        pc_error("applier", "status lists only part of the tenants: %s", err.msg);
    return rc;
}

static int append_tenant(void *arg, json_t *tenant)
{
    return json_array_append(arg, tenant) == 0 ? 0 : PC_E_NOMEM;
}

json_t *pc_applier_status_json(pc_applier *a)
{
    json_t *s = pc_applier_status_header_json(a), *tenants = json_array();
    if (s != NULL && tenants != NULL)
        pc_applier_foreach_tenant_json(a, append_tenant, tenants);
    if (s != NULL && tenants != NULL && json_object_set(s, "tenants", tenants) == 0) {
        json_decref(tenants);
        return s;
    }
    json_decref(tenants);
    json_decref(s);
    return NULL;
}

json_t *pc_applier_status_header_json(pc_applier *a)
{
    json_t *nacks = json_array();
    Popcast__Nack **list = NULL;
    size_t n = 0;
    if (collect_nacks(a, &list, &n) != PC_OK)
        pc_error("applier", "status lists only part of the nacks: out of memory");
    for (size_t i = 0; i < n; i++) {
        Popcast__Nack *pn = list[i];
        if (pn->tenant != NULL && pn->reason != NULL && pn->detail != NULL)
            json_array_append_new(nacks, json_pack("{s:s,s:I,s:I,s:s,s:o,s:I}", "tenant",
                                                   pn->tenant, "version", (json_int_t)pn->version,
                                                   "seq", (json_int_t)pn->seq, "reason", pn->reason,
                                                   "detail", pc_json_text(pn->detail), "at_unix_ms",
                                                   (json_int_t)pn->at_unix_ms));
        free_nack(pn);
    }
    free(list);
    pthread_mutex_lock(&a->lock);
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
        "{s:I,s:I,s:I,s:b,s:I,s:o,s:o,s:I,s:o}", "applied_seq", (json_int_t)applied, "head_seq",
        (json_int_t)head, "lag", (json_int_t)(head > applied ? head - applied : 0), "stale",
        pc_applier_is_stale(a), "last_heartbeat_ms_ago", (json_int_t)heartbeat_age_ms(a), "nacks",
        nacks, "signing_key", signing_key, "record_failures",
        (json_int_t)atomic_load(&a->record_failures), "quarantined", quarantines_json(a));
}
