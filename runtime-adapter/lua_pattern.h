/* lua_pattern.h - Lua 5.4's string pattern functions (string.find,
 * string.match, string.gmatch, string.gsub) with a step budget.
 *
 * Why: Lua's own matcher runs in C, where the instruction-count hook never
 * fires, and patterns backtrack: ("a"):rep(5e4):find(("a*"):rep(8).."b")
 * would hold a worker for hours with the hook never seeing it. This
 * implementation follows the Lua 5.4 reference manual (section 6.4.1) and
 * behaves like the stock functions (the tests compare the two on a seeded
 * corpus), but counts its work: every backtracking step, expansion and
 * scanned byte is a step, and every PC_LUA_PATTERN_CHUNK steps it asks the
 * budget whether to go on. When the budget says stop, the function raises
 * a Lua error; the sandbox then treats the run as over its CPU or time
 * limit. Plain searches (string.find with plain, or a pattern without
 * magic characters) use memmem, which is linear, and are charged by
 * length. */
#ifndef PC_LUA_PATTERN_H
#define PC_LUA_PATTERN_H

#include <lua.h>
#include <stdint.h>

#include "lua_budget.h"

#define PC_LUA_PATTERN_CHUNK PC_LUA_CHUNK

/* Charged with the steps done since the last call (lua_budget.h): returns
 * 0 to go on; to stop, raises a Lua error or returns non-zero (then the
 * pattern function raises "pattern matching exceeded the CPU limit"). */
typedef pc_lua_budget pc_lua_pattern_budget;

/* Replaces find, match, gmatch and gsub in the table at the top of L's
 * stack (the string library). budget must outlive L. */
void pc_lua_pattern_install(lua_State *L, const pc_lua_pattern_budget *budget);

#endif
