/* lua_sandbox.h - one Lua isolate: a fresh lua_State with a capped
 * allocator, an instruction/time hook, and only safe libraries (no io, os,
 * debug, package, require, bytecode loading, string.dump). It runs a
 * tenant's top level once and then one request at a time.
 *
 * Limits are enforced inside Lua: an allocation over the cap fails as a
 * Lua memory error; the hook raises an error once the instruction budget
 * or the wall-clock deadline is passed, and then on every instruction, so
 * pcall in tenant code cannot swallow it. */
#ifndef PC_LUA_SANDBOX_H
#define PC_LUA_SANDBOX_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapter.h"
#include "err.h"
#include "lua_engine.h"

typedef struct pc_lua_isolate pc_lua_isolate;

/* Which limit stopped a run (PC_LUA_LIMIT_NONE if none). WATCHDOG: the
 * caller's abort flag was raised (the engine's watchdog does, past its
 * hard ceiling). */
typedef enum {
    PC_LUA_LIMIT_NONE,
    PC_LUA_LIMIT_CPU,
    PC_LUA_LIMIT_TIME,
    PC_LUA_LIMIT_MEMORY,
    PC_LUA_LIMIT_RESPONSE,
    PC_LUA_LIMIT_WATCHDOG,
} pc_lua_limit;

#define PC_LUA_LIMIT_LAST PC_LUA_LIMIT_WATCHDOG

const char *pc_lua_limit_name(pc_lua_limit l);

/* The monotonic clock the limits are measured with, in nanoseconds. */
int64_t pc_lua_now_ns(void);

/* Compiles source (text only) without running it, under the same memory
 * cap and work budget as a prepare: the controller's upload check then
 * refuses what every agent would refuse to compile (PC_E_LIMIT), instead
 * of accepting a bundle all of them nack. */
int pc_lua_check_syntax(const char *source, size_t len, const char *chunkname,
                        const pc_lua_limits *limits, pc_err *err);

/* Both runs below take abort, which may be NULL: a flag that another
 * thread may set (non-zero) while the run is in progress. The run then
 * stops at its next check of the limits (every hook interval, every chunk
 * of charged work, every big allocation) with PC_LUA_LIMIT_WATCHDOG. The
 * flag must stay valid until the call returns; it is only read. */

/* Builds an isolate: compiles source, runs its top level under the
 * limits, and finds the handler (the chunk's return value if a function,
 * else the global `handle`). *hit tells which limit stopped it, if any.
 * limits must outlive the isolate. */
int pc_lua_isolate_new(const char *source, size_t len, const char *chunkname,
                       const pc_lua_limits *limits, const atomic_int *abort, pc_lua_isolate **out,
                       pc_lua_limit *hit, pc_err *err);

/* For bench/bench_lua_metering.c only, never on the request path: an
 * isolate with Lua's own library functions (string, table, utf8,
 * patterns, load, setmetatable, xpcall, coroutines: nothing metered or
 * guarded), under the same hook, allocator and limits otherwise. It is
 * what the cost of metering is measured against. */
int pc_lua_isolate_new_stock(const char *source, size_t len, const char *chunkname,
                             const pc_lua_limits *limits, pc_lua_isolate **out, pc_lua_limit *hit,
                             pc_err *err);

/* Runs the handler for one request. PC_E_RUNTIME: the handler failed or
 * answered something malformed; PC_E_LIMIT: *hit says which limit. After
 * PC_E_LIMIT the isolate must be discarded. */
int pc_lua_isolate_call(pc_lua_isolate *iso, const pc_request *req, pc_response *res,
                        const atomic_int *abort, pc_lua_limit *hit, pc_err *err);

void pc_lua_isolate_free(pc_lua_isolate *iso);

#endif
