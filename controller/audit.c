/* audit.c - the audit log (see audit.h). */
#include "audit.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "json_text.h"

struct pc_audit {
    pthread_mutex_t lock; /* fd: swapped by reopen while writers write */
    int fd;
    char *path;
};

static int open_file(const char *path, int *fd, pc_err *err)
{
    *fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (*fd < 0)
        return pc_err_set(err, PC_E_IO, "audit log %s: %s", path, strerror(errno));
    return PC_OK;
}

int pc_audit_open(pc_audit **out, const char *path, pc_err *err)
{
    pc_audit *a = calloc(1, sizeof(*a));
    if (a == NULL || (a->path = strdup(path)) == NULL) {
        free(a);
        return pc_err_set(err, PC_E_NOMEM, "out of memory");
    }
    int rc = open_file(path, &a->fd, err);
    if (rc != PC_OK) {
        free(a->path);
        free(a);
        return rc;
    }
    pthread_mutex_init(&a->lock, NULL);
    *out = a;
    return PC_OK;
}

int pc_audit_reopen(pc_audit *a, pc_err *err)
{
    int fd;
    int rc = open_file(a->path, &fd, err);
    if (rc != PC_OK)
        return rc;
    pthread_mutex_lock(&a->lock);
    int old = a->fd;
    a->fd = fd;
    pthread_mutex_unlock(&a->lock);
    close(old);
    return PC_OK;
}

void pc_audit_close(pc_audit *a)
{
    if (a == NULL)
        return;
    close(a->fd);
    pthread_mutex_destroy(&a->lock);
    free(a->path);
    free(a);
}

void pc_audit_write(pc_audit *a, const char *token, const char *method, const char *path,
                    uint16_t status, const void *answer, size_t answer_len)
{
    if (a == NULL)
        return;
    char when[96];
    int64_t now = pc_wall_ms();
    time_t sec = (time_t)(now / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(now % 1000));
    json_t *line = json_object();
    if (line == NULL)
        return;
    json_object_set_new(line, "time", json_string(when));
    json_object_set_new(line, "token", token != NULL ? json_string(token) : json_null());
    json_object_set_new(line, "method", json_string(method));
    /* The path is the caller's bytes: kept as text, whatever they are. */
    pc_json_set_text(line, "path", path);
    json_object_set_new(line, "status", json_integer(status));
    json_t *body = answer != NULL && answer_len > 0
                       ? json_loadb(answer, answer_len, JSON_DISABLE_EOF_CHECK, NULL)
                       : NULL;
    /* The one secret an answer carries: a created token. The log keeps
     * its id (in the answer too), never what authenticates. */
    if (json_is_object(body))
        json_object_del(body, "token");
    if (body != NULL)
        json_object_set_new(line, "answer", body);
    char *text = json_dumps(line, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(line);
    if (text == NULL)
        return;
    size_t len = strlen(text);
    char *buf = realloc(text, len + 2);
    if (buf == NULL) {
        free(text);
        return;
    }
    buf[len] = '\n';
    pthread_mutex_lock(&a->lock);
    ssize_t n = write(a->fd, buf, len + 1);
    pthread_mutex_unlock(&a->lock);
    (void)n;
    free(buf);
}
