/* lua_metered.h - the parts of Lua 5.4's standard library that iterate in
 * C, made to charge their work to a budget (lua_budget.h).
 *
 * Why: a library function is one VM instruction to the instruction hook,
 * whatever it does. ("").rep("", math.maxinteger) loops 2^63 times and
 * never returns; table.insert and table.remove shift as many elements as a
 * __len metamethod claims; table.move copies any range; table.sort,
 * utf8.len or string.upper in a loop do milliseconds of work per
 * instruction. None of that was seen by the hook. With these functions
 * installed, every such loop charges its work as it goes (or up front when
 * the amount is known before it starts), so the sandbox's limits stop it
 * like any Lua loop, with the same error.
 *
 * The functions behave like Lua 5.4.4's own (tests/unit/test_lua_metered.c
 * compares the two on a seeded corpus). Those whose cost is known from
 * their arguments or their result (string.byte, char, sub, upper, lower,
 * reverse, format, pack, packsize, unpack; table.pack; utf8.char,
 * codepoint, len; tonumber, rawequal) charge it and run Lua's own code
 * unchanged. Those whose
 * loops depend on what they find as they go (string.rep; table.concat,
 * insert, remove, move, unpack, sort; utf8.offset, codes; load) are
 * adapted from Lua 5.4.4's lstrlib.c, ltablib.c, lutf8lib.c and lbaselib.c
 * (Copyright (C) 1994-2022 Lua.org, PUC-Rio; MIT license) with a charge in
 * every loop. The pattern functions are lua_pattern.h's.
 *
 * Each install function replaces functions in the table at the top of L's
 * stack, which must hold Lua's own library (it reads the originals from
 * it). The functions find their budget through L's extra space
 * (pc_lua_budget_of, lua_budget.h), which must be set before any of them
 * runs and outlive L. */
#ifndef PC_LUA_METERED_H
#define PC_LUA_METERED_H

#include <lua.h>
#include <stddef.h>

#include "lua_budget.h"

/* (also the arithmetic metamethods of the strings' metatable, which
 * convert numeric strings: "10" + 1) */
void pc_lua_metered_string(lua_State *L);
void pc_lua_metered_table(lua_State *L);
void pc_lua_metered_utf8(lua_State *L);
/* The base library (the table of globals): load (text only: the mode is
 * always "t"), tonumber, rawequal. */
void pc_lua_metered_base(lua_State *L);

/* Compiles text like luaL_loadbufferx(L, s, len, chunkname, "t"), feeding
 * the parser in pieces and charging each: pushes the function, or the
 * error message and returns its status. A limit raised by the budget while
 * parsing comes back as an error status too. */
int pc_lua_metered_loadbuffer(lua_State *L, const pc_lua_budget *budget, const char *s, size_t len,
                              const char *chunkname);

#endif
