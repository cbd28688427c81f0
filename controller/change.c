/* change.c - change kinds (see change.h). */
#include "change.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

static const pc_change_kind_info kinds[PC_CHANGE_KIND_COUNT] = {
    [PC_CHANGE_DEPLOY] = {"deploy", true, 201},
    [PC_CHANGE_ROLLBACK] = {"rollback", true, 201},
    [PC_CHANGE_DELETE] = {"delete", true, 200},
    [PC_CHANGE_ADD_NODE] = {"add_node", false, 200},
    [PC_CHANGE_REMOVE_NODE] = {"remove_node", false, 200},
    [PC_CHANGE_TOKEN_CREATE] = {"token_create", false, 201},
    [PC_CHANGE_TOKEN_REVOKE] = {"token_revoke", false, 200},
    [PC_CHANGE_AGENT_ENROLL] = {"agent_enroll", false, 201},
    [PC_CHANGE_AGENT_REVOKE] = {"agent_revoke", false, 200},
    [PC_CHANGE_KEY_ROTATE] = {"key_rotation", false, 201},
    [PC_CHANGE_STAGE] = {"stage", true, 201},
    [PC_CHANGE_DEPLOYMENT] = {"deployment", false, 200},
    [PC_CHANGE_PLAN] = {"plan", false, 200},
};

const pc_change_kind_info *pc_change_kind_get(pc_change_kind kind)
{
    static const pc_change_kind_info unknown = {"unknown", false, 500};
    return (unsigned)kind < PC_CHANGE_KIND_COUNT ? &kinds[kind] : &unknown;
}

pc_change *pc_change_new(pc_change_kind kind, const char *tenant)
{
    pc_change *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->kind = kind;
    snprintf(c->tenant, sizeof(c->tenant), "%s", tenant ? tenant : "");
    return c;
}

void pc_change_free(pc_change *c)
{
    if (c == NULL)
        return;
    if (c->target != NULL)
        popcast__target__free_unpacked(c->target, NULL);
    switch (c->kind) {
    case PC_CHANGE_DEPLOY: free(c->u.deploy.bundle); break;
    case PC_CHANGE_ROLLBACK: free(c->u.rollback.content.bundle); break;
    case PC_CHANGE_DEPLOYMENT:
        if (c->u.deployment.create != NULL)
            popcast__deployment_record__free_unpacked(c->u.deployment.create, NULL);
        break;
    case PC_CHANGE_PLAN:
        if (c->u.plan.record != NULL)
            popcast__tenant_plan__free_unpacked(c->u.plan.record, NULL);
        break;
    case PC_CHANGE_TOKEN_CREATE:
        sodium_memzero(c->u.token.secret, sizeof(c->u.token.secret));
        break;
    case PC_CHANGE_KEY_ROTATE:
        if (c->u.key.authorization != NULL)
            popcast__signed_rotation_authorization__free_unpacked(c->u.key.authorization, NULL);
        break;
    default: break;
    }
    free(c);
}

int pc_change_set_idempotency(pc_change *c, const char *key, pc_err *err)
{
    if (!pc_change_kind_get(c->kind)->tenant)
        return pc_err_set(err, PC_E_INVALID, "Idempotency-Key is honoured on tenant changes only");
    if (!pc_idempotency_key_valid(key))
        return pc_err_set(err, PC_E_INVALID,
                          "Idempotency-Key must be 1 to %d characters of A-Z a-z 0-9 . _ : -",
                          PC_IDEMPOTENCY_KEY_MAX);
    snprintf(c->idempotency_key, sizeof(c->idempotency_key), "%s", key);
    /* What the request asks for, not how it was sent: the same bundle
     * bytes, entrypoint and runtime, or the same rollback target, with the
     * same message. */
    char what[PC_TENANT_MAX + PC_PATH_MAX + PC_RUNTIME_NAME_MAX + PC_HEX_HASH_LEN +
              PC_CHANGE_MESSAGE_MAX + 64];
    uint8_t bundle_hash[PC_HASH_LEN];
    char hex[PC_HEX_HASH_LEN] = "";
    int n = 0;
    switch (c->kind) {
    case PC_CHANGE_DEPLOY:
        pc_hash(bundle_hash, c->u.deploy.bundle, c->u.deploy.bundle_len);
        pc_hex(hex, bundle_hash, PC_HASH_LEN);
        n = snprintf(what, sizeof(what), "deploy\n%s\n%s\n%s\n%s", c->tenant, c->u.deploy.runtime,
                     c->u.deploy.entrypoint, hex);
        break;
    case PC_CHANGE_ROLLBACK:
        if (c->u.rollback.asked == 0)
            n = snprintf(what, sizeof(what), "rollback\n%s\ndefault", c->tenant);
        else
            n = snprintf(what, sizeof(what), "rollback\n%s\n%llu", c->tenant,
                         (unsigned long long)c->u.rollback.asked);
        break;
    case PC_CHANGE_STAGE:
        n = snprintf(what, sizeof(what), "stage\n%s\n%llu", c->tenant,
                     (unsigned long long)c->u.stage.version);
        break;
    default: n = snprintf(what, sizeof(what), "delete\n%s", c->tenant); break;
    }
    /* The target as signed (protobuf bytes), when there is one. */
    char target_hex[PC_HEX_HASH_LEN] = "";
    if (c->target != NULL) {
        size_t len = popcast__target__get_packed_size(c->target);
        uint8_t *buf = malloc(len ? len : 1), th[PC_HASH_LEN];
        if (buf == NULL)
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        popcast__target__pack(c->target, buf);
        pc_hash(th, buf, len);
        free(buf);
        pc_hex(target_hex, th, PC_HASH_LEN);
    }
    if (n > 0 && (size_t)n < sizeof(what) && target_hex[0] != '\0')
        n += snprintf(what + n, sizeof(what) - (size_t)n, "\ntarget\n%s", target_hex);
    /* Only when there is one: keys taken before messages existed keep
     * their fingerprints. */
    if (n > 0 && (size_t)n < sizeof(what) && c->message[0] != '\0')
        n += snprintf(what + n, sizeof(what) - (size_t)n, "\nmessage\n%s", c->message);
    pc_hash(c->fingerprint, what, n > 0 && (size_t)n < sizeof(what) ? (size_t)n : 0);
    return PC_OK;
}
