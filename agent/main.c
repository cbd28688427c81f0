/* main.c - popcast-agent: receives committed entries, verifies and stores
 * them, makes them live in the local runtime and serves tenant traffic.
 * docs/operations.md describes every option. */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <nng/nng.h>
#include <uv.h>

#include "admin.h"
#include "applier.h"
#include "clock.h"
#include "config.h"
#include "daemon.h"
#include "sd_notify.h"
#include "crypto.h"
#include "edge.h"
#include "edge_prober.h"
#include "json_list_writer.h"
#include "log.h"
#include "nng_close.h"
#include "lua_engine.h"
#include "metrics.h"
#include "names.h"
#include "registry.h"
#include "protocol_limits.h"
#include "store.h"
#include "subscriber.h"
#include "exec_adapter.h"
#include "syncer.h"
#include "tail_shipper.h"
#include "tls.h"
#include "traffic.h"

typedef struct agent_config {
    char *data_dir;
    char *agent_id;
    char *pop;
    pc_strlist subscribe;
    pc_strlist sync;
    pc_strlist relay;
    pc_strlist trusted_key;
    char *edge_listen;
    char *admin_listen;
    char *log_level;
    char *log_format;
    char *edge_access_log;
    uint64_t edge_threads;
    uint64_t edge_max_body;
    uint64_t edge_max_connections;
    uint64_t edge_max_connections_per_client;
    uint64_t edge_request_timeout_ms;
    uint64_t edge_response_headers_max;
    uint64_t edge_response_header_bytes;
    uint64_t max_bundle;
    uint64_t sub_recvbuf;
    uint64_t sub_queue;
    uint64_t sub_queue_bytes;
    uint64_t lua_memory;
    bool store_write_map;
    uint64_t store_map_size;
    uint64_t lua_instructions;
    uint64_t lua_wall_ms;
    uint64_t lua_watchdog_ms;
    uint64_t lua_response_max;
    uint64_t lua_max_isolates;
    uint64_t lua_max_idle_isolates;
    uint64_t lua_idle_ttl_ms;
    uint64_t malloc_arenas;
    char *identity_key;
    char *tls_ca;
    char *tls_server_name;
    bool allow_plaintext;
    char *exec_root;
    char *exec_reload_command;
    char *exec_reload_pidfile;
    char *exec_reload_signal;
    uint64_t exec_hook_timeout_ms;
    uint64_t stale_after_ms;
    uint64_t max_clock_skew_ms;
    uint64_t status_interval_ms;
    uint64_t traffic_interval_ms;
    uint64_t tail_poll_ms;
    uint64_t tail_flush_ms;
    uint64_t tail_buffer_lines;
    uint64_t tail_buffer_bytes;
    uint64_t tail_request_lines;
    uint64_t sync_interval_ms;
    uint64_t request_timeout_ms;
    uint64_t connect_timeout_ms;
    uint64_t test_drop_permille;
    uint64_t test_drop_seed;
    char *ready_file;
    uint64_t shutdown_timeout_ms;
    bool test_hang_on_stop;
} agent_config;

/* /readyz's edge check: the edge is asked this often, in the background
 * (edge_prober.h), and waited for this long. */
#define EDGE_PROBE_INTERVAL_MS 1000
#define EDGE_PROBE_TIMEOUT_MS  2000

#define OPT(name, type, def, min, max, help)                                                       \
    {                                                                                              \
#name, type, offsetof(agent_config, name), def, min, max, help                             \
    }
static const pc_cfg_option options[] = {
    OPT(data_dir, PC_CFG_STRING, "/var/lib/popcast/agent", 0, 0,
        "directory of the agent's LMDB store"),
    OPT(agent_id, PC_CFG_STRING, NULL, 0, 0, "this agent's name (default: host name)"),
    OPT(pop, PC_CFG_STRING, "default", 0, 0, "the PoP this machine is in"),
    OPT(subscribe, PC_CFG_LIST, "tcp://127.0.0.1:7071", 0, 0,
        "pub address of a controller or a relay (repeat for each)"),
    OPT(sync, PC_CFG_LIST, "tcp://127.0.0.1:7072", 0, 0,
        "sync (catch-up and status) address of a controller (repeat for each)"),
    OPT(relay, PC_CFG_LIST, NULL, 0, 0,
        "sync address of a relay in this PoP (repeat for each): catch-up asks it before the "
        "controllers, and status reports go through it"),
    OPT(trusted_key, PC_CFG_LIST, NULL, 0, 0,
        "public key file of a trusted signing key (repeat for each); required"),
    OPT(edge_listen, PC_CFG_STRING, "127.0.0.1:8080", 0, 0,
        "end-user HTTP address host:port (port 0: any free port, see ready_file)"),
    OPT(admin_listen, PC_CFG_STRING, "http://127.0.0.1:9090", 0, 0,
        "operator endpoints (status, metrics; port 0: any free port)"),
    OPT(log_level, PC_CFG_STRING, "info", 0, 0, "debug, info, warn or error"),
    OPT(log_format, PC_CFG_STRING, "text", 0, 0,
        "text, or json: one JSON object per line (time, level, component, msg)"),
    OPT(edge_access_log, PC_CFG_STRING, NULL, 0, 0,
        "append a JSON line for every request the edge answers to this file (0640; reopened on "
        "SIGHUP)"),
    OPT(edge_threads, PC_CFG_U64, "0", 0, 1024, "edge worker threads (0: one per CPU)"),
    OPT(edge_max_body, PC_CFG_SIZE, "1MiB", 0, (uint64_t)1 << 30, "largest end-user request body"),
    OPT(edge_max_connections, PC_CFG_U64, "1024", 1, PC_EDGE_MAX_CONNECTIONS,
        "most open end-user connections (more are closed at once)"),
    OPT(edge_max_connections_per_client, PC_CFG_U64, "64", 0, PC_EDGE_MAX_CONNECTIONS,
        "most open connections from one client address, an IPv6 /64 (0: no limit)"),
    OPT(edge_request_timeout_ms, PC_CFG_U64, "30000", 100, 3600000,
        "one request must be received and answered within this, however slowly it trickles"),
    OPT(edge_response_headers_max, PC_CFG_U64, "100", 1, 10000,
        "most response headers a handler may set (more: 502)"),
    OPT(edge_response_header_bytes, PC_CFG_SIZE, "16KiB", 1024, PC_EDGE_RESPONSE_HEADER_BYTES_MAX,
        "most bytes of response headers a handler may set (more: 502)"),
    OPT(max_bundle, PC_CFG_SIZE, "64MiB", 1, (uint64_t)1 << 30,
        "largest bundle accepted (must match the controllers')"),
    OPT(sub_recvbuf, PC_CFG_U64, "256", 1, 8192, "nng receive queue (messages)"),
    OPT(sub_queue, PC_CFG_U64, "1024", 1, 1 << 20,
        "received messages waiting for the apply loop before drops"),
    OPT(sub_queue_bytes, PC_CFG_SIZE, "64MiB", 1, (uint64_t)1 << 40,
        "received bytes waiting for the apply loop, per publisher connection, before drops"),
    OPT(lua_memory, PC_CFG_SIZE, "32MiB", 65536, (uint64_t)1 << 34,
        "memory limit of one Lua isolate"),
    OPT(lua_instructions, PC_CFG_U64, "50000000", 1000, 0, "Lua instruction budget per request"),
    OPT(lua_wall_ms, PC_CFG_U64, "1000", 1, 3600000, "wall-time limit per request (ms)"),
    OPT(lua_watchdog_ms, PC_CFG_U64, "0", 0, 3600000,
        "a run still going this long is stopped and its version quarantined (503) until the "
        "tenant's next version (ms; 0: 4 x lua_wall_ms)"),
    OPT(lua_response_max, PC_CFG_SIZE, "8MiB", 1, (uint64_t)1 << 30, "largest response body"),
    OPT(lua_max_isolates, PC_CFG_U64, "64", 1, 65536, "isolates per tenant version"),
    OPT(store_write_map, PC_CFG_BOOL, "true", 0, 0,
        "write the store through its memory map (LMDB MDB_WRITEMAP): far less heap after big "
        "transactions; the data file takes its map size on disk, reserved up front"),
    OPT(store_map_size, PC_CFG_SIZE, "64MiB", (uint64_t)1 << 20, (uint64_t)1 << 36,
        "the store's first map size (with store_write_map, the disk reserved at start); it "
        "doubles as the store grows"),
    OPT(malloc_arenas, PC_CFG_U64, "2", 1, 1024,
        "glibc malloc arenas (fewer hold less freed memory; more contend less)"),
    OPT(lua_max_idle_isolates, PC_CFG_U64, "1024", 1, 1048576,
        "idle isolates kept across all tenants (least recently used ones are freed)"),
    OPT(lua_idle_ttl_ms, PC_CFG_U64, "60000", 0, 86400000,
        "free a version's idle isolates after this long unused (0: never)"),
    OPT(tls_ca, PC_CFG_STRING, NULL, 0, 0,
        "PEM CA certificate(s) the controllers' TLS certificates must chain to (tls+tcp://)"),
    OPT(tls_server_name, PC_CFG_STRING, NULL, 0, 0,
        "the name the controllers' certificates must carry (default: none checked beyond the CA)"),
    OPT(allow_plaintext, PC_CFG_BOOL, "false", 0, 0,
        "allow tcp:// controller addresses (local development only)"),
    OPT(identity_key, PC_CFG_STRING, NULL, 0, 0,
        "this agent's Ed25519 key, signing its status reports; created with its .pub beside it "
        "if missing (default: DATA_DIR/agent.key)"),
    OPT(exec_root, PC_CFG_STRING, NULL, 0, 0,
        "exec runtime: where versions are written out (default: DATA_DIR/exec)"),
    OPT(exec_reload_command, PC_CFG_STRING, NULL, 0, 0,
        "exec runtime: shell command run after each flip (see docs/runtime-exec.md)"),
    OPT(exec_reload_pidfile, PC_CFG_STRING, NULL, 0, 0,
        "exec runtime: signal the process whose pid is in this file after each flip"),
    OPT(exec_reload_signal, PC_CFG_STRING, "HUP", 0, 0,
        "exec runtime: the signal for exec_reload_pidfile (HUP, USR1, USR2, TERM)"),
    OPT(exec_hook_timeout_ms, PC_CFG_U64, "10000", 10, 3600000,
        "exec runtime: a reload hook taking longer is killed and counts as failed"),
    OPT(stale_after_ms, PC_CFG_U64, "5000", 100, 86400000,
        "no valid heartbeat for this long: report stale (and keep serving)"),
    OPT(max_clock_skew_ms, PC_CFG_U64, "30000", 1000, 86400000,
        "how far ahead of this clock a heartbeat or snapshot may be dated (run NTP)"),
    OPT(status_interval_ms, PC_CFG_U64, "2000", 50, 3600000,
        "status report period (reports also go out on every change)"),
    OPT(traffic_interval_ms, PC_CFG_U64, "10000", 50, 3600000,
        "how often reports take new request counts per tenant version"),
    OPT(tail_poll_ms, PC_CFG_U64, "2000", 0, 3600000,
        "how often to ask each controller which tenants are tailed (popcast tail; 0: tails off)"),
    OPT(tail_flush_ms, PC_CFG_U64, "200", 10, 60000,
        "how often a tailed tenant's log lines are sent to the controllers"),
    OPT(tail_buffer_lines, PC_CFG_U64, "4096", 1, 1048576,
        "tailed tenants' log lines held for sending (more are dropped, counted)"),
    OPT(tail_buffer_bytes, PC_CFG_U64, "1048576", 4096, 1073741824,
        "bytes of tailed tenants' log lines held for sending"),
    OPT(tail_request_lines, PC_CFG_U64, "100", 1, 1000000,
        "request lines per second a tailed tenant's tail gets (more are counted as sampled out)"),
    OPT(sync_interval_ms, PC_CFG_U64, "10000", 100, 3600000,
        "catch-up probe period, even when nothing looks missing"),
    OPT(request_timeout_ms, PC_CFG_U64, "5000", 100, 600000, "one sync request's timeout"),
    OPT(connect_timeout_ms, PC_CFG_U64, "1000", 10, 600000,
        "catch-up waits this long for a controller's connection before trying the next"),
    OPT(test_drop_permille, PC_CFG_U64, "0", 0, 1000,
        "TESTS ONLY: discard this many per mille of pub/sub entries"),
    OPT(test_drop_seed, PC_CFG_U64, "1", 0, 0, "TESTS ONLY: seed of the drop switch"),
    OPT(ready_file, PC_CFG_STRING, NULL, 0, 0,
        "once every listener is bound, write {\"pid\",\"edge\",\"admin\"} with the bound "
        "addresses to this file (atomically)"),
    OPT(shutdown_timeout_ms, PC_CFG_U64, "15000", 0, 3600000,
        "a stop (SIGTERM, SIGINT) taking longer ends the process with status 124 (0: wait "
        "forever); keep it above twice request_timeout_ms"),
    OPT(test_hang_on_stop, PC_CFG_BOOL, "false", 0, 0,
        "TESTS ONLY: block the orderly stop forever (shutdown_timeout_ms then ends it)"),
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

typedef struct agent {
    agent_config cfg;
    char agent_id[PC_ID_MAX + 1];
    uv_loop_t loop;
    bool loop_open;
    uv_signal_t sigint, sigterm, sighup;
    uv_timer_t tick; /* stamps loop_health */
    pc_health_loop loop_health;
    pc_append_log *access_log;
    pc_store *store;
    pc_keyring trusted;
    pc_metrics *metrics;
    pc_adapter *lua, *exec;
    pc_signing_key identity;
    nng_tls_config *tls;
    pc_tls_stamp tls_stamp; /* the CA as loaded: SIGHUP says if it changed */
    char identity_public[128];
    pc_adapter *adapters[2];
    size_t n_adapters;
    pc_applier *applier;
    pc_traffic *traffic;  /* the edge counts, reports show */
    pc_tail_buffer *tail; /* the edge adds, the shipper sends (NULL: tails off) */
    pc_tail_shipper *tail_shipper;
    pc_subscriber *sub;
    pc_syncer *_Atomic syncer;
    pc_edge *edge;
    pc_edge_prober *edge_prober;
    pc_admin *admin;
    /* heap trimming after changes (on_tick) */
    uint64_t trimmed_generation;
    int64_t last_trim_ms;
    pc_metric *heap_trims;
} agent;

static int signal_number(const char *name)
{
    static const struct {
        const char *name;
        int number;
    } known[] = {{"HUP", SIGHUP}, {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"TERM", SIGTERM}};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(name, known[i].name) == 0)
            return known[i].number;
    return 0;
}

static int start_exec_adapter(agent *ag, pc_err *err)
{
    char root[1100];
    if (ag->cfg.exec_root != NULL)
        snprintf(root, sizeof(root), "%s", ag->cfg.exec_root);
    else
        snprintf(root, sizeof(root), "%s/exec", ag->cfg.data_dir);
    if (root[0] != '/') {
        /* A relative data dir: make the root absolute for the hooks. */
        char cwd[512];
        if (getcwd(cwd, sizeof(cwd)) == NULL)
            return pc_err_set(err, PC_E_IO, "getcwd: %s", strerror(errno));
        char rel[1100];
        snprintf(rel, sizeof(rel), "%s", root);
        snprintf(root, sizeof(root), "%.512s/%.580s", cwd, rel);
    }
    int sig = signal_number(ag->cfg.exec_reload_signal);
    if (sig == 0)
        return pc_err_set(err, PC_E_INVALID,
                          "exec_reload_signal: '%s' is not HUP, USR1, USR2 or TERM",
                          ag->cfg.exec_reload_signal);
    pc_exec_options eo = {.root = root,
                          .reload_command = ag->cfg.exec_reload_command,
                          .signal_pidfile = ag->cfg.exec_reload_pidfile,
                          .signal = sig,
                          .hook_timeout_ms = ag->cfg.exec_hook_timeout_ms};
    ag->exec = pc_exec_adapter_new(&eo, ag->metrics, err);
    return ag->exec != NULL ? PC_OK : PC_E_INVALID;
}

static void on_change(void *arg, int need_sync)
{
    agent *ag = arg;
    pc_syncer_notify(ag->syncer, need_sync);
}

/* The agent's own key: loaded, or created (0600) with its public half in
 * KEY.pub for enrollment (popcast agent enroll). */
static int load_identity(agent *ag, pc_err *err)
{
    char path[1100], pub[1110];
    if (ag->cfg.identity_key != NULL)
        snprintf(path, sizeof(path), "%s", ag->cfg.identity_key);
    else
        snprintf(path, sizeof(path), "%s/agent.key", ag->cfg.data_dir);
    snprintf(pub, sizeof(pub), "%s.pub", path);
    if (access(path, F_OK) != 0) {
        if (pc_keygen(&ag->identity) != PC_OK)
            return pc_err_set(err, PC_E_INTERNAL, "cannot generate the agent key");
        if (pc_key_write_secret(path, &ag->identity, err) != PC_OK)
            return PC_E_IO;
        unlink(pub);
        if (pc_key_write_public(pub, &ag->identity.pub, err) != PC_OK)
            return PC_E_IO;
        pc_info("agent", "created the agent key %s (public key in %s: enroll it)", path, pub);
    } else if (pc_key_read_secret(path, &ag->identity, err) != PC_OK) {
        return PC_E_INVALID;
    }
    pc_key_format_public(&ag->identity.pub, ag->identity_public, sizeof(ag->identity_public));
    return PC_OK;
}

static void on_publication(void *arg, const uint8_t *data, size_t len)
{
    agent *ag = arg;
    pc_applier_on_publication(ag->applier, data, len);
}

/* Entries that arrived together are applied together: one store
 * transaction (one fsync) for the lot, not one each, so an agent keeps
 * up with a burst instead of dropping behind into a snapshot. */
static void on_publications(void *arg, const uint8_t *const *data, const size_t *len, size_t n)
{
    agent *ag = arg;
    pc_applier_on_publications(ag->applier, data, len, n);
}

typedef struct status_walk {
    agent *ag;
    pc_json_list_writer *out;
} status_walk;

/* A tenant of /v1/status, with its request counts as they are now
 * (reports carry them as of the last traffic interval). */
static int status_tenant(void *arg, json_t *t)
{
    status_walk *w = arg;
    pc_version_traffic got[PC_TRAFFIC_VERSIONS];
    size_t n = w->ag->traffic != NULL
                   ? pc_traffic_current(w->ag->traffic,
                                        json_string_value(json_object_get(t, "tenant")), got)
                   : 0;
    json_t *list = json_array();
    for (size_t k = 0; k < n; k++)
        json_array_append_new(list, json_pack("{s:I,s:I,s:I,s:I,s:I}", "version",
                                              (json_int_t)got[k].version, "requests",
                                              (json_int_t)got[k].requests, "errors",
                                              (json_int_t)got[k].errors, "limit_kills",
                                              (json_int_t)got[k].limit_kills, "status_5xx",
                                              (json_int_t)got[k].status_5xx));
    json_object_set_new(t, "traffic", list);
    return pc_json_list_writer_add(w->out, t) == 0 ? 0 : PC_E_NOMEM;
}

/* /v1/status, written a tenant at a time (json_list_writer.h says why). */
static char *status(void *arg, size_t *len)
{
    agent *ag = arg;
    *len = 0;
    status_walk w = {ag, pc_json_list_writer_new()};
    if (w.out == NULL)
        return NULL;
    if (pc_applier_foreach_tenant_json(ag->applier, status_tenant, &w) == PC_E_NOMEM) {
        pc_json_list_writer_free(w.out);
        return NULL;
    }
    json_t *s = pc_applier_status_header_json(ag->applier);
    if (s == NULL) {
        pc_json_list_writer_free(w.out);
        return NULL;
    }
    uint64_t received = 0, dropped = 0;
    if (ag->sub != NULL)
        pc_subscriber_counts(ag->sub, &received, &dropped);
    json_object_set_new(s, "agent_id", json_string(ag->agent_id));
    json_object_set_new(s, "pop", json_string(ag->cfg.pop));
    if (ag->traffic != NULL)
        json_object_set_new(s, "traffic_since_unix_ms",
                            json_integer((json_int_t)pc_traffic_since_ms(ag->traffic)));
    json_object_set_new(s, "identity_key", json_string(ag->identity_public));
    json_object_set_new(
        s, "pubsub",
        json_pack("{s:I,s:I}", "received", (json_int_t)received, "dropped", (json_int_t)dropped));
    json_object_set_new(s, "metrics", pc_metrics_render_json(ag->metrics));
    return pc_json_list_writer_finish(w.out, s, "tenants", len);
}

/* livez: the loop runs, the store reads. readyz: also serving (the edge
 * listens), fresh (a valid heartbeat within stale_after_ms: the versions
 * served are known current) and not stopping (docs/operations.md
 * "Health"). */
static void check(void *arg, pc_health_report *r)
{
    agent *ag = arg;
    uint64_t applied = 0;
    pc_err err;
    bool store_ok = pc_store_applied_seq(ag->store, &applied, &err) == PC_OK;
    pc_health_check(r, "store", store_ok, "%s", store_ok ? "" : err.msg);
    pc_health_check_loop(r, &ag->loop_health);
    if (strcmp(r->endpoint, "readyz") != 0)
        return;
    pc_health_check_shutdown(r, &ag->loop_health);
    /* Asked as a load balancer asks: a saturated or wedged edge is not
     * ready for more traffic. */
    char why[sizeof(((pc_err *)0)->msg)] = "the edge listener is not running";
    bool edge_ok = ag->edge_prober != NULL && pc_edge_prober_ok(ag->edge_prober, why, sizeof(why));
    pc_health_check(r, "edge", edge_ok, "%s", why);
    int64_t age = pc_applier_heartbeat_age_ms(ag->applier);
    uint64_t stale_after = pc_applier_stale_after_ms(ag->applier);
    if (age < 0)
        pc_health_check(r, "fresh", false, "no valid heartbeat since start");
    else
        pc_health_check(r, "fresh", (uint64_t)age <= stale_after,
                        "last valid heartbeat %lld ms ago (stale_after_ms %llu)", (long long)age,
                        (unsigned long long)stale_after);
}

/* At most one malloc_trim (it walks the heap) per this long. */
#define HEAP_TRIM_INTERVAL_MS 10000

/* Applying frees what it decoded and built on the way (a snapshot of
 * 10,000 tenants is tens of MB of temporaries), and glibc keeps freed
 * pages until asked: an agent that took a burst of deploys held them
 * until some isolate happened to be freed (the engine's own trim). So
 * the heap is trimmed once the tenants changed, at most every
 * HEAP_TRIM_INTERVAL_MS: a burst costs a trim per interval, and the
 * last one comes within an interval of its end. The store's pages the
 * burst wrote or read are unmapped at the same time: they stay in the
 * page cache, but no longer count as the agent's memory (at 10,000
 * tenants they were a third of its RSS); serving needs none of them. */
static void trim_heap_after_changes(agent *ag, int64_t now_ms)
{
    if (ag->applier == NULL || now_ms - ag->last_trim_ms < HEAP_TRIM_INTERVAL_MS)
        return;
    uint64_t g = pc_applier_tenants_generation(ag->applier);
    if (g == ag->trimmed_generation)
        return;
    ag->trimmed_generation = g;
    ag->last_trim_ms = now_ms;
    malloc_trim(0);
    pc_store_release_pages(ag->store);
    pc_metric_add(ag->heap_trims, 1);
}

static void on_tick(uv_timer_t *t)
{
    agent *ag = t->data;
    pc_health_loop_tick(&ag->loop_health);
    int64_t now = pc_mono_ms();
    pc_sd_watchdog_tick(now);
    trim_heap_after_changes(ag, now);
}

static void on_signal(uv_signal_t *h, int signum)
{
    agent *ag = h->data;
    pc_info("agent", "signal %d: shutting down", signum);
    pc_sd_notify("STOPPING=1\nSTATUS=stopping");
    pc_health_loop_stopping(&ag->loop_health);
    pc_daemon_watchdog_arm("agent", ag->cfg.shutdown_timeout_ms);
    if (ag->cfg.test_hang_on_stop) {
        /* Stands for a library call that never returns (nng_close in
         * nng 1.5.2, rarely): only the watchdog can end this. */
        pc_warn("agent", "test_hang_on_stop: the stop hangs here");
        for (;;)
            pause();
    }
    if (ag->cfg.ready_file != NULL) /* no longer ready */
        unlink(ag->cfg.ready_file);
    pc_applier_interrupt(ag->applier);
    pc_subscriber_close(ag->sub);
    ag->sub = NULL;
    uv_close((uv_handle_t *)&ag->sigint, NULL);
    uv_close((uv_handle_t *)&ag->sigterm, NULL);
    uv_close((uv_handle_t *)&ag->sighup, NULL);
    uv_close((uv_handle_t *)&ag->tick, NULL);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    agent *ag = h->data;
    (void)signum;
    pc_daemon_reload("agent", options, sizeof(agent_config), offsetof(agent_config, log_level));
    pc_tls_stamp_report(&ag->tls_stamp, "agent", "TLS CA");
    if (ag->access_log != NULL) {
        /* logrotate moved the file: write to a new one at the path. */
        pc_err err;
        if (pc_append_log_reopen(ag->access_log, &err) == PC_OK)
            pc_info("agent", "SIGHUP: edge access log %s reopened", ag->cfg.edge_access_log);
        else
            pc_warn("agent", "SIGHUP: %s; still writing to the old file", err.msg);
    }
}

static int load_trusted_keys(agent *ag, pc_err *err)
{
    if (ag->cfg.trusted_key.count == 0)
        return pc_err_set(err, PC_E_INVALID,
                          "--trusted-key is required: the public key file of the controllers' "
                          "signing key");
    for (size_t i = 0; i < ag->cfg.trusted_key.count; i++) {
        pc_public_key k;
        int rc = pc_key_read_public(ag->cfg.trusted_key.items[i], &k, err);
        if (rc == PC_OK)
            rc = pc_keyring_add(&ag->trusted, &k, err);
        if (rc != PC_OK)
            return rc;
    }
    return PC_OK;
}

/* Checks the configuration beyond its syntax: the agent's name, trusted
 * keys, TLS. */
static int agent_configure(agent *ag, pc_err *err)
{
    int rc;
    char hostname[256] = "agent";
    gethostname(hostname, sizeof(hostname) - 1);
    const char *id = ag->cfg.agent_id ? ag->cfg.agent_id : hostname;
    if (!pc_id_valid(id) || !pc_id_valid(ag->cfg.pop))
        return pc_err_set(err, PC_E_INVALID, "agent_id and pop must be [A-Za-z0-9._-]{1,128}");
    snprintf(ag->agent_id, sizeof(ag->agent_id), "%.*s", PC_ID_MAX, id);
    if (ag->cfg.shutdown_timeout_ms != 0 &&
        ag->cfg.shutdown_timeout_ms <= 2 * ag->cfg.request_timeout_ms)
        pc_warn("agent",
                "shutdown_timeout_ms (%llu) is not above twice request_timeout_ms (%llu): a stop "
                "during a slow sync request may be cut short (status 124; the store is safe)",
                (unsigned long long)ag->cfg.shutdown_timeout_ms,
                (unsigned long long)ag->cfg.request_timeout_ms);
    if ((rc = load_trusted_keys(ag, err)) != PC_OK)
        return rc;
    pc_tls_stamp_take(&ag->tls_stamp, ag->cfg.tls_ca);
    if (ag->cfg.tls_ca != NULL &&
        (rc = pc_tls_client_config(ag->cfg.tls_ca, ag->cfg.tls_server_name, &ag->tls, err)) !=
            PC_OK)
        return rc;
    for (size_t i = 0; i < ag->cfg.subscribe.count; i++)
        if ((rc = pc_tls_check_url(ag->cfg.subscribe.items[i], ag->tls, ag->cfg.allow_plaintext,
                                   "subscribe", err)) != PC_OK)
            return rc;
    for (size_t i = 0; i < ag->cfg.sync.count; i++)
        if ((rc = pc_tls_check_url(ag->cfg.sync.items[i], ag->tls, ag->cfg.allow_plaintext, "sync",
                                   err)) != PC_OK)
            return rc;
    for (size_t i = 0; i < ag->cfg.relay.count; i++)
        if ((rc = pc_tls_check_url(ag->cfg.relay.items[i], ag->tls, ag->cfg.allow_plaintext,
                                   "relay", err)) != PC_OK)
            return rc;
    return PC_OK;
}

/* Opens the store and the runtimes and makes every stored tenant live:
 * static stability, before talking to anyone. */
static int agent_open(agent *ag, pc_err *err)
{
    pc_store_options sopt = {.keep_history = false,
                             .write_map = ag->cfg.store_write_map,
                             .map_size = ag->cfg.store_map_size};
    int rc;
    /* A previous run's ready file goes once this process owns the store
     * (a second daemon on the same directory stops at pc_store_open). */
    if ((rc = pc_daemon_ensure_dir(ag->cfg.data_dir, err)) != PC_OK ||
        (rc = pc_store_open(&ag->store, ag->cfg.data_dir, &sopt, err)) != PC_OK ||
        (ag->cfg.ready_file != NULL &&
         (rc = pc_daemon_remove_ready(ag->cfg.ready_file, err)) != PC_OK))
        return rc;
    pc_store_stats st;
    pc_err serr;
    if (ag->cfg.store_write_map && pc_store_stats_get(ag->store, &st, &serr) == PC_OK &&
        !st.write_map)
        pc_warn("agent",
                "the store in %s cannot be written through its map (the disk cannot reserve "
                "%llu bytes): it writes LMDB's page copies instead (store_write_map)",
                ag->cfg.data_dir, (unsigned long long)st.map_size);
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    limits.memory_bytes = ag->cfg.lua_memory;
    limits.instructions = ag->cfg.lua_instructions;
    limits.wall_ms = ag->cfg.lua_wall_ms;
    limits.watchdog_ms = ag->cfg.lua_watchdog_ms;
    limits.response_bytes = ag->cfg.lua_response_max;
    limits.max_isolates = ag->cfg.lua_max_isolates;
    limits.max_idle_isolates = ag->cfg.lua_max_idle_isolates;
    limits.idle_ttl_ms = ag->cfg.lua_idle_ttl_ms;
    if ((ag->metrics = pc_metrics_new()) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    pc_daemon_build_info(ag->metrics, "agent");
    ag->heap_trims = pc_metrics_counter(ag->metrics, "popcast_agent_heap_trims_total", "",
                                        "malloc_trim calls after the tenants changed (freed heap "
                                        "pages go back to the system, the store's "
                                        "pages are unmapped)");
    if ((ag->lua = pc_lua_adapter_new(&limits, ag->metrics, err)) == NULL) {
        pc_err_wrap(err, "cannot initialise the Lua runtime");
        return err->code;
    }
    ag->adapters[ag->n_adapters++] = ag->lua;
    if ((rc = start_exec_adapter(ag, err)) != PC_OK) {
        pc_err_wrap(err, "cannot initialise the exec runtime");
        return rc;
    }
    ag->adapters[ag->n_adapters++] = ag->exec;
    pc_applier_options aopt = {.store = ag->store,
                               .agent_id = ag->agent_id,
                               .pop = ag->cfg.pop,
                               .trusted = &ag->trusted,
                               .adapters = ag->adapters,
                               .n_adapters = ag->n_adapters,
                               .metrics = ag->metrics,
                               .max_bundle = ag->cfg.max_bundle,
                               .stale_after_ms = ag->cfg.stale_after_ms,
                               .max_clock_skew_ms = ag->cfg.max_clock_skew_ms,
                               .on_change = on_change,
                               .on_change_arg = ag,
                               .test_drop_permille = (unsigned)ag->cfg.test_drop_permille,
                               .test_drop_seed = ag->cfg.test_drop_seed};
    if ((rc = pc_applier_new(&ag->applier, &aopt, err)) != PC_OK)
        return rc;
    size_t live = pc_applier_load(ag->applier);
    pc_info("agent", "%zu tenants live from the local store (applied seq %llu)", live,
            (unsigned long long)pc_applier_applied_seq(ag->applier));
    return PC_OK;
}

/* Every listener is bound: says where, in the log and in the ready file
 * (edge_listen and admin_listen may name port 0). */
static int agent_ready(agent *ag, pc_err *err)
{
    char host[256], edge[300];
    unsigned port = 0;
    if (pc_parse_host_port(ag->cfg.edge_listen, host, sizeof(host), &port) != PC_OK)
        return pc_err_set(err, PC_E_INVALID, "edge_listen '%s' is not host:port",
                          ag->cfg.edge_listen);
    bool v6 = strchr(host, ':') != NULL;
    snprintf(edge, sizeof(edge), "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "",
             pc_edge_bound_port(ag->edge));
    const char *admin = pc_admin_bound_url(ag->admin);
    pc_info("agent", "%s (pop %s) ready: edge %s, admin %s", ag->agent_id, ag->cfg.pop, edge,
            admin);
    if (ag->cfg.ready_file == NULL)
        return PC_OK;
    json_t *doc =
        json_pack("{s:I,s:s,s:s}", "pid", (json_int_t)getpid(), "edge", edge, "admin", admin);
    if (doc == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rc = pc_daemon_write_ready(ag->cfg.ready_file, doc, err);
    json_decref(doc);
    return rc;
}

/* Serves tenant traffic and the admin endpoints, then starts talking to
 * the controllers: catch-up and reports (syncer), pub/sub on the loop. */
static int agent_serve(agent *ag, pc_err *err)
{
    /* Counting starts with serving: reports say since when. */
    if ((ag->traffic = pc_traffic_new(pc_wall_ms())) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    pc_edge_options eopt = {.listen = ag->cfg.edge_listen,
                            .threads = (unsigned)ag->cfg.edge_threads,
                            .max_body = ag->cfg.edge_max_body,
                            .response_headers_max = (unsigned)ag->cfg.edge_response_headers_max,
                            .response_header_bytes = ag->cfg.edge_response_header_bytes,
                            .max_connections = (unsigned)ag->cfg.edge_max_connections,
                            .max_connections_per_client =
                                (unsigned)ag->cfg.edge_max_connections_per_client,
                            .request_timeout_ms = (unsigned)ag->cfg.edge_request_timeout_ms,
                            .adapters = ag->adapters,
                            .n_adapters = ag->n_adapters,
                            .metrics = ag->metrics,
                            .traffic = ag->traffic};
    if (ag->cfg.tail_poll_ms > 0 && ag->cfg.sync.count > 0) {
        pc_tail_buffer_options topt = {.controllers = ag->cfg.sync.count,
                                       .max_lines = ag->cfg.tail_buffer_lines,
                                       .max_bytes = ag->cfg.tail_buffer_bytes,
                                       .request_lines_per_s = (uint32_t)ag->cfg.tail_request_lines,
                                       .want_ttl_ms = 3 * ag->cfg.tail_poll_ms + 1000};
        if (ag->cfg.sync.count > PC_TAIL_CONTROLLERS_MAX)
            return pc_err_set(err, PC_E_INVALID, "tails serve at most %d controllers (sync)",
                              PC_TAIL_CONTROLLERS_MAX);
        if ((ag->tail = pc_tail_buffer_new(&topt)) == NULL)
            return pc_err_set(err, PC_E_NOMEM, "out of memory");
        eopt.tail = ag->tail;
    }
    uint64_t floor = 0;
    int rc;
    if (ag->cfg.edge_access_log != NULL &&
        (rc = pc_append_log_open(&ag->access_log, "edge access log", ag->cfg.edge_access_log, 0640,
                                 err)) != PC_OK)
        return rc;
    eopt.access_log = ag->access_log;
    if ((rc = pc_edge_start(&ag->edge, &eopt, err)) != PC_OK ||
        (rc = pc_edge_prober_start(&ag->edge_prober, ag->edge, EDGE_PROBE_INTERVAL_MS,
                                   EDGE_PROBE_TIMEOUT_MS, ag->metrics, err)) != PC_OK ||
        (rc = load_identity(ag, err)) != PC_OK ||
        (rc = pc_registry_next_report_floor(ag->store, (uint64_t)pc_wall_ms() * 1000, &floor,
                                            err)) != PC_OK)
        return rc;
    uv_loop_init(&ag->loop);
    ag->loop_open = true;
    uv_signal_init(&ag->loop, &ag->sigint);
    uv_signal_init(&ag->loop, &ag->sigterm);
    ag->sigint.data = ag->sigterm.data = ag;
    uv_signal_start(&ag->sigint, on_signal, SIGINT);
    uv_signal_start(&ag->sigterm, on_signal, SIGTERM);
    uv_signal_init(&ag->loop, &ag->sighup);
    ag->sighup.data = ag;
    uv_signal_start(&ag->sighup, on_sighup, SIGHUP);
    uv_timer_init(&ag->loop, &ag->tick);
    ag->tick.data = ag;
    uv_timer_start(&ag->tick, on_tick, 1000, 1000);
    pc_health_loop_tick(&ag->loop_health); /* about to run */
    pc_admin_callbacks admin_cb = {.status_cb = status, .check_cb = check, .arg = ag};
    if ((rc = pc_admin_start(&ag->admin, ag->cfg.admin_listen, ag->metrics, &admin_cb, err)) !=
        PC_OK)
        return rc;
    pc_applier_set_identity(ag->applier, &ag->identity.pub);
    pc_syncer_options syopt = {
        .urls = &ag->cfg.sync,
        .relays = &ag->cfg.relay,
        .applier = ag->applier,
        .metrics = ag->metrics,
        .agent_id = ag->agent_id,
        .pop = ag->cfg.pop,
        .report_floor = floor,
        .identity = &ag->identity,
        .tls = ag->tls,
        .request_timeout_ms = ag->cfg.request_timeout_ms,
        .connect_timeout_ms = ag->cfg.connect_timeout_ms,
        .sync_interval_ms = ag->cfg.sync_interval_ms,
        .status_interval_ms = ag->cfg.status_interval_ms,
        .status_min_ms = 50,
        .traffic = ag->traffic,
        .traffic_interval_ms = ag->cfg.traffic_interval_ms,
        .batch_entries = PC_SYNC_BATCH_ENTRIES,
        .batch_bytes = PC_SYNC_BATCH_BYTES,
        .chunk_bytes = PC_CHUNK_BYTES,
        .recv_max = pc_sync_reply_max(ag->cfg.max_bundle),
    };
    pc_syncer *syncer = NULL;
    if ((rc = pc_syncer_start(&syncer, &syopt, err)) != PC_OK)
        return rc;
    ag->syncer = syncer;
    if (ag->tail != NULL) {
        pc_tail_shipper_options tsopt = {.urls = &ag->cfg.sync,
                                         .buffer = ag->tail,
                                         .agent_id = ag->agent_id,
                                         .pop = ag->cfg.pop,
                                         .identity = &ag->identity,
                                         .tls = ag->tls,
                                         .poll_ms = ag->cfg.tail_poll_ms,
                                         .flush_ms = ag->cfg.tail_flush_ms,
                                         /* A tail is no reason to wait long. */
                                         .request_timeout_ms = ag->cfg.request_timeout_ms < 2000
                                                                   ? ag->cfg.request_timeout_ms
                                                                   : 2000,
                                         .metrics = ag->metrics};
        if ((rc = pc_tail_shipper_start(&ag->tail_shipper, &tsopt, err)) != PC_OK)
            return rc;
    }
    pc_subscriber_options subopt = {.urls = &ag->cfg.subscribe,
                                    .recvbuf = (int)ag->cfg.sub_recvbuf,
                                    .recv_max = pc_pub_message_max(ag->cfg.max_bundle),
                                    .tls = ag->tls,
                                    .queue_max = ag->cfg.sub_queue,
                                    .queue_bytes = ag->cfg.sub_queue_bytes,
                                    .metrics = ag->metrics,
                                    .batch_cb = on_publications};
    if ((rc = pc_subscriber_open(&ag->sub, &ag->loop, &subopt, on_publication, ag, err)) != PC_OK)
        return rc;
    int rc_ready = agent_ready(ag, err);
    /* systemd (Type=notify): every listener is bound. */
    if (rc_ready == PC_OK)
        pc_sd_notify("READY=1\nSTATUS=serving");
    return rc_ready;
}

/* Stops and frees everything, in the reverse order of its start. */
static void agent_close(agent *ag)
{
    if (ag->loop_open) {
        /* After a failed start the signal handles are still open. */
        if (!uv_is_closing((uv_handle_t *)&ag->sigterm)) {
            uv_close((uv_handle_t *)&ag->sigint, NULL);
            uv_close((uv_handle_t *)&ag->sigterm, NULL);
            uv_close((uv_handle_t *)&ag->sighup, NULL);
            uv_close((uv_handle_t *)&ag->tick, NULL);
            uv_run(&ag->loop, UV_RUN_NOWAIT);
        }
        uv_loop_close(&ag->loop);
    }
    if (ag->syncer != NULL) {
        pc_syncer *s = ag->syncer;
        ag->syncer = NULL;
        pc_syncer_stop(s);
    }
    pc_tail_shipper_stop(ag->tail_shipper);
    pc_admin_stop(ag->admin);
    pc_edge_prober_stop(ag->edge_prober); /* before the edge it asks */
    pc_edge_stop(ag->edge);
    pc_append_log_close(ag->access_log); /* after the edge: its last lines are written */
    pc_traffic_free(ag->traffic);        /* after the edge and the syncer */
    pc_tail_buffer_free(ag->tail);       /* after the edge and the shipper */
    pc_applier_free(ag->applier);
    if (ag->lua)
        ag->lua->destroy(ag->lua);
    if (ag->exec)
        ag->exec->destroy(ag->exec);
    pc_signing_key_wipe(&ag->identity);
    if (ag->tls != NULL)
        nng_tls_config_free(ag->tls);
    pc_metrics_free(ag->metrics);
    pc_store_close(ag->store);
    pc_config_free(options, &ag->cfg);
    /* No nng_fini: in nng 1.5.2 it can race a task thread still reaping
     * an HTTP server's (TLS) connections and panic the process at exit
     * ("pthread_mutex_lock: Invalid argument", seen in test_tls). What nng
     * still holds at exit stays reachable from its own lists and threads;
     * the sanitizer build judges the leaks that are left (docs/testing.md). */
}

int main(int argc, char **argv)
{
    agent ag;
    memset(&ag, 0, sizeof(ag));
    pc_err err;
    pc_err_clear(&err);
    int rc = pc_daemon_configure("popcast-agent", options, &ag.cfg, argc, argv, &ag.cfg.log_level);
    if (rc != PC_DAEMON_RUN) {
        pc_config_free(options, &ag.cfg);
        return rc == PC_DAEMON_EXIT_OK ? 0 : 1;
    }
    /* Before any thread allocates: glibc's default (8 per core) leaves
     * memory freed by one thread stranded in its arena; with 10,000
     * tenants that was 280 MiB anonymous memory instead of 110. */
    mallopt(M_ARENA_MAX, (int)ag.cfg.malloc_arenas);
    int exit_code = 1;
    uint64_t shutdown_timeout_ms = ag.cfg.shutdown_timeout_ms;
    if (agent_configure(&ag, &err) != PC_OK) {
        fprintf(stderr, "popcast-agent: %s\n", err.msg);
        pc_config_free(options, &ag.cfg);
        if (ag.tls != NULL)
            nng_tls_config_free(ag.tls);
        return 1;
    } else if (agent_open(&ag, &err) != PC_OK || agent_serve(&ag, &err) != PC_OK) {
        pc_error("agent", "%s", err.msg);
    } else {
        uv_run(&ag.loop, UV_RUN_DEFAULT);
        exit_code = 0;
    }
    /* Bounded, like a stop on a signal, whatever happened before. */
    pc_daemon_watchdog_arm("agent", shutdown_timeout_ms);
    agent_close(&ag);
    pc_daemon_watchdog_disarm();
    if (pc_nng_abandoned()) {
        /* Everything popcast owns is closed (the store included); only an
         * nng socket stuck in nng 1.5.2's close is left, with the thread
         * waiting in it. Leave without exit's handlers, which would walk
         * nng's half-closed state. */
        pc_info("agent", "stopped (an nng socket left unclosed, see above)");
        fflush(NULL);
        _exit(exit_code);
    }
    return exit_code;
}
