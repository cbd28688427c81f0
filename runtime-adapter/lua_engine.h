/* lua_engine.h - the Lua 5.4 runtime adapter ("lua"): each tenant version
 * runs in sandboxed isolates (one lua_State each), and a request never
 * enters an isolate another request is in. docs/runtime-lua.md is the
 * tenant-facing description (handler API, limits, metrics).
 *
 * A version owns a pool of isolates, created on demand up to max_isolates;
 * the first is built at prepare, so activation is warm. Activation swaps
 * the tenant's version pointer under a per-tenant lock; requests hold a
 * reference to the version they started on, and a version (with its
 * isolates) is freed when its last reference goes. An isolate that hit a
 * limit is discarded, never reused. */
#ifndef PC_LUA_ENGINE_H
#define PC_LUA_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "err.h"
#include "metrics.h"

typedef struct pc_lua_limits {
    size_t memory_bytes;   /* per isolate, default 32 MiB */
    uint64_t instructions; /* per request and for the top-level run, default 50,000,000 */
    uint64_t wall_ms;      /* per request, default 1000 */
    size_t response_bytes; /* response body, default 8 MiB */
    size_t max_isolates;   /* per version, default 64 */
} pc_lua_limits;

void pc_lua_limits_default(pc_lua_limits *l);

/* metrics may be NULL. Returns NULL (err set) on failure. */
pc_adapter *pc_lua_adapter_new(const pc_lua_limits *limits, pc_metrics *metrics, pc_err *err);

/* For tests and status: versions and isolates currently allocated. */
void pc_lua_adapter_counts(pc_adapter *a, long *versions, long *isolates);

#endif
