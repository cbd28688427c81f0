/* api_tenants.c - tenants, their versions, uploads, rollbacks and deletes
 * (docs/api.md "Tenants"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_bodies.h"
#include "api_internal.h"
#include "registry.h"
#include "deployment.h"
#include "target.h"
#include "bundle.h"
#include "envelope.h"
#include "json_text.h"
#include "rollback_target.h"

#define JSON_BODY_MAX (64 * 1024)

/* One version as JSON, from its stored manifest. */
static json_t *version_json(pc_api *api, uint64_t seq)
{
    Popcast__Manifest *m = NULL;
    if (pc_store_get_manifest(api->store, seq, &m, NULL) != PC_OK)
        return NULL;
    char kid[PC_HEX_KEY_ID_LEN] = "";
    if (m->key_id.len == PC_KEY_ID_LEN)
        pc_hex(kid, m->key_id.data, PC_KEY_ID_LEN);
    json_t *v = json_pack("{s:I,s:I,s:s,s:I,s:s}", "version", (json_int_t)m->version, "seq",
                          (json_int_t)m->seq, "kind", pc_entry_kind_name(m->kind),
                          "created_unix_ms", (json_int_t)m->created_unix_ms, "key_id", kid);
    if (v != NULL && pc_manifest_has_content(m)) {
        json_object_set_new(v, "hash", api_hash_json(m->bundle_hash.data, m->bundle_hash.len));
        json_object_set_new(v, "size", json_integer((json_int_t)m->bundle_size));
        pc_json_set_text(v, "entrypoint", m->entrypoint);
        pc_json_set_text(v, "runtime", m->runtime);
    }
    if (v != NULL && m->rollback_of != 0)
        json_object_set_new(v, "rollback_of", json_integer((json_int_t)m->rollback_of));
    if (v != NULL && m->target != NULL)
        json_object_set_new(v, "target", pc_target_json(m->target));
    if (v != NULL && m->author != NULL && m->author[0] != '\0')
        pc_json_set_text(v, "author", m->author);
    if (v != NULL && m->message != NULL && m->message[0] != '\0')
        pc_json_set_text(v, "message", m->message);
    popcast__manifest__free_unpacked(m, NULL);
    return v;
}

typedef struct tenants_walk {
    pc_api *api;
    json_t *list;
    const api_principal *who; /* tenants listing: only what it may see */
} tenants_walk;

static int add_version(void *arg, uint64_t version, uint64_t seq)
{
    tenants_walk *w = arg;
    json_t *v = version_json(w->api, seq);
    if (v == NULL)
        v = json_pack("{s:I,s:I,s:s}", "version", (json_int_t)version, "seq", (json_int_t)seq,
                      "error", "manifest unreadable");
    json_array_append_new(w->list, v);
    return 0;
}

/* Each version lists the deployments of it and how each ended (its
 * history: records are never rewritten). */
static int attach_deployment(void *arg, const Popcast__DeploymentRecord *d)
{
    size_t i;
    json_t *v;
    json_array_foreach((json_t *)arg, i, v)
    {
        if (json_integer_value(json_object_get(v, "version")) != (json_int_t)d->version)
            continue;
        json_t *list = json_object_get(v, "deployments");
        if (list == NULL) {
            list = json_array();
            json_object_set_new(v, "deployments", list);
        }
        json_array_append_new(list, json_pack("{s:I,s:s}", "id", (json_int_t)d->id, "state",
                                              pc_deployment_state_name(d->state)));
    }
    return 0;
}

/* NULL with err set when the tenant's versions cannot be read. */
static json_t *tenant_json(pc_api *api, const pc_tenant_state *t, bool with_versions, pc_err *err)
{
    json_t *o = json_pack("{s:s,s:I,s:I,s:b}", "tenant", t->tenant, "active_version",
                          (json_int_t)t->active_version, "last_version",
                          (json_int_t)t->last_version, "deleted", t->deleted);
    if (o == NULL) {
        pc_err_set(err, PC_E_NOMEM, "out of memory");
        return NULL;
    }
    if (t->active_version != 0) {
        json_object_set_new(o, "active_seq", json_integer((json_int_t)t->active_seq));
        json_object_set_new(o, "active_hash", api_hash_json(t->active_hash, PC_HASH_LEN));
    }
    /* The last stage of the active version: where it is targeted now. */
    Popcast__Manifest *stage = NULL;
    if (t->stage_seq != 0 &&
        pc_store_get_manifest(api->store, t->stage_seq, &stage, NULL) == PC_OK) {
        json_t *sj =
            json_pack("{s:I,s:I,s:o}", "seq", (json_int_t)stage->seq, "created_unix_ms",
                      (json_int_t)stage->created_unix_ms, "target", pc_target_json(stage->target));
        if (stage->author != NULL && stage->author[0] != '\0')
            pc_json_set_text(sj, "author", stage->author);
        if (stage->message != NULL && stage->message[0] != '\0')
            pc_json_set_text(sj, "message", stage->message);
        json_object_set_new(o, "stage", sj);
        popcast__manifest__free_unpacked(stage, NULL);
    }
    if (with_versions) {
        tenants_walk w = {api, json_array(), NULL};
        int rc = pc_store_foreach_version(api->store, t->tenant, add_version, &w, err);
        if (rc == PC_OK)
            rc = pc_registry_foreach_deployment(api->store, t->tenant, attach_deployment, w.list,
                                                err);
        json_object_set_new(o, "versions", w.list);
        if (rc != PC_OK) {
            /* A partial history would look complete: refuse instead. */
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static int add_tenant(void *arg, const pc_tenant_state *t)
{
    tenants_walk *w = arg;
    if (api_may_use_tenant(w->who, t->tenant))
        json_array_append_new(w->list, tenant_json(w->api, t, false, NULL));
    return 0;
}

void api_get_tenants(api_call *call)
{
    tenants_walk w = {call->api, json_array(), call->who};
    pc_err err;
    if (pc_store_foreach_tenant(call->api->store, add_tenant, &w, &err) != PC_OK) {
        json_decref(w.list);
        pc_httpd_error(call->rq, err.code, "%s", err.msg);
        return;
    }
    pc_httpd_reply_json(call->rq, 200, json_pack("{s:o}", "tenants", w.list), NULL);
}

static void reply_tenant(api_call *call, bool versions_only)
{
    const char *tenant = pc_route_param(call->match, "tenant");
    pc_tenant_state t;
    pc_err err;
    int rc = pc_store_get_tenant(call->api->store, tenant, &t, &err);
    if (rc == PC_E_NOTFOUND) {
        pc_httpd_error(call->rq, rc, "tenant %s not found", tenant);
        return;
    }
    if (rc != PC_OK) {
        pc_httpd_error(call->rq, rc, "%s", err.msg);
        return;
    }
    json_t *o = tenant_json(call->api, &t, true, &err);
    if (o == NULL) {
        pc_httpd_error(call->rq, err.code, "%s", err.msg);
        return;
    }
    if (versions_only) {
        json_t *v =
            json_pack("{s:s,s:O}", "tenant", tenant, "versions", json_object_get(o, "versions"));
        json_decref(o);
        o = v;
    } else {
        /* What was asked for (active_version: the controllers' state) next
         * to what the agents serve, which may differ for good (a version
         * every agent nacked) or for a while (a rollout in progress). */
        json_t *serving = pc_rollout_serving_json(call->api->rollout, tenant, pc_mono_ms());
        json_object_set_new(o, "serving", serving ? serving : json_null());
    }
    pc_httpd_reply_json(call->rq, 200, o, NULL);
}

void api_get_tenant(api_call *call)
{
    reply_tenant(call, false);
}

void api_get_versions(api_call *call)
{
    reply_tenant(call, true);
}

json_t *api_tenant_change_json(const pc_change *c, const pc_change_result *r)
{
    json_t *o =
        json_pack("{s:s,s:s,s:I,s:I,s:I}", "tenant", c->tenant, "kind",
                  pc_change_kind_get(c->kind)->name, "version", (json_int_t)r->version, "seq",
                  (json_int_t)r->seq, "created_unix_ms", (json_int_t)r->created_unix_ms);
    if (o != NULL && c->kind != PC_CHANGE_DELETE && c->kind != PC_CHANGE_STAGE) {
        json_object_set_new(o, "hash", api_hash_json(r->hash, PC_HASH_LEN));
        json_object_set_new(o, "size", json_integer((json_int_t)r->bundle_size));
        pc_json_set_text(o, "entrypoint", r->entrypoint);
        pc_json_set_text(o, "runtime", r->runtime);
    }
    if (o != NULL && (c->target != NULL || c->kind == PC_CHANGE_STAGE))
        json_object_set_new(o, "target", pc_target_json(c->target));
    if (o != NULL && r->rollback_of != 0)
        json_object_set_new(o, "rollback_of", json_integer((json_int_t)r->rollback_of));
    if (o != NULL && r->author[0] != '\0')
        pc_json_set_text(o, "author", r->author);
    if (o != NULL && r->message[0] != '\0')
        pc_json_set_text(o, "message", r->message);
    return o;
}

/* Who and why: set on every tenant change. */

void api_author_of(const api_principal *who, char out[PC_CHANGE_AUTHOR_MAX + 1])
{
    if (who == NULL || who->admin || who->token == NULL)
        snprintf(out, PC_CHANGE_AUTHOR_MAX + 1, "admin");
    else
        snprintf(out, PC_CHANGE_AUTHOR_MAX + 1, "token:%s", who->token->id);
}

/* The request's ?message= (percent-encoded) into out ("" when absent);
 * false, after answering 400, when it is not a valid message. */
static bool message_of_query(pc_httpd_req *rq, const char *query,
                             char out[PC_CHANGE_MESSAGE_MAX + 1])
{
    int rc = pc_httpd_query_text(query, "message", out, PC_CHANGE_MESSAGE_MAX + 1);
    if (rc == PC_E_NOTFOUND) {
        out[0] = '\0';
        return true;
    }
    if (rc != PC_OK || !pc_change_message_valid(out)) {
        pc_httpd_error(rq, PC_E_INVALID, "message must be %s (percent-encoded in the query)",
                       PC_CHANGE_MESSAGE_RULE);
        return false;
    }
    return true;
}

/* Uploads. */

bool api_runtime_allowed(pc_api *api, const char *runtime)
{
    for (size_t i = 0; i < api->opt.runtimes->count; i++)
        if (strcmp(api->opt.runtimes->items[i], runtime) == 0)
            return true;
    return false;
}

/* Which body formats an upload may use. */
static bool content_is_archive(const char *ct)
{
    return ct == NULL || strncmp(ct, "application/vnd.popcast.bundle", 30) == 0 ||
           strncmp(ct, "application/octet-stream", 24) == 0;
}

static bool content_is_single_file(const char *ct)
{
    return ct != NULL &&
           (strncmp(ct, "text/x-lua", 10) == 0 || strncmp(ct, "application/x-lua", 17) == 0 ||
            strncmp(ct, "text/plain", 10) == 0);
}

/* Where a deploy goes live, from its query (docs/api.md "Targets"):
 * target_agents and target_pops (comma-separated names), target_permille
 * (0..1000), or hold=true (nowhere: an upload). *out stays NULL when the
 * query names none of them (every agent). */
#define TARGET_QUERY_MAX (PC_TARGET_MAX_NAMES * (PC_ID_MAX + 1) + 1)

/* Whether the query has key at all, whatever its value's length (a
 * value too long to read must be refused, not taken as absent). */
static bool query_has(const char *query, const char *key)
{
    size_t klen = strlen(key);
    for (const char *p = query; p != NULL && *p != '\0';) {
        if (strncmp(p, key, klen) == 0 && (p[klen] == '=' || p[klen] == '&' || p[klen] == '\0'))
            return true;
        p = strchr(p, '&');
        if (p != NULL)
            p++;
    }
    return false;
}

static int add_query_names(const char *query, const char *key, Popcast__Target *t, bool pops,
                           pc_err *err)
{
    if (!query_has(query, key))
        return PC_OK;
    char *list = malloc(TARGET_QUERY_MAX);
    if (list == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rc = PC_OK;
    if (!pc_httpd_query_get(query, key, list, TARGET_QUERY_MAX))
        rc = pc_err_set(err, PC_E_INVALID, "%s names more than a target may", key);
    /* Every comma-separated item must be a name: "a,,b" or "" is refused,
     * never read as fewer names (or as nobody). */
    for (char *name = list, *next; rc == PC_OK && name != NULL; name = next) {
        next = strchr(name, ',');
        if (next != NULL)
            *next++ = '\0';
        rc = pops ? pc_target_add_pop(t, name, err) : pc_target_add_agent(t, name, err);
    }
    free(list);
    return rc;
}

static int target_of_query(const char *query, Popcast__Target **out, pc_err *err)
{
    *out = NULL;
    char buf[16];
    bool hold = query_has(query, "hold");
    if (hold && (!pc_httpd_query_get(query, "hold", buf, sizeof(buf)) || strcmp(buf, "true") != 0))
        return pc_err_set(err, PC_E_INVALID, "hold must be true (or left out)");
    bool named = query_has(query, "target_agents") || query_has(query, "target_pops") ||
                 query_has(query, "target_permille");
    if (hold && named)
        return pc_err_set(err, PC_E_INVALID, "hold=true targets nobody: name no target with it");
    if (!hold && !named)
        return PC_OK;
    Popcast__Target *t = pc_target_new();
    if (t == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rc = add_query_names(query, "target_agents", t, false, err);
    if (rc == PC_OK)
        rc = add_query_names(query, "target_pops", t, true, err);
    uint64_t permille = 0;
    if (rc == PC_OK && query_has(query, "target_permille") &&
        (!pc_httpd_query_get(query, "target_permille", buf, sizeof(buf)) ||
         api_parse_u64(buf, &permille) != 0 || permille > PC_TARGET_EVERYONE))
        rc = pc_err_set(err, PC_E_INVALID, "target_permille must be an integer from 0 to 1000");
    t->permille = (uint32_t)permille;
    if (rc != PC_OK) {
        popcast__target__free_unpacked(t, NULL);
        return rc;
    }
    *out = t;
    return PC_OK;
}

typedef struct upload {
    pc_api *api;
    Popcast__Target *target; /* NULL: everyone */
    char tenant[PC_TENANT_MAX + 1];
    char runtime[PC_RUNTIME_NAME_MAX + 1];
    char entrypoint[PC_PATH_MAX + 1];
    bool single_file;
    char author[PC_CHANGE_AUTHOR_MAX + 1];
    char message[PC_CHANGE_MESSAGE_MAX + 1];
} upload;

pc_change *api_deploy_change(pc_api *api, const char *tenant, const char *runtime,
                             const char *entrypoint, bool single_file, uint8_t *body, size_t len,
                             pc_err *err)
{
    uint8_t *archive = NULL;
    size_t archive_len = 0;
    pc_bundle *b = NULL;
    pc_change *c = NULL;
    if (single_file) {
        if (pc_bundle_pack_single(entrypoint, body, len, &archive, &archive_len, err) != PC_OK)
            goto out;
    } else {
        archive = body;
        archive_len = len;
        body = NULL;
    }
    if (archive_len > api->opt.max_bundle) {
        pc_err_set(err, PC_E_TOO_LARGE, "bundle of %zu bytes exceeds %zu", archive_len,
                   api->opt.max_bundle);
        goto out;
    }
    if (pc_bundle_open(archive, archive_len, &b, err) != PC_OK)
        goto out;
    pc_version_spec spec = {.tenant = tenant,
                            .runtime = runtime,
                            .entrypoint = pc_bundle_entrypoint(b),
                            .bundle = archive,
                            .bundle_len = archive_len};
    pc_err lerr;
    if (strcmp(runtime, "lua") == 0 && api->opt.lua != NULL && api->opt.lua->check != NULL &&
        api->opt.lua->check(api->opt.lua, &spec, &lerr) != PC_OK) {
        pc_err_set(err, PC_E_RUNTIME, "the lua runtime cannot load %s: %s", spec.entrypoint,
                   lerr.msg);
        goto out;
    }
    if ((c = pc_change_new(PC_CHANGE_DEPLOY, tenant)) == NULL) {
        pc_err_set(err, PC_E_NOMEM, "out of memory");
        goto out;
    }
    snprintf(c->u.deploy.entrypoint, sizeof(c->u.deploy.entrypoint), "%s", pc_bundle_entrypoint(b));
    snprintf(c->u.deploy.runtime, sizeof(c->u.deploy.runtime), "%s", runtime);
    c->u.deploy.bundle = archive;
    c->u.deploy.bundle_len = archive_len;
    archive = NULL;
out:
    pc_bundle_free(b);
    free(archive);
    free(body);
    return c;
}

static void upload_free(upload *u)
{
    if (u->target != NULL)
        popcast__target__free_unpacked(u->target, NULL);
    free(u);
}

static void upload_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    upload *u = arg;
    pc_err err;
    if (rc == PC_OK) {
        pc_change *c = api_deploy_change(u->api, u->tenant, u->runtime, u->entrypoint,
                                         u->single_file, body, len, &err);
        if (c == NULL) {
            pc_httpd_error(rq, err.code, "%s", err.msg);
        } else {
            snprintf(c->author, sizeof(c->author), "%s", u->author);
            snprintf(c->message, sizeof(c->message), "%s", u->message);
            c->target = u->target;
            u->target = NULL;
            api_submit(u->api, rq, c);
        }
    } else {
        free(body);
    }
    upload_free(u);
}

void api_post_bundle(api_call *call)
{
    pc_httpd_req *rq = call->rq;
    const char *ct = pc_httpd_header(rq, "Content-Type");
    upload *u = calloc(1, sizeof(*u));
    if (u == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        return;
    }
    u->api = call->api;
    snprintf(u->tenant, sizeof(u->tenant), "%s", pc_route_param(call->match, "tenant"));
    const char *query = call->match->query;
    if (!pc_httpd_query_get(query, "runtime", u->runtime, sizeof(u->runtime)))
        snprintf(u->runtime, sizeof(u->runtime), "lua");
    if (!pc_httpd_query_get(query, "entrypoint", u->entrypoint, sizeof(u->entrypoint)))
        snprintf(u->entrypoint, sizeof(u->entrypoint), "%s", PC_BUNDLE_DEFAULT_ENTRYPOINT);
    api_author_of(call->who, u->author);
    if (!message_of_query(rq, query, u->message)) {
        free(u);
        return;
    }
    pc_err err;
    if (target_of_query(query, &u->target, &err) != PC_OK) {
        pc_httpd_error(rq, err.code, "%s", err.msg);
        free(u);
        return;
    }
    if (!pc_runtime_name_valid(u->runtime) || !api_runtime_allowed(call->api, u->runtime)) {
        pc_httpd_error(rq, PC_E_INVALID, "runtime '%s' is not one this cluster accepts",
                       u->runtime);
        upload_free(u);
        return;
    }
    if (content_is_single_file(ct)) {
        u->single_file = true;
        if (!pc_bundle_path_valid(u->entrypoint)) {
            pc_httpd_error(rq, PC_E_INVALID, "entrypoint is not a valid bundle path");
            upload_free(u);
            return;
        }
    } else if (!content_is_archive(ct)) {
        pc_httpd_error(rq, PC_E_MEDIA_TYPE,
                       "Content-Type must be application/vnd.popcast.bundle (an archive) or "
                       "text/x-lua (one file)");
        upload_free(u);
        return;
    }
    pc_httpd_read_body(rq, call->api->opt.max_bundle, upload_body, u);
}

/* Rollbacks and deletes. */

typedef struct tenant_write {
    pc_api *api;
    char tenant[PC_TENANT_MAX + 1];
    char author[PC_CHANGE_AUTHOR_MAX + 1];
} tenant_write;

static void rollback_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    tenant_write *w = arg;
    uint64_t version = 0;
    char message[PC_CHANGE_MESSAGE_MAX + 1];
    pc_err err;
    if (rc != PC_OK) {
        /* answered already */
    } else if (pc_api_parse_rollback(body, len, &version, message, sizeof(message), &err) !=
               PC_OK) {
        pc_httpd_error(rq, PC_E_INVALID, "%s", err.msg);
    } else {
        uint64_t to = version;
        pc_change *c = NULL;
        if (to == 0 && pc_rollback_target(w->api->store, w->api->rollout, w->tenant, pc_mono_ms(),
                                          &to, &err) != PC_OK)
            pc_httpd_error(rq, err.code, "%s", err.msg);
        else if ((c = pc_change_new(PC_CHANGE_ROLLBACK, w->tenant)) == NULL)
            pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        if (c != NULL) {
            c->u.rollback.to = to;
            c->u.rollback.asked = version;
            snprintf(c->author, sizeof(c->author), "%s", w->author);
            snprintf(c->message, sizeof(c->message), "%s", message);
            api_submit(w->api, rq, c);
        }
    }
    free(body);
    free(w);
}

void api_post_rollback(api_call *call)
{
    tenant_write *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    w->api = call->api;
    snprintf(w->tenant, sizeof(w->tenant), "%s", pc_route_param(call->match, "tenant"));
    api_author_of(call->who, w->author);
    pc_httpd_read_body(call->rq, JSON_BODY_MAX, rollback_body, w);
}

typedef struct stage_write {
    pc_api *api;
    char tenant[PC_TENANT_MAX + 1];
    char author[PC_CHANGE_AUTHOR_MAX + 1];
    uint64_t version;
} stage_write;

static void stage_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    stage_write *w = arg;
    char message[PC_CHANGE_MESSAGE_MAX + 1];
    Popcast__Target *target = NULL;
    pc_err err;
    pc_change *c = NULL;
    if (rc != PC_OK) {
        /* answered already */
    } else if (pc_api_parse_stage(body, len, &target, message, sizeof(message), &err) != PC_OK) {
        pc_httpd_error(rq, err.code, "%s", err.msg);
    } else if ((c = pc_change_new(PC_CHANGE_STAGE, w->tenant)) == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
    } else {
        c->u.stage.version = w->version;
        c->target = target;
        target = NULL;
        snprintf(c->author, sizeof(c->author), "%s", w->author);
        snprintf(c->message, sizeof(c->message), "%s", message);
        api_submit(w->api, rq, c);
    }
    if (target != NULL)
        popcast__target__free_unpacked(target, NULL);
    free(body);
    free(w);
}

void api_post_stage(api_call *call)
{
    uint64_t version = 0;
    if (api_parse_u64(pc_route_param(call->match, "version"), &version) != 0 || version == 0) {
        pc_httpd_error(call->rq, PC_E_INVALID, "version must be a number >= 1");
        return;
    }
    stage_write *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    w->api = call->api;
    w->version = version;
    snprintf(w->tenant, sizeof(w->tenant), "%s", pc_route_param(call->match, "tenant"));
    api_author_of(call->who, w->author);
    pc_httpd_read_body(call->rq, JSON_BODY_MAX, stage_body, w);
}

void api_delete_tenant(api_call *call)
{
    char message[PC_CHANGE_MESSAGE_MAX + 1];
    if (!message_of_query(call->rq, call->match->query, message))
        return;
    pc_change *c = pc_change_new(PC_CHANGE_DELETE, pc_route_param(call->match, "tenant"));
    if (c == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    api_author_of(call->who, c->author);
    snprintf(c->message, sizeof(c->message), "%s", message);
    api_submit(call->api, call->rq, c);
}
