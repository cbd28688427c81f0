/* bench_rollout.c - how fast a deploy is live everywhere, and how fast a
 * lossy agent converges. Real processes on loopback, started with the test
 * harness; run by hand (or by CI with tiny sizes), never as a test.
 *
 *   bench_rollout [AGENTS,AGENTS,...] [RUNS] [LOSS_DEPLOYS] [BYTES,BYTES,...] [RELAYS] [WAN]
 *   defaults:      3,20               9      200            4096               0        0
 *
 * RELAYS > 0: the agents are spread over that many PoPs, each with one
 * popcast-relay; an agent subscribes to its PoP's relay only, catches up
 * from it and reports through it (the controller keeps its --sync as the
 * fallback).
 *
 * WAN = RTT_MS:LOSS (e.g. 100:0.01): the WAN testbed (tests/harness/wan.h)
 * instead of loopback. The controller (and etcd) in the core namespace;
 * RELAYS PoPs (4 when RELAYS is 0), each a namespace behind a link of
 * RTT_MS round trip (jitter +-RTT_MS/20 each way) and LOSS per packet each
 * way; agents (and etcd's watchers) spread over the PoPs, reaching the
 * core across their PoP's link. The loss-convergence part is skipped (its
 * loss is the agent's own, not the network's).
 *
 * Figures (medians over RUNS, milliseconds):
 *   commit     POST of a bundle until the controller answered 201 (the
 *              baseline: signed, stored in LMDB, published)
 *   live-all   POST until the rollout wait reports it live on every agent
 *              (agents applied, hot-swapped and reported it)
 *   ratio      live-all / commit
 *   etcd       the baseline, measured in the same run when etcd is installed
 *              (Debian's etcd-server; ETCD_BIN overrides /usr/bin/etcd): a
 *              one-member etcd, as many watchers of one key as there are
 *              agents (curl streaming its HTTP gateway's /v3/watch), a PUT
 *              of the same number of bytes until every watcher has received
 *              the event (watchers are looked at every 0.2 ms or so)
 *   vs etcd    live-all / etcd (popcast's figure includes the agents'
 *              verification, store, hot swap and signed report back)
 *   ctl cpu    the controller process's CPU time (user + system, from
 *              /proc) over the RUNS deploys, per deploy: what the fleet
 *              costs the controller, direct or through relays
 *   core out   (WAN only) bytes the core sent across the PoPs' links over
 *              the RUNS deploys, per deploy: the controller's bytes out
 *              (entries, bundles, acks, and heartbeats meanwhile)
 * The bundle is a Lua handler and an asset of random bytes, BYTES in all.
 * and, for LOSS_DEPLOYS deploys over 20 tenants with one agent dropping
 * 30 % of pub/sub entries (seeded) next to a loss-free agent:
 *   converge   last deploy answered until the agent holds exactly the
 *              controller's state, for each agent, and the ratio. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "etcd_cluster.h"
#include "bundle.h"
#include "harness.h"
#include "wan.h"

static const char *agent_counts = "3,20";
static const char *byte_counts = "4096";
static int runs = 9;
static int loss_deploys = 200;
static int n_relays = 0;
static int wan_rtt_ms = 0; /* 0: loopback, no WAN testbed */
static double wan_loss = 0;
#define MAX_POPS 64
static pc_wan_pop pops[MAX_POPS];
static int n_pops = 0;

/* The PoP agent or watcher i lives in (WAN testbed), or NULL. */
static pc_wan_pop *pop_of(int i)
{
    return n_pops > 0 ? &pops[i % n_pops] : NULL;
}

/* A controller URL as seen from pop (its core address) or loopback. */
static void seen_from(char *out, size_t cap, const char *url, const pc_wan_pop *pop)
{
    if (pop == NULL) {
        snprintf(out, cap, "%s", url);
        return;
    }
    snprintf(out, cap, "tcp://%s:%s", pop->core_addr, strrchr(url, ':') + 1);
}

/* Bytes this network namespace sent on its WAN links so far (the core's
 * wan* devices, from /proc/self/net/dev): in the WAN testbed, everything
 * the controller sent to the PoPs. */
static double wan_tx_bytes(void)
{
    FILE *f = fopen("/proc/self/net/dev", "r");
    if (f == NULL)
        return 0;
    char line[512];
    double total = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        char name[64];
        unsigned long long rx_bytes, rx_packets, rx_errs, rx_drop, rx_fifo, rx_frame, rx_comp,
            rx_multi, tx_bytes;
        if (sscanf(line, " %63[^:]: %llu %llu %llu %llu %llu %llu %llu %llu %llu", name, &rx_bytes,
                   &rx_packets, &rx_errs, &rx_drop, &rx_fifo, &rx_frame, &rx_comp, &rx_multi,
                   &tx_bytes) == 10 &&
            strncmp(name, "wan", 3) == 0)
            total += (double)tx_bytes;
    }
    fclose(f);
    return total;
}

/* User + system CPU time of a process so far, in ms (0 if unreadable). */
static double cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')');
    unsigned long utime = 0, stime = 0;
    /* After the command: state, then fields 4..13, then utime and stime. */
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return 0;
    return (double)(utime + stime) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
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

/* A bundle of about size bytes (malloc'd; *len gets its length): main.lua
 * answering body, and an asset of pseudo-random bytes making up the rest,
 * as a real bundle's size is mostly assets. (Padding the code itself made
 * an 8 MiB Lua source whose compile could pass the agents' time limit on
 * a loaded machine: a nack, not a measurement.) */
static uint8_t *padded_bundle(const char *body, size_t size, size_t *len)
{
    char src[256], dir[300], path[400];
    pc_test_lua_hello(src, sizeof(src), body);
    pc_test_tmpdir(dir, sizeof(dir), "bundle");
    snprintf(path, sizeof(path), "%s/main.lua", dir);
    pc_test_write_file(path, src, strlen(src));
    size_t pad = size > strlen(src) + 512 ? size - strlen(src) - 512 : 0;
    if (pad > 0) {
        uint8_t *asset = malloc(pad);
        assert_non_null(asset);
        uint64_t seed = (uint64_t)size * 0x9e3779b97f4a7c15ULL;
        for (const char *c = body; *c != '\0'; c++) /* each run's asset differs */
            seed = (seed ^ (uint8_t)*c) * 1099511628211ULL;
        pc_test_fill_random(asset, pad, seed);
        snprintf(path, sizeof(path), "%s/asset.bin", dir);
        pc_test_write_file(path, asset, pad);
        free(asset);
    }
    uint8_t *out = NULL;
    pc_err err = {0};
    assert_int_equal(pc_bundle_pack_dir(dir, "main.lua", size + (1u << 20), &out, len, &err),
                     PC_OK);
    pc_test_rm_rf(dir);
    return out;
}

/* The etcd baseline for n watchers and size bytes: median ms (-1: none). */
static double etcd_fanout(int n_watchers, size_t size)
{
    if (!etcd_installed() || access("/usr/bin/curl", X_OK) != 0)
        return -1;
    etcd_cluster e;
    etcd_listen_everywhere(n_pops > 0);
    etcd_start(&e, 1, size * 2 + (1u << 20));
    etcd_watchers w;
    const char **netns = calloc((size_t)n_watchers, sizeof(*netns));
    const char **host = calloc((size_t)n_watchers, sizeof(*host));
    assert_true(netns != NULL && host != NULL);
    for (int i = 0; i < n_watchers && n_pops > 0; i++) {
        netns[i] = pop_of(i)->netns;
        host[i] = pop_of(i)->core_addr;
    }
    etcd_watchers_start_placed(&w, &e, "bench", n_watchers, netns, host);
    free(netns);
    free(host);
    char *value = malloc(size ? size : 1);
    assert_non_null(value);
    double *t = calloc((size_t)runs, sizeof(double));
    assert_non_null(t);
    size_t b64_len = (size + 2) / 3 * 4;
    for (int i = 0; i < runs; i++) {
        pc_test_sleep_ms(100);
        memset(value, 'a' + i % 26, size);
        etcd_watchers_mark(&w);
        double t0 = pc_mono_ms_frac();
        assert_true(etcd_put(&e, 0, "bench", value, size));
        t[i] = etcd_watchers_wait(&w, b64_len, t0, 60000);
        assert_true(t[i] >= 0);
    }
    double m = median(t, runs);
    free(t);
    free(value);
    etcd_watchers_stop(&w);
    etcd_stop(&e);
    return m;
}

static void bench_live_everywhere(int n_agents, size_t size)
{
    pc_test_env env;
    pc_test_env_init(&env);
    pc_test_controller ctl = {0};
    pc_test_place(NULL, n_pops > 0 ? "0.0.0.0" : NULL);
    pc_test_controller_start(&env, &ctl, NULL);
    pc_test_place(NULL, NULL);
    pc_test_agent *agents = calloc((size_t)n_agents, sizeof(*agents));
    pc_test_relay *relays = calloc((size_t)(n_relays ? n_relays : 1), sizeof(*relays));
    for (int k = 0; k < n_relays; k++) {
        char id[32], pop[32];
        snprintf(id, sizeof(id), "relay-%02d", k);
        snprintf(pop, sizeof(pop), "pop-%02d", k);
        char pub[64], sync[64];
        seen_from(pub, sizeof(pub), ctl.pub_url, pop_of(k));
        seen_from(sync, sizeof(sync), ctl.sync_url, pop_of(k));
        const char *subs[] = {pub, NULL};
        const char *syncs[] = {sync, NULL};
        if (pop_of(k) != NULL)
            pc_test_place(pop_of(k)->netns, pop_of(k)->pop_addr);
        pc_test_relay_start(&env, &relays[k], id, pop, subs, syncs, NULL);
        pc_test_place(NULL, NULL);
    }
    for (int i = 0; i < n_agents; i++) {
        char id[32], pub[64], sync[64];
        snprintf(id, sizeof(id), "edge-%02d", i);
        pc_wan_pop *wp = pop_of(i);
        seen_from(pub, sizeof(pub), ctl.pub_url, wp);
        seen_from(sync, sizeof(sync), ctl.sync_url, wp);
        if (wp != NULL)
            pc_test_place(wp->netns, wp->pop_addr);
        if (n_relays == 0) {
            const char *subs[] = {pub, NULL};
            const char *syncs[] = {sync, NULL};
            pc_test_agent_start(&env, &agents[i], id, subs, syncs, NULL);
            pc_test_place(NULL, NULL);
            continue;
        }
        pc_test_relay *r = &relays[i % n_relays];
        char pop[32];
        snprintf(pop, sizeof(pop), "pop-%02d", i % n_relays);
        const char *subs[] = {r->pub_url, NULL};
        const char *syncs[] = {sync, NULL};
        const char *extra[] = {"--pop", pop, "--relay", r->sync_url, NULL};
        pc_test_agent_start(&env, &agents[i], id, subs, syncs, extra);
        pc_test_place(NULL, NULL);
    }
    /* Every agent has reported once, so the fleet is complete. */
    char src[256];
    pc_test_lua_hello(src, sizeof(src), "warm-up");
    pc_test_deployed d;
    assert_int_equal(pc_test_try_deploy(&env, &ctl, "bench", "text/x-lua", src, strlen(src), &d),
                     201);
    for (;;) {
        pc_http_result r;
        char url[128];
        snprintf(url, sizeof(url), "/v1/tenants/bench/versions/%llu/rollout?wait=30000",
                 (unsigned long long)d.version);
        assert_int_equal(pc_test_api(&env, &ctl, "GET", url, NULL, NULL, 0, &r), 200);
        json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
        pc_http_result_free(&r);
        json_t *s = json_object_get(doc, "summary");
        bool all = json_integer_value(json_object_get(s, "total")) == n_agents &&
                   json_is_true(json_object_get(s, "complete"));
        json_decref(doc);
        if (all)
            break;
        pc_test_sleep_ms(50);
    }

    double *commit = calloc((size_t)runs, sizeof(double));
    double *live = calloc((size_t)runs, sizeof(double));
    double cpu0 = cpu_ms(ctl.proc->pid), tx0 = wan_tx_bytes();
    for (int i = 0; i < runs; i++) {
        pc_test_sleep_ms(100); /* let status reports settle between runs */
        char body[64];
        snprintf(body, sizeof(body), "run %d", i);
        size_t len = 0;
        uint8_t *big = padded_bundle(body, size, &len);
        double t0 = pc_mono_ms_frac();
        assert_int_equal(
            pc_test_try_deploy(&env, &ctl, "bench", "application/vnd.popcast.bundle", big, len, &d),
            201);
        free(big);
        double t1 = pc_mono_ms_frac();
        char url[128];
        snprintf(url, sizeof(url), "/v1/tenants/bench/versions/%llu/rollout?wait=60000",
                 (unsigned long long)d.version);
        pc_http_result r;
        assert_int_equal(pc_test_api(&env, &ctl, "GET", url, NULL, NULL, 0, &r), 200);
        double t2 = pc_mono_ms_frac();
        json_t *doc = json_loadb((const char *)r.body, r.body_len, 0, NULL);
        pc_http_result_free(&r);
        assert_string_equal(json_string_value(json_object_get(doc, "wait")), "complete");
        assert_int_equal(
            json_integer_value(json_object_get(json_object_get(doc, "summary"), "live")), n_agents);
        json_decref(doc);
        commit[i] = t1 - t0;
        live[i] = t2 - t0;
    }
    double cpu = (cpu_ms(ctl.proc->pid) - cpu0) / runs;
    double tx_kib = (wan_tx_bytes() - tx0) / runs / 1024.0;
    double mc = median(commit, runs), ml = median(live, runs);
    free(commit);
    free(live);
    for (int i = 0; i < n_agents; i++)
        pc_test_agent_stop(&agents[i]);
    free(agents);
    for (int k = 0; k < n_relays; k++)
        pc_test_relay_stop(&relays[k]);
    free(relays);
    pc_test_controller_stop(&ctl);
    pc_test_env_cleanup(&env);
    pc_test_release_ports(); /* nothing stopped here starts again */
    double me = etcd_fanout(n_agents, size);
    char via[80] = "direct";
    if (n_relays > 0)
        snprintf(via, sizeof(via), "via %d relays", n_relays);
    if (n_pops > 0) {
        size_t used = strlen(via);
        snprintf(via + used, sizeof(via) - used, ", WAN %d ms RTT %.1f%% loss, %d PoPs", wan_rtt_ms,
                 wan_loss * 100, n_pops);
    }
    printf("deploy to live everywhere, %3d agents %s, %8zu bytes, %d runs: commit %.1f ms, "
           "live-all %.1f ms (median), ratio %.1f, ctl cpu %.1f ms/deploy",
           n_agents, via, size, runs, mc, ml, ml / mc, cpu);
    if (n_pops > 0)
        printf(", core out %.0f KiB/deploy", tx_kib);
    if (me >= 0)
        printf("; etcd watch fan-out %.1f ms, vs etcd %.2f\n", me, me > 0 ? ml / me : 0.0);
    else
        printf("; no etcd baseline: needs %s (Debian: etcd-server) and /usr/bin/curl\n",
               etcd_bin());
    fflush(stdout);
}

static void bench_loss_convergence(void)
{
    int loss_runs = runs < 3 ? runs : 3;
    double *lossy = calloc((size_t)loss_runs, sizeof(double));
    double *clean = calloc((size_t)loss_runs, sizeof(double));
    for (int run = 0; run < loss_runs; run++) {
        pc_test_env env;
        pc_test_env_init(&env);
        pc_test_controller ctl = {0};
        pc_test_controller_start(&env, &ctl, NULL);
        pc_test_agent agents[2];
        memset(agents, 0, sizeof(agents));
        char seed[16];
        snprintf(seed, sizeof(seed), "%d", 42 + run);
        const char *drop[] = {"--test-drop-permille", "300", "--test-drop-seed", seed, NULL};
        pc_test_agent_start_for(&env, &agents[0], "lossy", &ctl, drop);
        pc_test_agent_start_for(&env, &agents[1], "clean", &ctl, NULL);
        srand(42 + run);
        for (int i = 0; i < loss_deploys; i++) {
            char tenant[16], src[256], body[64];
            snprintf(tenant, sizeof(tenant), "t%02d", rand() % 20);
            snprintf(body, sizeof(body), "deploy %d", i);
            pc_test_lua_hello(src, sizeof(src), body);
            pc_test_deployed d;
            assert_int_equal(
                pc_test_try_deploy(&env, &ctl, tenant, "text/x-lua", src, strlen(src), &d), 201);
        }
        double t0 = pc_mono_ms_frac();
        double done[2] = {0, 0};
        while ((done[0] == 0 || done[1] == 0) &&
               pc_mono_ms_frac() - t0 < PC_TEST_CONVERGE_TIMEOUT_MS) {
            for (int a = 0; a < 2; a++)
                if (done[a] == 0 && pc_test_agent_matches(&env, &ctl, &agents[a]))
                    done[a] = pc_mono_ms_frac() - t0;
            pc_test_sleep_ms(5);
        }
        assert_true(done[0] > 0 && done[1] > 0);
        lossy[run] = done[0];
        clean[run] = done[1];
        printf("  run %d: dropped %llu of %d entries; converged: lossy %.0f ms, clean %.0f ms\n",
               run,
               (unsigned long long)pc_test_agent_metric(&agents[0],
                                                        "popcast_agent_test_dropped_total"),
               loss_deploys, done[0], done[1]);
        for (int a = 0; a < 2; a++)
            pc_test_agent_stop(&agents[a]);
        pc_test_controller_stop(&ctl);
        pc_test_env_cleanup(&env);
    }
    double ml = median(lossy, loss_runs), mc = median(clean, loss_runs);
    printf("convergence after %d deploys over 20 tenants, 30%% pub/sub loss, %d runs: lossy agent "
           "%.0f ms, loss-free agent %.0f ms (median), ratio %.1f\n",
           loss_deploys, loss_runs, ml, mc, mc > 0 ? ml / mc : 0.0);
    free(lossy);
    free(clean);
}

/* The WAN testbed's PoPs, once for the whole run. */
static void build_wan(void)
{
    n_pops = n_relays > 0 ? n_relays : 4;
    assert_true(n_pops <= MAX_POPS);
    pc_wan_spec spec = {.delay_ms = wan_rtt_ms / 2, .jitter_ms = wan_rtt_ms / 20, .loss = wan_loss};
    for (int k = 0; k < n_pops; k++) {
        char name[16];
        snprintf(name, sizeof(name), "pop-%02d", k);
        pc_wan_add_pop(&pops[k], k + 1, name, &spec, 100u + (unsigned)k);
    }
}

static void bench(void **state)
{
    if (wan_rtt_ms > 0)
        build_wan();
    char *sizes = strdup(byte_counts);
    for (char *s1 = NULL, *sz = strtok_r(sizes, ",", &s1); sz != NULL;
         sz = strtok_r(NULL, ",", &s1)) {
        char *list = strdup(agent_counts);
        for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok != NULL;
             tok = strtok_r(NULL, ",", &save))
            bench_live_everywhere(atoi(tok), (size_t)strtoull(sz, NULL, 10));
        free(list);
    }
    free(sizes);
    if (loss_deploys > 0 && n_pops == 0)
        bench_loss_convergence();
    for (int k = 0; k < n_pops; k++)
        pc_wan_remove_pop(&pops[k]);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        agent_counts = argv[1];
    if (argc > 2)
        runs = atoi(argv[2]) > 0 ? atoi(argv[2]) : 1;
    if (argc > 3)
        loss_deploys = atoi(argv[3]);
    if (argc > 4)
        byte_counts = argv[4];
    if (argc > 5)
        n_relays = atoi(argv[5]) > 0 ? atoi(argv[5]) : 0;
    if (argc > 6 && strcmp(argv[6], "0") != 0) {
        if (sscanf(argv[6], "%d:%lf", &wan_rtt_ms, &wan_loss) != 2 || wan_rtt_ms < 2 ||
            wan_rtt_ms > 2000 || wan_loss < 0 || wan_loss >= 1) {
            fprintf(stderr, "bench_rollout: WAN is RTT_MS:LOSS, e.g. 100:0.01 (2..2000 ms, "
                            "0 <= LOSS < 1)\n");
            return 2;
        }
        pc_test_init();
        pc_wan_enter_core();
    }
    const struct CMUnitTest benches[] = {cmocka_unit_test(bench)};
    return cmocka_run_group_tests(benches, NULL, NULL);
}
