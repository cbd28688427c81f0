/* daemon.h - the start-up steps popcast-controller and popcast-agent share:
 * process set-up, configuration and log level, and data directories. */
#ifndef PC_DAEMON_H
#define PC_DAEMON_H

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

#endif
