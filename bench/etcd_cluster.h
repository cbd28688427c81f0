/* etcd_cluster.h - a real etcd (Debian's etcd-server) on loopback, the
 * baseline some benchmarks measure popcast against in the same run.
 * ETCD_BIN overrides /usr/bin/etcd. Talks to etcd's HTTP gateway (v3 JSON:
 * keys and values base64). Fails the calling cmocka test on errors. */
#ifndef PC_BENCH_ETCD_CLUSTER_H
#define PC_BENCH_ETCD_CLUSTER_H

#include <stdbool.h>

#include "http_client.h"
#include <stddef.h>

#include "harness.h"

#define ETCD_MAX_MEMBERS 3

typedef struct etcd_cluster {
    int n;
    char client_url[ETCD_MAX_MEMBERS][64];
    pc_proc *proc[ETCD_MAX_MEMBERS];
    char dir[256];
} etcd_cluster;

const char *etcd_bin(void);
/* Members started from now on take clients on every address (for the WAN
 * testbed, whose PoPs reach the core across their links), not only on
 * loopback. */
void etcd_listen_everywhere(bool on);
bool etcd_installed(void);
/* n members (at most 3), each taking requests up to max_request_bytes
 * (0: etcd's default, 1.5 MiB). */
void etcd_start(etcd_cluster *e, int n, size_t max_request_bytes);
void etcd_stop(etcd_cluster *e);
/* PUT key = value (len bytes) through a member (a new connection, as
 * popcast's clients make); true on 200. */
bool etcd_put(etcd_cluster *e, int member, const char *key, const void *value, size_t len);
/* The same put over a session's kept connection (a session opened on one
 * member's client_url). */
bool etcd_put_kept(pc_http_session *s, const char *key, const void *value, size_t len);

/* n watchers of key, each a `curl` process streaming POST /v3/watch into
 * a file of its own (Debian's etcd-server has no etcdctl). */
typedef struct etcd_watchers {
    int n;
    pc_proc **proc;
    char (*file)[300];
    long *seen; /* each file's size before the change being awaited */
} etcd_watchers;

void etcd_watchers_start(etcd_watchers *w, etcd_cluster *e, const char *key, int n);
/* The same, watcher i in network namespace netns[i] (NULL: this
 * process's) reaching the member at host[i] (NULL: 127.0.0.1). */
void etcd_watchers_start_placed(etcd_watchers *w, etcd_cluster *e, const char *key, int n,
                                const char *const *netns, const char *const *host);
/* Call before a put: remembers where each watcher's output stands. */
void etcd_watchers_mark(etcd_watchers *w);
/* Waits until every watcher received at least min_bytes more (the put's
 * event, whose value is base64 of the value); the milliseconds from
 * since_ms (pc_mono_ms_frac) to the last one, or -1 after timeout_ms. */
double etcd_watchers_wait(etcd_watchers *w, size_t min_bytes, double since_ms, int timeout_ms);
void etcd_watchers_stop(etcd_watchers *w);

#endif
