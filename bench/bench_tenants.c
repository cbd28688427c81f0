/* bench_tenants.c - what an agent costs per tenant. Real processes on
 * loopback; run by hand or by CI with tiny sizes.
 *
 *   bench_tenants [TENANTS,...] [RUNS]
 *   default:       1000,10000      1
 *
 * With RUNS above 1, the whole bench runs that many times, each in a
 * process of its own (a new controller and agent), and a "median" row
 * per count follows the runs' rows:
 * the memory an agent keeps after a burst varies from run to run with
 * how the deploys interleave (by ±5 MiB at 10,000 tenants), so one run
 * is not a figure to compare.
 *
 * One controller and one agent. Small Lua tenants (one handler each) are
 * deployed by 16 clients until the fleet holds each count in turn; once
 * the agent has applied everything:
 *   rss        the agent's resident memory (VmRSS), and its anonymous part
 *              (RssAnon: without the store's file pages, which the kernel
 *              can drop), per tenant over the same agent with no tenant
 *              (the baseline, same run)
 *   snapshots  snapshots the agent installed to catch up: a burst it could
 *              not follow entry by entry
 *   whole      the size its status report would have with every tenant
 *   delta      the size of the last one it sent: a delta on what the
 *              controller acknowledged (only what changed)
 *   idle       RSS and anonymous RSS once every idle isolate was freed
 *              (the agent runs with lua_idle_ttl_ms 2000; the lowest
 *              reading over the 12 s that follow, which cover the
 *              engine's malloc_trim interval), and the agent's CPU over
 *              those 12 s in % of one core: with nothing to apply or
 *              serve, what its status reports (every 500 ms here, the
 *              harness's status_interval_ms) and timers cost
 *   restart    SIGTERM, start again on the same data: time to ready (its
 *              edge serves) and to the first answer from the last tenant
 *              deployed, and the RSS once it serves that tenant */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "harness.h"

#define MAX_LIST 8
#define CLIENTS  16

#define MAX_RUNS 15
#define COLUMNS  13

static int counts[MAX_LIST] = {1000, 10000}, n_counts = 2;
static int runs = 1;
/* rows[run][count][column]: what each run printed, for the medians */
static double rows[MAX_RUNS][MAX_LIST][COLUMNS];
/* Set in a run's process: rows also go out as "row C0 .. C11" lines. */
#define ROW_ENV "POPCAST_BENCH_TENANTS_ROWS"

static pc_test_env env;
static pc_test_controller ctl;
static int failures;

static uint64_t agent_applied(pc_test_agent *a)
{
    json_t *st = pc_test_agent_status(a);
    uint64_t seq = st ? (uint64_t)json_integer_value(json_object_get(st, "applied_seq")) : 0;
    json_decref(st);
    return seq;
}

/* field: "VmRSS:" (everything resident), or "RssAnon:" (the heap and
 * stacks: what the agent itself holds, without the store's file pages,
 * which the kernel may drop at any time). */
static double rss_mib_of(pc_proc *p, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)p->pid);
    FILE *f = fopen(path, "r");
    double kib = 0;
    size_t n = strlen(field);
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, n) == 0)
            kib = strtod(line + n, NULL);
    if (f != NULL)
        fclose(f);
    return kib / 1024.0;
}

static double rss_mib(pc_proc *p)
{
    return rss_mib_of(p, "VmRSS:");
}

static double anon_mib(pc_proc *p)
{
    return rss_mib_of(p, "RssAnon:");
}

/* The CPU time the process used so far, in seconds (utime + stime). */
static double cpu_seconds(pc_proc *p)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)p->pid);
    FILE *f = fopen(path, "r");
    double ticks = 0;
    if (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        /* after "pid (comm) ": state is field 3, utime 14, stime 15 */
        const char *at = strrchr(line, ')');
        unsigned long long utime = 0, stime = 0;
        if (at != NULL && sscanf(at + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                                 &utime, &stime) == 2)
            ticks = (double)(utime + stime);
    }
    if (f != NULL)
        fclose(f);
    return ticks / (double)sysconf(_SC_CLK_TCK);
}

static const char *const agent_flags[] = {"--lua-idle-ttl-ms", "2000", NULL};

static void print_row(const char *label, const double *c)
{
    if (getenv(ROW_ENV) != NULL) {
        printf("row");
        for (int k = 0; k < COLUMNS; k++)
            printf(" %.17g", c[k]);
        printf("\n");
        return;
    }
    printf("%8s | %9.1f %10.1f %11.1f %9.0f | %9.1f %10.1f %9.1f | %12.0f %12.0f | %11.0f %14.0f "
           "%9.1f %10.1f\n",
           label, c[0], c[1], c[2], c[12], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]);
    fflush(stdout);
}

static void print_header(void)
{
    printf("%8s | %9s %10s %11s %9s | %9s %10s %9s | %12s %12s | %11s %14s %9s %10s\n", "tenants",
           "RSS MiB", "anon MiB", "anon KiB/t", "snapshots", "idle RSS", "idle anon", "idle CPU%",
           "whole bytes", "delta bytes", "restart: ms", "to last tenant", "RSS after",
           "anon after");
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_once(void)
{
    pc_test_env_init(&env);
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_agent agent = {0};
    pc_test_agent_start_for(&env, &agent, "edge", &ctl, agent_flags);
    double base = rss_mib(agent.proc), base_anon = anon_mib(agent.proc);
    printf("agent with no tenant: %.1f MiB RSS, %.1f MiB anonymous (the baselines)\n", base,
           base_anon);
    if (getenv(ROW_ENV) == NULL)
        print_header();
    for (int i = 0; i < n_counts; i++) {
        int target = counts[i];
        failures += pc_test_deploy_tenants(&env, &ctl, i > 0 ? counts[i - 1] : 0, target, CLIENTS);
        uint64_t head = pc_test_controller_head(&env, &ctl);
        int64_t deadline = pc_test_now_ms() + 30 * 60 * 1000;
        while (agent_applied(&agent) < head && pc_test_now_ms() < deadline)
            pc_test_sleep_ms(100);
        assert_true(agent_applied(&agent) >= head);
        pc_test_sleep_ms(3000); /* a status report built with every tenant */
        double rss = rss_mib(agent.proc), anon = anon_mib(agent.proc);
        /* Snapshots the agent took to catch up (since its start): a burst
         * it could not follow entry by entry. */
        double snapshots =
            (double)pc_test_agent_metric(&agent, "popcast_agent_snapshots_installed_total");
        uint64_t whole = pc_test_agent_metric(&agent, "popcast_agent_status_table_bytes");
        uint64_t report = pc_test_agent_metric(&agent, "popcast_agent_status_report_bytes");
        int64_t idle_deadline = pc_test_now_ms() + 60000;
        while (pc_test_agent_metric(&agent, "popcast_lua_isolates") > 0 &&
               pc_test_now_ms() < idle_deadline)
            pc_test_sleep_ms(100);
        double idle_rss = rss_mib(agent.proc), idle_anon = anon_mib(agent.proc);
        double cpu0 = cpu_seconds(agent.proc), wall0 = pc_mono_ms_frac();
        for (int64_t until = pc_test_now_ms() + 12000; pc_test_now_ms() < until;) {
            pc_test_sleep_ms(250);
            double r = rss_mib(agent.proc), an = anon_mib(agent.proc);
            if (r < idle_rss)
                idle_rss = r;
            if (an < idle_anon)
                idle_anon = an;
        }
        double idle_cpu =
            100.0 * (cpu_seconds(agent.proc) - cpu0) * 1000.0 / (pc_mono_ms_frac() - wall0);

        pc_test_agent_stop(&agent);
        double t0 = pc_mono_ms_frac();
        pc_test_agent_start_for(&env, &agent, "edge", &ctl, agent_flags);
        double ready = pc_mono_ms_frac() - t0;
        char last[32];
        snprintf(last, sizeof(last), "t%06d", target - 1);
        int status = 0;
        while ((status = pc_test_edge_get(&agent, last, "/", NULL, NULL, 0)) != 200 &&
               pc_mono_ms_frac() - t0 < 30 * 60 * 1000.0)
            pc_test_sleep_ms(10);
        assert_int_equal(status, 200);
        double served = pc_mono_ms_frac() - t0;
        double c[COLUMNS] = {rss,
                             anon,
                             (anon - base_anon) * 1024.0 / target,
                             idle_rss,
                             idle_anon,
                             idle_cpu,
                             (double)whole,
                             (double)report,
                             ready,
                             served,
                             rss_mib(agent.proc),
                             anon_mib(agent.proc),
                             snapshots};
        char label[16];
        snprintf(label, sizeof(label), "%d", target);
        print_row(label, c);
    }
    if (failures > 0)
        printf("deploys not acknowledged: %d\n", failures);
    pc_test_agent_stop(&agent);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
}

static void bench(void **state)
{
    (void)state;
    run_once();
}

/* Runs the bench RUNS times, each in a process of its own, then prints
 * every run's rows and the medians. */
static int bench_runs(void)
{
    char list[MAX_LIST * 12] = "";
    for (int i = 0; i < n_counts; i++)
        snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%d", i ? "," : "", counts[i]);
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        return 1;
    self[n] = '\0';
    char cmd[4300];
    snprintf(cmd, sizeof(cmd), "'%s' %s 1", self, list); /* list: digits and commas only */
    setenv(ROW_ENV, "1", 1);
    for (int run = 0; run < runs; run++) {
        FILE *p = popen(cmd, "r");
        if (p == NULL)
            return 1;
        char line[1024];
        int got = 0;
        while (fgets(line, sizeof(line), p) != NULL) {
            double *c = got < n_counts ? rows[run][got] : NULL;
            if (c != NULL && sscanf(line, "row %lf %lf %lf %lf %lf %lf %lf %lf %lf %lf %lf %lf %lf",
                                    &c[0], &c[1], &c[2], &c[3], &c[4], &c[5], &c[6], &c[7], &c[8],
                                    &c[9], &c[10], &c[11], &c[12]) == COLUMNS)
                got++;
            else if (line[0] != '[') /* not cmocka's */
                printf("run %d of %d: %s", run + 1, runs, line);
        }
        if (pclose(p) != 0 || got != n_counts) {
            fprintf(stderr, "bench_tenants: run %d failed\n", run + 1);
            return 1;
        }
        fflush(stdout);
    }
    unsetenv(ROW_ENV);
    print_header();
    for (int run = 0; run < runs; run++)
        for (int i = 0; i < n_counts; i++) {
            char label[16];
            snprintf(label, sizeof(label), "%d", counts[i]);
            print_row(label, rows[run][i]);
        }
    printf("medians of %d runs, per column:\n", runs);
    for (int i = 0; i < n_counts; i++) {
        double median[COLUMNS], column[MAX_RUNS];
        for (int k = 0; k < COLUMNS; k++) {
            for (int run = 0; run < runs; run++)
                column[run] = rows[run][i][k];
            qsort(column, (size_t)runs, sizeof(column[0]), by_value);
            median[k] =
                runs % 2 ? column[runs / 2] : (column[runs / 2 - 1] + column[runs / 2]) / 2.0;
        }
        char label[16];
        snprintf(label, sizeof(label), "%d", counts[i]);
        print_row(label, median);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        n_counts = 0;
        const char *s = argv[1];
        bool bad = false;
        while (*s != '\0' && !bad) {
            char *end;
            long v = strtol(s, &end, 10);
            bad = end == s || v <= 0 || v > 10000000 || n_counts == MAX_LIST ||
                  (*end != ',' && *end != '\0');
            if (!bad)
                counts[n_counts++] = (int)v;
            s = *end == ',' ? end + 1 : end;
        }
        if (bad || n_counts == 0) {
            fprintf(stderr,
                    "bench_tenants: TENANTS is a list of up to %d counts like "
                    "1000,10000\n",
                    MAX_LIST);
            return 2;
        }
    }
    if (argc > 2) {
        char *end;
        long v = strtol(argv[2], &end, 10);
        if (*end != '\0' || v < 1 || v > MAX_RUNS) {
            fprintf(stderr, "bench_tenants: RUNS is a count from 1 to %d\n", MAX_RUNS);
            return 2;
        }
        runs = (int)v;
    }
    if (runs > 1)
        return bench_runs();
    const struct CMUnitTest benches[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(benches, NULL, NULL);
}
