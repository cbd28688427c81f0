/* lua_budget.h - how C code running inside a Lua isolate pays for its
 * work.
 *
 * Lua's instruction hook only sees VM instructions: a C function (a
 * library function, the pattern matcher, the parser behind load) runs as
 * one instruction, whatever it does. Such code charges its work to a
 * budget instead, in "units" worth about one VM instruction each, and the
 * budget decides whether to go on: the sandbox charges the same
 * instruction budget the hook draws from and checks the wall-clock
 * deadline every PC_LUA_CHUNK units, so a C loop is stopped by the same
 * limits, with the same error, as a Lua loop.
 *
 * charge is called from a C function running in L (a safe point for a Lua
 * error). It returns 0 to go on; to stop it either raises a Lua error
 * itself (the sandbox does, with its limit message) or returns non-zero,
 * and the caller raises one. Either way the function stops where it is:
 * whatever it built so far is garbage. Charging is cheap (the sandbox
 * only accumulates units until a chunk is full), so callers charge as they
 * go, in chunks, or up front when the work is known before it starts. */
#ifndef PC_LUA_BUDGET_H
#define PC_LUA_BUDGET_H

#include <lua.h>
#include <stddef.h>
#include <stdint.h>

/* Units between two checks of the limits (the clock, the watchdog). */
#define PC_LUA_CHUNK 1024

typedef struct pc_lua_budget {
    int (*charge)(lua_State *L, uint64_t units);
} pc_lua_budget;

/* Where the metered library (lua_metered.h) finds the budget, without an
 * API call on every call: the first pointer in L's extra space
 * (lua_getextraspace, which coroutines inherit) points at a pointer to
 * it. The sandbox's isolate starts with that pointer; a test can use a
 * static one. */
static inline const pc_lua_budget *pc_lua_budget_of(lua_State *L)
{
    return **(const pc_lua_budget *const *const *)lua_getextraspace(L);
}

/* Rough costs in units, calibrated against the VM (an instruction is a few
 * nanoseconds): they keep the instruction budget meaningful and, more
 * importantly, make the deadline checks frequent enough. */
static inline uint64_t pc_lua_units_copy(size_t bytes) /* memcpy-like */
{
    return bytes / 32 + 1;
}

static inline uint64_t pc_lua_units_scan(size_t bytes) /* one byte at a time */
{
    return bytes / 4 + 1;
}

static inline uint64_t pc_lua_units_values(uint64_t n) /* values read, written or pushed */
{
    return 2 * n + 1;
}

#endif
