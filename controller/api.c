/* api.c - the REST API's route table and the decisions taken from it (see
 * api.h, api_internal.h). Handlers live in the api_*.c resource files. */
#include "api.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_internal.h"
#include "connect.h"
#include "log.h"
#include "names.h"
#include "openapi_doc.h"
#include "registry.h"

static void get_health(api_call *call);
static void preflight(pc_api *api, pc_httpd_req *rq);
static void get_livez(api_call *call);
static void get_readyz(api_call *call);
static void get_metrics(api_call *call);
static void get_openapi(api_call *call);

/* A Connect call's body: an upload's bundle in base64 (4/3 of it), and
 * the rest of the request. */
#define CONNECT_BODY_SLACK (64 * 1024)

#define GET(p, auth, h)                                                                            \
    {                                                                                              \
        {"GET", p}, auth, false, h                                                                 \
    }
#define WRITE(m, p, auth, h)                                                                       \
    {                                                                                              \
        {m, p}, auth, true, h                                                                      \
    }

/* Every route of the API. The order matters only for the Allow header of
 * a 405. */
static const api_route routes[] = {
    GET("/metrics", API_PUBLIC, get_metrics),
    GET("/v1/health", API_PUBLIC, get_health),
    GET("/livez", API_PUBLIC, get_livez),
    GET("/readyz", API_PUBLIC, get_readyz),
    GET("/v1/openapi.yaml", API_PUBLIC, get_openapi),
    GET("/dashboard", API_PUBLIC, api_get_dashboard),
    GET("/dashboard/{asset}", API_PUBLIC, api_get_dashboard_asset),
    GET("/v1/tenants", API_TENANT, api_get_tenants),
    GET("/v1/tenants/{tenant}", API_TENANT, api_get_tenant),
    WRITE("DELETE", "/v1/tenants/{tenant}", API_TENANT, api_delete_tenant),
    GET("/v1/tenants/{tenant}/versions", API_TENANT, api_get_versions),
    WRITE("POST", "/v1/tenants/{tenant}/bundles", API_TENANT, api_post_bundle),
    WRITE("PUT", "/v1/tenants/{tenant}/bundles", API_TENANT, api_post_bundle),
    WRITE("POST", "/v1/tenants/{tenant}/rollback", API_TENANT, api_post_rollback),
    WRITE("POST", "/v1/changes", API_TENANT, api_post_changes),
    GET("/v1/tenants/{tenant}/versions/{version}/rollout", API_TENANT, api_get_rollout_by_version),
    GET("/v1/tenants/{tenant}/versions/{version}/health", API_TENANT, api_get_version_health),
    WRITE("POST", "/v1/tenants/{tenant}/versions/{version}/stage", API_TENANT, api_post_stage),
    WRITE("POST", "/v1/tenants/{tenant}/deployments", API_TENANT, api_post_deployment),
    GET("/v1/tenants/{tenant}/deployments", API_TENANT, api_get_deployments),
    GET("/v1/tenants/{tenant}/plan", API_TENANT, api_get_plan),
    GET("/v1/watch", API_TENANT, api_get_watch),
    GET("/v1/tenants/{tenant}/tail", API_TENANT, api_get_tail),
    WRITE("PUT", "/v1/tenants/{tenant}/plan", API_TENANT, api_put_plan),
    WRITE("DELETE", "/v1/tenants/{tenant}/plan", API_TENANT, api_delete_plan),
    GET("/v1/tenants/{tenant}/deployments/{id}", API_TENANT, api_get_deployment),
    WRITE("POST", "/v1/tenants/{tenant}/deployments/{id}/pause", API_TENANT,
          api_post_deployment_pause),
    WRITE("POST", "/v1/tenants/{tenant}/deployments/{id}/resume", API_TENANT,
          api_post_deployment_resume),
    WRITE("POST", "/v1/tenants/{tenant}/deployments/{id}/abort", API_TENANT,
          api_post_deployment_abort),
    WRITE("POST", "/v1/tenants/{tenant}/deployments/{id}/promote", API_TENANT,
          api_post_deployment_promote),
    GET("/v1/rollout/{seq}", API_ADMIN, api_get_rollout_by_seq),
    GET("/v1/fleet", API_ADMIN, api_get_fleet),
    GET("/v1/cluster", API_ADMIN, api_get_cluster),
    WRITE("POST", "/v1/cluster/nodes", API_ADMIN, api_post_node),
    WRITE("DELETE", "/v1/cluster/nodes/{id}", API_ADMIN, api_delete_node),
    GET("/v1/tokens", API_ADMIN, api_get_tokens),
    WRITE("POST", "/v1/tokens", API_ADMIN, api_post_token),
    WRITE("DELETE", "/v1/tokens/{id}", API_ADMIN, api_delete_token),
    GET("/v1/agents", API_ADMIN, api_get_agents),
    WRITE("POST", "/v1/agents", API_ADMIN, api_post_agent),
    WRITE("DELETE", "/v1/agents/{id}", API_ADMIN, api_delete_agent),
    GET("/v1/keys", API_ADMIN, api_get_keys),
    WRITE("POST", "/v1/keys/rotate", API_ADMIN, api_post_rotation),
};

const api_route *pc_api_routes(size_t *n)
{
    *n = sizeof(routes) / sizeof(routes[0]);
    return routes;
}

/* Tokens are looked up by the hash of what was presented: the store never
 * holds a token, and the admin token is compared in constant time (as
 * BLAKE2b hashes, so neither its length nor its prefix leaks). */
static bool authenticate(pc_api *api, pc_httpd_req *rq, api_principal *who)
{
    memset(who, 0, sizeof(*who));
    const char *h = pc_httpd_header(rq, "Authorization");
    if (h == NULL || strncmp(h, "Bearer ", 7) != 0 || strlen(h + 7) > 512)
        return false;
    uint8_t got[PC_HASH_LEN], admin[PC_HASH_LEN];
    pc_hash(got, h + 7, strlen(h + 7));
    pthread_mutex_lock(&api->admin_lock);
    memcpy(admin, api->admin_token_hash, PC_HASH_LEN);
    pthread_mutex_unlock(&api->admin_lock);
    bool is_admin = sodium_memcmp(got, admin, PC_HASH_LEN) == 0;
    sodium_memzero(admin, sizeof(admin));
    if (is_admin) {
        who->admin = true;
        return true;
    }
    Popcast__TokenRecord *t = NULL;
    pc_err err;
    if (pc_registry_get_token(api->store, got, &t, &err) != PC_OK)
        return false;
    if (t->revoked) {
        if (t != NULL)
            popcast__token_record__free_unpacked(t, NULL);
        return false;
    }
    who->token = t;
    return true;
}

bool api_may_use_tenant(const api_principal *who, const char *tenant)
{
    if (who->admin)
        return true;
    for (size_t i = 0; who->token != NULL && i < who->token->n_tenants; i++)
        if (strcmp(who->token->tenants[i], tenant) == 0)
            return true;
    return false;
}

/* A write reached a follower: send the client to the leader. */
static void redirect_to_leader(pc_api *api, pc_httpd_req *rq)
{
    char leader[256];
    if (!pc_cluster_leader_api(api->opt.cluster, leader, sizeof(leader))) {
        pc_httpd_error(rq, PC_E_NOT_LEADER,
                       "no leader is known right now (an election is under way, or a majority "
                       "of controllers is unreachable): the write was not accepted; retry");
        return;
    }
    char location[1024];
    snprintf(location, sizeof(location), "%s%s", leader, pc_httpd_target(rq));
    json_t *o =
        json_pack("{s:{s:s,s:s,s:s}}", "error", "code", pc_err_name(PC_E_NOT_LEADER), "message",
                  "this controller is a follower: send writes to the leader", "leader", leader);
    const char *headers[] = {"Location", location, NULL};
    pc_httpd_reply_json(rq, 307, o, headers);
}

bool api_take_writes(pc_api *api, pc_httpd_req *rq, bool admin, const char *token_id, size_t n,
                     size_t taken)
{
    int64_t retry = 0;
    pc_ratelimit *limit = admin ? api->admin_writes : api->token_writes;
    double burst = pc_ratelimit_burst(limit);
    if (burst > 0 && (double)(n + taken) > burst) {
        pc_httpd_error(rq, PC_E_INVALID,
                       "%zu changes are more than this token may make at once (%.0f)", n + taken,
                       burst);
        return false;
    }
    if (n == 0)
        return true;
    if (pc_ratelimit_take_n(limit, admin ? "admin" : token_id, (double)n, pc_mono_ms(), &retry))
        return true;
    char secs[24];
    snprintf(secs, sizeof(secs), "%lld", (long long)(retry + 999) / 1000);
    const char *headers[] = {"Retry-After", secs, NULL};
    pc_httpd_error_with(rq, PC_E_RATE_LIMITED, headers,
                        "too many changes with this token; retry in %lld ms", (long long)retry);
    return false;
}

/* What the audit log keeps of a write request until it is answered. */
typedef struct audit_call {
    pc_audit *audit;
    char *token; /* "admin", a token id, or NULL */
    char method[16];
    char *path;
    char *idempotency_key; /* as sent, or NULL */
} audit_call;

static void audit_done(void *arg, uint16_t status, const void *body, size_t len)
{
    audit_call *ac = arg;
    pc_audit_write(ac->audit, ac->token, ac->method, ac->path, ac->idempotency_key, status, body,
                   len);
    free(ac->token);
    free(ac->path);
    free(ac->idempotency_key);
    free(ac);
}

/* Every request to a write route goes to the audit log once answered,
 * refused ones included (who: NULL when no valid token came). */
static void audit_request(pc_api *api, pc_httpd_req *rq, const api_principal *who)
{
    if (api->opt.audit == NULL)
        return;
    audit_call *ac = calloc(1, sizeof(*ac));
    if (ac == NULL)
        return;
    ac->audit = api->opt.audit;
    if (who != NULL)
        ac->token = strdup(who->admin ? "admin" : who->token->id);
    snprintf(ac->method, sizeof(ac->method), "%s", pc_httpd_method(rq));
    ac->path = strdup(pc_httpd_target(rq));
    const char *key = pc_httpd_header(rq, "Idempotency-Key");
    if (key != NULL)
        ac->idempotency_key = strdup(key);
    if (ac->path == NULL || (who != NULL && ac->token == NULL) ||
        (key != NULL && ac->idempotency_key == NULL)) {
        free(ac->token);
        free(ac->path);
        free(ac->idempotency_key);
        free(ac);
        return;
    }
    pc_httpd_on_done(rq, audit_done, ac);
}

/* Takes every decision a route's row implies, in order: the route exists
 * for this method, the caller may call it (and may see its tenant), its
 * tenant name is well formed, a write reaches the leader and is within the
 * caller's rate. Only then the handler runs. */
static void route(pc_httpd_req *rq)
{
    pc_api *api = pc_httpd_data(rq);
    /* A Connect call becomes its REST request (connect.h), counted there. */
    if (pc_connect_is_rpc(pc_httpd_target(rq)) && strcmp(pc_httpd_method(rq), "OPTIONS") != 0) {
        pc_connect_serve(rq, api->opt.max_bundle / 3 * 4 + CONNECT_BODY_SLACK);
        return;
    }
    pc_metric_add(api->m_requests, 1);
    if (strcmp(pc_httpd_method(rq), "OPTIONS") == 0 &&
        pc_httpd_header(rq, "Access-Control-Request-Method") != NULL) {
        preflight(api, rq);
        return;
    }
    pc_route_match m;
    size_t n = 0;
    const api_route *table = pc_api_routes(&n);
    int rc = pc_route_find(table, n, sizeof(*table), pc_httpd_method(rq), pc_httpd_target(rq), &m);
    if (rc == PC_E_METHOD) {
        const char *headers[] = {"Allow", m.allow, NULL};
        pc_httpd_error_with(rq, rc, headers, "method %s not allowed here (allowed: %s)",
                            pc_httpd_method(rq), m.allow);
        return;
    }
    if (rc != PC_OK) {
        pc_httpd_error(rq, PC_E_NOTFOUND, "no such resource");
        return;
    }
    const api_route *r = &table[m.index];
    api_principal who = {false, NULL};
    const char *tenant = pc_route_param(&m, "tenant");
    bool authed = r->auth == API_PUBLIC || authenticate(api, rq, &who);
    if (r->write)
        audit_request(api, rq, authed ? &who : NULL);
    if (!authed) {
        pc_httpd_error(rq, PC_E_AUTH,
                       "missing, wrong or revoked bearer token (Authorization: Bearer <token>)");
    } else if (r->auth == API_ADMIN && !who.admin) {
        pc_httpd_error(rq, PC_E_FORBIDDEN,
                       "this token is scoped to tenants; this endpoint needs the admin token");
    } else if (tenant != NULL && !api_may_use_tenant(&who, tenant)) {
        /* The same answer as for a tenant that does not exist: a scoped
         * token learns nothing about other tenants. */
        pc_httpd_error(rq, PC_E_NOTFOUND, "tenant %s not found", tenant);
    } else if (tenant != NULL && !pc_tenant_name_valid(tenant)) {
        pc_httpd_error(rq, PC_E_INVALID, "tenant names are 1 to 63 characters of a-z, 0-9 and '-'");
    } else if (r->write && api->opt.cluster != NULL && !pc_cluster_is_leader(api->opt.cluster)) {
        redirect_to_leader(api, rq);
    } else if (!r->write ||
               api_take_writes(api, rq, who.admin, who.admin ? NULL : who.token->id, 1, 0)) {
        api_call call = {api, rq, &who, &m};
        r->handler(&call);
    }
    if (who.token != NULL)
        popcast__token_record__free_unpacked(who.token, NULL);
}

static void get_health(api_call *call)
{
    pc_api *api = call->api;
    uint64_t applied = 0;
    pc_err err;
    if (pc_store_applied_seq(api->store, &applied, &err) != PC_OK) {
        pc_httpd_error(call->rq, PC_E_UNAVAILABLE, "store: %s", err.msg);
        return;
    }
    json_t *o = json_pack("{s:s,s:s,s:I}", "status", "ok", "node_id", api->node_id, "head_seq",
                          (json_int_t)applied);
    if (o != NULL && api->opt.cluster != NULL) {
        char leader[256] = "";
        bool is_leader = pc_cluster_is_leader(api->opt.cluster);
        if (!is_leader)
            pc_cluster_leader_api(api->opt.cluster, leader, sizeof(leader));
        json_object_set_new(o, "role", json_string(is_leader ? "leader" : "follower"));
        json_object_set_new(o, "leader_api", json_string(is_leader ? api->opt.listen_url : leader));
    }
    pc_httpd_reply_json(call->rq, 200, o, NULL);
}

/* The store answers a read (an LMDB read transaction). */
static void check_store(pc_health_report *r, pc_api *api)
{
    uint64_t applied = 0;
    pc_err err;
    bool ok = pc_store_applied_seq(api->store, &applied, &err) == PC_OK;
    pc_health_check(r, "store", ok, "%s", ok ? "" : err.msg);
}

/* Alive: the loop runs and the store reads. Nothing about peers: a node
 * cut from its cluster is not helped by a restart. */
static void get_livez(api_call *call)
{
    pc_health_report r;
    pc_health_init(&r, "livez");
    check_store(&r, call->api);
    if (call->api->opt.loop != NULL)
        pc_health_check_loop(&r, call->api->opt.loop);
    pc_health_reply(call->rq, &r, call->match->query);
}

/* Ready: able to serve what it is asked, with a store that is the
 * committed state: a member of its cluster, with a leader known, and
 * every committed entry applied here (docs/operations.md "Health"). */
static void get_readyz(api_call *call)
{
    pc_api *api = call->api;
    pc_health_report r;
    pc_health_init(&r, "readyz");
    check_store(&r, api);
    if (api->opt.loop != NULL) {
        pc_health_check_loop(&r, api->opt.loop);
        pc_health_check_shutdown(&r, api->opt.loop);
    }
    if (api->opt.cluster != NULL) {
        pc_cluster_health h;
        pc_cluster_get_health(api->opt.cluster, &h);
        pc_health_check(&r, "member", h.member, "node %s is not in the cluster's configuration",
                        api->node_id);
        pc_health_check(&r, "leader", h.leader_id != 0, "no leader known");
        pc_health_check(&r, "applied", h.last_applied >= h.commit_index,
                        "applied %llu of %llu committed raft entries",
                        (unsigned long long)h.last_applied, (unsigned long long)h.commit_index);
    }
    pc_health_reply(call->rq, &r, call->match->query);
}

/* The API's description, as built in (docs/openapi.yaml): public, like
 * the routes it lists are to anyone who reads the source. */
static void get_openapi(api_call *call)
{
    pc_httpd_reply(call->rq, 200, "application/yaml", pc_openapi_yaml, pc_openapi_yaml_len, NULL);
}

static void get_metrics(api_call *call)
{
    char *text = pc_metrics_render_text(call->api->metrics);
    if (text == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    pc_httpd_reply(call->rq, 200, "text/plain; version=0.0.4", text, strlen(text), NULL);
    free(text);
}

/* Shared by the resource files. */

int api_parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

json_t *api_hash_json(const uint8_t *hash, size_t len)
{
    char hex[PC_HEX_HASH_LEN];
    if (len != PC_HASH_LEN)
        return json_null();
    pc_hex(hex, hash, PC_HASH_LEN);
    return json_string(hex);
}

/* The committed change's answer, by kind. */
static void change_done(pc_change *c, const pc_change_result *r)
{
    pc_httpd_req *rq = c->arg;
    pc_api *api = pc_httpd_data(rq);
    const pc_change_kind_info *kind = pc_change_kind_get(c->kind);
    if (r->rc != PC_OK) {
        if (kind->tenant)
            pc_metric_add(api->m_changes_failed, 1);
        pc_httpd_error(rq, r->rc, "%s", r->err.msg);
        return;
    }
    json_t *answer = NULL;
    switch (c->kind) {
    case PC_CHANGE_ADD_NODE:
    case PC_CHANGE_REMOVE_NODE: answer = api_cluster_change_json(api, c, r); break;
    case PC_CHANGE_TOKEN_CREATE:
    case PC_CHANGE_TOKEN_REVOKE: answer = api_token_change_json(c, r); break;
    case PC_CHANGE_AGENT_ENROLL:
    case PC_CHANGE_AGENT_REVOKE: answer = api_agent_change_json(c, r); break;
    case PC_CHANGE_KEY_ROTATE: answer = api_key_change_json(c, r); break;
    case PC_CHANGE_DEPLOYMENT: answer = api_deployment_change_json(api, c, r); break;
    case PC_CHANGE_PLAN: answer = api_plan_json(api, c->tenant); break;
    default:
        if (!r->replayed)
            pc_metric_add(api->m_changes, 1);
        answer = api_tenant_change_json(c, r);
        if (answer != NULL && r->replayed)
            json_object_set_new(answer, "replayed", json_true());
    }
    /* A replay answers as the first time did, and says it is one. */
    static const char *const replayed[] = {"Idempotent-Replayed", "true", NULL};
    uint16_t status = kind->success_status;
    if (c->kind == PC_CHANGE_DEPLOYMENT && c->u.deployment.create != NULL)
        status = 201; /* a new deployment; its operations answer 200 */
    pc_httpd_reply_json(rq, status, answer, r->replayed ? replayed : NULL);
}

void api_submit(pc_api *api, pc_httpd_req *rq, pc_change *c)
{
    pc_err err;
    c->done = change_done;
    c->arg = rq;
    const char *key = pc_httpd_header(rq, "Idempotency-Key");
    if (key != NULL && pc_change_set_idempotency(c, key, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_error(rq, err.code, "%s", err.msg);
        return;
    }
    if (pc_pipeline_submit(api->pipeline, c, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_error(rq, err.code, "%s", err.msg);
    }
}

/* Every answer says which role this node had: reads from a follower may
 * lag the leader (they never include unacknowledged writes, but may miss
 * acknowledged ones for a moment); and, to a browser page from an
 * allowed origin, that it may read the answer (CORS). */
static size_t api_headers(void *data, const pc_httpd_req *rq, const char **out, size_t cap)
{
    pc_api *api = data;
    size_t n = 0;
    if (n < cap && api->opt.cluster != NULL) {
        bool leader = pc_cluster_is_leader(api->opt.cluster);
        out[2 * n] = "X-Popcast-Read";
        out[2 * n++ + 1] = leader ? "leader" : "follower; may be stale";
    }
    const char *origin = pc_httpd_header(rq, "Origin");
    if (n + 3 <= cap && api_origin_allowed(api, origin)) {
        out[2 * n] = "Access-Control-Allow-Origin";
        out[2 * n++ + 1] = origin;
        out[2 * n] = "Vary";
        out[2 * n++ + 1] = "Origin";
        out[2 * n] = "Access-Control-Expose-Headers";
        out[2 * n++ + 1] = "X-Popcast-Read, Idempotent-Replayed, Retry-After, Location";
    }
    return n;
}

bool api_origin_allowed(const pc_api *api, const char *origin)
{
    const pc_strlist *list = api->opt.cors_origins;
    for (size_t i = 0; origin != NULL && list != NULL && i < list->count; i++)
        if (strcmp(list->items[i], "*") == 0 || strcmp(list->items[i], origin) == 0)
            return true;
    return false;
}

/* A browser's preflight (OPTIONS with Access-Control-Request-Method):
 * from an allowed origin, for a route that answers that method, 204 with
 * what the request may carry; else refused, and the browser sends
 * nothing. */
static void preflight(pc_api *api, pc_httpd_req *rq)
{
    const char *origin = pc_httpd_header(rq, "Origin"),
               *method = pc_httpd_header(rq, "Access-Control-Request-Method");
    if (!api_origin_allowed(api, origin)) {
        pc_httpd_error(rq, PC_E_FORBIDDEN, "origin %s may not call this API (cors_origins)",
                       origin ? origin : "(none)");
        return;
    }
    pc_route_match m;
    size_t n = 0;
    const api_route *table = pc_api_routes(&n);
    /* A Connect call (connect.h) is a POST with Connect's own headers. */
    bool rpc = pc_connect_is_rpc(pc_httpd_target(rq));
    int rc = rpc ? (method != NULL && strcmp(method, "POST") == 0 ? PC_OK : PC_E_METHOD)
                 : pc_route_find(table, n, sizeof(*table), method, pc_httpd_target(rq), &m);
    if (rc != PC_OK) {
        pc_httpd_error(rq, rc == PC_E_METHOD ? PC_E_METHOD : PC_E_NOTFOUND,
                       "no route answers %s here", method);
        return;
    }
    const char *headers[] = {"Access-Control-Allow-Methods",
                             method,
                             "Access-Control-Allow-Headers",
                             rpc ? "Authorization, Content-Type, Idempotency-Key, "
                                   "Connect-Protocol-Version, Connect-Timeout-Ms"
                                 : "Authorization, Content-Type, Idempotency-Key",
                             "Access-Control-Max-Age",
                             "600",
                             NULL};
    pc_httpd_reply(rq, 204, NULL, NULL, 0, headers);
}

int pc_api_start(pc_api **out, const pc_api_options *opt, pc_store *store, pc_pipeline *pipeline,
                 pc_rollout *rollout, pc_metrics *metrics, pc_err *err)
{
    pc_api *api = calloc(1, sizeof(*api));
    if (api == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    api->opt = *opt;
    api->node_id = strdup(opt->node_id ? opt->node_id : "");
    api->store = store;
    api->pipeline = pipeline;
    api->rollout = rollout;
    api->metrics = metrics;
    pthread_mutex_init(&api->admin_lock, NULL);
    memcpy(api->admin_token_hash, opt->admin_token_hash, PC_HASH_LEN);
    api->m_requests = pc_metrics_counter(metrics, "popcast_api_requests_total", NULL,
                                         "API requests received (any route, any answer)");
    api->m_changes = pc_metrics_counter(metrics, "popcast_controller_changes_total", NULL,
                                        "tenant changes committed (deploy, rollback, delete)");
    api->m_changes_failed =
        pc_metrics_counter(metrics, "popcast_controller_changes_failed_total", NULL,
                           "tenant changes that failed after validation (not committed, or "
                           "not known to be)");
    api->token_writes = pc_ratelimit_new(opt->token_write_rate, opt->token_write_burst, 4096);
    api->admin_writes = pc_ratelimit_new(opt->admin_write_rate, opt->admin_write_burst, 1);
    pc_httpd_options h = {.url = opt->listen_url,
                          .tls = opt->tls,
                          .handler = route,
                          .data = api,
                          .headers = api_headers,
                          .keep_alive = opt->keep_alive};
    int rc = api->node_id == NULL || api->token_writes == NULL || api->admin_writes == NULL
                 ? pc_err_set(err, PC_E_NOMEM, "out of memory")
                 : pc_httpd_start(&api->server, &h, err);
    if (rc != PC_OK) {
        pc_ratelimit_free(api->token_writes);
        pc_ratelimit_free(api->admin_writes);
        free(api->node_id);
        pthread_mutex_destroy(&api->admin_lock);
        sodium_memzero(api->admin_token_hash, PC_HASH_LEN);
        free(api);
        return rc;
    }
    *out = api;
    return PC_OK;
}

void pc_api_set_admin_token_hash(pc_api *api, const uint8_t hash[PC_HASH_LEN])
{
    pthread_mutex_lock(&api->admin_lock);
    memcpy(api->admin_token_hash, hash, PC_HASH_LEN);
    pthread_mutex_unlock(&api->admin_lock);
}

const char *pc_api_bound_url(const pc_api *api)
{
    return pc_httpd_bound_url(api->server);
}

void pc_api_stop(pc_api *api)
{
    if (api == NULL)
        return;
    pc_httpd_stop(api->server);
    pc_ratelimit_free(api->token_writes);
    pc_ratelimit_free(api->admin_writes);
    free(api->node_id);
    pthread_mutex_destroy(&api->admin_lock);
    sodium_memzero(api->admin_token_hash, PC_HASH_LEN);
    free(api);
}
