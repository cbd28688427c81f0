/* sd_notify.h - telling systemd how a daemon is doing (Type=notify and
 * WatchdogSec=), by the datagram protocol of sd_notify(3): "READY=1" once
 * every listener is bound, "STOPPING=1" when a stop begins, "WATCHDOG=1"
 * from the event loop, and "STATUS=..." lines. Outside systemd (no
 * NOTIFY_SOCKET) every call does nothing. The protocol is a few lines of
 * text on a unix datagram socket; it is written here rather than linking
 * libsystemd for it.
 *
 * Thread safe. */
#ifndef PC_SD_NOTIFY_H
#define PC_SD_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* Sends state (newline-separated assignments) to $NOTIFY_SOCKET, a path
 * or, with a leading '@', an abstract socket. False when there is no such
 * socket or the send failed (never fatal: the caller goes on). */
bool pc_sd_notify(const char *state);

/* The watchdog interval systemd asks for ($WATCHDOG_USEC, when
 * $WATCHDOG_PID is unset or this process), in microseconds; 0: none. */
uint64_t pc_sd_watchdog_usec(void);

/* Called from the daemon's event loop at every timer tick (now_ms:
 * monotonic): sends WATCHDOG=1 when half the interval has passed since
 * the last one. A loop that stops ticking stops the pings, and systemd
 * restarts the daemon. */
void pc_sd_watchdog_tick(int64_t now_ms);

#endif
