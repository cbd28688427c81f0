/* test_lua.c - the Lua adapter: the handler API, the sandbox (nothing
 * outside string/table/math/utf8/coroutine and a safe base is reachable),
 * the limits, prepare failures that leave the old version serving, and
 * versions freed after swaps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "adapter.h"
#include "bundle.h"
#include "crypto.h"
#include "harness.h"
#include "lua_engine.h"
#include "metrics.h"

static pc_adapter *lua;
static pc_metrics *metrics;

static int setup(void **state)
{
    pc_test_init();
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    /* Small limits keep the limit tests quick. */
    limits.instructions = 2000000;
    limits.wall_ms = 2000;
    limits.memory_bytes = 8u << 20;
    limits.response_bytes = 64 * 1024;
    limits.max_isolates = 4;
    pc_err err;
    metrics = pc_metrics_new();
    lua = pc_lua_adapter_new(&limits, metrics, &err);
    return lua == NULL;
}

static int teardown(void **state)
{
    lua->destroy(lua);
    pc_metrics_free(metrics);
    return 0;
}

/* Prepares source as tenant's version into *p. deferred: as at an
 * agent's start. */
static int prepare_as(const char *tenant, uint64_t version, const char *source, bool deferred,
                      pc_prepared **p, pc_err *err)
{
    uint8_t *bundle = NULL;
    size_t len = 0;
    int rc = pc_bundle_pack_single("main.lua", (const uint8_t *)source, strlen(source), &bundle,
                                   &len, err);
    if (rc != PC_OK)
        return rc;
    uint8_t hash[PC_HASH_LEN];
    pc_hash(hash, bundle, len);
    pc_version_spec spec = {.tenant = tenant,
                            .version = version,
                            .seq = version,
                            .runtime = "lua",
                            .entrypoint = "main.lua",
                            .bundle = bundle,
                            .bundle_len = len,
                            .hash = hash,
                            .deferred = deferred};
    *p = NULL;
    rc = lua->prepare(lua, &spec, p, err);
    free(bundle);
    return rc;
}

/* Prepares and activates source as tenant's version; returns the result of
 * prepare (or activate), with err set. */
static int deploy_as(const char *tenant, uint64_t version, const char *source, bool deferred,
                     pc_err *err)
{
    pc_prepared *p = NULL;
    int rc = prepare_as(tenant, version, source, deferred, &p, err);
    return rc != PC_OK ? rc : lua->activate(lua, p, err);
}

static int deploy(const char *tenant, uint64_t version, const char *source, pc_err *err)
{
    return deploy_as(tenant, version, source, false, err);
}

static void deploy_ok(const char *tenant, uint64_t version, const char *source)
{
    pc_err err;
    if (deploy(tenant, version, source, &err) != PC_OK)
        fail_msg("deploy %s v%llu: %s", tenant, (unsigned long long)version, err.msg);
}

/* Serves GET path on tenant; returns serve's result, the body in out. */
static int get(const char *tenant, const char *path, pc_response *res, pc_err *err)
{
    pc_header hdr[] = {{"x-test", "yes"}};
    pc_request req = {.method = "GET",
                      .path = path,
                      .query = "a=1",
                      .headers = hdr,
                      .n_headers = 1,
                      .body = (const uint8_t *)"payload",
                      .body_len = 7};
    return lua->serve(lua, tenant, &req, res, err);
}

/* The body of a successful GET, as a string the caller frees. */
static char *get_body(const char *tenant, const char *path)
{
    pc_response res;
    pc_err err;
    if (get(tenant, path, &res, &err) != PC_OK)
        fail_msg("GET %s%s: %s", tenant, path, err.msg);
    char *text = malloc(res.body_len + 1);
    memcpy(text, res.body, res.body_len);
    text[res.body_len] = '\0';
    pc_response_clear(&res);
    return text;
}

static void expect_body(const char *tenant, const char *path, const char *want)
{
    char *got = get_body(tenant, path);
    if (strcmp(got, want) != 0)
        fail_msg("GET %s%s: expected '%s', got '%s'", tenant, path, want, got);
    free(got);
}

static void test_handler_api(void **state)
{
    deploy_ok(
        "api", 1,
        "return function(req)\n"
        "  return {status = 201,\n"
        "          headers = {['x-echo'] = req.headers['x-test'], ['content-length'] = '9'},\n"
        "          body = req.method .. ' ' .. req.path .. '?' .. req.query .. ' ' .. req.body}\n"
        "end\n");
    pc_response res;
    pc_err err;
    assert_int_equal(get("api", "/p", &res, &err), PC_OK);
    assert_int_equal(res.status, 201);
    assert_int_equal(res.version, 1);
    assert_int_equal(res.body_len, strlen("GET /p?a=1 payload"));
    assert_memory_equal(res.body, "GET /p?a=1 payload", res.body_len);
    int echo = 0;
    for (size_t i = 0; i < res.n_headers; i++) {
        if (strcmp(res.headers[i].name, "x-echo") == 0 && strcmp(res.headers[i].value, "yes") == 0)
            echo = 1;
        /* Framing headers are the server's job, never the handler's. */
        assert_string_not_equal(res.headers[i].name, "content-length");
    }
    assert_true(echo);
    pc_response_clear(&res);

    /* A global handle() works too, and a plain string is a 200. */
    deploy_ok("api", 2, "function handle(req) return 'v2' end");
    expect_body("api", "/", "v2");
    assert_int_equal(lua->live_version(lua, "api"), 2);
    assert_int_equal(get("nobody", "/", &res, &err), PC_E_NOTFOUND);
}

/* What print hands the request's sink. */
typedef struct printed {
    char lines[8][1100];
    size_t lens[8];
    int n;
} printed;

static void keep_print(void *arg, const char *line, size_t len)
{
    printed *p = arg;
    if (p->n == 8)
        return;
    memcpy(p->lines[p->n], line, len);
    p->lines[p->n][len] = '\0';
    p->lens[p->n++] = len;
}

/* print: tostring of each argument (metamethods too), tab-joined, one
 * call of the request's sink per print, cut at PC_PRINT_LINE_MAX; with
 * no sink, or at the top level, nothing happens and the handler runs on. */
static void test_print_goes_to_the_request_sink(void **state)
{
    (void)state;
    deploy_ok("printer", 1,
              "print('at the top level')\n"
              "local t = setmetatable({}, {__tostring = function() return 'T!' end})\n"
              "return function(req)\n"
              "  print('a', 1, nil, true, t)\n"
              "  print()\n"
              "  print(string.rep('x', 5000))\n"
              "  return 'done'\n"
              "end\n");
    printed p = {.n = 0};
    pc_request req = {.method = "GET",
                      .path = "/",
                      .query = "",
                      .body = (const uint8_t *)"",
                      .print = keep_print,
                      .print_arg = &p};
    pc_response res;
    pc_err err;
    assert_int_equal(lua->serve(lua, "printer", &req, &res, &err), PC_OK);
    pc_response_clear(&res);
    assert_int_equal(p.n, 3);
    assert_string_equal(p.lines[0], "a\t1\tnil\ttrue\tT!");
    assert_int_equal(p.lens[1], 0);
    assert_int_equal(p.lens[2], PC_PRINT_LINE_MAX);
    /* No sink: the same handler answers, and nothing is kept anywhere. */
    expect_body("printer", "/", "done");
}

static void test_sandbox_escapes_unreachable(void **state)
{
    static const struct {
        const char *expr;
        const char *want;
    } probes[] = {
        {"tostring(io)", "nil"},
        {"tostring(os)", "nil"},
        {"tostring(debug)", "nil"},
        {"tostring(package)", "nil"},
        {"tostring(require)", "nil"},
        {"tostring(dofile)", "nil"},
        {"tostring(loadfile)", "nil"},
        {"tostring(string.dump)", "nil"},
        {"tostring(getmetatable('').__index.dump)", "nil"},
        /* Bytecode is refused by load, whatever mode is asked for. */
        {"select(2, load('\\27Lua\\x54\\0\\x19\\x93\\r\\n\\x1a\\n'))", "attempt to load a binary "
                                                                       "chunk (mode is 't')"},
        {"select(2, load('\\27Lua\\x54\\0', 'x', 'b'))",
         "attempt to load a binary chunk (mode is 't')"},
        {"type(load(function() return nil end, 'x', 'bt'))", "function"},
        {"select(2, pcall(collectgarbage, 'collect'))",
         "collectgarbage('collect') is not available"},
        {"type(collectgarbage('count'))", "number"},
        /* No finalizers: they would run with no limit at all. */
        {"select(2, pcall(setmetatable, {}, {__gc = function() end}))",
         "__gc metamethods (finalizers) are not available"},
        {"select(2, pcall(setmetatable, {}, {__gc = false}))",
         "__gc metamethods (finalizers) are not available"},
        /* xpcall's message handler works as in Lua. */
        {"select(2, xpcall(error, function(m) return 'handled: ' .. m end, 'x'))", "handled: x"},
        {"select(2, xpcall(function(a, b) return a + b end, print, 1, 2))", "3"},
        {"select(2, pcall(xpcall, print))",
         "bad argument #2 to 'xpcall' (function expected, got no value)"},
        {"coroutine.wrap(function() "
         "return xpcall(function() return coroutine.yield(5) end, print) end)()",
         "5"},
        {"(function() local co = coroutine.wrap(function() "
         "return select(2, xpcall(function() coroutine.yield() error('e', 0) end, "
         "function(m) return m .. '!' end)) end) co() return co() end)()",
         "e!"},
        /* Arithmetic on strings works as in Lua (the string metatable's
         * metamethods are metered). */
        {"('10' + 1) .. ' ' .. ('0x10' * 2) .. ' ' .. (-'2') .. ' ' .. ('7' // '2') .. ' ' .. "
         "('2' ^ '3') .. ' ' .. math.type('3' + 0)",
         "11 32 -2 3 8.0 integer"},
        {"select(2, pcall(function() return 'a' + 1 end))",
         "main.lua:1: attempt to add a 'string' with a 'number'"},
        {"select(2, pcall(function() return '1' + {} end))",
         "main.lua:1: attempt to add a 'string' with a 'table'"},
        /* Coroutines work as in Lua. */
        {"select(2, coroutine.resume(coroutine.create(function(a) return a * 2 end), 21))", "42"},
        {"select(2, coroutine.resume(coroutine.create(function() error('x', 0) end)))", "x"},
        {"select(2, pcall(coroutine.wrap(function() error('x') end)))", "main.lua:1: x"},
        {"(function() local co = coroutine.wrap(function(a) local b = coroutine.yield(a + 1) "
         "return b * 3 end) return co(1) + co(5) end)()",
         "17"},
        {"coroutine.close(coroutine.create(print))", "true"},
        {"(function() local co = coroutine.create(function() local x <close> = "
         "setmetatable({}, {__close = function() error('in close', 0) end}) "
         "coroutine.yield() end) coroutine.resume(co) "
         "return select(2, coroutine.close(co)) .. ' ' .. coroutine.status(co) end)()",
         "in close dead"},
        {"select(2, pcall(coroutine.close, coroutine.running()))",
         "cannot close a running coroutine"},
        {"(function() local outer outer = coroutine.create(function() "
         "local inner = coroutine.create(function() return coroutine.close(outer) end) "
         "return coroutine.resume(inner) end) return select(3, coroutine.resume(outer)) end)()",
         "main.lua:1: cannot close a normal coroutine"},
        {"select(2, pcall(coroutine.resume, 1))",
         "bad argument #1 to 'coroutine.resume' (thread expected, got number)"},
        {"select('#', coroutine.resume(coroutine.create(function() end)))", "1"},
        /* Other metatables work as in Lua. */
        {"getmetatable(setmetatable({}, {__index = {a = 1}})).__index.a", "1"},
        {"setmetatable({}, {__index = function(t, k) return k .. '!' end}).x", "x!"},
        {"select(2, pcall(setmetatable, setmetatable({}, {__metatable = 'no'}), {}))",
         "cannot change a protected metatable"},
        {"select(2, pcall(setmetatable, 1, {}))",
         "bad argument #1 to 'setmetatable' (table expected, got number)"},
        /* Text chunks still load, but see only the sandbox. */
        {"load('return tostring(io)')()", "nil"},
        {"type(string.format) .. type(table.concat) .. type(math.floor) .. type(utf8.char)",
         "functionfunctionfunctionfunction"},
    };
    char src[512];
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        snprintf(src, sizeof(src), "return function(req) return tostring(%s) end", probes[i].expr);
        deploy_ok("probe", i + 1, src);
        expect_body("probe", "/", probes[i].want);
    }
    /* os.execute and io.open fail as errors (os and io are nil), and the
     * adapter answers with a runtime error rather than running anything. */
    deploy_ok("probe", 100, "return function(req) os.execute('touch /tmp/popcast-pwned') end");
    pc_response res;
    pc_err err;
    assert_int_equal(get("probe", "/", &res, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "os"));
    deploy_ok("probe", 101, "return function(req) return io.open('/etc/passwd'):read('a') end");
    assert_int_equal(get("probe", "/", &res, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "io"));
}

static void test_tenants_share_nothing(void **state)
{
    deploy_ok("alpha", 1,
              "secret = 'alpha-secret'\n"
              "string.upper = function() return 'hijacked' end\n"
              "return function(req) return secret end");
    deploy_ok("beta", 1,
              "return function(req) return tostring(secret) .. ' ' .. string.upper('ok') end");
    expect_body("alpha", "/", "alpha-secret");
    expect_body("beta", "/", "nil OK");
}

static void test_limits(void **state)
{
    deploy_ok("good", 1, "return function(req) return 'fine' end");
    pc_response res;
    pc_err err;
    /* CPU: an endless loop is stopped. */
    deploy_ok("spin", 1, "return function(req) while true do end end");
    assert_int_equal(get("spin", "/", &res, &err), PC_E_LIMIT);
    /* The error says which limit, once, and where the code was. */
    if (strcmp(err.msg, "main.lua:1: cpu limit exceeded") != 0 &&
        strcmp(err.msg, "main.lua:1: time limit exceeded") != 0)
        fail_msg("unexpected limit error: %s", err.msg);
    /* Again, on a fresh isolate: still stopped, never hangs. */
    assert_int_equal(get("spin", "/", &res, &err), PC_E_LIMIT);
    /* An endless loop inside a coroutine too. */
    deploy_ok("spin", 2,
              "return function(req) return coroutine.wrap(function() while true do end end)() "
              "end");
    assert_int_equal(get("spin", "/", &res, &err), PC_E_LIMIT);
    /* A coroutine stopped by a limit returns its error to the resumer as a
     * value; the run is still over, even if the handler then returns. */
    deploy_ok("spin", 3,
              "return function(req) "
              "local ok = coroutine.resume(coroutine.create(function() while true do end end)) "
              "return tostring(ok) end");
    assert_int_equal(get("spin", "/", &res, &err), PC_E_LIMIT);
    assert_int_equal(get("spin", "/", &res, &err), PC_E_LIMIT);
    /* Memory: a bomb hits the cap, the process is unharmed. */
    deploy_ok("bomb", 1,
              "return function(req) local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024) .. "
              "i end end");
    assert_int_equal(get("bomb", "/", &res, &err), PC_E_LIMIT);
    assert_non_null(strstr(err.msg, "memory"));
    deploy_ok("bomb", 2, "return function(req) return string.rep('x', 1 << 40) end");
    int rc = get("bomb", "/", &res, &err);
    assert_true(rc == PC_E_LIMIT || rc == PC_E_RUNTIME);
    /* Backtracking patterns run in C where the hook never fires: the
     * budgeted pattern functions stop them at the same CPU limit. */
    deploy_ok("regex", 1,
              "return function(req) return tostring(string.find(('a'):rep(20000), "
              "('a*'):rep(8) .. 'b')) end");
    assert_int_equal(get("regex", "/", &res, &err), PC_E_LIMIT);
    deploy_ok("regex", 2,
              "return function(req) local s = ('a'):rep(20000) "
              "return tostring(s:gsub(('.-'):rep(6) .. 'x', '')) end");
    assert_int_equal(get("regex", "/", &res, &err), PC_E_LIMIT);
    /* pcall does not let a handler go on past the limit. */
    deploy_ok("regex", 3,
              "return function(req) for i = 1, 100 do pcall(string.find, ('a'):rep(20000), "
              "('a*'):rep(8) .. 'b') end return 'escaped' end");
    assert_int_equal(get("regex", "/", &res, &err), PC_E_LIMIT);
    deploy_ok("regex", 4, "return function(req) return (('a=1'):gsub('(%w)=(%w)', '%2=%1')) end");
    expect_body("regex", "/", "1=a");
    /* Response size. */
    deploy_ok("huge", 1, "return function(req) return string.rep('x', 65 * 1024) end");
    assert_int_equal(get("huge", "/", &res, &err), PC_E_LIMIT);
    assert_non_null(strstr(err.msg, "response"));
    /* Deep recursion is a Lua error, not a crashed process. */
    deploy_ok("deep", 1,
              "local function f(n) return 1 + f(n + 1) end return function() return f(1) end");
    rc = get("deep", "/", &res, &err);
    assert_true(rc == PC_E_RUNTIME || rc == PC_E_LIMIT);
    /* A handler error is reported with its text. */
    deploy_ok("oops", 1, "return function(req) error('kaboom') end");
    assert_int_equal(get("oops", "/", &res, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "kaboom"));
    deploy_ok("oops", 2, "return function(req) return 42 end");
    assert_int_equal(get("oops", "/", &res, &err), PC_E_RUNTIME);
    deploy_ok("oops", 3, "return function(req) return {status = 99} end");
    assert_int_equal(get("oops", "/", &res, &err), PC_E_RUNTIME);
    deploy_ok("oops", 4, "return function(req) return {headers = {['x-a'] = 'b\\r\\nx-c: d'}} end");
    assert_int_equal(get("oops", "/", &res, &err), PC_E_RUNTIME);
    /* A NUL in a header name is refused, not cut short to "x-a". */
    deploy_ok("oops", 6, "return function(req) return {headers = {['x-a\\0evil'] = 'v'}} end");
    assert_int_equal(get("oops", "/", &res, &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "NUL"));

    /* Through all of it the other tenant kept serving. */
    expect_body("good", "/", "fine");
    /* Limits are counted per tenant. */
    assert_true(pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                               "tenant=\"spin\",limit=\"cpu\"") +
                    pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                                   "tenant=\"spin\",limit=\"time\"") >=
                5);
    assert_true(pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                               "tenant=\"bomb\",limit=\"memory\"") >= 1);
    assert_true(pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                               "tenant=\"regex\",limit=\"cpu\"") +
                    pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                                   "tenant=\"regex\",limit=\"time\"") >=
                3);
    assert_true(pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                               "tenant=\"huge\",limit=\"response\"") >= 1);
    assert_int_equal(pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                                    "tenant=\"good\",limit=\"cpu\""),
                     0);
}

/* The memory limit is on what a run keeps alive, not on the garbage that
 * earlier requests left for the collector: a refused allocation makes Lua
 * collect and retry, and only if that fails too is the run over. */
static void test_memory_limit_counts_live_data_only(void **state)
{
    /* Each request builds 3 MiB and drops it: 8 MiB hold one, never three. */
    deploy_ok("garbage", 1,
              "return function(req) local s = string.rep('x', 3 * 1024 * 1024) "
              "return tostring(#s) end");
    for (int i = 0; i < 20; i++)
        expect_body("garbage", "/", "3145728");
    /* A pcall that catches a memory error leaves a handler that can go on. */
    deploy_ok("garbage", 2,
              "return function(req) local ok = pcall(string.rep, 'x', 64 * 1024 * 1024) "
              "return tostring(ok) .. ' ' .. #string.rep('y', 1024 * 1024) end");
    for (int i = 0; i < 5; i++)
        expect_body("garbage", "/", "false 1048576");
    /* Live data over the cap is still stopped, as a memory limit. */
    deploy_ok("garbage", 3,
              "local keep = {} return function(req) for i = 1, 16 do "
              "keep[#keep + 1] = string.rep('z', 1024 * 1024) .. i end return 'kept' end");
    pc_response res;
    pc_err err;
    assert_int_equal(get("garbage", "/", &res, &err), PC_E_LIMIT);
    assert_non_null(strstr(err.msg, "memory"));
    assert_true(pc_metrics_get(metrics, "popcast_lua_limit_exceeded_total",
                               "tenant=\"garbage\",limit=\"memory\"") == 1);
}

/* A split whose key is over the engine's bound is refused and changes
 * nothing: the live version keeps every request and no split is shown.
 * A valid key makes the split, and a whole activation ends it. */
static void test_split_key_is_bounded(void **state)
{
    (void)state;
    deploy_ok("splitter", 1, "return function(req) return 'one' end");
    pc_err err;
    for (int round = 0; round < 2; round++) {
        pc_prepared *p = NULL;
        assert_int_equal(
            prepare_as("splitter", 2, "return function(req) return 'two' end", false, &p, &err),
            PC_OK);
        char key[128];
        memset(key, 'k', sizeof(key));
        key[round == 0 ? 80 : 6] = '\0'; /* 80 bytes: one over the bound */
        int rc = lua->activate_split(lua, p, 999, key, &err);
        if (round == 0) {
            assert_int_equal(rc, PC_E_INVALID);
            assert_int_equal(lua->split_version(lua, "splitter"), 0);
            for (int i = 0; i < 20; i++)
                expect_body("splitter", "/", "one");
        } else {
            assert_int_equal(rc, PC_OK);
            assert_int_equal(lua->split_version(lua, "splitter"), 2);
        }
    }
    deploy_ok("splitter", 3, "return function(req) return 'three' end");
    assert_int_equal(lua->split_version(lua, "splitter"), 0);
    expect_body("splitter", "/", "three");
}

static void test_prepare_failure_keeps_old_version(void **state)
{
    deploy_ok("stable", 1, "return function(req) return 'one' end");
    pc_err err;
    /* Syntax error, missing handler, runtime error, endless top level,
     * memory bomb at top level: each is refused at prepare. */
    const char *bad[] = {
        "return function( end",
        "local x = 1",
        "error('top level boom')",
        "while true do end",
        "local t = {} for i = 1, 1e9 do t[i] = string.rep('y', 1024) .. i end",
        /* stopped inside a coroutine, then returns a handler */
        ("coroutine.resume(coroutine.create(function() while true do end end)) "
         "return function() return 'two' end"),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = deploy("stable", 2 + i, bad[i], &err);
        if (rc != PC_E_RUNTIME && rc != PC_E_LIMIT)
            fail_msg("bad bundle %zu: expected a runtime error, got %s", i, pc_err_name(rc));
        assert_true(strlen(err.msg) > 0);
        expect_body("stable", "/", "one");
        assert_int_equal(lua->live_version(lua, "stable"), 1);
    }
    assert_int_equal(deploy("stable", 10, "error('top level boom')", &err), PC_E_RUNTIME);
    assert_non_null(strstr(err.msg, "top level boom"));
    /* Compiling is charged too: 10 MB of source is over 2,000,000
     * instructions' worth of parsing. */
    size_t big = 10u << 20;
    char *src = malloc(big + 64);
    memset(src, ' ', big);
    strcpy(src + big, "return function(req) return 'big' end");
    assert_int_equal(deploy("stable", 11, src, &err), PC_E_LIMIT);
    assert_non_null(strstr(err.msg, "compiling"));
    free(src);
    expect_body("stable", "/", "one");
}

static void test_swaps_free_old_versions(void **state)
{
    long versions0 = 0, isolates0 = 0;
    deploy_ok("swap", 1, "return function(req) return 'v1' end");
    pc_lua_adapter_counts(lua, &versions0, &isolates0);
    char src[128];
    for (int v = 2; v <= 1000; v++) {
        snprintf(src, sizeof(src), "local n = %d return function(req) return 'v' .. n end", v);
        deploy_ok("swap", (uint64_t)v, src);
        if (v % 100 == 0) {
            snprintf(src, sizeof(src), "v%d", v);
            expect_body("swap", "/", src);
        }
    }
    long versions = 0, isolates = 0;
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(versions, versions0);
    assert_true(isolates <= isolates0 + 1);
    /* Deactivation frees the tenant's version. */
    pc_err err;
    assert_int_equal(lua->deactivate(lua, "swap", &err), PC_OK);
    assert_int_equal(lua->live_version(lua, "swap"), 0);
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(versions, versions0 - 1);
}

/* Idle isolates are bounded across tenants: past max_idle_isolates the
 * least recently used go, a tenant whose isolate went is served all the
 * same (a new isolate, built on its request), and the one just used keeps
 * its own. */
static void test_idle_isolates_are_bounded(void **state)
{
    (void)state;
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    limits.max_idle_isolates = 3;
    pc_metrics *own_metrics = pc_metrics_new();
    pc_err err;
    pc_adapter *shared = lua;
    lua = pc_lua_adapter_new(&limits, own_metrics, &err);
    assert_non_null(lua);
    char tenant[32], src[128], want[32];
    for (int t = 0; t < 10; t++) {
        snprintf(tenant, sizeof(tenant), "idle%d", t);
        snprintf(src, sizeof(src), "return function(req) return 'tenant %d' end", t);
        deploy_ok(tenant, 1, src);
    }
    long versions = 0, isolates = 0;
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(versions, 10);
    assert_int_equal(isolates, 3);
    assert_int_equal(pc_metrics_get(own_metrics, "popcast_lua_isolates_evicted_total", NULL), 7);
    /* Every tenant still answers; the idle bound still holds after. */
    for (int t = 0; t < 10; t++) {
        snprintf(tenant, sizeof(tenant), "idle%d", t);
        snprintf(want, sizeof(want), "tenant %d", t);
        expect_body(tenant, "/", want);
    }
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(isolates, 3);
    /* idle0 was deployed first and used long ago: built again. idle9 was
     * just used: its isolate is reused. */
    assert_int_equal(
        pc_metrics_get(own_metrics, "popcast_lua_isolates_created_total", "tenant=\"idle0\""), 2);
    uint64_t before =
        pc_metrics_get(own_metrics, "popcast_lua_isolates_created_total", "tenant=\"idle9\"");
    expect_body("idle9", "/", "tenant 9");
    assert_int_equal(
        pc_metrics_get(own_metrics, "popcast_lua_isolates_created_total", "tenant=\"idle9\""),
        before);
    lua->destroy(lua);
    pc_metrics_free(own_metrics);
    lua = shared;
}

/* Idle isolates unused for idle_ttl_ms are freed by the watchdog, so an
 * agent whose tenants went quiet gives back their lua_States; the next
 * request builds one again and is served. */
static void test_idle_isolates_expire(void **state)
{
    (void)state;
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    limits.idle_ttl_ms = 50;
    limits.wall_ms = 40; /* the watchdog looks every 40 ms */
    pc_metrics *own_metrics = pc_metrics_new();
    pc_err err;
    pc_adapter *shared = lua;
    lua = pc_lua_adapter_new(&limits, own_metrics, &err);
    assert_non_null(lua);
    deploy_ok("quiet0", 1, "return function(req) return 'zero' end");
    deploy_ok("quiet1", 1, "return function(req) return 'one' end");
    long versions = 0, isolates = 0;
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(isolates, 2);
    /* Polls the event (the watchdog's pass), bounded. */
    int64_t deadline = pc_test_now_ms() + 10000;
    while (isolates > 0 && pc_test_now_ms() < deadline) {
        pc_test_sleep_ms(5);
        pc_lua_adapter_counts(lua, &versions, &isolates);
    }
    assert_int_equal(isolates, 0);
    assert_int_equal(versions, 2);
    assert_int_equal(pc_metrics_get(own_metrics, "popcast_lua_isolates_expired_total", NULL), 2);
    /* No traffic yet: no per-tenant series (they would live as long as
     * the agent, for every tenant deployed). */
    char *text = pc_metrics_render_text(own_metrics);
    assert_non_null(text);
    assert_null(strstr(text, "tenant=\"quiet0\""));
    free(text);
    expect_body("quiet0", "/", "zero");
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_true(isolates >= 0 && isolates <= 1);
    /* The one built at deploy is counted with the series' creation. */
    assert_int_equal(
        pc_metrics_get(own_metrics, "popcast_lua_isolates_created_total", "tenant=\"quiet0\""), 2);
    assert_int_equal(pc_metrics_get(own_metrics, "popcast_lua_requests_total", "tenant=\"quiet0\""),
                     1);
    lua->destroy(lua);
    pc_metrics_free(own_metrics);
    lua = shared;
}

/* A deferred version (an agent's start) builds nothing until its first
 * request; one whose code no longer loads is quarantined with the reason
 * at that request, instead of being shown serving. */
static void test_deferred_versions_build_on_first_request(void **state)
{
    (void)state;
    long versions0 = 0, isolates0 = 0, versions = 0, isolates = 0;
    pc_lua_adapter_counts(lua, &versions0, &isolates0);
    pc_err err;
    assert_int_equal(deploy_as("later", 1, "return function(req) return 'later' end", true, &err),
                     PC_OK);
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(versions, versions0 + 1);
    assert_int_equal(isolates, isolates0);
    assert_int_equal(lua->live_version(lua, "later"), 1);
    expect_body("later", "/", "later");
    pc_lua_adapter_counts(lua, &versions, &isolates);
    assert_int_equal(isolates, isolates0 + 1);

    /* Its top level fails now: the version is taken as live, then the
     * first request quarantines it. */
    assert_int_equal(deploy_as("broken", 1, "error('boom at load')", true, &err), PC_OK);
    assert_false(pc_lua_adapter_is_quarantined(lua, "broken", NULL));
    pc_response res;
    assert_int_not_equal(get("broken", "/", &res, &err), PC_OK);
    pc_lua_quarantine q;
    assert_true(pc_lua_adapter_is_quarantined(lua, "broken", &q));
    assert_non_null(strstr(q.reason, "does not load"));
    assert_non_null(strstr(q.reason, "boom at load"));
    assert_int_equal(get("broken", "/", &res, &err), PC_E_QUARANTINED);
    /* The same code not deferred is refused at prepare, as always. */
    assert_int_not_equal(deploy("broken", 2, "error('boom at load')", &err), PC_OK);
    assert_int_equal(lua->deactivate(lua, "later", &err), PC_OK);
    assert_int_equal(lua->deactivate(lua, "broken", &err), PC_OK);
}

/* The tenant table grows (its buckets double past one slot per bucket,
 * from 1,024): 5,000 tenants, three doublings, and every one is still
 * found with its own version, served, and taken down. */
#define MANY_TENANTS 5000

static void test_many_tenants_all_found(void **state)
{
    (void)state;
    char tenant[32], src[128];
    pc_err err;
    for (int i = 0; i < MANY_TENANTS; i++) {
        snprintf(tenant, sizeof(tenant), "g%05d", i);
        snprintf(src, sizeof(src), "return function(req) return '%s' end", tenant);
        if (deploy_as(tenant, (uint64_t)i + 1, src, true, &err) != PC_OK)
            fail_msg("deploy %s: %s", tenant, err.msg);
    }
    for (int i = 0; i < MANY_TENANTS; i++) {
        snprintf(tenant, sizeof(tenant), "g%05d", i);
        if (lua->live_version(lua, tenant) != (uint64_t)i + 1)
            fail_msg("%s: live version %llu, expected %d", tenant,
                     (unsigned long long)lua->live_version(lua, tenant), i + 1);
    }
    assert_int_equal(lua->live_version(lua, "g99999"), 0);
    expect_body("g00000", "/", "g00000");
    expect_body("g02500", "/", "g02500");
    expect_body("g04999", "/", "g04999");
    for (int i = 0; i < MANY_TENANTS; i++) {
        snprintf(tenant, sizeof(tenant), "g%05d", i);
        assert_int_equal(lua->deactivate(lua, tenant, &err), PC_OK);
        assert_int_equal(lua->live_version(lua, tenant), 0);
    }
}

/* The controller's upload check compiles under the agents' limits: a
 * bundle whose compilation alone needs more memory than an isolate may
 * have is refused at upload, not accepted and then nacked everywhere. */
static void test_check_uses_the_limits(void **state)
{
    /* ~4 MiB of constants in one table constructor: a few MiB of
     * bytecode and constants, over the 8 MiB isolate once compiled. */
    size_t n = 400000, cap = n * 12 + 64;
    char *src = malloc(cap);
    assert_non_null(src);
    size_t used = (size_t)snprintf(src, cap, "local t = {");
    for (size_t i = 0; i < n; i++)
        used += (size_t)snprintf(src + used, cap - used, "%zu.5,", i);
    snprintf(src + used, cap - used, "} return function() return 'x' end");
    uint8_t *bundle = NULL;
    size_t len = 0;
    pc_err err;
    assert_int_equal(
        pc_bundle_pack_single("main.lua", (const uint8_t *)src, strlen(src), &bundle, &len, &err),
        PC_OK);
    free(src);
    pc_version_spec spec = {.tenant = "big",
                            .version = 1,
                            .runtime = "lua",
                            .entrypoint = "main.lua",
                            .bundle = bundle,
                            .bundle_len = len};
    int rc = lua->check(lua, &spec, &err);
    if (rc != PC_E_LIMIT)
        fail_msg("check: expected PC_E_LIMIT, got %s: %s", pc_err_name(rc), err.msg);
    assert_non_null(strstr(err.msg, "memory"));
    pc_prepared *p = NULL;
    assert_int_equal(lua->prepare(lua, &spec, &p, &err), PC_E_LIMIT);
    free(bundle);
    /* A small bundle still passes the check. */
    const char *ok = "return function() return 'x' end";
    assert_int_equal(
        pc_bundle_pack_single("main.lua", (const uint8_t *)ok, strlen(ok), &bundle, &len, &err),
        PC_OK);
    spec.bundle = bundle;
    spec.bundle_len = len;
    assert_int_equal(lua->check(lua, &spec, &err), PC_OK);
    free(bundle);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handler_api),
        cmocka_unit_test(test_sandbox_escapes_unreachable),
        cmocka_unit_test(test_tenants_share_nothing),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_memory_limit_counts_live_data_only),
        cmocka_unit_test(test_prepare_failure_keeps_old_version),
        cmocka_unit_test(test_swaps_free_old_versions),
        cmocka_unit_test(test_idle_isolates_are_bounded),
        cmocka_unit_test(test_idle_isolates_expire),
        cmocka_unit_test(test_deferred_versions_build_on_first_request),
        cmocka_unit_test(test_check_uses_the_limits),
        cmocka_unit_test(test_print_goes_to_the_request_sink),
        cmocka_unit_test(test_split_key_is_bounded),
        cmocka_unit_test(test_many_tenants_all_found),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
