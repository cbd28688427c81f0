/* api_rollout.c - where each change is live, and the fleet (docs/api.md
 * "Rollouts"). */
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"

#define WAIT_MAX_MS 300000

void api_get_fleet(api_call *call)
{
    uint64_t head = 0;
    pc_store_applied_seq(call->api->store, &head, NULL);
    pc_httpd_reply_json(call->rq, 200,
                        pc_rollout_fleet_json(call->api->rollout, head, pc_mono_ms()), NULL);
}

static void rollout_done(void *arg, json_t *doc, const char *why)
{
    pc_httpd_reply_json(arg, 200, doc, NULL);
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
    char t[PC_TENANT_MAX + 1];
    snprintf(t, sizeof(t), "%s", m->tenant);
    pc_rollout_query q = {.tenant = t,
                          .version = m->version,
                          .seq = m->seq,
                          .is_delete = m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE,
                          .fraction = fraction,
                          .kind = m->kind};
    popcast__manifest__free_unpacked(m, NULL);
    if (wait_ms == 0) {
        pc_httpd_reply_json(rq, 200, pc_rollout_version_json(api->rollout, &q, pc_mono_ms(), NULL),
                            NULL);
        return;
    }
    if (pc_rollout_wait(api->rollout, &q, pc_mono_ms() + (int64_t)wait_ms, rollout_done, rq,
                        &err) != PC_OK)
        pc_httpd_error(rq, err.code, "%s", err.msg);
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
