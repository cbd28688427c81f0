/* lua_engine.c - the "lua" runtime adapter: tenants, versions, isolate
 * pools and the atomic swap (see lua_engine.h). */
#include "lua_engine.h"

#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "bundle.h"
#include "log.h"
#include "lua_sandbox.h"
#include "names.h"
#include "target.h"

/* Tenant table: chains of slots in buckets, doubled whenever there are
 * more slots than buckets (a fixed 1,024 left chains of about 100 at
 * 100,000 tenants, and every lookup, from requests and from each status
 * report's walk, compared names along them). */
#define TENANT_BUCKETS_MIN 1024
/* At most one malloc_trim (it walks the heap) per this long. */
#define TRIM_INTERVAL_NS (10 * 1000000000LL)

typedef struct engine engine;

/* Per-tenant counters of every request, looked up once per version (not
 * per request). Those of rare events (a limit hit, a quarantine) are
 * looked up when they happen: each series costs about 200 bytes, and an
 * agent has tens of thousands of tenants that never hit a limit. */
typedef struct tenant_metrics {
    pc_metric *requests, *errors, *isolates;
} tenant_metrics;

/* A thread inside a version's code: a request, or a top level being run
 * for a new isolate. Lives on that thread's stack, linked into the
 * version's list (under pool_lock) for as long as it runs. */
typedef struct inflight {
    struct inflight *prev, *next;
    int64_t started_ns;
    bool top_level;
    bool caught;     /* the watchdog has acted on it */
    atomic_int stop; /* the run's abort flag (lua_sandbox.h) */
} inflight;

typedef struct lua_version {
    _Atomic long refs;
    engine *e;
    struct lua_version *prev, *next; /* the engine's list (versions_lock) */
    /* The tenant's name is its slot's (slots are never freed): with
     * 10,000 tenants every byte here is 10 kB. */
    struct tenant_slot *slot;
    uint64_t version;
    char *source; /* both in the version's own block */
    size_t source_len;
    char *chunkname;
    /* Looked up with the first request (metrics_ready, set under
     * pool_lock): a tenant that gets no traffic costs no series, and the
     * counters, which live as long as the agent, are not allocated between
     * the blocks of the isolate built at prepare (freed when it goes idle,
     * they would pin the heap pages around them). */
    tenant_metrics m;
    atomic_bool metrics_ready;
    unsigned isolates_uncounted; /* built before the lookup (pool_lock) */
    pthread_mutex_t pool_lock;   /* guards the pool, the runs and the reason below */
    /* Oldest first: the last one pushed is reused first. Room for
     * max_isolates, allocated with the first isolate to go idle. */
    pc_lua_isolate **idle;
    size_t n_idle;
    size_t n_isolates; /* idle + in use */
    inflight *runs;    /* threads inside this version's code, oldest first */
    atomic_bool quarantined;
    char *reason; /* why it is quarantined (NULL: not, or no memory to say) */
    /* Prepared deferred (pc_version_spec.deferred) and no isolate built
     * yet (pool_lock): the first build failing quarantines it. */
    bool unproven;
    /* The engine's idle list (lru_lock): versions with idle isolates,
     * most recently used first. */
    struct lua_version *lru_prev, *lru_next;
    bool in_lru;
    int64_t idle_since_ns; /* when an isolate last went idle (lru_lock) */
} lua_version;

#define QUARANTINE_REASON_MAX sizeof(((pc_lua_quarantine *)0)->reason)
#define SPLIT_KEY_MAX         79

typedef struct tenant_slot {
    char name[PC_TENANT_MAX + 1];
    pthread_mutex_t lock; /* guards active and the split: held only to swap or take a ref */
    lua_version *active;
    /* A traffic split (adapter.h activate_split): split runs
     * split_permille per mille of the requests, by split_key's value. */
    lua_version *split;
    unsigned split_permille;
    char *split_key; /* with a split only: most are never split */
    struct tenant_slot *next;
} tenant_slot;

struct engine {
    pc_adapter base; /* first: the adapter pointer is the engine pointer */
    pc_lua_limits limits;
    pc_metrics *metrics;
    pthread_rwlock_t table_lock; /* guards the buckets (slots are never freed) */
    tenant_slot **buckets;       /* n_buckets chains, a power of two */
    size_t n_buckets, n_slots;
    _Atomic long n_versions, n_isolates;
    pc_metric *g_versions, *g_isolates; /* mirror the two counts above */
    /* Idle isolates across versions, bounded by limits.max_idle_isolates.
     * Lock order: lru_lock, then a version's pool_lock. n_idle changes
     * under the version's pool_lock only. */
    pthread_mutex_t lru_lock;
    lua_version *lru_head, *lru_tail;
    _Atomic long n_idle;
    pc_metric *m_evicted, *m_expired;
    atomic_bool freed_untrimmed; /* isolates were freed since the last malloc_trim */
    int64_t last_trim_ns;        /* the watchdog's */
    /* Every version in memory, for the watchdog. Lock order: versions_lock,
     * then a version's pool_lock. */
    pthread_mutex_t versions_lock;
    lua_version *versions;
    /* the watchdog thread */
    int64_t ceiling_ns, tick_ns;
    pthread_mutex_t watchdog_lock; /* guards stopping */
    pthread_cond_t watchdog_wake;
    bool stopping;
    pthread_t watchdog;
};

/* Keeps the gauges equal to the counts: a leak of versions or isolates
 * across swaps shows up in the agent's metrics. */
static void count_versions(engine *e, long delta)
{
    long n = atomic_fetch_add(&e->n_versions, delta) + delta;
    pc_metric_set(e->g_versions, (uint64_t)(n < 0 ? 0 : n));
}

static void count_isolates(engine *e, long delta)
{
    if (delta < 0)
        atomic_store(&e->freed_untrimmed, true);
    long n = atomic_fetch_add(&e->n_isolates, delta) + delta;
    pc_metric_set(e->g_isolates, (uint64_t)(n < 0 ? 0 : n));
}

/* The idle list (lru_lock held). */
static void lru_unlink(engine *e, lua_version *v)
{
    if (!v->in_lru)
        return;
    if (v->lru_prev != NULL)
        v->lru_prev->lru_next = v->lru_next;
    else
        e->lru_head = v->lru_next;
    if (v->lru_next != NULL)
        v->lru_next->lru_prev = v->lru_prev;
    else
        e->lru_tail = v->lru_prev;
    v->lru_prev = v->lru_next = NULL;
    v->in_lru = false;
}

/* v just got an idle isolate back: it becomes the most recently used
 * (lru_lock held). */
static void lru_touch(engine *e, lua_version *v)
{
    lru_unlink(e, v);
    v->idle_since_ns = pc_lua_now_ns();
    v->lru_next = e->lru_head;
    if (e->lru_head != NULL)
        e->lru_head->lru_prev = v;
    e->lru_head = v;
    if (e->lru_tail == NULL)
        e->lru_tail = v;
    v->in_lru = true;
}

/* Frees least recently used idle isolates until at most max_idle_isolates
 * are idle. Versions whose isolates were all taken since stay listed until
 * they come up here. */
static void trim_idle(engine *e)
{
    while (atomic_load(&e->n_idle) > (long)e->limits.max_idle_isolates) {
        pc_lua_isolate *iso = NULL, **emptied = NULL;
        pthread_mutex_lock(&e->lru_lock);
        lua_version *t = e->lru_tail;
        if (t == NULL) {
            pthread_mutex_unlock(&e->lru_lock);
            return;
        }
        pthread_mutex_lock(&t->pool_lock);
        if (t->n_idle > 0) {
            iso = t->idle[0];
            memmove(&t->idle[0], &t->idle[1], (t->n_idle - 1) * sizeof(t->idle[0]));
            t->n_idle--;
            t->n_isolates--;
            atomic_fetch_sub(&e->n_idle, 1);
        }
        if (t->n_idle == 0) {
            lru_unlink(e, t);
            /* As expire_idle does: a version that gets no traffic keeps
             * no room for idle isolates (max_isolates pointers each). */
            emptied = t->idle;
            t->idle = NULL;
        }
        pthread_mutex_unlock(&t->pool_lock);
        pthread_mutex_unlock(&e->lru_lock);
        free(emptied);
        if (iso != NULL) {
            pc_lua_isolate_free(iso);
            count_isolates(e, -1);
            pc_metric_add(e->m_evicted, 1);
        }
    }
}

/* Frees the idle isolates of versions none of whose isolates went idle
 * for idle_ttl_ms (the watchdog's; the list is most recent first, so it
 * works from the tail). */
static void expire_idle(engine *e, int64_t now)
{
    if (e->limits.idle_ttl_ms == 0)
        return;
    int64_t ttl_ns = (int64_t)e->limits.idle_ttl_ms * 1000000;
    for (;;) {
        pc_lua_isolate **freed = NULL;
        size_t n_freed = 0;
        pthread_mutex_lock(&e->lru_lock);
        lua_version *t = e->lru_tail;
        if (t == NULL || now - t->idle_since_ns < ttl_ns) {
            pthread_mutex_unlock(&e->lru_lock);
            return;
        }
        pthread_mutex_lock(&t->pool_lock);
        /* The idle array moves to us whole; the version gets a new one
         * with its next idle isolate. */
        freed = t->idle;
        n_freed = t->n_idle;
        t->idle = NULL;
        t->n_isolates -= t->n_idle;
        atomic_fetch_sub(&e->n_idle, (long)t->n_idle);
        t->n_idle = 0;
        lru_unlink(e, t);
        pthread_mutex_unlock(&t->pool_lock);
        pthread_mutex_unlock(&e->lru_lock);
        for (size_t i = 0; i < n_freed; i++) {
            pc_lua_isolate_free(freed[i]);
            /* Counted before the gauge drops: whoever sees the gauge at
             * its new value sees the count too. */
            pc_metric_add(e->m_expired, 1);
            count_isolates(e, -1);
        }
        free(freed);
    }
}

/* Puts iso back into v's idle pool, then keeps the engine's bound. */
static void make_idle(lua_version *v, pc_lua_isolate *iso)
{
    engine *e = v->e;
    /* Both locks (in their order) while the isolate goes idle and the
     * version is touched: expire_idle, looking at the list's tail, must
     * never see the isolate idle under the version's old time. */
    pthread_mutex_lock(&e->lru_lock);
    pthread_mutex_lock(&v->pool_lock);
    if (v->idle == NULL && (v->idle = malloc(e->limits.max_isolates * sizeof(*v->idle))) == NULL) {
        /* No room to keep it: the next request builds another. */
        v->n_isolates--;
        pthread_mutex_unlock(&v->pool_lock);
        pthread_mutex_unlock(&e->lru_lock);
        pc_lua_isolate_free(iso);
        count_isolates(e, -1);
        return;
    }
    v->idle[v->n_idle++] = iso;
    atomic_fetch_add(&e->n_idle, 1);
    pthread_mutex_unlock(&v->pool_lock);
    lru_touch(e, v);
    pthread_mutex_unlock(&e->lru_lock);
    trim_idle(e);
}

void pc_lua_limits_default(pc_lua_limits *l)
{
    l->memory_bytes = 32u << 20;
    l->instructions = 50000000;
    l->wall_ms = 1000;
    l->response_bytes = 8u << 20;
    l->max_isolates = 64;
    l->max_idle_isolates = 1024;
    l->watchdog_ms = 0; /* 4 x wall_ms */
    l->idle_ttl_ms = 60000;
}

static unsigned hash_of(const char *name)
{
    unsigned h = 2166136261u;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 16777619u;
    return h;
}

/* Doubles the buckets and moves every slot (table_lock held exclusive).
 * Out of memory: the chains just stay longer. */
static void grow_table(engine *e)
{
    size_t n = e->n_buckets * 2;
    tenant_slot **grown = calloc(n, sizeof(*grown));
    if (grown == NULL)
        return;
    for (size_t b = 0; b < e->n_buckets; b++) {
        tenant_slot *s = e->buckets[b];
        while (s != NULL) {
            tenant_slot *next = s->next;
            size_t to = hash_of(s->name) & (n - 1);
            s->next = grown[to];
            grown[to] = s;
            s = next;
        }
    }
    free(e->buckets);
    e->buckets = grown;
    e->n_buckets = n;
}

static tenant_slot *find_slot(engine *e, const char *tenant, int create)
{
    unsigned h = hash_of(tenant);
    pthread_rwlock_rdlock(&e->table_lock);
    tenant_slot *s = e->buckets[h & (e->n_buckets - 1)];
    while (s != NULL && strcmp(s->name, tenant) != 0)
        s = s->next;
    pthread_rwlock_unlock(&e->table_lock);
    if (s != NULL || !create)
        return s;
    pthread_rwlock_wrlock(&e->table_lock);
    size_t b = h & (e->n_buckets - 1);
    for (s = e->buckets[b]; s != NULL && strcmp(s->name, tenant) != 0;)
        s = s->next;
    if (s == NULL && (s = calloc(1, sizeof(*s))) != NULL) {
        snprintf(s->name, sizeof(s->name), "%s", tenant);
        pthread_mutex_init(&s->lock, NULL);
        s->next = e->buckets[b];
        e->buckets[b] = s;
        if (++e->n_slots > e->n_buckets)
            grow_table(e);
    }
    pthread_rwlock_unlock(&e->table_lock);
    return s;
}

/* v's quarantine reason (pool_lock held). */
static const char *reason_of(const lua_version *v)
{
    return v->reason != NULL ? v->reason : "quarantined (no memory to record why)";
}

static void version_unref(lua_version *v)
{
    if (v == NULL || atomic_fetch_sub(&v->refs, 1) != 1)
        return;
    /* Last reference: no request is inside any of its isolates. */
    engine *e = v->e;
    pthread_mutex_lock(&e->versions_lock);
    if (v->prev != NULL)
        v->prev->next = v->next;
    else
        e->versions = v->next;
    if (v->next != NULL)
        v->next->prev = v->prev;
    pthread_mutex_unlock(&e->versions_lock);
    /* Off the idle list first: trim_idle may be about to take from it. */
    pthread_mutex_lock(&e->lru_lock);
    lru_unlink(e, v);
    pthread_mutex_unlock(&e->lru_lock);
    atomic_fetch_sub(&e->n_idle, (long)v->n_idle);
    for (size_t i = 0; i < v->n_idle; i++) {
        pc_lua_isolate_free(v->idle[i]);
        count_isolates(e, -1);
    }
    free(v->idle);
    free(v->reason);
    pthread_mutex_destroy(&v->pool_lock);
    count_versions(e, -1);
    free(v);
}

/* Runs: entering and leaving a version's code (pool_lock held). */
static void run_enter(lua_version *v, inflight *r, bool top_level)
{
    r->started_ns = pc_lua_now_ns();
    r->top_level = top_level;
    r->caught = false;
    atomic_init(&r->stop, 0);
    r->prev = NULL;
    r->next = v->runs;
    if (v->runs != NULL)
        v->runs->prev = r;
    v->runs = r;
}

static void run_leave(lua_version *v, inflight *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        v->runs = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
}

static void count_limit(lua_version *v, pc_lua_limit hit)
{
    if (hit == PC_LUA_LIMIT_NONE)
        return;
    char labels[128];
    snprintf(labels, sizeof(labels), "tenant=\"%s\",limit=\"%s\"", v->slot->name,
             pc_lua_limit_name(hit));
    pc_metric_add(pc_metrics_counter(v->e->metrics, "popcast_lua_limit_exceeded_total", labels,
                                     "runs stopped by a sandbox limit"),
                  1);
}

static void load_metrics(engine *e, lua_version *v)
{
    if (atomic_load(&v->metrics_ready))
        return;
    pthread_mutex_lock(&v->pool_lock);
    if (atomic_load(&v->metrics_ready)) {
        pthread_mutex_unlock(&v->pool_lock);
        return;
    }
    char labels[128];
    snprintf(labels, sizeof(labels), "tenant=\"%s\"", v->slot->name);
    v->m.requests = pc_metrics_counter(e->metrics, "popcast_lua_requests_total", labels,
                                       "requests run by a tenant's Lua handler");
    v->m.errors = pc_metrics_counter(e->metrics, "popcast_lua_errors_total", labels,
                                     "requests whose handler failed or hit a limit");
    v->m.isolates = pc_metrics_counter(e->metrics, "popcast_lua_isolates_created_total", labels,
                                       "Lua isolates created");
    pc_metric_add(v->m.isolates, v->isolates_uncounted);
    v->isolates_uncounted = 0;
    atomic_store(&v->metrics_ready, true);
    pthread_mutex_unlock(&v->pool_lock);
}

static int new_isolate(lua_version *v, pc_lua_isolate **out, pc_err *err)
{
    pc_lua_limit hit = PC_LUA_LIMIT_NONE;
    inflight run;
    pthread_mutex_lock(&v->pool_lock);
    run_enter(v, &run, true);
    pthread_mutex_unlock(&v->pool_lock);
    int rc = pc_lua_isolate_new(v->source, v->source_len, v->chunkname, &v->e->limits, &run.stop,
                                out, &hit, err);
    pthread_mutex_lock(&v->pool_lock);
    run_leave(v, &run);
    pthread_mutex_unlock(&v->pool_lock);
    count_limit(v, hit);
    if (rc == PC_OK) {
        pthread_mutex_lock(&v->pool_lock);
        if (atomic_load(&v->metrics_ready))
            pc_metric_add(v->m.isolates, 1);
        else
            v->isolates_uncounted++;
        pthread_mutex_unlock(&v->pool_lock);
        count_isolates(v->e, 1);
    }
    return rc;
}

/* Adapter operations. */

static int lua_check(pc_adapter *a, const pc_version_spec *spec, pc_err *err)
{
    engine *e = (engine *)a;
    pc_bundle *b = NULL;
    int rc = pc_bundle_open(spec->bundle, spec->bundle_len, &b, err);
    if (rc != PC_OK)
        return rc;
    const uint8_t *src = NULL;
    size_t len = 0;
    const char *entry = spec->entrypoint ? spec->entrypoint : pc_bundle_entrypoint(b);
    if (pc_bundle_file(b, entry, &src, &len) != PC_OK)
        rc = pc_err_set(err, PC_E_RUNTIME, "entrypoint %s not found in the bundle", entry);
    else
        rc = pc_lua_check_syntax((const char *)src, len, entry, &e->limits, err);
    pc_bundle_free(b);
    return rc;
}

static int lua_prepare(pc_adapter *a, const pc_version_spec *spec, pc_prepared **out, pc_err *err)
{
    engine *e = (engine *)a;
    *out = NULL;
    if (!pc_tenant_name_valid(spec->tenant))
        return pc_err_set(err, PC_E_INVALID, "invalid tenant name");
    pc_bundle *b = NULL;
    int rc = pc_bundle_open(spec->bundle, spec->bundle_len, &b, err);
    if (rc != PC_OK)
        return rc;
    const uint8_t *src = NULL;
    size_t len = 0;
    if (pc_bundle_file(b, spec->entrypoint, &src, &len) != PC_OK) {
        rc = pc_err_set(err, PC_E_RUNTIME, "entrypoint %s not found in the bundle",
                        spec->entrypoint);
        pc_bundle_free(b);
        return rc;
    }
    tenant_slot *slot = find_slot(e, spec->tenant, 1);
    /* One block with its source and chunk name: what a version keeps for
     * as long as it is live is one object in the heap, not three. */
    size_t name_len = strlen(spec->entrypoint) + 2;
    lua_version *v = slot != NULL ? calloc(1, sizeof(*v) + len + 1 + name_len) : NULL;
    if (v == NULL) {
        pc_bundle_free(b);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    v->source = (char *)(v + 1);
    v->chunkname = v->source + len + 1;
    memcpy(v->source, src, len);
    v->source[len] = '\0';
    v->source_len = len;
    pc_bundle_free(b);
    atomic_store(&v->refs, 1);
    v->e = e;
    v->version = spec->version;
    v->slot = slot;
    pthread_mutex_init(&v->pool_lock, NULL);
    atomic_init(&v->quarantined, false);
    atomic_init(&v->metrics_ready, false);
    count_versions(e, 1);
    pthread_mutex_lock(&e->versions_lock);
    v->next = e->versions;
    if (e->versions != NULL)
        e->versions->prev = v;
    e->versions = v;
    pthread_mutex_unlock(&e->versions_lock);
    /* "@name" makes Lua's error messages read "main.lua:3: ..." */
    snprintf(v->chunkname, name_len, "@%s", spec->entrypoint);
    if (spec->deferred) {
        v->unproven = true;
        *out = (pc_prepared *)v;
        return PC_OK;
    }
    /* The first isolate, built now, is what makes activation warm. */
    pc_lua_isolate *iso = NULL;
    if ((rc = new_isolate(v, &iso, err)) != PC_OK) {
        version_unref(v);
        return rc;
    }
    v->n_isolates = 1;
    make_idle(v, iso);
    *out = (pc_prepared *)v;
    return PC_OK;
}

static int lua_activate(pc_adapter *a, pc_prepared *p, pc_err *err)
{
    (void)a;
    (void)err; /* the slot exists since prepare: nothing can fail here */
    lua_version *v = (lua_version *)p;
    tenant_slot *s = v->slot;
    pthread_mutex_lock(&s->lock);
    lua_version *old = s->active, *split = s->split;
    char *split_key = s->split_key;
    s->active = v;
    s->split = NULL; /* a whole swap ends a split */
    s->split_key = NULL;
    pthread_mutex_unlock(&s->lock);
    free(split_key);
    /* Requests still in old hold their own references. */
    version_unref(old);
    version_unref(split);
    return PC_OK;
}

static int lua_activate_split(pc_adapter *a, pc_prepared *p, unsigned permille, const char *key,
                              pc_err *err)
{
    (void)a;
    lua_version *v = (lua_version *)p;
    tenant_slot *s = v->slot;
    char *new_key = key != NULL && strlen(key) <= SPLIT_KEY_MAX ? strdup(key) : NULL;
    if (new_key == NULL) {
        version_unref(v);
        return pc_err_set(err,
                          key == NULL || strlen(key) > SPLIT_KEY_MAX ? PC_E_INVALID : PC_E_NOMEM,
                          "cannot split %s", s->name);
    }
    pthread_mutex_lock(&s->lock);
    lua_version *old = s->split;
    char *old_key = s->split_key;
    s->split = v;
    s->split_permille = permille;
    s->split_key = new_key;
    pthread_mutex_unlock(&s->lock);
    free(old_key);
    version_unref(old);
    return PC_OK;
}

static uint64_t lua_split_version(pc_adapter *a, const char *tenant)
{
    tenant_slot *s = find_slot((engine *)a, tenant, 0);
    if (s == NULL)
        return 0;
    pthread_mutex_lock(&s->lock);
    uint64_t v = s->split != NULL ? s->split->version : 0;
    pthread_mutex_unlock(&s->lock);
    return v;
}

/* The value of a split key in req: a header's, or a cookie's from the
 * Cookie header ("a=1; b=2"). NULL when the request has none. */
static const char *split_value(const pc_request *req, const char *key, size_t *len)
{
    bool cookie = strncmp(key, "cookie:", 7) == 0;
    const char *want = cookie ? "cookie" : key;
    for (size_t i = 0; req != NULL && i < req->n_headers; i++) {
        if (strcmp(req->headers[i].name, want) != 0)
            continue;
        const char *v = req->headers[i].value;
        if (!cookie) {
            *len = strlen(v);
            return v;
        }
        size_t nlen = strlen(key + 7);
        for (const char *p = v; *p != '\0';) {
            while (*p == ' ' || *p == ';')
                p++;
            const char *end = strchr(p, ';');
            size_t plen = end ? (size_t)(end - p) : strlen(p);
            if (plen > nlen && strncmp(p, key + 7, nlen) == 0 && p[nlen] == '=') {
                *len = plen - nlen - 1;
                return p + nlen + 1;
            }
            p += plen;
        }
    }
    return NULL;
}

static void lua_discard(pc_adapter *a, pc_prepared *p)
{
    version_unref((lua_version *)p);
}

static int lua_deactivate(pc_adapter *a, const char *tenant, pc_err *err)
{
    tenant_slot *s = find_slot((engine *)a, tenant, 0);
    if (s == NULL)
        return PC_OK;
    pthread_mutex_lock(&s->lock);
    lua_version *old = s->active, *split = s->split;
    s->active = NULL;
    s->split = NULL;
    pthread_mutex_unlock(&s->lock);
    version_unref(old);
    version_unref(split);
    return PC_OK;
}

/* The version req runs: the split's for its share of the requests (by
 * its key's value, sticky; at random without one), else (and for no req)
 * the live one. */
static lua_version *acquire(engine *e, const char *tenant, const pc_request *req)
{
    tenant_slot *s = find_slot(e, tenant, 0);
    if (s == NULL)
        return NULL;
    pthread_mutex_lock(&s->lock);
    lua_version *v = s->active;
    if (s->split != NULL && req != NULL) {
        size_t len = 0;
        const char *value = split_value(req, s->split_key, &len);
        unsigned place = value != NULL ? pc_target_split_rank(tenant, s->split->version, value, len)
                                       : randombytes_uniform(1000);
        if (place < s->split_permille)
            v = s->split;
    }
    if (v != NULL)
        atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&s->lock);
    return v;
}

static void quarantine(lua_version *v, const char *reason);

static int lua_serve(pc_adapter *a, const char *tenant, const pc_request *req, pc_response *res,
                     pc_err *err)
{
    engine *e = (engine *)a;
    memset(res, 0, sizeof(*res));
    lua_version *v = acquire(e, tenant, req);
    if (v == NULL)
        return pc_err_set(err, PC_E_NOTFOUND, "tenant %s has no live version", tenant);
    res->version = v->version;
    load_metrics(e, v);
    pc_metric_add(v->m.requests, 1);
    if (atomic_load(&v->quarantined)) {
        pthread_mutex_lock(&v->pool_lock);
        int rc = pc_err_set(err, PC_E_QUARANTINED, "tenant %s version %llu is quarantined: %s",
                            tenant, (unsigned long long)v->version, reason_of(v));
        pthread_mutex_unlock(&v->pool_lock);
        pc_metric_add(v->m.errors, 1);
        version_unref(v);
        return rc;
    }
    pc_lua_isolate *iso = NULL;
    int build = 0;
    pthread_mutex_lock(&v->pool_lock);
    if (v->n_idle > 0) {
        iso = v->idle[--v->n_idle];
        atomic_fetch_sub(&e->n_idle, 1);
    } else if (v->n_isolates < e->limits.max_isolates) {
        v->n_isolates++;
        build = 1;
    }
    pthread_mutex_unlock(&v->pool_lock);
    int rc = PC_OK;
    if (iso == NULL && !build) {
        rc = pc_err_set(err, PC_E_UNAVAILABLE, "all %zu isolates of %s are busy",
                        e->limits.max_isolates, tenant);
    } else if (build && (rc = new_isolate(v, &iso, err)) != PC_OK) {
        pthread_mutex_lock(&v->pool_lock);
        v->n_isolates--;
        /* A version made live again at start that no longer loads (the
         * limits changed, say) must not be shown serving: it is
         * quarantined, as one that misbehaved. */
        if (v->unproven) {
            char reason[QUARANTINE_REASON_MAX];
            snprintf(reason, sizeof(reason), "does not load: %.140s", err->msg);
            quarantine(v, reason);
        }
        pthread_mutex_unlock(&v->pool_lock);
    } else if (build) {
        pthread_mutex_lock(&v->pool_lock);
        v->unproven = false;
        pthread_mutex_unlock(&v->pool_lock);
    }
    if (rc == PC_OK) {
        pc_lua_limit hit = PC_LUA_LIMIT_NONE;
        inflight run;
        pthread_mutex_lock(&v->pool_lock);
        run_enter(v, &run, false);
        pthread_mutex_unlock(&v->pool_lock);
        rc = pc_lua_isolate_call(iso, req, res, &run.stop, &hit, err);
        res->version = v->version;
        count_limit(v, hit);
        pthread_mutex_lock(&v->pool_lock);
        run_leave(v, &run);
        if (hit == PC_LUA_LIMIT_WATCHDOG)
            rc = pc_err_set(err, PC_E_LIMIT,
                            "stopped by the watchdog: tenant %s version %llu is quarantined: %s",
                            tenant, (unsigned long long)v->version, reason_of(v));
        /* Whatever state a limit interrupted, it is not reused. */
        if (hit != PC_LUA_LIMIT_NONE)
            v->n_isolates--;
        pthread_mutex_unlock(&v->pool_lock);
        if (hit != PC_LUA_LIMIT_NONE) {
            pc_lua_isolate_free(iso);
            count_isolates(e, -1);
        } else {
            make_idle(v, iso);
        }
    }
    if (rc != PC_OK)
        pc_metric_add(v->m.errors, 1);
    version_unref(v);
    return rc;
}

static uint64_t lua_live_version(pc_adapter *a, const char *tenant)
{
    lua_version *v = acquire((engine *)a, tenant, NULL); /* the live one, not a split's */
    uint64_t version = v ? v->version : 0;
    version_unref(v);
    return version;
}

static void lua_destroy(pc_adapter *a)
{
    engine *e = (engine *)a;
    pthread_mutex_lock(&e->watchdog_lock);
    e->stopping = true;
    pthread_cond_signal(&e->watchdog_wake);
    pthread_mutex_unlock(&e->watchdog_lock);
    pthread_join(e->watchdog, NULL);
    for (size_t b = 0; b < e->n_buckets; b++) {
        tenant_slot *s = e->buckets[b];
        while (s != NULL) {
            tenant_slot *next = s->next;
            version_unref(s->active);
            version_unref(s->split);
            free(s->split_key);
            pthread_mutex_destroy(&s->lock);
            free(s);
            s = next;
        }
    }
    free(e->buckets);
    pthread_rwlock_destroy(&e->table_lock);
    pthread_mutex_destroy(&e->versions_lock);
    pthread_mutex_destroy(&e->lru_lock);
    pthread_mutex_destroy(&e->watchdog_lock);
    pthread_cond_destroy(&e->watchdog_wake);
    free(e);
}

/* The watchdog. */

/* Quarantines v (pool_lock held); counted once per version. */
static void quarantine(lua_version *v, const char *reason)
{
    if (atomic_load(&v->quarantined))
        return;
    v->reason = strdup(reason);
    atomic_store(&v->quarantined, true);
    char labels[128];
    snprintf(labels, sizeof(labels), "tenant=\"%s\"", v->slot->name);
    pc_metric_add(pc_metrics_counter(v->e->metrics, "popcast_lua_quarantined_total", labels,
                                     "versions quarantined by the watchdog (a run past the hard "
                                     "ceiling)"),
                  1);
    pc_warn("lua", "tenant %s version %llu quarantined: %s", v->slot->name,
            (unsigned long long)v->version, reason);
}

static void watchdog_pass(engine *e)
{
    int64_t now = pc_lua_now_ns();
    pthread_mutex_lock(&e->versions_lock);
    for (lua_version *v = e->versions; v != NULL; v = v->next) {
        pthread_mutex_lock(&v->pool_lock);
        for (inflight *r = v->runs; r != NULL; r = r->next) {
            if (r->caught || now - r->started_ns <= e->ceiling_ns)
                continue;
            r->caught = true;
            atomic_store(&r->stop, 1);
            char reason[QUARANTINE_REASON_MAX];
            snprintf(reason, sizeof(reason), "%s ran past the %lld ms ceiling (wall limit %llu ms)",
                     r->top_level ? "the top level" : "a request",
                     (long long)(e->ceiling_ns / 1000000), (unsigned long long)e->limits.wall_ms);
            quarantine(v, reason);
        }
        pthread_mutex_unlock(&v->pool_lock);
    }
    pthread_mutex_unlock(&e->versions_lock);
}

static void *watchdog_main(void *arg)
{
    engine *e = arg;
    pthread_mutex_lock(&e->watchdog_lock);
    while (!e->stopping) {
        int64_t wake = pc_lua_now_ns() + e->tick_ns;
        struct timespec ts = {(time_t)(wake / 1000000000), (long)(wake % 1000000000)};
        pthread_cond_timedwait(&e->watchdog_wake, &e->watchdog_lock, &ts);
        if (e->stopping)
            break;
        pthread_mutex_unlock(&e->watchdog_lock);
        watchdog_pass(e);
        expire_idle(e, pc_lua_now_ns());
        /* Freed isolates leave free pages inside glibc's arenas (one per
         * thread that allocated), which it does not give back by itself:
         * an agent that made 5,000 tenants live and evicted most of their
         * isolates held 26 MB more without this. */
        int64_t now = pc_lua_now_ns();
        if (now - e->last_trim_ns >= TRIM_INTERVAL_NS &&
            atomic_exchange(&e->freed_untrimmed, false)) {
            e->last_trim_ns = now;
            malloc_trim(0);
        }
        pthread_mutex_lock(&e->watchdog_lock);
    }
    pthread_mutex_unlock(&e->watchdog_lock);
    return NULL;
}

/* Quarantine queries: the tenants' live versions. */
static bool live_quarantine(tenant_slot *s, pc_lua_quarantine *q)
{
    bool found = false;
    pthread_mutex_lock(&s->lock);
    lua_version *v = s->active;
    if (v != NULL && atomic_load(&v->quarantined)) {
        found = true;
        if (q != NULL) {
            snprintf(q->tenant, sizeof(q->tenant), "%s", v->slot->name);
            q->version = v->version;
            pthread_mutex_lock(&v->pool_lock);
            snprintf(q->reason, sizeof(q->reason), "%s", reason_of(v));
            pthread_mutex_unlock(&v->pool_lock);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

size_t pc_lua_adapter_quarantined(pc_adapter *a, pc_lua_quarantine *out, size_t max)
{
    engine *e = (engine *)a;
    size_t n = 0;
    pthread_rwlock_rdlock(&e->table_lock);
    for (size_t b = 0; b < e->n_buckets; b++) {
        for (tenant_slot *s = e->buckets[b]; s != NULL; s = s->next) {
            if (live_quarantine(s, n < max ? &out[n] : NULL))
                n++;
        }
    }
    pthread_rwlock_unlock(&e->table_lock);
    return n;
}

bool pc_lua_adapter_is_quarantined(pc_adapter *a, const char *tenant, pc_lua_quarantine *q)
{
    tenant_slot *s = find_slot((engine *)a, tenant, 0);
    return s != NULL && live_quarantine(s, q);
}

pc_adapter *pc_lua_adapter_new(const pc_lua_limits *limits, pc_metrics *metrics, pc_err *err)
{
    engine *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        pc_err_set(err, PC_E_NOMEM, "out of memory");
        return NULL;
    }
    e->limits = *limits;
    if (e->limits.max_isolates == 0)
        e->limits.max_isolates = 1;
    if (e->limits.max_idle_isolates == 0)
        e->limits.max_idle_isolates = 1;
    e->metrics = metrics;
    if (metrics != NULL) {
        e->g_versions = pc_metrics_gauge(metrics, "popcast_lua_versions", NULL,
                                         "Lua tenant versions in memory (live or finishing)");
        e->g_isolates = pc_metrics_gauge(metrics, "popcast_lua_isolates", NULL,
                                         "Lua isolates (lua_State) in memory");
        e->m_evicted = pc_metrics_counter(
            metrics, "popcast_lua_isolates_evicted_total", NULL,
            "idle isolates freed to keep lua_max_idle_isolates (the next request builds one)");
        e->m_expired = pc_metrics_counter(
            metrics, "popcast_lua_isolates_expired_total", NULL,
            "idle isolates freed after lua_idle_ttl_ms unused (the next request builds one)");
    }
    e->n_buckets = TENANT_BUCKETS_MIN;
    if ((e->buckets = calloc(e->n_buckets, sizeof(*e->buckets))) == NULL) {
        free(e);
        pc_err_set(err, PC_E_NOMEM, "out of memory");
        return NULL;
    }
    pthread_rwlock_init(&e->table_lock, NULL);
    pthread_mutex_init(&e->versions_lock, NULL);
    pthread_mutex_init(&e->lru_lock, NULL);
    uint64_t ceiling_ms = e->limits.watchdog_ms ? e->limits.watchdog_ms : 4 * e->limits.wall_ms;
    e->ceiling_ns = (int64_t)ceiling_ms * 1000000;
    e->tick_ns = e->ceiling_ns / 4;
    if (e->tick_ns < 10 * 1000000LL)
        e->tick_ns = 10 * 1000000LL;
    if (e->tick_ns > 1000 * 1000000LL)
        e->tick_ns = 1000 * 1000000LL;
    pthread_mutex_init(&e->watchdog_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* the clock of pc_lua_now_ns */
    pthread_cond_init(&e->watchdog_wake, &attr);
    pthread_condattr_destroy(&attr);
    if (pthread_create(&e->watchdog, NULL, watchdog_main, e) != 0) {
        pthread_cond_destroy(&e->watchdog_wake);
        pthread_mutex_destroy(&e->watchdog_lock);
        pthread_mutex_destroy(&e->versions_lock);
        pthread_rwlock_destroy(&e->table_lock);
        free(e->buckets);
        free(e);
        pc_err_set(err, PC_E_NOMEM, "cannot start the Lua watchdog thread");
        return NULL;
    }
    e->base.name = "lua";
    e->base.check = lua_check;
    e->base.prepare = lua_prepare;
    e->base.activate = lua_activate;
    e->base.discard = lua_discard;
    e->base.deactivate = lua_deactivate;
    e->base.serve = lua_serve;
    e->base.live_version = lua_live_version;
    e->base.activate_split = lua_activate_split;
    e->base.split_version = lua_split_version;
    e->base.quarantined = pc_lua_adapter_quarantined;
    e->base.destroy = lua_destroy;
    return &e->base;
}

void pc_lua_adapter_counts(pc_adapter *a, long *versions, long *isolates)
{
    engine *e = (engine *)a;
    *versions = atomic_load(&e->n_versions);
    *isolates = atomic_load(&e->n_isolates);
}
