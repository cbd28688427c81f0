/* api_internal.h - what the API's resource files share (not a public
 * contract: api.h is).
 *
 * api.c owns the route table and decides, from each route's row, who may
 * call it, whether it must reach the leader and whether it is rate
 * limited; the resource files (api_tenants.c, api_rollout.c,
 * api_cluster.c, api_access.c, api_keys.c) hold the handlers. A handler
 * runs only after every decision of its row was taken, and answers its
 * request exactly once (through pc_httpd_*), possibly later. */
#ifndef PC_API_INTERNAL_H
#define PC_API_INTERNAL_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "api.h"
#include "clock.h"
#include "httpd.h"
#include "ratelimit.h"
#include "router.h"

struct pc_api {
    pc_api_options opt;
    char *node_id;
    pc_store *store;
    pc_pipeline *pipeline;
    pc_rollout *rollout;
    pc_metrics *metrics;
    pc_metric *m_requests, *m_changes, *m_changes_failed;
    /* The admin token's hash: replaced on SIGHUP while requests check it. */
    pthread_mutex_t admin_lock;
    uint8_t admin_token_hash[PC_HASH_LEN];
    pc_httpd *server;
    pc_ratelimit *token_writes, *admin_writes;
};

/* Who is calling: the admin token, or a token scoped to tenants. */
typedef struct api_principal {
    bool admin;
    Popcast__TokenRecord *token; /* scoped token, NULL for admin */
} api_principal;

/* One request, while its handler runs. Handlers that answer later keep
 * copies of what they need: the call itself ends with the handler. */
typedef struct api_call {
    pc_api *api;
    pc_httpd_req *rq;
    const api_principal *who;
    const pc_route_match *match;
} api_call;

typedef enum api_auth {
    API_PUBLIC, /* no token */
    API_TENANT, /* any valid token; a {tenant} in the path must be one it may use */
    API_ADMIN,  /* the admin token */
} api_auth;

typedef struct api_route {
    pc_route route; /* method and pattern: first, for the router */
    api_auth auth;
    /* A write: served by the leader only (followers redirect) and counted
     * against the caller's write rate. */
    bool write;
    void (*handler)(api_call *call);
} api_route;

/* The route table (api.c), for tests and docs. */
const api_route *pc_api_routes(size_t *n);

bool api_may_use_tenant(const api_principal *who, const char *tenant);

/* Strict decimal u64: digits only, no sign, no overflow. */
int api_parse_u64(const char *s, uint64_t *out);
/* A hex JSON string of a hash, null when len is not a hash's. */
json_t *api_hash_json(const uint8_t *hash, size_t len);
/* Queues c with the pipeline; the answer is sent when it commits (or it
 * is refused now). Takes c. */
void api_submit(pc_api *api, pc_httpd_req *rq, pc_change *c);
/* Bounded write rates per token, so one token cannot flood the log: takes
 * n more changes from the caller's bucket (the admin's, or token_id's),
 * all or none, for a request that took `taken` already. false after
 * answering: 400 when n + taken is more than the bucket's burst (it could
 * never pass), 429 with Retry-After when too few are left. */
bool api_take_writes(pc_api *api, pc_httpd_req *rq, bool admin, const char *token_id, size_t n,
                     size_t taken);
/* POST /v1/changes (api_batch.c): at most this many changes, in a body
 * of at most this many bytes. */
#define PC_API_BATCH_MAX      256
#define PC_API_BATCH_BODY_MAX (32u << 20)

/* A deploy of tenant: body is its bundle (an archive, or with
 * single_file the entrypoint's source, packed into one), checked as every
 * upload is (size, archive, whether the runtime can load it). Takes body.
 * NULL with err set (its code is the answer's) when refused; the caller
 * sets author and message. From any thread. */
pc_change *api_deploy_change(pc_api *api, const char *tenant, const char *runtime,
                             const char *entrypoint, bool single_file, uint8_t *body, size_t len,
                             pc_err *err);
/* "admin", or "token:" and the token's id: a change's author. */
void api_author_of(const api_principal *who, char out[PC_CHANGE_AUTHOR_MAX + 1]);
/* Whether this cluster accepts runtime (runtimes option). */
bool api_runtime_allowed(pc_api *api, const char *runtime);

/* Handlers, by resource. */
void api_get_tenants(api_call *call);
void api_get_tenant(api_call *call);
void api_get_versions(api_call *call);
void api_post_bundle(api_call *call);
void api_post_rollback(api_call *call);
void api_post_stage(api_call *call);
void api_post_deployment(api_call *call);
void api_get_deployments(api_call *call);
void api_get_deployment(api_call *call);
void api_post_deployment_pause(api_call *call);
void api_post_deployment_resume(api_call *call);
void api_post_deployment_abort(api_call *call);
void api_post_deployment_promote(api_call *call);
void api_get_plan(api_call *call);
void api_get_watch(api_call *call);
void api_get_tail(api_call *call);
void api_get_dashboard(api_call *call);
void api_get_dashboard_asset(api_call *call);
void api_put_plan(api_call *call);
void api_delete_plan(api_call *call);
json_t *api_deployment_change_json(pc_api *api, const pc_change *c, const pc_change_result *r);
/* A tenant's default plan as GET /v1/tenants/{t}/plan shows it. */
json_t *api_plan_json(pc_api *api, const char *tenant);
/* Whether a browser page from origin may call the API (cors_origins). */
bool api_origin_allowed(const pc_api *api, const char *origin);
void api_post_changes(api_call *call);
void api_delete_tenant(api_call *call);
void api_get_rollout_by_seq(api_call *call);
void api_get_rollout_by_version(api_call *call);
void api_get_version_health(api_call *call);
void api_get_fleet(api_call *call);
void api_get_cluster(api_call *call);
void api_post_node(api_call *call);
void api_delete_node(api_call *call);
void api_post_token(api_call *call);
void api_get_tokens(api_call *call);
void api_delete_token(api_call *call);
void api_post_agent(api_call *call);
void api_get_agents(api_call *call);
void api_delete_agent(api_call *call);
void api_get_keys(api_call *call);
void api_post_rotation(api_call *call);

/* The answer to a committed change of each kind. */
json_t *api_tenant_change_json(const pc_change *c, const pc_change_result *r);
json_t *api_cluster_change_json(pc_api *api, const pc_change *c, const pc_change_result *r);
json_t *api_token_change_json(const pc_change *c, const pc_change_result *r);
json_t *api_agent_change_json(const pc_change *c, const pc_change_result *r);
json_t *api_key_change_json(const pc_change *c, const pc_change_result *r);

#endif
