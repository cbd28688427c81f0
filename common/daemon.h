/* daemon.h - the start-up steps popcast-controller and popcast-agent share:
 * process set-up, configuration and log level, and data directories. */
#ifndef PC_DAEMON_H
#define PC_DAEMON_H

#include <jansson.h>

#include "config.h"
#include "err.h"

#define PC_DAEMON_RUN     0  /* configured: go on */
#define PC_DAEMON_EXIT_OK 1  /* --help was printed: exit 0 */
#define PC_DAEMON_FAIL    -1 /* the reason is on stderr, prefixed by program */

/* Ignores SIGPIPE (a peer that went away must not kill the daemon),
 * initialises libsodium, loads the configuration into cfg (defaults, then
 * the --config file, then flags: config.h) and applies the log level that
 * *log_level names once loaded. */
int pc_daemon_configure(const char *program, const pc_cfg_option *opts, void *cfg, int argc,
                        char **argv, char *const *log_level);

/* Creates path and its missing parents, mode 0700 (data directories hold
 * keys and tokens). An existing directory is fine. */
int pc_daemon_ensure_dir(const char *path, pc_err *err);

/* The ready file (option ready_file): a JSON object with the daemon's pid
 * and the addresses it actually bound (listen options may name port 0),
 * for supervisors and tests. pc_daemon_remove_ready removes a previous
 * run's file at start, so a waiter never reads stale addresses; an
 * ENOENT is fine. pc_daemon_write_ready writes doc atomically: a
 * temporary file in the same directory, fsync, rename over path, mode
 * 0644; a reader sees either no file or the whole document. */
int pc_daemon_remove_ready(const char *path, pc_err *err);
int pc_daemon_write_ready(const char *path, const json_t *doc, pc_err *err);

#endif
