/* lua_engine.c - the "lua" runtime adapter: tenants, versions, isolate
 * pools and the atomic swap (see lua_engine.h). */
#include "lua_engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bundle.h"
#include "log.h"
#include "lua_sandbox.h"
#include "names.h"

#define TENANT_BUCKETS 1024

typedef struct engine engine;

/* Per-tenant counters, looked up once per version (not per request). */
typedef struct tenant_metrics {
    pc_metric *requests, *errors, *isolates;
    pc_metric *limit[PC_LUA_LIMIT_RESPONSE + 1];
} tenant_metrics;

typedef struct lua_version {
    _Atomic long refs;
    engine *e;
    char tenant[PC_TENANT_MAX + 1];
    uint64_t version;
    char *source;
    size_t source_len;
    char chunkname[PC_TENANT_MAX + PC_PATH_MAX + 32];
    tenant_metrics m;
    pthread_mutex_t pool_lock; /* guards the pool below */
    pc_lua_isolate **idle;
    size_t n_idle;
    size_t n_isolates; /* idle + in use */
} lua_version;

typedef struct tenant_slot {
    char name[PC_TENANT_MAX + 1];
    pthread_mutex_t lock; /* guards active: held only to swap or take a ref */
    lua_version *active;
    struct tenant_slot *next;
} tenant_slot;

struct engine {
    pc_adapter base; /* first: the adapter pointer is the engine pointer */
    pc_lua_limits limits;
    pc_metrics *metrics;
    pthread_rwlock_t table_lock; /* guards the bucket chains (slots are never freed) */
    tenant_slot *buckets[TENANT_BUCKETS];
    _Atomic long n_versions, n_isolates;
    pc_metric *g_versions, *g_isolates; /* mirror the two counts above */
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
    long n = atomic_fetch_add(&e->n_isolates, delta) + delta;
    pc_metric_set(e->g_isolates, (uint64_t)(n < 0 ? 0 : n));
}

void pc_lua_limits_default(pc_lua_limits *l)
{
    l->memory_bytes = 32u << 20;
    l->instructions = 50000000;
    l->wall_ms = 1000;
    l->response_bytes = 8u << 20;
    l->max_isolates = 64;
}

static unsigned bucket_of(const char *name)
{
    unsigned h = 2166136261u;
    for (; *name; name++)
        h = (h ^ (unsigned char)*name) * 16777619u;
    return h % TENANT_BUCKETS;
}

static tenant_slot *find_slot(engine *e, const char *tenant, int create)
{
    unsigned b = bucket_of(tenant);
    pthread_rwlock_rdlock(&e->table_lock);
    tenant_slot *s = e->buckets[b];
    while (s != NULL && strcmp(s->name, tenant) != 0)
        s = s->next;
    pthread_rwlock_unlock(&e->table_lock);
    if (s != NULL || !create)
        return s;
    pthread_rwlock_wrlock(&e->table_lock);
    for (s = e->buckets[b]; s != NULL && strcmp(s->name, tenant) != 0;)
        s = s->next;
    if (s == NULL && (s = calloc(1, sizeof(*s))) != NULL) {
        snprintf(s->name, sizeof(s->name), "%s", tenant);
        pthread_mutex_init(&s->lock, NULL);
        s->next = e->buckets[b];
        e->buckets[b] = s;
    }
    pthread_rwlock_unlock(&e->table_lock);
    return s;
}

static void version_unref(lua_version *v)
{
    if (v == NULL || atomic_fetch_sub(&v->refs, 1) != 1)
        return;
    /* Last reference: no request is inside any of its isolates. */
    engine *e = v->e;
    for (size_t i = 0; i < v->n_idle; i++) {
        pc_lua_isolate_free(v->idle[i]);
        count_isolates(e, -1);
    }
    free(v->idle);
    free(v->source);
    pthread_mutex_destroy(&v->pool_lock);
    count_versions(e, -1);
    free(v);
}

static void count_limit(lua_version *v, pc_lua_limit hit)
{
    if (hit != PC_LUA_LIMIT_NONE)
        pc_metric_add(v->m.limit[hit], 1);
}

static void load_metrics(engine *e, lua_version *v)
{
    char labels[128];
    snprintf(labels, sizeof(labels), "tenant=\"%s\"", v->tenant);
    v->m.requests = pc_metrics_counter(e->metrics, "popcast_lua_requests_total", labels,
                                       "requests run by a tenant's Lua handler");
    v->m.errors = pc_metrics_counter(e->metrics, "popcast_lua_errors_total", labels,
                                     "requests whose handler failed or hit a limit");
    v->m.isolates = pc_metrics_counter(e->metrics, "popcast_lua_isolates_created_total", labels,
                                       "Lua isolates created");
    for (int l = PC_LUA_LIMIT_CPU; l <= PC_LUA_LIMIT_RESPONSE; l++) {
        snprintf(labels, sizeof(labels), "tenant=\"%s\",limit=\"%s\"", v->tenant,
                 pc_lua_limit_name((pc_lua_limit)l));
        v->m.limit[l] = pc_metrics_counter(e->metrics, "popcast_lua_limit_exceeded_total", labels,
                                           "runs stopped by a sandbox limit");
    }
}

static int new_isolate(lua_version *v, pc_lua_isolate **out, pc_err *err)
{
    pc_lua_limit hit = PC_LUA_LIMIT_NONE;
    int rc =
        pc_lua_isolate_new(v->source, v->source_len, v->chunkname, &v->e->limits, out, &hit, err);
    count_limit(v, hit);
    if (rc == PC_OK) {
        pc_metric_add(v->m.isolates, 1);
        count_isolates(v->e, 1);
    }
    return rc;
}

/* Adapter operations. */

static int lua_check(pc_adapter *a, const pc_version_spec *spec, pc_err *err)
{
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
        rc = pc_lua_check_syntax((const char *)src, len, entry, err);
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
    lua_version *v = calloc(1, sizeof(*v));
    if (v == NULL || (v->source = malloc(len + 1)) == NULL) {
        free(v);
        pc_bundle_free(b);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    memcpy(v->source, src, len);
    v->source[len] = '\0';
    v->source_len = len;
    pc_bundle_free(b);
    atomic_store(&v->refs, 1);
    v->e = e;
    v->version = spec->version;
    snprintf(v->tenant, sizeof(v->tenant), "%s", spec->tenant);
    /* "@name" makes Lua's error messages read "main.lua:3: ..." */
    snprintf(v->chunkname, sizeof(v->chunkname), "@%s", spec->entrypoint);
    pthread_mutex_init(&v->pool_lock, NULL);
    count_versions(e, 1);
    load_metrics(e, v);
    /* The first isolate, built now, is what makes activation warm. */
    pc_lua_isolate *iso = NULL;
    if ((rc = new_isolate(v, &iso, err)) != PC_OK ||
        (v->idle = malloc(e->limits.max_isolates * sizeof(*v->idle))) == NULL) {
        if (rc == PC_OK) {
            pc_lua_isolate_free(iso);
            count_isolates(e, -1);
            rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        }
        version_unref(v);
        return rc;
    }
    v->idle[v->n_idle++] = iso;
    v->n_isolates = 1;
    *out = (pc_prepared *)v;
    return PC_OK;
}

static int lua_activate(pc_adapter *a, pc_prepared *p, pc_err *err)
{
    engine *e = (engine *)a;
    lua_version *v = (lua_version *)p;
    tenant_slot *s = find_slot(e, v->tenant, 1);
    if (s == NULL) {
        version_unref(v);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    pthread_mutex_lock(&s->lock);
    lua_version *old = s->active;
    s->active = v;
    pthread_mutex_unlock(&s->lock);
    /* Requests still in old hold their own references. */
    version_unref(old);
    return PC_OK;
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
    lua_version *old = s->active;
    s->active = NULL;
    pthread_mutex_unlock(&s->lock);
    version_unref(old);
    return PC_OK;
}

static lua_version *acquire(engine *e, const char *tenant)
{
    tenant_slot *s = find_slot(e, tenant, 0);
    if (s == NULL)
        return NULL;
    pthread_mutex_lock(&s->lock);
    lua_version *v = s->active;
    if (v != NULL)
        atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&s->lock);
    return v;
}

static int lua_serve(pc_adapter *a, const char *tenant, const pc_request *req, pc_response *res,
                     pc_err *err)
{
    engine *e = (engine *)a;
    memset(res, 0, sizeof(*res));
    lua_version *v = acquire(e, tenant);
    if (v == NULL)
        return pc_err_set(err, PC_E_NOTFOUND, "tenant %s has no live version", tenant);
    res->version = v->version;
    pc_metric_add(v->m.requests, 1);
    pc_lua_isolate *iso = NULL;
    int build = 0;
    pthread_mutex_lock(&v->pool_lock);
    if (v->n_idle > 0) {
        iso = v->idle[--v->n_idle];
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
        pthread_mutex_unlock(&v->pool_lock);
    }
    if (rc == PC_OK) {
        pc_lua_limit hit = PC_LUA_LIMIT_NONE;
        rc = pc_lua_isolate_call(iso, req, res, &hit, err);
        res->version = v->version;
        count_limit(v, hit);
        pthread_mutex_lock(&v->pool_lock);
        if (hit != PC_LUA_LIMIT_NONE) {
            /* Whatever state the limit interrupted, it is not reused. */
            v->n_isolates--;
        } else {
            v->idle[v->n_idle++] = iso;
            iso = NULL;
        }
        pthread_mutex_unlock(&v->pool_lock);
        if (iso != NULL) {
            pc_lua_isolate_free(iso);
            count_isolates(e, -1);
        }
    }
    if (rc != PC_OK)
        pc_metric_add(v->m.errors, 1);
    version_unref(v);
    return rc;
}

static uint64_t lua_live_version(pc_adapter *a, const char *tenant)
{
    lua_version *v = acquire((engine *)a, tenant);
    uint64_t version = v ? v->version : 0;
    version_unref(v);
    return version;
}

static void lua_destroy(pc_adapter *a)
{
    engine *e = (engine *)a;
    for (int b = 0; b < TENANT_BUCKETS; b++) {
        tenant_slot *s = e->buckets[b];
        while (s != NULL) {
            tenant_slot *next = s->next;
            version_unref(s->active);
            pthread_mutex_destroy(&s->lock);
            free(s);
            s = next;
        }
    }
    pthread_rwlock_destroy(&e->table_lock);
    free(e);
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
    e->metrics = metrics;
    if (metrics != NULL) {
        e->g_versions = pc_metrics_gauge(metrics, "popcast_lua_versions", NULL,
                                         "Lua tenant versions in memory (live or finishing)");
        e->g_isolates = pc_metrics_gauge(metrics, "popcast_lua_isolates", NULL,
                                         "Lua isolates (lua_State) in memory");
    }
    pthread_rwlock_init(&e->table_lock, NULL);
    e->base.name = "lua";
    e->base.check = lua_check;
    e->base.prepare = lua_prepare;
    e->base.activate = lua_activate;
    e->base.discard = lua_discard;
    e->base.deactivate = lua_deactivate;
    e->base.serve = lua_serve;
    e->base.live_version = lua_live_version;
    e->base.destroy = lua_destroy;
    return &e->base;
}

void pc_lua_adapter_counts(pc_adapter *a, long *versions, long *isolates)
{
    engine *e = (engine *)a;
    *versions = atomic_load(&e->n_versions);
    *isolates = atomic_load(&e->n_isolates);
}
