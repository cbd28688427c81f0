/* append_log.h - a file of lines that only grows: the controller's audit
 * log and the edge's access log. Opened for appending with the given
 * mode; each line is one write(2), so lines from concurrent threads never
 * interleave; not synced line by line (a crash can lose the last lines).
 * Reopened at the same path after logrotate moved the file (SIGHUP).
 *
 * Thread safe. */
#ifndef PC_APPEND_LOG_H
#define PC_APPEND_LOG_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

#include "err.h"

typedef struct pc_append_log pc_append_log;

/* what names the log in errors ("audit log"). */
int pc_append_log_open(pc_append_log **out, const char *what, const char *path, mode_t mode,
                       pc_err *err);
/* On failure the old file stays in use, and err says why. */
int pc_append_log_reopen(pc_append_log *l, pc_err *err);
void pc_append_log_close(pc_append_log *l);
const char *pc_append_log_path(const pc_append_log *l);

/* Appends o as one compact JSON line (ASCII: any byte kept as \\u
 * escapes by jansson), then releases o. */
void pc_append_log_json(pc_append_log *l, json_t *o);

#endif
