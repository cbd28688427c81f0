/* main.c - popcast-controller: accepts bundles over the REST API, versions
 * and signs them, commits them to LMDB and publishes them to agents.
 * docs/operations.md describes every option. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sodium.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <nng/nng.h>
#include <uv.h>

#include "nng_close.h"
#include "api.h"
#include "clock.h"
#include "cluster.h"
#include "config.h"
#include "daemon.h"
#include "sd_notify.h"
#include "crypto.h"
#include "log.h"
#include "lua_engine.h"
#include "metrics.h"
#include "pipeline.h"
#include "protocol_limits.h"
#include "heartbeat.h"
#include "publisher.h"
#include "rollout.h"
#include "deployer.h"
#include "deployment.h"
#include "pop_map.h"
#include "watch.h"
#include "sync_server.h"
#include "backup.h"
#include "store.h"
#include "signer.h"
#include "tls.h"

typedef struct controller_config {
    char *data_dir;
    char *api_listen;
    char *pub_listen;
    char *sync_listen;
    pc_strlist signing_key;
    pc_strlist root_key;
    char *admin_token_file;
    char *node_id;
    char *log_level;
    char *log_format;
    uint64_t max_bundle;
    uint64_t pub_sendbuf;
    uint64_t max_pending;
    uint64_t commit_batch_max;
    uint64_t commit_batch_bytes;
    uint64_t heartbeat_ms;
    bool require_enrollment;
    char *tls_cert_key;
    bool allow_plaintext;
    uint64_t token_write_rate;
    uint64_t token_write_burst;
    uint64_t admin_write_rate;
    uint64_t admin_write_burst;
    uint64_t raft_id;
    char *raft_listen;
    pc_strlist peers;
    bool raft_join;
    uint64_t raft_election_ms;
    uint64_t raft_heartbeat_ms;
    uint64_t raft_snapshot_threshold;
    uint64_t raft_snapshot_trailing;
    uint64_t publish_inline_max;
    uint64_t sync_inline_max;
    uint64_t sync_max_reply;
    uint64_t snapshot_lag;
    bool snapshot_lag_tenants;
    uint64_t gone_after_ms;
    uint64_t report_stale_ms;
    pc_strlist runtimes;
    char *ready_file;
    char *audit_log;
    uint64_t shutdown_timeout_ms;
    bool test_hang_on_stop;
    uint64_t deploy_interval_ms;
    uint64_t deploy_bake_ms;
    char *deploy_canary_pop;
    pc_strlist cors_origins;
    bool api_keep_alive;
    pc_strlist pop_locations;
    uint64_t watch_queue_max, watch_max;
} controller_config;

#define OPT(name, type, def, min, max, help)                                                       \
    {                                                                                              \
#name, type, offsetof(controller_config, name), def, min, max, help                        \
    }
static const pc_cfg_option options[] = {
    OPT(data_dir, PC_CFG_STRING, "/var/lib/popcast/controller", 0, 0,
        "directory of the controller's LMDB store"),
    OPT(api_listen, PC_CFG_STRING, "http://127.0.0.1:7070", 0, 0,
        "REST API address (port 0: any free port, see ready_file)"),
    OPT(pub_listen, PC_CFG_STRING, "tcp://127.0.0.1:7071", 0, 0,
        "nng pub address agents subscribe to (port 0: any free port)"),
    OPT(sync_listen, PC_CFG_STRING, "tcp://127.0.0.1:7072", 0, 0,
        "nng rep address for catch-up, snapshots, bundle chunks and status reports (port 0: any "
        "free port)"),
    OPT(signing_key, PC_CFG_LIST, NULL, 0, 0,
        "Ed25519 secret key file (popcast keygen); required; repeat to also hold the next key "
        "of a rotation (the log decides which one signs)"),
    OPT(root_key, PC_CFG_LIST, NULL, 0, 0,
        "public key file of a root key the agents trust (default: the first signing_key's)"),
    OPT(admin_token_file, PC_CFG_STRING, NULL, 0, 0,
        "file holding the admin API token; created (mode 0600) if missing "
        "(default: DATA_DIR/admin.token)"),
    OPT(node_id, PC_CFG_STRING, NULL, 0, 0, "this controller's name (default: host name)"),
    OPT(log_level, PC_CFG_STRING, "info", 0, 0, "debug, info, warn or error"),
    OPT(log_format, PC_CFG_STRING, "text", 0, 0,
        "text, or json: one JSON object per line (time, level, component, msg)"),
    OPT(max_bundle, PC_CFG_SIZE, "64MiB", 1, (uint64_t)1 << 30, "largest bundle accepted"),
    OPT(pub_sendbuf, PC_CFG_U64, "128", 1, 8192,
        "messages queued per subscriber before pub/sub drops for it"),
    OPT(max_pending, PC_CFG_U64, "1024", 1, 1 << 20, "writes queued before the API answers 503"),
    OPT(commit_batch_max, PC_CFG_U64, "256", 1, 65536,
        "tenant changes committed together in one raft entry (group commit; 1: one at a time)"),
    OPT(commit_batch_bytes, PC_CFG_SIZE, "8MiB", 1, (uint64_t)1 << 30,
        "bundle bytes one group commit may carry (a larger bundle still goes, alone)"),
    OPT(heartbeat_ms, PC_CFG_U64, "1000", 0, 3600000,
        "signed heartbeat period (0: none; agents then go stale)"),
    OPT(tls_cert_key, PC_CFG_STRING, NULL, 0, 0,
        "PEM file with this controller's TLS certificate and key (for https:// and tls+tcp://)"),
    OPT(allow_plaintext, PC_CFG_BOOL, "false", 0, 0,
        "allow http:// and tcp:// listen addresses (local development only)"),
    OPT(require_enrollment, PC_CFG_BOOL, "false", 0, 0,
        "trust only agent keys an operator enrolled (off: an unknown agent's key is bound on "
        "its first signed report)"),
    OPT(token_write_rate, PC_CFG_U64, "10", 0, 1000000,
        "changes per second one scoped token may make (0: unlimited)"),
    OPT(token_write_burst, PC_CFG_U64, "30", 1, 1000000, "changes a scoped token may make at once"),
    OPT(admin_write_rate, PC_CFG_U64, "0", 0, 1000000,
        "changes per second with the admin token (0: unlimited)"),
    OPT(admin_write_burst, PC_CFG_U64, "100", 1, 1000000,
        "changes the admin token may make at once"),
    OPT(raft_id, PC_CFG_U64, "1", 1, 0, "this controller's raft id (>= 1, unique in the cluster)"),
    OPT(raft_listen, PC_CFG_STRING, "127.0.0.1:7073", 0, 0,
        "host:port for raft traffic between controllers (a real port: peers name it)"),
    OPT(peers, PC_CFG_LIST, NULL, 0, 0,
        "cluster member ID@HOST:PORT@API_URL (repeat for each, this node included; none: a "
        "single-node cluster)"),
    OPT(raft_join, PC_CFG_BOOL, "false", 0, 0,
        "start empty and wait to be added with POST /v1/cluster/nodes"),
    OPT(raft_election_ms, PC_CFG_U64, "1000", 50, 600000, "raft election timeout"),
    OPT(raft_heartbeat_ms, PC_CFG_U64, "100", 10, 60000, "raft heartbeat period"),
    OPT(raft_snapshot_threshold, PC_CFG_U64, "1024", 2, 1 << 30,
        "entries between raft snapshots (then the log is truncated)"),
    OPT(raft_snapshot_trailing, PC_CFG_U64, "256", 0, 1 << 30,
        "entries kept in the raft log after a snapshot"),
    OPT(publish_inline_max, PC_CFG_SIZE, "1MiB", 0, (uint64_t)1 << 30,
        "larger bundles are announced on pub/sub and fetched in chunks"),
    OPT(sync_inline_max, PC_CFG_SIZE, "1MiB", 0, (uint64_t)1 << 30,
        "larger bundles are omitted from catch-up replies and fetched in chunks"),
    OPT(sync_max_reply, PC_CFG_SIZE, "8MiB", 65536, (uint64_t)1 << 30,
        "bytes of bundles per catch-up reply"),
    OPT(snapshot_lag, PC_CFG_U64, "1024", 1, 0,
        "an agent further behind than this many entries gets a snapshot"),
    OPT(snapshot_lag_tenants, PC_CFG_BOOL, "true", 0, 0,
        "and only if further behind than the controller has tenants (a snapshot carries one "
        "manifest per tenant)"),
    OPT(gone_after_ms, PC_CFG_U64, "30000", 100, 0,
        "an agent not heard from for this long is gone (out of rollout counts)"),
    OPT(report_stale_ms, PC_CFG_U64, "10000", 100, 0,
        "an agent not heard from for this long is listed as stale"),
    OPT(runtimes, PC_CFG_LIST, "lua", 0, 0, "runtime names uploads may name"),
    OPT(audit_log, PC_CFG_STRING, NULL, 0, 0,
        "append a JSON line for every API write request, answered or refused, to this file "
        "(0600; reopened on SIGHUP)"),
    OPT(ready_file, PC_CFG_STRING, NULL, 0, 0,
        "once every listener is bound, write {\"pid\",\"api\",\"pub\",\"sync\",\"raft\"} "
        "with the bound addresses to this file (atomically)"),
    OPT(shutdown_timeout_ms, PC_CFG_U64, "15000", 0, 3600000,
        "a stop (SIGTERM, SIGINT) taking longer ends the process with status 124 (0: wait "
        "forever)"),
    OPT(deploy_interval_ms, PC_CFG_U64, "1000", 50, 3600000,
        "the gate interval: how often the leader judges and moves each staged deployment"),
    OPT(deploy_bake_ms, PC_CFG_U64, "60000", 0, 604800000,
        "how long each gated stage of the default deployment plan holds before the next"),
    OPT(deploy_canary_pop, PC_CFG_STRING, NULL, 0, 0,
        "the default plan's canary PoP (default: the first PoP by name among the agents)"),
    OPT(cors_origins, PC_CFG_LIST, NULL, 0, 0,
        "origins a browser page may call the API from (CORS), e.g. https://dash.example.com; * "
        "for any; repeat for each (default: none)"),
    OPT(api_keep_alive, PC_CFG_BOOL, "true", 0, 0,
        "let an API connection carry the client's next request (HTTP/1.1 keep-alive) when its "
        "framing is unambiguous; false: one request per connection (docs/operations.md)"),
    OPT(pop_locations, PC_CFG_LIST, NULL, 0, 0,
        "where a PoP is, POP=LAT,LON in decimal degrees (e.g. fra=50.11,8.68), for the fleet view "
        "and the dashboard's map; repeat for each"),
    OPT(watch_queue_max, PC_CFG_SIZE, "1MiB", 4096, 1ull << 30,
        "live events queued for one watcher of GET /v1/watch before it is cut as too slow"),
    OPT(watch_max, PC_CFG_U64, "1024", 1, 100000,
        "watchers of GET /v1/watch at once; more are refused (503)"),
    OPT(test_hang_on_stop, PC_CFG_BOOL, "false", 0, 0,
        "TESTS ONLY: block the orderly stop forever (shutdown_timeout_ms then ends it)"),
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

/* The admin token: read it, or create a random one on first start so the
 * API is never open to anyone (docs/security.md: bootstrap). */
/* create: make one (0600) when the file does not exist, as on a first
 * start; a reload never does. */
static int load_admin_token(const char *path, bool create, uint8_t hash[PC_HASH_LEN], pc_err *err)
{
    char token[256];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT && create) {
        uint8_t raw[32];
        randombytes_buf(raw, sizeof(raw));
        pc_hex(token, raw, sizeof(raw));
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return pc_err_set(err, PC_E_IO, "cannot create %s: %s", path, strerror(errno));
        ssize_t w = write(fd, token, strlen(token));
        int ok = w == (ssize_t)strlen(token) && write(fd, "\n", 1) == 1 && fsync(fd) == 0;
        close(fd);
        if (!ok)
            return pc_err_set(err, PC_E_IO, "cannot write %s", path);
        pc_info("controller", "created admin token in %s (keep it secret)", path);
        pc_hash(hash, token, strlen(token));
        sodium_memzero(token, sizeof(token));
        return PC_OK;
    }
    if (fd < 0)
        return pc_err_set(err, PC_E_IO, "cannot open %s: %s", path, strerror(errno));
    ssize_t n = read(fd, token, sizeof(token) - 1);
    close(fd);
    if (n <= 0)
        return pc_err_set(err, PC_E_INVALID, "%s is empty or unreadable", path);
    token[n] = '\0';
    token[strcspn(token, "\r\n")] = '\0';
    if (strlen(token) < 16)
        return pc_err_set(err, PC_E_INVALID, "%s: the admin token must be at least 16 characters",
                          path);
    pc_hash(hash, token, strlen(token));
    sodium_memzero(token, sizeof(token));
    return PC_OK;
}

typedef struct controller {
    controller_config cfg;
    uv_loop_t loop;
    uv_signal_t sigint, sigterm, sighup;
    pc_store *store;
    pc_signing_key keys[PC_KEYRING_MAX];
    size_t n_keys;
    pc_signer *signer;
    pc_metrics *metrics;
    pc_adapter *lua;
    pc_publisher *pub;
    pc_pipeline *pipeline;
    pc_api *api;
    pc_rollout *rollout;
    pc_deployer *deployer; /* staged deployments, moved by the leader */
    pc_watch *watch;       /* GET /v1/watch */
    pc_pop_location *pops; /* pop_locations, parsed */
    size_t n_pops;
    pc_sync_server *sync;
    pc_heartbeat *heartbeat;
    pc_cluster *cluster;
    pc_cluster *stopped_cluster; /* freed once the loop has drained */
    nng_tls_config *tls;
    uv_timer_t tick;
    pc_health_loop loop_health;
    pc_audit *audit;
    bool stopping;     /* a stop signal came */
    bool stop_started; /* stop_serving ran (after the handover, if any) */
    bool loop_open;
    char node_id[PC_ID_MAX + 1];
    char raft_dir[4200];
    uint8_t admin_token_hash[PC_HASH_LEN];
    char token_path[4096];  /* the admin token's file, read again on SIGHUP */
    pc_tls_stamp tls_stamp; /* the certificate as loaded: SIGHUP says if it changed */
} controller;

/* The secret keys this controller holds and the root keys agents trust;
 * which key signs is the log's business (signer.h). */
static int load_signing_keys(controller *c, pc_err *err)
{
    if (c->cfg.signing_key.count > PC_KEYRING_MAX)
        return pc_err_set(err, PC_E_INVALID, "at most %d signing keys", PC_KEYRING_MAX);
    for (size_t i = 0; i < c->cfg.signing_key.count; i++) {
        int rc = pc_key_read_secret(c->cfg.signing_key.items[i], &c->keys[i], err);
        if (rc != PC_OK)
            return rc;
        c->n_keys = i + 1;
    }
    pc_keyring roots = {.count = 0};
    for (size_t i = 0; i < c->cfg.root_key.count; i++) {
        pc_public_key k;
        int rc = pc_key_read_public(c->cfg.root_key.items[i], &k, err);
        if (rc == PC_OK)
            rc = pc_keyring_add(&roots, &k, err);
        if (rc != PC_OK)
            return rc;
    }
    return pc_signer_new(&c->signer, c->store, c->keys, c->n_keys, &roots, err);
}

/* Every controller publishes every entry it applies (from raft), so agents
 * subscribed to any controller receive it. */
static void on_applied(void *arg, const Popcast__Entry *applied)
{
    controller *c = arg;
    Popcast__Entry e = *applied;
    if (e.bundle.len > c->cfg.publish_inline_max) {
        e.bundle.data = NULL;
        e.bundle.len = 0;
        e.bundle_omitted = 1; /* agents fetch it in chunks */
    }
    pc_err err;
    if (pc_publisher_send_entry(c->pub, &e, &err) != PC_OK)
        pc_warn("controller", "an applied entry was not published (%s); agents catch up", err.msg);
    pc_heartbeat_kick(c->heartbeat);
    pc_watch_entries_applied(c->watch);
}

static void on_deployment(void *arg, const Popcast__DeploymentRecord *d)
{
    controller *c = arg;
    pc_watch_event(c->watch, "deployment", d->tenant, pc_deployment_json(d));
}

/* Another controller leads (as this one sees it). */
static void on_leader(void *arg, uint64_t leader, uint64_t term)
{
    controller *c = arg;
    pc_watch_event(c->watch, "cluster", NULL,
                   json_pack("{s:s,s:I,s:I}", "node", c->node_id, "leader", (json_int_t)leader,
                             "term", (json_int_t)term));
}

/* An agent was heard of, went stale or gone, or came back. */
static void on_fleet_change(void *arg, json_t *change)
{
    controller *c = arg;
    pc_watch_event(c->watch, "fleet", NULL, change);
}

/* An agent's report changed what it holds or serves of a tenant. */
static void on_rollout_change(void *arg, const char *tenant, json_t *change)
{
    controller *c = arg;
    pc_watch_event(c->watch, "rollout", tenant, change);
}

static void cluster_stopped(void *arg)
{
    controller *c = arg;
    c->stopped_cluster = c->cluster;
    c->cluster = NULL;
    pc_pipeline_close(c->pipeline);
    c->pipeline = NULL;
}

static void on_tick(uv_timer_t *t)
{
    controller *c = t->data;
    pc_health_loop_tick(&c->loop_health);
    pc_sd_watchdog_tick(pc_mono_ms());
    pc_rollout_tick(c->rollout, pc_mono_ms());
    pc_deployer_tick(c->deployer, pc_wall_ms());
    pc_watch_tick(c->watch, pc_mono_ms());
    if (c->cluster != NULL)
        pc_cluster_refresh(c->cluster);
}

/* The stop itself, once leadership is handed over (or was not ours). */
static void stop_serving(controller *c)
{
    /* Fail queued writes and end rollout waits first: stopping the HTTP
     * server waits for every handler, and a handler may be waiting. */
    pc_sync_server_set_pipeline(c->sync, NULL);
    pc_deployer_stop(c->deployer);
    pc_pipeline_shutdown(c->pipeline);
    pc_rollout_cancel_waits(c->rollout);
    pc_api_stop(c->api);
    c->api = NULL;
    pc_watch_stop(c->watch); /* its streams outlive the HTTP server */
    pc_heartbeat_stop(c->heartbeat);
    c->heartbeat = NULL;
    /* raft fails what it still has in flight, then the pipeline goes. */
    pc_cluster_stop(c->cluster, cluster_stopped, c);
    uv_timer_stop(&c->tick);
    uv_close((uv_handle_t *)&c->tick, NULL);
    uv_close((uv_handle_t *)&c->sigint, NULL);
    uv_close((uv_handle_t *)&c->sigterm, NULL);
    uv_close((uv_handle_t *)&c->sighup, NULL);
}

static void leadership_handed_over(void *arg, uint64_t new_leader)
{
    controller *c = arg;
    if (c->stop_started)
        return;
    c->stop_started = true;
    if (new_leader != 0)
        pc_info("controller", "leadership transferred to node %llu: stopping",
                (unsigned long long)new_leader);
    else
        pc_warn("controller",
                "leadership transfer did not complete: stopping anyway (the others elect a "
                "leader after their election timeout)");
    stop_serving(c);
}

static void on_signal(uv_signal_t *h, int signum)
{
    controller *c = h->data;
    if (c->stopping) {
        /* A second signal during the handover: stop now. */
        if (!c->stop_started) {
            c->stop_started = true;
            pc_info("controller", "signal %d again: stopping without waiting for the handover",
                    signum);
            stop_serving(c);
        }
        return;
    }
    c->stopping = true;
    pc_info("controller", "signal %d: shutting down", signum);
    pc_sd_notify("STOPPING=1\nSTATUS=stopping");
    pc_health_loop_stopping(&c->loop_health);
    pc_daemon_watchdog_arm("controller", c->cfg.shutdown_timeout_ms);
    if (c->cfg.test_hang_on_stop) {
        /* Stands for a library call that never returns (nng_close, rarely,
         * in nng 1.5.2): only the watchdog can end this. */
        pc_warn("controller", "test_hang_on_stop: the stop hangs here");
        for (;;)
            pause();
    }
    if (c->cfg.ready_file != NULL) /* no longer ready */
        unlink(c->cfg.ready_file);
    /* A leader hands over first: the others then have a leader at once
     * instead of after an election timeout, and writes (redirected by
     * this node meanwhile) see a gap of one round trip, not of seconds.
     * Bounded: twice the election timeout. */
    if (pc_cluster_transfer_leadership(c->cluster, 2 * (uint64_t)c->cfg.raft_election_ms,
                                       leadership_handed_over, c) == PC_OK) {
        pc_info("controller", "leading: handing leadership over before stopping");
        return;
    }
    c->stop_started = true;
    stop_serving(c);
}

static void on_sighup(uv_signal_t *h, int signum)
{
    controller *c = h->data;
    (void)signum;
    pc_daemon_reload("controller", options, sizeof(controller_config),
                     offsetof(controller_config, log_level));
    /* The admin token: a new one in the file replaces the old at once. */
    pc_err terr;
    uint8_t hash[PC_HASH_LEN];
    if (c->api == NULL) {
        /* stopping: nothing to give it to */
    } else if (load_admin_token(c->token_path, false, hash, &terr) != PC_OK) {
        pc_warn("controller", "SIGHUP: admin token not read again (%s): the old one stays",
                terr.msg);
    } else if (sodium_memcmp(hash, c->admin_token_hash, PC_HASH_LEN) == 0) {
        pc_info("controller", "SIGHUP: admin token in %s unchanged", c->token_path);
    } else {
        memcpy(c->admin_token_hash, hash, PC_HASH_LEN);
        pc_api_set_admin_token_hash(c->api, hash);
        pc_info("controller",
                "SIGHUP: admin token replaced from %s: the previous one no longer works",
                c->token_path);
    }
    sodium_memzero(hash, sizeof(hash));
    pc_tls_stamp_report(&c->tls_stamp, "controller", "TLS certificate");
    if (c->audit != NULL) {
        /* logrotate moved the file: write to a new one at the path. */
        pc_err err;
        if (pc_audit_reopen(c->audit, &err) == PC_OK)
            pc_info("controller", "SIGHUP: audit log %s reopened", c->cfg.audit_log);
        else
            pc_warn("controller", "SIGHUP: %s; still writing to the old file", err.msg);
    }
}

/* libraft's TCP transport cannot say which port it bound, and the peers
 * must know each other's raft address before any starts: raft_listen
 * needs a real port, unlike the other listen addresses. */
static int check_raft_listen(const char *addr, pc_err *err)
{
    char url[300];
    nng_url *u = NULL;
    if ((size_t)snprintf(url, sizeof(url), "tcp://%s", addr) >= sizeof(url) ||
        nng_url_parse(&u, url) != 0)
        return pc_err_set(err, PC_E_INVALID, "raft_listen '%s' is not HOST:PORT", addr);
    bool no_port = u->u_port[0] == '\0';
    bool port0 = strspn(u->u_port, "0") == strlen(u->u_port);
    nng_url_free(u);
    if (no_port)
        return pc_err_set(err, PC_E_INVALID, "raft_listen '%s' is not HOST:PORT", addr);
    if (port0)
        return pc_err_set(err, PC_E_INVALID,
                          "raft_listen '%s' needs a port other than 0: the peers must know each "
                          "other's raft address before they start",
                          addr);
    return PC_OK;
}

/* Checks the configuration beyond its syntax: keys, the node's name, TLS
 * for every listen address. */
static int controller_configure(controller *c, pc_err *err)
{
    if (c->cfg.signing_key.count == 0)
        return pc_err_set(err, PC_E_INVALID,
                          "--signing-key is required (create one with `popcast keygen`)");
    char hostname[256] = "controller";
    gethostname(hostname, sizeof(hostname) - 1);
    snprintf(c->node_id, sizeof(c->node_id), "%s", c->cfg.node_id ? c->cfg.node_id : hostname);
    if (!pc_id_valid(c->node_id))
        return pc_err_set(err, PC_E_INVALID, "node_id must be [A-Za-z0-9._-]{1,128}");
    int rc;
    /* Stamped before nng reads it: a change in between shows as a change. */
    pc_tls_stamp_take(&c->tls_stamp, c->cfg.tls_cert_key);
    if (c->cfg.tls_cert_key != NULL &&
        (rc = pc_tls_server_config(c->cfg.tls_cert_key, &c->tls, err)) != PC_OK)
        return rc;
    const char *urls[][2] = {{c->cfg.api_listen, "api_listen"},
                             {c->cfg.pub_listen, "pub_listen"},
                             {c->cfg.sync_listen, "sync_listen"}};
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++)
        if ((rc = pc_tls_check_url(urls[i][0], c->tls, c->cfg.allow_plaintext, urls[i][1], err)) !=
            PC_OK)
            return rc;
    if ((rc = pc_pop_map_parse(&c->cfg.pop_locations, &c->pops, &c->n_pops, err)) != PC_OK)
        return rc;
    return check_raft_listen(c->cfg.raft_listen, err);
}

/* Opens what does not need the event loop: the store, the keys, the
 * admin token, metrics, the Lua checker, the rollout tracker and the sync
 * server (which runs on nng's threads). */
static int controller_open(controller *c, pc_err *err)
{
    snprintf(c->token_path, sizeof(c->token_path), "%s/admin.token", c->cfg.data_dir);
    if (c->cfg.admin_token_file != NULL)
        snprintf(c->token_path, sizeof(c->token_path), "%s", c->cfg.admin_token_file);
    pc_store_options sopt = {.keep_history = true};
    int rc;
    /* A previous run's ready file goes once this process owns the store
     * (a second daemon on the same directory stops at pc_store_open). */
    if ((rc = pc_daemon_ensure_dir(c->cfg.data_dir, err)) != PC_OK ||
        (rc = load_admin_token(c->token_path, true, c->admin_token_hash, err)) != PC_OK ||
        (rc = pc_store_open(&c->store, c->cfg.data_dir, &sopt, err)) != PC_OK ||
        (c->cfg.ready_file != NULL &&
         (rc = pc_daemon_remove_ready(c->cfg.ready_file, err)) != PC_OK) ||
        (rc = load_signing_keys(c, err)) != PC_OK)
        return rc;
    pc_lua_limits limits;
    pc_lua_limits_default(&limits);
    if ((c->metrics = pc_metrics_new()) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    if (c->cfg.audit_log != NULL && (rc = pc_audit_open(&c->audit, c->cfg.audit_log, err)) != PC_OK)
        return rc;
    pc_daemon_build_info(c->metrics, "controller");
    if ((c->lua = pc_lua_adapter_new(&limits, NULL, err)) == NULL)
        return err->code;
    if ((rc = pc_watch_new(&c->watch,
                           &(pc_watch_options){.store = c->store,
                                               .max_queued_bytes = c->cfg.watch_queue_max,
                                               .max_watchers = c->cfg.watch_max,
                                               .metrics = c->metrics},
                           err)) != PC_OK)
        return rc;
    pc_rollout_options ropt = {.gone_after_ms = c->cfg.gone_after_ms,
                               .report_stale_ms = c->cfg.report_stale_ms,
                               .on_change = on_rollout_change,
                               .on_fleet = on_fleet_change,
                               .on_change_arg = c};
    if ((c->rollout = pc_rollout_new(&ropt)) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    pc_sync_server_options sopts = {.url = c->cfg.sync_listen,
                                    .store = c->store,
                                    .rollout = c->rollout,
                                    .signer = c->signer,
                                    .metrics = c->metrics,
                                    .inline_max = c->cfg.sync_inline_max,
                                    .max_reply = c->cfg.sync_max_reply,
                                    .chunk_max = PC_CHUNK_BYTES,
                                    .snapshot_lag = c->cfg.snapshot_lag,
                                    .snapshot_lag_tenants = c->cfg.snapshot_lag_tenants,
                                    .require_enrollment = c->cfg.require_enrollment,
                                    .tls = c->tls,
                                    .workers = PC_SYNC_WORKERS,
                                    .tails = c->watch};
    return pc_sync_server_start(&c->sync, &sopts, err);
}

/* Every listener is bound: says where, in the log and in the ready file.
 * The API's address goes to the cluster too (api_listen may name port 0,
 * and /v1/cluster shows this node's address). */
static int controller_ready(controller *c, pc_err *err)
{
    const char *api = pc_api_bound_url(c->api);
    const char *pub = pc_publisher_bound_url(c->pub);
    const char *sync = pc_sync_server_bound_url(c->sync);
    pc_cluster_set_api_url(c->cluster, api);
    char kid[PC_HEX_KEY_ID_LEN] = "?";
    pc_public_key current;
    pc_err kerr;
    if (pc_signer_current_public(c->signer, &current, NULL, &kerr) == PC_OK)
        pc_hex(kid, current.id, PC_KEY_ID_LEN);
    pc_info("controller",
            "%s ready: api %s, publishing on %s, sync on %s, raft id %llu on %s (%zu peers), "
            "signing key %s",
            c->node_id, api, pub, sync, (unsigned long long)c->cfg.raft_id, c->cfg.raft_listen,
            c->cfg.peers.count, kid);
    if (c->cfg.ready_file == NULL)
        return PC_OK;
    json_t *doc = json_pack("{s:I,s:s,s:s,s:s,s:s}", "pid", (json_int_t)getpid(), "api", api, "pub",
                            pub, "sync", sync, "raft", c->cfg.raft_listen);
    if (doc == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    int rc = pc_daemon_write_ready(c->cfg.ready_file, doc, err);
    json_decref(doc);
    return rc;
}

/* Starts what runs on the loop: publisher, heartbeats, raft, the write
 * pipeline, the API, and the periodic tick and signals. */
static int controller_start(controller *c, pc_err *err)
{
    uv_loop_init(&c->loop);
    c->loop_open = true;
    snprintf(c->raft_dir, sizeof(c->raft_dir), "%s/raft", c->cfg.data_dir);
    pc_cluster_options copt = {.loop = &c->loop,
                               .store = c->store,
                               .raft_dir = c->raft_dir,
                               .scratch_dir = c->cfg.data_dir,
                               .id = c->cfg.raft_id,
                               .raft_address = c->cfg.raft_listen,
                               .api_url = c->cfg.api_listen,
                               .peers = &c->cfg.peers,
                               .join = c->cfg.raft_join,
                               .election_ms = (unsigned)c->cfg.raft_election_ms,
                               .heartbeat_ms = (unsigned)c->cfg.raft_heartbeat_ms,
                               .snapshot_threshold = (unsigned)c->cfg.raft_snapshot_threshold,
                               .snapshot_trailing = (unsigned)c->cfg.raft_snapshot_trailing,
                               .on_applied = on_applied,
                               .on_applied_arg = c,
                               .on_deployment = on_deployment,
                               .on_leader = on_leader,
                               .metrics = c->metrics};
    pc_api_options api_opt = {.listen_url = c->cfg.api_listen,
                              .node_id = c->node_id,
                              .max_bundle = c->cfg.max_bundle,
                              .runtimes = &c->cfg.runtimes,
                              .lua = c->lua,
                              .signer = c->signer,
                              .tls = c->tls,
                              .token_write_rate = (double)c->cfg.token_write_rate,
                              .token_write_burst = (double)c->cfg.token_write_burst,
                              .admin_write_rate = (double)c->cfg.admin_write_rate,
                              .admin_write_burst = (double)c->cfg.admin_write_burst,
                              .loop = &c->loop_health,
                              .audit = c->audit,
                              .deploy_canary_pop = c->cfg.deploy_canary_pop,
                              .deploy_bake_ms = c->cfg.deploy_bake_ms,
                              .cors_origins = &c->cfg.cors_origins,
                              .keep_alive = c->cfg.api_keep_alive,
                              .watch = c->watch,
                              .pops = c->pops,
                              .n_pops = c->n_pops};
    memcpy(api_opt.admin_token_hash, c->admin_token_hash, PC_HASH_LEN);
    int rc;
    if ((rc = pc_publisher_open(&c->pub, c->cfg.pub_listen, c->tls, (int)c->cfg.pub_sendbuf,
                                pc_pub_message_max(c->cfg.max_bundle), err)) != PC_OK ||
        (rc = pc_heartbeat_start(&c->heartbeat, &c->loop, c->cfg.heartbeat_ms, c->node_id,
                                 c->signer, c->store, c->pub, err)) != PC_OK ||
        (rc = pc_daemon_ensure_dir(c->raft_dir, err)) != PC_OK ||
        (rc = pc_cluster_start(&c->cluster, &copt, err)) != PC_OK ||
        (rc = pc_pipeline_new(&c->pipeline, &c->loop, c->store, c->signer, c->cluster,
                              &(pc_pipeline_options){
                                  .max_pending = c->cfg.max_pending,
                                  .batch_max_changes = c->cfg.commit_batch_max,
                                  .batch_max_bytes = c->cfg.commit_batch_bytes,
                                  .metrics = c->metrics,
                              },
                              err)) != PC_OK)
        return rc;
    api_opt.cluster = c->cluster;
    pc_sync_server_set_pipeline(c->sync, c->pipeline);
    if ((c->deployer = pc_deployer_new(
             &(pc_deployer_options){.store = c->store,
                                    .pipeline = c->pipeline,
                                    .rollout = c->rollout,
                                    .cluster = c->cluster,
                                    .interval_ms = c->cfg.deploy_interval_ms})) == NULL)
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    if ((rc = pc_api_start(&c->api, &api_opt, c->store, c->pipeline, c->rollout, c->metrics,
                           err)) != PC_OK)
        return rc;
    uv_timer_init(&c->loop, &c->tick);
    c->tick.data = c;
    uv_timer_start(&c->tick, on_tick, 100, 100);
    pc_health_loop_tick(&c->loop_health); /* about to run */
    uv_signal_init(&c->loop, &c->sigint);
    uv_signal_init(&c->loop, &c->sigterm);
    c->sigint.data = c->sigterm.data = c;
    uv_signal_start(&c->sigint, on_signal, SIGINT);
    uv_signal_start(&c->sigterm, on_signal, SIGTERM);
    uv_signal_init(&c->loop, &c->sighup);
    c->sighup.data = c;
    uv_signal_start(&c->sighup, on_sighup, SIGHUP);
    int rc_ready = controller_ready(c, err);
    /* systemd (Type=notify): every listener is bound. */
    if (rc_ready == PC_OK)
        pc_sd_notify("READY=1\nSTATUS=serving");
    return rc_ready;
}

/* Stops and frees everything. After a failed start, what did start is
 * stopped in order: writes and waits answered first (the HTTP server's
 * stop waits for every handler), then raft, which closes the pipeline. */
static void controller_close(controller *c)
{
    if (c->loop_open) {
        if (c->sync != NULL)
            pc_sync_server_set_pipeline(c->sync, NULL);
        pc_deployer_stop(c->deployer);
        if (c->pipeline != NULL)
            pc_pipeline_shutdown(c->pipeline);
        if (c->rollout != NULL)
            pc_rollout_cancel_waits(c->rollout);
        pc_api_stop(c->api);
        c->api = NULL;
        if (c->heartbeat != NULL)
            pc_heartbeat_stop(c->heartbeat);
        c->heartbeat = NULL;
        if (c->cluster != NULL)
            pc_cluster_stop(c->cluster, cluster_stopped, c);
        else if (c->pipeline != NULL)
            pc_pipeline_close(c->pipeline);
        uv_run(&c->loop, UV_RUN_DEFAULT); /* let closed handles finish */
        uv_loop_close(&c->loop);
        pc_cluster_free(c->stopped_cluster);
        c->stopped_cluster = NULL;
        pc_publisher_close(c->pub);
    }
    pc_sync_server_stop(c->sync);
    pc_audit_close(c->audit);      /* after the API: its last answers are written */
    pc_deployer_free(c->deployer); /* the loop is closed: no step is answered any more */
    pc_watch_free(c->watch);       /* after the sync server: reports feed it */
    pc_rollout_free(c->rollout);
    if (c->lua)
        c->lua->destroy(c->lua);
    pc_metrics_free(c->metrics);
    pc_store_close(c->store);
    if (c->tls != NULL)
        nng_tls_config_free(c->tls);
    pc_signer_free(c->signer);
    for (size_t i = 0; i < c->n_keys; i++)
        pc_signing_key_wipe(&c->keys[i]);
    sodium_memzero(c->admin_token_hash, sizeof(c->admin_token_hash));
    free(c->pops);
    pc_config_free(options, &c->cfg);
    /* No nng_fini: in nng 1.5.2 it can race a task thread still reaping
     * an HTTP server's (TLS) connections and panic the process at exit
     * ("pthread_mutex_lock: Invalid argument", seen in test_tls). What nng
     * still holds at exit stays reachable from its own lists and threads;
     * the sanitizer build judges the leaks that are left (docs/testing.md). */
}

/* popcast-controller backup|restore: the store's tools, run beside (backup)
 * or instead of (restore) the daemon. */
typedef struct store_tool_config {
    char *data_dir;
    char *out;
    char *from;
} store_tool_config;

static const pc_cfg_option backup_options[] = {
    {"data_dir", PC_CFG_STRING, offsetof(store_tool_config, data_dir),
     "/var/lib/popcast/controller", 0, 0, "the running controller's data directory"},
    {"out", PC_CFG_STRING, offsetof(store_tool_config, out), NULL, 0, 0,
     "the backup file to write (created 0600; never overwritten); required"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

static const pc_cfg_option restore_options[] = {
    {"data_dir", PC_CFG_STRING, offsetof(store_tool_config, data_dir),
     "/var/lib/popcast/controller", 0, 0, "an empty data directory (created if missing)"},
    {"from", PC_CFG_STRING, offsetof(store_tool_config, from), NULL, 0, 0,
     "the backup file to restore; required"},
    {NULL, 0, 0, NULL, 0, 0, NULL},
};

/* argv[1] is "backup" or "restore". Exit 0, 1 (it failed) or 2 (usage). */
static int store_tool(int argc, char **argv)
{
    bool backup = strcmp(argv[1], "backup") == 0;
    const pc_cfg_option *opts = backup ? backup_options : restore_options;
    store_tool_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    pc_err err;
    /* argv[1] is the tool's name, where the parser expects the program's. */
    int rc = pc_config_load(opts, &cfg, argc - 1, argv + 1, &err);
    if (rc == 1) {
        pc_config_free(opts, &cfg);
        return 0; /* --help */
    }
    const char *missing =
        backup ? (cfg.out == NULL ? "--out" : NULL) : (cfg.from == NULL ? "--from" : NULL);
    if (rc != PC_OK || missing != NULL) {
        fprintf(stderr, "popcast-controller %s: %s\n", argv[1],
                rc != PC_OK ? err.msg
                : backup    ? "--out FILE is required"
                            : "--from FILE is required");
        pc_config_free(opts, &cfg);
        return 2;
    }
    uint64_t seq = 0;
    if (backup)
        rc = pc_store_backup(cfg.data_dir, cfg.out, &seq, &err);
    else if ((rc = pc_daemon_ensure_dir(cfg.data_dir, &err)) == PC_OK)
        rc = pc_store_restore(cfg.from, cfg.data_dir, &seq, &err);
    if (rc != PC_OK)
        fprintf(stderr, "popcast-controller %s: %s\n", argv[1], err.msg);
    else if (backup)
        printf("backed up %s to %s (applied seq %llu)\n", cfg.data_dir, cfg.out,
               (unsigned long long)seq);
    else
        printf("restored %s into %s (applied seq %llu): start this node alone, then add the "
               "others (docs/operations.md \"Backups and recovery\")\n",
               cfg.from, cfg.data_dir, (unsigned long long)seq);
    pc_config_free(opts, &cfg);
    return rc == PC_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "backup") == 0 || strcmp(argv[1], "restore") == 0))
        return store_tool(argc, argv);
    controller c;
    memset(&c, 0, sizeof(c));
    pc_err err;
    pc_err_clear(&err);
    int rc =
        pc_daemon_configure("popcast-controller", options, &c.cfg, argc, argv, &c.cfg.log_level);
    if (rc != PC_DAEMON_RUN) {
        pc_config_free(options, &c.cfg);
        return rc == PC_DAEMON_EXIT_OK ? 0 : 1;
    }
    int exit_code = 1;
    if (controller_configure(&c, &err) != PC_OK) {
        fprintf(stderr, "popcast-controller: %s\n", err.msg);
    } else if (controller_open(&c, &err) != PC_OK || controller_start(&c, &err) != PC_OK) {
        pc_error("controller", "%s", err.msg);
    } else {
        uv_run(&c.loop, UV_RUN_DEFAULT);
        exit_code = 0;
    }
    /* Bounded, like a stop on a signal, whatever happened before. */
    pc_daemon_watchdog_arm("controller", c.cfg.shutdown_timeout_ms);
    controller_close(&c);
    pc_daemon_watchdog_disarm();
    if (pc_nng_abandoned()) {
        /* As the agent does: only an nng socket stuck in nng 1.5.2's
         * close is left; exit's handlers would walk its half-closed
         * state. */
        pc_info("controller", "stopped (an nng socket left unclosed, see above)");
        fflush(NULL);
        _exit(exit_code);
    }
    return exit_code;
}
