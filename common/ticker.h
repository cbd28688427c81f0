/* ticker.h - a thread that runs one function every interval until it is
 * stopped: the shape of the agent's periodic chores (the edge's
 * connection sweeper, its health prober).
 *
 * The function runs on the ticker's thread, never twice at once, first
 * one interval after the start. A stop wakes the thread at once (it does
 * not wait out the interval), waits for a run in progress to end, and
 * returns only when the function will never run again. */
#ifndef PC_TICKER_H
#define PC_TICKER_H

#include <stdint.h>

#include "err.h"

typedef struct pc_ticker pc_ticker;

/* interval_ms >= 1. PC_E_INVALID for 0 or no function; PC_E_NOMEM when
 * the thread cannot start. */
int pc_ticker_start(pc_ticker **out, uint64_t interval_ms, void (*fn)(void *arg), void *arg,
                    pc_err *err);
/* Stops and frees t (NULL: nothing). Not from fn itself. */
void pc_ticker_stop(pc_ticker *t);

#endif
