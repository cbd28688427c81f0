/* api_bodies.h - decoders of the controller API's JSON request bodies.
 * Pure functions of the bytes received (no I/O, no state), so the fuzz
 * targets in fuzz/ exercise exactly what the API runs. Every refusal is
 * PC_E_INVALID with a message fit for the client. */
#ifndef PC_API_BODIES_H
#define PC_API_BODIES_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "names.h"
#include <stdbool.h>

#include "popcast.pb-c.h"

/* {"version": N, "message": "..."} with N >= 1, both optional (*version
 * 0 when absent: the API chooses, rollback_target.h; the message
 * pc_change_message_valid, under message_cap; "" when absent) and no
 * other field. */
int pc_api_parse_rollback(const uint8_t *body, size_t len, uint64_t *version, char *message,
                          size_t message_cap, pc_err *err);

/* A stage: {"everyone": true} or any of {"agents": [ids], "pops":
 * [names], "permille": 0..1000} naming someone (not all empty or 0), and an optional
 * "message" as above; no other field. *target is NULL for everyone, else
 * a new target (free with popcast__target__free_unpacked). */
int pc_api_parse_stage(const uint8_t *body, size_t len, Popcast__Target **target, char *message,
                       size_t message_cap, pc_err *err);

/* A deployment: {"version": N >= 1 (absent: the active one), "plan":
 * "default" or [stage, ...] (1 to 8; absent: "default"), "immediate":
 * true (one stage, everyone, no gate; not with a plan), "message": "..."}.
 * A stage is a target as in pc_api_parse_stage ("everyone" or "pops",
 * "agents", "permille") and "bake_ms" (at most a week), "max_nacks",
 * "min_requests" (at most 10^9), "gate" (default true). *out: a new record
 * with version, immediate and, unless *default_plan, the plan (free with
 * popcast__deployment_record__free_unpacked). */
int pc_api_parse_deployment(const uint8_t *body, size_t len, Popcast__DeploymentRecord **out,
                            bool *default_plan, char *message, size_t message_cap, pc_err *err);

/* A tenant's default plan: {"plan": [stage, ...]} (1 to 8 stages, as in a
 * deployment) and nothing else. *out: a new record with the plan (free
 * with popcast__tenant_plan__free_unpacked). */
int pc_api_parse_plan(const uint8_t *body, size_t len, Popcast__TenantPlan **out, pc_err *err);

/* {"id": N >= 1, "raft_address": "host:port", "api_url": "http..."} and
 * nothing else; raft_address under raft_cap, api_url under api_cap. */
int pc_api_parse_node(const uint8_t *body, size_t len, uint64_t *id, char *raft_address,
                      size_t raft_cap, char *api_url, size_t api_cap, pc_err *err);

/* {"tenants": ["a", ...] (1 to max_tenants valid, distinct names),
 *  "name": "label" (optional, [A-Za-z0-9._-], under name_cap)} and nothing
 * else. tenants is an array of max_tenants rows of tenant_cap bytes. */
int pc_api_parse_token(const uint8_t *body, size_t len, char *name, size_t name_cap, char *tenants,
                       size_t tenant_cap, size_t max_tenants, size_t *n_tenants, pc_err *err);

/* {"agent_id": "edge-1", "public_key": "popcast-ed25519-public-v1 <b64>"
 * (or just the base64)} and nothing else. */
int pc_api_parse_agent(const uint8_t *body, size_t len, char *agent_id, size_t id_cap,
                       uint8_t public_key[32], pc_err *err);

/* {"next_public_key": "popcast-ed25519-public-v1 <b64>" (or the base64),
 *  and optionally one of "root_key": "<the same form>" (sign with this
 *  root key) or "authorization": "popcast-rotation-auth-v1 <b64>" (a root's
 *  offline authorization; *authorization gets the parsed, not yet verified
 *  message, to free with popcast__signed_rotation_authorization__free_unpacked)}
 * and nothing else. *has_root says whether root_key was given. */
int pc_api_parse_rotation(const uint8_t *body, size_t len, uint8_t next_public_key[32],
                          uint8_t root_key[32], int *has_root,
                          Popcast__SignedRotationAuthorization **authorization, pc_err *err);

#endif
