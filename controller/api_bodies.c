/* api_bodies.c - JSON request bodies (see api_bodies.h). */
#include "api_bodies.h"

#include "crypto.h"
#include "envelope.h"
#include "deployment.h"
#include "names.h"
#include "target.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The body as a JSON object, or NULL with err set. */
static json_t *parse_object(const uint8_t *body, size_t len, pc_err *err)
{
    if (len == 0) {
        pc_err_set(err, PC_E_INVALID, "request body must be a JSON object");
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        pc_err_set(err, PC_E_INVALID, "malformed JSON at line %d column %d: %s", jerr.line,
                   jerr.column, jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        pc_err_set(err, PC_E_INVALID, "request body must be a JSON object");
        return NULL;
    }
    return root;
}

/* A "message" field that is present and not a valid change message
 * (pc_change_message_valid, no NUL inside, shorter than cap). */
static bool bad_message(json_t *msg, size_t cap)
{
    return msg != NULL &&
           (!json_is_string(msg) || strlen(json_string_value(msg)) != json_string_length(msg) ||
            !pc_change_message_valid(json_string_value(msg)) || json_string_length(msg) >= cap);
}

int pc_api_parse_rollback(const uint8_t *body, size_t len, uint64_t *version, char *message,
                          size_t message_cap, pc_err *err)
{
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    int rc = PC_OK;
    json_t *v = json_object_get(root, "version"), *msg = json_object_get(root, "message");
    const char *key;
    json_t *val;
    int unknown = 0;
    json_object_foreach(root, key, val) unknown |=
        strcmp(key, "version") != 0 && strcmp(key, "message") != 0;
    if (unknown)
        rc = pc_err_set(err, PC_E_INVALID,
                        "only the fields \"version\" and \"message\" are allowed");
    else if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 1))
        rc = pc_err_set(err, PC_E_INVALID,
                        "\"version\" must be an integer >= 1 (the version to roll back to), or "
                        "left out (the last version proven live everywhere)");
    else if (bad_message(msg, message_cap))
        rc = pc_err_set(err, PC_E_INVALID, "\"message\" must be %s", PC_CHANGE_MESSAGE_RULE);
    else
        *version = v != NULL ? (uint64_t)json_integer_value(v) : 0;
    if (rc == PC_OK)
        snprintf(message, message_cap, "%s", msg != NULL ? json_string_value(msg) : "");
    json_decref(root);
    return rc;
}

static int stage_names(json_t *list, Popcast__Target *t, bool pops, pc_err *err)
{
    if (list == NULL)
        return PC_OK;
    const char *field = pops ? "pops" : "agents";
    if (!json_is_array(list))
        return pc_err_set(err, PC_E_INVALID, "\"%s\" must be an array of names", field);
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v)
    {
        const char *name = json_string_value(v);
        if (name == NULL || strlen(name) != json_string_length(v))
            return pc_err_set(err, PC_E_INVALID, "\"%s\" item %zu is not a name", field, i);
        int rc = pops ? pc_target_add_pop(t, name, err) : pc_target_add_agent(t, name, err);
        if (rc != PC_OK)
            return rc;
    }
    return PC_OK;
}

/* "split_permille" and "split_key" of a stage into *t (a target of
 * everyone when there was none), checked as a signed target is. */
static int split_fields(json_t *o, Popcast__Target **t, pc_err *err)
{
    json_t *share = json_object_get(o, "split_permille"), *key = json_object_get(o, "split_key");
    if (share == NULL && key == NULL)
        return PC_OK;
    if (share == NULL || !json_is_integer(share) || json_integer_value(share) < 1 ||
        json_integer_value(share) > 999 || key == NULL || !json_is_string(key) ||
        strlen(json_string_value(key)) != json_string_length(key) ||
        !pc_target_split_key_valid(json_string_value(key)))
        return pc_err_set(err, PC_E_INVALID,
                          "a split is \"split_permille\" (1 to 999) and \"split_key\" (a header "
                          "name, or cookie:NAME)");
    if (*t == NULL) {
        if ((*t = pc_target_new()) == NULL)
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        (*t)->permille = PC_TARGET_EVERYONE;
    }
    (*t)->split_permille = (uint32_t)json_integer_value(share);
    if (((*t)->split_key = strdup(json_string_value(key))) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    return pc_target_check(*t, err);
}

int pc_api_parse_stage(const uint8_t *body, size_t len, Popcast__Target **target, char *message,
                       size_t message_cap, pc_err *err)
{
    *target = NULL;
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    int rc = PC_OK;
    const char *key;
    json_t *val;
    static const char *const allowed[] = {"everyone", "agents",         "pops",      "permille",
                                          "message",  "split_permille", "split_key", NULL};
    json_object_foreach(root, key, val)
    {
        bool known = false;
        for (size_t i = 0; allowed[i] != NULL && !known; i++)
            known = strcmp(key, allowed[i]) == 0;
        if (!known)
            rc = pc_err_set(err, PC_E_INVALID,
                            "only the fields \"everyone\", \"agents\", \"pops\", \"permille\", "
                            "\"split_permille\", \"split_key\" and \"message\" are allowed");
    }
    json_t *everyone = json_object_get(root, "everyone"),
           *permille = json_object_get(root, "permille"), *msg = json_object_get(root, "message");
    bool named = json_object_get(root, "agents") != NULL || json_object_get(root, "pops") != NULL ||
                 permille != NULL;
    Popcast__Target *t = NULL;
    if (rc != PC_OK) {
    } else if (everyone != NULL && (!json_is_true(everyone) || named)) {
        rc = pc_err_set(err, PC_E_INVALID,
                        "\"everyone\" must be true, and without agents, pops or permille");
    } else if (everyone == NULL && !named) {
        rc = pc_err_set(err, PC_E_INVALID,
                        "a stage names \"agents\", \"pops\", a \"permille\" of all agents, or "
                        "\"everyone\": true");
    } else if (permille != NULL &&
               (!json_is_integer(permille) || json_integer_value(permille) < 0 ||
                json_integer_value(permille) > PC_TARGET_EVERYONE)) {
        rc = pc_err_set(err, PC_E_INVALID, "\"permille\" must be an integer from 0 to 1000");
    } else if (bad_message(msg, message_cap)) {
        rc = pc_err_set(err, PC_E_INVALID, "\"message\" must be %s", PC_CHANGE_MESSAGE_RULE);
    } else if (named && (t = pc_target_new()) == NULL) {
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    if (rc == PC_OK && t != NULL) {
        rc = stage_names(json_object_get(root, "agents"), t, false, err);
        if (rc == PC_OK)
            rc = stage_names(json_object_get(root, "pops"), t, true, err);
        if (permille != NULL)
            t->permille = (uint32_t)json_integer_value(permille);
        /* A stage only ever widens: one naming nobody would do nothing. */
        if (rc == PC_OK && t->n_agents + t->n_pops == 0 && t->permille == 0)
            rc = pc_err_set(err, PC_E_INVALID, "the stage names nobody");
    }
    if (rc == PC_OK)
        rc = split_fields(root, &t, err);
    if (rc == PC_OK) {
        snprintf(message, message_cap, "%s", msg != NULL ? json_string_value(msg) : "");
        *target = t;
    } else if (t != NULL) {
        popcast__target__free_unpacked(t, NULL);
    }
    json_decref(root);
    return rc;
}

static bool only_fields(json_t *o, const char *const *allowed)
{
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i] != NULL && !ok; i++)
            ok = strcmp(key, allowed[i]) == 0;
        if (!ok)
            return false;
    }
    return true;
}

/* A whole number from 0 to max, or absent (0). */
static int bounded(json_t *o, const char *field, uint64_t max, uint64_t *out, size_t stage,
                   pc_err *err)
{
    json_t *v = json_object_get(o, field);
    *out = 0;
    if (v == NULL)
        return PC_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return pc_err_set(err, PC_E_INVALID, "stage %zu: \"%s\" must be an integer from 0 to %llu",
                          stage, field, (unsigned long long)max);
    *out = (uint64_t)json_integer_value(v);
    return PC_OK;
}

static int plan_stage(json_t *o, size_t i, Popcast__DeploymentStage **out, pc_err *err)
{
    static const char *const fields[] = {
        "everyone",     "pops", "agents",         "permille",  "bake_ms", "max_nacks",
        "min_requests", "gate", "split_permille", "split_key", NULL};
    *out = NULL;
    if (!json_is_object(o) || !only_fields(o, fields))
        return pc_err_set(err, PC_E_INVALID,
                          "stage %zu must be an object of \"everyone\", \"pops\", \"agents\", "
                          "\"permille\", \"bake_ms\", \"max_nacks\", \"min_requests\", \"gate\"",
                          i);
    json_t *everyone = json_object_get(o, "everyone"), *gate = json_object_get(o, "gate");
    bool named = json_object_get(o, "pops") != NULL || json_object_get(o, "agents") != NULL ||
                 json_object_get(o, "permille") != NULL;
    if ((everyone != NULL && (!json_is_true(everyone) || named)) || (everyone == NULL && !named))
        return pc_err_set(err, PC_E_INVALID,
                          "stage %zu names \"everyone\": true, or any of \"pops\", \"agents\", "
                          "\"permille\"",
                          i);
    if (gate != NULL && !json_is_boolean(gate))
        return pc_err_set(err, PC_E_INVALID, "stage %zu: \"gate\" must be true or false", i);
    Popcast__DeploymentStage *s = malloc(sizeof(*s));
    if (s == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    popcast__deployment_stage__init(s);
    s->gate = gate == NULL || json_is_true(gate);
    uint64_t bake = 0, nacks = 0, min = 0, permille = 0;
    int rc = bounded(o, "bake_ms", 7ull * 24 * 3600 * 1000, &bake, i, err);
    if (rc == PC_OK)
        rc = bounded(o, "max_nacks", 1000000, &nacks, i, err);
    if (rc == PC_OK)
        rc = bounded(o, "min_requests", 1000000000, &min, i, err);
    if (rc == PC_OK)
        rc = bounded(o, "permille", PC_TARGET_EVERYONE, &permille, i, err);
    if (rc == PC_OK && named && (s->target = pc_target_new()) == NULL)
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    if (rc == PC_OK && named) {
        rc = stage_names(json_object_get(o, "agents"), s->target, false, err);
        if (rc == PC_OK)
            rc = stage_names(json_object_get(o, "pops"), s->target, true, err);
        s->target->permille = (uint32_t)permille;
        if (rc == PC_OK && s->target->n_agents + s->target->n_pops == 0 && permille == 0)
            rc = pc_err_set(err, PC_E_INVALID, "stage %zu names nobody", i);
    }
    if (rc == PC_OK)
        rc = split_fields(o, &s->target, err);
    s->bake_ms = bake;
    s->max_nacks = (uint32_t)nacks;
    s->min_requests = min;
    if (rc != PC_OK) {
        popcast__deployment_stage__free_unpacked(s, NULL);
        return rc;
    }
    *out = s;
    return PC_OK;
}

int pc_api_parse_plan(const uint8_t *body, size_t len, Popcast__TenantPlan **out, pc_err *err)
{
    static const char *const fields[] = {"plan", NULL};
    *out = NULL;
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    json_t *plan = json_object_get(root, "plan");
    int rc = PC_OK;
    Popcast__TenantPlan *p = NULL;
    if (!only_fields(root, fields) || !json_is_array(plan) || json_array_size(plan) < 1 ||
        json_array_size(plan) > PC_DEPLOYMENT_MAX_STAGES)
        rc = pc_err_set(err, PC_E_INVALID,
                        "the body is {\"plan\": [...]}, an array of 1 to %d stages",
                        PC_DEPLOYMENT_MAX_STAGES);
    else if ((p = malloc(sizeof(*p))) == NULL ||
             (popcast__tenant_plan__init(p),
              p->plan = calloc(json_array_size(plan), sizeof(*p->plan))) == NULL)
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    for (size_t i = 0; rc == PC_OK && i < json_array_size(plan); i++) {
        rc = plan_stage(json_array_get(plan, i), i + 1, &p->plan[i], err);
        if (rc == PC_OK)
            p->n_plan++;
    }
    if (rc == PC_OK)
        *out = p;
    else if (p != NULL)
        popcast__tenant_plan__free_unpacked(p, NULL);
    json_decref(root);
    return rc;
}

int pc_api_parse_deployment(const uint8_t *body, size_t len, Popcast__DeploymentRecord **out,
                            bool *default_plan, char *message, size_t message_cap, pc_err *err)
{
    static const char *const fields[] = {"version", "plan", "immediate", "message", NULL};
    *out = NULL;
    *default_plan = false;
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    json_t *v = json_object_get(root, "version"), *plan = json_object_get(root, "plan"),
           *immediate = json_object_get(root, "immediate"), *msg = json_object_get(root, "message");
    int rc = PC_OK;
    Popcast__DeploymentRecord *d = NULL;
    if (!only_fields(root, fields))
        rc = pc_err_set(err, PC_E_INVALID,
                        "only the fields \"version\", \"plan\", \"immediate\" and \"message\" "
                        "are allowed");
    else if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 1))
        rc = pc_err_set(err, PC_E_INVALID, "\"version\" must be an integer >= 1");
    else if (immediate != NULL && (!json_is_true(immediate) || plan != NULL))
        rc = pc_err_set(err, PC_E_INVALID, "\"immediate\" must be true, and without a plan");
    else if (plan != NULL &&
             !(json_is_string(plan) && strcmp(json_string_value(plan), "default") == 0) &&
             !(json_is_array(plan) && json_array_size(plan) >= 1 &&
               json_array_size(plan) <= PC_DEPLOYMENT_MAX_STAGES))
        rc = pc_err_set(err, PC_E_INVALID,
                        "\"plan\" must be \"default\" or an array of 1 to %d stages",
                        PC_DEPLOYMENT_MAX_STAGES);
    else if (bad_message(msg, message_cap))
        rc = pc_err_set(err, PC_E_INVALID, "\"message\" must be %s", PC_CHANGE_MESSAGE_RULE);
    else if ((d = malloc(sizeof(*d))) == NULL)
        rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
    if (d != NULL) {
        popcast__deployment_record__init(d);
        d->version = v != NULL ? (uint64_t)json_integer_value(v) : 0;
        d->immediate = immediate != NULL;
        *default_plan = immediate == NULL && (plan == NULL || json_is_string(plan));
    }
    if (rc == PC_OK && json_is_array(plan)) {
        size_t n = json_array_size(plan);
        if ((d->plan = calloc(n, sizeof(*d->plan))) == NULL)
            rc = pc_err_set(err, PC_E_NOMEM, "out of memory");
        for (size_t i = 0; rc == PC_OK && i < n; i++) {
            rc = plan_stage(json_array_get(plan, i), i + 1, &d->plan[i], err);
            if (rc == PC_OK)
                d->n_plan++;
        }
    }
    if (rc == PC_OK) {
        snprintf(message, message_cap, "%s", msg != NULL ? json_string_value(msg) : "");
        *out = d;
    } else if (d != NULL) {
        popcast__deployment_record__free_unpacked(d, NULL);
    }
    json_decref(root);
    return rc;
}

int pc_api_parse_node(const uint8_t *body, size_t len, uint64_t *id, char *raft_address,
                      size_t raft_cap, char *api_url, size_t api_cap, pc_err *err)
{
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    json_error_t jerr;
    json_int_t n = 0;
    const char *raft = NULL, *url = NULL;
    int rc = PC_OK;
    if (json_unpack_ex(root, &jerr, JSON_STRICT, "{s:I,s:s,s:s}", "id", &n, "raft_address", &raft,
                       "api_url", &url) != 0 ||
        n < 1 || raft[0] == '\0' || strlen(raft) >= raft_cap || strncmp(url, "http", 4) != 0 ||
        strlen(url) >= api_cap) {
        rc = pc_err_set(err, PC_E_INVALID,
                        "expected {\"id\": N >= 1, \"raft_address\": \"host:port\", "
                        "\"api_url\": \"http://...\"} and nothing else");
    } else {
        *id = (uint64_t)n;
        snprintf(raft_address, raft_cap, "%s", raft);
        snprintf(api_url, api_cap, "%s", url);
    }
    json_decref(root);
    return rc;
}

int pc_api_parse_token(const uint8_t *body, size_t len, char *name, size_t name_cap, char *tenants,
                       size_t tenant_cap, size_t max_tenants, size_t *n_tenants, pc_err *err)
{
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    int rc = PC_OK;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "tenants") != 0 && strcmp(key, "name") != 0)
            rc =
                pc_err_set(err, PC_E_INVALID, "unknown field \"%s\" (allowed: tenants, name)", key);
    }
    json_t *list = json_object_get(root, "tenants");
    json_t *label = json_object_get(root, "name");
    name[0] = '\0';
    if (rc == PC_OK &&
        (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > max_tenants))
        rc = pc_err_set(err, PC_E_INVALID, "\"tenants\" must be an array of 1 to %zu tenant names",
                        max_tenants);
    if (rc == PC_OK && label != NULL) {
        const char *l = json_string_value(label);
        if (l == NULL || strlen(l) >= name_cap || !pc_id_valid(l))
            rc = pc_err_set(err, PC_E_INVALID,
                            "\"name\" must be 1 to %zu characters of A-Z, a-z, 0-9, '.', '_', '-'",
                            name_cap - 1);
        else
            snprintf(name, name_cap, "%s", l);
    }
    size_t n = 0;
    for (size_t i = 0; rc == PC_OK && i < json_array_size(list); i++) {
        const char *t = json_string_value(json_array_get(list, i));
        if (t == NULL || strlen(t) >= tenant_cap || !pc_tenant_name_valid(t)) {
            rc = pc_err_set(err, PC_E_INVALID, "tenants[%zu] is not a tenant name", i);
            break;
        }
        for (size_t j = 0; j < n; j++)
            if (strcmp(tenants + j * tenant_cap, t) == 0)
                rc = pc_err_set(err, PC_E_INVALID, "tenant %s is listed twice", t);
        if (rc == PC_OK)
            snprintf(tenants + (n++) * tenant_cap, tenant_cap, "%s", t);
    }
    *n_tenants = rc == PC_OK ? n : 0;
    json_decref(root);
    return rc;
}

int pc_api_parse_agent(const uint8_t *body, size_t len, char *agent_id, size_t id_cap,
                       uint8_t public_key[32], pc_err *err)
{
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    json_error_t jerr;
    const char *id = NULL, *pk = NULL;
    int rc = PC_OK;
    pc_public_key key;
    pc_err kerr;
    if (json_unpack_ex(root, &jerr, JSON_STRICT, "{s:s,s:s}", "agent_id", &id, "public_key", &pk) !=
            0 ||
        !pc_id_valid(id) || strlen(id) >= id_cap)
        rc = pc_err_set(err, PC_E_INVALID,
                        "expected {\"agent_id\": \"[A-Za-z0-9._-]{1,128}\", \"public_key\": "
                        "\"popcast-ed25519-public-v1 ...\"} and nothing else");
    else if (pc_key_parse_public(pk, &key, &kerr) != PC_OK)
        rc = pc_err_set(err, PC_E_INVALID, "public_key: %s", kerr.msg);
    else {
        snprintf(agent_id, id_cap, "%s", id);
        memcpy(public_key, key.pk, 32);
    }
    json_decref(root);
    return rc;
}

int pc_api_parse_rotation(const uint8_t *body, size_t len, uint8_t next_public_key[32],
                          uint8_t root_key[32], int *has_root,
                          Popcast__SignedRotationAuthorization **authorization, pc_err *err)
{
    *has_root = 0;
    *authorization = NULL;
    json_t *root = parse_object(body, len, err);
    if (root == NULL)
        return PC_E_INVALID;
    json_error_t jerr;
    const char *next = NULL, *rk = NULL, *auth = NULL;
    int rc = PC_OK;
    pc_public_key key;
    pc_err kerr;
    if (json_unpack_ex(root, &jerr, JSON_STRICT, "{s:s,s?s,s?s}", "next_public_key", &next,
                       "root_key", &rk, "authorization", &auth) != 0)
        rc = pc_err_set(err, PC_E_INVALID,
                        "expected {\"next_public_key\": \"popcast-ed25519-public-v1 ...\", "
                        "\"root_key\" or \"authorization\" (optional)} and nothing else");
    else if (rk != NULL && auth != NULL)
        rc = pc_err_set(err, PC_E_INVALID, "give root_key or authorization, not both");
    else if (pc_key_parse_public(next, &key, &kerr) != PC_OK)
        rc = pc_err_set(err, PC_E_INVALID, "next_public_key: %s", kerr.msg);
    else {
        memcpy(next_public_key, key.pk, 32);
        if (rk != NULL) {
            if (pc_key_parse_public(rk, &key, &kerr) != PC_OK) {
                rc = pc_err_set(err, PC_E_INVALID, "root_key: %s", kerr.msg);
            } else {
                memcpy(root_key, key.pk, 32);
                *has_root = 1;
            }
        } else if (auth != NULL && pc_authorization_parse(auth, authorization, &kerr) != PC_OK) {
            rc = pc_err_set(err, PC_E_INVALID, "authorization: %s", kerr.msg);
        }
    }
    json_decref(root);
    return rc;
}
