/* api.h - the controller's REST API (docs/api.md, docs/openapi.yaml) on
 * nng's HTTP server.
 *
 * Reads are answered on the HTTP threads straight from LMDB (readers never
 * block the writer). Writes are validated on the HTTP threads, then handed
 * to the pipeline, which answers once the change is committed. Every error
 * is a JSON body {"error": {"code", "message"}} with a 4xx/5xx status, and
 * a refused request changes nothing. */
#ifndef PC_API_H
#define PC_API_H

#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "audit.h"
#include "config.h"
#include "crypto.h"
#include "err.h"
#include "health.h"
#include "tls.h"
#include "metrics.h"
#include "cluster.h"
#include "signer.h"
#include "pipeline.h"
#include "rollout.h"
#include "store.h"

typedef struct pc_api_options {
    const char *listen_url; /* http://127.0.0.1:7070 */
    const char *node_id;
    size_t max_bundle;          /* upload limit in bytes */
    const pc_strlist *runtimes; /* runtime names accepted in uploads */
    pc_adapter *lua;            /* used to check Lua uploads parse */
    pc_cluster *cluster;        /* writes go to its leader */
    pc_signer *signer;          /* signing keys: GET /v1/keys */
    nng_tls_config *tls;        /* for an https:// listen_url */
    uint8_t admin_token_hash[PC_HASH_LEN];
    /* Mutating calls per second and burst, per token (0: unlimited). */
    double token_write_rate, token_write_burst;
    double admin_write_rate, admin_write_burst;
    pc_health_loop *loop; /* the controller's loop, for /livez and /readyz */
    pc_audit *audit;      /* every request to a write route, or NULL */
    /* The default deployment plan's canary PoP (NULL or "": the first PoP
     * by name among the agents) and each gated stage's bake. */
    const char *deploy_canary_pop;
    uint64_t deploy_bake_ms;
    /* Origins a browser may call the API from (CORS; "*": any); NULL or
     * empty: none (no CORS headers, preflights refused). */
    const pc_strlist *cors_origins;
    bool keep_alive;        /* pc_httpd_options.keep_alive */
    struct pc_watch *watch; /* GET /v1/watch; NULL: 404 */
    /* PoPs' places on the map (pop_locations): GET /v1/fleet's "pops". */
    const struct pc_pop_location *pops;
    size_t n_pops;
} pc_api_options;

typedef struct pc_api pc_api;

int pc_api_start(pc_api **out, const pc_api_options *opt, pc_store *store, pc_pipeline *pipeline,
                 pc_rollout *rollout, pc_metrics *metrics, pc_err *err);
void pc_api_stop(pc_api *api);
/* Any thread: the admin token from now on (SIGHUP read its file again);
 * requests that already passed authentication are not affected. */
void pc_api_set_admin_token_hash(pc_api *api, const uint8_t hash[PC_HASH_LEN]);
/* The url the API listens on, with the port actually bound (listen_url
 * may name port 0). */
const char *pc_api_bound_url(const pc_api *api);

#endif
