/* traffic.c - per tenant version request counters (see traffic.h). */
#include "traffic.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "names.h"
#include "strmap.h"

typedef struct slot {
    pc_version_traffic now, shown;
} slot;

/* A tenant's slots, newest version first; version 0: unused. */
typedef struct tenant_counts {
    slot s[PC_TRAFFIC_VERSIONS];
} tenant_counts;

struct pc_traffic {
    pthread_mutex_t lock; /* guards everything below */
    pc_strmap *tenants;   /* tenant -> tenant_counts */
    /* Moves with every count; what it was at the last publish. */
    uint64_t counted, published;
    int64_t since_ms;
};

pc_traffic *pc_traffic_new(int64_t since_unix_ms)
{
    pc_traffic *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->tenants = pc_strmap_new()) == NULL) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    t->since_ms = since_unix_ms;
    return t;
}

void pc_traffic_free(pc_traffic *t)
{
    if (t == NULL)
        return;
    size_t pos = 0;
    const char *key;
    void *val;
    while (pc_strmap_next(t->tenants, &pos, &key, &val))
        free(val);
    pc_strmap_free(t->tenants);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

int64_t pc_traffic_since_ms(const pc_traffic *t)
{
    return t->since_ms;
}

/* The slot for version (lock held): found, or made by shifting the
 * older ones down when version is newer than one kept; NULL when it is
 * older than every kept one and there is no room. */
static slot *slot_for(tenant_counts *c, uint64_t version)
{
    for (size_t i = 0; i < PC_TRAFFIC_VERSIONS; i++) {
        if (c->s[i].now.version == version)
            return &c->s[i];
        if (c->s[i].now.version < version) {
            /* Unused slots hold version 0, so they come last. */
            memmove(&c->s[i + 1], &c->s[i], (PC_TRAFFIC_VERSIONS - 1 - i) * sizeof(c->s[0]));
            memset(&c->s[i], 0, sizeof(c->s[i]));
            c->s[i].now.version = version;
            return &c->s[i];
        }
    }
    return NULL;
}

void pc_traffic_count(pc_traffic *t, const char *tenant, uint64_t version, pc_traffic_outcome o)
{
    if (t == NULL || version == 0 || tenant == NULL || !pc_tenant_name_valid(tenant))
        return;
    pthread_mutex_lock(&t->lock);
    tenant_counts *c = pc_strmap_get(t->tenants, tenant);
    if (c == NULL && (c = calloc(1, sizeof(*c))) != NULL &&
        pc_strmap_put(t->tenants, tenant, c) != PC_OK) {
        free(c);
        c = NULL;
    }
    slot *s = c != NULL ? slot_for(c, version) : NULL;
    if (s != NULL) {
        s->now.requests++;
        switch (o) {
        case PC_TRAFFIC_5XX: s->now.status_5xx++; break;
        case PC_TRAFFIC_ERROR: s->now.errors++; break;
        case PC_TRAFFIC_LIMIT: s->now.limit_kills++; break;
        default: break;
        }
        t->counted++;
    }
    pthread_mutex_unlock(&t->lock);
}

bool pc_traffic_publish(pc_traffic *t)
{
    pthread_mutex_lock(&t->lock);
    bool moved = t->counted != t->published;
    if (moved) {
        size_t pos = 0;
        const char *key;
        void *val;
        while (pc_strmap_next(t->tenants, &pos, &key, &val)) {
            tenant_counts *c = val;
            for (size_t i = 0; i < PC_TRAFFIC_VERSIONS; i++)
                c->s[i].shown = c->s[i].now;
        }
        t->published = t->counted;
    }
    pthread_mutex_unlock(&t->lock);
    return moved;
}

/* tenant's counts, published or current. */
static size_t counts_of(pc_traffic *t, const char *tenant, bool published,
                        pc_version_traffic out[PC_TRAFFIC_VERSIONS])
{
    size_t n = 0;
    pthread_mutex_lock(&t->lock);
    const tenant_counts *c = pc_strmap_get(t->tenants, tenant);
    for (size_t i = 0; c != NULL && i < PC_TRAFFIC_VERSIONS; i++) {
        const pc_version_traffic *v = published ? &c->s[i].shown : &c->s[i].now;
        if (v->version != 0 && v->requests > 0)
            out[n++] = *v;
    }
    pthread_mutex_unlock(&t->lock);
    return n;
}

size_t pc_traffic_get(pc_traffic *t, const char *tenant,
                      pc_version_traffic out[PC_TRAFFIC_VERSIONS])
{
    return counts_of(t, tenant, true, out);
}

size_t pc_traffic_current(pc_traffic *t, const char *tenant,
                          pc_version_traffic out[PC_TRAFFIC_VERSIONS])
{
    return counts_of(t, tenant, false, out);
}

int pc_traffic_attach(pc_traffic *t, Popcast__TenantStatus *ts)
{
    pc_version_traffic got[PC_TRAFFIC_VERSIONS];
    size_t n = pc_traffic_get(t, ts->tenant, got);
    if (n == 0)
        return PC_OK;
    Popcast__VersionTraffic **list = calloc(n, sizeof(*list));
    if (list == NULL)
        return PC_E_NOMEM;
    for (size_t i = 0; i < n; i++) {
        Popcast__VersionTraffic *v = malloc(sizeof(*v));
        if (v == NULL) {
            for (size_t k = 0; k < i; k++)
                free(list[k]);
            free(list);
            return PC_E_NOMEM;
        }
        popcast__version_traffic__init(v);
        v->version = got[i].version;
        v->requests = got[i].requests;
        v->errors = got[i].errors;
        v->limit_kills = got[i].limit_kills;
        v->status_5xx = got[i].status_5xx;
        list[i] = v;
    }
    ts->traffic = list;
    ts->n_traffic = n;
    return PC_OK;
}
