/* fuzz_api_bodies.c - the controller API's JSON request bodies. The first
 * byte picks the decoder (0xF0 and above: a stage; 0xE0 to 0xEF: a
 * deployment; 0xD0 to 0xDF: a tenant's plan; else, modulo 5: cluster node,
 * rollback, token, agent, key rotation). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api_bodies.h"
#include "deployment.h"
#include "fuzz.h"
#include "target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    pc_err err;
    if (data[0] >= 0xF0) {
        Popcast__Target *t = NULL;
        char message[PC_CHANGE_MESSAGE_MAX + 1];
        /* A stage that parses names someone (or everyone, NULL) and holds
         * only what a signed target may. */
        if (pc_api_parse_stage(data + 1, size - 1, &t, message, sizeof(message), &err) == PC_OK &&
            (!pc_change_message_valid(message) || pc_target_check(t, &err) != PC_OK ||
             (t != NULL && t->n_agents + t->n_pops == 0 && t->permille == 0)))
            __builtin_trap();
        if (t != NULL)
            popcast__target__free_unpacked(t, NULL);
    } else if (data[0] >= 0xE0) {
        Popcast__DeploymentRecord *d = NULL;
        bool default_plan = false;
        char message[PC_CHANGE_MESSAGE_MAX + 1];
        /* A deployment that parses has a plan of 1 to 8 stages (or asks for
         * the default one, or is immediate with none), each naming someone
         * and holding only what a signed target may. */
        if (pc_api_parse_deployment(data + 1, size - 1, &d, &default_plan, message, sizeof(message),
                                    &err) == PC_OK) {
            if (!pc_change_message_valid(message) ||
                (d->n_plan == 0) != (default_plan || d->immediate) ||
                d->n_plan > PC_DEPLOYMENT_MAX_STAGES)
                __builtin_trap();
            for (size_t i = 0; i < d->n_plan; i++)
                if (pc_target_check(d->plan[i]->target, &err) != PC_OK)
                    __builtin_trap();
        }
        if (d != NULL)
            popcast__deployment_record__free_unpacked(d, NULL);
    } else if (data[0] >= 0xD0) {
        Popcast__TenantPlan *p = NULL;
        /* A plan that parses has 1 to 8 stages, each naming someone and
         * holding only what a signed target may. */
        if (pc_api_parse_plan(data + 1, size - 1, &p, &err) == PC_OK) {
            if (p->n_plan < 1 || p->n_plan > PC_DEPLOYMENT_MAX_STAGES)
                __builtin_trap();
            for (size_t i = 0; i < p->n_plan; i++)
                if (pc_target_check(p->plan[i]->target, &err) != PC_OK)
                    __builtin_trap();
        }
        if (p != NULL)
            popcast__tenant_plan__free_unpacked(p, NULL);
    } else if (data[0] % 5 == 4) {
        uint8_t next[32], root[32];
        int has_root = 0;
        Popcast__SignedRotationAuthorization *auth = NULL;
        if (pc_api_parse_rotation(data + 1, size - 1, next, root, &has_root, &auth, &err) ==
                PC_OK &&
            auth != NULL && has_root)
            __builtin_trap();
        if (auth != NULL)
            popcast__signed_rotation_authorization__free_unpacked(auth, NULL);
    } else if (data[0] % 5 == 3) {
        char id[129];
        uint8_t pk[32];
        if (pc_api_parse_agent(data + 1, size - 1, id, sizeof(id), pk, &err) == PC_OK &&
            strlen(id) == 0)
            __builtin_trap();
    } else if (data[0] % 5 == 2) {
        char name[65], tenants[16][64];
        size_t n = 0;
        if (pc_api_parse_token(data + 1, size - 1, name, sizeof(name), &tenants[0][0],
                               sizeof(tenants[0]), 16, &n, &err) == PC_OK &&
            (n < 1 || n > 16))
            __builtin_trap();
    } else if (data[0] % 5 == 1) {
        uint64_t version = 0;
        char message[PC_CHANGE_MESSAGE_MAX + 1];
        /* version 0: none named (the API chooses the target). */
        if (pc_api_parse_rollback(data + 1, size - 1, &version, message, sizeof(message), &err) ==
                PC_OK &&
            !pc_change_message_valid(message))
            __builtin_trap();
    } else {
        uint64_t id = 0;
        char raft[128], api[256];
        if (pc_api_parse_node(data + 1, size - 1, &id, raft, sizeof(raft), api, sizeof(api),
                              &err) == PC_OK &&
            (id < 1 || strlen(raft) == 0 || strncmp(api, "http", 4) != 0))
            __builtin_trap();
    }
    return 0;
}
