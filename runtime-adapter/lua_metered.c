/* lua_metered.c - Lua's standard library functions that iterate in C, with
 * their work charged to a budget (see lua_metered.h).
 *
 * Two kinds of function live here. Wrappers know, from the arguments or
 * the result, what Lua's own C function does, charge it, and call that
 * function directly on the same stack, so results and error messages are
 * Lua's. Replacements are adapted from Lua 5.4.4 (lstrlib.c, ltablib.c,
 * lutf8lib.c, lbaselib.c; Copyright (C) 1994-2022 Lua.org, PUC-Rio; MIT
 * license) with a meter in every loop: their work is only known as they
 * go.
 *
 * They run on every request, so they are lean: the budget comes from the
 * state's extra space (lua_budget.h), Lua's own functions from a table
 * filled at install (they are the same for every state), and a wrapper
 * whose function cannot fail once it has started working charges after
 * the call, from the result, instead of checking the arguments twice. */
#include "lua_metered.h"

#include <lauxlib.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

/* The budget's error when it asks to stop without raising one itself. */
#define STOP_MESSAGE "work limit exceeded"

/* Charges units at once (for work known up front, or just done). */
static void charge(lua_State *L, uint64_t units)
{
    if (pc_lua_budget_of(L)->charge(L, units) != 0)
        luaL_error(L, STOP_MESSAGE);
}

/* Work counted as it goes, charged a chunk at a time. */
typedef struct meter {
    lua_State *L;
    const pc_lua_budget *budget;
    uint64_t units;
} meter;

static void meter_init(meter *m, lua_State *L)
{
    m->L = L;
    m->budget = pc_lua_budget_of(L);
    m->units = 0;
}

static void meter_flush(meter *m)
{
    uint64_t units = m->units;
    m->units = 0;
    if (units != 0 && m->budget->charge(m->L, units) != 0)
        luaL_error(m->L, STOP_MESSAGE);
}

static inline void meter_add(meter *m, uint64_t units)
{
    m->units += units;
    if (m->units >= PC_LUA_CHUNK)
        meter_flush(m);
}

/* Lua's own functions behind the wrappers. Every state's library holds
 * the same ones; install stores what it finds (the same value, whichever
 * thread does it). */
enum stock_fn {
    S_BYTE,
    S_CHAR,
    S_SUB,
    S_UPPER,
    S_LOWER,
    S_REVERSE,
    S_FORMAT,
    S_PACK,
    S_PACKSIZE,
    S_UNPACK,
    S_TPACK,
    S_ULEN,
    S_CODEPOINT,
    S_UCHAR,
    S_TONUMBER,
    S_RAWEQUAL,
    S_ADD,
    S_SUB_,
    S_MUL,
    S_MOD,
    S_POW,
    S_DIV,
    S_IDIV,
    S_UNM,
    N_STOCK,
    NO_STOCK = -1,
};

static _Atomic(lua_CFunction) stock[N_STOCK];

/* A wrapper's call: Lua's own function, on the same stack. */
static int call_stock(lua_State *L, enum stock_fn which)
{
    lua_CFunction f = atomic_load_explicit(&stock[which], memory_order_relaxed);
    if (f == NULL)
        return luaL_error(L, "this library function is not available");
    return f(L);
}

/* Replaces t[name] (t at the top of the stack) by f, after keeping the
 * original as stock[which] (unless NO_STOCK). */
static void install(lua_State *L, const char *name, lua_CFunction f, enum stock_fn which)
{
    if (which != NO_STOCK) {
        lua_getfield(L, -1, name);
        lua_CFunction orig = lua_tocfunction(L, -1);
        lua_pop(L, 1);
        if (orig != NULL && orig != f)
            atomic_store_explicit(&stock[which], orig, memory_order_relaxed);
    }
    lua_pushcfunction(L, f);
    lua_setfield(L, -2, name);
}

typedef struct metered_fn {
    const char *name;
    lua_CFunction f;
    enum stock_fn stock;
} metered_fn;

static void install_all(lua_State *L, const metered_fn *fns)
{
    for (const metered_fn *m = fns; m->name != NULL; m++)
        install(L, m->name, m->f, m->stock);
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

/* byte, char, sub, upper, lower, reverse fail, if at all, before they
 * start working, and what they did shows in their result: they are
 * charged after the call. */
static int m_str_byte(lua_State *L)
{
    int n = call_stock(L, S_BYTE);
    charge(L, pc_lua_units_values((uint64_t)n));
    return n;
}

static int m_str_char(lua_State *L)
{
    /* (before: a bad argument at the end fails after the work) */
    charge(L, pc_lua_units_values((uint64_t)lua_gettop(L)));
    return call_stock(L, S_CHAR);
}

/* The result's length: the bytes the function produced. */
static int charge_result(lua_State *L, int n, uint64_t (*units)(size_t))
{
    charge(L, units(lua_rawlen(L, -1)));
    return n;
}

static int m_str_sub(lua_State *L)
{
    return charge_result(L, call_stock(L, S_SUB), pc_lua_units_copy);
}

static int m_str_upper(lua_State *L)
{
    return charge_result(L, call_stock(L, S_UPPER), pc_lua_units_scan);
}

static int m_str_lower(lua_State *L)
{
    return charge_result(L, call_stock(L, S_LOWER), pc_lua_units_scan);
}

static int m_str_reverse(lua_State *L)
{
    return charge_result(L, call_stock(L, S_REVERSE), pc_lua_units_scan);
}

/* The arguments from first on, in bytes: a string's length (rawlen is 0
 * for a number; a table counts its border, which only overcharges). */
static uint64_t string_args(lua_State *L, int first)
{
    uint64_t bytes = 0;
    for (int i = first, n = lua_gettop(L); i <= n; i++)
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
    return call_stock(L, S_FORMAT);
}

/* pack: sizes named in the format (a 'c' option pads to its size), and
 * the strings it copies. */
static int m_str_pack(lua_State *L)
{
    size_t l;
    const char *fmt = luaL_checklstring(L, 1, &l);
    charge(L, pc_lua_units_copy(format_sizes(fmt, l)) + pc_lua_units_copy(string_args(L, 2)));
    return call_stock(L, S_PACK);
}

static int m_str_packsize(lua_State *L)
{
    size_t l;
    luaL_checklstring(L, 1, &l);
    charge(L, pc_lua_units_scan(l));
    return call_stock(L, S_PACKSIZE);
}

/* unpack: one value per option at most, copied out of the data. */
static int m_str_unpack(lua_State *L)
{
    size_t l, ld;
    const char *fmt = luaL_checklstring(L, 1, &l);
    luaL_checklstring(L, 2, &ld);
    charge(L, pc_lua_units_values(l) + pc_lua_units_copy(format_sizes(fmt, l)) +
                  pc_lua_units_copy(ld));
    return call_stock(L, S_UNPACK);
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

/* Arithmetic on strings ("10" + 1) is the string metatable's __add and
 * company in Lua 5.4: C functions that convert each string operand to a
 * number, reading all of it. */
static uint64_t operand_bytes(lua_State *L)
{
    return pc_lua_units_scan(lua_rawlen(L, 1) + lua_rawlen(L, 2));
}

#define STRING_ARITH(name, which)                                                                  \
    static int name(lua_State *L)                                                                  \
    {                                                                                              \
        charge(L, operand_bytes(L));                                                               \
        return call_stock(L, which);                                                               \
    }
STRING_ARITH(m_arith_add, S_ADD)
STRING_ARITH(m_arith_sub, S_SUB_)
STRING_ARITH(m_arith_mul, S_MUL)
STRING_ARITH(m_arith_mod, S_MOD)
STRING_ARITH(m_arith_pow, S_POW)
STRING_ARITH(m_arith_div, S_DIV)
STRING_ARITH(m_arith_idiv, S_IDIV)
STRING_ARITH(m_arith_unm, S_UNM)

void pc_lua_metered_string(lua_State *L)
{
    static const metered_fn fns[] = {
        {"byte", m_str_byte, S_BYTE},
        {"char", m_str_char, S_CHAR},
        {"sub", m_str_sub, S_SUB},
        {"upper", m_str_upper, S_UPPER},
        {"lower", m_str_lower, S_LOWER},
        {"reverse", m_str_reverse, S_REVERSE},
        {"format", m_str_format, S_FORMAT},
        {"pack", m_str_pack, S_PACK},
        {"packsize", m_str_packsize, S_PACKSIZE},
        {"unpack", m_str_unpack, S_UNPACK},
        {"rep", m_str_rep, NO_STOCK},
        {NULL, NULL, NO_STOCK},
    };
    static const metered_fn meta[] = {
        {"__add", m_arith_add, S_ADD},    {"__sub", m_arith_sub, S_SUB_},
        {"__mul", m_arith_mul, S_MUL},    {"__mod", m_arith_mod, S_MOD},
        {"__pow", m_arith_pow, S_POW},    {"__div", m_arith_div, S_DIV},
        {"__idiv", m_arith_idiv, S_IDIV}, {"__unm", m_arith_unm, S_UNM},
        {NULL, NULL, NO_STOCK},
    };
    install_all(L, fns);
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) { /* the strings' metatable */
        install_all(L, meta);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* Table library (ltablib.c): every loop over elements is metered, one
 * element moved or read at a time. */

#define TAB_R  1 /* read */
#define TAB_W  2 /* write */
#define TAB_L  4 /* length */
#define TAB_RW (TAB_R | TAB_W)

static int checkfield(lua_State *L, const char *key, int n)
{
    lua_pushstring(L, key);
    return lua_rawget(L, -n) != LUA_TNIL;
}

/* arg must be a table, or have a metatable with the metamethods what
 * needs. */
static void checktab(lua_State *L, int arg, int what)
{
    if (lua_type(L, arg) != LUA_TTABLE) {
        int n = 1;
        if (lua_getmetatable(L, arg) && (!(what & TAB_R) || checkfield(L, "__index", ++n)) &&
            (!(what & TAB_W) || checkfield(L, "__newindex", ++n)) &&
            (!(what & TAB_L) || checkfield(L, "__len", ++n))) {
            lua_pop(L, n);
        } else {
            luaL_checktype(L, arg, LUA_TTABLE); /* force an error */
        }
    }
}

static lua_Integer aux_getn(lua_State *L, int arg, int what)
{
    checktab(L, arg, what | TAB_L);
    return luaL_len(L, arg);
}

/* A move of one element: a read and a write, either of which may run a
 * metamethod (whose own instructions the hook counts). */
#define MOVE_UNITS 4

static int m_tab_insert(lua_State *L)
{
    lua_Integer pos;
    lua_Integer e = aux_getn(L, 1, TAB_RW);
    e = (lua_Integer)((lua_Unsigned)e + 1u); /* first empty element */
    switch (lua_gettop(L)) {
    case 2: pos = e; break;
    case 3: {
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        meter m;
        meter_init(&m, L);
        for (lua_Integer i = e; i > pos; i--) {
            meter_add(&m, MOVE_UNITS);
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        meter_flush(&m);
        break;
    }
    default: return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int m_tab_remove(lua_State *L)
{
    lua_Integer size = aux_getn(L, 1, TAB_RW);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 1, "position out of bounds");
    lua_geti(L, 1, pos);
    meter m;
    meter_init(&m, L);
    for (; pos < size; pos++) {
        meter_add(&m, MOVE_UNITS);
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    meter_flush(&m);
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

static int m_tab_move(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2);
    lua_Integer e = luaL_checkinteger(L, 3);
    lua_Integer t = luaL_checkinteger(L, 4);
    int tt = !lua_isnoneornil(L, 5) ? 5 : 1; /* destination table */
    checktab(L, 1, TAB_R);
    checktab(L, tt, TAB_W);
    if (e >= f) {
        luaL_argcheck(L, f > 0 || e < LUA_MAXINTEGER + f, 3, "too many elements to move");
        lua_Integer n = e - f + 1;
        luaL_argcheck(L, t <= LUA_MAXINTEGER - n + 1, 4, "destination wrap around");
        meter m;
        meter_init(&m, L);
        if (t > e || t <= f || (tt != 1 && !lua_compare(L, 1, tt, LUA_OPEQ))) {
            for (lua_Integer i = 0; i < n; i++) {
                meter_add(&m, MOVE_UNITS);
                lua_geti(L, 1, f + i);
                lua_seti(L, tt, t + i);
            }
        } else {
            for (lua_Integer i = n - 1; i >= 0; i--) {
                meter_add(&m, MOVE_UNITS);
                lua_geti(L, 1, f + i);
                lua_seti(L, tt, t + i);
            }
        }
        meter_flush(&m);
    }
    lua_pushvalue(L, tt);
    return 1;
}

static void addfield(lua_State *L, meter *m, luaL_Buffer *b, lua_Integer i)
{
    lua_geti(L, 1, i);
    if (!lua_isstring(L, -1))
        luaL_error(L, "invalid value (%s) at index %I in table for 'concat'", luaL_typename(L, -1),
                   (LUAI_UACINT)i);
    /* (a number's text is short: rawlen is 0 for it) */
    meter_add(m, MOVE_UNITS + pc_lua_units_copy(lua_rawlen(L, -1)));
    luaL_addvalue(b);
}

static int m_tab_concat(lua_State *L)
{
    luaL_Buffer b;
    lua_Integer last = aux_getn(L, 1, TAB_R);
    size_t lsep;
    const char *sep = luaL_optlstring(L, 2, "", &lsep);
    lua_Integer i = luaL_optinteger(L, 3, 1);
    last = luaL_optinteger(L, 4, last);
    meter m;
    meter_init(&m, L);
    uint64_t sep_units = pc_lua_units_copy(lsep);
    luaL_buffinit(L, &b);
    for (; i < last; i++) {
        addfield(L, &m, &b, i);
        meter_add(&m, sep_units);
        luaL_addlstring(&b, sep, lsep);
    }
    if (i == last)
        addfield(L, &m, &b, i);
    meter_flush(&m);
    luaL_pushresult(&b);
    return 1;
}

static int m_tab_pack(lua_State *L)
{
    charge(L, pc_lua_units_values((uint64_t)lua_gettop(L)));
    return call_stock(L, S_TPACK);
}

static int m_tab_unpack(lua_State *L)
{
    lua_Unsigned n;
    lua_Integer i = luaL_optinteger(L, 2, 1);
    lua_Integer e = luaL_opt(L, luaL_checkinteger, 3, luaL_len(L, 1));
    if (i > e)
        return 0;
    n = (lua_Unsigned)e - (lua_Unsigned)i; /* number of elements minus 1 */
    if (n >= (unsigned int)INT_MAX || !lua_checkstack(L, (int)(++n)))
        return luaL_error(L, "too many results to unpack");
    meter m;
    meter_init(&m, L);
    for (; i < e; i++) {
        meter_add(&m, MOVE_UNITS / 2);
        lua_geti(L, 1, i);
    }
    lua_geti(L, 1, e);
    meter_flush(&m);
    return (int)n;
}

/* sort: Lua's quicksort (after Sedgewick), each comparison metered. */
typedef unsigned int IdxT;

#define RANLIMIT 100u /* arrays larger than this may use randomized pivots */

/* "Random" bits from the clocks, for the pivot when a partition came out
 * badly unbalanced. */
static unsigned int randomize_pivot(void)
{
    clock_t c = clock();
    time_t t = time(NULL);
    unsigned int buff[(sizeof(c) + sizeof(t)) / sizeof(unsigned int)];
    unsigned int rnd = 0;
    memcpy(buff, &c, sizeof(c));
    memcpy((char *)buff + sizeof(c), &t, sizeof(t));
    for (size_t i = 0; i < sizeof(buff) / sizeof(buff[0]); i++)
        rnd += buff[i];
    return rnd;
}

static void set2(lua_State *L, IdxT i, IdxT j)
{
    lua_seti(L, 1, i);
    lua_seti(L, 1, j);
}

/* Is the value at a less than the one at b, in the sort's order? */
static int sort_comp(lua_State *L, meter *m, int a, int b)
{
    meter_add(m, MOVE_UNITS);
    if (lua_isnil(L, 2))
        return lua_compare(L, a, b, LUA_OPLT);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, a - 1);
    lua_pushvalue(L, b - 2);
    lua_call(L, 2, 1);
    int res = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return res;
}

static IdxT partition(lua_State *L, meter *m, IdxT lo, IdxT up)
{
    IdxT i = lo;     /* incremented before first use */
    IdxT j = up - 1; /* decremented before first use */
    for (;;) {
        while ((void)lua_geti(L, 1, ++i), sort_comp(L, m, -1, -2)) {
            if (i == up - 1)
                luaL_error(L, "invalid order function for sorting");
            lua_pop(L, 1);
        }
        while ((void)lua_geti(L, 1, --j), sort_comp(L, m, -3, -1)) {
            if (j < i)
                luaL_error(L, "invalid order function for sorting");
            lua_pop(L, 1);
        }
        if (j < i) {
            lua_pop(L, 1);
            set2(L, up - 1, i);
            return i;
        }
        set2(L, i, j);
    }
}

static IdxT choose_pivot(IdxT lo, IdxT up, unsigned int rnd)
{
    IdxT r4 = (up - lo) / 4;
    return rnd % (r4 * 2) + (lo + r4);
}

static void auxsort(lua_State *L, meter *m, IdxT lo, IdxT up, unsigned int rnd)
{
    while (lo < up) { /* loop for tail recursion */
        IdxT p, n;
        lua_geti(L, 1, lo);
        lua_geti(L, 1, up);
        if (sort_comp(L, m, -1, -2))
            set2(L, lo, up);
        else
            lua_pop(L, 2);
        if (up - lo == 1)
            return;
        if (up - lo < RANLIMIT || rnd == 0)
            p = (lo + up) / 2;
        else
            p = choose_pivot(lo, up, rnd);
        lua_geti(L, 1, p);
        lua_geti(L, 1, lo);
        if (sort_comp(L, m, -2, -1)) {
            set2(L, p, lo);
        } else {
            lua_pop(L, 1);
            lua_geti(L, 1, up);
            if (sort_comp(L, m, -1, -2))
                set2(L, p, up);
            else
                lua_pop(L, 2);
        }
        if (up - lo == 2)
            return;
        lua_geti(L, 1, p);
        lua_pushvalue(L, -1);
        lua_geti(L, 1, up - 1);
        set2(L, p, up - 1);
        p = partition(L, m, lo, up);
        if (p - lo < up - p) {
            auxsort(L, m, lo, p - 1, rnd);
            n = p - lo;
            lo = p + 1;
        } else {
            auxsort(L, m, p + 1, up, rnd);
            n = up - p;
            up = p - 1;
        }
        if ((up - lo) / 128 > n) /* partition too imbalanced? */
            rnd = randomize_pivot();
    }
}

static int m_tab_sort(lua_State *L)
{
    lua_Integer n = aux_getn(L, 1, TAB_RW);
    if (n > 1) {
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        if (!lua_isnoneornil(L, 2))
            luaL_checktype(L, 2, LUA_TFUNCTION);
        lua_settop(L, 2);
        meter m;
        meter_init(&m, L);
        auxsort(L, &m, 1, (IdxT)n, 0);
        meter_flush(&m);
    }
    return 0;
}

void pc_lua_metered_table(lua_State *L)
{
    static const metered_fn fns[] = {
        {"insert", m_tab_insert, NO_STOCK}, {"remove", m_tab_remove, NO_STOCK},
        {"move", m_tab_move, NO_STOCK},     {"concat", m_tab_concat, NO_STOCK},
        {"pack", m_tab_pack, S_TPACK},      {"unpack", m_tab_unpack, NO_STOCK},
        {"sort", m_tab_sort, NO_STOCK},     {NULL, NULL, NO_STOCK},
    };
    install_all(L, fns);
}

/* utf8 library (lutf8lib.c). */

#define MAXUNICODE 0x10FFFFu
#define MAXUTF     0x7FFFFFFFu
#define iscont(p)  ((*(p)&0xC0) == 0x80)

typedef unsigned int utfint;

static lua_Integer u_posrelat(lua_Integer pos, size_t len)
{
    if (pos >= 0)
        return pos;
    else if (0u - (size_t)pos > len)
        return 0;
    return (lua_Integer)len + pos + 1;
}

/* Decodes one UTF-8 sequence; NULL if it is invalid. */
static const char *utf8_decode(const char *s, utfint *val, int strict)
{
    static const utfint limits[] = {~(utfint)0, 0x80, 0x800, 0x10000u, 0x200000u, 0x4000000u};
    unsigned int c = (unsigned char)s[0];
    utfint res = 0;
    if (c < 0x80) {
        res = c;
    } else {
        int count = 0;
        for (; c & 0x40; c <<= 1) {
            unsigned int cc = (unsigned char)s[++count];
            if ((cc & 0xC0) != 0x80)
                return NULL;
            res = (res << 6) | (cc & 0x3F);
        }
        res |= ((utfint)(c & 0x7F) << (count * 5));
        if (count > 5 || res > MAXUTF || res < limits[count])
            return NULL;
        s += count;
    }
    if (strict && (res > MAXUNICODE || (0xD800u <= res && res <= 0xDFFFu)))
        return NULL;
    if (val)
        *val = res;
    return s + 1;
}

/* len and codepoint decode the range they are given. */
static int m_utf8_len(lua_State *L)
{
    size_t len;
    luaL_checklstring(L, 1, &len);
    lua_Integer posi = u_posrelat(luaL_optinteger(L, 2, 1), len);
    lua_Integer posj = u_posrelat(luaL_optinteger(L, 3, -1), len);
    if (posi <= posj)
        charge(L, pc_lua_units_scan((size_t)(posj - posi) + 1));
    return call_stock(L, S_ULEN);
}

static int m_utf8_codepoint(lua_State *L)
{
    size_t len;
    luaL_checklstring(L, 1, &len);
    lua_Integer posi = u_posrelat(luaL_optinteger(L, 2, 1), len);
    lua_Integer pose = u_posrelat(luaL_optinteger(L, 3, posi), len);
    if (posi <= pose && posi >= 1 && pose <= (lua_Integer)len)
        charge(L, pc_lua_units_values((uint64_t)(pose - posi) + 1));
    return call_stock(L, S_CODEPOINT);
}

static int m_utf8_char(lua_State *L)
{
    charge(L, pc_lua_units_values((uint64_t)lua_gettop(L)));
    return call_stock(L, S_UCHAR);
}

/* offset: how far it walks depends on the bytes it meets. */
static int m_utf8_offset(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    lua_Integer posi = (n >= 0) ? 1 : (lua_Integer)len + 1;
    posi = u_posrelat(luaL_optinteger(L, 3, posi), len);
    luaL_argcheck(L, 1 <= posi && --posi <= (lua_Integer)len, 3, "position out of bounds");
    meter m;
    meter_init(&m, L);
    if (n == 0) {
        /* find the beginning of the current byte sequence */
        while (posi > 0 && iscont(s + posi)) {
            meter_add(&m, 1);
            posi--;
        }
    } else {
        if (iscont(s + posi))
            return luaL_error(L, "initial position is a continuation byte");
        if (n < 0) {
            while (n < 0 && posi > 0) { /* move back */
                do {
                    meter_add(&m, 1);
                    posi--;
                } while (posi > 0 && iscont(s + posi));
                n++;
            }
        } else {
            n--; /* do not move for the first character */
            while (n > 0 && posi < (lua_Integer)len) {
                do {
                    meter_add(&m, 1);
                    posi++;
                } while (iscont(s + posi)); /* (cannot pass the final '\0') */
                n--;
            }
        }
    }
    meter_flush(&m);
    if (n == 0)
        lua_pushinteger(L, posi + 1);
    else
        luaL_pushfail(L);
    return 1;
}

/* codes: the iterator skips continuation bytes, as many as there are. */
static int iter_aux(lua_State *L, int strict)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_Unsigned n = (lua_Unsigned)lua_tointeger(L, 2);
    if (n < len) {
        lua_Unsigned start = n;
        while (iscont(s + n))
            n++;
        charge(L, pc_lua_units_scan((size_t)(n - start)));
    }
    if (n >= len)
        return 0; /* no more code points */
    utfint code;
    const char *next = utf8_decode(s + n, &code, strict);
    if (next == NULL)
        return luaL_error(L, "invalid UTF-8 code");
    lua_pushinteger(L, (lua_Integer)n + 1);
    lua_pushinteger(L, code);
    return 2;
}

static int iter_auxstrict(lua_State *L)
{
    return iter_aux(L, 1);
}

static int iter_auxlax(lua_State *L)
{
    return iter_aux(L, 0);
}

static int m_utf8_codes(lua_State *L)
{
    int lax = lua_toboolean(L, 2);
    luaL_checkstring(L, 1);
    lua_pushcfunction(L, lax ? iter_auxlax : iter_auxstrict);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, 0);
    return 3;
}

void pc_lua_metered_utf8(lua_State *L)
{
    static const metered_fn fns[] = {
        {"len", m_utf8_len, S_ULEN},       {"codepoint", m_utf8_codepoint, S_CODEPOINT},
        {"char", m_utf8_char, S_UCHAR},    {"offset", m_utf8_offset, NO_STOCK},
        {"codes", m_utf8_codes, NO_STOCK}, {NULL, NULL, NO_STOCK},
    };
    install_all(L, fns);
}

/* Base library. */

/* The parser is fed at most this much at a time, each piece charged
 * before it is parsed. */
#define LOAD_PIECE 4096

typedef struct chunk_reader {
    const pc_lua_budget *budget;
    const char *s; /* what is left of the current piece */
    size_t left;
    int reader; /* stack index of a reader function, 0 for text */
    int slot;   /* where the reader's current piece is kept alive */
} chunk_reader;

static const char *metered_reader(lua_State *L, void *ud, size_t *size)
{
    chunk_reader *r = ud;
    if (r->left == 0 && r->reader != 0) {
        /* lbaselib.c's generic_reader: nil or "" ends the chunk */
        luaL_checkstack(L, 2, "too many nested functions");
        lua_pushvalue(L, r->reader);
        lua_call(L, 0, 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            *size = 0;
            return NULL;
        }
        if (!lua_isstring(L, -1))
            luaL_error(L, "reader function must return a string");
        lua_replace(L, r->slot);
        r->s = lua_tolstring(L, r->slot, &r->left);
    }
    if (r->left == 0) {
        *size = 0;
        return NULL;
    }
    size_t n = r->left < LOAD_PIECE ? r->left : LOAD_PIECE;
    if (r->budget->charge(L, pc_lua_units_scan(n)) != 0)
        luaL_error(L, STOP_MESSAGE);
    const char *piece = r->s;
    r->s += n;
    r->left -= n;
    *size = n;
    return piece;
}

int pc_lua_metered_loadbuffer(lua_State *L, const pc_lua_budget *budget, const char *s, size_t len,
                              const char *chunkname)
{
    chunk_reader r = {budget, s, len, 0, 0};
    return lua_load(L, metered_reader, &r, chunkname, "t");
}

/* load, text only whatever mode is asked for: bytecode could break out
 * of the VM's safety. Otherwise lbaselib.c's. */
#define RESERVEDSLOT 5

static int m_load(lua_State *L)
{
    int status;
    size_t l;
    const char *s = lua_tolstring(L, 1, &l);
    luaL_optstring(L, 3, "bt"); /* the mode is checked, then ignored */
    int env = !lua_isnone(L, 4) ? 4 : 0;
    chunk_reader r = {pc_lua_budget_of(L), NULL, 0, 0, RESERVEDSLOT};
    if (s != NULL) {
        const char *chunkname = luaL_optstring(L, 2, s);
        r.s = s;
        r.left = l;
        status = lua_load(L, metered_reader, &r, chunkname, "t");
    } else {
        const char *chunkname = luaL_optstring(L, 2, "=(load)");
        luaL_checktype(L, 1, LUA_TFUNCTION);
        lua_settop(L, RESERVEDSLOT);
        r.reader = 1;
        status = lua_load(L, metered_reader, &r, chunkname, "t");
    }
    if (status == LUA_OK) {
        if (env != 0) {
            lua_pushvalue(L, env);
            if (!lua_setupvalue(L, -2, 1))
                lua_pop(L, 1);
        }
        return 1;
    }
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
}

/* tonumber reads the whole string. */
static int m_tonumber(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING)
        charge(L, pc_lua_units_scan(lua_rawlen(L, 1)));
    return call_stock(L, S_TONUMBER);
}

/* rawequal compares two strings of the same length byte by byte. */
static int m_rawequal(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TSTRING && lua_type(L, 2) == LUA_TSTRING &&
        lua_rawlen(L, 1) == lua_rawlen(L, 2))
        charge(L, pc_lua_units_copy(lua_rawlen(L, 1)));
    return call_stock(L, S_RAWEQUAL);
}

void pc_lua_metered_base(lua_State *L)
{
    static const metered_fn fns[] = {
        {"load", m_load, NO_STOCK},
        {"tonumber", m_tonumber, S_TONUMBER},
        {"rawequal", m_rawequal, S_RAWEQUAL},
        {NULL, NULL, NO_STOCK},
    };
    install_all(L, fns);
}
