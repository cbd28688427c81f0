/* api.c - REST API routes (see api.h). */
#include "api.h"

#include <errno.h>
#include <stdbool.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_bodies.h"
#include "ratelimit.h"
#include "bundle.h"
#include "envelope.h"
#include "httpd.h"
#include "log.h"
#include "names.h"

#define JSON_BODY_MAX (64 * 1024)

struct pc_api {
    pc_api_options opt;
    char *node_id;
    pc_store *store;
    pc_pipeline *pipeline;
    pc_rollout *rollout;
    pc_metrics *metrics;
    nng_http_server *server;
    pc_ratelimit *token_writes, *admin_writes;
};

#define WAIT_MAX_MS 300000

/* Authentication: the admin bearer token, compared as BLAKE2b hashes in
 * constant time so neither its length nor its prefix leaks. */
/* Who is calling: the admin token, or a token scoped to tenants. */
typedef struct principal {
    bool admin;
    Popcast__TokenRecord *token; /* scoped token, NULL for admin */
} principal;

/* Tokens are looked up by the hash of what was presented: the store never
 * holds a token, and the admin token is compared in constant time. */
static bool authenticate(pc_api *api, nng_http_req *req, principal *who)
{
    memset(who, 0, sizeof(*who));
    const char *h = nng_http_req_get_header(req, "Authorization");
    if (h == NULL || strncmp(h, "Bearer ", 7) != 0 || strlen(h + 7) > 512)
        return false;
    uint8_t got[PC_HASH_LEN];
    pc_hash(got, h + 7, strlen(h + 7));
    if (sodium_memcmp(got, api->opt.admin_token_hash, PC_HASH_LEN) == 0) {
        who->admin = true;
        return true;
    }
    char hex[PC_HEX_HASH_LEN], key[16 + PC_HEX_HASH_LEN];
    pc_hex(hex, got, PC_HASH_LEN);
    snprintf(key, sizeof(key), "token.%s", hex);
    uint8_t buf[4096];
    size_t len = 0;
    pc_err err;
    if (pc_store_meta_get(api->store, key, buf, sizeof(buf), &len, &err) != PC_OK ||
        len > sizeof(buf))
        return false;
    Popcast__TokenRecord *t = popcast__token_record__unpack(NULL, len, buf);
    if (t == NULL || t->revoked) {
        if (t != NULL)
            popcast__token_record__free_unpacked(t, NULL);
        return false;
    }
    who->token = t;
    return true;
}

static bool may_use_tenant(const principal *who, const char *tenant)
{
    if (who->admin)
        return true;
    for (size_t i = 0; who->token != NULL && i < who->token->n_tenants; i++)
        if (strcmp(who->token->tenants[i], tenant) == 0)
            return true;
    return false;
}

static json_t *hash_json(const uint8_t *hash, size_t len)
{
    char hex[PC_HEX_HASH_LEN];
    if (len != PC_HASH_LEN)
        return json_null();
    pc_hex(hex, hash, PC_HASH_LEN);
    return json_string(hex);
}

static const char *kind_name(Popcast__EntryKind k)
{
    switch (k) {
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DEPLOY: return "deploy";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_ROLLBACK: return "rollback";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE: return "delete";
    case POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION: return "key_rotation";
    default: return "unknown";
    }
}

/* One version as JSON, from its stored manifest. */
static json_t *version_json(pc_api *api, uint64_t seq)
{
    Popcast__LogRecord *rec = NULL;
    if (pc_store_get_log(api->store, seq, &rec, NULL) != PC_OK)
        return NULL;
    Popcast__Manifest *m = NULL;
    if (rec->signed_ != NULL)
        m = popcast__manifest__unpack(NULL, rec->signed_->manifest.len,
                                      rec->signed_->manifest.data);
    popcast__log_record__free_unpacked(rec, NULL);
    if (m == NULL)
        return NULL;
    char kid[PC_HEX_KEY_ID_LEN] = "";
    if (m->key_id.len == PC_KEY_ID_LEN)
        pc_hex(kid, m->key_id.data, PC_KEY_ID_LEN);
    json_t *v = json_pack("{s:I,s:I,s:s,s:I,s:s}", "version", (json_int_t)m->version, "seq",
                          (json_int_t)m->seq, "kind", kind_name(m->kind), "created_unix_ms",
                          (json_int_t)m->created_unix_ms, "key_id", kid);
    if (v != NULL && pc_manifest_has_content(m)) {
        json_object_set_new(v, "hash", hash_json(m->bundle_hash.data, m->bundle_hash.len));
        json_object_set_new(v, "size", json_integer((json_int_t)m->bundle_size));
        json_object_set_new(v, "entrypoint", json_string(m->entrypoint));
        json_object_set_new(v, "runtime", json_string(m->runtime));
    }
    if (v != NULL && m->rollback_of != 0)
        json_object_set_new(v, "rollback_of", json_integer((json_int_t)m->rollback_of));
    popcast__manifest__free_unpacked(m, NULL);
    return v;
}

typedef struct versions_walk {
    pc_api *api;
    json_t *list;
    const principal *who; /* tenants listing: only what it may see */
} versions_walk;

static int add_version(void *arg, uint64_t version, uint64_t seq)
{
    versions_walk *w = arg;
    json_t *v = version_json(w->api, seq);
    if (v == NULL)
        v = json_pack("{s:I,s:I,s:s}", "version", (json_int_t)version, "seq", (json_int_t)seq,
                      "error", "manifest unreadable");
    json_array_append_new(w->list, v);
    return 0;
}

static json_t *tenant_json(pc_api *api, const pc_tenant_state *t, int with_versions)
{
    json_t *o = json_pack("{s:s,s:I,s:I,s:b}", "tenant", t->tenant, "active_version",
                          (json_int_t)t->active_version, "last_version",
                          (json_int_t)t->last_version, "deleted", t->deleted);
    if (o == NULL)
        return NULL;
    if (t->active_version != 0) {
        json_object_set_new(o, "active_seq", json_integer((json_int_t)t->active_seq));
        json_object_set_new(o, "active_hash", hash_json(t->active_hash, PC_HASH_LEN));
    }
    if (with_versions) {
        versions_walk w = {api, json_array(), NULL};
        pc_store_foreach_version(api->store, t->tenant, add_version, &w, NULL);
        json_object_set_new(o, "versions", w.list);
    }
    return o;
}

static int add_tenant(void *arg, const pc_tenant_state *t)
{
    versions_walk *w = arg;
    if (w->who == NULL || may_use_tenant(w->who, t->tenant))
        json_array_append_new(w->list, tenant_json(w->api, t, 0));
    return 0;
}

static void get_tenants(pc_api *api, nng_aio *aio, const principal *who)
{
    versions_walk w = {api, json_array(), who};
    pc_err err;
    if (pc_store_foreach_tenant(api->store, add_tenant, &w, &err) != PC_OK) {
        json_decref(w.list);
        pc_httpd_reply_error(aio, 500, err.code, "%s", err.msg);
        return;
    }
    pc_httpd_reply_json(aio, 200, json_pack("{s:o}", "tenants", w.list));
}

static void get_tenant(pc_api *api, nng_aio *aio, const char *tenant, int versions_only)
{
    pc_tenant_state t;
    pc_err err;
    int rc = pc_store_get_tenant(api->store, tenant, &t, &err);
    if (rc == PC_E_NOTFOUND) {
        pc_httpd_reply_error(aio, 404, rc, "tenant %s not found", tenant);
        return;
    }
    if (rc != PC_OK) {
        pc_httpd_reply_error(aio, 500, rc, "%s", err.msg);
        return;
    }
    json_t *o = tenant_json(api, &t, 1);
    if (versions_only && o != NULL) {
        json_t *v =
            json_pack("{s:s,s:O}", "tenant", tenant, "versions", json_object_get(o, "versions"));
        json_decref(o);
        o = v;
    }
    pc_httpd_reply_json(aio, 200, o);
}

static void get_health(pc_api *api, nng_aio *aio)
{
    uint64_t applied = 0;
    pc_err err;
    if (pc_store_applied_seq(api->store, &applied, &err) != PC_OK) {
        pc_httpd_reply_error(aio, 503, err.code, "store: %s", err.msg);
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
    pc_httpd_reply_json(aio, 200, o);
}

static void get_metrics(pc_api *api, nng_aio *aio)
{
    char *text = pc_metrics_render_text(api->metrics);
    if (text == NULL) {
        pc_httpd_reply_error(aio, 500, PC_E_NOMEM, "out of memory");
        return;
    }
    pc_httpd_reply(aio, 200, "text/plain; version=0.0.4", text, strlen(text), NULL);
    free(text);
}

/* Writes. */

static void change_done(pc_change *c, const pc_change_result *r)
{
    nng_aio *aio = c->arg;
    pc_api *api = pc_httpd_data(aio);
    if (r->rc != PC_OK) {
        pc_metrics_inc(api->metrics, "popcast_controller_changes_failed_total", NULL);
        pc_httpd_reply_error(aio, pc_httpd_status_for(r->rc), r->rc, "%s", r->err.msg);
        return;
    }
    if (c->kind == PC_CHANGE_AGENT_ENROLL || c->kind == PC_CHANGE_AGENT_REVOKE) {
        pc_httpd_reply_json(aio, c->kind == PC_CHANGE_AGENT_ENROLL ? 201 : 200,
                            json_pack("{s:s,s:b}", "agent_id", c->agent_id, "revoked",
                                      c->kind == PC_CHANGE_AGENT_REVOKE));
        return;
    }
    if (c->kind == PC_CHANGE_TOKEN_CREATE || c->kind == PC_CHANGE_TOKEN_REVOKE) {
        json_t *o =
            json_pack("{s:s,s:b}", "id", c->token_id, "revoked", c->kind == PC_CHANGE_TOKEN_REVOKE);
        if (o != NULL && c->kind == PC_CHANGE_TOKEN_CREATE) {
            json_t *tenants = json_array();
            for (size_t i = 0; i < c->n_token_tenants; i++)
                json_array_append_new(tenants, json_string(c->token_tenants[i]));
            json_object_set_new(o, "tenants", tenants);
            json_object_set_new(o, "name", json_string(c->token_name));
            json_object_set_new(o, "token", json_string(c->token_secret));
        }
        sodium_memzero(c->token_secret, sizeof(c->token_secret));
        pc_httpd_reply_json(aio, c->kind == PC_CHANGE_TOKEN_CREATE ? 201 : 200, o);
        return;
    }
    if (c->kind == PC_CHANGE_KEY_ROTATE) {
        pc_public_key next;
        memcpy(next.pk, c->key_next, PC_PK_LEN);
        pc_key_id(next.id, next.pk);
        char id[PC_HEX_KEY_ID_LEN];
        pc_hex(id, next.id, PC_KEY_ID_LEN);
        pc_httpd_reply_json(aio, 201,
                            json_pack("{s:s,s:I,s:s,s:I}", "kind", "key_rotation", "seq",
                                      (json_int_t)r->seq, "key_id", id, "created_unix_ms",
                                      (json_int_t)r->created_unix_ms));
        return;
    }
    if (c->kind == PC_CHANGE_ADD_NODE || c->kind == PC_CHANGE_REMOVE_NODE) {
        pc_cluster_refresh(api->opt.cluster); /* on the loop: the answer shows the change */
        pc_httpd_reply_json(aio, 200, pc_cluster_info_json(api->opt.cluster));
        return;
    }
    pc_metrics_inc(api->metrics, "popcast_controller_changes_total", NULL);
    json_t *o = json_pack("{s:s,s:s,s:I,s:I,s:I}", "tenant", c->tenant, "kind", r->kind, "version",
                          (json_int_t)r->version, "seq", (json_int_t)r->seq, "created_unix_ms",
                          (json_int_t)r->created_unix_ms);
    if (o != NULL && c->kind != PC_CHANGE_DELETE) {
        json_object_set_new(o, "hash", hash_json(r->hash, PC_HASH_LEN));
        json_object_set_new(o, "size", json_integer((json_int_t)r->bundle_size));
        json_object_set_new(o, "entrypoint", json_string(r->entrypoint));
        json_object_set_new(o, "runtime", json_string(r->runtime));
    }
    if (o != NULL && r->rollback_of != 0)
        json_object_set_new(o, "rollback_of", json_integer((json_int_t)r->rollback_of));
    pc_httpd_reply_json(aio, c->kind == PC_CHANGE_DELETE ? 200 : 201, o);
}

static void submit(pc_api *api, nng_aio *aio, pc_change *c)
{
    pc_err err;
    c->done = change_done;
    c->arg = aio;
    if (pc_pipeline_submit(api->pipeline, c, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_reply_error(aio, 503, err.code, "%s", err.msg);
    }
}

static int runtime_allowed(pc_api *api, const char *runtime)
{
    for (size_t i = 0; i < api->opt.runtimes->count; i++)
        if (strcmp(api->opt.runtimes->items[i], runtime) == 0)
            return 1;
    return 0;
}

/* Which body formats an upload may use. */
static int content_is_archive(const char *ct)
{
    return ct == NULL || strncmp(ct, "application/vnd.popcast.bundle", 30) == 0 ||
           strncmp(ct, "application/octet-stream", 24) == 0;
}

static int content_is_single_file(const char *ct)
{
    return ct != NULL &&
           (strncmp(ct, "text/x-lua", 10) == 0 || strncmp(ct, "application/x-lua", 17) == 0 ||
            strncmp(ct, "text/plain", 10) == 0);
}

typedef struct upload {
    pc_api *api;
    char tenant[PC_TENANT_MAX + 1];
    char runtime[33];
    char entrypoint[PC_PATH_MAX + 1];
    int single_file;
} upload;

static void upload_body(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len)
{
    upload *u = arg;
    pc_api *api = u->api;
    pc_err err;
    uint8_t *archive = NULL;
    size_t archive_len = 0;
    pc_bundle *b = NULL;
    if (rc != PC_OK)
        goto out;
    if (u->single_file) {
        if (pc_bundle_pack_single(u->entrypoint, body, len, &archive, &archive_len, &err) !=
            PC_OK) {
            pc_httpd_reply_error(aio, 400, err.code, "%s", err.msg);
            goto out;
        }
        free(body);
        body = NULL;
    } else {
        archive = body;
        archive_len = len;
        body = NULL;
    }
    if (archive_len > api->opt.max_bundle) {
        pc_httpd_reply_error(aio, 413, PC_E_TOO_LARGE, "bundle of %zu bytes exceeds %zu",
                             archive_len, api->opt.max_bundle);
        goto out;
    }
    if ((rc = pc_bundle_open(archive, archive_len, &b, &err)) != PC_OK) {
        pc_httpd_reply_error(aio, pc_httpd_status_for(rc), rc, "%s", err.msg);
        goto out;
    }
    pc_version_spec spec = {.tenant = u->tenant,
                            .runtime = u->runtime,
                            .entrypoint = pc_bundle_entrypoint(b),
                            .bundle = archive,
                            .bundle_len = archive_len};
    if (strcmp(u->runtime, "lua") == 0 && api->opt.lua != NULL && api->opt.lua->check != NULL &&
        (rc = api->opt.lua->check(api->opt.lua, &spec, &err)) != PC_OK) {
        pc_httpd_reply_error(aio, 422, PC_E_RUNTIME, "the lua runtime cannot load %s: %s",
                             spec.entrypoint, err.msg);
        goto out;
    }
    pc_change *c = pc_change_new(PC_CHANGE_DEPLOY, u->tenant);
    if (c == NULL) {
        pc_httpd_reply_error(aio, 503, PC_E_NOMEM, "out of memory");
        goto out;
    }
    snprintf(c->entrypoint, sizeof(c->entrypoint), "%s", pc_bundle_entrypoint(b));
    snprintf(c->runtime, sizeof(c->runtime), "%s", u->runtime);
    c->bundle = archive;
    c->bundle_len = archive_len;
    archive = NULL;
    submit(api, aio, c);
out:
    pc_bundle_free(b);
    free(archive);
    free(body);
    free(u);
}

static void post_bundle(pc_api *api, nng_aio *aio, const char *tenant, const char *query)
{
    nng_http_req *req = pc_httpd_request(aio);
    const char *ct = nng_http_req_get_header(req, "Content-Type");
    upload *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        pc_httpd_reject(aio, 503, PC_E_NOMEM, "out of memory");
        return;
    }
    u->api = api;
    snprintf(u->tenant, sizeof(u->tenant), "%s", tenant);
    if (!pc_httpd_query_get(query, "runtime", u->runtime, sizeof(u->runtime)))
        snprintf(u->runtime, sizeof(u->runtime), "lua");
    if (!pc_httpd_query_get(query, "entrypoint", u->entrypoint, sizeof(u->entrypoint)))
        snprintf(u->entrypoint, sizeof(u->entrypoint), "%s", PC_BUNDLE_DEFAULT_ENTRYPOINT);
    if (!pc_runtime_name_valid(u->runtime) || !runtime_allowed(api, u->runtime)) {
        pc_httpd_reject(aio, 400, PC_E_INVALID, "runtime '%s' is not one this cluster accepts",
                        u->runtime);
        free(u);
        return;
    }
    if (content_is_single_file(ct)) {
        u->single_file = 1;
        if (!pc_bundle_path_valid(u->entrypoint)) {
            pc_httpd_reject(aio, 400, PC_E_INVALID, "entrypoint is not a valid bundle path");
            free(u);
            return;
        }
    } else if (!content_is_archive(ct)) {
        pc_httpd_reject(aio, 415, PC_E_INVALID,
                        "Content-Type must be application/vnd.popcast.bundle (an archive) or "
                        "text/x-lua (one file)");
        free(u);
        return;
    }
    pc_httpd_read_body(aio, api->opt.max_bundle, upload_body, u);
}

typedef struct json_write {
    pc_api *api;
    char tenant[PC_TENANT_MAX + 1];
} json_write;

static void rollback_body(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len)
{
    json_write *w = arg;
    if (rc != PC_OK)
        goto out;
    uint64_t version = 0;
    pc_err err;
    if (pc_api_parse_rollback(body, len, &version, &err) != PC_OK) {
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "%s", err.msg);
    } else {
        pc_change *c = pc_change_new(PC_CHANGE_ROLLBACK, w->tenant);
        if (c == NULL) {
            pc_httpd_reply_error(aio, 503, PC_E_NOMEM, "out of memory");
        } else {
            c->rollback_to = version;
            submit(w->api, aio, c);
        }
    }
out:
    free(body);
    free(w);
}

static void post_rollback(pc_api *api, nng_aio *aio, const char *tenant)
{
    json_write *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        pc_httpd_reject(aio, 503, PC_E_NOMEM, "out of memory");
        return;
    }
    w->api = api;
    snprintf(w->tenant, sizeof(w->tenant), "%s", tenant);
    pc_httpd_read_body(aio, JSON_BODY_MAX, rollback_body, w);
}

static void delete_tenant(pc_api *api, nng_aio *aio, const char *tenant)
{
    pc_change *c = pc_change_new(PC_CHANGE_DELETE, tenant);
    if (c == NULL) {
        pc_httpd_reject(aio, 503, PC_E_NOMEM, "out of memory");
        return;
    }
    submit(api, aio, c);
}

/* The cluster. */

/* A write reached a follower: send the client to the leader. The body is
 * still unread, so the connection closes after this answer. */
static void redirect_to_leader(pc_api *api, nng_aio *aio, const char *uri)
{
    char leader[256];
    if (!pc_cluster_leader_api(api->opt.cluster, leader, sizeof(leader))) {
        pc_httpd_reject(aio, 503, PC_E_UNAVAILABLE,
                        "no leader is known right now (an election is under way, or a majority "
                        "of controllers is unreachable): the write was not accepted; retry");
        return;
    }
    char location[1024];
    snprintf(location, sizeof(location), "%s%s", leader, uri);
    json_t *o =
        json_pack("{s:{s:s,s:s,s:s}}", "error", "code", pc_err_name(PC_E_NOT_LEADER), "message",
                  "this controller is a follower: send writes to the leader", "leader", leader);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    const char *headers[] = {"Location", location, "Connection", "close", NULL};
    pc_httpd_reply(aio, 307, "application/json", text ? text : "{}", text ? strlen(text) : 2,
                   headers);
    free(text);
}

static void get_cluster(pc_api *api, nng_aio *aio)
{
    pc_httpd_reply_json(aio, 200, pc_cluster_info_json(api->opt.cluster));
}

static void node_body(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != 0)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_ADD_NODE, "-");
    pc_err err;
    if (c == NULL) {
        pc_httpd_reply_error(aio, 503, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_node(body, len, &c->node_id, c->node_raft_address,
                                 sizeof(c->node_raft_address), c->node_api_url,
                                 sizeof(c->node_api_url), &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "%s", err.msg);
    } else {
        submit(api, aio, c);
    }
    free(body);
}

/* Rollouts. */

static void get_fleet(pc_api *api, nng_aio *aio)
{
    uint64_t head = 0;
    pc_store_applied_seq(api->store, &head, NULL);
    pc_httpd_reply_json(aio, 200, pc_rollout_fleet_json(api->rollout, head, pc_now_ms()));
}

static void rollout_done(void *arg, json_t *doc, const char *why)
{
    pc_httpd_reply_json(arg, 200, doc);
}

static int parse_u64_strict(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (s[0] < '0' || s[0] > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

/* The rollout of the change at seq (version 0) or of tenant's version. */
static void get_rollout(pc_api *api, nng_aio *aio, const char *tenant, uint64_t version,
                        uint64_t seq, const char *query)
{
    pc_err err;
    char buf[32];
    uint64_t wait_ms = 0;
    double fraction = 1.0;
    if (pc_httpd_query_get(query, "wait", buf, sizeof(buf)) &&
        (parse_u64_strict(buf, &wait_ms) != 0 || wait_ms > WAIT_MAX_MS)) {
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "wait must be milliseconds, at most %d",
                             WAIT_MAX_MS);
        return;
    }
    if (pc_httpd_query_get(query, "fraction", buf, sizeof(buf))) {
        char *end = NULL;
        fraction = strtod(buf, &end);
        if (end == buf || *end != '\0' || !(fraction > 0.0 && fraction <= 1.0)) {
            pc_httpd_reply_error(aio, 400, PC_E_INVALID, "fraction must be in (0, 1]");
            return;
        }
    }
    if (seq == 0) {
        int rc = pc_store_version_seq(api->store, tenant, version, &seq, &err);
        if (rc != PC_OK) {
            pc_httpd_reply_error(aio, rc == PC_E_NOTFOUND ? 404 : 500, rc,
                                 "tenant %s has no version %llu", tenant,
                                 (unsigned long long)version);
            return;
        }
    }
    Popcast__LogRecord *rec = NULL;
    int rc = pc_store_get_log(api->store, seq, &rec, &err);
    if (rc != PC_OK) {
        pc_httpd_reply_error(aio, rc == PC_E_NOTFOUND ? 404 : 500, rc, "no change with seq %llu",
                             (unsigned long long)seq);
        return;
    }
    Popcast__Manifest *m = rec->signed_
                               ? popcast__manifest__unpack(NULL, rec->signed_->manifest.len,
                                                           rec->signed_->manifest.data)
                               : NULL;
    popcast__log_record__free_unpacked(rec, NULL);
    if (m == NULL || m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_KEY_ROTATION) {
        if (m)
            popcast__manifest__free_unpacked(m, NULL);
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "seq %llu is not a tenant change",
                             (unsigned long long)seq);
        return;
    }
    char t[PC_TENANT_MAX + 1];
    snprintf(t, sizeof(t), "%s", m->tenant);
    pc_rollout_query q = {.tenant = t,
                          .version = m->version,
                          .seq = m->seq,
                          .is_delete = m->kind == POPCAST__ENTRY_KIND__ENTRY_KIND_DELETE,
                          .fraction = fraction};
    popcast__manifest__free_unpacked(m, NULL);
    if (wait_ms == 0) {
        pc_httpd_reply_json(aio, 200, pc_rollout_version_json(api->rollout, &q, pc_now_ms(), NULL));
        return;
    }
    if (pc_rollout_wait(api->rollout, &q, pc_now_ms() + (int64_t)wait_ms, rollout_done, aio,
                        &err) != PC_OK)
        pc_httpd_reply_error(aio, 503, err.code, "%s", err.msg);
}

static void method_not_allowed(nng_aio *aio, const char *method, const char *allowed)
{
    pc_httpd_reject(aio, 405, PC_E_INVALID, "method %s not allowed here (allowed: %s)", method,
                    allowed);
}

/* Agent identities (admin only). */

static void agent_body(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != 0)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_AGENT_ENROLL, "-");
    pc_err err;
    if (c == NULL) {
        pc_httpd_reply_error(aio, 503, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_agent(body, len, c->agent_id, sizeof(c->agent_id), c->agent_pk, &err) !=
               PC_OK) {
        pc_change_free(c);
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "%s", err.msg);
    } else {
        submit(api, aio, c);
    }
    free(body);
}

static int add_agent(void *arg, const char *key, const uint8_t *val, size_t len)
{
    json_t *list = arg;
    Popcast__AgentRecord *a = popcast__agent_record__unpack(NULL, len, val);
    if (a == NULL || a->public_key.len != PC_PK_LEN) {
        if (a != NULL)
            popcast__agent_record__free_unpacked(a, NULL);
        return 0;
    }
    pc_public_key pk;
    memcpy(pk.pk, a->public_key.data, PC_PK_LEN);
    pc_key_id(pk.id, pk.pk);
    char text[128], id[PC_HEX_KEY_ID_LEN];
    pc_key_format_public(&pk, text, sizeof(text));
    pc_hex(id, pk.id, PC_KEY_ID_LEN);
    json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:I,s:b}", "agent_id", a->agent_id,
                                          "public_key", text, "key_id", id, "enrolled_unix_ms",
                                          (json_int_t)a->enrolled_unix_ms, "revoked", a->revoked));
    popcast__agent_record__free_unpacked(a, NULL);
    return 0;
}

/* Signing keys (admin only). */

static void rotation_body(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != 0)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_KEY_ROTATE, "-");
    pc_err err;
    int has_root = 0;
    if (c == NULL) {
        pc_httpd_reply_error(aio, 503, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_rotation(body, len, c->key_next, c->key_root, &has_root,
                                     &c->key_authorization, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "%s", err.msg);
    } else {
        c->key_sign_with_root = has_root != 0;
        submit(api, aio, c);
    }
    free(body);
}

static json_t *key_json(const pc_public_key *k, pc_signer *signer)
{
    char text[128], id[PC_HEX_KEY_ID_LEN];
    pc_key_format_public(k, text, sizeof(text));
    pc_hex(id, k->id, PC_KEY_ID_LEN);
    return json_pack("{s:s,s:s,s:b}", "key_id", id, "public_key", text, "held",
                     pc_signer_held(signer, k->pk) != NULL);
}

static int add_rotation(void *arg, uint64_t seq, const pc_public_key *next,
                        const uint8_t signer_id[PC_KEY_ID_LEN], int64_t created_unix_ms)
{
    json_t *list = arg;
    char by[PC_HEX_KEY_ID_LEN];
    pc_hex(by, signer_id, PC_KEY_ID_LEN);
    char id[PC_HEX_KEY_ID_LEN];
    pc_hex(id, next->id, PC_KEY_ID_LEN);
    json_array_append_new(list, json_pack("{s:I,s:s,s:s,s:I}", "seq", (json_int_t)seq, "key_id", id,
                                          "signed_by", by, "created_unix_ms",
                                          (json_int_t)created_unix_ms));
    return 0;
}

static void get_keys(pc_api *api, nng_aio *aio)
{
    pc_signer *signer = api->opt.signer;
    pc_public_key cur;
    uint64_t since = 0;
    pc_err err;
    json_t *rotations = json_array();
    if (pc_signer_foreach_rotation(signer, add_rotation, rotations, &err) != PC_OK) {
        json_decref(rotations);
        pc_httpd_reply_error(aio, 500, err.code, "%s", err.msg);
        return;
    }
    /* null: no rotation yet and no root key held (roots kept offline). */
    json_t *current = pc_signer_current_public(signer, &cur, &since, &err) == PC_OK
                          ? key_json(&cur, signer)
                          : json_null();
    json_t *roots = json_array();
    const pc_keyring *ring = pc_signer_roots(signer);
    for (size_t i = 0; i < ring->count; i++)
        json_array_append_new(roots, key_json(&ring->keys[i], signer));
    pc_httpd_reply_json(aio, 200,
                        json_pack("{s:o,s:I,s:o,s:o}", "current", current, "current_since_seq",
                                  (json_int_t)since, "roots", roots, "rotations", rotations));
}

static void keys_route(pc_api *api, nng_aio *aio, const char *method, const pc_httpd_path *p)
{
    if (p->n == 2) {
        if (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0)
            get_keys(api, aio);
        else
            method_not_allowed(aio, method, "GET");
    } else if (p->n == 3 && strcmp(p->seg[2], "rotate") == 0) {
        if (strcmp(method, "POST") == 0)
            pc_httpd_read_body(aio, 4096, rotation_body, api);
        else
            method_not_allowed(aio, method, "POST");
    } else {
        pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "no such resource");
    }
}

/* Tokens (admin only). */

static void token_body(void *arg, nng_aio *aio, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != 0)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_TOKEN_CREATE, "-");
    pc_err err;
    if (c == NULL) {
        pc_httpd_reply_error(aio, 503, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_token(body, len, c->token_name, sizeof(c->token_name),
                                  &c->token_tenants[0][0], sizeof(c->token_tenants[0]),
                                  PC_TOKEN_MAX_TENANTS, &c->n_token_tenants, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_reply_error(aio, 400, PC_E_INVALID, "%s", err.msg);
    } else {
        /* The token itself exists only in this answer; the store keeps
         * its hash. */
        uint8_t secret[32];
        randombytes_buf(secret, sizeof(secret));
        snprintf(c->token_secret, sizeof(c->token_secret), "pct_");
        pc_hex(c->token_secret + 4, secret, sizeof(secret));
        sodium_memzero(secret, sizeof(secret));
        pc_hash(c->token_hash, c->token_secret, strlen(c->token_secret));
        char hex[PC_HEX_HASH_LEN];
        pc_hex(hex, c->token_hash, PC_HASH_LEN);
        snprintf(c->token_id, sizeof(c->token_id), "%.16s", hex);
        submit(api, aio, c);
    }
    free(body);
}

static int add_token(void *arg, const char *key, const uint8_t *val, size_t len)
{
    json_t *list = arg;
    Popcast__TokenRecord *t = popcast__token_record__unpack(NULL, len, val);
    if (t == NULL)
        return 0;
    json_t *tenants = json_array();
    for (size_t i = 0; i < t->n_tenants; i++)
        json_array_append_new(tenants, json_string(t->tenants[i]));
    json_array_append_new(list, json_pack("{s:s,s:s,s:o,s:I,s:b}", "id", t->id, "name", t->name,
                                          "tenants", tenants, "created_unix_ms",
                                          (json_int_t)t->created_unix_ms, "revoked", t->revoked));
    popcast__token_record__free_unpacked(t, NULL);
    return 0;
}

/* Tokens and agents are the same kind of resource: created by POSTing a
 * body, listed from their meta records, revoked by id through the log. */
typedef struct collection {
    const char *name;        /* the list's key in the GET answer */
    const char *meta_prefix; /* where the records live in the store */
    int (*add)(void *list, const char *key, const uint8_t *val, size_t len);
    pc_httpd_body_cb create;
    bool (*id_valid)(const char *id);
    const char *bad_id; /* the 400 message for an id that cannot exist */
    pc_change_kind revoke;
} collection;

static bool token_id_valid(const char *id)
{
    return strlen(id) == 16 && strspn(id, "0123456789abcdef") == 16;
}

static bool agent_id_valid(const char *id)
{
    return pc_id_valid(id);
}

static const collection tokens = {"tokens",
                                  "token.",
                                  add_token,
                                  token_body,
                                  token_id_valid,
                                  "a token id is 16 hex digits",
                                  PC_CHANGE_TOKEN_REVOKE};
static const collection agents = {"agents",
                                  "agent.",
                                  add_agent,
                                  agent_body,
                                  agent_id_valid,
                                  "not an agent id",
                                  PC_CHANGE_AGENT_REVOKE};

static void collection_route(pc_api *api, nng_aio *aio, const char *method, const pc_httpd_path *p,
                             const collection *col)
{
    if (p->n == 2 && strcmp(method, "POST") == 0) {
        pc_httpd_read_body(aio, 4096, col->create, api);
    } else if (p->n == 2 && strcmp(method, "GET") == 0) {
        json_t *list = json_array();
        pc_err err;
        if (pc_store_meta_foreach(api->store, col->meta_prefix, col->add, list, &err) != PC_OK) {
            json_decref(list);
            pc_httpd_reply_error(aio, 500, err.code, "%s", err.msg);
            return;
        }
        pc_httpd_reply_json(aio, 200, json_pack("{s:o}", col->name, list));
    } else if (p->n == 3 && strcmp(method, "DELETE") == 0) {
        if (!col->id_valid(p->seg[2])) {
            pc_httpd_reject(aio, 400, PC_E_INVALID, "%s", col->bad_id);
            return;
        }
        pc_change *c = pc_change_new(col->revoke, "-");
        if (c == NULL) {
            pc_httpd_reject(aio, 503, PC_E_NOMEM, "out of memory");
            return;
        }
        if (col->revoke == PC_CHANGE_TOKEN_REVOKE)
            snprintf(c->token_id, sizeof(c->token_id), "%s", p->seg[2]);
        else
            snprintf(c->agent_id, sizeof(c->agent_id), "%s", p->seg[2]);
        submit(api, aio, c);
    } else if (p->n == 2) {
        method_not_allowed(aio, method, "GET, POST");
    } else if (p->n == 3) {
        method_not_allowed(aio, method, "DELETE");
    } else {
        pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "no such resource");
    }
}

static void route(nng_aio *aio)
{
    pc_api *api = pc_httpd_data(aio);
    principal who = {false, NULL};
    nng_http_req *req = pc_httpd_request(aio);
    const char *method = nng_http_req_get_method(req);
    int is_get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    pc_httpd_path p;
    if (pc_httpd_split_path(nng_http_req_get_uri(req), &p) != PC_OK) {
        pc_httpd_path_free(&p);
        pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "no such resource");
        return;
    }
    pc_metrics_inc(api->metrics, "popcast_api_requests_total", NULL);

    if (p.n == 1 && strcmp(p.seg[0], "metrics") == 0 && is_get) {
        get_metrics(api, aio);
        goto done;
    }
    if (p.n < 2 || strcmp(p.seg[0], "v1") != 0) {
        pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "no such resource");
        goto done;
    }
    if (p.n == 2 && strcmp(p.seg[1], "health") == 0) {
        if (is_get)
            get_health(api, aio);
        else
            method_not_allowed(aio, method, "GET");
        goto done;
    }
    if (!authenticate(api, req, &who)) {
        pc_httpd_reject(aio, 401, PC_E_AUTH,
                        "missing, wrong or revoked bearer token (Authorization: Bearer <token>)");
        goto done;
    }
    bool tenant_route = strcmp(p.seg[1], "tenants") == 0;
    if (!who.admin && !tenant_route) {
        pc_httpd_reject(aio, 403, PC_E_FORBIDDEN,
                        "this token is scoped to tenants; this endpoint needs the admin token");
        goto done;
    }
    if (tenant_route && p.n >= 3 && !may_use_tenant(&who, p.seg[2])) {
        /* The same answer as for a tenant that does not exist: a scoped
         * token learns nothing about other tenants. */
        pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "tenant %s not found", p.seg[2]);
        goto done;
    }
    const char *uri = nng_http_req_get_uri(req);
    bool cluster_write = p.n >= 2 &&
                         (strcmp(p.seg[1], "cluster") == 0 || strcmp(p.seg[1], "tokens") == 0 ||
                          strcmp(p.seg[1], "agents") == 0 || strcmp(p.seg[1], "keys") == 0) &&
                         !is_get;
    bool tenant_write = p.n >= 3 && strcmp(p.seg[1], "tenants") == 0 && !is_get;
    if ((cluster_write || tenant_write) && api->opt.cluster != NULL &&
        !pc_cluster_is_leader(api->opt.cluster)) {
        redirect_to_leader(api, aio, uri);
        goto done;
    }
    if (p.n == 2 && strcmp(p.seg[1], "cluster") == 0) {
        if (is_get)
            get_cluster(api, aio);
        else
            method_not_allowed(aio, method, "GET");
        goto done;
    }
    if (p.n == 3 && strcmp(p.seg[1], "cluster") == 0 && strcmp(p.seg[2], "nodes") == 0) {
        if (strcmp(method, "POST") == 0)
            pc_httpd_read_body(aio, 4096, node_body, api);
        else
            method_not_allowed(aio, method, "POST");
        goto done;
    }
    if (p.n == 4 && strcmp(p.seg[1], "cluster") == 0 && strcmp(p.seg[2], "nodes") == 0) {
        uint64_t id = 0;
        pc_change *c = NULL;
        if (strcmp(method, "DELETE") != 0)
            method_not_allowed(aio, method, "DELETE");
        else if (parse_u64_strict(p.seg[3], &id) != 0 || id == 0)
            pc_httpd_reject(aio, 400, PC_E_INVALID, "node id must be a number >= 1");
        else if ((c = pc_change_new(PC_CHANGE_REMOVE_NODE, "-")) == NULL)
            pc_httpd_reject(aio, 503, PC_E_NOMEM, "out of memory");
        else {
            c->node_id = id;
            submit(api, aio, c);
        }
        goto done;
    }
    if (!is_get) {
        /* Bounded write rates per token: one token cannot flood the log. */
        int64_t retry = 0;
        pc_ratelimit *limit = who.admin ? api->admin_writes : api->token_writes;
        if (!pc_ratelimit_take(limit, who.admin ? "admin" : who.token->id, pc_now_ms(), &retry)) {
            char secs[24], msg[160];
            snprintf(secs, sizeof(secs), "%lld", (long long)(retry + 999) / 1000);
            snprintf(msg, sizeof(msg),
                     "{\"error\":{\"code\":\"limit_exceeded\",\"message\":\"too many changes "
                     "with this token; retry in %lld ms\"}}",
                     (long long)retry);
            const char *headers[] = {"Retry-After", secs, "Connection", "close", NULL};
            pc_httpd_reply(aio, 429, "application/json", msg, strlen(msg), headers);
            goto done;
        }
    }
    if (strcmp(p.seg[1], "tokens") == 0) {
        collection_route(api, aio, method, &p, &tokens);
        goto done;
    }
    if (strcmp(p.seg[1], "agents") == 0) {
        collection_route(api, aio, method, &p, &agents);
        goto done;
    }
    if (strcmp(p.seg[1], "keys") == 0) {
        keys_route(api, aio, method, &p);
        goto done;
    }
    if (p.n == 2 && strcmp(p.seg[1], "fleet") == 0) {
        if (is_get)
            get_fleet(api, aio);
        else
            method_not_allowed(aio, method, "GET");
        goto done;
    }
    if (p.n == 3 && strcmp(p.seg[1], "rollout") == 0) {
        uint64_t seq = 0;
        if (!is_get)
            method_not_allowed(aio, method, "GET");
        else if (parse_u64_strict(p.seg[2], &seq) != 0 || seq == 0)
            pc_httpd_reject(aio, 400, PC_E_INVALID, "seq must be a number >= 1");
        else
            get_rollout(api, aio, NULL, 0, seq, p.query);
        goto done;
    }
    if (strcmp(p.seg[1], "tenants") != 0) {
        pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "no such resource");
        goto done;
    }
    if (p.n == 2) {
        if (is_get)
            get_tenants(api, aio, &who);
        else
            method_not_allowed(aio, method, "GET");
        goto done;
    }
    const char *tenant = p.seg[2];
    if (!pc_tenant_name_valid(tenant)) {
        pc_httpd_reject(aio, 400, PC_E_INVALID,
                        "tenant names are 1 to 63 characters of a-z, 0-9 and '-'");
        goto done;
    }
    if (p.n == 3) {
        if (is_get)
            get_tenant(api, aio, tenant, 0);
        else if (strcmp(method, "DELETE") == 0)
            delete_tenant(api, aio, tenant);
        else
            method_not_allowed(aio, method, "GET, DELETE");
        goto done;
    }
    if (p.n == 4 && strcmp(p.seg[3], "versions") == 0) {
        if (is_get)
            get_tenant(api, aio, tenant, 1);
        else
            method_not_allowed(aio, method, "GET");
        goto done;
    }
    if (p.n == 4 && strcmp(p.seg[3], "bundles") == 0) {
        if (strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0)
            post_bundle(api, aio, tenant, p.query);
        else
            method_not_allowed(aio, method, "POST, PUT");
        goto done;
    }
    if (p.n == 4 && strcmp(p.seg[3], "rollback") == 0) {
        if (strcmp(method, "POST") == 0)
            post_rollback(api, aio, tenant);
        else
            method_not_allowed(aio, method, "POST");
        goto done;
    }
    if (p.n == 6 && strcmp(p.seg[3], "versions") == 0 && strcmp(p.seg[5], "rollout") == 0) {
        uint64_t version = 0;
        if (!is_get)
            method_not_allowed(aio, method, "GET");
        else if (parse_u64_strict(p.seg[4], &version) != 0 || version == 0)
            pc_httpd_reject(aio, 400, PC_E_INVALID, "version must be a number >= 1");
        else
            get_rollout(api, aio, tenant, version, 0, p.query);
        goto done;
    }
    pc_httpd_reject(aio, 404, PC_E_NOTFOUND, "no such resource");
done:
    if (who.token != NULL)
        popcast__token_record__free_unpacked(who.token, NULL);
    pc_httpd_path_free(&p);
}

/* Every answer says which role this node had: reads from a follower may
 * lag the leader (they never include unacknowledged writes, but may miss
 * acknowledged ones for a moment). */
static size_t role_headers(void *arg, const char **out, size_t cap)
{
    pc_api *api = arg;
    if (cap < 1 || api->opt.cluster == NULL)
        return 0;
    bool leader = pc_cluster_is_leader(api->opt.cluster);
    out[0] = "X-Popcast-Read";
    out[1] = leader ? "leader" : "follower; may be stale";
    return 1;
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
    api->token_writes = pc_ratelimit_new(opt->token_write_rate, opt->token_write_burst, 4096);
    api->admin_writes = pc_ratelimit_new(opt->admin_write_rate, opt->admin_write_burst, 1);
    pc_httpd_set_extra_headers(role_headers, api);
    int rc = pc_httpd_start(opt->listen_url, opt->tls, "/", route, api, &api->server, err);
    if (rc != PC_OK) {
        pc_httpd_set_extra_headers(NULL, NULL);
        pc_ratelimit_free(api->token_writes);
        pc_ratelimit_free(api->admin_writes);
        free(api->node_id);
        free(api);
        return rc;
    }
    *out = api;
    return PC_OK;
}

void pc_api_stop(pc_api *api)
{
    if (api == NULL)
        return;
    pc_httpd_stop(api->server);
    pc_httpd_set_extra_headers(NULL, NULL);
    pc_ratelimit_free(api->token_writes);
    pc_ratelimit_free(api->admin_writes);
    free(api->node_id);
    free(api);
}
