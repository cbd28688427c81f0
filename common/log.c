/* log.c - stderr logging (see log.h). */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "clock.h"
#include "json_text.h"

static atomic_int min_level = -1; /* -1: not yet read from the environment */
static atomic_int log_format = PC_LOG_TEXT;

void pc_log_set_format(enum pc_log_format format)
{
    atomic_store(&log_format, (int)format);
}

int pc_log_parse_format(const char *name, enum pc_log_format *out)
{
    if (strcmp(name, "text") == 0)
        *out = PC_LOG_TEXT;
    else if (strcmp(name, "json") == 0)
        *out = PC_LOG_JSON;
    else
        return -1;
    return 0;
}

/* One JSON object per line. The message can hold a peer's bytes:
 * pc_json_set_text keeps any bytes as valid JSON text. */
static void log_json(const char *when, const char *level, const char *component, const char *msg)
{
    json_t *o = json_object();
    if (o == NULL)
        return;
    json_object_set_new(o, "time", json_string(when));
    json_object_set_new(o, "level", json_string(level));
    pc_json_set_text(o, "component", component);
    pc_json_set_text(o, "msg", msg);
    size_t len = 0;
    char *line = pc_json_line(o, &len);
    if (line == NULL)
        return;
    ssize_t written = write(STDERR_FILENO, line, len);
    (void)written;
    free(line);
}

void pc_log_set_level(enum pc_log_level level)
{
    atomic_store(&min_level, (int)level);
}

int pc_log_parse_level(const char *name, enum pc_log_level *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, names[i]) == 0) {
            *out = (enum pc_log_level)i;
            return 0;
        }
    }
    return -1;
}

static int current_level(void)
{
    int level = atomic_load(&min_level);
    if (level < 0) {
        enum pc_log_level parsed = PC_LOG_INFO;
        const char *env = getenv("POPCAST_LOG_LEVEL");
        if (env != NULL)
            (void)pc_log_parse_level(env, &parsed);
        level = (int)parsed;
        atomic_store(&min_level, level);
    }
    return level;
}

void pc_log(enum pc_log_level level, const char *component, const char *fmt, ...)
{
    static const char *labels[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if ((int)level < current_level())
        return;

    char line[2048];
    int64_t now = pc_wall_ms();
    time_t sec = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    if (atomic_load(&log_format) == PC_LOG_JSON) {
        static const char *names[] = {"debug", "info", "warn", "error"};
        char when[96];
        pc_json_utc_time(when, sizeof(when), now);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        log_json(when, names[level], component, line);
        return;
    }
    int n = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(now % 1000), labels[level], component);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    /* Messages can carry text from remote peers: keep one event one line. */
    for (size_t i = (size_t)n; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len++] = '\n';
    ssize_t written = write(STDERR_FILENO, line, len);
    (void)written;
}
