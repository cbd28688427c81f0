/* registry.c - records in the meta key space (see registry.h). */
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "names.h"

#define TOKEN_PREFIX           "token."
#define AGENT_PREFIX           "agent."
#define NODE_PREFIX            "cluster.node."
#define OUTCOME_PREFIX         "outcome."
#define DEPLOYMENT_PREFIX      "deployment."
#define OPEN_DEPLOYMENT_PREFIX "deployment_open."
#define DEPLOYMENT_KEY_MAX     (sizeof(OPEN_DEPLOYMENT_PREFIX) + PC_TENANT_MAX + 1 + 20 + 1)
#define EPOCH_KEY              "status_epoch"
/* EPOCH_KEY holds the floor of an agent's report counters (microseconds;
 * see pc_registry_next_report_floor). */

/* The key of a token: its prefix and the hex hash. */
static void token_key(char *out, size_t cap, const uint8_t hash[PC_HASH_LEN])
{
    char hex[PC_HEX_HASH_LEN];
    pc_hex(hex, hash, PC_HASH_LEN);
    snprintf(out, cap, TOKEN_PREFIX "%s", hex);
}

/* Reads the whole value under key into a malloc'd buffer. */
static int get_value(pc_store *s, const char *key, uint8_t **out, size_t *len, pc_err *err)
{
    uint8_t small[1024];
    size_t n = 0;
    int rc = pc_store_meta_get(s, key, small, sizeof(small), &n, err);
    if (rc != PC_OK)
        return rc;
    uint8_t *buf = malloc(n ? n : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    if (n <= sizeof(small)) {
        memcpy(buf, small, n);
    } else {
        size_t again = 0;
        /* Records are only replaced whole; a concurrent replace between
         * the two reads is caught by the length check. */
        if ((rc = pc_store_meta_get(s, key, buf, n, &again, err)) != PC_OK || again != n) {
            free(buf);
            return rc != PC_OK ? rc
                               : pc_err_set(err, PC_E_STORE, "meta %s changed while read", key);
        }
    }
    *out = buf;
    *len = n;
    return PC_OK;
}

static int corrupt(pc_err *err, const char *key)
{
    return pc_err_set(err, PC_E_STORE, "meta record %s does not decode: the store is damaged", key);
}

/* Packs a message and stores it under key. */
static int put_message(pc_store *s, const char *key, const ProtobufCMessage *msg, pc_err *err)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    protobuf_c_message_pack(msg, buf);
    int rc = pc_store_meta_put(s, key, buf, len, err);
    free(buf);
    return rc;
}

/* Reads and decodes the message under key. */
static int get_message(pc_store *s, const char *key, const ProtobufCMessageDescriptor *d,
                       ProtobufCMessage **out, pc_err *err)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = get_value(s, key, &buf, &len, err);
    if (rc != PC_OK)
        return rc;
    *out = protobuf_c_message_unpack(d, NULL, len, buf);
    free(buf);
    return *out != NULL ? PC_OK : corrupt(err, key);
}

/* A walk over one prefix, decoding each record and handing it to the
 * caller's typed callback. */
typedef struct walk {
    const ProtobufCMessageDescriptor *d;
    union {
        int (*token)(void *arg, const Popcast__TokenRecord *t);
        int (*agent)(void *arg, const Popcast__AgentRecord *a);
        int (*node)(void *arg, const Popcast__ClusterNode *n);
        int (*outcomes)(void *arg, const char *tenant, const Popcast__TenantOutcomes *o);
        int (*deployment)(void *arg, const Popcast__DeploymentRecord *d);
    } cb;
    void *arg;
    pc_err *err;
} walk;

static int walk_one(void *arg, const char *key, const uint8_t *val, size_t len)
{
    walk *w = arg;
    ProtobufCMessage *msg = protobuf_c_message_unpack(w->d, NULL, len, val);
    if (msg == NULL)
        return corrupt(w->err, key);
    int rc;
    if (w->d == &popcast__token_record__descriptor)
        rc = w->cb.token(w->arg, (const Popcast__TokenRecord *)msg);
    else if (w->d == &popcast__agent_record__descriptor)
        rc = w->cb.agent(w->arg, (const Popcast__AgentRecord *)msg);
    else if (w->d == &popcast__tenant_outcomes__descriptor)
        rc = w->cb.outcomes(w->arg, key + strlen(OUTCOME_PREFIX),
                            (const Popcast__TenantOutcomes *)msg);
    else if (w->d == &popcast__deployment_record__descriptor)
        rc = w->cb.deployment(w->arg, (const Popcast__DeploymentRecord *)msg);
    else
        rc = w->cb.node(w->arg, (const Popcast__ClusterNode *)msg);
    protobuf_c_message_free_unpacked(msg, NULL);
    return rc;
}

/* Tokens. */

int pc_registry_put_token(pc_store *s, const Popcast__TokenRecord *t, pc_err *err)
{
    if (t->hash.len != PC_HASH_LEN || t->id == NULL)
        return pc_err_set(err, PC_E_INVALID, "token record without a hash or id");
    char key[sizeof(TOKEN_PREFIX) + PC_HEX_HASH_LEN];
    token_key(key, sizeof(key), t->hash.data);
    return put_message(s, key, &t->base, err);
}

int pc_registry_get_token(pc_store *s, const uint8_t hash[PC_HASH_LEN], Popcast__TokenRecord **out,
                          pc_err *err)
{
    char key[sizeof(TOKEN_PREFIX) + PC_HEX_HASH_LEN];
    token_key(key, sizeof(key), hash);
    return get_message(s, key, &popcast__token_record__descriptor, (ProtobufCMessage **)out, err);
}

typedef struct token_find {
    const char *id;
    Popcast__TokenRecord *found;
} token_find;

enum { FOUND = 1 };

static int find_token_cb(void *arg, const Popcast__TokenRecord *t)
{
    token_find *f = arg;
    if (strcmp(t->id, f->id) != 0)
        return 0;
    /* The walk frees its record: keep a copy. */
    size_t len = popcast__token_record__get_packed_size(t);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return PC_E_NOMEM;
    popcast__token_record__pack(t, buf);
    f->found = popcast__token_record__unpack(NULL, len, buf);
    free(buf);
    return f->found != NULL ? FOUND : PC_E_NOMEM;
}

int pc_registry_find_token(pc_store *s, const char *id, Popcast__TokenRecord **out, pc_err *err)
{
    token_find f = {id, NULL};
    walk w = {&popcast__token_record__descriptor, {.token = find_token_cb}, &f, err};
    int rc = pc_store_meta_foreach(s, TOKEN_PREFIX, walk_one, &w, err);
    if (rc == FOUND) {
        *out = f.found;
        return PC_OK;
    }
    if (rc == PC_E_NOMEM)
        return pc_err_set(err, rc, "out of memory");
    return rc != PC_OK ? rc : pc_err_set(err, PC_E_NOTFOUND, "no token with id %s", id);
}

int pc_registry_foreach_token(pc_store *s, int (*cb)(void *arg, const Popcast__TokenRecord *t),
                              void *arg, pc_err *err)
{
    walk w = {&popcast__token_record__descriptor, {.token = cb}, arg, err};
    return pc_store_meta_foreach(s, TOKEN_PREFIX, walk_one, &w, err);
}

/* Agents. */

int pc_registry_put_agent(pc_store *s, const Popcast__AgentRecord *a, pc_err *err)
{
    if (!pc_id_valid(a->agent_id) || a->public_key.len != PC_PK_LEN)
        return pc_err_set(err, PC_E_INVALID, "agent record without a valid id or key");
    char key[sizeof(AGENT_PREFIX) + PC_ID_MAX];
    snprintf(key, sizeof(key), AGENT_PREFIX "%s", a->agent_id);
    return put_message(s, key, &a->base, err);
}

int pc_registry_get_agent(pc_store *s, const char *agent_id, Popcast__AgentRecord **out,
                          pc_err *err)
{
    if (!pc_id_valid(agent_id))
        return pc_err_set(err, PC_E_NOTFOUND, "not an agent id");
    char key[sizeof(AGENT_PREFIX) + PC_ID_MAX];
    snprintf(key, sizeof(key), AGENT_PREFIX "%s", agent_id);
    int rc = get_message(s, key, &popcast__agent_record__descriptor, (ProtobufCMessage **)out, err);
    if (rc == PC_OK && (*out)->public_key.len != PC_PK_LEN) {
        popcast__agent_record__free_unpacked(*out, NULL);
        *out = NULL;
        return corrupt(err, key);
    }
    return rc;
}

int pc_registry_foreach_agent(pc_store *s, int (*cb)(void *arg, const Popcast__AgentRecord *a),
                              void *arg, pc_err *err)
{
    walk w = {&popcast__agent_record__descriptor, {.agent = cb}, arg, err};
    return pc_store_meta_foreach(s, AGENT_PREFIX, walk_one, &w, err);
}

/* Cluster nodes. */

int pc_registry_put_node(pc_store *s, const Popcast__ClusterNode *n, pc_err *err)
{
    if (n->id == 0)
        return pc_err_set(err, PC_E_INVALID, "cluster node record without an id");
    char key[sizeof(NODE_PREFIX) + 24];
    snprintf(key, sizeof(key), NODE_PREFIX "%llu", (unsigned long long)n->id);
    return put_message(s, key, &n->base, err);
}

int pc_registry_foreach_node(pc_store *s, int (*cb)(void *arg, const Popcast__ClusterNode *n),
                             void *arg, pc_err *err)
{
    walk w = {&popcast__cluster_node__descriptor, {.node = cb}, arg, err};
    return pc_store_meta_foreach(s, NODE_PREFIX, walk_one, &w, err);
}

/* The agent's version outcomes. */

int pc_registry_put_outcomes(pc_store *s, const char *tenant, const Popcast__TenantOutcomes *o,
                             pc_err *err)
{
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_INVALID, "outcomes for an invalid tenant name");
    char key[sizeof(OUTCOME_PREFIX) + PC_TENANT_MAX];
    snprintf(key, sizeof(key), OUTCOME_PREFIX "%s", tenant);
    return put_message(s, key, &o->base, err);
}

int pc_registry_outcomes_write(const char *tenant, const Popcast__TenantOutcomes *o,
                               char key[PC_REGISTRY_OUTCOMES_KEY_MAX], pc_store_write *w,
                               uint8_t **val, pc_err *err)
{
    *val = NULL;
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_INVALID, "outcomes for an invalid tenant name");
    snprintf(key, PC_REGISTRY_OUTCOMES_KEY_MAX, OUTCOME_PREFIX "%s", tenant);
    size_t len = popcast__tenant_outcomes__get_packed_size(o);
    if ((*val = malloc(len ? len : 1)) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    popcast__tenant_outcomes__pack(o, *val);
    memset(w, 0, sizeof(*w));
    w->meta_key = key;
    w->meta_val = *val;
    w->meta_len = len;
    return PC_OK;
}

int pc_registry_foreach_outcomes(pc_store *s,
                                 int (*cb)(void *arg, const char *tenant,
                                           const Popcast__TenantOutcomes *o),
                                 void *arg, pc_err *err)
{
    walk w = {&popcast__tenant_outcomes__descriptor, {.outcomes = cb}, arg, err};
    return pc_store_meta_foreach(s, OUTCOME_PREFIX, walk_one, &w, err);
}

/* Tenants' own default plans. */

#define PLAN_PREFIX "plan."

int pc_registry_put_plan(pc_store *s, const Popcast__TenantPlan *p, pc_err *err)
{
    if (p->tenant == NULL || !pc_tenant_name_valid(p->tenant))
        return pc_err_set(err, PC_E_INVALID, "plan record without a valid tenant");
    char key[sizeof(PLAN_PREFIX) + PC_TENANT_MAX + 1];
    snprintf(key, sizeof(key), PLAN_PREFIX "%s", p->tenant);
    size_t len = popcast__tenant_plan__get_packed_size(p);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    popcast__tenant_plan__pack(p, buf);
    pc_store_write w = {
        .meta_key = key, .meta_val = buf, .meta_len = len, .meta_delete = p->n_plan == 0};
    int rc = pc_store_write_many(s, &w, 1, err);
    free(buf);
    return rc;
}

int pc_registry_get_plan(pc_store *s, const char *tenant, Popcast__TenantPlan **out, pc_err *err)
{
    *out = NULL;
    if (!pc_tenant_name_valid(tenant))
        return pc_err_set(err, PC_E_NOTFOUND, "no such plan");
    char key[sizeof(PLAN_PREFIX) + PC_TENANT_MAX + 1];
    snprintf(key, sizeof(key), PLAN_PREFIX "%s", tenant);
    return get_message(s, key, &popcast__tenant_plan__descriptor, (ProtobufCMessage **)out, err);
}

/* Staged deployments. */

static void deployment_key(char *out, size_t cap, const char *tenant, uint64_t id)
{
    snprintf(out, cap, DEPLOYMENT_PREFIX "%s.%020llu", tenant, (unsigned long long)id);
}

int pc_registry_put_deployment(pc_store *s, const Popcast__DeploymentRecord *d, bool open,
                               pc_err *err)
{
    if (d->tenant == NULL || !pc_tenant_name_valid(d->tenant) || d->id == 0)
        return pc_err_set(err, PC_E_INVALID, "deployment record without a tenant or id");
    char key[DEPLOYMENT_KEY_MAX], index[DEPLOYMENT_KEY_MAX];
    deployment_key(key, sizeof(key), d->tenant, d->id);
    snprintf(index, sizeof(index), OPEN_DEPLOYMENT_PREFIX "%s.%020llu", d->tenant,
             (unsigned long long)d->id);
    size_t len = popcast__deployment_record__get_packed_size(d);
    uint8_t *buf = malloc(len ? len : 1);
    if (buf == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    popcast__deployment_record__pack(d, buf);
    /* The record and its place in the index of open ones, together. */
    pc_store_write w[2] = {{.meta_key = key, .meta_val = buf, .meta_len = len},
                           {.meta_key = index, .meta_val = "", .meta_delete = !open}};
    int rc = pc_store_write_many(s, w, 2, err);
    free(buf);
    return rc;
}

typedef struct open_walk {
    pc_store *s;
    int (*cb)(void *arg, const Popcast__DeploymentRecord *d);
    void *arg;
    pc_err *err;
} open_walk;

static int open_one(void *arg, const char *key, const uint8_t *val, size_t len)
{
    (void)val;
    (void)len;
    open_walk *w = arg;
    char rec[DEPLOYMENT_KEY_MAX];
    snprintf(rec, sizeof(rec), DEPLOYMENT_PREFIX "%s", key + strlen(OPEN_DEPLOYMENT_PREFIX));
    Popcast__DeploymentRecord *d = NULL;
    int rc = get_message(w->s, rec, &popcast__deployment_record__descriptor,
                         (ProtobufCMessage **)&d, w->err);
    if (rc != PC_OK)
        return rc;
    rc = w->cb(w->arg, d);
    popcast__deployment_record__free_unpacked(d, NULL);
    return rc;
}

int pc_registry_foreach_open_deployment(pc_store *s,
                                        int (*cb)(void *arg, const Popcast__DeploymentRecord *d),
                                        void *arg, pc_err *err)
{
    open_walk w = {s, cb, arg, err};
    return pc_store_meta_foreach(s, OPEN_DEPLOYMENT_PREFIX, open_one, &w, err);
}

int pc_registry_get_deployment(pc_store *s, const char *tenant, uint64_t id,
                               Popcast__DeploymentRecord **out, pc_err *err)
{
    *out = NULL;
    if (!pc_tenant_name_valid(tenant) || id == 0)
        return pc_err_set(err, PC_E_NOTFOUND, "no such deployment");
    char key[DEPLOYMENT_KEY_MAX];
    deployment_key(key, sizeof(key), tenant, id);
    return get_message(s, key, &popcast__deployment_record__descriptor, (ProtobufCMessage **)out,
                       err);
}

int pc_registry_foreach_deployment(pc_store *s, const char *tenant,
                                   int (*cb)(void *arg, const Popcast__DeploymentRecord *d),
                                   void *arg, pc_err *err)
{
    char prefix[DEPLOYMENT_KEY_MAX];
    if (tenant != NULL && !pc_tenant_name_valid(tenant))
        return PC_OK;
    snprintf(prefix, sizeof(prefix), DEPLOYMENT_PREFIX "%s%s", tenant ? tenant : "",
             tenant ? "." : "");
    walk w = {&popcast__deployment_record__descriptor, {.deployment = cb}, arg, err};
    return pc_store_meta_foreach(s, prefix, walk_one, &w, err);
}

/* The agent's report epoch. */

int pc_registry_next_report_floor(pc_store *s, uint64_t now_us, uint64_t *floor, pc_err *err)
{
    uint8_t buf[8] = {0};
    size_t len = 0;
    int rc = pc_store_meta_get(s, EPOCH_KEY, buf, sizeof(buf), &len, err);
    uint64_t stored = 0;
    if (rc == PC_OK && len != 8)
        return corrupt(err, EPOCH_KEY);
    if (rc == PC_OK)
        stored = pc_be64_get(buf);
    else if (rc != PC_E_NOTFOUND)
        return rc;
    if (stored == UINT64_MAX)
        return pc_err_set(err, PC_E_INVALID, "meta %s is at its maximum: damaged", EPOCH_KEY);
    uint64_t f = stored + 1 > now_us ? stored + 1 : now_us;
    pc_be64_put(buf, f);
    if ((rc = pc_store_meta_put(s, EPOCH_KEY, buf, 8, err)) != PC_OK)
        return rc;
    *floor = f;
    return PC_OK;
}
