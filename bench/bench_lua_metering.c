/* bench_lua_metering.c - what metering costs a normal handler: calls per
 * second of a typical handler (string operations, a table, a small loop,
 * a pattern, a format, a sort, a concat) in an isolate with the metered
 * library, against the same handler in an isolate with Lua's own library
 * functions (pc_lua_isolate_new_stock), in the same run, with the same
 * hook, allocator and limits. In-process, no HTTP: only the library
 * differs.
 *
 *   bench_lua_metering [RUNS] [CALLS] [both|metered|stock]
 *   defaults:           15     20000   both
 * (one variant alone is for running under a profiler)
 *
 * Each run times CALLS calls on each variant, in CPU time of the thread
 * (so that other processes on a shared machine count less) and in
 * alternating batches of 500 (so that drift in the machine's speed hits
 * both); the figures are medians over RUNS, and the ratio is metered /
 * stock calls per CPU second (1.00: free; the goal is at least 0.95).
 * Figures are printed, never asserted. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lua_engine.h"
#include "lua_sandbox.h"

static const char *handler =
    "local routes = {}\n"
    "for i = 1, 20 do routes['/item/' .. i] = {id = i, name = 'item ' .. i} end\n"
    "return function(req)\n"
    "  local parts = {}\n"
    "  for part in req.path:gmatch('[^/]+') do parts[#parts + 1] = part end\n"
    "  local q = {}\n"
    "  for k, v in req.query:gmatch('([^&=]+)=([^&=]*)') do q[k] = v end\n"
    "  local id = tonumber(q.id) or 0\n"
    "  local route = routes[req.path]\n"
    "  local items = {}\n"
    "  for i = 1, 10 do\n"
    "    items[i] = string.format('%s-%02d', parts[1] or 'x', (i * 7 + id) % 23)\n"
    "  end\n"
    "  table.sort(items)\n"
    "  local body = table.concat(items, ','):upper()\n"
    "  if route then body = route.name .. ': ' .. body:sub(1, 40) end\n"
    "  local agent = req.headers['user-agent'] or ''\n"
    "  if agent:find('curl', 1, true) then body = body .. ' (curl)' end\n"
    "  return {status = 200,\n"
    "          headers = {['content-type'] = 'text/plain', ['x-len'] = tostring(#body),\n"
    "                     ['x-first'] = body:byte(1) and string.char(body:byte(1)) or ''},\n"
    "          body = body .. string.rep('.', 8)}\n"
    "end\n";

typedef int (*isolate_ctor)(const char *, size_t, const char *, const pc_lua_limits *,
                            pc_lua_isolate **, pc_lua_limit *, pc_err *);

static int new_metered(const char *s, size_t len, const char *name, const pc_lua_limits *limits,
                       pc_lua_isolate **out, pc_lua_limit *hit, pc_err *err)
{
    return pc_lua_isolate_new(s, len, name, limits, NULL, out, hit, err);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

/* CPU time of this thread, in seconds: what the calls cost, without the
 * time other processes took the CPU away (the machine may be shared). */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static pc_lua_isolate *build(isolate_ctor ctor, const pc_lua_limits *limits)
{
    pc_lua_isolate *iso = NULL;
    pc_lua_limit hit;
    pc_err err;
    if (ctor(handler, strlen(handler), "=bench", limits, &iso, &hit, &err) != PC_OK) {
        fprintf(stderr, "cannot build the isolate: %s\n", err.msg);
        exit(1);
    }
    return iso;
}

/* CPU seconds for calls calls of the handler in iso. */
static double run_calls(pc_lua_isolate *iso, int calls)
{
    pc_header headers[] = {{"user-agent", "curl/8.0"}, {"accept", "*/*"}};
    pc_request req = {.method = "GET",
                      .path = "/item/7",
                      .query = "id=42&sort=asc&x=",
                      .headers = headers,
                      .n_headers = 2,
                      .body = (const uint8_t *)"",
                      .body_len = 0};
    pc_lua_limit hit;
    pc_err err;
    double start = cpu_seconds();
    for (int i = 0; i < calls; i++) {
        pc_response res;
        if (pc_lua_isolate_call(iso, &req, &res, NULL, &hit, &err) != PC_OK) {
            fprintf(stderr, "the handler failed: %s\n", err.msg);
            exit(1);
        }
        pc_response_clear(&res);
    }
    return cpu_seconds() - start;
}

#define BATCH 500

/* One run: calls calls on each variant, in alternating batches (each
 * batch's order alternating too), so that whatever slows the machine down
 * for a while slows both. Stores calls per CPU second. */
static void one_run(const pc_lua_limits *limits, int calls, double *metered, double *stock)
{
    pc_lua_isolate *m = build(new_metered, limits);
    pc_lua_isolate *s = build(pc_lua_isolate_new_stock, limits);
    run_calls(m, BATCH); /* warm-up */
    run_calls(s, BATCH);
    double tm = 0, ts = 0;
    for (int done = 0, b = 0; done < calls; done += BATCH, b++) {
        int n = calls - done < BATCH ? calls - done : BATCH;
        if (b % 2 == 0) {
            tm += run_calls(m, n);
            ts += run_calls(s, n);
        } else {
            ts += run_calls(s, n);
            tm += run_calls(m, n);
        }
    }
    *metered = calls / tm;
    *stock = calls / ts;
    pc_lua_isolate_free(m);
    pc_lua_isolate_free(s);
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 15;
    int calls = argc > 2 ? atoi(argv[2]) : 20000;
    const char *only = argc > 3 ? argv[3] : "both";
    if (runs < 1 || calls < 1 ||
        (strcmp(only, "both") != 0 && strcmp(only, "metered") != 0 && strcmp(only, "stock") != 0)) {
        fprintf(stderr, "usage: bench_lua_metering [RUNS] [CALLS] [both|metered|stock]\n");
        return 2;
    }
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    double *metered = calloc((size_t)runs, sizeof(double));
    double *stock = calloc((size_t)runs, sizeof(double));
    double *ratio = calloc((size_t)runs, sizeof(double));
    if (metered == NULL || stock == NULL || ratio == NULL)
        return 1;
    if (strcmp(only, "both") != 0) {
        bool m = strcmp(only, "metered") == 0;
        for (int r = 0; r < runs; r++) {
            pc_lua_isolate *iso = build(m ? new_metered : pc_lua_isolate_new_stock, &limits);
            run_calls(iso, BATCH);
            ratio[r] = calls / run_calls(iso, calls);
            pc_lua_isolate_free(iso);
        }
        printf("%s library: %.0f calls per CPU second (median of %d runs of %d calls)\n",
               m ? "metered" : "stock", median(ratio, runs), runs, calls);
        free(metered);
        free(stock);
        free(ratio);
        return 0;
    }
    for (int r = 0; r < runs; r++) {
        one_run(&limits, calls, &metered[r], &stock[r]);
        ratio[r] = metered[r] / stock[r];
    }
    double m = median(metered, runs), s = median(stock, runs), q = median(ratio, runs);
    printf("typical handler, %d runs of %d calls (medians)\n", runs, calls);
    printf("  stock library    %10.0f calls per CPU second\n", s);
    printf("  metered library  %10.0f calls per CPU second\n", m);
    printf("  ratio            %10.3f (metered / stock, per-run ratios' median; goal >= 0.95)\n",
           q);
    printf("  %s\n", q >= 0.95 ? "within 5 %" : "MORE THAN 5 % SLOWER");
    free(metered);
    free(stock);
    free(ratio);
    return 0;
}
