/* lua_engine.h - the Lua 5.4 runtime adapter ("lua"): each tenant version
 * runs in sandboxed isolates (one lua_State each), and a request never
 * enters an isolate another request is in. docs/runtime-lua.md is the
 * tenant-facing description (handler API, limits, metrics).
 *
 * A version owns a pool of isolates, created on demand up to max_isolates;
 * the first is built at prepare, so activation is warm. Idle isolates are
 * bounded across the engine (max_idle_isolates): past it, the least
 * recently used idle isolate of any version is freed; and a version none
 * of whose isolates was used for idle_ttl_ms loses its idle ones (the
 * watchdog looks). So a tenant that gets no traffic costs its source and
 * bookkeeping, not a lua_State; its next request builds an isolate again
 * (a cold start). Activation swaps
 * the tenant's version pointer under a per-tenant lock; requests hold a
 * reference to the version they started on, and a version (with its
 * isolates) is freed when its last reference goes. An isolate that hit a
 * limit is discarded, never reused. */
#ifndef PC_LUA_ENGINE_H
#define PC_LUA_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "err.h"
#include "metrics.h"
#include "names.h"

typedef struct pc_lua_limits {
    size_t memory_bytes;      /* per isolate, default 32 MiB */
    uint64_t instructions;    /* per request and for the top-level run, default 50,000,000 */
    uint64_t wall_ms;         /* per request and for the top-level run, default 1000 */
    size_t response_bytes;    /* response body, default 8 MiB */
    size_t max_isolates;      /* per version, default 64 */
    size_t max_idle_isolates; /* idle ones across all versions, default 1024 (0: 1) */
    uint64_t watchdog_ms;     /* hard ceiling for any run (see below); 0: 4 x wall_ms */
    uint64_t idle_ttl_ms; /* idle isolates unused this long are freed; 0: never (default 60000) */
} pc_lua_limits;

void pc_lua_limits_default(pc_lua_limits *l);

/* metrics may be NULL. Returns NULL (err set) on failure. Starts the
 * engine's watchdog thread; destroy stops it. */
pc_adapter *pc_lua_adapter_new(const pc_lua_limits *limits, pc_metrics *metrics, pc_err *err);

/* For tests and status: versions and isolates currently allocated (the
 * idle ones are among the isolates). */
void pc_lua_adapter_counts(pc_adapter *a, long *versions, long *isolates);

/* Quarantine.
 *
 * Every path into tenant code is metered (docs/runtime-lua.md): a run
 * that passes a limit ends within about twice that limit. The watchdog is
 * the backstop for a path that would not: if a thread is still inside a
 * tenant's code (a request, or a top level being run at prepare or for a
 * new isolate) past the hard ceiling (watchdog_ms after it entered), the
 * engine's watchdog thread, which looks every ceiling/4 (10 ms to 1 s):
 *   - raises the run's abort flag: the run ends at its next check with
 *     PC_E_LIMIT, limit "watchdog" (if it never reaches a check, as a C
 *     function that never returns would not, its thread stays there);
 *   - quarantines the version: each request that starts afterwards is
 *     answered PC_E_QUARANTINED ("tenant T version V is quarantined: REASON")
 *     at once, without entering the tenant's code, so a stuck version
 *     cannot take worker after worker;
 *   - counts popcast_lua_quarantined_total{tenant} (and the run in
 *     popcast_lua_limit_exceeded_total{tenant,limit="watchdog"}).
 * A quarantine lasts as long as the version: the tenant's next version
 * (activate) or deactivation ends it. A version quarantined while being
 * prepared fails to prepare.
 *
 * The two functions below are what the agent reports; both are thread
 * safe and take the engine's table lock and per-tenant locks briefly. */
typedef pc_quarantine pc_lua_quarantine; /* adapter.h */

/* The live versions in quarantine: fills up to max of them into out and
 * returns how many there are (which may be more than max). */
size_t pc_lua_adapter_quarantined(pc_adapter *a, pc_lua_quarantine *out, size_t max);

/* Whether tenant's live version is quarantined (then *q, if not NULL,
 * says which and why). */
bool pc_lua_adapter_is_quarantined(pc_adapter *a, const char *tenant, pc_lua_quarantine *q);

#endif
