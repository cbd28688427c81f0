/* watch.h - the API's event stream (docs/api.md "Watch"), served as
 * Server-Sent Events on GET /v1/watch.
 *
 * Two kinds of events go to each watcher:
 *
 * - every committed log entry ("entry"), in seq order, resumable: a
 *   watcher starts after a seq of its choice and gets every entry after
 *   it, then each new one. Entries are read from the store through each
 *   watcher's own cursor, so a watcher that reads slowly costs no memory
 *   for them; it only falls behind. When the log no longer holds its
 *   next entry (an older part was replaced by a snapshot), it gets a
 *   "compacted" event and is closed: it lists again and watches from
 *   there, as after etcd's "compacted" or Kubernetes' 410.
 * - events that are not in the log ("deployment": a deployment record as
 *   committed; "rollout": an agent's report changed what it serves of a
 *   tenant; "fleet": an agent's standing; "cluster": the leader), live
 *   only: a watcher gets those that happen while it is
 *   connected. Each is queued for the watcher, up to max_queued_bytes;
 *   a watcher whose queue is full is cut (a "cut" event, then the close):
 *   it never slows the controller down.
 *
 * Every event's SSE id is the log seq it follows (an entry's own seq), so
 * a client that reconnects with Last-Event-ID (or ?from=) misses no entry.
 * A token scoped to tenants watches those tenants' events only.
 *
 * All functions are safe from any thread. */
#ifndef PC_WATCH_H
#define PC_WATCH_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"
#include "httpd.h"
#include "metrics.h"
#include "names.h"
#include "store.h"

#define PC_WATCH_MAX_TENANTS 16

typedef struct pc_watch pc_watch;

typedef struct pc_watch_options {
    pc_store *store;
    size_t max_queued_bytes; /* live events per watcher (default 1 MiB) */
    size_t max_watchers;     /* more are refused, 503 (default 1024) */
    uint64_t keepalive_ms;   /* a comment line after this much silence (default 15000) */
    int write_timeout_ms;    /* a watcher that reads nothing so long is cut (default 30000) */
    pc_metrics *metrics;     /* popcast_controller_watchers, _watch_cut_total (optional) */
} pc_watch_options;

/* What a watcher may see: everything, or these tenants' events. */
typedef struct pc_watch_scope {
    bool all;
    char tenants[PC_WATCH_MAX_TENANTS][PC_TENANT_MAX + 1];
    size_t n;
} pc_watch_scope;

int pc_watch_new(pc_watch **out, const pc_watch_options *opt, pc_err *err);
/* Closes every watcher (their connections); new ones are refused and
 * events dropped from then on. */
void pc_watch_stop(pc_watch *w);
/* Stops, then frees. */
void pc_watch_free(pc_watch *w);

/* Whether a watch from seq `from` can start: PC_E_COMPACTED (410) when
 * the log no longer holds the entry after it, PC_E_UNAVAILABLE when
 * max_watchers watch already. */
int pc_watch_check(pc_watch *w, uint64_t from, pc_err *err);
/* A new watcher on st, for entries after `from`, then live events. */
void pc_watch_add(pc_watch *w, pc_httpd_stream *st, uint64_t from, const pc_watch_scope *scope);

/* Tails (popcast tail; docs/api.md "Tail").
 *
 * A tail is a watcher of one tenant's log lines from the agents: it gets
 * no entries and none of the events above, only what pc_watch_tail_event
 * sends for its tenant, with the same bounded queue (a tail that reads too
 * slowly is cut). Agents learn which tenants are tailed from
 * pc_watch_tailed, and send lines for those only. */
void pc_watch_add_tail(pc_watch *w, pc_httpd_stream *st, const char *tenant);
/* A tail event (type "line" or "dropped") for tenant's tails; data taken. */
void pc_watch_tail_event(pc_watch *w, const char *tenant, const char *type, json_t *data);
/* The tenants with a tail now: fills up to max names into out, returns
 * how many it filled. */
size_t pc_watch_tailed(pc_watch *w, char (*out)[PC_TENANT_MAX + 1], size_t max);

/* New entries were applied: watchers that caught up read on. */
void pc_watch_entries_applied(pc_watch *w);
/* A live event of type for tenant (NULL: every watcher's), data as JSON
 * (taken). */
void pc_watch_event(pc_watch *w, const char *type, const char *tenant, json_t *data);
/* Periodically: keepalives to silent watchers. */
void pc_watch_tick(pc_watch *w, int64_t now_ms);

/* Watchers connected now; watchers cut since the start (slow readers). */
size_t pc_watch_count(pc_watch *w);
uint64_t pc_watch_cut_total(pc_watch *w);

/* The SSE text of one event (for tests and the stream): "id: SEQ\n"
 * "event: TYPE\n" "data: JSON\n\n"; malloc'd, NULL when out of memory. */
char *pc_watch_format(uint64_t id, const char *type, json_t *data, size_t *len);

#endif
