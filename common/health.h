/* health.h - /livez and /readyz: a daemon's named checks, answered in
 * the form operators know from Kubernetes' API server.
 *
 *   GET /readyz           200 "ok\n" when every check passes; else 503,
 *                         with the listing below (it names the failing
 *                         check).
 *   GET /readyz?verbose   the listing, whatever the outcome:
 *                           [+]store ok
 *                           [-]leader failed: no leader known
 *                           readyz check failed
 *
 * A report holds at most PC_HEALTH_MAX_CHECKS checks; a check's detail is
 * cut at PC_HEALTH_DETAIL_MAX bytes. Not thread safe: one report belongs
 * to one request. */
#ifndef PC_HEALTH_H
#define PC_HEALTH_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "httpd.h"

#define PC_HEALTH_MAX_CHECKS 16
#define PC_HEALTH_NAME_MAX   32
#define PC_HEALTH_DETAIL_MAX 160

typedef struct pc_health_report {
    const char *endpoint; /* "livez" or "readyz" */
    unsigned n;
    struct {
        char name[PC_HEALTH_NAME_MAX];
        bool ok;
        char detail[PC_HEALTH_DETAIL_MAX]; /* why it failed */
    } checks[PC_HEALTH_MAX_CHECKS];
} pc_health_report;

void pc_health_init(pc_health_report *r, const char *endpoint);
/* Adds a check; fmt (printf) says why it failed and is ignored when ok. */
void pc_health_check(pc_health_report *r, const char *name, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
bool pc_health_ok(const pc_health_report *r);
/* The text answered (malloc'd; NULL when out of memory). */
char *pc_health_text(const pc_health_report *r, bool verbose);
/* Whether the query ("a=1&b") asks to leave check name out: exclude=name,
 * or a comma-separated list of names. Kubernetes' /readyz?exclude=etcd. */
bool pc_health_excluded(const char *query, const char *name);
/* Answers the request: 200 or 503, text/plain. verbose: the query has
 * "verbose" (with or without a value). Checks the query excludes are
 * listed as "[+]name excluded: ok" and do not count. */
void pc_health_reply(pc_httpd_req *rq, pc_health_report *r, const char *query);

/* A daemon's event loop, as its HTTP threads see it: a timer on the loop
 * stamps tick_ms; a loop that has not run a timer for
 * PC_HEALTH_LOOP_STALL_MS is stuck (livez fails: restart it). stopping is
 * set when a stop begins (readyz fails: drain it). */
#define PC_HEALTH_LOOP_STALL_MS 10000
typedef struct pc_health_loop {
    _Atomic int64_t tick_ms; /* monotonic */
    atomic_bool stopping;
} pc_health_loop;

void pc_health_loop_tick(pc_health_loop *l);
void pc_health_loop_stopping(pc_health_loop *l);
/* Adds "loop" (stamped within PC_HEALTH_LOOP_STALL_MS). */
void pc_health_check_loop(pc_health_report *r, pc_health_loop *l);
/* Adds "shutdown" (no stop begun). */
void pc_health_check_shutdown(pc_health_report *r, pc_health_loop *l);

#endif
