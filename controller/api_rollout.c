/* api_rollout.c - where each change is live, and the fleet (docs/api.md
 * "Rollouts"). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "pop_map.h"
#include "envelope.h"
#include "gate.h"
#include "json_text.h"

#define WAIT_MAX_MS 300000

void api_get_fleet(api_call *call)
{
    uint64_t head = 0;
    pc_store_applied_seq(call->api->store, &head, NULL);
    json_t *doc = pc_rollout_fleet_json(call->api->rollout, head, pc_mono_ms());
    json_t *pops = pc_pop_map_json(call->api->opt.pops, call->api->opt.n_pops);
    if (doc == NULL || pops == NULL || json_object_set_new(doc, "pops", pops) != 0) {
        json_decref(doc);
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    pc_httpd_reply_json(call->rq, 200, doc, NULL);
}

static void rollout_done(void *arg, json_t *doc, const char *why)
{
    pc_httpd_reply_json(arg, 200, doc, NULL);
}

/* Where m's version goes live now: the target of the last STAGE of it
 * while it is its tenant's active version, else its own entry's (a
 * version a newer one overtook is judged on where it was first sent).
 * *owner, if set, holds the stage the target points into. */
static const Popcast__Target *current_target(pc_store *store, const Popcast__Manifest *m,
                                             Popcast__Manifest **owner)
{
    *owner = NULL;
    pc_tenant_state t;
    if (pc_store_get_tenant(store, m->tenant, &t, NULL) == PC_OK &&
        t.active_version == m->version && t.stage_seq != 0 &&
        pc_store_get_manifest(store, t.stage_seq, owner, NULL) == PC_OK)
        return (*owner)->target;
    return m->target;
}

/* The rollout of the change at seq (version 0) or of tenant's version. */
static void reply_rollout(api_call *call, const char *tenant, uint64_t version, uint64_t seq)
{
    pc_api *api = call->api;
    pc_httpd_req *rq = call->rq;
    const char *query = call->match->query;
    pc_err err;
    char buf[32];
    uint64_t wait_ms = 0;
    double fraction = 1.0;
    if (pc_httpd_query_get(query, "wait", buf, sizeof(buf)) &&
        (api_parse_u64(buf, &wait_ms) != 0 || wait_ms > WAIT_MAX_MS)) {
        pc_httpd_error(rq, PC_E_INVALID, "wait must be milliseconds, at most %d", WAIT_MAX_MS);
        return;
    }
    if (pc_httpd_query_get(query, "fraction", buf, sizeof(buf))) {
        char *end = NULL;
        fraction = strtod(buf, &end);
        if (end == buf || *end != '\0' || !(fraction > 0.0 && fraction <= 1.0)) {
            pc_httpd_error(rq, PC_E_INVALID, "fraction must be in (0, 1]");
            return;
        }
    }
    int rc;
    if (seq == 0 && (rc = pc_store_version_seq(api->store, tenant, version, &seq, &err)) != PC_OK) {
        pc_httpd_error(rq, rc, "tenant %s has no version %llu", tenant,
                       (unsigned long long)version);
        return;
    }
    Popcast__Manifest *m = NULL;
    if ((rc = pc_store_get_manifest(api->store, seq, &m, &err)) == PC_E_NOTFOUND) {
        pc_httpd_error(rq, rc, "no change with seq %llu", (unsigned long long)seq);
        return;
    }
    if (rc != PC_OK) {
        pc_httpd_error(rq, rc, "%s", err.msg);
        return;
    }
    if (m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION) {
        popcast__manifest__free_unpacked(m, NULL);
        pc_httpd_error(rq, PC_E_INVALID, "seq %llu is not a tenant change",
                       (unsigned long long)seq);
        return;
    }
    Popcast__Manifest *stage = NULL;
    pc_rollout_query q = {.tenant = m->tenant,
                          .version = m->version,
                          .seq = m->seq,
                          .is_delete = m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE,
                          .fraction = fraction,
                          .kind = m->kind,
                          .target = current_target(api->store, m, &stage)};
    if (wait_ms == 0) {
        pc_httpd_reply_json(rq, 200, pc_rollout_version_json(api->rollout, &q, pc_mono_ms(), NULL),
                            NULL);
    } else if (pc_rollout_wait(api->rollout, &q, pc_mono_ms() + (int64_t)wait_ms, rollout_done, rq,
                               &err) != PC_OK) {
        pc_httpd_error(rq, err.code, "%s", err.msg);
    }
    if (stage != NULL)
        popcast__manifest__free_unpacked(stage, NULL);
    popcast__manifest__free_unpacked(m, NULL);
}

void api_get_rollout_by_seq(api_call *call)
{
    uint64_t seq = 0;
    if (api_parse_u64(pc_route_param(call->match, "seq"), &seq) != 0 || seq == 0) {
        pc_httpd_error(call->rq, PC_E_INVALID, "seq must be a number >= 1");
        return;
    }
    reply_rollout(call, NULL, 0, seq);
}

void api_get_rollout_by_version(api_call *call)
{
    uint64_t version = 0;
    if (api_parse_u64(pc_route_param(call->match, "version"), &version) != 0 || version == 0) {
        pc_httpd_error(call->rq, PC_E_INVALID, "version must be a number >= 1");
        return;
    }
    reply_rollout(call, pc_route_param(call->match, "tenant"), version, 0);
}

/* The newest version of tenant below version that has content: what its
 * agents served before it (0 when none). */
static uint64_t previous_content(pc_store *store, const char *tenant, uint64_t version)
{
    for (uint64_t v = version; v-- > 1;) {
        uint64_t seq = 0;
        Popcast__Manifest *m = NULL;
        if (pc_store_version_seq(store, tenant, v, &seq, NULL) != PC_OK ||
            pc_store_get_manifest(store, seq, &m, NULL) != PC_OK)
            continue;
        bool content = pc_manifest_has_content(m);
        popcast__manifest__free_unpacked(m, NULL);
        if (content)
            return v;
    }
    return 0;
}

static json_t *rates_json(const pc_gate_rates *r)
{
    return json_pack("{s:I,s:I,s:I,s:I,s:I,s:f,s:f}", "requests", (json_int_t)r->total.requests,
                     "errors", (json_int_t)r->total.errors, "limit_kills",
                     (json_int_t)r->total.limit_kills, "status_5xx",
                     (json_int_t)r->total.status_5xx, "agents", (json_int_t)r->agents, "error_rate",
                     r->error_rate, "limit_kill_rate", r->limit_kill_rate);
}

#define MIN_REQUESTS_MAX 1000000000ULL

void api_get_version_health(api_call *call)
{
    pc_api *api = call->api;
    pc_httpd_req *rq = call->rq;
    const char *tenant = pc_route_param(call->match, "tenant");
    const char *query = call->match->query;
    uint64_t version = 0, baseline = 0, seq = 0;
    pc_gate_rule rule = pc_gate_default_rule();
    char buf[32];
    if (api_parse_u64(pc_route_param(call->match, "version"), &version) != 0 || version == 0) {
        pc_httpd_error(rq, PC_E_INVALID, "version must be a number >= 1");
        return;
    }
    if (pc_httpd_query_get(query, "baseline", buf, sizeof(buf)) &&
        (api_parse_u64(buf, &baseline) != 0 || baseline == 0 || baseline >= version)) {
        pc_httpd_error(rq, PC_E_INVALID, "baseline must be a version >= 1 below %llu",
                       (unsigned long long)version);
        return;
    }
    if (pc_httpd_query_get(query, "min_requests", buf, sizeof(buf)) &&
        (api_parse_u64(buf, &rule.min_requests) != 0 || rule.min_requests == 0 ||
         rule.min_requests > MIN_REQUESTS_MAX)) {
        pc_httpd_error(rq, PC_E_INVALID, "min_requests must be 1 to %llu", MIN_REQUESTS_MAX);
        return;
    }
    pc_err err;
    int rc = pc_store_version_seq(api->store, tenant, version, &seq, &err);
    if (rc == PC_OK && baseline != 0)
        rc = pc_store_version_seq(api->store, tenant, baseline, &seq, &err);
    if (rc != PC_OK) {
        pc_httpd_error(rq, rc, "tenant %s has no version %llu", tenant,
                       (unsigned long long)(baseline != 0 ? baseline : version));
        return;
    }
    if (baseline == 0)
        baseline = previous_content(api->store, tenant, version);
    int64_t now = pc_mono_ms();
    size_t n = pc_rollout_gate_samples(api->rollout, tenant, version, baseline, now, NULL, 0);
    pc_gate_sample *samples = calloc(n ? n : 1, sizeof(*samples));
    if (samples == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        return;
    }
    /* Agents may have come or gone in between: the smaller count holds. */
    size_t got = pc_rollout_gate_samples(api->rollout, tenant, version, baseline, now, samples, n);
    pc_gate_result g;
    pc_gate_judge(&rule, samples, got < n ? got : n, &g);
    free(samples);
    json_t *doc = json_pack(
        "{s:s,s:I,s:I,s:s,s:o,s:{s:I,s:f,s:f},s:o,s:o,s:{s:b,s:b}}", "tenant", tenant, "version",
        (json_int_t)version, "baseline", (json_int_t)baseline, "verdict",
        pc_gate_verdict_name(g.verdict), "reason", pc_json_text(g.reason), "rule", "min_requests",
        (json_int_t)rule.min_requests, "max_ratio", rule.max_ratio, "margin", rule.margin,
        "candidate", rates_json(&g.candidate), "baseline_on_same_agents", rates_json(&g.baseline),
        "failed", "error_rate", g.error_rate_failed, "limit_kill_rate", g.limit_kill_rate_failed);
    pc_httpd_reply_json(rq, doc != NULL ? 200 : 500, doc, NULL);
}
