/* traffic.h - what each tenant version's code did on this agent: requests,
 * errors, limit kills and 5xx answers, counted by the edge and shown to
 * the controllers in status reports (TenantStatus.traffic), so that the
 * fleet can judge a version by how it serves, not only by whether it
 * loaded.
 *
 * Counts are kept for the PC_TRAFFIC_VERSIONS newest versions of each
 * tenant that served a request since the agent started (an older version
 * still finishing requests after a swap counts while it is one of them),
 * and restart from zero with the agent. Reports do not carry every count
 * as it moves: the syncer publishes the counts every traffic interval
 * (pc_traffic_publish), and reports show the published ones, so a busy
 * tenant does not make every report carry it.
 *
 * Thread safe: the edge counts from its threads, the syncer reads. */
#ifndef PC_TRAFFIC_H
#define PC_TRAFFIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "popcast.pb-c.h"

#define PC_TRAFFIC_VERSIONS 3

typedef struct pc_traffic pc_traffic;

typedef enum pc_traffic_outcome {
    PC_TRAFFIC_OK,    /* the handler answered (status below 500) */
    PC_TRAFFIC_5XX,   /* the handler answered with a status >= 500 */
    PC_TRAFFIC_ERROR, /* the handler failed, or the edge refused its answer */
    PC_TRAFFIC_LIMIT, /* a sandbox limit stopped it */
} pc_traffic_outcome;

typedef struct pc_version_traffic {
    uint64_t version, requests, errors, limit_kills, status_5xx;
} pc_version_traffic;

/* since_unix_ms: when counting started (shown as
 * AgentStatus.traffic_since_unix_ms). NULL when out of memory. */
pc_traffic *pc_traffic_new(int64_t since_unix_ms);
void pc_traffic_free(pc_traffic *t);
int64_t pc_traffic_since_ms(const pc_traffic *t);

/* One request that ran tenant's version (an invalid tenant or version 0
 * is not counted; nor is a version older than every kept one, when
 * PC_TRAFFIC_VERSIONS newer ones are kept). Out of memory, it is lost. */
void pc_traffic_count(pc_traffic *t, const char *tenant, uint64_t version, pc_traffic_outcome o);

/* Makes the counts as they are now the published ones; true when they
 * differ from those published before. */
bool pc_traffic_publish(pc_traffic *t);

/* tenant's published counts, newest version first: how many (0 when it
 * served nothing, or nothing was published yet). */
size_t pc_traffic_get(pc_traffic *t, const char *tenant,
                      pc_version_traffic out[PC_TRAFFIC_VERSIONS]);

/* The same, as counted now (not as published): the agent's own
 * /v1/status shows these. */
size_t pc_traffic_current(pc_traffic *t, const char *tenant,
                          pc_version_traffic out[PC_TRAFFIC_VERSIONS]);

/* Sets ts->traffic (malloc'd: every element and the array, as
 * pc_applier_status_clear frees them) to ts->tenant's published counts.
 * PC_E_NOMEM leaves ts without any. */
int pc_traffic_attach(pc_traffic *t, Popcast__TenantStatus *ts);

#endif
