/* target.c - which agents a version goes live on (see target.h). */
#include "target.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#include "byteorder.h"
#include "names.h"

#define RANK_DOMAIN "popcast-target-v1"

unsigned pc_target_rank(const char *tenant, uint64_t version, const char *agent_id)
{
    /* Lengths go in before the names so that no two (tenant, agent) pairs
     * hash the same bytes. */
    crypto_generichash_state st;
    uint8_t be[8], out[8];
    crypto_generichash_init(&st, NULL, 0, sizeof(out));
    crypto_generichash_update(&st, (const uint8_t *)RANK_DOMAIN, strlen(RANK_DOMAIN));
    pc_be64_put(be, strlen(tenant));
    crypto_generichash_update(&st, be, sizeof(be));
    crypto_generichash_update(&st, (const uint8_t *)tenant, strlen(tenant));
    pc_be64_put(be, version);
    crypto_generichash_update(&st, be, sizeof(be));
    crypto_generichash_update(&st, (const uint8_t *)agent_id, strlen(agent_id));
    crypto_generichash_final(&st, out, sizeof(out));
    return (unsigned)(pc_be64_get(out) % PC_TARGET_EVERYONE);
}

bool pc_target_is_everyone(const Popcast__Target *target)
{
    return target == NULL || target->permille >= PC_TARGET_EVERYONE;
}

static bool listed(char *const *names, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (names[i] != NULL && strcmp(names[i], name) == 0)
            return true;
    return false;
}

bool pc_target_names(const Popcast__Target *target, const char *tenant, uint64_t version,
                     const char *agent_id, const char *pop)
{
    if (pc_target_is_everyone(target))
        return true;
    if (listed(target->agents, target->n_agents, agent_id) ||
        listed(target->pops, target->n_pops, pop))
        return true;
    return target->permille > 0 && pc_target_rank(tenant, version, agent_id) < target->permille;
}

int pc_target_check(const Popcast__Target *target, pc_err *err)
{
    if (target == NULL)
        return PC_OK;
    if (target->n_agents > PC_TARGET_MAX_NAMES || target->n_pops > PC_TARGET_MAX_NAMES)
        return pc_err_set(err, PC_E_INVALID, "a target names at most %d agents and %d PoPs",
                          PC_TARGET_MAX_NAMES, PC_TARGET_MAX_NAMES);
    for (size_t i = 0; i < target->n_agents; i++)
        if (target->agents[i] == NULL || !pc_id_valid(target->agents[i]))
            return pc_err_set(err, PC_E_INVALID, "target agent %zu is not a valid agent id", i);
    for (size_t i = 0; i < target->n_pops; i++)
        if (target->pops[i] == NULL || !pc_id_valid(target->pops[i]))
            return pc_err_set(err, PC_E_INVALID, "target PoP %zu is not a valid PoP name", i);
    if (target->permille > PC_TARGET_EVERYONE)
        return pc_err_set(err, PC_E_INVALID, "target permille %u is above 1000",
                          (unsigned)target->permille);
    if (target->split_permille > PC_TARGET_EVERYONE)
        return pc_err_set(err, PC_E_INVALID, "target split_permille %u is above 1000",
                          (unsigned)target->split_permille);
    if ((target->split_key != NULL && target->split_key[0] != '\0' &&
         !pc_target_split_key_valid(target->split_key)) ||
        (pc_target_splits(target) && (target->split_key == NULL || target->split_key[0] == '\0')))
        return pc_err_set(err, PC_E_INVALID,
                          "a split needs a split_key: a header name ([a-z0-9-], 1 to 64) or "
                          "cookie:NAME");
    return PC_OK;
}

bool pc_target_splits(const Popcast__Target *target)
{
    return target != NULL && target->split_permille > 0 &&
           target->split_permille < PC_TARGET_EVERYONE;
}

static bool all_of(const char *s, size_t max, const char *extra, bool upper)
{
    size_t n = strlen(s);
    if (n < 1 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  (upper && c >= 'A' && c <= 'Z') || strchr(extra, c) != NULL;
        if (!ok)
            return false;
    }
    return true;
}

bool pc_target_split_key_valid(const char *key)
{
    if (key == NULL)
        return false;
    if (strncmp(key, "cookie:", 7) == 0)
        return all_of(key + 7, 64, "._-", true);
    return all_of(key, 64, "-", false);
}

unsigned pc_target_split_rank(const char *tenant, uint64_t version, const char *value,
                              size_t value_len)
{
    crypto_generichash_state st;
    uint8_t be[8], out[8];
    crypto_generichash_init(&st, NULL, 0, sizeof(out));
    crypto_generichash_update(&st, (const uint8_t *)"popcast-split-v1", 16);
    pc_be64_put(be, strlen(tenant));
    crypto_generichash_update(&st, be, sizeof(be));
    crypto_generichash_update(&st, (const uint8_t *)tenant, strlen(tenant));
    pc_be64_put(be, version);
    crypto_generichash_update(&st, be, sizeof(be));
    crypto_generichash_update(&st, (const uint8_t *)value, value_len);
    crypto_generichash_final(&st, out, sizeof(out));
    return (unsigned)(pc_be64_get(out) % PC_TARGET_EVERYONE);
}

Popcast__Target *pc_target_new(void)
{
    Popcast__Target *t = malloc(sizeof(*t));
    if (t != NULL)
        popcast__target__init(t);
    return t;
}

static int add_name(char ***names, size_t *n, const char *name, const char *what, pc_err *err)
{
    if (name == NULL || !pc_id_valid(name))
        return pc_err_set(err, PC_E_INVALID, "'%s' is not a valid %s", name ? name : "", what);
    if (*n >= PC_TARGET_MAX_NAMES)
        return pc_err_set(err, PC_E_INVALID, "a target names at most %d %ss", PC_TARGET_MAX_NAMES,
                          what);
    char **grown = realloc(*names, (*n + 1) * sizeof(*grown));
    if (grown == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    *names = grown;
    if ((grown[*n] = strdup(name)) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    (*n)++;
    return PC_OK;
}

int pc_target_add_agent(Popcast__Target *t, const char *agent_id, pc_err *err)
{
    return add_name(&t->agents, &t->n_agents, agent_id, "agent id", err);
}

int pc_target_add_pop(Popcast__Target *t, const char *pop, pc_err *err)
{
    return add_name(&t->pops, &t->n_pops, pop, "PoP name", err);
}

Popcast__Target *pc_target_copy(const Popcast__Target *t)
{
    if (t == NULL)
        return NULL;
    Popcast__Target *c = pc_target_new();
    bool ok = c != NULL;
    for (size_t i = 0; ok && i < t->n_agents; i++)
        ok = add_name(&c->agents, &c->n_agents, t->agents[i], "agent id", NULL) == PC_OK;
    for (size_t i = 0; ok && i < t->n_pops; i++)
        ok = add_name(&c->pops, &c->n_pops, t->pops[i], "PoP name", NULL) == PC_OK;
    if (!ok) {
        if (c != NULL)
            popcast__target__free_unpacked(c, NULL);
        return NULL;
    }
    c->permille = t->permille;
    c->split_permille = t->split_permille;
    if (t->split_key != NULL && t->split_key[0] != '\0' &&
        (c->split_key = strdup(t->split_key)) == NULL) {
        popcast__target__free_unpacked(c, NULL);
        return NULL;
    }
    return c;
}

static json_t *names_json(char *const *names, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(names[i]));
    return a;
}

json_t *pc_target_json(const Popcast__Target *t)
{
    json_t *o;
    if (pc_target_is_everyone(t))
        o = json_pack("{s:b}", "everyone", 1);
    else
        o = json_pack("{s:o,s:o,s:i}", "agents", names_json(t->agents, t->n_agents), "pops",
                      names_json(t->pops, t->n_pops), "permille", (int)t->permille);
    if (o != NULL && pc_target_splits(t)) {
        json_object_set_new(o, "split_permille", json_integer((json_int_t)t->split_permille));
        json_object_set_new(o, "split_key", json_string(t->split_key));
    }
    return o;
}
