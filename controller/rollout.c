/* rollout.c - fleet view and rollout waits (see rollout.h). */
#include "rollout.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto.h"
#include "json_text.h"
#include "names.h"
#include "protocol_limits.h"
#include "status_digest.h"
#include "target.h"
#include "strmap.h"
#include "checks.h"

/* Reports refused under one agent id. */
typedef struct refusals {
    uint64_t count;
    char reason[32]; /* the last one's */
    int64_t last_ms;
} refusals;

typedef struct agent_entry {
    bool verified; /* the last report was signed by its bound key */
    /* The agent's table as of its last accepted report: a whole report, or
     * the last whole one with every delta since merged in. Its tenants are
     * sorted by name (tenant_of searches them). */
    Popcast__AgentStatus *status;
    /* The digest of status's tenants; deltas_ok: it matched the one the
     * agent sent with its last whole report (the two pack alike), so
     * deltas can be merged and checked against it. */
    pc_status_digest digest;
    bool deltas_ok;
    int64_t last_seen_ms;
    refusals refused;
    const char *standing; /* "ok", "stale", "gone" as last told on_fleet (NULL: never) */
} agent_entry;

/* A relay's own account, as its last batch carried it (unsigned). */
typedef struct relay_entry {
    char pop[PC_ID_MAX + 1];
    char upstream[PC_UPSTREAM_MAX + 1];
    uint64_t head_seq, first_seq, agents;
    int64_t last_seen_ms;
} relay_entry;

typedef struct waiter {
    pc_rollout_query q;
    char tenant[PC_TENANT_MAX + 1];
    Popcast__Target *target; /* q.target's own copy */
    int64_t deadline_ms;
    pc_rollout_done done;
    void *arg;
    struct waiter *next;
} waiter;

struct pc_rollout {
    pc_rollout_options opt;
    pc_mutex lock;
    pc_strmap *by_id;     /* agent id -> agent_entry */
    agent_entry **agents; /* every agent, sorted by id unless unsorted */
    size_t n_agents, cap_agents;
    bool unsorted; /* agents arrived since the last sort */
    waiter *waiters;
    pc_strmap *refused_only; /* ids never accepted -> refusals */
    pc_strmap *relays;       /* relay id -> relay_entry (what relays say of themselves) */
    uint64_t refused_total;  /* every refusal, attributed or not */
};

pc_rollout *pc_rollout_new(const pc_rollout_options *opt)
{
    pc_rollout *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->opt = *opt;
    if (r->opt.gone_after_ms == 0)
        r->opt.gone_after_ms = 30000;
    if (r->opt.report_stale_ms == 0)
        r->opt.report_stale_ms = 15000;
    if (r->opt.max_agents == 0)
        r->opt.max_agents = 100000;
    if (r->opt.max_refused == 0)
        r->opt.max_refused = 1024;
    if ((r->by_id = pc_strmap_new()) == NULL || (r->refused_only = pc_strmap_new()) == NULL ||
        (r->relays = pc_strmap_new()) == NULL) {
        pc_strmap_free(r->by_id);
        pc_strmap_free(r->refused_only);
        free(r);
        return NULL;
    }
    pc_mutex_init(&r->lock);
    return r;
}

void pc_rollout_free(pc_rollout *r)
{
    if (r == NULL)
        return;
    pc_rollout_cancel_waits(r);
    for (size_t i = 0; i < r->n_agents; i++) {
        popcast__agent_status__free_unpacked(r->agents[i]->status, NULL);
        free(r->agents[i]);
    }
    free(r->agents);
    pc_strmap_free(r->by_id);
    size_t pos = 0;
    const char *key;
    void *val;
    while (pc_strmap_next(r->refused_only, &pos, &key, &val))
        free(val);
    pc_strmap_free(r->refused_only);
    pos = 0;
    while (pc_strmap_next(r->relays, &pos, &key, &val))
        free(val);
    pc_strmap_free(r->relays);
    pc_mutex_destroy(&r->lock);
    free(r);
}

static bool is_gone(pc_rollout *r, const agent_entry *a, int64_t now)
{
    return now - a->last_seen_ms > (int64_t)r->opt.gone_after_ms;
}

static bool is_stale(pc_rollout *r, const agent_entry *a, int64_t now)
{
    return a->status->stale || now - a->last_seen_ms > (int64_t)r->opt.report_stale_ms;
}

/* Deep copy through the wire format: reports are small and this keeps
 * ownership simple (protobuf-c frees its own unpacked messages). */
static Popcast__AgentStatus *copy_status(const Popcast__AgentStatus *st)
{
    size_t len = popcast__agent_status__get_packed_size(st);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return NULL;
    popcast__agent_status__pack(st, buf);
    Popcast__AgentStatus *copy = popcast__agent_status__unpack(NULL, len, buf);
    free(buf);
    return copy;
}

static int by_agent_id(const void *x, const void *y)
{
    const agent_entry *a = *(agent_entry *const *)x, *b = *(agent_entry *const *)y;
    return strcmp(a->status->agent_id, b->status->agent_id);
}

/* Documents list agents by id: sorted when one is built, not on every new
 * agent (a fleet arriving at once would make that quadratic). */
static void sort_agents_locked(pc_rollout *r)
{
    PC_CHECK_HELD(&r->lock);
    if (r->unsorted)
        qsort(r->agents, r->n_agents, sizeof(*r->agents), by_agent_id);
    r->unsorted = false;
}

/* Adds a (lock held); PC_E_NOMEM leaves the fleet unchanged. */
static int add_agent_locked(pc_rollout *r, agent_entry *a)
{
    PC_CHECK_HELD(&r->lock);
    if (r->n_agents == r->cap_agents) {
        size_t cap = r->cap_agents ? r->cap_agents * 2 : 64;
        agent_entry **grown = realloc(r->agents, cap * sizeof(*grown));
        if (grown == NULL)
            return PC_E_NOMEM;
        r->agents = grown;
        r->cap_agents = cap;
    }
    if (pc_strmap_put(r->by_id, a->status->agent_id, a) != PC_OK)
        return PC_E_NOMEM;
    r->agents[r->n_agents++] = a;
    r->unsorted = true;
    return PC_OK;
}

static void count_refusal(refusals *f, const char *reason, int64_t now)
{
    f->count++;
    snprintf(f->reason, sizeof(f->reason), "%s", reason);
    f->last_ms = now;
}

/* Counts a refusal under agent_id (lock held): on its entry if it has
 * one, else in the bounded list of ids never accepted. */
static void refused_locked(pc_rollout *r, const char *agent_id, const char *reason, int64_t now)
{
    PC_CHECK_HELD(&r->lock);
    r->refused_total++;
    if (!pc_id_valid(agent_id))
        return;
    agent_entry *a = pc_strmap_get(r->by_id, agent_id);
    if (a != NULL) {
        count_refusal(&a->refused, reason, now);
        return;
    }
    refusals *f = pc_strmap_get(r->refused_only, agent_id);
    if (f == NULL) {
        if (pc_strmap_count(r->refused_only) >= r->opt.max_refused ||
            (f = calloc(1, sizeof(*f))) == NULL)
            return;
        if (pc_strmap_put(r->refused_only, agent_id, f) != PC_OK) {
            free(f);
            return;
        }
    }
    count_refusal(f, reason, now);
}

void pc_rollout_refused(pc_rollout *r, const char *agent_id, const char *reason, int64_t now_ms)
{
    pc_mutex_lock(&r->lock);
    refused_locked(r, agent_id, reason, now_ms);
    pc_mutex_unlock(&r->lock);
}

/* Whether a verified report brings another public key than the agent's
 * last accepted one (pc_rollout_report: a new key bound to the id). */
static bool key_changed(const Popcast__AgentStatus *last, const Popcast__AgentStatus *st)
{
    return st->public_key.len == PC_PK_LEN &&
           (last->public_key.len != PC_PK_LEN ||
            memcmp(last->public_key.data, st->public_key.data, PC_PK_LEN) != 0);
}

static void evaluate_waiters_locked(pc_rollout *r, int64_t now, waiter **fired);
static void fire(waiter *fired, pc_rollout *r, int64_t now);

/* Agents count 3 versions per tenant; a few more are tolerated. */
#define TRAFFIC_MAX 8

/* A tenant's request counts: few, one entry per version, and each
 * request has at most one outcome. */
static int check_traffic(const Popcast__TenantStatus *t)
{
    if (t->n_traffic > TRAFFIC_MAX)
        return PC_E_INVALID;
    for (size_t k = 0; k < t->n_traffic; k++) {
        const Popcast__VersionTraffic *v = t->traffic[k];
        if (v == NULL || v->version == 0 || v->errors > v->requests ||
            v->limit_kills > v->requests || v->status_5xx > v->requests ||
            v->errors > v->requests - v->status_5xx ||
            v->limit_kills > v->requests - v->status_5xx - v->errors)
            return PC_E_INVALID;
        for (size_t m = 0; m < k; m++)
            if (t->traffic[m]->version == v->version)
                return PC_E_INVALID;
    }
    return PC_OK;
}

/* tenant t's counts for version (NULL when it reports none). */
static const Popcast__VersionTraffic *traffic_of(const Popcast__TenantStatus *t, uint64_t version)
{
    for (size_t k = 0; t != NULL && k < t->n_traffic; k++)
        if (t->traffic[k]->version == version)
            return t->traffic[k];
    return NULL;
}

static json_t *traffic_json(uint64_t requests, uint64_t errors, uint64_t limit_kills,
                            uint64_t status_5xx)
{
    return json_pack("{s:I,s:I,s:I,s:I}", "requests", (json_int_t)requests, "errors",
                     (json_int_t)errors, "limit_kills", (json_int_t)limit_kills, "status_5xx",
                     (json_int_t)status_5xx);
}

/* PC_OK or PC_E_INVALID naming what is wrong with the report. */
static int check_report(const Popcast__AgentStatus *st, pc_err *err)
{
    if (!pc_id_valid(st->agent_id) || !pc_id_valid(st->pop))
        return pc_err_set(err, PC_E_INVALID, "status report with an invalid agent id or pop");
    for (size_t i = 0; i < st->n_tenants; i++) {
        const Popcast__TenantStatus *t = st->tenants[i];
        if (t == NULL || !pc_tenant_name_valid(t->tenant))
            return pc_err_set(err, PC_E_INVALID, "status report with an invalid tenant name");
        /* Agents keep 8 outcomes per tenant; a few more are tolerated,
         * hundreds are not (each waiter scans them). */
        if (t->n_outcomes > 64)
            return pc_err_set(err, PC_E_INVALID, "status report with %zu outcomes for %s",
                              t->n_outcomes, t->tenant);
        for (size_t k = 0; k < t->n_outcomes; k++) {
            const Popcast__VersionOutcome *o = t->outcomes[k];
            if (o == NULL || (o->reason != NULL && strlen(o->reason) > 64) ||
                (o->detail != NULL && strlen(o->detail) > 4096))
                return pc_err_set(err, PC_E_INVALID, "status report with an invalid outcome for %s",
                                  t->tenant);
        }
        if (check_traffic(t) != PC_OK)
            return pc_err_set(err, PC_E_INVALID, "status report with invalid request counts for %s",
                              t->tenant);
    }
    for (size_t i = 0; i < st->n_quarantined; i++)
        if (st->quarantined[i] == NULL || !pc_tenant_name_valid(st->quarantined[i]->tenant) ||
            st->quarantined[i]->reason == NULL || strlen(st->quarantined[i]->reason) > 512)
            return pc_err_set(err, PC_E_INVALID, "status report with an invalid quarantine");
    if (st->public_key.len != 0 && st->public_key.len != PC_PK_LEN)
        return pc_err_set(err, PC_E_INVALID, "status report with a public key of %zu bytes",
                          st->public_key.len);
    if (st->upstream != NULL && strlen(st->upstream) > PC_UPSTREAM_MAX)
        return pc_err_set(err, PC_E_INVALID, "status report with an upstream of %zu bytes",
                          strlen(st->upstream));
    return PC_OK;
}

static int by_tenant_name(const void *x, const void *y)
{
    const Popcast__TenantStatus *a = *(Popcast__TenantStatus *const *)x;
    const Popcast__TenantStatus *b = *(Popcast__TenantStatus *const *)y;
    return strcmp(a->tenant, b->tenant);
}

/* Sorts a report's tenants by name; PC_E_INVALID when one is listed twice. */
static int sort_tenants(Popcast__AgentStatus *st, pc_err *err)
{
    if (st->n_tenants > 1)
        qsort(st->tenants, st->n_tenants, sizeof(*st->tenants), by_tenant_name);
    for (size_t i = 1; i < st->n_tenants; i++)
        if (strcmp(st->tenants[i - 1]->tenant, st->tenants[i]->tenant) == 0)
            return pc_err_set(err, PC_E_INVALID, "status report lists tenant %s twice",
                              st->tenants[i]->tenant);
    return PC_OK;
}

static const Popcast__TenantStatus *tenant_of(const Popcast__AgentStatus *st, const char *tenant);

/* The tenants whose applied, live or split version the report st changes
 * from what the agent's entry a (NULL: a new agent) holds, as on_change
 * gets them (lock held). */
static json_t *changes_of(const agent_entry *a, const Popcast__AgentStatus *st)
{
    json_t *list = json_array();
    for (size_t i = 0; list != NULL && i < st->n_tenants; i++) {
        const Popcast__TenantStatus *t = st->tenants[i];
        const Popcast__TenantStatus *old =
            a != NULL && a->status != NULL ? tenant_of(a->status, t->tenant) : NULL;
        if (t->tenant == NULL ||
            (old != NULL && old->applied_version == t->applied_version &&
             old->live_version == t->live_version && old->split_version == t->split_version))
            continue;
        json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:I,s:I,s:I}", "agent_id", st->agent_id,
                                              "pop", st->pop ? st->pop : "", "tenant", t->tenant,
                                              "applied_version", (json_int_t)t->applied_version,
                                              "live_version", (json_int_t)t->live_version,
                                              "split_version", (json_int_t)t->split_version));
    }
    return list;
}

static const Popcast__TenantStatus *tenant_of(const Popcast__AgentStatus *st, const char *tenant)
{
    size_t lo = 0, hi = st->n_tenants;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tenants[mid]->tenant, tenant);
        if (c == 0)
            return st->tenants[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* The digest of a whole table; false when out of memory. */
static bool table_digest(const Popcast__AgentStatus *st, pc_status_digest *out)
{
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < st->n_tenants; i++) {
        pc_status_digest h;
        if (!pc_status_digest_tenant(&h, st->tenants[i]))
            return false;
        pc_status_digest_xor(out, &h);
    }
    return true;
}

/* What the table would digest to with delta's tenants in place of old's
 * (both sorted). */
static bool merged_digest(const agent_entry *a, const Popcast__AgentStatus *delta,
                          pc_status_digest *out)
{
    *out = a->digest;
    for (size_t i = 0; i < delta->n_tenants; i++) {
        pc_status_digest h;
        const Popcast__TenantStatus *was = tenant_of(a->status, delta->tenants[i]->tenant);
        if (was != NULL) {
            if (!pc_status_digest_tenant(&h, was))
                return false;
            pc_status_digest_xor(out, &h);
        }
        if (!pc_status_digest_tenant(&h, delta->tenants[i]))
            return false;
        pc_status_digest_xor(out, &h);
    }
    return true;
}

/* Moves the tenants and nacks of old that delta does not replace into
 * delta (both sorted), which becomes the whole table; old is freed. Only
 * pointers move: every array comes from protobuf-c's default allocator
 * (malloc), which frees them later. PC_E_NOMEM leaves both unchanged. */
static int merge_into(Popcast__AgentStatus *delta, Popcast__AgentStatus *old)
{
    size_t cap = old->n_tenants + delta->n_tenants;
    Popcast__TenantStatus **tenants = malloc((cap ? cap : 1) * sizeof(*tenants));
    Popcast__Nack **nacks = malloc((old->n_nacks + delta->n_nacks + 1) * sizeof(*nacks));
    if (tenants == NULL || nacks == NULL) {
        free(tenants);
        free(nacks);
        return PC_E_NOMEM;
    }
    size_t n = 0, i = 0, k = 0;
    while (i < old->n_tenants || k < delta->n_tenants) {
        int c = i == old->n_tenants ? 1
                : k == delta->n_tenants
                    ? -1
                    : strcmp(old->tenants[i]->tenant, delta->tenants[k]->tenant);
        if (c < 0) {
            tenants[n++] = old->tenants[i];
            old->tenants[i++] = NULL;
        } else {
            if (c == 0)
                i++; /* replaced: freed with old */
            tenants[n++] = delta->tenants[k++];
        }
    }
    /* Nacks: the delta's own, and old's for tenants the delta leaves as
     * they were. */
    size_t n_nacks = 0;
    for (size_t j = 0; j < delta->n_nacks; j++)
        nacks[n_nacks++] = delta->nacks[j];
    for (size_t j = 0; j < old->n_nacks; j++)
        if (tenant_of(delta, old->nacks[j]->tenant) == NULL) {
            nacks[n_nacks++] = old->nacks[j];
            old->nacks[j] = NULL;
        }
    free(delta->tenants);
    delta->tenants = tenants;
    delta->n_tenants = n;
    free(delta->nacks);
    delta->nacks = nacks;
    delta->n_nacks = n_nacks;
    /* What is left in old: replaced tenants, nacks of changed tenants, and
     * NULLs where pointers moved out (protobuf-c skips those). */
    popcast__agent_status__free_unpacked(old, NULL);
    return PC_OK;
}

/* Checks a delta against a's table (lock held): PC_OK with the merged
 * digest, or PC_E_BASE_UNKNOWN when a does not hold its base. */
static int check_delta_locked(const agent_entry *a, const Popcast__AgentStatus *delta,
                              bool verified, pc_status_digest *digest, pc_err *err)
{
    if (a == NULL)
        return pc_err_set(err, PC_E_BASE_UNKNOWN,
                          "a delta report, but this controller holds no report of the agent");
    if (!a->deltas_ok || (verified && key_changed(a->status, delta)))
        return pc_err_set(err, PC_E_BASE_UNKNOWN,
                          "a delta report, but this controller holds no table to merge it into");
    if (a->status->counter < delta->base_counter)
        return pc_err_set(
            err, PC_E_BASE_UNKNOWN, "a delta on report %llu, but this controller holds report %llu",
            (unsigned long long)delta->base_counter, (unsigned long long)a->status->counter);
    if (!merged_digest(a, delta, digest))
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    if (!pc_status_digest_equal(digest, delta->tenants_digest.data, delta->tenants_digest.len))
        return pc_err_set(err, PC_E_BASE_UNKNOWN,
                          "a delta report whose digest does not match the merged table");
    return PC_OK;
}

int pc_rollout_report(pc_rollout *r, const Popcast__AgentStatus *st, bool verified, int64_t now_ms,
                      bool *takes_deltas, pc_err *err)
{
    if (takes_deltas != NULL)
        *takes_deltas = false;
    if (check_report(st, err) != PC_OK) {
        pc_rollout_refused(r, st->agent_id, "invalid", now_ms);
        return PC_E_INVALID;
    }
    Popcast__AgentStatus *copy = copy_status(st);
    if (copy == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    if (sort_tenants(copy, err) != PC_OK) {
        popcast__agent_status__free_unpacked(copy, NULL);
        pc_rollout_refused(r, st->agent_id, "invalid", now_ms);
        return PC_E_INVALID;
    }
    /* A whole report's digest, computed here and compared with the
     * agent's own outside the lock. */
    pc_status_digest digest;
    bool digest_known = false, digest_matches = false;
    if (!copy->delta) {
        digest_known = table_digest(copy, &digest);
        digest_matches = digest_known && pc_status_digest_equal(&digest, copy->tenants_digest.data,
                                                                copy->tenants_digest.len);
    }
    waiter *fired = NULL;
    pc_mutex_lock(&r->lock);
    agent_entry *a = pc_strmap_get(r->by_id, st->agent_id);
    json_t *changes = r->opt.on_change != NULL ? changes_of(a, st) : NULL;
    int rc = PC_OK;
    if (a != NULL && st->counter <= a->status->counter &&
        !(verified && key_changed(a->status, st))) {
        rc = pc_err_set(err, PC_E_REPLAYED,
                        "report counter %llu is not above %llu (replayed or reordered)",
                        (unsigned long long)st->counter, (unsigned long long)a->status->counter);
        refused_locked(r, st->agent_id, "replayed", now_ms);
    } else if (copy->delta) {
        /* Not a refusal of the agent: its base is gone here (a restart of
         * this controller, a lost report); the whole table comes next. */
        rc = check_delta_locked(a, copy, verified, &digest, err);
        if (rc == PC_OK && (rc = merge_into(copy, a->status)) != PC_OK)
            rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        if (rc == PC_OK) {
            a->status = copy;
            a->digest = digest;
            a->last_seen_ms = now_ms;
            a->verified = verified;
            copy = NULL;
            if (takes_deltas != NULL)
                *takes_deltas = true;
        }
    } else if (a != NULL) {
        popcast__agent_status__free_unpacked(a->status, NULL);
        a->status = copy;
        a->digest = digest;
        a->deltas_ok = digest_matches;
        a->last_seen_ms = now_ms;
        a->verified = verified;
        copy = NULL;
    } else if (r->n_agents >= r->opt.max_agents) {
        rc = pc_err_set(err, PC_E_TOO_LARGE, "fleet is at its limit of %zu agents",
                        r->opt.max_agents);
    } else if ((a = calloc(1, sizeof(*a))) == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    } else {
        a->status = copy;
        a->digest = digest;
        a->deltas_ok = digest_matches;
        a->last_seen_ms = now_ms;
        a->verified = verified;
        if (add_agent_locked(r, a) != PC_OK) {
            free(a);
            rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        } else {
            copy = NULL;
            /* Refusals counted before its first accepted report move to
             * its entry. */
            refusals *f = pc_strmap_remove(r->refused_only, st->agent_id);
            if (f != NULL) {
                a->refused = *f;
                free(f);
            }
        }
    }
    if (rc == PC_OK && takes_deltas != NULL && !st->delta)
        *takes_deltas = digest_matches;
    if (rc == PC_OK)
        evaluate_waiters_locked(r, now_ms, &fired);
    pc_mutex_unlock(&r->lock);
    if (copy != NULL)
        popcast__agent_status__free_unpacked(copy, NULL);
    fire(fired, r, now_ms);
    size_t i;
    json_t *change;
    json_array_foreach(rc == PC_OK ? changes : NULL, i, change)
    {
        json_incref(change);
        r->opt.on_change(r->opt.on_change_arg, json_string_value(json_object_get(change, "tenant")),
                         change);
    }
    json_decref(changes);
    return rc;
}

static const Popcast__Nack *nack_for(const Popcast__AgentStatus *st, const char *tenant,
                                     uint64_t version)
{
    for (size_t i = 0; i < st->n_nacks; i++)
        if (st->nacks[i]->version == version && strcmp(st->nacks[i]->tenant, tenant) == 0)
            return st->nacks[i];
    return NULL;
}

static json_t *refusal_json(const refusals *f, int64_t now)
{
    return json_pack("{s:s,s:I}", "reason", f->reason, "ms_ago", (json_int_t)(now - f->last_ms));
}

static int by_refused_id(const void *x, const void *y)
{
    const char *a = json_string_value(json_object_get(*(json_t *const *)x, "agent_id"));
    const char *b = json_string_value(json_object_get(*(json_t *const *)y, "agent_id"));
    return strcmp(a, b);
}

/* Ids refused and never accepted, by id (lock held). */
static json_t *refused_only_json(pc_rollout *r, int64_t now)
{
    PC_CHECK_HELD(&r->lock);
    size_t n = pc_strmap_count(r->refused_only), pos = 0, k = 0;
    json_t **items = calloc(n ? n : 1, sizeof(*items));
    json_t *list = json_array();
    const char *id;
    void *val;
    while (items != NULL && pc_strmap_next(r->refused_only, &pos, &id, &val)) {
        const refusals *f = val;
        items[k++] = json_pack("{s:s,s:I,s:s,s:I}", "agent_id", id, "count", (json_int_t)f->count,
                               "reason", f->reason, "last_ms_ago", (json_int_t)(now - f->last_ms));
    }
    if (items != NULL)
        qsort(items, k, sizeof(*items), by_refused_id);
    for (size_t i = 0; i < k; i++)
        json_array_append_new(list, items[i]);
    free(items);
    return list;
}

void pc_rollout_relay(pc_rollout *r, const Popcast__RelayStatus *rs, int64_t now_ms)
{
    if (!pc_id_valid(rs->relay_id) || !pc_id_valid(rs->pop) || rs->upstream == NULL ||
        strlen(rs->upstream) > PC_UPSTREAM_MAX)
        return;
    pc_mutex_lock(&r->lock);
    relay_entry *e = pc_strmap_get(r->relays, rs->relay_id);
    /* As many relays as agents at most: a relay is a PoP's, and ids come
     * from the network. */
    if (e == NULL && pc_strmap_count(r->relays) < r->opt.max_agents &&
        (e = calloc(1, sizeof(*e))) != NULL && pc_strmap_put(r->relays, rs->relay_id, e) != PC_OK) {
        free(e);
        e = NULL;
    }
    if (e != NULL) {
        snprintf(e->pop, sizeof(e->pop), "%s", rs->pop);
        snprintf(e->upstream, sizeof(e->upstream), "%s", rs->upstream);
        e->head_seq = rs->head_seq;
        e->first_seq = rs->first_seq;
        e->agents = rs->agents;
        e->last_seen_ms = now_ms;
    }
    pc_mutex_unlock(&r->lock);
}

static int by_relay_id(const void *x, const void *y)
{
    return strcmp(json_string_value(json_object_get(*(json_t *const *)x, "relay_id")),
                  json_string_value(json_object_get(*(json_t *const *)y, "relay_id")));
}

/* Relays that forwarded a batch within gone_after_ms, sorted by id (lock
 * held). Their numbers are their own claims: "claimed" says so. */
static json_t *relays_json(pc_rollout *r, uint64_t head_seq, int64_t now_ms)
{
    PC_CHECK_HELD(&r->lock);
    size_t n = pc_strmap_count(r->relays), k = 0, pos = 0;
    json_t **items = calloc(n ? n : 1, sizeof(*items));
    const char *id;
    void *val;
    while (items != NULL && pc_strmap_next(r->relays, &pos, &id, &val)) {
        relay_entry *e = val;
        if (now_ms - e->last_seen_ms > (int64_t)r->opt.gone_after_ms)
            continue;
        items[k++] = json_pack(
            "{s:s,s:s,s:I,s:I,s:I,s:o,s:I,s:I,s:b}", "relay_id", id, "pop", e->pop, "head_seq",
            (json_int_t)e->head_seq, "first_seq", (json_int_t)e->first_seq, "lag",
            (json_int_t)(head_seq > e->head_seq ? head_seq - e->head_seq : 0), "upstream",
            pc_json_text(e->upstream), "agents_in_last_batch", (json_int_t)e->agents,
            "last_seen_ms_ago", (json_int_t)(now_ms - e->last_seen_ms), "claimed", 1);
    }
    json_t *list = json_array();
    if (items != NULL)
        qsort(items, k, sizeof(*items), by_relay_id);
    for (size_t i = 0; i < k; i++)
        json_array_append_new(list, items[i]);
    free(items);
    return list;
}

json_t *pc_rollout_fleet_json(pc_rollout *r, uint64_t head_seq, int64_t now_ms)
{
    json_t *agents = json_array();
    size_t live = 0, stale = 0, gone = 0;
    pc_mutex_lock(&r->lock);
    sort_agents_locked(r);
    for (size_t i = 0; i < r->n_agents; i++) {
        agent_entry *a = r->agents[i];
        bool g = is_gone(r, a, now_ms), s = is_stale(r, a, now_ms);
        gone += g;
        stale += !g && s;
        live += !g;
        uint64_t applied = a->status->applied_seq;
        json_t *o = json_pack(
            "{s:s,s:s,s:I,s:I,s:I,s:b,s:b,s:b,s:I,s:b,s:I}", "agent_id", a->status->agent_id, "pop",
            a->status->pop, "applied_seq", (json_int_t)applied, "lag",
            (json_int_t)(head_seq > applied ? head_seq - applied : 0), "last_seen_ms_ago",
            (json_int_t)(now_ms - a->last_seen_ms), "stale", s, "reports_stale", a->status->stale,
            "gone", g, "tenants", (json_int_t)a->status->n_tenants, "verified", a->verified,
            "refused_reports", (json_int_t)a->refused.count);
        if (o != NULL && a->refused.count > 0)
            json_object_set_new(o, "last_refusal", refusal_json(&a->refused, now_ms));
        /* What the agent could not write down (a full store): it serves
         * what it reports, but a restart would go back to what it had
         * recorded. */
        size_t unrecorded = 0;
        for (size_t k = 0; k < a->status->n_tenants; k++)
            unrecorded += a->status->tenants[k]->live_unrecorded;
        json_object_set_new(o, "record_failures",
                            json_integer((json_int_t)a->status->record_failures));
        json_object_set_new(o, "tenants_unrecorded", json_integer((json_int_t)unrecorded));
        /* Versions this agent's runtime stopped serving (it answers their
         * requests 503): a PoP-level outage of that tenant. */
        json_t *q = json_array();
        for (size_t k = 0; k < a->status->n_quarantined; k++) {
            const Popcast__Quarantine *e = a->status->quarantined[k];
            json_array_append_new(q, json_pack("{s:o,s:I,s:o}", "tenant", pc_json_text(e->tenant),
                                               "version", (json_int_t)e->version, "reason",
                                               pc_json_text(e->reason)));
        }
        json_object_set_new(o, "quarantined", q);
        json_object_set_new(o, "upstream",
                            pc_json_text(a->status->upstream ? a->status->upstream : ""));
        json_array_append_new(agents, o);
    }
    json_t *refused = refused_only_json(r, now_ms);
    json_t *relays = relays_json(r, head_seq, now_ms);
    uint64_t refused_total = r->refused_total;
    pc_mutex_unlock(&r->lock);
    return json_pack("{s:I,s:o,s:o,s:o,s:{s:I,s:I,s:I,s:I}}", "head_seq", (json_int_t)head_seq,
                     "agents", agents, "refused", refused, "relays", relays, "counts", "agents",
                     (json_int_t)live, "stale", (json_int_t)stale, "gone", (json_int_t)gone,
                     "refused_reports", (json_int_t)refused_total);
}

typedef enum {
    ST_LIVE,
    ST_NACKED,
    ST_SKIPPED,
    ST_DELETED,
    ST_UNKNOWN,
    ST_MISSING,
    ST_UNTARGETED,
    ST_COUNT
} agent_verdict;

static const char *const state_names[ST_COUNT] = {"live",    "nacked",  "skipped",   "deleted",
                                                  "unknown", "missing", "untargeted"};

/* One agent's verdict on a version (rollout.h). */
typedef struct judgement {
    agent_verdict v;
    bool applied;
    bool superseded;             /* live, but no longer what it serves */
    const char *reason, *detail; /* nacked */
} judgement;

static const Popcast__VersionOutcome *outcome_of(const Popcast__TenantStatus *t, uint64_t version,
                                                 const Popcast__VersionOutcome **next)
{
    const Popcast__VersionOutcome *found = NULL;
    *next = NULL;
    for (size_t i = 0; i < t->n_outcomes; i++) {
        const Popcast__VersionOutcome *o = t->outcomes[i];
        if (o->version == version)
            found = o;
        else if (o->version > version && (*next == NULL || o->version < (*next)->version))
            *next = o;
    }
    return found;
}

/* From the outcomes an agent reports for the tenant. */
static void judge_outcomes(const pc_rollout_query *q, const Popcast__TenantStatus *t, judgement *j)
{
    uint64_t v = q->version, av = t->applied_version;
    const Popcast__VersionOutcome *next, *o = outcome_of(t, v, &next);
    if (o != NULL && o->state == POPCAST__VERSION_STATE__VERSION_STATE_LIVE) {
        j->v = ST_LIVE;
        /* A delete serves while nothing newer came; a version while it is
         * the live one. */
        j->superseded = q->is_delete ? av != v : t->live_version != v && t->split_version != v;
    } else if (o != NULL && o->state == POPCAST__VERSION_STATE__VERSION_STATE_NACKED) {
        j->v = ST_NACKED;
        j->reason = o->reason;
        j->detail = o->detail;
    } else if (o != NULL && o->state == POPCAST__VERSION_STATE__VERSION_STATE_HELD) {
        j->v = ST_MISSING; /* targeted, and its stage not applied there yet */
    } else if (o != NULL) {
        j->v = ST_UNKNOWN; /* a state this controller does not know */
    } else if (v >= av) {
        /* Not there yet, or being decided right now (the agent reads its
         * store, then its outcomes). */
        j->v = ST_MISSING;
    } else if (v < t->outcomes_from) {
        j->v = ST_UNKNOWN; /* before what the agent remembers */
    } else {
        /* Never processed although something newer was: a snapshot
         * brought a newer version, or the delete, first. */
        j->v = next != NULL && next->is_delete && !q->is_delete ? ST_DELETED : ST_SKIPPED;
    }
}

/* From an agent that reports no outcomes (older agents): live when the
 * live version is at least V, which cannot tell a nacked version that a
 * newer one replaced from one that went live. */
static void judge_legacy(const pc_rollout_query *q, const Popcast__AgentStatus *st,
                         const Popcast__TenantStatus *t, judgement *j)
{
    uint64_t lv = t ? t->live_version : 0;
    bool live = q->is_delete ? j->applied && (lv == 0 || lv > q->version) : lv >= q->version;
    const Popcast__Nack *nack;
    if (live) {
        j->v = ST_LIVE;
        j->superseded = lv > q->version;
    } else if ((nack = nack_for(st, q->tenant, q->version)) != NULL) {
        j->v = ST_NACKED;
        j->reason = nack->reason;
        j->detail = nack->detail;
    } else {
        j->v = ST_MISSING;
    }
}

static void judge(const pc_rollout_query *q, const Popcast__AgentStatus *st, judgement *j)
{
    memset(j, 0, sizeof(*j));
    const Popcast__TenantStatus *t = tenant_of(st, q->tenant);
    j->applied = t != NULL && t->applied_version >= q->version;
    if (!pc_target_names(q->target, q->tenant, q->version, st->agent_id, st->pop)) {
        j->v = ST_UNTARGETED;
        return;
    }
    if (t != NULL && t->outcomes_from > 0)
        judge_outcomes(q, t, j);
    else
        judge_legacy(q, st, t, j);
    /* A quarantined version is loaded but answers 503: not serving, so
     * never counted live (nor complete); its reason is the agent's. */
    for (size_t i = 0; j->v == ST_LIVE && i < st->n_quarantined; i++) {
        const Popcast__Quarantine *e = st->quarantined[i];
        if (e->version == q->version && strcmp(e->tenant, q->tenant) == 0) {
            j->v = ST_NACKED;
            j->reason = "quarantined";
            j->detail = e->reason;
        }
    }
}

static json_t *pop_entry(json_t *pops, const char *pop)
{
    json_t *p = json_object_get(pops, pop);
    if (p == NULL) {
        p = json_object();
        json_object_set_new(p, "total", json_integer(0));
        for (size_t i = 0; i < ST_COUNT; i++)
            json_object_set_new(p, state_names[i], json_integer(0));
        json_object_set_new(pops, pop, p);
    }
    return p;
}

static void pop_inc(json_t *p, const char *key)
{
    json_object_set_new(p, key, json_integer(json_integer_value(json_object_get(p, key)) + 1));
}

/* Computes the rollout (lock held). doc may be NULL when only the summary
 * is needed. */
static void evaluate_locked(pc_rollout *r, const pc_rollout_query *q, int64_t now,
                            pc_rollout_summary *s, json_t *doc)
{
    PC_CHECK_HELD(&r->lock);
    memset(s, 0, sizeof(*s));
    json_t *agents = doc ? json_array() : NULL, *pops = doc ? json_object() : NULL;
    if (doc != NULL)
        sort_agents_locked(r);
    for (size_t i = 0; i < r->n_agents; i++) {
        agent_entry *a = r->agents[i];
        if (is_gone(r, a, now))
            continue;
        bool stale = is_stale(r, a, now);
        judgement j;
        judge(q, a->status, &j);
        s->untargeted += j.v == ST_UNTARGETED;
        s->total += j.v != ST_UNTARGETED;
        s->applied += j.applied;
        s->stale += stale;
        s->superseded += j.superseded;
        s->live += j.v == ST_LIVE;
        s->nacked += j.v == ST_NACKED;
        s->skipped += j.v == ST_SKIPPED;
        s->deleted += j.v == ST_DELETED;
        s->unknown += j.v == ST_UNKNOWN;
        s->missing += j.v == ST_MISSING;
        const Popcast__TenantStatus *t = tenant_of(a->status, q->tenant);
        const Popcast__VersionTraffic *tr = traffic_of(t, q->version);
        if (tr != NULL) {
            s->traffic.requests += tr->requests;
            s->traffic.errors += tr->errors;
            s->traffic.limit_kills += tr->limit_kills;
            s->traffic.status_5xx += tr->status_5xx;
            s->traffic.agents++;
        }
        if (doc == NULL)
            continue;
        const char *state = state_names[j.v];
        json_t *o = json_pack("{s:s,s:s,s:s,s:b,s:b,s:I,s:I,s:I}", "agent_id", a->status->agent_id,
                              "pop", a->status->pop, "state", state, "applied", j.applied, "stale",
                              stale, "applied_version", (json_int_t)(t ? t->applied_version : 0),
                              "live_version", (json_int_t)(t ? t->live_version : 0),
                              "last_seen_ms_ago", (json_int_t)(now - a->last_seen_ms));
        if (j.v == ST_LIVE)
            json_object_set_new(o, "superseded", json_boolean(j.superseded));
        if (t != NULL && t->live_unrecorded)
            json_object_set_new(o, "live_unrecorded", json_true());
        if (tr != NULL) {
            json_t *tj = traffic_json(tr->requests, tr->errors, tr->limit_kills, tr->status_5xx);
            json_object_set_new(tj, "since_unix_ms",
                                json_integer((json_int_t)a->status->traffic_since_unix_ms));
            json_object_set_new(o, "traffic", tj);
        }
        if (j.v == ST_NACKED) {
            json_object_set_new(o, "reason", pc_json_text(j.reason ? j.reason : ""));
            json_object_set_new(o, "detail", pc_json_text(j.detail ? j.detail : ""));
        }
        json_array_append_new(agents, o);
        json_t *p = pop_entry(pops, a->status->pop);
        pop_inc(p, "total");
        pop_inc(p, state);
    }
    size_t need = (size_t)ceil(q->fraction * (double)s->total - 1e-9);
    /* "Live everywhere" on an empty fleet would be a vacuous truth: an
     * operator waiting for a deploy wants at least one agent to have it. */
    s->complete = s->total > 0 && s->live >= need;
    s->failed = s->nacked > 0;
    /* Only agents still missing it can add to live: when they cannot make
     * up the difference, waiting longer changes nothing. */
    s->unreachable = s->total > 0 && !s->complete && s->live + s->missing < need;
    if (doc != NULL) {
        json_object_set_new(doc, "agents", agents);
        json_object_set_new(doc, "pops", pops);
        json_t *sum = json_pack(
            "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:b,s:f}", "total",
            (json_int_t)s->total, "untargeted", (json_int_t)s->untargeted, "live",
            (json_int_t)s->live, "applied", (json_int_t)s->applied, "nacked", (json_int_t)s->nacked,
            "missing", (json_int_t)s->missing, "stale", (json_int_t)s->stale, "superseded",
            (json_int_t)s->superseded, "skipped", (json_int_t)s->skipped, "deleted",
            (json_int_t)s->deleted, "unknown", (json_int_t)s->unknown, "complete", s->complete,
            "failed", s->failed, "unreachable", s->unreachable, "fraction", q->fraction);
        json_t *tj = traffic_json(s->traffic.requests, s->traffic.errors, s->traffic.limit_kills,
                                  s->traffic.status_5xx);
        json_object_set_new(tj, "agents", json_integer((json_int_t)s->traffic.agents));
        json_object_set_new(sum, "traffic", tj);
        json_object_set_new(doc, "summary", sum);
    }
}

static pc_gate_counts gate_counts(const Popcast__VersionTraffic *v)
{
    return (pc_gate_counts){.requests = v->requests,
                            .errors = v->errors,
                            .limit_kills = v->limit_kills,
                            .status_5xx = v->status_5xx};
}

size_t pc_rollout_gate_samples(pc_rollout *r, const char *tenant, uint64_t candidate,
                               uint64_t baseline, int64_t now_ms, pc_gate_sample *out, size_t cap)
{
    size_t n = 0;
    pc_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n_agents; i++) {
        agent_entry *a = r->agents[i];
        if (is_gone(r, a, now_ms))
            continue;
        const Popcast__TenantStatus *t = tenant_of(a->status, tenant);
        const Popcast__VersionTraffic *c = traffic_of(t, candidate), *b = traffic_of(t, baseline);
        if (c == NULL && b == NULL)
            continue;
        if (n < cap) {
            memset(&out[n], 0, sizeof(out[n]));
            out[n].has_candidate = c != NULL;
            out[n].has_baseline = b != NULL;
            if (c != NULL)
                out[n].candidate = gate_counts(c);
            if (b != NULL)
                out[n].baseline = gate_counts(b);
        }
        n++;
    }
    pc_mutex_unlock(&r->lock);
    return n;
}

static const char *kind_name(const pc_rollout_query *q)
{
    if (q->is_delete || q->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE)
        return "delete";
    return q->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK ? "rollback" : "deploy";
}

static json_t *version_doc(const pc_rollout_query *q)
{
    json_t *doc =
        json_pack("{s:s,s:I,s:I,s:s}", "tenant", q->tenant, "version", (json_int_t)q->version,
                  "seq", (json_int_t)q->seq, "kind", kind_name(q));
    if (doc != NULL)
        json_object_set_new(doc, "target", pc_target_json(q->target));
    return doc;
}

json_t *pc_rollout_version_json(pc_rollout *r, const pc_rollout_query *q, int64_t now_ms,
                                pc_rollout_summary *out)
{
    json_t *doc = version_doc(q);
    pc_rollout_summary s;
    pc_mutex_lock(&r->lock);
    evaluate_locked(r, q, now_ms, &s, doc);
    pc_mutex_unlock(&r->lock);
    if (out != NULL)
        *out = s;
    return doc;
}

/* Waiters whose rollout finished are unlinked into *fired (lock held); the
 * callbacks run after the lock is dropped, because they reply over HTTP. */
static void evaluate_waiters_locked(pc_rollout *r, int64_t now, waiter **fired)
{
    PC_CHECK_HELD(&r->lock);
    waiter **pp = &r->waiters;
    while (*pp != NULL) {
        waiter *w = *pp;
        pc_rollout_summary s;
        evaluate_locked(r, &w->q, now, &s, NULL);
        if (s.complete || s.failed || s.unreachable || now >= w->deadline_ms) {
            *pp = w->next;
            w->next = *fired;
            *fired = w;
        } else {
            pp = &w->next;
        }
    }
}

static void waiter_free(waiter *w)
{
    if (w->target != NULL)
        popcast__target__free_unpacked(w->target, NULL);
    free(w);
}

static void fire(waiter *fired, pc_rollout *r, int64_t now)
{
    while (fired != NULL) {
        waiter *next = fired->next;
        pc_rollout_summary s;
        json_t *doc = pc_rollout_version_json(r, &fired->q, now, &s);
        const char *why = s.complete      ? "complete"
                          : s.failed      ? "nacked"
                          : s.unreachable ? "unreachable"
                                          : "timeout";
        json_object_set_new(doc, "wait", json_string(why));
        fired->done(fired->arg, doc, why);
        waiter_free(fired);
        fired = next;
    }
}

int pc_rollout_wait(pc_rollout *r, const pc_rollout_query *q, int64_t deadline_ms,
                    pc_rollout_done done, void *arg, pc_err *err)
{
    waiter *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    w->q = *q;
    snprintf(w->tenant, sizeof(w->tenant), "%s", q->tenant);
    w->q.tenant = w->tenant;
    if (q->target != NULL) {
        size_t len = popcast__target__get_packed_size(q->target);
        uint8_t *buf = malloc(len ? len : 1);
        if (buf != NULL) {
            popcast__target__pack(q->target, buf);
            w->target = popcast__target__unpack(NULL, len, buf);
            free(buf);
        }
        if (w->target == NULL) {
            free(w);
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        }
        w->q.target = w->target;
    }
    w->deadline_ms = deadline_ms;
    w->done = done;
    w->arg = arg;
    waiter *fired = NULL;
    int64_t now = pc_mono_ms();
    pc_mutex_lock(&r->lock);
    w->next = r->waiters;
    r->waiters = w;
    evaluate_waiters_locked(r, now, &fired);
    pc_mutex_unlock(&r->lock);
    fire(fired, r, now);
    return PC_OK;
}

void pc_rollout_tick(pc_rollout *r, int64_t now_ms)
{
    waiter *fired = NULL;
    json_t *changes = r->opt.on_fleet != NULL ? json_array() : NULL;
    pc_mutex_lock(&r->lock);
    evaluate_waiters_locked(r, now_ms, &fired);
    for (size_t i = 0; changes != NULL && i < r->n_agents; i++) {
        agent_entry *a = r->agents[i];
        const char *now = is_gone(r, a, now_ms) ? "gone" : is_stale(r, a, now_ms) ? "stale" : "ok";
        if (a->standing == now)
            continue;
        a->standing = now;
        json_array_append_new(changes,
                              json_pack("{s:s,s:s,s:s}", "agent_id", a->status->agent_id, "pop",
                                        a->status->pop ? a->status->pop : "", "state", now));
    }
    pc_mutex_unlock(&r->lock);
    fire(fired, r, now_ms);
    size_t i;
    json_t *change;
    json_array_foreach(changes, i, change)
    {
        json_incref(change);
        r->opt.on_fleet(r->opt.on_change_arg, change);
    }
    json_decref(changes);
}

void pc_rollout_cancel_waits(pc_rollout *r)
{
    pc_mutex_lock(&r->lock);
    waiter *w = r->waiters;
    r->waiters = NULL;
    pc_mutex_unlock(&r->lock);
    while (w != NULL) {
        waiter *next = w->next;
        json_t *doc = version_doc(&w->q);
        json_object_set_new(doc, "wait", json_string("shutdown"));
        w->done(w->arg, doc, "shutdown");
        waiter_free(w);
        w = next;
    }
}

typedef struct serving_count {
    uint64_t version;
    size_t agents;
} serving_count;

static int by_version_desc(const void *x, const void *y)
{
    const serving_count *a = x, *b = y;
    return a->version < b->version ? 1 : a->version > b->version ? -1 : 0;
}

bool pc_rollout_agent_pop(pc_rollout *r, const char *agent_id, char *pop, size_t cap)
{
    pc_mutex_lock(&r->lock);
    agent_entry *a = pc_strmap_get(r->by_id, agent_id);
    bool known = a != NULL && a->status != NULL && a->status->pop != NULL;
    if (known)
        snprintf(pop, cap, "%s", a->status->pop);
    pc_mutex_unlock(&r->lock);
    return known;
}

json_t *pc_rollout_serving_json(pc_rollout *r, const char *tenant, int64_t now_ms)
{
    serving_count *counts = NULL;
    size_t n = 0, cap = 0, total = 0, none = 0, stale = 0;
    bool nomem = false;
    pc_mutex_lock(&r->lock);
    for (size_t i = 0; i < r->n_agents && !nomem; i++) {
        agent_entry *a = r->agents[i];
        if (is_gone(r, a, now_ms))
            continue;
        total++;
        stale += is_stale(r, a, now_ms);
        const Popcast__TenantStatus *t = tenant_of(a->status, tenant);
        uint64_t lv = t ? t->live_version : 0;
        /* A quarantined live version answers 503: it serves nothing. */
        for (size_t q = 0; lv != 0 && q < a->status->n_quarantined; q++)
            if (a->status->quarantined[q]->version == lv &&
                strcmp(a->status->quarantined[q]->tenant, tenant) == 0)
                lv = 0;
        if (lv == 0) {
            none++;
            continue;
        }
        size_t k = 0;
        while (k < n && counts[k].version != lv)
            k++;
        if (k == n) {
            if (n == cap) {
                size_t grown_cap = cap ? cap * 2 : 8;
                serving_count *grown = realloc(counts, grown_cap * sizeof(*grown));
                if (grown == NULL) {
                    nomem = true;
                    break;
                }
                counts = grown;
                cap = grown_cap;
            }
            counts[n++] = (serving_count){lv, 0};
        }
        counts[k].agents++;
    }
    pc_mutex_unlock(&r->lock);
    if (nomem) {
        free(counts);
        return NULL;
    }
    if (counts != NULL)
        qsort(counts, n, sizeof(*counts), by_version_desc);
    json_t *versions = json_array();
    for (size_t k = 0; k < n; k++)
        json_array_append_new(versions,
                              json_pack("{s:I,s:I}", "version", (json_int_t)counts[k].version,
                                        "agents", (json_int_t)counts[k].agents));
    free(counts);
    return json_pack("{s:I,s:o,s:I,s:I}", "agents", (json_int_t)total, "versions", versions, "none",
                     (json_int_t)none, "stale", (json_int_t)stale);
}
