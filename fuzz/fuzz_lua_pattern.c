/* fuzz_lua_pattern.c - the budgeted Lua pattern functions: any subject and
 * pattern end in a result, a Lua error, or the budget, never a crash, and
 * always within the budget (plus one chunk). The input is
 * subject NUL pattern NUL replacement. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "lua_pattern.h"

#define BUDGET 2000000

static uint64_t used;

static int charge(lua_State *L, uint64_t steps)
{
    (void)L;
    used += steps;
    return used > BUDGET;
}

static const pc_lua_pattern_budget budget = {charge};
static lua_State *L;

static int run(lua_State *S)
{
    const char *fn = lua_tostring(S, 1);
    lua_getglobal(S, "pat");
    lua_getfield(S, -1, fn);
    if (strcmp(fn, "gmatch") == 0) {
        lua_pushvalue(S, 2);
        lua_pushvalue(S, 3);
        lua_call(S, 2, 1);
        for (int i = 0; i < 64; i++) {
            lua_pushvalue(S, -1);
            lua_call(S, 0, 1);
            int done = lua_isnil(S, -1);
            lua_pop(S, 1);
            if (done)
                break;
        }
        return 0;
    }
    lua_pushvalue(S, 2);
    lua_pushvalue(S, 3);
    if (strcmp(fn, "gsub") == 0) {
        lua_pushvalue(S, 4);
        lua_call(S, 3, 0);
    } else {
        lua_call(S, 2, 0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL) {
        L = luaL_newstate();
        luaL_openlibs(L);
        lua_newtable(L);
        pc_lua_pattern_install(L, &budget);
        lua_setglobal(L, "pat");
    }
    const char *s = (const char *)data;
    const char *p1 = memchr(s, 0, size);
    if (p1 == NULL)
        return 0;
    size_t ls = (size_t)(p1 - s);
    const char *p = p1 + 1;
    size_t rest = size - ls - 1;
    const char *p2 = memchr(p, 0, rest);
    size_t lp = p2 ? (size_t)(p2 - p) : rest;
    const char *r = p2 ? p2 + 1 : "";
    size_t lr = p2 ? rest - lp - 1 : 0;
    static const char *const fns[] = {"find", "match", "gmatch", "gsub"};
    for (int i = 0; i < 4; i++) {
        used = 0;
        lua_pushcfunction(L, run);
        lua_pushstring(L, fns[i]);
        lua_pushlstring(L, s, ls);
        lua_pushlstring(L, p, lp);
        lua_pushlstring(L, r, lr);
        lua_pcall(L, 4, 0, 0);
        lua_settop(L, 0);
        if (used > BUDGET + 2 * PC_LUA_PATTERN_CHUNK)
            __builtin_trap(); /* ran past its budget */
    }
    return 0;
}
