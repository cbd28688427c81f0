/* exec_adapter.h - the "exec" runtime adapter, for runtimes popcast does
 * not run itself (a Node or Python process, nginx, ...). Each version is
 * written out as a directory; activation flips the tenant's `current`
 * symlink to it atomically (a new link renamed over the old one) and runs
 * the operator's reload hook. A failing hook flips the link back and is a
 * runtime error: the agent nacks, the previous version stays current.
 *
 * Layout under root:
 *   <tenant>/versions/<version>/...     the bundle's files
 *   <tenant>/current -> versions/<version>
 * A version directory appears complete or not at all (written under a
 * temporary name, then renamed). Only the current version and the one
 * before it are kept.
 *
 * The hook is a shell command (from the operator's configuration, never
 * from tenant data) run with POPCAST_ACTION (activate or deactivate),
 * POPCAST_TENANT, POPCAST_VERSION, POPCAST_DIR (the version's directory)
 * and POPCAST_CURRENT (the symlink) in its environment, and/or a signal
 * sent to the process whose pid is in a file. It must finish within
 * hook_timeout_ms (it is killed otherwise) and exit 0.
 *
 * Hooks run on the caller's thread (the agent's apply loop): a slow hook
 * delays the next apply, never a request. This adapter serves no requests
 * itself (serve is NULL): the external runtime does. */
#ifndef PC_EXEC_ADAPTER_H
#define PC_EXEC_ADAPTER_H

#include <stdint.h>

#include "adapter.h"
#include "err.h"
#include "metrics.h"

typedef struct pc_exec_options {
    const char *root;           /* created if missing */
    const char *reload_command; /* run with /bin/sh -c; NULL or "" for none */
    const char *signal_pidfile; /* NULL or "" for none */
    int signal;                 /* sent to the pid in signal_pidfile, e.g. SIGHUP */
    uint64_t hook_timeout_ms;   /* 0: 10000 */
} pc_exec_options;

/* metrics may be NULL. Returns NULL (err set) on failure. */
pc_adapter *pc_exec_adapter_new(const pc_exec_options *opt, pc_metrics *metrics, pc_err *err);

#endif
