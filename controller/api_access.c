/* api_access.c - who may talk to popcast: API tokens and agent identities
 * (docs/api.md "Tokens", "Agents"). Both are created by POSTing a body,
 * listed from their meta records and revoked by id through the log. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_bodies.h"
#include "api_internal.h"
#include "json_text.h"
#include "registry.h"

#define RECORD_BODY_MAX 4096

/* Answers {name: list}, or the walk's error. */
static void reply_list(api_call *call, const char *name, json_t *list, int rc, const pc_err *err)
{
    if (rc != PC_OK) {
        json_decref(list);
        pc_httpd_error(call->rq, rc, "%s", err->msg);
        return;
    }
    pc_httpd_reply_json(call->rq, 200, json_pack("{s:o}", name, list), NULL);
}

static void submit_revoke(api_call *call, pc_change_kind kind, bool (*valid)(const char *),
                          const char *bad_id)
{
    const char *id = pc_route_param(call->match, "id");
    if (!valid(id)) {
        pc_httpd_error(call->rq, PC_E_INVALID, "%s", bad_id);
        return;
    }
    pc_change *c = pc_change_new(kind, NULL);
    if (c == NULL) {
        pc_httpd_error(call->rq, PC_E_NOMEM, "out of memory");
        return;
    }
    if (kind == PC_CHANGE_TOKEN_REVOKE)
        snprintf(c->u.token.id, sizeof(c->u.token.id), "%s", id);
    else
        snprintf(c->u.agent.id, sizeof(c->u.agent.id), "%s", id);
    api_submit(call->api, call->rq, c);
}

/* Tokens. */

static void token_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != PC_OK)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_TOKEN_CREATE, NULL);
    pc_err err;
    if (c == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_token(body, len, c->u.token.name, sizeof(c->u.token.name),
                                  &c->u.token.tenants[0][0], sizeof(c->u.token.tenants[0]),
                                  PC_TOKEN_MAX_TENANTS, &c->u.token.n_tenants, &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_error(rq, PC_E_INVALID, "%s", err.msg);
    } else {
        /* The token itself exists only in this answer; the store keeps
         * its hash. */
        uint8_t secret[32];
        randombytes_buf(secret, sizeof(secret));
        snprintf(c->u.token.secret, sizeof(c->u.token.secret), "pct_");
        pc_hex(c->u.token.secret + 4, secret, sizeof(secret));
        sodium_memzero(secret, sizeof(secret));
        pc_hash(c->u.token.hash, c->u.token.secret, strlen(c->u.token.secret));
        char hex[PC_HEX_HASH_LEN];
        pc_hex(hex, c->u.token.hash, PC_HASH_LEN);
        snprintf(c->u.token.id, sizeof(c->u.token.id), "%.16s", hex);
        api_submit(api, rq, c);
    }
    free(body);
}

void api_post_token(api_call *call)
{
    pc_httpd_read_body(call->rq, RECORD_BODY_MAX, token_body, call->api);
}

static int add_token(void *arg, const Popcast__TokenRecord *t)
{
    json_t *tenants = json_array();
    for (size_t i = 0; i < t->n_tenants; i++)
        json_array_append_new(tenants, pc_json_text(t->tenants[i]));
    json_t *o = json_pack("{s:o,s:o,s:o,s:I,s:b}", "id", pc_json_text(t->id), "name",
                          pc_json_text(t->name), "tenants", tenants, "created_unix_ms",
                          (json_int_t)t->created_unix_ms, "revoked", t->revoked);
    return json_array_append_new(arg, o) == 0 ? 0 : PC_E_NOMEM;
}

void api_get_tokens(api_call *call)
{
    json_t *list = json_array();
    pc_err err;
    int rc = list ? pc_registry_foreach_token(call->api->store, add_token, list, &err)
                  : pc_err_set(&err, PC_E_NOMEM, "out of memory");
    if (rc == PC_E_NOMEM)
        pc_err_set(&err, rc, "out of memory");
    reply_list(call, "tokens", list, rc, &err);
}

static bool token_id_valid(const char *id)
{
    return strlen(id) == 16 && strspn(id, "0123456789abcdef") == 16;
}

void api_delete_token(api_call *call)
{
    submit_revoke(call, PC_CHANGE_TOKEN_REVOKE, token_id_valid, "a token id is 16 hex digits");
}

json_t *api_token_change_json(const pc_change *c, const pc_change_result *r)
{
    bool created = c->kind == PC_CHANGE_TOKEN_CREATE;
    json_t *o = json_pack("{s:s,s:b}", "id", c->u.token.id, "revoked", !created);
    if (o != NULL && created) {
        json_t *tenants = json_array();
        for (size_t i = 0; i < c->u.token.n_tenants; i++)
            json_array_append_new(tenants, json_string(c->u.token.tenants[i]));
        json_object_set_new(o, "tenants", tenants);
        json_object_set_new(o, "name", json_string(c->u.token.name));
        json_object_set_new(o, "token", json_string(c->u.token.secret));
    }
    return o;
}

/* Agents. */

static void agent_body(void *arg, pc_httpd_req *rq, int rc, uint8_t *body, size_t len)
{
    pc_api *api = arg;
    if (rc != PC_OK)
        return;
    pc_change *c = pc_change_new(PC_CHANGE_AGENT_ENROLL, NULL);
    pc_err err;
    if (c == NULL) {
        pc_httpd_error(rq, PC_E_NOMEM, "out of memory");
    } else if (pc_api_parse_agent(body, len, c->u.agent.id, sizeof(c->u.agent.id), c->u.agent.pk,
                                  &err) != PC_OK) {
        pc_change_free(c);
        pc_httpd_error(rq, PC_E_INVALID, "%s", err.msg);
    } else {
        api_submit(api, rq, c);
    }
    free(body);
}

void api_post_agent(api_call *call)
{
    pc_httpd_read_body(call->rq, RECORD_BODY_MAX, agent_body, call->api);
}

static int add_agent(void *arg, const Popcast__AgentRecord *a)
{
    if (a->public_key.len != PC_PK_LEN)
        return 0;
    pc_public_key pk;
    memcpy(pk.pk, a->public_key.data, PC_PK_LEN);
    pc_key_id(pk.id, pk.pk);
    char text[128], id[PC_HEX_KEY_ID_LEN];
    pc_key_format_public(&pk, text, sizeof(text));
    pc_hex(id, pk.id, PC_KEY_ID_LEN);
    json_t *o =
        json_pack("{s:o,s:s,s:s,s:I,s:b,s:b}", "agent_id", pc_json_text(a->agent_id), "public_key",
                  text, "key_id", id, "enrolled_unix_ms", (json_int_t)a->enrolled_unix_ms,
                  "revoked", a->revoked, "first_use", a->first_use);
    return json_array_append_new(arg, o) == 0 ? 0 : PC_E_NOMEM;
}

void api_get_agents(api_call *call)
{
    json_t *list = json_array();
    pc_err err;
    int rc = list ? pc_registry_foreach_agent(call->api->store, add_agent, list, &err)
                  : pc_err_set(&err, PC_E_NOMEM, "out of memory");
    if (rc == PC_E_NOMEM)
        pc_err_set(&err, rc, "out of memory");
    reply_list(call, "agents", list, rc, &err);
}

void api_delete_agent(api_call *call)
{
    submit_revoke(call, PC_CHANGE_AGENT_REVOKE, pc_id_valid, "not an agent id");
}

json_t *api_agent_change_json(const pc_change *c, const pc_change_result *r)
{
    return json_pack("{s:s,s:b}", "agent_id", c->u.agent.id, "revoked",
                     c->kind == PC_CHANGE_AGENT_REVOKE);
}
