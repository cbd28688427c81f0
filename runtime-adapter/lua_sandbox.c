/* lua_sandbox.c - a sandboxed Lua isolate (see lua_sandbox.h). */
#include "lua_sandbox.h"

#include <ctype.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "lua_budget.h"
#include "lua_heap.h"
#include "lua_metered.h"
#include "lua_pattern.h"

/* The hook runs every hook_every instructions (HOOK_EVERY normally):
 * often enough to stop a loop within microseconds of its budget, rarely
 * enough to cost nothing. A single instruction can cost time proportional
 * to the data it touches (comparing two long strings, concatenating,
 * copying a huge argument list, a 'next' over a sparse array, a library
 * function converting a long numeric string), so the interval adapts:
 * - the more the isolate holds in big blocks, the more often the hook
 *   looks: at most HOOK_EVERY * HOOK_SCALE / big bytes instructions;
 * - an interval that took longer than a 32nd of the wall limit shrinks
 *   the next ones in proportion (to HOOK_MIN at least), and they grow back
 *   while intervals are short.
 * An interval then costs about the same whatever its instructions touch,
 * and ordinary code keeps the full interval. The scale bounds the first
 * interval, before any has been measured: with 1 MiB, a loop converting a
 * 4 MB numeric string (4 ms a call) ran 200 ms, twice a 100 ms wall limit,
 * before the hook first looked; with 256 KiB it is about 50 ms. */
#define HOOK_EVERY           1000
#define HOOK_MIN             10
#define HOOK_SCALE           (1u << 18)
#define BIG_BLOCK            (64u * 1024) /* allocations worth watching */
#define MAX_RESPONSE_HEADERS 100
#define HANDLER_KEY          "popcast.handler"

struct pc_lua_isolate {
    /* First: the extra space of every thread points here, and the metered
     * library finds the budget through it (lua_budget.h). */
    const pc_lua_budget *budget;
    lua_State *L;
    /* The thread running now: the main thread or a coroutine (the
     * sandbox's coroutine functions track every switch). The allocator,
     * which is not told the thread, uses it to stop a run or adjust the
     * hook where it runs. */
    lua_State *running;
    /* allocator: the limit bounds what the heap holds (lua_heap.h), which
     * is at least what Lua counts as live (mem_used) */
    pc_lua_heap heap;
    size_t mem_used, mem_limit;
    size_t big_bytes; /* in live blocks of BIG_BLOCK bytes or more */
    /* the run in progress */
    bool in_run;
    int hook_every;
    int64_t last_hook_ns; /* when the hook last ran */
    int64_t instructions_left;
    uint64_t pending; /* units charged by C code, not yet taken from the budget */
    int64_t deadline_ns, wall_ns;
    int64_t last_check_ns; /* when the limits were last checked */
    pc_lua_limit killed;
    const atomic_int *abort; /* the caller's, for this run; may be NULL */
    const pc_lua_limits *limits;
};

const char *pc_lua_limit_name(pc_lua_limit l)
{
    switch (l) {
    case PC_LUA_LIMIT_CPU: return "cpu";
    case PC_LUA_LIMIT_TIME: return "time";
    case PC_LUA_LIMIT_MEMORY: return "memory";
    case PC_LUA_LIMIT_RESPONSE: return "response";
    case PC_LUA_LIMIT_WATCHDOG: return "watchdog";
    default: return "none";
    }
}

int64_t pc_lua_now_ns(void)
{
    return pc_mono_ns();
}

static pc_lua_isolate *isolate_of(lua_State *L)
{
    return *(pc_lua_isolate **)lua_getextraspace(L);
}

static bool aborted(const pc_lua_isolate *iso)
{
    return iso->abort != NULL && atomic_load_explicit(iso->abort, memory_order_relaxed) != 0;
}

/* Takes units from the instruction budget and checks every limit; true
 * (with killed set) when the run must stop. Once stopped, it stays so. */
static bool over_limits(pc_lua_isolate *iso, uint64_t units)
{
    if (iso->killed != PC_LUA_LIMIT_NONE)
        return true;
    iso->instructions_left -= units > INT64_MAX ? INT64_MAX : (int64_t)units;
    if (iso->instructions_left < 0)
        iso->killed = PC_LUA_LIMIT_CPU;
    else if (aborted(iso))
        iso->killed = PC_LUA_LIMIT_WATCHDOG;
    else if ((iso->last_check_ns = pc_lua_now_ns()) > iso->deadline_ns)
        iso->killed = PC_LUA_LIMIT_TIME;
    return iso->killed != PC_LUA_LIMIT_NONE;
}

/* The check at a big allocation. Besides the limits: an instruction that
 * has run for a long time without the hook or a charge (which check
 * every few microseconds) is one of the VM's own loops, and the only one
 * that allocates as it goes is a self-referencing __call chain, which
 * moves the whole stack for every link: its time grows with the square of
 * the stack, so the stack growth after this one comes about four times as
 * long after it as this one came after the last check. If that would end
 * past one and a half wall limits, it is stopped now (so that the run ends
 * within twice the limit wherever the growths fall). A legitimate
 * instruction (a collection, a copy) never runs for a third of the wall
 * limit. */
static bool over_limits_at_alloc(pc_lua_isolate *iso)
{
    if (iso->killed != PC_LUA_LIMIT_NONE)
        return true;
    int64_t now = pc_lua_now_ns();
    int64_t since = now - iso->last_check_ns;
    iso->last_check_ns = now;
    if (aborted(iso))
        iso->killed = PC_LUA_LIMIT_WATCHDOG;
    else if (now > iso->deadline_ns || now + 4 * since > iso->deadline_ns + iso->wall_ns / 2)
        iso->killed = PC_LUA_LIMIT_TIME;
    return iso->killed != PC_LUA_LIMIT_NONE;
}

static void limit_hook(lua_State *L, lua_Debug *ar);

/* Puts thread L under the hook the isolate needs now: once the run is
 * stopped, on every instruction and every call (so that no pcall, not
 * even one whose callee never executes an instruction, can outlast it). */
static void set_hook(pc_lua_isolate *iso, lua_State *L)
{
    if (iso->killed != PC_LUA_LIMIT_NONE)
        lua_sethook(L, limit_hook, LUA_MASKCOUNT | LUA_MASKCALL, 1);
    else if (lua_gethook(L) != limit_hook || lua_gethookcount(L) != iso->hook_every)
        lua_sethook(L, limit_hook, LUA_MASKCOUNT, iso->hook_every);
}

/* Raises the limit error in L, naming the tenant's code at level (0 in
 * the hook, which runs in the tenant function's frame; 1 in a C function
 * it called). */
static int stop_run(lua_State *L, pc_lua_isolate *iso, int level)
{
    set_hook(iso, L);
    luaL_where(L, level);
    lua_pushfstring(L, "%s limit exceeded", pc_lua_limit_name(iso->killed));
    lua_concat(L, 2);
    return lua_error(L);
}

/* The longest interval for the big blocks the isolate holds. */
static int hook_interval(size_t big_bytes)
{
    if (big_bytes <= HOOK_SCALE)
        return HOOK_EVERY;
    uint64_t every = (uint64_t)HOOK_EVERY * HOOK_SCALE / big_bytes;
    return every < HOOK_MIN ? HOOK_MIN : (int)every;
}

/* Adapts the interval to how long the last one (count instructions) took. */
static void adapt_interval(pc_lua_isolate *iso, int count, int64_t took_ns)
{
    int64_t target = iso->wall_ns / 32;
    int every = iso->hook_every, cap = hook_interval(iso->big_bytes);
    if (took_ns > target && target > 0) {
        int64_t shrunk = (int64_t)count * target / took_ns;
        every = shrunk < HOOK_MIN ? HOOK_MIN : (int)shrunk;
    } else if (took_ns < target / 4 && every < cap) {
        every = 2 * every < cap ? 2 * every : cap;
    }
    iso->hook_every = every < cap ? every : cap;
}

static void limit_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    pc_lua_isolate *iso = isolate_of(L);
    iso->running = L;
    int count = lua_gethookcount(L);
    if (over_limits(iso, (uint64_t)count))
        stop_run(L, iso, 0);
    adapt_interval(iso, count, iso->last_check_ns - iso->last_hook_ns);
    iso->last_hook_ns = iso->last_check_ns;
    set_hook(iso, L); /* the interval may have changed since it was set */
}

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    pc_lua_isolate *iso = ud;
    size_t old = ptr != NULL ? osize : 0; /* with ptr NULL, osize is a type tag */
    if (nsize == 0) {
        iso->mem_used -= old;
        if (old >= BIG_BLOCK)
            iso->big_bytes -= old;
        pc_lua_heap_realloc(&iso->heap, ptr, old, 0);
        return NULL;
    }
    if (nsize > old) {
        /* Refusing is not the end of the run: Lua answers a refusal with an
         * emergency collection and asks again, and raises a memory error
         * only if it still does not fit (a freed small block stays for
         * blocks of its size class: lua_heap.h). Garbage left by
         * earlier requests is therefore never what stops a handler. */
        if (!pc_lua_heap_fits(&iso->heap, old, nsize, iso->mem_limit)) {
            /* That collection is a full one, its cost proportional to the
             * heap: it is charged, and is a point to check the limits. A
             * handler whose live data sits at the cap, allocating under
             * pcall, would otherwise collect the whole heap once per
             * instruction, unseen. */
            if (iso->in_run && over_limits(iso, iso->mem_used / 256))
                set_hook(iso, iso->running);
            return NULL;
        }
        /* A big allocation is a point where an instruction that never
         * returns to the VM can be stopped: a self-referencing __call
         * chain, resolved inside one call instruction, moves the whole
         * stack for every link and only comes out here, to grow it.
         * Past a limit the growth is refused (a memory error where it
         * stands), and the running thread fails its next instruction. */
        if (nsize >= BIG_BLOCK && iso->in_run && over_limits_at_alloc(iso)) {
            set_hook(iso, iso->running);
            return NULL;
        }
    }
    void *p = pc_lua_heap_realloc(&iso->heap, ptr, old, nsize);
    if (p == NULL)
        return NULL;
    iso->mem_used = iso->mem_used - old + nsize;
    if (old >= BIG_BLOCK || nsize >= BIG_BLOCK) {
        iso->big_bytes =
            iso->big_bytes - (old >= BIG_BLOCK ? old : 0) + (nsize >= BIG_BLOCK ? nsize : 0);
        if (iso->in_run && nsize > old) {
            int cap = hook_interval(iso->big_bytes);
            if (iso->hook_every > cap)
                iso->hook_every = cap;
            set_hook(iso, iso->running); /* now, not at the next hook */
        }
    }
    return p;
}

/* C code (the pattern functions, the metered library) runs where the hook
 * never fires: it charges its work here (lua_budget.h), against the same
 * instruction budget and deadline, checked once a chunk of units is due. */
static int charge_work(lua_State *L, uint64_t units)
{
    pc_lua_isolate *iso = isolate_of(L);
    iso->pending += units;
    if (iso->pending < PC_LUA_CHUNK && iso->killed == PC_LUA_LIMIT_NONE)
        return 0;
    iso->running = L;
    uint64_t due = iso->pending;
    iso->pending = 0;
    if (!over_limits(iso, due))
        return 0;
    return stop_run(L, iso, 1);
}

static const pc_lua_budget work_budget = {charge_work};

static void start_run(pc_lua_isolate *iso, uint64_t instructions, uint64_t wall_ms,
                      const atomic_int *abort)
{
    iso->killed = PC_LUA_LIMIT_NONE;
    iso->abort = abort;
    iso->pending = 0;
    iso->instructions_left = instructions > INT64_MAX ? INT64_MAX : (int64_t)instructions;
    iso->wall_ns = (int64_t)wall_ms * 1000000LL;
    iso->last_check_ns = iso->last_hook_ns = pc_lua_now_ns();
    iso->deadline_ns = iso->last_check_ns + iso->wall_ns;
    iso->running = iso->L;
    iso->hook_every = hook_interval(iso->big_bytes);
    iso->in_run = true;
    lua_sethook(iso->L, limit_hook, LUA_MASKCOUNT, iso->hook_every);
}

/* Settles a run that has returned: work charged since the last check, and
 * the deadline, which a run may pass between two checks. A run that was
 * stopped (say in a coroutine whose error was returned to the caller as a
 * value) or that overran is over its limit even if it then returned. */
static void finish_run(pc_lua_isolate *iso)
{
    uint64_t due = iso->pending;
    iso->pending = 0;
    over_limits(iso, due);
    iso->in_run = false;
    iso->running = iso->L;
    iso->abort = NULL; /* the caller's flag may not outlive the call */
}

/* The error for a run that a limit stopped: "<where><limit> limit
 * exceeded", followed by what Lua raised unless that says the same. */
static int limit_error(pc_err *err, const char *where, pc_lua_limit hit, const char *msg)
{
    char said[48];
    snprintf(said, sizeof(said), "%s limit exceeded", pc_lua_limit_name(hit));
    if (msg != NULL && strstr(msg, said) != NULL)
        return pc_err_set(err, PC_E_LIMIT, "%s%s", where, msg);
    return pc_err_set(err, PC_E_LIMIT, "%s%s%s%s", where, said, msg ? ": " : "", msg ? msg : "");
}

/* Which limit, if any, ended a run that finished with status. A memory
 * error that reaches the top is the memory limit (one that tenant code
 * caught and got past is not). */
static pc_lua_limit run_limit(pc_lua_isolate *iso, int status)
{
    if (iso->killed != PC_LUA_LIMIT_NONE)
        return iso->killed;
    if (status == LUA_ERRMEM)
        return PC_LUA_LIMIT_MEMORY;
    return PC_LUA_LIMIT_NONE;
}

/* Safe replacements for base functions. */

/* setmetatable, without finalizers. A __gc metamethod runs inside the
 * collector with hooks off, so no limit could stop it: during a request
 * it hangs the worker, and at lua_close of a replaced version it hangs
 * whoever drops the last reference (the apply thread, often). Lua marks
 * an object for finalization only if its metatable has a __gc field when
 * setmetatable is called (adding one later does nothing), and tenants
 * have no other way to give one to a table or a userdata (no debug
 * library): refusing it here means no tenant finalizer ever runs. */
static int safe_setmetatable(lua_State *L)
{
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_pushliteral(L, "__gc");
        if (lua_rawget(L, 2) != LUA_TNIL)
            return luaL_error(L, "__gc metamethods (finalizers) are not available");
        lua_pop(L, 1);
    }
    return lua_tocfunction(L, lua_upvalueindex(1))(L); /* Lua's own */
}

/* An xpcall's message handler, guarded. A limit error is raised inside
 * the hook, where hooks are off, and Lua calls the message handler right
 * there, and again for every error inside the handler: a looping handler
 * would never be stopped. Once the run is stopped the handler is skipped
 * and the error goes through as it is. */
static int guarded_handler(lua_State *L)
{
    if (isolate_of(L)->killed != PC_LUA_LIMIT_NONE)
        return 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int safe_xpcall(lua_State *L)
{
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, guarded_handler, 1);
    lua_replace(L, 2);
    /* Lua's own (its continuation keeps yields across xpcall working) */
    return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

/* Coroutines, adapted from Lua 5.4.4's lcorolib.c (Copyright (C)
 * 1994-2022 Lua.org, PUC-Rio; MIT license): resume, wrap and close are
 * Lua's, but every switch of thread goes through switch_to, which keeps
 * iso->running right and puts the thread it enters under the hook the run
 * needs now (a coroutine created earlier may carry an older setting). */

/* Runs co from L (resumed with narg arguments, or closed when narg < 0);
 * returns lua_resume's or lua_resetthread's status. */
static int switch_to(lua_State *L, lua_State *co, int narg, int *nres)
{
    pc_lua_isolate *iso = isolate_of(L);
    set_hook(iso, co);
    iso->running = co;
    int status = narg >= 0 ? lua_resume(co, L, narg, nres) : lua_resetthread(co);
    iso->running = L;
    if (iso->killed != PC_LUA_LIMIT_NONE)
        set_hook(iso, L); /* stopped in co: the caller fails next */
    return status;
}

static lua_State *getco(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "thread");
    return co;
}

static int auxresume(lua_State *L, lua_State *co, int narg)
{
    int status, nres;
    if (!lua_checkstack(co, narg)) {
        lua_pushliteral(L, "too many arguments to resume");
        return -1;
    }
    lua_xmove(L, co, narg);
    status = switch_to(L, co, narg, &nres);
    if (status == LUA_OK || status == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1)) {
            lua_pop(co, nres);
            lua_pushliteral(L, "too many results to resume");
            return -1;
        }
        lua_xmove(co, L, nres);
        return nres;
    }
    lua_xmove(co, L, 1); /* the error */
    return -1;
}

static int co_resume(lua_State *L)
{
    lua_State *co = getco(L);
    int r = auxresume(L, co, lua_gettop(L) - 1);
    if (r < 0) {
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
}

static int co_auxwrap(lua_State *L)
{
    lua_State *co = lua_tothread(L, lua_upvalueindex(1));
    int r = auxresume(L, co, lua_gettop(L));
    if (r < 0) {
        int stat = lua_status(co);
        if (stat != LUA_OK && stat != LUA_YIELD) { /* an error in the coroutine */
            stat = switch_to(L, co, -1, NULL);     /* close its tbc variables */
            lua_xmove(co, L, 1);
        }
        if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
            luaL_where(L, 1);
            lua_insert(L, -2);
            lua_concat(L, 2);
        }
        return lua_error(L);
    }
    return r;
}

static int co_wrap(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    lua_pushcclosure(L, co_auxwrap, 1);
    return 1;
}

static int co_close(lua_State *L)
{
    lua_State *co = getco(L);
    const char *state = NULL;
    if (co == L) {
        state = "running";
    } else if (lua_status(co) == LUA_OK) {
        lua_Debug ar;
        if (lua_getstack(co, 0, &ar))
            state = "normal"; /* it resumed the caller */
    }
    if (state != NULL)
        return luaL_error(L, "cannot close a %s coroutine", state);
    int status = switch_to(L, co, -1, NULL);
    if (status == LUA_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushboolean(L, 0);
    lua_xmove(co, L, 1);
    return 2;
}

/* collectgarbage("count") only: the rest lets a tenant stall or tune the
 * collector in ways that hurt latency. */
static int safe_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "count");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage('%s') is not available", opt);
    lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT, 0) +
                          (lua_Number)lua_gc(L, LUA_GCCOUNTB, 0) / 1024.0);
    return 1;
}

/* The request being served (a light userdata, while a handler runs):
 * where print sends its line. */
#define REQUEST_KEY "popcast.request"

/* print(...): Lua's own print joins its arguments' tostring with tabs; so
 * does this one, into one line handed to the request's print sink (the
 * agent's tail), cut at PC_PRINT_LINE_MAX bytes. Outside a request (the
 * top level) or with no sink, the line is dropped: a tenant's print never
 * reaches the agent's own output. */
static int sandbox_print(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, REQUEST_KEY);
    const pc_request *req = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (req == NULL || req->print == NULL)
        return 0;
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    size_t len = 0;
    const char *line = lua_tolstring(L, -1, &len);
    req->print(req->print_arg, line, len > PC_PRINT_LINE_MAX ? PC_PRINT_LINE_MAX : len);
    return 0;
}

/* The libraries a tenant sees. metered is false only for the benchmark's
 * comparison isolates (pc_lua_isolate_new_stock). */
static void open_sandbox_libs(lua_State *L, bool metered)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                    {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_MATHLIBNAME, luaopen_math},
                                    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {LUA_COLIBNAME, luaopen_coroutine},
                                    {NULL, NULL}};
    for (const luaL_Reg *lib = libs; lib->func != NULL; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    lua_pushglobaltable(L);
    static const char *const removed[] = {"dofile", "loadfile", "require", NULL};
    for (int i = 0; removed[i] != NULL; i++) {
        lua_pushnil(L);
        lua_setfield(L, -2, removed[i]);
    }
    lua_pushcfunction(L, safe_collectgarbage);
    lua_setfield(L, -2, "collectgarbage");
    lua_pushcfunction(L, sandbox_print);
    lua_setfield(L, -2, "print");
    lua_getfield(L, -1, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    if (!metered) {
        lua_pop(L, 1);
        return;
    }
    pc_lua_metered_base(L); /* load (text only), tonumber, rawequal */
    lua_getfield(L, -1, "setmetatable");
    lua_pushcclosure(L, safe_setmetatable, 1);
    lua_setfield(L, -2, "setmetatable");
    lua_getfield(L, -1, "xpcall");
    lua_pushcclosure(L, safe_xpcall, 1);
    lua_setfield(L, -2, "xpcall");
    lua_getfield(L, -1, "coroutine");
    lua_pushcfunction(L, co_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, co_wrap);
    lua_setfield(L, -2, "wrap");
    lua_pushcfunction(L, co_close);
    lua_setfield(L, -2, "close");
    lua_pop(L, 1);
    lua_getfield(L, -1, "table");
    pc_lua_metered_table(L);
    lua_pop(L, 1);
    lua_getfield(L, -1, "utf8");
    pc_lua_metered_utf8(L);
    lua_pop(L, 1);
    lua_getfield(L, -1, "string");
    pc_lua_metered_string(L);
    pc_lua_pattern_install(L, &work_budget);
    lua_pop(L, 2);
}

/* Runs in protected mode: the top level, then finds the handler. */
static int run_top_level(lua_State *L)
{
    lua_call(L, 0, 1);
    if (!lua_isfunction(L, -1)) {
        lua_pop(L, 1);
        lua_getglobal(L, "handle");
        if (!lua_isfunction(L, -1))
            return luaL_error(L, "the bundle defines no handler: return a function, or define "
                                 "a global function handle(req)");
    }
    lua_setfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
    return 0;
}

static void close_state(pc_lua_isolate *iso)
{
    /* No tenant code runs here (tenants cannot have finalizers): closing
     * frees what the isolate holds, bounded by its memory limit. */
    lua_close(iso->L);
    pc_lua_heap_release(&iso->heap);
}

/* run: also run the top level (else only compile it, out may be NULL). */
static int isolate_new(const char *source, size_t len, const char *chunkname,
                       const pc_lua_limits *limits, const atomic_int *abort, bool metered, bool run,
                       pc_lua_isolate **out, pc_lua_limit *hit, pc_err *err)
{
    if (out != NULL)
        *out = NULL;
    *hit = PC_LUA_LIMIT_NONE;
    pc_lua_isolate *iso = calloc(1, sizeof(*iso));
    if (iso == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    iso->budget = &work_budget;
    iso->limits = limits;
    iso->mem_limit = limits->memory_bytes;
    iso->L = lua_newstate(capped_alloc, iso);
    if (iso->L == NULL) {
        pc_lua_heap_release(&iso->heap);
        free(iso);
        return pc_err_set(err, PC_E_LIMIT, "cannot create a Lua state within the memory limit");
    }
    *(pc_lua_isolate **)lua_getextraspace(iso->L) = iso;
    start_run(iso, limits->instructions, limits->wall_ms, abort);
    open_sandbox_libs(iso->L, metered);
    int rc = PC_OK;
    /* Compiling is work too: a bundle may hold megabytes of source. */
    int status = pc_lua_metered_loadbuffer(iso->L, &work_budget, source, len, chunkname);
    if (status != LUA_OK) {
        finish_run(iso);
        *hit = run_limit(iso, status);
        const char *msg = lua_tostring(iso->L, -1);
        if (*hit != PC_LUA_LIMIT_NONE)
            rc = limit_error(err, "compiling: ", *hit, msg);
        else
            rc = pc_err_set(err, PC_E_RUNTIME, "%s", msg ? msg : "cannot compile");
    } else if (!run) {
        finish_run(iso);
    } else {
        lua_pushcfunction(iso->L, run_top_level);
        lua_insert(iso->L, -2);
        status = lua_pcall(iso->L, 1, 0, 0);
        finish_run(iso);
        *hit = run_limit(iso, status);
        const char *msg = status != LUA_OK ? lua_tostring(iso->L, -1) : NULL;
        if (*hit != PC_LUA_LIMIT_NONE)
            rc = limit_error(err, "top level: ", *hit, msg);
        else if (status != LUA_OK)
            rc = pc_err_set(err, PC_E_RUNTIME, "top level: %s",
                            msg ? msg : "error object is not a string");
    }
    lua_settop(iso->L, 0);
    if (rc != PC_OK || out == NULL) {
        pc_lua_isolate_free(iso);
        return rc;
    }
    *out = iso;
    return PC_OK;
}

int pc_lua_check_syntax(const char *source, size_t len, const char *chunkname,
                        const pc_lua_limits *limits, pc_err *err)
{
    pc_lua_limit hit;
    return isolate_new(source, len, chunkname, limits, NULL, true, false, NULL, &hit, err);
}

int pc_lua_isolate_new(const char *source, size_t len, const char *chunkname,
                       const pc_lua_limits *limits, const atomic_int *abort, pc_lua_isolate **out,
                       pc_lua_limit *hit, pc_err *err)
{
    return isolate_new(source, len, chunkname, limits, abort, true, true, out, hit, err);
}

int pc_lua_isolate_new_stock(const char *source, size_t len, const char *chunkname,
                             const pc_lua_limits *limits, pc_lua_isolate **out, pc_lua_limit *hit,
                             pc_err *err)
{
    return isolate_new(source, len, chunkname, limits, NULL, false, true, out, hit, err);
}

void pc_lua_isolate_free(pc_lua_isolate *iso)
{
    if (iso == NULL)
        return;
    close_state(iso);
    free(iso);
}

/* Requests and responses. */

static void push_request(lua_State *L, const pc_request *req)
{
    lua_createtable(L, 0, 5);
    lua_pushstring(L, req->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, req->path);
    lua_setfield(L, -2, "path");
    lua_pushstring(L, req->query ? req->query : "");
    lua_setfield(L, -2, "query");
    lua_createtable(L, 0, (int)req->n_headers);
    for (size_t i = 0; i < req->n_headers; i++) {
        lua_pushstring(L, req->headers[i].value);
        lua_setfield(L, -2, req->headers[i].name);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, (const char *)req->body, req->body_len);
    lua_setfield(L, -2, "body");
}

static bool header_name_ok(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || strchr("!#$%&'*+-.^_`|~", *s) != NULL))
            return false;
    return true;
}

static bool header_value_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
            return false;
    return true;
}

/* Framing is the edge's business, never the handler's. */
static bool header_dropped(const char *name)
{
    return strcasecmp(name, "content-length") == 0 || strcasecmp(name, "transfer-encoding") == 0 ||
           strcasecmp(name, "connection") == 0;
}

typedef struct call_ctx {
    const pc_request *req;
    pc_response *res;
    size_t response_max;
    bool too_large;
} call_ctx;

static char *dup_lua(lua_State *L, const char *s, size_t len)
{
    char *p = malloc(len + 1);
    if (p == NULL)
        luaL_error(L, "not enough memory");
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

/* Protected: calls the handler and copies its answer into ctx->res. What
 * it allocates lives in ctx->res, so an error half way leaks nothing (the
 * caller clears the response). */
static int call_handler(lua_State *L)
{
    call_ctx *ctx = lua_touserdata(L, 1);
    pc_response *res = ctx->res;
    lua_getfield(L, LUA_REGISTRYINDEX, HANDLER_KEY);
    push_request(L, ctx->req);
    lua_call(L, 1, 1);
    int ret = lua_gettop(L);
    size_t len = 0;
    const char *body = NULL;
    if (lua_type(L, ret) == LUA_TSTRING) {
        res->status = 200;
        body = lua_tolstring(L, ret, &len);
        res->headers = calloc(1, sizeof(*res->headers));
        if (res->headers == NULL)
            return luaL_error(L, "not enough memory");
        res->headers[0].name = dup_lua(L, "content-type", 12);
        res->n_headers = 1;
        res->headers[0].value = dup_lua(L, "text/plain; charset=utf-8", 25);
    } else if (lua_type(L, ret) == LUA_TTABLE) {
        lua_getfield(L, ret, "status");
        if (lua_isnil(L, -1)) {
            res->status = 200;
        } else {
            int isnum = 0;
            lua_Integer st = lua_tointegerx(L, -1, &isnum);
            /* 1xx pass through to the edge, which refuses them with a 502
             * naming the range it serves (agent/edge.c). */
            if (!isnum || st < 100 || st > 599)
                return luaL_error(L, "response status must be an integer from 100 to 599");
            res->status = (int)st;
        }
        lua_pop(L, 1);
        lua_getfield(L, ret, "headers");
        if (!lua_isnil(L, -1)) {
            if (!lua_istable(L, -1))
                return luaL_error(L, "response headers must be a table");
            res->headers = calloc(MAX_RESPONSE_HEADERS, sizeof(*res->headers));
            if (res->headers == NULL)
                return luaL_error(L, "not enough memory");
            lua_pushnil(L);
            while (lua_next(L, -2) != 0) {
                if (lua_type(L, -2) != LUA_TSTRING)
                    return luaL_error(L, "response header names must be strings");
                size_t nlen = 0;
                const char *name = lua_tolstring(L, -2, &nlen);
                /* A NUL inside the name would cut it short: refuse, never
                 * truncate. */
                if (strlen(name) != nlen)
                    return luaL_error(L, "response header names must not contain NUL");
                size_t vlen = 0;
                if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
                    return luaL_error(L, "response header %s must be a string", name);
                lua_pushvalue(L, -1); /* tolstring on a copy keeps lua_next's key intact */
                const char *value = lua_tolstring(L, -1, &vlen);
                if (!header_name_ok(name))
                    return luaL_error(L, "response header name '%s' is not a valid token", name);
                if (!header_value_ok(value, vlen))
                    return luaL_error(L, "response header %s has CR, LF or NUL", name);
                if (!header_dropped(name)) {
                    if (res->n_headers == MAX_RESPONSE_HEADERS)
                        return luaL_error(L, "more than %d response headers", MAX_RESPONSE_HEADERS);
                    pc_header *h = &res->headers[res->n_headers];
                    h->name = dup_lua(L, name, strlen(name));
                    h->value = dup_lua(L, value, vlen);
                    res->n_headers++;
                }
                lua_pop(L, 2);
            }
        }
        lua_pop(L, 1);
        lua_getfield(L, ret, "body");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "response body must be a string");
            body = lua_tolstring(L, -1, &len);
        }
    } else {
        return luaL_error(L, "the handler must return a string or a table, not %s",
                          luaL_typename(L, ret));
    }
    if (len > ctx->response_max) {
        ctx->too_large = true;
        return luaL_error(L, "response body of %zu bytes is over the limit", len);
    }
    res->body = (uint8_t *)dup_lua(L, body ? body : "", len);
    res->body_len = len;
    return 0;
}

int pc_lua_isolate_call(pc_lua_isolate *iso, const pc_request *req, pc_response *res,
                        const atomic_int *abort, pc_lua_limit *hit, pc_err *err)
{
    *hit = PC_LUA_LIMIT_NONE;
    memset(res, 0, sizeof(*res));
    call_ctx ctx = {req, res, iso->limits->response_bytes, false};
    lua_State *L = iso->L;
    start_run(iso, iso->limits->instructions, iso->limits->wall_ms, abort);
    lua_pushlightuserdata(L, (void *)req);
    lua_setfield(L, LUA_REGISTRYINDEX, REQUEST_KEY);
    lua_pushcfunction(L, call_handler);
    lua_pushlightuserdata(L, &ctx);
    int status = lua_pcall(L, 1, 0, 0);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REQUEST_KEY);
    int rc = PC_OK;
    finish_run(iso);
    *hit = run_limit(iso, status);
    if (ctx.too_large)
        *hit = PC_LUA_LIMIT_RESPONSE;
    if (status != LUA_OK || *hit != PC_LUA_LIMIT_NONE) {
        const char *msg = status != LUA_OK ? lua_tostring(L, -1) : NULL;
        if (*hit != PC_LUA_LIMIT_NONE)
            rc = limit_error(err, "", *hit, msg);
        else
            rc = pc_err_set(err, PC_E_RUNTIME, "%s", msg ? msg : "error object is not a string");
        pc_response_clear(res);
        res->status = 0;
    }
    lua_settop(L, 0);
    /* Between requests: no hook cost and no stale deadline. */
    lua_sethook(L, NULL, 0, 0);
    return rc;
}
