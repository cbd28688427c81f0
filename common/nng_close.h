/* nng_close.h - closing an nng socket within a bounded time.
 *
 * nng 1.5.2 can block in nng_close for good (nanomsg/nng#1543, #1813):
 * seen as an agent whose stop hung in pc_subscriber_close, on a loaded
 * machine, about once in a few hundred stops, with the socket's receive
 * already stopped (gdb: the loop thread in nng_close waiting for the
 * socket's pipes to go). A daemon's stop must be bounded whatever the
 * library does, so the close runs on a thread of its own and the caller
 * waits at most timeout_ms. If it has not returned by then the socket is
 * abandoned: the caller goes on with its stop, and pc_nng_abandoned tells
 * the daemon to leave with _exit once everything it owns is closed (exit's
 * handlers would walk nng's half-closed state).
 *
 * Thread safe. */
#ifndef PC_NNG_CLOSE_H
#define PC_NNG_CLOSE_H

#include <nng/nng.h>
#include <stdbool.h>
#include <stdint.h>

/* What the daemons wait: far above a normal close (milliseconds, with
 * the socket's operations stopped first), far below their stop watchdog
 * (shutdown_timeout_ms, 15 s by default). */
#define PC_NNG_CLOSE_MS 3000
/* What a close waits once another was abandoned in this process. */
#define PC_NNG_CLOSE_AFTER_HANG_MS 200

/* True when the socket closed in time; false when it was abandoned (a
 * warning naming what is logged). */
bool pc_nng_close_bounded(nng_socket sock, uint64_t timeout_ms, const char *what);
/* True once any socket was abandoned in this process. */
bool pc_nng_abandoned(void);

#endif
