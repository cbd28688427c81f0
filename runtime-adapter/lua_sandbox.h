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

#include <stdbool.h>
#include <stddef.h>

#include "adapter.h"
#include "err.h"
#include "lua_engine.h"

typedef struct pc_lua_isolate pc_lua_isolate;

/* Which limit stopped a run (PC_LUA_LIMIT_NONE if none). */
typedef enum {
    PC_LUA_LIMIT_NONE,
    PC_LUA_LIMIT_CPU,
    PC_LUA_LIMIT_TIME,
    PC_LUA_LIMIT_MEMORY,
    PC_LUA_LIMIT_RESPONSE,
} pc_lua_limit;

const char *pc_lua_limit_name(pc_lua_limit l);

/* Compiles source (text only) without running it. */
int pc_lua_check_syntax(const char *source, size_t len, const char *chunkname, pc_err *err);

/* Builds an isolate: compiles source, runs its top level under the
 * limits, and finds the handler (the chunk's return value if a function,
 * else the global `handle`). *hit tells which limit stopped it, if any. */
int pc_lua_isolate_new(const char *source, size_t len, const char *chunkname,
                       const pc_lua_limits *limits, pc_lua_isolate **out, pc_lua_limit *hit,
                       pc_err *err);

/* Runs the handler for one request. PC_E_RUNTIME: the handler failed or
 * answered something malformed; PC_E_LIMIT: *hit says which limit. After
 * PC_E_LIMIT the isolate must be discarded. */
int pc_lua_isolate_call(pc_lua_isolate *iso, const pc_request *req, pc_response *res,
                        pc_lua_limit *hit, pc_err *err);

void pc_lua_isolate_free(pc_lua_isolate *iso);

#endif
