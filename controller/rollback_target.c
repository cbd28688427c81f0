/* rollback_target.c - the default target of a rollback (see
 * rollback_target.h). */
#include "rollback_target.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "deployment.h"
#include "envelope.h"
#include "registry.h"

/* What the deployments of the versions looked at say: per version (by
 * last - version), whether any went out through one, and whether one of
 * those completed. */
typedef struct deployed {
    uint64_t last;
    bool any[PC_ROLLBACK_LOOKBACK + 1], complete[PC_ROLLBACK_LOOKBACK + 1];
    uint64_t unfinished[PC_ROLLBACK_LOOKBACK + 1]; /* one that did not complete */
    const char *how[PC_ROLLBACK_LOOKBACK + 1];     /* ... and its state */
} deployed;

static int see_deployment(void *arg, const Popcast__DeploymentRecord *d)
{
    deployed *s = arg;
    if (d->version > s->last || s->last - d->version > PC_ROLLBACK_LOOKBACK)
        return 0;
    size_t i = (size_t)(s->last - d->version);
    s->any[i] = true;
    if (d->state == POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_COMPLETE) {
        s->complete[i] = true;
    } else {
        s->unfinished[i] = d->id;
        s->how[i] = pc_deployment_state_name(d->state);
    }
    return 0;
}

/* The manifest of tenant's version (NULL when the log no longer holds
 * it, or it does not decode). */
static Popcast__Manifest *manifest_of(pc_store *store, const char *tenant, uint64_t version)
{
    uint64_t seq = 0;
    Popcast__Manifest *m = NULL;
    if (pc_store_version_seq(store, tenant, version, &seq, NULL) != PC_OK ||
        pc_store_get_manifest(store, seq, &m, NULL) != PC_OK)
        return NULL;
    return m;
}

/* Appends "; " and a printf-style text to why (truncated, never
 * overflowing). */
static void add_reason(char *why, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_reason(char *why, size_t cap, const char *fmt, ...)
{
    size_t n = strlen(why);
    if (n > 0 && n + 3 < cap) {
        memcpy(why + n, "; ", 3);
        n += 2;
    }
    if (n + 1 >= cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why + n, cap - n, fmt, ap);
    va_end(ap);
}

/* Whether the fleet proved version live everywhere it counts; if not,
 * why, appended to why. */
static bool proven(pc_rollout *rollout, const Popcast__Manifest *m, int64_t now_ms, char *why,
                   size_t cap)
{
    pc_rollout_query q = {.tenant = m->tenant,
                          .version = m->version,
                          .seq = m->seq,
                          .fraction = 1.0,
                          .kind = m->kind};
    pc_rollout_summary s;
    json_t *doc = pc_rollout_version_json(rollout, &q, now_ms, &s);
    unsigned long long v = (unsigned long long)m->version;
    if (doc == NULL) {
        add_reason(why, cap, "v%llu: out of memory", v);
        return false;
    }
    json_decref(doc);
    if (s.total == 0) {
        add_reason(why, cap, "v%llu: no agent reports", v);
        return false;
    }
    if (s.nacked > 0) {
        add_reason(why, cap, "v%llu: nacked or quarantined on %zu of %zu agents", v, s.nacked,
                   s.total);
        return false;
    }
    if (s.live < s.total) {
        add_reason(why, cap, "v%llu: shown live on %zu of %zu agents", v, s.live, s.total);
        return false;
    }
    return true;
}

int pc_rollback_target(pc_store *store, pc_rollout *rollout, const char *tenant, int64_t now_ms,
                       uint64_t *version, pc_err *err)
{
    pc_err_clear(err);
    *version = 0;
    pc_tenant_state t;
    int rc = pc_store_get_tenant(store, tenant, &t, err);
    if (rc == PC_E_NOTFOUND)
        return pc_err_set(err, PC_E_NOTFOUND, "no tenant %s", tenant);
    if (rc != PC_OK)
        return rc;
    uint8_t current_hash[PC_HASH_LEN];
    bool has_current = false;
    /* The lowest version a rollback at or above the one being looked at
     * went back to: versions above it were rolled back over. */
    uint64_t rolled_to = UINT64_MAX;
    char why[sizeof(err->msg) - 160] = "";
    size_t candidates = 0;
    /* A version that went out through deployments is proven on the whole
     * fleet by one that completed: one that was reverted or aborted
     * failed or was stopped, and one superseded or halted before its end
     * may have shown it only on a stage's agents or a split's share of
     * their traffic (which the agents' reports cannot tell apart). */
    deployed seen = {.last = t.last_version};
    if ((rc = pc_registry_foreach_deployment(store, tenant, see_deployment, &seen, err)) != PC_OK)
        return rc;
    uint64_t floor =
        t.last_version > PC_ROLLBACK_LOOKBACK ? t.last_version - PC_ROLLBACK_LOOKBACK : 0;
    for (uint64_t v = t.last_version; v > floor; v--) {
        Popcast__Manifest *m = manifest_of(store, tenant, v);
        if (m == NULL)
            continue; /* no such version (numbers may skip), or compacted away */
        bool content = pc_manifest_has_content(m) && m->bundle_hash.len == PC_HASH_LEN;
        if (v == t.last_version) {
            has_current = content;
            if (content)
                memcpy(current_hash, m->bundle_hash.data, PC_HASH_LEN);
        } else if (content && v <= rolled_to &&
                   !(has_current && memcmp(m->bundle_hash.data, current_hash, PC_HASH_LEN) == 0)) {
            candidates++;
            size_t i = (size_t)(t.last_version - v);
            if (seen.any[i] && !seen.complete[i])
                add_reason(why, sizeof(why), "v%llu: its deployment %llu is %s",
                           (unsigned long long)v, (unsigned long long)seen.unfinished[i],
                           seen.how[i] ? seen.how[i] : "not complete");
            else if (proven(rollout, m, now_ms, why, sizeof(why))) {
                *version = v;
                popcast__manifest__free_unpacked(m, NULL);
                return PC_OK;
            }
        }
        if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK && m->rollback_of < rolled_to)
            rolled_to = m->rollback_of;
        popcast__manifest__free_unpacked(m, NULL);
    }
    if (candidates == 0)
        return pc_err_set(err, PC_E_NOTFOUND,
                          "%s has no earlier version with other content to roll back to", tenant);
    return pc_err_set(err, PC_E_UNPROVEN,
                      "no earlier version of %s is proven live on every agent and nacked on "
                      "none (%s): name the version to roll back to",
                      tenant, why);
}
