/* lua_pattern.c - Lua pattern matching with a step budget (see
 * lua_pattern.h). The matcher is a backtracking recursive descent over the
 * pattern, as the manual specifies: single character classes with the
 * quantifiers * + - ?, anchors, captures (including position captures),
 * back references %1-%9, %bxy and %f[set]. Recursion is bounded (MAX_DEPTH,
 * "pattern too complex") and every unit of work is charged to the budget. */
/* memmem comes from _GNU_SOURCE, which the build defines. */
#include "lua_pattern.h"

#include <ctype.h>
#include <lauxlib.h>
#include <stddef.h>
#include <string.h>

#define ESC            '%'
#define SPECIALS       "^$*+?.([%-"
#define MAX_CAPTURES   32
#define MAX_DEPTH      200
#define CAP_UNFINISHED (-1)
#define CAP_POSITION   (-2)

typedef struct matcher {
    const char *src_init, *src_end; /* the subject */
    const char *p_end;              /* end of the pattern */
    lua_State *L;
    const pc_lua_pattern_budget *budget;
    uint64_t steps; /* since the last charge */
    int depth_left;
    int level; /* captures open or closed so far */
    struct {
        const char *init;
        ptrdiff_t len; /* or CAP_UNFINISHED, CAP_POSITION */
    } capture[MAX_CAPTURES];
} matcher;

static const char *match(matcher *m, const char *s, const char *p);

static void charge_now(matcher *m)
{
    uint64_t steps = m->steps;
    m->steps = 0;
    if (m->budget->charge(m->L, steps) != 0)
        luaL_error(m->L, "pattern matching exceeded the CPU limit");
}

static inline void step(matcher *m, uint64_t n)
{
    m->steps += n;
    if (m->steps >= PC_LUA_PATTERN_CHUNK)
        charge_now(m);
}

static const pc_lua_pattern_budget *budget_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static void matcher_init(matcher *m, lua_State *L, const pc_lua_pattern_budget *b, const char *s,
                         size_t ls, const char *p, size_t lp)
{
    m->L = L;
    m->budget = b;
    m->steps = 0;
    m->src_init = s;
    m->src_end = s + ls;
    m->p_end = p + lp;
}

static void matcher_restart(matcher *m)
{
    m->level = 0;
    m->depth_left = MAX_DEPTH;
}

/* Character classes. */

static int class_matches(int c, int cl)
{
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    case 'z': res = c == 0; break; /* deprecated in the manual, still accepted */
    default: return cl == c;       /* %x for a non-letter x is x itself */
    }
    if (isupper(cl))
        res = !res;
    return res != 0;
}

/* p is at '[', close at the set's ']'. */
static int set_matches(matcher *m, int c, const char *p, const char *close)
{
    int found = 1;
    if (*(p + 1) == '^') {
        found = 0;
        p++;
    }
    step(m, (uint64_t)(close - p)); /* at most one step per character of the set */
    while (++p < close) {
        if (*p == ESC) {
            p++;
            if (class_matches(c, (unsigned char)*p))
                return found;
        } else if (*(p + 1) == '-' && p + 2 < close) {
            p += 2;
            if ((unsigned char)*(p - 2) <= c && c <= (unsigned char)*p)
                return found;
        } else if ((unsigned char)*p == c) {
            return found;
        }
    }
    return !found;
}

/* The end of the single character class that starts at p. */
static const char *class_end(matcher *m, const char *p)
{
    switch (*p++) {
    case ESC:
        if (p == m->p_end)
            luaL_error(m->L, "malformed pattern (ends with '%%')");
        return p + 1;
    case '[':
        if (*p == '^')
            p++;
        do { /* the first character is never the closing ']' */
            if (p == m->p_end)
                luaL_error(m->L, "malformed pattern (missing ']')");
            if (*(p++) == ESC && p < m->p_end)
                p++; /* skip the escaped character (e.g. '%]') */
        } while (*p != ']');
        return p + 1;
    default: return p;
    }
}

/* Does the character at s match the class [p, ep)? */
static int single_matches(matcher *m, const char *s, const char *p, const char *ep)
{
    if (s >= m->src_end)
        return 0;
    int c = (unsigned char)*s;
    switch (*p) {
    case '.': return 1;
    case ESC: return class_matches(c, (unsigned char)*(p + 1));
    case '[': return set_matches(m, c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* Pattern items that are not single classes. */

static const char *match_balance(matcher *m, const char *s, const char *p)
{
    if (p >= m->p_end - 1)
        luaL_error(m->L, "malformed pattern (missing arguments to '%%b')");
    if (s >= m->src_end || *s != *p)
        return NULL;
    int open = *p, close = *(p + 1), depth = 1;
    while (++s < m->src_end) {
        step(m, 1);
        if (*s == close) {
            if (--depth == 0)
                return s + 1;
        } else if (*s == open) {
            depth++;
        }
    }
    return NULL;
}

/* Greedy: take as many as possible, then give back one at a time. */
static const char *max_expand(matcher *m, const char *s, const char *p, const char *ep)
{
    ptrdiff_t i = 0;
    while (single_matches(m, s + i, p, ep)) {
        i++;
        step(m, 1);
    }
    while (i >= 0) {
        const char *res = match(m, s + i, ep + 1);
        if (res != NULL)
            return res;
        i--;
        step(m, 1);
    }
    return NULL;
}

/* Lazy: take as few as possible, one more at a time. */
static const char *min_expand(matcher *m, const char *s, const char *p, const char *ep)
{
    for (;;) {
        const char *res = match(m, s, ep + 1);
        if (res != NULL)
            return res;
        if (!single_matches(m, s, p, ep))
            return NULL;
        s++;
        step(m, 1);
    }
}

static const char *start_capture(matcher *m, const char *s, const char *p, ptrdiff_t what)
{
    if (m->level >= MAX_CAPTURES)
        luaL_error(m->L, "too many captures");
    m->capture[m->level].init = s;
    m->capture[m->level].len = what;
    m->level++;
    const char *res = match(m, s, p);
    if (res == NULL)
        m->level--; /* undo the capture */
    return res;
}

static const char *end_capture(matcher *m, const char *s, const char *p)
{
    int open = -1;
    for (int i = m->level - 1; i >= 0; i--) {
        if (m->capture[i].len == CAP_UNFINISHED) {
            open = i;
            break;
        }
    }
    if (open < 0)
        luaL_error(m->L, "invalid pattern capture");
    m->capture[open].len = s - m->capture[open].init;
    const char *res = match(m, s, p);
    if (res == NULL)
        m->capture[open].len = CAP_UNFINISHED;
    return res;
}

/* %1-%9: the text of an earlier capture again. */
static const char *match_backref(matcher *m, const char *s, int digit)
{
    int l = digit - '1';
    if (l < 0 || l >= m->level || m->capture[l].len == CAP_UNFINISHED)
        luaL_error(m->L, "invalid capture index %%%d", l + 1);
    ptrdiff_t len = m->capture[l].len;
    if (len < 0)
        return NULL; /* a position capture has no text */
    step(m, (uint64_t)len);
    if (m->src_end - s >= len && memcmp(m->capture[l].init, s, (size_t)len) == 0)
        return s + len;
    return NULL;
}

/* Matches pattern p against the subject from s; returns the end of the
 * match or NULL. Tail positions loop instead of recursing. */
static const char *match(matcher *m, const char *s, const char *p)
{
    if (m->depth_left-- == 0)
        luaL_error(m->L, "pattern too complex");
    step(m, 1);
    while (p != m->p_end) {
        const char *ep;
        switch (*p) {
        case '(':
            if (*(p + 1) == ')')
                s = start_capture(m, s, p + 2, CAP_POSITION);
            else
                s = start_capture(m, s, p + 1, CAP_UNFINISHED);
            goto done;
        case ')': s = end_capture(m, s, p + 1); goto done;
        case '$':
            if (p + 1 != m->p_end)
                goto single; /* not the last character: a literal '$' */
            s = s == m->src_end ? s : NULL;
            goto done;
        case ESC:
            switch (*(p + 1)) {
            case 'b':
                s = match_balance(m, s, p + 2);
                if (s == NULL)
                    goto done;
                p += 4;
                continue;
            case 'f': {
                p += 2;
                if (*p != '[')
                    luaL_error(m->L, "missing '[' after '%%f' in pattern");
                ep = class_end(m, p);
                int prev = s == m->src_init ? '\0' : (unsigned char)*(s - 1);
                int cur = s < m->src_end ? (unsigned char)*s : '\0';
                if (!set_matches(m, prev, p, ep - 1) && set_matches(m, cur, p, ep - 1)) {
                    p = ep;
                    continue;
                }
                s = NULL;
                goto done;
            }
            case '0':
            case '1':
            case '2':
            case '3':
            case '4':
            case '5':
            case '6':
            case '7':
            case '8':
            case '9':
                s = match_backref(m, s, (unsigned char)*(p + 1));
                if (s == NULL)
                    goto done;
                p += 2;
                continue;
            default: goto single;
            }
        default:
        single:
            ep = class_end(m, p);
            if (!single_matches(m, s, p, ep)) {
                if (*ep == '*' || *ep == '?' || *ep == '-') {
                    p = ep + 1; /* zero repetitions are fine */
                    continue;
                }
                s = NULL;
                goto done;
            }
            switch (*ep) {
            case '?': {
                const char *res = match(m, s + 1, ep + 1);
                if (res != NULL) {
                    s = res;
                    goto done;
                }
                p = ep + 1;
                continue;
            }
            case '+': s = max_expand(m, s + 1, p, ep); goto done;
            case '*': s = max_expand(m, s, p, ep); goto done;
            case '-': s = min_expand(m, s, p, ep); goto done;
            default:
                s++;
                p = ep;
                continue;
            }
        }
    }
done:
    m->depth_left++;
    return s;
}

/* Captures to Lua values. */

static void push_capture(matcher *m, int i, const char *s, const char *e)
{
    if (i >= m->level) {
        if (i != 0)
            luaL_error(m->L, "invalid capture index %%%d", i + 1);
        lua_pushlstring(m->L, s, (size_t)(e - s)); /* the whole match */
        return;
    }
    ptrdiff_t len = m->capture[i].len;
    if (len == CAP_UNFINISHED)
        luaL_error(m->L, "unfinished capture");
    if (len == CAP_POSITION)
        lua_pushinteger(m->L, (lua_Integer)(m->capture[i].init - m->src_init) + 1);
    else
        lua_pushlstring(m->L, m->capture[i].init, (size_t)len);
}

/* s == NULL: only the captures (find pushes the bounds itself). */
static int push_captures(matcher *m, const char *s, const char *e)
{
    int n = (m->level == 0 && s != NULL) ? 1 : m->level;
    luaL_checkstack(m->L, n, "too many captures");
    for (int i = 0; i < n; i++)
        push_capture(m, i, s, e);
    return n;
}

/* Library functions. */

/* Lua's rule for a start position: negative counts from the end. */
static size_t start_index(lua_Integer pos, size_t len)
{
    if (pos > 0)
        return (size_t)pos;
    if (pos == 0)
        return 1;
    if (pos < -(lua_Integer)len)
        return 1;
    return len + (size_t)pos + 1;
}

static int has_specials(const char *p, size_t lp)
{
    for (size_t i = 0; i < lp; i++)
        if (strchr(SPECIALS, p[i]) != NULL && p[i] != '\0')
            return 1;
    return 0;
}

static int find_or_match(lua_State *L, int find)
{
    const pc_lua_pattern_budget *b = budget_of(L);
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
    if (init > ls) {
        luaL_pushfail(L);
        return 1;
    }
    matcher m;
    matcher_init(&m, L, b, s, ls, p, lp);
    if (find && (lua_toboolean(L, 4) || !has_specials(p, lp))) {
        /* memmem is linear; charge for the bytes it may scan. */
        step(&m, (ls - init) / 16 + lp / 16 + 1);
        const char *hit = lp == 0 ? s + init : memmem(s + init, ls - init, p, lp);
        if (hit != NULL) {
            lua_pushinteger(L, (lua_Integer)(hit - s) + 1);
            lua_pushinteger(L, (lua_Integer)(hit - s + (ptrdiff_t)lp));
            return 2;
        }
        luaL_pushfail(L);
        return 1;
    }
    int anchor = *p == '^';
    if (anchor) {
        p++;
        lp--;
        m.p_end = p + lp;
    }
    const char *s1 = s + init;
    do {
        matcher_restart(&m);
        const char *e = match(&m, s1, p);
        if (e != NULL) {
            if (find) {
                lua_pushinteger(L, (lua_Integer)(s1 - s) + 1);
                lua_pushinteger(L, (lua_Integer)(e - s));
                return push_captures(&m, NULL, NULL) + 2;
            }
            return push_captures(&m, s1, e);
        }
    } while (s1++ < m.src_end && !anchor);
    luaL_pushfail(L);
    return 1;
}

static int pattern_find(lua_State *L)
{
    return find_or_match(L, 1);
}

static int pattern_match(lua_State *L)
{
    return find_or_match(L, 0);
}

/* gmatch keeps its state in a userdata next to the subject and pattern,
 * which stay referenced by the iterator so the pointers stay valid. */
typedef struct gmatch_state {
    const char *src;       /* where the next search starts */
    const char *p;         /* the pattern */
    const char *lastmatch; /* end of the last match, to skip empty repeats */
    matcher m;
} gmatch_state;

static int gmatch_next(lua_State *L)
{
    gmatch_state *g = lua_touserdata(L, lua_upvalueindex(3));
    g->m.L = L; /* the iterator may run in another coroutine */
    for (const char *src = g->src; src <= g->m.src_end; src++) {
        matcher_restart(&g->m);
        const char *e = match(&g->m, src, g->p);
        if (e != NULL && e != g->lastmatch) {
            g->src = g->lastmatch = e;
            return push_captures(&g->m, src, e);
        }
    }
    return 0;
}

static int pattern_gmatch(lua_State *L)
{
    const pc_lua_pattern_budget *b = budget_of(L);
    size_t ls, lp;
    const char *s = luaL_checklstring(L, 1, &ls);
    const char *p = luaL_checklstring(L, 2, &lp);
    size_t init = start_index(luaL_optinteger(L, 3, 1), ls) - 1;
    lua_settop(L, 2); /* subject and pattern become upvalues 1 and 2 */
    gmatch_state *g = lua_newuserdatauv(L, sizeof(*g), 0);
    if (init > ls)
        init = ls + 1; /* past the end: no match */
    matcher_init(&g->m, L, b, s, ls, p, lp);
    g->src = s + init;
    g->p = p;
    g->lastmatch = NULL;
    lua_pushcclosure(L, gmatch_next, 3);
    return 1;
}

/* gsub: appends the replacement for the match [s, e). Returns whether
 * the text changed. */
static void add_replacement_string(matcher *m, luaL_Buffer *buf, const char *s, const char *e)
{
    lua_State *L = m->L;
    size_t l;
    const char *news = lua_tolstring(L, 3, &l);
    const char *p;
    step(m, pc_lua_units_copy(l));
    while ((p = memchr(news, ESC, l)) != NULL) {
        luaL_addlstring(buf, news, (size_t)(p - news));
        p++; /* the character after '%' */
        if (*p == ESC) {
            luaL_addchar(buf, *p);
        } else if (*p == '0') {
            luaL_addlstring(buf, s, (size_t)(e - s));
        } else if (isdigit((unsigned char)*p)) {
            push_capture(m, *p - '1', s, e);
            luaL_tolstring(L, -1, NULL); /* a position capture becomes text */
            lua_remove(L, -2);
            luaL_addvalue(buf);
        } else {
            luaL_error(L, "invalid use of '%c' in replacement string", ESC);
        }
        l -= (size_t)(p + 1 - news);
        news = p + 1;
        step(m, 1);
    }
    luaL_addlstring(buf, news, l);
}

static int add_replacement(matcher *m, luaL_Buffer *buf, const char *s, const char *e, int type)
{
    lua_State *L = m->L;
    switch (type) {
    case LUA_TFUNCTION: {
        lua_pushvalue(L, 3);
        int n = push_captures(m, s, e);
        lua_call(L, n, 1);
        break;
    }
    case LUA_TTABLE:
        push_capture(m, 0, s, e);
        lua_gettable(L, 3);
        break;
    default: add_replacement_string(m, buf, s, e); return 1;
    }
    if (!lua_toboolean(L, -1)) { /* nil or false: keep the original text */
        lua_pop(L, 1);
        luaL_addlstring(buf, s, (size_t)(e - s));
        return 0;
    }
    if (!lua_isstring(L, -1))
        return luaL_error(L, "invalid replacement value (a %s)", luaL_typename(L, -1));
    step(m, pc_lua_units_copy(lua_rawlen(L, -1)));
    luaL_addvalue(buf);
    return 1;
}

static int pattern_gsub(lua_State *L)
{
    const pc_lua_pattern_budget *b = budget_of(L);
    size_t srcl, lp;
    const char *src = luaL_checklstring(L, 1, &srcl);
    const char *p = luaL_checklstring(L, 2, &lp);
    int type = lua_type(L, 3);
    lua_Integer max_n = luaL_optinteger(L, 4, (lua_Integer)srcl + 1);
    luaL_argexpected(L,
                     type == LUA_TNUMBER || type == LUA_TSTRING || type == LUA_TFUNCTION ||
                         type == LUA_TTABLE,
                     3, "string/function/table");
    int anchor = *p == '^';
    if (anchor) {
        p++;
        lp--;
    }
    matcher m;
    matcher_init(&m, L, b, src, srcl, p, lp);
    luaL_Buffer buf;
    luaL_buffinit(L, &buf);
    const char *lastmatch = NULL;
    lua_Integer n = 0;
    int changed = 0;
    while (n < max_n) {
        matcher_restart(&m);
        const char *e = match(&m, src, p);
        if (e != NULL && e != lastmatch) {
            n++;
            changed |= add_replacement(&m, &buf, src, e, type);
            src = lastmatch = e;
        } else if (src < m.src_end) {
            luaL_addchar(&buf, *src++);
        } else {
            break;
        }
        if (anchor)
            break;
    }
    if (!changed) {
        lua_pushvalue(L, 1); /* nothing changed: the subject itself */
    } else {
        luaL_addlstring(&buf, src, (size_t)(m.src_end - src));
        luaL_pushresult(&buf);
    }
    lua_pushinteger(L, n);
    return 2;
}

void pc_lua_pattern_install(lua_State *L, const pc_lua_pattern_budget *budget)
{
    static const luaL_Reg fns[] = {{"find", pattern_find},
                                   {"match", pattern_match},
                                   {"gmatch", pattern_gmatch},
                                   {"gsub", pattern_gsub},
                                   {NULL, NULL}};
    for (const luaL_Reg *f = fns; f->name != NULL; f++) {
        lua_pushlightuserdata(L, (void *)budget);
        lua_pushcclosure(L, f->func, 1);
        lua_setfield(L, -2, f->name);
    }
}
