/* log.h - one line per event on stderr: time, level, component, message;
 * as text, or as a JSON object per line for log shippers:
 *
 *   2026-12-03T06:31:11.401Z INFO  agent: edge-1 (pop local) ready: ...
 *   {"time":"2026-12-03T06:31:11.401Z","level":"info","component":"agent",
 *    "msg":"edge-1 (pop local) ready: ..."}
 *
 * Lines are written with a single write(2) so that lines from several
 * threads never interleave. */
#ifndef PC_LOG_H
#define PC_LOG_H

enum pc_log_level { PC_LOG_DEBUG, PC_LOG_INFO, PC_LOG_WARN, PC_LOG_ERROR };

/* Messages below level are dropped. Default PC_LOG_INFO; the environment
 * variable POPCAST_LOG_LEVEL (debug|info|warn|error) overrides it. */
void pc_log_set_level(enum pc_log_level level);
int pc_log_parse_level(const char *name, enum pc_log_level *out);

enum pc_log_format { PC_LOG_TEXT, PC_LOG_JSON };
/* Default PC_LOG_TEXT. */
void pc_log_set_format(enum pc_log_format format);
/* "text" or "json"; -1 for anything else. */
int pc_log_parse_format(const char *name, enum pc_log_format *out);

void pc_log(enum pc_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define pc_debug(comp, ...) pc_log(PC_LOG_DEBUG, comp, __VA_ARGS__)
#define pc_info(comp, ...)  pc_log(PC_LOG_INFO, comp, __VA_ARGS__)
#define pc_warn(comp, ...)  pc_log(PC_LOG_WARN, comp, __VA_ARGS__)
#define pc_error(comp, ...) pc_log(PC_LOG_ERROR, comp, __VA_ARGS__)

#endif
