/* target.h - which agents a version goes live on (Manifest.target).
 *
 * A target names agents by id, PoPs by name, and a fraction of all agents
 * in per mille, chosen by hashing the tenant, the version and the agent id
 * (proto/popcast.proto, Target). Every controller and every agent computes
 * the same answer from the signed target alone, and for one version a
 * larger fraction names a superset of a smaller one: a deployment's stages
 * only ever widen. A missing target (NULL) names every agent; a target
 * with nothing in it names none (an upload: stored, not live). */
#ifndef PC_TARGET_H
#define PC_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "popcast.pb-c.h"

#define PC_TARGET_MAX_NAMES 64   /* agents, and PoPs, per target */
#define PC_TARGET_EVERYONE  1000 /* permille that names every agent */

/* Whether target (NULL: everyone) names the agent agent_id in PoP pop for
 * this tenant's version. */
bool pc_target_names(const Popcast__Target *target, const char *tenant, uint64_t version,
                     const char *agent_id, const char *pop);

/* Whether target names every agent whatever its id and PoP (NULL, or a
 * permille of 1000). */
bool pc_target_is_everyone(const Popcast__Target *target);

/* The agent's place in the fraction, 0..999: named by every permille above
 * it. */
unsigned pc_target_rank(const char *tenant, uint64_t version, const char *agent_id);

/* Whether target splits the traffic of the agents it names (a
 * split_permille from 1 to 999). */
bool pc_target_splits(const Popcast__Target *target);

/* Whether key is a valid split key: a header name ([a-z0-9-], 1 to 64) or
 * "cookie:" and a cookie name ([A-Za-z0-9._-], 1 to 64). */
bool pc_target_split_key_valid(const char *key);

/* The request's place in a split of tenant's version, 0..999, from its
 * key's value: the version serves it when the place is below
 * split_permille. */
unsigned pc_target_split_rank(const char *tenant, uint64_t version, const char *value,
                              size_t value_len);

/* PC_E_INVALID, naming the field, unless every agent id and PoP name is
 * valid (names.h), there are at most PC_TARGET_MAX_NAMES of each,
 * permille and split_permille are at most 1000, and a split key (needed
 * by a split) is valid. */
int pc_target_check(const Popcast__Target *target, pc_err *err);

/* Building targets (a request's): an empty target (names nobody) that
 * pc_target_add_* fill, NULL when out of memory. Free what these make,
 * or a copy, with popcast__target__free_unpacked. The adders return
 * PC_E_INVALID past PC_TARGET_MAX_NAMES or for a name that is not valid,
 * PC_E_NOMEM; the target is unchanged then. */
Popcast__Target *pc_target_new(void);
int pc_target_add_agent(Popcast__Target *t, const char *agent_id, pc_err *err);
int pc_target_add_pop(Popcast__Target *t, const char *pop, pc_err *err);
/* A deep copy (NULL for NULL, or when out of memory: check the source). */
Popcast__Target *pc_target_copy(const Popcast__Target *t);

/* {"agents": [...], "pops": [...], "permille": n}, or {"everyone": true}
 * for a target naming every agent (NULL, or a permille of 1000). */
json_t *pc_target_json(const Popcast__Target *t);

#endif
