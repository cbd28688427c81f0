/* test_lua_metered.c - the metered library functions (lua_metered.h)
 * against Lua's own: a seeded corpus of calls with random arguments (good
 * and bad) must give the same results and the same errors from both; and
 * work that would not end, or would end late, stops at the budget. */
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

#include "lua_metered.h"

static uint64_t units_used, units_allowed;

static int charge(lua_State *L, uint64_t units)
{
    (void)L;
    units_used += units;
    return units_used > units_allowed;
}

static const pc_lua_budget budget = {charge};
static const pc_lua_budget *const budget_ref = &budget; /* see pc_lua_budget_of */

/* Copies global library name into m[name] and meters the copy. */
static void metered_copy(lua_State *L, const char *name, void (*install)(lua_State *))
{
    lua_getglobal(L, "m");
    lua_newtable(L);
    lua_getglobal(L, name);
    lua_pushnil(L);
    while (lua_next(L, -2) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_settable(L, -5);
    }
    lua_pop(L, 1);
    install(L);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

/* A state with Lua's libraries and metered copies of them in `m`. */
static lua_State *new_state(void)
{
    lua_State *L = luaL_newstate();
    assert_non_null(L);
    *(const pc_lua_budget *const **)lua_getextraspace(L) = &budget_ref;
    luaL_openlibs(L);
    lua_newtable(L);
    lua_setglobal(L, "m");
    metered_copy(L, "string", pc_lua_metered_string);
    metered_copy(L, "table", pc_lua_metered_table);
    metered_copy(L, "utf8", pc_lua_metered_utf8);
    /* m.load, m.tonumber, m.rawequal */
    lua_getglobal(L, "m");
    for (int i = 0; i < 3; i++) {
        static const char *const names[] = {"load", "tonumber", "rawequal"};
        lua_getglobal(L, names[i]);
        lua_setfield(L, -2, names[i]);
    }
    pc_lua_metered_base(L);
    lua_pop(L, 1);
    return L;
}

static void run(lua_State *L, const char *code)
{
    if (luaL_dostring(L, code) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
}

/* Helpers for the corpus, in Lua: compare(name, f) runs f(stock library)
 * and f(metered library) under pcall and fails on any difference. */
static const char *prelude =
    "math.randomseed(20260118)\n"
    "local function pack(ok, ...) return {ok = ok, n = select('#', ...), ...} end\n"
    "local function describe(r)\n"
    "  local out = {}\n"
    "  for i = 1, r.n do\n"
    "    local v = r[i]\n"
    "    local text = type(v) == 'table' and '{' .. table.concat(v, ',') .. '}' or tostring(v)\n"
    "    out[#out + 1] = (math.type(v) or type(v)) .. ':' .. text\n"
    "  end\n"
    "  return (r.ok and 'ok ' or 'error ') .. table.concat(out, ', ')\n"
    "end\n"
    "local function same_value(a, b)\n"
    "  if type(a) == 'table' and type(b) == 'table' then\n"
    "    if #a ~= #b then return false end\n"
    "    for k, v in pairs(a) do if b[k] ~= v then return false end end\n"
    "    for k, v in pairs(b) do if a[k] ~= v then return false end end\n"
    "    return true\n"
    "  end\n"
    "  if type(a) == 'function' and type(b) == 'function' then return true end\n"
    "  return a == b and math.type(a) == math.type(b)\n"
    "end\n"
    "local function same(a, b)\n"
    "  if a.ok ~= b.ok then return false end\n"
    "  if not a.ok then\n"
    "    -- argument errors name the function differently; the rest must match\n"
    "    local ea, eb = tostring(a[1]), tostring(b[1])\n"
    "    ea, eb = ea:gsub(\"to '[^']*'\", 'to F'), eb:gsub(\"to '[^']*'\", 'to F')\n"
    "    return ea == eb\n"
    "  end\n"
    "  if a.n ~= b.n then return false end\n"
    "  for i = 1, a.n do if not same_value(a[i], b[i]) then return false end end\n"
    "  return true\n"
    "end\n"
    "cases = 0\n"
    "function compare(what, f)\n"
    "  local want, got = pack(pcall(f, _G)), pack(pcall(f, m))\n"
    "  cases = cases + 1\n"
    "  if not same(want, got) then\n"
    "    error(what .. ': lua gives ' .. describe(want) .. ', metered ' .. describe(got), 0)\n"
    "  end\n"
    "end\n"
    "function pick(t) return t[math.random(#t)] end\n"
    "strings = {'', 'a', 'abc', 'hello world', '\\0x\\0', '\\xff\\x80', 'caf\\xc3\\xa9',\n"
    "  ('xy'):rep(50), '12', '  0x1F ', '1e5', 'z'}\n"
    "ints = {-100, -5, -3, -1, 0, 1, 2, 3, 5, 100, math.maxinteger, math.mininteger,\n"
    "  math.maxinteger - 1, math.mininteger + 1}\n"
    "odd = {nil, true, {}, 1.5, '3', 2^53, -0.0, 0/0}\n"
    "function anyint() if math.random(8) == 1 then return pick(odd) end return pick(ints) end\n"
    "function anystr() if math.random(10) == 1 then return pick(odd) end return pick(strings) "
    "end\n";

static const char *string_corpus =
    "local fmts = {'%d', '%5.2f', '%s', '%q', '%x', '%-10s|', '%c', '%i', '%%', '%a', '%g',\n"
    "  '%10.3s', '%y', '%099d', '%100d', '%s %s', '%q%q', '%5s', '', 'plain', '%.20s', '%X',\n"
    "  '%o', '%e', '%u'}\n"
    "local packs = {'i4', '<i8', 'z', 's1', 'c5', '!4 i3 i1', 'xXi4', 'j', 'n', 'c0', 'b B h H',\n"
    "  '>I3', 's', 'i17', 'c', 'Xz', '=!8d', 'i0', 'c300', 'i4i4i4i4'}\n"
    "for i = 1, 4000 do\n"
    "  local s, a, b = anystr(), anyint(), anyint()\n"
    "  compare('byte', function(lib) return lib.string.byte(s, a, b) end)\n"
    "  compare('byte1', function(lib) return lib.string.byte(s, a) end)\n"
    "  compare('sub', function(lib) return lib.string.sub(s, a, b) end)\n"
    "  compare('sub1', function(lib) return lib.string.sub(s, a) end)\n"
    "  compare('upper', function(lib) return lib.string.upper(s) end)\n"
    "  compare('lower', function(lib) return lib.string.lower(s) end)\n"
    "  compare('reverse', function(lib) return lib.string.reverse(s) end)\n"
    "  compare('char', function(lib) return lib.string.char(a, b) end)\n"
    "  compare('char0', function(lib) return lib.string.char() end)\n"
    "  local n = pick({-1, 0, 1, 2, 3, 7, math.maxinteger, 2^31, 'x', nil})\n"
    "  local sep = math.random(2) == 1 and pick(strings) or nil\n"
    "  if (s == '' and (sep == nil or sep == '') and math.type(n) and n > 8) then\n"
    "    -- Lua's own loops n times here: compare with what it would give\n"
    "    assert(m.string.rep(s, n, sep) == '')\n"
    "  elseif not (type(s) == 'string' and #s * (tonumber(n) or 0) > 1e6) then\n"
    "    compare('rep', function(lib) return lib.string.rep(s, n, sep) end)\n"
    "  end\n"
    "  local f = pick(fmts)\n"
    "  local x = select(math.random(3), a, s, b)\n"
    "  compare('format ' .. f, function(lib) return lib.string.format(f, x, s) end)\n"
    "  local p = pick(packs)\n"
    "  compare('pack ' .. p, function(lib) return lib.string.pack(p, a, b, s) end)\n"
    "  compare('packsize ' .. p, function(lib) return lib.string.packsize(p) end)\n"
    "  local ok, data = pcall(string.pack, p, 1, 2, 'abc')\n"
    "  if not ok then data = s end\n"
    "  compare('unpack ' .. p, function(lib) return lib.string.unpack(p, data, a) end)\n"
    "  compare('unpack1 ' .. p, function(lib) return lib.string.unpack(p, data) end)\n"
    "end\n"
    "return cases\n";

static const char *table_corpus =
    "local vals = {1, 2, 3, 'a', 'b', 10, -1, 2.5}\n"
    "local function spec()\n"
    "  local t = {}\n"
    "  for i = 1, math.random(0, 8) do t[i] = pick(vals) end\n"
    "  if math.random(6) == 1 then t[math.random(1, 9)] = nil end\n"
    "  return t\n"
    "end\n"
    "-- the table to work on: plain, or a proxy to a plain one\n"
    "local function mk(base, proxied)\n"
    "  local t = {} for k, v in pairs(base) do t[k] = v end\n"
    "  if not proxied then return t, t end\n"
    "  local p = setmetatable({}, {__index = t, __newindex = t, __len = function() return #t "
    "end})\n"
    "  return p, t\n"
    "end\n"
    "local comps = {false, function(a, b) return a > b end, function(a, b) return a < b end,\n"
    "  function() return true end, function() return false end}\n"
    "local small = {-2, -1, 0, 1, 2, 3, 4, 5, 9, math.maxinteger, math.mininteger}\n"
    "for i = 1, 3000 do\n"
    "  local base, proxied = spec(), math.random(3) == 1\n"
    "  local a, b, c = pick(small), pick(small), pick(small)\n"
    "  local v = pick(vals)\n"
    "  compare('insert', function(lib) local t, raw = mk(base, proxied)\n"
    "    lib.table.insert(t, v) return raw end)\n"
    "  compare('insert pos', function(lib) local t, raw = mk(base, proxied)\n"
    "    lib.table.insert(t, a, v) return raw end)\n"
    "  compare('insert 4', function(lib) local t = mk(base) lib.table.insert(t, a, v, v) end)\n"
    "  compare('remove', function(lib) local t, raw = mk(base, proxied)\n"
    "    return lib.table.remove(t), raw end)\n"
    "  compare('remove pos', function(lib) local t, raw = mk(base, proxied)\n"
    "    return lib.table.remove(t, a), raw end)\n"
    "  -- (Lua's own move would copy a huge range for as long as it takes)\n"
    "  if not (b >= a and (b - a > 100 or b - a < 0)) then\n"
    "    compare('move', function(lib) local t, raw = mk(base, proxied)\n"
    "      lib.table.move(t, a, b, c) return raw end)\n"
    "    compare('move to', function(lib) local t, raw = mk(base, proxied) local d = {}\n"
    "      lib.table.move(t, a, b, c, d) return raw, d end)\n"
    "  end\n"
    "  local sep = pick({false, '', ', ', 1}) or nil\n"
    "  compare('concat', function(lib) return lib.table.concat(mk(base, proxied), sep) end)\n"
    "  compare('concat range', function(lib)\n"
    "    return lib.table.concat(mk(base, proxied), sep, a, b) end)\n"
    "  compare('unpack', function(lib) return lib.table.unpack(mk(base, proxied)) end)\n"
    "  compare('unpack range', function(lib) return lib.table.unpack(mk(base), a, b) end)\n"
    "  compare('pack', function(lib) return lib.table.pack(a, nil, v) end)\n"
    "  local comp = pick(comps) or nil\n"
    "  compare('sort', function(lib) local t, raw = mk(base, proxied)\n"
    "    lib.table.sort(t, comp) return raw end)\n"
    "  local nums = {} for j = 1, math.random(0, 300) do nums[j] = math.random(1, 50) end\n"
    "  compare('sort big', function(lib) local t = mk(nums) lib.table.sort(t, comp) return t end)\n"
    "  local bad = pick({1, 'x', true})\n"
    "  compare('bad table', function(lib) return lib.table.concat(bad) end)\n"
    "end\n"
    "return cases\n";

static void test_table_same_as_lua(void **state)
{
    (void)state;
    lua_State *L = new_state();
    units_used = 0;
    units_allowed = UINT64_MAX;
    run(L, prelude);
    if (luaL_dostring(L, table_corpus) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    print_message("table cases compared: %lld\n", (long long)lua_tointeger(L, -1));
    lua_close(L);
}

static void test_table_work_stops(void **state)
{
    (void)state;
    lua_State *L = new_state();
    const char *bombs[] = {
        /* a __len that claims 2^63 elements: Lua's own would shift forever */
        "local t = setmetatable({}, {__len = function() return math.maxinteger - 1 end})\n"
        "m.table.insert(t, 1, 'x')",
        "local t = setmetatable({}, {__len = function() return math.maxinteger - 1 end})\n"
        "m.table.remove(t, 1)",
        "m.table.move({}, 1, math.maxinteger, 1)",
        "m.table.move({}, 1, math.maxinteger - 1, 2)",
        "local t = setmetatable({}, {__index = rawlen}) m.table.concat(t, '', 1, math.maxinteger)",
        "local t = {} for i = 1, 10000 do t[i] = i end\n"
        "for i = 1, 1e9 do m.table.sort(t) end",
        "local t = {} for i = 1, 10000 do t[i] = i end\n"
        "for i = 1, 1e9 do m.table.unpack(t) end",
        "for i = 1, 1e9 do m.table.unpack({}, 1, 100000) end",
        "local t = {} for i = 1, 10000 do t[i] = i end\n"
        "for i = 1, 1e9 do m.table.pack(table.unpack(t)) end",
    };
    for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
        units_used = 0;
        units_allowed = 1000 * 1000;
        int rc = luaL_dostring(L, bombs[i]);
        if (rc == LUA_OK)
            fail_msg("bomb %zu finished instead of stopping", i);
        if (strstr(lua_tostring(L, -1), "work limit exceeded") == NULL)
            fail_msg("bomb %zu: %s", i, lua_tostring(L, -1));
        assert_true(units_used > units_allowed);
        assert_true(units_used < units_allowed + 64 * PC_LUA_CHUNK);
        lua_pop(L, 1);
    }
    lua_close(L);
}

static const char *utf8_corpus =
    "local pieces = {'a', 'z', ' ', '\\xc3\\xa9', '\\xe2\\x82\\xac', '\\xf0\\x9f\\x98\\x80',\n"
    "  '\\x80', '\\xbf', '\\xc3', '\\xed\\xa0\\x80', '\\xf4\\x90\\x80\\x80', '\\xff', "
    "'\\0',\n"
    "  '\\xf8\\x88\\x80\\x80\\x80', '\\xc0\\x80'}\n"
    "local function text()\n"
    "  local t = {} for i = 1, math.random(0, 10) do t[i] = pick(pieces) end\n"
    "  return table.concat(t)\n"
    "end\n"
    "local pos = {-20, -3, -2, -1, 0, 1, 2, 3, 4, 7, 20, math.maxinteger, math.mininteger}\n"
    "local function walk(lib, s, lax)\n"
    "  local out = {}\n"
    "  local ok, err = pcall(function()\n"
    "    for p, c in lib.utf8.codes(s, lax) do out[#out + 1] = p .. ':' .. c end end)\n"
    "  return table.concat(out, ' '), ok, err\n"
    "end\n"
    "for i = 1, 5000 do\n"
    "  local s, a, b, lax = text(), pick(pos), pick(pos), math.random(2) == 1\n"
    "  if math.random(12) == 1 then s = pick({12, true, {}}) end\n"
    "  compare('len', function(lib) return lib.utf8.len(s, a, b, lax) end)\n"
    "  compare('len1', function(lib) return lib.utf8.len(s) end)\n"
    "  compare('codepoint', function(lib) return lib.utf8.codepoint(s, a, b, lax) end)\n"
    "  compare('codepoint1', function(lib) return lib.utf8.codepoint(s, a) end)\n"
    "  compare('offset', function(lib) return lib.utf8.offset(s, a, b) end)\n"
    "  compare('offset2', function(lib) return lib.utf8.offset(s, a) end)\n"
    "  compare('codes', function(lib) return walk(lib, s, lax) end)\n"
    "  compare('codes step', function(lib) local f = lib.utf8.codes(s) return f(s, a) end)\n"
    "  compare('char', function(lib) return lib.utf8.char(a, b) end)\n"
    "  compare('char small', function(lib) return lib.utf8.char(72, 0x20AC, 0x10FFFF, 0x7FFFFFFF) "
    "end)\n"
    "end\n"
    "return cases\n";

static void test_utf8_same_as_lua(void **state)
{
    (void)state;
    lua_State *L = new_state();
    units_used = 0;
    units_allowed = UINT64_MAX;
    run(L, prelude);
    if (luaL_dostring(L, utf8_corpus) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    print_message("utf8 cases compared: %lld\n", (long long)lua_tointeger(L, -1));
    lua_close(L);
}

static void test_utf8_work_stops(void **state)
{
    (void)state;
    lua_State *L = new_state();
    const char *bombs[] = {
        "local s = ('a'):rep(100000) for i = 1, 1e9 do m.utf8.len(s) end",
        "local s = ('\\x80'):rep(100000) local f = m.utf8.codes(s)\n"
        "for i = 1, 1e9 do f(s, 0) end",
        "local s = 'a' .. ('\\x80'):rep(100000) for i = 1, 1e9 do m.utf8.offset(s, 2) end",
        "local s = ('\\x80'):rep(100000) .. 'a' for i = 1, 1e9 do m.utf8.offset(s, 0, -2) end",
        "local s = ('a'):rep(10000) for i = 1, 1e9 do m.utf8.codepoint(s, 1, -1) end",
        "local t = {} for i = 1, 10000 do t[i] = 65 end\n"
        "for i = 1, 1e9 do m.utf8.char(table.unpack(t)) end",
    };
    for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
        units_used = 0;
        units_allowed = 1000 * 1000;
        int rc = luaL_dostring(L, bombs[i]);
        if (rc == LUA_OK)
            fail_msg("bomb %zu finished instead of stopping", i);
        if (strstr(lua_tostring(L, -1), "work limit exceeded") == NULL)
            fail_msg("bomb %zu: %s", i, lua_tostring(L, -1));
        assert_true(units_used > units_allowed);
        lua_pop(L, 1);
    }
    lua_close(L);
}

static const char *base_corpus =
    "local srcs = {'return 1 + 2', 'return ...', 'x = ', 'return x', 'return \"a\"',\n"
    "  'local t = {} for i = 1, 10 do t[i] = i end return #t', 'error(\"boom\")', '', 12,\n"
    "  ('-- comment\\n'):rep(300) .. 'return 7', 'return [[' .. ('x'):rep(3000) .. ']]'}\n"
    "local function pieces(src, size)\n"
    "  local at = 1\n"
    "  return function()\n"
    "    if at > #src then return nil end\n"
    "    local p = src:sub(at, at + size - 1) at = at + size return p\n"
    "  end\n"
    "end\n"
    "local function run(f, e) if f then return pcall(f) end return f, e end\n"
    "local nums = {'10', '0x10', ' 12 ', '1e3', '1e', 'z', '-7', '  ', '9223372036854775808',\n"
    "  '0x7fffffffffffffff', 'inf', 'nan', '1.5', 12, 3.5, true, 'ff', '777', '-zz', '1 2'}\n"
    "for i = 1, 3000 do\n"
    "  local src = pick(srcs)\n"
    "  local name, env = pick({false, 'chunk', '=named', '@file.lua'}) or nil, pick({false, {x = "
    "5}})\n"
    "  compare('load', function(lib) return run(lib.load(src)) end)\n"
    "  compare('load name', function(lib) return run(lib.load(src, name)) end)\n"
    "  if env then\n"
    "    compare('load env', function(lib) return run(lib.load(src, name, 't', env)) end)\n"
    "  else\n"
    "    compare('load nil env', function(lib) return run(lib.load(src, name, 't', nil)) end)\n"
    "  end\n"
    "  local mode = pick({'t', 'bt', {}}) -- (the metered load ignores 'b': text only)\n"
    "  compare('load mode', function(lib) return run(lib.load(src, name, mode)) end)\n"
    "  if type(src) == 'string' then\n"
    "    local size = pick({1, 3, 100, 5000})\n"
    "    if #src > 200 and size < 100 then size = 100 end\n"
    "    compare('load reader', function(lib) return run(lib.load(pieces(src, size))) end)\n"
    "  end\n"
    "  local bad = pick({function() return {} end, function() error('reader') end,\n"
    "    function() return '' end, 5})\n"
    "  compare('load bad reader', function(lib) return run(lib.load(bad)) end)\n"
    "  local n, base = pick(nums), pick({false, 2, 10, 16, 36, 37, 1}) or nil\n"
    "  compare('tonumber', function(lib) return lib.tonumber(n) end)\n"
    "  compare('tonumber base', function(lib) return lib.tonumber(n, base) end)\n"
    "  local x, y = pick(nums), pick(nums)\n"
    "  compare('rawequal', function(lib) return lib.rawequal(x, y) end)\n"
    "  compare('rawequal1', function(lib) return lib.rawequal(x) end)\n"
    "end\n"
    "return cases\n";

static void test_base_same_as_lua(void **state)
{
    (void)state;
    lua_State *L = new_state();
    units_used = 0;
    units_allowed = UINT64_MAX;
    run(L, prelude);
    if (luaL_dostring(L, base_corpus) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    print_message("base cases compared: %lld\n", (long long)lua_tointeger(L, -1));
    /* Bytecode is refused whatever mode is asked for. */
    run(L, "local f = load(function() return nil end) local code = string.dump(f)\n"
           "for _, mode in ipairs({'b', 'bt', 't'}) do\n"
           "  local g, err = m.load(code, 'x', mode)\n"
           "  assert(g == nil and err:find('attempt to load a binary chunk', 1, true), err)\n"
           "end\n");
    lua_close(L);
}

static void test_base_work_stops(void **state)
{
    (void)state;
    lua_State *L = new_state();
    const char *bombs[] = {
        /* load returns the stop as its error value: assert raises it */
        "local src = (' '):rep(100000) for i = 1, 1e9 do assert(m.load(src)) end",
        ("local src = (' '):rep(100000)\n"
         "for i = 1, 1e9 do local done assert(m.load(function() if done then return nil end\n"
         "done = true return src end)) end"),
        "local s = ('1'):rep(100000) for i = 1, 1e9 do m.tonumber(s) end",
        "local s = ('1'):rep(100000) for i = 1, 1e9 do m.tonumber(s, 10) end",
        ("local a, b = ('x'):rep(100000), ('x'):rep(99999) .. 'x'\n"
         "for i = 1, 1e9 do m.rawequal(a, b) end"),
    };
    for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
        units_used = 0;
        units_allowed = 1000 * 1000;
        int rc = luaL_dostring(L, bombs[i]);
        if (rc == LUA_OK)
            fail_msg("bomb %zu finished instead of stopping", i);
        if (strstr(lua_tostring(L, -1), "work limit exceeded") == NULL)
            fail_msg("bomb %zu: %s", i, lua_tostring(L, -1));
        assert_true(units_used > units_allowed);
        lua_settop(L, 0);
    }
    /* The loader used for a bundle's top level charges as it parses. */
    units_used = 0;
    units_allowed = 1000;
    const char *big = "local x = 1\n-- a long comment .......................................\n"
                      "return x";
    char src[100000];
    size_t n = 0;
    while (n + strlen(big) < sizeof(src)) {
        memcpy(src + n, big, strlen(big));
        n += strlen(big);
    }
    assert_int_not_equal(pc_lua_metered_loadbuffer(L, &budget, src, n, "=big"), LUA_OK);
    assert_non_null(strstr(lua_tostring(L, -1), "work limit exceeded"));
    lua_pop(L, 1);
    units_used = 0;
    units_allowed = UINT64_MAX;
    assert_int_equal(pc_lua_metered_loadbuffer(L, &budget, "return 42", 9, "=small"), LUA_OK);
    assert_int_equal(lua_pcall(L, 0, 1, 0), LUA_OK);
    assert_int_equal(lua_tointeger(L, -1), 42);
    lua_close(L);
}

static void test_string_same_as_lua(void **state)
{
    (void)state;
    lua_State *L = new_state();
    units_used = 0;
    units_allowed = UINT64_MAX;
    run(L, prelude);
    if (luaL_dostring(L, string_corpus) != LUA_OK)
        fail_msg("%s", lua_tostring(L, -1));
    print_message("string cases compared: %lld\n", (long long)lua_tointeger(L, -1));
    /* Methods on strings use the library table they were looked up in. */
    run(L, "assert(m.string.rep('ab', 3, '-') == 'ab-ab-ab')\n"
           "assert(m.string.rep('ab', 1, '-') == 'ab')\n"
           "assert(m.string.rep('', 5, ',') == ',,,,')\n"
           "assert(m.string.rep('x', 1000):len() == 1000)\n"
           "assert(m.string.rep('ab', 1000, 'c') == string.rep('ab', 1000, 'c'))\n");
    lua_close(L);
}

/* Each runs with a budget of 10^6 units and must stop at it. */
static void test_string_work_stops(void **state)
{
    (void)state;
    lua_State *L = new_state();
    const char *bombs[] = {
        /* Lua's own rep would loop 2^63 times */
        "for i = 1, 1e9 do local _ = m.string.rep('', math.maxinteger) end",
        "for i = 1, 1e9 do local _ = m.string.rep('', math.maxinteger, '') end",
        "local s = ('x'):rep(100000) for i = 1, 1e9 do local _ = m.string.upper(s) end",
        "local s = ('x'):rep(100000) for i = 1, 1e9 do local _ = m.string.sub(s, 2) end",
        "local s = ('x'):rep(100000) for i = 1, 1e9 do local _ = m.string.format('%q', s) end",
        "local s = ('x'):rep(10000) for i = 1, 1e9 do local _ = m.string.byte(s, 1, -1) end",
        "for i = 1, 1e9 do local _ = m.string.rep('x', 100000) end",
        "for i = 1, 1e9 do local _ = m.string.pack('c100000', '') end",
    };
    for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
        units_used = 0;
        units_allowed = 1000 * 1000;
        int rc = luaL_dostring(L, bombs[i]);
        if (rc == LUA_OK)
            fail_msg("bomb %zu finished instead of stopping", i);
        if (strstr(lua_tostring(L, -1), "work limit exceeded") == NULL)
            fail_msg("bomb %zu: %s", i, lua_tostring(L, -1));
        assert_true(units_used > units_allowed);
        lua_pop(L, 1);
    }
    /* A string too large to build is refused before it is paid for. */
    units_used = 0;
    units_allowed = UINT64_MAX;
    assert_int_not_equal(luaL_dostring(L, "return m.string.rep('x', 1 << 40)"), LUA_OK);
    assert_non_null(strstr(lua_tostring(L, -1), "too large"));
    lua_pop(L, 1);
    lua_close(L);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_string_same_as_lua), cmocka_unit_test(test_string_work_stops),
        cmocka_unit_test(test_table_same_as_lua),  cmocka_unit_test(test_table_work_stops),
        cmocka_unit_test(test_utf8_same_as_lua),   cmocka_unit_test(test_utf8_work_stops),
        cmocka_unit_test(test_base_same_as_lua),   cmocka_unit_test(test_base_work_stops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
