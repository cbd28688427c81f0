/* heartbeat.h - the controller's signed heartbeat: every interval it
 * publishes the head seq and the time, signed, with an expiry. Agents use
 * it to notice they are behind (head > applied: catch up) and to know they
 * are fresh (no valid heartbeat for a while: report stale). */
#ifndef PC_HEARTBEAT_H
#define PC_HEARTBEAT_H

#include <stdint.h>
#include <uv.h>

#include "crypto.h"
#include "err.h"
#include "publisher.h"
#include "signer.h"
#include "store.h"

typedef struct pc_heartbeat pc_heartbeat;

/* interval_ms 0 disables heartbeats (*out is then NULL). A heartbeat
 * expires after 3 intervals, and never sooner than 30 s. key, store and pub must outlive it. */
int pc_heartbeat_start(pc_heartbeat **out, uv_loop_t *loop, uint64_t interval_ms,
                       const char *controller_id, pc_signer *signer, pc_store *store,
                       pc_publisher *pub, pc_err *err);
/* Loop thread; frees once the loop closes the timer. */
void pc_heartbeat_stop(pc_heartbeat *h);

/* Publishes one heartbeat now. */
void pc_heartbeat_send(pc_heartbeat *h);
/* Loop thread, after a commit: publishes a heartbeat shortly after the
 * last of a burst of commits (debounced). h may be NULL (no heartbeats). */
void pc_heartbeat_kick(pc_heartbeat *h);

#endif
