/* lua_metered.c - Lua's standard library functions that iterate in C, with
 * their work charged to a budget (see lua_metered.h).
 *
 * Two kinds of function live here. Wrappers compute, from the arguments,
 * what the function is about to do, charge it, and call Lua's own C
 * function (kept as upvalue 2, upvalue 1 being the budget) directly on the
 * same stack, so results and error messages are Lua's. Replacements are
 * adapted from Lua 5.4.4 (lstrlib.c, ltablib.c, lutf8lib.c, lbaselib.c;
 * Copyright (C) 1994-2022 Lua.org, PUC-Rio; MIT license) with a meter in
 * every loop: their work is only known as they go. */
#include "lua_metered.h"

#include <lauxlib.h>
#include <limits.h>
#include <string.h>

/* The budget's error when it asks to stop without raising one itself. */
#define STOP_MESSAGE "work limit exceeded"

static const pc_lua_budget *budget_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* Charges units at once (for work known up front). */
static void charge(lua_State *L, uint64_t units)
{
    if (budget_of(L)->charge(L, units) != 0)
        luaL_error(L, STOP_MESSAGE);
}

/* A wrapper's tail: Lua's own function, on the same stack. */
static int call_stock(lua_State *L)
{
    return lua_tocfunction(L, lua_upvalueindex(2))(L);
}

/* Replaces t[name] (t at the top of the stack) by f, a closure over the
 * budget and the original function. */
static void install(lua_State *L, const pc_lua_budget *budget, const char *name, lua_CFunction f)
{
    lua_pushlightuserdata(L, (void *)budget);
    lua_getfield(L, -2, name);
    lua_pushcclosure(L, f, 2);
    lua_setfield(L, -2, name);
}

/* An upper bound on the sizes a pack format asks for: the sum of its
 * numbers (an option without one is at most 16 bytes, counted per
 * character). */
static uint64_t format_sizes(const char *fmt, size_t len)
{
    uint64_t sum = 16 * (uint64_t)len, n = 0;
    for (size_t i = 0; i < len; i++) {
        if (fmt[i] >= '0' && fmt[i] <= '9') {
            if (n < ((uint64_t)1 << 40))
                n = n * 10 + (uint64_t)(fmt[i] - '0');
        } else {
            sum += n;
            n = 0;
        }
    }
    return sum + n;
}

/* String library. */

/* Lua's rules for string positions (lstrlib.c). */
static size_t posrelat_start(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    else if (pos == 0)
        return 1;
    else if (pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)pos + 1;
}

static size_t posrelat_end(lua_Integer pos, size_t len)
{
    if (pos > (lua_Integer)len)
        return len;
    else if (pos >= 0)
        return (size_t)pos;
    else if (pos < -(lua_Integer)len)
        return 0;
    return len + (size_t)pos + 1;
}

static int m_str_byte(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    lua_Integer pi = luaL_optinteger(L, 2, 1);
    size_t posi = posrelat_start(pi, l);
    size_t pose = posrelat_end(luaL_optinteger(L, 3, pi), l);
    if (posi <= pose)
        charge(L, pc_lua_units_values(pose - posi + 1));
    return call_stock(L);
}

static int m_str_char(lua_State *L)
{
    charge(L, pc_lua_units_values((uint64_t)lua_gettop(L)));
    return call_stock(L);
}

static int m_str_sub(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    size_t start = posrelat_start(luaL_checkinteger(L, 2), l);
    size_t end = posrelat_end(luaL_optinteger(L, 3, -1), l);
    if (start <= end)
        charge(L, pc_lua_units_copy(end - start + 1));
    return call_stock(L);
}

/* upper, lower, reverse: one pass over the subject. */
static int m_str_scan(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    charge(L, pc_lua_units_scan(l));
    return call_stock(L);
}

/* The strings among the arguments from first on, in bytes. */
static uint64_t string_args(lua_State *L, int first)
{
    uint64_t bytes = 0;
    for (int i = first; i <= lua_gettop(L); i++)
        if (lua_type(L, i) == LUA_TSTRING)
            bytes += lua_rawlen(L, i);
    return bytes;
}

/* format: the format, and every string argument (%s copies it, %q
 * escapes it byte by byte). Items are at most 99 wide. */
static int m_str_format(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    charge(L, pc_lua_units_scan(l) + pc_lua_units_scan(string_args(L, 2)));
    return call_stock(L);
}

/* pack: sizes named in the format (a 'c' option pads to its size), and
 * the strings it copies. */
static int m_str_pack(lua_State *L)
{
    size_t l;
    const char *fmt = luaL_checklstring(L, 1, &l);
    charge(L, pc_lua_units_copy(format_sizes(fmt, l)) + pc_lua_units_copy(string_args(L, 2)));
    return call_stock(L);
}

static int m_str_packsize(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    charge(L, pc_lua_units_scan(l));
    return call_stock(L);
}

/* unpack: one value per option at most, copied out of the data. */
static int m_str_unpack(lua_State *L)
{
    size_t l, ld;
    const char *fmt = luaL_checklstring(L, 1, &l);
    luaL_checklstring(L, 2, &ld);
    charge(L, pc_lua_units_values(l) + pc_lua_units_copy(format_sizes(fmt, l)) +
                  pc_lua_units_copy(ld));
    return call_stock(L);
}

/* rep, replaced: Lua's loops n times even when the result is empty. The
 * result is the same; it is built by doubling (a few large copies), and
 * its size is charged before it is written. */
#define MAX_STRING_SIZE ((size_t)INT_MAX) /* lstrlib.c's MAXSIZE */

static int m_str_rep(lua_State *L)
{
    size_t l, lsep;
    const char *s = luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    const char *sep = luaL_optlstring(L, 3, "", &lsep);
    if (n <= 0 || l + lsep == 0) {
        charge(L, 1);
        lua_pushliteral(L, "");
        return 1;
    }
    if (l + lsep < l || l + lsep > MAX_STRING_SIZE / (size_t)n)
        return luaL_error(L, "resulting string too large");
    size_t total = (size_t)n * l + (size_t)(n - 1) * lsep;
    luaL_Buffer b;
    char *p = luaL_buffinitsize(L, &b, total); /* a result too big fails here, on memory */
    charge(L, pc_lua_units_copy(total));
    /* n - 1 copies of s..sep, then s: one unit, doubled until done. */
    size_t unit = l + lsep, body = (size_t)(n - 1) * unit;
    if (body > 0) {
        memcpy(p, s, l);
        memcpy(p + l, sep, lsep);
        for (size_t done = unit; done < body;) {
            size_t more = done < body - done ? done : body - done;
            memcpy(p + done, p, more);
            done += more;
        }
    }
    memcpy(p + body, s, l);
    luaL_pushresultsize(&b, total);
    return 1;
}

void pc_lua_metered_string(lua_State *L, const pc_lua_budget *budget)
{
    static const luaL_Reg fns[] = {
        {"byte", m_str_byte},     {"char", m_str_char},  {"sub", m_str_sub},
        {"upper", m_str_scan},    {"lower", m_str_scan}, {"reverse", m_str_scan},
        {"format", m_str_format}, {"pack", m_str_pack},  {"packsize", m_str_packsize},
        {"unpack", m_str_unpack}, {"rep", m_str_rep},    {NULL, NULL},
    };
    for (const luaL_Reg *f = fns; f->name != NULL; f++)
        install(L, budget, f->name, f->func);
}
