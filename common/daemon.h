/* daemon.h - the start-up steps popcast-controller and popcast-agent share:
 * process set-up, configuration and log level, and data directories. */
#ifndef PC_DAEMON_H
#define PC_DAEMON_H

#include <jansson.h>
#include <stdint.h>

#include "config.h"
#include "metrics.h"
#include "err.h"

#define PC_DAEMON_RUN     0  /* configured: go on */
#define PC_DAEMON_EXIT_OK 1  /* --help was printed: exit 0 */
#define PC_DAEMON_FAIL    -1 /* the reason is on stderr, prefixed by program */

/* The exit status of a daemon whose orderly stop outlived its
 * shutdown_timeout_ms (the status timeout(1) uses for a timeout). */
#define PC_DAEMON_EXIT_STOP_TIMEOUT 124

/* `PROGRAM --version` prints "PROGRAM VERSION" and returns
 * PC_DAEMON_EXIT_OK. `PROGRAM --check-config [FLAGS]` loads the
 * configuration as a start would (the --config file and the flags), says
 * whether it loads, and returns PC_DAEMON_EXIT_OK or PC_DAEMON_FAIL
 * without starting anything. Otherwise: ignores SIGPIPE (a peer that went away
 * must not kill the daemon) and, until the daemon handles it, SIGHUP;
 * initialises libsodium, loads the configuration into cfg (defaults, then
 * the --config file, then flags: config.h) and applies the log level that
 * *log_level names once loaded. */
int pc_daemon_configure(const char *program, const pc_cfg_option *opts, void *cfg, int argc,
                        char **argv, char *const *log_level);

/* SIGHUP (docs/operations.md "Signals"): reads the configuration again
 * exactly as at start (defaults, the --config file, the flags) and applies
 * what can change without a restart: the log level. It logs what it did,
 * as component; a configuration that no longer loads changes nothing and
 * says why. cfg_size is the size of the daemon's configuration struct and
 * log_level_offset the offset of its log_level (char *). Loop thread.
 * Until a daemon listens for SIGHUP itself, pc_daemon_configure makes it
 * harmless (it used to end the process). */
void pc_daemon_reload(const char *component, const pc_cfg_option *opts, size_t cfg_size,
                      size_t log_level_offset);

/* Creates path and its missing parents, mode 0700 (data directories hold
 * keys and tokens). An existing directory is fine. */
int pc_daemon_ensure_dir(const char *path, pc_err *err);

/* popcast_build_info{daemon,version} 1: which build runs where. */
void pc_daemon_build_info(pc_metrics *m, const char *daemon);

/* The ready file (option ready_file): a JSON object with the daemon's pid
 * and the addresses it actually bound (listen options may name port 0),
 * for supervisors and tests. pc_daemon_remove_ready removes a previous
 * run's file at start, so a waiter never reads stale addresses; an
 * ENOENT is fine. pc_daemon_write_ready writes doc atomically: a
 * temporary file in the same directory, fsync, rename over path, mode
 * 0644; a reader sees either no file or the whole document. */
int pc_daemon_remove_ready(const char *path, pc_err *err);
int pc_daemon_write_ready(const char *path, const json_t *doc, pc_err *err);

/* The shutdown watchdog: a daemon told to stop ends within a bound,
 * whatever a library it waits for does (nng 1.5.2's nng_close, rarely,
 * never returns). Arming starts a thread that, unless disarmed within
 * timeout_ms, logs that the orderly stop is taking too long (as
 * component) and ends the process with _exit(PC_DAEMON_EXIT_STOP_TIMEOUT):
 * no cleanup, as safe as a kill -9 (LMDB commits are crash safe).
 * timeout_ms 0: no watchdog. Any thread; arming again keeps the first
 * deadline. If the thread cannot start, a warning is logged and the stop
 * goes on unbounded. Disarm (it joins the thread) once the orderly stop
 * has finished, before returning from main. */
void pc_daemon_watchdog_arm(const char *component, uint64_t timeout_ms);
void pc_daemon_watchdog_disarm(void);

#endif
