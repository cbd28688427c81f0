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
    switch (c->kind) {
    case PC_CHANGE_DEPLOY: free(c->u.deploy.bundle); break;
    case PC_CHANGE_ROLLBACK: free(c->u.rollback.content.bundle); break;
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
