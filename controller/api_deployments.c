/* api_deployments.c - staged deployments (docs/api.md "Deployments"):
 * start one, list and show them, pause, resume, abort, promote. The
 * leader's driver (deployer.h) does the rest. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_bodies.h"
#include "api_internal.h"
#include "deployment.h"
#include "json_text.h"
#include "registry.h"
#include "rollback_target.h"

#define JSON_BODY_MAX (64 * 1024)

/* The first PoP by name among the agents not gone: the default plan's
 * canary when the controller names none (deploy_canary_pop). */
static void first_pop(pc_api *api, char *out, size_t cap)
{
    out[0] = '\0';
    uint64_t head = 0;
    pc_store_applied_seq(api->store, &head, NULL);
    json_t *fleet = pc_rollout_fleet_json(api->rollout, head, pc_mono_ms());
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(fleet, "agents"), i, a)
    {
        const char *pop = json_string_value(json_object_get(a, "pop"));
        if (pop == NULL || json_is_true(json_object_get(a, "gone")))
            continue;
        if (out[0] == '\0' || strcmp(pop, out) < 0)
            snprintf(out, cap, "%s", pop);
    }
    json_decref(fleet);
}

/* The controllers' default plan as it would be now (docs/deployments.md):
 * its canary is deploy_canary_pop, else the first PoP by name. */
static int controllers_plan(pc_api *api, Popcast__DeploymentRecord *d)
{
    char canary[PC_ID_MAX + 1] = "";
    if (api->opt.deploy_canary_pop != NULL && api->opt.deploy_canary_pop[0] != '\0')
        snprintf(canary, sizeof(canary), "%s", api->opt.deploy_canary_pop);
    else
        first_pop(api, canary, sizeof(canary));
    return pc_deployment_default_plan(d, canary, api->opt.deploy_bake_ms);
}

/* A deployment's plan when none was given: the tenant's own default plan
 * if it has one (*own), else the controllers'. */
static int tenant_default_plan(pc_api *api, const char *tenant, Popcast__DeploymentRecord *d,
                               bool *own, pc_err *err)
{
    Popcast__TenantPlan *p = NULL;
    int rc = pc_registry_get_plan(api->store, tenant, &p, err);
    *own = rc == PC_OK;
    if (rc == PC_OK)
        rc = pc_deployment_copy_plan(d, p->plan, p->n_plan);
    else if (rc == PC_E_NOTFOUND)
        rc = controllers_plan(api, d);
    if (p != NULL)
        popcast__tenant_plan__free_unpacked(p, NULL);
    return rc;
}

/* One stage, everyone, no gate, no bake. */
static int immediate_plan(Popcast__DeploymentRecord *d)
{
    Popcast__DeploymentStage *s = malloc(sizeof(*s));
    if (s == NULL || (d->plan = malloc(sizeof(*d->plan))) == NULL) {
        free(s);
        return PC_E_NOMEM;
    }
    popcast__deployment_stage__init(s);
    d->plan[0] = s;
    d->n_plan = 1;
    return PC_OK;
}

/* The answer to a committed deployment change: the record as it is now. */
json_t *api_deployment_change_json(pc_api *api, const pc_change *c, const pc_change_result *r)
{
    Popcast__DeploymentRecord *d = NULL;
    pc_err err;
    if (pc_registry_get_deployment(api->store, c->tenant, r->deployment_id, &d, &err) != PC_OK)
        return json_pack("{s:s,s:I}", "tenant", c->tenant, "id", (json_int_t)r->deployment_id);
    json_t *o = pc_deployment_json(d);
    popcast__deployment_record__free_unpacked(d, NULL);
    return o;
}

/* A request on {tenant} while its body is read. */
typedef struct tenant_req {
    pc_api *api;
    char tenant[PC_TENANT_MAX + 1];
    char author[PC_CHANGE_AUTHOR_MAX + 1];
} tenant_req;

static void start_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    tenant_req *s = arg;
    pc_api *api = s->api;
    Popcast__DeploymentRecord *d = NULL;
    bool default_plan = false, own_plan = false;
    char message[PC_CHANGE_MESSAGE_MAX + 1], said[768];
    pc_err err;
    pc_change *c = NULL;
    if (rc != PC_OK)
        goto out; /* answered already */
    if (pc_api_parse_deployment(body, len, &d, &default_plan, message, sizeof(message), &err) !=
        PC_OK) {
        pc_httpd_error(rq, err.code, "%s", err.msg);
        goto out;
    }
    if (default_plan) {
        pc_err perr;
        if ((rc = tenant_default_plan(api, s->tenant, d, &own_plan, &perr)) != PC_OK) {
            pc_httpd_error(rq, rc, "%s", perr.msg);
            goto out;
        }
    } else if (d->immediate) {
        rc = immediate_plan(d);
    }
    /* The baseline: what it is judged against and reverted to, the last
     * version every agent showed live (none for a first version). */
    uint64_t baseline = 0;
    pc_err berr;
    if (rc == PC_OK && pc_rollback_target(api->store, api->rollout, s->tenant, pc_mono_ms(),
                                          &baseline, &berr) != PC_OK)
        baseline = 0;
    d->tenant = strdup(s->tenant);
    d->author = strdup(s->author);
    d->baseline = baseline;
    d->state = POPCAST__DEPLOYMENT_STATE__DEPLOYMENT_STATE_RUNNING;
    d->created_unix_ms = pc_wall_ms();
    char base[32] = "none";
    if (baseline)
        snprintf(base, sizeof(base), "version %llu", (unsigned long long)baseline);
    snprintf(said, sizeof(said), "by %s: %zu stage%s%s%s, baseline %s%s%s", s->author, d->n_plan,
             d->n_plan == 1 ? "" : "s", d->immediate ? " (immediate)" : "",
             !default_plan ? ""
             : own_plan    ? " (the tenant's plan)"
                           : " (default plan)",
             base, message[0] ? "; " : "", message);
    if (!baseline)
        snprintf(said + strlen(said), sizeof(said) - strlen(said), "%s",
                 " (no version was live everywhere: a failed gate halts it, nothing reverts)");
    if (rc != PC_OK || d->tenant == NULL || d->author == NULL ||
        pc_deployment_add_event(d, d->created_unix_ms, "started", 0, 0, said) != PC_OK ||
        (c = pc_change_new(PC_CHANGE_DEPLOYMENT, s->tenant)) == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        goto out;
    }
    snprintf(c->author, sizeof(c->author), "%s", s->author);
    c->u.deployment.create = d;
    d = NULL;
    api_submit(api, rq, c);
out:
    if (d != NULL)
        popcast__deployment_record__free_unpacked(d, NULL);
    free(body);
    free(s);
}

/* Reads the body of a request on {tenant}, then body_cb(tenant_req). */
static void read_tenant_body(api_call *call, pc_httpd_body_cb body_cb)
{
    tenant_req *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    s->api = call->api;
    snprintf(s->tenant, sizeof(s->tenant), "%s", pc_route_param(call->match, "tenant"));
    api_author_of(call->who, s->author);
    pc_httpd_read_body(call->rq, JSON_BODY_MAX, body_cb, s);
}

void api_post_deployment(api_call *call)
{
    read_tenant_body(call, start_body);
}

/* A tenant's default plan: {"tenant", "source": "tenant" (its own, with
 * "author" and "updated_unix_ms") or "controllers" (the default plan as it
 * would be now), "plan": [...]}. */
json_t *api_plan_json(pc_api *api, const char *tenant)
{
    Popcast__DeploymentRecord d = POPCAST__DEPLOYMENT_RECORD__INIT;
    bool own = false;
    pc_err err;
    Popcast__TenantPlan *p = NULL;
    int rc = tenant_default_plan(api, tenant, &d, &own, &err);
    json_t *o = NULL;
    if (rc == PC_OK)
        o = json_pack("{s:s,s:s,s:o}", "tenant", tenant, "source", own ? "tenant" : "controllers",
                      "plan", pc_deployment_plan_json(d.plan, d.n_plan));
    if (o != NULL && own && pc_registry_get_plan(api->store, tenant, &p, &err) == PC_OK) {
        if (p->author != NULL && p->author[0] != '\0')
            pc_json_set_text(o, "author", p->author);
        json_object_set_new(o, "updated_unix_ms", json_integer((json_int_t)p->updated_unix_ms));
        popcast__tenant_plan__free_unpacked(p, NULL);
    }
    for (size_t i = 0; i < d.n_plan; i++)
        popcast__deployment_stage__free_unpacked(d.plan[i], NULL);
    free(d.plan);
    return o;
}

void api_get_plan(api_call *call)
{
    json_t *o = api_plan_json(call->api, pc_route_param(call->match, "tenant"));
    if (o == NULL)
        pc_httpd_error(call->rq, PC_E_NOMEM, "cannot read the plan");
    else
        pc_httpd_reply_json(call->rq, 200, o, NULL);
}

/* Submits the tenant's plan p (owned; no stages: clear it). */
static void submit_plan(pc_api *api, pc_httpd_req *rq, const char *tenant, const char *author,
                        Popcast__TenantPlan *p)
{
    pc_change *c = pc_change_new(PC_CHANGE_PLAN, tenant);
    if (c == NULL || (p->tenant = strdup(tenant)) == NULL || (p->author = strdup(author)) == NULL) {
        pc_change_free(c);
        popcast__tenant_plan__free_unpacked(p, NULL);
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
        return;
    }
    p->updated_unix_ms = pc_wall_ms();
    snprintf(c->author, sizeof(c->author), "%s", author);
    c->u.plan.record = p;
    api_submit(api, rq, c);
}

static void plan_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    tenant_req *s = arg;
    Popcast__TenantPlan *p = NULL;
    pc_err err;
    if (rc != PC_OK)
        ; /* answered already */
    else if (pc_api_parse_plan(body, len, &p, &err) != PC_OK)
        pc_httpd_error(rq, err.code, "%s", err.msg);
    else if (pc_deployment_check_plan(p->plan, p->n_plan, &err) != PC_OK) {
        popcast__tenant_plan__free_unpacked(p, NULL);
        pc_httpd_error(rq, err.code, "%s", err.msg);
    } else
        submit_plan(s->api, rq, s->tenant, s->author, p);
    free(body);
    free(s);
}

void api_put_plan(api_call *call)
{
    read_tenant_body(call, plan_body);
}

void api_delete_plan(api_call *call)
{
    char author[PC_CHANGE_AUTHOR_MAX + 1];
    api_author_of(call->who, author);
    Popcast__TenantPlan *p = malloc(sizeof(*p));
    if (p == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    popcast__tenant_plan__init(p);
    submit_plan(call->api, call->rq, pc_route_param(call->match, "tenant"), author, p);
}

static int list_one(void *arg, const Popcast__DeploymentRecord *d)
{
    json_array_append_new(arg, pc_deployment_json(d));
    return 0;
}

void api_get_deployments(api_call *call)
{
    const char *tenant = pc_route_param(call->match, "tenant");
    json_t *list = json_array();
    pc_err err;
    if (pc_registry_foreach_deployment(call->api->store, tenant, list_one, list, &err) != PC_OK) {
        json_decref(list);
        pc_httpd_error(call->rq, err.code, "%s", err.msg);
        return;
    }
    pc_httpd_reply_json(call->rq, 200,
                        json_pack("{s:s,s:o}", "tenant", tenant, "deployments", list), NULL);
}

static bool deployment_id(api_call *call, uint64_t *id)
{
    if (api_parse_u64(pc_route_param(call->match, "id"), id) != 0 || *id == 0) {
        pc_httpd_error(call->rq, PC_E_INVALID, "the deployment id must be a number >= 1");
        return false;
    }
    return true;
}

void api_get_deployment(api_call *call)
{
    uint64_t id = 0;
    if (!deployment_id(call, &id))
        return;
    const char *tenant = pc_route_param(call->match, "tenant");
    Popcast__DeploymentRecord *d = NULL;
    pc_err err;
    int rc = pc_registry_get_deployment(call->api->store, tenant, id, &d, &err);
    if (rc == PC_E_NOTFOUND) {
        pc_httpd_error(call->rq, rc, "%s has no deployment %llu", tenant, (unsigned long long)id);
        return;
    }
    if (rc != PC_OK) {
        pc_httpd_error(call->rq, rc, "%s", err.msg);
        return;
    }
    pc_httpd_reply_json(call->rq, 200, pc_deployment_json(d), NULL);
    popcast__deployment_record__free_unpacked(d, NULL);
}

/* pause, resume, abort, promote: an op the pipeline applies to the
 * committed record (409 when it does not apply to it as it is). */
static void operate(api_call *call, pc_deployment_op_kind kind)
{
    uint64_t id = 0;
    if (!deployment_id(call, &id))
        return;
    pc_change *c = pc_change_new(PC_CHANGE_DEPLOYMENT, pc_route_param(call->match, "tenant"));
    if (c == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    c->u.deployment.id = id;
    c->u.deployment.op.kind = kind;
    api_author_of(call->who, c->author);
    api_submit(call->api, call->rq, c);
}

void api_post_deployment_pause(api_call *call)
{
    operate(call, PC_DEPLOYMENT_PAUSE);
}

void api_post_deployment_resume(api_call *call)
{
    operate(call, PC_DEPLOYMENT_RESUME);
}

void api_post_deployment_abort(api_call *call)
{
    operate(call, PC_DEPLOYMENT_ABORT);
}

void api_post_deployment_promote(api_call *call)
{
    operate(call, PC_DEPLOYMENT_PROMOTE);
}
