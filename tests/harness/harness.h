/* harness.h - what the integration tests need to run popcast for real:
 * temp dirs, reserved loopback ports, child processes with their logs,
 * HTTP calls, and fixtures that start a controller or an agent and wait
 * until it answers. Every process a test starts is killed at exit, pass or
 * fail.
 *
 * Ports: daemons listen on port 0 and report what they bound in their
 * ready file (docs/operations.md, "Ports and the ready file"); the
 * fixtures read it into the api_url/pub_url/... fields. Only what must be
 * known before a daemon starts (raft addresses, the API URLs a cluster's
 * peers list names) comes from pc_test_free_port. A restarted daemon gets
 * the ports it had the first time, and the harness holds them while it is
 * down, so nothing else takes them meanwhile.
 *
 * Waiting is always "poll until a condition holds, or give up after a
 * generous bound": no test asserts how long anything took. */
#ifndef PC_HARNESS_H
#define PC_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "crypto.h"
#include "http_client.h"

/* Bounds for waits: generous because CI runs sanitizer builds on 2 cores. */
#define PC_TEST_START_TIMEOUT_MS    30000
#define PC_TEST_CONVERGE_TIMEOUT_MS 60000

void pc_test_init(void); /* crypto init, SIGPIPE ignored, cleanup at exit */
int64_t pc_test_now_ms(void);
void pc_test_sleep_ms(int ms);
/* A fresh directory under $POPCAST_TEST_TMP (or /tmp), removed with
 * everything in it when the process that made it exits normally (after
 * the daemons it started are killed), unless POPCAST_TEST_KEEP is set. */
void pc_test_tmpdir(char *out, size_t cap, const char *prefix);
void pc_test_rm_rf(const char *path);
/* A loopback port reserved for this test process until it exits: a socket
 * bound to 127.0.0.1:PORT with SO_REUSEADDR, never listening. The kernel
 * gives no other bind(port 0) and no outgoing connection a port bound that
 * way, while a daemon told to listen on it can (popcast's listeners set
 * SO_REUSEADDR). Nothing listens on it until something is told to. */
int pc_test_free_port(void);
/* Lets go of every port reserved so far (for restarts, or by
 * pc_test_free_port): for a long run that starts many daemons in turn and
 * restarts none of those already stopped (benchmarks). */
void pc_test_release_ports(void);
void pc_test_write_file(const char *path, const void *data, size_t len);
/* len bytes that do not compress (xorshift64 from seed, nonzero). */
void pc_test_fill_random(uint8_t *buf, size_t len, uint64_t seed);
/* The contents of a file under the source tree, malloc'd. */
char *pc_test_source_file(const char *relpath, size_t *len);
/* A whole file, NUL-terminated (fails the test if it cannot be read). */
char *pc_test_read_file(const char *path, size_t *len);
/* Fails the test unless GET base_url + path answers 200 with exactly the
 * bytes of the source tree's file rel (e.g. "docs/openapi.yaml"). */
void pc_test_expect_serves_file(const char *base_url, const char *path, const char *rel);

#define PC_PROC_MAX_PORTS 8
typedef struct pc_proc {
    pid_t pid;
    char name[64];
    char log[512];
    int exited;
    int status;
    /* Ports the process listened on: reserved (as by pc_test_free_port)
     * once it is seen to exit, for its restart. */
    int ports[PC_PROC_MAX_PORTS];
    int n_ports;
    /* Not killed by pc_test_env_cleanup (only at exit, or when stopped):
     * the WAN testbed's links, which a benchmark keeps across envs. */
    bool outlives_env;
} pc_proc;

/* What a daemon's log says of the sanitizers: nothing; only known leaks
 * of nng 1.5.2's and libraft 0.15's own (docs/testing.md "Sanitizers");
 * or a report that fails the test. */
typedef enum {
    PC_SANITIZER_CLEAN,
    PC_SANITIZER_LIBRARY_LEAK,
    PC_SANITIZER_REPORT
} pc_sanitizer_verdict;
pc_sanitizer_verdict pc_test_sanitizer_verdict(const char *log);

/* A JSON-lines file (an audit or access log), each line parsed: fails
 * the test on a line that is not one JSON object. */
json_t *pc_test_json_lines(const char *path);
/* Polls until the file holds at least n lines (they are written as
 * answers go out, so a client may see its answer first); fails after the
 * converge timeout. */
json_t *pc_test_wait_json_lines(const char *path, size_t n);

/* How often needle occurs in the process's log now. */
int pc_test_log_count(pc_proc *p, const char *needle);
/* Polls until the process's log holds needle at least `times` times;
 * fails the test (with the log's end) after the converge timeout. */
void pc_test_wait_log(pc_proc *p, const char *needle, int times);

/* Starts the daemon whose binary the environment variable bin_env names,
 * with --data-dir (in a new directory) and flags; fails the test unless
 * it exits 1, logs message once, and left the data directory uncreated. */
void pc_test_expect_refused_start(const char *bin_env, const char *const *flags,
                                  const char *message);

/* Starts argv[0] with stdout and stderr appended to log, in the network
 * namespace pc_test_place last named. */
pc_proc *pc_proc_spawn(const char *name, char *const argv[], const char *log);
/* SIGTERM then wait (SIGKILL after timeout); returns the exit status. */
int pc_proc_stop(pc_proc *p);
void pc_proc_kill9(pc_proc *p);
bool pc_proc_alive(pc_proc *p);
/* Polls until the process exits (true; its status in p->status) or
 * timeout_ms passes (false). Sends nothing. */
bool pc_proc_wait_exit(pc_proc *p, int timeout_ms);
void pc_proc_free(pc_proc *p);
/* Prints the last lines of the process log to stderr (after a failure). */
void pc_proc_dump_log(pc_proc *p);

/* A test fleet's shared secrets. */
typedef struct pc_test_env {
    char root[256];
    char key_path[320], pub_path[320];
    char token[80], token_path[320];
    pc_signing_key key;
} pc_test_env;

void pc_test_env_init(pc_test_env *env);
void pc_test_env_cleanup(pc_test_env *env);

/* Where daemons started from now on run and listen: in the network
 * namespace at path netns (NULL: this process's) on host (NULL:
 * 127.0.0.1). A daemon keeps its place across restarts. For the WAN
 * testbed (wan.h): controllers on 0.0.0.0 in the core, a PoP's daemons
 * in its namespace on its address. */
void pc_test_place(const char *netns, const char *host);

typedef struct pc_test_controller {
    char dir[300];
    char host[40], netns[64];
    int api_port, pub_port, sync_port, raft_port;
    char api_url[64], pub_url[64], sync_url[64], raft_address[64];
    pc_proc *proc;
} pc_test_controller;

/* extra: more flags (NULL-terminated) or NULL. The first start listens
 * where the URL fields say, or on port 0 where they are empty (raft: a
 * reserved port), then fills the fields and ports with the addresses the
 * controller bound; a restart uses them again. Fails the test, with the
 * controller's log, if it exits or writes no ready file in time. */
void pc_test_controller_start(pc_test_env *env, pc_test_controller *c, const char *const *extra);
void pc_test_controller_stop(pc_test_controller *c);

typedef struct pc_test_agent {
    char dir[300];
    char host[40], netns[64];
    char id[32];
    int edge_port, admin_port;
    char edge_url[64], admin_url[64];
    pc_proc *proc;
} pc_test_agent;

/* subscribe: pub URLs, sync: sync URLs, both NULL-terminated. Ports as
 * for controllers: port 0 on the first start, the same ones on restarts. */
void pc_test_agent_start(pc_test_env *env, pc_test_agent *a, const char *id,
                         const char *const *subscribe, const char *const *sync,
                         const char *const *extra);
/* The common case: one controller. */
void pc_test_agent_start_for(pc_test_env *env, pc_test_agent *a, const char *id,
                             pc_test_controller *c, const char *const *extra);
/* n agents of c (zeroed first), named prefix0, prefix1, ... */
void pc_test_agents_start_for(pc_test_env *env, pc_test_agent *agents, int n, const char *prefix,
                              pc_test_controller *c, const char *const *extra);
void pc_test_agent_stop(pc_test_agent *a);

typedef struct pc_test_relay {
    char dir[300];
    char netns[64];
    char id[32];
    char pub_url[64], sync_url[64], admin_url[64];
    pc_proc *proc;
} pc_test_relay;

/* A popcast-relay in pop, fed from subscribe (pub URLs) and sync
 * (controllers' sync URLs), both NULL-terminated; listening on port 0 on
 * the first start and on the same ports on restarts. */
void pc_test_relay_start(pc_test_env *env, pc_test_relay *r, const char *id, const char *pop,
                         const char *const *subscribe, const char *const *sync,
                         const char *const *extra);
void pc_test_relay_stop(pc_test_relay *r);
/* GET /v1/status of the relay, parsed (NULL if it does not answer). */
json_t *pc_test_relay_status(pc_test_relay *r);
/* The relay's head_seq (0 if it does not answer). */
uint64_t pc_test_relay_head(pc_test_relay *r);
/* Polls until the relay holds the log to head; fails the test (with its
 * log) after the converge timeout. */
void pc_test_wait_relay_head(pc_test_relay *r, uint64_t head);

/* HTTP with the env's admin token. */
int pc_test_api(pc_test_env *env, pc_test_controller *c, const char *method, const char *path,
                const char *content_type, const void *body, size_t len, pc_http_result *r);
/* GET path on the controller (admin token), parsed; NULL unless 200. */
json_t *pc_test_controller_json(pc_test_env *env, pc_test_controller *c, const char *path);
/* The controller's head seq (/v1/health; 0 if it does not answer). */
uint64_t pc_test_controller_head(pc_test_env *env, pc_test_controller *c);
/* Deploys one Lua file; returns the new version (fails the test on error). */
uint64_t pc_test_deploy_lua(pc_test_env *env, pc_test_controller *c, const char *tenant,
                            const char *source);
/* What a successful upload answered. */
typedef struct pc_test_deployed {
    uint64_t version, seq;
    char hash[PC_HEX_HASH_LEN];
} pc_test_deployed;
/* Uploads a body (content_type: text/x-lua or the archive type). Returns
 * the HTTP status (0: no answer) and never fails the test itself. */
int pc_test_try_deploy(pc_test_env *env, pc_test_controller *c, const char *tenant,
                       const char *content_type, const void *body, size_t len,
                       pc_test_deployed *out);

/* Deploys tenants t<from, 6 digits> .. t<to - 1> (a small Lua handler
 * each, answering "tenant N") from `clients` threads, each upload retried
 * while the controller asks to come back later; returns how many were not
 * acknowledged. */
int pc_test_deploy_tenants(pc_test_env *env, pc_test_controller *c, int from, int to, int clients);

/* A Lua handler answering `body` as text. */
void pc_test_lua_hello(char *out, size_t cap, const char *body);

/* GET path from tenant on the agent's edge. Returns HTTP status (0 on a
 * transport error); *version gets X-Popcast-Version (0 if absent); body
 * (if non-NULL) gets a copy of the body. */
int pc_test_edge_get(pc_test_agent *a, const char *tenant, const char *path, uint64_t *version,
                     char *body, size_t body_cap);
/* Polls until the agent serves tenant at version; false on timeout. */
bool pc_test_wait_version(pc_test_agent *a, const char *tenant, uint64_t version, int timeout_ms);
/* Polls the agent's status until tenant's live_version is version (works
 * for handlers whose every answer is an error); fails the test after the
 * converge timeout. */
void pc_test_wait_live(pc_test_agent *a, const char *tenant, uint64_t version);
/* The agent's /v1/status, parsed (NULL if unreachable). */
json_t *pc_test_agent_status(pc_test_agent *a);
/* The agent's applied_seq from its status (fails the test if it does not
 * answer). */
uint64_t pc_test_agent_applied_seq(pc_test_agent *a);
/* Waits (bounded) until the agent has received something on pub/sub (a
 * heartbeat): its subscription is live. An agent with nothing applied that
 * misses the first entries catches up with a snapshot, so tests that
 * count entries applied one by one start their stream after this. */
void pc_test_agent_wait_subscribed(pc_test_agent *a);
/* A metric's value from the agent's /metrics (0 if absent; fails the test
 * if the agent does not answer). */
uint64_t pc_test_agent_metric(pc_test_agent *a, const char *name_with_labels);
/* The value of one controller metric series from its /metrics, e.g.
 * popcast_status_refused_total{reason="unsigned"} (0 if absent; fails
 * the test if the controller does not answer). */
uint64_t pc_test_controller_metric(pc_test_controller *c, const char *series);

/* A controller cluster: n nodes (at most 5) started with each other as
 * raft peers. Ports are chosen for all before any starts. */
#define PC_TEST_MAX_NODES 5
typedef struct pc_test_cluster {
    int n;
    pc_test_controller node[PC_TEST_MAX_NODES];
    char peer[PC_TEST_MAX_NODES][160];
    char id[PC_TEST_MAX_NODES][12];
} pc_test_cluster;

/* Prepares n nodes (dirs, ports, peer list) and starts the first `start`
 * of them (the rest can be started later with pc_test_cluster_start_node,
 * e.g. to join). extra: flags for every node. */
void pc_test_cluster_init(pc_test_env *env, pc_test_cluster *cl, int n, int start,
                          const char *const *extra);
/* (Re)starts node i with the cluster's peers (join: as a node to be added,
 * not in the initial peers). */
void pc_test_cluster_start_node(pc_test_env *env, pc_test_cluster *cl, int i, bool join,
                                const char *const *extra);
/* The index of the node that says it leads, polling the running nodes;
 * -1 after timeout_ms. */
int pc_test_cluster_leader(pc_test_cluster *cl, int timeout_ms);
void pc_test_cluster_stop(pc_test_cluster *cl);
/* An agent subscribed to, and syncing with, every node of the cluster. */
void pc_test_agent_start_cluster(pc_test_env *env, pc_test_agent *a, const char *id,
                                 pc_test_cluster *cl, const char *const *extra);

/* Polls until every agent holds exactly the controller's tenants, each
 * applied and live at the controller's active version and hash; fails the
 * test (with the agent's log and status) after the converge timeout. */
void pc_test_wait_converged(pc_test_env *env, pc_test_controller *c, pc_test_agent *agents, int n);
/* True when the agent matches the controller's state right now. */
bool pc_test_agent_matches(pc_test_env *env, pc_test_controller *c, pc_test_agent *a);

/* Runs the popcast CLI against the controller with the env's token;
 * returns its exit status, with stdout and stderr in out (truncated). */
/* Sends only head (a request's head, up to its blank line) to c's API on
 * a raw connection and reads what the server answers before any body byte
 * was sent, until it closes (NUL-terminated). For refusals decided from
 * the head alone: sending the body too would race the server's close
 * against the client's write. */
void pc_test_raw_head(pc_test_controller *c, const char *head, char *answer, size_t cap);

/* Whether tests/browser/node_modules holds package (tests/run.sh's npm
 * ci). When it does not: false, after printing SKIPPED and why, if
 * tests/run.sh found the npm registry unreachable (POPCAST_NPM_UNAVAILABLE
 * set; the caller then calls cmocka's skip()); else the test fails. */
bool pc_test_npm_package(const char *package);

int pc_test_cli(pc_test_env *env, pc_test_controller *c, const char *const *args, char *out,
                size_t cap);

#endif
