/* log.h - one line per event on stderr: time, level, component, message.
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

void pc_log(enum pc_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define pc_debug(comp, ...) pc_log(PC_LOG_DEBUG, comp, __VA_ARGS__)
#define pc_info(comp, ...)  pc_log(PC_LOG_INFO, comp, __VA_ARGS__)
#define pc_warn(comp, ...)  pc_log(PC_LOG_WARN, comp, __VA_ARGS__)
#define pc_error(comp, ...) pc_log(PC_LOG_ERROR, comp, __VA_ARGS__)

#endif
