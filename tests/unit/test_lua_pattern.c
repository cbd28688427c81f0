/* test_lua_pattern.c - the budgeted pattern functions (lua_pattern.h)
 * against Lua's own: a seeded corpus of random patterns, subjects and
 * arguments must give the same results and the same errors from both; and
 * a catastrophic pattern must stop at the budget instead of running for
 * hours. */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "lua_pattern.h"

static uint64_t steps_used, steps_allowed;

static int charge(lua_State *L, uint64_t steps)
{
    (void)L;
    steps_used += steps;
    return steps_used > steps_allowed;
}

static const pc_lua_pattern_budget budget = {charge};

/* A state with the real string library and ours as the global `pat`. */
static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    luaL_openlibs(L);
    lua_newtable(L);
    pc_lua_pattern_install(L, &budget);
    lua_setglobal(L, "pat");
    return L;
}

static void run(lua_State *L, const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
}

/* The differential corpus, in Lua: each case runs through string.X and
 * pat.X under pcall and the two outcomes must be equal. */
static const char *differential =
    "math.randomseed(20261123)\n"
    "local items = {'a','b','c','.','%a','%d','%s','%w','%A','%S','%.','%%','[ab]','[^a]',\n"
    "  '[a-c]','[%a_]','[]]','[^]a]','%b()','%f[%w]','%f[%W]','%1','%2','(',')','()','x','$',\n"
    "  '-','[a','%','%f','%z','%b','[%'}\n"
    "local quant = {'', '', '', '*', '+', '-', '?'}\n"
    "local chars = {'a','b','c','(',')','1',' ','_','-','%','[',']','x','$','^','\\0'}\n"
    "local function rnd(t) return t[math.random(#t)] end\n"
    "local function pattern()\n"
    "  local p = math.random(5) == 1 and '^' or ''\n"
    "  for i = 1, math.random(0, 6) do p = p .. rnd(items) .. rnd(quant) end\n"
    "  if math.random(6) == 1 then p = p .. '$' end\n"
    "  return p\n"
    "end\n"
    "local function subject()\n"
    "  local s = ''\n"
    "  for i = 1, math.random(0, 14) do s = s .. rnd(chars) end\n"
    "  return s\n"
    "end\n"
    "local function pack(ok, ...) return {ok = ok, n = select('#', ...), ...} end\n"
    "local function describe(r)\n"
    "  local out = {}\n"
    "  for i = 1, r.n do out[#out + 1] = type(r[i]) .. ':' .. tostring(r[i]) end\n"
    "  return (r.ok and 'ok ' or 'error ') .. table.concat(out, ', ')\n"
    "end\n"
    "local function same(a, b)\n"
    "  if a.ok ~= b.ok then return false end\n"
    "  if not a.ok then\n"
    "    -- argument errors name the function differently; the rest must match\n"
    "    local ea, eb = tostring(a[1]), tostring(b[1])\n"
    "    if ea:find('bad argument', 1, true) then return eb:find('bad argument', 1, true) end\n"
    "    return ea == eb\n"
    "  end\n"
    "  if a.n ~= b.n then return false end\n"
    "  for i = 1, a.n do if a[i] ~= b[i] or math.type(a[i]) ~= math.type(b[i]) then return false "
    "end end\n"
    "  return true\n"
    "end\n"
    "local function gm(lib, s, p, init)\n"
    "  local out = {}\n"
    "  for a, b, c in lib.gmatch(s, p, init) do\n"
    "    out[#out + 1] = tostring(a) .. '|' .. tostring(b) .. '|' .. tostring(c)\n"
    "    if #out > 50 then break end\n"
    "  end\n"
    "  return table.concat(out, ';')\n"
    "end\n"
    "local repls = {'<%0>', '%1-%1', '%%', '%2', 'x%', '', 7,\n"
    "  function(a, b) if a == 'b' then return false end return (a or '') .. '!' end,\n"
    "  function() return {} end, {a = 'A', ['('] = 1, b = false}}\n"
    "local cases, matched = 0, 0\n"
    "for i = 1, 30000 do\n"
    "  local s, p = subject(), pattern()\n"
    "  local init = math.random(4) == 1 and math.random(-16, 16) or nil\n"
    "  local checks = {\n"
    "    function(lib) return lib.find(s, p, init) end,\n"
    "    function(lib) return lib.find(s, p, init, true) end,\n"
    "    function(lib) return lib.match(s, p, init) end,\n"
    "    function(lib) return gm(lib, s, p, init) end,\n"
    "  }\n"
    "  local r = rnd(repls)\n"
    "  local max = math.random(3) == 1 and math.random(0, 3) or nil\n"
    "  checks[#checks + 1] = function(lib) return lib.gsub(s, p, r, max) end\n"
    "  for _, f in ipairs(checks) do\n"
    "    local want, got = pack(pcall(f, string)), pack(pcall(f, pat))\n"
    "    cases = cases + 1\n"
    "    if want.ok and want[1] ~= nil then matched = matched + 1 end\n"
    "    if not same(want, got) then\n"
    "      error(string.format('case %d: s=%q p=%q init=%s: lua gives %s, popcast %s', i, s, p,\n"
    "        tostring(init), describe(want), describe(got)))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "assert(matched > cases / 10, 'the corpus matches too rarely to mean much')\n"
    "return cases\n";

static void test_same_as_lua(void **state)
{
    lua_State *L = new_state();
    steps_used = 0;
    steps_allowed = UINT64_MAX;
    if (luaL_dostring(L, differential) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    print_message("cases compared: %lld\n", (long long)lua_tointeger(L, -1));
    lua_close(L);
}

static void test_well_known_results(void **state)
{
    lua_State *L = new_state();
    steps_allowed = UINT64_MAX;
    run(L, "assert(pat.find('hello world', 'o w') == 5)\n"
           "assert(select(3, pat.find('key=value', '(%w+)=(%w+)')) == 'key')\n"
           "assert(pat.match('  trim  ', '^%s*(.-)%s*$') == 'trim')\n"
           "assert(pat.gsub('hello world', '(%w+)', '<%1>') == '<hello> <world>')\n"
           "assert(select(2, pat.gsub('abc', '', '-')) == 4)\n"
           "assert(pat.match('f(a(b)c)d', '%b()') == '(a(b)c)')\n"
           "assert(pat.gsub('THE (quick) fox', '%f[%a]%a+', 'W') == 'W (W) W')\n"
           "local t = {} for k, v in pat.gmatch('a=1, b=2', '(%w+)=(%w+)') do t[k] = v end\n"
           "assert(t.a == '1' and t.b == '2')\n"
           "assert(pat.match('hello', '()ll()') == 3)\n"
           "assert(pat.find('a.b', '.', 1, true) == 2)\n"
           "assert(pat.match('xyzxyz', '(xyz)%1') == 'xyz')\n"
           "assert(('x'):rep(3):find('x', -1) == 3)\n"
           "assert(pat.gsub('abc', '%w', {a = 1, b = true and 'B'}) == '1Bc')\n");
    lua_close(L);
}

static void test_catastrophic_patterns_stop(void **state)
{
    lua_State *L = new_state();
    /* Stock Lua would need on the order of n^8 steps for this. */
    const char *bombs[] = {
        "return pat.find(('a'):rep(20000), ('a*'):rep(8) .. 'b')",
        "return pat.match(('a'):rep(20000), ('a-'):rep(8) .. 'b')",
        "return pat.gsub(('a'):rep(5000), ('.-'):rep(6) .. 'x', '')",
        "for x in pat.gmatch(('ab'):rep(5000), ('%w*'):rep(7) .. '!') do end",
        "return pat.find(('('):rep(20000), ('%b()'):rep(3) .. 'z')",
    };
    for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
        steps_used = 0;
        steps_allowed = 10 * 1000 * 1000;
        int rc = luaL_dostring(L, bombs[i]);
        if (rc == LUA_OK)
            fail_msg("bomb %zu finished instead of stopping", i);
        assert_non_null(strstr(lua_tostring(L, -1), "pattern matching exceeded the CPU limit"));
        assert_true(steps_used > steps_allowed);
        assert_true(steps_used < steps_allowed + 2 * PC_LUA_PATTERN_CHUNK);
        lua_pop(L, 1);
    }
    /* Linear work on a big subject is fine under the same budget. */
    steps_used = 0;
    run(L, "local s = ('x'):rep(1000000) .. 'y'\n"
           "assert(pat.find(s, 'y') == 1000001)\n"
           "assert(pat.find(s, 'xy', 1, true) == 1000000)\n"
           "assert(pat.match(s, 'x+y') == s)\n");
    assert_true(steps_used < steps_allowed);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_well_known_results),
        cmocka_unit_test(test_same_as_lua),
        cmocka_unit_test(test_catastrophic_patterns_stop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
