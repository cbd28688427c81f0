/* tail_shipper.h - sends tenants' log lines to the controllers that tail
 * them (popcast tail; docs/protocol.md "Tail").
 *
 * One thread, one req socket per controller (never a relay's: tails are
 * for the controllers' API). Every poll_ms it asks each controller which
 * tenants it tails (a batch with no lines, unsigned), and the buffer keeps
 * lines for those only. While some tenant is tailed, every flush_ms it
 * takes what the buffer holds and sends each controller the lines and
 * drop counts of the tenants that controller asked for, signed with the
 * agent's key; the answer renews the ask. A controller that does not
 * answer loses the lines meant for it (counted in
 * popcast_agent_tail_lost_total) and is asked again at its next poll: the
 * request path never waits for any of this. */
#ifndef PC_TAIL_SHIPPER_H
#define PC_TAIL_SHIPPER_H

#include <nng/nng.h>
#include <stdint.h>

#include "config.h"
#include "crypto.h"
#include "err.h"
#include "metrics.h"
#include "tail_buffer.h"
#include "tls.h"

typedef struct pc_tail_shipper pc_tail_shipper;

typedef struct pc_tail_shipper_options {
    const pc_strlist *urls; /* the controllers' sync addresses, in the buffer's order */
    pc_tail_buffer *buffer;
    const char *agent_id;
    const char *pop;
    const pc_signing_key *identity;
    nng_tls_config *tls;
    uint64_t poll_ms;            /* default 2000 */
    uint64_t flush_ms;           /* default 200 */
    uint64_t request_timeout_ms; /* one batch's answer */
    pc_metrics *metrics;
} pc_tail_shipper_options;

int pc_tail_shipper_start(pc_tail_shipper **out, const pc_tail_shipper_options *opt, pc_err *err);
/* Stops the thread (a request in flight ends within its timeout) and
 * frees. NULL is a no-op. */
void pc_tail_shipper_stop(pc_tail_shipper *s);

#endif
